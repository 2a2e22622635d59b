"""Plumbing shared by the stream-socket carriers (tcp, shm): the holder's accept loop with one
thread per connection, the reader's connection pool, and running a blocking transfer from asyncio.

Why threads rather than the event loop: a blocking ``recv_into(..., MSG_WAITALL)`` fills a whole chunk
in one system call with the GIL released. Measured on the 2-core development machine, 256 MiB over
loopback: both reach the same ~3.5 GB/s, but ``loop.sock_recv_into`` needed ~2,100 event-loop wake-ups
(128 KiB each) and ~1.5x the receiver's CPU time (~42 ms against ~28 ms), all of it on the caller's
event loop, which in a rollout server is busy decoding.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from services.common.transport.meta import CarrierAddress, TensorMeta
    from services.common.transport.sink import ChunkSink

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_IDLE_PER_PEER = 8


class SocketServer:
    """Accept connections on a listening socket and serve each in its own thread."""

    def __init__(self, listener: socket.socket, handle: Callable[[socket.socket], None], *, name: str) -> None:
        self._listener = listener
        self._handle = handle
        self._name = name
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._closing = False
        self._thread = threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True)

    def start(self) -> None:
        """Start accepting."""
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _peer = self._listener.accept()
            except OSError:
                # close() shut the listener down; anything else on a listening socket is fatal too.
                if not self._closing:
                    logger.exception("%s: accept failed; no longer serving", self._name)
                return
            with self._lock:
                if self._closing:
                    conn.close()
                    return
                self._connections.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name=f"{self._name}-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._handle(conn)
        except Exception:
            logger.exception("%s: connection handler failed", self._name)
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting and cut open connections (their handlers release their leases)."""
        with self._lock:
            self._closing = True
            connections = list(self._connections)
        # shutdown() wakes a thread blocked in accept()/recv() on Linux; close() alone does not.
        for sock in [self._listener, *connections]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout_s)


class ConnectionPool:
    """Idle connections to holders, reused so a read costs no handshake."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, list[socket.socket]] = {}
        self._closed = False

    def take(self, key: str) -> socket.socket | None:
        """An idle connection to ``key``, if any."""
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def give_back(self, key: str, sock: socket.socket) -> None:
        """Return a healthy connection (one whose last exchange completed)."""
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if not self._closed and len(idle) < _MAX_IDLE_PER_PEER:
                idle.append(sock)
                return
        sock.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            self._closed = True
            idle = [s for socks in self._idle.values() for s in socks]
            self._idle.clear()
        for sock in idle:
            sock.close()


class BlockingJob:
    """A transfer running in a worker thread, which another thread may abort by cutting its socket."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.aborted = False

    def attach(self, sock: socket.socket) -> None:
        """The socket the job is about to block on."""
        with self._lock:
            self._sock = sock
            aborted = self.aborted
        if aborted:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def abort(self) -> None:
        """Make the job's blocking call return at once (it then raises)."""
        with self._lock:
            self.aborted = True
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


async def run_blocking(
    executor: concurrent.futures.Executor, job: BlockingJob, fn: Callable[[], T], *, abort_grace_s: float = 5.0
) -> T:
    """Run ``fn`` in ``executor``; if the awaiting task is cancelled, abort the job and wait for the
    thread to stop, so that no byte is written into the destination after this returns."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(executor, fn)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        job.abort()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(future, abort_grace_s)
        raise


class SocketClient:
    """The reader side of a stream-socket carrier: pooled connections to holders, each read one
    blocking transfer job in ``executor`` (the carrier's ``_fetch``), abortable from the event loop."""

    def __init__(self, executor: concurrent.futures.Executor, *, connect_timeout_s: float) -> None:
        self._executor = executor
        self._connect_timeout_s = connect_timeout_s
        self._pool = ConnectionPool()

    def _fetch(
        self, job: BlockingJob, address: CarrierAddress, meta: TensorMeta, sink: ChunkSink, deadline: float
    ) -> str:
        """Move ``sink``'s chunks of ``meta`` from the holder at ``address`` (in a worker thread)."""
        raise NotImplementedError

    async def fetch(self, address: CarrierAddress, meta: TensorMeta, sink: ChunkSink, deadline: float) -> str:
        """Move ``sink``'s chunks from the holder at ``address`` into the destination."""
        job = BlockingJob()
        return await run_blocking(self._executor, job, lambda: self._fetch(job, address, meta, sink, deadline))

    async def fetch_many(
        self, address: CarrierAddress, items: Sequence[tuple[TensorMeta, ChunkSink]], deadline: float
    ) -> None:
        """Several reads from one holder, in order, in one transfer job over one connection; stops at
        the first that fails. Each sink's bytes are committed (hashed where it asks) as they land, and
        the sink is finished before the next read starts."""
        job = BlockingJob()

        def run() -> None:
            for meta, sink in items:
                self._fetch(job, address, meta, sink, deadline)
                sink.finish()

        await run_blocking(self._executor, job, run)

    def close(self) -> None:
        """Drop pooled connections."""
        self._pool.close()
