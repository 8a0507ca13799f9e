"""A prediction beside the slide's own measured expression, wherever the slide's source has
counts (Space Ranger ``filtered_feature_bc_matrix.h5``, Visium HD bins, HER2+ ST
``counts.tsv.gz``, an ``.h5ad`` or CSV counts table).

The measured expression is put in the model's target space (:data:`NORMALISATION`), for the
predicted genes on the predicted spots, and stays sparse (``log1p`` keeps zeros zero); each
gene's Pearson correlation between prediction and measurement on this slide is computed from
sparse sums, so a Visium HD slide is never densified. No Qt, no torch.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from ..data.counts import CountsSource, counts_source
from ..data.slide import SlideError
from ..records import Measured
from ..training.panel import match_columns

NORMALISATION = ("log1p(counts / spot total x median spot total) (scanpy's normalize_total + log1p): "
                 "spot totals over all {n} genes of the counts, the median over this slide's spots with counts; "
                 "genes the counts do not list are absent (their PCC is NaN)")


def slide_counts(slide) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray | None, np.ndarray, str] | None:
    """The slide's counts ``(spots x genes CSR, symbols, ids, has_counts per spot, source)`` in the
    slide's spot order, or None when its source has none. Read only now (never by the reader)."""
    if slide.counts is not None and slide.genes is not None:
        x = sparse.csr_matrix(np.asarray(slide.counts, np.float32))
        return x, np.asarray(slide.genes, str), None, np.ones(slide.n_spots, bool), slide.source or slide.name
    src = counts_source(slide)
    if src is None:
        return None
    return join_counts(slide, src)


def join_counts(slide, src: CountsSource):
    counts, symbols, ids, spot_ids = src.read()
    index = pd.Index(np.asarray(spot_ids).astype(str))
    if index.has_duplicates:
        index = index.drop_duplicates(keep="first")
        keep_rows = ~pd.Index(np.asarray(spot_ids).astype(str)).duplicated(keep="first")
        counts = counts[np.flatnonzero(keep_rows)]
    pos = index.get_indexer(np.asarray(slide.spot_ids).astype(str))
    has = pos >= 0
    if not has.any():
        raise SlideError(f"{src.describe()}: none of the slide's {slide.n_spots} spots has counts there (spot "
                         f"{slide.spot_ids[0]!s} vs {index[0] if len(index) else 'nothing'}); the spot ids or "
                         "barcodes must match")
    rows = np.where(has, pos, 0)
    x = counts[rows].tocsr()
    if not has.all():  # spots the matrix does not list: empty rows
        x = sparse.diags(has.astype(np.float32)) @ x
    return sparse.csr_matrix(x, dtype=np.float32), symbols, ids, has, src.describe()


def measured_expression(counts: sparse.csr_matrix, symbols, ids, genes: list[str],
                        has_counts: np.ndarray) -> tuple[sparse.csr_matrix, list[str], str]:
    """The counts of ``genes`` (matched by symbol or Ensembl id) in the target space:
    ``log1p(counts / total x median total)`` with each spot's total over all genes of the counts
    (its library size) and the median over the spots with counts.

    The library size, not the model's panel total, so that the figures match what any scanpy
    user computes from the same counts (per-gene PCC between the two normalisations: 0.98 on
    C2, 0.99 on B4; the bundled model's targets took totals over its first 785 genes)."""
    cols = match_columns(list(genes), symbols, ids)
    present = cols >= 0
    total = np.asarray(counts.sum(axis=1), np.float64).ravel()
    sel = counts[:, np.where(present, cols, 0)].tocsc()
    sel = sparse.csr_matrix(sel @ sparse.diags(present.astype(np.float32)), dtype=np.float64)
    ref = total[has_counts]
    med = max(float(np.median(ref)) if len(ref) else 1.0, 1.0)
    scale = np.divide(med, total, out=np.zeros_like(total), where=total > 0)
    x = (sparse.diags(scale) @ sel).tocsr()
    x.data = np.log1p(x.data)
    x.eliminate_zeros()
    return x.astype(np.float32), [g for g, p in zip(genes, present) if not p], NORMALISATION.format(n=counts.shape[1])


def sparse_gene_pcc(pred: np.ndarray, measured: sparse.csr_matrix, rows: np.ndarray | None = None,
                    chunk: int = 16384) -> np.ndarray:
    """Pearson correlation per gene between a dense ``pred`` (spots x genes) and a sparse
    ``measured`` over ``rows`` (default all), from sums (float64, prediction in row chunks);
    NaN where either side is constant."""
    pred = np.asarray(pred)
    idx = np.arange(len(pred)) if rows is None else np.flatnonzero(rows)
    n, g = len(idx), pred.shape[1]
    if n < 2:
        return np.full(g, np.nan, np.float32)
    m = measured[idx].tocsr().astype(np.float64)
    sm = np.asarray(m.sum(axis=0)).ravel()
    smm = np.asarray(m.multiply(m).sum(axis=0)).ravel()
    sp, spp, spm = np.zeros(g), np.zeros(g), np.zeros(g)
    shift = pred[idx[0]].astype(np.float64)  # shifted sums: no cancellation
    for i in range(0, n, chunk):
        rr = idx[i:i + chunk]
        p = pred[rr].astype(np.float64) - shift
        sp += p.sum(axis=0)
        spp += (p * p).sum(axis=0)
        spm += np.asarray(m[i:i + chunk].multiply(p).sum(axis=0)).ravel()
    cov = spm / n - (sp / n) * (sm / n)
    vp = spp / n - (sp / n) ** 2
    vm = smm / n - (sm / n) ** 2
    den = np.sqrt(np.maximum(vp, 0) * np.maximum(vm, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / den
    r[~(den > 1e-12)] = np.nan
    return np.clip(r, -1, 1).astype(np.float32)


def compare(slide, genes: list[str], pred: np.ndarray) -> Measured | None:
    """The slide's measured expression of ``genes`` and each gene's PCC against ``pred`` (spots x
    genes, the slide's spot order), or None when the slide's source has no counts."""
    got = slide_counts(slide)
    if got is None:
        return None
    counts, symbols, ids, has, src = got
    values, absent, how = measured_expression(counts, symbols, ids, genes, has)
    pcc = sparse_gene_pcc(pred, values, has)
    if absent:
        pcc[np.isin(np.asarray(genes), absent)] = np.nan
    return Measured(values, has, pcc, absent, how, src)
