"""``predict_slide``: the one path from a slide to predicted expression, used by the CLI and
the napari widget alike. Patches are encoded in batches (progress, cancel); attention and the
hypergraph then run across all spots of the slide."""
from __future__ import annotations

from typing import Callable, Generator

import numpy as np

from ..data.patches import extract_patches, iter_patch_batches, to_tensor
from ..data.slide import Slide
from ..records import Prediction, Provenance, Reliability

__all__ = ["Prediction", "predict_steps", "predict_slide", "prediction_of", "attach_measured"]


class Step(tuple):
    """A prediction's progress: ``(done, total)`` in work units (one per spot's patch, then shares
    for the tissue statistics, the slide-wide attention, the reliability and counts, and the
    caller's own last step), with the ``phase`` it is in, in words. ``predict_steps`` never reaches
    ``total``: the last units are the caller's (writing the files, adding the layer)."""

    def __new__(cls, done: int, total: int, phase: str = ""):
        step = super().__new__(cls, (int(done), int(total)))
        step.phase = phase
        return step


def plan_units(n: int, image_path: bool, stats: bool, pooled_crops: int = 0) -> dict:
    """The work units of each phase of a prediction of ``n`` spots (see :class:`Step`)."""
    return {"patches": n if image_path else 0, "statistics": max(1, n // 10) if stats else 0,
            "pooled": n * pooled_crops,  # a pretrained encoder over each crop: as costly as a patch
            "attention": max(1, n // 4), "reliability": max(1, n // 20), "caller": max(1, n // 20)}


def predict_steps(bundle, slide: Slide, batch_size: int = 256,
                  notify: Callable[[str], None] | None = None,
                  shared_trunk: str = "auto") -> Generator[Step, None, Prediction]:
    """Generator: yields a :class:`Step` (``(done, total)`` with its ``phase``) after each batch and
    at each phase, returns a :class:`Prediction`; the last units of ``total`` are left to the caller.

    ``shared_trunk``: ``"auto"`` encodes spots closer than the model's patch with the shared
    convolutional trunk (:mod:`napari_hggep.inference.dense`: the tissue once, not every patch), ``"on"``
    / ``"off"`` force it either way.

    Stop iterating to cancel; nothing is left half-written. Out of memory on a GPU, a batch is
    retried in halves, then on the CPU; each fallback is passed to ``notify`` (default: a warning).
    """
    import torch

    from ..devices import MemoryGuard

    from .dense import use_shared_trunk

    slide.validate()
    shared = use_shared_trunk(slide, bundle.config, shared_trunk)  # also checks the mode
    if not slide.info.tissue_checked:  # never predict silently on a blank image
        from ..data.quality import require_tissue

        require_tissue(slide)
        slide.info.tissue_checked = True
    cfg = bundle.config
    device = bundle.device
    model = bundle.model.eval()
    guard = MemoryGuard(model, batch_size, notify)
    n = slide.n_spots
    units = plan_units(n, bool(cfg.image_path), bool(cfg.tissue_features), len(cfg.pooled_um))
    total = sum(units.values())
    yield Step(0, total, "reading patches and running the image model" if cfg.image_path else "tissue statistics")
    stats_job = pool = None
    if cfg.tissue_features:  # tissue statistics around every spot, in a thread beside the image path
        from concurrent.futures import ThreadPoolExecutor

        from ..data.features import tissue_features

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-hggep-stats")
        stats_job = pool.submit(tissue_features, slide, cfg.context_um, cfg.stats_um_per_px)
    try:
        tokens = None
        with torch.inference_mode():
            if cfg.image_path:
                fast = device.type == "cpu"
                if fast:
                    from ..model.hggep import use_fast_inference_layout

                    use_fast_inference_layout(model)
                tokens = torch.empty(n, 3, cfg.dim)  # on the CPU: the model may have to move there
                colour = None
                if cfg.colour_norm == "slide":  # the slide's stain statistics, from up to 1024 of its spots
                    from ..model.hggep import colour_stats_of

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
                    yield Step(done, total, f"patches and image model: {done:,}/{n:,} spots")
            stats_z = raw_stats = pooled = None
            if cfg.pooled_um:  # the encoder's pooled features around every spot (beside the statistics thread)
                from ..model.pooled import pooled_encoder
                from ..training.feature_cache import iter_pooled_statistics

                steps = iter_pooled_statistics(pooled_encoder(cfg, bundle.encoder_weights), slide, device)
                try:
                    while True:
                        done, _ = next(steps)
                        yield Step(units["patches"] + done, total, f"pretrained encoder: {done:,}/"
                                   f"{units['pooled']:,} crops")
                except StopIteration as end:
                    pooled = end.value
            if stats_job is not None or pooled is not None:
                from ..data.features import standardise_features

                parts = []
                if stats_job is not None:
                    if cfg.image_path or cfg.pooled_um:
                        yield Step(units["patches"] + units["pooled"], total, "tissue statistics around the spots")
                    raw_stats = stats_job.result()  # the tissue statistics (also what the reliability reads)
                    parts.append(standardise_features(raw_stats))
                if pooled is not None:
                    parts.append(standardise_features(pooled))
                stats_z = torch.from_numpy(np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0])
            yield Step(units["patches"] + units["pooled"] + units["statistics"], total,
                       f"slide-wide attention and hypergraph over {n:,} spots")
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
        yield Step(total - units["reliability"] - units["caller"], total, "reliability and the slide's counts")
    finally:  # done, cancelled or failed: never wait for an unfinished statistics job
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    tn = bundle.target_norm or {}
    if "mean" in tn and "std" in tn:
        z *= np.asarray(tn["std"], np.float32)  # in place: a slide's values are never held twice
        z += np.asarray(tn["mean"], np.float32)
    # how far each gene's map on this slide can be trusted, and whether the slide is unlike the
    # training tissue (napari_hggep.model.reliability; figures calibrated in the model card)
    from ..model.reliability import assess, spread_of_components

    spread = None
    if cfg.pca_k is not None:  # a low-rank output: its spread from the components (exact, k x k work)
        spread = spread_of_components(components, model.pca_basis.detach().float().cpu().numpy())
    from ..data.quality import TRAINED_UM_PER_PX

    rel = assess(z, raw_stats, list(bundle.genes), bundle.gene_pcc(), bundle.target_norm, bundle.reliability(),
                 spread, um_per_px=float(slide.um_per_px), trained_um_per_px=TRAINED_UM_PER_PX)
    threshold = float(bundle.reliability()["slide"]["threshold"]) if "unfamiliar" in rel else None
    # the target, log1p of normalised counts, is never negative: a value clipped to 0 is never
    # further from any possible truth than the regression's raw output was
    from ..io.writers.export_values import negative_fraction

    clipped = negative_fraction(z)  # in row chunks: no slide-sized mask
    np.maximum(z, 0.0, out=z)
    pred = prediction_of(slide, list(bundle.genes), z.astype(np.float32, copy=False))
    pred.provenance = Provenance(
        model=bundle.path, patch_um=cfg.patch_um, gene_pcc=bundle.gene_pcc() or {},
        image_encoding=("shared trunk" if shared else "per patch") if cfg.image_path else None,
        gene_pcc_protocol=bundle.gene_pcc_protocol(), heldout_basis=bundle.heldout_basis(),
        smooth_weight=float(cfg.smooth_weight))
    pred.reliability = Reliability(
        slide_reliability=rel.get("slide_reliability"), spread=rel.get("spread"), unfamiliar=rel.get("unfamiliar"),
        unfamiliar_score=rel.get("unfamiliar_score"), unfamiliar_threshold=threshold,
        unknown_because=rel.get("reliability_unknown"), protocol=rel.get("reliability_protocol"),
        clipped_fraction=clipped)
    attach_measured(pred, slide, notify)
    yield Step(total - units["caller"], total, "predicted")
    return pred


def attach_measured(pred: Prediction, slide: Slide, notify: Callable[[str], None] | None = None) -> None:
    """When the slide's source has counts, put the measured expression of the predicted genes
    beside the prediction (``pred.measured``, with each gene's PCC on this slide). Unreadable
    counts never cost the prediction: ``pred.measured_error`` and a notice instead."""
    from ..data.slide import SlideError
    from .measured import compare

    try:
        m = compare(slide, pred.genes, pred.values)
    except SlideError as e:
        pred.measured_error = str(e)
        (notify or _warn)(f"the slide's counts were not compared with the prediction: {e}")
        return
    if m is None:
        return
    pred.measured = m


def _warn(msg: str) -> None:
    import warnings

    warnings.warn(msg, stacklevel=3)


def _patch_tokens(model, slide: Slide, guard, colour, fast: bool, batch_size: int):
    """Yield ``(indices, tokens)``: every spot's own patch encoded on its own, batch by batch."""
    import torch

    cfg = model.config
    cached = cfg.encoder_spec.external and cfg.tta_views <= 1  # a frozen pretrained encoder: its maps on disk
    for idx, patches in iter_patch_batches(slide, cfg.patch_um, cfg.patch_px, batch_size):
        if cached:
            from ..training.feature_cache import encoder_maps

            def project(i, j, patches=patches):  # the encoder's maps computed once (training/feature_cache.py)
                dev = guard.device
                maps = encoder_maps(model, patches[i:j], dev, cache=getattr(model, "feature_cache", None))
                return model.project([m.to(dev) for m in maps]).cpu()

            yield idx, torch.cat(guard.run(project, len(idx)))
            continue
        x_all = to_tensor(patches)

        def encode(i, j, x_all=x_all):
            dev = guard.device
            x = x_all[i:j].to(dev)
            if fast and dev.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            c = None if colour is None else tuple(t.to(dev) for t in colour)
            return model.encode_views(x, c).cpu()

        yield idx, torch.cat(guard.run(encode, len(idx)))


def prediction_of(slide: Slide, genes: list[str], values: np.ndarray) -> Prediction:
    """A :class:`Prediction` for ``slide``'s spots, in full-resolution pixels."""
    info = slide.info.spatial()
    if info.image_path is None:
        info.image_path = slide.source or None
    scale = float(info.image_scale or 1.0)
    return Prediction(
        spot_ids=slide.spot_ids.copy(),
        xy=slide.xy / scale,
        genes=list(genes),
        values=values,
        array_rc=None if slide.array_rc is None else slide.array_rc.copy(),
        um_per_px=float(slide.um_per_px) * scale,
        name=slide.name,
        slide=info,
        image_scale=scale,
        spot_diameter_um=float(slide.spot_diameter_um),
        spot_shape=str(info.spot_shape or "circle"),
        image=slide.image,
    )


def predict_slide(model, slide: Slide, batch_size: int = 256,
                  progress: Callable[[int, int], None] | None = None,
                  notify: Callable[[str], None] | None = None, shared_trunk: str = "auto") -> Prediction:
    """Predict every gene of ``model`` (a bundle from :func:`load_model`) for every spot;
    ``shared_trunk`` as in :func:`predict_steps`. ``progress(done, total, phase)`` (or a callable
    of two arguments) never sees ``done == total``: the caller says when its own last step is done."""
    import time

    from .._log import logger

    logger.debug("predicting %s: %d spots at %.4g um/px, batch %d, shared trunk %s", slide.name, slide.n_spots,
                 slide.um_per_px, batch_size, shared_trunk)
    t0 = time.perf_counter()
    gen = predict_steps(model, slide, batch_size, notify, shared_trunk)
    phased = None
    while True:
        try:
            step = next(gen)
            done, total = step
        except StopIteration as stop:
            logger.debug("predicted %s in %.1f s", slide.name, time.perf_counter() - t0)
            return stop.value
        if progress:
            if phased is None:
                phased = _takes_three(progress)
            progress(done, total, getattr(step, "phase", "")) if phased else progress(done, total)


def _takes_three(f) -> bool:
    """Whether a progress callable takes ``(done, total, phase)`` (else ``(done, total)``)."""
    import inspect

    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_POSITIONAL for p in params) or len(params) >= 3
