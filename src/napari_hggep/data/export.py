"""Export predictions, atomically (temporary file + rename), in the format the file name says:

* ``.csv``: ``spot_id,x,y[,array_row,array_col],<genes…>``;
* ``.h5ad``: AnnData laid out as ``scanpy.read_visium`` lays it out (``obsm["spatial"]`` in
  full-resolution pixels, ``uns["spatial"][library_id]`` with images and scale factors), each
  gene's held-out PCC and reliability in ``var``;
* ``.geojson``: QuPath detections, one polygon per spot (or square per Visium HD bin), the genes as
  measurements, written row by row;
* ``.zarr``: a SpatialData store (optional extra ``spatialdata``; see :mod:`.spatialdata_export`).

Values everywhere are the model's prediction of ``log1p(counts / total x median total)``
clipped at 0 (see :data:`VALUES`; ``predict_steps`` clips, and exports clip again anything handed
to them)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .._atomic import atomic_path

FORMATS = {".csv": "CSV table", ".h5ad": "AnnData (scanpy, squidpy)", ".geojson": "QuPath GeoJSON detections",
           ".zarr": "SpatialData store"}
UNRELIABLE_PCC = 0.1  # genes below this held-out PCC are flagged unreliable (as in the widget)
SLIDE_RELIABILITY_MEANS = ("var['slide_reliability']: each gene's expected PCC on this slide, from the card's held-out "
                           "PCC and the prediction's spread over this slide (var['spread'], relative to the gene's "
                           "training variation); calibrated by leave-one-section-out and leave-one-patient-out")
UNFAMILIAR_MEANS = ("True when the slide's tissue statistics lie further from every training section than the "
                    "card's threshold (in units of the distance between sections of one training patient): "
                    "the held-out figures may not hold on this slide")
VALUES = ("predicted log1p(counts / total x median total), the model's training target; clipped at 0, "
          "because that target is never negative: a clipped value is never further from any possible "
          "true value than the raw regression output was")
THUMB_SIDES = {"hires": 2000, "lowres": 600}  # the sizes of Space Ranger's PNGs
MAPS_ARE = ("conditional means: each value is the model's expected expression given the tissue around the spot, "
            "not a sample of it, so predicted maps are much smoother than measured expression (Moran's I, 6 nearest "
            "neighbours, median over genes: 0.72-0.80 predicted vs 0.01-0.06 measured on five HER2+ sections; GNAS "
            "0.72-0.82 vs 0.10-0.26; benchmarks/bench_smoothness.py). Spatial statistics (spatially variable "
            "genes, Moran's I, neighbourhood enrichment) on predictions are not comparable with the same statistics "
            "on measured data")
MEASURED_MEANS = ("layers['measured']: the slide's own counts of each predicted gene, normalised as the prediction's "
                  "target (see 'measured_normalisation'); obs['has_counts'] marks the spots the counts list (the "
                  "others are empty rows); var['measured_pcc']: each gene's Pearson correlation between prediction and "
                  "measurement over those spots")


MEASURED_PREFIX = "measured:"  # CSV columns of the slide's own counts, beside the predicted genes


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


# ---------------------------------------------------------------- values
def _columns(pred, genes):
    """The exported genes' names and their columns in ``pred.values`` (``None``: all, in order)."""
    if genes is None:
        return list(pred.genes), None
    idx = [pred.gene_index(g) for g in genes]
    return [pred.genes[i] for i in idx], idx


def _select(pred, genes):
    names, idx = _columns(pred, genes)
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


def gene_table(pred, names):
    """Each gene's held-out PCC (NaN where the model card has none) and ``reliable`` (PCC >= 0.1)."""
    import pandas as pd

    pcc = (pred.meta or {}).get("gene_pcc") or {}
    p = np.array([float(pcc[g]) if pcc.get(g) is not None else np.nan for g in names], float)
    var = pd.DataFrame(index=pd.Index([str(g) for g in names], name="gene"))
    var["heldout_pcc"] = p
    meta = pred.meta or {}
    # no gene is reliable on a slide whose expected PCC is unknown (unlike the training tissue, ...)
    var["reliable"] = (np.nan_to_num(p, nan=-np.inf) >= UNRELIABLE_PCC) & (not meta.get("reliability_unknown"))
    # this slide's own figures (napari_hggep.reliability, training.measured), where the prediction carries them
    pos = {g: i for i, g in enumerate(pred.genes)}
    idx = [pos[g] for g in names]
    for col in ("slide_reliability", "spread", "measured_pcc"):
        v = meta.get(col)
        if v is not None and len(v) == len(pred.genes):
            var[col] = np.asarray(v, np.float32)[idx]
    return var


def gene_table_path(path) -> Path:
    """Where a CSV export's per-gene table goes: ``pred.csv`` -> ``pred.genes.csv``."""
    path = Path(path)
    name = path.name[:-len(".csv")] if path.name.lower().endswith(".csv") else path.stem
    return path.with_name(name + ".genes.csv")


def write_gene_table(pred, path, genes=None) -> Path:
    """The per-gene table (held-out PCC, reliable, this slide's reliability and spread) as CSV;
    the slide's "unlike the training tissue" verdict and score repeat on every row."""
    names, _ = _columns(pred, genes)
    var = gene_table(pred, names)
    meta = pred.meta or {}
    if meta.get("unfamiliar") is not None:
        var["slide_unfamiliar"] = bool(meta["unfamiliar"])
        var["slide_unfamiliar_score"] = float(meta["unfamiliar_score"])
    if meta.get("reliability_unknown"):
        var["slide_reliability_unknown_because"] = str(meta["reliability_unknown"])
    with atomic_path(path) as tmp:
        var.to_csv(tmp)
    return Path(path)


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


# ---------------------------------------------------------------- CSV
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
    return pd.concat([front, pd.DataFrame(export_values(vals), columns=names)], axis=1)


def write_csv(pred, path, genes=None, chunk: int = 8192) -> Path:
    """The table of :func:`prediction_frame`, written ``chunk`` rows at a time (memory does not
    grow with the slide). The header is pandas' ``to_csv`` header; the rows are written by
    Arrow's CSV writer (C++, about 7x faster than ``to_csv`` for thousands of gene columns):
    text columns quoted, numbers in their shortest text that reads back exactly (float32 genes,
    float64 x and y), ``0`` rather than ``0.0``."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    names, idx = _columns(pred, genes)
    clash = sorted(set(names) & {"spot_id", "x", "y", "array_row", "array_col"})
    if clash:
        raise ValueError(f"gene name(s) {clash} clash with the CSV's spot columns; export to .h5ad instead")
    n = len(pred.spot_ids)
    measured = getattr(pred, "measured", None)
    extra = [f"{MEASURED_PREFIX}{g}" for g in names] if measured is not None else []
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            for start in range(0, max(n, 1), chunk):
                sl = slice(start, start + chunk)
                cols = {"spot_id": pred.spot_ids[sl], "x": pred.xy[sl, 0], "y": pred.xy[sl, 1]}
                if pred.array_rc is not None:
                    cols["array_row"], cols["array_col"] = pred.array_rc[sl, 0], pred.array_rc[sl, 1]
                vals = pred.values[sl] if idx is None else pred.values[sl][:, idx]
                if start == 0:
                    f.write(pd.DataFrame(columns=[*cols, *names, *extra]).to_csv(index=False,
                                                                                  lineterminator="\n").encode())
                if not len(cols["x"]):
                    break
                columns = [np.asarray(v).astype(str) if k == "spot_id" else np.asarray(v) for k, v in cols.items()]
                columns += list(np.asfortranarray(export_values(vals)).T)  # contiguous gene columns
                if measured is not None:  # the slide's own counts, target space; empty where a spot has none
                    mv = measured.values[sl] if idx is None else measured.values[sl][:, idx]
                    mv = np.asarray(mv.todense(), np.float32)
                    mv[~measured.has_counts[sl]] = np.nan
                    columns += list(np.asfortranarray(mv).T)
                table = pa.Table.from_arrays([pa.array(c) for c in columns], names=[*cols, *names, *extra])
                pa_csv.write_csv(table, f, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
    return Path(path)


# ---------------------------------------------------------------- AnnData
def _downscale(image, max_side: int) -> tuple[np.ndarray, float]:
    """``image`` (possibly lazy, a pyramid) at most ``max_side`` px on its long side, area-averaged,
    and the factor (thumbnail px per image px)."""
    from PIL import Image

    from .image import strided

    h, w = int(image.shape[0]), int(image.shape[1])
    f = min(1.0, max_side / max(h, w))
    size = (max(1, int(round(w * f))), max(1, int(round(h * f))))
    coarse, _ = strided(image, max(1, int(1.0 / f)))
    thumb = Image.fromarray(np.ascontiguousarray(np.asarray(coarse)[..., :3]).astype(np.uint8))
    if thumb.size != size:
        thumb = thumb.resize(size, Image.BOX)
    return np.asarray(thumb), size[0] / w


def spatial_images(pred) -> dict:
    """``{"hires": (rgb uint8, scalef), "lowres": ...}`` for ``uns["spatial"]``: a Visium folder's
    PNGs (at most 2,000 px; a larger HD hires PNG is downscaled and its scale factor with it), or a
    downscaled copy of the image predicted on; ``scalef`` maps full-resolution pixels to the image."""
    if pred.images is not None:
        return dict(pred.images)
    out = {}
    files = (pred.meta or {}).get("image_files") or {}
    sf = (pred.meta or {}).get("scalefactors") or {}
    from .image import read_image

    for kind, f in files.items():
        try:
            img = np.asarray(read_image(f))
        except (OSError, ValueError):  # a PNG gone or unreadable since: the downscaled copy below stands in
            continue
        thumb, fac = _downscale(img, THUMB_SIDES["hires"])
        if float(np.asarray(thumb, np.float32).std()) < 2.0:  # black or blank (Space Ranger 1.0 sometimes writes
            continue  # one): a copy of the image predicted on stands in below
        out[kind] = (thumb, float(sf[f"tissue_{kind}_scalef"]) * fac)
    if pred.image is not None:  # hires and lowres always (scanpy's and squidpy's defaults ask for them):
        for kind, side in THUMB_SIDES.items():  # the folder's own where usable, else from the image predicted on
            if kind not in out:
                thumb, fac = _downscale(pred.image, side)
                out[kind] = (thumb, fac * float(pred.image_scale))
    return out


def to_anndata(pred, genes=None, with_values: bool = True):
    """AnnData as ``scanpy.read_visium`` makes it, so ``sc.pl.spatial(adata, color=gene)`` and
    ``squidpy.pl.spatial_scatter`` draw it without extra arguments. ``with_values=False`` leaves
    ``X`` out (:func:`write_h5ad` streams it into the file)."""
    import anndata as ad
    import pandas as pd

    if with_values:
        names, vals = _select(pred, genes)
        raw = np.asarray(vals, np.float32)
        X = export_values(raw)
    else:
        names, _ = _columns(pred, genes)
        raw, X = pred.values, None
    obs = pd.DataFrame(index=pd.Index(np.asarray(pred.spot_ids).astype(str), name="spot_id"))
    obs["in_tissue"] = np.ones(len(obs), np.int64)
    if pred.array_rc is not None:
        obs["array_row"], obs["array_col"] = np.asarray(pred.array_rc)[:, 0], np.asarray(pred.array_rc)[:, 1]
    meta = pred.meta or {}
    measured = getattr(pred, "measured", None)
    layers = {}
    if measured is not None:
        _, idx = _columns(pred, genes)
        layers["measured"] = measured.values if idx is None else measured.values[:, idx]
        obs["has_counts"] = np.asarray(measured.has_counts, bool)
    adata = ad.AnnData(X=X, obs=obs, var=gene_table(pred, names), layers=layers or None,
                       shape=(len(obs), len(names)) if X is None else None)
    adata.obsm["spatial"] = np.asarray(pred.xy, np.float64)
    lib = str(meta.get("library_id") or pred.name or "slide")
    images = spatial_images(pred)
    diam = spot_diameter_px(pred)
    sf = {k: float(v) for k, v in (meta.get("scalefactors") or {}).items()}
    sf["spot_diameter_fullres"] = float(sf.get("spot_diameter_fullres", diam))
    for kind, (_, s) in images.items():
        sf[f"tissue_{kind}_scalef"] = float(s)
    adata.uns["spatial"] = {lib: {
        "images": {k: img for k, (img, _) in images.items()},
        "scalefactors": sf,
        "metadata": {"source_image_path": str(meta.get("image_path") or ""), "software": "napari-hggep"},
    }}
    info = {
        "X": VALUES,
        "clipped_fraction": float(meta["clipped_fraction"]) if "clipped_fraction" in meta else negative_fraction(raw),
        "coordinates": "obsm['spatial'] is (x, y) in full-resolution pixels of the slide",
        "um_per_px": float(pred.um_per_px),
        "image_predicted_on": str(meta.get("image_path") or ""),
        "image_scale": float(pred.image_scale),
        "image_scale_means": "pixels of the image predicted on per full-resolution pixel",
        "spot_shape": str(pred.spot_shape),
        "spot_diameter_um": float(pred.spot_diameter_um or diam * pred.um_per_px),
        "slide": str(pred.name),
        "library_id": lib,
        "reliable": f"held-out PCC >= {UNRELIABLE_PCC}; False where the model card has no PCC",
    }
    if meta.get("unfamiliar") is not None:
        info["unfamiliar"] = bool(meta["unfamiliar"])
        info["unfamiliar_score"] = float(meta["unfamiliar_score"])
        info["unfamiliar_threshold"] = float(meta.get("unfamiliar_threshold", np.nan))
        info["unfamiliar_means"] = UNFAMILIAR_MEANS
    if meta.get("slide_reliability") is not None:
        info["slide_reliability"] = SLIDE_RELIABILITY_MEANS
        if meta.get("reliability_protocol"):
            info["slide_reliability_calibrated_on"] = str(meta["reliability_protocol"])
    if meta.get("reliability_unknown"):
        info["slide_reliability_unknown_because"] = str(meta["reliability_unknown"])
        info["reliable"] += "; none on this slide, because its expected PCC is unknown"
    info["values_are"] = MAPS_ARE
    if meta.get("smooth_weight"):
        info["neighbour_blending"] = (f"each spot's prediction is blended with the mean of its nearest ring of "
                                      f"neighbours, weight {float(meta['smooth_weight']):g}")
    if measured is not None:
        info["measured"] = MEASURED_MEANS
        info["measured_normalisation"] = str(measured.normalisation)
        info["measured_source"] = str(measured.source)
        info["measured_spots"] = int(measured.n_spots)
        ok = np.isfinite(measured.pcc)
        info["measured_pcc_mean"] = float(measured.pcc[ok].mean()) if ok.any() else float("nan")
    for k in ("model", "patch_um", "gene_pcc_protocol", "um_per_px_source", "bin_size_um"):
        if meta.get(k) is not None:
            info[k] = meta[k] if isinstance(meta[k], (int, float)) else str(meta[k])
    adata.uns["napari_hggep"] = info
    return adata


def negative_fraction(values, rows: int = 16384) -> float:
    """The fraction of ``values`` below 0, counted ``rows`` rows at a time."""
    v = np.asarray(values)
    if not v.size:
        return 0.0
    return sum(int(np.count_nonzero(v[i:i + rows] < 0)) for i in range(0, len(v), rows)) / v.size


def write_h5ad(pred, path, genes=None, rows: int = 16384) -> Path:
    """:func:`to_anndata` written to ``path``: everything but ``X`` through anndata, then ``X``
    (the clipped values, see :data:`VALUES`) streamed into the same file ``rows`` spots at a
    time, as anndata's dense-array encoding, so a slide's values are never copied whole (not even
    for a gene subset or unclipped values). Written to a temporary file, renamed when complete."""
    import h5py

    adata = to_anndata(pred, genes, with_values=False)
    _, idx = _columns(pred, genes)
    vals = pred.values
    n, g = adata.n_obs, adata.n_vars
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
        with h5py.File(tmp, "a") as f:
            if "X" in f:
                del f["X"]
            ds = f.create_dataset("X", shape=(n, g), dtype="float32")
            ds.attrs["encoding-type"] = "array"
            ds.attrs["encoding-version"] = "0.2.0"
            for i in range(0, n, rows):
                part = np.asarray(vals[i:i + rows] if idx is None else vals[i:i + rows][:, idx], np.float32)
                ds[i:i + len(part)] = export_values(part)
    return Path(path)


# ---------------------------------------------------------------- QuPath GeoJSON
def spot_outline(shape: str, diameter_px: float, n: int = 16) -> np.ndarray:
    """The closed ring (k+1 x 2, first vertex repeated) around a spot centre: a 16-gon for a round
    spot, a square of side ``diameter_px`` for a bin."""
    r = diameter_px / 2.0
    if shape == "square":
        ring = np.array([[-r, -r], [r, -r], [r, r], [-r, r]])
    else:
        t = 2 * np.pi * np.arange(n) / n
        ring = np.column_stack([r * np.cos(t), r * np.sin(t)])
    return np.vstack([ring, ring[:1]])


GEOJSON_MAX_GENES = 500  # the default GeoJSON's genes: at most this many (about 7 KB per spot)
# the coordinates are pixels of the slide, not longitude/latitude: an engineering CRS says so (without
# it, GeoJSON readers such as geopandas assume EPSG:4326); QuPath reads the features and ignores it
PIXEL_CRS = ('ENGCRS["image pixels",EDATUM["slide"],CS[Cartesian,2],AXIS["x",east,ORDER[1],LENGTHUNIT["pixel",1]],'
             'AXIS["y",south,ORDER[2],LENGTHUNIT["pixel",1]]]')


def geojson_default_genes(pred) -> list[str]:
    """The genes a GeoJSON holds when none are asked for: those expected at PCC >= 0.1 on this
    slide, best first, or, where that is unknown, those with a held-out PCC >= 0.1; at most
    :data:`GEOJSON_MAX_GENES` (``--genes all`` writes every gene)."""
    meta = pred.meta or {}
    here = meta.get("slide_reliability")
    if here is not None and np.isfinite(np.asarray(here, np.float64)).any():
        score = np.asarray(here, np.float64)
    else:
        card = meta.get("gene_pcc") or {}
        score = np.array([np.nan if card.get(g) is None else card[g] for g in pred.genes], np.float64)
    score = np.nan_to_num(score, nan=-np.inf)
    order = [i for i in np.argsort(-score, kind="stable") if score[i] >= UNRELIABLE_PCC][:GEOJSON_MAX_GENES]
    return [pred.genes[i] for i in order] or list(pred.genes[:GEOJSON_MAX_GENES])


def write_geojson(pred, path, genes=None, chunk: int = 500) -> Path:
    """A QuPath-readable FeatureCollection: one ``detection`` per spot, a closed polygon in
    full-resolution pixels, the genes as ``measurements`` rounded to 3 significant digits (the
    default genes: :func:`geojson_default_genes`). Written row by row to a temporary file
    (memory does not grow with the slide), renamed when complete."""
    import uuid

    names, vals = _select(pred, geojson_default_genes(pred) if genes is None else genes)
    vals = export_values(vals)  # not a copy where the values are already clipped
    ring = spot_outline(pred.spot_shape, spot_diameter_px(pred))
    fmt = ",".join(json.dumps(str(g)).replace("%", "%%") + ":%.3g" for g in names)
    xy = np.asarray(pred.xy, float)
    ids = np.asarray(pred.spot_ids).astype(str)
    ns = uuid.uuid5(uuid.NAMESPACE_URL, f"napari-hggep/{pred.name}")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write('{"type":"FeatureCollection","crs":{"type":"name","properties":{"name":'
                    + json.dumps(PIXEL_CRS) + '}},"features":[\n')
            for start in range(0, len(xy), chunk):
                lines = []
                for i in range(start, min(start + chunk, len(xy))):
                    pts = xy[i] + ring
                    coords = ",".join(f"[{x:.2f},{y:.2f}]" for x, y in pts)
                    lines.append(
                        '{"type":"Feature","id":"' + str(uuid.uuid5(ns, ids[i])) + '",'
                        '"geometry":{"type":"Polygon","coordinates":[[' + coords + ']]},'
                        '"properties":{"objectType":"detection","name":' + json.dumps(ids[i]) + ","
                        '"measurements":{' + (fmt % tuple(vals[i].tolist()) if names else "") + "}}}")
                f.write(("" if start == 0 else ",\n") + ",\n".join(lines))
            f.write("\n]}\n")
    return Path(path)


# ---------------------------------------------------------------- any format
def write_prediction(pred, path, genes=None) -> Path:
    """Write ``pred`` to ``path`` in the format its name says."""
    fmt = check_output(path)
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
