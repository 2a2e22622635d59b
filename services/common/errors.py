"""One error model for every service.

Domain code raises these exceptions; it never imports grpc. One server interceptor
(`services.common.server`) turns each into the gRPC status named by its ``code``, and the clients
turn every non-OK status back into one typed ``clients.base.RPCError``. What each code asks of the
caller:

- UNAVAILABLE: retry the same call (clients do, with backoff);
- ABORTED: retry at a higher level (re-read state, then try again);
- FAILED_PRECONDITION: fix the state first, retrying as-is will fail again;
- INVALID_ARGUMENT: the caller's input is wrong;
- RESOURCE_EXHAUSTED: back off.
"""

from __future__ import annotations


class SeedstackError(Exception):
    """Base of all domain errors; ``code`` is the name of a ``grpc.StatusCode``."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(SeedstackError):
    """The caller's input is wrong: a size, shape, name, version or value out of range."""

    code = "INVALID_ARGUMENT"


class NotFound(SeedstackError):
    """A named thing (model, version, job, holder) does not exist."""

    code = "NOT_FOUND"


class AlreadyExists(SeedstackError):
    """Creating something that exists already, with different content."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(SeedstackError):
    """The system is not in a state that allows this; fix the state first."""

    code = "FAILED_PRECONDITION"


class Aborted(SeedstackError):
    """A concurrent change won; re-read and retry at a higher level."""

    code = "ABORTED"


class Unavailable(SeedstackError):
    """A dependency (Redis, a peer) is unreachable for now; the same call may be retried."""

    code = "UNAVAILABLE"


class ResourceExhausted(SeedstackError):
    """A bound was hit (queue, memory, concurrent reads); back off."""

    code = "RESOURCE_EXHAUSTED"


class OutOfRange(SeedstackError):
    """A position (step, offset, rank) past the valid range."""

    code = "OUT_OF_RANGE"


class Unimplemented(SeedstackError):
    """The RPC exists in the contract but its logic has not landed in this build."""

    code = "UNIMPLEMENTED"


class Unauthenticated(SeedstackError):
    """No or a wrong shared token."""

    code = "UNAUTHENTICATED"


class DeadlineExceeded(SeedstackError):
    """A wait inside the service ran out of time."""

    code = "DEADLINE_EXCEEDED"


class DataLoss(SeedstackError):
    """Bytes failed verification (a chunk hash, a checkpoint checksum)."""

    code = "DATA_LOSS"


class ConfigError(ValueError):
    """A configuration value is missing or invalid; names the variable and the value."""
