"""The rest pose: the orientation an asset is exported in, chosen so that it stands in it.

An object stands when its centre of mass sits over its support polygon (the convex hull of what
touches the floor) with a margin; the *tipping angle* ``atan(margin / height of the centre of mass)``
is how far it can be tilted and still fall back. The geometry's upright pose (as photographed, base
at z = 0) is kept when its tipping angle reaches ``MIN_TIP_DEG``. Otherwise the base is first cut
higher, a little at a time up to ``MAX_TRIM_FRACTION`` of the height, which widens the footprint
(a ball gets a flat spot, a vase a wider foot) while the object stays upright as photographed. When
no such cut is enough (an inflated horse stands on four knife-thin legs) the object is laid on its
front or back (where an inflated outline is flattest) or on one of the best faces of its convex hull,
with that side cut flat the same way: the pose it would come to rest in is made the pose it is
exported and declared in, with its rotation from the image frame in the report. Cuts never change
the front silhouette when the object lies on its back, and change it by a sliver at the base otherwise.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import manifold3d
import numpy as np
import trimesh
from scipy.spatial import ConvexHull, QhullError

logger = logging.getLogger(__name__)

MIN_TIP_DEG = 9.0
"""Tipping angle a rest pose must reach (the drop test tilts objects by up to 8 degrees). Not more:
a wide, round flat base cut into a tall body wobbles like a spun coin for longer than the drop lasts."""
MAX_TRIM_FRACTION = 0.08
"""Most of the height the base may be cut to widen it."""
NUM_TRIM_STEPS = 16
"""Cut heights tried up to the largest."""
NUM_TURNS = 6
"""Faces of the convex hull tried as the side to lie on (besides front and back)."""


@dataclass
class RestPose:
    """The mesh as exported (z up, base at z = 0) and how it was derived from the image-frame mesh."""

    mesh: trimesh.Trimesh
    """The image-frame mesh (as photographed), with the side it rests on cut ``trim_px`` flat if needed."""
    trim_px: float
    """How much was cut off the side it rests on, in the geometry's units (image pixels)."""
    rotation: np.ndarray
    """3 x 3 rotation from the (trimmed) image frame to the rest frame; the identity when upright."""
    translation: np.ndarray
    """Added after the rotation: puts the base at z = 0 (and, when turned, the footprint's centre at x = y = 0)."""
    tipping_angle_deg: float
    upright_tipping_angle_deg: float
    """The tipping angle of the geometry as built, before any cut or turn."""
    notes: list[str] = field(default_factory=list)

    @property
    def reoriented(self) -> bool:
        """Whether the rest pose differs from the upright, photographed one."""
        return not np.allclose(self.rotation, np.eye(3))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Image-frame points in the rest frame."""
        return np.asarray(points) @ self.rotation.T + self.translation

    def unapply(self, points: np.ndarray) -> np.ndarray:
        """Rest-frame points back in the image frame (the inverse of ``apply``)."""
        return (np.asarray(points) - self.translation) @ self.rotation

    def quaternion(self) -> tuple[float, float, float, float]:
        """The rotation as a (w, x, y, z) quaternion."""
        m = np.eye(4)
        m[:3, :3] = self.rotation
        w, x, y, z = trimesh.transformations.quaternion_from_matrix(m)
        return float(w), float(x), float(y), float(z)


def centre_of_mass(mesh: trimesh.Trimesh, hollow: bool) -> np.ndarray:
    """Centre of mass of a solid, or of a thin shell of even thickness (the surface's centroid)."""
    if hollow:
        tri = np.asarray(mesh.triangles)
        area = np.asarray(mesh.area_faces)
        return np.asarray((tri.mean(axis=1) * area[:, None]).sum(axis=0) / area.sum())
    return np.asarray(mesh.center_mass)


def polygon_margin(points_2d: np.ndarray, point: np.ndarray) -> float:
    """Distance from ``point`` inside the convex hull of ``points_2d`` to its boundary (negative outside)."""
    try:
        hull = ConvexHull(points_2d)
    except (QhullError, ValueError):
        return 0.0  # fewer than three points, or all on a line: no area to stand on
    normals, offsets = hull.equations[:, :2], hull.equations[:, 2]
    return float(-(normals @ point + offsets).max())


def tipping_angle_deg(vertices: np.ndarray, com: np.ndarray, tolerance: float) -> float:
    """Tipping angle of an object resting on z = min z (the support: points within ``tolerance`` of it)."""
    zmin = float(vertices[:, 2].min())
    support = vertices[vertices[:, 2] <= zmin + tolerance][:, :2]
    margin = polygon_margin(support, com[:2])
    return math.degrees(math.atan2(margin, max(float(com[2]) - zmin, 1e-9)))


def trim_base(mesh: trimesh.Trimesh, height: float) -> trimesh.Trimesh | None:
    """``mesh`` with everything below z = ``height`` cut off (nothing moved); None if that breaks it."""
    solid = manifold3d.Manifold(
        manifold3d.Mesh(
            vert_properties=np.asarray(mesh.vertices, dtype=np.float32),
            tri_verts=np.asarray(mesh.faces, dtype=np.uint32),
        )
    )
    if solid.status() != manifold3d.Error.NoError:
        return None
    cut = solid.trim_by_plane((0.0, 0.0, 1.0), float(height))
    if cut.is_empty():
        return None
    m = cut.to_mesh()
    # Not merged by position: where two parts of the surface touch, manifold3d keeps distinct vertices
    # and merging them would make the mesh non-manifold.
    out = trimesh.Trimesh(np.asarray(m.vert_properties)[:, :3], np.asarray(m.tri_verts), process=False)
    out.remove_unreferenced_vertices()
    if not (out.is_watertight and out.is_volume):
        return None
    return out


def _section_points(mesh: trimesh.Trimesh, height: float) -> np.ndarray:
    """Points of the mesh's cross-section at z = ``height`` (the footprint a cut there leaves)."""
    lines = trimesh.intersections.mesh_plane(mesh, [0.0, 0.0, 1.0], [0.0, 0.0, height])
    return np.asarray(lines).reshape(-1, 3)


def hull_rest_faces(mesh: trimesh.Trimesh, com: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """(tipping angle in degrees, outward unit normal) of every face of the convex hull, best first."""
    hull = mesh.convex_hull
    vertices = np.asarray(hull.vertices)
    faces = np.asarray(hull.faces)
    normals = np.asarray(hull.face_normals)
    groups: list[np.ndarray] = [np.asarray(f) for f in hull.facets]
    in_facet = np.zeros(len(faces), dtype=bool)
    for g in groups:
        in_facet[g] = True
    groups += [np.array([i]) for i in np.flatnonzero(~in_facet)]
    out = []
    for group in groups:
        n = normals[group[0]]
        pts = vertices[np.unique(faces[group])]
        height = float(n @ (pts[0] - com))
        if height <= 0:
            continue
        # Coordinates in the face's plane: two axes perpendicular to n.
        u = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0])
        u /= np.linalg.norm(u)
        v = np.cross(n, u)
        margin = polygon_margin(np.stack([pts @ u, pts @ v], axis=1), np.array([com @ u, com @ v]))
        out.append((math.degrees(math.atan2(margin, height)), n))
    out.sort(key=lambda t: -t[0])
    return out


def _rotation_onto(n: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector ``n`` onto unit vector ``target``."""
    axis = np.cross(n, target)
    s, c = float(np.linalg.norm(axis)), float(n @ target)
    if s < 1e-9:
        if c > 0:
            return np.eye(3)
        # Half a turn about any axis perpendicular to n.
        perp = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0])
        perp /= np.linalg.norm(perp)
        return 2.0 * np.outer(perp, perp) - np.eye(3)
    k = axis / s
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * kx + (1 - c) * (kx @ kx)


def widen_base(mesh: trimesh.Trimesh, *, hollow: bool, tolerance: float) -> tuple[trimesh.Trimesh, float, float]:
    """(mesh, cut height, tipping angle): ``mesh`` (resting on its lowest point) as it is when it stands
    well enough, else cut at the lowest height that makes it, else as it is. Nothing is moved."""
    zmin = float(mesh.bounds[0, 2])
    height = float(mesh.extents[2])
    com = centre_of_mass(mesh, hollow)
    angle = tipping_angle_deg(np.asarray(mesh.vertices), com, tolerance)
    if angle >= MIN_TIP_DEG:
        return mesh, 0.0, angle
    for step in range(1, NUM_TRIM_STEPS + 1):
        cut = MAX_TRIM_FRACTION * height * step / NUM_TRIM_STEPS
        section = _section_points(mesh, zmin + cut)
        if len(section) < 3:
            continue
        margin = polygon_margin(section[:, :2], com[:2])
        if math.degrees(math.atan2(margin, max(float(com[2]) - zmin - cut, 1e-9))) < MIN_TIP_DEG:
            continue
        trimmed = trim_base(mesh, zmin + cut)
        if trimmed is None:
            continue
        trimmed_angle = tipping_angle_deg(np.asarray(trimmed.vertices), centre_of_mass(trimmed, hollow), tolerance)
        if trimmed_angle >= MIN_TIP_DEG:
            return trimmed, cut, trimmed_angle
    return mesh, 0.0, angle


def choose_rest_pose(mesh: trimesh.Trimesh, *, hollow: bool, allow_turn: bool = True) -> RestPose:
    """The pose ``mesh`` (image frame: z up, base at z = 0) is exported in (see the module docstring).

    ``allow_turn`` False keeps the object upright (a table in a scene must keep its top up) and only
    cuts the base.
    """
    tolerance = 0.005 * float(max(mesh.extents))
    upright = tipping_angle_deg(np.asarray(mesh.vertices), centre_of_mass(mesh, hollow), tolerance)
    widened, cut, angle = widen_base(mesh, hollow=hollow, tolerance=tolerance)
    notes = []
    if cut > 0:
        notes.append(
            f"base cut {100 * cut / float(mesh.extents[2]):.1f}% higher to widen it: tipping angle "
            f"{upright:.1f} -> {angle:.1f} deg"
        )
    best = RestPose(widened, cut, np.eye(3), np.array([0.0, 0.0, -cut]), angle, upright, notes)
    if angle >= MIN_TIP_DEG:
        return best
    if not allow_turn:
        best.notes.append(f"stands only {angle:.1f} deg from tipping over but must stay upright (it supports others)")
        return best
    # Lying on its front or back (an inflated outline is flattest there), or on the hull's best faces.
    normals = [np.array([0.0, -1.0, 0.0]), np.array([0.0, 1.0, 0.0])]
    normals += [n for _, n in hull_rest_faces(mesh, centre_of_mass(mesh, hollow))[:NUM_TURNS]]
    for normal in normals:
        rotation = _rotation_onto(normal, np.array([0.0, 0.0, -1.0]))
        turned = mesh.copy()
        turned.apply_transform(_homogeneous(rotation))
        turned_cut, cut, angle = widen_base(turned, hollow=hollow, tolerance=tolerance)
        if angle <= best.tipping_angle_deg + 1e-6:
            continue
        lo, hi = turned_cut.bounds
        translation = np.array([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]])
        back = turned_cut.copy()
        back.apply_transform(_homogeneous(rotation.T))
        tilt = math.degrees(math.acos(max(-1.0, min(1.0, float(-normal[2])))))
        note = (
            f"upright it tips over at {upright:.1f} deg; exported lying on another side (turned {tilt:.0f} deg "
            f"from the photographed pose{f', that side cut {cut:.1f} px flat' if cut else ''}; tipping angle "
            f"{angle:.1f} deg)"
        )
        best = RestPose(back, cut, rotation, translation, angle, upright, [note])
        if angle >= MIN_TIP_DEG:
            break
    return best


def _homogeneous(rotation: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rotation
    return out
