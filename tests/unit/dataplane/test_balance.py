"""Rank balancing by attention cost: partitioning a batch and composing batches from a window."""

from __future__ import annotations

import random
import statistics

import numpy as np

from services.dataplane.balance import bucket_of, compose, partition, round_robin, sample_cost, split_imbalance


def long_tailed_costs(rng: random.Random, n: int) -> list[float]:
    """Lengths 20..4000 with median ~124 (log-normal), cost L + L^2/4096, as in the issue."""
    lengths = [max(20, min(4000, int(rng.lognormvariate(np.log(124), 1.2)))) for _ in range(n)]
    return [sample_cost(L, 1.0, 1 / 4096) for L in lengths]


def test_partition_covers_every_sample_once_and_beats_round_robin() -> None:
    rng = random.Random(1)
    for _ in range(20):
        costs = long_tailed_costs(rng, 64)
        bins = partition(costs, 8)
        assert sorted(i for b in bins for i in b) == list(range(64))
        assert split_imbalance(costs, bins) <= split_imbalance(costs, round_robin(64, 8))
        # No partition can beat the bound set by the largest sample.
        bound = max(1.0, max(costs) * 8 / sum(costs))
        assert split_imbalance(costs, bins) >= bound - 1e-9
        assert partition(costs, 8) == bins


def test_composing_a_window_reaches_the_goal_where_partitioning_cannot() -> None:
    rng = random.Random(2)
    fixed, composed = [], []
    for _ in range(10):
        costs = long_tailed_costs(rng, 4 * 64)
        fixed += [
            split_imbalance(costs[k * 64 : (k + 1) * 64], partition(costs[k * 64 : (k + 1) * 64], 8)) for k in range(4)
        ]
        batches = compose(costs, [0] * len(costs), 4, 64, 8)
        assert sorted(i for b in batches for i in b) == list(range(len(costs)))
        assert all(len(b) == 64 for b in batches)
        for b in batches:
            sub = [costs[i] for i in b]
            composed.append(split_imbalance(sub, partition(sub, 8)))
    assert statistics.mean(composed) <= 1.1
    assert statistics.mean(composed) < statistics.mean(fixed)


def test_compose_gives_each_batch_its_share_of_every_bucket() -> None:
    rng = random.Random(3)
    costs = long_tailed_costs(rng, 3 * 32)
    bounds = [200, 1000]
    buckets = [bucket_of(int(c), bounds) for c in costs]
    batches = compose(costs, buckets, 3, 32, 4)
    for k in range(3):
        per_batch = [sum(1 for i in b if buckets[i] == k) for b in batches]
        assert max(per_batch) - min(per_batch) <= 1, per_batch
