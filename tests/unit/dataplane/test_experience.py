"""The experience buffer and differential checkpoints, in process."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument, ResourceExhausted
from services.dataplane.checkpoints import apply, diff
from services.dataplane.experience import ExperienceBuffer, PromptDraw, RlSample, check_sample


def sample(group: str, index: int, reward: float, version: int = 1, n: int = 3) -> RlSample:
    return RlSample("p", group, index, [1, 2], list(range(n)), [-0.1] * n, [(0, n, version)], "", reward, True, 1)


def draw(group: str) -> PromptDraw:
    return PromptDraw(group, "src/1", "src", "Compute 1+1.", [1], "arithmetic", "2")


def test_groups_settle_filter_and_batch_oldest_first() -> None:
    buffer = ExperienceBuffer(group_size=2, max_staleness=1, dynamic_sampling=True, max_buffered=8)
    buffer.hand_out([draw(f"g:{i}") for i in range(4)])
    assert buffer.room_for_groups() == 0
    with pytest.raises(ResourceExhausted):
        buffer.check_room()
    for i in range(2):
        buffer.put(sample("g:0", i, 1.0))  # uniform -> dropped
    _, dropped = buffer.put(sample("g:1", 0, 0.0))
    assert not dropped
    _, dropped = buffer.put(sample("g:1", 0, 1.0))
    assert dropped == {"duplicate": 1}
    buffer.put(sample("g:1", 1, 1.0))
    buffer.put(sample("g:2", 0, 0.0))
    buffer.put(sample("g:2", 1, 1.0))
    assert buffer.drops["uniform_group"] == 2 and buffer.room_for_groups() == 1
    assert buffer.take_batch(6, policy_version=1) is None
    batch = buffer.take_batch(4, policy_version=1)
    assert batch is not None and [(s.group_id, s.sample_index) for s in batch] == [
        ("g:1", 0),
        ("g:1", 1),
        ("g:2", 0),
        ("g:2", 1),
    ]
    assert batch[0].metadata["group_reward_mean"] == "0.5"


def test_staleness_and_unknown_versions() -> None:
    buffer = ExperienceBuffer(group_size=2, max_staleness=1, dynamic_sampling=False, max_buffered=8)
    buffer.hand_out([draw("g:0"), draw("g:1")])
    buffer.policy_version = 3
    assert buffer.put(sample("g:0", 0, 1.0, version=5))[1] == {"unknown_version": 1}
    assert buffer.put(sample("g:0", 1, 1.0, version=1))[1] == {"stale": 1}
    buffer.put(sample("g:1", 0, 1.0, version=2))
    buffer.put(sample("g:1", 1, 0.0, version=3))
    # Later the trainer moves to version 4: the version-2 sample is now too old and is dropped.
    batch = buffer.take_batch(1, policy_version=4)
    assert batch is not None and [s.sample_index for s in batch] == [1]
    assert buffer.drops["stale"] == 2


def test_malformed_samples_name_themselves() -> None:
    bad = sample("g", 0, 1.0)
    bad.version_spans = [(0, 2, 1)]
    with pytest.raises(InvalidArgument, match=r"samples\[4\].*version_spans cover 2 tokens of 3"):
        check_sample(bad, 2, 4)
    with pytest.raises(InvalidArgument, match="sample_index must be < group_size"):
        check_sample(sample("g", 5, 1.0), 2, 0)


def test_buffer_state_round_trips_and_deltas_hold_only_changes() -> None:
    buffer = ExperienceBuffer(group_size=2, max_staleness=1, dynamic_sampling=False, max_buffered=8)
    buffer.hand_out([draw("g:0"), draw("g:1")])
    buffer.put(sample("g:0", 0, 1.0))
    base = buffer.to_entries()
    buffer.put(sample("g:0", 1, 0.0))
    current = buffer.to_entries()
    delta = diff(base, current)
    assert set(delta["set"]) == {"group:g:0"} and apply(base, delta) == current
    restored = ExperienceBuffer(group_size=2, max_staleness=1, dynamic_sampling=False, max_buffered=8)
    restored.load_entries(current)
    assert restored.to_entries() == current
