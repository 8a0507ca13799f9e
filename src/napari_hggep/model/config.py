"""One config object that holds every size of the model; it is saved with the weights."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from .encoder_spec import EncoderSpec, shufflenet_spec


@dataclass(frozen=True)
class HGGEPConfig:
    """Every hyper-parameter of :class:`~napari_hggep.model.hggep.HGGEP`.

    Shapes follow Li et al. 2024 (SPEC section 2). ``n_genes`` is the width of the
    gene head; ``patch_px`` the side of the square input patch and ``patch_um`` the
    tissue it covers, so patches can be resampled to the same physical size on any
    slide.
    """

    n_genes: int = 785
    patch_px: int = 112
    patch_um: float = 70.5
    # input colour standardisation: "imagenet" (fixed RGB statistics) or "slide" (each
    # slide's own per-channel statistics: removes stain differences between slides)
    colour_norm: str = "imagenet"
    # test-time augmentation: average patch tokens over this many of the 8 flips/rotations
    tta_views: int = 1
    # GEM
    gem_theta: float = 0.7
    # per-stage projection: CBAM output -> (optional adaptive avg pool) -> flatten -> Linear(d)
    dim: int = 1024
    proj_pool: int | None = None  # None: flatten the whole map as in the paper
    cbam_reduction: int = 16
    # transformer per stage
    depth: int = 4
    heads: int = 8
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    pos_wavelength_um: tuple[float, float] = (100.0, 20000.0)
    # HAM
    k: int = 3
    ham_rule: str = "nearest"  # "nearest" (paper) or "largest" (reference code)
    # fusion
    lstm_layers: int = 4
    # the image path (GEM -> ShuffleNet -> CBAM -> transformers -> HAM -> LSTM); False: statistics only
    image_path: bool = True
    # statistics branch: a linear map from multi-scale tissue statistics around each spot
    # (napari_hggep.data.features, z-scored within the slide) to the output. 0: off.
    stats_features: int = 0
    context_um: tuple[float, ...] = (70.0, 150.0, 300.0)
    stats_um_per_px: float = 2.0  # working resolution of the statistics
    # low-rank output: both branches predict the top ``pca_k`` principal components of the
    # (standardised) training expression; the basis is a buffer saved with the weights. None: genes.
    pca_k: int | None = None
    # the genes in consecutive blocks (sizes summing to n_genes), each with its own pca_k
    # components: a panel widened with more genes keeps the first block's output as it was
    # (the added genes' variance cannot take over its components). None: one block.
    pca_blocks: tuple[int, ...] | None = None
    # blend each spot's prediction with the mean of its nearest ring of neighbours (0: off)
    smooth_weight: float = 0.0
    # attention and the hypergraph run within overlapping spatial windows of about this many
    # spots (linear cost on whole slides); a slide with fewer spots is one window
    window_spots: int = 4096
    zinb: bool = True
    # the image encoder (docs/encoders.md); None: GEM + ShuffleNet, as every model before encoders
    # could be chosen (such a config's dict has no "encoder" key, so older cards read as before)
    encoder: EncoderSpec | None = None
    # the pretrained encoder's pooled features (each of its three maps averaged, at crops covering
    # these many um of tissue; napari_hggep.training.feature_cache.pooled_statistics) join the tissue
    # statistics as ``pooled_features`` more columns of the statistics branch. (): none.
    pooled_um: tuple[float, ...] = ()
    pooled_features: int = 0

    def __post_init__(self):
        if self.pooled_um:
            if not self.pretrained_encoder:
                raise ValueError("pooled encoder features need a pretrained encoder (imagenet or timm:ARCH)")
            if not 0 < self.pooled_features <= self.stats_features:
                raise ValueError(f"{self.pooled_features} pooled features do not fit {self.stats_features} "
                                 "statistics columns")
        if self.encoder is not None and self.encoder.name != "shufflenet":
            if (int(self.patch_px), float(self.patch_um)) != (self.encoder.input_px, self.encoder.um_per_patch):
                raise ValueError(f"patch {self.patch_px} px / {self.patch_um} um differs from the encoder's input "
                                 f"({self.encoder.input_px} px / {self.encoder.um_per_patch} um); use with_encoder")
        if self.pca_blocks is not None:
            if self.pca_k is None:
                raise ValueError("pca_blocks needs pca_k (components per block)")
            if sum(self.pca_blocks) != self.n_genes or min(self.pca_blocks) < 1:
                raise ValueError(f"pca_blocks {list(self.pca_blocks)} must be positive and sum to n_genes={self.n_genes}")

    @property
    def n_components(self) -> int | None:
        """Width of the low-rank output: ``pca_k`` per gene block (None: the genes directly)."""
        if self.pca_k is None:
            return None
        return self.pca_k * (len(self.pca_blocks) if self.pca_blocks else 1)

    @property
    def tissue_features(self) -> int:
        """Columns of the statistics branch that are tissue statistics (the rest: pooled encoder features)."""
        return self.stats_features - self.pooled_features

    @property
    def encoder_spec(self) -> EncoderSpec:
        """The encoder, also for a config without one (ShuffleNet at this config's patch size)."""
        if self.encoder is not None:
            return self.encoder
        return shufflenet_spec(self.patch_px, self.patch_um, self.colour_norm)

    @property
    def pretrained_encoder(self) -> bool:
        """Whether the image path runs a pretrained encoder (imagenet or timm) instead of GEM + ShuffleNet."""
        return self.encoder is not None and self.encoder.name != "shufflenet"

    def with_encoder(self, spec: EncoderSpec | None) -> "HGGEPConfig":
        """This config on ``spec``'s encoder: patches of its input size covering its tissue."""
        if spec is None or spec.name == "shufflenet":
            return replace(self, encoder=None)
        # colour: the encoder's own fixed input statistics ("imagenet": fixed, not the slide's)
        return replace(self, encoder=spec, patch_px=int(spec.input_px), patch_um=float(spec.um_per_patch),
                       colour_norm="imagenet")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.encoder is None:
            d.pop("encoder")
        else:
            d["encoder"] = self.encoder.to_dict()
        d["pos_wavelength_um"] = list(self.pos_wavelength_um)
        d["context_um"] = list(self.context_um)
        if not self.pooled_um:
            d.pop("pooled_um")  # cards of models without pooled features read as before
            d.pop("pooled_features")
        else:
            d["pooled_um"] = list(self.pooled_um)
        if self.pca_blocks is None:
            d.pop("pca_blocks")  # cards of one-block models read as before
        else:
            d["pca_blocks"] = list(self.pca_blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HGGEPConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown HGGEP config keys: {sorted(unknown)}")
        d = dict(d)
        if "pos_wavelength_um" in d:
            d["pos_wavelength_um"] = tuple(d["pos_wavelength_um"])
        if "context_um" in d:
            d["context_um"] = tuple(d["context_um"])
        if "pooled_um" in d:
            d["pooled_um"] = tuple(float(u) for u in d["pooled_um"])
        if d.get("pca_blocks") is not None:
            d["pca_blocks"] = tuple(int(b) for b in d["pca_blocks"])
        if d.get("encoder") is not None:
            d["encoder"] = EncoderSpec.from_dict(d["encoder"])
        return cls(**d)

    def replace(self, **changes) -> "HGGEPConfig":
        return replace(self, **changes)


PRESETS: dict[str, HGGEPConfig] = {
    # the paper's sizes (SPEC 2): d = 1024, 4 blocks, 8 heads, 4 LSTM layers, K = 3
    "paper": HGGEPConfig(),
    # small enough to train on 2 CPU cores and to ship in the wheel (~4 MB fp16), with the
    # statistics branch and a 16-component output
    "compact": HGGEPConfig(
        dim=128,
        proj_pool=2,
        depth=2,
        heads=4,
        lstm_layers=1,
        dropout=0.2,
        stats_features=90,
        pca_k=16,
        smooth_weight=0.5,
    ),
}


def preset(name: str, **overrides) -> HGGEPConfig:
    """Return the named preset (``paper`` or ``compact``), optionally with overrides."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return cfg.replace(**overrides) if overrides else cfg
