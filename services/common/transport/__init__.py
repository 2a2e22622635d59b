"""The tensor plane: moving named tensors and chunks of them between processes.

Bulk bytes never ride in gRPC. A holder registers tensors and serves one-sided reads of them; a
reader reads a tensor, or some of its chunks, into a buffer it preallocated, verifying each chunk's
hash. What crosses the control plane is a small :class:`TensorRef` (metadata + the holder's carrier
addresses) that round-trips through plain dicts / JSON.

Carriers: ``tcp`` (default everywhere), ``shm`` (same host: memfd shared memory, one copy), ``ucx``
(via ``ucxx``, for RDMA / CUDA transports) and ``nixl`` (optional). The carrier for each reader-holder
pair is chosen by a hardware probe (:func:`select_carrier`), logged with every transfer.

This package knows nothing of gRPC or Redis.
"""

from services.common.transport.errors import (
    ByteRangeError,
    CarrierUnavailable,
    ChunkHashMismatch,
    HolderBusy,
    IncompleteTransfer,
    LeaseTimeout,
    PeerDisconnected,
    ProtocolError,
    StaleTensor,
    TransferError,
    TransferTimeout,
    UnknownTensor,
)
from services.common.transport.holder import TensorHolder
from services.common.transport.meta import (
    CARRIERS,
    DEFAULT_CHUNK_SIZE_BYTES,
    DEFAULT_HASH_ALGO,
    ByteRange,
    CarrierAddress,
    TensorMeta,
    TensorRef,
    compute_meta,
)
from services.common.transport.probe import CarrierChoice, HostCapabilities, probe_host, select_carrier
from services.common.transport.reader import ReadResult, TensorReader
from services.common.transport.sink import TensorAssembly

__all__ = [
    "CARRIERS",
    "DEFAULT_CHUNK_SIZE_BYTES",
    "DEFAULT_HASH_ALGO",
    "ByteRange",
    "ByteRangeError",
    "CarrierAddress",
    "CarrierChoice",
    "CarrierUnavailable",
    "ChunkHashMismatch",
    "HolderBusy",
    "HostCapabilities",
    "IncompleteTransfer",
    "LeaseTimeout",
    "PeerDisconnected",
    "ProtocolError",
    "ReadResult",
    "StaleTensor",
    "TensorAssembly",
    "TensorHolder",
    "TensorMeta",
    "TensorReader",
    "TensorRef",
    "TransferError",
    "TransferTimeout",
    "UnknownTensor",
    "compute_meta",
    "probe_host",
    "select_carrier",
]
