"""The cluster simulator: max-min fair flows, the planner driving it, the TensorHub workloads."""

from __future__ import annotations

import dataclasses
from typing import Any
from unittest import mock

import pytest

from services.weighthub import planner, sim
from services.weighthub.planner import Topology

MACHINE = sim.MachineSpec(
    cpu_cores=2,
    socket_bytes_per_s=2e9,
    memcpy_bytes_per_s=10e9,
    hash_bytes_per_s=10e9,
    read_latency_s=1e-4,
    rpc_s=1e-3,
)
"""A 2-core machine described by round rates (the tests compare predictions, not this machine's)."""


def test_one_flow_on_one_link_takes_size_over_bandwidth() -> None:
    flows = sim.FlowSim({"link": 100.0})
    done: list[float] = []
    flows.start(250.0, {"link": 1.0}, lambda: done.append(flows.now_s))
    flows.run()
    assert done == [pytest.approx(2.5)]


def test_two_flows_share_a_link_fairly_and_the_survivor_speeds_up() -> None:
    flows = sim.FlowSim({"link": 100.0})
    done: dict[str, float] = {}
    flows.start(100.0, {"link": 1.0}, lambda: done.setdefault("small", flows.now_s))
    flows.start(300.0, {"link": 1.0}, lambda: done.setdefault("large", flows.now_s))
    flows.run()
    # 50/s each until the small one ends at 2 s; then the large one has 200 left at 100/s.
    assert done["small"] == pytest.approx(2.0)
    assert done["large"] == pytest.approx(4.0)


def test_max_min_gives_the_bottlenecked_flow_its_share_and_the_rest_to_the_other() -> None:
    flows = sim.FlowSim({"a": 100.0, "b": 30.0})
    first = flows.start(1e9, {"a": 1.0, "b": 1.0}, lambda: None)
    second = flows.start(1e9, {"a": 1.0}, lambda: None)
    flows.run(until_s=1.0)
    assert first.rate_bytes_per_s == pytest.approx(30.0)
    assert second.rate_bytes_per_s == pytest.approx(70.0)


def test_a_flow_cap_limits_one_stream() -> None:
    flows = sim.FlowSim({"link": 100.0})
    done: list[float] = []
    flows.start(100.0, {"link": 1.0}, lambda: done.append(flows.now_s), cap_bytes_per_s=25.0)
    flows.run()
    assert done == [pytest.approx(4.0)]


def test_a_follower_never_gets_ahead_of_its_leader_and_others_take_what_it_leaves() -> None:
    flows = sim.FlowSim({"a": 100.0, "b": 1000.0})
    done: dict[str, float] = {}
    leader = flows.start(100.0, {"a": 1.0}, lambda: done.setdefault("leader", flows.now_s))
    flows.start(100.0, {"b": 1.0}, lambda: done.setdefault("follower", flows.now_s), leader=leader)
    other = flows.start(1e9, {"b": 1.0}, lambda: None)
    flows.run(until_s=0.5)
    assert other.rate_bytes_per_s == pytest.approx(900.0)
    flows.run(until_s=2.0)
    # Alone on ``b`` it would take 0.2 s; behind its leader it ends with it.
    assert done == {"leader": pytest.approx(1.0), "follower": pytest.approx(1.0)}


def _star(num_readers: int, nic: float = 100.0) -> sim.Network:
    nodes = [sim.Node(node_id="trainer", topology=Topology("t", "r0", "dc0"), nic_bytes_per_s=nic)]
    nodes += [
        sim.Node(node_id=f"r{i}", topology=Topology(f"h{i}", "r0", "dc0"), nic_bytes_per_s=nic)
        for i in range(num_readers)
    ]
    return sim.Network(nodes=tuple(nodes))


def test_the_simulated_hub_calls_the_planner_and_every_reader_gets_every_chunk() -> None:
    network = _star(4)
    with mock.patch.object(sim, "plan_reads", wraps=planner.plan_reads) as spy:
        run = sim.simulate_hub(
            network,
            publishers={"trainer": list(range(8))},
            readers=[f"r{i}" for i in range(4)],
            chunk_sizes=[10.0] * 8,
            options=sim.HubOptions(),
        )
    assert spy.call_count >= 4
    assert sorted(run.done_at_s) == ["r0", "r1", "r2", "r3"]
    assert sum(run.bytes_from.values()) == pytest.approx(4 * 80.0)


def test_pipelined_fan_out_keeps_trainer_egress_near_one_model_and_beats_pulling_from_the_trainer() -> None:
    network = _star(8)
    readers = [f"r{i}" for i in range(8)]
    run = sim.simulate_hub(
        network,
        publishers={"trainer": list(range(32))},
        readers=readers,
        chunk_sizes=[10.0] * 32,
        options=sim.HubOptions(partial_holders=True),
    )
    naive = sim.simulate_naive(network, trainer="trainer", readers=readers, size_bytes=320.0)
    assert run.bytes_from["trainer"] <= 1.5 * 320.0
    assert max(naive.values()) == pytest.approx(8 * 320.0 / 100.0)
    assert max(run.done_at_s.values()) < max(naive.values()) / 2


def test_ring_broadcast_time_is_size_over_bandwidth_plus_pipeline_fill() -> None:
    seconds = sim.ring_broadcast_s(
        size_bytes=1000.0, num_ranks=5, link_bytes_per_s=100.0, chunk_bytes=10.0, hop_latency_s=0.0
    )
    assert seconds == pytest.approx((1000.0 + 4 * 10.0) / 100.0)


def test_cluster_workloads_run_at_a_thousand_gpus_and_the_hub_wins_each() -> None:
    spec = sim.ClusterSpec(num_chunks=8, trainer_nodes=64, rollout_nodes=64)
    out = sim.cluster_workloads(spec)
    assert out["standalone"]["num_gpus"] >= 1000
    assert out["crossdc"]["wan_bytes_per_version"] == pytest.approx(1.0)
    for key in ("sim_standalone_stall", "sim_elastic_update", "sim_crossdc_stall"):
        assert out["ratios"][key] > 1.0, key


def test_machine_prediction_orders_socket_reads_slower_than_shared_memory() -> None:
    machine = MACHINE
    common = {"k": 4, "size_bytes": 64e6, "num_tensors": 16, "chunk_size_bytes": 4e6, "options": sim.HubOptions()}
    host = sim.predict_local(machine, net=False, **common)  # type: ignore[arg-type]
    net = sim.predict_local(machine, net=True, **common)  # type: ignore[arg-type]
    assert 0 < host["naive_s"] < net["naive_s"]
    assert 0 < host["hub_s"] < net["hub_s"]


def test_measured_transport_rates_slow_the_prediction_where_they_fall_short() -> None:
    primitives = MACHINE
    measured = dataclasses.replace(
        primitives, shm_read_bytes_per_s=1e9, tcp_read_bytes_per_s=0.5e9, prepare_bytes_per_s=2e9
    )
    common = {"k": 4, "size_bytes": 64e6, "num_tensors": 16, "chunk_size_bytes": 4e6, "options": sim.HubOptions()}
    for net in (False, True):
        fast = sim.predict_local(primitives, net=net, **common)  # type: ignore[arg-type]
        slow = sim.predict_local(measured, net=net, **common)  # type: ignore[arg-type]
        assert slow["naive_s"] > fast["naive_s"] and slow["hub_s"] > fast["hub_s"]
    assert measured.prepare_s(64e6) == pytest.approx(0.032)


def test_hub_rpcs_queue_on_the_hubs_one_thread() -> None:
    machine = dataclasses.replace(MACHINE, rpc_s=0.01)
    common = {"size_bytes": 4e6, "num_tensors": 1, "chunk_size_bytes": 4e6, "net": False}
    queued = sim.HubOptions(control_s=0.01, hub_queue=True)
    one = sim.predict_local(machine, k=1, options=queued, **common)  # type: ignore[arg-type]
    eight = sim.predict_local(machine, k=8, options=queued, **common)  # type: ignore[arg-type]
    # Every reader needs an announcement and a plan through the hub's one thread (its ReportHeld
    # queues there too, but the fetch returns before it is answered: the commit's RPC, the
    # announcement and the plan come before the one reader is done, not a fourth).
    assert 3 * 0.01 <= one["hub_s"] < 4 * 0.01
    assert eight["hub_s"] >= 8 * 2 * 0.01
    unqueued = sim.predict_local(machine, k=8, options=sim.HubOptions(control_s=0.01), **common)  # type: ignore[arg-type]
    assert unqueued["hub_s"] < eight["hub_s"]
    # A first plan sent with the announcement saves each reader its plan round trip on the thread.
    announced = sim.HubOptions(control_s=0.01, hub_queue=True, plan_with_announcement=True)
    one_announced = sim.predict_local(machine, k=1, options=announced, **common)  # type: ignore[arg-type]
    eight_announced = sim.predict_local(machine, k=8, options=announced, **common)  # type: ignore[arg-type]
    assert 2 * 0.01 <= one_announced["hub_s"] <= one["hub_s"] - 0.01 + 1e-9
    assert 8 * 0.01 <= eight_announced["hub_s"] < eight["hub_s"]


def test_readers_serving_chunks_in_flight_start_at_once_and_the_trainer_sends_one_copy() -> None:
    network = _star(8)
    readers = [f"r{i}" for i in range(8)]
    common: dict[str, Any] = {
        "publishers": {"trainer": list(range(32))},
        "readers": readers,
        "chunk_sizes": [10.0] * 32,
    }
    reported = sim.simulate_hub(network, options=sim.HubOptions(partial_holders=True, control_s=0.05), **common)
    in_flight = sim.simulate_hub(
        network,
        options=sim.HubOptions(
            partial_holders=True,
            control_s=0.05,
            serve_in_flight=True,
            spread_publisher_chunks=True,
            pipelined_plans=True,
        ),
        **common,
    )
    assert sorted(in_flight.done_at_s) == sorted(readers)
    assert in_flight.bytes_from["trainer"] == pytest.approx(320.0)
    # Followers need no progress report and new plan before they read what a peer is fetching.
    assert max(in_flight.done_at_s.values()) < max(reported.done_at_s.values())


def test_an_unhashed_shared_memory_copy_is_predicted_cheaper_than_a_hashed_one() -> None:
    machine = MACHINE
    common: dict[str, Any] = {"k": 4, "size_bytes": 64e6, "num_tensors": 16, "chunk_size_bytes": 4e6, "net": False}
    hashed = sim.predict_local(machine, options=sim.HubOptions(), **common)
    trusted = sim.predict_local(machine, options=sim.HubOptions(hash_shm_reads=False), **common)
    assert trusted["hub_s"] < hashed["hub_s"]
    assert trusted["naive_s"] == pytest.approx(hashed["naive_s"])  # the naive scheme still hashes


def test_with_cut_through_a_reader_streams_right_behind_a_peer_still_fetching() -> None:
    network = _star(2)
    common: dict[str, Any] = {"publishers": {"trainer": [0]}, "readers": ["r0", "r1"], "chunk_sizes": [100.0]}
    options = sim.HubOptions(partial_holders=True, serve_in_flight=True)
    whole = sim.simulate_hub(network, options=options, **common)
    streamed = sim.simulate_hub(network, options=dataclasses.replace(options, cut_through=True), **common)
    # One reader reads the trainer's one slot; the other reads the chunk from it, after the whole
    # chunk landed there, or streamed behind it.
    assert sorted(whole.done_at_s.values()) == [pytest.approx(1.0), pytest.approx(2.0)]
    assert sorted(streamed.done_at_s.values()) == [pytest.approx(1.0), pytest.approx(1.0)]
    assert streamed.bytes_from == whole.bytes_from
    assert streamed.bytes_from["trainer"] == pytest.approx(100.0)  # one copy left the trainer


def test_a_reader_reads_from_no_more_holders_at_once_than_it_serves() -> None:
    network = _star(8)
    common: dict[str, Any] = {
        "publishers": {"trainer": list(range(32))},
        "readers": [f"r{i}" for i in range(8)],
        "chunk_sizes": [10.0] * 32,
    }
    options = sim.HubOptions(
        partial_holders=True,
        serve_in_flight=True,
        spread_publisher_chunks=True,
        pipelined_plans=True,
        reader_max_concurrent_reads=2,
        bound_reader_sources=True,
    )
    most: dict[str, int] = {}
    real_plan_reads = planner.plan_reads

    def spy(**kwargs: Any) -> planner.Plan:
        result = real_plan_reads(**kwargs)
        sources = set(kwargs["reader_sources"]) | {r.holder_id for r in result.reads}
        most[kwargs["reader_id"]] = max(most.get(kwargs["reader_id"], 0), len(sources))
        return result

    with mock.patch.object(sim, "plan_reads", spy):
        run = sim.simulate_hub(network, options=options, **common)
    assert sorted(run.done_at_s) == sorted(common["readers"])
    assert max(most.values()) <= 2
