"""What every benchmark shares: the machine description, the standard JSON report, a progress line.

Every benchmark prints one JSON object to stdout (and writes it to ``--json PATH``)::

    {"benchmark": ..., "machine": {...}, "config": {...}, "figures": {...}, "ratios": {...},
     "simulated": [...]}

``figures`` are raw measurements, ``ratios`` the headline numbers (numbers only: booleans become 1/0),
``simulated`` the keys that come from a simulator rather than a measurement. Progress and logs go to
stderr so that stdout stays one parseable object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _version(module: str) -> str | None:
    try:
        imported = __import__(module)
    except Exception:  # a missing or broken optional package is simply not reported
        return None
    return str(getattr(imported, "__version__", "unknown"))


def describe_machine() -> dict[str, Any]:
    """CPU count (total and usable by this process), CPU model, memory, OS and library versions."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "grpcio": _version("grpc"),
    }


def standard_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the two flags every benchmark takes: ``--quick`` and ``--json``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="finish within a minute on 2 cores")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON report here")
    return parser


def _number(key: str, value: Any) -> float | int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return value
    raise ValueError(f"ratio {key!r} must be a finite number, got {value!r}")


def emit(
    benchmark: str,
    *,
    config: Mapping[str, Any],
    figures: Mapping[str, Any],
    ratios: Mapping[str, Any],
    simulated: Iterable[str] = (),
    json_path: Path | None = None,
    machine: Mapping[str, Any] | None = None,
    stream: TextIO = sys.stdout,
) -> dict[str, Any]:
    """Build the standard report, print it to ``stream`` and write it to ``json_path``; return it."""
    simulated_keys = list(simulated)
    unknown = [k for k in simulated_keys if k not in figures and k not in ratios]
    if unknown:
        raise ValueError(f"simulated keys {unknown} are neither figures nor ratios")
    report = {
        "benchmark": benchmark,
        "machine": dict(machine) if machine is not None else describe_machine(),
        "config": dict(config),
        "figures": dict(figures),
        "ratios": {key: _number(key, value) for key, value in ratios.items()},
        "simulated": simulated_keys,
    }
    text = json.dumps(report, indent=2, sort_keys=False)
    stream.write(text + "\n")
    stream.flush()
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text + "\n")
    return report


class Progress:
    """A progress line on stderr for long loops: done/total, rate and ETA, at most once per interval.

    Usage::

        progress = Progress("reads", total=64)
        for _ in range(64):
            ...
            progress.advance()
        progress.finish()
    """

    def __init__(self, label: str, total: int, *, interval_s: float = 1.0, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._interval_s = interval_s
        self._stream = stream
        self._started = time.monotonic()
        self._last = -math.inf

    def line(self) -> str:
        """The current progress line."""
        elapsed = time.monotonic() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        percent = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        eta_text = f"{eta:.0f} s" if math.isfinite(eta) else "?"
        return f"{self.label}: {self.done}/{self.total} ({percent:.0f}%) {rate:.2f}/s ETA {eta_text}"

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more done; print the line if the interval has passed."""
        self.done += n
        now = time.monotonic()
        if now - self._last >= self._interval_s:
            self._last = now
            self._stream.write(self.line() + "\n")
            self._stream.flush()

    def finish(self) -> None:
        """Print the final line."""
        elapsed = time.monotonic() - self._started
        self._stream.write(f"{self.label}: {self.done}/{self.total} done in {elapsed:.1f} s\n")
        self._stream.flush()
