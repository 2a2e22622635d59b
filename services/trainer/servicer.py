"""gRPC servicer of the trainer: proto <-> domain conversion only; the runs live in ``core.Trainer``."""

from __future__ import annotations

import math
from typing import Any

import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from seedstack.trainer.v1 import trainer_pb2 as pb
from seedstack.trainer.v1 import trainer_pb2_grpc

from services.common.errors import InvalidArgument
from services.trainer.core import RunRecord, Trainer
from services.trainer.spec import RunSpec

_LOCAL_FIELDS = ("dataplane_address", "weighthub_address", "publish_bind_host")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    algorithm = data.get("algorithm")
    if isinstance(algorithm, str):
        name = algorithm.strip().lower()
        data["algorithm"] = name.removeprefix("algorithm_")
    if not data.get("device"):
        data["device"] = _default_device()
    for name in _LOCAL_FIELDS:
        if name in data:
            raise InvalidArgument(f"{name}: not a RunConfig field (the service resolves it)")
    return data


def spec_from_proto(config: pb.RunConfig) -> RunSpec:
    """The domain spec of a RunConfig; fields left at zero take their defaults."""
    data = json_format.MessageToDict(config, preserving_proto_field_name=True)
    if data.get("algorithm") == "ALGORITHM_UNSPECIFIED":
        data.pop("algorithm")
    return RunSpec.from_dict(_normalise(data))


def spec_from_text(text: str) -> RunSpec:
    """The domain spec of a YAML or JSON config text."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"run_config_text: not YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument("run_config_text: expected a mapping of RunConfig fields")
    return RunSpec.from_dict(_normalise(data))


def spec_to_proto(spec: RunSpec) -> pb.RunConfig:
    """The resolved RunConfig of a spec."""
    data = spec.to_dict()
    for name in _LOCAL_FIELDS:
        data.pop(name)
    data["algorithm"] = f"ALGORITHM_{spec.algorithm.upper()}"
    return json_format.ParseDict(data, pb.RunConfig())


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def run_to_proto(record: RunRecord) -> pb.Run:
    """The Run message of a record."""
    run = pb.Run(
        run_id=record.run_id,
        state=pb.RunState.Value(f"RUN_STATE_{record.state}"),
        config=spec_to_proto(record.spec),
        step=record.step,
        published_version=record.published_version,
        started_at=_timestamp(record.started_at),
        updated_at=_timestamp(record.updated_at or record.started_at),
        failure_reason=record.failure_reason,
        num_skipped_steps=record.num_skipped_steps,
        last_skip_reason=record.last_skip_reason,
        last_checkpoint=record.last_checkpoint,
        incarnation=record.incarnation,
        last_restart_reason=str(record.restarts[-1].get("why", "")) if record.restarts else "",
    )
    if record.metrics:
        fields = pb.StepMetrics.DESCRIPTOR.fields_by_name
        values = {k: v for k, v in record.metrics.items() if k in fields and math.isfinite(v)}
        for name in ("num_samples", "num_tokens"):
            if name in values:
                values[name] = int(values[name])
        run.latest_step.CopyFrom(pb.StepMetrics(**values))
    for e in record.evals:
        run.evals.append(
            pb.EvalResult(
                step=int(e["step"]),
                evaluated_at=_timestamp(float(e["at"])),
                accuracy=float(e["accuracy"]),
                num_prompts=int(e["num_prompts"]),
            )
        )
    return run


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    """Trainer RPCs over a ``core.Trainer``."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    async def StartRun(self, request: pb.StartRunRequest, context: grpc.aio.ServicerContext) -> pb.StartRunResponse:
        which = request.WhichOneof("config")
        if which is None:
            raise InvalidArgument("config: set run_config or run_config_text")
        spec = spec_from_proto(request.run_config) if which == "run_config" else spec_from_text(request.run_config_text)
        record = await self._trainer.start_run(request.request_id, spec)
        return pb.StartRunResponse(run_id=record.run_id, resolved_config=spec_to_proto(record.spec))

    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.GetRunResponse:
        return pb.GetRunResponse(run=run_to_proto(await self._trainer.get_run(request.run_id)))

    async def StopRun(self, request: pb.StopRunRequest, context: grpc.aio.ServicerContext) -> pb.StopRunResponse:
        record = await self._trainer.stop_run(request.run_id, request.save_checkpoint)
        return pb.StopRunResponse(run=run_to_proto(record))
