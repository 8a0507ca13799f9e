"""Training targets (SPEC 2.9): counts / total x median total, then log(1 + x)."""
from __future__ import annotations

import numpy as np


def normalise_counts(counts: np.ndarray, size_genes: int | None = None) -> np.ndarray:
    """``size_genes``: take each spot's total over the first this many genes only (a widened
    panel keeps the size factors, and so the targets, of its original genes)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts[:, :size_genes].sum(axis=1, keepdims=True)
    med = float(np.median(total)) if len(total) else 1.0
    scaled = np.divide(counts, np.where(total > 0, total, 1.0)) * max(med, 1.0)
    return np.log1p(scaled).astype(np.float32)
