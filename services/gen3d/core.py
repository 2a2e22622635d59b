"""The service's logic behind the RPCs: uploads, submits, job reports and fetches (no gRPC here)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from services.gen3d import jobs as jobs_mod
from services.gen3d.backends import BackendRegistry
from services.gen3d.jobs import JobManager
from services.gen3d.pipeline import ObjectOptions, Settings, build_object, check_name
from services.gen3d.scene import SceneItem, build_scene
from services.gen3d.store import AssetStore

MAX_CHUNK_BYTES = 1 << 20
"""Largest upload or fetch chunk."""


@dataclass(frozen=True)
class ImageRef:
    """An input image: its bytes (inline) or a path in the asset store, exactly one of them."""

    data: bytes | None = None
    store_path: str | None = None


def run_spec(
    spec: dict[str, Any],
    work: Path,
    on_stage: Callable[[str, float], None],
    *,
    store: AssetStore,
    settings: Settings,
    backends: BackendRegistry,
) -> tuple[list[str], dict[str, Any]]:
    """Build the object or the scene a job's spec describes into ``work``; (file names, results)."""
    if "objects" in spec:
        items = [
            (SceneItem(**o["item"]), store.resolve(o["image"]).read_bytes(), ObjectOptions(**o["options"]))
            for o in spec["objects"]
        ]
        scene = build_scene(items, work, settings=settings, backends=backends, on_stage=on_stage)
        return scene.files, {"assets": scene.reports, "scene_drop_test": scene.drop_test, "notes": scene.notes}
    result = build_object(
        store.resolve(spec["image"]).read_bytes(),
        work,
        name="asset",
        options=ObjectOptions(**spec["options"]),
        settings=settings,
        backends=backends,
        on_stage=on_stage,
    )
    return result.files, {"assets": [result.report], "notes": result.notes}


@dataclass(frozen=True)
class PipelineRunner:
    """The service's job runner: ``run_spec`` with what it needs, as plain fields (it pickles into the
    child process each job runs in; see ``worker``)."""

    store_root: Path
    settings: Settings
    weights_dir: Path | None = None
    device: str = "cpu"

    def __call__(
        self, spec: dict[str, Any], work: Path, on_stage: Callable[[str, float], None]
    ) -> tuple[list[str], dict[str, Any]]:
        backends = BackendRegistry(self.weights_dir, self.device)
        return run_spec(
            spec, work, on_stage, store=AssetStore(self.store_root), settings=self.settings, backends=backends
        )


class Gen3DCore:
    """Uploads into the store, jobs through ``JobManager``, files out of the store."""

    def __init__(
        self,
        store: AssetStore,
        jobs: JobManager | None,
        backends: BackendRegistry,
        settings: Settings,
        *,
        max_upload_bytes: int,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.backends = backends
        self.settings = settings
        self.max_upload_bytes = max_upload_bytes

    def _jobs(self) -> JobManager:
        assert self.jobs is not None, "attach a JobManager first"
        return self.jobs

    async def upload(self, chunks: AsyncIterator[bytes]) -> tuple[str, str, int]:
        """Store an uploaded image; returns (store path, sha256, size)."""
        parts: list[bytes] = []
        size = 0
        async for chunk in chunks:
            if len(chunk) > MAX_CHUNK_BYTES:
                raise InvalidArgument(f"upload chunk of {len(chunk)} bytes is over the 1 MiB limit")
            size += len(chunk)
            if size > self.max_upload_bytes:
                raise InvalidArgument(f"upload is over the limit of {self.max_upload_bytes} bytes")
            parts.append(chunk)
        if size == 0:
            raise InvalidArgument("the upload is empty")
        path, sha = self.store.put_bytes(b"".join(parts))
        return path, sha, size

    def _image_path(self, image: ImageRef) -> str:
        if (image.data is None) == (image.store_path is None):
            raise InvalidArgument("an image needs exactly one of data or store_path")
        if image.data is not None:
            if not image.data:
                raise InvalidArgument("the image data is empty")
            return self.store.put_bytes(image.data)[0]
        assert image.store_path is not None
        self.store.resolve(image.store_path)
        return image.store_path

    def _check_options(self, options: ObjectOptions) -> None:
        for name in ("size_hint_m", "density_kg_per_m3", "wall_thickness_m", "collision_budget_s"):
            value = getattr(options, name)
            if not (value >= 0 and value < 1e6):
                raise InvalidArgument(f"options.{name}={value!r} must be a finite number >= 0")
        if options.texture_size_px and not 64 <= options.texture_size_px <= 4096:
            raise InvalidArgument(f"options.texture_size_px={options.texture_size_px} must be 0 or in 64..4096")
        self.backends.get(options.backend)

    async def submit_object(self, request_id: str, image: ImageRef, options: ObjectOptions) -> str:
        """Queue one image; returns the job id (the same for a repeated ``request_id``)."""
        self._check_options(options)
        spec = {"image": self._image_path(image), "options": dataclasses.asdict(options)}
        return await self._jobs().submit(request_id, "object", spec)

    async def submit_scene(self, request_id: str, items: list[tuple[SceneItem, ImageRef, ObjectOptions]]) -> str:
        """Queue a scene of several images and their layout; returns the job id."""
        if not items:
            raise InvalidArgument("a scene needs at least one object")
        names = [item.name for item, _, _ in items]
        for name in names:
            check_name(name)
        if len(set(names)) != len(names):
            raise InvalidArgument(f"object names must be unique in a scene: {names}")
        if "scene" in names:
            raise InvalidArgument("'scene' is reserved for the scene's own files")
        for item, _, _ in items:
            if item.support and item.support not in names:
                raise InvalidArgument(f"{item.name!r} stands on {item.support!r}, which is not in the scene")
        by_name = {item.name: item for item, _, _ in items}
        for item, _, _ in items:
            seen, cur = {item.name}, item
            while cur.support:
                if cur.support in seen:
                    raise InvalidArgument(f"supports form a cycle through {cur.support!r}")
                seen.add(cur.support)
                cur = by_name[cur.support]
        specs = []
        for item, image, options in items:
            self._check_options(options)
            specs.append(
                {
                    "item": dataclasses.asdict(item),
                    "image": self._image_path(image),
                    "options": dataclasses.asdict(options),
                }
            )
        return await self._jobs().submit(request_id, "scene", {"objects": specs})

    async def get(self, job_id: str) -> dict[str, Any]:
        """The job's record."""
        return await self._jobs().get(job_id)

    def watch(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """The job's record after each change, up to its final state."""
        return self._jobs().watch(job_id)

    async def files_to_fetch(self, job_id: str, names: list[str]) -> list[dict[str, Any]]:
        """The finished job's files named (all when ``names`` is empty); FailedPrecondition if not finished."""
        record = await self.get(job_id)
        if record["state"] != jobs_mod.SUCCEEDED:
            raise FailedPrecondition(f"job {job_id} is {record['state']}; files exist only once it succeeded")
        files = {f["name"]: f for f in record["files"]}
        unknown = [n for n in names if n not in files]
        if unknown:
            raise NotFound(f"job {job_id} has no file(s) {unknown}; it has {sorted(files)}")
        return [files[n] for n in names] if names else list(files.values())

    def read_chunks(self, file: dict[str, Any], chunk_size: int) -> Iterator[tuple[int, bytes, str]]:
        """(offset, bytes, sha256 on the last chunk else "") of one stored file, verified as it is read."""
        chunk_size = min(chunk_size or MAX_CHUNK_BYTES, MAX_CHUNK_BYTES)
        if chunk_size < 0:
            raise InvalidArgument(f"chunk_size_bytes={chunk_size} must be >= 0")
        blob = self.store.open_blob(file["sha256"])
        digest = hashlib.sha256()
        offset = 0
        with open(blob, "rb") as f:
            chunk = f.read(chunk_size)
            while True:
                digest.update(chunk)
                following = f.read(chunk_size)
                last = not following
                if last and digest.hexdigest() != file["sha256"]:
                    raise DataLoss(f"stored {file['name']} no longer matches its sha256")
                yield offset, chunk, file["sha256"] if last else ""
                if last:
                    return
                offset += len(chunk)
                chunk = following
