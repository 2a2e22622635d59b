"""Stage 5: GLB (PBR), OBJ + MTL, URDF and MJCF files of an asset, and a check that each reloads.

Every file of an object starts with its name (``mug.glb``, ``mug_albedo.png``, ``mug_hull_00.stl``),
so several objects share one folder (a scene) without one texture overwriting another; the OBJ and
MTL are written here rather than by trimesh, which names every texture ``material_0.png``.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from PIL import Image

from services.common.errors import FailedPrecondition
from services.gen3d.physics import Physics
from services.gen3d.texture import Textured, visual_mesh

FRICTION = (0.9, 0.005, 0.0001)
"""MuJoCo friction of every collision geom: sliding, torsional, rolling."""


@dataclass
class ExportedObject:
    """What the scene and drop-test builders need to place an exported object."""

    name: str
    visual_file: str
    """OBJ of the visual mesh, relative to the folder."""
    albedo_file: str
    hull_files: list[str]
    mass_kg: float
    center_of_mass_m: np.ndarray
    inertia_kg_m2: np.ndarray
    hull_vertices_m: np.ndarray
    """Every collision hull vertex, in the object's frame (for placing and drop heights)."""


def _fmt(values: np.ndarray | list[float] | tuple[float, ...]) -> str:
    return " ".join(f"{float(v):.9g}" for v in values)


def write_obj(
    folder: Path, name: str, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, textured: Textured
) -> list[str]:
    """Write ``name``.obj/.mtl and its texture PNGs; returns the file names written."""
    albedo, normal, rough = f"{name}_albedo.png", f"{name}_normal.png", f"{name}_roughness.png"
    Image.fromarray(textured.albedo).save(folder / albedo)
    Image.fromarray(textured.normal).save(folder / normal)
    Image.fromarray(textured.metallic_roughness[..., 1]).save(folder / rough)
    (folder / f"{name}.mtl").write_text(
        f"newmtl {name}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 2\n"
        f"Pr {textured.roughness:.3f}\nPm {textured.metallic:.3f}\n"
        f"map_Kd {albedo}\nmap_Pr {rough}\nnorm {normal}\nmap_Bump {normal}\n"
    )
    lines = [f"mtllib {name}.mtl", f"o {name}"]
    lines += [f"v {x:.7g} {y:.7g} {z:.7g}" for x, y, z in vertices]
    lines += [f"vt {u:.7g} {v:.7g}" for u, v in uv]
    lines.append(f"usemtl {name}")
    lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in faces + 1]
    (folder / f"{name}.obj").write_text("\n".join(lines) + "\n")
    return [f"{name}.obj", f"{name}.mtl", albedo, normal, rough]


def write_object(folder: Path, name: str, textured: Textured, physics: Physics) -> tuple[ExportedObject, list[str]]:
    """Write the GLB, OBJ + MTL + textures and collision hulls (STL) of one object, in metres."""
    folder.mkdir(parents=True, exist_ok=True)
    k = physics.metres_per_unit
    vertices = textured.vertices * k
    scaled = Textured(**{**textured.__dict__, "vertices": vertices})
    files = write_obj(folder, name, vertices, textured.faces, textured.uv, textured)
    visual_mesh(scaled).export(folder / f"{name}.glb")
    files.append(f"{name}.glb")
    hull_files = []
    for i, hull in enumerate(physics.hulls):
        hull_name = f"{name}_hull_{i:02d}.stl"
        hull.export(folder / hull_name)
        hull_files.append(hull_name)
    files += hull_files
    exported = ExportedObject(
        name=name,
        visual_file=f"{name}.obj",
        albedo_file=f"{name}_albedo.png",
        hull_files=hull_files,
        mass_kg=physics.mass_kg,
        center_of_mass_m=physics.center_of_mass_m,
        inertia_kg_m2=physics.inertia_kg_m2,
        hull_vertices_m=np.vstack([np.asarray(h.vertices) for h in physics.hulls]),
    )
    return exported, files


@dataclass
class Placement:
    """Where an object's frame goes in a world: position (m) and orientation (w, x, y, z quaternion)."""

    pos: tuple[float, float, float]
    quat: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)


def mjcf(
    objects: list[tuple[ExportedObject, Placement]], *, model: str, floor: bool, asset_dir: Path | None = None
) -> str:
    """An MJCF document with each object as a free body; ``floor`` adds a ground plane and light.

    ``asset_dir`` (absolute) replaces the file folder, for documents written elsewhere (drop tests).
    """
    root = ET.Element("mujoco", model=model)
    ET.SubElement(root, "compiler", angle="radian", meshdir=str(asset_dir or "."), texturedir=str(asset_dir or "."))
    ET.SubElement(root, "option", timestep="0.002")
    assets = ET.SubElement(root, "asset")
    world = ET.SubElement(root, "worldbody")
    if floor:
        ET.SubElement(world, "light", pos="0 0 3", dir="0 0 -1", directional="true")
        ET.SubElement(world, "geom", name="floor", type="plane", size="5 5 0.1", friction=_fmt(FRICTION))
    for obj, place in objects:
        ET.SubElement(assets, "texture", name=f"{obj.name}_albedo", type="2d", file=obj.albedo_file)
        ET.SubElement(assets, "material", name=f"{obj.name}_material", texture=f"{obj.name}_albedo")
        ET.SubElement(assets, "mesh", name=f"{obj.name}_visual", file=obj.visual_file)
        for i, hull in enumerate(obj.hull_files):
            ET.SubElement(assets, "mesh", name=f"{obj.name}_hull_{i:02d}", file=hull)
        body = ET.SubElement(world, "body", name=obj.name, pos=_fmt(place.pos), quat=_fmt(place.quat))
        ET.SubElement(body, "freejoint", name=f"{obj.name}_joint")
        i3 = obj.inertia_kg_m2
        ET.SubElement(
            body,
            "inertial",
            pos=_fmt(obj.center_of_mass_m),
            mass=f"{obj.mass_kg:.9g}",
            fullinertia=_fmt([i3[0, 0], i3[1, 1], i3[2, 2], i3[0, 1], i3[0, 2], i3[1, 2]]),
        )
        ET.SubElement(
            body,
            "geom",
            name=f"{obj.name}_visual",
            type="mesh",
            mesh=f"{obj.name}_visual",
            material=f"{obj.name}_material",
            contype="0",
            conaffinity="0",
            group="1",
            mass="0",
        )
        for i in range(len(obj.hull_files)):
            ET.SubElement(
                body,
                "geom",
                name=f"{obj.name}_hull_{i:02d}",
                type="mesh",
                mesh=f"{obj.name}_hull_{i:02d}",
                group="3",
                friction=_fmt(FRICTION),
                mass="0",
                rgba="0.5 0.5 0.5 0.3",
            )
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _quat_to_rpy(q: tuple[float, float, float, float]) -> tuple[float, float, float]:
    w, x, y, z = q
    roll = math.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = math.asin(max(-1.0, min(1.0, 2 * (w * y - z * x))))
    yaw = math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return roll, pitch, yaw


def urdf(objects: list[tuple[ExportedObject, Placement]], *, model: str) -> str:
    """A URDF: one link per object; several objects hang off a ``world`` link by floating joints."""
    robot = ET.Element("robot", name=model)
    several = len(objects) > 1
    if several:
        ET.SubElement(robot, "link", name="world")
    for obj, place in objects:
        link = ET.SubElement(robot, "link", name=obj.name)
        inertial = ET.SubElement(link, "inertial")
        ET.SubElement(inertial, "origin", xyz=_fmt(obj.center_of_mass_m), rpy="0 0 0")
        ET.SubElement(inertial, "mass", value=f"{obj.mass_kg:.9g}")
        i3 = obj.inertia_kg_m2
        ET.SubElement(
            inertial,
            "inertia",
            ixx=f"{i3[0, 0]:.9g}",
            iyy=f"{i3[1, 1]:.9g}",
            izz=f"{i3[2, 2]:.9g}",
            ixy=f"{i3[0, 1]:.9g}",
            ixz=f"{i3[0, 2]:.9g}",
            iyz=f"{i3[1, 2]:.9g}",
        )
        visual = ET.SubElement(link, "visual")
        ET.SubElement(ET.SubElement(visual, "geometry"), "mesh", filename=obj.visual_file)
        for hull in obj.hull_files:
            collision = ET.SubElement(link, "collision")
            ET.SubElement(ET.SubElement(collision, "geometry"), "mesh", filename=hull)
        if several:
            joint = ET.SubElement(robot, "joint", name=f"{obj.name}_joint", type="floating")
            ET.SubElement(joint, "parent", link="world")
            ET.SubElement(joint, "child", link=obj.name)
            ET.SubElement(joint, "origin", xyz=_fmt(place.pos), rpy=_fmt(_quat_to_rpy(place.quat)))
    ET.indent(robot)
    return '<?xml version="1.0"?>\n' + ET.tostring(robot, encoding="unicode") + "\n"


def verify_reload(folder: Path, files: list[str]) -> dict[str, str]:
    """Reload every GLB, OBJ, URDF and MJCF among ``files``; FailedPrecondition naming the first that fails.

    Returns, per file, what was loaded (e.g. "glb: 4096 faces").
    """
    import mujoco

    seen: dict[str, str] = {}
    for name in files:
        path = folder / name
        try:
            if name.endswith((".glb", ".obj")):
                loaded: Any = trimesh.load(path, force="mesh")
                if len(loaded.faces) == 0:
                    raise ValueError("no faces")
                seen[name] = f"{len(loaded.faces)} faces"
            elif name.endswith((".xml", ".urdf")):
                model = mujoco.MjModel.from_xml_path(str(path))
                seen[name] = f"{model.nbody - 1} bodies, {model.ngeom} geoms"
        except Exception as exc:
            raise FailedPrecondition(f"exported {name} does not reload: {exc}") from exc
    return seen
