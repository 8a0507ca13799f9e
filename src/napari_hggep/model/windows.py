"""Overlapping spatial windows, so attention and the hypergraph cost stays linear in spots.

A slide with more spots than a window holds is cut into square windows on a regular grid
(stride ``T``), each widened by a margin ``M`` on every side; every spot lies in the core of
one window and in the margins of up to three more. Predictions from overlapping windows are
blended with weights that fall to zero at a window's edge, so there are no seams.
"""
from __future__ import annotations

import numpy as np


OVERLAP = 0.25  # a window's margin on each side, as a fraction of its core


def spatial_windows(coords_um: np.ndarray, max_spots: int, overlap: float = OVERLAP) -> list[tuple[np.ndarray, np.ndarray]]:
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
    # each spot lies in at most two windows per axis: test its few candidates (the same
    # comparisons as a scan of every window over every spot, in linear time)
    base = np.floor((xy - lo) / t).astype(np.int64)  # the window whose core holds the spot (about)
    cand = []
    for di in (-1, 0, 1):  # i > (x - lo) / t - 1.25 and i <= (x - lo) / t + 0.25
        for dj in (-1, 0, 1):
            ij = base + np.array([di, dj])
            ok = np.all((ij >= 0) & (ij < np.array([nx, ny])), axis=1)
            spots = np.nonzero(ok)[0]
            ij = ij[ok]
            c0 = lo + ij * t  # core [c0, c0 + t)
            inside = np.all((xy[spots] >= c0 - m) & (xy[spots] < c0 + t + m), axis=1)
            cand.append((ij[inside, 0] * ny + ij[inside, 1], spots[inside]))
    win = np.concatenate([c[0] for c in cand])
    spot = np.concatenate([c[1] for c in cand])
    order = np.lexsort((spot, win))  # window by window (i major, as the grid runs), spots ascending
    win, spot = win[order], spot[order]
    c0 = lo + np.stack([win // ny, win % ny], axis=1) * t
    # tent weights: 1 across the core, falling to 0 at the outer edge of the margin
    d = np.minimum(xy[spot] - (c0 - m), (c0 + t + m) - xy[spot]).min(axis=1)
    w = np.clip(d / max(m, 1e-9), 1e-6, 1.0)
    cut = np.flatnonzero(win[1:] != win[:-1]) + 1
    return list(zip(np.split(spot, cut), np.split(w, cut)))
