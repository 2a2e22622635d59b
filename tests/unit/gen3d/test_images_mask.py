"""Stage 1: decoding bad input safely, and the foreground mask (holes kept, alpha used)."""

from __future__ import annotations

import io

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
