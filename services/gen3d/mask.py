"""Stage 1: the foreground mask of an object photographed or drawn on a plain-ish background.

The background is described by two models fitted to the image border, and a pixel is background
when either explains it: a smooth colour field (a cubic in row and column, fitted robustly, so a sky's
gradient is background while a tower or a launch pad crossing the border is not), and a few flat
colours (k-means) that each cover a good share of the border (a wall above a table top). Only
border pixels that these models call consistent set how far "far" is, so an object that touches the
border does not inflate the threshold. Of the pieces that remain, one object is kept: the largest,
favouring pieces near the middle and refusing pieces that touch two or more sides of the frame (the
ground, a wall) while one touching a single side (an object standing on the bottom edge) is allowed;
sizeable pieces just across a thin gap from it are kept with it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import disk

from services.common.errors import InvalidArgument

MIN_FOREGROUND_FRACTION = 0.005
"""Less foreground than this share of the image counts as no object at all."""
NEAR_FRACTION = 0.02
"""Pieces closer than this share of the image's shorter side to the object are part of it."""
MIN_COLOUR_SHARE = 0.15
"""A flat background colour must describe at least this share of the border."""


def border_mask(shape: tuple[int, int], border_px: int) -> np.ndarray:
    """Boolean H x W mask of the ``border_px`` wide frame around an image."""
    frame = np.zeros(shape, dtype=bool)
    frame[:border_px] = frame[-border_px:] = True
    frame[:, :border_px] = frame[:, -border_px:] = True
    return frame


def _background_colours(border: np.ndarray) -> np.ndarray:
    """Flat colours describing the border pixels (k-means, k <= 3, seeded deterministically), each
    covering at least ``MIN_COLOUR_SHARE`` of them (a launch pad on the bottom edge is no background)."""
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
    label = np.linalg.norm(border[:, None, :] - centres[None], axis=2).argmin(axis=1)
    share = np.bincount(label, minlength=len(centres)) / len(border)
    return np.asarray(centres[share >= MIN_COLOUR_SHARE])


def _basis(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Cubic polynomial terms of normalised image coordinates."""
    y = rows / max(1, shape[0] - 1) * 2.0 - 1.0
    x = cols / max(1, shape[1] - 1) * 2.0 - 1.0
    one = np.ones_like(y)
    return np.stack([one, x, y, x * y, x * x, y * y, x**3, y**3, x * x * y, x * y * y], axis=1)


def smooth_background(rgb: np.ndarray, frame: np.ndarray, num_rounds: int = 6) -> np.ndarray:
    """H x W x 3 background colours: a cubic field fitted to the border, dropping what it fits badly.

    Each round refits to the border pixels within three robust standard deviations of the last fit,
    so the parts of the border that are consistent with each other decide and whatever crosses the
    border (a tower, a pad, an object's foot) is left out.
    """
    rr, cc = np.nonzero(frame)
    a = _basis(rr.astype(np.float64), cc.astype(np.float64), frame.shape)
    b = rgb[rr, cc].astype(np.float64)
    keep = np.ones(len(a), dtype=bool)
    coef = np.zeros((a.shape[1], 3))
    for _ in range(num_rounds):
        coef = np.linalg.lstsq(a[keep], b[keep], rcond=None)[0]
        res = np.linalg.norm(a @ coef - b, axis=1)
        spread = 1.4826 * float(np.median(res[keep])) + 1.0
        keep = res < max(3.0 * spread, 8.0)
        if keep.sum() < a.shape[1] * 4:
            break
    h, w = frame.shape
    grid_r, grid_c = np.mgrid[:h, :w]
    field = _basis(grid_r.ravel().astype(np.float64), grid_c.ravel().astype(np.float64), frame.shape) @ coef
    return field.reshape(h, w, 3).astype(np.float32)


def background_distance(rgb: np.ndarray, border_px: int) -> tuple[np.ndarray, float]:
    """Per-pixel distance to the background models, and the distance beyond which a pixel is foreground."""
    img = rgb.astype(np.float32)
    frame = border_mask(rgb.shape[:2], border_px)
    dist = np.linalg.norm(img - smooth_background(rgb, frame), axis=2)
    for centre in _background_colours(img[frame]):
        dist = np.minimum(dist, np.linalg.norm(img - centre, axis=2))
    edge = dist[frame]
    # The consistent part of the border (its noise, texture, gradients) sets how far "far" is; the
    # border pixels of whatever crosses the frame are outliers and do not count.
    median = float(np.median(edge))
    cut = max(median + 3.0 * 1.4826 * float(np.median(np.abs(edge - median))), 8.0)
    return dist, max(30.0, 2.5 * float(np.percentile(edge[edge <= cut], 95)))


def sides_touched(component: np.ndarray) -> int:
    """How many sides of the frame a boolean mask touches."""
    return int(component[0].any()) + int(component[-1].any()) + int(component[:, 0].any()) + int(component[:, -1].any())


def choose_object(mask: np.ndarray) -> np.ndarray:
    """The one object among the pieces of ``mask`` (see the module docstring); empty when there is none."""
    labels, num = ndimage.label(mask)
    if num == 0:
        return mask
    index = np.arange(1, num + 1)
    sizes = np.asarray(ndimage.sum(mask, labels, index=index))
    centres = np.asarray(ndimage.center_of_mass(mask, labels, index)).reshape(-1, 2)
    h, w = mask.shape
    # 1 at the middle of the frame, 0.5 at a corner: a photographed object is usually framed.
    off = np.hypot((centres[:, 0] - h / 2) / h, (centres[:, 1] - w / 2) / w) / np.hypot(0.5, 0.5)
    score = sizes * (1.0 - 0.5 * off)
    touching = np.array([sides_touched(labels == k) for k in index])
    allowed = touching <= 1
    if allowed.any():
        score = np.where(allowed, score, -1.0)
    best = int(np.argmax(score))
    # Sizeable pieces just across a thin gap belong to it (a logo split by a line of background colour).
    gap_px = max(2, round(NEAR_FRACTION * min(h, w)))
    near = np.unique(labels[ndimage.binary_dilation(labels == index[best], iterations=gap_px) & mask])
    keep = [k for k in near if k and sizes[k - 1] >= 0.05 * sizes[best] and (touching[k - 1] <= 1 or not allowed.any())]
    return np.isin(labels, keep)


def foreground_mask(rgb: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """Boolean H x W mask of the object (see the module docstring).

    With a useful alpha channel the mask is ``alpha > 127`` (all its sizeable pieces). Enclosed
    background (the hole of a mug's handle) stays background: only specks are filled, never whole
    holes. InvalidArgument when nothing is found.
    """
    h, w = rgb.shape[:2]
    if alpha is not None:
        mask = alpha > 127
    else:
        dist, threshold = background_distance(rgb, max(1, min(h, w) // 50))
        mask = dist > threshold
        # Thin spikes (lens flare, a lattice's fringe) go; the radius grows with the image.
        radius = max(1, round(min(h, w) / 160))
        mask = ndimage.binary_opening(mask, structure=disk(radius) if radius > 1 else None, iterations=1)
        # Outside the frame counts as foreground here, so closing does not eat an object's edge at the border.
        mask = ndimage.binary_closing(mask, iterations=2, border_value=1)
    if not mask.any():
        raise InvalidArgument("no foreground object found in the image")
    if alpha is None:
        mask = choose_object(mask)
    else:
        # A cut-out's pieces are the object, as its maker drew them (a logo split by a line); only
        # stray specks of alpha are dropped.
        labels, num = ndimage.label(mask)
        sizes = ndimage.sum(mask, labels, index=np.arange(1, num + 1))
        mask = np.isin(labels, np.flatnonzero(sizes >= 0.05 * sizes.max()) + 1)
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
