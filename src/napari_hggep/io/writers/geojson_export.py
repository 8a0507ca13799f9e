"""QuPath GeoJSON exports: one detection per spot (a polygon, or a square per Visium HD bin), the
genes as measurements, written row by row."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..._atomic import atomic_path
from .export_values import UNRELIABLE_PCC, export_values, selected_values, spot_diameter_px


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
    here = pred.reliability.slide_reliability
    if here is not None and np.isfinite(np.asarray(here, np.float64)).any():
        score = np.asarray(here, np.float64)
    else:
        card = pred.provenance.gene_pcc or {}
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

    names, vals = selected_values(pred, geojson_default_genes(pred) if genes is None else genes)
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
