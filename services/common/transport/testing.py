"""A :class:`TensorHolder` in a child process, driven over a pipe.

The contract tests and ``benchmarks/transport.py`` need a holder that is a real other process (so
bytes really cross a process boundary, and the holder can be SIGKILLed or SIGSTOPped mid-transfer)
yet can be told what to hold, corrupt or overwrite. Not used by the services themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from services.common.transport import errors
from services.common.transport.buffers import as_bytes
from services.common.transport.holder import TensorHolder
from services.common.transport.meta import CarrierAddress, TensorRef, dtype_from_name, dtype_name

logger = logging.getLogger(__name__)


def pattern(shape: Sequence[int], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Deterministic pseudo-random content: same ``(shape, dtype, seed)``, same bytes, any process."""
    numel = 1
    for d in shape:
        numel *= d
    size_bytes = numel * torch.empty((), dtype=dtype).element_size()
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (size_bytes,), dtype=torch.uint8, generator=generator)
    if dtype == torch.bool:
        raw &= 1  # only 0 and 1 are valid bools
    return raw.view(dtype).reshape(tuple(shape))


class HolderCommandError(RuntimeError):
    """A command failed in the holder process with an error that is not a ``TransferError``."""


class HolderProcess:
    """Owns one holder child process; every call has a timeout."""

    def __init__(
        self,
        *,
        carriers: Sequence[str] = ("tcp", "shm"),
        host_id: str | None = None,
        chunk_size_bytes: int | None = None,
        stall_timeout_s: float = 30.0,
        max_concurrent_reads: int = 64,
        log_level: int = logging.WARNING,
    ) -> None:
        options: dict[str, Any] = {
            "carriers": list(carriers),
            "host_id": host_id,
            "stall_timeout_s": stall_timeout_s,
            "max_concurrent_reads": max_concurrent_reads,
        }
        if chunk_size_bytes is not None:
            options["chunk_size_bytes"] = chunk_size_bytes
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_child_main, args=(child_conn, options, log_level), name="transport-holder", daemon=True
        )
        self._child_conn = child_conn
        self._lock = threading.Lock()
        self.carriers: tuple[CarrierAddress, ...] = ()
        self.host_id = ""

    def start(self, timeout_s: float = 60.0) -> HolderProcess:
        """Start the child and wait until its holder serves."""
        self._process.start()
        self._child_conn.close()
        ready = self._receive(timeout_s)
        self.carriers = tuple(CarrierAddress.from_dict(c) for c in ready["carriers"])
        self.host_id = str(ready["host_id"])
        return self

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self._process.pid is not None
        return self._process.pid

    def _receive(self, timeout_s: float) -> Any:
        if not self._conn.poll(timeout_s):
            raise TimeoutError(f"holder process {self._process.pid} did not answer within {timeout_s} s")
        reply = self._conn.recv()
        if "error" in reply:
            cls = getattr(errors, reply["error"], None)
            if isinstance(cls, type) and issubclass(cls, errors.TransferError):
                raise cls(reply["message"])
            raise HolderCommandError(f"{reply['error']}: {reply['message']}")
        return reply["result"] if "result" in reply else reply

    def call(self, op: str, *, timeout_s: float = 60.0, **kwargs: Any) -> Any:
        """Run one command in the holder process and return its result."""
        with self._lock:
            self._conn.send({"op": op, **kwargs})
            return self._receive(timeout_s)

    async def acall(self, op: str, *, timeout_s: float = 60.0, **kwargs: Any) -> Any:
        """:meth:`call` without blocking the event loop."""
        return await asyncio.to_thread(self.call, op, timeout_s=timeout_s, **kwargs)

    def register(
        self,
        name: str,
        shape: Sequence[int],
        dtype: torch.dtype,
        *,
        seed: int = 0,
        shared: bool = True,
        chunk_size_bytes: int | None = None,
    ) -> TensorRef:
        """Register ``pattern(shape, dtype, seed)`` as ``name``; ``shared`` puts it in shared memory."""
        ref = self.call(
            "register",
            name=name,
            shape=list(shape),
            dtype=dtype_name(dtype),
            seed=seed,
            shared=shared,
            chunk_size_bytes=chunk_size_bytes,
        )
        return TensorRef.from_dict(ref)

    def kill(self) -> None:
        """SIGKILL the holder and reap it."""
        if self._process.is_alive():
            os.kill(self.pid, signal.SIGKILL)
        self._process.join(10)

    def pause(self) -> None:
        """SIGSTOP: the holder stops answering but keeps its sockets open."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        os.kill(self.pid, signal.SIGCONT)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the holder cleanly, or kill it if it does not stop in time."""
        if self._process.is_alive():
            with contextlib.suppress(Exception):
                self.call("stop", timeout_s=timeout_s)
            self._process.join(timeout_s)
        if self._process.is_alive():
            self.kill()
        self._conn.close()

    def __enter__(self) -> HolderProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _child_main(conn: multiprocessing.connection.Connection, options: dict[str, Any], log_level: int) -> None:
    logging.basicConfig(level=log_level, format="holder %(process)d %(levelname)s %(name)s: %(message)s")
    asyncio.run(_child_serve(conn, options))


async def _child_serve(conn: multiprocessing.connection.Connection, options: dict[str, Any]) -> None:
    holder = TensorHolder(bind_host="127.0.0.1", **options)
    await holder.start()
    conn.send(
        {
            "carriers": [c.to_dict() for c in holder.carriers],
            "host_id": holder.capabilities.host_id,
            "pid": os.getpid(),
        }
    )
    writes: dict[str, tuple[contextlib.AsyncExitStack, torch.Tensor]] = {}
    started = time.process_time()
    try:
        while True:
            try:
                request = await asyncio.to_thread(conn.recv)
            except EOFError:
                return  # the parent is gone
            op = request.pop("op")
            try:
                result = await _run(holder, writes, op, request, started)
            except Exception as exc:
                conn.send({"error": type(exc).__name__, "message": str(exc)})
            else:
                conn.send({"result": result})
            if op == "stop":
                return
    finally:
        for stack, _ in writes.values():
            await stack.aclose()
        await holder.close()


async def _run(
    holder: TensorHolder,
    writes: dict[str, tuple[contextlib.AsyncExitStack, torch.Tensor]],
    op: str,
    args: dict[str, Any],
    started_cpu_s: float,
) -> Any:
    if op == "stop":
        return None
    if op == "register":
        dtype = dtype_from_name(args["dtype"])
        shape = tuple(args["shape"])
        tensor = holder.allocate(shape, dtype) if args["shared"] else torch.empty(shape, dtype=dtype)
        tensor.copy_(pattern(shape, dtype, args["seed"]))
        ref = await holder.register(args["name"], tensor, chunk_size_bytes=args.get("chunk_size_bytes"))
        return ref.to_dict()
    if op == "corrupt":
        # Flip bytes behind the holder's back: the metadata (hashes) no longer matches the buffer.
        flat = as_bytes(holder.tensor(args["name"]))
        flat[args["offset"]] ^= 0xFF
        return None
    if op == "begin_write":
        stack = contextlib.AsyncExitStack()
        tensor = await stack.enter_async_context(holder.writing(args["name"], timeout_s=args["wait_s"]))
        writes[args["name"]] = (stack, tensor)
        return None
    if op == "end_write":
        stack, tensor = writes.pop(args["name"])
        if args.get("seed") is not None:
            tensor.copy_(pattern(tuple(tensor.shape), tensor.dtype, args["seed"]))
        await stack.aclose()
        return holder.ref(args["name"]).to_dict()
    if op == "unregister":
        await holder.unregister(args["name"], timeout_s=args["wait_s"])
        return None
    if op == "active_reads":
        return holder.active_reads(args.get("name"))
    if op == "cpu_seconds":
        return time.process_time() - started_cpu_s
    raise ValueError(f"unknown holder command {op!r}")
