"""The whole image-to-asset pipeline: stages in order, timed, each reporting progress.

``build_object`` runs mask -> geometry -> texture -> physics -> export -> check for one image and
writes the asset's files into a folder; ``build_scene`` (in ``scene``) runs it per object and then
lays the objects out. No gRPC here: the service and the benchmark both call these functions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from PIL import Image

from services.common.errors import InvalidArgument
from services.gen3d import check, export, physics, render, stability, texture
from services.gen3d.backends import BackendRegistry, GeometryBackend
from services.gen3d.images import decode_image
from services.gen3d.mask import foreground_mask

logger = logging.getLogger(__name__)

STAGES = ("mask", "geometry", "texture", "physics", "layout", "export", "check")
"""Stage names, in order (the proto's Stage enum without the prefix)."""

OnStage = Callable[[str, float], None]
"""Called as each stage starts: (stage name, overall progress 0..1)."""

_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass(frozen=True)
class Settings:
    """How hard the pipeline works; the service's config fills these in."""

    resolution: int = 128
    """Voxels along the object's longer side."""
    max_faces: int = 6000
    """Faces of the simplified visual mesh at most (xatlas time grows with them)."""
    texture_size_px: int = 512
    """Edge of the square texture maps."""
    collision_budget_s: float = 10.0
    """Seconds CoACD may take before the convex hull is used instead."""
    num_drops: int = 5
    """Drop-test poses."""
    max_pixels: int = 50_000_000
    """Images with more pixels are refused as decompression bombs."""
    max_side_px: int = 1024
    """Longer images are downscaled to this side (with a note)."""


DEFAULT_SETTINGS = Settings()
"""The settings used when none are given."""


@dataclass(frozen=True)
class ObjectOptions:
    """What the caller says about the object (zero values: the class defaults)."""

    object_class: str = ""
    size_hint_m: float = 0.0
    density_kg_per_m3: float = 0.0
    wall_thickness_m: float = 0.0
    solid: bool = False
    """Solid even when the class is hollow."""
    backend: str = ""
    collision_budget_s: float = 0.0
    texture_size_px: int = 0


DEFAULT_OPTIONS = ObjectOptions()
"""Options used when none are given: every class default."""


@dataclass
class ObjectResult:
    """An object built and exported: its report (JSON-ready), files, and what a scene needs."""

    name: str
    report: dict[str, Any]
    files: list[str]
    exported: export.ExportedObject
    extents_m: np.ndarray
    notes: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


class StageClock:
    """Times stages and announces each as it starts."""

    def __init__(self, on_stage: OnStage | None, stages: tuple[str, ...], base: float = 0.0, span: float = 1.0) -> None:
        self.timings_s: dict[str, float] = {}
        self._on_stage = on_stage
        self._stages = stages
        self._base, self._span = base, span

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Run one stage: announce it, then add its duration to ``timings_s``."""
        if self._on_stage is not None:
            self._on_stage(name, self._base + self._span * self._stages.index(name) / len(self._stages))
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings_s[name] = self.timings_s.get(name, 0.0) + time.perf_counter() - started


def check_name(name: str) -> str:
    """``name`` if it is a usable object name (letters, digits, _ and -); InvalidArgument otherwise."""
    if not name or len(name) > 64 or not set(name) <= _NAME_OK:
        raise InvalidArgument(f"object name {name!r} must be 1-64 letters, digits, '_' or '-'")
    return name


def build_object(
    data: bytes,
    folder: Path,
    *,
    name: str = "asset",
    options: ObjectOptions = DEFAULT_OPTIONS,
    settings: Settings = DEFAULT_SETTINGS,
    backends: BackendRegistry | None = None,
    on_stage: OnStage | None = None,
    drop_test: bool = True,
    flat_top: bool = False,
    clock: StageClock | None = None,
) -> ObjectResult:
    """Turn one encoded image into an exported, checked asset in ``folder`` (see the module docstring).

    ``flat_top`` gives the object a flat top (a support in a scene).
    """
    check_name(name)
    backend: GeometryBackend = (backends or BackendRegistry()).get(options.backend)
    stages = ("mask", "geometry", "texture", "physics", "export", "check")
    clock = clock or StageClock(on_stage, stages)
    notes: list[str] = []
    with clock.stage("mask"):
        image = decode_image(data, max_pixels=settings.max_pixels, max_side_px=settings.max_side_px)
        notes += image.notes
        mask = foreground_mask(image.rgb, image.alpha)
    with clock.stage("geometry"):
        geom = backend.build(
            image.rgb, mask, resolution=settings.resolution, max_faces=settings.max_faces, flat_top=flat_top
        )
        notes += geom.notes
        defaults = physics.class_defaults(options.object_class)
        thickness = 0.0 if options.solid else (options.wall_thickness_m or defaults.wall_thickness_m)
        # A support in a scene keeps its top up; anything else may be laid on a side it rests on.
        pose = stability.choose_rest_pose(geom.mesh, hollow=thickness > 0, allow_turn=not flat_top)
        notes += pose.notes
    with clock.stage("texture"):
        textured = texture.bake(
            np.asarray(pose.mesh.vertices),
            np.asarray(pose.mesh.faces),
            image.rgb,
            mask,
            geom.origin_col,
            geom.origin_row,
            size_px=options.texture_size_px or settings.texture_size_px,
            object_class=options.object_class,
        )
        # Everything from here on is in the rest frame, the pose the asset is exported and checked in.
        textured.vertices = pose.apply(textured.vertices)
        rest_mesh = trimesh.Trimesh(
            pose.apply(np.asarray(pose.mesh.vertices)), np.asarray(pose.mesh.faces), process=False
        )
    with clock.stage("physics"):
        phys = physics.compute_physics(
            rest_mesh,
            object_class=options.object_class,
            size_hint_m=options.size_hint_m,
            density_kg_per_m3=options.density_kg_per_m3,
            wall_thickness_m=0.0 if options.solid else (options.wall_thickness_m or None),
            collision_budget_s=options.collision_budget_s or settings.collision_budget_s,
        )
        notes += phys.notes
        if not phys.hull_method.startswith("coacd"):
            notes.append(f"collision: {phys.hull_method}")
    with clock.stage("export"):
        exported, files = export.write_object(folder, name, textured, phys)
        placed = [(exported, export.Placement((0.0, 0.0, 0.0)))]
        (folder / f"{name}.xml").write_text(export.mjcf(placed, model=name, floor=False))
        (folder / f"{name}.urdf").write_text(export.urdf(placed, model=name))
        files += [f"{name}.xml", f"{name}.urdf"]
        reloaded = export.verify_reload(folder, files)
        # The exported GLB seen again by the input camera: its silhouette and texture against the input.
        front = check.front_view(
            folder / f"{name}.glb",
            lambda p: pose.unapply(p / phys.metres_per_unit),
            geom.origin_col,
            geom.origin_row,
            image.rgb,
            mask,
        )
        preview = render.render_preview(textured.vertices, textured.faces, textured.uv, textured.albedo)
        Image.fromarray(preview).save(folder / f"{name}_preview.png")
        files.append(f"{name}_preview.png")
    extents = np.asarray(rest_mesh.extents) * phys.metres_per_unit
    report: dict[str, Any] = {
        "name": name,
        "backend": backend.name,
        "geometry_method": geom.method,
        "watertight": bool(rest_mesh.is_watertight and rest_mesh.is_volume),
        "num_vertices": len(textured.vertices),
        "num_faces": len(textured.faces),
        "extents_m": [float(v) for v in extents],
        "mass_kg": phys.mass_kg,
        "center_of_mass_m": [float(v) for v in phys.center_of_mass_m],
        "inertia_kg_m2": [[float(v) for v in row] for row in phys.inertia_kg_m2],
        "density_kg_per_m3": phys.density_kg_per_m3,
        "wall_thickness_m": phys.wall_thickness_m,
        "num_collision_hulls": len(phys.hulls),
        "collision_method": phys.hull_method,
        "silhouette_iou": front.silhouette_iou,
        "texture_error": front.texture_error,
        "texture_baseline_error": front.flat_colour_error,
        "roughness": textured.roughness,
        "metallic": textured.metallic,
        "highlight_fraction": textured.highlight_fraction,
        "reloaded": reloaded,
        "rest_pose": {
            "tipping_angle_deg": pose.tipping_angle_deg,
            "upright_tipping_angle_deg": pose.upright_tipping_angle_deg,
            "cut_m": pose.trim_px * phys.metres_per_unit,
            "reoriented": pose.reoriented,
            "quaternion_wxyz": list(pose.quaternion()),
        },
    }
    if drop_test:
        with clock.stage("check"):
            result = check.drop_test(exported, folder, num_drops=settings.num_drops)
        report["drop_test"] = {
            "num_drops": result.num_drops,
            "num_stable": result.num_stable,
            "max_penetration_m": result.max_penetration_m,
            "max_impact_penetration_m": result.max_impact_penetration_m,
            "failures": result.failures,
        }
    report["notes"] = notes
    (folder / f"{name}_report.json").write_text(json.dumps(report, indent=2) + "\n")
    files.append(f"{name}_report.json")
    return ObjectResult(
        name=name,
        report=report,
        files=files,
        exported=exported,
        extents_m=extents,
        notes=notes,
        timings_s=dict(clock.timings_s),
    )
