"""Actuators: how a sidecar starts, signals, watches and kills the process it supervises.

One interface, three back ends: local processes (the default, each in its own process group so a
kill takes its children too; optionally pre-started one incarnation ahead, so a restart does not
pay for the interpreter's imports again), Docker containers (through the Docker SDK) and Kubernetes pods
(through the official client). The SDKs are imported only when their actuator is built; without
them, or without an engine to talk to, building one raises ActuatorError saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class ActuatorError(Exception):
    """The actuator could not do what was asked (the message says why)."""


@dataclass(frozen=True)
class LaunchSpec:
    """What to run."""

    argv: Sequence[str]
    """Command and arguments."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment on top of the sidecar's own (local) or the whole environment (containers)."""
    cwd: Path | None = None
    """Working directory (local processes)."""
    name: str = "rank"
    """Container or pod name stem."""
    image: str = ""
    """Image (containers and pods)."""


class Workload(Protocol):
    """One running process, container or pod."""

    pid: int

    def lines(self) -> AsyncIterator[str]:
        """Its output (stdout and stderr), line by line, until it ends."""
        ...

    async def wait(self) -> int:
        """Wait for the end; the exit code, or minus the signal that killed it."""
        ...

    def send_signal(self, sig: int) -> None:
        """Send a signal (SIGUSR1 for a stack dump, SIGSTOP/SIGCONT from the fault injector)."""
        ...

    async def kill(self) -> None:
        """Kill it hard (works on a stopped process) and wait for the end."""
        ...

    def is_stopped(self) -> bool:
        """True when it is frozen (SIGSTOP, a paused container)."""
        ...


class Actuator(Protocol):
    """Starts workloads."""

    name: str

    async def start(self, spec: LaunchSpec) -> Workload:
        """Start ``spec``; ActuatorError when it cannot."""
        ...

    async def prepare(self, spec: LaunchSpec) -> None:
        """Get ready to start ``spec`` soon (a warm standby); a no-op where nothing can be done ahead."""
        ...

    async def close(self) -> None:
        """Release what the actuator holds besides the workloads it returned (pre-started spares)."""
        ...


class LocalProcess:
    """A child process in its own session (process group)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid

    async def lines(self) -> AsyncIterator[str]:
        assert self.proc.stdout is not None
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                return
            yield raw.decode(errors="replace").rstrip("\n")

    async def wait(self) -> int:
        return await self.proc.wait()

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        await self.proc.wait()

    def is_stopped(self) -> bool:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


class LocalProcessActuator:
    """Runs workloads as child processes of the sidecar."""

    name = "local"

    async def start(self, spec: LaunchSpec) -> Workload:
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                env={**os.environ, **spec.env},
                cwd=spec.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                limit=1 << 20,
            )
        except OSError as exc:
            raise ActuatorError(f"local: cannot start {spec.argv[0]!r}: {exc}") from exc
        return LocalProcess(proc)

    async def prepare(self, spec: LaunchSpec) -> None:
        """Nothing can be done ahead."""

    async def close(self) -> None:
        """Nothing is held between starts."""


class PrewarmedLocalActuator:
    """Local processes, each next incarnation started ahead: ``python -m MODULE`` runs under
    ``services.robustness.prewarm``, which imports the module and waits for its environment.

    A little after every start (``spare_delay_s``, so the spare's imports do not compete with the
    workload's own start-up) one spare for the same command is started, so the next restart (the
    cheapest rung of the recovery ladder) hands the spare its environment instead of paying for
    start-up again; ``prepare`` does the same for a warm standby that has not run anything yet.
    Other commands start cold, as ``LocalProcessActuator`` does.
    """

    name = "local-prewarmed"

    def __init__(self, spare_delay_s: float = 0.5) -> None:
        self.spare_delay_s = spare_delay_s
        self._spare: tuple[tuple[str, ...], asyncio.subprocess.Process] | None = None
        self._pending: asyncio.Task[None] | None = None

    @staticmethod
    def _key(spec: LaunchSpec) -> tuple[str, ...] | None:
        argv = list(spec.argv)
        return (*argv, str(spec.cwd)) if len(argv) >= 3 and argv[1] == "-m" else None

    async def prepare(self, spec: LaunchSpec) -> None:
        """Start a spare for ``spec`` (after ``spare_delay_s``) unless one is there or coming."""
        key = self._key(spec)
        if key is None or (self._spare is not None and self._spare[0] == key) or self._pending is not None:
            return
        self._pending = asyncio.create_task(self._spare_later(key, spec), name="prewarm-spare")

    async def start(self, spec: LaunchSpec) -> Workload:
        key = self._key(spec)
        if key is None:
            return await LocalProcessActuator().start(spec)
        await self._cancel_pending()
        proc = None
        if self._spare is not None:
            spare_key, spare = self._spare
            self._spare = None
            if spare_key == key and spare.returncode is None:
                proc = spare
            else:
                await _kill(spare)
        if proc is None:
            proc = await self._spawn(spec)
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(dict(spec.env)).encode() + b"\n")
            await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError) as exc:
            await _kill(proc)
            raise ActuatorError(f"local-prewarmed: {spec.argv[2]!r} died before it was started: {exc}") from exc
        await self.prepare(spec)
        return LocalProcess(proc)

    async def _spare_later(self, key: tuple[str, ...], spec: LaunchSpec) -> None:
        try:
            await asyncio.sleep(self.spare_delay_s)
            self._spare = (key, await self._spawn(spec))
        except ActuatorError as exc:
            logger.warning("no spare: %s (the next start will be cold)", exc)
        finally:
            if self._pending is asyncio.current_task():
                self._pending = None

    async def _cancel_pending(self) -> None:
        task, self._pending = self._pending, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _spawn(self, spec: LaunchSpec) -> asyncio.subprocess.Process:
        argv = list(spec.argv)
        try:
            return await asyncio.create_subprocess_exec(
                argv[0],
                "-m",
                "services.robustness.prewarm",
                *argv[2:],
                env={**os.environ, **spec.env},
                cwd=spec.cwd,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                limit=1 << 20,
            )
        except OSError as exc:
            raise ActuatorError(f"local-prewarmed: cannot start {argv[0]!r}: {exc}") from exc

    async def close(self) -> None:
        """Kill the spare (and stop one from being started)."""
        await self._cancel_pending()
        if self._spare is not None:
            _, spare = self._spare
            self._spare = None
            await _kill(spare)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


class DockerContainer:
    """A container run through the Docker SDK (its blocking calls go to a thread)."""

    def __init__(self, container: Any) -> None:
        self.container = container
        self.pid = int(container.attrs.get("State", {}).get("Pid", 0) or 0)

    async def lines(self) -> AsyncIterator[str]:
        stream = await asyncio.to_thread(self.container.logs, stream=True, follow=True)
        while True:
            chunk = await asyncio.to_thread(next, stream, None)
            if chunk is None:
                return
            for line in chunk.decode(errors="replace").splitlines():
                yield line

    async def wait(self) -> int:
        result = await asyncio.to_thread(self.container.wait)
        code = int(result.get("StatusCode", -1))
        # Docker reports death by signal N as 128 + N.
        return -(code - 128) if code > 128 else code

    def send_signal(self, sig: int) -> None:
        if sig == signal.SIGSTOP:
            self.container.pause()
        elif sig == signal.SIGCONT:
            self.container.unpause()
        else:
            self.container.kill(signal=int(sig))

    async def kill(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.container.kill)
        await self.wait()

    def is_stopped(self) -> bool:
        self.container.reload()
        return bool(self.container.status == "paused")


class DockerActuator:
    """Runs workloads as Docker containers (``pip install docker`` and a reachable engine)."""

    name = "docker"

    def __init__(self) -> None:
        try:
            import docker  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ActuatorError("docker: the Docker SDK is not installed (pip install docker)") from exc
        try:
            self.client = docker.from_env()
            self.client.ping()
        except Exception as exc:
            raise ActuatorError(f"docker: engine not reachable: {exc}") from exc

    async def start(self, spec: LaunchSpec) -> Workload:
        if not spec.image:
            raise ActuatorError("docker: LaunchSpec.image is empty")
        try:
            container = await asyncio.to_thread(
                self.client.containers.run,
                spec.image,
                list(spec.argv),
                environment=dict(spec.env),
                detach=True,
                name=f"{spec.name}-{os.getpid()}-{id(spec) & 0xFFFF:x}",
                network_mode="host",
            )
            await asyncio.to_thread(container.reload)
        except Exception as exc:
            raise ActuatorError(f"docker: cannot run {spec.image}: {exc}") from exc
        return DockerContainer(container)

    async def prepare(self, spec: LaunchSpec) -> None:
        """Nothing can be done ahead."""

    async def close(self) -> None:
        """Nothing is held between starts."""


class KubernetesPod:
    """A pod created through the Kubernetes API (its blocking calls go to a thread)."""

    def __init__(self, api: Any, namespace: str, name: str) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.pid = 0

    async def lines(self) -> AsyncIterator[str]:
        stream = await asyncio.to_thread(
            self.api.read_namespaced_pod_log, self.name, self.namespace, follow=True, _preload_content=False
        )
        for raw in await asyncio.to_thread(lambda: list(stream.stream())):
            for line in raw.decode(errors="replace").splitlines():
                yield line

    async def wait(self) -> int:
        while True:
            pod = await asyncio.to_thread(self.api.read_namespaced_pod, self.name, self.namespace)
            if pod.status.phase in ("Succeeded", "Failed"):
                state = pod.status.container_statuses[0].state.terminated
                return int(state.exit_code) if state else -1
            await asyncio.sleep(1.0)

    def send_signal(self, sig: int) -> None:
        raise ActuatorError("kubernetes: signals other than a kill are not supported on pods")

    async def kill(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.api.delete_namespaced_pod, self.name, self.namespace, grace_period_seconds=0)

    def is_stopped(self) -> bool:
        return False


class KubernetesActuator:
    """Runs workloads as pods (``pip install kubernetes`` and a kube config or in-cluster credentials)."""

    name = "kubernetes"

    def __init__(self, namespace: str = "default") -> None:
        try:
            from kubernetes import client, config  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ActuatorError("kubernetes: the client is not installed (pip install kubernetes)") from exc
        try:
            try:
                config.load_incluster_config()
            except Exception:
                config.load_kube_config()
        except Exception as exc:
            raise ActuatorError(f"kubernetes: no cluster credentials: {exc}") from exc
        self.client = client
        self.api = client.CoreV1Api()
        self.namespace = namespace

    async def start(self, spec: LaunchSpec) -> Workload:
        if not spec.image:
            raise ActuatorError("kubernetes: LaunchSpec.image is empty")
        name = f"{spec.name}-{os.getpid()}-{id(spec) & 0xFFFF:x}"
        c = self.client
        pod = c.V1Pod(
            metadata=c.V1ObjectMeta(name=name),
            spec=c.V1PodSpec(
                restart_policy="Never",
                containers=[
                    c.V1Container(
                        name="rank",
                        image=spec.image,
                        command=list(spec.argv),
                        env=[c.V1EnvVar(name=k, value=v) for k, v in spec.env.items()],
                    )
                ],
            ),
        )
        try:
            await asyncio.to_thread(self.api.create_namespaced_pod, self.namespace, pod)
        except Exception as exc:
            raise ActuatorError(f"kubernetes: cannot create pod {name}: {exc}") from exc
        return KubernetesPod(self.api, self.namespace, name)

    async def prepare(self, spec: LaunchSpec) -> None:
        """Nothing can be done ahead."""

    async def close(self) -> None:
        """Nothing is held between starts."""


def make_actuator(kind: str) -> Actuator:
    """The actuator named ``kind`` ("local", "local-prewarmed", "docker", "kubernetes"); ActuatorError when
    unavailable."""
    if kind == "local":
        return LocalProcessActuator()
    if kind == "local-prewarmed":
        return PrewarmedLocalActuator()
    if kind == "docker":
        return DockerActuator()
    if kind == "kubernetes":
        return KubernetesActuator()
    raise ActuatorError(f"unknown actuator {kind!r}: expected local, local-prewarmed, docker or kubernetes")
