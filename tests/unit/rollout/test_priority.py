"""The rollout server's niceness: every thread takes it, threads started later too, and a bad value is refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from services.rollout.config import RolloutConfig

SCRIPT = textwrap.dedent(
    """
    import os, threading
    from services.rollout.server import lower_priority

    def nice():
        return os.getpriority(os.PRIO_PROCESS, 0)  # on Linux: the calling thread's

    seen = {}
    ready, done = threading.Event(), threading.Event()

    def before():
        ready.set()
        done.wait()
        seen["before"] = nice()

    early = threading.Thread(target=before)
    early.start()
    ready.wait()
    lower_priority(7)
    late = threading.Thread(target=lambda: seen.setdefault("after", nice()))
    late.start()
    late.join()
    done.set()
    early.join()
    print(nice(), seen["before"], seen["after"])
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="niceness is per thread on Linux")
def test_every_thread_runs_at_the_configured_niceness() -> None:
    # In a child process: lowering the priority cannot be undone without privileges.
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120)
    main, started_before, started_after = (int(x) for x in out.stdout.split())
    assert (main, started_before, started_after) == (7, 7, 7)


def test_a_niceness_outside_0_to_19_is_refused() -> None:
    with pytest.raises(ValueError, match="nice"):
        RolloutConfig(redis_url="redis://127.0.0.1:1/0", nice=20)
    assert RolloutConfig(redis_url="redis://127.0.0.1:1/0").nice == 0
