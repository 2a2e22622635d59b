"""Each job's pipeline in a child process of its own, under a time limit.

MuJoCo, xatlas, manifold3d and CoACD are C++ that cannot be interrupted and may crash; in a child,
a crash or a runaway job costs that job, not the service. The child is started fresh (``spawn``:
forking a process that runs gRPC threads is unsafe), runs the picklable ``Runner`` and reports back
over a pipe: ``("stage", name, progress)`` as each stage starts, then ``("done", files, results)``
or ``("failed", reason, traceback)``. The parent kills it at the time limit. Either way the job
fails with a reason that says what happened and in which stage.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import traceback
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from services.common.errors import SeedstackError

logger = logging.getLogger(__name__)

KILL_GRACE_S = 2.0
"""How long a child told to stop (SIGTERM) has before it is killed."""


class JobFailed(Exception):
    """The job failed; ``reason`` says why in words for its record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Runner(Protocol):
    """Runs a job's spec in a work folder, calling back (stage, progress); returns (file names, results).

    It must pickle (a module-level function or a dataclass of plain fields): it runs in a child.
    """

    def __call__(
        self, spec: dict[str, Any], work: Path, on_stage: Callable[[str, float], None]
    ) -> tuple[list[str], dict[str, Any]]: ...


def _child_main(runner: Runner, spec: dict[str, Any], work: str, conn: Connection) -> None:
    def on_stage(stage: str, progress: float) -> None:
        conn.send(("stage", stage, progress))

    try:
        names, results = runner(spec, Path(work), on_stage)
        conn.send(("done", names, results))
    except SeedstackError as exc:
        conn.send(("failed", exc.message, ""))
    except Exception as exc:
        conn.send(("failed", f"internal error: {type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        conn.close()


def _where(stage: str) -> str:
    return f"in stage {stage}" if stage else "before its first stage"


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


async def _stop(proc: multiprocessing.process.BaseProcess) -> None:
    """Terminate ``proc``, kill it if it lingers, and reap it."""
    if proc.is_alive():
        proc.terminate()
        await asyncio.to_thread(proc.join, KILL_GRACE_S)
    if proc.is_alive():
        proc.kill()
    await asyncio.to_thread(proc.join)


async def run_in_child(
    runner: Runner,
    spec: dict[str, Any],
    work: Path,
    *,
    time_limit_s: float,
    on_stage: Callable[[str, float], Awaitable[None]],
) -> tuple[list[str], dict[str, Any]]:
    """Run ``runner`` in a child process; its (file names, results), or JobFailed with the reason.

    ``on_stage`` is awaited in this process as each stage starts. Cancelling this coroutine kills the child.
    """
    loop = asyncio.get_running_loop()
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(runner, spec, str(work), send), name="gen3d-job", daemon=True)
    proc.start()
    send.close()  # the child holds the only writer: its exit closes the pipe
    readable = asyncio.Event()
    loop.add_reader(recv.fileno(), readable.set)
    deadline = loop.time() + time_limit_s
    stage = ""
    outcome: tuple[Any, ...] | None = None
    try:
        while outcome is None:
            try:
                await asyncio.wait_for(readable.wait(), timeout=max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise JobFailed(f"passed its time limit of {time_limit_s:g} s ({_where(stage)})") from None
            readable.clear()
            try:
                while outcome is None and recv.poll():
                    message = recv.recv()
                    if message[0] == "stage":
                        stage = message[1]
                        await on_stage(message[1], message[2])
                    else:
                        outcome = message
            except (EOFError, OSError):
                await asyncio.to_thread(proc.join)
                raise JobFailed(f"the worker process died ({_exit_reason(proc.exitcode)}) {_where(stage)}") from None
    finally:
        loop.remove_reader(recv.fileno())
        recv.close()
        await _stop(proc)
    if outcome[0] == "done":
        return outcome[1], outcome[2]
    if outcome[2]:
        logger.error("job failed in its worker process:\n%s", outcome[2])
    raise JobFailed(outcome[1])
