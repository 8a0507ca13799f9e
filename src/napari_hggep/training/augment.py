"""H&E augmentations for training and self-supervised pretraining (torch, batched).

Every function takes ``N x 3 x P x P`` float patches in [0, 1] and a ``torch.Generator``,
so a run is repeatable from its seed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.stain import hed_to_rgb_torch, rgb_to_hed_torch
from ..model.hggep import dihedral_view


def _u(g: torch.Generator, *shape, lo=-1.0, hi=1.0) -> torch.Tensor:
    return torch.rand(*shape, generator=g) * (hi - lo) + lo


def dihedral(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random flip / 90 degree rotation for every patch."""
    t = torch.randint(0, 8, (x.shape[0],), generator=g)
    out = x.clone()
    for k in range(8):
        m = t == k
        if m.any():
            out[m] = dihedral_view(x[m], k)
    return out


def hed_jitter(x: torch.Tensor, g: torch.Generator, scale: float = 0.25, shift: float = 0.05) -> torch.Tensor:
    """Per patch, scale and shift the haematoxylin, eosin and DAB densities (stain variation
    between labs and scanners), then go back to RGB."""
    n = x.shape[0]
    hed = rgb_to_hed_torch(x)
    a = 1 + _u(g, n, 3, 1, 1) * scale
    b = _u(g, n, 3, 1, 1) * shift
    return hed_to_rgb_torch(hed * a + b)


def colour_jitter(x: torch.Tensor, g: torch.Generator, strength: float) -> torch.Tensor:
    """Brightness per channel (shared by the batch, like a slide's stain) and per patch,
    contrast and saturation per patch."""
    if strength <= 0:
        return x
    n = x.shape[0]
    x = x * (1 + _u(g, 1, 3, 1, 1) * strength) * (1 + 0.5 * _u(g, n, 1, 1, 1) * strength)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + _u(g, n, 1, 1, 1) * strength) + mean
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * (1 + _u(g, n, 1, 1, 1) * strength) + grey
    return x.clamp(0, 1)


def gaussian_blur(x: torch.Tensor, g: torch.Generator, p: float = 0.5, max_sigma: float = 1.5) -> torch.Tensor:
    """Blur a random fraction ``p`` of the patches with a random sigma (out-of-focus scans)."""
    n = x.shape[0]
    pick = torch.rand(n, generator=g) < p
    if not pick.any():
        return x
    out = x.clone()
    for i in torch.nonzero(pick).flatten().tolist():
        s = float(_u(g, 1, lo=0.3, hi=max_sigma))
        r = max(1, int(round(2.5 * s)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / s) ** 2)
        k = (k / k.sum()).to(x.device)
        y = F.pad(x[i:i + 1], (r, r, r, r), mode="replicate")
        y = F.conv2d(y, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        out[i] = F.conv2d(y, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)[0]
    return out


def resolution_jitter(x: torch.Tensor, g: torch.Generator, um_per_px: float, patch_um: float,
                      low: float = 0.5, high: float = 4.0) -> torch.Tensor:
    """Down-then-up sampling: each patch is seen as if scanned at a random resolution between
    ``low`` and ``high`` um/px (log-uniform). ``um_per_px`` is the resolution the patches
    are at now (``patch_um / P``); coarser targets lose detail, finer ones change nothing."""
    p = x.shape[-1]
    r = torch.exp(_u(g, x.shape[0], lo=float(torch.log(torch.tensor(low))), hi=float(torch.log(torch.tensor(high)))))
    out = x.clone()
    for i, ri in enumerate(r.tolist()):
        if ri <= um_per_px * 1.05:
            continue
        side = max(4, int(round(patch_um / ri)))
        small = F.interpolate(x[i:i + 1], size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        out[i] = F.interpolate(small, size=(p, p), mode="bilinear", align_corners=False)[0]
    return out.clamp(0, 1)


def random_resized_crop(x: torch.Tensor, g: torch.Generator, min_scale: float = 0.6) -> torch.Tensor:
    """Crop a random square covering ``min_scale``..1 of each patch's side, resize back."""
    n, _, p, _ = x.shape
    out = torch.empty_like(x)
    for i in range(n):
        s = int(round(p * float(_u(g, 1, lo=min_scale, hi=1.0))))
        y0, x0 = (int(v) for v in torch.randint(0, p - s + 1, (2,), generator=g))
        out[i] = F.interpolate(x[i:i + 1, :, y0:y0 + s, x0:x0 + s], size=(p, p), mode="bilinear",
                               align_corners=False, antialias=True)[0]
    return out.clamp(0, 1)


def train_augment(x: torch.Tensor, g: torch.Generator, jitter: float, um_per_px: float | None = None,
                  patch_um: float | None = None, res_range: tuple[float, float] | None = None,
                  hed: float = 0.0) -> torch.Tensor:
    """Supervised training: flips/rotations, colour (and optionally HED) jitter, and optionally
    a random scan resolution."""
    x = dihedral(x, g)
    if res_range is not None and um_per_px is not None and patch_um is not None:
        x = resolution_jitter(x, g, um_per_px, patch_um, *res_range)
    if hed > 0:
        x = hed_jitter(x, g, hed, hed / 5)
    return colour_jitter(x, g, jitter)


def ssl_view(x: torch.Tensor, g: torch.Generator, um_per_px: float, patch_um: float,
             res_range: tuple[float, float] = (0.25, 4.0)) -> torch.Tensor:
    """One strongly augmented view for self-supervised pretraining: crop, flips/rotations,
    scan resolution, blur, HED stain jitter and colour jitter."""
    x = random_resized_crop(x, g)
    x = dihedral(x, g)
    x = resolution_jitter(x, g, um_per_px, patch_um, *res_range)
    x = gaussian_blur(x, g, p=0.3)
    x = hed_jitter(x, g, 0.3, 0.05)
    return colour_jitter(x, g, 0.15)
