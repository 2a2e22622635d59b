"""A small software rasterizer (numpy only): silhouettes, front renders, texture baking and the preview PNG.

No OpenGL is needed (the service runs headless). Coverage follows the usual rasterization rule: a
pixel belongs to a triangle when its centre lies inside it (so a mask is neither grown nor shrunk by
half a pixel along its outline, as outline-drawing polygon fills do). A depth buffer keeps the nearest
surface per pixel, with depth interpolated across each triangle; colours come from the UVs
interpolated with perspective-free barycentric weights and a bilinear texture lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

CHUNK_CANDIDATES = 2_000_000
"""Candidate (triangle, pixel) pairs tested at once; bounds the rasterizer's memory."""


@dataclass
class Raster:
    """Which triangle covers each pixel, and where in it the pixel centre lies."""

    face: np.ndarray
    """H x W triangle index, -1 where no triangle covers the pixel."""
    bary: np.ndarray
    """H x W x 3 barycentric weights of the pixel centre in its triangle (zeros where uncovered)."""

    @property
    def covered(self) -> np.ndarray:
        """H x W boolean coverage."""
        return self.face >= 0


def rasterize(points: np.ndarray, faces: np.ndarray, size: tuple[int, int], depth: np.ndarray | None = None) -> Raster:
    """Rasterize triangles given in pixel coordinates (x = column, y = row; pixel (r, c) spans
    [c, c + 1] x [r, r + 1]) onto a ``size`` = (W, H) grid. With ``depth`` (per vertex, smaller is
    nearer) the nearest triangle wins each pixel; without it, any covering triangle does."""
    w, h = size
    points = np.asarray(points, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    best_face = np.full(h * w, -1, dtype=np.int64)
    best_bary = np.zeros((h * w, 3), dtype=np.float64)
    best_z = np.full(h * w, np.inf)
    if len(faces) == 0:
        return Raster(best_face.reshape(h, w), best_bary.reshape(h, w, 3))
    tri = points[faces]  # (F, 3, 2)
    lo = np.ceil(tri.min(axis=1) - 0.5).astype(np.int64)
    hi = np.floor(tri.max(axis=1) - 0.5).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [w - 1, h - 1])
    span = hi - lo + 1
    area2 = (tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1]) - (tri[:, 2, 0] - tri[:, 0, 0]) * (
        tri[:, 1, 1] - tri[:, 0, 1]
    )
    live = np.flatnonzero((span > 0).all(axis=1) & (np.abs(area2) > 1e-12))
    counts = span[live, 0] * span[live, 1]
    start = 0
    while start < len(live):
        # Faces in this chunk: as many as keep the candidate pixels under the bound (at least one).
        stop = start + max(1, int(np.searchsorted(np.cumsum(counts[start:]), CHUNK_CANDIDATES, side="right")))
        f_idx, cnt = live[start:stop], counts[start:stop]
        start = stop
        f = np.repeat(f_idx, cnt)
        k = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        nx = span[f, 0]
        px = lo[f, 0] + k % nx
        py = lo[f, 1] + k // nx
        t = tri[f]
        cx, cy = px + 0.5, py + 0.5
        # Edge functions of the pixel centre, normalised by the signed area: the barycentric weights.
        b0 = (t[:, 1, 0] - cx) * (t[:, 2, 1] - cy) - (t[:, 2, 0] - cx) * (t[:, 1, 1] - cy)
        b1 = (t[:, 2, 0] - cx) * (t[:, 0, 1] - cy) - (t[:, 0, 0] - cx) * (t[:, 2, 1] - cy)
        a = area2[f]
        b0, b1 = b0 / a, b1 / a
        b2 = 1.0 - b0 - b1
        inside = (b0 >= -1e-9) & (b1 >= -1e-9) & (b2 >= -1e-9)
        f, px, py = f[inside], px[inside], py[inside]
        bary = np.stack([b0[inside], b1[inside], b2[inside]], axis=1)
        pix = py * w + px
        if depth is None:
            best_face[pix] = f
            best_bary[pix] = bary
            continue
        z = (np.asarray(depth, dtype=np.float64)[faces[f]] * bary).sum(axis=1)
        # The nearest depth per pixel so far (this chunk and the earlier ones); the candidates at that
        # depth win (a later, nearer candidate overwrites them).
        np.minimum.at(best_z, pix, z)
        win = z == best_z[pix]
        best_face[pix[win]], best_bary[pix[win]] = f[win], bary[win]
    return Raster(best_face.reshape(h, w), best_bary.reshape(h, w, 3))


def interpolate(raster: Raster, faces: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Covered pixels (n x 2 rows and columns) and per-vertex ``values`` interpolated at their centres."""
    rr, cc = np.nonzero(raster.covered)
    f = raster.face[rr, cc]
    out = (values[faces[f]] * raster.bary[rr, cc][:, :, None]).sum(axis=1)
    return np.stack([rr, cc], axis=1), out


def front_points(vertices: np.ndarray, origin_col: float, origin_row: float, px_per_unit: float = 1.0) -> np.ndarray:
    """Image pixel coordinates (column, row) of vertices seen from the front camera (looking along +y)."""
    return np.stack([origin_col + vertices[:, 0] * px_per_unit, origin_row - vertices[:, 2] * px_per_unit], axis=1)


def silhouette(
    mesh: trimesh.Trimesh, origin_col: float, origin_row: float, shape: tuple[int, int], px_per_unit: float = 1.0
) -> np.ndarray:
    """Boolean mask of the mesh projected onto the input image's plane (pixel centres inside a triangle)."""
    pts = front_points(np.asarray(mesh.vertices), origin_col, origin_row, px_per_unit)
    return rasterize(pts, np.asarray(mesh.faces), (shape[1], shape[0])).covered


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup (clamped at the edges) of texture colours at glTF-style UVs (v up), as float32."""
    h, w = texture.shape[:2]
    x = np.clip(uv[:, 0] * w - 0.5, 0.0, w - 1.0)
    y = np.clip((1.0 - uv[:, 1]) * h - 0.5, 0.0, h - 1.0)
    x0 = np.minimum(x.astype(np.int64), w - 2) if w > 1 else np.zeros(len(x), dtype=np.int64)
    y0 = np.minimum(y.astype(np.int64), h - 2) if h > 1 else np.zeros(len(y), dtype=np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    tex = texture.astype(np.float32)
    top = tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx
    bottom = tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx
    return np.asarray(top * (1 - fy) + bottom * fy, dtype=np.float32)


def render_front(
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    texture: np.ndarray,
    origin_col: float,
    origin_row: float,
    shape: tuple[int, int],
    px_per_unit: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Unlit front render as the input camera saw the object: (H x W x 3 uint8 on black, H x W coverage)."""
    pts = front_points(vertices, origin_col, origin_row, px_per_unit)
    raster = rasterize(pts, faces, (shape[1], shape[0]), depth=vertices[:, 1])
    out = np.zeros((*shape, 3), dtype=np.uint8)
    pix, tex_uv = interpolate(raster, faces, uv)
    out[pix[:, 0], pix[:, 1]] = np.clip(np.rint(sample_texture(texture, tex_uv)[:, :3]), 0, 255).astype(np.uint8)
    return out, raster.covered


def colour_error(rendered: np.ndarray, covered: np.ndarray, rgb: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute colour difference (0 to 1) between a render and the input image over the pixels of
    the input's mask that the render covers (the silhouette IoU accounts for the rest)."""
    both = mask & covered
    if not both.any():
        return 1.0
    return float(np.abs(rendered[both].astype(np.float32) - rgb[both][:, :3].astype(np.float32)).mean() / 255.0)


def render_preview(
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray | None,
    texture: np.ndarray | None,
    size_px: int = 320,
    yaw_deg: float = -35.0,
    pitch_deg: float = 20.0,
) -> np.ndarray:
    """A shaded three-quarter view (RGB uint8) on a light background, for a quick look at an asset."""
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    v = (vertices - vertices.mean(axis=0)) @ (rx @ rz).T
    extent = float(np.abs(v[:, [0, 2]]).max()) or 1.0
    k = 0.45 * size_px / extent
    pts = np.stack([size_px / 2 + v[:, 0] * k, size_px / 2 - v[:, 2] * k], axis=1)
    raster = rasterize(pts, faces, (size_px, size_px), depth=v[:, 1])
    out = np.full((size_px, size_px, 3), 236, dtype=np.uint8)
    rr, cc = np.nonzero(raster.covered)
    f = raster.face[rr, cc]
    tri = v[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    light = np.array([-0.4, -0.8, 0.45])
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.clip(np.abs(normals @ light), 0, 1)
    if uv is not None and texture is not None:
        _, tex_uv = interpolate(raster, faces, uv)
        colour = sample_texture(texture, tex_uv)[:, :3]
    else:
        colour = np.full((len(f), 3), 180.0, dtype=np.float32)
    out[rr, cc] = np.clip(colour * shade[f, None], 0, 255).astype(np.uint8)
    return out
