"""Localisation: which rank (and node) is at fault, from stack dumps, phases and the parallel layout.

ByteRobust's rule: group the ranks by what their stacks show; the biggest group is healthy (they
wait in the collective for someone), the outliers are suspects, and a suspect's parallel group
comes with it when the evidence is thin. The suspect set always contains the culprit: when nothing
stands out, every rank is a suspect, the most likely first.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

from services.robustness.model import Phase

# faulthandler: '  File "/x/train.py", line 42 in step'; py-spy: '    step (train.py:42)'.
_FAULTHANDLER_FRAME = re.compile(r'File "([^"]+)", line \d+ in (\S+)')
_PYSPY_FRAME = re.compile(r"^\s+(\S+) \(([^:()]+):\d+\)")
_THREAD_HEADER = re.compile(r"^(Current thread|Thread) 0x[0-9a-f]+|^Thread \d+ \(", re.IGNORECASE)
STOPPED_MARK = "process is stopped"
"""A dump text starting with this says the process was found stopped (SIGSTOP) and could not dump."""


def stack_signature(text: str) -> str:
    """What a stack dump shows, with line numbers and addresses dropped: the main thread's frames.

    Two ranks blocked at the same place get the same signature even when their line numbers or
    thread ids differ; a rank stopped by a signal gets ``"<stopped>"``.
    """
    if text.startswith(STOPPED_MARK):
        return "<stopped>"
    threads: list[list[str]] = []
    current: list[str] | None = None
    main_index = 0
    for line in text.splitlines():
        if _THREAD_HEADER.search(line):
            current = []
            threads.append(current)
            if line.lower().startswith("current thread") or "MainThread" in line:
                main_index = len(threads) - 1
            continue
        frame = _FAULTHANDLER_FRAME.search(line)
        if frame:
            name = f"{frame.group(1).rsplit('/', 1)[-1]}:{frame.group(2)}"
        else:
            spy = _PYSPY_FRAME.match(line)
            if not spy:
                continue
            name = f"{spy.group(2).rsplit('/', 1)[-1]}:{spy.group(1)}"
        if current is None:
            current = []
            threads.append(current)
        current.append(name)
    if not threads:
        return "<empty>"
    return "|".join(threads[main_index])


def outliers_by_stacks(dumps: Mapping[int, str], ranks: Sequence[int]) -> list[int]:
    """Ranks whose stacks differ from the majority; ranks with no dump come first (they could not answer)."""
    missing = [r for r in ranks if r not in dumps]
    signatures = {r: stack_signature(t) for r, t in dumps.items() if r in ranks}
    if not signatures:
        return missing
    counts = Counter(signatures.values())
    majority, majority_count = counts.most_common(1)[0]
    if majority_count == 1 and len(signatures) > 2:
        # No majority at all: nothing to go on from stacks.
        return missing
    odd = sorted((r for r, s in signatures.items() if s != majority), key=lambda r: (counts[signatures[r]], r))
    return missing + odd


def outliers_by_phase(phases: Mapping[int, Phase], steps: Mapping[int, int]) -> list[int]:
    """Ranks behind the others: an older step, or outside the collective the others wait in."""
    if not phases:
        return []
    top_step = max(steps.values(), default=0)
    behind = sorted(r for r, s in steps.items() if s < top_step)
    waiting = [r for r, p in phases.items() if p == Phase.COLLECTIVE]
    not_waiting = sorted(r for r, p in phases.items() if p != Phase.COLLECTIVE and r not in behind)
    if waiting and not_waiting and len(not_waiting) < len(phases) / 2:
        return behind + not_waiting
    return behind


def with_layout(
    first: Sequence[int], all_ranks: Sequence[int], groups: Mapping[int, Mapping[str, Sequence[int]]]
) -> list[int]:
    """The full suspect list: ``first`` in order, then ranks sharing a non-data-parallel group with
    them (a tensor- or pipeline-parallel peer fails with its group), then every other rank.

    Data-parallel groups span the whole job, so they say nothing about who is at fault.
    """
    ordered: list[int] = []
    for rank in first:
        if rank not in ordered:
            ordered.append(rank)
    for rank in list(ordered):
        for name, members in groups.get(rank, {}).items():
            if name == "dp" or len(members) >= len(all_ranks):
                continue
            ordered += [m for m in members if m not in ordered]
    ordered += [r for r in sorted(all_ranks) if r not in ordered]
    return ordered


def hosts_of(ranks: Sequence[int], host_by_rank: Mapping[int, str]) -> list[str]:
    """The host of each rank, in the same order."""
    return [host_by_rank.get(r, "") for r in ranks]
