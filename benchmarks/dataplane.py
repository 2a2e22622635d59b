"""Data plane: our service side by side with PyTorch's DataLoader set-up on the same generated corpus, in one run.

The corpus: 8 sources with very different length distributions (6 JSONL, 1 Parquet, and one generated
source whose preprocessing costs about 10x the others'), read with the "char" tokenizer.

- **Ours**: the data plane service as a subprocess (``python -m services.dataplane``) with a private
  redis-server; one plan over the 8 sources; ``num_ranks`` rank clients iterate ``client.batches``
  concurrently (prefetch 2).
- **Theirs**: the usual set-up — every rank is its own process with a map-style Dataset over all 8
  sources (records loaded into Python lists, the common way a JSONL/Parquet dataset is written) and a
  ``torch.utils.data.DataLoader`` with 2 workers; its batches are i.i.d. draws from the mixture.

Figures:
- per-rank cost imbalance (max/mean of alpha*L + beta*L^2 per step; mean and p95): ours as served by
  NextBatch; round-robin dealing and token-count balancing (LPT on tokens) of i.i.d. mixture batches of
  the same corpus (what the DataLoader set-up produces, with and without a token balancer);
- loader memory: summed PSS (``/proc/<pid>/smaps_rollup``) of every data plane process (server,
  forkserver, loader workers) vs every DataLoader worker plus the dataset's growth in each rank;
- samples/s and tokens/s of both set-ups, all ranks together;
- a loader worker killed mid-run: recovery time, samples lost and duplicated against an uninterrupted
  plan of the same spec (the ledger);
- Restore at step S: the hash of the next N global batches equals an uninterrupted run, across a mixture
  change, and with the rank count changed at restore (8 -> 4 -> 16);
- realized vs declared mixture share per look-ahead window.

Run: ``python -m benchmarks.dataplane [--quick] [--json PATH]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import Progress, emit, standard_parser

ALPHA = 1.0
BETA = 1.0 / 4096
# (name, format, median length, sigma): very different length distributions, lengths 20..4000.
SOURCES = [
    ("chat", "jsonl", 60, 0.6),
    ("code", "jsonl", 400, 1.0),
    ("math", "jsonl", 124, 0.8),
    ("web", "jsonl", 200, 1.2),
    ("books", "jsonl", 1500, 0.7),
    ("papers", "jsonl", 800, 0.9),
    ("wiki", "parquet", 150, 1.0),
]
EXPENSIVE = ("expensive", 124, 1.0)
BUSY_US_PER_TOKEN = "1.0"


def _lengths(rng: random.Random, median: int, sigma: float, n: int) -> list[int]:
    return [max(20, min(4000, int(rng.lognormvariate(np.log(median), sigma)))) for _ in range(n)]


def write_corpus(root: Path, num_records: int) -> list[dict[str, Any]]:
    """The sources' files and their spec entries."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz     "
    entries = []
    for name, fmt, median, sigma in SOURCES:
        texts = ["".join(rng.choices(alphabet, k=n)) for n in _lengths(rng, median, sigma, num_records)]
        if fmt == "jsonl":
            path = root / f"{name}.jsonl"
            with open(path, "w") as f:
                for i, text in enumerate(texts):
                    f.write(json.dumps({"id": i, "text": text}) + "\n")
        else:
            path = root / f"{name}.parquet"
            pq.write_table(pa.table({"id": list(range(num_records)), "text": texts}), path, row_group_size=1024)
        entries.append({"name": name, "format": fmt, "path": str(path), "weight": 1})
    name, median, sigma = EXPENSIVE
    entries.append(
        {
            "name": name,
            "format": "generated",
            "generator": "synthetic",
            "generator_options": {
                "median_tokens": str(median),
                "sigma": str(sigma),
                "busy_us_per_token": BUSY_US_PER_TOKEN,
            },
            "weight": 1,
        }
    )
    return entries


def plan_yaml(entries: list[dict[str, Any]], num_ranks: int, change_step: int) -> str:
    """The plan: equal weights, then from ``change_step`` long sources down and short ones up."""
    spec = {
        "sources": entries,
        "schedule": [{"start_step": change_step, "weights": {"books": 0.25, "papers": 0.5, "chat": 3}}],
        "global_batch_size": 64,
        "seed": 1234,
        "num_ranks": num_ranks,
        "balance": {"cost_alpha": ALPHA, "cost_beta": BETA, "lookahead_batches": 4},
    }
    return json.dumps(spec)


# Memory ----------------------------------------------------------------------------------------------


def pss_bytes(pid: int) -> int:
    """Proportional set size of a process (shared pages divided among their users)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children of children included)."""
    out: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                out += kids
                stack += kids
    return out


# Theirs: one process per rank, each with its own DataLoader over every source -----------------------


def torch_rank_main(args_json: str) -> None:
    """Body of one baseline rank (run as ``--torch-rank JSON``)."""
    args = json.loads(args_json)
    import multiprocessing

    import torch
    from torch.utils.data import DataLoader, Dataset

    from services.dataplane.sources import gen_synthetic, tokenize_char

    torch.set_num_threads(1)
    before = pss_bytes(os.getpid())

    class MixtureDataset(Dataset):  # type: ignore[type-arg]
        """All sources in memory; item i draws a source by weight, then a record (i.i.d.)."""

        def __init__(self) -> None:
            import pyarrow.parquet as pq

            self.records: list[list[dict[str, Any]]] = []
            for entry in args["entries"]:
                if entry["format"] == "jsonl":
                    with open(entry["path"]) as f:
                        self.records.append([json.loads(line) for line in f])
                elif entry["format"] == "parquet":
                    self.records.append(pq.read_table(entry["path"]).to_pylist())
                else:
                    self.records.append([])
            self.options = args["entries"][-1]["generator_options"]

        def __len__(self) -> int:
            return 10**9

        def __getitem__(self, index: int) -> torch.Tensor:
            rng = random.Random(index * 7919 + args["rank"])
            source = rng.randrange(len(self.records))
            if self.records[source]:
                record = self.records[source][rng.randrange(len(self.records[source]))]
            else:
                record = gen_synthetic(0, "expensive", index, self.options)
            return torch.from_numpy(tokenize_char(record["text"]))

    dataset = MixtureDataset()
    built = pss_bytes(os.getpid())
    loader = DataLoader(
        dataset,
        batch_size=args["batch_per_rank"],
        num_workers=2,
        collate_fn=list,
        persistent_workers=True,
        sampler=range(args["rank"] * 10**6, args["rank"] * 10**6 + 10**6),
    )
    iterator = iter(loader)
    next(iterator)  # workers up
    print(json.dumps({"up": True}), flush=True)
    sys.stdin.readline()  # every rank starts at once
    started = time.perf_counter()
    samples = tokens = 0
    lengths: list[list[int]] = []
    for _ in range(args["steps"]):
        batch = next(iterator)
        samples += len(batch)
        tokens += sum(len(t) for t in batch)
        lengths.append([len(t) for t in batch])
    elapsed = time.perf_counter() - started
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()  # measure memory only while every rank is alive
    workers = [p.pid for p in multiprocessing.active_children()] or descendants(os.getpid())
    worker_pss = sum(pss_bytes(p) for p in workers if p is not None)
    print(
        json.dumps(
            {
                "samples": samples,
                "tokens": tokens,
                "elapsed_s": elapsed,
                "dataset_pss": built - before,
                "worker_pss": worker_pss,
                "num_workers": len(workers),
                "lengths": lengths,
            }
        ),
        flush=True,
    )


def run_torch_baseline(entries: list[dict[str, Any]], num_ranks: int, steps: int) -> dict[str, Any]:
    """Start ``num_ranks`` baseline ranks at once; gather their figures."""
    procs = []
    for rank in range(num_ranks):
        args = {"rank": rank, "entries": entries, "batch_per_rank": 64 // num_ranks, "steps": steps}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.dataplane", "--torch-rank", json.dumps(args)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for phase in ("up", "ready"):
        for p in procs:
            assert p.stdout is not None
            if not p.stdout.readline():
                raise RuntimeError(f"baseline rank exited with {p.wait()} before {phase}")
        if phase == "up":
            started = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
    wall = time.perf_counter() - started
    results = []
    for p in procs:
        assert p.stdout is not None
        results.append(json.loads(p.stdout.readline()))
        p.wait(timeout=60)
    return {"ranks": results, "wall_s": wall}


# Ours --------------------------------------------------------------------------------------------------


def _start_server(workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Any]:
    log = open(workdir / "dataplane.log", "w")
    return subprocess.Popen([sys.executable, "-m", "services.dataplane"], env=env, stdout=log, stderr=log), log


@contextlib.asynccontextmanager
async def data_plane(workdir: Path) -> AsyncIterator[tuple[Any, int]]:
    """A redis-server and the data plane service as subprocesses; yields (client, server pid)."""
    from clients.base import probe_health
    from clients.dataplane import DataPlaneClient
    from services.common.redis_proc import RedisProcess, free_port

    redis = RedisProcess(workdir)
    redis.start()
    port = free_port()
    env = dict(os.environ, REDIS_URL=redis.url, SEEDSTACK_LOG_LEVEL="WARNING", SEEDSTACK_DATAPLANE_PORT=str(port))
    env["SEEDSTACK_DATAPLANE_HOST"] = "127.0.0.1"
    env["SEEDSTACK_DATAPLANE_RETAIN_STEPS"] = "2048"
    env["SEEDSTACK_DATAPLANE_MAX_STEPS_AHEAD"] = "4096"
    server, log = _start_server(workdir, env)
    try:
        deadline = time.monotonic() + 60
        while await probe_health(f"127.0.0.1:{port}") != "SERVING":
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"data plane did not start; see {workdir / 'dataplane.log'}")
            await asyncio.sleep(0.1)
        async with DataPlaneClient(f"127.0.0.1:{port}") as client:
            yield client, server.pid
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        redis.stop()


async def global_batch(client: Any, plan_id: str, step: int, num_ranks: int) -> tuple[list[str], list[float]]:
    """Sorted sample ids of a global step, and each rank's cost."""
    from seedstack.dataplane.v1 import dataplane_pb2 as pb

    shares = await asyncio.gather(
        *(client.next_batch(pb.NextBatchRequest(plan_id=plan_id, rank=r, step=step)) for r in range(num_ranks))
    )
    ids = sorted(f"{s.prompt_id}#{s.metadata['seq']}" for share in shares for s in share.samples)
    return ids, [share.cost for share in shares]


def digest(batches: list[list[str]]) -> str:
    """Hash of a sequence of global batches."""
    return hashlib.sha256(json.dumps(batches).encode()).hexdigest()


def imbalance_stats(values: list[float]) -> dict[str, float]:
    """Mean and p95."""
    ordered = sorted(values)
    return {"mean": statistics.mean(ordered), "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]}


async def run(quick: bool) -> dict[str, Any]:
    """Every measurement; returns the report's parts."""
    from seedstack.dataplane.v1 import dataplane_pb2 as pb

    from services.dataplane.balance import greedy_partition, round_robin, sample_cost, split_imbalance
    from services.dataplane.sources import GENERATORS
    from services.dataplane.spec import parse_plan

    num_records = 5_000 if quick else 50_000
    num_ranks = 8
    memory_ranks = 4 if quick else 8
    steps = 40 if quick else 200
    restore_at = 8 if quick else 40
    restore_span = 100 if quick else 1000
    kill_steps = 24 if quick else 80
    config = {
        "quick": quick,
        "num_sources": len(SOURCES) + 1,
        "records_per_file_source": num_records,
        "num_ranks": num_ranks,
        "global_batch_size": 64,
        "cost": "L + L^2/4096",
        "lookahead_batches": 4,
        "throughput_steps": steps,
        "memory_ranks_x_workers": f"{memory_ranks}x2",
        "restore_step": restore_at,
        "restore_span_steps": restore_span,
        "expensive_source": f"generated, busy {BUSY_US_PER_TOKEN} us/token (~10x the others)",
    }
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dataplane-") as tmp:
        root = Path(tmp)
        entries = write_corpus(root, num_records)
        change_step = restore_at + restore_span // 2
        spec = plan_yaml(entries, num_ranks, change_step)
        async with data_plane(root) as (client, server_pid):
            progress = Progress("ours: throughput", total=steps)
            plan_id = (await client.submit_plan(pb.SubmitPlanRequest(request_id="main", mixture_yaml=spec))).plan_id

            async def rank_loop(rank: int) -> tuple[int, int]:
                samples = tokens = 0
                async for batch in client.batches(plan_id, rank, num_steps=steps, prefetch=2):
                    samples += len(batch.samples)
                    tokens += batch.num_tokens
                    if rank == 0:
                        progress.advance()
                return samples, tokens

            started = time.perf_counter()
            totals = await asyncio.gather(*(rank_loop(r) for r in range(num_ranks)))
            elapsed = time.perf_counter() - started
            progress.finish()
            stats = await client.stats(pb.StatsRequest(plan_id=plan_id))
            pids = [server_pid, *descendants(server_pid)]
            figures["ours_memory_pss_bytes"] = sum(pss_bytes(p) for p in pids)
            figures["ours_num_processes"] = len(pids)
            figures["ours_samples_per_s"] = sum(t[0] for t in totals) / elapsed
            figures["ours_tokens_per_s"] = sum(t[1] for t in totals) / elapsed
            figures["ours_loader_workers"] = {s.name: s.num_loader_workers for s in stats.sources}
            figures["ours_preprocess_us_per_record"] = {
                s.name: round(s.preprocess_s_per_record * 1e6, 1) for s in stats.sources
            }
            figures["ours_records_skipped"] = sum(s.num_records_skipped for s in stats.sources)

            # The reference stream (uninterrupted) and the served imbalance, step by step.
            progress = Progress("ours: reference stream", total=restore_at + restore_span)
            reference: list[list[str]] = []
            ours_imbalance = []
            shares: list[list[int]] = []
            names = [e["name"] for e in entries]
            for step in range(restore_at + restore_span):
                ids, costs = await global_batch(client, plan_id, step, num_ranks)
                reference.append(ids)
                ours_imbalance.append(max(costs) / (sum(costs) / len(costs)))
                shares.append([sum(1 for i in ids if i.startswith(n + "/")) for n in names])
                progress.advance()
            progress.finish()
            figures["imbalance_ours"] = imbalance_stats(ours_imbalance)

            # Realized vs declared share per look-ahead window (4 steps).
            plan = parse_plan(json.loads(spec), set(GENERATORS))
            deviations = []
            for start in range(0, len(shares) - 3, 4):
                if start < change_step <= start + 3:
                    continue
                counts = np.sum(shares[start : start + 4], axis=0)
                realized = counts / counts.sum()
                deviations.append(float(np.max(np.abs(realized - np.array(plan.weights_at(start))))))
            figures["mixture_share_max_abs_deviation_per_window"] = imbalance_stats(deviations)

            # Restore at S: the next N global batches, with 8 ranks, then 4, then 16.
            await client.checkpoint(pb.CheckpointRequest(request_id="ck", plan_id=plan_id, step=restore_at))
            exact = {}
            for ranks in (8, 4, 16):
                await client.restore(
                    pb.RestoreRequest(request_id=f"restore-{ranks}", plan_id=plan_id, step=restore_at, num_ranks=ranks)
                )
                progress = Progress(f"ours: replay with {ranks} ranks", total=restore_span)
                again = []
                for step in range(restore_at, restore_at + restore_span):
                    again.append((await global_batch(client, plan_id, step, ranks))[0])
                    progress.advance()
                progress.finish()
                exact[ranks] = digest(again) == digest(reference[restore_at:])
            figures["restore_exact_by_ranks"] = {str(k): int(v) for k, v in exact.items()}

            # A loader worker killed mid-run, against the uninterrupted reference above.
            before = set(descendants(server_pid))
            victim_plan = (
                await client.submit_plan(pb.SubmitPlanRequest(request_id="victim", mixture_yaml=spec))
            ).plan_id
            # The victim plan's processes: its loaders in start order (first: source "chat"), then its shadow.
            victim_loaders = sorted(set(descendants(server_pid)) - before)
            served: list[str] = []
            latencies = []
            killed_at = None
            for step in range(kill_steps):
                if step == kill_steps // 2:
                    os.kill(victim_loaders[0], signal.SIGKILL)
                    killed_at = step
                t0 = time.perf_counter()
                ids, _ = await global_batch(client, victim_plan, step, num_ranks)
                latencies.append(time.perf_counter() - t0)
                served += ids
            after = sorted(set(descendants(server_pid)) - before)
            figures["kill_worker_replaced"] = int(victim_loaders[0] not in after and len(after) == len(victim_loaders))
            expected = [i for batch in reference[:kill_steps] for i in batch]
            served_set, expected_set = set(served), set(expected)
            figures["kill_samples_lost"] = len(expected_set - served_set)
            figures["kill_samples_duplicated"] = len(served) - len(served_set) + len(served_set - expected_set)
            normal = statistics.median(latencies)
            figures["kill_recovery_s"] = max(0.0, max(latencies[killed_at:]) - normal) if killed_at is not None else 0
            figures["kill_step_latency_median_s"] = normal

        # Theirs: the same corpus through per-rank DataLoaders.
        sys.stderr.write(f"theirs: {memory_ranks} ranks x 2 DataLoader workers\n")
        baseline = run_torch_baseline(entries, memory_ranks, steps)
        ranks = baseline["ranks"]
        figures["dataloader_memory_pss_bytes"] = sum(r["dataset_pss"] + r["worker_pss"] for r in ranks)
        figures["dataloader_worker_processes"] = sum(r["num_workers"] for r in ranks)
        figures["dataloader_samples_per_s"] = sum(r["samples"] for r in ranks) / baseline["wall_s"]
        figures["dataloader_tokens_per_s"] = sum(r["tokens"] for r in ranks) / baseline["wall_s"]
        figures["ours_memory_at_ranks"] = num_ranks
        figures["dataloader_memory_at_ranks"] = memory_ranks

        # Baseline imbalance on i.i.d. mixture batches of the same corpus: 64 samples over 8 ranks.
        pool = [length for r in ranks for batch in r["lengths"] for length in batch]
        rng = random.Random(5)
        rr, tok = [], []
        for _ in range(restore_span):
            lengths = [pool[rng.randrange(len(pool))] for _ in range(64)]
            costs = [sample_cost(length, ALPHA, BETA) for length in lengths]
            rr.append(split_imbalance(costs, round_robin(64, num_ranks)))
            tok.append(split_imbalance(costs, greedy_partition([float(x) for x in lengths], num_ranks)))
        figures["imbalance_round_robin"] = imbalance_stats(rr)
        figures["imbalance_tokens"] = imbalance_stats(tok)

    ratios = {
        "imbalance_ours": figures["imbalance_ours"]["mean"],
        "imbalance_ours_p95": figures["imbalance_ours"]["p95"],
        "imbalance_round_robin": figures["imbalance_round_robin"]["mean"],
        "imbalance_tokens": figures["imbalance_tokens"]["mean"],
        # Ours serves any number of ranks with the same processes; theirs is measured at memory_ranks.
        "memory_vs_dataloader": figures["dataloader_memory_pss_bytes"] / figures["ours_memory_pss_bytes"],
        "throughput_vs_dataloader": figures["ours_samples_per_s"] / figures["dataloader_samples_per_s"],
        "samples_lost": figures["kill_samples_lost"],
        "samples_duplicated": figures["kill_samples_duplicated"],
        "kill_recovery_s": figures["kill_recovery_s"],
        "kill_worker_replaced": figures["kill_worker_replaced"],
        "resume_exact": exact[8],
        "elastic_resume_exact": int(exact[4] and exact[16]),
        "mixture_share_max_deviation": figures["mixture_share_max_abs_deviation_per_window"]["mean"],
    }
    return {"config": config, "figures": figures, "ratios": ratios, "simulated": []}


def main() -> None:
    """Entry point."""
    parser = standard_parser(__doc__.splitlines()[0])
    parser.add_argument("--torch-rank", help=argparse_hidden())
    args = parser.parse_args()
    if args.torch_rank:
        torch_rank_main(args.torch_rank)
        return
    result = asyncio.run(run(args.quick))
    emit("dataplane", json_path=args.json, **result)


def argparse_hidden() -> str:
    """Help text of the internal flag that runs one baseline rank."""
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
