"""Slides and predictions as napari layer data tuples, and colouring spots by a gene.
No Qt here: napari layer objects are only touched by callers on the main thread."""
from __future__ import annotations

import numpy as np

from ..data.slide import Slide

KEY = "hggep"  # metadata namespace on our layers


SPATIAL_META = ("image_scale", "library_id", "scalefactors", "image_files", "image_path")  # for exports


def image_layer_data(slide: Slide, um_per_px_source: str | None = None) -> tuple:
    data = image_data_tuple(slide.image, slide.um_per_px, slide.name, slide.source,
                            um_per_px_source or slide.meta.get("um_per_px_source") or "the slide's files",
                            notice=slide.meta.get("notice"))
    data[1]["metadata"][KEY].update({k: slide.meta[k] for k in SPATIAL_META if slide.meta.get(k) is not None})
    return data


def image_data_tuple(image, um_per_px: float | None, name: str, source: str = "",
                     um_per_px_source: str | None = None, notice: str | None = None) -> tuple:
    """An RGB image layer in micrometres; a pyramid (a lazy TIFF with levels) becomes a multiscale
    layer that napari reads level by level, so a whole slide opens without decoding level 0.
    ``um_per_px_source`` says where the pixel size came from (shown beside the widget's field)."""
    from ..data.image import pyramid

    levels = [lev for lev, _ in pyramid(image)]
    meta = {KEY: {"kind": "image", "um_per_px": None if um_per_px is None else float(um_per_px),
                  "um_per_px_source": um_per_px_source if um_per_px is not None else None,
                  "source": str(source), "name": name, **({"notice": notice} if notice else {})}}
    kwargs = {"name": name, "rgb": True, "metadata": meta, "multiscale": len(levels) > 1}
    if um_per_px is not None:
        kwargs["scale"] = (float(um_per_px),) * 2
    return (levels if len(levels) > 1 else image, kwargs, "image")


def spot_features(slide_ids, array_rc=None):
    import pandas as pd

    f = pd.DataFrame({"spot_id": np.asarray(slide_ids).astype(str)})
    if array_rc is not None:
        f["array_row"], f["array_col"] = array_rc[:, 0], array_rc[:, 1]
    return f


def spots_layer_data(slide: Slide, name: str | None = None) -> tuple:
    upp = float(slide.um_per_px)
    shape = slide.meta.get("spot_shape", "circle")
    meta = {KEY: {"kind": "spots", "um_per_px": upp, "spot_diameter_um": slide.spot_diameter_um, "spot_shape": shape,
                  "image_scale": float(slide.meta.get("image_scale", 1.0))}}
    kwargs = {
        **({"symbol": "square"} if shape == "square" else {}),
        "name": name or f"{slide.name} spots",
        "scale": (upp, upp),
        "size": slide.spot_diameter_um / upp,
        "face_color": "transparent",
        "border_color": "yellow",
        "border_width": 0.08,
        "features": spot_features(slide.spot_ids, slide.array_rc),
        "metadata": meta,
    }
    return (slide.xy[:, ::-1].copy(), kwargs, "points")


FLAT_FRACTION = 0.05  # a map whose 1st-99th percentile spread is below 5 % of the gene's training s.d. is flat
RANGE_NAME = "1st–99th percentile"


def gene_ranges(values: np.ndarray) -> np.ndarray:
    """Genes x 2: each gene's 1st and 99th percentile over the spots (computed once per result)."""
    v = np.asarray(values, dtype=np.float32)
    if len(v) == 0:
        return np.zeros((v.shape[1] if v.ndim == 2 else 0, 2), np.float32)
    return np.percentile(v, [1, 99], axis=0).T.astype(np.float32)


def prediction_layer_data(pred, spot_diameter_um: float, gene_pcc: dict | None = None, name=None,
                          gene_pcc_protocol: str | None = None, gene_std=None, ranges=None) -> tuple:
    """A Points layer of the predicted spots; coloured later by :func:`color_by_gene`.

    All genes live in the layer's metadata (``values``: spots x genes, with each gene's
    1st-99th percentile ``ranges`` and training s.d. ``gene_std``); the features table holds
    only the spot id and the gene shown, because napari's status bar lists every feature of
    the spot under the cursor."""
    upp = float(pred.image_um_per_px)  # the layer's pixels are those of the image predicted on
    values = np.asfortranarray(np.asarray(pred.values, dtype=np.float32))  # a gene is a contiguous column
    genes = [str(g) for g in pred.genes]
    meta = {KEY: {"kind": "prediction", "genes": genes, "values": values,
                  "spot_ids": np.asarray(pred.spot_ids).astype(str),
                  "array_rc": None if pred.array_rc is None else np.asarray(pred.array_rc),
                  "ranges": gene_ranges(values) if ranges is None else np.asarray(ranges, np.float32),
                  "gene_std": None if gene_std is None else np.asarray(gene_std, np.float32).reshape(-1),
                  "um_per_px": upp, "gene_pcc": dict(gene_pcc or {}), "gene_pcc_protocol": gene_pcc_protocol,
                  "gene": None, "colormap": "viridis", "slide": pred.name,
                  # for exports: full-resolution pixels = layer pixels / image_scale
                  "image_scale": float(pred.image_scale), "spot_diameter_um": float(spot_diameter_um),
                  "spot_shape": pred.spot_shape, "export_meta": _export_meta(pred),
                  "spatial_images": pred.images,
                  # this slide's own figures (napari_hggep.reliability): gene -> expected PCC here
                  "slide_reliability": _per_gene(pred, "slide_reliability"),
                  "heldout_basis": (pred.meta or {}).get("heldout_basis"),
                  "unfamiliar": (pred.meta or {}).get("unfamiliar"),
                  "unfamiliar_score": (pred.meta or {}).get("unfamiliar_score"),
                  "unfamiliar_threshold": (pred.meta or {}).get("unfamiliar_threshold"),
                  "reliability_unknown": (pred.meta or {}).get("reliability_unknown"),
                  **_measured_meta(pred)}}
    kwargs = {
        **({"symbol": "square"} if pred.spot_shape == "square" else {}),
        "name": name or f"{pred.name} genes",
        "scale": (upp, upp),
        "size": spot_diameter_um / upp,
        "border_width": 0,
        "opacity": 0.9,
        "features": spot_features(pred.spot_ids),
        "metadata": meta,
    }
    return (pred.image_xy[:, ::-1].copy(), kwargs, "points")


def _measured_meta(pred) -> dict:
    """The slide's own counts (``training.measured.Measured``) kept beside the prediction: one
    sparse matrix stored by column (a gene's map is one slice), the spots that have counts, and
    each gene's PCC on this slide."""
    m = getattr(pred, "measured", None)
    if m is None:
        return {}
    return {"measured": m.values.tocsc(), "has_counts": np.asarray(m.has_counts, bool),
            "measured_pcc": _per_gene(pred, "measured_pcc"), "measured_normalisation": m.normalisation,
            "measured_source": m.source}


def measured_values(layer, gene: str) -> tuple[np.ndarray, np.ndarray] | None:
    """One gene's measured values on the spots that have counts, and those spots (a mask), from
    a prediction layer whose slide has counts; None otherwise."""
    meta = layer.metadata.get(KEY, {})
    m = meta.get("measured")
    if m is None:
        return None
    i = gene_index(meta)[gene]
    has = meta["has_counts"]
    col = np.asarray(m[:, i].toarray(), np.float32).ravel()
    return col[has], has


def _per_gene(pred, key: str) -> dict:
    v = (pred.meta or {}).get(key)
    if v is None or len(v) != len(pred.genes):
        return {}
    return {str(g): float(x) for g, x in zip(pred.genes, np.asarray(v, float))}


def _export_meta(pred) -> dict:
    keep = ("image_path", "library_id", "scalefactors", "image_files", "model", "patch_um", "um_per_px_source",
            "bin_size_um", "clipped_fraction", "slide_reliability", "spread", "unfamiliar", "unfamiliar_score",
            "unfamiliar_threshold", "reliability_unknown", "reliability_protocol", "smooth_weight")
    return {k: pred.meta[k] for k in keep if (pred.meta or {}).get(k) is not None}


def gene_index(meta: dict) -> dict:
    idx = meta.get("_gene_index")
    if idx is None or len(idx) != len(meta["genes"]):
        idx = meta["_gene_index"] = {g: i for i, g in enumerate(meta["genes"])}
    return idx


def gene_values(layer, gene: str) -> np.ndarray:
    """One gene's predicted values for every spot of a prediction layer."""
    meta = layer.metadata[KEY]
    i = gene_index(meta).get(gene)
    if i is None:
        raise KeyError(f"gene {str(gene)!r} is not in layer {layer.name!r}")
    return meta["values"][:, i]


def gene_limits(values: np.ndarray) -> tuple[float, float]:
    """Contrast limits at the 1st-99th percentile (never empty)."""
    v = np.asarray(values, dtype=np.float32)
    lo, hi = (np.percentile(v, [1, 99]) if len(v) else (0.0, 1.0))
    if not hi > lo:
        hi = lo + 1e-6
    return float(lo), float(hi)


def display_limits(lo: float, hi: float, train_sd: float | None) -> tuple[float, float, bool]:
    """Contrast limits from a gene's 1st-99th percentile range, never narrower than
    ``FLAT_FRACTION`` of its training s.d.: a map that barely varies over the slide is shown
    flat (one middle colour), not stretched into a pattern. Returns ``(lo, hi, flat)``."""
    floor = FLAT_FRACTION * float(train_sd) if train_sd is not None and np.isfinite(train_sd) and train_sd > 0 else 1e-6
    if hi - lo >= floor:
        return float(lo), float(hi), False
    mid = (lo + hi) / 2
    return float(mid - floor / 2), float(mid + floor / 2), True


def color_by_gene(layer, gene: str, colormap: str | None = None) -> tuple[float, float]:
    """Recolour a prediction layer by ``gene`` without re-running the model, through napari's
    own feature colouring (feature, colormap, contrast limits), so the layer controls and
    napari's colour bar show the gene's scale; the colour bar is switched on. The features
    table becomes ``spot_id`` and this gene (what the status bar shows on hover)."""
    import warnings

    import pandas as pd

    meta = layer.metadata.get(KEY, {})
    if "values" not in meta:
        raise KeyError(f"layer {layer.name!r} holds no predicted genes")
    i = gene_index(meta).get(gene)
    if i is None:
        raise KeyError(f"gene {str(gene)!r} is not in layer {layer.name!r}")
    cmap = colormap or meta.get("colormap") or "viridis"
    sd = None if meta.get("gene_std") is None else float(meta["gene_std"][i])
    lo, hi, flat = display_limits(*(float(x) for x in meta["ranges"][i]), sd)
    # each assignment below re-maps every spot's colour: skip the ones that change nothing
    if list(layer.features.columns) != ["spot_id", gene]:
        with warnings.catch_warnings():  # napari warns that the previous gene's colouring is dropped
            warnings.simplefilter("ignore", RuntimeWarning)
            layer.features = pd.DataFrame({"spot_id": meta["spot_ids"], gene: meta["values"][:, i]})
    if getattr(layer.face_colormap, "name", None) != cmap:
        layer.face_colormap = cmap
    mapped = getattr(getattr(layer, "_face", None), "color_properties", None)  # napari has no public getter
    if mapped is None or mapped.name != gene:
        layer.face_color = gene
    layer.face_contrast_limits = (lo, hi)
    bar = getattr(layer, "face_colorbar", None)  # napari >= 0.6; older: the dock's line shows the scale
    if bar is not None:
        bar.visible = True
    meta.update(gene=gene, colormap=cmap, contrast_limits=(lo, hi), flat=flat)
    return lo, hi


def clear_gene(layer) -> None:
    """No gene shown (a filter matched none): plain grey spots, no colour bar, only spot ids on hover."""
    import warnings

    meta = layer.metadata.get(KEY, {})
    if meta.get("gene") is None and list(layer.features.columns) == ["spot_id"]:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        layer.features = pd_frame(meta["spot_ids"])
    layer.face_color = "#808080"
    bar = getattr(layer, "face_colorbar", None)
    if bar is not None:
        bar.visible = False
    meta.update(gene=None, contrast_limits=None, flat=False)


def pd_frame(spot_ids):
    import pandas as pd

    return pd.DataFrame({"spot_id": spot_ids})


def is_prediction_layer(layer) -> bool:
    return layer.__class__.__name__ == "Points" and layer.metadata.get(KEY, {}).get("kind") == "prediction"
