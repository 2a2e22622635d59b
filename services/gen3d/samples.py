"""Generated test images of everyday objects with known silhouettes (tests, benchmark, examples).

Each is drawn on a plain background with shading and a specular highlight, so every stage meets what a
photograph gives it: a symmetric vase and bottle, a mug whose handle encloses a hole, an asymmetric
kettle-like blob, a thin-handled spatula and a flat ring.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _canvas(size_px: int, background: tuple[int, int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (size_px, size_px), background)
    return img, ImageDraw.Draw(img)


def _shade(img: Image.Image, mask: np.ndarray, colour: tuple[int, int, int], highlight: bool = True) -> Image.Image:
    """Paint ``mask`` in ``colour`` with a left-to-right light falloff and a small highlight."""
    h, w = mask.shape
    arr = np.asarray(img).astype(np.float32)
    cols = np.nonzero(mask.any(axis=0))[0]
    x0, x1 = cols.min(), cols.max()
    t = np.clip((np.arange(w) - x0) / max(1, x1 - x0), 0, 1)
    light = (1.1 - 0.45 * t)[None, :, None]
    painted = np.clip(np.array(colour, np.float32)[None, None] * light, 0, 255)
    arr = np.where(mask[..., None], painted, arr)
    if highlight:
        rows = np.nonzero(mask.any(axis=1))[0]
        cy, cx = int(rows.mean()), int(x0 + 0.3 * (x1 - x0))
        yy, xx = np.mgrid[:h, :w]
        spot = np.exp(-(((yy - cy) / (0.06 * h)) ** 2 + ((xx - cx) / (0.02 * w)) ** 2))
        arr = np.where(mask[..., None], arr + (255 - arr) * 0.85 * spot[..., None], arr)
    return Image.fromarray(arr.astype(np.uint8))


def _mask(size_px: int, draw: Callable[[ImageDraw.ImageDraw, float], None]) -> np.ndarray:
    m = Image.new("L", (size_px, size_px), 0)
    draw(ImageDraw.Draw(m), size_px / 100.0)
    return np.asarray(m) > 127


def vase(size_px: int = 128) -> Image.Image:
    """A symmetric vase: a surface of revolution."""

    def draw(d: ImageDraw.ImageDraw, s: float) -> None:
        ys = np.linspace(15, 88, 40)
        r = 14 + 10 * np.sin((ys - 15) / 73 * np.pi * 1.3) + 4
        pts = [(50 + ri, y) for y, ri in zip(ys, r, strict=True)] + [
            (50 - ri, y) for y, ri in zip(ys[::-1], r[::-1], strict=True)
        ]
        d.polygon([(x * s, y * s) for x, y in pts], fill=255)

    img, _ = _canvas(size_px, (235, 235, 230))
    return _shade(img, _mask(size_px, draw), (60, 110, 170))


def bottle(size_px: int = 128) -> Image.Image:
    """A symmetric bottle with a narrow neck."""

    def draw(d: ImageDraw.ImageDraw, s: float) -> None:
        d.rectangle([35 * s, 40 * s, 65 * s, 90 * s], fill=255)
        d.ellipse([35 * s, 30 * s, 65 * s, 50 * s], fill=255)
        d.rectangle([45 * s, 12 * s, 55 * s, 40 * s], fill=255)

    img, _ = _canvas(size_px, (250, 250, 250))
    return _shade(img, _mask(size_px, draw), (40, 140, 70))


def mug(size_px: int = 128) -> Image.Image:
    """A mug: body plus a handle that encloses a hole (the hole must stay open)."""

    def draw(d: ImageDraw.ImageDraw, s: float) -> None:
        d.rectangle([22 * s, 28 * s, 62 * s, 82 * s], fill=255)
        d.ellipse([52 * s, 36 * s, 82 * s, 72 * s], fill=255)
        d.ellipse([60 * s, 44 * s, 74 * s, 64 * s], fill=0)

    img, _ = _canvas(size_px, (240, 238, 232))
    return _shade(img, _mask(size_px, draw), (200, 70, 50))


def kettle(size_px: int = 128) -> Image.Image:
    """An asymmetric blob with a spout: an inflated outline."""

    def draw(d: ImageDraw.ImageDraw, s: float) -> None:
        d.ellipse([25 * s, 30 * s, 75 * s, 86 * s], fill=255)
        d.rectangle([28 * s, 70 * s, 72 * s, 86 * s], fill=255)
        d.polygon([(70 * s, 55 * s), (90 * s, 38 * s), (93 * s, 42 * s), (74 * s, 66 * s)], fill=255)
        d.rectangle([44 * s, 24 * s, 56 * s, 32 * s], fill=255)

    img, _ = _canvas(size_px, (225, 230, 235))
    return _shade(img, _mask(size_px, draw), (150, 150, 160))


def spatula(size_px: int = 128) -> Image.Image:
    """A thin part: a long handle on a wide blade, standing on the blade."""

    def draw(d: ImageDraw.ImageDraw, s: float) -> None:
        d.rectangle([47 * s, 12 * s, 53 * s, 60 * s], fill=255)
        d.rounded_rectangle([35 * s, 58 * s, 65 * s, 88 * s], radius=4 * s, fill=255)

    img, _ = _canvas(size_px, (245, 245, 245))
    return _shade(img, _mask(size_px, draw), (90, 60, 40), highlight=False)


def ring(size_px: int = 128) -> Image.Image:
    """A flat ring standing on its edge, seen face on: its hole must stay open (not revolved into a solid)."""

    def draw(d: ImageDraw.ImageDraw, s: float) -> None:
        d.ellipse([20 * s, 14 * s, 80 * s, 74 * s], fill=255)
        d.ellipse([34 * s, 28 * s, 66 * s, 60 * s], fill=0)
        d.rectangle([35 * s, 70 * s, 65 * s, 86 * s], fill=255)

    img, _ = _canvas(size_px, (238, 238, 238))
    return _shade(img, _mask(size_px, draw), (180, 150, 40))


def with_alpha(img: Image.Image) -> Image.Image:
    """The same picture as RGBA whose alpha is the object (as a cut-out PNG would give)."""
    arr = np.asarray(img).astype(np.int32)
    bg = arr[0, 0]
    alpha = (np.abs(arr - bg).sum(axis=2) > 20).astype(np.uint8) * 255
    out = img.convert("RGBA")
    out.putalpha(Image.fromarray(alpha).filter(ImageFilter.MinFilter(1)))
    return out


GENERATED: dict[str, Callable[[int], Image.Image]] = {
    "vase": vase,
    "bottle": bottle,
    "mug": mug,
    "kettle": kettle,
    "spatula": spatula,
    "ring": ring,
}
"""Generator of each test image, by name."""


def png_bytes(img: Image.Image) -> bytes:
    """``img`` encoded as PNG."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
