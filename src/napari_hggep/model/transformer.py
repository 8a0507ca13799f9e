"""Transformer across all spots of a slide, with a continuous position encoding in micrometres."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def position_encoding(coords_um: torch.Tensor, dim: int, wavelengths=(100.0, 20000.0),
                      centre: torch.Tensor | None = None) -> torch.Tensor:
    """Sinusoidal encoding of continuous (x, y) spot centres in micrometres.

    Works for any layout and any number of rows and columns (unlike an
    ``nn.Embedding`` over integer array indices). Coordinates are centred on the
    slide so the encoding does not depend on where the tissue lies in the image: on ``centre``
    (``1 x 2``) when given, for windows of a larger slide, which must keep the slide's origin
    and not take their own.
    Half of the channels encode x, half y; wavelengths are geometric between
    ``wavelengths[0]`` and ``wavelengths[1]`` micrometres.
    """
    n_freq = max(dim // 4, 1)
    lo, hi = wavelengths
    wl = torch.exp(torch.linspace(math.log(lo), math.log(hi), n_freq, device=coords_um.device))
    origin = coords_um.float().mean(dim=0, keepdim=True) if centre is None else centre.float().view(1, 2)
    c = coords_um.float() - origin
    ang = 2 * math.pi * c[:, :, None] / wl  # N x 2 x F
    enc = torch.cat([ang.sin(), ang.cos()], dim=-1).reshape(c.shape[0], -1)  # N x 4F
    if enc.shape[1] < dim:
        enc = F.pad(enc, (0, dim - enc.shape[1]))
    return enc[:, :dim]


class Block(nn.Module):
    """Pre-norm transformer block built on ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: N x d (one slide)
        n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, 3, self.heads, d // self.heads).permute(1, 2, 0, 3)
        a = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_dropout if self.training else 0.0
        )  # heads x N x d/h
        x = x + self.drop(self.proj(a.transpose(0, 1).reshape(n, d)))
        return x + self.drop(self.mlp(self.norm2(x)))


class SpotTransformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + pos
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)
