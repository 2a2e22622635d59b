"""Job runners the job tests hand to ``JobManager``: importable by name, since jobs run in a child process."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def scripted(
    spec: dict[str, Any], work: Path, on_stage: Callable[[str, float], None]
) -> tuple[list[str], dict[str, Any]]:
    """Does what ``spec["do"]`` says: "ok" writes a file, "crash" dies of SIGSEGV, "hang" never ends."""
    on_stage("mask", 0.0)
    on_stage("geometry", 0.2)
    if spec["do"] == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if spec["do"] == "hang":
        time.sleep(3600)
    if spec["do"] == "raise":
        raise RuntimeError("a bug in the pipeline")
    (work / "out.txt").write_text("made in a child process\n")
    return ["out.txt"], {"notes": [f"pid {os.getpid()}"]}
