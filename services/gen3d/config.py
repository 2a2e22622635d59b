"""Configuration of the 3D generation service: environment variables prefixed ``SEEDSTACK_GEN3D_``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.config import ServerConfig, check


@dataclass(frozen=True, kw_only=True)
class Gen3DConfig(ServerConfig):
    """Settings of the 3D generation service."""

    port: int = 50056
    """TCP port to serve gRPC on; 0 picks a free one."""
    store_dir: Path = Path("var/gen3d")
    """Root of the content-addressed asset store (uploads and finished jobs' files)."""
    num_workers: int = 1
    """Jobs run at once, each in a child process of its own."""
    job_time_limit_s: float = 600.0
    """Longest a job may run; past it its process is killed and the job fails saying so."""
    resolution: int = 128
    """Voxels along an object's longer side for the classical geometry (at least; finer for thin parts)."""
    max_faces: int = 6000
    """Faces of the visual mesh at most."""
    texture_size_px: int = 512
    """Default edge of the square texture maps."""
    collision_budget_s: float = 10.0
    """Default time CoACD may take before the convex hull is used instead."""
    num_drops: int = 5
    """Poses of the drop test."""
    max_pixels: int = 50_000_000
    """Images with more pixels are refused as decompression bombs (checked before decoding)."""
    max_side_px: int = 1024
    """Images with a longer side are downscaled to it, with a note in the job."""
    max_upload_bytes: int = 64 * 1024 * 1024
    """Largest image accepted, inline or uploaded."""
    weights_dir: Path | None = None
    """Folder of learned geometry backends (one subfolder each, with backend.json); unset for none."""
    device: str = "cpu"
    """Torch device of learned backends ("cpu", "cuda", "cuda:1")."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_workers >= 1, "num_workers", self.num_workers, "must be >= 1")
        check(self.job_time_limit_s > 0, "job_time_limit_s", self.job_time_limit_s, "must be > 0")
        check(16 <= self.resolution <= 512, "resolution", self.resolution, "must be in 16..512")
        check(500 <= self.max_faces <= 200_000, "max_faces", self.max_faces, "must be in 500..200000")
        check(64 <= self.texture_size_px <= 4096, "texture_size_px", self.texture_size_px, "must be in 64..4096")
        check(self.collision_budget_s >= 0, "collision_budget_s", self.collision_budget_s, "must be >= 0")
        check(1 <= self.num_drops <= 64, "num_drops", self.num_drops, "must be in 1..64")
        check(self.max_pixels >= 1024, "max_pixels", self.max_pixels, "must be >= 1024")
        check(64 <= self.max_side_px <= 16384, "max_side_px", self.max_side_px, "must be in 64..16384")
        check(self.max_upload_bytes >= 1024, "max_upload_bytes", self.max_upload_bytes, "must be >= 1 KiB")
        check(
            self.weights_dir is None or Path(self.weights_dir).is_dir(),
            "weights_dir",
            self.weights_dir,
            "folder does not exist",
        )
        check(bool(self.device), "device", self.device, "must not be empty")
