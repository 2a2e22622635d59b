"""Stage 3: UV unwrap (xatlas), the image projected as the albedo texture, and PBR maps.

The front image is projected orthographically along the viewing axis, so the back of the object
gets the colours of the front (the only ones known). Specular highlights are detected (bright,
unsaturated spots brighter than their surroundings) and painted out of the albedo from their
neighbourhood; their presence says the surface is glossy, which sets the roughness. Metallic comes
from the object class (a photograph cannot tell metal from grey plastic reliably). The normal map is
a gentle bump from the albedo's luminance in texture space (tangents follow the UVs, as glTF does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
import xatlas
from scipy import ndimage

from services.gen3d.render import interpolate, rasterize

METALLIC_CLASSES = frozenset({"can", "spoon", "fork", "knife", "pan", "pot", "kettle", "wrench", "key", "coin"})
"""Object classes whose surface is taken as metal."""
OUTLINE_BAND_PX = 8
"""Width of the band outside the outline that gets the object's colours blended in (see ``bake``)."""


@dataclass
class Textured:
    """The visual mesh with UVs (seams split) and its PBR maps."""

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    """Per-vertex UVs, glTF convention (v up)."""
    albedo: np.ndarray
    """Base colour, S x S x 3 uint8."""
    metallic_roughness: np.ndarray
    """glTF packing: G = roughness, B = metallic (R unused, 255), S x S x 3 uint8."""
    normal: np.ndarray
    """Tangent-space normal map, S x S x 3 uint8."""
    roughness: float
    """The object's overall roughness, 0 to 1."""
    metallic: float
    """The object's overall metallic factor, 0 or 1."""
    highlight_fraction: float
    """Share of the object's pixels found to be specular highlight and painted out."""


def unwrap(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts: (index of the original vertex per new vertex, new faces, UVs in [0, 1])."""
    vmapping, indices, uvs = xatlas.parametrize(
        np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32)
    )
    return vmapping.astype(np.int64), indices.astype(np.int64), uvs.astype(np.float64)


def find_highlights(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Specular highlights: bright, unsaturated pixels of the object clearly brighter than their surroundings."""
    img = rgb.astype(np.float32)
    value = img.max(axis=2)
    saturation = (value - img.min(axis=2)) / np.maximum(value, 1.0)
    size = max(5, int(0.08 * np.sqrt(mask.sum())))
    local = ndimage.median_filter(np.where(mask, value, 0.0), size=size)
    spots = mask & (value > 200) & (saturation < 0.35) & (value > local + 25)
    return ndimage.binary_dilation(spots, iterations=2) & mask


def fill_from_neighbours(rgb: np.ndarray, holes: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``rgb`` with pixels in ``holes`` replaced by a smooth blend of nearby ``known`` pixels."""
    if not holes.any():
        return rgb
    img = rgb.astype(np.float32)
    weight = known.astype(np.float32)
    acc = img * weight[..., None]
    out = img.copy()
    sigma = 1.0
    todo = holes.copy()
    while todo.any() and sigma < max(rgb.shape[:2]):
        num = np.stack([ndimage.gaussian_filter(acc[..., c], sigma) for c in range(3)], axis=2)
        den = ndimage.gaussian_filter(weight, sigma)
        ok = todo & (den > 1e-3)
        out[ok] = num[ok] / den[ok, None]
        todo &= ~ok
        sigma *= 2.0
    return np.clip(out, 0, 255).astype(np.uint8)


def bake(
    vertices: np.ndarray,
    faces: np.ndarray,
    rgb: np.ndarray,
    mask: np.ndarray,
    origin_col: float,
    origin_row: float,
    *,
    size_px: int = 512,
    object_class: str = "",
) -> Textured:
    """Unwrap the mesh (image pixel units, see ``geometry``) and bake albedo and PBR maps from ``rgb``."""
    vmap, new_faces, uvs = unwrap(vertices, faces)
    new_vertices = vertices[vmap]
    highlights = find_highlights(rgb, mask)
    # Fill the highlights and a band outside the object from the object's own colours, so texels that
    # project just past the outline get object colours rather than the background. Nothing of the
    # surface projects further out; the nearest filled colour does there (blending over the whole
    # background costs seconds on a large photograph).
    band = ~mask & (ndimage.distance_transform_edt(~mask) <= OUTLINE_BAND_PX)
    clean = fill_from_neighbours(rgb, highlights | band, mask & ~highlights)
    _, (near_r, near_c) = ndimage.distance_transform_edt(~(mask | band), return_indices=True)
    clean = clean[near_r, near_c]
    pts = np.stack([uvs[:, 0] * size_px, (1.0 - uvs[:, 1]) * size_px], axis=1)
    raster = rasterize(pts, new_faces, (size_px, size_px))
    pix, pos = interpolate(raster, new_faces, new_vertices)
    cols = origin_col + pos[:, 0] - 0.5
    rows = origin_row - pos[:, 2] - 0.5
    albedo = np.zeros((size_px, size_px, 3), dtype=np.uint8)
    for c in range(3):
        albedo[pix[:, 0], pix[:, 1], c] = np.clip(
            ndimage.map_coordinates(clean[..., c].astype(np.float32), [rows, cols], order=1, mode="nearest"), 0, 255
        )
    covered = raster.covered
    # Texels outside every chart get the nearest chart's colour, so filtering at seams shows no dark lines.
    _, (nr, nc) = ndimage.distance_transform_edt(~covered, return_indices=True)
    albedo = albedo[nr, nc]
    highlight_fraction = float(highlights.sum() / max(1, mask.sum()))
    roughness = 0.3 if highlight_fraction > 0.002 else 0.7
    metallic = 1.0 if object_class.lower() in METALLIC_CLASSES else 0.0
    lum = albedo.astype(np.float32).mean(axis=2) / 255.0
    # Fine texture varies the roughness a little around the object's value.
    detail = lum - ndimage.gaussian_filter(lum, 4)
    rough_map = np.clip(roughness + 0.5 * np.abs(detail), 0.05, 1.0)
    mr = np.stack([np.full_like(lum, 1.0), rough_map, np.full_like(lum, metallic)], axis=2)
    metallic_roughness = (mr * 255).astype(np.uint8)
    bump = ndimage.gaussian_filter(lum, 1.0)
    gy, gx = np.gradient(bump)
    strength = 2.0
    n = np.stack([-gx * strength, gy * strength, np.ones_like(lum)], axis=2)
    n /= np.linalg.norm(n, axis=2, keepdims=True)
    normal = ((n * 0.5 + 0.5) * 255).astype(np.uint8)
    return Textured(
        vertices=new_vertices,
        faces=new_faces,
        uv=uvs,
        albedo=albedo,
        metallic_roughness=metallic_roughness,
        normal=normal,
        roughness=roughness,
        metallic=metallic,
        highlight_fraction=highlight_fraction,
    )


def visual_mesh(textured: Textured) -> trimesh.Trimesh:
    """The textured mesh as trimesh with a glTF PBR material (maps attached)."""
    from PIL import Image

    material = trimesh.visual.material.PBRMaterial(
        name="asset",
        baseColorTexture=Image.fromarray(textured.albedo),
        metallicRoughnessTexture=Image.fromarray(textured.metallic_roughness),
        normalTexture=Image.fromarray(textured.normal),
        metallicFactor=1.0,
        roughnessFactor=1.0,
        doubleSided=False,
    )
    visual = trimesh.visual.TextureVisuals(uv=textured.uv, material=material)
    return trimesh.Trimesh(textured.vertices, textured.faces, visual=visual, process=False)
