"""Slides and predictions as napari layer data tuples, and colouring spots by a gene.
No Qt here: napari layer objects are only touched by callers on the main thread."""
from __future__ import annotations

import numpy as np

from ..data.slide import Slide

KEY = "hggep"  # metadata namespace on our layers


def image_layer_data(slide: Slide) -> tuple:
    return image_data_tuple(slide.image, slide.um_per_px, slide.name, slide.source)


def image_data_tuple(image, um_per_px: float | None, name: str, source: str = "") -> tuple:
    """An RGB image layer in micrometres; a pyramid (a lazy TIFF with levels) becomes a multiscale
    layer that napari reads level by level, so a whole slide opens without decoding level 0."""
    from ..data.image import pyramid

    levels = [lev for lev, _ in pyramid(image)]
    meta = {KEY: {"kind": "image", "um_per_px": None if um_per_px is None else float(um_per_px),
                  "source": str(source), "name": name}}
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
    meta = {KEY: {"kind": "spots", "um_per_px": upp, "spot_diameter_um": slide.spot_diameter_um}}
    kwargs = {
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


def prediction_layer_data(pred, spot_diameter_um: float, gene_pcc: dict | None = None, name=None,
                          gene_pcc_protocol: str | None = None) -> tuple:
    """A Points layer holding all genes as features; coloured later by :func:`color_by_gene`."""
    import pandas as pd

    upp = float(pred.um_per_px)
    feats = pd.concat([spot_features(pred.spot_ids, pred.array_rc),
                       pd.DataFrame(pred.values, columns=pred.genes)], axis=1)
    meta = {KEY: {"kind": "prediction", "genes": list(pred.genes), "um_per_px": upp,
                  "gene_pcc": dict(gene_pcc or {}), "gene_pcc_protocol": gene_pcc_protocol, "gene": None,
                  "colormap": "viridis", "slide": pred.name}}
    kwargs = {
        "name": name or f"{pred.name} genes",
        "scale": (upp, upp),
        "size": spot_diameter_um / upp,
        "border_width": 0,
        "opacity": 0.9,
        "features": feats,
        "metadata": meta,
    }
    return (pred.xy[:, ::-1].copy(), kwargs, "points")


def gene_limits(values: np.ndarray) -> tuple[float, float]:
    """Contrast limits at the 1st-99th percentile (never empty)."""
    v = np.asarray(values, dtype=np.float32)
    lo, hi = (np.percentile(v, [1, 99]) if len(v) else (0.0, 1.0))
    if not hi > lo:
        hi = lo + 1e-6
    return float(lo), float(hi)


def color_by_gene(layer, gene: str, colormap: str | None = None) -> tuple[float, float]:
    """Recolour a prediction layer by ``gene`` without re-running the model, through napari's
    own feature colouring (feature, colormap, contrast limits), so the layer controls and
    napari's colour bar show the gene's scale; the colour bar is switched on."""
    meta = layer.metadata.get(KEY, {})
    if gene not in meta.get("genes", ()):
        raise KeyError(f"gene {gene!r} is not in layer {layer.name!r}")
    cmap = colormap or meta.get("colormap") or "viridis"
    limits = gene_limits(layer.features[gene].to_numpy())
    # each assignment below re-maps every spot's colour: skip the ones that change nothing
    if getattr(layer.face_colormap, "name", None) != cmap:
        layer.face_colormap = cmap
    mapped = getattr(getattr(layer, "_face", None), "color_properties", None)  # napari has no public getter
    if mapped is None or mapped.name != gene:
        layer.face_color = gene
    layer.face_contrast_limits = limits
    bar = getattr(layer, "face_colorbar", None)  # napari >= 0.6; older: the dock's line shows the scale
    if bar is not None:
        bar.visible = True
    meta.update(gene=gene, colormap=cmap, contrast_limits=limits)
    return limits


def is_prediction_layer(layer) -> bool:
    return layer.__class__.__name__ == "Points" and layer.metadata.get(KEY, {}).get("kind") == "prediction"
