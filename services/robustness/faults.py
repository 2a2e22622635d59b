"""Fault injector: a library the training loop calls, and a command that acts from outside.

From outside (``python -m services.robustness.faults KIND ...``):

- ``crash --pid P``: SIGKILL; ``hang --pid P``: SIGSTOP (``resume --pid P``: SIGCONT);
- ``corrupt-checkpoint PATH``: flip bytes in the middle of a checkpoint file;
- ``plan --file F --kind K --rank R [--step S] [--seconds X]``: arm an in-process fault that the
  job's ``FaultPlan`` fires: ``nan`` (the loss), ``block`` (the main thread sleeps; heartbeats go
  on), ``gil`` (a C call holds the GIL: the whole process freezes), ``slow`` (extra compute time),
  ``crash`` (exit 1 after an error line), ``error-line`` (a CUDA-style error line in the log, then
  exit 1), ``checkpoint-delay`` and ``data-stall`` (harmless disturbances: long but finite).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

IN_PROCESS_KINDS = ("nan", "block", "gil", "slow", "crash", "error-line", "checkpoint-delay", "data-stall")
CUDA_ERROR_LINE = "RuntimeError: CUDA error: an illegal memory access was encountered (injected)"


@dataclass
class ArmedFault:
    """One fault for the job to fire at a step (-1: the next step it reaches)."""

    kind: str
    rank: int
    step: int = -1
    seconds: float = 0.0


def arm(path: Path, fault: ArmedFault) -> None:
    """Write ``fault`` where the job's FaultPlan looks (atomically: rename)."""
    if fault.kind not in IN_PROCESS_KINDS:
        raise ValueError(f"kind={fault.kind!r}: expected one of {IN_PROCESS_KINDS}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(fault)))
    tmp.replace(path)


class FaultPlan:
    """The job's side: polls the armed-fault file and fires a fault when its rank and step come."""

    def __init__(self, path: Path | None, rank: int) -> None:
        self.path = path
        self.rank = rank
        self._seen_mtime_ns = 0
        self._armed: ArmedFault | None = None

    def due(self, step: int) -> ArmedFault | None:
        """The fault to fire at ``step`` on this rank, once; None otherwise. Firing disarms the file: a
        process restarted from a checkpoint before ``step`` does not fire it again."""
        if self.path is not None:
            try:
                mtime = self.path.stat().st_mtime_ns
            except OSError:
                mtime = 0
            if mtime and mtime != self._seen_mtime_ns:
                self._seen_mtime_ns = mtime
                try:
                    fault = ArmedFault(**json.loads(self.path.read_text()))
                except (OSError, ValueError, TypeError):
                    fault = None
                self._armed = fault if fault is not None and fault.rank == self.rank else None
        if self._armed is not None and self._armed.step in (-1, step):
            fault, self._armed = self._armed, None
            if self.path is not None:
                with contextlib.suppress(OSError):
                    if self.path.stat().st_mtime_ns == self._seen_mtime_ns:
                        self.path.unlink()
            return fault
        return None


def fire_blocking(fault: ArmedFault) -> None:
    """Carry out the faults that act on the process itself (the job handles nan/slow/delays)."""
    if fault.kind == "block":
        time.sleep(fault.seconds or 3600.0)
    elif fault.kind == "gil":
        # One C call that never releases the GIL: every thread of the process stops.
        deadline = fault.seconds or 3600.0
        sum(range(int(deadline * 2e7)))
    elif fault.kind == "crash":
        print("Traceback (most recent call last):\nRuntimeError: injected crash", file=sys.stderr, flush=True)
        os._exit(1)
    elif fault.kind == "error-line":
        print(CUDA_ERROR_LINE, file=sys.stderr, flush=True)
        time.sleep(0.2)
        os._exit(1)


def corrupt_file(path: Path, num_bytes: int = 64) -> None:
    """Flip ``num_bytes`` bytes in the middle of ``path``."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(len(data), middle + num_bytes)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def main(argv: list[str] | None = None) -> int:
    """Command line of the fault injector."""
    parser = argparse.ArgumentParser(prog="python -m services.robustness.faults", description="Inject a fault.")
    sub = parser.add_subparsers(dest="kind", required=True)
    for name in ("crash", "hang", "resume"):
        p = sub.add_parser(name)
        p.add_argument("--pid", type=int, required=True)
    p = sub.add_parser("corrupt-checkpoint")
    p.add_argument("path", type=Path)
    p = sub.add_parser("plan")
    p.add_argument("--file", type=Path, required=True)
    p.add_argument("--kind", choices=IN_PROCESS_KINDS, required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--step", type=int, default=-1)
    p.add_argument("--seconds", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        if args.kind in ("crash", "hang", "resume"):
            sig = {"crash": signal.SIGKILL, "hang": signal.SIGSTOP, "resume": signal.SIGCONT}[args.kind]
            os.kill(args.pid, sig)
        elif args.kind == "corrupt-checkpoint":
            corrupt_file(args.path)
        else:
            arm(args.file, ArmedFault(args.kind, args.rank, args.step, args.seconds))
    except (OSError, ValueError) as exc:
        print(f"faults: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
