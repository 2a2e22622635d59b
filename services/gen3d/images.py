"""Decoding an input image safely: bounded pixel counts, truncation and non-images refused, big ones downscaled."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from services.common.errors import InvalidArgument


@dataclass
class DecodedImage:
    """An RGB image (uint8, H x W x 3), its alpha channel when the file had a useful one, and notes."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    notes: list[str] = field(default_factory=list)


def decode_image(data: bytes, *, max_pixels: int, max_side_px: int) -> DecodedImage:
    """Decode ``data``; InvalidArgument for a non-image, a truncated file or one over ``max_pixels``.

    Images whose longer side exceeds ``max_side_px`` are downscaled, with a note saying so. The pixel
    count is checked from the header, before any pixel is decoded, so a decompression bomb costs nothing.
    """
    if not data:
        raise InvalidArgument("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own bound below replaces PIL's warning-then-error heuristic.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                img = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = previous
            width, height = img.size
            if width <= 0 or height <= 0:
                raise InvalidArgument(f"the image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise InvalidArgument(
                    f"decompression bomb refused: {width}x{height} = {width * height} pixels is over the "
                    f"limit of {max_pixels}"
                )
            notes: list[str] = []
            if max(width, height) > max_side_px:
                # JPEG can decode straight at a reduced scale; other formats decode then shrink.
                img.draft("RGB", (max_side_px, max_side_px))
            img.load()
    except InvalidArgument:
        raise
    except UnidentifiedImageError:
        raise InvalidArgument("not an image: the bytes are in no format the decoder knows") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidArgument(f"the image cannot be decoded (truncated or corrupt?): {exc}") from None
    if getattr(img, "n_frames", 1) > 1:
        notes.append(f"the image has {getattr(img, 'n_frames', 1)} frames; the first is used")
    if max(img.size) > max_side_px:
        before = (width, height)
        img.thumbnail((max_side_px, max_side_px), Image.Resampling.LANCZOS)
        notes.append(f"image downscaled from {before[0]}x{before[1]} to {img.size[0]}x{img.size[1]}")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    rgba = np.asarray(img.convert("RGBA"))
    alpha = rgba[..., 3] if has_alpha else None
    # An alpha channel that cuts nothing out (a few stray pixels at most) says nothing about the object.
    if alpha is not None and (alpha < 128).mean() < 0.01:
        alpha = None
    return DecodedImage(rgb=np.ascontiguousarray(rgba[..., :3]), alpha=alpha, notes=notes)
