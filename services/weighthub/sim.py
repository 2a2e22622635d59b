"""A flow-level network simulator of weight distribution that drives the hub's own planner.

Plain code without I/O, for what cannot run here: thousands of GPUs, RDMA links, datacenters joined
by wide-area links (issue #3, "Measured" part (b)). Everything it reports is *simulated*.

The model:

- **Flows and resources.** A transfer is a flow of bytes over resources (a node's NIC out, the
  other node's NIC in, a rack's uplink and downlink, a wide-area link, or a host's CPU cores on one
  machine). Each flow uses each of its resources with a coefficient (1 for a link; seconds of CPU per
  byte for cores) and may have a rate cap of its own (one stream's speed) or a leader it may not
  outrun (it forwards the bytes the leader brings: then at most the leader's rate). Rates are max-min fair
  (progressive filling): every flow's rate grows until one of its resources is full or it reaches its
  cap. The simulator is event-driven: rates are recomputed only when a flow starts or ends.
- **The hub.** Readers ask :func:`services.weighthub.planner.plan_reads` -- the code the hub runs --
  for the chunks they miss, with the holders the hub would list: publishers (the trainer's shards)
  and the readers that hold chunks. With ``partial_holders`` a reader serves every chunk it has
  verified while it still fetches the rest (chunk-level pipelining) and plans are partial (busy
  chunks are deferred, not refused); without it a reader becomes a source only once it holds the
  whole version. A reader whose chunks are all busy waits until a holder frees a read slot or
  reports new chunks (the hub holds its request open) -- it never polls. Each holder takes at most
  ``max_concurrent_reads`` readers at once; a reader reads up to ``reads_per_source`` chunks from one
  source at a time, chunk by chunk, so chunks arrive (and are served on) in order. With
  ``serve_in_flight`` (what the Reader does) the hub names a reader as the source of the chunks it is
  fetching from a holder that has them, and a read of such a chunk waits at that reader until it
  lands (with ``cut_through``: streams right behind that reader's own read of it, never faster);
  with ``spread_publisher_chunks`` one plan takes only its share of the publishers' chunks, with
  ``bound_reader_sources`` a reader reads from no more holders at once than it serves (the
  planner's rules 7-10). ``client_options`` is the client as built.
- **Baselines.** ``naive``: every reader pulls the whole model from one trainer node at once.
  ``ring broadcast``: NCCL-style pipelined ring broadcast from the trainer's rank 0 over a static
  group, in closed form (its time is ``(S + (n - 1) c) / B`` for ``S`` bytes per rank, ``n`` ranks,
  pipeline chunks ``c`` and the slowest link ``B``, plus per-hop latency).

Cluster parameters and where their values come from are documented on :class:`ClusterSpec` and in
:func:`cluster_workloads`; the description of this machine used to check the simulator against the
measured benchmark is :class:`MachineSpec`.
"""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from services.common.errors import ResourceExhausted
from services.weighthub.planner import Source, Topology, plan_reads

GB = 1e9
Gbps = 1e9 / 8  # bytes per second of one gigabit per second


# -- the flow-level network ------------------------------------------------------------------------


@dataclass(eq=False)
class Flow:
    """Bytes moving over some resources."""

    size_bytes: float
    uses: dict[str, float]
    """Resource name -> units of capacity used per byte/s of this flow."""
    cap_bytes_per_s: float
    on_done: Callable[[], object]
    remaining_bytes: float = 0.0
    rate_bytes_per_s: float = 0.0
    started_at_s: float = 0.0
    leader: Flow | None = None
    """The flow bringing these bytes to this flow's source (cut-through): while it runs, this one
    goes no faster than it, so it never gets ahead (conservative: one that started behind does not
    catch up either)."""

    def __post_init__(self) -> None:
        self.remaining_bytes = self.size_bytes


class FlowSim:
    """An event-driven simulation of flows sharing resources max-min fairly, with timers."""

    def __init__(self, capacities: Mapping[str, float]) -> None:
        self.capacities = dict(capacities)
        self.now_s = 0.0
        self.flows: dict[Flow, None] = {}
        """In start order, so that a run is the same from one process to the next."""
        self._timers: list[tuple[float, int, Callable[[], object]]] = []
        self._seq = itertools.count()
        self._dirty = False
        self.num_events = 0

    def at(self, delay_s: float, callback: Callable[[], object]) -> None:
        """Run ``callback`` ``delay_s`` from now."""
        heapq.heappush(self._timers, (self.now_s + max(0.0, delay_s), next(self._seq), callback))

    def after_round_trip(self, round_trip_s: float, callback: Callable[[], object]) -> None:
        """Run ``callback`` after a request's round trip: where the host's cores are modelled (one
        host: loopback has no wire, a round trip is the two processes' work) ``round_trip_s`` of CPU
        on them, queued behind copies when they are busy; elsewhere ``round_trip_s`` of latency."""
        if "cpu" in self.capacities and round_trip_s > 0:
            self.start(round_trip_s, {"cpu": 1.0}, callback, cap_bytes_per_s=1.0)
        else:
            self.at(round_trip_s, callback)

    def start(
        self,
        size_bytes: float,
        uses: Mapping[str, float],
        on_done: Callable[[], object],
        *,
        cap_bytes_per_s: float = math.inf,
        leader: Flow | None = None,
    ) -> Flow:
        """Start a flow of ``size_bytes`` over ``uses``; ``on_done`` runs when its last byte arrives.
        With ``leader`` (a flow of as many bytes, still running) it sends each byte only once the
        leader has brought it."""
        unknown = [r for r in uses if r not in self.capacities]
        if unknown:
            raise ValueError(f"flow uses unknown resources {unknown}")
        flow = Flow(size_bytes=size_bytes, uses=dict(uses), cap_bytes_per_s=cap_bytes_per_s, on_done=on_done)
        if leader is not None and leader in self.flows:
            flow.leader = leader
        flow.started_at_s = self.now_s
        if size_bytes <= 0:
            self.at(0.0, on_done)
            return flow
        self.flows[flow] = None
        self._dirty = True
        return flow

    def _allocate(self) -> None:
        """Max-min fair rates; a flow faster than its leader is then capped at the leader's rate
        and the others share again what it leaves (leaders never follow, so two passes settle it)."""
        followers = []
        for flow in self.flows:
            if flow.leader is not None:
                if flow.leader in self.flows:
                    followers.append(flow)
                else:
                    flow.leader = None  # its leader has brought every byte
        self._fill({})
        ahead = {
            f: f.leader.rate_bytes_per_s
            for f in followers
            if f.leader and f.rate_bytes_per_s > f.leader.rate_bytes_per_s
        }
        if ahead:
            self._fill(ahead)
            for flow in followers:
                assert flow.leader is not None
                flow.rate_bytes_per_s = min(flow.rate_bytes_per_s, flow.leader.rate_bytes_per_s)
        self._dirty = False

    def _fill(self, caps: Mapping[Flow, float]) -> None:
        """Max-min fair rates by progressive filling: every unfrozen flow's rate rises together
        until a resource fills (its flows freeze) or a flow reaches its cap (or its entry in
        ``caps``; it freezes). Resource weights are kept up to date as flows freeze, so a round
        costs the resources in use, not the flows times their resources."""
        active = dict(self.flows)
        weight: dict[str, float] = {}
        users: dict[str, list[Flow]] = {}
        for flow in active:
            flow.rate_bytes_per_s = 0.0
            for name, coeff in flow.uses.items():
                weight[name] = weight.get(name, 0.0) + coeff
                users.setdefault(name, []).append(flow)
        remaining = {name: self.capacities[name] for name in weight}
        cap = {f: min(f.cap_bytes_per_s, caps.get(f, math.inf)) for f in active}
        by_cap = sorted(active, key=cap.__getitem__)
        next_capped = 0
        level = 0.0
        while active:
            while next_capped < len(by_cap) and by_cap[next_capped] not in active:
                next_capped += 1
            step = cap[by_cap[next_capped]] - level if next_capped < len(by_cap) else math.inf
            for name, w in weight.items():
                if w > 0:
                    step = min(step, remaining[name] / w)
            step = max(step, 0.0)
            if math.isinf(step):
                raise ValueError("a flow uses no bounded resource and has no cap")
            level += step
            frozen: dict[Flow, None] = {}
            for name, w in list(weight.items()):
                remaining[name] -= step * w
                if w > 0 and remaining[name] <= self.capacities[name] * 1e-9:
                    frozen.update((f, None) for f in users[name] if f in active)
            while next_capped < len(by_cap) and cap[by_cap[next_capped]] <= level * (1 + 1e-9):
                if by_cap[next_capped] in active:
                    frozen[by_cap[next_capped]] = None
                next_capped += 1
            if not frozen:  # numerical safety: nothing saturated yet nothing can grow
                break
            for flow in frozen:
                flow.rate_bytes_per_s = level
                for name, coeff in flow.uses.items():
                    weight[name] -= coeff
                    if weight[name] <= 1e-12:
                        del weight[name]
            for flow in frozen:
                del active[flow]
        for flow in active:
            flow.rate_bytes_per_s = level

    def run(self, until_s: float = math.inf) -> float:
        """Run until nothing is left to do (or ``until_s``); returns the time reached."""
        while self.flows or self._timers:
            if self._dirty:
                self._allocate()
            next_flow_s = math.inf
            for flow in self.flows:
                if flow.rate_bytes_per_s > 0:
                    next_flow_s = min(next_flow_s, self.now_s + flow.remaining_bytes / flow.rate_bytes_per_s)
            next_timer_s = self._timers[0][0] if self._timers else math.inf
            target = min(next_flow_s, next_timer_s)
            if math.isinf(target):
                raise RuntimeError("simulation stalled: flows without rate and no timer")
            if target > until_s:
                self._advance(until_s)
                return self.now_s
            self._advance(target)
            done = [f for f in self.flows if f.remaining_bytes <= 1e-6 * max(1.0, f.size_bytes)]
            for flow in done:
                del self.flows[flow]
                self._dirty = True
            for flow in done:
                self.num_events += 1
                flow.on_done()
            while self._timers and self._timers[0][0] <= self.now_s:
                _, _, callback = heapq.heappop(self._timers)
                self.num_events += 1
                callback()
        return self.now_s

    def _advance(self, to_s: float) -> None:
        elapsed = to_s - self.now_s
        if elapsed > 0:
            for flow in self.flows:
                flow.remaining_bytes -= flow.rate_bytes_per_s * elapsed
        self.now_s = to_s


# -- topology ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Node:
    """A machine (or, on one host, a process) that holds or reads weights."""

    node_id: str
    topology: Topology
    nic_bytes_per_s: float
    """Usable NIC bandwidth each way (all of the node's NICs together)."""


@dataclass(frozen=True, kw_only=True)
class Network:
    """Nodes and the links above them."""

    nodes: tuple[Node, ...]
    rack_uplink_bytes_per_s: float = math.inf
    """Each rack's uplink (and downlink) to the spine; inf for a non-blocking fabric."""
    wan_bytes_per_s: float = math.inf
    """Each direction of the wide-area link between two datacenters."""
    flow_cap_bytes_per_s: float = math.inf
    """Fastest one read stream goes (one socket or one RDMA queue pair set)."""
    cpu_cores: float = 0.0
    """On one host: cores shared by every copy and hash (0: not modelled, a cluster)."""
    cpu_s_per_byte: Mapping[str, float] = field(default_factory=dict)
    """On one host: CPU seconds per byte moved, per carrier ("shm", "tcp"), reader and holder together."""
    cpu_cap_bytes_per_s: Mapping[str, float] = field(default_factory=dict)
    """On one host: the rate of one read stream per carrier (one thread copies and hashes)."""

    def capacities(self) -> dict[str, float]:
        """Every resource and its capacity."""
        out: dict[str, float] = {}
        for node in self.nodes:
            out[f"out:{node.node_id}"] = node.nic_bytes_per_s
            out[f"in:{node.node_id}"] = node.nic_bytes_per_s
        racks = {n.topology.rack for n in self.nodes if n.topology.rack}
        for rack in racks:
            out[f"up:{rack}"] = self.rack_uplink_bytes_per_s
            out[f"down:{rack}"] = self.rack_uplink_bytes_per_s
        dcs = sorted({n.topology.datacenter for n in self.nodes})
        for a, b in itertools.permutations(dcs, 2):
            out[f"wan:{a}>{b}"] = self.wan_bytes_per_s
        if self.cpu_cores:
            out["cpu"] = self.cpu_cores
        return out

    def path(self, src: Node, dst: Node, *, hash_shm: bool = True) -> tuple[dict[str, float], float]:
        """Resources a read of ``dst`` from ``src`` uses, and its per-stream cap (``hash_shm``
        False: a same-host read copies without hashing, where the host models that)."""
        same_host = bool(src.topology.host) and src.topology.host == dst.topology.host
        cap = self.flow_cap_bytes_per_s
        if self.cpu_cores:
            carrier = "shm" if same_host else "tcp"
            if same_host and not hash_shm and "shm_copy" in self.cpu_s_per_byte:
                carrier = "shm_copy"
            uses = {"cpu": self.cpu_s_per_byte[carrier]}
            cap = min(cap, self.cpu_cap_bytes_per_s[carrier])
            if not same_host:
                uses |= {f"out:{src.node_id}": 1.0, f"in:{dst.node_id}": 1.0}
            return uses, cap
        uses = {f"out:{src.node_id}": 1.0, f"in:{dst.node_id}": 1.0}
        s, d = src.topology, dst.topology
        if s.datacenter != d.datacenter:
            uses[f"wan:{s.datacenter}>{d.datacenter}"] = 1.0
        if s.rack != d.rack:
            if math.isfinite(self.rack_uplink_bytes_per_s):
                uses[f"up:{s.rack}"] = 1.0
                uses[f"down:{d.rack}"] = 1.0
        return uses, cap


# -- the hub, simulated --------------------------------------------------------------------------------


@dataclass(kw_only=True)
class _SimHolder:
    node: Node
    chunks: set[int]
    publisher: bool
    max_concurrent_reads: int
    active_reads: int = 0
    frozen: frozenset[int] | None = None
    """``chunks`` as last handed to the planner (rebuilt when chunks change)."""


@dataclass(frozen=True, kw_only=True)
class HubOptions:
    """How the simulated hub and its readers behave (mirrors the service and ``clients/weighthub.py``)."""

    partial_holders: bool = True
    """Readers serve chunks they verified while still fetching (chunk-level pipelining)."""
    publisher_max_concurrent_reads: int = 1
    """Read slots of each trainer (publisher) holder."""
    reader_max_concurrent_reads: int = 4
    """Read slots of each reader once it holds chunks."""
    reads_per_source: int = 2
    """Chunks a reader reads from one source at a time."""
    max_chunks_per_plan: int = 4
    """With partial holders: chunks one plan names at most (rarest first; see ``plan_reads``)."""
    poll_s: float = 0.0
    """0: a refused reader waits until a source frees up (the hub holds its request open); > 0: it
    asks again after this long, as a client polling GetPlan with sleeps does."""
    control_s: float = 0.0
    """Latency of one plan (GetPlan round trip) and of noticing a new version."""
    chunk_latency_s: float = 0.0
    """Fixed cost of one chunk read (request round trip) on top of its bytes; where the host's cores
    are modelled, CPU time on them (a loopback round trip is the two processes' work)."""
    publish_s: float = 0.0
    """Time from the start of publishing to the version being committed (copy into buffers, hash)."""
    serve_in_flight: bool = False
    """With partial holders: a reader serves each chunk the moment it lands, and the hub names it
    as the source of the chunks it is fetching from a holder that has them before it reports them
    (the read waits at it until the chunk is there); see the planner's rule 7."""
    spread_publisher_chunks: bool = False
    """With partial holders: one plan reads at most its share (chunks wanted / readers) from the
    publishers, so readers start on different slices (the planner's rule 9; the hub counts the
    readers of the previous version, here every reader)."""
    shm_max_concurrent_reads: int = 0
    """Read slots a holder has at least for readers on its host (shared memory; rule 8)."""
    pipelined_plans: bool = False
    """The reader asks for its next plan as soon as one is answered while chunks remain unplanned,
    and the hub holds it open until a source frees up (``clients/weighthub.py``); False: it asks
    again only when a source's reads end."""
    fetch_cpu_s: float = 0.0
    """On one host: CPU seconds a reader spends per fetch besides moving bytes (its buffers'
    registration, plans and reports, per-read bookkeeping), measured; taken on the host's cores,
    one thread, when the reader hears of the version (0: not modelled)."""
    hash_shm_reads: bool = True
    """False: a same-host read copies without hashing (the Reader trusts a leased, verified
    shared-memory source)."""
    hub_queue: bool = False
    """Model the hub's control plane as the one thread it is: every RPC (the version's announcement
    to each reader, each plan's answer, each progress report that makes chunks servable, each
    ReportHeld that makes a reader a whole holder once its fetch returned) takes ``control_s`` of
    that thread (and of the host's cores, where they are modelled), so RPCs of many readers queue.
    False: a plan's answer and an announcement cost ``control_s`` of latency, progress is seen at
    once and nothing queues."""
    cut_through: bool = False
    """With ``serve_in_flight``: a read of a chunk its source is still fetching streams right
    behind the source's own read instead of waiting for the whole chunk -- what the Reader does
    where one simulated chunk stands for many of the transport's chunks (each served the moment it
    lands), as in the cluster workloads; False where a simulated chunk is one transport chunk."""
    bound_reader_sources: bool = False
    """With partial holders: a reader reads from at most ``reader_max_concurrent_reads`` holders at
    once, as many as it serves (the planner's rule 10)."""
    plan_with_announcement: bool = False
    """With ``hub_queue``: the hub plans each reader's first read as it announces the version (the
    watch carries the plan, in the announcement's turn on the hub's thread), so the reader starts
    reading after its fetch's CPU without a plan round trip; False: it asks for a plan first."""


@dataclass
class HubRun:
    """What one simulated distribution did."""

    done_at_s: dict[str, float]
    """Reader -> seconds from the start until it held every chunk."""
    bytes_from: dict[str, float]
    """Holder -> bytes it served."""
    num_plans: int = 0


def simulate_hub(
    network: Network,
    *,
    publishers: Mapping[str, Sequence[int]],
    readers: Sequence[str],
    chunk_sizes: Sequence[float],
    options: HubOptions,
    existing_holders: Sequence[str] = (),
    reader_start_s: Mapping[str, float] | None = None,
) -> HubRun:
    """Distribute one version from ``publishers`` (node -> the chunks it publishes) to ``readers``.

    ``existing_holders`` already hold the whole version (e.g. rollouts before a scale-out).
    """
    by_id = {n.node_id: n for n in network.nodes}
    capacities = network.capacities()
    if options.hub_queue:
        capacities["hub"] = 1.0
    sim = FlowSim(capacities)
    num_chunks = len(chunk_sizes)
    holders: dict[str, _SimHolder] = {}

    def rpc(then: Callable[[], object]) -> None:
        """One RPC to the hub; ``then`` runs when its answer is back."""
        if not options.hub_queue:
            sim.at(options.control_s, then)
            return
        uses = {"hub": options.control_s}
        if "cpu" in capacities:
            uses["cpu"] = options.control_s
        sim.start(1.0, uses, then)

    reporting: dict[str, bool] = {}
    unreported: dict[str, set[int]] = {}

    pending_finish: dict[str, int] = {}

    def report_progress(reader_id: str, *, finished_source: bool = False) -> None:
        """Chunks a reader verified become servable once its ReportProgress is answered; one
        report at a time, what verifies meanwhile goes in the next (as clients/weighthub.py does).
        With ``serve_in_flight`` chunks alone make no report: they ride with a finished source's."""
        if finished_source:
            pending_finish[reader_id] = pending_finish.get(reader_id, 0) + 1
        if reporting.get(reader_id):
            return
        if options.serve_in_flight and not pending_finish.get(reader_id):
            return
        if not unreported.get(reader_id) and not pending_finish.get(reader_id):
            return
        pending_finish[reader_id] = 0
        batch, unreported[reader_id] = unreported.get(reader_id, set()), set()
        reporting[reader_id] = True

        def answered() -> None:
            reporting[reader_id] = False
            holder = holders[reader_id]
            holder.chunks |= batch
            fetching[reader_id] -= batch
            if holder.active_reads < holder.max_concurrent_reads:
                wake_waiters()
            report_progress(reader_id)

        rpc(answered)

    for node_id, chunks in publishers.items():
        holders[node_id] = _SimHolder(
            node=by_id[node_id],
            chunks=set(chunks),
            publisher=True,
            max_concurrent_reads=options.publisher_max_concurrent_reads,
        )
    for node_id in existing_holders:
        holders[node_id] = _SimHolder(
            node=by_id[node_id],
            chunks=set(range(num_chunks)),
            publisher=False,
            max_concurrent_reads=options.reader_max_concurrent_reads,
        )
    run = HubRun(done_at_s={}, bytes_from={})
    missing: dict[str, set[int]] = {r: set(range(num_chunks)) for r in readers}
    in_flight: dict[str, set[int]] = {r: set() for r in readers}
    have: dict[str, set[int]] = {r: set() for r in readers}
    fetching: dict[str, set[int]] = {r: set() for r in readers}
    """Chunks the hub may name a reader as the source of before it has them (serve_in_flight)."""
    arrival_waiters: dict[tuple[str, int], list[Callable[[], object]]] = {}
    inbound: dict[tuple[str, int], Flow] = {}
    """(reader, chunk) -> the flow bringing the chunk to the reader, while it runs."""
    inbound_waiters: dict[tuple[str, int], list[Callable[[Flow], object]]] = {}
    """Reads (with cut-through) of a chunk whose source's own read of it has not started yet."""
    waiting: list[str] = []
    wake_scheduled = [False]
    reading_sources: dict[str, collections.Counter[str]] = {r: collections.Counter() for r in readers}
    """Reader -> the holders it reads from now, and how many reads of each."""

    def sources(reader_id: str) -> list[Source]:
        out = []
        for holder_id, h in holders.items():
            if holder_id == reader_id:
                continue
            future = fetching.get(holder_id, set())
            if not (h.publisher or len(h.chunks) == num_chunks or (options.partial_holders and (h.chunks or future))):
                continue
            if h.frozen is None or len(h.frozen) != len(h.chunks):
                h.frozen = frozenset(h.chunks)
            chunks: frozenset[int] | None = None if len(h.chunks) == num_chunks else h.frozen
            place = h.node.topology
            shm = bool(place.host) and place.host == by_id[reader_id].topology.host
            # As the hub lists them: a publisher read over shared memory (no NIC, the reader
            # copies) is not spared.
            out.append(
                Source(
                    holder_id=holder_id,
                    topology=place,
                    chunks=chunks,
                    active_reads=h.active_reads,
                    max_concurrent_reads=h.max_concurrent_reads,
                    publisher=h.publisher and not shm,
                    fetching=frozenset(future - h.chunks) if chunks is not None else frozenset(),
                    shared_memory=shm,
                )
            )
        return out

    def wake_waiters() -> None:
        if wake_scheduled[0] or not waiting:
            return
        wake_scheduled[0] = True

        def wake() -> None:
            # Like the hub answering held-open plan requests: oldest first, until two in a row
            # still find every source busy (a freed slot or a new chunk serves a few, not all).
            # A reader with reads in flight asks again when one ends.
            wake_scheduled[0] = False
            failures = 0
            for reader_id in list(waiting):
                if failures >= 4:
                    break
                waiting.remove(reader_id)
                if not plan(reader_id):
                    failures += 1
                else:
                    failures = 0

        sim.at(0.0, wake)

    def plan(reader_id: str, announced: bool = False) -> bool:
        wanted = sorted(missing[reader_id] - in_flight[reader_id])
        if not wanted:
            return True
        run.num_plans += 1
        offered = sources(reader_id)
        try:
            result = plan_reads(
                reader_id=reader_id,
                reader=by_id[reader_id].topology,
                chunks=wanted,
                chunk_sizes=chunk_sizes,
                sources=offered,
                defer_busy=options.partial_holders,
                max_chunks=options.max_chunks_per_plan if options.partial_holders else 0,
                num_readers=len(readers) if options.spread_publisher_chunks else 0,
                shm_max_concurrent_reads=options.shm_max_concurrent_reads,
                reader_max_sources=options.reader_max_concurrent_reads if options.bound_reader_sources else 0,
                reader_sources=[h for h, n in reading_sources[reader_id].items() if n],
            )
        except ResourceExhausted:
            if in_flight[reader_id] and not options.pipelined_plans:
                return False
            if options.poll_s > 0:
                sim.at(options.poll_s + options.control_s, lambda: plan(reader_id))
            elif reader_id not in waiting:
                waiting.append(reader_id)
            return False
        by_source = {source.holder_id: source for source in offered}
        for read in result.reads:
            holder = holders[read.holder_id]
            holder.active_reads += 1
            reading_sources[reader_id][read.holder_id] += 1
            in_flight[reader_id].update(read.chunk_indices)
            if options.serve_in_flight and options.partial_holders:
                fetching[reader_id].update(c for c in read.chunk_indices if by_source[read.holder_id].has(c))
        if options.serve_in_flight and options.partial_holders and reader_id not in holders:
            holders[reader_id] = _SimHolder(
                node=by_id[reader_id],
                chunks=set(),
                publisher=False,
                max_concurrent_reads=options.reader_max_concurrent_reads,
            )
        if options.serve_in_flight and result.reads:
            wake_waiters()  # plans held open may read the chunks this reader now fetches
        if options.hub_queue:
            # The reads start when the plan's answer is back.
            def start_reads(reads: Sequence[Any] = result.reads) -> None:
                for read in reads:
                    _read_source(reader_id, read.holder_id, list(read.chunk_indices))
                if options.pipelined_plans:
                    ask_again(reader_id)

            if announced:
                begin_fetch(reader_id, start_reads)
            else:
                rpc(start_reads)
        else:
            for read in result.reads:
                _read_source(reader_id, read.holder_id, list(read.chunk_indices))
            if options.pipelined_plans:
                sim.at(options.control_s, lambda: ask_again(reader_id))
        return True

    def ask_again(reader_id: str) -> None:
        """The client's next plan request, sent as soon as the last one was answered."""
        if reader_id not in waiting and missing[reader_id] - in_flight[reader_id]:
            plan(reader_id)

    def _read_source(reader_id: str, holder_id: str, chunks: list[int]) -> None:
        queue = list(chunks)
        running = [0]
        src, dst = by_id[holder_id], by_id[reader_id]
        uses, cap = network.path(src, dst, hash_shm=options.hash_shm_reads)
        source_is_reader = holder_id in have

        def next_chunk() -> None:
            if not queue:
                if running[0] == 0:
                    holders[holder_id].active_reads -= 1
                    reading_sources[reader_id][holder_id] -= 1
                    if options.hub_queue and options.serve_in_flight and missing[reader_id]:
                        report_progress(reader_id, finished_source=True)
                    # The freed slot goes to readers already waiting first; this one queues behind them.
                    if missing[reader_id] - in_flight[reader_id] and reader_id not in waiting:
                        waiting.append(reader_id)
                    wake_waiters()
                return
            chunk = queue.pop(0)
            running[0] += 1

            def arrived() -> None:
                running[0] -= 1
                run.bytes_from[holder_id] = run.bytes_from.get(holder_id, 0.0) + chunk_sizes[chunk]
                got_chunk(reader_id, chunk)
                next_chunk()

            def begin(leader: Flow | None = None) -> None:
                inbound[(reader_id, chunk)] = sim.start(
                    chunk_sizes[chunk], uses, arrived, cap_bytes_per_s=cap, leader=leader
                )
                for follow in inbound_waiters.pop((reader_id, chunk), ()):
                    follow(inbound[(reader_id, chunk)])

            def start(leader: Flow | None = None) -> None:
                sim.after_round_trip(options.chunk_latency_s, lambda: begin(leader))

            if source_is_reader and chunk not in have[holder_id]:
                # Named before it arrived there (serve_in_flight): the read waits at the source,
                # for the whole chunk, or with cut-through until the source's own read of it
                # starts, and then streams right behind it.
                upstream = inbound.get((holder_id, chunk))
                if not options.cut_through:
                    arrival_waiters.setdefault((holder_id, chunk), []).append(start)
                elif upstream is not None:
                    start(upstream)
                else:
                    inbound_waiters.setdefault((holder_id, chunk), []).append(start)
            else:
                start()

        for _ in range(max(1, min(options.reads_per_source, len(queue)))):
            next_chunk()

    def got_chunk(reader_id: str, chunk: int) -> None:
        inbound.pop((reader_id, chunk), None)
        missing[reader_id].discard(chunk)
        in_flight[reader_id].discard(chunk)
        have[reader_id].add(chunk)
        for waiter in arrival_waiters.pop((reader_id, chunk), ()):
            waiter()
        holder = holders.get(reader_id)
        if holder is None:
            holder = holders[reader_id] = _SimHolder(
                node=by_id[reader_id],
                chunks=set(),
                publisher=False,
                max_concurrent_reads=options.reader_max_concurrent_reads,
            )
        if options.hub_queue:
            if not missing[reader_id]:
                # Every chunk is in and verified: the fetch returns now; ReportHeld goes in the
                # background and only its answer makes this reader a whole holder.
                run.done_at_s[reader_id] = sim.now_s

                def held() -> None:  # ReportHeld answered: every chunk is served
                    holder.chunks = set(range(num_chunks))
                    fetching[reader_id] = set()
                    wake_waiters()

                unreported[reader_id] = set()
                rpc(held)
            elif options.partial_holders:
                unreported.setdefault(reader_id, set()).add(chunk)
                report_progress(reader_id)
            return
        holder.chunks.add(chunk)
        fetching[reader_id].discard(chunk)
        if not missing[reader_id]:
            run.done_at_s[reader_id] = sim.now_s
            sim.at(options.control_s, wake_waiters)  # ReportHeld
        elif options.partial_holders and holder.active_reads < holder.max_concurrent_reads:
            wake_waiters()

    starts = reader_start_s or {}

    def begin_fetch(reader_id: str, then: Callable[[], object] | None = None) -> None:
        """The reader's CPU for a fetch besides the bytes, then ``then`` (by default: ask for a plan)."""
        after = then if then is not None else functools.partial(plan, reader_id)
        if options.fetch_cpu_s > 0 and "cpu" in capacities:
            sim.start(options.fetch_cpu_s, {"cpu": 1.0}, after, cap_bytes_per_s=1.0)
        else:
            after()

    def announced(reader_id: str) -> None:
        """The announcement carries the first plan: planned now; the reads start after the
        reader's CPU. Nothing free now: the reader asks as usual, after that CPU."""
        if not plan(reader_id, announced=True) and reader_id in waiting:
            waiting.remove(reader_id)
            begin_fetch(reader_id)

    for reader_id in readers:
        if options.hub_queue and options.plan_with_announcement:
            sim.at(
                options.publish_s + starts.get(reader_id, 0.0),
                functools.partial(rpc, functools.partial(announced, reader_id)),
            )
        elif options.hub_queue:
            # The commit's announcement reaches each reader through the hub's thread.
            sim.at(
                options.publish_s + starts.get(reader_id, 0.0),
                functools.partial(rpc, functools.partial(begin_fetch, reader_id)),
            )
        else:
            sim.at(
                options.publish_s + options.control_s + starts.get(reader_id, 0.0), functools.partial(plan, reader_id)
            )
    sim.run()
    unfinished = [r for r in readers if r not in run.done_at_s]
    if unfinished:
        raise RuntimeError(f"simulation ended with readers unfinished: {unfinished[:5]}")
    return run


def simulate_naive(
    network: Network,
    *,
    trainer: str,
    readers: Sequence[str],
    size_bytes: float,
    num_requests: int = 1,
    request_latency_s: float = 0.0,
    parallel_requests: int = 1,
    start_s: float = 0.0,
) -> dict[str, float]:
    """Every reader pulls the whole model from ``trainer`` at once; reader -> seconds until done.

    Each reader makes ``num_requests`` equal reads, ``parallel_requests`` at a time, each after a
    round trip of ``request_latency_s`` (CPU time on the host's cores where they are modelled)."""
    by_id = {n.node_id: n for n in network.nodes}
    sim = FlowSim(network.capacities())
    done_at: dict[str, float] = {}
    per_request = size_bytes / num_requests

    def reader(reader_id: str) -> None:
        uses, cap = network.path(by_id[trainer], by_id[reader_id])
        left = [num_requests]
        running = [0]

        def next_request() -> None:
            if left[0] == 0:
                if running[0] == 0 and reader_id not in done_at:
                    done_at[reader_id] = sim.now_s
                return
            left[0] -= 1
            running[0] += 1

            def begin() -> None:
                sim.start(per_request, uses, arrived, cap_bytes_per_s=cap)

            sim.after_round_trip(request_latency_s, begin)

        def arrived() -> None:
            running[0] -= 1
            next_request()

        def begin() -> None:
            for _ in range(min(parallel_requests, num_requests)):
                next_request()

        sim.at(start_s, begin)

    for reader_id in readers:
        reader(reader_id)
    sim.run()
    return done_at


def ring_broadcast_s(
    *, size_bytes: float, num_ranks: int, link_bytes_per_s: float, chunk_bytes: float, hop_latency_s: float
) -> float:
    """Seconds of a pipelined ring broadcast (NCCL's ring algorithm) of ``size_bytes`` to ``num_ranks``."""
    hops = max(0, num_ranks - 1)
    return (size_bytes + hops * chunk_bytes) / link_bytes_per_s + hops * hop_latency_s


# -- cluster workloads -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    """A GPU cluster for the TensorHub workloads; every value with its source."""

    gpus_per_node: int = 8
    """8 GPUs per node: the Hopper (H100/H800) HGX nodes of the TensorHub paper's setups."""
    nic_gbps_per_gpu: float = 400.0
    """One 400 Gb/s RDMA NIC per GPU (ConnectX-7, rail-optimised), as in those setups."""
    rdma_efficiency: float = 0.88
    """Fraction of the line rate a transfer gets: TensorHub reports ~88 % of the RDMA peak."""
    nodes_per_rack: int = 16
    """Nodes under one leaf switch (an assumption: 16 x 8 x 400 G = 51.2 Tb/s, one 51.2 T leaf)."""
    rack_oversubscription: float = 1.0
    """Leaf uplink : downlink; 1.0 is the non-blocking fat-tree GPU fabrics are built as."""
    wan_gbps: float = 800.0
    """Datacenter interconnect for RL traffic: 8 x 100 Gb/s TCP (an assumption; TensorHub notes that
    cross-datacenter transfer is bound by TCP bandwidth)."""
    model_params: float = 200e9
    """200 B parameters: the size of Seed1.5-Thinking's MoE (DESIGN.md's trainer model)."""
    bytes_per_param: int = 2
    """bf16 weights."""
    num_chunks: int = 64
    """Chunks a version is planned in (6.25 GB each for 400 GB: the unit of plans, read slots and
    rarest-first; bytes stream behind a source still fetching them, as the transport's 4 MiB chunks
    do, with ``HubOptions.cut_through``)."""
    trainer_nodes: int = 64
    """Trainer: 512 GPUs; its version is published as one shard per node."""
    rollout_nodes: int = 64
    """Rollouts: 512 GPUs, one TP=8 instance per node; 1,024 GPUs with the trainer."""
    nccl_chunk_bytes: float = 4 * 2**20
    """NCCL's pipeline chunk for the ring broadcast (NCCL_BUFFSIZE default 4 MiB)."""
    hop_latency_s: float = 10e-6
    """Per-hop latency of the ring (RDMA, a few microseconds, rounded up)."""
    control_s: float = 0.005
    """A hub round trip (gRPC + Redis) at cluster scale: 5 ms (an assumption, ~10x this host's)."""

    @property
    def size_bytes(self) -> float:
        """Bytes of one version."""
        return self.model_params * self.bytes_per_param

    @property
    def gpu_bytes_per_s(self) -> float:
        """Usable bandwidth of one GPU's NIC."""
        return self.nic_gbps_per_gpu * Gbps * self.rdma_efficiency

    @property
    def node_bytes_per_s(self) -> float:
        """Usable bandwidth of a node's NICs together (TP shards move over all rails at once)."""
        return self.gpu_bytes_per_s * self.gpus_per_node


def _cluster_network(spec: ClusterSpec, groups: Sequence[tuple[str, int, str]]) -> Network:
    """Nodes of ``groups`` (prefix, count, datacenter), racked ``nodes_per_rack`` at a time."""
    nodes = []
    for prefix, count, dc in groups:
        for i in range(count):
            rack = f"{dc}-{prefix}-rack{i // spec.nodes_per_rack}"
            nodes.append(
                Node(
                    node_id=f"{prefix}{i}",
                    topology=Topology(host=f"{prefix}{i}", rack=rack, datacenter=dc),
                    nic_bytes_per_s=spec.node_bytes_per_s,
                )
            )
    return Network(
        nodes=tuple(nodes),
        rack_uplink_bytes_per_s=spec.node_bytes_per_s * spec.nodes_per_rack / spec.rack_oversubscription,
        wan_bytes_per_s=spec.wan_gbps * Gbps,
    )


def _trainer_shards(spec: ClusterSpec) -> dict[str, list[int]]:
    per = math.ceil(spec.num_chunks / spec.trainer_nodes)
    shards: dict[str, list[int]] = {}
    for i in range(spec.trainer_nodes):
        chunks = list(range(i * per, min(spec.num_chunks, (i + 1) * per)))
        if chunks:
            shards[f"trainer{i}"] = chunks
    return shards


def _ring_baseline_s(spec: ClusterSpec, num_rollout_nodes: int) -> float:
    """Static NCCL broadcast from trainer rank 0 to every rollout GPU, full tensors to each (as verl /
    OpenRLHF send weights to inference engines): each rank receives the whole model over its NIC."""
    return ring_broadcast_s(
        size_bytes=spec.size_bytes,
        num_ranks=num_rollout_nodes * spec.gpus_per_node + 1,
        link_bytes_per_s=spec.gpu_bytes_per_s,
        chunk_bytes=spec.nccl_chunk_bytes,
        hop_latency_s=spec.hop_latency_s,
    )


def client_options(spec: ClusterSpec) -> HubOptions:
    """The hub and its readers as built (``clients/weighthub.py``'s Reader, the hub's planner): readers
    serve chunks in flight (each of the transport's 4 MiB chunks as it lands: a read of a simulated
    chunk streams right behind its source's, ``cut_through``), the hub spreads the publishers'
    chunks over the readers and bounds the holders a reader reads from at once by its own read
    slots (rule 10: the hub passes ``reader_max_sources`` and ``reader_sources``), a reader asks
    for its next plan as soon as one is answered; planning windows of 4 chunks (the Reader's
    ``max_chunks_per_plan``: its default of 16 counts 4 MiB chunks; 16 of these 6.25 GB ones tie a
    reader to few sources and simulate worse), the hub's default of 4 read slots per reader and 1
    per trainer holder (the trainer's NIC is shared by its ranks)."""
    return HubOptions(
        control_s=spec.control_s,
        serve_in_flight=True,
        spread_publisher_chunks=True,
        pipelined_plans=True,
        bound_reader_sources=True,
        cut_through=True,
    )


def standalone_workload(spec: ClusterSpec, options: HubOptions | None = None) -> dict[str, Any]:
    """Standalone rollouts: after each step every rollout instance waits (on-policy) until it holds
    the new version. Stall = rollout GPU-seconds spent waiting. Baseline: static NCCL broadcast."""
    options = options or client_options(spec)
    network = _cluster_network(spec, [("trainer", spec.trainer_nodes, "dc0"), ("rollout", spec.rollout_nodes, "dc0")])
    readers = [f"rollout{i}" for i in range(spec.rollout_nodes)]
    sizes = [spec.size_bytes / spec.num_chunks] * spec.num_chunks
    hub = simulate_hub(network, publishers=_trainer_shards(spec), readers=readers, chunk_sizes=sizes, options=options)
    hub_stall = sum(hub.done_at_s.values()) * spec.gpus_per_node
    ring_s = _ring_baseline_s(spec, spec.rollout_nodes)
    naive = simulate_naive(network, trainer="trainer0", readers=readers, size_bytes=spec.size_bytes)
    return {
        "num_gpus": (spec.trainer_nodes + spec.rollout_nodes) * spec.gpus_per_node,
        "hub_stall_gpu_s": hub_stall,
        "hub_last_reader_s": max(hub.done_at_s.values()),
        "broadcast_stall_gpu_s": ring_s * spec.rollout_nodes * spec.gpus_per_node,
        "broadcast_s": ring_s,
        "naive_stall_gpu_s": sum(naive.values()) * spec.gpus_per_node,
        "trainer_egress_per_version": sum(v for k, v in hub.bytes_from.items() if k.startswith("trainer"))
        / spec.size_bytes,
        "baseline": "static NCCL ring broadcast from trainer rank 0, full tensors to every rollout GPU",
        "stall_ratio": ring_s * spec.rollout_nodes * spec.gpus_per_node / hub_stall,
        "stall_ratio_vs_naive": sum(naive.values()) * spec.gpus_per_node / hub_stall,
    }


def elastic_workload(spec: ClusterSpec, options: HubOptions | None = None) -> dict[str, Any]:
    """Elastic scale-out: ``rollout_nodes`` new instances join while as many hold the version.
    Figure: time until every new instance holds it. Baseline: the static group re-broadcasts from
    trainer rank 0 to old and new ranks (communicator re-creation not counted, in its favour)."""
    options = options or client_options(spec)
    network = _cluster_network(
        spec,
        [
            ("trainer", spec.trainer_nodes, "dc0"),
            ("rollout", spec.rollout_nodes, "dc0"),
            ("new", spec.rollout_nodes, "dc0"),
        ],
    )
    readers = [f"new{i}" for i in range(spec.rollout_nodes)]
    sizes = [spec.size_bytes / spec.num_chunks] * spec.num_chunks
    hub = simulate_hub(
        network,
        publishers=_trainer_shards(spec),
        readers=readers,
        chunk_sizes=sizes,
        options=options,
        existing_holders=[f"rollout{i}" for i in range(spec.rollout_nodes)],
    )
    hub_s = max(hub.done_at_s.values())
    ring_s = _ring_baseline_s(spec, 2 * spec.rollout_nodes)
    return {
        "num_gpus": (spec.trainer_nodes + 2 * spec.rollout_nodes) * spec.gpus_per_node,
        "hub_update_s": hub_s,
        "broadcast_update_s": ring_s,
        "trainer_egress_per_version": sum(v for k, v in hub.bytes_from.items() if k.startswith("trainer"))
        / spec.size_bytes,
        "baseline": "static NCCL ring broadcast from trainer rank 0 to the re-formed group (old + new ranks)",
        "update_ratio": ring_s / hub_s,
    }


def crossdc_workload(spec: ClusterSpec, options: HubOptions | None = None) -> dict[str, Any]:
    """Cross-datacenter rollouts: the trainer in dc0, every rollout instance in dc1. Stall = rollout
    GPU-seconds waiting. Baseline: every instance pulls from the trainer over the wide-area link (a
    static NCCL group does not span datacenters)."""
    options = options or client_options(spec)
    network = _cluster_network(spec, [("trainer", spec.trainer_nodes, "dc0"), ("rollout", spec.rollout_nodes, "dc1")])
    readers = [f"rollout{i}" for i in range(spec.rollout_nodes)]
    sizes = [spec.size_bytes / spec.num_chunks] * spec.num_chunks
    hub = simulate_hub(network, publishers=_trainer_shards(spec), readers=readers, chunk_sizes=sizes, options=options)
    hub_stall = sum(hub.done_at_s.values()) * spec.gpus_per_node
    # The trainer's shards pulled by every instance: the WAN carries the model once per instance.
    per_reader = simulate_sharded_pull(network, spec, readers)
    naive_stall = sum(per_reader.values()) * spec.gpus_per_node
    return {
        "num_gpus": (spec.trainer_nodes + spec.rollout_nodes) * spec.gpus_per_node,
        "hub_stall_gpu_s": hub_stall,
        "hub_last_reader_s": max(hub.done_at_s.values()),
        "naive_stall_gpu_s": naive_stall,
        "naive_last_reader_s": max(per_reader.values()),
        "wan_bytes_per_version": sum(v for k, v in hub.bytes_from.items() if k.startswith("trainer")) / spec.size_bytes,
        "baseline": "every rollout instance pulls its weights from the trainer's shards across the WAN",
        "stall_ratio": naive_stall / hub_stall,
    }


def simulate_sharded_pull(network: Network, spec: ClusterSpec, readers: Sequence[str]) -> dict[str, float]:
    """Every reader pulls each trainer node's shard directly (no peers); reader -> seconds."""
    by_id = {n.node_id: n for n in network.nodes}
    sim = FlowSim(network.capacities())
    shards = _trainer_shards(spec)
    chunk = spec.size_bytes / spec.num_chunks
    pending = {r: len(shards) for r in readers}
    done_at: dict[str, float] = {}
    for reader_id in readers:
        for trainer, chunks in shards.items():
            uses, cap = network.path(by_id[trainer], by_id[reader_id])

            def arrived(r: str = reader_id) -> None:
                pending[r] -= 1
                if pending[r] == 0:
                    done_at[r] = sim.now_s

            sim.start(chunk * len(chunks), uses, arrived, cap_bytes_per_s=cap)
    sim.run()
    return done_at


def cluster_workloads(spec: ClusterSpec | None = None) -> dict[str, Any]:
    """The three TensorHub workloads at 1,000+ GPUs, simulated; ratios are baseline / hub."""
    spec = spec or ClusterSpec()
    standalone = standalone_workload(spec)
    elastic = elastic_workload(spec)
    crossdc = crossdc_workload(spec)
    return {
        "spec": {k: getattr(spec, k) for k in spec.__dataclass_fields__},
        "standalone": standalone,
        "elastic": elastic,
        "crossdc": crossdc,
        "ratios": {
            "sim_standalone_stall": standalone["stall_ratio"],
            "sim_elastic_update": elastic["update_ratio"],
            "sim_crossdc_stall": crossdc["stall_ratio"],
        },
        "paper": {"sim_standalone_stall": 6.7, "sim_elastic_update": 4.8, "sim_crossdc_stall": 19.0},
    }


# -- this machine, described to the simulator ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MachineSpec:
    """One host running the benchmark's processes, described by rates measured in the same run."""

    cpu_cores: float
    """Cores shared by every process: os.cpu_count(), or on a shared host the cores the benchmark's
    processes get, measured (a hash in one thread against one per core at once)."""
    socket_bytes_per_s: float
    """One loopback socket stream, sender and receiver (benchmarks/transport.py raw_socket_method)."""
    memcpy_bytes_per_s: float
    """One memcpy into a touched buffer (benchmarks/transport.py memcpy_method)."""
    hash_bytes_per_s: float
    """The chunk hash (xxh3_128) over a buffer, one thread."""
    read_latency_s: float
    """One small tensor-plane read (request round trip), measured."""
    rpc_s: float
    """One hub RPC round trip (gRPC + Redis), measured."""
    shm_read_bytes_per_s: float = 0.0
    """One whole-model read through the tensor plane over shared memory (copy, hash and the
    transport's own work), measured; 0: derived from memcpy and hash."""
    tcp_read_bytes_per_s: float = 0.0
    """The same over a loopback socket; 0: derived from socket and hash."""
    prepare_bytes_per_s: float = 0.0
    """The trainer putting a new version in its buffers (copy and hash, through the holder, tensor
    after tensor: the naive scheme's), measured; 0: derived from memcpy and hash."""
    publish_prepare_bytes_per_s: float = 0.0
    """The same through the Publisher (``clients.weighthub.copy_and_hash``, a few tensors at once:
    the hub scheme's), measured; 0: as ``prepare_bytes_per_s``."""

    def network(self, process_ids: Sequence[str], hosts: Mapping[str, str]) -> Network:
        """Each process a node; ``hosts`` says which share a host (shared memory between them)."""
        # A primitive is no slower than a whole read that includes it, measured in the same run:
        # where a burst of other work on the host hit the primitive's sample, the read bounds it.
        sock = max(self.socket_bytes_per_s, self.tcp_read_bytes_per_s)
        copy = max(self.memcpy_bytes_per_s, self.shm_read_bytes_per_s)
        hashing = self.hash_bytes_per_s
        # A socket read costs the kernel's copy on each side (a stream at full speed keeps both
        # ends busy: 2 / rate) and the reader's hash; a shared-memory read one copy and the hash.
        # Where a whole read through the transport was measured, its rate caps one stream and the
        # CPU per byte scales by how far it falls short of the primitives' prediction.
        cpu_s_per_byte = {"tcp": 2 / sock + 1 / hashing, "shm": 1 / copy + 1 / hashing}
        cap = {"tcp": 1 / (1 / sock + 1 / hashing), "shm": 1 / (1 / copy + 1 / hashing)}
        # A shared-memory copy without the hash (a Reader's trusted same-host read): the copy,
        # with the transport's own overhead as measured for the hashed read.
        cpu_s_per_byte["shm_copy"], cap["shm_copy"] = 1 / copy, copy
        for carrier, measured in (("tcp", self.tcp_read_bytes_per_s), ("shm", self.shm_read_bytes_per_s)):
            if measured > 0:
                factor = cap[carrier] / measured
                cpu_s_per_byte[carrier] *= factor
                cap[carrier] = measured
                if carrier == "shm":
                    cpu_s_per_byte["shm_copy"] *= factor
                    cap["shm_copy"] /= factor
        return Network(
            nodes=tuple(Node(node_id=p, topology=Topology(host=hosts[p]), nic_bytes_per_s=sock) for p in process_ids),
            cpu_cores=self.cpu_cores,
            cpu_s_per_byte=cpu_s_per_byte,
            cpu_cap_bytes_per_s=cap,
        )

    def prepare_s(self, size_bytes: float) -> float:
        """Seconds for the trainer to put ``size_bytes`` of a new version in its buffers."""
        if self.prepare_bytes_per_s > 0:
            return size_bytes / self.prepare_bytes_per_s
        return size_bytes / self.memcpy_bytes_per_s + size_bytes / self.hash_bytes_per_s


def predict_local(
    machine: MachineSpec,
    *,
    k: int,
    size_bytes: float,
    num_tensors: int,
    chunk_size_bytes: float,
    net: bool,
    options: HubOptions,
) -> dict[str, float]:
    """Predicted seconds of the benchmark's ``hub`` and ``naive`` schemes for K readers on this host."""
    processes = ["trainer"] + [f"reader{i}" for i in range(k)]
    hosts = {p: (p if net else "local") for p in processes}
    network = machine.network(processes, hosts)
    # The trainer copies the new tensors into its buffers and hashes them before readers start.
    prepare_s = machine.prepare_s(size_bytes)
    publish_prepare_s = (
        size_bytes / machine.publish_prepare_bytes_per_s if machine.publish_prepare_bytes_per_s > 0 else prepare_s
    )
    num_chunks = max(1, round(size_bytes / chunk_size_bytes))
    hub = simulate_hub(
        network,
        publishers={"trainer": list(range(num_chunks))},
        readers=processes[1:],
        chunk_sizes=[size_bytes / num_chunks] * num_chunks,
        options=replace(options, publish_s=publish_prepare_s + machine.rpc_s, chunk_latency_s=machine.read_latency_s),
    )
    # With the hub's thread modelled, the announcement is a simulated RPC; else readers hear of the
    # version (watch): one round trip on top (ReportHeld runs after the fetch returns).
    hub_s = max(hub.done_at_s.values()) + (0.0 if options.hub_queue else machine.rpc_s)
    naive = simulate_naive(
        network,
        trainer="trainer",
        readers=processes[1:],
        size_bytes=size_bytes,
        num_requests=num_tensors,
        request_latency_s=machine.read_latency_s,
        parallel_requests=2,
        start_s=prepare_s,
    )
    return {"hub_s": hub_s, "naive_s": max(naive.values())}
