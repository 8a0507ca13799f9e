"""What the viewer shows is true (issue 17): spots in place, no map made of nothing, no silent
pixel size, an honest gene selector, plain errors. Real viewers (Xvfb), real files, the bundled model."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")  # before the imports of the plugin's napari layer
from PIL import Image

from helpers import he_like_image, shown, smooth_he, write_visium, N_BUNDLED, wait_predict, caption
from napari_hggep._napari.layers import FLAT_FRACTION, KEY, gene_values, prediction_layer_data
from napari_hggep._napari.predict_widget import PredictWidget
from napari_hggep._napari.widgets.prediction import BUNDLED, CHECKPOINT
from napari_hggep._napari.widgets.source import GENERATE
from napari_hggep.records import Prediction, Provenance


def _write_ome(path, img, um):
    import tifffile

    with tifffile.TiffWriter(path) as tw:
        tw.write(img, subifds=2, tile=(256, 256), compression="zlib",
                 metadata={"axes": "YXS", "PhysicalSizeX": um, "PhysicalSizeY": um})
        for k in (1, 2):
            tw.write(img[::2 ** k, ::2 ** k], tile=(256, 256), compression="zlib", subfiletype=1)


def _spot_table(path, img_h, img_w, pitch=60):
    """Spots over the tissue blob of he_like_image, in full-resolution pixels."""
    ys, xs = np.mgrid[img_h * 0.3:img_h * 0.7:pitch, img_w * 0.25:img_w * 0.75:pitch]
    df = pd.DataFrame({"spot_id": [f"{i}x{j}" for i, j in zip(xs.ravel().astype(int), ys.ravel().astype(int))],
                       "x": xs.ravel(), "y": ys.ravel()})
    df.to_csv(path, index=False)
    return df


# ---------------------------------------------------------------- spots in place
@pytest.mark.parametrize("widget_first", [True, False])
def test_spot_csv_over_ome_tiff_lands_on_the_image(viewer, qtbot, tmp_path, widget_first):
    h, w_ = 1024, 1536
    ome = tmp_path / "section.ome.tif"
    _write_ome(ome, smooth_he(h, w_, seed=3), um=0.69)
    csv = tmp_path / "section_spots.csv"
    df = _spot_table(csv, h, w_)
    assert df["x"].max() * 0.69 * 1.45 > 0  # sanity
    w = PredictWidget(viewer) if widget_first else None
    (img,) = viewer.open(str(ome), plugin="napari-hggep")
    (pts,) = viewer.open(str(csv), plugin="napari-hggep")
    if w is None:
        w = PredictWidget(viewer)
    assert img.scale[-1] == pytest.approx(0.69)
    # the spot table sits on the image's pixel grid: same scale and translation, inside its extent
    assert tuple(pts.scale) == pytest.approx(tuple(img.scale[-2:]))
    assert tuple(pts.translate) == pytest.approx(tuple(img.translate[-2:]))
    (ilo, ihi), (plo, phi) = np.asarray(img.extent.world)[:, -2:], np.asarray(pts.extent.world)[:, -2:]
    assert (plo >= ilo).all() and (phi <= ihi).all()
    np.testing.assert_allclose(pts.data * 0.69, df[["y", "x"]].to_numpy() * 0.69)
    assert w.image_layer.value is img and float(w.um_per_px.value) == pytest.approx(0.69)
    assert "OME PhysicalSizeX" in w.um_source.value
    w.spots.value = pts
    wait_predict(qtbot, w)
    assert w.status.value.startswith(f"Predicted {N_BUNDLED} genes for {len(df)} spots"), w.status.value
    genes = viewer.layers["section genes"]
    np.testing.assert_allclose(np.asarray(genes.extent.world)[:, -2:], np.asarray(pts.extent.world)[:, -2:])
    world = genes.data * np.asarray(genes.scale) + np.asarray(genes.translate)
    np.testing.assert_allclose(world, df[["y", "x"]].to_numpy() * 0.69, rtol=1e-6)


# ---------------------------------------------------------------- tissue under the spots
def _visium_with_images(folder, hires_blank=True, lowres_blank=False):
    full = he_like_image(500, 420)
    write_visium(folder, full)
    sp = folder / "spatial"
    sf = json.loads((sp / "scalefactors_json.json").read_text())
    hi = np.asarray(Image.open(sp / "tissue_hires_image.png"))
    if hires_blank:
        Image.fromarray(np.zeros_like(hi)).save(sp / "tissue_hires_image.png")
    lo = full[::10, ::10]  # tissue_lowres_scalef 0.1
    Image.fromarray(np.zeros_like(lo) if lowres_blank else lo).save(sp / "tissue_lowres_image.png")
    assert sf["tissue_lowres_scalef"] == 0.1
    return folder


def test_blank_hires_png_falls_back_to_lowres_with_a_notice(viewer, qtbot, tmp_path):
    v = _visium_with_images(tmp_path / "outs")
    img, pts = viewer.open(str(v), plugin="napari-hggep")
    assert img.metadata[KEY].source.endswith("tissue_lowres_image.png")
    assert img.data.shape[:2] == (50, 42)
    note = img.metadata[KEY].slide.notice
    assert "tissue_hires_image.png" in note and "tissue_lowres_image.png instead" in note
    w = PredictWidget(viewer)
    assert shown(w.image_warning) and "tissue_lowres_image.png instead" in w.image_warning.value
    assert "spot_diameter_fullres" in w.um_source.value
    wait_predict(qtbot, w)
    assert w.status.value.startswith(f"Predicted {N_BUNDLED} genes for 64 spots"), w.status.value


def test_folder_without_any_tissue_image_is_refused(viewer, qtbot, tmp_path):
    v = _visium_with_images(tmp_path / "outs", lowres_blank=True)
    img, pts = viewer.open(str(v), plugin="napari-hggep")  # positions still read; predicting is refused
    w = PredictWidget(viewer)
    assert shown(w.image_warning) and "none of this folder's images shows tissue" in w.image_warning.value
    wait_predict(qtbot, w)  # refused in the worker (the tissue check is never on the GUI thread)
    assert "blank or nearly uniform" in w.status.value, w.status.value
    assert "none of this folder's images shows tissue" in w.status.value and "outs genes" not in viewer.layers


def test_blank_image_under_spots_is_never_predicted(viewer, qtbot):
    viewer.add_image(np.zeros((400, 400, 3), np.uint8), name="black", rgb=True)
    viewer.add_points(np.array([[100.0, 100.0], [200.0, 220.0], [300, 150]]), name="spots", size=20)
    w = PredictWidget(viewer)
    w.um_per_px.value = "1"
    w.spots.value = viewer.layers["spots"]
    wait_predict(qtbot, w)  # refused in the worker, before the model runs
    assert "blank or nearly uniform" in w.status.value, w.status.value
    assert "black genes" not in viewer.layers


def _flat_layer(bundle_std, n=300, spread=1e-4, seed=0):
    rng = np.random.default_rng(seed)
    genes = ["GNAS", "FN1", "KRT8"]
    values = 2.0 + spread * rng.random((n, 3)).astype(np.float32)
    values[:, 2] = rng.normal(3, 0.5, n)  # KRT8 varies
    pred = Prediction(spot_ids=np.arange(n).astype(str), xy=rng.random((n, 2)) * 500, genes=genes,
                      values=values, um_per_px=1.0, name="flat", spot_diameter_um=30.0,
                      provenance=Provenance(gene_pcc={"GNAS": 0.48, "FN1": 0.41, "KRT8": 0.2}))
    return prediction_layer_data(pred, name="flat genes", gene_std=bundle_std)


def test_flat_predictions_are_not_stretched_and_the_caption_says_so(viewer):
    from napari_hggep import load_model

    b = load_model(device="cpu")
    sd = {g: s for g, s in zip(b.genes, b.target_norm["std"])}
    std = np.array([sd["GNAS"], sd["FN1"], sd["KRT8"]], np.float32)
    data, kwargs, _ = _flat_layer(std)
    layer = viewer.add_points(data, **kwargs)
    w = PredictWidget(viewer)
    assert w.result.value is layer
    w.gene.value = "GNAS"
    lo, hi = layer.face_contrast_limits
    assert hi - lo >= FLAT_FRACTION * std[0] * 0.999  # never narrower than the floor
    assert np.ptp(layer.face_color[:, :3], axis=0).max() < 0.02  # one colour, not a pattern
    assert "flat" in caption(viewer).text and "flat map" in w.gene_info.value
    w.gene.value = "KRT8"  # a gene that varies keeps its 1st-99th percentile stretch
    v = gene_values(layer, "KRT8")
    assert layer.face_contrast_limits == pytest.approx(tuple(np.percentile(v, [1, 99])), rel=1e-4)
    assert "flat" not in caption(viewer).text and "1st–99th percentile" in w.gene_info.value


# ---------------------------------------------------------------- pixel size and warnings
def test_pixel_size_is_never_guessed_and_resets(viewer, qtbot, tmp_path):
    from skimage.data import immunohistochemistry

    viewer.add_image(he_like_image(500, 500, seed=1), name="jpeg", rgb=True)
    w = PredictWidget(viewer)
    assert w.um_per_px.value == "" and "enter the pixel size" in w.um_source.value
    w.spots.value = GENERATE
    w.run()
    assert w.worker is None and "Enter µm per pixel" in w.status.value
    w.um_per_px.value = "abc"
    w.run()
    assert "must be a number" in w.status.value
    w.um_per_px.value = "2"
    assert w.um_source.value == "entered here" and not shown(w.image_warning)
    w.pitch_um.value = 100.0
    wait_predict(qtbot, w)
    assert "jpeg genes" in viewer.layers, w.status.value
    # outside the trained resolutions: a visible warning
    w.um_per_px.value = "10"
    assert shown(w.image_warning) and "coarser than the scans the model was trained on" in w.image_warning.value
    # another image without metadata: the field empties again
    viewer.add_image(immunohistochemistry(), name="ihc", rgb=True)
    w.image_layer.value = viewer.layers["ihc"]
    assert w.um_per_px.value == "" and "enter the pixel size" in w.um_source.value
    qtbot.waitUntil(lambda: "does not look like H&E" in w.image_warning.value, timeout=30_000)  # judged in a worker
    assert shown(w.image_warning)
    assert "brown" in w.image_warning.value
    # an image with metadata: filled in, and says where from
    ome = tmp_path / "s.ome.tif"
    _write_ome(ome, smooth_he(512, 512), 0.5)
    viewer.open(str(ome), plugin="napari-hggep")
    w.image_layer.value = viewer.layers["s"]
    assert w.um_per_px.value == "0.5" and w.um_source.value == "from OME PhysicalSizeX in the file"
    assert not shown(w.image_warning)


# ---------------------------------------------------------------- gene selector
@pytest.fixture
def predicted(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-hggep", "he_spots")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    wait_predict(qtbot, w)
    return viewer, w, viewer.layers["HER2+ B4 genes"]


def _items(w):
    box = w.gene.native
    return [box.itemData(i) for i in range(box.count())], [box.itemText(i) for i in range(box.count())]


def test_gene_selector_sorting_filter_range_labels_and_hover(predicted):
    viewer, w, layer = predicted
    pcc = {g: v for g, v in layer.metadata[KEY].prediction.provenance.gene_pcc.items() if v is not None}
    best = sorted(pcc, key=lambda g: -pcc[g])
    genes, _ = _items(w)
    assert genes[:5] == best[:5] and w.gene.value == best[0]
    w.gene_filter.value = "FN1"
    assert _items(w)[0][0] == "FN1"
    w.gene.value = "FN1"
    w.gene_filter.value = ""
    genes, labels = _items(w)
    assert genes == best + [g for g in layer.metadata[KEY].genes if g not in pcc]  # sorting survives
    assert w.gene.value == "FN1"  # the user's pick survives too
    # one range, named; labels hold the name and PCC only, and the popup is wide enough for all of them
    assert "1st–99th percentile" in w.gene_info.value and "–" not in labels[0]
    box = w.gene.native
    fm = box.view().fontMetrics()
    assert box.view().minimumWidth() >= max(fm.horizontalAdvance(t) for t in labels)
    assert box.width() >= fm.horizontalAdvance(box.currentText())
    # no match: says so, and no stale map or caption
    w.gene_filter.value = "NOSUCHGENE"
    assert _items(w)[0] == [] and w.gene.value is None
    assert "No gene matches 'NOSUCHGENE'" in w.gene_info.value
    assert not caption(viewer).visible and not layer.face_colorbar.visible
    assert layer.metadata[KEY].gene is None and list(layer.features.columns) == ["spot_id"]
    assert np.ptp(layer.face_color[:, :3], axis=0).max() == 0  # plain grey
    w.gene_filter.value = ""
    assert w.gene.value == "FN1" and caption(viewer).visible and caption(viewer).text.startswith("FN1")
    # hover: the spot id and the selected gene's value, not 785 genes
    pos = tuple(layer.data[0] * np.asarray(layer.scale) + np.asarray(layer.translate))
    status = layer.get_status(pos, world=True)
    text = status["coordinates"] if isinstance(status, dict) else str(status)
    sid = layer.features["spot_id"].iloc[0]
    assert f"spot_id: {sid}" in text and "FN1: " in text, text
    assert "GNAS" not in text and text.count(":") <= 4, text


def test_gene_selector_with_20000_genes_fills_once(viewer, qtbot, monkeypatch):
    rng = np.random.default_rng(0)
    n, g = 2000, 20000
    genes = [f"GENE{i:05d}" for i in range(g)]
    pred = Prediction(spot_ids=np.arange(n).astype(str), xy=rng.random((n, 2)) * 2000, genes=genes,
                      values=rng.random((n, g), dtype=np.float32), um_per_px=1.0, name="big", spot_diameter_um=20.0,
                      provenance=Provenance(gene_pcc=dict(zip(genes, rng.uniform(-0.1, 0.5, g)))))
    pcc = pred.provenance.gene_pcc
    data, kwargs, _ = prediction_layer_data(pred, name="big genes", gene_std=np.ones(g))
    layer = viewer.add_points(data, **kwargs)
    w = PredictWidget(viewer)
    assert w.gene.native.count() == g
    w.gene_filter.value = "GENE1234"
    assert w.gene.native.count() == 10  # GENE12340 … GENE12349
    picked = w.gene.value  # the best of the ten
    assert picked == max((x for x in genes if "GENE1234" in x), key=pcc.get)
    # clearing the filter refills the 20,000 entries in one go and recolours at most once (its speed is
    # measured in benchmarks/bench_recolor.py)
    fills, colourings = [], []
    real_fill = type(w)._fill_gene_box
    monkeypatch.setattr(type(w), "_fill_gene_box", lambda self, *a: (fills.append(len(a[0])), real_fill(self, *a)))
    layer.events.face_color.connect(lambda e: colourings.append(1))
    w.gene_filter.value = ""
    assert fills == [g] and len(colourings) <= 1, (fills, colourings)
    assert w.gene.native.count() == g
    assert w.gene.native.itemData(0) == max(pcc, key=pcc.get) and w.gene.value == picked
    assert layer.metadata[KEY].gene == w.gene.value


# ---------------------------------------------------------------- errors in plain words; add_model
def test_checkpoint_errors_are_plain_and_add_model(viewer, qtbot, tmp_path):
    from napari_hggep.model._bundled import bundled_checkpoint

    viewer.add_image(he_like_image(400, 400), name="he", rgb=True)
    w = PredictWidget(viewer)
    w.um_per_px.value = "2"
    w.spots.value = GENERATE
    w.pitch_um.value = 60.0
    w.model_choice.value = CHECKPOINT
    w.model_file.value = str(tmp_path)  # a folder
    wait_predict(qtbot, w)
    assert "is a folder, not a checkpoint file" in w.status.value, w.status.value
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    w.model_file.value = str(bad)
    wait_predict(qtbot, w)
    assert "not a readable napari-hggep checkpoint" in w.status.value, w.status.value
    for jargon in ("weights_only", "Weights only", "WeightsUnpickler", "pickle"):
        assert jargon not in w.status.value
    # a checkpoint offered by the training widget: listed, selected, used
    mine = tmp_path / "my_model.pt"
    shutil.copy(bundled_checkpoint(), mine)
    label = w.add_model(str(mine), "my model (trained)")
    assert w.model_choice.value == label and list(w.model_choice.choices) == [BUNDLED, label, CHECKPOINT]
    assert not w.model_file.visible
    wait_predict(qtbot, w)
    assert w.status.value.startswith(f"Predicted {N_BUNDLED} genes"), w.status.value
    assert w.add_model(str(mine)) == "my_model (checkpoint)" and w.model_choice.value == "my_model (checkpoint)"
    w.model_choice.value = BUNDLED
    assert w._model_path() is None


def test_messages_show_ids_not_numpy_reprs(viewer):
    viewer.add_image(he_like_image(400, 400), name="he", rgb=True)
    viewer.add_points(np.array([[100.0, 100.0], [200.0, 200.0]]), name="dups",
                      features=pd.DataFrame({"spot_id": ["23x20", "23x20"]}))
    w = PredictWidget(viewer)
    w.um_per_px.value = "1"
    w.spots.value = viewer.layers["dups"]
    w.run()
    assert "'23x20'" in w.status.value and "np.str_" not in w.status.value, w.status.value
