"""UCX carrier through ``ucxx`` (the successor of the retired ucx-py).

Worth choosing where UCX has RDMA verbs or CUDA transports (see ``probe``). The PyPI wheel
(``ucxx-cu12``) has neither verbs nor, without a GPU, CUDA: there it runs over UCX's tcp / shared
memory transports and is slower than our TCP carrier, which is why importing it proves nothing. The
transports UCX reports are logged with every transfer so that a fallback never passes as RDMA.

All ``ucxx`` work runs on one private event loop in a background thread (:class:`UcxRuntime`): the
ucxx application context is process-global and binds its progress to an event loop, while callers
come from whatever loop they run (pytest makes a new one per test). UCX progresses in its own C++
thread ("thread" progress mode) and completes requests through Python futures set by ucxx's notifier
thread. That last part matters: by default ucxx waits for a request by looping on
``asyncio.sleep(0)``, which keeps a core at 100 % for as long as any receive is posted, i.e. for the
whole life of an idle holder connection.

Endpoint error handling is enabled on both sides: if one side enables it and the other does not,
a peer failure leaves both hanging.

Protocol per request on a persistent endpoint (ucxx tag messages, matched in order)::

    reader -> obj {"op": "read", "name", "root_hash", "ranges"}
    holder -> obj {"ok": true}  then one message per range, exactly its length
           |  obj {"ok": false, "error", "message"}
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import numpy as np

from services.common.transport import wire
from services.common.transport.errors import PeerDisconnected, ProtocolError, TransferError, TransferTimeout
from services.common.transport.leases import LeaseTable
from services.common.transport.meta import CarrierAddress, TensorMeta, split_host_port
from services.common.transport.sink import ChunkSink

logger = logging.getLogger(__name__)

T = TypeVar("T")

ENDPOINT_ERROR_HANDLING = True
"""Must be the same on listener and endpoint, or a peer failure hangs both sides."""


class UcxRuntime:
    """The process's one event loop for ucxx, in a daemon thread."""

    _instance: UcxRuntime | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="transport-ucx", daemon=True)
        self.thread.start()
        self.call(self._init(), 30.0)

    @staticmethod
    async def _init() -> None:
        import ucxx

        # Futures completed by ucxx's notifier thread instead of its default busy wait (see the
        # module docstring). Created here, on the runtime's daemon thread, the notifier thread is a
        # daemon too, so it cannot keep the process alive at exit.
        ucxx.init(progress_mode="thread", enable_python_future=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @classmethod
    def get(cls) -> UcxRuntime:
        """The runtime, started on first use."""
        with cls._instance_lock:
            if cls._instance is None:
                # UCX prints a warning for each UCX_* variable it does not use (ucxx itself sets
                # one, UCX_MEMTYPE_CACHE); those lines are noise in every process's stderr.
                os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")
                cls._instance = UcxRuntime()
            return cls._instance

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the runtime loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coro`` on the runtime loop and wait for it (from any thread but the runtime's)."""
        return self.submit(coro).result(timeout_s)

    async def run(self, coro: Coroutine[Any, Any, T], *, grace_s: float = 5.0) -> T:
        """Await ``coro`` on the runtime loop from another loop. If the caller is cancelled, the
        runtime task is cancelled too and awaited (up to ``grace_s``), so it writes nothing after."""
        finished: concurrent.futures.Future[None] = concurrent.futures.Future()

        async def guarded() -> T:
            try:
                return await coro
            finally:
                finished.set_result(None)

        future = self.submit(guarded())
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.wrap_future(finished), grace_s)
            raise


_transports_cache: tuple[str, ...] | None = None


def active_transports() -> tuple[str, ...]:
    """UCX transports this process may use (``tcp``, ``posix``, ``rc_mlx5``, ``cuda_copy`` ...)."""
    global _transports_cache
    if _transports_cache is None:

        async def probe() -> tuple[str, ...]:
            import ucxx

            return tuple(sorted(ucxx.get_active_transports()))

        runtime = UcxRuntime.get()
        if threading.current_thread() is runtime.thread:
            # Already on the runtime loop (inside a transfer): waiting on it from here would deadlock.
            import ucxx

            _transports_cache = tuple(sorted(ucxx.get_active_transports()))
        else:
            _transports_cache = runtime.call(probe(), 30.0)
    return _transports_cache


def _transport_note() -> str:
    transports = active_transports()
    rdma = any(t.startswith(("rc", "dc", "ud")) for t in transports)
    return f"UCX transports {','.join(transports)}; rdma={'yes' if rdma else 'no'}"


def _as_buffer(piece: Any) -> Any:
    # ucxx takes numpy arrays (host) or anything with __cuda_array_interface__ (a CUDA tensor).
    return piece if getattr(piece, "is_cuda", False) else np.asarray(piece)


def _tcp_reachable(host: str, port: int, timeout_s: float) -> None:
    socket.create_connection((host, port), timeout=timeout_s).close()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_WINDOW = 8
"""Messages in flight per transfer. UCX matches same-tag messages in posting order, so receives posted
ahead still land in the right buffers."""


async def _windowed(operations: Iterator[Awaitable[Any]], *, on_done: Callable[[int], Any]) -> None:
    """Run ``operations`` with up to :data:`_WINDOW` in flight, calling ``on_done(k)`` in order."""
    pending: deque[asyncio.Future[Any]] = deque()
    done = 0
    try:
        for operation in operations:
            pending.append(asyncio.ensure_future(operation))
            if len(pending) >= _WINDOW:
                await pending.popleft()
                on_done(done)
                done += 1
        while pending:
            await pending.popleft()
            on_done(done)
            done += 1
    finally:
        for future in pending:
            future.cancel()


class UcxServer:
    """Serves the holder's tensors over a ucxx listener."""

    carrier = "ucx"

    def __init__(self, leases: LeaseTable, *, advertise_host: str, host_id: str, stall_timeout_s: float) -> None:
        self._leases = leases
        self._advertise_host = advertise_host
        self._host_id = host_id
        self._stall_timeout_s = stall_timeout_s
        self._runtime = UcxRuntime.get()
        self._listener: Any = None
        self._endpoints: set[Any] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    def start(self) -> CarrierAddress:
        """Start the listener on an ephemeral port."""

        async def create() -> Any:
            import ucxx

            return ucxx.create_listener(self._handle, port=0, endpoint_error_handling=ENDPOINT_ERROR_HANDLING)

        self._listener = self._runtime.call(create(), 30.0)
        transports = active_transports()
        host = f"[{self._advertise_host}]" if ":" in self._advertise_host else self._advertise_host
        return CarrierAddress(
            carrier="ucx",
            address=f"{host}:{self._listener.port}",
            host=self._host_id,
            rdma=any(t.startswith(("rc", "dc", "ud")) for t in transports),
            cuda=any(t.startswith(("cuda", "gdr")) for t in transports),
        )

    def close(self) -> None:
        """Stop listening and drop open endpoints (their leases are released)."""

        async def shutdown() -> None:
            for ep in list(self._endpoints):
                ep.abort()
            self._endpoints.clear()
            # Let the handlers see their aborted endpoints and return before the listener goes.
            if self._handlers:
                await asyncio.wait(list(self._handlers), timeout=5.0)
            if self._listener is not None:
                self._listener.close()
                self._listener = None

        with contextlib.suppress(Exception):
            self._runtime.call(shutdown(), 10.0)

    async def _handle(self, ep: Any) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self._endpoints.add(ep)
        try:
            while True:
                try:
                    raw = await ep.recv_obj()
                except Exception:
                    return  # the reader closed its endpoint or died: nothing is leased between requests
                try:
                    request = json.loads(bytes(raw))
                    await self._serve_read(ep, request)
                except (TransferError, ValueError) as exc:
                    logger.info("ucx read aborted: %s", exc)
                    return
                except Exception as exc:
                    logger.info("ucx read aborted, reader gone: %s", _describe(exc))
                    return
        finally:
            self._endpoints.discard(ep)
            with contextlib.suppress(Exception):
                ep.abort()

    async def _send(self, ep: Any, buffer: Any) -> None:
        try:
            await asyncio.wait_for(ep.send(buffer), self._stall_timeout_s)
        except TimeoutError as exc:
            raise TransferTimeout("reader stopped receiving") from exc

    async def _serve_read(self, ep: Any, request: dict[str, Any]) -> None:
        name = str(request.get("name", ""))
        try:
            if request.get("op") != "read":
                raise ProtocolError(f"unknown op {request.get('op')!r}")
            ranges = wire.ranges_from_wire(request.get("ranges", []))
            lease = self._leases.open_read(name, root_hash=request.get("root_hash"), ranges=ranges)
        except TransferError as exc:
            await self._send_obj(ep, wire.error_reply(exc))
            return
        with lease:
            await self._send_obj(ep, {"ok": True})
            flat = lease.entry.flat
            # One message per range, exactly its size (the reader posts a receive of that size);
            # a few in flight at once so UCX pipelines its rendezvous handshakes.
            await _windowed(
                (self._send(ep, _as_buffer(flat[r.offset : r.end])) for r in ranges),
                on_done=lambda _k: None,
            )

    async def _send_obj(self, ep: Any, message: dict[str, Any]) -> None:
        try:
            await asyncio.wait_for(ep.send_obj(json.dumps(message).encode()), self._stall_timeout_s)
        except TimeoutError as exc:
            raise TransferTimeout("reader stopped receiving") from exc


class UcxClient:
    """Reads from holders over ucxx endpoints."""

    carrier = "ucx"

    def __init__(self, *, connect_timeout_s: float) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._runtime = UcxRuntime.get()
        self._idle: dict[str, list[Any]] = {}  # touched only on the runtime loop

    async def fetch(self, address: CarrierAddress, meta: TensorMeta, sink: ChunkSink, deadline: float) -> str:
        """Move ``sink``'s chunks from the holder at ``address`` into the destination."""
        return await self._runtime.run(self._fetch(address, meta, sink, deadline))

    def close(self) -> None:
        """Close idle endpoints."""

        async def shutdown() -> None:
            for eps in self._idle.values():
                for ep in eps:
                    ep.abort()
            self._idle.clear()

        with contextlib.suppress(Exception):
            self._runtime.call(shutdown(), 10.0)

    async def _connect(self, address: CarrierAddress, deadline: float) -> Any:
        import ucxx

        host, port = split_host_port(address.address)
        timeout = max(min(self._connect_timeout_s, deadline - time.monotonic()), 0.001)
        # ucxx's create_endpoint waits out its whole connect timeout when nothing listens. UCX's
        # connection manager listens on a TCP port, so a plain connect is refused at once instead.
        try:
            await asyncio.to_thread(_tcp_reachable, host, port, timeout)
        except OSError as exc:
            raise PeerDisconnected(f"cannot connect to ucx {address.address}: {exc}") from exc
        try:
            return await asyncio.wait_for(
                ucxx.create_endpoint(
                    host, port, endpoint_error_handling=ENDPOINT_ERROR_HANDLING, connect_timeout=timeout
                ),
                timeout,
            )
        except Exception as exc:
            raise PeerDisconnected(f"cannot connect to ucx {address.address}: {_describe(exc)}") from exc

    async def _fetch(self, address: CarrierAddress, meta: TensorMeta, sink: ChunkSink, deadline: float) -> str:
        remaining = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(self._fetch_within(address, meta, sink, deadline), max(remaining, 0.001))
        except TimeoutError as exc:
            raise TransferTimeout(f"ucx read from {address.address} did not finish in time") from exc

    async def _request(self, ep: Any, request: dict[str, Any]) -> dict[str, Any]:
        await ep.send_obj(json.dumps(request).encode())
        reply = json.loads(bytes(await ep.recv_obj()))
        if not isinstance(reply, dict):
            raise ProtocolError("ucx holder sent a reply that is not a JSON object")
        return reply

    async def _fetch_within(self, address: CarrierAddress, meta: TensorMeta, sink: ChunkSink, deadline: float) -> str:
        request = {
            "op": "read",
            "name": meta.name,
            "root_hash": meta.root_hash,
            "ranges": wire.ranges_to_wire(sink.ranges),
        }
        idle = self._idle.setdefault(address.address, [])
        ep = idle.pop() if idle else None
        reused = ep is not None
        healthy = False
        try:
            try:
                if ep is None:
                    ep = await self._connect(address, deadline)
                reply = await self._request(ep, request)
            except TransferError:
                raise
            except Exception as exc:
                if not reused or ep is None:
                    raise PeerDisconnected(f"ucx holder {address.address} went away: {_describe(exc)}") from exc
                ep.abort()  # a pooled endpoint whose holder restarted or closed it: one fresh try
                ep = await self._connect(address, deadline)
                reply = await self._request(ep, request)
            if reply.get("ok", False):
                if sink.is_cuda:
                    receives = (ep.recv(sink.device_target(k)) for k in range(len(sink.ranges)))
                    await _windowed(receives, on_done=lambda k: sink.commit(k, on_device=True))
                else:
                    receives = (ep.recv(np.asarray(sink.host_target(k))) for k in range(len(sink.ranges)))
                    await _windowed(receives, on_done=sink.commit)
            healthy = True
        except (TransferError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise PeerDisconnected(
                f"ucx holder {address.address} went away after {len(sink.verified)} of {len(sink.chunks)} "
                f"chunks: {_describe(exc)}"
            ) from exc
        finally:
            if ep is not None:
                if healthy:
                    idle.append(ep)
                else:
                    ep.abort()
        wire.raise_if_error(reply, meta.name)
        return _transport_note()
