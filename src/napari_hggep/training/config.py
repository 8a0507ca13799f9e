"""A training run's settings (:class:`TrainConfig`), shared by :mod:`.train`, the study and the CLI."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    zinb_weight: float = 0.25
    val_frac: float = 0.15
    # "spots": val_frac of every training section's spots; "section": one whole training
    # section (closer to what a new slide is like; needs 2+ sections)
    val_split: str = "spots"
    seed: int = 0
    ema: float = 0.9  # exponential moving average of the weights, per step
    jitter: float = 0.08  # colour jitter strength
    smooth_targets: float = 0.0  # weight of the neighbours' mean in denoised training targets (0: raw)
    device: str = "auto"
    backbone: str | None = None  # pretrained image path from `napari-hggep pretrain`
    freeze_backbone: bool = False  # keep GEM + ShuffleNet fixed (their outputs are computed once)
    res_range: tuple[float, float] = (0.5, 4.0)  # scan resolutions (um/px) the image path sees in training
    ridge_alpha: float | None = None  # statistics branch; None: chosen by leave-one-section-out on the training sections
    pooled_weight: float | None = None  # the pooled encoder features' block weight; None: chosen (0: left out)
    # sections whose gradients are averaged into one step; under torchrun each rank takes its share
    # of a group (default there: one section per rank), and one process with the same group size
    # gives the same loss curve
    sections_per_step: int = 1
    # a napari-hggep checkpoint to start from (e.g. the bundled model): every weight of the image
    # path whose name and shape match is copied; the outputs (heads, PCA basis, statistics
    # ridge) are new, made for this run's genes
    init_from: str | None = None
    # keep GEM + ShuffleNet + the stage projections fixed: each spot's tokens are computed once
    # for a few flipped/rotated/rescaled views, and only the slide-level part (attention,
    # hypergraph, fusion, heads) trains; the cheap way to use a pretrained image path on a CPU
    freeze_encoder: bool = False
    encoder_views: int = 2
    max_minutes: float | None = None  # time budget for the epochs (the best model so far is kept)
    # a section with more spots trains window by window (overlapping spatial windows, the loss on
    # each window's core), gradients accumulated into the section's step: bounded memory
    train_window_spots: int = 2048
    # a pretrained encoder's weights (imagenet: the package's when None; timm: a file or snapshot
    # folder), checked against the sha256 in the model config's encoder
    encoder_weights: str | None = None
    # where a frozen pretrained encoder's maps are kept (None: $NAPARI_HGGEP_CACHE or the platform's
    # cache folder; see feature_cache.py)
    feature_cache: str | None = None
