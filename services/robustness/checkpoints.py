"""Checkpoints validated by checksum: saved with a SHA-256 beside them, checked at load, with fallback.

A corrupt checkpoint that loads (or crashes the loader) can loop a job through dozens of restarts;
here a file whose bytes do not match the checksum written at save is rejected and the next older
one is tried, and every rejection is returned so the caller can report it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class Rejected:
    """A checkpoint that failed validation."""

    step: int
    path: Path
    expected_sha256: str
    actual_sha256: str


def sha256_of(path: Path) -> str:
    """SHA-256 of a file's bytes, lowercase hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(directory: Path, step: int, state: Any) -> tuple[Path, str]:
    """Write ``state`` as the checkpoint of ``step`` (atomically) and its checksum; (path, sha256)."""
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    path = directory / f"ckpt-{step:08d}.pt"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    meta = path.with_suffix(".json")
    meta.with_suffix(".jtmp").write_text(json.dumps({"step": step, "sha256": sha}))
    os.replace(meta.with_suffix(".jtmp"), meta)
    return path, sha


def steps(directory: Path) -> list[int]:
    """Steps of the checkpoints with a checksum record, oldest first."""
    found = []
    for meta in directory.glob("ckpt-*.json"):
        try:
            found.append(int(json.loads(meta.read_text())["step"]))
        except (OSError, ValueError, KeyError):
            continue
    return sorted(found)


def load_good(directory: Path, at_or_before: int) -> tuple[int, Any, list[Rejected]]:
    """The newest checkpoint with step <= ``at_or_before`` whose checksum matches: (step, state,
    rejected ones); (-1, None, rejected) when none is good."""
    rejected: list[Rejected] = []
    for step in reversed([s for s in steps(directory) if s <= at_or_before]):
        path = directory / f"ckpt-{step:08d}.pt"
        expected = json.loads(path.with_suffix(".json").read_text())["sha256"]
        try:
            data = path.read_bytes()
        except OSError:
            rejected.append(Rejected(step, path, expected, ""))
            continue
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            rejected.append(Rejected(step, path, expected, actual))
            continue
        return step, torch.load(io.BytesIO(data), weights_only=True), rejected
    return -1, None, rejected
