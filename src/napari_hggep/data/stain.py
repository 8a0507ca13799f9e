"""Colour deconvolution of H&E (Ruifrok & Johnston, as ``skimage.color.rgb2hed``), in numpy and torch."""
from __future__ import annotations

import numpy as np

# rows: haematoxylin, eosin, DAB
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_LOG_ADJUST = np.log(1e-6)  # skimage: od = log(rgb) / log(1e-6)


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """``... x 3`` RGB in [0, 1] (or uint8) -> non-negative H, E, D stain densities."""
    x = np.asarray(rgb, dtype=np.float32)
    if np.asarray(rgb).dtype == np.uint8:
        x = x / 255.0
    od = np.log(np.maximum(x, 1e-6)) / np.float32(_LOG_ADJUST)
    return np.maximum(od @ HED_FROM_RGB.astype(np.float32), 0)


def rgb_to_hed_torch(x):
    """``N x 3 x H x W`` RGB in [0, 1] -> ``N x 3 x H x W`` H, E, D densities (may be negative)."""
    import torch

    m = torch.as_tensor(HED_FROM_RGB, dtype=x.dtype, device=x.device)
    od = torch.log(x.clamp_min(1e-6)) / _LOG_ADJUST
    return torch.einsum("nchw,cd->ndhw", od, m).contiguous()


def hed_to_rgb_torch(hed):
    """Inverse of :func:`rgb_to_hed_torch`: stain densities back to RGB in [0, 1]."""
    import torch

    m = torch.as_tensor(RGB_FROM_HED, dtype=hed.dtype, device=hed.device)
    od = torch.einsum("nchw,cd->ndhw", hed, m)
    return torch.exp(od * _LOG_ADJUST).clamp(0, 1).contiguous()
