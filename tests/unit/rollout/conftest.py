"""Fixtures of the rollout unit tests: a tiny Llama, its decode layout and a running engine."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch

from services.rollout.decoder import Arch, Weights, prepare_weights, read_arch
from services.rollout.engine import Engine, Event, Limits
from services.rollout.model import CharTokenizer, build_model

torch.set_num_threads(1)

SMALL = json.dumps(
    {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "max_position_embeddings": 256}
)


@dataclass
class Collected:
    """Events an engine delivered, for tests that drive it without asyncio."""

    events: list[Event] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __call__(self, events: list[Event]) -> None:
        with self.changed:
            self.events.extend(events)
            self.changed.notify_all()

    def finished(self) -> dict[int, Event]:
        with self.changed:
            return {e.seq_id: e for e in self.events if e.kind == "finished"}

    def wait_finished(self, ids: list[int], timeout_s: float = 60.0) -> list[Event]:
        with self.changed:
            ok = self.changed.wait_for(lambda: all(i in self._done() for i in ids), timeout=timeout_s)
            assert ok, f"sequences {ids} did not finish"
            done = self._done()
            return [done[i] for i in ids]

    def _done(self) -> dict[int, Event]:
        return {e.seq_id: e for e in self.events if e.kind == "finished"}


@pytest.fixture(scope="session")
def model() -> torch.nn.Module:
    """A 2-layer, hidden-64 Llama with the char tokenizer's vocabulary."""
    return build_model(SMALL, seed=3)


@pytest.fixture(scope="session")
def arch(model: torch.nn.Module) -> Arch:
    return read_arch(model)


@pytest.fixture(scope="session")
def weights(model: torch.nn.Module, arch: Arch) -> Weights:
    return prepare_weights(arch, model.state_dict())


LIMITS = Limits(max_context_tokens=256, max_new_tokens=128, max_samples_per_prompt=16)


@pytest.fixture
def collected() -> Collected:
    return Collected()


@pytest.fixture
def engine(arch: Arch, weights: Weights, collected: Collected) -> Iterator[Engine]:
    """An engine with 8 slots whose events land in ``collected``."""
    eng = Engine(arch, weights, CharTokenizer(), max_batch_size=8, limits=LIMITS, on_events=collected)
    yield eng
    eng.close()
