"""A pre-started interpreter: a Python module's imports done ahead, the program run when its environment arrives.

``python -m services.robustness.prewarm MODULE ARG ...`` imports ``MODULE`` (for a training job the
imports - torch, gRPC - are most of its start-up time), then blocks on stdin for one line: a JSON
object of environment variables. It sets them and runs ``MODULE`` as ``__main__`` with ``ARG ...``
in this same process, so the pid the actuator watches is the program's own. End of input before
that line means the spare is not needed: it exits 0 without running anything.

The module's top-level code runs twice (once imported, once as ``__main__``); modules whose top
level only defines things, as training entry points should, behave as if started afresh.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys


def main(argv: list[str] | None = None) -> int:
    """Import, wait for the environment, run; the program's exit code (0 when it never ran)."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m services.robustness.prewarm MODULE [ARG ...]", file=sys.stderr)
        return 2
    module, rest = args[0], args[1:]
    importlib.import_module(module)
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    env = json.loads(line)
    if not isinstance(env, dict):
        print(f"prewarm: expected a JSON object of environment variables, got {type(env).__name__}", file=sys.stderr)
        return 2
    os.environ.update({str(k): str(v) for k, v in env.items()})
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
