"""npe2 writers: a Points layer (predicted or plain spots) to CSV, AnnData, QuPath GeoJSON or a
SpatialData store, atomically; coordinates in full-resolution pixels of the slide."""
from __future__ import annotations

import numpy as np

from .layers import KEY


def layer_prediction(data, meta):
    """A :class:`~napari_hggep.predict.Prediction` from a Points layer's data and attributes.
    A prediction layer's pixels are those of the image predicted on; ``image_scale`` in its
    metadata takes them back to full-resolution pixels."""
    import pandas as pd

    from ..predict import Prediction

    feats = meta.get("features")
    feats = pd.DataFrame(feats) if feats is not None else pd.DataFrame(index=range(len(data)))
    info = (meta.get("metadata") or {}).get(KEY, {})
    ids = feats["spot_id"].astype(str).to_numpy() if "spot_id" in feats else np.array([f"spot_{i}" for i in range(len(data))])
    rc = feats[["array_row", "array_col"]].to_numpy() if {"array_row", "array_col"} <= set(feats.columns) else None
    wanted = meta.get("genes")  # a subset to write (e.g. the gene shown), else all
    if info.get("values") is not None:  # a prediction layer: all genes live in its metadata
        index = {g: i for i, g in enumerate(info["genes"])}
        genes = [g for g in (wanted or info["genes"]) if g in index]
        values = np.asarray(info["values"])[:, [index[g] for g in genes]]
        ids = np.asarray(info.get("spot_ids", ids)).astype(str)
        rc = info.get("array_rc") if info.get("array_rc") is not None else rc
    else:
        genes = [g for g in (wanted or info.get("genes", [])) if g in feats.columns]
        values = feats[genes].to_numpy(np.float32) if genes else np.zeros((len(data), 0), np.float32)
    data = np.asarray(data, dtype=float)
    scale = float(info.get("image_scale", 1.0) or 1.0)
    xy = data[:, ::-1][:, :2] / scale if len(data) else np.zeros((0, 2))
    extra = dict(info.get("export_meta") or {})
    if info.get("gene_pcc"):
        extra["gene_pcc"] = dict(info["gene_pcc"])
    if info.get("gene_pcc_protocol"):
        extra["gene_pcc_protocol"] = info["gene_pcc_protocol"]
    pred = Prediction(spot_ids=ids, xy=xy, genes=genes, values=np.asarray(values, np.float32), array_rc=rc,
                      um_per_px=float(info.get("um_per_px", 1.0)) * scale, name=meta.get("name", "spots"),
                      meta=extra, image_scale=scale, spot_diameter_um=info.get("spot_diameter_um"),
                      spot_shape=info.get("spot_shape", "circle"), images=info.get("spatial_images"))
    if info.get("measured") is not None and info.get("values") is not None:  # the slide's own counts go along
        from ..training.measured import Measured

        index = {g: i for i, g in enumerate(info["genes"])}
        pcc = info.get("measured_pcc") or {}
        mpcc = np.array([pcc.get(g, np.nan) for g in genes], np.float32)
        pred.measured = Measured(info["measured"][:, [index[g] for g in genes]].tocsr(), info["has_counts"], mpcc,
                                 normalisation=info.get("measured_normalisation", ""),
                                 source=info.get("measured_source", ""))
        pred.meta.update({"measured_pcc": mpcc, "measured_spots": int(np.sum(info["has_counts"]))})
    return pred


def write_points(path, data, meta):
    """Any format, by the file name's extension (.csv, .h5ad, .geojson, .zarr)."""
    return [str(layer_prediction(data, meta).write(path))]


def write_points_csv(path, data, meta):
    return [str(layer_prediction(data, meta).write_csv(path))]


def write_points_h5ad(path, data, meta):
    return [str(layer_prediction(data, meta).write_h5ad(path))]


def write_points_geojson(path, data, meta):
    return write_points(path, data, meta)


def write_points_zarr(path, data, meta):
    return write_points(path, data, meta)
