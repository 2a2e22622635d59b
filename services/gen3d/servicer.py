"""gRPC servicer of image-to-3D generation: proto <-> domain conversion only; the logic is in ``core``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from seedstack.gen3d.v1 import gen3d_pb2 as pb
from seedstack.gen3d.v1 import gen3d_pb2_grpc as pb_grpc

from services.gen3d.core import Gen3DCore, ImageRef
from services.gen3d.pipeline import ObjectOptions
from services.gen3d.scene import SceneItem

_STATES = {
    "queued": pb.JOB_STATE_QUEUED,
    "running": pb.JOB_STATE_RUNNING,
    "succeeded": pb.JOB_STATE_SUCCEEDED,
    "failed": pb.JOB_STATE_FAILED,
}
_KINDS = {"object": pb.JOB_KIND_OBJECT, "scene": pb.JOB_KIND_SCENE}


def _stage(name: str) -> int:
    return int(pb.Stage.Value(f"STAGE_{name.upper()}")) if name else pb.STAGE_UNSPECIFIED


def _image(msg: pb.ImageInput) -> ImageRef:
    which = msg.WhichOneof("source")
    if which == "data":
        return ImageRef(data=msg.data)
    if which == "store_path":
        return ImageRef(store_path=msg.store_path)
    return ImageRef()


def _options(msg: pb.AssetOptions) -> ObjectOptions:
    return ObjectOptions(
        object_class=msg.object_class,
        size_hint_m=msg.size_hint_m,
        density_kg_per_m3=msg.density_kg_per_m3,
        wall_thickness_m=msg.wall_thickness_m,
        solid=msg.solid,
        backend=msg.backend,
        collision_budget_s=msg.collision_budget_s,
        texture_size_px=msg.texture_size_px,
    )


def _timestamp(unix_s: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(unix_s * 1e9))
    return ts


def _drop(d: dict[str, Any] | None) -> pb.DropTest | None:
    if not d:
        return None
    return pb.DropTest(
        num_drops=d["num_drops"],
        num_stable=d["num_stable"],
        max_penetration_m=d["max_penetration_m"],
        max_impact_penetration_m=d["max_impact_penetration_m"],
        failures=d["failures"],
    )


def _rest_pose(p: dict[str, Any] | None) -> pb.RestPose | None:
    if not p:
        return None
    qw, qx, qy, qz = p["quaternion_wxyz"]
    return pb.RestPose(
        tipping_angle_deg=p["tipping_angle_deg"],
        upright_tipping_angle_deg=p["upright_tipping_angle_deg"],
        cut_m=p["cut_m"],
        reoriented=p["reoriented"],
        qw=qw,
        qx=qx,
        qy=qy,
        qz=qz,
    )


def _report(r: dict[str, Any]) -> pb.AssetReport:
    i3 = r["inertia_kg_m2"]
    return pb.AssetReport(
        name=r["name"],
        watertight=r["watertight"],
        num_vertices=r["num_vertices"],
        num_faces=r["num_faces"],
        extents_m=pb.Vector3(x=r["extents_m"][0], y=r["extents_m"][1], z=r["extents_m"][2]),
        mass_kg=r["mass_kg"],
        center_of_mass_m=pb.Vector3(x=r["center_of_mass_m"][0], y=r["center_of_mass_m"][1], z=r["center_of_mass_m"][2]),
        inertia_kg_m2=pb.Inertia(ixx=i3[0][0], iyy=i3[1][1], izz=i3[2][2], ixy=i3[0][1], ixz=i3[0][2], iyz=i3[1][2]),
        num_collision_hulls=r["num_collision_hulls"],
        silhouette_iou=r["silhouette_iou"],
        drop_test=_drop(r.get("drop_test")),
        texture_error=r["texture_error"],
        geometry_method=r["geometry_method"],
        collision_method=r["collision_method"],
        roughness=r["roughness"],
        metallic=r["metallic"],
        rest_pose=_rest_pose(r.get("rest_pose")),
        texture_baseline_error=r.get("texture_baseline_error", 0.0),
    )


def job_to_proto(rec: dict[str, Any]) -> pb.Job:
    """A job record (see ``jobs``) as the proto message."""
    return pb.Job(
        job_id=rec["job_id"],
        kind=_KINDS[rec["kind"]],
        state=_STATES[rec["state"]],
        stage=_stage(rec["stage"]),
        progress=rec["progress"],
        created_at=_timestamp(rec["created_at"]),
        updated_at=_timestamp(rec["updated_at"]),
        stage_timings=[pb.StageTiming(stage=_stage(s), duration_s=t) for s, t in rec["stage_timings"].items()],
        notes=rec["notes"],
        failure_reason=rec["failure_reason"],
        assets=[_report(a) for a in rec["assets"]],
        scene_drop_test=_drop(rec.get("scene_drop_test")),
        files=[
            pb.AssetFile(name=f["name"], size_bytes=f["size_bytes"], sha256=f["sha256"], store_path=f["store_path"])
            for f in rec["files"]
        ],
    )


class Gen3DServicer(pb_grpc.Gen3DServicer):
    """Converts each RPC to a call on ``Gen3DCore``."""

    def __init__(self, core: Gen3DCore) -> None:
        self.core = core

    async def UploadImage(
        self, request_iterator: AsyncIterator[pb.UploadImageRequest], context: grpc.aio.ServicerContext
    ) -> pb.UploadImageResponse:
        async def chunks() -> AsyncIterator[bytes]:
            async for req in request_iterator:
                yield req.data

        path, sha, size = await self.core.upload(chunks())
        return pb.UploadImageResponse(store_path=path, sha256=sha, size_bytes=size)

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext) -> pb.SubmitJobResponse:
        job_id = await self.core.submit_object(request.request_id, _image(request.image), _options(request.options))
        return pb.SubmitJobResponse(job_id=job_id)

    async def SubmitScene(
        self, request: pb.SubmitSceneRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitSceneResponse:
        items = [
            (
                SceneItem(name=o.name, support=o.support, x_m=o.x_m, y_m=o.y_m, yaw_deg=o.yaw_deg),
                _image(o.image),
                _options(o.options),
            )
            for o in request.objects
        ]
        job_id = await self.core.submit_scene(request.request_id, items)
        return pb.SubmitSceneResponse(job_id=job_id)

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=job_to_proto(await self.core.get(request.job_id)))

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchJobResponse]:
        async for rec in self.core.watch(request.job_id):
            yield pb.WatchJobResponse(job=job_to_proto(rec))

    async def FetchAsset(
        self, request: pb.FetchAssetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.FetchAssetResponse]:
        files = await self.core.files_to_fetch(request.job_id, list(request.file_names))
        for f in files:
            for offset, data, sha in self.core.read_chunks(f, int(request.chunk_size_bytes)):
                yield pb.FetchAssetResponse(
                    file_name=f["name"], offset_bytes=offset, data=data, file_size_bytes=f["size_bytes"], sha256=sha
                )
