"""Typed errors of the tensor plane.

Every failure a reader or holder can meet is a ``TransferError`` subclass (one level deep). Each
class names, in ``code``, the gRPC status it should become when a service surfaces it, so the
runtime's error interceptor can map them without knowing the transport; ``retryable`` says whether
the same chunks may be read again (from this holder or, better, another one).

A failed read carries ``verified_chunks`` (chunks that arrived *and* matched their hash, safe to
keep) and ``missing_chunks`` (everything else that was asked for): a caller re-plans exactly the
missing ones from another holder.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.common.errors import SeedstackError


class TransferError(SeedstackError):
    """Base of every tensor-plane error; one of the runtime's domain errors, so a service that lets
    one escape answers with its ``code`` through the one error interceptor."""

    code = "INTERNAL"
    retryable = False
    #: Short name used on the wire when a holder reports this error to a reader.
    wire_name = "internal"

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        verified_chunks: Iterable[int] = (),
        missing_chunks: Iterable[int] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.name = name
        self.verified_chunks: tuple[int, ...] = tuple(sorted(verified_chunks))
        self.missing_chunks: tuple[int, ...] = tuple(sorted(missing_chunks))


class ChunkHashMismatch(TransferError):
    """Bytes arrived but did not match the chunk hash in the metadata (corrupt or changed holder)."""

    code = "DATA_LOSS"
    retryable = True
    wire_name = "hash_mismatch"

    def __init__(self, message: str, *, bad_chunks: Iterable[int] = (), **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.bad_chunks: tuple[int, ...] = tuple(sorted(bad_chunks))


class PeerDisconnected(TransferError):
    """The holder went away (closed, crashed, unreachable) before every byte arrived."""

    code = "UNAVAILABLE"
    retryable = True
    wire_name = "disconnected"


class TransferTimeout(TransferError):
    """The read did not finish within its deadline (a stalled or overloaded holder)."""

    code = "DEADLINE_EXCEEDED"
    retryable = True
    wire_name = "timeout"


class UnknownTensor(TransferError):
    """The holder has no tensor of that name."""

    code = "NOT_FOUND"
    retryable = False
    wire_name = "unknown_tensor"


class StaleTensor(TransferError):
    """The holder has the name but different content (it was updated since the reference was made)."""

    code = "FAILED_PRECONDITION"
    retryable = False
    wire_name = "stale_tensor"


class ByteRangeError(TransferError):
    """A requested byte range lies outside the holder's buffer."""

    code = "OUT_OF_RANGE"
    retryable = False
    wire_name = "out_of_range"


class HolderBusy(TransferError):
    """The holder refuses for now: the tensor is being overwritten, or its read slots are all taken."""

    code = "RESOURCE_EXHAUSTED"
    retryable = True
    wire_name = "busy"


class LeaseTimeout(TransferError):
    """Holder side: reads still in flight when an update or unregister ran out of patience."""

    code = "FAILED_PRECONDITION"
    retryable = True
    wire_name = "lease_timeout"


class CarrierUnavailable(TransferError):
    """No carrier both sides can use (or the one asked for is not offered / not installed)."""

    code = "FAILED_PRECONDITION"
    retryable = False
    wire_name = "carrier_unavailable"


class ProtocolError(TransferError):
    """The peer sent something this side cannot parse (version skew, a non-transport peer)."""

    code = "INTERNAL"
    retryable = True
    wire_name = "protocol"


class IncompleteTransfer(TransferError):
    """An assembled tensor was requested before every chunk arrived and verified."""

    code = "FAILED_PRECONDITION"
    retryable = True
    wire_name = "incomplete"


_BY_WIRE_NAME: dict[str, type[TransferError]] = {
    cls.wire_name: cls
    for cls in (
        TransferError,
        ChunkHashMismatch,
        PeerDisconnected,
        TransferTimeout,
        UnknownTensor,
        StaleTensor,
        ByteRangeError,
        HolderBusy,
        LeaseTimeout,
        CarrierUnavailable,
        ProtocolError,
        IncompleteTransfer,
    )
}


def error_from_wire(wire_name: str, message: str, *, name: str | None = None) -> TransferError:
    """Rebuild the typed error a holder reported; unknown kinds become a plain ``TransferError``."""
    cls = _BY_WIRE_NAME.get(wire_name, TransferError)
    return cls(message, name=name)
