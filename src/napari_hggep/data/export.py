"""Export predictions to CSV and AnnData ``.h5ad``, atomically (temporary file + rename)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._atomic import atomic_path


def _select(pred, genes):
    if genes is None:
        return list(pred.genes), pred.values
    idx = [pred.gene_index(g) for g in genes]
    return [pred.genes[i] for i in idx], pred.values[:, idx]


def prediction_frame(pred, genes=None):
    import pandas as pd

    names, vals = _select(pred, genes)
    clash = sorted(set(names) & {"spot_id", "x", "y", "array_row", "array_col"})
    if clash:
        raise ValueError(f"gene name(s) {clash} clash with the CSV's spot columns; export to .h5ad instead")
    cols = {"spot_id": pred.spot_ids, "x": pred.xy[:, 0], "y": pred.xy[:, 1]}
    if pred.array_rc is not None:
        cols["array_row"], cols["array_col"] = pred.array_rc[:, 0], pred.array_rc[:, 1]
    front = pd.DataFrame(cols)
    return pd.concat([front, pd.DataFrame(vals, columns=names)], axis=1)


def write_csv(pred, path, genes=None) -> Path:
    df = prediction_frame(pred, genes)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)  # shortest exact text: float32 values and float64 x, y read back equal
    return Path(path)


def write_h5ad(pred, path, genes=None) -> Path:
    """AnnData with ``obsm['spatial']`` (full-resolution px) so scanpy/squidpy open it."""
    import anndata as ad
    import pandas as pd

    names, vals = _select(pred, genes)
    obs = pd.DataFrame(index=pd.Index(pred.spot_ids.astype(str), name="spot_id"))
    if pred.array_rc is not None:
        obs["array_row"], obs["array_col"] = pred.array_rc[:, 0], pred.array_rc[:, 1]
    adata = ad.AnnData(X=np.asarray(vals, np.float32), obs=obs, var=pd.DataFrame(index=pd.Index(names, name="gene")))
    adata.obsm["spatial"] = np.asarray(pred.xy, np.float64)
    adata.uns["napari_hggep"] = {"um_per_px": float(pred.um_per_px), "slide": str(pred.name),
                                 "values": "predicted log1p(counts / total x median total)"}
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return Path(path)


def output_stem(name: str, fallback: str = "slide") -> str:
    """A file name made from a name read from an input (a slide's name, a folder's name): one
    path component, never ``..``, no separators or control characters, at most 120 characters,
    so that ``out_dir / (output_stem(name) + ".csv")`` always lies inside ``out_dir``."""
    import re
    import unicodedata

    s = unicodedata.normalize("NFKC", str(name))
    s = "".join("_" if unicodedata.category(c).startswith("C") else c for c in s)
    s = re.sub(r"[\\/:*?\"<>|]", "_", s).strip().strip(".")
    s = s[:120].strip().strip(".")
    return s or fallback
