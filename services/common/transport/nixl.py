"""NIXL carrier (optional): true one-sided RDMA READs where NIXL's UCX has verbs.

NIXL's wheel (``nixl-cu12``) bundles a UCX built with verbs, which PyPI's ``ucxx`` lacks, so on an
RDMA fabric this is the carrier that actually reads the holder's memory without its CPU. It is not
installed by default (``pip install torch==2.13.0`` first, then ``nixl-cu12``, or pip pulls a CUDA
torch), and is not exercised on machines without it: the contract tests skip it when ``nixl`` does
not import.

Control runs over a TCP socket to the holder, like the shm carrier's::

    reader -> {"op": "open", "name", "root_hash", "ranges"}
    holder -> {"ok": true, "agent", "metadata" (base64), "base_addr", "mem_type", "dev_id"}  (lease held)
    reader    READs the ranges straight into its registered destination, verifies every chunk
    reader -> {"op": "release"}
    holder -> {"ok": true}                                                                   (lease released)

NIXL's Python API reports completion only through ``check_xfer_state``; the reader polls it with an
exponential back-off capped at 1 ms, bounded by the read's deadline: the one wait in this package
that is not a blocking call.
"""

from __future__ import annotations

import base64
import concurrent.futures
import logging
import socket
import threading
import time
import uuid
from typing import Any

from services.common.transport import wire
from services.common.transport.errors import PeerDisconnected, ProtocolError, TransferError, TransferTimeout
from services.common.transport.leases import Entry, LeaseTable
from services.common.transport.meta import CarrierAddress, TensorMeta, split_host_port
from services.common.transport.probe import rdma_devices
from services.common.transport.sink import ChunkSink
from services.common.transport.sockets import BlockingJob, ConnectionPool, SocketServer, run_blocking

logger = logging.getLogger(__name__)

_MAX_POLL_INTERVAL_S = 0.001


def _new_agent(name: str) -> Any:
    from nixl._api import nixl_agent, nixl_agent_config

    return nixl_agent(name, nixl_agent_config(backends=["UCX"]))


def _mem_type(flat: Any) -> tuple[str, int]:
    return ("VRAM", int(flat.device.index or 0)) if flat.is_cuda else ("DRAM", 0)


class NixlServer:
    """Registers served tensors with a NIXL agent and grants read leases over TCP."""

    carrier = "nixl"

    def __init__(
        self,
        leases: LeaseTable,
        *,
        bind_host: str,
        advertise_host: str,
        host_id: str,
        agent_name: str,
        idle_timeout_s: float,
        stall_timeout_s: float,
    ) -> None:
        self._leases = leases
        self._bind_host = bind_host
        self._advertise_host = advertise_host
        self._host_id = host_id
        self._agent_name = f"seedstack-{agent_name}-{uuid.uuid4().hex[:8]}"
        self._idle_timeout_s = idle_timeout_s
        self._stall_timeout_s = stall_timeout_s
        self._agent: Any = None
        self._lock = threading.Lock()
        self._registered: dict[int, tuple[Entry, Any]] = {}
        self._server: SocketServer | None = None

    def start(self) -> CarrierAddress:
        """Create the agent and the control socket."""
        import torch

        self._agent = _new_agent(self._agent_name)
        listener = socket.socket(socket.AF_INET6 if ":" in self._bind_host else socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self._bind_host, 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        self._server = SocketServer(listener, self._handle, name="transport-nixl")
        self._server.start()
        host = f"[{self._advertise_host}]" if ":" in self._advertise_host else self._advertise_host
        return CarrierAddress(
            carrier="nixl",
            address=f"{host}:{port}",
            host=self._host_id,
            rdma=bool(rdma_devices()),
            cuda=torch.cuda.is_available(),
        )

    def close(self) -> None:
        """Stop serving and deregister memory."""
        if self._server is not None:
            self._server.close()
        with self._lock:
            for _entry, descs in self._registered.values():
                self._agent.deregister_memory(descs)
            self._registered.clear()

    def _ensure_registered(self, entry: Entry) -> None:
        with self._lock:
            # Registrations of unregistered tensors are dropped here, lazily: they pin memory.
            for key, (old, descs) in list(self._registered.items()):
                if old.removed:
                    self._agent.deregister_memory(descs)
                    del self._registered[key]
            if id(entry) not in self._registered:
                mem_type, _dev = _mem_type(entry.flat)
                descs = self._agent.register_memory(self._agent.get_reg_descs(entry.flat, mem_type))
                self._registered[id(entry)] = (entry, descs)

    def _handle(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                request, _ = wire.recv_message(conn, time.monotonic() + self._idle_timeout_s)
            except TransferError:
                return
            name = str(request.get("name", ""))
            deadline = time.monotonic() + self._stall_timeout_s
            try:
                if request.get("op") != "open":
                    raise ProtocolError(f"unknown op {request.get('op')!r}")
                lease = self._leases.open_read(
                    name, root_hash=request.get("root_hash"), ranges=wire.ranges_from_wire(request.get("ranges", []))
                )
            except TransferError as exc:
                wire.send_message(conn, wire.error_reply(exc), deadline)
                continue
            with lease:
                self._ensure_registered(lease.entry)
                mem_type, dev_id = _mem_type(lease.entry.flat)
                reply = {
                    "ok": True,
                    "agent": self._agent_name,
                    "metadata": base64.b64encode(self._agent.get_agent_metadata()).decode(),
                    "base_addr": lease.entry.flat.data_ptr(),
                    "mem_type": mem_type,
                    "dev_id": dev_id,
                }
                wire.send_message(conn, reply, deadline)
                try:
                    done, _ = wire.recv_message(conn, time.monotonic() + self._stall_timeout_s)
                except TransferError:
                    return
                if done.get("op") != "release":
                    return
            wire.send_message(conn, {"ok": True}, time.monotonic() + self._stall_timeout_s)


class NixlClient:
    """Reads from holders with NIXL one-sided READs."""

    carrier = "nixl"

    def __init__(self, executor: concurrent.futures.Executor, *, connect_timeout_s: float) -> None:
        self._executor = executor
        self._connect_timeout_s = connect_timeout_s
        self._pool = ConnectionPool()
        self._agent: Any = None
        self._remotes: dict[str, str] = {}
        self._lock = threading.Lock()

    async def fetch(self, address: CarrierAddress, meta: TensorMeta, sink: ChunkSink, deadline: float) -> str:
        """READ ``sink``'s chunks from the holder's registered memory into the destination."""
        job = BlockingJob()
        return await run_blocking(self._executor, job, lambda: self._fetch(job, address, meta, sink, deadline))

    def close(self) -> None:
        """Drop control connections."""
        self._pool.close()

    def _connect(self, address: CarrierAddress, deadline: float) -> socket.socket:
        host, port = split_host_port(address.address)
        try:
            sock = socket.create_connection(
                (host, port), timeout=min(self._connect_timeout_s, max(deadline - time.monotonic(), 0.001))
            )
        except OSError as exc:
            raise PeerDisconnected(f"cannot connect to nixl {address.address}: {exc}") from exc
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _remote(self, reply: dict[str, Any]) -> str:
        with self._lock:
            if self._agent is None:
                self._agent = _new_agent(f"seedstack-reader-{uuid.uuid4().hex[:12]}")
            name = str(reply["agent"])
            if name not in self._remotes:
                added = self._agent.add_remote_agent(base64.b64decode(reply["metadata"]))
                self._remotes[name] = added.decode() if isinstance(added, bytes) else str(added)
            return self._remotes[name]

    def _fetch(
        self, job: BlockingJob, address: CarrierAddress, meta: TensorMeta, sink: ChunkSink, deadline: float
    ) -> str:
        request = {
            "op": "open",
            "name": meta.name,
            "root_hash": meta.root_hash,
            "ranges": wire.ranges_to_wire(sink.ranges),
        }
        sock = self._pool.take(address.address) or self._connect(address, deadline)
        job.attach(sock)
        try:
            wire.send_message(sock, request, deadline)
            reply, _ = wire.recv_message(sock, deadline)
            if reply.get("ok", False):
                self._read(reply, sink, deadline, job)
                wire.send_message(sock, {"op": "release"}, deadline)
                wire.raise_if_error(wire.recv_message(sock, deadline)[0], meta.name)
        except BaseException:
            sock.close()
            raise
        self._pool.give_back(address.address, sock)
        wire.raise_if_error(reply, meta.name)
        return "nixl READ over UCX"

    def _read(self, reply: dict[str, Any], sink: ChunkSink, deadline: float, job: BlockingJob) -> None:
        remote = self._remote(reply)
        agent = self._agent
        local_type, local_dev = _mem_type(sink.flat)
        base = int(reply["base_addr"])
        local_base = sink.flat.data_ptr()
        remote_descs = agent.get_xfer_descs(
            [(base + r.offset, r.length, int(reply["dev_id"])) for r in sink.ranges], str(reply["mem_type"])
        )
        local_descs = agent.get_xfer_descs(
            [(local_base + r.offset, r.length, local_dev) for r in sink.ranges], local_type
        )
        registered = agent.register_memory(agent.get_reg_descs(sink.flat, local_type))
        handle = None
        try:
            handle = agent.initialize_xfer("READ", local_descs, remote_descs, remote)
            state = agent.transfer(handle)
            interval = 1e-5
            while state == "PROC":
                if job.aborted:
                    raise PeerDisconnected("read cancelled")
                if time.monotonic() > deadline:
                    raise TransferTimeout("nixl READ did not complete before the deadline")
                time.sleep(interval)
                interval = min(interval * 2, _MAX_POLL_INTERVAL_S)
                state = agent.check_xfer_state(handle)
            if state != "DONE":
                raise PeerDisconnected(f"nixl READ failed (state {state})")
        finally:
            if handle is not None:
                agent.release_xfer_handle(handle)
            agent.deregister_memory(registered)
        for k in range(len(sink.ranges)):
            sink.commit(k, on_device=sink.is_cuda)
