"""Stage 2: a watertight mesh consistent with the silhouette, without learned weights.

A symmetric outline without holes becomes a surface of revolution; anything else (a mug's handle, a
ring, a kettle's spout) becomes an inflation of the outline: a smooth height field from a Poisson
equation (a distance transform leaves creases), mirrored front to back, with a flat base so the
object stands. Both are signed fields sampled on a voxel grid and turned into a mesh by marching
cubes, which is closed by construction; Taubin smoothing keeps it closed; manifold3d's simplification
keeps it manifold (quadric decimation does not).

The mesh is in the image's pixel units: x to the right, z up (the base at z = 0), y away from the
camera; image column = x + ``origin_col``, row = ``origin_row`` - z.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import manifold3d
import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import trimesh
from PIL import Image
from scipy import ndimage
from skimage import measure

from services.common.errors import FailedPrecondition

logger = logging.getLogger(__name__)

SYMMETRY_IOU = 0.93
"""A mask at least this similar to its mirror image (and without holes) is revolved."""


@dataclass
class Geometry:
    """The mesh in image pixel units and how it maps back onto the image."""

    mesh: trimesh.Trimesh
    method: str
    """"revolution" or "inflation"."""
    origin_col: float
    """Image column of x = 0."""
    origin_row: float
    """Image row of z = 0 (the base)."""
    symmetry_iou: float
    """How similar the mask is to its mirror image about the best vertical axis."""
    notes: list[str] = field(default_factory=list)


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Distance to the outline in pixels: positive inside, negative outside."""
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return (inside - outside).astype(np.float32)


def mirror_iou(mask: np.ndarray) -> tuple[float, float]:
    """The best vertical mirror axis (a column, maybe half-integer) and the mask's IoU with its mirror."""
    cols = np.nonzero(mask.any(axis=0))[0]
    centre2 = cols.min() + cols.max()  # twice the centre column
    best = (0.0, centre2 / 2.0)
    w = mask.shape[1]
    for c2 in range(centre2 - 6, centre2 + 7):
        idx = c2 - np.arange(w)
        valid = (idx >= 0) & (idx < w)
        mirrored = np.zeros_like(mask)
        mirrored[:, valid] = mask[:, idx[valid]]
        union = np.logical_or(mask, mirrored).sum()
        iou = float(np.logical_and(mask, mirrored).sum() / union) if union else 0.0
        if iou > best[0]:
            best = (iou, c2 / 2.0)
    return best[1], best[0]


def has_holes(mask: np.ndarray) -> bool:
    """Whether the mask encloses background (a handle's hole, a ring's middle)."""
    return bool((ndimage.binary_fill_holes(mask) & ~mask).any())


def poisson_height(mask: np.ndarray, flat_top: bool = False) -> np.ndarray:
    """Height field over ``mask`` whose square solves lap(phi) = -4 with phi = 0 on the outline.

    Nearly a hemisphere over a disc (see the 0.8 below). The mask is mirrored below its lowest row first, so the
    base has a zero slope (a flat, thick foot) instead of a knife edge; with ``flat_top`` it is mirrored
    above its highest row too (a flat top for things to stand on, e.g. a table).
    """
    rows = np.nonzero(mask.any(axis=1))[0]
    top, base = rows.min(), rows.max()
    body = mask[top : base + 1]
    ext = np.vstack([body[::-1], body, body[::-1]]) if flat_top else np.vstack([body, body[::-1]])
    h, w = ext.shape
    idx = -np.ones(ext.shape, dtype=np.int64)
    inside = np.flatnonzero(ext.ravel())
    idx.ravel()[inside] = np.arange(inside.size)
    n = inside.size
    r, c = np.divmod(inside, w)
    rows_l: list[np.ndarray] = [np.arange(n)]
    cols_l: list[np.ndarray] = [np.arange(n)]
    vals_l: list[np.ndarray] = [np.full(n, 4.0)]
    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        rr, cc = r + dr, c + dc
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        nb = np.full(n, -1)
        nb[ok] = idx[rr[ok], cc[ok]]
        has = nb >= 0
        rows_l.append(np.flatnonzero(has))
        cols_l.append(nb[has])
        vals_l.append(np.full(int(has.sum()), -1.0))
    a = scipy.sparse.csr_matrix(
        (np.concatenate(vals_l), (np.concatenate(rows_l), np.concatenate(cols_l))), shape=(n, n)
    )
    phi = scipy.sparse.linalg.spsolve(a.tocsc(), np.full(n, 4.0))
    out = np.zeros(ext.shape, dtype=np.float64)
    out.ravel()[inside] = np.maximum(phi, 0.0)
    start = len(body) if flat_top else 0
    out = out[start : start + len(body)]
    height = np.zeros(mask.shape, dtype=np.float32)
    # sqrt(phi) is a sphere over a disc but 1.4x too deep over a long strip (the mirrored base makes
    # most bodies strip-like); 0.8 splits the difference.
    height[top : base + 1] = 0.8 * np.sqrt(out)
    return height


def _sample(field2d: np.ndarray, rows: np.ndarray, cols: np.ndarray, outside: float) -> np.ndarray:
    return ndimage.map_coordinates(field2d, [rows, cols], order=1, mode="constant", cval=outside)


def build_geometry(
    mask: np.ndarray, *, resolution: int = 96, work_px: int = 192, max_faces: int = 6000, flat_top: bool = False
) -> Geometry:
    """A watertight mesh whose front silhouette is ``mask`` (see the module docstring).

    ``resolution`` is the number of voxels along the mask's longer side; ``work_px`` the side of the
    working copy of the mask the fields are computed on; ``max_faces`` bounds the simplified mesh;
    ``flat_top`` cuts the top flat (supports such as tables; inflation only).
    """
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = max(r1 - r0, c1 - c0)
    scale = min(1.0, work_px / side)  # working pixels per image pixel
    crop = mask[r0:r1, c0:c1]
    if scale < 1.0:
        size = (max(2, round(crop.shape[1] * scale)), max(2, round(crop.shape[0] * scale)))
        crop = np.asarray(Image.fromarray(crop.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)) > 127
        scale_r = crop.shape[0] / (r1 - r0)
        scale_c = crop.shape[1] / (c1 - c0)
    else:
        scale_r = scale_c = 1.0
    pad = 4
    work = np.pad(crop, pad)
    sdf = signed_distance(work)
    axis, sym_iou = mirror_iou(work)
    holes = has_holes(work)
    method = "revolution" if sym_iou >= SYMMETRY_IOU and not holes else "inflation"
    wrows = np.nonzero(work.any(axis=1))[0]
    base_row = wrows.max() + 0.5  # the outline's bottom edge, in working pixels
    top_row = wrows.min() - 0.5
    wcols = np.nonzero(work.any(axis=0))[0]
    voxel = max(work.shape) / resolution
    zs = np.arange(-2 * voxel, base_row - top_row + 2 * voxel, voxel)
    notes: list[str] = []
    if method == "revolution":
        radius = max(axis - wcols.min() + 0.5, wcols.max() + 0.5 - axis)
        xs = np.arange(-radius - 2 * voxel, radius + 2 * voxel, voxel)
        ys = xs
        x, y, z = np.meshgrid(xs, ys, zs, indexing="ij")
        r = np.sqrt(x * x + y * y)
        row = base_row - z
        left = _sample(sdf, row, axis - r, -voxel * 4)
        right = _sample(sdf, row, axis + r, -voxel * 4)
        vol = 0.5 * (left + right)
        origin_col_w = axis
    else:
        height = poisson_height(work, flat_top)
        g = np.where(work, height, sdf)
        depth = float(height.max())
        xs = np.arange(wcols.min() - 0.5 - 2 * voxel, wcols.max() + 0.5 + 2 * voxel, voxel)
        ys = np.arange(-depth - 2 * voxel, depth + 2 * voxel, voxel)
        x, y, z = np.meshgrid(xs, ys, zs, indexing="ij")
        vol = _sample(g, base_row - z, x, -voxel * 4) - np.abs(y)
        origin_col_w = 0.5 * (wcols.min() + wcols.max())
        x = x - origin_col_w
        xs = xs - origin_col_w
    # A slight blur removes one-voxel bridges where marching cubes would make non-manifold edges;
    # the base (and a flat top) are cut after it, so they stay sharp and flat.
    vol = ndimage.gaussian_filter(vol, 0.6)
    vol = np.minimum(vol, z)  # the flat base at z = 0
    if flat_top and method == "inflation":
        vol = np.minimum(vol, (base_row - top_row) - z)
    vol = vol.astype(np.float32)
    vol = np.pad(vol, 1, constant_values=-voxel)
    if vol.max() <= 0:
        raise FailedPrecondition("the outline is too thin to build a solid at this resolution")
    verts, faces, _, _ = measure.marching_cubes(vol, level=0.0, spacing=(voxel, voxel, voxel))
    verts += np.array([xs[0] - voxel, ys[0] - voxel, zs[0] - voxel])
    mesh = trimesh.Trimesh(verts, faces, process=True)
    if not mesh.is_watertight:
        # Keep the closed pieces; open slivers (touching voxel corners) carry no volume.
        pieces = [p for p in mesh.split(only_watertight=False) if p.is_watertight]
        if not pieces:
            raise FailedPrecondition("marching cubes gave no closed surface for this outline")
        dropped = len(mesh.faces) - sum(len(p.faces) for p in pieces)
        mesh = trimesh.Trimesh(*_merged(pieces), process=True)
        notes.append(f"{dropped} faces of non-closed slivers dropped from the mesh")
    if mesh.volume < 0:
        mesh.invert()
    trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=-0.53, iterations=8)
    mesh = simplify_manifold(mesh, max_faces=max_faces, tolerance=0.25 * voxel)
    # Back to image pixels: x and z scale by the working factor of their image axis, y like x.
    mesh.apply_scale([1.0 / scale_c, 1.0 / scale_c, 1.0 / scale_r])
    zmin = mesh.bounds[0, 2]
    mesh.apply_translation([0.0, 0.0, -zmin])
    origin_col = c0 + (origin_col_w - pad) / scale_c
    origin_row = r0 + (base_row - pad) / scale_r - zmin / 1.0
    if not mesh.is_watertight:
        raise FailedPrecondition("the mesh is not watertight after simplification")
    return Geometry(
        mesh=mesh,
        method=method,
        origin_col=float(origin_col),
        origin_row=float(origin_row),
        symmetry_iou=sym_iou,
        notes=notes,
    )


def simplify_manifold(mesh: trimesh.Trimesh, *, max_faces: int, tolerance: float) -> trimesh.Trimesh:
    """Simplify with manifold3d (which keeps the mesh closed and manifold), coarser until under ``max_faces``.

    Returns the input unchanged when manifold3d rejects it.
    """
    solid = manifold3d.Manifold(
        manifold3d.Mesh(
            vert_properties=np.asarray(mesh.vertices, dtype=np.float32),
            tri_verts=np.asarray(mesh.faces, dtype=np.uint32),
        )
    )
    if solid.status() != manifold3d.Error.NoError or solid.is_empty():
        logger.warning("manifold3d rejected the mesh (%s); left unsimplified", solid.status())
        return mesh
    out = solid
    for _ in range(8):
        out = solid.simplify(tolerance)
        if out.num_tri() <= max_faces:
            break
        tolerance *= 1.6
    m = out.to_mesh()
    result = trimesh.Trimesh(np.asarray(m.vert_properties)[:, :3], np.asarray(m.tri_verts), process=True)
    if not result.is_watertight or result.volume <= 0:
        logger.warning("simplification lost watertightness; left unsimplified")
        return mesh
    return result


def _merged(pieces: list[trimesh.Trimesh]) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and faces of several meshes as one."""
    offsets = np.cumsum([0] + [len(p.vertices) for p in pieces[:-1]])
    vertices = np.vstack([p.vertices for p in pieces])
    faces = np.vstack([np.asarray(p.faces) + o for p, o in zip(pieces, offsets, strict=True)])
    return vertices, faces
