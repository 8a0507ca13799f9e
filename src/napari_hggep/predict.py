"""``predict_slide``: the one path from a slide to predicted expression, used by the CLI and
the napari widget alike. Patches are encoded in batches (progress, cancel); attention and the
hypergraph then run across all spots of the slide."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generator

import numpy as np

from .data.patches import extract_patches, iter_patch_batches, to_tensor
from .data.slide import Slide


@dataclass
class Prediction:
    """Predicted log-normalised expression, spots x genes, with where the spots are.

    ``xy`` and ``um_per_px`` are in full-resolution pixels whichever image was predicted on: a
    Visium hires / lowres PNG is ``image_scale`` (its ``tissue_*_scalef``) times smaller, and
    :attr:`image_xy` gives the positions on it. ``image`` is the image predicted on (kept by
    reference, for the downscaled copy an AnnData export carries); ``images`` may hold that copy
    ready-made (``{"hires": (array, scalef), ...}``)."""

    spot_ids: np.ndarray
    xy: np.ndarray  # full-resolution pixel (x, y)
    genes: list[str]
    values: np.ndarray  # N x G float32
    array_rc: np.ndarray | None = None
    um_per_px: float = 1.0  # micrometres per full-resolution pixel
    name: str = "slide"
    meta: dict = field(default_factory=dict)
    image_scale: float = 1.0  # pixels of the image predicted on per full-resolution pixel
    spot_diameter_um: float | None = None
    spot_shape: str = "circle"  # "square" for Visium HD bins
    image: object = field(default=None, repr=False)
    images: dict | None = field(default=None, repr=False)
    # the slide's own counts in the target space (``training.measured.Measured``), when its source has them
    measured: object = field(default=None, repr=False)

    @property
    def image_xy(self) -> np.ndarray:
        """Spot centres in pixels of the image predicted on."""
        return np.asarray(self.xy, float) * self.image_scale

    @property
    def image_um_per_px(self) -> float:
        return float(self.um_per_px) / float(self.image_scale)

    def write(self, path, genes: list[str] | None = None) -> Path:
        """Write to ``path`` in the format its name says (.csv, .h5ad, .geojson, .zarr)."""
        from .data.export import write_prediction

        return write_prediction(self, path, genes)

    def gene_index(self, gene: str) -> int:
        try:
            return self.genes.index(gene)
        except ValueError:
            raise KeyError(f"gene {str(gene)!r} is not among the {len(self.genes)} predicted genes") from None

    def to_dataframe(self, genes: list[str] | None = None):
        from .data.csv_export import prediction_frame

        return prediction_frame(self, genes)

    def write_csv(self, path, genes: list[str] | None = None) -> Path:
        from .data.csv_export import write_csv

        return write_csv(self, path, genes)

    def write_h5ad(self, path, genes: list[str] | None = None) -> Path:
        from .data.anndata_export import write_h5ad

        return write_h5ad(self, path, genes)


def predict_steps(bundle, slide: Slide, batch_size: int = 256,
                  notify: Callable[[str], None] | None = None,
                  shared_trunk: str = "auto") -> Generator[tuple[int, int], None, Prediction]:
    """Generator: yields ``(spots_done, total)`` after each batch, returns a :class:`Prediction`.

    ``shared_trunk``: ``"auto"`` encodes spots closer than the model's patch with the shared
    convolutional trunk (:mod:`napari_hggep.dense`: the tissue once, not every patch), ``"on"``
    / ``"off"`` force it either way.

    Stop iterating to cancel; nothing is left half-written. Out of memory on a GPU, a batch is
    retried in halves, then on the CPU; each fallback is passed to ``notify`` (default: a warning).
    """
    import torch

    from .devices import MemoryGuard

    from .dense import use_shared_trunk

    slide.validate()
    shared = use_shared_trunk(slide, bundle.config, shared_trunk)  # also checks the mode
    if not slide.meta.get("tissue_checked"):  # never predict silently on a blank image
        from .data.quality import require_tissue

        require_tissue(slide)
        slide.meta["tissue_checked"] = True
    cfg = bundle.config
    device = bundle.device
    model = bundle.model.eval()
    guard = MemoryGuard(model, batch_size, notify)
    n = slide.n_spots
    yield 0, n
    stats_job = pool = None
    if cfg.stats_features:  # tissue statistics around every spot, in a thread beside the image path
        from concurrent.futures import ThreadPoolExecutor

        from .data.features import tissue_features

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-hggep-stats")
        stats_job = pool.submit(tissue_features, slide, cfg.context_um, cfg.stats_um_per_px)
    try:
        tokens = None
        with torch.inference_mode():
            if cfg.image_path:
                fast = device.type == "cpu"
                if fast:
                    from .model.hggep import use_fast_inference_layout

                    use_fast_inference_layout(model)
                tokens = torch.empty(n, 3, cfg.dim)  # on the CPU: the model may have to move there
                colour = None
                if cfg.colour_norm == "slide":  # the slide's stain statistics, from up to 1024 of its spots
                    from .model.hggep import colour_stats_of

                    sample = np.unique(np.linspace(0, n - 1, min(n, 1024)).round().astype(int))
                    colour = colour_stats_of(to_tensor(extract_patches(slide, cfg.patch_um, cfg.patch_px, sample)))
                if shared:  # spots closer than a patch: the trunk runs once over tissue tiles
                    from .dense import iter_shared_tokens

                    encoded = iter_shared_tokens(model, slide, guard, colour, fast)
                else:
                    encoded = _patch_tokens(model, slide, guard, colour, fast, batch_size)
                done = 0
                for idx, tok in encoded:
                    tokens[torch.from_numpy(idx)] = tok
                    done += len(idx)
                    yield done, n
            stats_z = raw_stats = None
            if stats_job is not None:
                from .data.features import standardise_features

                raw_stats = stats_job.result()
                stats_z = torch.from_numpy(standardise_features(raw_stats))
                if not cfg.image_path:
                    yield n, n
            coords = torch.from_numpy(slide.coords_um.astype(np.float32))
            window = overlap = None
            if shared:  # dense grids: smaller attention windows (see dense.DENSE_WINDOW_SPOTS)
                from .dense import DENSE_WINDOW_OVERLAP, DENSE_WINDOW_SPOTS

                window, overlap = min(cfg.window_spots, DENSE_WINDOW_SPOTS), DENSE_WINDOW_OVERLAP

            def across_spots(i, j):  # attention and the hypergraph over the whole slide (windowed)
                dev = guard.device
                on = (lambda t: None if t is None else t.to(dev))
                # no ZINB heads: three spots x genes tensors that prediction never reads
                out = model.forward_tokens(on(tokens), on(coords), on(stats_z), zinb=False,
                                           window_spots=window, window_overlap=overlap)
                return out["expr"].float().cpu(), out["components"].float().cpu()

            z, components = (t.numpy() for t in guard.run(across_spots, 1, "the slide's spots")[0])
    finally:  # done, cancelled or failed: never wait for an unfinished statistics job
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    tn = bundle.target_norm or {}
    if "mean" in tn and "std" in tn:
        z *= np.asarray(tn["std"], np.float32)  # in place: a slide's values are never held twice
        z += np.asarray(tn["mean"], np.float32)
    # how far each gene's map on this slide can be trusted, and whether the slide is unlike the
    # training tissue (napari_hggep.reliability; figures calibrated in the model card)
    from .reliability import assess, spread_of_components

    spread = None
    if cfg.pca_k is not None:  # a low-rank output: its spread from the components (exact, k x k work)
        spread = spread_of_components(components, model.pca_basis.detach().float().cpu().numpy())
    from .data.quality import TRAINED_UM_PER_PX

    rel = assess(z, raw_stats, list(bundle.genes), bundle.gene_pcc(), bundle.target_norm, bundle.reliability(),
                 spread, um_per_px=float(slide.um_per_px), trained_um_per_px=TRAINED_UM_PER_PX)
    if "unfamiliar" in rel:
        rel["unfamiliar_threshold"] = float(bundle.reliability()["slide"]["threshold"])
    # the target, log1p of normalised counts, is never negative: a value clipped to 0 is never
    # further from any possible truth than the regression's raw output was
    from .data.export_values import negative_fraction

    clipped = negative_fraction(z)  # in row chunks: no slide-sized mask
    np.maximum(z, 0.0, out=z)
    pred = prediction_of(slide, list(bundle.genes), z.astype(np.float32, copy=False),
                         {"model": bundle.path, "patch_um": cfg.patch_um, "gene_pcc": bundle.gene_pcc(),
                          "image_encoding": ("shared trunk" if shared else "per patch") if cfg.image_path else None,
                          "gene_pcc_protocol": bundle.gene_pcc_protocol(), "clipped_fraction": clipped,
                          "heldout_basis": bundle.heldout_basis(), "smooth_weight": float(cfg.smooth_weight), **rel})
    attach_measured(pred, slide, notify)
    return pred


def attach_measured(pred: Prediction, slide: Slide, notify: Callable[[str], None] | None = None) -> None:
    """When the slide's source has counts, put the measured expression of the predicted genes
    beside the prediction (``pred.measured``) and each gene's PCC on this slide in
    ``pred.meta["measured_pcc"]``. Unreadable counts never cost the prediction: a notice instead."""
    from .data.slide import SlideError
    from .training.measured import compare

    try:
        m = compare(slide, pred.genes, pred.values)
    except SlideError as e:
        pred.meta["measured_error"] = str(e)
        (notify or _warn)(f"the slide's counts were not compared with the prediction: {e}")
        return
    if m is None:
        return
    pred.measured = m
    pred.meta.update({"measured_pcc": m.pcc, "measured_spots": m.n_spots, "measured_normalisation": m.normalisation,
                      "measured_source": m.source, "measured_genes_absent": m.genes_absent})


def _warn(msg: str) -> None:
    import warnings

    warnings.warn(msg, stacklevel=3)


def _patch_tokens(model, slide: Slide, guard, colour, fast: bool, batch_size: int):
    """Yield ``(indices, tokens)``: every spot's own patch encoded on its own, batch by batch."""
    import torch

    cfg = model.config
    for idx, patches in iter_patch_batches(slide, cfg.patch_um, cfg.patch_px, batch_size):
        x_all = to_tensor(patches)

        def encode(i, j, x_all=x_all):
            dev = guard.device
            x = x_all[i:j].to(dev)
            if fast and dev.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            c = None if colour is None else tuple(t.to(dev) for t in colour)
            return model.encode_views(x, c).cpu()

        yield idx, torch.cat(guard.run(encode, len(idx)))


SLIDE_META = ("image_path", "library_id", "scalefactors", "image_files", "um_per_px_source", "bin_size_um")


def prediction_of(slide: Slide, genes: list[str], values: np.ndarray, meta: dict | None = None) -> Prediction:
    """A :class:`Prediction` for ``slide``'s spots, in full-resolution pixels."""
    scale = float(slide.meta.get("image_scale", 1.0) or 1.0)
    info = {k: slide.meta[k] for k in SLIDE_META if slide.meta.get(k) is not None}
    info.setdefault("image_path", slide.source or None)
    return Prediction(
        spot_ids=slide.spot_ids.copy(),
        xy=slide.xy / scale,
        genes=list(genes),
        values=values,
        array_rc=None if slide.array_rc is None else slide.array_rc.copy(),
        um_per_px=float(slide.um_per_px) * scale,
        name=slide.name,
        meta={**info, **(meta or {})},
        image_scale=scale,
        spot_diameter_um=float(slide.spot_diameter_um),
        spot_shape=str(slide.meta.get("spot_shape", "circle")),
        image=slide.image,
    )


def predict_slide(model, slide: Slide, batch_size: int = 256,
                  progress: Callable[[int, int], None] | None = None,
                  notify: Callable[[str], None] | None = None, shared_trunk: str = "auto") -> Prediction:
    """Predict every gene of ``model`` (a bundle from :func:`load_model`) for every spot;
    ``shared_trunk`` as in :func:`predict_steps`."""
    gen = predict_steps(model, slide, batch_size, notify, shared_trunk)
    while True:
        try:
            done, total = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress:
            progress(done, total)
