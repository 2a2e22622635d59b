"""Deployment files checked against the code: compose, Kubernetes manifests, the Dockerfile, the probe.

No Docker engine runs here, so the files are read statically: every service of the catalog has its
container, Deployment and Service; ports are the config classes' defaults; every environment variable
set is one the service reads (a renamed config field fails here); required ones are set; probes exist.
The health probe itself runs for real against a weight hub server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import re
import sys
from pathlib import Path
from subprocess import PIPE, STDOUT
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.catalog import SERVICES, ServiceInfo
from services.common.config import env_name
from tests.support import assert_eventually, free_port

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
PROBE_MODULE = "services.common.healthprobe"
# Read by every process besides its config class: logging and telemetry (services/common/logs.py,
# services/common/telemetry.py); OTEL_* are the OpenTelemetry SDK's standard variables.
PROCESS_VARIABLES = {"SEEDSTACK_LOG_LEVEL", "SEEDSTACK_TRACE_FILE"}
MANIFEST_VARIABLES = {"POD_NAME"}
"""Set in a manifest only to be expanded in another variable's value (``$(POD_NAME)``)."""

SERVICE_IDS = [s.name for s in SERVICES]


def default_port(info: ServiceInfo) -> int:
    """The ``port`` default of the service's config class."""
    (field,) = [f for f in dataclasses.fields(info.load_config_class()) if f.name == "port"]
    assert isinstance(field.default, int), f"{info.config_class}.port has no default"
    return field.default


def read_variables(info: ServiceInfo) -> set[str]:
    """Every variable the service's config class reads."""
    cls = info.load_config_class()
    return {env_name(cls, info.env_prefix, f.name) for f in dataclasses.fields(cls)}


def required_variables(info: ServiceInfo) -> set[str]:
    """Variables of fields without a default: the service does not start without them."""
    cls = info.load_config_class()
    return {
        env_name(cls, info.env_prefix, f.name)
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }


def assert_variables_known(info: ServiceInfo, names: set[str], where: str) -> None:
    known = read_variables(info) | PROCESS_VARIABLES | MANIFEST_VARIABLES
    unknown = {n for n in names if n not in known and not n.startswith("OTEL_")}
    assert not unknown, f"{where} sets {sorted(unknown)}, which {info.config_class} does not read"
    missing = required_variables(info) - names
    assert not missing, f"{where} lacks {sorted(missing)}, required by {info.config_class}"


def module_of(command: list[str]) -> str:
    """The module a ``python -m MODULE ...`` command runs."""
    assert command[:2] == ["python", "-m"], f"expected `python -m MODULE`, got {command}"
    return command[2]


def assert_module_exists(module: str) -> None:
    assert importlib.util.find_spec(module) is not None, f"no module {module}"


# --- docker compose ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_has_redis_with_a_healthcheck(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:")
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_compose_runs_exactly_the_catalog(compose: dict[str, Any]) -> None:
    extras = {"redis", "otel-collector", "job", "rollout-2"}
    assert set(compose["services"]) - extras == set(SERVICE_IDS)


@pytest.mark.parametrize("info", SERVICES, ids=SERVICE_IDS)
def test_compose_service_matches_its_config(compose: dict[str, Any], info: ServiceInfo) -> None:
    service = compose["services"][info.name]
    port = default_port(info)
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert service["command"] == ["python", "-m", f"services.{info.name}"]
    assert_module_exists(module_of(service["command"]))

    env = compose_environment(service)
    assert_variables_known(info, set(env), f"compose service {info.name}")
    assert env[f"{info.env_prefix}PORT"] == str(port)
    assert env[f"{info.env_prefix}ADVERTISE_HOST"] == info.name, "peers resolve it by its compose name"
    redis_host = re.fullmatch(r"redis://([^:/]+):\d+/\d+", env["REDIS_URL"])
    assert redis_host and redis_host.group(1) in compose["services"]

    published = [str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])]
    assert published == [str(port)]

    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and module_of(test[1:]) == PROBE_MODULE
    assert test[4] == f"127.0.0.1:{port}"

    depends = service["depends_on"]
    for dependency in ("redis", *info.depends_on):
        assert depends[dependency]["condition"] == "service_healthy", f"{info.name} waits for {dependency}"


def test_compose_second_rollout_server_is_the_first_under_its_own_name(compose: dict[str, Any]) -> None:
    first, second = compose["services"]["rollout"], compose["services"]["rollout-2"]
    assert second["command"] == first["command"] and second["healthcheck"] == first["healthcheck"]
    assert second["depends_on"] == first["depends_on"] and "ports" not in second
    env_first, env_second = compose_environment(first), compose_environment(second)
    differ = {k for k in env_first.keys() | env_second.keys() if env_first.get(k) != env_second.get(k)}
    assert differ == {"SEEDSTACK_ROLLOUT_ADVERTISE_HOST", "SEEDSTACK_TRACE_FILE"}
    assert env_second["SEEDSTACK_ROLLOUT_ADVERTISE_HOST"] == "rollout-2"


# --- the main job: the same spec as `make run`, on the stack as deployed -------------------------

DEFAULT_SPEC = ROOT / "deploy" / "jobs" / "default.yaml"
# Read by the job (`seedctl run --stack existing`): where the stack is, the shared token, the stack dir.
JOB_VARIABLES = {"REDIS_URL", "SEEDSTACK_AUTH_TOKEN", "SEEDSTACK_RUN_DIR"}


def assert_job_command(command: list[str], spec_path: str) -> None:
    """``python -m clients.seedctl run SPEC --stack existing``, the subcommand and flags seedctl has."""
    assert_module_exists(module_of(command))
    assert command == ["python", "-m", "clients.seedctl", "run", spec_path, "--stack", "existing"]
    seedctl_source = (ROOT / "clients" / "seedctl.py").read_text()
    assert 'add_parser("run"' in seedctl_source and '"--stack", choices=("fresh", "existing")' in seedctl_source


def assert_job_variables_read(names: set[str]) -> None:
    """Each variable the job is given is one the clients' code reads."""
    assert names <= JOB_VARIABLES, f"the job sets {sorted(names - JOB_VARIABLES)}, which seedctl does not read"
    code = "".join(p.read_text() for p in (ROOT / "clients").glob("*.py"))
    for name in names:
        assert f'"{name}"' in code, f"no client module reads {name}"


def default_job_env() -> dict[str, str]:
    """What `seedctl run` sets in the environment of the services it starts for the default spec."""
    from clients.jobspec import load_job_spec
    from clients.mainjob import service_env

    return service_env(load_job_spec(DEFAULT_SPEC), ROOT / "runs")


def image_workdir() -> str:
    final_stage = dockerfile_instructions()
    final_stage = final_stage[max(i for i, (ins, _) in enumerate(final_stage) if ins == "FROM") :]
    return [rest for ins, rest in final_stage if ins == "WORKDIR"][-1]


def test_the_default_spec_is_the_makefile_default_and_asks_for_what_the_deployments_run() -> None:
    from clients.jobspec import load_job_spec

    makefile_job = re.search(r"^JOB \?= (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert makefile_job and ROOT / makefile_job.group(1).strip() == DEFAULT_SPEC
    assert load_job_spec(DEFAULT_SPEC).rollout.num_servers == 2


def test_compose_job_runs_the_default_spec_on_the_stack(compose: dict[str, Any]) -> None:
    from clients.jobspec import load_job_spec
    from clients.mainjob import SERVICES as JOB_SERVICES
    from clients.seedctl import DEFAULT_RUN_DIR

    services = compose["services"]
    job = services["job"]
    assert job["build"] == services["trainer"]["build"] and job["image"] == services["trainer"]["image"]
    assert job["profiles"] == ["job"] and job["restart"] == "no", "a finished job is not started again"
    spec_mount, runs_mount = job["volumes"]
    source, target, mode = spec_mount.split(":")
    assert (ROOT / source).resolve() == DEFAULT_SPEC and mode == "ro", "the same file as `make run`"
    assert_job_command(job["command"], target)
    env = compose_environment(job)
    assert_job_variables_read(set(env))
    assert env["REDIS_URL"] == compose_environment(services["trainer"])["REDIS_URL"]

    rollouts = [n for n, svc in services.items() if svc.get("command") == ["python", "-m", "services.rollout"]]
    assert len(rollouts) == load_job_spec(DEFAULT_SPEC).rollout.num_servers
    for dependency in ("redis", *JOB_SERVICES, *rollouts):
        assert job["depends_on"][dependency]["condition"] == "service_healthy", f"the job waits for {dependency}"

    # One volume, mounted at the same path: the job's run directory (cwd/runs/job-...) holds the RL prompts
    # the data plane reads, the trainer's runs its steps, runs/stack/traces every service's spans.
    volume, path = runs_mount.split(":")
    assert volume in compose["volumes"] and path == f"{image_workdir()}/runs"
    for name in ("dataplane", "trainer", *rollouts, "weighthub", "robustness"):
        assert runs_mount in services[name]["volumes"], f"{name} mounts {volume} at {path}"
    assert compose_environment(services["trainer"])["SEEDSTACK_TRAINER_RUNS_DIR"].startswith(path + "/")
    startup = "SEEDSTACK_ROBUSTNESS_STARTUP_TIMEOUT_S"
    assert compose_environment(services["robustness"])[startup] == default_job_env()[startup]
    traces = {compose_environment(services[n])["SEEDSTACK_TRACE_FILE"] for n in (*JOB_SERVICES, *rollouts)}
    assert len(traces) == len(JOB_SERVICES) + len(rollouts) - 1, "one span file per process"
    assert {str(Path(t).parent) for t in traces} == {f"{image_workdir()}/{DEFAULT_RUN_DIR}/traces"}


def test_compose_collector_uses_the_committed_config(compose: dict[str, Any]) -> None:
    collector = compose["services"]["otel-collector"]
    assert collector["profiles"] == ["tracing"]
    source = collector["volumes"][0].split(":", 1)[0]
    config = yaml.safe_load((ROOT / source).read_text())
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert set(pipeline["processors"]) <= set(config["processors"])
    assert set(pipeline["exporters"]) <= set(config["exporters"])


# --- Kubernetes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    """Every object of the files kustomization.yaml lists (each file may hold several)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk, "kustomization.yaml lists exactly the manifests in deploy/k8s"
    docs = [d for name in listed for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def test_k8s_has_a_namespace_and_redis(manifests: list[dict[str, Any]]) -> None:
    assert any(d["kind"] == "Namespace" for d in manifests)
    find(manifests, "Deployment", "redis")
    assert find(manifests, "Service", "redis")["spec"]["ports"][0]["port"] == 6379


def test_k8s_deploys_exactly_the_catalog(manifests: list[dict[str, Any]]) -> None:
    deployments = {d["metadata"]["name"] for d in manifests if d["kind"] == "Deployment"}
    assert deployments - {"redis"} == set(SERVICE_IDS)


@pytest.mark.parametrize("info", SERVICES, ids=SERVICE_IDS)
def test_k8s_service_matches_its_config(manifests: list[dict[str, Any]], info: ServiceInfo) -> None:
    port = default_port(info)
    deployment = find(manifests, "Deployment", info.name)
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-m", f"services.{info.name}"]
    assert_module_exists(module_of(container["command"]))
    assert container["ports"] == [{"name": "grpc", "containerPort": port, "protocol": "TCP"}]
    assert container["resources"]["requests"]

    env = {e["name"]: e for e in container["env"]}
    assert_variables_known(info, set(env), f"Deployment {info.name}")
    assert env[f"{info.env_prefix}PORT"]["value"] == str(port)
    advertise = env[f"{info.env_prefix}ADVERTISE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert advertise == "status.podIP"
    redis_host = re.fullmatch(r"redis://([^:/]+):\d+/\d+", env["REDIS_URL"]["value"])
    assert redis_host
    find(manifests, "Service", redis_host.group(1))
    token = env["SEEDSTACK_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["optional"] is True, "the stack must start without the Secret"

    assert container["readinessProbe"]["grpc"]["port"] == port
    liveness = container["livenessProbe"]
    if "grpc" in liveness:
        assert liveness["grpc"]["port"] == port
    else:
        command = liveness["exec"]["command"]
        assert module_of(command) == PROBE_MODULE and f"127.0.0.1:{port}" in command

    service = find(manifests, "Service", info.name)
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == port and service_port["targetPort"] in ("grpc", port)
    assert service_port["name"] == "grpc"


def test_k8s_job_runs_the_default_spec_on_the_stack(manifests: list[dict[str, Any]]) -> None:
    from clients.jobspec import load_job_spec

    config_map = find(manifests, "ConfigMap", "seedstack-job")
    assert config_map["data"] == {DEFAULT_SPEC.name: DEFAULT_SPEC.read_text()}, "a copy of deploy/jobs/default.yaml"
    job = find(manifests, "Job", "seedstack-job")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    spec_path = container["command"][4]
    assert mounts[str(Path(spec_path).parent)]["configMap"]["name"] == "seedstack-job"
    assert Path(spec_path).name in config_map["data"]
    assert_job_command(container["command"], spec_path)
    assert_job_variables_read({e["name"] for e in container["env"]})
    trainer = find(manifests, "Deployment", "trainer")["spec"]["template"]
    (trainer_container,) = trainer["spec"]["containers"]
    redis_url = {e["name"]: e.get("value") for e in trainer_container["env"]}["REDIS_URL"]
    assert {e["name"]: e.get("value") for e in container["env"]}["REDIS_URL"] == redis_url

    # The services an RL step's trace crosses mount the job's volume where the job does and write their
    # span files where the job looks for them (<default run dir>/traces, as `seedctl run --stack existing`).
    from clients.mainjob import STEP_TRACE_SERVICES
    from clients.seedctl import DEFAULT_RUN_DIR

    runs_path = f"{image_workdir()}/runs"
    claim = mounts[runs_path]["persistentVolumeClaim"]["claimName"]
    assert "ReadWriteMany" in find(manifests, "PersistentVolumeClaim", claim)["spec"]["accessModes"]
    traces_dir = Path(image_workdir()) / DEFAULT_RUN_DIR / "traces"
    for name in STEP_TRACE_SERVICES:
        pod_spec = find(manifests, "Deployment", name)["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod_spec["containers"][0]["env"]}
        trace_file = Path(env["SEEDSTACK_TRACE_FILE"])
        assert trace_file.parent == traces_dir and trace_file.name == "$(POD_NAME).jsonl", f"{name}: {trace_file}"
        assert list(env).index("POD_NAME") < list(env).index("SEEDSTACK_TRACE_FILE"), "k8s expands only earlier vars"
    for name in STEP_TRACE_SERVICES:
        pod_spec = find(manifests, "Deployment", name)["spec"]["template"]["spec"]
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod_spec["volumes"]}
        (service_container,) = pod_spec["containers"]
        assert [claims[m["name"]] for m in service_container["volumeMounts"] if m["mountPath"] == runs_path] == [
            claim
        ], f"{name} mounts {claim} at {runs_path}"
        assert pod_spec["securityContext"]["fsGroup"] == pod["securityContext"]["fsGroup"]
    runs_dir = {e["name"]: e.get("value") for e in trainer_container["env"]}["SEEDSTACK_TRAINER_RUNS_DIR"]
    assert runs_dir.startswith(runs_path + "/")
    robustness = find(manifests, "Deployment", "robustness")["spec"]["template"]["spec"]["containers"][0]
    startup = "SEEDSTACK_ROBUSTNESS_STARTUP_TIMEOUT_S"
    assert {e["name"]: e.get("value") for e in robustness["env"]}[startup] == default_job_env()[startup]
    replicas = find(manifests, "Deployment", "rollout")["spec"]["replicas"]
    assert replicas == load_job_spec(DEFAULT_SPEC).rollout.num_servers


# --- Dockerfile -------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in joined.splitlines()]
    pairs = []
    for line in lines:
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


def test_dockerfile_defaults_to_the_makefile_cpu_torch() -> None:
    args = dict(
        rest.split("=", 1) for instruction, rest in dockerfile_instructions() if instruction == "ARG" and "=" in rest
    )
    makefile_spec = re.search(r"^TORCH_SPEC \?= (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert makefile_spec
    assert args["TORCH_SPEC"].strip('"') == makefile_spec.group(1).strip()
    assert "cpu" in args["TORCH_INDEX_URL"], "CPU torch unless a CUDA index is chosen"
    assert args["PYTHON_IMAGE"].startswith("python:3.11")


def test_dockerfile_copies_existing_paths_runs_as_non_root_and_its_cmd_exists() -> None:
    instructions = dockerfile_instructions()
    for instruction, rest in instructions:
        if instruction == "COPY" and not rest.startswith("--from"):
            *sources, _dest = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    final_stage = instructions[max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM") :]
    users = [rest for ins, rest in final_stage if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (cmd,) = [json.loads(rest) for ins, rest in final_stage if ins == "CMD"]
    assert_module_exists(module_of(cmd))
    assert not [ins for ins, _ in instructions if ins == "ENTRYPOINT"], "compose and k8s pass the whole command"


# --- the health probe, for real ---------------------------------------------------------------


async def run_probe(*args: str) -> tuple[int, str]:
    """Exit status and output of the probe, run as a subprocess (the server shares this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", PROBE_MODULE, *args, cwd=ROOT, stdout=PIPE, stderr=STDOUT
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, output.decode()


async def health_status(port: int) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def has_status(port: int, expected: str) -> bool:
    return await health_status(port) == expected


async def test_probe_passes_on_serving_and_fails_on_unreachable(redis_url: str) -> None:
    from services.weighthub.config import WeightHubConfig
    from services.weighthub.server import create_server

    server = await create_server(WeightHubConfig(redis_url=redis_url, port=0))
    await server.server.start()
    try:
        await assert_eventually(lambda: has_status(server.port, "SERVING"), message="weighthub SERVING")
        code, output = await run_probe(f"127.0.0.1:{server.port}")
        assert code == 0, output
        assert output.splitlines() == [f"127.0.0.1:{server.port} (server): SERVING"]
        code, output = await run_probe(f"127.0.0.1:{server.port}", "--service", "seedstack.weighthub.v1.WeightHub")
        assert code == 0, output
        code, output = await run_probe(f"127.0.0.1:{server.port}", "--service", "no.such.Service")
        assert code == 1 and "NOT_FOUND" in output, output
    finally:
        await server.stop(0)
    code, output = await run_probe(f"127.0.0.1:{free_port()}", "--timeout-s", "2")
    assert code == 1
    assert "UNAVAILABLE" in output or "DEADLINE_EXCEEDED" in output, output


@pytest.mark.slow  # the readiness check waits out its timeout against the dead Redis
async def test_probe_alive_passes_while_dependencies_are_down() -> None:
    from services.weighthub.config import WeightHubConfig
    from services.weighthub.server import create_server

    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    server = await create_server(WeightHubConfig(redis_url=dead_redis, port=0))
    await server.server.start()
    try:
        await assert_eventually(
            lambda: has_status(server.port, "NOT_SERVING"), timeout_s=20, message="NOT_SERVING without Redis"
        )
        code, output = await run_probe(f"127.0.0.1:{server.port}")
        assert code == 1 and "NOT_SERVING" in output, output
        code, output = await run_probe(f"127.0.0.1:{server.port}", "--alive")
        assert code == 0 and "NOT_SERVING" in output, output
    finally:
        await server.stop(0)
