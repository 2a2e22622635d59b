"""The rasterizer the metrics rest on, the honest texture error, and thin parts surviving the geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from services.gen3d import samples
from services.gen3d.check import front_view
from services.gen3d.geometry import build_geometry, choose_voxel
from services.gen3d.images import decode_image
from services.gen3d.mask import foreground_mask
from services.gen3d.render import rasterize, silhouette
from services.gen3d.texture import bake, visual_mesh


def _decoded(name: str, size_px: int = 96) -> tuple[np.ndarray, np.ndarray]:
    decoded = decode_image(samples.png_bytes(samples.GENERATED[name](size_px)), max_pixels=10**7, max_side_px=512)
    return decoded.rgb, foreground_mask(decoded.rgb, decoded.alpha)


def test_rasterizer_covers_exactly_the_pixels_whose_centres_are_inside() -> None:
    # A square from (2, 3) to (7, 6) in pixel coordinates covers columns 2..6 and rows 3..5, no more:
    # a polygon fill that also draws the outline would grow it by a pixel on two sides.
    pts = np.array([[2.0, 3.0], [7.0, 3.0], [7.0, 6.0], [2.0, 6.0]])
    raster = rasterize(pts, np.array([[0, 1, 2], [0, 2, 3]]), (10, 10))
    expected = np.zeros((10, 10), dtype=bool)
    expected[3:6, 2:7] = True
    assert np.array_equal(raster.covered, expected)
    # A box's front silhouette is its footprint in pixels, to the pixel.
    box = trimesh.creation.box(extents=[20.0, 5.0, 10.0])
    box.apply_translation([0.0, 0.0, 5.0])
    mask = silhouette(box, 20.0, 30.0, (40, 40))
    assert mask.sum() == 20 * 10 and mask[20:30, 10:30].all()


def test_depth_buffer_keeps_the_nearest_surface_in_either_order() -> None:
    pts = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    for near_first in (True, False):
        depth = np.array([1.0] * 3 + [2.0] * 3) if near_first else np.array([2.0] * 3 + [1.0] * 3)
        raster = rasterize(pts, faces, (8, 8), depth=depth)
        assert (raster.face[raster.covered] == (0 if near_first else 1)).all()
    # Interpolated depth, not per face: two triangles crossing each other each win where they are nearer.
    crossing = rasterize(pts, faces, (8, 8), depth=np.array([0.0, 0.0, 2.0, 1.0, 1.0, 1.0]))
    assert crossing.face[0, 0] == 0 and crossing.face[6, 0] == 1


def test_texture_error_rises_when_the_texture_is_shifted_and_beats_a_flat_colour(tmp_path: Path) -> None:
    rgb, mask = _decoded("kettle")
    geom = build_geometry(mask, resolution=48)
    vertices, faces = np.asarray(geom.mesh.vertices), np.asarray(geom.mesh.faces)
    errors = []
    for shift_px in (0.0, 4.0):
        # The projection shifted sideways: the texture no longer lines up with the photograph.
        tex = bake(vertices, faces, rgb, mask, geom.origin_col + shift_px, geom.origin_row, size_px=128)
        visual_mesh(tex).export(tmp_path / f"shift{shift_px}.glb")
        view = front_view(tmp_path / f"shift{shift_px}.glb", lambda p: p, geom.origin_col, geom.origin_row, rgb, mask)
        errors.append(view.texture_error)
        assert view.silhouette_iou > 0.97 and view.coverage > 0.97
    aligned, shifted = errors
    assert aligned < 0.5 * view.flat_colour_error
    assert shifted > 3 * aligned


def test_front_view_reads_the_texture_from_the_file(tmp_path: Path) -> None:
    # The error is measured on what was written: an albedo flipped in the file scores far worse.
    rgb, mask = _decoded("mug")
    geom = build_geometry(mask, resolution=48)
    tex = bake(np.asarray(geom.mesh.vertices), np.asarray(geom.mesh.faces), rgb, mask, geom.origin_col, geom.origin_row)
    visual_mesh(tex).export(tmp_path / "good.glb")
    tex.albedo = np.ascontiguousarray(tex.albedo[::-1])
    visual_mesh(tex).export(tmp_path / "flipped.glb")
    good = front_view(tmp_path / "good.glb", lambda p: p, geom.origin_col, geom.origin_row, rgb, mask)
    flipped = front_view(tmp_path / "flipped.glb", lambda p: p, geom.origin_col, geom.origin_row, rgb, mask)
    assert flipped.texture_error > 3 * good.texture_error


def _lollipop(size_px: int = 200, stick_px: int = 3) -> np.ndarray:
    yy, xx = np.mgrid[:size_px, :size_px]
    mask = (yy - 150) ** 2 + (xx - 100) ** 2 < 40**2
    mask[10:150, 100 - stick_px // 2 : 100 - stick_px // 2 + stick_px] = True
    return mask


def test_grid_refines_for_thin_parts_only() -> None:
    disc = _lollipop(stick_px=0)  # 80 pixels across
    assert choose_voxel(disc, 48, 144) == pytest.approx(80 / 48, rel=0.05)
    # With the stick it is 180 pixels tall; the 3-pixel stick asks for the finest grid allowed.
    assert choose_voxel(_lollipop(stick_px=3), 48, 144) == pytest.approx(180 / 144, rel=0.05)


@pytest.mark.parametrize("name", ["spatula", "mug"])
def test_thin_parts_survive_at_a_coarse_resolution(name: str) -> None:
    # The spatula's handle and the mug's handle are a few pixels across; 32 voxels along the longer
    # side would lose them without the adaptive grid, the minimum thickness and the pinned outline.
    _, mask = _decoded(name, 160)
    geom = build_geometry(mask, resolution=32)
    assert geom.mesh.is_watertight and geom.mesh.is_volume
    projected = silhouette(geom.mesh, geom.origin_col, geom.origin_row, mask.shape)
    assert (projected & mask).sum() > 0.97 * mask.sum()
    assert (projected & ~mask).sum() < 0.01 * mask.sum()


def test_a_three_pixel_stick_stays_attached() -> None:
    mask = _lollipop(stick_px=3)
    geom = build_geometry(mask, resolution=48)
    projected = silhouette(geom.mesh, geom.origin_col, geom.origin_row, mask.shape)
    stick = np.zeros_like(mask)
    stick[12:108, 97:103] = mask[12:108, 97:103]
    assert (projected & stick).sum() > 0.9 * stick.sum()
    assert len(geom.mesh.split(only_watertight=False)) == 1
