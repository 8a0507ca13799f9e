"""AnnData exports (``.h5ad``), laid out as ``scanpy.read_visium`` lays them out: ``obsm["spatial"]`` in
full-resolution pixels, ``uns["spatial"][library_id]`` with images and scale factors, each gene's
held-out PCC and reliability in ``var``; written by anndata's own writer."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..._atomic import atomic_path
from .export_values import (
    UNRELIABLE_PCC,
    VALUES,
    export_values,
    gene_table,
    negative_fraction,
    selected_columns,
    selected_values,
    spot_diameter_px,
)

SLIDE_RELIABILITY_MEANS = ("var['slide_reliability']: each gene's expected PCC on this slide, from the card's held-out "
                           "PCC and the prediction's spread over this slide (var['spread'], relative to the gene's "
                           "training variation); calibrated by leave-one-section-out and leave-one-patient-out")

UNFAMILIAR_MEANS = ("True when the slide's tissue statistics lie further from every training section than the "
                    "card's threshold (in units of the distance between sections of one training patient): "
                    "the held-out figures may not hold on this slide")

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



def _downscale(image, max_side: int) -> tuple[np.ndarray, float]:
    """``image`` (possibly lazy, a pyramid) at most ``max_side`` px on its long side, area-averaged,
    and the factor (thumbnail px per image px)."""
    from PIL import Image

    from ...data.image import strided

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
    files = pred.slide.image_files or {}
    sf = pred.slide.scalefactors or {}
    from ...data.image import read_image

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


def absolute_path(path) -> str:
    """``path`` made absolute (against the working directory it was given in), so an export says
    where its image is wherever the file is opened later; a SpatialData element
    (``store.zarr::image``) keeps its element name; no path stays ``""``."""
    text = str(path or "")
    if not text:
        return ""
    store, sep, element = text.partition("::")
    return str(Path(store).expanduser().resolve()) + sep + element


def library_id(pred) -> str:
    """The library id of an export (the key of ``uns["spatial"]``): the one the slide's files give (a
    Space Ranger folder's sample name), else the stem of the image predicted on (``slide7.ome.tif``
    -> ``slide7``), else the slide's name."""
    from ...data.image import image_stem, is_image_path

    info = pred.slide
    # a library id names an HDF5 group: no "/" in it (a slide named "/" made an unreadable .h5ad)
    clean = lambda s: str(s).replace("/", "_").strip() or "slide"  # noqa: E731
    if info.library_id:
        return clean(info.library_id)
    path = str(info.image_path or "")
    if path and "::" not in path and is_image_path(path):
        return clean(image_stem(path))
    return clean(pred.name or "slide")


def to_anndata(pred, genes=None, rows: int = 16384):
    """AnnData as ``scanpy.read_visium`` makes it, so ``sc.pl.spatial(adata, color=gene)`` and
    ``squidpy.pl.spatial_scatter`` draw it without extra arguments; ``X`` float32, the clipped
    values (:func:`~.export_values.export_values`, checked ``rows`` spots at a time)."""
    import anndata as ad
    import pandas as pd

    names, vals = selected_values(pred, genes)
    raw = np.asarray(vals, np.float32)
    X = export_values(raw, rows=rows)
    obs = pd.DataFrame(index=pd.Index(np.asarray(pred.spot_ids).astype(str), name="spot_id"))
    obs["in_tissue"] = np.ones(len(obs), np.int64)
    if pred.array_rc is not None:
        obs["array_row"], obs["array_col"] = np.asarray(pred.array_rc)[:, 0], np.asarray(pred.array_rc)[:, 1]
    rel, prov = pred.reliability, pred.provenance
    measured = pred.measured
    layers = {}
    if measured is not None:
        _, idx = selected_columns(pred, genes)
        layers["measured"] = measured.values if idx is None else measured.values[:, idx]
        obs["has_counts"] = np.asarray(measured.has_counts, bool)
    adata = ad.AnnData(X=X, obs=obs, var=gene_table(pred, names), layers=layers or None)
    adata.obsm["spatial"] = np.asarray(pred.xy, np.float64)
    lib = library_id(pred)
    image_path = absolute_path(pred.slide.image_path)
    images = spatial_images(pred)
    diam = spot_diameter_px(pred)
    sf = {k: float(v) for k, v in (pred.slide.scalefactors or {}).items()}
    sf["spot_diameter_fullres"] = float(sf.get("spot_diameter_fullres", diam))
    for kind, (_, s) in images.items():
        sf[f"tissue_{kind}_scalef"] = float(s)
    adata.uns["spatial"] = {lib: {
        "images": {k: img for k, (img, _) in images.items()},
        "scalefactors": sf,
        "metadata": {"source_image_path": image_path, "software": "napari-hggep"},
    }}
    info = {
        "X": VALUES,
        "clipped_fraction": float(rel.clipped_fraction) if rel.clipped_fraction is not None else negative_fraction(raw),
        "coordinates": "obsm['spatial'] is (x, y) in full-resolution pixels of the slide",
        "um_per_px": float(pred.um_per_px),
        "image_predicted_on": image_path,
        "image_scale": float(pred.image_scale),
        "image_scale_means": "pixels of the image predicted on per full-resolution pixel",
        "spot_shape": str(pred.spot_shape),
        "spot_diameter_um": float(pred.spot_diameter_um or diam * pred.um_per_px),
        "slide": str(pred.name),
        "library_id": lib,
        "reliable": f"held-out PCC >= {UNRELIABLE_PCC}; False where the model card has no PCC",
    }
    if rel.unfamiliar is not None:
        info["unfamiliar"] = bool(rel.unfamiliar)
        info["unfamiliar_score"] = float(rel.unfamiliar_score)
        info["unfamiliar_threshold"] = float(np.nan if rel.unfamiliar_threshold is None else rel.unfamiliar_threshold)
        info["unfamiliar_means"] = UNFAMILIAR_MEANS
    if rel.slide_reliability is not None:
        info["slide_reliability"] = SLIDE_RELIABILITY_MEANS
        if rel.protocol:
            info["slide_reliability_calibrated_on"] = str(rel.protocol)
    if rel.unknown_because:
        info["slide_reliability_unknown_because"] = str(rel.unknown_because)
        info["reliable"] += "; none on this slide, because its expected PCC is unknown"
    info["values_are"] = MAPS_ARE
    if prov.smooth_weight:
        info["neighbour_blending"] = (f"each spot's prediction is blended with the mean of its nearest ring of "
                                      f"neighbours, weight {float(prov.smooth_weight):g}")
    if measured is not None:
        info["measured"] = MEASURED_MEANS
        info["measured_normalisation"] = str(measured.normalisation)
        info["measured_source"] = str(measured.source)
        info["measured_spots"] = int(measured.n_spots)
        ok = np.isfinite(measured.pcc)
        info["measured_pcc_mean"] = float(measured.pcc[ok].mean()) if ok.any() else float("nan")
    for k, v in (("model", prov.model), ("patch_um", prov.patch_um), ("gene_pcc_protocol", prov.gene_pcc_protocol),
                 ("um_per_px_source", pred.slide.um_per_px_source), ("bin_size_um", pred.slide.bin_size_um)):
        if v is not None:
            info[k] = v if isinstance(v, (int, float)) else str(v)
    adata.uns["napari_hggep"] = info
    return adata


def write_h5ad(pred, path, genes=None, rows: int = 16384) -> Path:
    """:func:`to_anndata` written to ``path`` by anndata's own writer (``AnnData.write_h5ad``, its
    encodings and versions), atomically: into a temporary file in the same folder, renamed over
    ``path`` (``os.replace``) only when complete, so a failed write never leaves half a file.
    ``X`` holds the clipped values (see :data:`VALUES`), checked ``rows`` spots at a time; values
    already clipped (as ``predict_steps`` returns them) are written without a copy."""
    adata = to_anndata(pred, genes, rows=rows)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return Path(path)
