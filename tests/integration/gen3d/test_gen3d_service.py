"""The Gen3D service over real gRPC and Redis: submit, watch by stage, fetch, and bad input."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from seedstack.gen3d.v1 import gen3d_pb2 as pb

from clients.base import RPCError
from clients.gen3d import Gen3DClient, run_gen3d_cli
from services.common.server import GrpcServer
from services.gen3d import samples
from services.gen3d.config import Gen3DConfig
from services.gen3d.server import create_server
from tests.support import assert_eventually


@pytest.fixture
async def service(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[GrpcServer, Gen3DClient, Path]]:
    config = Gen3DConfig(
        redis_url=redis_url,
        port=0,
        host="127.0.0.1",
        store_dir=tmp_path / "store",
        resolution=40,
        texture_size_px=64,
        collision_budget_s=0.0,
        num_drops=2,
        max_side_px=256,
        max_pixels=4_000_000,
    )
    server = await create_server(config)
    await server.server.start()
    client = Gen3DClient(f"127.0.0.1:{server.port}")
    await assert_eventually(lambda: _serving(client), message="service SERVING")
    yield server, client, tmp_path
    await client.close()
    await server.stop(0)


async def _serving(client: Gen3DClient) -> bool:
    return await client.health() == "SERVING"


async def test_image_to_asset_with_progress_and_fetch(service: tuple[GrpcServer, Gen3DClient, Path]) -> None:
    _, client, tmp = service
    image = tmp / "mug.png"
    image.write_bytes(samples.png_bytes(samples.mug(96)))
    job_id = await client.submit_image(image, pb.AssetOptions(object_class="mug"), request_id="r1")
    stages: list[int] = []
    async for job in client.watch(job_id, timeout_s=120):
        if job.stage and (not stages or stages[-1] != job.stage):
            stages.append(job.stage)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.failure_reason
    # A watcher sees the latest state at each read, so fast stages may be coalesced: the stages seen
    # come in pipeline order and end with the check; the timings show that every stage ran.
    order = [pb.STAGE_MASK, pb.STAGE_GEOMETRY, pb.STAGE_TEXTURE, pb.STAGE_PHYSICS, pb.STAGE_EXPORT, pb.STAGE_CHECK]
    assert stages == sorted(stages, key=order.index) and stages[-1] == pb.STAGE_CHECK and len(stages) >= 3
    assert {t.stage for t in job.stage_timings} == set(order)
    report = job.assets[0]
    assert report.watertight and report.mass_kg > 0 and report.drop_test.num_drops == 2
    # The texture, seen again through the input camera, beats a flat coat of the mug's mean colour.
    assert 0 < report.texture_error < report.texture_baseline_error
    # The same request id names the same job.
    assert await client.submit_image(image, request_id="r1") == job_id
    paths = await client.fetch_to_folder(job_id, tmp / "out")
    names = {p.name for p in paths}
    assert {"asset.glb", "asset.obj", "asset.urdf", "asset.xml", "asset_preview.png"} <= names
    for f in job.files:
        assert hashlib.sha256((tmp / "out" / f.name).read_bytes()).hexdigest() == f.sha256
    # Files share the store's disk too: content-addressed blobs linked under jobs/<id>/.
    assert (tmp / "store" / job.files[0].store_path).is_file()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is not an image", "not an image"),
        (samples.png_bytes(samples.vase(96))[:300], "cannot be decoded"),
    ],
)
async def test_bad_image_fails_the_job_not_the_service(
    service: tuple[GrpcServer, Gen3DClient, Path], data: bytes, reason: str
) -> None:
    _, client, _ = service
    reply = await client.submit_job(pb.SubmitJobRequest(request_id="bad", image=pb.ImageInput(data=data)))
    job = await client.wait(reply.job_id, timeout_s=60)
    assert job.state == pb.JOB_STATE_FAILED
    assert reason in job.failure_reason
    with pytest.raises(RPCError) as err:
        await client.fetch_to_folder(reply.job_id, Path("/nonexistent-never-written"))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert await client.health() == "SERVING"


async def test_blank_image_and_paths_outside_the_store(service: tuple[GrpcServer, Gen3DClient, Path]) -> None:
    from PIL import Image

    _, client, _ = service
    blank = samples.png_bytes(Image.new("RGB", (64, 64), (90, 90, 90)))
    reply = await client.submit_job(pb.SubmitJobRequest(request_id="blank", image=pb.ImageInput(data=blank)))
    job = await client.wait(reply.job_id, timeout_s=60)
    assert job.state == pb.JOB_STATE_FAILED and "no foreground" in job.failure_reason
    with pytest.raises(RPCError) as err:
        await client.submit_job(pb.SubmitJobRequest(request_id="empty", image=pb.ImageInput(data=b"")))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    for path in ("../../etc/passwd", "/etc/passwd"):
        with pytest.raises(RPCError) as err:
            await client.submit_job(pb.SubmitJobRequest(request_id=path, image=pb.ImageInput(store_path=path)))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(RPCError) as err:
        await client.get_job(pb.GetJobRequest(job_id="nope"))
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert await client.health() == "SERVING"


async def test_cli_prints_progress_and_paths(service: tuple[GrpcServer, Gen3DClient, Path]) -> None:
    import io

    server, _, tmp = service
    image = tmp / "vase.png"
    image.write_bytes(samples.png_bytes(samples.vase(96)))
    out = io.StringIO()
    code = await run_gen3d_cli(f"127.0.0.1:{server.port}", image, tmp / "cli", object_class="vase", stream=out)
    text = out.getvalue()
    assert code == 0, text
    assert "geometry" in text and "check" in text
    assert "texture error=" in text and "(flat colour " in text
    assert str(tmp / "cli" / "asset.glb") in text


def _table_png() -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (128, 128), (240, 240, 240))
    d = ImageDraw.Draw(img)
    d.rectangle([8, 40, 120, 52], fill=(120, 80, 40))
    d.rectangle([12, 52, 24, 115], fill=(120, 80, 40))
    d.rectangle([104, 52, 116, 115], fill=(120, 80, 40))
    return samples.png_bytes(img)


async def test_scene_submit_watch_fetch(service: tuple[GrpcServer, Gen3DClient, Path]) -> None:
    import mujoco

    _, client, tmp = service
    uploaded = await client.upload_file(_write(tmp / "mug.png", samples.png_bytes(samples.mug(96))))
    request = pb.SubmitSceneRequest(
        request_id="scene-1",
        objects=[
            pb.SceneObject(
                name="table", image=pb.ImageInput(data=_table_png()), options=pb.AssetOptions(object_class="table")
            ),
            pb.SceneObject(
                name="mug",
                image=pb.ImageInput(store_path=uploaded.store_path),
                options=pb.AssetOptions(object_class="mug"),
                support="table",
                x_m=0.1,
                yaw_deg=30.0,
            ),
        ],
    )
    job_id = (await client.submit_scene(request)).job_id
    assert (await client.submit_scene(request)).job_id == job_id  # a retried submit is the same job
    stages: list[int] = []
    async for job in client.watch(job_id, timeout_s=120):
        if job.stage and (not stages or stages[-1] != job.stage):
            stages.append(job.stage)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.failure_reason
    assert job.kind == pb.JOB_KIND_SCENE
    assert stages[-1] == pb.STAGE_CHECK and {t.stage for t in job.stage_timings} >= {pb.STAGE_LAYOUT, pb.STAGE_EXPORT}
    assert [a.name for a in job.assets] == ["table", "mug"]
    assert all(a.watertight for a in job.assets)
    assert job.scene_drop_test.num_drops == 1 and job.scene_drop_test.num_stable == 1, job.scene_drop_test.failures
    paths = await client.fetch_to_folder(job_id, tmp / "scene")
    names = {p.name for p in paths}
    assert {"scene.xml", "scene.urdf", "table.glb", "mug.glb", "mug_albedo.png", "table_albedo.png"} <= names
    for f in job.files:
        assert hashlib.sha256((tmp / "scene" / f.name).read_bytes()).hexdigest() == f.sha256
    # The fetched folder is self-contained: the scene loads with both objects as free bodies.
    model = mujoco.MjModel.from_xml_path(str(tmp / "scene" / "scene.xml"))
    assert {model.body(i).name for i in range(model.nbody)} >= {"table", "mug"}
    bad = pb.SubmitSceneRequest(
        request_id="scene-bad",
        objects=[pb.SceneObject(name="mug", image=pb.ImageInput(store_path=uploaded.store_path), support="shelf")],
    )
    with pytest.raises(RPCError) as err:
        await client.submit_scene(bad)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


async def test_job_over_its_time_limit_fails_and_the_service_keeps_serving(redis_url: str, tmp_path: Path) -> None:
    config = Gen3DConfig(
        redis_url=redis_url, port=0, host="127.0.0.1", store_dir=tmp_path / "store", job_time_limit_s=0.5
    )
    server = await create_server(config)
    await server.server.start()
    client = Gen3DClient(f"127.0.0.1:{server.port}")
    try:
        await assert_eventually(lambda: _serving(client), message="service SERVING")
        image = _write(tmp_path / "vase.png", samples.png_bytes(samples.vase(96)))
        job = await client.wait(await client.submit_image(image), timeout_s=60)
        assert job.state == pb.JOB_STATE_FAILED
        assert job.failure_reason.startswith("passed its time limit of 0.5 s (")
        assert await client.health() == "SERVING"
    finally:
        await client.close()
        await server.stop(0)
