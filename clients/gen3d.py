"""Typed async client of the Gen3D service (seedstack.gen3d.v1.Gen3D)."""

from __future__ import annotations

import hashlib
import sys
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any, TextIO

from seedstack.gen3d.v1 import gen3d_pb2 as pb
from seedstack.gen3d.v1 import gen3d_pb2_grpc as pb_grpc

from clients.base import BaseClient, ClientOptions


class Gen3DClient(BaseClient):
    """One method per RPC of ``seedstack.gen3d.v1.Gen3D``; errors raise ``clients.base.RPCError``."""

    stub_class = pb_grpc.Gen3DStub
    service_name = "gen3d"

    async def upload_image(
        self, requests: AsyncIterable[pb.UploadImageRequest], *, timeout_s: float | None = None
    ) -> pb.UploadImageResponse:
        """Stream requests to Gen3D.UploadImage; returns its one response."""
        return await self._client_stream("UploadImage", requests, timeout_s)  # type: ignore[no-any-return]

    async def submit_job(self, request: pb.SubmitJobRequest, *, timeout_s: float | None = None) -> pb.SubmitJobResponse:
        """Call Gen3D.SubmitJob (retried on UNAVAILABLE)."""
        return await self._unary("SubmitJob", request, timeout_s)  # type: ignore[no-any-return]

    async def submit_scene(
        self, request: pb.SubmitSceneRequest, *, timeout_s: float | None = None
    ) -> pb.SubmitSceneResponse:
        """Call Gen3D.SubmitScene (retried on UNAVAILABLE)."""
        return await self._unary("SubmitScene", request, timeout_s)  # type: ignore[no-any-return]

    async def get_job(self, request: pb.GetJobRequest, *, timeout_s: float | None = None) -> pb.GetJobResponse:
        """Call Gen3D.GetJob (retried on UNAVAILABLE)."""
        return await self._unary("GetJob", request, timeout_s)  # type: ignore[no-any-return]

    def watch_job(
        self, request: pb.WatchJobRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[pb.WatchJobResponse]:
        """Responses of Gen3D.WatchJob as they arrive."""
        return self._server_stream("WatchJob", request, timeout_s)

    def fetch_asset(
        self, request: pb.FetchAssetRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[pb.FetchAssetResponse]:
        """Responses of Gen3D.FetchAsset as they arrive."""
        return self._server_stream("FetchAsset", request, timeout_s)

    # Convenience helpers ------------------------------------------------------------------------

    async def upload_file(self, path: Path, *, chunk_bytes: int = 1 << 20) -> pb.UploadImageResponse:
        """Upload the image file at ``path`` in chunks of at most 1 MiB."""

        async def chunks() -> AsyncIterator[pb.UploadImageRequest]:
            with open(path, "rb") as f:  # noqa: ASYNC230 - small local image reads
                while chunk := f.read(min(chunk_bytes, 1 << 20)):
                    yield pb.UploadImageRequest(data=chunk)

        return await self.upload_image(chunks())

    async def submit_image(
        self, path: Path, options: pb.AssetOptions | None = None, *, request_id: str | None = None
    ) -> str:
        """Upload ``path`` and queue a job for it; returns the job id."""
        uploaded = await self.upload_file(path)
        reply = await self.submit_job(
            pb.SubmitJobRequest(
                request_id=request_id or uuid.uuid4().hex,
                image=pb.ImageInput(store_path=uploaded.store_path),
                options=options or pb.AssetOptions(),
            )
        )
        return str(reply.job_id)

    async def watch(self, job_id: str, *, timeout_s: float | None = None) -> AsyncIterator[pb.Job]:
        """The job after each change, ending with its final state."""
        async for reply in self.watch_job(pb.WatchJobRequest(job_id=job_id), timeout_s=timeout_s):
            yield reply.job

    async def wait(self, job_id: str, *, timeout_s: float | None = None) -> pb.Job:
        """The job in its final state."""
        last = None
        async for job in self.watch(job_id, timeout_s=timeout_s):
            last = job
        assert last is not None
        return last

    async def fetch_to_folder(self, job_id: str, folder: Path, names: list[str] | None = None) -> list[Path]:
        """Download a finished job's files into ``folder``, checking each SHA-256; returns their paths."""
        folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
        written: list[Path] = []
        current: tuple[str, Any, Any] | None = None
        async for chunk in self.fetch_asset(pb.FetchAssetRequest(job_id=job_id, file_names=names or [])):
            if current is None or current[0] != chunk.file_name:
                if Path(chunk.file_name).name != chunk.file_name:
                    raise ValueError(f"server sent a file name with a folder in it: {chunk.file_name!r}")
                current = (chunk.file_name, open(folder / chunk.file_name, "wb"), hashlib.sha256())  # noqa: ASYNC230
            _, handle, digest = current
            handle.write(chunk.data)
            digest.update(chunk.data)
            if chunk.sha256:
                handle.close()
                if digest.hexdigest() != chunk.sha256:
                    raise ValueError(f"{chunk.file_name}: SHA-256 mismatch after download")
                written.append(folder / chunk.file_name)
                current = None
        return written


def _is_redis_url(text: str) -> bool:
    return text.startswith(("redis://", "rediss://", "unix://"))


async def run_gen3d_cli(
    address_or_redis_url: str,
    image_path: Path,
    out_dir: Path,
    *,
    object_class: str = "",
    size_hint_m: float = 0.0,
    options: ClientOptions | None = None,
    stream: TextIO = sys.stdout,
) -> int:
    """``seedctl gen3d IMAGE``: upload, submit, print progress by stage, fetch, print the output paths.

    Returns the exit code: 0 when the asset was made, 1 when the job failed (its reason printed).
    """
    if _is_redis_url(address_or_redis_url):
        client = await Gen3DClient.resolve(address_or_redis_url, options)
    else:
        client = Gen3DClient(address_or_redis_url, options)
    async with client:
        job_id = await client.submit_image(
            Path(image_path), pb.AssetOptions(object_class=object_class, size_hint_m=size_hint_m)
        )
        print(f"job {job_id} submitted for {image_path}", file=stream)
        last_stage = None
        job = None
        async for job in client.watch(job_id):
            stage = pb.Stage.Name(job.stage).removeprefix("STAGE_").lower()
            if job.stage != last_stage and job.stage:
                print(f"  {100 * job.progress:5.1f}%  {stage}", file=stream)
                last_stage = job.stage
        assert job is not None
        for note in job.notes:
            print(f"  note: {note}", file=stream)
        if job.state != pb.JOB_STATE_SUCCEEDED:
            print(f"job {job_id} failed: {job.failure_reason}", file=stream)
            return 1
        paths = await client.fetch_to_folder(job_id, Path(out_dir))
        for report in job.assets:
            print(
                f"{report.name}: watertight={report.watertight} faces={report.num_faces} "
                f"mass={report.mass_kg:.3f} kg hulls={report.num_collision_hulls} "
                f"iou={report.silhouette_iou:.3f} "
                f"texture error={report.texture_error:.3f} (flat colour {report.texture_baseline_error:.3f}) "
                f"drops stable {report.drop_test.num_stable}/{report.drop_test.num_drops}",
                file=stream,
            )
        for path in paths:
            print(path, file=stream)
        return 0
