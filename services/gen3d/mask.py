"""Stage 1: the foreground mask of an object photographed or drawn on a plain-ish background."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from services.common.errors import InvalidArgument

MIN_FOREGROUND_FRACTION = 0.005
"""Less foreground than this share of the image counts as no object at all."""


def _background_colours(rgb: np.ndarray, border_px: int) -> np.ndarray:
    """A few colours that describe the image border (k-means with k <= 3, seeded deterministically)."""
    border = np.concatenate(
        [
            rgb[:border_px].reshape(-1, 3),
            rgb[-border_px:].reshape(-1, 3),
            rgb[:, :border_px].reshape(-1, 3),
            rgb[:, -border_px:].reshape(-1, 3),
        ]
    ).astype(np.float32)
    centres = np.median(border, axis=0, keepdims=True)
    for _ in range(2):
        dist = np.linalg.norm(border[:, None, :] - centres[None], axis=2).min(axis=1)
        if np.percentile(dist, 90) < 12.0:
            break
        # Add the border colour worst described so far, then refine every centre (Lloyd steps).
        centres = np.vstack([centres, border[np.argmax(dist)]])
        for _ in range(5):
            label = np.linalg.norm(border[:, None, :] - centres[None], axis=2).argmin(axis=1)
            centres = np.stack(
                [border[label == k].mean(axis=0) if np.any(label == k) else centres[k] for k in range(len(centres))]
            )
    return centres


def foreground_mask(rgb: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """Boolean H x W mask of the object.

    With a useful alpha channel the mask is ``alpha > 127``. Otherwise the background colours are
    estimated from the image border and every pixel far from all of them is foreground. Enclosed
    background (the hole of a mug's handle) stays background: only specks are filled, never whole
    holes, and only components of a reasonable size are kept. InvalidArgument when nothing is found.
    """
    h, w = rgb.shape[:2]
    if alpha is not None:
        mask = alpha > 127
    else:
        border_px = max(1, min(h, w) // 50)
        centres = _background_colours(rgb, border_px)
        img = rgb.reshape(-1, 3).astype(np.float32)
        dist = np.full(img.shape[0], np.inf, dtype=np.float32)
        for c in centres:
            dist = np.minimum(dist, np.linalg.norm(img - c, axis=1))
        dist_map = dist.reshape(h, w)
        edge = np.concatenate(
            [
                dist_map[:border_px].ravel(),
                dist_map[-border_px:].ravel(),
                dist_map[:, :border_px].ravel(),
                dist_map[:, -border_px:].ravel(),
            ]
        )
        # The border's own spread (noise, texture, gradients) sets how far "far" is.
        threshold = max(30.0, 2.5 * float(np.percentile(edge, 95)))
        mask = dist_map > threshold
        mask = ndimage.binary_opening(mask, iterations=1)
        mask = ndimage.binary_closing(mask, iterations=2)
    labels, num = ndimage.label(mask)
    if num == 0:
        raise InvalidArgument("no foreground object found in the image")
    sizes = ndimage.sum(mask, labels, index=np.arange(1, num + 1))
    keep = np.flatnonzero(sizes >= 0.05 * sizes.max()) + 1
    mask = np.isin(labels, keep)
    # Fill only specks (noise inside the object), never real holes such as a handle's.
    holes = ndimage.binary_fill_holes(mask) & ~mask
    hole_labels, num_holes = ndimage.label(holes)
    if num_holes:
        hole_sizes = ndimage.sum(holes, hole_labels, index=np.arange(1, num_holes + 1))
        small = np.flatnonzero(hole_sizes < max(4.0, 0.002 * mask.sum())) + 1
        mask |= np.isin(hole_labels, small)
    if mask.sum() < MIN_FOREGROUND_FRACTION * h * w:
        raise InvalidArgument(
            f"no foreground object found in the image (only {100.0 * mask.sum() / (h * w):.2f}% differs "
            "from the background)"
        )
    if mask.all():
        raise InvalidArgument("no background found: the object must not fill the whole image")
    return mask
