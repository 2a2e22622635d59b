"""A run's status file: rank 0 writes it after each change, the service reads it for GetRun.

A file in the run directory (not an RPC) so ranks launched by hand with ``torchrun`` report the same
way, and a restarted service finds its runs' last state on disk.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
STEPS_FILE = "steps.jsonl"
STOP_FILE = "stop"
TERMINAL_STATES = ("COMPLETED", "STOPPED", "FAILED")


def read_status(run_dir: Path) -> dict[str, Any]:
    """The last status written, or an empty mapping before the first."""
    try:
        return dict(json.loads((run_dir / STATUS_FILE).read_text()))
    except (OSError, ValueError):
        return {}


def request_stop(run_dir: Path, save_checkpoint: bool) -> None:
    """Ask the ranks to end after the current step (they look for this file between steps)."""
    (run_dir / STOP_FILE).write_text(json.dumps({"save_checkpoint": save_checkpoint}))


class StatusFile:
    """The ``Reporter`` of rank 0: every report rewrites ``status.json`` atomically."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / STATUS_FILE
        self.data: dict[str, Any] = {
            "state": "STARTING",
            "step": 0,
            "version": 0,
            "metrics": None,
            "evals": [],
            "failure_reason": "",
            "num_skipped_steps": 0,
            "skipped_steps": [],
            "last_skip_reason": "",
            "last_checkpoint": "",
            "updated_at": time.time(),
        }
        self._write()

    def _write(self) -> None:
        self.data["updated_at"] = time.time()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)

    def state(self, state: str, reason: str = "") -> None:
        self.data["state"] = state
        if reason:
            self.data["failure_reason"] = reason
        self._write()

    def step(self, step: int, metrics: dict[str, float]) -> None:
        self.data["step"] = step
        self.data["metrics"] = metrics
        self._write()
        # Every step's figures, not just the latest: what a job report plots afterwards.
        with (self.path.parent / STEPS_FILE).open("a") as f:
            f.write(json.dumps({"step": step, "at": self.data["updated_at"], **metrics}) + "\n")

    def evaluation(self, step: int, accuracy: float, num_prompts: int) -> None:
        self.data["evals"].append({"step": step, "accuracy": accuracy, "num_prompts": num_prompts, "at": time.time()})
        self._write()

    def skipped(self, step: int, reason: str) -> None:
        self.data["num_skipped_steps"] += 1
        self.data["skipped_steps"].append(step)
        self.data["last_skip_reason"] = f"step {step}: {reason}"
        self.data["step"] = max(self.data["step"], step)
        self._write()

    def published(self, version: int) -> None:
        self.data["version"] = version
        self._write()

    def checkpointed(self, path: str) -> None:
        self.data["last_checkpoint"] = path
        self._write()
