"""Balancing by attention cost alpha*L + beta*L^2: splitting a batch across ranks, composing batches from a window.

Splitting one fixed batch cannot beat the bound set by its largest sample (max/mean ≥ R·max/total).
Composing goes further: given the samples of a look-ahead window of W batches, it chooses which
samples make up each batch so that every batch can be split evenly — long samples are grouped with
other long samples (so every rank of that step gets one), and short ones fill the ranks up. The
window's samples, hence the mixture shares over it, are those drawn; only their order changes.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def sample_cost(length: int, alpha: float, beta: float) -> float:
    """Attention cost of one sample of ``length`` tokens."""
    return alpha * length + beta * length * length


def imbalance(loads: Sequence[float]) -> float:
    """Max over mean of per-rank loads (1 is perfect); 1 for an all-zero batch."""
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean > 0 else 1.0


def _lpt(costs: Sequence[float], order: Sequence[int], num_bins: int) -> list[list[int]]:
    heap = [(0.0, b) for b in range(num_bins)]
    bins: list[list[int]] = [[] for _ in range(num_bins)]
    for i in order:
        load, b = heapq.heappop(heap)
        bins[b].append(i)
        heapq.heappush(heap, (load + costs[i], b))
    return bins


def _karmarkar_karp(costs: Sequence[float], order: Sequence[int], num_bins: int) -> list[list[int]]:
    """Largest differencing method for k-way partitioning."""
    heap: list[tuple[float, int, list[tuple[float, list[int]]]]] = []
    for n, i in enumerate(order):
        parts = [(costs[i], [i])] + [(0.0, []) for _ in range(num_bins - 1)]
        heapq.heappush(heap, (-costs[i], n, parts))
    counter = len(order)
    while len(heap) > 1:
        _, _, a = heapq.heappop(heap)
        _, _, b = heapq.heappop(heap)
        a_sorted = sorted(a, key=lambda p: -p[0])
        b_sorted = sorted(b, key=lambda p: p[0])
        merged = [(x[0] + y[0], x[1] + y[1]) for x, y in zip(a_sorted, b_sorted, strict=True)]
        spread = max(p[0] for p in merged) - min(p[0] for p in merged)
        counter += 1
        heapq.heappush(heap, (-spread, counter, merged))
    if not heap:
        return [[] for _ in range(num_bins)]
    return [p[1] for p in heap[0][2]]


def _refine(costs: Sequence[float], bins: list[list[int]], rounds: int = 64) -> list[list[int]]:
    """Move or swap single samples out of the heaviest rank while that lowers its load."""
    loads = [sum(costs[i] for i in b) for b in bins]
    for _ in range(rounds):
        hi = max(range(len(bins)), key=lambda b: (loads[b], -b))
        best: tuple[float, int, int, int | None] | None = None
        for lo in range(len(bins)):
            if lo == hi:
                continue
            gap = loads[hi] - loads[lo]
            for x in bins[hi]:
                if 0 < costs[x] < gap and (best is None or max(loads[hi] - costs[x], loads[lo] + costs[x]) < best[0]):
                    best = (max(loads[hi] - costs[x], loads[lo] + costs[x]), lo, x, None)
                for y in bins[lo]:
                    delta = costs[x] - costs[y]
                    if 0 < delta < gap:
                        new_max = max(loads[hi] - delta, loads[lo] + delta)
                        if best is None or new_max < best[0]:
                            best = (new_max, lo, x, y)
        if best is None or best[0] >= loads[hi]:
            break
        _, lo, x, swap = best
        bins[hi].remove(x)
        bins[lo].append(x)
        loads[hi] -= costs[x]
        loads[lo] += costs[x]
        if swap is not None:
            bins[lo].remove(swap)
            bins[hi].append(swap)
            loads[hi] += costs[swap]
            loads[lo] -= costs[swap]
    return bins


def partition(costs: Sequence[float], num_bins: int) -> list[list[int]]:
    """Indexes of ``costs`` split into ``num_bins`` groups of near-equal total cost, deterministically.

    The better of Karmarkar-Karp and LPT, then refined by single moves and swaps. Each group keeps
    ascending index order, so equal inputs give equal outputs.
    """
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    candidates = [_karmarkar_karp(costs, order, num_bins), _lpt(costs, order, num_bins)]
    best = min(candidates, key=lambda bins: max(sum(costs[i] for i in b) for b in bins))
    best = _refine(costs, [list(b) for b in best])
    return [sorted(b) for b in best]


def greedy_partition(weights: Sequence[float], num_bins: int) -> list[list[int]]:
    """LPT: largest first, each to the least-loaded rank (what a token-count balancer does)."""
    return _lpt(weights, sorted(range(len(weights)), key=lambda i: (-weights[i], i)), num_bins)


def round_robin(num_items: int, num_bins: int) -> list[list[int]]:
    """Item i to rank i mod R: what a sampler that deals samples out does."""
    return [list(range(b, num_items, num_bins)) for b in range(num_bins)]


def split_imbalance(costs: Sequence[float], bins: Sequence[Sequence[int]]) -> float:
    """Max/mean of the per-rank cost of a split."""
    return imbalance([sum(costs[i] for i in b) for b in bins])


def _lpt_imbalance(costs: Sequence[float], num_bins: int) -> float:
    return split_imbalance(costs, greedy_partition(costs, num_bins))


def compose(
    costs: Sequence[float], buckets: Sequence[int], num_batches: int, batch_size: int, num_ranks: int
) -> list[list[int]]:
    """Choose which of the window's samples form each of ``num_batches`` batches of ``batch_size``.

    Every batch gets its share of each length bucket (``buckets[i]`` is sample i's bucket). Long
    samples are dealt in groups of ``num_ranks`` (one per rank of a step), the rest fill each step's
    ranks up to its longest, then pairwise swaps between steps (within a bucket) lower the worst
    step's imbalance. Deterministic: ties break on index.
    """
    n = len(costs)
    assert n == num_batches * batch_size, (n, num_batches, batch_size)
    if num_batches == 1:
        return [list(range(n))]
    # Per-bucket quota of each batch: deal the bucket-sorted samples out like cards.
    by_bucket = sorted(range(n), key=lambda i: (buckets[i], -costs[i], i))
    quota: list[dict[int, int]] = [{} for _ in range(num_batches)]
    for position, i in enumerate(by_bucket):
        b = position % num_batches
        quota[b][buckets[i]] = quota[b].get(buckets[i], 0) + 1
    order = sorted(range(n), key=lambda i: (-costs[i], i))
    batches: list[list[int]] = [[] for _ in range(num_batches)]
    loads = [[0.0] * num_ranks for _ in range(num_batches)]
    for i in order:
        k = buckets[i]
        best: tuple[float, float, int, int] | None = None
        for b in range(num_batches):
            if quota[b].get(k, 0) == 0:
                continue
            step_loads = loads[b]
            r = min(range(num_ranks), key=lambda r: (step_loads[r], r))
            # Prefer the rank furthest below its step's heaviest rank, so long samples gather in
            # one step (one per rank) instead of each step getting one it cannot balance.
            deficit = max(step_loads) - step_loads[r]
            key = (-deficit, step_loads[r], b, r)
            if best is None or key < best:
                best = key
        assert best is not None
        _, _, b, r = best
        batches[b].append(i)
        loads[b][r] += costs[i]
        quota[b][k] -= 1
    return _swap_between_steps(costs, buckets, batches, num_ranks)


def _swap_between_steps(
    costs: Sequence[float], buckets: Sequence[int], batches: list[list[int]], num_ranks: int, rounds: int = 48
) -> list[list[int]]:
    scores = [_lpt_imbalance([costs[i] for i in b], num_ranks) for b in batches]
    for _ in range(rounds):
        worst = max(range(len(batches)), key=lambda b: (scores[b], -b))
        if scores[worst] <= 1.02:
            break
        improved = False
        # Try giving the worst step a longer sample in exchange for one of its short ones.
        mine = sorted(batches[worst], key=lambda i: (costs[i], i))[: max(4, len(batches[worst]) // 4)]
        for other in sorted(range(len(batches)), key=lambda b: (scores[b], b)):
            if other == worst:
                continue
            theirs = sorted(batches[other], key=lambda i: (-costs[i], i))[: max(4, len(batches[other]) // 4)]
            for x in mine:
                for y in theirs:
                    if buckets[x] != buckets[y] or costs[y] <= costs[x]:
                        continue
                    a = [i for i in batches[worst] if i != x] + [y]
                    c = [i for i in batches[other] if i != y] + [x]
                    sa = _lpt_imbalance([costs[i] for i in a], num_ranks)
                    sc = _lpt_imbalance([costs[i] for i in c], num_ranks)
                    if max(sa, sc) < scores[worst] - 1e-9:
                        batches[worst], batches[other] = a, c
                        scores[worst], scores[other] = sa, sc
                        improved = True
                        break
                if improved:
                    break
            if improved:
                break
        if not improved:
            break
    return [sorted(b) for b in batches]


def bucket_of(length: int, bounds: Sequence[int]) -> int:
    """Index of the length bucket of a sample (``len(bounds)`` for samples above the last bound)."""
    for k, bound in enumerate(bounds):
        if length <= bound:
            return k
    return len(bounds)
