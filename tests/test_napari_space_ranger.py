"""Issue 18 in the viewer: which of a Space Ranger folder's images to predict on (full resolution,
hires, lowres) and which one was used; Visium HD bins switched in the widget; SpatialData stores
opened as slides; bad folders said in the status line. Real viewers (Xvfb), real files."""
import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")  # before the imports of the plugin's napari layer
from helpers import he_like_image, shown, write_visium, write_visium_hd, N_BUNDLED, wait_predict, wait_idle
from PIL import Image

from napari_hggep._napari.layers import KEY
from napari_hggep._napari.predict_widget import PredictWidget
from napari_hggep._napari.widgets.space_ranger import OTHER_FULLRES


def world(points):
    """Points in world coordinates (µm), (y, x)."""
    return np.asarray(points.data) * np.asarray(points.scale) + np.asarray(points.translate)


def write_visium_with_images(tmp_path):
    """A Space Ranger outs/ with hires (0.5) and lowres (0.1) PNGs and the full-resolution TIFF beside outs/."""
    import tifffile

    full = he_like_image(500, 420)
    outs = write_visium(tmp_path / "lib1" / "outs", full)
    Image.fromarray(full[::10, ::10]).save(outs / "spatial" / "tissue_lowres_image.png")
    tifffile.imwrite(tmp_path / "lib1" / "lib1_fullres.tif", full)
    pos = pd.read_csv(outs / "spatial" / "tissue_positions.csv").set_index("barcode")
    return outs, pos


def test_visium_choose_the_image_to_predict_on(viewer, qtbot, tmp_path):
    outs, pos = write_visium_with_images(tmp_path)
    img, pts = viewer.open(str(outs), plugin="napari-hggep")
    w = PredictWidget(viewer)
    assert shown(w.sr_image) and not shown(w.bins)
    labels = [c for c in w.sr_image.choices]
    assert len(labels) == 4 and labels[-1] == OTHER_FULLRES
    # the best image by default: the full-resolution TIFF beside outs/ (issue 27), said in the widget
    assert w.sr_image.value.endswith("lib1_fullres.tif") and "lib1_fullres.tif" in w.image_used.value
    spots_um = world(pts)
    want_px = lambda ids: pos.loc[ids, ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)

    # lowres: the image and its spots are replaced, in the lowres pixels, at the same place in µm
    w.sr_image.value = next(c for c in w.sr_image.choices if str(c).endswith("tissue_lowres_image.png"))
    wait_idle(qtbot, w)
    img2, pts2 = w.image_layer.value, w.spots.value
    assert img not in viewer.layers and pts not in viewer.layers and len(viewer.layers) == 2
    assert img2.data.shape[:2] == (50, 42) and img2.scale[-1] == pytest.approx(27.5)
    assert img2.metadata[KEY].slide.image_scale == pytest.approx(0.1)
    np.testing.assert_allclose(pts2.data[:, ::-1], want_px(pts2.features["spot_id"]) * 0.1)
    np.testing.assert_allclose(world(pts2), spots_um)
    assert pts2.size[0] == pytest.approx(2.0)  # 55 µm at 27.5 µm per pixel
    assert w.um_per_px.value == "27.5" and "tissue_lowres_image.png (lowres PNG, 0.1 ×" in w.image_used.value
    assert w.status.value.startswith("Showing 64 spots on tissue_lowres_image.png")

    # the full-resolution TIFF found beside outs/: predict on it, and the widget says so
    w.sr_image.value = next(c for c in w.sr_image.choices if str(c).endswith("lib1_fullres.tif"))
    wait_idle(qtbot, w)
    img3, pts3 = w.image_layer.value, w.spots.value
    assert img3.data.shape[:2] == (500, 420) and img3.scale[-1] == pytest.approx(2.75)
    np.testing.assert_allclose(world(pts3), spots_um)
    assert "lib1_fullres.tif (full resolution)" in w.image_used.value
    wait_predict(qtbot, w)
    assert w.status.value.startswith(f"Predicted {N_BUNDLED} genes for 64 spots"), w.status.value
    assert "from lib1_fullres.tif (full resolution)" in w.status.value
    res = w.result.value
    assert res.metadata[KEY].prediction.image_scale == 1.0 and res.metadata[KEY].prediction.image_path.endswith("lib1_fullres.tif")
    np.testing.assert_allclose(world(res), spots_um)  # drawn over the image it was predicted on
    np.testing.assert_allclose(res.data[:, ::-1], want_px(res.metadata[KEY].prediction.spot_ids))

    # another full-resolution file, chosen by name
    other = tmp_path / "elsewhere.png"
    Image.fromarray(np.asarray(img3.data)).save(other)
    w.sr_image.value = OTHER_FULLRES
    wait_idle(qtbot, w)
    assert shown(w.sr_fullres)
    w.sr_fullres.value = str(other)
    wait_idle(qtbot, w)
    assert w.image_layer.value.metadata[KEY].slide.image_path == str(other)
    assert w.sr_image.value == str(other) and "elsewhere.png (full resolution)" in w.image_used.value
    # an image that is none of the folder's: said, and what is open stays
    bad = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(bad)
    before = w.image_layer.value
    w.sr_fullres.value = str(bad)
    wait_idle(qtbot, w)
    assert w.status.value.startswith("Error:") and "spots fall outside it" in w.status.value, w.status.value
    assert w.image_layer.value is before and w.sr_image.value == str(other)


def test_visium_hires_screenshot_lines_up(make_napari_viewer, qtbot, tmp_path):
    """A screenshot after predicting on the hires PNG (looked at by a person: /tmp/hggep_visium_hires.png)."""
    viewer = make_napari_viewer(show=True)
    outs, _ = write_visium_with_images(tmp_path)
    viewer.open(str(outs), plugin="napari-hggep")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w, name="HGGEP")
    viewer.window._qt_window.resize(1400, 1150)
    w.sr_image.value = next(c for c in w.sr_image.choices if str(c).endswith("tissue_hires_image.png"))
    wait_idle(qtbot, w)
    wait_predict(qtbot, w)
    assert "from tissue_hires_image.png (hires PNG, 0.5 × full resolution)" in w.status.value, w.status.value
    assert w.sr_image.value.endswith("tissue_hires_image.png") and w.sr_image.native.currentText().startswith(
        "tissue_hires_image.png (hires PNG)")  # still shown after napari reset the dock's choices
    res = w.result.value
    np.testing.assert_allclose(world(res), world(w.spots.value))
    w.gene.value = "GNAS" if "GNAS" in res.metadata[KEY].genes else res.metadata[KEY].genes[0]
    viewer.reset_view()
    qtbot.wait(300)  # let Qt lay out the new status text before the grab
    shot = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(shot).save("/tmp/hggep_visium_hires.png")
    assert shot.shape[0] > 100


def test_visium_hd_bins_in_the_widget(viewer, qtbot, tmp_path):
    outs = write_visium_hd(tmp_path / "hdA", he_like_image(640, 800), mpp=0.5, bins=(2, 8, 16))
    img, pts = viewer.open(str(outs), plugin="napari-hggep")
    assert img.name == "hdA_016um" and pts.symbol[0].value == "square" and pts.size[0] == pytest.approx(8.0)
    w = PredictWidget(viewer)
    assert shown(w.bins) and w.bins.value == "16 µm" and shown(w.sr_image)
    n16 = len(pts.data)
    w.bins.value = "8 µm"
    wait_idle(qtbot, w)
    img8, pts8 = w.image_layer.value, w.spots.value
    assert img8.name == "hdA_008um" and len(viewer.layers) == 2
    assert pts8.symbol[0].value == "square" and pts8.size[0] == pytest.approx(4.0)  # 8 µm at 2 µm per pixel
    assert len(pts8.data) > 3 * n16 and pts8.metadata[KEY].spot_diameter_um == 8
    pq = pd.read_parquet(outs / "binned_outputs" / "square_008um" / "spatial" / "tissue_positions.parquet")
    pq = pq[pq.in_tissue == 1].set_index("barcode")
    np.testing.assert_allclose(pts8.data[:, ::-1], pq.loc[pts8.features["spot_id"],
                                                          ["pxl_col_in_fullres", "pxl_row_in_fullres"]] * 0.25)
    assert w.status.value.startswith(f"Showing {len(pq):,} bins on tissue_hires_image.png")
    # 2 µm: refused with the reason, the 8 µm bins stay
    w.bins.value = "2 µm"
    wait_idle(qtbot, w)
    assert w.status.value.startswith("Error: 2 µm bins are refused") and "Choose 8 or 16 µm bins" in w.status.value
    assert w.bins.value == "8 µm" and w.spots.value is pts8 and pts8 in viewer.layers
    # the lowres PNG with 8 µm bins, then back to 16 µm: bins follow the image
    w.sr_image.value = next(c for c in w.sr_image.choices if str(c).endswith("tissue_lowres_image.png"))
    wait_idle(qtbot, w)
    assert w.image_layer.value.metadata[KEY].slide.image_scale == pytest.approx(0.1)
    w.bins.value = "16 µm"
    wait_idle(qtbot, w)
    img16, pts16 = w.image_layer.value, w.spots.value
    assert len(pts16.data) == n16 and img16.metadata[KEY].slide.image_scale == pytest.approx(0.1)
    assert pts16.size[0] == pytest.approx(16 / 5.0)


def test_open_folder_says_what_is_wrong(viewer, qtbot, tmp_path, monkeypatch):
    import json
    import shutil

    w = PredictWidget(viewer)

    def opened(path):
        w.open_path.value = str(path)
        w.open_folder()
        return w.status.value

    assert opened(tmp_path / "nowhere").startswith("Error:")
    # an HD outs/ whose binned_outputs/ has no bin folder: the bin size is unknown
    outs = write_visium_hd(tmp_path / "hd", he_like_image(320, 400), bins=(16,))
    nobins = tmp_path / "nobins" / "outs"
    shutil.copytree(outs, nobins)
    shutil.rmtree(nobins / "binned_outputs" / "square_016um")
    st = opened(nobins)
    assert st.startswith("Error:") and "bin size is unknown" in st, st
    # a bin folder whose scale factors lack bin_size_um
    sf = nobins.parent.parent / "nosize" / "outs"
    shutil.copytree(outs, sf)
    f = sf / "binned_outputs" / "square_016um" / "spatial" / "scalefactors_json.json"
    d = json.loads(f.read_text())
    del d["bin_size_um"]
    f.write_text(json.dumps(d))
    st = opened(sf)
    assert st.startswith("Error:") and "bin_size_um is missing" in st, st
    assert len(viewer.layers) == 0
    # napari's File > Open says the same reason
    with pytest.raises(Exception) as e:
        viewer.open(str(nobins), plugin="napari-hggep")
    chain, err = [], e.value
    while err is not None:
        chain.append(str(err))
        err = err.__cause__ or err.__context__
    assert any("bin size is unknown" in c for c in chain), chain
    # a .zarr without spatialdata installed: how to get it
    z = tmp_path / "x.zarr"
    (z / "shapes").mkdir(parents=True)
    (z / "zarr.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "spatialdata", None)
    st = opened(z)
    assert st.startswith("Error:") and 'pip install "napari-hggep[spatialdata]"' in st, st
    # a good folder opens, and says which image is shown
    st = opened(outs)
    assert st.startswith("Opened hd_016um:") and "tissue_hires_image.png" in st, st
    assert len(viewer.layers) == 2 and shown(w.bins)


def _store(tmp_path, name, img=None, shapes_xy=None, radius=10.0):
    """A SpatialData store as another tool writes it: the image and circles in pixels (no pixel size)."""
    import geopandas as gpd
    import spatialdata as sd
    from shapely.geometry import Point
    from spatialdata.models import Image2DModel, ShapesModel

    images, shapes = {}, {}
    if img is not None:
        images["he"] = Image2DModel.parse(np.moveaxis(img, -1, 0), dims=("c", "y", "x"))
    if shapes_xy is not None:
        g = gpd.GeoDataFrame({"radius": np.full(len(shapes_xy), radius)},
                             geometry=[Point(x, y) for x, y in shapes_xy],
                             index=[f"s{i}" for i in range(len(shapes_xy))])
        shapes["spots"] = ShapesModel.parse(g)
    s = sd.SpatialData(images=images, shapes=shapes)
    s.write(tmp_path / name)
    return tmp_path / name


def test_spatialdata_store_opens_ready_to_predict(viewer, qtbot, tmp_path):
    pytest.importorskip("spatialdata")
    full = he_like_image(500, 420)
    xy = [(60 + c * 20, 60 + r * 34) for r in range(2, 10) for c in range(16) if (r + c) % 2 == 0]
    z = _store(tmp_path, "other.zarr", full, xy)
    img, pts = viewer.open(str(z), plugin="napari-hggep")
    assert img.data.shape[:2] == (500, 420) and img.metadata[KEY].um_per_px is None
    np.testing.assert_allclose(pts.data[:, ::-1], xy)
    assert pts.size[0] == pytest.approx(20.0)
    w = PredictWidget(viewer)
    assert w.um_per_px.value == ""  # not in the store: asked for
    w.run()
    assert w.status.value.startswith("Error: Enter µm per pixel")
    w.um_per_px.value = "2.75"
    wait_predict(qtbot, w)
    assert w.status.value.startswith(f"Predicted {N_BUNDLED} genes for {len(xy)} spots"), w.status.value
    assert "other.zarr::he" in w.status.value
    res = w.result.value
    np.testing.assert_allclose(world(res), world(pts))
    assert res.metadata[KEY].prediction.spot_diameter_um == pytest.approx(55.0)
    # a store without an image: said in the status line
    bare = _store(tmp_path, "bare.zarr", None, xy)
    w.open_path.value = str(bare)
    w.open_folder()
    assert w.status.value.startswith("Error:") and "no RGB image" in w.status.value, w.status.value


def test_our_spatialdata_store_opens_in_micrometres(viewer, qtbot, tmp_path):
    """A store napari-hggep wrote (predict ... -o x.zarr) opens with its pixel size known: ready to predict."""
    pytest.importorskip("spatialdata")
    import tifffile

    from napari_hggep._napari.jobs import import_torch_stack
    from napari_hggep.cli import main

    import_torch_stack()  # as the widget does: triton's LLVM next to Mesa's would crash this process
    outs, pos = write_visium_with_images(tmp_path)
    z = tmp_path / "ours.zarr"
    assert main(["predict", str(tmp_path / "lib1" / "lib1_fullres.tif"), "--visium", str(outs), "-o", str(z),
                 "--genes", "GNAS"]) == 0
    assert tifffile.imread(tmp_path / "lib1" / "lib1_fullres.tif").shape[:2] == (500, 420)
    img, pts = viewer.open(str(z), plugin="napari-hggep")
    assert img.metadata[KEY].um_per_px == pytest.approx(2.75) and img.scale[-1] == pytest.approx(2.75)
    assert pts.size[0] == pytest.approx(20.0) and len(pts.data) == 64
    np.testing.assert_allclose(pts.data[:, ::-1], pos.loc[pts.features["spot_id"],
                                                          ["pxl_col_in_fullres", "pxl_row_in_fullres"]])
    w = PredictWidget(viewer)
    assert w.um_per_px.value == "2.75" and w.spots.value is pts
    assert w._build_request()["slide"].spot_diameter_um == pytest.approx(55.0)
