"""Shared-memory carrier for a reader and a holder on one host.

The holder keeps the tensor in a memfd (see ``buffers.SharedSegment``, allocated with
``TensorHolder.allocate``). A reader asks the holder's Unix control socket for a read lease, gets the
memfd back over ``SCM_RIGHTS``, maps it read-only and copies the requested chunks once into its
destination: one memcpy, no kernel socket copies. The mapping is read-only, so a reader can never
scribble on the holder's weights.

Protocol on a persistent Unix-socket connection::

    reader -> {"op": "open", "name", "root_hash", "ranges"}
    holder -> {"ok": true, "offset", "segment_bytes", "segment_id", "live_segments"} + the memfd
                                                                     (lease now held)
    reader    maps, copies, verifies
    reader -> {"op": "release"}                                      (lease released; no reply)

The release is not acknowledged: the stream keeps it ordered before the reader's next request, and
every round trip would wait for the holder's thread to be scheduled, which on a busy host is what a
small read costs.

The lease also ends if the connection drops (a reader killed mid-copy), or after the holder's stall
timeout. A holder killed while a reader copies does *not* tear the read: the reader's mapping keeps
the memory alive, and every chunk is still verified against its hash (if only the release fails,
the read stands).

Mapping 256 MiB costs about as much as copying it (page tables for 65k pages, then tearing them
down), so readers keep their mappings of a holder's segments. That pins no extra memory: each reply
lists the holder's live segments and the reader drops mappings of any other one, so a mapping
outlives the holder's own use of the memory only until the reader's next read from that holder (or
until the reader finds the holder gone, or closes).
"""

from __future__ import annotations

import concurrent.futures
import logging
import mmap
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from services.common.transport import wire
from services.common.transport.errors import CarrierUnavailable, PeerDisconnected, ProtocolError, TransferError
from services.common.transport.leases import LeaseTable, ReadLease
from services.common.transport.meta import CarrierAddress, TensorMeta
from services.common.transport.sink import ChunkSink
from services.common.transport.sockets import (
    BlockingJob,
    SocketClient,
    SocketServer,
)

logger = logging.getLogger(__name__)


def _socket_path(address: str) -> str:
    # "@name" is the conventional spelling (ss, systemd) of a Linux abstract-namespace socket: no file
    # on disk, so nothing is left behind when the holder dies.
    return "\0" + address[1:] if address.startswith("@") else address


class ShmServer:
    """Grants read leases on shared-memory tensors over a Unix control socket."""

    carrier = "shm"

    def __init__(
        self,
        leases: LeaseTable,
        *,
        live_segments: Callable[[], list[str]],
        host_id: str,
        label: str,
        idle_timeout_s: float,
        stall_timeout_s: float,
        pending_wait_s: float = 0.0,
    ) -> None:
        self._leases = leases
        self._live_segments = live_segments
        self._host_id = host_id
        self._address = f"@seedstack-transport-{label}-{uuid.uuid4().hex[:12]}"
        self._idle_timeout_s = idle_timeout_s
        self._stall_timeout_s = stall_timeout_s
        self._pending_wait_s = pending_wait_s
        self._server: SocketServer | None = None

    def start(self) -> CarrierAddress:
        """Bind the control socket and start serving."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(_socket_path(self._address))
        listener.listen(128)
        self._server = SocketServer(listener, self._handle, name="transport-shm")
        self._server.start()
        return CarrierAddress(carrier="shm", address=self._address, host=self._host_id)

    def close(self) -> None:
        """Stop serving (open leases are released as their connections are cut)."""
        if self._server is not None:
            self._server.close()

    def _handle(self, conn: socket.socket) -> None:
        while True:
            try:
                request, _ = wire.recv_message(conn, time.monotonic() + self._idle_timeout_s)
            except TransferError:
                return
            try:
                lease = self._open(conn, request)
            except TransferError:
                return  # the reader left before the reply (e.g. it timed out)
            if lease is None:
                continue
            with lease:
                try:
                    done, _ = wire.recv_message(conn, time.monotonic() + self._stall_timeout_s)
                except TransferError as exc:
                    logger.info("shm lease on %r ended without release: %s", lease.meta.name, exc)
                    return
                if done.get("op") != "release":
                    return

    def _open(self, conn: socket.socket, request: dict[str, Any]) -> ReadLease | None:
        name = str(request.get("name", ""))
        deadline = time.monotonic() + self._stall_timeout_s
        try:
            if request.get("op") != "open":
                raise ProtocolError(f"unknown op {request.get('op')!r}")
            lease = self._leases.open_read(
                name,
                root_hash=request.get("root_hash"),
                ranges=wire.ranges_from_wire(request.get("ranges", [])),
                wait_s=self._pending_wait_s,
            )
        except TransferError as exc:
            wire.send_message(conn, wire.error_reply(exc), deadline)
            return None
        segment = lease.entry.segment
        fd = segment.fd if segment is not None else -1
        if segment is None or fd < 0:
            lease.close()
            unavailable = CarrierUnavailable(
                f"tensor {name!r} is not in shared memory at this holder (register a tensor from "
                "TensorHolder.allocate() to serve it over shm)",
                name=name,
            )
            wire.send_message(conn, wire.error_reply(unavailable), deadline)
            return None
        try:
            reply = {
                "ok": True,
                "offset": lease.entry.segment_offset,
                "segment_bytes": segment.size_bytes,
                "segment_id": segment.segment_id,
                "live_segments": self._live_segments(),
            }
            wire.send_message(conn, reply, deadline, fds=[fd])
        except BaseException:
            lease.close()
            raise
        return lease


class ShmClient(SocketClient):
    """Reads from holders on this host through their shared memory."""

    carrier = "shm"

    def __init__(self, executor: concurrent.futures.Executor, *, connect_timeout_s: float) -> None:
        super().__init__(executor, connect_timeout_s=connect_timeout_s)
        self._mappings = _MappingCache()

    def close(self) -> None:
        """Drop pooled control connections and cached mappings."""
        super().close()
        self._mappings.clear()

    def _connect(self, address: CarrierAddress, deadline: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(min(self._connect_timeout_s, max(deadline - time.monotonic(), 0.001)))
        try:
            sock.connect(_socket_path(address.address))
        except OSError as exc:
            sock.close()
            raise PeerDisconnected(f"cannot connect to shm holder {address.address}: {exc}") from exc
        sock.settimeout(None)
        return sock

    def _open(self, sock: socket.socket, request: dict[str, Any], deadline: float) -> tuple[dict[str, Any], list[int]]:
        wire.send_message(sock, request, deadline)
        return wire.recv_message(sock, deadline, max_fds=1)

    def _fetch(
        self, job: BlockingJob, address: CarrierAddress, meta: TensorMeta, sink: ChunkSink, deadline: float
    ) -> str:
        request = {
            "op": "open",
            "name": meta.name,
            "root_hash": meta.root_hash,
            "ranges": wire.ranges_to_wire(sink.ranges),
        }
        sock = self._pool.take(address.address)
        reused = sock is not None
        if sock is None:
            sock = self._connect(address, deadline)
        job.attach(sock)
        fds: list[int] = []
        try:
            try:
                reply, fds = self._open(sock, request, deadline)
            except PeerDisconnected:
                if not reused or job.aborted:
                    raise
                sock.close()  # a pooled connection the holder dropped while idle: one fresh try
                sock = self._connect(address, deadline)
                job.attach(sock)
                reply, fds = self._open(sock, request, deadline)
            if reply.get("ok", False):
                if len(fds) != 1:
                    raise ProtocolError(f"shm holder sent {len(fds)} file descriptors, expected 1")
                self._mappings.retain(address.address, reply.get("live_segments", []))
                segment = self._mappings.get(
                    address.address, str(reply["segment_id"]), fds[0], int(reply["segment_bytes"])
                )
                self._copy(segment, int(reply["offset"]), sink, job)
                del segment
                try:
                    wire.send_message(sock, {"op": "release"}, deadline)
                except PeerDisconnected as exc:
                    # The holder died after the copy. Every chunk was checked against its hash (the
                    # reader raises ChunkHashMismatch otherwise), so the read stands; only the
                    # connection goes.
                    logger.info("shm holder %s gone before the lease release: %s", address.address, exc)
                    sock.close()
                    self._mappings.retain(address.address, [])
                    return ""
        except PeerDisconnected:
            sock.close()
            # The holder is gone: its memory must not live on in our cached mappings.
            self._mappings.retain(address.address, [])
            raise
        except BaseException:
            sock.close()
            raise
        finally:
            for fd in fds:
                os.close(fd)
        self._pool.give_back(address.address, sock)
        wire.raise_if_error(reply, meta.name)
        return ""

    @staticmethod
    def _copy(segment: np.ndarray, segment_offset: int, sink: ChunkSink, job: BlockingJob) -> None:
        for k, r in enumerate(sink.ranges):
            if job.aborted:
                raise PeerDisconnected("read cancelled")
            start = segment_offset + r.offset
            # numpy's copy releases the GIL and runs at memcpy speed; the chunk is then hashed while
            # it is still in cache.
            np.copyto(np.asarray(sink.host_target(k)), segment[start : start + r.length])
            sink.commit(k)


class _MappingCache:
    """Read-only mappings of holders' segments, by (holder address, segment id)."""

    def __init__(self, max_mappings: int = 1024) -> None:
        # Bounded in number, not bytes: the memory is the holders' (see the module docstring), but
        # every mapping is a VMA and the kernel caps those per process (vm.max_map_count).
        self._max = max_mappings
        self._lock = threading.Lock()
        self._maps: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def get(self, address: str, segment_id: str, fd: int, size_bytes: int) -> np.ndarray:
        """The whole segment as a read-only uint8 array, mapped now or earlier."""
        key = (address, segment_id)
        with self._lock:
            cached = self._maps.get(key)
            if cached is not None:
                self._maps.move_to_end(key)
                return cached
        # MAP_POPULATE builds the page tables in one go instead of one fault per 4 KiB page.
        mapping = mmap.mmap(fd, max(size_bytes, 1), flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)
        # The array keeps the mapping alive; dropping the last array unmaps it (no explicit close,
        # which would fail while another thread still copies from it).
        array = np.frombuffer(mapping, dtype=np.uint8)
        with self._lock:
            self._maps[key] = array
            while len(self._maps) > self._max:
                self._maps.popitem(last=False)
        return array

    def retain(self, address: str, live_segment_ids: Sequence[str]) -> None:
        """Forget mappings of ``address``'s segments that its holder no longer has."""
        live = set(live_segment_ids)
        with self._lock:
            for key in [k for k in self._maps if k[0] == address and k[1] not in live]:
                del self._maps[key]

    def clear(self) -> None:
        """Forget every mapping."""
        with self._lock:
            self._maps.clear()
