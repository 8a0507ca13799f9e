"""What every export writes: the values (the prediction clipped at 0, see :data:`VALUES`), the
exported genes and their columns, the per-gene table (held-out PCC, reliable, this slide's
reliability and spread) and the spot size in full-resolution pixels."""
from __future__ import annotations

import numpy as np

UNRELIABLE_PCC = 0.1  # genes below this held-out PCC are flagged unreliable (in the exports and the napari gene selector)

VALUES = ("predicted log1p(counts / total x median total), the model's training target; clipped at 0, "
          "because that target is never negative: a clipped value is never further from any possible "
          "true value than the raw regression output was")



def selected_columns(pred, genes):
    """The exported genes' names and their columns in ``pred.values`` (``None``: all, in order)."""
    if genes is None:
        return list(pred.genes), None
    idx = [pred.gene_index(g) for g in genes]
    return [pred.genes[i] for i in idx], idx


def selected_values(pred, genes):
    names, idx = selected_columns(pred, genes)
    return names, (pred.values if idx is None else pred.values[:, idx])


def export_values(values, rows: int = 16384) -> np.ndarray:
    """The values every export writes: the prediction clipped at 0 (see :data:`VALUES`). Values
    already clipped (as ``predict_steps`` returns them) come back as they are, not copied: a
    slide's values are never held twice. Checked ``rows`` rows at a time (no slide-sized mask)."""
    v = np.asarray(values, np.float32)
    negative = False
    for i in range(0, len(v), rows):
        part = v[i:i + rows]
        if not np.isfinite(part).all():
            raise ValueError("the prediction holds values that are not finite; nothing was written")
        negative = negative or bool((part < 0).any())
    return np.maximum(v, 0.0, dtype=np.float32) if negative else v


def negative_fraction(values, rows: int = 16384) -> float:
    """The fraction of ``values`` below 0, counted ``rows`` rows at a time."""
    v = np.asarray(values)
    if not v.size:
        return 0.0
    return sum(int(np.count_nonzero(v[i:i + rows] < 0)) for i in range(0, len(v), rows)) / v.size


def gene_table(pred, names):
    """Each gene's held-out PCC (NaN where the model card has none) and ``reliable`` (PCC >= 0.1)."""
    import pandas as pd

    pcc = pred.provenance.gene_pcc or {}
    p = np.array([float(pcc[g]) if pcc.get(g) is not None else np.nan for g in names], float)
    var = pd.DataFrame(index=pd.Index([str(g) for g in names], name="gene"))
    var["heldout_pcc"] = p
    rel = pred.reliability
    # no gene is reliable on a slide whose expected PCC is unknown (unlike the training tissue, ...)
    var["reliable"] = (np.nan_to_num(p, nan=-np.inf) >= UNRELIABLE_PCC) & (not rel.unknown_because)
    # this slide's own figures (napari_hggep.model.reliability, inference.measured), where the prediction carries them
    pos = {g: i for i, g in enumerate(pred.genes)}
    idx = [pos[g] for g in names]
    for col, v in (("slide_reliability", rel.slide_reliability), ("spread", rel.spread),
                   ("measured_pcc", pred.measured_pcc)):
        if v is not None and len(v) == len(pred.genes):
            var[col] = np.asarray(v, np.float32)[idx]
    return var


def spot_diameter_px(pred) -> float:
    """The spot (or bin) side in full-resolution pixels; without a recorded size, half the
    median distance between neighbouring spots."""
    if pred.spot_diameter_um and pred.um_per_px:
        return float(pred.spot_diameter_um) / float(pred.um_per_px)
    xy = np.asarray(pred.xy, float)
    if len(xy) < 2:
        return 1.0
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    return max(float(np.median(d[:, 1])) * 0.5, 1.0)
