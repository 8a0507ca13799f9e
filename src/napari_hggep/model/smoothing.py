"""Blend each spot's prediction with the mean of its nearest ring of neighbours.

Neighbours are the spots within 1.25 x the slide's median nearest-neighbour distance (the
first ring of a square or hexagonal spot lattice). Found with a k-d tree: linear cost in spots.
"""
from __future__ import annotations

import numpy as np
import torch

MAX_RING = 8


def ring_neighbours(coords_um: np.ndarray, max_ring: int = MAX_RING) -> tuple[np.ndarray, np.ndarray]:
    """``N x max_ring`` neighbour indices (-1: none) and the count per spot."""
    from scipy.spatial import cKDTree

    xy = np.asarray(coords_um, np.float64)
    n = len(xy)
    if n < 2:
        return np.full((n, max_ring), -1, np.int64), np.zeros(n, np.int64)
    k = min(max_ring + 1, n)
    dist, idx = cKDTree(xy).query(xy, k=k)
    dist, idx = dist[:, 1:], idx[:, 1:]  # drop the spot itself
    radius = 1.25 * np.median(dist[:, 0])
    ok = dist <= radius
    idx = np.where(ok, idx, -1)
    if idx.shape[1] < max_ring:
        idx = np.pad(idx, ((0, 0), (0, max_ring - idx.shape[1])), constant_values=-1)
    return idx.astype(np.int64), ok.sum(1).astype(np.int64)


def neighbour_blend(x: torch.Tensor, coords_um: torch.Tensor, weight: float) -> torch.Tensor:
    """``(1 - weight) * x + weight * mean(x over the ring)``; spots without neighbours keep ``x``."""
    if weight <= 0 or x.shape[0] < 2:
        return x
    idx, cnt = ring_neighbours(coords_um.detach().cpu().numpy())
    idx_t = torch.from_numpy(idx).to(x.device)
    nb = torch.zeros_like(x)
    for j in range(idx_t.shape[1]):  # one neighbour column at a time: memory O(N x C), not O(N x ring x C)
        col = idx_t[:, j]
        nb += x[col.clamp_min(0)] * (col >= 0).to(x.dtype)[:, None]
    cnt_t = torch.from_numpy(cnt).to(x.device, x.dtype)[:, None]
    blended = (1 - weight) * x + weight * nb / cnt_t.clamp_min(1)
    return torch.where(cnt_t > 0, blended, x)
