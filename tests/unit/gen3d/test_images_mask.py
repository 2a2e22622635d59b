"""Stage 1: decoding bad input safely, and the foreground mask (holes kept, alpha used)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from services.common.errors import InvalidArgument
from services.gen3d import samples
from services.gen3d.images import decode_image
from services.gen3d.mask import foreground_mask

LIMITS = {"max_pixels": 4_000_000, "max_side_px": 256}


def test_not_an_image_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="not an image"):
        decode_image(b"%PDF-1.4 definitely not pixels", **LIMITS)


def test_truncated_file_is_refused() -> None:
    data = samples.png_bytes(samples.vase(96))
    with pytest.raises(InvalidArgument, match="cannot be decoded"):
        decode_image(data[: len(data) // 2], **LIMITS)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    buf = io.BytesIO()
    Image.new("1", (6000, 6000)).save(buf, format="PNG")  # tiny file, 36 MP
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(InvalidArgument, match="decompression bomb"):
        decode_image(buf.getvalue(), **LIMITS)


def test_huge_image_is_downscaled_with_a_note() -> None:
    decoded = decode_image(samples.png_bytes(samples.vase(600)), **LIMITS)
    assert max(decoded.rgb.shape[:2]) == 256
    assert any("downscaled from 600x600 to 256x256" in n for n in decoded.notes)


def test_mug_handle_hole_stays_open() -> None:
    decoded = decode_image(samples.png_bytes(samples.mug(128)), **LIMITS)
    mask = foreground_mask(decoded.rgb, decoded.alpha)
    holes = ndimage.binary_fill_holes(mask) & ~mask
    assert holes.sum() > 50  # the handle's hole is background, not filled
    assert 0.2 < mask.mean() < 0.6


def test_alpha_channel_is_used() -> None:
    decoded = decode_image(samples.png_bytes(samples.with_alpha(samples.vase(96))), **LIMITS)
    assert decoded.alpha is not None
    mask = foreground_mask(decoded.rgb, decoded.alpha)
    assert np.array_equal(mask, decoded.alpha > 127)


def test_blank_image_has_no_foreground() -> None:
    blank = samples.png_bytes(Image.new("RGB", (64, 64), (200, 200, 200)))
    decoded = decode_image(blank, **LIMITS)
    with pytest.raises(InvalidArgument, match="no foreground"):
        foreground_mask(decoded.rgb, decoded.alpha)


def _sky_with_tower() -> tuple[np.ndarray, np.ndarray]:
    """A dusk sky (a vertical gradient) over dark ground, a white tower standing on the bottom edge, and
    a bigger dark-red block in the top-left corner touching two sides of the frame."""
    h, w = 160, 200
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    rgb = ((1 - t) * np.array([20, 35, 60]) + t * np.array([100, 110, 130])) * np.ones((1, w, 1))
    rgb[-12:] = (25, 25, 30)
    tower = np.zeros((h, w), dtype=bool)
    tower[40:, 90:112] = True
    rgb[tower] = (235, 230, 215)
    rgb[:50, :70] = (120, 30, 30)
    return rgb.astype(np.uint8), tower


def test_object_touching_the_border_on_a_gradient_is_found() -> None:
    rgb, tower = _sky_with_tower()
    mask = foreground_mask(rgb)
    assert mask[-1].any()  # it stands on the bottom edge
    assert np.logical_and(mask, tower).sum() / np.logical_or(mask, tower).sum() > 0.9
    assert not mask[:50, :70].any()  # the block touching two sides is background (a wall, not the object)


def test_real_photograph_of_a_rocket_on_its_pad() -> None:
    import skimage.data

    path = Path(skimage.data.__file__).parent / "rocket.jpg"
    decoded = decode_image(path.read_bytes(), **LIMITS)
    mask = foreground_mask(decoded.rgb, decoded.alpha)
    h, w = mask.shape
    rows, cols = np.nonzero(mask)
    # The rocket: tall, thin, in the middle, standing on the bottom edge; not the towers at the sides.
    assert 0.01 < mask.mean() < 0.1
    assert rows.max() >= 0.97 * h and np.ptp(rows) > 0.5 * h
    assert 0.4 * w < np.median(cols) < 0.6 * w and np.ptp(cols) < 0.35 * w
