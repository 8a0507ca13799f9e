"""The training dock widget with a real viewer: sections from a samples table on disk, cancel,
resume, the new model in the Predict widget, predicting with it; errors a user can act on."""
import json

import pandas as pd
import pytest

pytest.importorskip("napari")  # before the imports of the plugin's napari layer

from helpers import he_like_image, write_visium_study_section
from napari_hggep._napari.layers import KEY
from napari_hggep._napari.train_widget import TrainWidget
from napari_hggep._napari.predict_widget import PredictWidget


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("wstudy")
    rows = []
    for i in range(3):
        write_visium_study_section(root, f"V{i + 1}", he_like_image(500, 420, seed=20 + i), n_genes=600, seed=i)
        rows.append({"section": f"V{i + 1}", "folder": f"V{i + 1}/outs", "image": f"V{i + 1}/V{i + 1}_fullres.tif"})
    pd.DataFrame(rows).to_csv(root / "samples.csv", index=False)
    pd.DataFrame(rows).drop(columns="image").to_csv(root / "noimage.csv", index=False)
    return root


def _wait(qtbot, w, timeout=400_000):
    qtbot.waitUntil(lambda: w.worker is None, timeout=timeout)


def test_train_cancel_resume_then_predict_with_the_new_model(make_napari_viewer, qtbot, study_dir, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-hggep", "he_spots")
    pw = PredictWidget(viewer)
    tw = TrainWidget(viewer)
    viewer.window.add_dock_widget(pw)
    viewer.window.add_dock_widget(tw)
    # errors a user can act on, before anything runs
    tw.run()
    assert tw.status.value.startswith("Error: Add labelled sections first")
    tw.table_file.value = str(study_dir / "samples.csv")
    tw.load_table()
    assert len(tw.sections.choices) == 3 and "V1_fullres.tif" in tw.sections.native.item(0).text()
    tw.hvg.value, tw.epochs.value, tw.device.value = 20, 2, "cpu"
    tw.run()
    assert tw.status.value.startswith("Error: Choose where to save the model")
    out = tmp_path / "study.pt"
    tw.out_file.value = str(out)
    # cancel at once: nothing written, the button offers to resume
    tw.run()
    tw.cancel()
    _wait(qtbot, tw)
    assert tw.status.value.startswith("Cancelled") and tw.train_btn.text == "Resume" and not out.exists()
    assert tw.train_btn.enabled and not tw.cancel_btn.enabled
    tw.run()  # resume: the same sections and options
    _wait(qtbot, tw)
    assert out.exists(), tw.status.value
    assert "held-out mean PCC" in tw.status.value and "leave-one-section-out" in tw.status.value
    assert len(tw.plot.loss) == 2  # the live plot shows the final model's epochs
    card = json.loads(out.with_suffix(".json").read_text())
    assert len(card["genes"]) == 20 and len(card["metrics"]["gene_pcc"]) == 20
    # the model is now in the Predict widget's list, selected, and predicts
    assert pw.model_choice.value == "study (trained here)"
    qtbot.waitUntil(lambda: pw.worker is None, timeout=10_000)
    pw.run()
    qtbot.waitUntil(lambda: pw.worker is None, timeout=300_000)
    layer = next(ly for ly in viewer.layers if ly.name.endswith("genes"))
    assert pw.status.value.startswith("Predicted 20 genes"), pw.status.value
    assert layer.metadata[KEY].genes == card["genes"]
    # a Predict widget opened later is offered the model too
    pw2 = PredictWidget(viewer)
    assert "study (trained here)" in pw2.model_choice.choices


def test_section_without_tissue_or_counts_is_reported(make_napari_viewer, qtbot, study_dir, tmp_path):
    viewer = make_napari_viewer()
    tw = TrainWidget(viewer)
    viewer.window.add_dock_widget(tw)
    tw.table_file.value = str(study_dir / "noimage.csv")  # the folders' own hires PNGs are black
    tw.load_table()
    tw.hvg.value, tw.epochs.value, tw.device.value = 20, 1, "cpu"
    tw.out_file.value = str(tmp_path / "m.pt")
    tw.run()
    _wait(qtbot, tw)
    assert "shows no tissue under the spots" in tw.status.value and not (tmp_path / "m.pt").exists()
    assert tw.train_btn.enabled and tw.train_btn.text == "Train"
    # a folder that is not a section
    tw.folder.value = str(tmp_path)
    tw.add_folder()
    assert "is not a Space Ranger outs/ folder" in tw.status.value
