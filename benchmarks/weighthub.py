"""Weight hub: K reader processes getting each new version, side by side with the baselines, in one run.

On this machine (part (a) of issue #3), for K = 1, 2, 4, 8 reader processes and a model of 16
float32 tensors (256 MiB; 64 MiB with ``--quick``):

- ``hub``: the trainer publishes through a ``Publisher`` (one read slot for readers on other
  hosts, so that its NIC sends one copy; readers on its host copy out of its shared memory
  themselves, which costs it no copy, so the hub gives it ``shm_max_concurrent_reads`` = 8 slots
  for them and does not spare it for them: each reads the whole version straight from it, with no
  wait for peers to pass chunks on); each reader process runs a ``Reader`` that watches and
  fetches, a source's tensors in a few batches (one transfer job each); the hub plans each
  reader's first read as the version commits and sends it with the announcement (no GetPlan
  round trip before the first byte; later plans are asked for as reads run). Across hosts the hub
  spreads the trainer's chunks over the readers that held the previous version when the trainer
  can serve them at once (each starts on its own slice; over the one NIC slot one reader streams
  them all), and names a reader as the source of chunks it is still fetching from a holder that
  has them (the read waits at that reader until each chunk lands: followers need no progress
  report and no new plan first). Every chunk is hashed where it crosses a socket; a same-host
  copy out of a holder's shared memory is not hashed (the holder serves it under a read lease,
  only once it is in its memory hashed or verified), the naive scheme's reads below are. Timed
  from the start of ``publish`` (the trainer's copy into its buffers and hashing included) until
  every reader holds the version (its fetch returned: every chunk in its buffers and verified;
  the hub hears of it in the background). Two warm-up versions first, so buffers are touched and
  connections made; the timed version differs in every chunk (a full read).
- ``naive``: every reader reads every tensor straight from the trainer's ``TensorHolder`` with the
  same transport, two tensors at a time, every chunk hashed (the transport's default read). Timed
  from the trainer's update of its tensors (copy + re-hash) until all are done. For orientation,
  ``naive_k8_noverify``: the same at K = 8 on one host with the hash of the shared-memory copies
  skipped as the hub's readers skip it (``hub_vs_naive_noverify_k8``; not a headline figure).
- ``broadcast``: ``torch.distributed.broadcast`` (gloo) of the 16 tensors from the trainer (rank 0)
  to K ranks, timed on rank 0 until a barrier after the last broadcast.

Each time is the median of several versions (every sample is kept in ``samples_s``). Trainer
egress (``egress_per_version_k8``) is what the trainer sends over sockets, its NIC's load: across
hosts (``_net``) about one model whatever K, as the hub plans it; on one host none, since every
reader copies the version straight out of the trainer's shared memory (the fastest plan there: a
tree of peers only adds waiting, and the reader, not the trainer, makes the copy). What the
trainer serves by any carrier, shared-memory reads in place included, is ``served_per_version_k8``
(K models on one host).

Each is run twice: all processes as one host (the hub plans shared memory), and every process
declared a host of its own (``_net``: every byte crosses a loopback socket; this shows the plan and
the trainer's egress, not a network's speed). Then: a holder killed at 50 % of a transfer, and a
delta read after 5 % of the chunks changed. The ceilings (one loopback socket, memcpy) come from
``benchmarks/transport.py``'s methods, measured in the same run.

Part (b), simulated (``services/weighthub/sim.py``, a flow-level simulator driving the hub's own
planner): the three TensorHub workloads at 1,024-1,536 GPUs (``sim_standalone_stall``,
``sim_elastic_update``, ``sim_crossdc_stall``: baseline / hub), and this machine described to the
simulator by the rates measured in this run (cores, socket, memcpy, hash, one small read, one hub
RPC): its predictions of the ``hub`` and ``naive`` times of part (a) for every K, host and ``_net``,
and their mean relative error ``sim_vs_measured_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import Progress, emit, standard_parser
from benchmarks.transport import memcpy_method, raw_socket_method
from services.common.redis_proc import RedisProcess, free_port

logger = logging.getLogger("benchmarks.weighthub")

NUM_TENSORS = 16
K_VALUES = (1, 2, 4, 8)
READER_MAX_CONCURRENT_READS = 8
"""Readers each serve up to 8 others at once: on one host a peer's read is that peer's own copy,
so a wider fan-out per reader shortens the tree (measured: K = 8, 256 MiB, 0.65 s against 0.87 s
with the hub's default of 4)."""
READS_PER_SOURCE = 4
"""Chunk reads a reader keeps in flight per source."""
TRAINER_HOST = "trainer-host"


@functools.cache
def model_weights(size_bytes: int, seed: int) -> dict[str, torch.Tensor]:
    """``NUM_TENSORS`` float32 tensors of ``size_bytes`` in all; every chunk differs between seeds.
    Made once per size and seed (every scheme reuses them; nobody modifies them in place)."""
    numel = size_bytes // NUM_TENSORS // 4
    generator = torch.Generator().manual_seed(seed)
    return {f"layers.{i}.weight": torch.randn(numel, generator=generator) for i in range(NUM_TENSORS)}


# -- reader worker processes ----------------------------------------------------------------------


def _worker_main(conn: multiprocessing.connection.Connection, index: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    asyncio.run(_worker(conn, index))


async def _worker(conn: multiprocessing.connection.Connection, index: int) -> None:
    loop = asyncio.get_running_loop()
    conn.send("ready")
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        kind = command[0]
        if kind == "exit":
            return
        if kind == "hub":
            await _hub_worker(conn, loop, *command[1:])
        elif kind == "naive":
            await _naive_worker(conn, loop, *command[1:])
        elif kind == "gloo":
            await loop.run_in_executor(None, _gloo_worker, conn, *command[1:])
        elif kind == "latency":
            conn.send(await _latency_worker(*command[1:]))


async def _latency_worker(hub: str, ref_json: str) -> tuple[float, float]:
    """Median seconds of one small tensor-plane read and of one hub RPC, from this process."""
    from seedstack.weighthub.v1 import weighthub_pb2 as pb

    from clients.base import RPCError
    from clients.weighthub import WeightHubClient
    from services.common.transport import TensorReader, TensorRef

    ref = TensorRef.from_json(ref_json)
    dst = torch.empty(ref.meta.size_bytes, dtype=torch.uint8)
    async with TensorReader(host_id="latency-reader") as reader:
        reads = []
        for _ in range(21):
            started = time.perf_counter()
            await reader.read(ref, dst)
            reads.append(time.perf_counter() - started)
    async with WeightHubClient(hub) as client:
        rpcs = []
        for _ in range(21):
            started = time.perf_counter()
            with contextlib.suppress(RPCError):
                await client.get_manifest(pb.GetManifestRequest(model="bench-k1-host", version=0))
            rpcs.append(time.perf_counter() - started)
    return statistics.median(reads[1:]), statistics.median(rpcs[1:])


async def _hub_worker(
    conn: multiprocessing.connection.Connection,
    loop: asyncio.AbstractEventLoop,
    hub: str,
    model: str,
    holder_id: str,
    host: str,
) -> None:
    from clients.weighthub import Reader

    async with Reader(
        hub,
        model=model,
        holder_id=holder_id,
        host=host,
        transport_bind_host="127.0.0.1",
        max_concurrent_reads=READER_MAX_CONCURRENT_READS,
        reads_per_source=READS_PER_SOURCE,
    ) as reader:

        async def follow() -> None:
            async for version in reader.watch():
                cpu_started = time.process_time()
                await reader.fetch(version)
                done_at = time.time()
                await reader.reported()  # its CPU counts too (the ReportHeld after the fetch)
                cpu_s = time.process_time() - cpu_started
                stats = reader.last_fetch
                conn.send(
                    (
                        "fetched",
                        version,
                        done_at,
                        dict(stats.sources),
                        stats.bytes_read,
                        stats.num_read_failures,
                        stats.num_plans,
                        cpu_s,
                    )
                )

        task = asyncio.create_task(follow())
        conn.send("started")
        await loop.run_in_executor(None, conn.recv)  # "stop"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    gc.collect()  # this reader's buffers (shared memory) go before the next scheme allocates its own
    conn.send("stopped")


async def _naive_worker(
    conn: multiprocessing.connection.Connection,
    loop: asyncio.AbstractEventLoop,
    sizes: list[int],
    host_id: str | None,
    parallel: int = 2,
    verify: bool = True,
) -> None:
    from services.common.transport import TensorReader, TensorRef

    buffers = [torch.ones(n, dtype=torch.uint8) for n in sizes]
    async with TensorReader(host_id=host_id) as reader:
        limit = asyncio.Semaphore(parallel)

        async def one(ref: TensorRef, dst: torch.Tensor) -> None:
            async with limit:
                await reader.read(ref, dst, verify=verify)

        conn.send("started")
        while (command := await loop.run_in_executor(None, conn.recv))[0] == "go":
            refs = [TensorRef.from_json(r) for r in command[1]]

            started = time.perf_counter()
            await asyncio.gather(*(one(r, b) for r, b in zip(refs, buffers, strict=True)))
            conn.send(("done", time.time(), time.perf_counter() - started))
    conn.send("stopped")


def _gloo_worker(
    conn: multiprocessing.connection.Connection, rank: int, world: int, port: int, sizes: list[int], reps: int
) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    buffers = [torch.ones(n // 4, dtype=torch.float32) for n in sizes]
    for _ in range(reps):
        dist.barrier()
        for buffer in buffers:
            dist.broadcast(buffer, src=0)
        dist.barrier()
    dist.destroy_process_group()
    conn.send("stopped")


class Workers:
    """A pool of reader processes, started once and reused by every scheme."""

    def __init__(self, count: int) -> None:
        # A fork server that imported torch and the clients once forks every worker: starting 9
        # interpreters that each import torch costs ~20 s on a loaded 2-core host, a fork does not.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", "torch.distributed", "clients.weighthub"])
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        for index in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=_worker_main, args=(child, index), daemon=True)
            process.start()
            self.processes.append(process)
            self.conns.append(parent)
        for conn in self.conns:
            if not conn.poll(120) or conn.recv() != "ready":
                raise TimeoutError("a reader process did not start")

    def close(self) -> None:
        for conn, process in zip(self.conns, self.processes, strict=True):
            with contextlib.suppress(OSError, BrokenPipeError):
                if process.is_alive():
                    conn.send(("exit",))
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)


async def _recv(conn: multiprocessing.connection.Connection, timeout_s: float = 300.0) -> Any:
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, conn.poll, timeout_s):
        raise TimeoutError("a reader process did not answer")
    return conn.recv()


# -- schemes ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_hub(redis_url: str) -> AsyncIterator[str]:
    from services.weighthub.config import WeightHubConfig
    from services.weighthub.server import create_server

    config = WeightHubConfig(redis_url=redis_url, port=0, host="127.0.0.1", grace_s=0.2)
    server = await create_server(config)
    await server.server.start()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.stop(0.2)


async def hub_scheme(
    hub: str, workers: Workers, k: int, size_bytes: int, *, net: bool, reps: int, delta: bool = False
) -> dict[str, Any]:
    """Time for K readers to hold a new version through the hub (median of ``reps`` versions after
    two warm-up ones); the trainer's egress per version (bytes it sends over sockets) and the bytes
    it serves per version (its shared memory read in place by same-host readers included)."""
    from clients.weighthub import Publisher

    model = f"bench-k{k}-{'net' if net else 'host'}-{size_bytes}"
    host = TRAINER_HOST if net else ""
    result: dict[str, Any] = {}
    async with Publisher(
        hub,
        model=model,
        host=host,
        max_concurrent_reads=1,
        transport_bind_host="127.0.0.1",
        holder_id=f"{model}-trainer",
    ) as publisher:
        conns = workers.conns[:k]
        for i, conn in enumerate(conns):
            conn.send(("hub", hub, model, f"{model}-reader{i}", f"reader-host-{i}" if net else ""))
        for conn in conns:
            assert await _recv(conn) == "started"
        versions = [model_weights(size_bytes, seed) for seed in range(1, 3 + reps)]
        samples, served, plans, cpu = [], [], [], []
        for version, tensors in enumerate(versions, start=1):
            started = time.time()
            await publisher.publish(version, tensors)
            done = [await _recv(conn) for conn in conns]
            assert all(d[1] == version for d in done), done
            if version > 2:
                samples.append(max(d[2] for d in done) - started)
                served.append(sum(d[3].get(publisher.holder_id, 0) for d in done))
                plans.append(statistics.mean(d[6] for d in done))
                cpu.append(statistics.mean(d[7] for d in done))
        result = {
            "seconds": statistics.median(samples),
            "samples_s": samples,
            # Every reader shares the trainer's host (shared memory, read in place) or none does.
            "egress_bytes": max(served) if net else 0,
            "egress_per_version": (max(served) if net else 0) / size_bytes,
            "served_per_version": max(served) / size_bytes,
            "plans_per_reader": statistics.mean(plans),
            "reader_cpu_s": statistics.median(cpu),
            "read_failures": sum(d[5] for d in done),
        }
        if delta:
            changed = dict(versions[-1])
            num_chunks = size_bytes // (4 << 20)
            num_changed = max(1, round(0.05 * num_chunks))
            chunk_elems = (4 << 20) // 4
            per_tensor = num_chunks // NUM_TENSORS
            touched = 0
            for c in range(0, num_chunks, num_chunks // num_changed)[:num_changed]:
                name = f"layers.{c // per_tensor}.weight"
                offset = (c % per_tensor) * chunk_elems
                changed[name] = changed[name].clone()
                changed[name][offset : offset + 10] += 1.0
                touched += 1
            await publisher.publish(len(versions) + 1, changed)
            done = [await _recv(conn) for conn in conns]
            result["delta_changed_chunks"] = touched
            result["delta_num_chunks"] = num_chunks
            result["delta_changed_fraction"] = touched / num_chunks
            result["delta_bytes_fraction"] = statistics.mean(d[4] for d in done) / size_bytes
        for conn in conns:
            conn.send("stop")
        for conn in conns:
            while (await _recv(conn)) != "stopped":
                pass
    return result


async def naive_scheme(
    workers: Workers, k: int, size_bytes: int, *, net: bool, reps: int, verify: bool = True
) -> dict[str, Any]:
    """Every reader reads every tensor from the trainer's holder (median of ``reps`` after a warm-up);
    ``verify=False`` skips the hash of shared-memory copies (over a socket the transport hashes anyway)."""
    from services.common.transport import TensorHolder

    tensors = model_weights(size_bytes, 1)
    names = list(tensors)
    async with TensorHolder(bind_host="127.0.0.1", host_id="naive-trainer" if net else None) as holder:
        for name in names:
            buffer = holder.allocate(tuple(tensors[name].shape), torch.float32)
            buffer.copy_(tensors[name])
            await holder.register(name, buffer)
        conns = workers.conns[:k]
        sizes = [tensors[n].numel() * 4 for n in names]
        for i, conn in enumerate(conns):
            conn.send(("naive", sizes, f"naive-reader-{i}" if net else None, 2, verify))
        for conn in conns:
            assert await _recv(conn) == "started"
        samples = []
        fresh_versions = [model_weights(size_bytes, seed) for seed in range(2, 3 + reps)]
        for i, fresh in enumerate(fresh_versions):  # the first is a warm-up
            started = time.time()
            for name in names:
                await holder.update(name, fresh[name])
            refs = [holder.ref(n).to_json() for n in names]
            for conn in conns:
                conn.send(("go", refs))
            done = [await _recv(conn) for conn in conns]
            if i:
                samples.append(max(d[1] for d in done) - started)
        for conn in conns:
            conn.send(("stop",))
        for conn in conns:
            assert await _recv(conn) == "stopped"
    return {"seconds": statistics.median(samples), "samples_s": samples, "egress_per_version": float(k)}


async def broadcast_scheme(workers: Workers, k: int, size_bytes: int, *, reps: int) -> dict[str, Any]:
    """gloo broadcast of every tensor from rank 0 (this process) to K ranks (median of ``reps``
    after a warm-up)."""
    import torch.distributed as dist

    port = free_port()
    sizes = [t.numel() * 4 for t in model_weights(size_bytes, 1).values()]
    reps += 1
    for rank, conn in enumerate(workers.conns[:k], start=1):
        conn.send(("gloo", rank, k + 1, port, sizes, reps))

    def rank0() -> list[float]:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=k + 1)
        tensors = list(model_weights(size_bytes, 1).values())
        samples = []
        for _ in range(reps):
            dist.barrier()
            started = time.perf_counter()
            for tensor in tensors:
                dist.broadcast(tensor, src=0)
            dist.barrier()
            samples.append(time.perf_counter() - started)
        dist.destroy_process_group()
        return samples[1:]

    samples = await asyncio.get_running_loop().run_in_executor(None, rank0)
    for conn in workers.conns[:k]:
        assert await _recv(conn) == "stopped"
    return {"seconds": statistics.median(samples), "samples_s": samples, "egress_per_version": float(k)}


async def kill_scenario(hub: str, workers: Workers, size_bytes: int) -> dict[str, Any]:
    """A reader holding the version is killed at 50 % of another reader's transfer from it."""
    from clients.weighthub import Publisher, Reader

    model = "bench-kill"
    tensors = model_weights(size_bytes, 9)
    victim = workers.conns[-1]
    victim_process = workers.processes[-1]
    async with Publisher(hub, model=model, host=TRAINER_HOST, transport_bind_host="127.0.0.1") as publisher:
        victim.send(("hub", hub, model, "victim", "victim-host"))
        assert await _recv(victim) == "started"
        await publisher.publish(1, tensors)
        assert (await _recv(victim))[1] == 1
        total_chunks = sum(t.numel() * 4 for t in tensors.values()) // (4 << 20)

        async def fetch(reader_id: str, kill: bool) -> tuple[float, int, int]:
            async with Reader(
                hub, model=model, holder_id=reader_id, host=f"{reader_id}-host", transport_bind_host="127.0.0.1"
            ) as reader:
                assert reader._reader is not None
                transport = reader._reader
                original = transport.read_many
                verified = [0]

                async def read_many(items: Any, **kwargs: Any) -> Any:
                    inner = kwargs["on_chunk"]
                    holder_id = items[0][0].holder_id

                    def on_chunk(name: str, local: int) -> None:
                        inner(name, local)
                        if holder_id == "victim":
                            verified[0] += 1
                            if kill and verified[0] == total_chunks // 2 and victim_process.pid:
                                os.kill(victim_process.pid, signal.SIGKILL)

                    kwargs["on_chunk"] = on_chunk
                    return await original(items, **kwargs)

                transport.read_many = read_many  # type: ignore[method-assign]
                started = time.perf_counter()
                got = await reader.fetch(1)
                seconds = time.perf_counter() - started
                torn = sum(not torch.equal(got[n], tensors[n]) for n in tensors)
                return seconds, torn, reader.last_fetch.num_read_failures

        clean_s, clean_torn, _ = await fetch("clean", kill=False)
        killed_s, killed_torn, failures = await fetch("survivor", kill=True)
    return {
        "completed": 1,
        "seconds_without_kill": clean_s,
        "seconds_with_kill": killed_s,
        "extra_seconds": killed_s - clean_s,
        "torn_reads": clean_torn + killed_torn,
        "read_failures_reported": failures,
    }


async def ceilings(size_bytes: int) -> dict[str, float]:
    """GB/s of one loopback socket and of memcpy (median of 3, after a warm-up)."""
    out = {}
    for name, method_cm in (("socket", raw_socket_method(size_bytes)), ("memcpy", memcpy_method(size_bytes))):
        async with method_cm as method:
            await method.once()
            times = []
            for _ in range(3):
                started = time.perf_counter()
                await method.once()
                times.append(time.perf_counter() - started)
        out[f"{name}_gbps"] = size_bytes / statistics.median(times) / 1e9
    return out


async def primitives(hub: str, size_bytes: int, workers: Workers) -> dict[str, float]:
    """Rates and latencies of this machine the simulator is told: hash, and, from a reader process
    as the schemes' readers make them, one small read from a holder in this process, one hub RPC,
    and a reader's CPU time for one fetch through the hub of a version of tiny tensors (its
    bookkeeping, without bytes to speak of)."""
    import xxhash

    from services.common.transport import TensorHolder

    data = torch.randn(size_bytes // 4).numpy().view("uint8")
    chunk = 4 << 20
    times = []
    for _ in range(3):
        started = time.perf_counter()
        for offset in range(0, len(data), chunk):
            xxhash.xxh3_128_hexdigest(data[offset : offset + chunk].data)
        times.append(time.perf_counter() - started)
    out = {"hash_gbps": len(data) / min(times) / 1e9}
    async with TensorHolder(bind_host="127.0.0.1", host_id="latency-holder") as holder:
        ref = await holder.register("tiny", torch.zeros(16))
        conn = workers.conns[0]
        conn.send(("latency", hub, ref.to_json()))
        out["read_latency_s"], out["rpc_s"] = await _recv(conn)
    # A reader's CPU for one fetch besides the bytes: a version of NUM_TENSORS tensors of 1 KiB.
    out["fetch_cpu_s"] = (await hub_scheme(hub, workers, 1, NUM_TENSORS * 1024, net=False, reps=2))["reader_cpu_s"]
    return out


async def whole_reads(size_bytes: int, versions: list[dict[str, torch.Tensor]], workers: Workers) -> dict[str, float]:
    """GB/s of one reader process reading the whole model from a holder in this process through
    the tensor plane, over shared memory and over a socket, one tensor at a time, timed by the
    reader (the fastest of 3 after a warm-up); and of the trainer putting a new version in its buffers:
    the holder's update (copy and hash, tensor after tensor: the naive scheme's) and the
    Publisher's ``copy_and_hash`` (the hub scheme's)."""
    from clients.weighthub import copy_and_hash
    from services.common.transport import TensorHolder

    names = list(versions[0])
    out = {}
    async with TensorHolder(bind_host="127.0.0.1") as holder:
        for name in names:
            buffer = holder.allocate(tuple(versions[0][name].shape), torch.float32)
            buffer.copy_(versions[0][name])
            await holder.register(name, buffer)
        times = []
        for i in range(4):
            started = time.perf_counter()
            for name in names:
                await holder.update(name, versions[(i + 1) % 2][name])
            times.append(time.perf_counter() - started)
        out["prepare_gbps"] = size_bytes / min(times[1:]) / 1e9
        # The Publisher's way (copy_and_hash, into buffers of its own), timed the same way.
        buffers = {name: holder.allocate(tuple(versions[0][name].shape), torch.float32) for name in names}
        times = []
        for i in range(4):
            started = time.perf_counter()
            await copy_and_hash(versions[i % 2], buffers, {n: n for n in names})
            times.append(time.perf_counter() - started)
        out["publish_prepare_gbps"] = size_bytes / min(times[1:]) / 1e9
        conn = workers.conns[0]
        sizes = [versions[0][n].numel() * 4 for n in names]
        refs = [holder.ref(n).to_json() for n in names]
        for carrier, host_id in (("shm", None), ("tcp", "rates-reader")):
            conn.send(("naive", sizes, host_id, 1))
            assert await _recv(conn) == "started"
            times = []
            for _ in range(4):
                conn.send(("go", refs))
                times.append((await _recv(conn))[2])
            conn.send(("stop",))
            assert await _recv(conn) == "stopped"
            out[f"{carrier}_read_gbps"] = size_bytes / min(times[1:]) / 1e9
    return out


def simulator_check(figures: dict[str, Any], size_bytes: int) -> dict[str, Any]:
    """The simulator's predictions of part (a) on this machine, and their errors.

    The simulator models bytes moving through CPU copies, hashes and sockets on the host's cores,
    and the control plane as it is built: every hub RPC (a reader hearing of the version, with its
    first plan made in that turn of the hub's thread, each later plan's answer, each progress
    report that makes chunks servable to others, the ReportHeld after a fetch, the trainer's
    Publish) takes one measured hub round trip of the hub's single
    thread, so the RPCs of K readers queue there; every chunk read costs one measured small-read
    round trip on top of its bytes. It is told this machine's rates as measured in the same run:
    the ceilings, ``primitives`` (hash, one small read, one hub RPC, a reader's CPU time for one
    fetch besides the bytes, from a fetch of tiny tensors) and, right beside each K --
    other work on the host makes them drift -- one reader process reading the whole model through
    the tensor plane per carrier, as the schemes' readers do, and the trainer's copy-and-hash
    (``rates_k*``). Nothing of the measured scheme times is fed in: the predictions stand or fall
    on those rates and the model. On a host shared with other work, the load comes in bursts that
    hit one sample and spare the next, so the simulator (which models an undisturbed run) is fed
    each rate probe's fastest sample and compared with each scheme's fastest sample.
    """
    from services.weighthub import sim
    from services.weighthub.config import WeightHubConfig

    ceilings, prim = figures["ceilings"], figures["primitives"]
    machine = sim.MachineSpec(
        cpu_cores=float(os.cpu_count() or 1),
        socket_bytes_per_s=ceilings["socket_gbps"] * 1e9,
        memcpy_bytes_per_s=ceilings["memcpy_gbps"] * 1e9,
        hash_bytes_per_s=prim["hash_gbps"] * 1e9,
        read_latency_s=prim["read_latency_s"],
        rpc_s=prim["rpc_s"],
    )
    # The client as built and configured here: partial holders serving chunks as they land (named
    # as sources of chunks in flight), plans of at most 16 chunks held open by the hub while every
    # source is busy (no polling) and asked for as soon as the last one is answered, the publisher's
    # chunks spread over the readers, shared-memory copies not hashed, the hub's shared-memory
    # fan-out (WeightHubConfig.shm_max_concurrent_reads); each reader's first plan comes with the
    # version's announcement.
    options = sim.HubOptions(
        partial_holders=True,
        publisher_max_concurrent_reads=1,
        reader_max_concurrent_reads=READER_MAX_CONCURRENT_READS,
        reads_per_source=READS_PER_SOURCE,
        max_chunks_per_plan=16,
        poll_s=0.0,
        control_s=prim["rpc_s"],
        hub_queue=True,
        serve_in_flight=True,
        spread_publisher_chunks=True,
        pipelined_plans=True,
        shm_max_concurrent_reads=WeightHubConfig.shm_max_concurrent_reads,
        hash_shm_reads=False,
        bound_reader_sources=True,
        fetch_cpu_s=prim["fetch_cpu_s"],
        plan_with_announcement=True,
    )
    points: dict[str, Any] = {}
    errors = []
    for k in K_VALUES:
        for net in (False, True):
            suffix = "_net" if net else ""
            # The transport's rates measured right beside this K: the host's load drifts.
            rates = figures[f"rates_k{k}"]
            described = dataclasses.replace(
                machine,
                shm_read_bytes_per_s=rates["shm_read_gbps"] * 1e9,
                tcp_read_bytes_per_s=rates["tcp_read_gbps"] * 1e9,
                prepare_bytes_per_s=rates["prepare_gbps"] * 1e9,
                publish_prepare_bytes_per_s=rates["publish_prepare_gbps"] * 1e9,
            )
            predicted = sim.predict_local(
                described,
                k=k,
                size_bytes=size_bytes,
                num_tensors=NUM_TENSORS,
                chunk_size_bytes=4 << 20,
                net=net,
                options=options,
            )
            for scheme in ("hub", "naive"):
                measured = min(figures[f"{scheme}_k{k}{suffix}"]["samples_s"])
                error = abs(predicted[f"{scheme}_s"] - measured) / measured
                errors.append(error)
                points[f"{scheme}_k{k}{suffix}"] = {
                    "predicted_s": predicted[f"{scheme}_s"],
                    "measured_s": measured,
                    "relative_error": error,
                }
    return {
        "points": points,
        "mean_relative_error": statistics.mean(errors),
        "max_relative_error": max(errors),
    }


async def run(*, quick: bool) -> dict[str, Any]:
    size_bytes = (64 if quick else 256) << 20
    reps = 3 if quick else 5
    figures: dict[str, Any] = {"model_size_bytes": size_bytes, "num_tensors": NUM_TENSORS}
    phases: dict[str, float] = {}
    figures["phase_s"] = phases
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as workdir:
        redis = RedisProcess(Path(workdir))
        redis.start()
        workers = Workers(max(K_VALUES) + 1)
        phases["start"] = time.monotonic() - started
        try:
            figures["ceilings"] = await ceilings(size_bytes)
            progress = Progress("schemes", len(K_VALUES) * 5 + 1)
            async with running_hub(redis.url) as hub:
                figures["primitives"] = await primitives(hub, size_bytes, workers)
                rate_versions = [model_weights(size_bytes, seed) for seed in (5, 6)]
                await whole_reads(size_bytes, rate_versions, workers)  # a warm-up: threads, connections
                phases["ceilings_primitives"] = time.monotonic() - started - sum(phases.values())
                for k in K_VALUES:
                    # The transport's rates right beside the schemes of this K, for the simulator.
                    rates_started = time.monotonic()
                    figures[f"rates_k{k}"] = await whole_reads(size_bytes, rate_versions, workers)
                    phases["rates"] = phases.get("rates", 0.0) + time.monotonic() - rates_started
                    for net in (False, True):
                        suffix = "_net" if net else ""
                        figures[f"hub_k{k}{suffix}"] = await hub_scheme(
                            hub, workers, k, size_bytes, net=net, reps=reps, delta=k == 8 and not net
                        )
                        # The scheme's buffers (shared memory) go now, not at some later collection:
                        # at 256 MiB a few schemes' worth lingering is gigabytes.
                        gc.collect()
                        progress.advance()
                        figures[f"naive_k{k}{suffix}"] = await naive_scheme(workers, k, size_bytes, net=net, reps=reps)
                        progress.advance()
                        if k == 8 and not net:
                            figures["naive_k8_noverify"] = await naive_scheme(
                                workers, k, size_bytes, net=False, reps=reps, verify=False
                            )
                    figures[f"broadcast_k{k}"] = await broadcast_scheme(workers, k, size_bytes, reps=reps)
                    progress.advance()
                figures["kill"] = await kill_scenario(hub, workers, size_bytes)
                progress.advance()
            progress.finish()
        finally:
            workers.close()
            redis.stop()
    from services.weighthub import sim

    phases["measured"] = time.monotonic() - started - sum(phases.values())
    figures["simulator_check"] = simulator_check(figures, size_bytes)
    phases["simulator_check"] = time.monotonic() - started - sum(phases.values())
    # --quick plans the simulated versions in fewer, larger chunks (a coarser pipeline, same cluster).
    cluster = sim.cluster_workloads(sim.ClusterSpec(num_chunks=32) if quick else sim.ClusterSpec())
    figures["simulated_cluster"] = cluster
    phases["simulated_cluster"] = time.monotonic() - started - sum(phases.values())
    hub8, hub8_net = figures["hub_k8"], figures["hub_k8_net"]
    ratios = {
        "hub_vs_naive_k8": figures["naive_k8"]["seconds"] / hub8["seconds"],
        "hub_vs_broadcast_k8": figures["broadcast_k8"]["seconds"] / hub8["seconds"],
        "egress_per_version_k8": hub8["egress_per_version"],
        "served_per_version_k8": hub8["served_per_version"],
        "throughput_vs_ceiling": 8 * size_bytes / hub8["seconds"] / 1e9 / figures["ceilings"]["socket_gbps"],
        "torn_reads": figures["kill"]["torn_reads"],
        "kill_completed": figures["kill"]["completed"],
        "kill_extra_seconds": figures["kill"]["extra_seconds"],
        "delta_bytes_fraction": hub8["delta_bytes_fraction"],
        "hub_vs_naive_noverify_k8": figures["naive_k8_noverify"]["seconds"] / hub8["seconds"],
        "hub_vs_naive_k8_net": figures["naive_k8_net"]["seconds"] / hub8_net["seconds"],
        "hub_vs_broadcast_k8_net": figures["broadcast_k8"]["seconds"] / hub8_net["seconds"],
        "egress_per_version_k8_net": hub8_net["egress_per_version"],
        "throughput_vs_ceiling_net": 8 * size_bytes / hub8_net["seconds"] / 1e9 / figures["ceilings"]["socket_gbps"],
        **cluster["ratios"],
        "sim_vs_measured_error": figures["simulator_check"]["mean_relative_error"],
    }
    for k in K_VALUES:
        ratios[f"hub_vs_naive_k{k}"] = figures[f"naive_k{k}"]["seconds"] / figures[f"hub_k{k}"]["seconds"]
        ratios[f"hub_vs_broadcast_k{k}"] = figures[f"broadcast_k{k}"]["seconds"] / figures[f"hub_k{k}"]["seconds"]
    config = {
        "quick": quick,
        "k_values": list(K_VALUES),
        "model_size_bytes": size_bytes,
        "num_tensors": NUM_TENSORS,
        "chunk_size_bytes": 4 << 20,
        "trainer_max_concurrent_reads": 1,
        "reader_max_concurrent_reads": READER_MAX_CONCURRENT_READS,
        "reads_per_source": READS_PER_SOURCE,
        "repetitions": reps,
        "seconds": "median of the repetitions (after warm-ups); every sample is in samples_s",
        "trainer_egress": (
            "egress_per_version: bytes the trainer sends over sockets per version (its NIC's load; 0 on "
            "one host, where every reader copies out of its shared memory itself); served_per_version: "
            "bytes read from the trainer's holder by any carrier, same-host shared-memory reads of its "
            "buffers included (each holds a read slot and keeps the buffer from being overwritten, but "
            "costs the trainer no copy)"
        ),
        "simulator_inputs": (
            "rates measured in this run (ceilings, primitives, rates_k*) and the control plane as "
            "built (hub RPCs queued on the hub's thread); no measured scheme time (see "
            "simulator_check's docstring)"
        ),
        "throughput_ceiling": "one loopback socket (benchmarks/transport.py raw_socket_method)",
        "verification": (
            "hub readers hash every chunk that crosses a socket and none they copy out of a same-host "
            "holder's shared memory (leased, verified there); naive readers hash every chunk; "
            "naive_k8_noverify / hub_vs_naive_noverify_k8: naive with the hub readers' skip, for orientation"
        ),
        "delta_changed_fraction": 0.05,
        "simulator": "services/weighthub/sim.py: flow-level, max-min fair, drives services/weighthub/planner.py",
        "paper_ratios": cluster["paper"],
    }
    simulated = [*cluster["ratios"], "sim_vs_measured_error", "simulated_cluster", "simulator_check"]
    return {
        "config": config,
        "figures": figures,
        "ratios": {k: round(v, 4) for k, v in ratios.items()},
        "simulated": simulated,
    }


def main(argv: list[str] | None = None) -> None:
    args = standard_parser(__doc__.splitlines()[0]).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sections = asyncio.run(run(quick=args.quick))
    emit("weighthub", json_path=args.json, **sections)


if __name__ == "__main__":
    main()
