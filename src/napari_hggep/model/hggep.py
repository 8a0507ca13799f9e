"""HGGEP: GEM -> ShuffleNet stages -> CBAM -> per-stage transformer -> HAM -> LSTM fusion -> genes,
plus an optional statistics branch (tissue statistics -> output) and a low-rank (PCA) output."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import STAGE_CHANNELS, ShuffleNetStages
from .cbam import CBAM
from .config import HGGEPConfig
from .gem import GEM
from .hypergraph import HAM
from .smoothing import neighbour_blend
from .transformer import SpotTransformer, position_encoding
from .windows import OVERLAP, spatial_windows

# patches arrive as floats in [0, 1]; standardise with the usual RGB statistics
_RGB_MEAN = (0.485, 0.456, 0.406)
_RGB_STD = (0.229, 0.224, 0.225)


def dihedral_view(x: torch.Tensor, k: int) -> torch.Tensor:
    """View ``k`` (0-7) of the 8 flips/90 degree rotations of ``N x C x H x W`` patches."""
    v = torch.rot90(x, k % 4, dims=(2, 3))
    return v.flip(3) if k >= 4 else v


class StageProjection(nn.Module):
    """CBAM on one backbone stage, then (optional pooling,) flatten and project to width d."""

    def __init__(self, channels: int, spatial: int, dim: int, pool: int | None, reduction: int):
        super().__init__()
        self.cbam = CBAM(channels, reduction)
        self.pool = nn.AdaptiveAvgPool2d(pool) if pool else nn.Identity()
        side = pool if pool else spatial
        self.proj = nn.Linear(channels * side * side, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(self.cbam(x)).flatten(1))

    def forward_points(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """:meth:`forward` on maps laid out as ``N x (h w) x C`` (cells row-major, channels last,
        as :func:`napari_hggep.inference.dense.sample_maps` gives them), the same arithmetic fused for
        inference: CBAM's channel MLP as one matrix product, and its spatial weights, the pooling
        and the projection as one batched product, so the ``N x C x h x w`` maps are written once
        (about 3x faster on a CPU, equal to float rounding; tested)."""
        n, cells, c = x.shape
        cb = self.cbam
        w1, w2 = cb.mlp[0].weight.view(-1, c), cb.mlp[2].weight.view(c, -1)
        a = F.relu(torch.cat([x.mean(1), x.amax(1)]) @ w1.t()) @ w2.t()  # avg and max rows together
        x = x * torch.sigmoid(a[:n] + a[n:])[:, None, :]  # channel attention
        s = torch.stack([x.mean(2), x.amax(2)], dim=1).view(n, 2, h, w)
        sa = torch.sigmoid(cb.spatial(s)).view(n, cells, 1)  # spatial attention
        pm = _pool_matrix(h, w, self.pool.output_size if isinstance(self.pool, nn.AdaptiveAvgPool2d) else None)
        pm = pm.to(x.device, x.dtype)
        pooled = torch.bmm((sa * pm).transpose(1, 2), x)  # N x q x C: spatial weights, then pooling
        q = pm.shape[1]
        wl = self.proj.weight.view(-1, c, q).transpose(1, 2).reshape(-1, q * c)  # flatten(1) is c-major
        return torch.addmm(self.proj.bias, pooled.reshape(n, q * c), wl.t())


def _pool_matrix(h: int, w: int, out) -> torch.Tensor:
    """``AdaptiveAvgPool2d(out)`` on an ``h x w`` map as an ``(h w) x (out out)`` matrix (the
    identity for ``out=None``)."""
    key = (h, w, out)
    if key not in _POOL_MATRICES:
        if out is None:
            m = torch.eye(h * w)
        else:
            oh, ow = (out, out) if isinstance(out, int) else out
            m = torch.zeros(h, w, oh, ow)
            for a in range(oh):
                y0, y1 = (a * h) // oh, -((-(a + 1) * h) // oh)  # torch's adaptive bins
                for b in range(ow):
                    x0, x1 = (b * w) // ow, -((-(b + 1) * w) // ow)
                    m[y0:y1, x0:x1, a, b] = 1.0 / ((y1 - y0) * (x1 - x0))
            m = m.view(h * w, oh * ow)
        _POOL_MATRICES[key] = m
    return _POOL_MATRICES[key]


_POOL_MATRICES: dict = {}


class HGGEP(nn.Module):
    """The HGGEP model of Li et al. (2024) for one slide at a time.

    ``forward(patches, coords_um, stats)`` takes ``N x 3 x P x P`` patches in [0, 1], the
    spot centres in micrometres (``N x 2``) and, with a statistics branch, the spots' tissue
    statistics z-scored within the slide (``N x stats_features``); attention and the
    hypergraph run across the spots (within overlapping windows of ``config.window_spots``
    on larger slides). It returns a dict with ``expr`` (``N x G``, the training target
    space), ``components`` (the low-rank output) and, with the image path and
    ``config.zinb``, the ZINB heads ``mean``, ``disp`` and ``pi``. ``encode`` (per patch,
    batchable) and ``forward_tokens`` (per slide) split the work so large slides can be
    encoded in batches.
    """

    def __init__(self, config: HGGEPConfig, backbone_weights=None, encoder_weights=None):
        super().__init__()
        self.config = config
        d = config.dim
        out = config.n_components or config.n_genes  # width of what both branches predict
        if not (config.image_path or config.stats_features):
            raise ValueError("a model needs the image path, the statistics branch, or both")
        if config.pca_k is not None:
            # the low-rank output basis (k x G), set from the training expression and saved with it
            self.register_buffer("pca_basis", torch.zeros(config.n_components, config.n_genes))
        if config.stats_features:
            self.stats_head = nn.Linear(config.stats_features, out)
            nn.init.zeros_(self.stats_head.weight)
            nn.init.zeros_(self.stats_head.bias)
        if not config.image_path:
            return
        spec = config.encoder_spec
        mean, std = (spec.mean, spec.std) if config.pretrained_encoder else (_RGB_MEAN, _RGB_STD)
        self.register_buffer("rgb_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if config.pretrained_encoder:  # its own input statistics: no GEM in front of pretrained weights
            from .encoders import build_encoder

            self.gem = nn.Identity()
            self.backbone = build_encoder(spec, encoder_weights)
            probe_px = config.patch_px
        else:
            self.gem = GEM(3, config.gem_theta)
            self.backbone = ShuffleNetStages(backbone_weights)
            probe_px = config.patch_px // 2
        with torch.no_grad():
            was = self.backbone.training
            self.backbone.eval()
            maps = self.backbone(torch.zeros(1, 3, probe_px, probe_px))
            channels, sides = [m.shape[1] for m in maps], [m.shape[-1] for m in maps]
            self.backbone.train(was)
        if not config.pretrained_encoder:
            assert tuple(channels) == STAGE_CHANNELS
        self.stages = nn.ModuleList(
            StageProjection(c, s, d, config.proj_pool, config.cbam_reduction)
            for c, s in zip(channels, sides)
        )
        self.vits = nn.ModuleList(
            SpotTransformer(d, config.depth, config.heads, config.mlp_ratio, config.dropout) for _ in range(3)
        )
        self.ham = HAM(d, config.k, config.ham_rule, config.dropout)
        self.lstm = nn.LSTM(d, d, num_layers=config.lstm_layers, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(d, out)
        if config.stats_features:
            # with a statistics branch the image path starts silent: training begins at the
            # statistics solution and the image path learns what the statistics cannot explain
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        if config.zinb:
            g = config.n_genes
            self.zinb_mean, self.zinb_disp, self.zinb_pi = nn.Linear(d, g), nn.Linear(d, g), nn.Linear(d, g)

    def encode(self, patches: torch.Tensor, colour_stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Per-patch CNN part: ``N x 3 x P x P`` -> stage tokens ``N x 3 x d``.

        With ``config.colour_norm == "slide"``, ``colour_stats`` (per-channel mean and std
        over the slide's patches, see :func:`colour_stats_of`) standardise the stain of the
        slide; without them the batch's own statistics are used.
        """
        return self.project(self.trunk(patches, colour_stats))

    def trunk(self, patches: torch.Tensor, colour_stats=None) -> tuple[torch.Tensor, ...]:
        """Standardised patches -> GEM -> ShuffleNet stage maps (S3, S4, S5), or a pretrained
        encoder's three maps (its own input normalisation; no GEM)."""
        if not self.config.image_path:
            raise ValueError("this model has no image path (statistics branch only)")
        if patches.ndim != 4 or patches.shape[1] != 3:
            raise ValueError(f"patches must be N x 3 x H x W, got {tuple(patches.shape)}")
        # channels-last input crashes oneDNN's 1x1 conv backward on some CPUs: keep NCHW when
        # training; inference keeps the caller's layout (channels-last is ~2x faster on CPU)
        if torch.is_grad_enabled():
            patches = patches.contiguous()
        if self.config.colour_norm == "slide" and not self.config.pretrained_encoder:
            mean, std = colour_stats if colour_stats is not None else colour_stats_of(patches)
            x = (patches - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        else:
            x = (patches - self.rgb_mean) / self.rgb_std
        return self.backbone(self.gem(x))

    def project(self, maps) -> torch.Tensor:
        """Stage maps -> CBAM -> per-stage tokens ``N x 3 x d``."""
        return torch.stack([p(f) for p, f in zip(self.stages, maps)], dim=1)

    def project_points(self, maps) -> torch.Tensor:
        """:meth:`project` on ``[(N x (h w) x C, h, w), ...]``, one per stage (see
        :meth:`StageProjection.forward_points`); inference only."""
        return torch.stack([p.forward_points(x, h, w) for p, (x, h, w) in zip(self.stages, maps)], dim=1)

    def encode_views(self, patches: torch.Tensor, colour_stats=None, views: int | None = None) -> torch.Tensor:
        """``encode`` averaged over ``views`` (1-8) flips/90 degree rotations of each patch."""
        views = self.config.tta_views if views is None else int(views)
        if views <= 1:
            return self.encode(patches, colour_stats)
        acc = 0
        for k in range(min(views, 8)):
            acc = acc + self.encode(dihedral_view(patches, k), colour_stats)
        return acc / min(views, 8)

    def forward_tokens(self, tokens: torch.Tensor | None, coords_um: torch.Tensor,
                       stats: torch.Tensor | None = None, zinb: bool = True,
                       window_spots: int | None = None, window_overlap: float | None = None) -> dict[str, torch.Tensor]:
        """Slide-level part: attention and hypergraph across all spots of one slide, plus the
        statistics branch. ``stats``: the spots' tissue statistics z-scored within the slide
        (:func:`napari_hggep.data.features.standardise_features`), needed when
        ``config.stats_features``. ``tokens`` may be None for a statistics-only model.
        ``zinb=False`` skips the ZINB heads (training only: three spots x genes tensors).
        ``window_spots`` overrides ``config.window_spots`` and ``window_overlap`` the windows'
        margin (a fraction of their core, default ``windows.OVERLAP``; dense grids, see ``dense.py``)."""
        cfg = self.config
        out: dict[str, torch.Tensor] = {}
        pcs = 0
        if cfg.image_path:
            if tokens is None:
                raise ValueError("this model needs the patch tokens (it has an image path)")
            windows = spatial_windows(coords_um.detach().cpu().numpy(), window_spots or cfg.window_spots,
                                      OVERLAP if window_overlap is None else float(window_overlap))
            if len(windows) == 1:
                h = self._fuse(tokens, coords_um)
            else:  # overlapping windows, blended: linear cost in spots
                # positions stay relative to the slide's centre, as in training on whole slides
                # (a window centred on itself would shift every spot's position encoding)
                centre = coords_um.float().mean(dim=0, keepdim=True)
                h = torch.zeros(tokens.shape[0], cfg.dim, device=tokens.device, dtype=tokens.dtype)
                wsum = torch.zeros(tokens.shape[0], 1, device=tokens.device, dtype=tokens.dtype)
                for idx, w in windows:
                    i = torch.from_numpy(idx).to(tokens.device)
                    wt = torch.from_numpy(w).to(tokens.device, tokens.dtype)[:, None]
                    h.index_add_(0, i, wt * self._fuse(tokens[i], coords_um[i], centre))  # in place: no N x d copy per window
                    wsum.index_add_(0, i, wt)
                h = h.div_(wsum.clamp_min(1e-12))
            pcs = self.head(h)
            out["embedding"] = h
            if cfg.zinb and zinb:
                out["mean"] = torch.exp(self.zinb_mean(h).clamp(max=12.0)).clamp(1e-5, 1e6)
                out["disp"] = F.softplus(self.zinb_disp(h)).clamp(1e-4, 1e4)
                out["pi"] = torch.sigmoid(self.zinb_pi(h))
        if cfg.stats_features:
            if stats is None:
                raise ValueError("this model needs the spots' tissue statistics (it has a statistics branch)")
            if stats.shape[-1] != cfg.stats_features:
                raise ValueError(f"{stats.shape[-1]} tissue statistics given, the model expects {cfg.stats_features}")
            pcs = pcs + self.stats_head(stats.to(self.stats_head.weight.dtype))
        # blending is linear, so blending the k components equals blending the G genes (and is
        # G / k times cheaper)
        pcs = neighbour_blend(pcs, coords_um, cfg.smooth_weight)
        out["components"] = pcs
        out["expr"] = pcs @ self.pca_basis if cfg.pca_k is not None else pcs
        return out

    def _fuse(self, tokens: torch.Tensor, coords_um: torch.Tensor, centre: torch.Tensor | None = None) -> torch.Tensor:
        """Transformers per stage, the hypergraph and the LSTM fusion over one set of spots
        (positions relative to ``centre``, default their own mean)."""
        pos = position_encoding(coords_um, self.config.dim, self.config.pos_wavelength_um, centre)
        z = [vit(tokens[:, i], pos) for i, vit in enumerate(self.vits)]
        h_out = self.ham(z[0] + z[1] + z[2], coords_um)
        seq = torch.stack([*z, h_out], dim=1)  # N x 4 x d
        fused, _ = self.lstm(seq)
        return self.drop(self.norm(fused.mean(dim=1)))

    def forward(self, patches: torch.Tensor | None, coords_um: torch.Tensor, stats: torch.Tensor | None = None,
                views: int = 1) -> dict[str, torch.Tensor]:
        """The whole slide at once; ``views`` > 1 averages the patch tokens over flips/rotations."""
        tokens = self.encode_views(patches, views=views) if self.config.image_path else None
        return self.forward_tokens(tokens, coords_um, stats)


def use_fast_inference_layout(model: HGGEP) -> None:
    """Channels-last convolution weights for inference on a CPU (oneDNN runs them about twice as
    fast); give it channels-last input too. Not for training (see :meth:`HGGEP.trunk`)."""
    for part in ("gem", "backbone"):  # also a PooledEncoder's (model.pooled), which has no GEM
        module = getattr(model, part, None)
        if module is not None:
            module.to(memory_format=torch.channels_last)


def colour_stats_of(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over all pixels of a slide's patches (stain normalisation)."""
    x = patches.detach().transpose(0, 1).reshape(3, -1).float()
    return x.mean(dim=1), x.std(dim=1).clamp_min(1e-3)
