"""How far a prediction on *this* slide can be trusted, from what is known without its labels.

Two figures, both calibrated by leave-one-section-out and leave-one-patient-out folds (see
``training/calibrate.py``) and stored in the model card under ``metrics.reliability``:

* per gene, ``slide_reliability``: an estimate of the gene's PCC on this slide, from the card's
  held-out PCC (how well the gene was predicted on sections the model never saw) and the
  prediction's own spread over the slide relative to the gene's variation in training (a map
  that barely varies on this slide carries little);
* per slide, ``unfamiliar``: how far the slide's tissue statistics (colour, stain densities,
  nuclei, texture: medians over its spots, before the within-slide z-scoring the model uses) lie
  from those of the nearest training section, in units of the distances between training
  sections of one patient. Above the card's threshold the slide is unlike the training tissue
  and the held-out figures may not hold on it.

No Qt and no torch here: numpy only.
"""
from __future__ import annotations

import numpy as np


def prediction_spread(pred: np.ndarray, target_norm: dict | None) -> np.ndarray:
    """Per gene: the standard deviation of the prediction over the slide's spots divided by the
    gene's standard deviation in training (the model's target normalisation)."""
    pred = np.asarray(pred)
    n, g = pred.shape
    s1, s2 = np.zeros(g), np.zeros(g)
    shift = pred[0].astype(np.float64) if n else np.zeros(g)  # shifted sums: no cancellation
    for i in range(0, n, 8192):  # in row chunks: a whole slide is never copied
        part = pred[i:i + 8192].astype(np.float64) - shift
        s1 += part.sum(axis=0)
        s2 += (part * part).sum(axis=0)
    sd = np.sqrt(np.maximum(s2 / max(n, 1) - (s1 / max(n, 1)) ** 2, 0)) if n > 1 else np.zeros(g)
    ref = np.asarray((target_norm or {}).get("std", np.ones(pred.shape[1])), np.float64)
    return sd / np.maximum(ref, 1e-6)


def spread_of_components(components: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """:func:`prediction_spread` of a low-rank prediction ``((components @ basis) * std + mean)``
    from its ``N x k`` components and ``k x G`` basis, exactly (to float rounding) and without
    the ``N x G`` values: the s.d. of gene ``g`` over the slide divided by its training s.d. is
    ``sqrt(b_g' C b_g)`` with ``C`` the components' covariance. ``k x k`` work instead of ``N x G``
    (on 194,000 Visium HD bins x 2,072 genes: 3.6 s to a few milliseconds)."""
    c = np.asarray(components, np.float64)
    b = np.asarray(basis, np.float64)
    if len(c) < 2:
        return np.zeros(b.shape[1])
    cov = np.cov(c, rowvar=False, bias=True).reshape(c.shape[1], c.shape[1])
    return np.sqrt(np.maximum(np.einsum("kg,kl,lg->g", b, cov, b), 0.0))


def slide_signature(stats: np.ndarray) -> np.ndarray:
    """A slide's tissue statistics summarised: the median over its spots of every raw statistic
    (the ``tissue_features`` columns, before z-scoring)."""
    stats = np.asarray(stats, np.float64)
    if stats.ndim != 2 or not len(stats):
        raise ValueError("a slide signature needs the statistics of at least one spot")
    import warnings

    with warnings.catch_warnings():  # a statistic NaN on every spot stays NaN (the score then is NaN)
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(stats, axis=0)


def spread_feature(spread: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(spread, np.float64), 1e-3, None))


def reliability_score(prior: np.ndarray, spread: np.ndarray, coef: dict) -> np.ndarray:
    """The two signals standardised by their spread over the calibration folds' genes and
    averaged with ``coef["w_prior"]`` / ``1 - w_prior`` (equal weights in shipped cards)."""
    prior = np.asarray(prior, np.float64)
    prior = np.where(np.isfinite(prior), prior, float(coef.get("prior_fill", 0.0)))
    zp = (prior - coef["prior_mean"]) / coef["prior_sd"]
    zs = (spread_feature(spread) - coef["spread_mean"]) / coef["spread_sd"]
    w = float(coef.get("w_prior", 0.5))
    return w * zp + (1 - w) * zs


def gene_reliability(prior: np.ndarray, spread: np.ndarray, coef: dict) -> np.ndarray:
    """The estimated PCC of each gene on a slide: ``a + b * score`` (see
    :func:`reliability_score`), clipped to [-1, 1]. ``prior`` is the card's held-out PCC,
    ``spread`` the prediction's spread on this slide. A gene without a held-out PCC (NaN prior)
    has no evidence behind it: its estimate is NaN, never the folds' average."""
    prior = np.asarray(prior, np.float64)
    est = coef["a"] + coef["b"] * reliability_score(prior, spread, coef)
    est = np.where(np.isfinite(prior), np.clip(est, -1.0, 1.0), np.nan)
    return est.astype(np.float32)


def unfamiliar_score(signature: np.ndarray, calib: dict) -> float:
    """Distance of a slide's signature from the nearest training section's, over the card's
    chosen statistics each scaled by its spread within one patient, divided by the typical
    distance between sections of one patient."""
    idx = np.asarray(calib["features"], int)
    scale = np.asarray(calib["feature_scale"], np.float64)
    s = np.asarray(signature, np.float64)[idx] / scale
    train = np.asarray(calib["train_signatures"], np.float64)[:, idx] / scale
    d = np.sqrt(np.mean((train - s) ** 2, axis=1))
    return float(d.min() / calib["distance_scale"])


def unknown_reasons(unfamiliar: bool | None, score: float | None, um_per_px: float | None,
                    trained_um_per_px: tuple[float, float] | None = None) -> list[str]:
    """Why the expected PCC on this slide is unknown (empty: it can be estimated): the slide is
    unlike the training tissue, its familiarity cannot be scored (a NaN score is not
    "familiar"), or it was predicted at a pixel size outside the trained range."""
    out = []
    if score is not None and not np.isfinite(score):
        out.append("its likeness to the training tissue cannot be scored (the tissue statistics are not finite: "
                   "no tissue under the spots, or a wrong pixel size?)")
    elif unfamiliar:
        out.append(f"it is unlike the tissue the model was trained on (score {score:.2f})")
    if um_per_px is not None and trained_um_per_px is not None:
        lo, hi = trained_um_per_px
        if not (np.isfinite(um_per_px) and lo <= um_per_px <= hi):
            out.append(f"it was predicted at {um_per_px:g} µm/px, outside the {lo:g}-{hi:g} µm/px the model was "
                       "trained on")
    return out


def assess(pred_values: np.ndarray, stats: np.ndarray | None, genes: list[str], card_pcc: dict,
           target_norm: dict | None, calib: dict | None, spread: np.ndarray | None = None,
           um_per_px: float | None = None, trained_um_per_px: tuple[float, float] | None = None) -> dict:
    """Everything the outputs carry: per-gene ``spread`` and ``slide_reliability`` (when the card
    is calibrated), and the slide's ``unfamiliar_score`` / ``unfamiliar``. ``spread`` may come
    ready (:func:`spread_of_components`); otherwise it is computed from ``pred_values``.

    No confident figures without evidence: on a slide that is unlike the training tissue, whose
    familiarity cannot be scored, or predicted at ``um_per_px`` outside ``trained_um_per_px``,
    ``slide_reliability`` is NaN for every gene and ``reliability_unknown`` says why."""
    spread = prediction_spread(pred_values, target_norm) if spread is None else np.asarray(spread, np.float64)
    out: dict = {"spread": spread.astype(np.float32)}
    if not calib:
        return out
    slide = calib.get("slide")
    score = None
    if slide and stats is not None and len(stats):
        with np.errstate(all="ignore"):
            score = unfamiliar_score(slide_signature(stats), slide)
        out["unfamiliar_score"] = score
        # a score that cannot be computed is not "familiar"
        out["unfamiliar"] = bool(not np.isfinite(score) or score > slide["threshold"])
    if calib.get("gene"):
        prior = np.array([np.nan if card_pcc.get(g) is None else card_pcc[g] for g in genes], np.float64)
        why = unknown_reasons(out.get("unfamiliar"), score, um_per_px, trained_um_per_px)
        if why:
            out["slide_reliability"] = np.full(len(genes), np.nan, np.float32)
            out["reliability_unknown"] = "; ".join(why)
        else:
            out["slide_reliability"] = gene_reliability(prior, spread, calib["gene"])
        if calib["gene"].get("protocol"):
            out["reliability_protocol"] = str(calib["gene"]["protocol"])
    return out


def slide_verdict(pred) -> list[str]:
    """Plain sentences for the CLI and the widget: the "unlike the training tissue" warning, and
    how many genes this slide's reliability puts at or above 0.1."""
    rel = pred.reliability
    out = []
    if rel.unfamiliar:
        out.append(f"warning: this slide is unlike the tissue the model was trained on (score "
                   f"{rel.unfamiliar_score:.2f}, threshold {float('nan') if rel.unfamiliar_threshold is None else rel.unfamiliar_threshold:.2f}): "
                   "its colour, stain or tissue make-up lie outside what the held-out figures were measured on, "
                   "so the genes' reliability figures may not hold here")
    here = rel.slide_reliability
    if rel.unknown_because:
        out.append(f"expected PCC on this slide: unknown, because {rel.unknown_because}; no gene is marked "
                   "reliable on this slide")
    elif here is not None and len(here):
        here = np.asarray(here, np.float64)
        known = np.isfinite(here)
        basis = rel.protocol or "held-out folds"
        med = f"median {float(np.median(here[known])):.2f}" if known.any() else "none known"
        out.append(f"slide reliability: {int((here[known] >= 0.1).sum())} of {len(here)} genes are expected at "
                   f"PCC >= 0.1 on this slide ({med}; calibrated on {basis}"
                   + (f"; {_count((~known).sum(), 'gene')} without a held-out PCC {'has' if (~known).sum() == 1 else 'have'} "
                      "no expected figure" if (~known).any()
                      else "") + ")")
    measured = pred.measured_pcc
    if measured is not None and len(measured):
        m = np.asarray(measured, np.float64)
        ok = np.isfinite(m)
        if ok.any():
            out.append(f"measured on this slide: mean PCC {float(m[ok].mean()):.3f} (median {float(np.median(m[ok])):.3f}) "
                       f"between prediction and the slide's own counts over {int(ok.sum())} genes on "
                       f"{pred.measured.n_spots} spots")
    return out


def _count(n, noun: str) -> str:
    """``1 gene``, ``3 genes``."""
    n = int(n)
    return f"{n} {noun}{'' if n == 1 else 's'}"
