"""Stage 4: real-world scale, mass, centre of mass, inertia and collision hulls.

Scale comes from a size hint (the object's largest extent) or a default per object class. Mass and
inertia come from the closed mesh and a density; objects with a wall thickness (cups, vases) are
thin shells, since a solid mug would weigh several times too much. Collision hulls come from CoACD
under a time budget, run in a child process that is killed at the budget; the convex hull of the
whole mesh is the fallback.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from services.common.errors import InvalidArgument

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ClassDefaults:
    """What an object class implies when the request leaves it out."""

    size_m: float
    """Largest extent."""
    density_kg_per_m3: float
    """Density of its material."""
    wall_thickness_m: float = 0.0
    """Wall thickness when hollow; 0 for solid."""


CLASS_DEFAULTS: dict[str, ClassDefaults] = {
    "object": ClassDefaults(0.15, 700.0),
    "mug": ClassDefaults(0.11, 2300.0, 0.004),
    "cup": ClassDefaults(0.10, 2300.0, 0.003),
    "vase": ClassDefaults(0.30, 2300.0, 0.005),
    "bottle": ClassDefaults(0.25, 2500.0, 0.003),
    "bowl": ClassDefaults(0.18, 2300.0, 0.004),
    "kettle": ClassDefaults(0.25, 7900.0, 0.0008),
    "can": ClassDefaults(0.12, 2700.0, 0.0003),
    "spatula": ClassDefaults(0.30, 950.0),
    "ring": ClassDefaults(0.12, 700.0),
    "toy": ClassDefaults(0.12, 950.0),
    "box": ClassDefaults(0.30, 600.0, 0.003),
    "chair": ClassDefaults(0.90, 600.0),
    "table": ClassDefaults(0.75, 600.0),
    "book": ClassDefaults(0.24, 800.0),
    "ball": ClassDefaults(0.22, 150.0),
}
"""Defaults per object class; unknown classes use "object"."""


@dataclass
class Physics:
    """The asset's physical description, in metres and kilograms, in the asset's frame (z up, base at z = 0)."""

    metres_per_unit: float
    """Scale from the geometry's units (image pixels) to metres."""
    mass_kg: float
    center_of_mass_m: np.ndarray
    inertia_kg_m2: np.ndarray
    """3 x 3 inertia tensor about the centre of mass."""
    hulls: list[trimesh.Trimesh]
    """Convex collision pieces, in metres."""
    hull_method: str
    """"coacd" or "convex_hull" (fallback) and why."""
    density_kg_per_m3: float
    wall_thickness_m: float
    notes: list[str] = field(default_factory=list)


def class_defaults(object_class: str) -> ClassDefaults:
    """The defaults of ``object_class`` (case-insensitive), or those of a generic object."""
    return CLASS_DEFAULTS.get(object_class.strip().lower() or "object", CLASS_DEFAULTS["object"])


def shell_mass_properties(
    mesh: trimesh.Trimesh, density: float, thickness: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mass, centre of mass and inertia (about it) of a thin shell of ``thickness`` over the surface.

    Edge-midpoint quadrature per triangle, which is exact for the quadratic integrands of inertia.
    """
    tri = np.asarray(mesh.triangles)
    area = np.asarray(mesh.area_faces)
    mids = np.stack([(tri[:, 0] + tri[:, 1]) / 2, (tri[:, 1] + tri[:, 2]) / 2, (tri[:, 2] + tri[:, 0]) / 2], axis=1)
    pts = mids.reshape(-1, 3)
    w = np.repeat(area / 3.0, 3) * density * thickness
    mass = float(w.sum())
    com = (pts * w[:, None]).sum(axis=0) / mass
    r = pts - com
    r2 = (r * r).sum(axis=1)
    inertia = np.eye(3) * (w * r2).sum() - np.einsum("n,ni,nj->ij", w, r, r)
    return mass, com, inertia


def mass_properties(
    mesh_m: trimesh.Trimesh, density: float, wall_thickness_m: float
) -> tuple[float, np.ndarray, np.ndarray, str]:
    """Mass, centre of mass, inertia and which model was used ("solid" or "shell") for a mesh in metres."""
    if wall_thickness_m > 0 and wall_thickness_m * mesh_m.area < mesh_m.volume:
        mass, com, inertia = shell_mass_properties(mesh_m, density, wall_thickness_m)
        return mass, com, inertia, "shell"
    props = mesh_m.mass_properties
    scale = density  # trimesh's properties are for density 1
    return float(props["mass"] * scale), np.asarray(props["center_mass"]), np.asarray(props["inertia"]) * scale, "solid"


def collision_hulls(
    mesh_m: trimesh.Trimesh, *, budget_s: float, max_hulls: int = 16, threshold: float = 0.08
) -> tuple[list[trimesh.Trimesh], str]:
    """Convex pieces of ``mesh_m`` by CoACD within ``budget_s`` (the child is killed at the budget);
    otherwise its convex hull. Returns the pieces and how they were made."""
    fallback = [mesh_m.convex_hull]
    if budget_s <= 0:
        return fallback, "convex_hull (no time budget for decomposition)"
    with tempfile.TemporaryDirectory(prefix="seedstack-coacd-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(
            src,
            vertices=np.asarray(mesh_m.vertices),
            faces=np.asarray(mesh_m.faces),
            threshold=threshold,
            max_hulls=max_hulls,
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "services.gen3d.hulls_worker", str(src), str(dst)],
                env=env,
                capture_output=True,
                timeout=budget_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return fallback, f"convex_hull (CoACD passed its {budget_s:.1f} s budget)"
        if proc.returncode != 0 or not dst.exists():
            logger.warning("CoACD failed (exit %s): %s", proc.returncode, proc.stderr.decode(errors="replace")[-500:])
            return fallback, f"convex_hull (CoACD failed with exit code {proc.returncode})"
        data = np.load(dst)
        hulls = []
        for i in range(int(data["num"])):
            piece = trimesh.Trimesh(data[f"v{i}"], data[f"f{i}"], process=True).convex_hull
            if piece.volume > 1e-12:
                hulls.append(piece)
        if not hulls:
            return fallback, "convex_hull (CoACD returned no usable piece)"
        return hulls, f"coacd ({len(hulls)} pieces in {time.monotonic() - started:.1f} s)"


def compute_physics(
    mesh: trimesh.Trimesh,
    *,
    object_class: str = "",
    size_hint_m: float = 0.0,
    density_kg_per_m3: float = 0.0,
    wall_thickness_m: float | None = None,
    collision_budget_s: float = 10.0,
) -> Physics:
    """Scale ``mesh`` (any units) to metres and derive its mass properties and collision hulls.

    ``wall_thickness_m`` None means the class default; 0 means solid.
    """
    for name, value in (("size_hint_m", size_hint_m), ("density_kg_per_m3", density_kg_per_m3)):
        if not np.isfinite(value) or value < 0:
            raise InvalidArgument(f"{name}={value!r} must be a finite number >= 0")
    if wall_thickness_m is not None and (not np.isfinite(wall_thickness_m) or wall_thickness_m < 0):
        raise InvalidArgument(f"wall_thickness_m={wall_thickness_m!r} must be a finite number >= 0")
    defaults = class_defaults(object_class)
    notes = []
    size = size_hint_m or defaults.size_m
    if not size_hint_m:
        notes.append(f"size {size:.3f} m assumed from class {object_class or 'object'!r}")
    density = density_kg_per_m3 or defaults.density_kg_per_m3
    thickness = defaults.wall_thickness_m if wall_thickness_m is None else wall_thickness_m
    metres_per_unit = size / float(max(mesh.extents))
    mesh_m = mesh.copy()
    mesh_m.apply_scale(metres_per_unit)
    mass, com, inertia, model = mass_properties(mesh_m, density, thickness)
    if thickness > 0 and model == "solid":
        notes.append(f"wall thickness {thickness} m is thicker than the object; treated as solid")
    hulls, how = collision_hulls(mesh_m, budget_s=collision_budget_s)
    return Physics(
        metres_per_unit=metres_per_unit,
        mass_kg=mass,
        center_of_mass_m=com,
        inertia_kg_m2=inertia,
        hulls=hulls,
        hull_method=how,
        density_kg_per_m3=density,
        wall_thickness_m=thickness if model == "shell" else 0.0,
        notes=notes,
    )
