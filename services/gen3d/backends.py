"""Geometry backends: the classical CPU pipeline (the default) and learned models from a local folder.

Everything after geometry (texture, physics, export, check) is shared, so a backend only turns an
image and its mask into a ``Geometry``. A learned backend is a folder holding ``backend.json`` and a
TorchScript module: ``{"format": "torchscript_occupancy", "file": "model.pt", "image_px": 256}``. The
module maps a 1 x 3 x S x S image (RGB in [0, 1], the object's crop on black) to occupancy logits
1 x G x G x G over the cube around the object, indexed [x, y, z] with x to the right, y away from
the camera and z up. Weights are only ever read from that folder; nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import trimesh
from PIL import Image
from skimage import measure

from services.common.errors import FailedPrecondition, InvalidArgument
from services.gen3d.geometry import Geometry, build_geometry, simplify_manifold

logger = logging.getLogger(__name__)

CLASSICAL = "classical"
"""Name of the default backend (also chosen by an empty name)."""


class GeometryBackend(Protocol):
    """Turns an image and its foreground mask into a watertight mesh (see ``geometry``)."""

    name: str

    def build(
        self, rgb: np.ndarray, mask: np.ndarray, *, resolution: int, max_faces: int, flat_top: bool = False
    ) -> Geometry:
        """The geometry of the object in ``rgb`` whose silhouette is ``mask``."""
        ...


@dataclass
class ClassicalBackend:
    """Surface of revolution or inflation of the outline; needs no weights and runs everywhere."""

    name: str = CLASSICAL

    def build(
        self, rgb: np.ndarray, mask: np.ndarray, *, resolution: int, max_faces: int, flat_top: bool = False
    ) -> Geometry:
        return build_geometry(mask, resolution=resolution, max_faces=max_faces, flat_top=flat_top)


class TorchScriptOccupancyBackend:
    """A learned image-to-occupancy model exported as TorchScript, loaded from a local folder."""

    def __init__(self, name: str, folder: Path, device: str = "cpu") -> None:
        import torch

        spec_path = folder / "backend.json"
        try:
            spec = json.loads(spec_path.read_text())
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"backend {name!r}: cannot read {spec_path}: {exc}") from None
        if spec.get("format") != "torchscript_occupancy":
            raise FailedPrecondition(f"backend {name!r}: unknown format {spec.get('format')!r} in {spec_path}")
        self.name = name
        self.image_px = int(spec.get("image_px", 256))
        self.device = device
        self.module = torch.jit.load(str(folder / spec["file"]), map_location=device).eval()

    def build(
        self, rgb: np.ndarray, mask: np.ndarray, *, resolution: int, max_faces: int, flat_top: bool = False
    ) -> Geometry:
        import torch

        rows = np.nonzero(mask.any(axis=1))[0]
        cols = np.nonzero(mask.any(axis=0))[0]
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        side = max(r1 - r0, c1 - c0)
        crop = np.zeros((side, side, 3), dtype=np.uint8)
        oy, ox = (side - (r1 - r0)) // 2, (side - (c1 - c0)) // 2
        crop[oy : oy + r1 - r0, ox : ox + c1 - c0] = np.where(mask[r0:r1, c0:c1, None], rgb[r0:r1, c0:c1], 0)
        img = np.asarray(Image.fromarray(crop).resize((self.image_px, self.image_px)), dtype=np.float32) / 255.0
        with torch.inference_mode():
            x = torch.from_numpy(img).permute(2, 0, 1)[None].to(self.device)
            logits = self.module(x)[0].float().cpu().numpy()
        if logits.ndim != 3 or len(set(logits.shape)) != 1:
            raise FailedPrecondition(f"backend {self.name!r} returned a grid of shape {logits.shape}, not G x G x G")
        grid = logits.shape[0]
        vol = np.pad(logits, 1, constant_values=-1e3)
        if vol.max() <= 0:
            raise FailedPrecondition(f"backend {self.name!r} predicted an empty shape")
        voxel = side / grid
        verts, faces, _, _ = measure.marching_cubes(vol, level=0.0, spacing=(voxel, voxel, voxel))
        # Cube [0, side]^3 around the crop: x from the crop's left, z up from its bottom.
        verts -= voxel
        verts[:, 1] -= side / 2
        mesh = trimesh.Trimesh(verts, faces, process=True)
        if mesh.volume < 0:
            mesh.invert()
        # Keep only the largest closed piece: stray blobs of a learned field carry no meaning.
        pieces = mesh.split(only_watertight=True)
        if not pieces:
            raise FailedPrecondition(f"backend {self.name!r}: no closed surface in the predicted field")
        mesh = max(pieces, key=lambda p: p.volume)
        mesh = simplify_manifold(mesh, max_faces=max_faces, tolerance=0.25 * voxel)
        zmin = float(mesh.bounds[0, 2])
        mesh.apply_translation([0.0, 0.0, -zmin])
        origin_col = c0 - ox
        origin_row = r0 - oy + side - zmin
        return Geometry(
            mesh=mesh,
            method=f"learned:{self.name}",
            origin_col=float(origin_col),
            origin_row=float(origin_row),
            symmetry_iou=0.0,
        )


class BackendRegistry:
    """The classical backend plus one learned backend per subfolder of ``weights_dir`` (loaded lazily)."""

    def __init__(self, weights_dir: Path | None = None, device: str = "cpu") -> None:
        self.weights_dir = weights_dir
        self.device = device
        self._loaded: dict[str, GeometryBackend] = {CLASSICAL: ClassicalBackend()}

    def names(self) -> list[str]:
        """Backends that can be asked for."""
        found = []
        if self.weights_dir is not None and self.weights_dir.is_dir():
            found = sorted(p.name for p in self.weights_dir.iterdir() if (p / "backend.json").is_file())
        return [CLASSICAL, *found]

    def get(self, name: str) -> GeometryBackend:
        """The backend ``name`` ("" for the classical one); InvalidArgument when there is none."""
        name = name or CLASSICAL
        if name in self._loaded:
            return self._loaded[name]
        if "/" in name or name.startswith(".") or name not in self.names():
            raise InvalidArgument(f"unknown geometry backend {name!r}; available: {self.names()}")
        assert self.weights_dir is not None
        backend = TorchScriptOccupancyBackend(name, self.weights_dir / name, self.device)
        self._loaded[name] = backend
        return backend
