"""The paper's metrics per held-out slide: PCC, SSIM, RMSE, ARI (SPEC 3)."""
from __future__ import annotations

import numpy as np


def gene_pcc(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson correlation per gene across spots; NaN where either side is constant."""
    p = pred - pred.mean(axis=0)
    t = true - true.mean(axis=0)
    den = np.sqrt((p**2).sum(axis=0) * (t**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p * t).sum(axis=0) / den
    r[~(den > 1e-12)] = np.nan
    return r


def mean_over_sections(rows) -> np.ndarray:
    """Per gene, the mean over sections (rows) of a per-gene figure, ignoring NaN (a gene
    constant on a section); NaN, without a warning, where a gene has no figure on any section."""
    import warnings

    arr = np.asarray(rows, dtype=float)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice"
        return np.nanmean(arr, axis=0)


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = a.min(axis=0), a.max(axis=0)
    rng = np.where(hi - lo > 0, hi - lo, 1.0)
    return (a - lo) / rng


def gene_ssim(pred: np.ndarray, true: np.ndarray, c1: float = 0.01**2, c2: float = 0.03**2) -> np.ndarray:
    """SSIM per gene on the spot values scaled to [0, 1] (paper eq. 19-20)."""
    x, y = _minmax(pred), _minmax(true)
    mx, my = x.mean(axis=0), y.mean(axis=0)
    vx, vy = x.var(axis=0), y.var(axis=0)
    cov = ((x - mx) * (y - my)).mean(axis=0)
    return ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - true) ** 2)))


def adjusted_rand_index(a, b) -> float:
    a = np.unique(np.asarray(a), return_inverse=True)[1]
    b = np.unique(np.asarray(b), return_inverse=True)[1]
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    comb = lambda x: x * (x - 1) / 2  # noqa: E731
    sum_ij = comb(table).sum()
    sa, sb, n = comb(table.sum(1)).sum(), comb(table.sum(0)).sum(), comb(len(a))
    expected = sa * sb / n if n else 0.0
    mx = (sa + sb) / 2
    return float((sum_ij - expected) / (mx - expected)) if mx != expected else 1.0


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(len(x), k, replace=False)]
    for _ in range(iters):
        lab = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        new = np.array([x[lab == j].mean(0) if (lab == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return lab


def slide_metrics(pred: np.ndarray, true: np.ndarray, labels=None) -> dict:
    """All metrics for one held-out slide; ``pred``/``true`` are normalised expression."""
    r = gene_pcc(pred, true)
    ok = np.isfinite(r)
    out = {
        "n_spots": int(len(true)),
        "pcc_mean": float(np.nanmean(r)) if ok.any() else float("nan"),
        "pcc_median": float(np.nanmedian(r)) if ok.any() else float("nan"),
        "n_genes_scored": int(ok.sum()),
        "n_genes_constant": int((~ok).sum()),
        "ssim_mean": float(np.nanmean(gene_ssim(pred, true))),
        "rmse": rmse(pred, true),
        "gene_pcc": r,
    }
    if labels is not None:
        labels = np.asarray(labels)
        k = len(np.unique(labels))
        out["ari"] = adjusted_rand_index(labels, kmeans(pred, k))
    return out


def morans_i(values: np.ndarray, xy: np.ndarray, k: int = 6) -> np.ndarray:
    """Moran's I per column of ``values`` (spots x genes) with binary, row-standardised weights
    on each spot's ``k`` nearest neighbours (squidpy's default graph for a generic layout: 6
    neighbours); NaN for a constant column."""
    from scipy.spatial import cKDTree

    v = np.asarray(values, np.float64)
    if v.ndim == 1:
        v = v[:, None]
    n = len(v)
    k = min(k, n - 1)
    if k < 1:
        return np.full(v.shape[1], np.nan)
    _, idx = cKDTree(np.asarray(xy, np.float64)).query(xy, k=k + 1)
    z = v - v.mean(axis=0)
    lag = z[idx[:, 1:]].mean(axis=1)  # row-standardised: the mean of the neighbours
    den = (z * z).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (z * lag).sum(axis=0) / den
    r[~(den > 1e-12)] = np.nan
    return r
