"""The viewer's side of issue 18, with real viewers (Xvfb), real files and the bundled model: the
export offers every format by file name, coordinates go out in full-resolution pixels whichever
image was predicted on, AnnData carries the slide's images, Visium HD folders open with square bins."""
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")  # before the imports of the plugin's napari layer
from PIL import Image

from helpers import he_like_image, write_visium, write_visium_hd, N_BUNDLED, wait_predict, wait_idle
from napari_hggep._napari.layers import KEY
from napari_hggep._napari.predict_widget import PredictWidget
from napari_hggep._napari.widgets.export import EXPORT_FILTER

GENES = ["GNAS", "FN1"]


def _export(w, path, only_gene=False):
    w.export_file.value = str(path)
    w.export_selected.value = only_gene
    w.export()
    import time

    from qtpy.QtWidgets import QApplication

    t = time.time()
    while w.worker is not None and time.time() - t < 120:  # written in a worker thread
        QApplication.processEvents()
        time.sleep(0.01)
    return w.status.value


def test_visium_hires_prediction_exports_full_resolution_in_every_format(viewer, qtbot, tmp_path):
    full = he_like_image(500, 420)
    v = write_visium(tmp_path / "lib1" / "outs", full)
    Image.fromarray(full[::10, ::10]).save(v / "spatial" / "tissue_lowres_image.png")
    img, pts = viewer.open(str(v), plugin="napari-hggep")
    assert img.metadata[KEY].slide.image_scale == 0.5  # the hires PNG
    w = PredictWidget(viewer)
    assert all(f"*{e}" in EXPORT_FILTER for e in (".csv", ".h5ad", ".geojson", ".zarr"))
    wait_predict(qtbot, w)
    assert w.status.value.startswith(f"Predicted {N_BUNDLED} genes for 64 spots"), w.status.value
    layer = w.result.value
    pos = pd.read_csv(v / "spatial" / "tissue_positions.csv").set_index("barcode")
    want = lambda ids: pos.loc[ids, ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)  # noqa: E731
    # the layer sits on the hires image, in its pixels
    np.testing.assert_allclose(layer.data[:, ::-1], want(layer.metadata[KEY].prediction.spot_ids) * 0.5)
    assert _export(w, tmp_path / "p.csv").startswith("Exported"), w.status.value
    df = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(df[["x", "y"]].to_numpy(), want(df.spot_id), atol=1e-9)
    assert df[layer.metadata[KEY].genes].to_numpy().min() >= 0
    assert _export(w, tmp_path / "p.h5ad").startswith("Exported"), w.status.value
    a = ad.read_h5ad(tmp_path / "p.h5ad")
    np.testing.assert_allclose(a.obsm["spatial"], want(a.obs_names))
    sp = a.uns["spatial"]["lib1"]
    assert set(sp["images"]) == {"hires", "lowres"} and sp["scalefactors"]["tissue_hires_scalef"] == 0.5
    assert sp["scalefactors"]["spot_diameter_fullres"] == 20.0
    # a synthetic slide at 5.5 um/px: its expected PCC is unknown, so no gene is marked reliable on it
    assert not a.var["reliable"].any() and a.var.loc["GNAS", "heldout_pcc"] > 0.4
    assert "outside" in a.uns["napari_hggep"]["slide_reliability_unknown_because"]
    assert a.uns["napari_hggep"]["image_scale"] == 0.5
    w.gene.value = "GNAS"
    assert _export(w, tmp_path / "p.geojson", only_gene=True).startswith("Exported"), w.status.value
    doc = json.load(open(tmp_path / "p.geojson"))
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 64
    f = doc["features"][0]
    assert f["properties"]["objectType"] == "detection" and list(f["properties"]["measurements"]) == ["GNAS"]
    ring = np.asarray(f["geometry"]["coordinates"][0])
    np.testing.assert_allclose(ring[:-1].mean(axis=0), want([f["properties"]["name"]])[0], atol=0.01)
    np.testing.assert_allclose(np.hypot(*(ring[0] - ring[:-1].mean(axis=0))), 10.0, atol=0.01)  # 55 um spot
    # the npe2 writer (File > Save Selected Layers) follows the name too
    viewer.layers.selection = {layer}
    viewer.layers.save(str(tmp_path / "s.geojson"), selected=True, plugin="napari-hggep")
    assert len(json.load(open(tmp_path / "s.geojson"))["features"]) == 64
    # an unknown extension is said, and nothing is written; a good file is kept
    good = (tmp_path / "p.csv").read_bytes()
    status = _export(w, tmp_path / "p.xlsx")
    assert status.startswith("Error") and "'.xlsx' is not one of them" in status
    assert not (tmp_path / "p.xlsx").exists()
    status = _export(w, tmp_path / "p.csv" / "x.csv")
    assert status.startswith("Error") and (tmp_path / "p.csv").read_bytes() == good


def test_visium_hd_folder_opens_with_square_bins_and_predicts(viewer, qtbot, tmp_path):
    img_full = he_like_image(640, 800)
    outs = write_visium_hd(tmp_path / "hdA", img_full, mpp=0.5, bins=(8, 16))
    img, pts = viewer.open(str(outs), plugin="napari-hggep")
    assert img.metadata[KEY].um_per_px == pytest.approx(0.5 / 0.25)  # microns_per_pixel / hires scale
    assert "microns_per_pixel" in img.metadata[KEY].um_per_px_source
    assert img.scale[-1] == pytest.approx(2.0)
    assert pts.symbol[0].value == "square" and pts.size[0] == pytest.approx(16 / 2.0)  # a 16 um bin
    w = PredictWidget(viewer)
    assert "microns_per_pixel" in w.um_source.value
    wait_predict(qtbot, w)
    assert w.status.value.startswith(f"Predicted {N_BUNDLED} genes for"), w.status.value
    layer = w.result.value
    assert layer.symbol[0].value == "square" and layer.size[0] == pytest.approx(8.0)
    assert _export(w, tmp_path / "hd.geojson").startswith("Exported"), w.status.value
    doc = json.load(open(tmp_path / "hd.geojson"))
    ring = np.asarray(doc["features"][0]["geometry"]["coordinates"][0])
    assert len(ring) == 5 and np.ptp(ring, axis=0) == pytest.approx([32.0, 32.0], abs=0.02)
    pos = pd.read_parquet(outs / "binned_outputs" / "square_016um" / "spatial" / "tissue_positions.parquet")
    pos = pos[pos.in_tissue == 1].set_index("barcode")
    assert len(doc["features"]) == len(pos)
    name = doc["features"][0]["properties"]["name"]
    np.testing.assert_allclose(ring[:-1].mean(axis=0), pos.loc[name, ["pxl_col_in_fullres", "pxl_row_in_fullres"]]
                               .to_numpy(float), atol=0.01)


def test_widget_exports_a_spatialdata_store(viewer, qtbot, tmp_path):
    sd = pytest.importorskip("spatialdata")
    from spatialdata.transformations import get_transformation

    v = write_visium(tmp_path / "lib2" / "outs", he_like_image(500, 420))
    viewer.open(str(v), plugin="napari-hggep")
    w = PredictWidget(viewer)
    wait_predict(qtbot, w)
    assert _export(w, tmp_path / "p.zarr").startswith("Exported"), w.status.value
    s = sd.read_zarr(tmp_path / "p.zarr")
    t, shapes = s.tables["table"], s.shapes["lib2"]
    assert t.n_obs == len(shapes) == 64 and t.n_vars == N_BUNDLED and "heldout_pcc" in t.var
    # the image is the hires copy the layer carries: 5.5 um per pixel; the spots 2.75 (full resolution)
    he = s.images["lib2_hires_image"]
    img = he["scale0"]["image"] if hasattr(he, "keys") else he
    assert img.shape == (3, 250, 210)
    um = np.asarray(get_transformation(he, "global").to_affine_matrix(("y", "x"), ("y", "x")))[:2, :2].diagonal()
    np.testing.assert_allclose(um, 5.5)
    pos = pd.read_csv(v / "spatial" / "tissue_positions.csv").set_index("barcode")
    sid = str(shapes.index[0])
    np.testing.assert_allclose([shapes.geometry.iloc[0].x, shapes.geometry.iloc[0].y],
                               pos.loc[sid, ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float))
