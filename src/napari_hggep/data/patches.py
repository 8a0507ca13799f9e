"""Patches at the model's physical size, read in batches from a (lazy) image."""
from __future__ import annotations

import numpy as np

from .slide import Slide

PAD_VALUE = 255  # glass is white; an edge spot is padded, never dropped


def patch_window_px(um_per_px: float, patch_um: float) -> int:
    return max(int(round(patch_um / um_per_px)), 1)


def read_windows(image, xy: np.ndarray, side: int) -> np.ndarray:
    """``B x side x side x 3`` uint8 windows centred on ``xy``, padded at the border."""
    h, w = int(image.shape[0]), int(image.shape[1])
    out = np.full((len(xy), side, side, 3), PAD_VALUE, np.uint8)
    half = side / 2.0
    for i, (x, y) in enumerate(np.asarray(xy, dtype=np.float64)):
        x0, y0 = int(round(x - half)), int(round(y - half))
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + side, w), min(y0 + side, h)
        if sx1 <= sx0 or sy1 <= sy0:
            continue
        out[i, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = np.asarray(image[sy0:sy1, sx0:sx1])[..., :3]
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


def extract_patches(slide: Slide, patch_um: float, patch_px: int, indices=None) -> np.ndarray:
    """``B x patch_px x patch_px x 3`` uint8 patches covering ``patch_um`` of tissue each."""
    idx = np.arange(slide.n_spots) if indices is None else np.asarray(indices)
    side = patch_window_px(slide.um_per_px, patch_um)
    return resize_batch(read_windows(slide.image, slide.xy[idx], side), patch_px)


def iter_patch_batches(slide: Slide, patch_um: float, patch_px: int, batch_size: int = 256):
    """Yield ``(indices, patches)`` batches over all spots of a slide."""
    for start in range(0, slide.n_spots, batch_size):
        idx = np.arange(start, min(start + batch_size, slide.n_spots))
        yield idx, extract_patches(slide, patch_um, patch_px, idx)


def to_tensor(patches: np.ndarray):
    """uint8 ``B x P x P x 3`` -> float ``B x 3 x P x P`` in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
