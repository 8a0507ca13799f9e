"""The Train dock ("Train on my sections") with a real viewer: the sections a user added survive
layers being opened, the status follows the rows and each epoch's validation PCC, the plot's PCC
axis cannot magnify noise and tells the folds apart, the ETA after Resume comes from the resumed
run's own pace, and the dock scrolls so that it asks for little height."""
import types

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")  # before the imports of the plugin's napari layer

from helpers import he_like_image, shown, write_visium_study_section

from qtpy.QtCore import Qt  # noqa: E402
from qtpy.QtWidgets import QLabel, QScrollArea  # noqa: E402

from napari_hggep._napari import train_widget as tw_module  # noqa: E402
from napari_hggep._napari.train_widget import TrainWidget  # noqa: E402
from napari_hggep._napari.widgets.training_curves import PCC_MIN_SPAN, CurvePlot, nice_ticks  # noqa: E402
from napari_hggep.training.study import _epoch_events  # noqa: E402


@pytest.fixture(scope="module")
def sections_table(tmp_path_factory):
    root = tmp_path_factory.mktemp("dock")
    rows = []
    for i in range(3):
        write_visium_study_section(root, f"S{i + 1}", he_like_image(420, 360, seed=40 + i), n_genes=300, seed=i)
        rows.append({"section": f"S{i + 1}", "folder": f"S{i + 1}/outs", "image": f"S{i + 1}/S{i + 1}_fullres.tif"})
    pd.DataFrame(rows).to_csv(root / "samples.csv", index=False)
    pd.DataFrame(rows[:2]).to_csv(root / "two.csv", index=False)
    return root


@pytest.fixture
def dock(make_napari_viewer, sections_table):
    viewer = make_napari_viewer()
    tw = TrainWidget(viewer)
    dw = viewer.window.add_dock_widget(tw, name="Train on my sections")
    tw.table_file.value = str(sections_table / "samples.csv")
    tw.load_table()
    return viewer, tw, dw


def _epoch_stream(label, fold, values, epochs, phase="fold"):
    """StudyEvents exactly as a study emits them for a training's epochs (study._epoch_events,
    fed records in train_model's format)."""
    out = []
    show = _epoch_events(out.append, phase, label, fold, 0.15, 0.5, epochs)
    for e, v in enumerate(values, start=1):
        show({"epoch": e, "loss": 1.8 - 0.05 * e, "val_pcc": v, "seconds": 0.5})
    return out


def test_sections_survive_layers_being_opened_and_the_status_follows_the_rows(dock):
    viewer, tw, _ = dock
    assert len(tw.sections.choices) == 3 and tw.status.value.startswith("3 sections")
    tw.panel.value = tw_module.GENE_FILE
    viewer.add_image(np.zeros((32, 32), np.uint8), name="another image")  # napari resets docked choices
    assert tw.sections.choices == ("S1", "S2", "S3")
    assert tw.panel.value == tw_module.GENE_FILE
    viewer.layers[0].name = "renamed"
    viewer.add_points(np.zeros((3, 2)))
    viewer.layers.move(0, 1)
    assert len(tw.sections.choices) == 3 and "S1_fullres.tif" in tw.sections.native.item(0).text()
    assert tw.status.value.startswith("3 sections")
    # removing rows: the status says what is left, and stays so when layers change
    tw.sections.value = ["S2"]
    viewer.add_image(np.zeros((4, 4), np.uint8))  # the selection survives too
    assert tw.sections.value == ["S2"]
    tw.remove_selected()
    assert tw.sections.choices == ("S1", "S3") and tw.status.value.startswith("2 sections")
    viewer.layers.pop(0)
    viewer.add_image(np.ones((8, 8), np.uint8))
    assert tw.sections.choices == ("S1", "S3") and tw.status.value.startswith("2 sections")
    tw.sections.value = ["S1"]
    tw.remove_selected()
    assert tw.sections.choices == ("S3",) and tw.status.value.startswith("1 section.")
    tw.sections.value = ["S3"]
    tw.remove_selected()
    assert tw.sections.choices == () and "Add two or more" in tw.status.value


def test_status_shows_each_epochs_pcc_and_the_best_so_far(dock):
    _, tw, _ = dock
    tw.planned_epochs = 9
    tw.plot.reset("", 9)
    tw._start_clock(None)
    # changes in the fourth decimal (what a frozen image path over the ridge gives): the event's
    # text rounds them all to 0.375
    values = [0.37501, 0.37524, 0.37547, 0.37519, 0.37562]
    seen = []
    for ev, v in zip(_epoch_stream("held-out 1/3: test S1", "S1", values, 9), values):
        tw._on_event(ev)
        s = tw.status.value
        seen.append(s)
        assert f"val PCC {v:.4f}" in s, s
        best_e = int(np.argmax(values[:ev.epoch["epoch"]])) + 1
        assert f"best so far {max(values[:ev.epoch['epoch']]):.4f} (epoch {best_e})" in s, s
        assert s.startswith(f"held-out 1/3: test S1, epoch {ev.epoch['epoch']}/9"), s
    assert len(set(seen)) == len(values)  # a new status at every epoch
    assert "best so far 0.3755 (epoch 3)" in seen[3] and "val PCC 0.3752 " in seen[3]
    assert "(-0.0003 on epoch 3)" in seen[3]
    # the plot has the same numbers
    assert tw.plot.pcc == pytest.approx(values) and tw.plot.current.epochs == [1, 2, 3, 4, 5]
    # the next fold is a curve of its own, in another colour; the final model too
    for ev in _epoch_stream("held-out 2/3: test S2", "S2", [0.31, 0.32], 9):
        tw._on_event(ev)
    assert tw.status.value.startswith("held-out 2/3: test S2, epoch 2/9: val PCC 0.3200")
    assert "best so far 0.3200 (epoch 2)" in tw.status.value
    for ev in _epoch_stream("final model", None, [0.41], 9, phase="final"):
        tw._on_event(ev)
    assert tw.status.value.startswith("final model, epoch 1/9: val PCC 0.4100")
    names = [c.name for c in tw.plot.curves]
    assert names == ["held-out S1", "held-out S2", "final model"]
    colours = {tw.plot.colour(c).name() for c in tw.plot.curves}
    assert len(colours) == 3
    assert len(tw.plot.loss) == 1 and tw.plot.current.final
    # a fold that runs again (a resumed study redoes an unfinished fold) replaces its own epochs
    for ev in _epoch_stream("held-out 2/3: test S2", "S2", [0.30], 9):
        tw._on_event(ev)
    assert tw.plot.current.name == "held-out S2" and tw.plot.pcc == [0.30]
    assert len(tw.plot.curves) == 3


def test_pcc_axis_is_never_narrower_than_005_and_is_centred(qtbot, tmp_path):
    plot = CurvePlot()
    qtbot.addWidget(plot)
    plot.reset("", 9)
    vals = [0.3750, 0.37505, 0.3751, 0.37508, 0.37512]
    for e, v in enumerate(vals, start=1):
        plot.add(1.0 - 0.001 * e, v, epoch=e, name="held-out A")
    lo, hi = plot.pcc_range()
    assert hi - lo >= PCC_MIN_SPAN - 1e-12
    assert abs((lo + hi) / 2 - (min(vals) + max(vals)) / 2) < 1e-9
    # a wide spread is shown whole, inside [-1, 1]
    plot.add(0.5, 0.1, epoch=6, name="held-out B")
    plot.add(0.4, 0.6, epoch=7, name="held-out B")
    lo, hi = plot.pcc_range()
    assert lo <= 0.1 and hi >= 0.6 and -1 <= lo and hi <= 1
    # near 1 the axis keeps its width without passing 1
    p2 = CurvePlot()
    qtbot.addWidget(p2)
    p2.add(0.2, 0.995, epoch=1)
    lo, hi = p2.pcc_range()
    assert hi <= 1.0 and hi - lo >= PCC_MIN_SPAN - 1e-12
    # the loss axis does not magnify noise either
    p3 = CurvePlot()
    qtbot.addWidget(p3)
    for e in range(1, 6):
        p3.add(1.2 + 1e-5 * e, 0.3, epoch=e)
    lo, hi = p3.loss_range()
    assert hi - lo >= 0.1 * 1.2 - 1e-9
    # tick numbers: round, inside the axis, several of them
    ticks = nice_ticks(*plot.pcc_range())
    assert 3 <= len(ticks) <= 5 and all(plot.pcc_range()[0] <= t <= plot.pcc_range()[1] for t in ticks)
    # it draws (dark background, coloured curves)
    plot.resize(400, 250)
    img = plot.grab().toImage()
    assert img.save(str(tmp_path / "plot.png"))
    colours = {img.pixelColor(x, y).name() for x in range(0, 400, 3) for y in range(0, 250, 3)}
    assert len(colours) > 10


def test_eta_after_resume_comes_from_the_resumed_runs_pace(dock, monkeypatch):
    _, tw, _ = dock
    clock = [1000.0]
    monkeypatch.setattr(tw_module, "time", types.SimpleNamespace(time=lambda: clock[0]))
    ev = types.SimpleNamespace
    # a resumed run starts where the cancelled one stopped, at 60 % of the job
    tw._start_clock(None)
    clock[0] += 5
    tw._on_event(ev(phase="fold", text="held-out 3/3: test S3: epoch 1/9, …", done=0.60, epoch=None, fold="S3"))
    assert "left" not in tw.status.value  # no pace measured yet
    clock[0] += 10
    tw._on_event(ev(phase="fold", text="held-out 3/3: test S3: epoch 2/9, …", done=0.62, epoch=None, fold="S3"))
    # 2 % in 10 s: 38 % left is 190 s (the fraction done before the resume would say 9 s)
    assert "about 3 min 10 s left" in tw.status.value, tw.status.value
    # the time budget of the run caps the ETA: trainings stop before an epoch that would not fit
    tw._start_clock(120.0)
    clock[0] += 5
    tw._on_event(ev(phase="fold", text="a", done=0.60, epoch=None, fold="S3"))
    assert "time budget left: 1 min 55 s" in tw.status.value
    clock[0] += 10
    tw._on_event(ev(phase="fold", text="b", done=0.62, epoch=None, fold="S3"))
    assert "about 1 min 45 s left (the time budget ends the training)" in tw.status.value, tw.status.value


def test_resume_only_while_the_options_match_the_cancelled_run(dock, tmp_path):
    from napari_hggep.training.train import TrainingCancelled

    _, tw, _ = dock
    tw.out_file.value = str(tmp_path / "m.pt")
    tw.study, tw.study_key = object(), tw._current_key()  # as run() leaves them
    tw._on_error(TrainingCancelled("cancelled in epoch 2"))
    assert tw.train_btn.text == "Resume" and tw.status.value.startswith("Cancelled")
    tw.minutes.value = tw.minutes.value + 2  # a study with another budget cannot resume this one
    assert tw.train_btn.text == "Train" and "starts afresh" in tw.status.value
    tw.minutes.value = tw.minutes.value - 2
    assert tw.train_btn.text == "Resume" and "Press Resume" in tw.status.value
    tw.sections.value = ["S1"]
    tw.remove_selected()  # other sections: a new study
    assert tw.train_btn.text == "Train" and tw.status.value.startswith("2 sections")


def test_dock_scrolls_asks_for_little_height_and_wraps_its_labels(dock, qtbot, tmp_path):
    viewer, tw, dw = dock
    # every control is inside a vertical-only scroll area that is in the dock
    scroll = tw.form.native.parentWidget()
    while scroll is not None and not isinstance(scroll, QScrollArea):
        scroll = scroll.parentWidget()
    assert isinstance(scroll, QScrollArea) and scroll.widget() is tw.form.native
    assert scroll.widgetResizable()
    assert scroll.horizontalScrollBarPolicy() == Qt.ScrollBarPolicy.ScrollBarAlwaysOff
    assert dw.isAncestorOf(scroll) and dw.isAncestorOf(tw.train_btn.native)
    for w in (tw.status, tw.train_btn, tw.sections, tw.progress):
        assert scroll.isAncestorOf(w.native)
    assert tw.plot.parentWidget() is tw.form.native
    # small minimum height; nothing cut at the right
    assert tw.native.minimumSizeHint().height() <= 300
    assert dw.minimumSizeHint().height() <= 300
    assert scroll.minimumSizeHint().width() >= tw.form.native.minimumSizeHint().width()
    assert tw.native.minimumSizeHint().width() <= tw.native.maximumWidth()
    assert viewer.window._qt_window.minimumSizeHint().height() <= 768
    # labels wrap
    assert tw.status.native.wordWrap()
    assert all(lab.wordWrap() for lab in tw.form.native.findChildren(QLabel) if lab.text())
    # no internal references in what the user reads
    texts = [lab.text() for lab in tw.form.native.findChildren(QLabel)]
    texts += [w.tooltip or "" for w in (tw.table_file, tw.folder, tw.folder_image, tw.patient, tw.minutes)]
    assert not any(k in t for t in texts for k in ("SPEC", "issue ", "Issue "))
    # a 768 px tall window: the dock fits, and it scrolls to its end
    win = viewer.window._qt_window
    win.resize(1366, 768)
    viewer.window.show()
    qtbot.wait(100)
    assert win.height() <= 768 and dw.height() < tw.form.native.sizeHint().height()
    assert scroll.verticalScrollBar().maximum() > 0
    assert tw.native.grab().save(str(tmp_path / "dock.png"))


def test_the_train_dock_follows_its_state(dock):
    """The Sections list, the status, the buttons, Train/Resume and the progress bar show the dock's
    evented state (TrainDockState), whichever code changed it."""
    _, tw, _ = dock
    rows = tw.state.rows
    assert len(rows) == 3 and tw.sections.choices == ("S1", "S2", "S3")
    tw.state.rows = rows[:1]
    assert tw.sections.choices == ("S1",) and tw.status.value.startswith("1 section.")
    tw.state.running = True
    assert not tw.train_btn.enabled and tw.cancel_btn.enabled and not tw.add_btn.enabled
    tw.state.running = False
    assert tw.train_btn.enabled and not tw.cancel_btn.enabled
    tw.state.resumable = True
    assert tw.train_btn.text == "Resume"
    tw.state.rows = rows  # other sections: a cancelled run cannot be resumed
    assert tw.train_btn.text == "Train" and tw.status.value.startswith("3 sections")
    tw.state.done = 0.25
    assert tw.progress.value == 250
    tw.state.status = "anything"
    assert tw.status.value == "anything" == tw.status.tooltip


def test_the_image_encoder_is_chosen_in_the_dock_and_checked_before_training(dock, qtbot, tmp_path):
    """Train on the ImageNet encoder from the dock (its weights from the installed package, read in
    the worker); a timm choice without its architecture or weights says what to give."""
    import json

    from napari_hggep._napari.widgets.encoder_choice import IMAGENET, TIMM

    _, tw, _ = dock
    tw.out_file.value = str(tmp_path / "enc.pt")
    tw.hvg.value, tw.epochs.value, tw.device.value = 20, 1, "cpu"
    tw.encoder.kind.value = TIMM
    assert shown(tw.encoder.arch) and shown(tw.encoder.weights)
    tw.run()
    assert tw.worker is None and tw.status.value.startswith("Error: Give the timm architecture")
    tw.encoder.arch.value = "vit_tiny_patch16_224"
    tw.run()
    assert tw.worker is None and tw.status.value.startswith("Error: Choose the encoder's weights")
    tw.encoder.kind.value = IMAGENET
    assert not shown(tw.encoder.weights)
    tw.run()
    qtbot.waitUntil(lambda: tw.worker is None, timeout=600_000)
    assert (tmp_path / "enc.pt").exists(), tw.status.value
    card = json.loads((tmp_path / "enc.json").read_text())
    assert card["config"]["encoder"]["name"] == "imagenet"
