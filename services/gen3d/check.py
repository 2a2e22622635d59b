"""Stage 6: drop the asset (or a scene) onto a plane in MuJoCo from several poses; see the exported
asset again through the input camera.

A drop is stable when, after the simulated time, every body has come to rest upright (its up axis
within ``UPRIGHT_DEG`` of vertical: an object that "didn't explode" but lies on its face fails),
nothing flew off or went non-finite, and at rest nothing sinks more than ``REST_PENETRATION_M`` into
the floor or another object. Penetration on impact (millimetres, transient) is reported but is not a
failure.

``front_view`` reloads the exported GLB, renders it unlit from the input camera (depth-buffered
rasterization, UVs interpolated across each triangle, bilinear lookup of the albedo as written to the
file) and compares it with the input: the silhouette IoU against the mask and the mean colour error
inside it, beside the same error of a flat texture of the object's mean colour (the baseline).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np
import trimesh

from services.common.errors import FailedPrecondition
from services.gen3d.export import ExportedObject, Placement, mjcf
from services.gen3d.render import colour_error, iou, render_front

UPRIGHT_DEG = 10.0
"""Largest tilt of a body's up axis at rest that still counts as upright."""
REST_PENETRATION_M = 0.002
"""Deepest penetration at rest that still counts as not sinking."""
REST_SPEED_M_S = 0.02
"""Largest linear speed at the end that counts as at rest."""


@dataclass
class DropResult:
    """Outcome of the drops."""

    num_drops: int
    num_stable: int
    max_penetration_m: float
    """Deepest penetration at rest (the last 0.2 s of each drop)."""
    max_impact_penetration_m: float
    """Deepest penetration at any time, impacts included."""
    failures: list[str]
    """Why each unstable drop failed."""


def _quat(axis: tuple[float, float, float], angle_deg: float) -> tuple[float, float, float, float]:
    a = math.radians(angle_deg) / 2
    n = np.asarray(axis, dtype=float)
    n /= np.linalg.norm(n)
    return (math.cos(a), *(math.sin(a) * n))


def drop_poses(num_drops: int) -> list[tuple[tuple[float, float, float, float], str]]:
    """Starting orientations: upright, then tilted 5 or 8 degrees about horizontal axes going round.

    Small tilts on purpose: a tall vase on a narrow foot rightly falls when tilted past its tipping
    angle (about 10 degrees for the test vase), which says nothing about the asset's quality."""
    # Not exactly upright: a perfectly symmetric drop balances even a cone on its tip forever.
    poses = [(_quat((1.0, 1.0, 0.0), 1.0), "upright (1 deg off)")]
    for i in range(1, num_drops):
        yaw = 360.0 * (i - 1) / max(1, num_drops - 1)
        axis = (math.cos(math.radians(yaw)), math.sin(math.radians(yaw)), 0.0)
        tilt = 5.0 + 3.0 * ((i - 1) % 2)
        poses.append((_quat(axis, tilt), f"tilted {tilt:.0f} deg about the axis at {yaw:.0f} deg"))
    return poses


def _lowest_point(vertices: np.ndarray, quat: tuple[float, float, float, float]) -> float:
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, np.asarray(quat, dtype=float))
    return float((vertices @ mat.reshape(3, 3).T)[:, 2].min())


def simulate(
    xml: str, *, body_names: list[str], sim_s: float, start_z: dict[str, float]
) -> tuple[bool, str, float, float]:
    """Run one world; (stable, why not, rest penetration, max penetration)."""
    model = mujoco.MjModel.from_xml_string(xml)
    data = mujoco.MjData(model)
    ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, n) for n in body_names]
    steps = int(sim_s / model.opt.timestep)
    rest_from = steps - int(0.2 / model.opt.timestep)
    max_pen = rest_pen = 0.0
    for step in range(steps):
        mujoco.mj_step(model, data)
        if data.ncon:
            depth = float(max(0.0, -data.contact.dist[: data.ncon].min()))
            max_pen = max(max_pen, depth)
            if step >= rest_from:
                rest_pen = max(rest_pen, depth)
        if not np.all(np.isfinite(data.qpos)):
            return False, "simulation went non-finite (exploded)", rest_pen, max_pen
    for name, bid in zip(body_names, ids, strict=True):
        pos = data.xpos[bid]
        up = data.xmat[bid].reshape(3, 3)[:, 2]
        tilt = math.degrees(math.acos(max(-1.0, min(1.0, float(up[2])))))
        vel = np.zeros(6)
        mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_BODY, bid, vel, 0)
        speed = float(np.linalg.norm(vel[3:]))
        if pos[2] > start_z[name] + 0.5 or np.linalg.norm(pos[:2]) > 5.0:
            return False, f"{name} flew off (exploded)", rest_pen, max_pen
        if speed > REST_SPEED_M_S:
            return False, f"{name} still moving at {speed:.3f} m/s", rest_pen, max_pen
        if tilt > UPRIGHT_DEG:
            return False, f"{name} came to rest tilted {tilt:.0f} deg (not upright)", rest_pen, max_pen
    if rest_pen > REST_PENETRATION_M:
        return False, f"sinks {1000 * rest_pen:.1f} mm at rest", rest_pen, max_pen
    return True, "", rest_pen, max_pen


def drop_test(
    obj: ExportedObject, folder: Path, *, num_drops: int = 5, height_m: float = 0.02, sim_s: float = 2.0
) -> DropResult:
    """Drop one exported object (files in ``folder``) from ``num_drops`` poses."""
    stable, failures, rest, impact = 0, [], 0.0, 0.0
    for quat, label in drop_poses(num_drops):
        z = height_m - _lowest_point(obj.hull_vertices_m, quat)
        xml = mjcf([(obj, Placement((0.0, 0.0, z), quat))], model="drop", floor=True, asset_dir=folder.resolve())
        ok, why, rest_pen, max_pen = simulate(xml, body_names=[obj.name], sim_s=sim_s, start_z={obj.name: z})
        stable += ok
        rest, impact = max(rest, rest_pen), max(impact, max_pen)
        if not ok:
            failures.append(f"{label}: {why}")
    return DropResult(num_drops, stable, rest, impact, failures)


def scene_drop_test(objects: list[tuple[ExportedObject, Placement]], folder: Path, *, sim_s: float = 2.0) -> DropResult:
    """Let an assembled scene settle from its layout (objects lifted 5 mm) and check every object."""
    lifted = [(o, Placement((p.pos[0], p.pos[1], p.pos[2] + 0.005), p.quat)) for o, p in objects]
    xml = mjcf(lifted, model="scene_drop", floor=True, asset_dir=folder.resolve())
    ok, why, rest_pen, max_pen = simulate(
        xml, body_names=[o.name for o, _ in lifted], sim_s=sim_s, start_z={o.name: p.pos[2] for o, p in lifted}
    )
    return DropResult(1, int(ok), rest_pen, max_pen, [] if ok else [why])


def load_check(xml_text: str) -> None:
    """Compile an MJCF document (raises on error); used before writing one."""
    with tempfile.TemporaryDirectory():
        mujoco.MjModel.from_xml_string(xml_text)


@dataclass
class FrontView:
    """The exported asset seen through the input camera, against the input."""

    silhouette_iou: float
    """IoU of the rendered silhouette and the input mask."""
    texture_error: float
    """Mean absolute colour error (0 to 1) of the render inside the mask, where the render covers it."""
    flat_colour_error: float
    """The same error for the asset painted in the object's mean colour (what a texture must beat)."""
    coverage: float
    """Share of the mask's pixels the render covers."""


def front_view(
    glb_path: Path,
    to_image_frame: Callable[[np.ndarray], np.ndarray],
    origin_col: float,
    origin_row: float,
    rgb: np.ndarray,
    mask: np.ndarray,
) -> FrontView:
    """Render the GLB at ``glb_path`` from the input camera and compare it with ``rgb`` and ``mask``.

    ``to_image_frame`` maps the file's vertices into the geometry's image frame (pixel units, see
    ``geometry``), where ``origin_col`` and ``origin_row`` place it on the image.
    """
    mesh = trimesh.load(glb_path, force="mesh", process=False)
    visual = getattr(mesh, "visual", None)
    material = getattr(visual, "material", None)
    if (
        not isinstance(mesh, trimesh.Trimesh)
        or not isinstance(visual, trimesh.visual.TextureVisuals)
        or not isinstance(material, trimesh.visual.material.PBRMaterial)
    ):
        raise FailedPrecondition(f"{glb_path.name} reloads without a PBR-textured mesh")
    vertices = to_image_frame(np.asarray(mesh.vertices, dtype=np.float64))
    albedo = np.asarray(material.baseColorTexture.convert("RGB"))
    if material.baseColorFactor is not None:
        factor = np.asarray(material.baseColorFactor[:3], dtype=np.float32) / 255.0
        albedo = np.clip(albedo * factor, 0, 255).astype(np.uint8)
    rendered, covered = render_front(
        vertices, np.asarray(mesh.faces), np.asarray(visual.uv), albedo, origin_col, origin_row, mask.shape
    )
    flat = np.empty_like(rendered)
    flat[:] = np.rint(rgb[mask][:, :3].mean(axis=0)).astype(np.uint8)
    return FrontView(
        silhouette_iou=iou(covered, mask),
        texture_error=colour_error(rendered, covered, rgb, mask),
        flat_colour_error=colour_error(flat, covered, rgb, mask),
        coverage=float((covered & mask).sum() / max(1, mask.sum())),
    )
