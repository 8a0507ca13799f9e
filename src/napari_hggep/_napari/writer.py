"""npe2 writers: a Points layer (predicted or plain spots) to CSV, AnnData, QuPath GeoJSON or a
SpatialData store, atomically; coordinates in full-resolution pixels of the slide."""
from __future__ import annotations

import numpy as np

from .layers import KEY, PredictionLayerInfo, SpotsLayerInfo


def layer_prediction(data, meta, genes=None):
    """A :class:`~napari_hggep.records.Prediction` from a Points layer's data and attributes
    (napari's ``meta``: its ``features``, ``metadata`` and ``name``): a prediction layer's own
    (for ``genes`` only, when given: the gene shown, say), or, for plain spots, one made of its
    features' columns. A prediction layer's pixels are those of the image predicted on; the
    prediction keeps full-resolution pixels."""
    import pandas as pd

    from ..records import Prediction

    wanted = genes  # a subset to write (e.g. the gene shown), else all
    # napari's layer attributes, by their names in napari's writer contract (the one place read here)
    feats, metadata, name = (meta.get(k) for k in ("features", "metadata", "name"))
    info = (metadata or {}).get(KEY)
    if isinstance(info, PredictionLayerInfo):
        genes = [g for g in (wanted or info.genes) if g in info.index]
        return info.prediction.with_genes(genes)
    feats = pd.DataFrame(feats) if feats is not None else pd.DataFrame(index=range(len(data)))
    ids = feats["spot_id"].astype(str).to_numpy() if "spot_id" in feats else np.array([f"spot_{i}" for i in range(len(data))])
    rc = feats[["array_row", "array_col"]].to_numpy() if {"array_row", "array_col"} <= set(feats.columns) else None
    genes = [g for g in (wanted or []) if g in feats.columns]
    values = feats[genes].to_numpy(np.float32) if genes else np.zeros((len(data), 0), np.float32)
    spots = info if isinstance(info, SpotsLayerInfo) else SpotsLayerInfo()
    data = np.asarray(data, dtype=float)
    scale = float(spots.image_scale or 1.0)
    xy = data[:, ::-1][:, :2] / scale if len(data) else np.zeros((0, 2))
    return Prediction(spot_ids=ids, xy=xy, genes=genes, values=values, array_rc=rc,
                      um_per_px=float(spots.um_per_px or 1.0) * scale, name=name or "spots",
                      image_scale=scale, spot_diameter_um=spots.spot_diameter_um, spot_shape=spots.spot_shape)


def write_points(path, data, meta, genes=None):
    """Any format, by the file name's extension (.csv, .h5ad, .geojson, .zarr); ``genes``: only
    these of a prediction layer's (the export dock's "only the selected gene")."""
    from ..io.writers.export import write_prediction

    return [str(write_prediction(layer_prediction(data, meta, genes), path))]


def write_points_csv(path, data, meta):
    from ..io.writers.csv_export import write_csv

    return [str(write_csv(layer_prediction(data, meta), path))]


def write_points_h5ad(path, data, meta):
    from ..io.writers.anndata_export import write_h5ad

    return [str(write_h5ad(layer_prediction(data, meta), path))]


def write_points_geojson(path, data, meta):
    return write_points(path, data, meta)


def write_points_zarr(path, data, meta):
    return write_points(path, data, meta)
