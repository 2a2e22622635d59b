"""Tensor transport: every carrier side by side with gRPC streaming and the raw ceilings, in one run.

Moves one tensor (256 MiB) between two processes on loopback, each way measured the same way
(median of repetitions into a destination that was already touched, so page faults are not counted):

- ``memcpy``: numpy copy between two buffers of one process: the ceiling for shared memory;
- ``raw_socket``: a child process ``sendall``s the bytes, this one ``recv_into(MSG_WAITALL)``s them,
  no framing, no hashing: the ceiling for any socket carrier;
- ``tcp`` / ``shm`` / ``ucx``: ``TensorReader.read`` from a ``TensorHolder`` in a child process, each
  chunk verified against its hash (xxh3-128) as it lands;
- ``grpc``: a minimal grpc.aio server streaming the same bytes as 4 MiB ``bytes`` messages, the client
  copying each into the destination (no hashing: the baseline is given that advantage).

Run: ``python -m benchmarks.transport [--quick] [--json PATH]``. CPU seconds per GB add both processes'
CPU time (from /proc) over the timed repetitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import socket
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.report import Progress, emit, standard_parser

logger = logging.getLogger(__name__)

SIZE_BYTES = 256 << 20
GRPC_CHUNK_BYTES = 4 << 20
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may contain spaces; the counters follow its closing parenthesis.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass
class Measurement:
    """Repeated timings of moving ``size_bytes`` one way."""

    size_bytes: int
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    first_seconds: float | None = None
    detail: str = ""

    @property
    def gbps(self) -> float:
        """Median throughput, GB/s (10^9 bytes)."""
        return self.size_bytes / statistics.median(self.seconds) / 1e9

    @property
    def cpu_s_per_gb(self) -> float:
        """CPU seconds (both processes) per GB moved."""
        return self.cpu_seconds / (len(self.seconds) * self.size_bytes / 1e9)


@dataclass
class Method:
    """One way of moving the bytes, ready to run: ``once`` moves them once."""

    once: Callable[[], Awaitable[str]]
    peer_pid: int | None
    """The other process, whose CPU time counts too (None: all in this process)."""


def _spawn(target: Callable[..., None], *args: Any) -> tuple[multiprocessing.process.BaseProcess, Any]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(child, *args), daemon=True)
    process.start()
    if not parent.poll(60):
        process.kill()
        raise TimeoutError(f"{getattr(target, '__name__', target)} did not start")
    return process, parent


# -- ceilings -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def memcpy_method(size_bytes: int) -> AsyncIterator[Method]:
    """One process, numpy copy between two touched buffers."""
    import numpy as np

    src = np.ones(size_bytes, dtype=np.uint8)
    dst = np.zeros(size_bytes, dtype=np.uint8)
    dst.fill(1)

    async def once() -> str:
        np.copyto(dst, src)
        return ""

    yield Method(once, None)


def _raw_socket_sender(conn: multiprocessing.connection.Connection, size_bytes: int) -> None:
    import numpy as np

    data = np.ones(size_bytes, dtype=np.uint8)
    view = data.data
    with socket.create_server(("127.0.0.1", 0)) as listener:
        conn.send(listener.getsockname()[1])
        peer, _ = listener.accept()
        with peer:
            while peer.recv(1):
                peer.sendall(view)


@contextlib.asynccontextmanager
async def raw_socket_method(size_bytes: int) -> AsyncIterator[Method]:
    """A child ``sendall``s the buffer each time this side asks; this side ``recv_into``s it whole."""
    import numpy as np

    process, parent = _spawn(_raw_socket_sender, size_bytes)
    try:
        port = parent.recv()
        dst = np.ones(size_bytes, dtype=np.uint8)
        view = dst.data
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.settimeout(None)  # blocking, so MSG_WAITALL waits for the whole buffer

            async def once() -> str:
                sock.sendall(b"x")
                got = 0
                while got < size_bytes:
                    n = sock.recv_into(view[got:], size_bytes - got, socket.MSG_WAITALL)
                    if n == 0:
                        raise ConnectionError("raw socket sender closed")
                    got += n
                return ""

            assert process.pid is not None
            yield Method(once, process.pid)
    finally:
        process.kill()
        process.join(10)


# -- carriers -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def carrier_methods(size_bytes: int, carriers: list[str]) -> AsyncIterator[dict[str, Method]]:
    """Each carrier reading the same registered tensor from one holder process."""
    import torch

    from services.common.transport import TensorReader
    from services.common.transport.testing import HolderProcess

    with HolderProcess(carriers=carriers) as holder:
        ref = holder.register("bench", (size_bytes,), torch.uint8, seed=1)
        dst = torch.ones(size_bytes, dtype=torch.uint8)  # touched: page faults are not the carrier's
        async with TensorReader(timeout_s=120.0) as reader:

            def method(carrier: str) -> Method:
                async def once() -> str:
                    return (await reader.read(ref, dst, carrier=carrier)).detail

                return Method(once, holder.pid)

            yield {carrier: method(carrier) for carrier in carriers}


# -- gRPC streaming baseline ----------------------------------------------------------------------


def _grpc_server_main(conn: multiprocessing.connection.Connection, size_bytes: int, chunk_bytes: int) -> None:
    asyncio.run(_grpc_serve(conn, size_bytes, chunk_bytes))


async def _grpc_serve(conn: multiprocessing.connection.Connection, size_bytes: int, chunk_bytes: int) -> None:
    import grpc
    import numpy as np

    data = np.ones(size_bytes, dtype=np.uint8)
    view = data.data

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for offset in range(0, size_bytes, chunk_bytes):
            # A gRPC message is a bytes object: this copy is what any servicer pays.
            yield bytes(view[offset : offset + chunk_bytes])

    handler = grpc.method_handlers_generic_handler(
        "bench.Bytes", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
    )
    limit = 2 * chunk_bytes
    server = grpc.aio.server(
        options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    conn.send(port)
    with contextlib.suppress(EOFError):
        await asyncio.to_thread(conn.recv)  # any message (or the parent's exit) means stop
    await server.stop(None)


@contextlib.asynccontextmanager
async def grpc_method(size_bytes: int, chunk_bytes: int) -> AsyncIterator[Method]:
    """grpc.aio server-streaming of ``chunk_bytes`` messages, copied into a preallocated buffer."""
    import grpc
    import numpy as np

    process, parent = _spawn(_grpc_server_main, size_bytes, chunk_bytes)
    try:
        port = parent.recv()
        dst = np.ones(size_bytes, dtype=np.uint8)
        options = [("grpc.max_receive_message_length", 2 * chunk_bytes)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            call = channel.unary_stream("/bench.Bytes/Stream")

            async def once() -> str:
                offset = 0
                async for message in call(b""):
                    dst[offset : offset + len(message)] = np.frombuffer(message, dtype=np.uint8)
                    offset += len(message)
                if offset != size_bytes:
                    raise RuntimeError(f"gRPC stream delivered {offset} of {size_bytes} bytes")
                return ""

            assert process.pid is not None
            yield Method(once, process.pid)
    finally:
        parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()


async def measure(methods: dict[str, Method], size_bytes: int, reps: int) -> dict[str, Measurement]:
    """Time every method ``reps`` times, interleaved (one of each, then again) so that background
    load on a shared machine falls on all of them alike. Each method's first run (connecting,
    mapping, warming caches) is timed apart and not part of the median."""
    results = {name: Measurement(size_bytes) for name in methods}
    for name, method in methods.items():
        started = time.perf_counter()
        results[name].detail = await method.once()
        results[name].first_seconds = time.perf_counter() - started
    progress = Progress("repetitions", reps * len(methods))
    for _ in range(reps):
        for name, method in methods.items():
            cpu_before = time.process_time() + (_cpu_seconds(method.peer_pid) if method.peer_pid else 0.0)
            started = time.perf_counter()
            await method.once()
            results[name].seconds.append(time.perf_counter() - started)
            cpu_after = time.process_time() + (_cpu_seconds(method.peer_pid) if method.peer_pid else 0.0)
            results[name].cpu_seconds += cpu_after - cpu_before
            progress.advance()
    progress.finish()
    return results


# -- report -------------------------------------------------------------------------------------


async def run(*, quick: bool) -> dict[str, Any]:
    """Measure everything and return the report sections."""
    from services.common.transport import DEFAULT_CHUNK_SIZE_BYTES, DEFAULT_HASH_ALGO, probe_host

    reps = 5 if quick else 15
    size_bytes = SIZE_BYTES
    carriers = ["tcp", "shm"]
    if importlib.util.find_spec("ucxx") is not None:
        carriers.append("ucx")

    async with contextlib.AsyncExitStack() as stack:
        methods = {
            "memcpy": await stack.enter_async_context(memcpy_method(size_bytes)),
            "raw_socket": await stack.enter_async_context(raw_socket_method(size_bytes)),
            **await stack.enter_async_context(carrier_methods(size_bytes, carriers)),
            "grpc": await stack.enter_async_context(grpc_method(size_bytes, GRPC_CHUNK_BYTES)),
        }
        measured = await measure(methods, size_bytes, reps)
    memcpy, raw, grpc = measured["memcpy"], measured["raw_socket"], measured["grpc"]
    by_carrier = {c: measured[c] for c in carriers}

    figures: dict[str, Any] = {}
    for name, m in measured.items():
        figures[f"{name}_gbps"] = round(m.gbps, 3)
        figures[f"{name}_median_s"] = round(statistics.median(m.seconds), 4)
        figures[f"{name}_cpu_s_per_gb"] = round(m.cpu_s_per_gb, 3)
        if m.first_seconds is not None and name in by_carrier:
            # The first read includes connecting (and for shm, mapping the holder's segment).
            figures[f"{name}_first_read_gbps"] = round(size_bytes / m.first_seconds / 1e9, 3)
    ratios: dict[str, Any] = {
        "tcp_vs_ceiling": round(by_carrier["tcp"].gbps / raw.gbps, 3),
        "shm_vs_ceiling": round(by_carrier["shm"].gbps / memcpy.gbps, 3),
        "tcp_vs_grpc": round(by_carrier["tcp"].gbps / grpc.gbps, 3),
    }
    if "ucx" in by_carrier:
        ratios["ucx_vs_ceiling"] = round(by_carrier["ucx"].gbps / raw.gbps, 3)
    ratios["goals_met"] = (
        ratios["tcp_vs_ceiling"] >= 0.8 and ratios["tcp_vs_grpc"] >= 2.0 and ratios["shm_vs_ceiling"] >= 0.5
    )
    config = {
        "size_bytes": size_bytes,
        "repetitions": reps,
        "statistic": "median of interleaved repetitions; each method's first run is timed apart",
        "quick": quick,
        "chunk_size_bytes": DEFAULT_CHUNK_SIZE_BYTES,
        "hash_algo": DEFAULT_HASH_ALGO,
        "grpc_message_bytes": GRPC_CHUNK_BYTES,
        "grpc_hashing": False,
        "carriers": carriers,
        "carrier_details": {c: m.detail for c, m in by_carrier.items() if m.detail},
        "ceilings": {"shm": "memcpy", "tcp": "raw_socket", "ucx": "raw_socket"},
        "probe": probe_host().to_dict(),
    }
    return {"config": config, "figures": figures, "ratios": ratios}


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    args = standard_parser(__doc__.splitlines()[0] if __doc__ else "transport benchmark").parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sections = asyncio.run(run(quick=args.quick))
    emit("transport", simulated=[], json_path=args.json, **sections)


if __name__ == "__main__":
    main()
