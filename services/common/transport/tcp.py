"""TCP carrier: the default everywhere.

Holder: ``sendall`` straight from a memoryview of the tensor's storage. Reader: ``recv_into`` straight
into the destination, one ``MSG_WAITALL`` call per chunk, then the chunk's hash. No intermediate copy
on either side; the kernel's two copies are all there is.

Protocol per request on a persistent connection::

    reader -> {"op": "read", "name", "root_hash", "ranges": [[offset, length], ...]}
    holder -> {"ok": true}  then the ranges' bytes back to back
           |  {"ok": false, "error": <wire name>, "message": ...}
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from services.common.transport import wire
from services.common.transport.errors import PeerDisconnected, ProtocolError, TransferError
from services.common.transport.leases import LeaseTable
from services.common.transport.meta import CarrierAddress, TensorMeta, split_host_port
from services.common.transport.sink import ChunkSink
from services.common.transport.sockets import (
    BlockingJob,
    SocketClient,
    SocketServer,
)

logger = logging.getLogger(__name__)


class TcpServer:
    """Serves the holder's tensors over TCP."""

    carrier = "tcp"

    def __init__(
        self,
        leases: LeaseTable,
        *,
        bind_host: str,
        advertise_host: str,
        host_id: str,
        idle_timeout_s: float,
        stall_timeout_s: float,
        pending_wait_s: float = 0.0,
    ) -> None:
        self._leases = leases
        self._bind_host = bind_host
        self._advertise_host = advertise_host
        self._host_id = host_id
        self._idle_timeout_s = idle_timeout_s
        self._stall_timeout_s = stall_timeout_s
        self._pending_wait_s = pending_wait_s
        self._server: SocketServer | None = None

    def start(self) -> CarrierAddress:
        """Bind an ephemeral port and start serving; returns the address to advertise."""
        family = socket.AF_INET6 if ":" in self._bind_host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self._bind_host, 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        self._server = SocketServer(listener, self._handle, name="transport-tcp")
        self._server.start()
        host = f"[{self._advertise_host}]" if ":" in self._advertise_host else self._advertise_host
        return CarrierAddress(carrier="tcp", address=f"{host}:{port}", host=self._host_id)

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.close()

    def _handle(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                request, _ = wire.recv_message(conn, time.monotonic() + self._idle_timeout_s)
            except TransferError:
                return  # reader went away or idled out: nothing is leased between requests
            try:
                self._serve_read(conn, request)
            except TransferError as exc:
                # A reader that vanished or stalled mid-stream: the lease is already released.
                logger.info("tcp read of %r aborted: %s", request.get("name"), exc)
                return

    def _serve_read(self, conn: socket.socket, request: dict[str, Any]) -> None:
        name = str(request.get("name", ""))
        try:
            if request.get("op") != "read":
                raise ProtocolError(f"unknown op {request.get('op')!r}")
            ranges = wire.ranges_from_wire(request.get("ranges", []))
            lease = self._leases.open_read(
                name, root_hash=request.get("root_hash"), ranges=ranges, wait_s=self._pending_wait_s
            )
        except TransferError as exc:
            wire.send_message(conn, wire.error_reply(exc), time.monotonic() + self._stall_timeout_s)
            return
        with lease:
            wire.send_message(conn, {"ok": True}, time.monotonic() + self._stall_timeout_s)
            for piece in lease.pieces(ranges):
                # The deadline is per piece: a slow but moving reader is fine, a stalled one is cut.
                wire.send_all(conn, piece, time.monotonic() + self._stall_timeout_s)


class TcpClient(SocketClient):
    """Reads from holders over TCP."""

    carrier = "tcp"

    def _connect(self, address: CarrierAddress, deadline: float) -> socket.socket:
        host, port = split_host_port(address.address)
        timeout = min(self._connect_timeout_s, max(deadline - time.monotonic(), 0.001))
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise PeerDisconnected(f"cannot connect to tcp {address.address}: {exc}") from exc
        # Back to blocking mode: MSG_WAITALL only waits on blocking sockets; timeouts come from
        # SO_RCVTIMEO/SO_SNDTIMEO instead (see wire).
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _fetch(
        self, job: BlockingJob, address: CarrierAddress, meta: TensorMeta, sink: ChunkSink, deadline: float
    ) -> str:
        request = {
            "op": "read",
            "name": meta.name,
            "root_hash": meta.root_hash,
            "ranges": wire.ranges_to_wire(sink.ranges),
        }
        sock = self._pool.take(address.address)
        reused = sock is not None
        if sock is None:
            sock = self._connect(address, deadline)
        job.attach(sock)
        try:
            try:
                wire.send_message(sock, request, deadline)
                reply, _ = wire.recv_message(sock, deadline)
            except PeerDisconnected:
                if not reused or job.aborted:
                    raise
                # The holder closed this pooled connection while it idled: one fresh try.
                sock.close()
                sock = self._connect(address, deadline)
                job.attach(sock)
                wire.send_message(sock, request, deadline)
                reply, _ = wire.recv_message(sock, deadline)
            if reply.get("ok", False):
                for k in range(len(sink.ranges)):
                    if job.aborted:
                        # shutdown() only stops a blocked recv; data already queued would still
                        # be read, so a cancelled read also stops here, between chunks.
                        raise PeerDisconnected("read cancelled")
                    wire.recv_exact(sock, sink.host_target(k), deadline)
                    sink.commit(k)
        except BaseException:
            sock.close()
            raise
        # An error reply leaves the connection in a clean state, so it goes back to the pool too.
        self._pool.give_back(address.address, sock)
        wire.raise_if_error(reply, meta.name)
        return ""
