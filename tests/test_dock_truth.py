"""The Predict dock as a user meets it (issues 32 and 33), with the real viewer: nothing heavy on
the GUI thread, the command line's guards, progress to the very end, docks that fit a laptop, a
folder's own spots, nothing stale after a layer is deleted, the measured view on the tissue."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")  # before the imports of the plugin's napari layer
from helpers import he_like_image, study_counts, wait_idle, wait_predict, write_10x_h5, write_visium, write_visium_hd, caption

from qtpy.QtWidgets import QLabel  # noqa: E402

from napari_hggep._napari.layers import KEY, MapLayerInfo  # noqa: E402
from napari_hggep._napari.predict_widget import PredictWidget  # noqa: E402
from napari_hggep._napari.widgets.measured import SHOW_CHOICES  # noqa: E402
from napari_hggep._napari.widgets.source import GENERATE  # noqa: E402




def _texts(w, viewer) -> list[str]:
    labels = [lab.text() for lab in w.native.findChildren(QLabel) if lab.isVisible()]
    return labels + ([str(caption(viewer).text)] if caption(viewer).visible else [])


@pytest.fixture
def folder(outs_with_counts):
    """Section "secA" as a Space Ranger outs/ folder with counts: the folder, its in-tissue
    barcodes and the genes its counts list."""
    outs, genes = outs_with_counts
    pos = pd.read_csv(outs / "spatial" / "tissue_positions.csv")
    return outs, list(pos[pos.in_tissue == 1].barcode.astype(str)), genes


def test_nothing_heavy_runs_on_the_gui_thread(viewer, qtbot, monkeypatch):
    """torch's import, the stain check and the blank-tissue check run in worker threads: the click
    handler returns at once (they were all called on the GUI thread on the first Predict)."""
    from napari_hggep._napari import jobs
    from napari_hggep.data import quality

    main = threading.main_thread()
    where: dict[str, list] = {"import": [], "stain": [], "tissue": []}
    real_import, real_stain, real_tissue = jobs.import_torch_stack, quality.stain_warning, quality.require_tissue
    monkeypatch.setattr(jobs, "import_torch_stack",
                        lambda: (where["import"].append(threading.current_thread()), real_import())[1])
    monkeypatch.setattr(quality, "stain_warning", lambda *a, **k: (where["stain"].append(threading.current_thread()),
                                                                    real_stain(*a, **k))[1])
    monkeypatch.setattr(quality, "require_tissue", lambda *a, **k: (where["tissue"].append(threading.current_thread()),
                                                                     real_tissue(*a, **k))[1])
    viewer.open_sample("napari-hggep", "he_spots")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    wait_predict(qtbot, w)
    assert w.result.value is not None, w.status.value
    qtbot.waitUntil(lambda: bool(where["stain"]), timeout=30_000)
    for what, threads in where.items():
        assert threads and all(t is not main for t in threads), f"{what} ran on the GUI thread"


def test_a_pixel_size_typo_is_refused_before_anything_runs(viewer, qtbot):
    from napari.utils.notifications import notification_manager

    viewer.open_sample("napari-hggep", "he_spots")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    n = len(notification_manager.records)
    w.um_per_px.value = "0,05"  # a comma typed for the decimal point, and a zero too many
    assert "0.05 µm per pixel" in w.um_source.value  # said under the field at once
    w.run()
    assert w.worker is None and w.result.value is None  # no job, no layer
    assert "0.05 µm per pixel" in w.status.value and "typo" in w.status.value
    assert any("0.05 µm" in str(r.message) for r in notification_manager.records[n:])
    w.um_per_px.value = "50"
    w.run()
    assert w.worker is None and "50 µm per pixel" in w.status.value


def test_a_prediction_out_of_proportion_waits_for_the_users_word(viewer, qtbot, monkeypatch):
    from napari_hggep.inference import cost

    viewer.open_sample("napari-hggep", "he_spots")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    monkeypatch.setattr(cost, "free_memory_bytes", lambda: 64 * 2**20)  # 64 MB free: far too little
    wait_predict(qtbot, w)
    assert w.result.value is None and w.predict_btn.text == "Predict anyway"
    assert "more than half" in w.status.value and "MB free" in w.status.value
    wait_predict(qtbot, w)  # the user's word: it runs
    assert w.result.value is not None and w.predict_btn.text == "Predict", w.status.value


def test_progress_reaches_the_end_only_with_the_result(viewer, qtbot):
    viewer.open_sample("napari-hggep", "he_spots")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    seen, phases = [], []
    real = w._on_progress

    def record(msg):
        real(msg)
        seen.append((w.progress.value, w.progress.max, w.result.value is not None))
        phases.append(msg[3])

    w._on_progress = record
    wait_predict(qtbot, w)
    assert w.result.value is not None
    assert seen and all(v < m for v, m, _ in seen if m > 1)  # never 100 % before the layer is there
    assert w.progress.value == w.progress.max > 1
    assert any("attention" in p for p in phases) and any("result layer" in p for p in phases)


def test_both_docks_fit_a_laptop_screen(viewer, qtbot):
    viewer.window._qt_window.resize(1366, 768)
    viewer.open_sample("napari-hggep", "he_spots")
    viewer.window.add_plugin_dock_widget("napari-hggep", "Predict gene expression")
    viewer.window.add_plugin_dock_widget("napari-hggep", "Train on my sections")
    assert viewer.window._qt_window.minimumSizeHint().height() <= 768


def test_a_folder_opened_after_the_dock_is_predicted_on_its_own_spots(viewer, qtbot, folder):
    outs, barcodes, _ = folder
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.spots.value == GENERATE  # nothing open yet
    viewer.open(str(outs), plugin="napari-hggep")
    assert w.image_layer.value is viewer.layers["secA"]  # named after the section, not "outs"
    assert w.spots.value is viewer.layers["secA spots"]
    wait_predict(qtbot, w)
    res = w.result.value
    assert res is not None, w.status.value
    assert sorted(res.metadata[KEY].prediction.spot_ids) == sorted(barcodes)
    assert res.metadata[KEY].prediction.measured is not None  # compared with the folder's counts


def test_nothing_names_a_deleted_result_or_image(viewer, qtbot, folder):
    outs, _, genes = folder
    viewer.open(str(outs), plugin="napari-hggep")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    wait_predict(qtbot, w)
    res = w.result.value
    w.gene_filter.value = genes[0]
    gene = w.gene.value
    w.measured_show.value = SHOW_CHOICES[1]
    assert any(gene in t for t in _texts(w, viewer)) and f"{res.name} measured" in viewer.layers
    w.gene_filter.value = ""
    viewer.layers.remove(res)
    assert not [t for t in _texts(w, viewer) if gene in t]
    assert w.gene.native.count() == 0 and not w.measured_show.visible and not w.scatter.isVisible()
    assert not any(isinstance(ly.metadata.get(KEY), MapLayerInfo) for ly in viewer.layers)
    viewer.layers.remove(viewer.layers["secA"])
    assert w.image_layer.value is None and w.um_per_px.value == "" and not w.image_used.visible


def test_the_measured_map_lies_on_the_tissue_with_titles(viewer, qtbot, folder):
    outs, _, genes = folder
    viewer.open(str(outs), plugin="napari-hggep")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    wait_predict(qtbot, w)
    w.gene_filter.value = genes[0]  # a gene the slide's counts list
    res, gene = w.result.value, w.gene.value
    assert gene == genes[0]
    w.measured_show.value = SHOW_CHOICES[1]
    tissue = viewer.layers[f"{res.name} tissue (measured)"]
    measured = viewer.layers[f"{res.name} measured"]
    assert tissue.data is viewer.layers["secA"].data  # the same image, not a copy
    assert tissue.translate[-1] == pytest.approx(measured.translate[-1])
    titles = viewer.layers[f"{res.name} titles"]
    assert list(titles.features["title"]) == [f"predicted {gene}", f"measured {gene}"]
    lo, hi = res.face_contrast_limits
    assert f"{lo:.2f}–{hi:.2f}" in w.gene_info.value  # the range the colour bar shows, stated once
    assert tuple(measured.face_contrast_limits) == pytest.approx((lo, hi))
    w.measured_show.value = SHOW_CHOICES[3]
    assert list(viewer.layers[f"{res.name} titles"].features["title"]) == [f"measured − predicted {gene}"]
    assert "measured − predicted, from −" in w.gene_info.value
    wait_idle(qtbot, w)


def test_counts_without_the_models_genes_offer_no_measured_view(viewer, qtbot, tmp_path):
    img = he_like_image(520, 700)
    outs = write_visium(tmp_path / "secB" / "outs", img, with_h5=False)
    pos = pd.read_csv(outs / "spatial" / "tissue_positions.csv")
    pos = pos[pos.in_tissue == 1]
    ids = [f"ENSG{i:011d}" for i in range(5)]  # Ensembl ids only: none of the model's symbols
    write_10x_h5(outs / "filtered_feature_bc_matrix.h5", pos.barcode, ids, ids,
                 np.random.default_rng(0).poisson(3, (len(pos), 5)))
    viewer.open(str(outs), plugin="napari-hggep")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    wait_predict(qtbot, w)
    assert w.result.value is not None, w.status.value
    assert not w.measured_show.visible and not w.scatter.isVisible()
    assert "measured PCC on this slide" not in list(w.sort_by.choices)


def test_name_sort_is_alphabetical(viewer, qtbot):
    viewer.open_sample("napari-hggep", "he_spots")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    wait_predict(qtbot, w)
    w.sort_by.value = "name"
    names = [w.gene.native.itemData(i) for i in range(w.gene.native.count())]
    assert names == sorted(names, key=str.upper)


def test_every_label_follows_the_docks_state(viewer, qtbot):
    """One state behind the labels: the status line, the progress bar and the buttons show what the
    dock's evented state holds, whoever changed it; a gene entry cut by a narrow dock reads whole
    in its tooltip."""
    from qtpy.QtCore import Qt

    viewer.open_sample("napari-hggep", "he_spots")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    seen = []
    w.state.events.busy.connect(lambda b: seen.append((b, w.predict_btn.enabled, w.cancel_btn.enabled)))
    wait_predict(qtbot, w)
    assert w.result.value is not None, w.status.value
    assert seen[0][0] and seen[0][1:] == (False, True) and seen[-1] == ("", True, False)
    assert w.status.value == w.state.status and w.state.status.startswith("Predicted")
    assert w.status.tooltip == w.state.status
    assert (w.progress.value, w.progress.max) == w.state.progress
    w.state.status = "something else"
    w.state.progress = (3, 7)
    assert w.status.value == "something else" and (w.progress.value, w.progress.max) == (3, 7)
    box = w.gene.native
    assert box.count() > 100
    for i in (0, box.count() - 1):
        assert box.itemData(i, Qt.ItemDataRole.ToolTipRole) == box.itemText(i)
    assert box.toolTip().startswith(box.currentText())


def test_visium_hd_bins_arrive_as_an_image_on_the_bin_grid(viewer, qtbot, tmp_path, monkeypatch):
    """Square bins on a grid (Visium HD) are drawn as an image layer, one pixel per bin, placed on the
    tissue by the grid's affine: a gene's colours are one array (napari draws 200,000 points slowly);
    the measured map and the difference are images on the same grid; the export is the prediction's."""
    import anndata as ad

    from napari_hggep._napari import layers as layers_module
    from napari_hggep._napari.jobs import import_torch_stack

    import_torch_stack()  # as the dock imports torch beside a GL context (triton kept out)
    from napari_hggep.model._bundled import load_model

    monkeypatch.setattr(layers_module, "BIN_IMAGE_MIN_SPOTS", 1)  # the test slide's few hundred bins
    img = he_like_image(640, 800)
    outs = write_visium_hd(tmp_path / "hdA", img, mpp=0.5, bins=(16,))
    b16 = outs / "binned_outputs" / "square_016um"
    pos = pd.read_parquet(b16 / "spatial" / "tissue_positions.parquet")
    pos = pos[pos.in_tissue == 1]
    genes = list(load_model(None, "cpu").genes[:30])
    write_10x_h5(b16 / "filtered_feature_bc_matrix.h5", pos.barcode, genes, [f"E{i}" for i in range(30)],
                 study_counts(img, pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float), 30))
    viewer.open(str(outs), plugin="napari-hggep")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    wait_predict(qtbot, w)
    res = w.result.value
    assert res is not None and res.__class__.__name__ == "Image", w.status.value
    info = res.metadata[KEY]
    pred, grid = info.prediction, info.grid
    assert len(pred.spot_ids) == len(pos) and np.isfinite(res.data).sum() == len(pos)
    # each bin's pixel lies on its bin's centre in the tissue image, and holds the gene shown
    image = w.image_layer.value
    for k in (0, len(pos) // 2, len(pos) - 1):
        at = np.asarray(res.data_to_world([grid.rows[k], grid.cols[k]]), float)
        want = np.asarray(image.data_to_world(pred.image_xy[k][::-1]), float)
        np.testing.assert_allclose(at[-2:], want[-2:], atol=1e-6 * float(np.abs(want).max()) + 1e-6)
    j = pred.genes.index(w.gene.value)
    np.testing.assert_allclose(res.data[grid.rows, grid.cols], pred.values[:, j])
    assert res.colorbar.visible and tuple(res.contrast_limits) == info.contrast_limits
    assert w.result.value is res and image in w.image_layer.choices and res not in w.image_layer.choices
    w.gene_filter.value = genes[3]
    gene = w.gene.value
    np.testing.assert_allclose(res.data[grid.rows, grid.cols], pred.values[:, pred.genes.index(gene)])
    w.measured_show.value = SHOW_CHOICES[1]  # beside, on a copy of the tissue
    meas = viewer.layers[f"{res.name} measured"]
    assert meas.__class__.__name__ == "Image"
    shift = float(meas.affine.affine_matrix[-2, -1] - res.affine.affine_matrix[-2, -1])
    assert shift > 0 and np.isfinite(meas.data).sum() == int(pred.measured.has_counts.sum())
    assert tuple(meas.contrast_limits) == tuple(res.contrast_limits)  # one colour range
    w.measured_show.value = SHOW_CHOICES[3]
    diff = viewer.layers[f"{res.name} measured − predicted"]
    assert diff.__class__.__name__ == "Image" and f"{res.name} measured" not in viewer.layers
    # the export is the prediction, whatever the layer draws it as
    w.export_file.value = str(tmp_path / "hd.h5ad")
    w.export()
    wait_idle(qtbot, w)
    assert w.status.value.startswith("Exported"), w.status.value
    a = ad.read_h5ad(tmp_path / "hd.h5ad")
    assert a.n_obs == len(pos)
    viewer.layers.remove(res)
    assert not any(isinstance(ly.metadata.get(KEY), MapLayerInfo) for ly in viewer.layers)
    assert not [t for t in _texts(w, viewer) if gene in t]


def test_a_prediction_shows_in_napari_activity_panel_until_its_result_is_there(viewer, qtbot, monkeypatch):
    """The job in napari's activity panel (a napari ``progress``): named by its phase, counting to
    its total (updated at most twice a second), and gone once the result layer is there."""
    from napari.utils import progress

    from napari_hggep._napari import jobs

    shown = []
    real_flush = jobs.Activity._flush

    def flush(self):
        if self.closed or self.pending is None:  # nothing to show (the job ended first)
            return real_flush(self)
        live = self.bar in progress._all_instances  # in the panel when it is updated
        real_flush(self)
        shown.append((str(self.bar.desc), self.bar.n, self.bar.total, live))

    monkeypatch.setattr(jobs.Activity, "_flush", flush)
    viewer.open_sample("napari-hggep", "he_spots")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    wait_predict(qtbot, w)
    assert w.result.value is not None, w.status.value
    assert shown and all(live for *_, live in shown)
    assert len({d for d, *_ in shown}) >= 2 and all(d.startswith("HGGEP: ") for d, *_ in shown)
    assert any(0 < done < total for _, done, total, _ in shown)
    assert not [p for p in progress._all_instances if str(p.desc).startswith("HGGEP")]


def test_a_dock_opened_after_training_lists_the_new_model_but_starts_on_the_bundled_one(viewer, monkeypatch):
    from napari_hggep._napari import trained_models
    from napari_hggep._napari.widgets.prediction import BUNDLED

    monkeypatch.setattr(trained_models, "TRAINED_MODELS", {})
    first = PredictWidget(viewer)
    trained_models.model_trained("/tmp/mine.pt", "mine (trained here)")
    assert first.model_choice.value == "mine (trained here)"  # the dock open while it trained: selected
    later = PredictWidget(viewer)
    assert "mine (trained here)" in later.model_choice.choices and later.model_choice.value == BUNDLED
