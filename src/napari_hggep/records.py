"""The package's typed objects, at the bottom of the layer order: what a reader knows about a
slide beyond its pixels and spots (:class:`SlideInfo`, with :class:`SpaceRangerRef`), a
prediction with its parts (:class:`Prediction`: :class:`Provenance`, :class:`Reliability`,
:class:`Measured`) and a model's card (:class:`ModelCard`). Readers fill them, ``predict_steps``
builds them, the writers and the napari layers take them, checkpoints are read into and written
from a card; no part of the package passes these facts as string-keyed dicts.

Only numpy here (scipy's sparse matrices are held, never imported): every layer may import this.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np


@dataclass
class SpaceRangerRef:
    """Where a slide's Space Ranger folder is, so that another of its images or bin sizes can be
    opened and its counts found: ``kind`` is ``"visium"`` or ``"hd"`` (then ``bin_um``, 8 or 16);
    ``image`` is the image the napari layer shows."""

    folder: str
    kind: str = "visium"
    bin_um: int | None = None
    image: str | None = None


@dataclass
class SlideInfo:
    """What a reader knows about a slide beyond its pixels and spots.

    ``image_scale``: pixels of the image read per full-resolution pixel (a Visium hires PNG is its
    ``tissue_hires_scalef``); ``scalefactors`` / ``image_files`` / ``library_id``: what an AnnData
    export needs to look like ``scanpy.read_visium``'s; ``counts_source``: the counts the reader
    found (a path or a ``data.counts.CountsSource``; ``False``: the caller compares with counts it
    holds itself); ``tissue_checked``: the blank-image check ran already."""

    image_path: str | None = None
    library_id: str | None = None
    scalefactors: dict | None = None
    image_files: dict | None = None
    um_per_px_source: str | None = None
    um_per_px_unknown: bool = False
    bin_size_um: float | None = None
    image_scale: float = 1.0
    spot_shape: str = "circle"
    notice: str | None = None
    tissue_checked: bool = False
    space_ranger: SpaceRangerRef | None = None
    counts_source: object = None
    spatialdata_shapes: str | None = None

    def copy(self, **changes) -> "SlideInfo":
        return replace(self, **changes)

    def spatial(self) -> "SlideInfo":
        """The facts an export of a prediction keeps (where the image is and how it is framed);
        none of the reader's working state (notices, checks, where counts are)."""
        return SlideInfo(image_path=self.image_path, library_id=self.library_id, scalefactors=self.scalefactors,
                         image_files=self.image_files, um_per_px_source=self.um_per_px_source,
                         um_per_px_unknown=self.um_per_px_unknown, bin_size_um=self.bin_size_um,
                         image_scale=self.image_scale, spot_shape=self.spot_shape)


@dataclass
class Provenance:
    """Which model made a prediction, and how: the checkpoint, its patch in µm, how the image was
    encoded (per patch or by the shared trunk), the neighbour blending weight, and the model card's
    held-out PCC per gene with the protocol that measured it."""

    model: str | None = None
    patch_um: float | None = None
    image_encoding: str | None = None
    smooth_weight: float | None = None
    gene_pcc: dict = field(default_factory=dict)
    gene_pcc_protocol: str | None = None
    heldout_basis: object = None


@dataclass
class Reliability:
    """How far a prediction on this slide can be trusted (``napari_hggep.model.reliability``): each
    gene's expected PCC here (``slide_reliability``, NaN when unknown) and spread over the slide,
    whether the slide is unlike the training tissue, and why the expected figures are unknown
    when they are (``unknown_because``). ``clipped_fraction``: values below 0 set to 0."""

    slide_reliability: np.ndarray | None = None
    spread: np.ndarray | None = None
    unfamiliar: bool | None = None
    unfamiliar_score: float | None = None
    unfamiliar_threshold: float | None = None
    unknown_because: str | None = None
    protocol: str | None = None
    clipped_fraction: float | None = None

    def subset(self, idx) -> "Reliability":
        pick = (lambda a: None if a is None else np.asarray(a)[idx])
        return replace(self, slide_reliability=pick(self.slide_reliability), spread=pick(self.spread))


@dataclass
class Measured:
    """The slide's measured expression of the predicted genes on the predicted spots, in the
    model's target space (``inference.measured.NORMALISATION``)."""

    values: object  # scipy.sparse matrix, spots x genes, float32; empty rows for spots without counts
    has_counts: np.ndarray  # bool per spot
    pcc: np.ndarray  # per gene, prediction vs measurement over the spots with counts (NaN: constant or absent)
    genes_absent: list[str] = field(default_factory=list)
    normalisation: str = ""
    source: str = ""

    @property
    def n_spots(self) -> int:
        return int(np.sum(self.has_counts))

    def gene(self, j: int) -> np.ndarray:
        """One gene's measured values, dense, NaN on spots without counts."""
        v = np.asarray(self.values[:, j].todense(), np.float32).ravel()
        v[~self.has_counts] = np.nan
        return v

    def subset(self, idx, genes: list[str]) -> "Measured":
        keep = set(genes)
        return replace(self, values=self.values.tocsc()[:, idx].tocsr(), pcc=np.asarray(self.pcc)[idx],
                       genes_absent=[g for g in self.genes_absent if g in keep])


@dataclass
class Prediction:
    """Predicted log-normalised expression, spots x genes, with where the spots are.

    ``xy`` and ``um_per_px`` are in full-resolution pixels whichever image was predicted on: a
    Visium hires / lowres PNG is ``image_scale`` (its ``tissue_*_scalef``) times smaller, and
    :attr:`image_xy` gives the positions on it. ``image`` is the image predicted on (kept by
    reference, for the downscaled copy an AnnData export carries); ``images`` may hold that copy
    ready-made (``{"hires": (array, scalef), ...}``). ``slide``: what the reader knew of the slide
    (its image, library id, scale factors); ``measured``: the slide's own counts, when its source
    has them (``measured_error`` says why they could not be compared otherwise).
    ``io.writers.export.write_prediction`` writes it in any format."""

    spot_ids: np.ndarray
    xy: np.ndarray  # full-resolution pixel (x, y)
    genes: list[str]
    values: np.ndarray  # N x G float32
    array_rc: np.ndarray | None = None
    um_per_px: float = 1.0  # micrometres per full-resolution pixel
    name: str = "slide"
    slide: SlideInfo = field(default_factory=SlideInfo)
    provenance: Provenance = field(default_factory=Provenance)
    reliability: Reliability = field(default_factory=Reliability)
    image_scale: float = 1.0  # pixels of the image predicted on per full-resolution pixel
    spot_diameter_um: float | None = None
    spot_shape: str = "circle"  # "square" for Visium HD bins
    image: object = field(default=None, repr=False)
    images: dict | None = field(default=None, repr=False)
    measured: Measured | None = field(default=None, repr=False)
    measured_error: str | None = None

    @property
    def image_xy(self) -> np.ndarray:
        """Spot centres in pixels of the image predicted on."""
        return np.asarray(self.xy, float) * self.image_scale

    @property
    def image_um_per_px(self) -> float:
        return float(self.um_per_px) / float(self.image_scale)

    @property
    def image_path(self) -> str | None:
        return self.slide.image_path

    @property
    def measured_pcc(self) -> np.ndarray | None:
        return None if self.measured is None else np.asarray(self.measured.pcc)

    def gene_index(self, gene: str) -> int:
        try:
            return self.genes.index(gene)
        except ValueError:
            raise KeyError(f"gene {str(gene)!r} is not among the {len(self.genes)} predicted genes") from None

    def with_genes(self, genes: list[str] | None) -> "Prediction":
        """This prediction for ``genes`` only (in that order), every per-gene part with them: values,
        measured counts, expected PCC and spread. ``None`` or the same genes: itself."""
        if genes is None or list(genes) == list(self.genes):
            return self
        idx = [self.gene_index(g) for g in genes]
        return replace(self, genes=[str(g) for g in genes], values=np.asarray(self.values)[:, idx],
                       reliability=self.reliability.subset(idx),
                       measured=None if self.measured is None else self.measured.subset(idx, list(genes)))


@dataclass(frozen=True)
class ModelCard:
    """A checkpoint's card (``model.checkpoint``): its config (``HGGEPConfig.to_dict()``), genes,
    patch in µm, target normalisation (``kind``, per-gene ``mean`` / ``std``), training sections,
    metrics (the held-out PCC per gene and how it was measured, the reliability calibration, ...),
    ``extra`` provenance (training options, history, pretraining), the pretrained encoder's spec;
    the JSON beside the weights adds the file's name, sha256 and parameter count.

    :meth:`from_dict` and :meth:`to_dict` are the only translation from and to the stored JSON
    (the fields in its order; keys this version does not know are kept in ``other``), and the
    properties below the only reads inside ``metrics`` / ``extra``."""

    format: str | None = None
    format_version: int | None = None
    config: dict = field(default_factory=dict)
    genes: list = field(default_factory=list)
    patch_um: float | None = None
    target_norm: dict = field(default_factory=dict)
    sections: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    encoder: dict | None = None
    weights_file: str | None = None
    file_sha256: str | None = None
    content_sha256: str | None = None
    n_parameters: int | None = None
    other: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelCard":
        known = {f.name for f in fields(cls)} - {"other"}
        return cls(**{k: v for k, v in d.items() if k in known}, other={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict:
        """The stored JSON: every field that is set, in the file's order, then the unknown keys."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "other"}
        return {**{k: v for k, v in out.items() if v is not None}, **self.other}

    @property
    def gene_pcc(self) -> dict:
        """Held-out PCC per gene, when the card has it."""
        return dict((self.metrics or {}).get("gene_pcc") or {})

    @property
    def gene_pcc_protocol(self) -> str | None:
        """How :attr:`gene_pcc` was measured: ``leave-one-patient-out`` (new patients) or
        ``leave-one-section-out``."""
        return (self.metrics or {}).get("gene_pcc_protocol") or ("leave-one-section-out" if self.gene_pcc else None)

    @property
    def heldout_patients(self) -> dict:
        """The held-out sections, each with its patient."""
        return ((self.metrics or {}).get("protocol") or {}).get("patients") or {}

    @property
    def calibration(self) -> dict | None:
        """The calibration of the per-slide reliability and of the "unlike the training tissue"
        score (``napari_hggep.reliability``), or None for an older card."""
        return (self.metrics or {}).get("reliability") or None

    @property
    def pretrained_backbone(self) -> dict | None:
        """How the image path was pretrained (e.g. its SimCLR recipe), when it was."""
        return (self.extra or {}).get("pretrained_backbone")

    @property
    def heldout_basis(self) -> str | None:
        """What the held-out PCC rests on, in words: e.g. "5 held-out sections of 2 patients
        (leave-one-patient-out)"."""
        pats = self.heldout_patients
        if not pats:
            return None
        n_p = len(set(pats.values()))
        return (f"{len(pats)} held-out section{'s' * (len(pats) != 1)} of {n_p} patient{'s' * (n_p != 1)}"
                + (f" ({self.gene_pcc_protocol})" if self.gene_pcc_protocol else ""))
