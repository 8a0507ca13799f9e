"""Patches at the model's physical size, read by region from the best pyramid level.

Spots are taken in spatial order; each region of the image is decoded once for all the spots
whose windows fall in it, from the coarsest pyramid level that still has at least the
patch's resolution (a 0.25 um/px slide never decodes level 0 for a 70 um patch resampled to
112 px), and the next batch is decoded in a background thread while the model runs.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .image import choose_level, read_box
from .slide import Slide

PAD_VALUE = 255  # glass is white; an edge spot is padded, never dropped
REGION_PX = 2048  # spots are grouped into regions of this many pixels (of the level read) a side


def patch_window_px(um_per_px: float, patch_um: float) -> int:
    return max(int(round(patch_um / um_per_px)), 1)


def _window_origins(xy: np.ndarray, side: float) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return np.round(xy - side / 2.0).astype(np.int64)


def _windows_on_level(level, origins: np.ndarray, side: int) -> np.ndarray:
    """Windows at integer ``origins`` (x, y) of one level, one decoded region for them all."""
    out = np.full((len(origins), side, side, 3), PAD_VALUE, np.uint8)
    if not len(origins):
        return out
    x0, y0 = origins.min(axis=0)
    x1, y1 = origins.max(axis=0) + side
    region = read_box(level, int(x0), int(y0), int(x1), int(y1))
    for i, (ox, oy) in enumerate(origins - [x0, y0]):
        out[i] = region[oy:oy + side, ox:ox + side]
    return out


def resize_batch(windows: np.ndarray, size: int) -> np.ndarray:
    """Resize ``B x s x s x 3`` uint8 windows to ``size`` with antialiasing (torch)."""
    if windows.shape[1] == size:
        return windows
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(windows).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def patch_plan(slide: Slide, patch_um: float, patch_px: int):
    """The level to read, the window side on it and every spot's window origin on it."""
    side0 = patch_window_px(slide.um_per_px, patch_um)
    level, ds = choose_level(slide.image, side0 / patch_px)
    side = max(int(round(side0 / ds)), 1)
    origins = _window_origins(slide.xy / ds, side)
    return level, side, origins


def origins_order(origins: np.ndarray) -> np.ndarray:
    tiles = np.floor_divide(origins, REGION_PX)
    return np.lexsort((origins[:, 0], origins[:, 1], tiles[:, 0], tiles[:, 1]))


def spatial_order(slide: Slide, patch_um: float, patch_px: int) -> np.ndarray:
    """Spot indices ordered region by region (row-major regions, then row-major spots)."""
    return origins_order(patch_plan(slide, patch_um, patch_px)[2])


def extract_patches(slide: Slide, patch_um: float, patch_px: int, indices=None) -> np.ndarray:
    """``B x patch_px x patch_px x 3`` uint8 patches covering ``patch_um`` of tissue each."""
    idx = np.arange(slide.n_spots) if indices is None else np.asarray(indices, dtype=np.int64)
    return _extract(patch_plan(slide, patch_um, patch_px), idx, patch_px)


def _extract(plan, idx: np.ndarray, patch_px: int) -> np.ndarray:
    """The patches of spots ``idx`` under a :func:`patch_plan`, one decoded region per tile."""
    level, side, origins = plan
    o = origins[idx]
    out = np.empty((len(idx), patch_px, patch_px, 3), np.uint8)
    tiles = np.floor_divide(o, REGION_PX)
    keys, group = np.unique(tiles, axis=0, return_inverse=True)
    group = group.reshape(-1)
    for k in range(len(keys)):
        rows = np.nonzero(group == k)[0]
        out[rows] = resize_batch(_windows_on_level(level, o[rows], side), patch_px)
    return out


def iter_patch_batches(slide: Slide, patch_um: float, patch_px: int, batch_size: int = 256,
                       prefetch: bool = True):
    """Yield ``(indices, patches)`` batches over all spots of a slide, in spatial order; with
    ``prefetch`` the next batch is read in a background thread while the caller works."""
    plan = patch_plan(slide, patch_um, patch_px)  # once for the slide, not per batch
    order = origins_order(plan[2])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if not prefetch or len(batches) < 2:
        for b in batches:
            yield b, _extract(plan, b, patch_px)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-hggep-read") as pool:
        nxt = pool.submit(_extract, plan, batches[0], patch_px)
        for i, b in enumerate(batches):
            patches = nxt.result()
            if i + 1 < len(batches):
                nxt = pool.submit(_extract, plan, batches[i + 1], patch_px)
            yield b, patches


def to_tensor(patches: np.ndarray):
    """uint8 ``B x P x P x 3`` -> float ``B x 3 x P x P`` in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
