"""GEM, the gradient enhancement module: plain and central-difference convolutions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CentralDifferenceConv2d(nn.Conv2d):
    """``DC(p0) = sum_n w_n x_n - theta * x_p0 * sum_n w_n`` (theta = 0: plain convolution)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, theta=0.7, bias=False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.theta = float(theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.theta == 0.0:
            return out
        # x_p0 * sum(w): a 1x1 convolution with the summed kernel, same stride, no padding offset
        w_sum = self.weight.sum(dim=(2, 3), keepdim=True)
        pad = self.padding[0] if isinstance(self.padding, tuple) else self.padding
        k = self.kernel_size[0]
        centre = F.conv2d(x, w_sum, stride=self.stride, padding=pad - k // 2)
        return out - self.theta * centre


class GEM(nn.Module):
    """Two parallel 3x3 stride-2 convolutions (plain, central difference), each BN+ReLU,
    concatenated and mixed back to 3 channels by a 1x1 conv, BN, ReLU: N x 3 x H/2 x W/2."""

    def __init__(self, channels: int = 3, theta: float = 0.7):
        super().__init__()
        self.plain = nn.Sequential(
            nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.cdc = nn.Sequential(
            CentralDifferenceConv2d(channels, channels, 3, stride=2, padding=1, theta=theta),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.mix = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.cat([self.plain(x), self.cdc(x)], dim=1))
