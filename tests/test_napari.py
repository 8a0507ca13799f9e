"""The plugin with a real viewer (run under Xvfb)."""
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")  # before the imports of the plugin's napari layer
import tifffile

from helpers import he_like_image, write_her2st, write_visium, N_BUNDLED, wait_predict, wait_idle, caption
from napari_hggep._napari.layers import KEY, color_by_gene, gene_values
from napari_hggep._napari.reader import get_reader
from napari_hggep._napari.predict_widget import PredictWidget
from napari_hggep._napari.widgets.source import GENERATE


@pytest.fixture
def sample_viewer(viewer):
    viewer.open_sample("napari-hggep", "he_spots")
    return viewer


def test_sample_data(sample_viewer):
    from scipy.spatial import cKDTree

    from napari_hggep._napari.sample import SAMPLE_DIR

    img, pts = sample_viewer.layers
    # a whole section at reduced resolution, within 1.5 MB, with a 100 um grid over its tissue
    assert sum(f.stat().st_size for f in SAMPLE_DIR.iterdir()) <= 1_500_000
    assert img.rgb and img.data.shape == (2292, 2668, 3) and img.scale[0] == pytest.approx(2.0, rel=1e-3)
    assert pts.data.shape[0] > 800 and img.metadata[KEY].um_per_px == pytest.approx(img.scale[0])
    world = pts.data * pts.scale
    d, _ = cKDTree(world).query(world, k=2)
    assert np.median(d[:, 1]) == pytest.approx(100.0, rel=0.01)  # µm between neighbours
    assert "spot_id" in pts.features


def test_reader_folders_and_csv(tmp_path, viewer):
    f = write_her2st(tmp_path / "S1", he_like_image())
    layers = viewer.open(str(f), plugin="napari-hggep")
    assert [ly.__class__.__name__ for ly in layers] == ["Image", "Points"]
    assert len(layers[1].data) == 63 and layers[0].scale[0] == pytest.approx(5.0, rel=1e-3)
    # spot size is the 100 um spot diameter in pixels
    assert np.median(layers[1].size) == pytest.approx(100 / 5.0, rel=1e-3)
    v = write_visium(tmp_path / "outs", he_like_image(500, 420))
    assert get_reader(str(v)) is not None
    assert len(viewer.open(str(v), plugin="napari-hggep")[1].data) == 64
    csv = tmp_path / "spots.csv"
    pd.DataFrame({"spot_id": ["a", "b"], "x": [10.0, 20.0], "y": [30.0, 40.0]}).to_csv(csv, index=False)
    (pts,) = viewer.open(str(csv), plugin="napari-hggep")
    np.testing.assert_array_equal(pts.data, [[30, 10], [40, 20]])
    assert get_reader(str(tmp_path / "nothing.txt")) is None


def test_widget_predicts_recolours_exports(sample_viewer, qtbot, tmp_path):
    w = PredictWidget(sample_viewer)
    sample_viewer.window.add_dock_widget(w)
    assert w.image_layer.value is sample_viewer.layers[0]
    assert w.spots.value is sample_viewer.layers[1]
    assert float(w.um_per_px.value) == pytest.approx(sample_viewer.layers[0].metadata[KEY].um_per_px, abs=1e-3)
    wait_predict(qtbot, w)
    n = len(sample_viewer.layers[1].data)
    assert w.status.value.startswith(f"Predicted {N_BUNDLED} genes for {n} spots"), w.status.value
    layer = sample_viewer.layers["HER2+ B4 genes"]
    assert layer.metadata[KEY].values.shape == (n, N_BUNDLED) and w.result.value is layer
    assert w.predict_btn.enabled and not w.cancel_btn.enabled
    # gene selector: filter by typing, labels show PCC and range
    w.gene_filter.value = "KRT"
    genes = [c for c in w.gene.choices]
    assert "KRT8" in genes and all("KRT" in g for g in genes)
    w.gene.value = "KRT8"
    c1 = layer.face_color.copy()
    w.gene_filter.value = ""
    other = next(g for g in layer.metadata[KEY].genes if g != "KRT8" and gene_values(layer, g).std() > 0)
    w.gene.value = other
    assert not np.allclose(layer.face_color, c1), "switching genes must recolour"
    assert layer.metadata[KEY].gene == other
    # coloured through napari's own feature colouring, so its controls and colour bar show the scale
    assert layer.face_color_mode == "colormap" and layer.face_colormap.name == "viridis"
    assert layer.face_contrast_limits == pytest.approx(layer.metadata[KEY].contrast_limits)
    assert layer.face_colorbar.visible
    # the canvas names the gene and its held-out PCC beside the colour bar
    assert caption(sample_viewer).visible and caption(sample_viewer).text.startswith(other)
    assert "held-out PCC" in caption(sample_viewer).text
    # the bundled model's per-gene PCC was measured on patients it had not seen, and says so
    assert layer.metadata[KEY].prediction.provenance.gene_pcc_protocol == "leave-one-patient-out"
    assert "held-out PCC" in w.gene_info.value and "patients not trained on" in w.gene_info.value
    w.colormap.value = "magma"
    assert layer.metadata[KEY].colormap == "magma" and layer.face_colormap.name == "magma"
    # export writes a file that reads back equal
    out = tmp_path / "pred.csv"
    w.export_file.value = str(out)
    w.export()
    wait_idle(qtbot, w)
    df = pd.read_csv(out)
    assert df.shape == (n, 3 + 2 + N_BUNDLED)
    np.testing.assert_allclose(df[layer.metadata[KEY].genes].to_numpy(), layer.metadata[KEY].values, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(df[["y", "x"]].to_numpy(), layer.data, atol=1e-3)  # CSV keeps 4 decimals of a pixel
    h5 = tmp_path / "pred.h5ad"
    w.export_file.value = str(h5)
    w.export_selected.value = True
    w.export()
    wait_idle(qtbot, w)
    import anndata as ad

    a = ad.read_h5ad(h5)
    assert a.shape == (n, 1) and list(a.var_names) == [other]
    # the npe2 writer gives the same CSV
    out2 = tmp_path / "writer.csv"
    sample_viewer.layers.selection = {layer}
    sample_viewer.layers.save(str(out2), selected=True, plugin="napari-hggep")
    pd.testing.assert_frame_equal(pd.read_csv(out2), df)


def test_generate_grid_and_two_slides(viewer, qtbot):
    viewer.add_image(he_like_image(600, 800, seed=1), name="slideA", rgb=True)
    viewer.add_image(he_like_image(500, 500, seed=2), name="slideB", rgb=True)
    w = PredictWidget(viewer)
    for name in ("slideA", "slideB"):
        w.image_layer.value = viewer.layers[name]
        w.spots.value = GENERATE
        w.um_per_px.value = "2"
        w.pitch_um.value = 100.0
        wait_predict(qtbot, w)
        assert f"{name} genes" in viewer.layers, w.status.value
    a, b = viewer.layers["slideA genes"], viewer.layers["slideB genes"]
    assert len(a.data) != len(b.data)
    w.result.value = a
    w.gene.value = "KRT8"
    colours_b = b.face_color.copy()
    w.gene.value = "GNAS"
    assert np.array_equal(b.face_color, colours_b), "slides must stay independent"


def test_error_leaves_widget_usable(viewer, qtbot):
    viewer.add_image(he_like_image(), name="he", rgb=True)
    viewer.add_points(np.array([[5000.0, 5000.0], [6000.0, 10.0]]), name="far spots")
    w = PredictWidget(viewer)
    w.spots.value = viewer.layers["far spots"]
    w.um_per_px.value = "1"
    w.run()
    assert "outside" in w.status.value and w.worker is None
    assert w.predict_btn.enabled and not w.cancel_btn.enabled
    # a corrupt checkpoint fails in the worker and resets the buttons
    w.spots.value = GENERATE
    w.model_choice.value = "Checkpoint file…"
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".pt", delete=False) as f:
        f.write(b"garbage")
    w.model_file.value = f.name
    wait_predict(qtbot, w)
    assert "Error" in w.status.value and "not a readable" in w.status.value
    assert w.predict_btn.enabled and not w.cancel_btn.enabled
    # and it still works afterwards
    w.model_choice.value = "Bundled model (HER2+ compact)"
    wait_predict(qtbot, w)
    assert "he genes" in viewer.layers


def test_cancel(viewer, qtbot, monkeypatch):
    import threading

    from napari_hggep._napari.widgets import prediction

    # the job waits after its first batch until Cancel was pressed: the cancel lands mid-prediction
    # however fast the machine is
    pressed, real = threading.Event(), prediction._predict_job_steps

    def held_after_first_batch(*args):
        steps = real(*args)
        item = next(steps)
        try:
            while True:
                sent = yield item
                if item[0] == "progress" and item[1] > 0:
                    assert pressed.wait(60), "Cancel was never pressed"
                item = steps.send(sent)
        except StopIteration as end:
            return end.value

    monkeypatch.setattr(prediction, "_predict_job_steps", held_after_first_batch)
    viewer.add_image(he_like_image(1200, 1200), name="big", rgb=True)
    w = PredictWidget(viewer)
    w.spots.value = GENERATE
    w.um_per_px.value = "1"
    w.pitch_um.value = 20.0  # ~2,500 spots: many batches
    w.run()
    qtbot.waitUntil(lambda: w.progress.value > 0, timeout=60_000)
    w.cancel()
    pressed.set()
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert w.status.value == "Cancelled."
    assert "big genes" not in viewer.layers
    assert w.predict_btn.enabled


def test_color_by_unknown_gene(sample_viewer, qtbot):
    w = PredictWidget(sample_viewer)
    wait_predict(qtbot, w)
    with pytest.raises(KeyError, match="NOT_A_GENE"):
        color_by_gene(w.result.value, "NOT_A_GENE")


def test_screenshot(make_napari_viewer, qtbot, tmp_path):
    sample_viewer = make_napari_viewer(show=True)
    sample_viewer.open_sample("napari-hggep", "he_spots")
    w = PredictWidget(sample_viewer)
    sample_viewer.window.add_dock_widget(w)
    wait_predict(qtbot, w)
    shot = sample_viewer.screenshot(str(tmp_path / "s.png"), canvas_only=True)
    # the gene map is drawn: many distinct colours on the canvas
    assert shot.ndim == 3 and len(np.unique(shot.reshape(-1, shot.shape[-1]), axis=0)) > 100


def test_whole_slide_pyramids_open_as_multiscale_and_predict(viewer, qtbot, tmp_path):
    from helpers import smooth_he
    from test_readers import _write_pyramid, _write_svs

    img = smooth_he(1536, 2048, seed=1)
    ome = tmp_path / "slide.ome.tif"
    _write_pyramid(ome, img, um=0.5)
    assert get_reader(str(ome)) is not None
    (layer,) = viewer.open(str(ome), plugin="napari-hggep")
    assert layer.multiscale and len(layer.data) == 3 and layer.name == "slide"
    assert layer.scale[-1] == pytest.approx(0.5) and layer.metadata[KEY].um_per_px == pytest.approx(0.5)
    assert [d.shape[:2] for d in layer.data] == [(1536, 2048), (768, 1024), (384, 512)]
    svs = tmp_path / "scan.svs"
    _write_svs(svs, img, mpp=0.2527)
    (scan,) = viewer.open(str(svs), plugin="napari-hggep")
    assert scan.multiscale and scan.scale[-1] == pytest.approx(0.2527)
    # plain TIFF with resolution tags (pixels per centimetre), one level: not multiscale
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, img[:512, :512], photometric="rgb", resolution=(20000, 20000), resolutionunit=3)
    (fl,) = viewer.open(str(flat), plugin="napari-hggep")
    assert not fl.multiscale and fl.scale[-1] == pytest.approx(0.5)
    # the widget predicts from the multiscale layer, its µm/px filled in from the file
    w = PredictWidget(viewer)
    w.image_layer.value = layer
    assert float(w.um_per_px.value) == pytest.approx(0.5)
    w.spots.value = GENERATE
    w.pitch_um.value = 100.0
    wait_predict(qtbot, w)
    genes = viewer.layers["slide genes"]
    assert len(genes.data) > 20, w.status.value
    assert tuple(genes.scale) == pytest.approx(tuple(layer.scale))
    # spots in world µm lie inside the slide
    world = genes.data * genes.scale
    assert (world >= 0).all() and (world[:, 0] < 1536 * 0.5).all() and (world[:, 1] < 2048 * 0.5).all()


def test_widget_recovers_from_every_error_path(viewer, qtbot, tmp_path, monkeypatch):
    """Each bad input or failure shows an error, resets the buttons, and the next run works."""
    import torch

    import napari_hggep.model._bundled as bundled
    from napari_hggep._napari.widgets.prediction import BUNDLED, CHECKPOINT

    w = PredictWidget(viewer)

    def check(expect):
        qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
        assert w.status.value.startswith("Error") and expect in w.status.value, w.status.value
        assert w.predict_btn.enabled and not w.cancel_btn.enabled

    w.run()  # no image at all
    check("Open or pick an H&E image layer")
    viewer.add_image(np.random.default_rng(0).random((100, 100)), name="grey")  # not RGB
    w.image_layer.value = viewer.layers["grey"]
    w.run()
    check("not an RGB image")
    viewer.add_image(np.full((300, 300, 3), 240, np.uint8), name="blank", rgb=True)  # glass only
    w.image_layer.value = viewer.layers["blank"]
    w.um_per_px.value = "1"
    w.spots.value = GENERATE
    w.run()
    check("no tissue found")
    viewer.add_image(he_like_image(400, 400), name="he", rgb=True)
    w.image_layer.value = viewer.layers["he"]
    w.um_per_px.value = "1"
    pts = viewer.add_points(np.array([[100.0, 100.0], [200.0, 200.0]]), name="dup spots",
                            features=pd.DataFrame({"spot_id": ["a", "a"]}))
    w.spots.value = pts
    w.run()
    check("more than once")
    w.spots.value = GENERATE
    w.model_choice.value = CHECKPOINT
    w.model_file.value = str(tmp_path / "missing.pt")
    wait_predict(qtbot, w)
    check("does not exist")
    if not torch.cuda.is_available():
        w.model_choice.value = BUNDLED
        w.device.value = "cuda"
        wait_predict(qtbot, w)
        check("no CUDA GPU")
        w.device.value = "auto"
    w.model_choice.value = BUNDLED
    real_load = bundled.load_model

    def failing_model(path=None, device="auto"):  # the real model, failing half-way through a slide
        b = real_load(path, device)
        b.model.encode_views = lambda x, c=None: (_ for _ in ()).throw(ValueError("patch decoder failed"))
        return b

    monkeypatch.setattr(bundled, "load_model", failing_model)
    wait_predict(qtbot, w)
    check("patch decoder failed")

    def short_of_memory(path=None, device="auto"):  # out of memory above 8 patches: smaller batches, a notice
        b = real_load(path, device)
        enc = b.model.encode_views

        def encode_views(x, c=None):
            if x.shape[0] > 8:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return enc(x, c)

        b.model.encode_views = encode_views
        return b

    monkeypatch.setattr(bundled, "load_model", short_of_memory)
    # a grid coarser than the patch (the per-patch path; a finer one shares the trunk): some 15 spots
    w.um_per_px.value, w.pitch_um.value = "1", 75.0
    wait_predict(qtbot, w)
    assert w.status.value.startswith("Predicted"), w.status.value
    assert w.notices and "retrying" in w.notices[0]
    # export errors
    w.export_file.value = str(tmp_path / "pred.txt")
    w.export()
    wait_idle(qtbot, w)
    assert "'.txt' is not one of them" in w.status.value and ".geojson" in w.status.value
    w.export_file.value = str(tmp_path / "no" / "such" / "pred.csv")
    w.export()
    wait_idle(qtbot, w)
    assert w.status.value.startswith("Error") and "does not exist" in w.status.value
    monkeypatch.setattr(bundled, "load_model", real_load)
    wait_predict(qtbot, w)
    assert w.status.value.startswith("Predicted") and "he genes" in viewer.layers
