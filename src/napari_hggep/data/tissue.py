"""Tissue mask at low resolution and a hexagonal spot grid over it."""
from __future__ import annotations

import numpy as np

# the training data's spot pitch (HER2+ ST: 100 um spots on a 200 um pitch)
DEFAULT_PITCH_UM = 200.0


def thumbnail(image, max_side: int = 1024) -> tuple[np.ndarray, float]:
    """A strided thumbnail of a (possibly lazy) image and its step in level-0 pixels (from a
    pyramid level the step is the level's, e.g. 8 where 11 was asked)."""
    from .image import strided

    h, w = int(image.shape[0]), int(image.shape[1])
    return strided(image, max(1, int(np.ceil(max(h, w) / max_side))))


def tissue_mask(image, max_side: int = 1024) -> tuple[np.ndarray, float]:
    """Boolean tissue mask (Otsu on saturation, cleaned) of a thumbnail, and its step."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    thumb, step = thumbnail(image, max_side)
    rgb = thumb.astype(np.float32)
    # optical density against the slide's own background (the brightest pixels), plus saturation:
    # pale, weakly stained tissue on a tinted background is still darker and more saturated than glass
    bg = np.percentile(rgb.reshape(-1, 3), 95, axis=0).clip(1, 255)
    od = -np.log(np.clip(rgb / bg, 1e-3, 1.0)).sum(axis=-1)
    sat = rgb2hsv(thumb)[..., 1]
    score = ndi.gaussian_filter(od / max(np.percentile(od, 99), 1e-6) + sat, 2)
    if np.ptp(score) < 0.05:
        return np.zeros(score.shape, bool), step
    thr = threshold_otsu(score)
    mask = (score > thr) & (rgb.mean(axis=-1) > 25)  # black borders are not tissue
    mask = ndi.binary_opening(mask, iterations=1)
    mask = ndi.binary_closing(mask, iterations=10)
    mask = ndi.binary_fill_holes(mask)
    labels, n = ndi.label(mask)
    if n:
        sizes = ndi.sum(mask, labels, range(1, n + 1))
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= max(0.002 * mask.size, 4)
        mask = keep[labels]
    return mask, step


def hex_grid(width: float, height: float, pitch_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Hexagonal lattice points ``(x, y)`` covering a rectangle, and their (row, col)."""
    dy = pitch_px * np.sqrt(3) / 2
    rows = np.arange(int(height // dy) + 1)
    xy, rc = [], []
    for r in rows:
        off = (pitch_px / 2) if r % 2 else 0.0
        xs = np.arange(pitch_px / 2 + off, width, pitch_px)
        xy.append(np.column_stack([xs, np.full(len(xs), dy / 2 + r * dy)]))
        rc.append(np.column_stack([np.full(len(xs), r), np.arange(len(xs)) * 2 + (r % 2)]))
    return np.concatenate(xy), np.concatenate(rc).astype(int)


def tissue_grid(image, um_per_px: float, pitch_um: float = DEFAULT_PITCH_UM) -> tuple[np.ndarray, np.ndarray]:
    """Spot centres (full-resolution px) on a hexagonal grid of ``pitch_um`` over the tissue."""
    if pitch_um <= 0:
        raise ValueError("pitch must be positive")
    h, w = int(image.shape[0]), int(image.shape[1])
    mask, step = tissue_mask(image)
    xy, rc = hex_grid(w, h, pitch_um / um_per_px)
    mi = np.clip((xy[:, 1] / step).astype(int), 0, mask.shape[0] - 1)
    mj = np.clip((xy[:, 0] / step).astype(int), 0, mask.shape[1] - 1)
    keep = mask[mi, mj]
    return xy[keep], rc[keep]
