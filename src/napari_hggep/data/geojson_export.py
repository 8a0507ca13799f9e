"""QuPath GeoJSON exports: one detection per spot (a polygon, or a square per Visium HD bin), the
genes as measurements, written row by row."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from .export_values import _select, export_values, spot_diameter_px


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


def write_geojson(pred, path, genes=None, chunk: int = 500) -> Path:
    """A QuPath-readable FeatureCollection: one ``detection`` per spot, a closed polygon in
    full-resolution pixels, the exported genes as ``measurements``. Written row by row to a
    temporary file (memory does not grow with the slide), renamed when complete."""
    import uuid

    names, vals = _select(pred, genes)
    vals = export_values(vals)  # not a copy where the values are already clipped
    ring = spot_outline(pred.spot_shape, spot_diameter_px(pred))
    fmt = ",".join(json.dumps(str(g)).replace("%", "%%") + ":%.6g" for g in names)
    xy = np.asarray(pred.xy, float)
    ids = np.asarray(pred.spot_ids).astype(str)
    ns = uuid.uuid5(uuid.NAMESPACE_URL, f"napari-hggep/{pred.name}")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write('{"type":"FeatureCollection","features":[\n')
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
