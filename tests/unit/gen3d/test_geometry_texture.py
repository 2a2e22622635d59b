"""Stages 2 and 3: watertight geometry matching the silhouette, UVs and the projected albedo."""

from __future__ import annotations

import numpy as np
import pytest

from services.gen3d import samples
from services.gen3d.geometry import build_geometry, poisson_height
from services.gen3d.images import decode_image
from services.gen3d.mask import foreground_mask
from services.gen3d.render import iou, silhouette
from services.gen3d.texture import bake, find_highlights


def _mask(name: str, size_px: int = 96) -> tuple[np.ndarray, np.ndarray]:
    decoded = decode_image(samples.png_bytes(samples.GENERATED[name](size_px)), max_pixels=10**7, max_side_px=512)
    return decoded.rgb, foreground_mask(decoded.rgb, decoded.alpha)


@pytest.mark.parametrize(
    ("name", "method", "genus"),
    [("vase", "revolution", 0), ("mug", "inflation", 1), ("ring", "inflation", 1), ("kettle", "inflation", 0)],
)
def test_mesh_is_watertight_keeps_holes_and_matches_the_silhouette(name: str, method: str, genus: int) -> None:
    _, mask = _mask(name)
    geom = build_geometry(mask, resolution=48)
    assert geom.method == method
    assert geom.mesh.is_watertight and geom.mesh.is_volume
    # Euler characteristic 2 - 2g: the handle's and the ring's holes go through the solid.
    assert geom.mesh.euler_number == 2 - 2 * genus
    projected = silhouette(geom.mesh, geom.origin_col, geom.origin_row, mask.shape)
    assert iou(projected, mask) > 0.98


def test_inflated_object_has_a_flat_base_to_stand_on() -> None:
    _, mask = _mask("mug")
    geom = build_geometry(mask, resolution=48)
    v = np.asarray(geom.mesh.vertices)
    assert v[:, 2].min() == pytest.approx(0.0, abs=1e-6)
    base = v[v[:, 2] < 0.5]
    # A footprint with real depth (not a knife edge): at least a third of the width.
    assert np.ptp(base[:, 1]) > 0.33 * np.ptp(base[:, 0])


def test_poisson_height_is_a_dome_over_a_disc() -> None:
    yy, xx = np.mgrid[:81, :81]
    disc = (yy - 40) ** 2 + (xx - 40) ** 2 < 30**2
    h = poisson_height(disc)
    assert h[40, 40] > h[40, 20] > h[40, 12] > 0
    assert h[40, 40] == pytest.approx(h[40, 40 + 0], rel=1e-6)
    assert h[disc].max() == pytest.approx(h[40, 40], rel=0.05)


def test_albedo_is_the_image_projected_and_highlights_are_painted_out() -> None:
    rgb, mask = _mask("mug", 128)
    highlights = find_highlights(rgb, mask)
    assert highlights.any()
    geom = build_geometry(mask, resolution=48)
    tex = bake(
        np.asarray(geom.mesh.vertices),
        np.asarray(geom.mesh.faces),
        rgb,
        mask,
        geom.origin_col,
        geom.origin_row,
        size_px=128,
    )
    assert tex.uv.min() >= 0 and tex.uv.max() <= 1
    assert tex.roughness < 0.5  # a highlight means a glossy surface
    # The mug is red: the albedo is red nearly everywhere, and nowhere near-white (the highlight).
    albedo = tex.albedo.reshape(-1, 3).astype(int)
    assert np.median(albedo[:, 0] - albedo[:, 2]) > 80
    assert (albedo.min(axis=1) > 230).mean() < 0.01
