"""Stage 2: a watertight mesh consistent with the silhouette, without learned weights.

A symmetric outline without holes becomes a surface of revolution; anything else (a mug's handle, a
ring, a kettle's spout) becomes an inflation of the outline: a smooth height field from a Poisson
equation (a distance transform leaves creases), mirrored front to back, with a flat base so the
object stands. Both are signed fields sampled on a voxel grid and turned into a mesh by marching
cubes, which is closed by construction; Taubin smoothing keeps it closed; manifold3d's simplification
keeps it manifold (quadric decimation does not).

The front silhouette is kept to the pixel, thin parts included:

- every field is cut by the outline's signed distance extruded front to back, so the solid never
  pokes past the outline, and marching cubes places the outline's wall with sub-voxel accuracy from a
  true distance rather than from a binary occupancy;
- the surface of revolution revolves the wider of the two half-outlines, so every column of the
  outline is reached before that cut;
- inflated parts get a minimum thickness, so a leg a few pixels wide is still a solid;
- the grid is refined (up to ``MAX_RESOLUTION_FACTOR``) until the thinnest parts that matter span a
  few voxels, judged by morphological openings of the outline (``thin_part_radius``);
- smoothing holds the vertices on the outline's wall in the image plane, and simplification never
  deviates from the surface by more than a couple of voxels (a larger tolerance eats thin parts).

The mesh is in the image's pixel units: x to the right, z up (the base at z = 0), y away from the
camera; image column = x + ``origin_col``, row = ``origin_row`` - z (continuous coordinates: pixel
(r, c) spans columns c..c + 1 and rows r..r + 1).
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
THIN_AREA_FRACTION = 0.01
"""Share of the outline's area that may lie in parts thinner than the voxels resolve."""
VOXELS_PER_THIN_PART = 2.5
"""Voxels across the thinnest parts that matter (see ``thin_part_radius``)."""
MAX_RESOLUTION_FACTOR = 3
"""How much finer than the requested resolution the grid may become for thin parts."""
MAX_VOXELS = 6_000_000
"""Voxels in the grid at most (memory and time); the voxel grows to stay under it."""
MIN_THICKNESS_VOXELS = 1.5
"""Half-thickness, in voxels, an inflated part has at least (at its outline too)."""
RIM_PIN_VOXELS = 0.1
"""Vertices this close to the outline (in voxels, seen from the front) keep their place in the image plane
when the mesh is smoothed."""


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


def poisson_height_px(mask: np.ndarray, work_px: int, flat_top: bool = False) -> np.ndarray:
    """``poisson_height`` of ``mask`` solved on a copy at most ``work_px`` on a side (the solve is the
    costly part), brought back to ``mask``'s size and pixel units."""
    side = max(mask.shape)
    if side <= work_px:
        return poisson_height(mask, flat_top)
    scale = work_px / side
    size = (max(2, round(mask.shape[1] * scale)), max(2, round(mask.shape[0] * scale)))
    small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)) > 127
    if not small.any():
        return np.zeros(mask.shape, dtype=np.float32)
    small_h = Image.fromarray(poisson_height(small, flat_top) / np.float32(scale), mode="F")
    full = np.asarray(small_h.resize((mask.shape[1], mask.shape[0]), Image.Resampling.BILINEAR))
    return np.where(mask, full, 0.0).astype(np.float32)


def _sample(field2d: np.ndarray, rows: np.ndarray, cols: np.ndarray, outside: float) -> np.ndarray:
    """Bilinear samples of ``field2d`` at continuous (row, column) image coordinates (pixel (i, j)
    spans [i, i + 1] x [j, j + 1], so its value sits at (i + 0.5, j + 0.5))."""
    return ndimage.map_coordinates(field2d, [rows - 0.5, cols - 0.5], order=1, mode="constant", cval=outside)


def thin_part_radius(mask: np.ndarray, max_area_fraction: float = THIN_AREA_FRACTION) -> float:
    """Half-width (pixels) of the mask's thinnest parts that matter: the largest radius whose
    morphological opening (the union of inscribed discs of that radius) keeps all but
    ``max_area_fraction`` of the area. Parts thinner than that are a negligible share of the outline."""
    inside = ndimage.distance_transform_edt(mask)
    area = float(mask.sum())
    best = 0.5
    for radius in (0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0, 32.0):
        core = inside > radius
        if not core.any():
            break
        opened = ndimage.distance_transform_edt(~core) <= radius
        if (mask & ~opened).sum() > max_area_fraction * area:
            break
        best = radius
    return best


def choose_voxel(mask: np.ndarray, resolution: int, max_resolution: int) -> float:
    """Voxel edge (pixels): ``resolution`` voxels along the longer side, finer (up to ``max_resolution``)
    until the thinnest parts that matter are at least ``VOXELS_PER_THIN_PART`` voxels across."""
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    side = float(max(np.ptp(rows), np.ptp(cols)) + 1)
    coarse = side / resolution
    finest = side / max(resolution, max_resolution)
    return float(np.clip(2.0 * thin_part_radius(mask) / VOXELS_PER_THIN_PART, finest, coarse))


def build_geometry(
    mask: np.ndarray,
    *,
    resolution: int = 96,
    work_px: int = 192,
    max_faces: int = 6000,
    flat_top: bool = False,
    max_resolution: int | None = None,
) -> Geometry:
    """A watertight mesh whose front silhouette is ``mask`` (see the module docstring).

    ``resolution`` is the number of voxels along the mask's longer side, raised up to
    ``max_resolution`` (default ``MAX_RESOLUTION_FACTOR`` times it) so that thin parts are resolved;
    ``work_px`` the side of the working copy the inflation height is solved on; ``max_faces`` bounds
    the simplified mesh; ``flat_top`` cuts the top flat (supports such as tables; inflation only).
    """
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    pad = 4
    r0, r1 = rows.min() - pad, rows.max() + 1 + pad
    c0, c1 = cols.min() - pad, cols.max() + 1 + pad
    # The crop, padded with background, in image pixels; all coordinates below are continuous image
    # coordinates relative to the crop's top-left corner.
    crop = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    src = mask[max(r0, 0) : r1, max(c0, 0) : c1]
    crop[max(0, -r0) : max(0, -r0) + src.shape[0], max(0, -c0) : max(0, -c0) + src.shape[1]] = src
    sdf = signed_distance(crop)
    axis_index, sym_iou = mirror_iou(crop)
    axis = axis_index + 0.5  # mirror_iou works on pixel indices; this is the continuous column
    holes = has_holes(crop)
    method = "revolution" if sym_iou >= SYMMETRY_IOU and not holes else "inflation"
    base_row = float(pad + rows.max() - rows.min() + 1)  # the outline's bottom edge
    top_row = float(pad)
    left_col, right_col = float(pad), float(pad + cols.max() - cols.min() + 1)
    voxel = choose_voxel(crop, resolution, max_resolution or MAX_RESOLUTION_FACTOR * resolution)
    height_px = base_row - top_row
    notes: list[str] = []
    if method == "revolution":
        radius = max(axis - left_col, right_col - axis)
        extent_x = 2 * radius
        depth = radius
    else:
        height = poisson_height_px(crop, work_px, flat_top)
        # A minimum thickness keeps thin parts (a leg, a handle) solid enough to survive voxelisation.
        min_half_thickness = MIN_THICKNESS_VOXELS * voxel
        height = np.where(crop, np.sqrt(height * height + min_half_thickness**2), 0.0).astype(np.float32)
        extent_x = right_col - left_col
        depth = float(height.max())
    # A grid over the voxel budget (a large revolved object refined for a thin part) is made coarser.
    num_voxels = (extent_x / voxel + 5) * (2 * depth / voxel + 5) * (height_px / voxel + 5)
    if num_voxels > MAX_VOXELS:
        voxel *= (num_voxels / MAX_VOXELS) ** (1 / 3)
    # Half a voxel off z = 0, so that no sample lies exactly on the base (zero samples give degenerate faces).
    zs = np.arange(-1.5 * voxel, height_px + 2 * voxel, voxel)
    row = base_row - zs  # image row of each z
    if method == "revolution":
        xs = np.arange(-radius - 2 * voxel, radius + 2 * voxel, voxel)
        ys = xs
        r = np.sqrt(xs[:, None] ** 2 + ys[None, :] ** 2)[:, :, None]
        rows3 = np.broadcast_to(row[None, None, :], (len(xs), len(ys), len(zs)))
        cols_l = np.broadcast_to(axis - r, rows3.shape)
        cols_r = np.broadcast_to(axis + r, rows3.shape)
        # The union of the left and the right half revolved, so that every column of the outline is
        # reached; the cut by the extruded outline below then gives back its exact front silhouette.
        body = np.maximum(_sample(sdf, rows3, cols_l, -4 * voxel), _sample(sdf, rows3, cols_r, -4 * voxel))
        origin_col = axis
    else:
        origin_col = 0.5 * (left_col + right_col)
        xs = np.arange(left_col - 2 * voxel, right_col + 2 * voxel, voxel) - origin_col
        ys = np.arange(-depth - 2 * voxel, depth + 2 * voxel, voxel)
        rr, cc = np.meshgrid(row, xs + origin_col, indexing="ij")
        h2 = _sample(height, rr, cc, 0.0).T  # (x, z)
        body = h2[:, None, :] - np.abs(ys)[None, :, None]
    rr, cc = np.meshgrid(row, xs + origin_col, indexing="ij")
    extruded = _sample(sdf, rr, cc, -4 * voxel).T[:, None, :]  # (x, 1, z): the outline extruded along y
    vol = np.minimum(body, extruded)
    vol = np.minimum(vol, zs[None, None, :])  # the flat base at z = 0
    if flat_top and method == "inflation":
        vol = np.minimum(vol, height_px - zs[None, None, :])
    vol = vol.astype(np.float32)
    # Samples on or next to the level (a pixel edge met exactly by a grid line) put marching-cubes
    # vertices of several cube edges on one grid point: zero-area pieces and coincident vertices. A
    # nudge off the level (a thousandth of a voxel) settles which side they are on.
    eps = np.float32(1e-3 * voxel)
    near = np.abs(vol) < eps
    vol[near] = np.where(vol[near] > 0, eps, -eps)
    vol = np.pad(vol, 1, constant_values=-voxel)
    if vol.max() <= 0:
        raise FailedPrecondition("the outline is too thin to build a solid at this resolution")
    verts, faces, _, _ = measure.marching_cubes(vol, level=0.0, spacing=(voxel, voxel, voxel))
    verts += np.array([xs[0] - voxel, ys[0] - voxel, zs[0] - voxel])
    # Not merged by position: marching cubes already shares vertices, and merging two that merely
    # coincide would pinch the surface.
    mesh = trimesh.Trimesh(verts, faces, process=False)
    if not mesh.is_watertight:
        # Keep the closed pieces; open slivers (touching voxel corners) carry no volume.
        pieces = [p for p in mesh.split(only_watertight=False) if p.is_watertight]
        if not pieces:
            raise FailedPrecondition("marching cubes gave no closed surface for this outline")
        dropped = len(mesh.faces) - sum(len(p.faces) for p in pieces)
        mesh = trimesh.Trimesh(*_merged(pieces), process=False)
        notes.append(f"{dropped} faces of non-closed slivers dropped from the mesh")
    if mesh.volume < 0:
        mesh.invert()
    # Vertices on the outline's wall (where the extruded outline bounds the solid) make the front
    # silhouette: smoothing may move them front to back but not across the image plane.
    outline_px = _sample(sdf, base_row - mesh.vertices[:, 2], origin_col + mesh.vertices[:, 0], -4 * voxel)
    smooth_taubin(mesh, pinned_xz=np.abs(outline_px) < RIM_PIN_VOXELS * voxel)
    mesh = simplify_manifold(mesh, max_faces=max_faces, tolerance=0.25 * voxel, max_tolerance=2.0 * voxel)
    zmin = float(mesh.bounds[0, 2])
    mesh.apply_translation([0.0, 0.0, -zmin])
    if not mesh.is_watertight:
        raise FailedPrecondition("the mesh is not watertight after simplification")
    return Geometry(
        mesh=mesh,
        method=method,
        origin_col=float(c0 + origin_col),
        origin_row=float(r0 + base_row - zmin),
        symmetry_iou=sym_iou,
        notes=notes,
    )


def smooth_taubin(
    mesh: trimesh.Trimesh, *, pinned_xz: np.ndarray, iterations: int = 8, lamb: float = 0.5, mu: float = -0.53
) -> None:
    """Taubin smoothing in place (a shrinking step ``lamb`` then an inflating step ``mu``, so the
    volume is kept), with the x and z of ``pinned_xz`` vertices held where they are."""
    laplacian = trimesh.smoothing.laplacian_calculation(mesh)
    vertices = np.array(mesh.vertices, dtype=np.float64)
    free = np.ones_like(vertices)
    free[pinned_xz, 0] = 0.0
    free[pinned_xz, 2] = 0.0
    for i in range(iterations):
        step = lamb if i % 2 == 0 else mu
        vertices += step * free * (laplacian.dot(vertices) - vertices)
    mesh.vertices = vertices


def simplify_manifold(
    mesh: trimesh.Trimesh, *, max_faces: int, tolerance: float, max_tolerance: float | None = None
) -> trimesh.Trimesh:
    """Simplify with manifold3d (which keeps the mesh closed and manifold), coarser until under ``max_faces``.

    The tolerance (the largest surface deviation allowed) starts at ``tolerance`` and grows up to
    ``max_tolerance`` (default 27 times it), never beyond: a large tolerance eats thin parts and
    stretches triangles across gaps. The finest result under ``max_faces`` that keeps the genus (holes
    through the object) wins, then the finest under ``max_faces``, then the one with fewest faces.
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
    genus = solid.genus()
    limit = max_tolerance if max_tolerance is not None else 27.0 * tolerance
    fits: manifold3d.Manifold | None = None  # the finest result under max_faces (holes or not)
    fewest: manifold3d.Manifold | None = None
    out = solid
    while tolerance <= limit * (1 + 1e-9):
        # Each pass starts from the last (much smaller) result: the same tolerance bound, far less work.
        out = out.simplify(tolerance)
        tolerance *= 1.6
        if out.status() != manifold3d.Error.NoError or out.is_empty():
            continue
        if fewest is None or out.num_tri() < fewest.num_tri():
            fewest = out
        if out.num_tri() <= max_faces:
            if out.genus() == genus:
                fits = out
                break
            fits = fits or out
    chosen = fits or fewest
    if chosen is None:
        return mesh
    m = chosen.to_mesh()
    # Not merged by position: manifold3d keeps distinct vertices where two parts of the surface touch.
    result = trimesh.Trimesh(np.asarray(m.vert_properties)[:, :3], np.asarray(m.tri_verts), process=False)
    result.remove_unreferenced_vertices()
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
