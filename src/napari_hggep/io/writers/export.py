"""Export predictions, atomically (temporary file + rename), in the format the file name says:

* ``.csv``: ``spot_id,x,y[,array_row,array_col],<genes…>`` (:mod:`.csv_export`);
* ``.h5ad``: AnnData laid out as ``scanpy.read_visium`` lays it out (``obsm["spatial"]`` in
  full-resolution pixels, ``uns["spatial"][library_id]`` with images and scale factors), each
  gene's held-out PCC and reliability in ``var`` (:mod:`.anndata_export`);
* ``.geojson``: QuPath detections, one polygon per spot (or square per Visium HD bin), the genes as
  measurements, written row by row (:mod:`.geojson_export`);
* ``.zarr``: a SpatialData store (optional extra ``spatialdata``; see :mod:`.spatialdata_export`).

This module checks outputs before any work (the format from the file name, the folder, the
genes) and hands a prediction to the writer of its format; what every writer shares is in
:mod:`.export_values`.

Values everywhere are the model's prediction of ``log1p(counts / total x median total)``
clipped at 0 (see :data:`.export_values.VALUES`; ``predict_steps`` clips, and exports clip again
anything handed to them)."""
from __future__ import annotations

import os
from pathlib import Path

from .anndata_export import write_h5ad
from .csv_export import gene_table_path, write_csv, write_gene_table
from .geojson_export import write_geojson

FORMATS = {".csv": "CSV table", ".h5ad": "AnnData (scanpy, squidpy)", ".geojson": "QuPath GeoJSON detections",
           ".zarr": "SpatialData store"}


class OutputError(ValueError):
    """An output that cannot be written: the message says which and why (before any work is done)."""


# ---------------------------------------------------------------- formats and checks
def output_format(path) -> str:
    """``csv``, ``h5ad``, ``geojson`` or ``zarr`` from the file name; anything else is an error."""
    name = str(path).rstrip("/\\").lower()
    for ext in FORMATS:
        if name.endswith(ext):
            return ext[1:]
    suffix = Path(str(path).rstrip("/\\")).suffix or "no extension"
    kinds = ", ".join(f"{e} ({what})" for e, what in FORMATS.items())
    raise OutputError(f"{path}: the file name says which format to write, and {suffix!r} is not one of them: {kinds}")


def spatialdata_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("spatialdata") is not None


def check_output(path) -> str:
    """The format of ``path``, or an :class:`OutputError` if it cannot be written there: an unknown
    extension, a missing or read-only folder, a folder where a file goes, ``.zarr`` without the
    ``spatialdata`` extra, or a ``.zarr`` path that holds something other than a store."""
    fmt = output_format(path)
    p = Path(str(path).rstrip("/\\"))
    parent = p.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {p}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {p}: folder {parent} is not writable")
    if fmt == "zarr":
        if not spatialdata_available():
            raise OutputError(f"cannot write {p}: SpatialData stores need the optional extra "
                              "(pip install 'napari-hggep[spatialdata]')")
        if p.exists() and not p.is_dir():
            raise OutputError(f"cannot write {p}: it exists and is a file, not a SpatialData store")
        if p.is_dir() and any(p.iterdir()) and not any((p / n).exists() for n in ("zarr.json", ".zgroup", ".zattrs")):
            raise OutputError(f"cannot write {p}: the folder exists and is not a zarr store; it is left alone")
    elif p.is_dir():
        raise OutputError(f"cannot write {p}: a folder has that name")
    return fmt


def check_outputs(paths) -> list[str]:
    """:func:`check_output` for each path, and no path twice."""
    seen: dict[Path, str] = {}
    fmts = []
    for path in paths:
        fmts.append(check_output(path))
        key = Path(os.path.abspath(str(path).rstrip("/\\")))
        if key in seen:
            raise OutputError(f"{path} is given twice as an output")
        seen[key] = str(path)
    return fmts


def check_genes(available, genes) -> list[str] | None:
    """``genes`` (a list, or a comma-separated string) checked against the model's genes."""
    if genes is None:
        return None
    if isinstance(genes, str) and genes.strip().lower() == "all":  # every gene, spelled out (GeoJSON's default is fewer)
        return list(available)
    if isinstance(genes, str):
        genes = [g.strip() for g in genes.split(",") if g.strip()]
    if not genes:
        raise OutputError("--genes is empty; give gene names separated by commas, or leave it out for all genes")
    have = set(available)
    missing = [g for g in genes if g not in have]
    if missing:
        raise OutputError(f"gene(s) {', '.join(map(repr, missing[:10]))}{' …' if len(missing) > 10 else ''} "
                          f"are not among the model's {len(have)} genes")
    dup = sorted({g for g in genes if genes.count(g) > 1})
    if dup:
        raise OutputError(f"gene(s) {dup[:10]} are listed twice in --genes")
    return list(genes)


def write_prediction(pred, path, genes=None) -> Path:
    """Write ``pred`` to ``path`` in the format its name says."""
    from ..._log import logger

    fmt = check_output(path)
    logger.debug("writing %s (%s): %d spots x %s genes", path, fmt, len(pred.spot_ids),
                 len(pred.genes) if genes is None else len(genes))
    if fmt == "csv":
        out = write_csv(pred, path, genes)
        write_gene_table(pred, gene_table_path(path), genes)
        return out
    if fmt == "h5ad":
        return write_h5ad(pred, path, genes)
    if fmt == "geojson":
        return write_geojson(pred, path, genes)
    from .spatialdata_export import write_zarr

    return write_zarr(pred, path, genes)


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
