"""A small software rasterizer (numpy + PIL): silhouettes, front renders and the preview PNG.

No OpenGL is needed (the service runs headless). Triangles are drawn far to near (painter's
algorithm) into an integer face-id image; barycentric coordinates are then recovered per pixel.
"""

from __future__ import annotations

import numpy as np
import trimesh
from PIL import Image, ImageDraw


def face_ids(points: np.ndarray, faces: np.ndarray, depth: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    """Rasterize triangles given in pixel coordinates (x = column, y = row) into an H x W map of face
    indices (-1 where none). With ``depth`` (per face, larger is farther), nearer faces win."""
    w, h = size
    img = Image.new("I", (w, h), -1)
    draw = ImageDraw.Draw(img)
    order = np.argsort(-depth) if depth is not None else np.arange(len(faces))
    tri = points[faces]
    for f in order:
        draw.polygon([tuple(p) for p in tri[f]], fill=int(f))
    return np.asarray(img, dtype=np.int32)


def barycentric(points: np.ndarray, faces: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions covered by ``ids`` and their barycentric coordinates (clipped to the triangle)."""
    rr, cc = np.nonzero(ids >= 0)
    f = ids[rr, cc]
    tri = points[faces[f]]  # (n, 3, 2)
    p = np.stack([cc + 0.5, rr + 0.5], axis=1)
    v0, v1 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    v2 = p - tri[:, 0]
    d00 = (v0 * v0).sum(1)
    d01 = (v0 * v1).sum(1)
    d11 = (v1 * v1).sum(1)
    d20 = (v2 * v0).sum(1)
    d21 = (v2 * v1).sum(1)
    den = d00 * d11 - d01 * d01
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    b1 = (d11 * d20 - d01 * d21) / den
    b2 = (d00 * d21 - d01 * d20) / den
    bary = np.clip(np.stack([1 - b1 - b2, b1, b2], axis=1), 0, 1)
    bary /= bary.sum(1, keepdims=True)
    return np.stack([rr, cc], axis=1), bary


def front_points(vertices: np.ndarray, origin_col: float, origin_row: float, px_per_unit: float = 1.0) -> np.ndarray:
    """Image pixel coordinates (column, row) of vertices seen from the front camera (looking along +y)."""
    return np.stack([origin_col + vertices[:, 0] * px_per_unit, origin_row - vertices[:, 2] * px_per_unit], axis=1)


def silhouette(
    mesh: trimesh.Trimesh, origin_col: float, origin_row: float, shape: tuple[int, int], px_per_unit: float = 1.0
) -> np.ndarray:
    """Boolean mask of the mesh projected onto the input image's plane."""
    pts = front_points(np.asarray(mesh.vertices), origin_col, origin_row, px_per_unit)
    return face_ids(pts, np.asarray(mesh.faces), None, (shape[1], shape[0])) >= 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear-free nearest lookup of texture colours at glTF-style UVs (v up)."""
    h, w = texture.shape[:2]
    cols = np.clip((uv[:, 0] * w).astype(np.int64), 0, w - 1)
    rows = np.clip(((1.0 - uv[:, 1]) * h).astype(np.int64), 0, h - 1)
    return texture[rows, cols]


def render_front(
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    texture: np.ndarray,
    origin_col: float,
    origin_row: float,
    shape: tuple[int, int],
    px_per_unit: float = 1.0,
) -> np.ndarray:
    """Unlit front render (H x W x 3 uint8, black background) as the input camera saw the object."""
    pts = front_points(vertices, origin_col, origin_row, px_per_unit)
    depth = vertices[faces][:, :, 1].mean(axis=1)
    ids = face_ids(pts, faces, depth, (shape[1], shape[0]))
    out = np.zeros((*shape, 3), dtype=np.uint8)
    pix, bary = barycentric(pts, faces, ids)
    f = ids[pix[:, 0], pix[:, 1]]
    tex_uv = (uv[faces[f]] * bary[:, :, None]).sum(axis=1)
    out[pix[:, 0], pix[:, 1]] = sample_texture(texture, tex_uv)[:, :3]
    return out


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
    depth = v[faces][:, :, 1].mean(axis=1)
    ids = face_ids(pts, faces, depth, (size_px, size_px))
    out = np.full((size_px, size_px, 3), 236, dtype=np.uint8)
    pix, bary = barycentric(pts, faces, ids)
    f = ids[pix[:, 0], pix[:, 1]]
    tri = v[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    light = np.array([-0.4, -0.8, 0.45])
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.clip(np.abs(normals @ light), 0, 1)
    if uv is not None and texture is not None:
        colour = sample_texture(texture, (uv[faces[f]] * bary[:, :, None]).sum(axis=1))[:, :3].astype(np.float32)
    else:
        colour = np.full((len(f), 3), 180.0, dtype=np.float32)
    out[pix[:, 0], pix[:, 1]] = np.clip(colour * shade[f, None], 0, 255).astype(np.uint8)
    return out
