"""napari-spatialdata, a real client of our ``.zarr`` stores (issue 34): a store written by
``predict -o pred.zarr`` opens in its Interactive viewer, and choosing a gene in its View widget
colours our spots by that gene's predicted values (its join of the table to the shapes works)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("napari_spatialdata")


def test_napari_spatialdata_colours_our_spots_by_a_gene(make_napari_viewer, qtbot, bundle, tmp_path):
    import spatialdata as sd
    from napari_spatialdata import Interactive

    from napari_hggep import predict_slide
    from napari_hggep._napari.sample import sample_slide
    from napari_hggep.io.readers.spatialdata_reader import CS
    from napari_hggep.io.writers.spatialdata_export import write_zarr

    pred = predict_slide(bundle, sample_slide())
    store = sd.read_zarr(write_zarr(pred, tmp_path / "p.zarr", ["GNAS", "KRT8"]))
    (shapes_key,) = store.shapes
    viewer = make_napari_viewer()
    app = Interactive(store, headless=True)  # docks itself into the current viewer
    app.add_element(shapes_key, CS)
    qtbot.waitUntil(lambda: app.get_layer(shapes_key) is not None, timeout=60_000)  # loaded in its worker thread
    layer = app.get_layer(shapes_key)
    assert len(layer.data) == len(pred.spot_ids)
    view = next(w for w in viewer.window.dock_widgets.values() if hasattr(w, "var_widget"))
    view.var_widget._onAction(["GNAS"])  # what a double click on the gene in its list does
    assert view.model.color_by == "GNAS"
    # the spots' colours follow GNAS: the highest and the lowest predicted spot differ, and every
    # shape got the value of its own spot
    values = np.asarray(layer.features["GNAS"], float)
    order = [list(pred.spot_ids).index(i) for i in store.shapes[shapes_key].index.astype(str)]
    want = np.maximum(pred.values[order, pred.genes.index("GNAS")], 0)
    np.testing.assert_allclose(values, want, rtol=1e-6)
    colours = np.asarray(layer.face_color)
    assert not np.allclose(colours[int(np.argmax(values))], colours[int(np.argmin(values))])
