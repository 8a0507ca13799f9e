"""Overlapping spatial windows, so attention and the hypergraph cost stays linear in spots.

A slide with more spots than a window holds is cut into square windows on a regular grid
(stride ``T``), each widened by a margin ``M`` on every side; every spot lies in the core of
one window and in the margins of up to three more. Predictions from overlapping windows are
blended with weights that fall to zero at a window's edge, so there are no seams.
"""
from __future__ import annotations

import numpy as np


def spatial_windows(coords_um: np.ndarray, max_spots: int, overlap: float = 0.25) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(indices, weights), ...]``: the spots of each window and their blending weights.
    One window (all spots, weight 1) when the slide has at most ``max_spots`` spots."""
    xy = np.asarray(coords_um, np.float64).reshape(-1, 2)
    n = len(xy)
    if n <= max_spots:
        return [(np.arange(n), np.ones(n))]
    lo, hi = xy.min(0), xy.max(0)
    area = max(float(np.prod(np.maximum(hi - lo, 1e-6))), 1e-6)
    # a window of side T (1 + 2 overlap) should hold about max_spots spots at the mean density
    t = np.sqrt(max_spots / (n / area)) / (1 + 2 * overlap)
    m = overlap * t
    nx, ny = (np.floor((hi - lo) / t).astype(int) + 1)
    out = []
    for i in range(nx):
        for j in range(ny):
            c0 = lo + np.array([i, j]) * t  # core [c0, c0 + t)
            inside = np.all((xy >= c0 - m) & (xy < c0 + t + m), axis=1)
            idx = np.nonzero(inside)[0]
            if not len(idx):
                continue
            # tent weights: 1 across the core, falling to 0 at the outer edge of the margin
            d = np.minimum(xy[idx] - (c0 - m), (c0 + t + m) - xy[idx]).min(axis=1)
            w = np.clip(d / max(m, 1e-9), 1e-6, 1.0)
            out.append((idx, w))
    return out
