"""A pretrained encoder's pooled features, as more columns of the statistics branch.

Ridge regression on a frozen pathology or ImageNet encoder's averaged features is what carries
most image-based expression predictors (HEST-Benchmark). Here each of the encoder's three maps
(for EfficientNet-Lite0: blocks 4 and 10 and the 1280-channel head) is averaged over the crop,
at crops covering ``config.pooled_um`` of tissue (110 and 330 um by default), and the
features join the tissue statistics: z-scored within the slide like them, then mapped to the
output by the statistics branch's ridge (``training/initialise.py`` weights the two blocks).

:class:`PooledEncoder` is just the encoder with its input normalisation; the features are
computed (and cached on disk) by :func:`napari_hggep.training.feature_cache.pooled_statistics`."""
from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from .config import HGGEPConfig
from .encoders import build_encoder, verify_weights


DEFAULT_POOLED_UM = (110.0, 330.0)  # the crops of the measurement behind it (issue 35; docs/encoders.md)


def with_pooled(config: HGGEPConfig, crops_um=None, alone: bool = False) -> HGGEPConfig:
    """``config`` with its pretrained encoder's pooled features at ``crops_um`` (um; None: the
    default crops) as more columns of its statistics branch; unchanged without a pretrained
    encoder or a statistics branch, or with ``crops_um`` empty. ``alone``: the branch reads the
    pooled features only, no tissue statistics (``--branches image``: all from the encoder)."""
    crops = DEFAULT_POOLED_UM if crops_um is None else tuple(float(u) for u in crops_um)
    if crops and not config.pretrained_encoder and crops_um is not None:
        raise ValueError("pooled encoder features (--pooled-um) need a pretrained encoder: --encoder imagenet or "
                         "timm:ARCH")
    if alone and crops and config.pretrained_encoder:
        width = pooled_width(config, crops)
        return config.replace(pooled_um=crops, pooled_features=width, stats_features=width)
    if not (crops and config.stats_features and config.pretrained_encoder):
        return config.replace(pooled_um=(), pooled_features=0, stats_features=config.tissue_features)
    width = pooled_width(config, crops)
    return config.replace(pooled_um=crops, pooled_features=width, stats_features=config.tissue_features + width)


class PooledEncoder(nn.Module):
    """``config``'s pretrained encoder: ``trunk(patches)`` gives its three maps of ``N x 3 x P x P``
    patches in [0, 1] (its own input normalisation), ``pool(maps)`` the averaged features."""

    def __init__(self, config: HGGEPConfig, weights=None):
        super().__init__()
        if not config.pretrained_encoder:
            raise ValueError("pooled features need a pretrained encoder (imagenet or timm:ARCH)")
        self.config = config
        spec = config.encoder_spec
        self.register_buffer("rgb_mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.backbone = build_encoder(spec, weights)
        self.eval()

    def trunk(self, patches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.backbone((patches - self.rgb_mean) / self.rgb_std)

    @staticmethod
    def pool(maps) -> torch.Tensor:
        """``N x (C1 + C2 + C3)``: each map averaged over its grid."""
        return torch.cat([m.float().mean(dim=(2, 3)) for m in maps], dim=1)


def pooled_width(config: HGGEPConfig, crops_um) -> int:
    """How many columns the pooled features of ``config``'s encoder take at ``crops_um`` (random
    weights suffice: only the shapes are read)."""
    enc = PooledEncoder(config)
    px = config.encoder_spec.input_px
    with torch.no_grad():
        per_crop = enc.pool(enc.trunk(torch.zeros(1, 3, px, px))).shape[1]
    return per_crop * len(crops_um)


_BUILT: dict = {}


def pooled_key(config: HGGEPConfig) -> str:
    """What makes two configs' pooled features the same: the encoder (not where its weights lie) and the crops."""
    d = {k: v for k, v in config.encoder_spec.to_dict().items() if k not in ("weights_file", "stored")}
    return hashlib.sha1(json.dumps([d, list(config.pooled_um)], sort_keys=True).encode()).hexdigest()[:16]


def pooled_encoder(config: HGGEPConfig, weights=None) -> PooledEncoder:
    """The :class:`PooledEncoder` of ``config``'s encoder, its weights file verified (sha256;
    ``weights``: the user's file or snapshot folder, else the package's or the one trained with),
    built once per process (one at a time in memory)."""
    file = verify_weights(config.encoder_spec, weights)
    key = (pooled_key(config), str(file))
    if key not in _BUILT:
        _BUILT.clear()
        _BUILT[key] = PooledEncoder(config, file)
    return _BUILT[key]
