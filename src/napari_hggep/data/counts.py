"""Measured counts as sources hold them, read sparse and only when asked for.

* :func:`read_10x_h5_sparse`, :func:`read_counts_table`, :func:`read_st_counts`: a Space Ranger
  ``filtered_feature_bc_matrix.h5`` (Visium and Visium HD bins), an ``.h5ad`` or CSV/TSV counts
  table, a HER2+ ST ``counts.tsv.gz``: spots x genes CSR, gene symbols, gene ids, spot ids;
* :class:`CountsSource` and :func:`counts_source`: where a slide's counts are, found from what
  its reader recorded (nothing is read until :meth:`CountsSource.read`), so a slide without
  counts costs nothing more.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from .slide import Slide, SlideError


@dataclass(frozen=True)
class CountsSource:
    """Where a slide's measured counts are: ``kind`` is ``"10x_h5"``, ``"st"`` (HER2+ ST
    ``counts.tsv.gz``) or ``"table"`` (``.h5ad`` / CSV / TSV)."""

    kind: str
    path: Path
    shapes: str | None = None  # "spatialdata": the shapes element the counts belong to

    def read(self) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray | None, np.ndarray]:
        """``(counts, symbols, ids, spot_ids)``: spots x genes CSR (float32)."""
        if self.kind == "10x_h5":
            return read_10x_h5_sparse(self.path)
        if self.kind == "st":
            return read_st_counts(self.path)
        if self.kind == "spatialdata":
            return read_spatialdata_counts(self.path, self.shapes)
        return read_counts_table(self.path)

    def describe(self) -> str:
        return str(self.path)


def counts_source(slide: Slide) -> CountsSource | None:
    """The counts that belong to ``slide``'s spots, if its source has them: a Space Ranger
    folder's (or Visium HD bin folder's) ``filtered_feature_bc_matrix.h5``, a HER2+ ST folder's
    ``counts.tsv.gz``, a SpatialData store's table of raw counts, a counts table beside an image
    with a spot table (``counts.h5ad``, ``counts.tsv.gz``, ...), or one recorded by the reader
    (``info.counts_source``)."""
    info = slide.info
    given = info.counts_source
    if given is False:  # the caller compares with counts it holds itself
        return None
    if isinstance(given, CountsSource):
        return given
    if given:
        p = Path(str(given))
        return CountsSource("10x_h5" if p.suffix == ".h5" else "table", p) if p.is_file() else None
    sr = info.space_ranger
    if sr is not None and sr.folder:
        folder = Path(sr.folder)
        if sr.kind == "hd" and sr.bin_um:
            folder = folder / "binned_outputs" / f"square_{int(sr.bin_um):03d}um"
        for cand in (folder / "filtered_feature_bc_matrix.h5", folder / "outs" / "filtered_feature_bc_matrix.h5"):
            if cand.is_file():
                return CountsSource("10x_h5", cand)
        return None
    src = Path(str(slide.source).split("::")[0]) if slide.source else None
    if src is not None and src.is_dir() and src.name.lower().endswith(".zarr"):  # a SpatialData store's table
        return CountsSource("spatialdata", src, info.spatialdata_shapes) if info.spatialdata_shapes else None
    for folder in [p for p in (src, src.parent if src is not None else None) if p is not None]:
        if folder.is_dir() and (folder / "spots.tsv").is_file() and (folder / "counts.tsv.gz").is_file():
            return CountsSource("st", folder / "counts.tsv.gz")
    if src is not None and src.is_file():  # an image with a spot table: a counts table beside it, as in a study
        table = next((src.parent / n for n in COUNT_TABLES if (src.parent / n).is_file()), None)
        if table is not None:
            return CountsSource("table", table)
    return None


# the counts tables a folder of an image and its spot table may hold (the study's "table" sections)
COUNT_TABLES = ("counts.h5ad", "counts.tsv.gz", "counts.tsv", "counts.csv.gz", "counts.csv")


def read_spatialdata_counts(path, shapes_key: str):
    """The raw counts of a SpatialData store's table annotating ``shapes_key`` (as
    ``spatialdata_io.visium`` writes them: ``X`` counts, the instance ids in the instance key
    column), keyed by the shapes' instance ids."""
    import spatialdata as sd

    s = sd.read_zarr(path)
    for t in s.tables.values():
        attrs = t.uns.get("spatialdata_attrs") or {}
        regions = attrs.get("region")
        regions = [regions] if isinstance(regions, str) else list(regions or [])
        if shapes_key in regions and attrs.get("instance_key") in t.obs and "napari_hggep" not in t.uns:
            sub = t[t.obs[attrs["region_key"]].astype(str) == shapes_key] if attrs.get("region_key") in t.obs else t
            x = sparse.csr_matrix(sub.X, dtype=np.float32)
            data = x.data
            if data.size and not np.allclose(data, np.round(data)):
                raise SlideError(f"{path}: the table of {shapes_key!r} does not hold raw counts (its values are not "
                                 "whole numbers)")
            _check_counts(x, path)
            ids = sub.var["gene_ids"].to_numpy().astype(str) if "gene_ids" in sub.var else None
            return x, np.asarray(sub.var_names, str), ids, sub.obs[attrs["instance_key"]].to_numpy().astype(str)
    raise SlideError(f"{path}: no table of the store annotates {shapes_key!r} with counts")


def read_st_counts(path) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray | None, np.ndarray]:
    """A HER2+ ST ``counts.tsv.gz`` (spots in rows named ``"{x}x{y}"``, genes in columns)."""
    try:
        df = pd.read_csv(path, sep="\t", index_col=0)
    except Exception as e:  # a cut-off gzip, text in the matrix, ...
        raise SlideError(f"{path}: not a readable count matrix ({type(e).__name__}: {str(e).strip()[:200]})") from None
    df = df.loc[~df.index.astype(str).duplicated()]
    bad = [c for c, t in df.dtypes.items() if not np.issubdtype(t, np.number)]
    if bad:
        raise SlideError(f"{path}: counts must be numbers; column {bad[0]!s} is not")
    x = sparse.csr_matrix(df.to_numpy(np.float32))
    _check_counts(x, path)
    return x, np.asarray(df.columns, dtype=str), None, np.asarray(df.index.astype(str), dtype=str)


def read_10x_h5_sparse(path) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray | None, np.ndarray]:
    """A 10x feature-barcode ``.h5`` as a sparse ``barcodes x features`` CSR matrix, with gene
    names, gene ids and barcodes; only 'Gene Expression' features (antibody or CRISPR
    features of multiomic runs are left out)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            m = f["matrix"]
            shape = tuple(int(v) for v in m["shape"][:])
            mat = sparse.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=shape)
            feats = m["features"]
            dec = lambda a: np.array([v.decode() if isinstance(v, bytes) else str(v) for v in a[:]])  # noqa: E731
            names = dec(feats["name"])
            ids = dec(feats["id"]) if "id" in feats else None
            kind = dec(feats["feature_type"]) if "feature_type" in feats else None
            barcodes = dec(m["barcodes"])
    except Exception as e:  # a cut-off download, another HDF5 layout, ...
        raise SlideError(f"{path}: not a readable 10x feature-barcode matrix ({type(e).__name__}: "
                         f"{str(e).strip()[:200]})") from None
    if mat.shape != (len(names), len(barcodes)):
        raise SlideError(f"{path}: the matrix is {mat.shape[0]} x {mat.shape[1]} but lists {len(names)} features "
                         f"and {len(barcodes)} barcodes")
    x = mat.T.tocsr().astype(np.float32)
    if kind is not None:
        ge = kind == "Gene Expression"
        if ge.any() and not ge.all():
            x, names, ids = x[:, np.nonzero(ge)[0]], names[ge], None if ids is None else ids[ge]
    _check_counts(x, path)
    return x, names, ids, barcodes


def read_counts_table(path) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray | None, np.ndarray]:
    """A counts table, spots x genes: ``.h5ad`` (``X`` raw counts, or ``layers['counts']`` /
    ``raw.X`` when ``X`` is normalised), or CSV/TSV with spot ids in the first column."""
    path = Path(path)
    if path.name.lower().endswith(".h5ad"):
        import anndata

        try:
            ad = anndata.read_h5ad(path)
        except Exception as e:
            raise SlideError(f"{path}: not a readable .h5ad ({type(e).__name__}: {str(e)[:200]})") from None
        x = ad.layers["counts"] if "counts" in ad.layers else (ad.raw.X if ad.raw is not None else ad.X)
        var = ad.raw.var if ("counts" not in ad.layers and ad.raw is not None) else ad.var
        x = sparse.csr_matrix(x, dtype=np.float32)
        symbols = np.asarray(var.get("gene_symbols", var.index), dtype=str)
        ids = next((np.asarray(var[c], dtype=str) for c in ("gene_ids", "gene_id", "ensembl_id") if c in var), None)
        if ids is None and len(var.index) and str(var.index[0]).startswith("ENS") and "gene_symbols" in var:
            ids = np.asarray(var.index, dtype=str)
        _check_counts(x, path)
        return x, symbols, ids, np.asarray(ad.obs_names, dtype=str)
    sep = "\t" if ".tsv" in path.name.lower() else ","
    try:
        df = pd.read_csv(path, sep=sep, index_col=0)
    except Exception as e:
        raise SlideError(f"{path}: not a readable counts table ({type(e).__name__}: {str(e).strip()[:200]})") from None
    bad = [c for c, t in df.dtypes.items() if not np.issubdtype(t, np.number)]
    if bad:
        raise SlideError(f"{path}: counts must be numbers; column {bad[0]!s} is not (spots in rows, spot ids in the "
                         "first column, one column per gene)")
    x = sparse.csr_matrix(df.to_numpy(np.float32))
    _check_counts(x, path)
    return x, np.asarray(df.columns, dtype=str), None, np.asarray(df.index.astype(str), dtype=str)


def _check_counts(x: sparse.spmatrix, path) -> None:
    data = x.data if sparse.issparse(x) else np.asarray(x)
    if data.size and (not np.isfinite(data).all() or (data < 0).any()):
        raise SlideError(f"{path}: counts must be finite and not negative (is this normalised data? give raw counts)")
