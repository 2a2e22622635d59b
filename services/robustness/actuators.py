"""Actuators: how a sidecar starts, signals, watches and kills the process it supervises.

One interface, three back ends: local processes (the default, each in its own process group so a
kill takes its children too), Docker containers (through the Docker SDK) and Kubernetes pods
(through the official client). The SDKs are imported only when their actuator is built; without
them, or without an engine to talk to, building one raises ActuatorError saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


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


def make_actuator(kind: str) -> Actuator:
    """The actuator named ``kind`` ("local", "docker", "kubernetes"); ActuatorError when unavailable."""
    if kind == "local":
        return LocalProcessActuator()
    if kind == "docker":
        return DockerActuator()
    if kind == "kubernetes":
        return KubernetesActuator()
    raise ActuatorError(f"unknown actuator {kind!r}: expected local, docker or kubernetes")
