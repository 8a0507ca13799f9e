"""Dock widget "Train on my sections": a thin Qt layer over :class:`napari_hggep.training.study.Study`.

The user lists labelled sections (a samples table, folders added one by one with their
full-resolution image, or the Visium / ST slides open in the viewer), chooses the gene panel,
a time budget and the device, and trains. The job runs in a worker thread; its events reach
the widget through a Qt signal (queued to the main thread): a progress bar with ETA, the
current epoch's validation PCC and the best so far, and a live plot of validation PCC and
training loss, one curve per training (each held-out fold, then the final model). Cancel
leaves no model file, only what a resumed run needs; Resume continues. The finished model is
added to every Predict widget.

The dock's contents scroll (a ``QScrollArea``, vertical only), so the dock asks for little
height and napari's window fits a laptop screen with both docks open.
"""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path

from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import QLabel, QSizePolicy

from .jobs import JobError, JobRunner, set_progress, wait_for_torch, warm_up_torch
from .layers import ImageLayerInfo, layer_info
from .state import TrainDockState
from .widgets.scroll import VerticalScroll
from .trained_models import model_trained
from .widgets.encoder_choice import EncoderChoice, resolve
from .widgets.training_curves import CurvePlot

HVG = "Most variable genes (HVG)"
GENE_FILE = "Gene list file…"
NO_SECTIONS = "Add two or more labelled sections, then press Train."


class _Events(QObject):
    """Events from the worker thread; Qt queues them to the main thread."""

    event = Signal(object)
    log = Signal(str)


class TrainWidget(JobRunner, Container):
    """The dock: this container holds a scroll area, and the scroll area the form (``form``,
    a magicgui Container with every control, the status and the plot). Every layer added,
    removed, moved or renamed makes napari call :meth:`reset_choices`, which rebuilds the
    *Sections* list from :attr:`rows`."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.state = TrainDockState(status=NO_SECTIONS)  # what the dock shows follows its events
        self.study = None
        self.study_key = None
        self.resume_key = None  # the key of a cancelled run that Resume continues
        self.worker = None
        self.stop_flag = threading.Event()
        self.t_start = 0.0
        self.budget_s: float | None = None  # this run's time budget (Study counts it from the run's start)
        self._rate_from: tuple[float, float] | None = None  # (time, fraction done) of this run's first event
        self.planned_epochs = 0
        self.last_model: str | None = None
        # sections
        self.table_file = FileEdit(label="Samples table", mode="r", filter="*.csv *.tsv *.txt",
                                   tooltip="A CSV or TSV with columns section, folder and optionally image, "
                                           "patient, um_per_px; relative paths are relative to the table.")
        self.load_table_btn = PushButton(text="Load table")
        self.folder = FileEdit(label="Section folder", mode="d",
                               tooltip="A Space Ranger outs/ folder, a HER2+ ST folder, or a folder with an "
                                       "image, spots.csv and a counts table.")
        self.folder_image = FileEdit(label="Its full-res image", mode="r",
                                     filter="*.tif *.tiff *.svs *.jpg *.jpeg *.png *.btf",
                                     tooltip="The section's full-resolution image (Space Ranger does not copy it "
                                             "into outs/); empty: the folder's own image.")
        self.patient = LineEdit(label="Patient (optional)", value="",
                                tooltip="When every section names its patient (two patients or more), the "
                                        "sections of one patient are held out together.")
        self.add_btn = PushButton(text="Add section")
        self.add_open_btn = PushButton(text="Add open Visium / ST slides")
        # choices from the rows: magicgui resets a docked widget's choices whenever a layer is
        # added, removed, moved or renamed, and a fixed list (empty at start) would empty it
        self.sections = Select(label="Sections", choices=self._section_choices)
        self.remove_btn = PushButton(text="Remove selected")
        # panel and budget
        self.panel = ComboBox(label="Genes", choices=[HVG, GENE_FILE], value=HVG)
        self.hvg = SpinBox(label="Number of genes", value=500, min=10, max=5000, step=50)
        self.genes_file = FileEdit(label="Gene list", mode="r", filter="*.txt *.csv", visible=False)
        self.minutes = FloatSpinBox(label="Time budget (min)", value=8.0, min=0.5, max=600.0, step=1.0,
                                    tooltip="For all the trainings of a run together (each held-out fold, then "
                                            "the final model); a training stops before an epoch that would not "
                                            "fit and keeps its best epoch. A resumed run has the budget again.")
        self.epochs = SpinBox(label="Epochs per training", value=12, min=1, max=400)
        self.encoder = EncoderChoice()
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.out_file = FileEdit(label="Save model to", mode="w", filter="*.pt")
        self.train_btn = PushButton(text="Train")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=1000)
        self.status = Label(value=self.state.status)
        self.form = Container(labels=True)
        self.form.extend([self.table_file, self.load_table_btn, self.folder, self.folder_image, self.patient,
                          self.add_btn, self.add_open_btn, self.sections, self.remove_btn, self.panel, self.hvg,
                          self.genes_file, self.minutes, self.epochs, *self.encoder.widgets, self.device, self.out_file,
                          self.train_btn,
                          self.cancel_btn, self.progress])
        self.plot = CurvePlot()
        self.form.native.layout().addWidget(self.status.native)  # the whole width, not the fields' column
        self.form.native.layout().addWidget(self.plot)
        self.form.native.layout().addStretch(1)
        self.sections.native.setMinimumHeight(48)
        self.sections.native.setMaximumHeight(120)
        for lab in self.form.native.findChildren(QLabel):  # the field labels and the status
            lab.setWordWrap(True)
        self.status.native.setTextInteractionFlags(Qt.TextSelectableByMouse)
        wide = QSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)  # magicgui's Label is fixed-size
        wide.setHeightForWidth(True)
        self.status.native.setSizePolicy(wide)
        # the form scrolls (vertically only) inside this dock
        # the form is this container's one widget (napari's reset_choices reaches it), shown in a
        # scroll area: setWidget takes it out of this container's layout, where the scroll area goes
        self.append(self.form)
        self.scroll = VerticalScroll(self.form.native)
        self.native.layout().addWidget(self.scroll)
        self.margins = (0, 0, 0, 0)
        self.native.setMaximumWidth(460)  # leave the canvas most of the window
        warm_up_torch()  # torch loads in the background, not on the first click
        self._enable_log()  # an unexpected error keeps its traceback in the log file its message names
        self.events = _Events()
        self.events.event.connect(self._on_event)
        self.events.log.connect(self._on_log)
        self.load_table_btn.clicked.connect(self.load_table)
        self.add_btn.clicked.connect(self.add_folder)
        self.add_open_btn.clicked.connect(self.add_open_slides)
        self.remove_btn.clicked.connect(self.remove_selected)
        self.panel.changed.connect(self._on_panel)
        for w in (self.panel, self.hvg, self.genes_file, self.minutes, self.epochs, self.device, self.out_file,
                  *self.encoder.widgets):
            w.changed.connect(self._sync_train_button)
        self.train_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self.state.events.rows.connect(self._on_rows)
        self.state.events.running.connect(self._on_running)
        self.state.events.resumable.connect(self._on_resumable)
        self.state.events.status.connect(self._show_status)
        self.state.events.done.connect(self._on_done_fraction)

    # -------------------------------------------------------------- the state's views
    @property
    def rows(self) -> list:
        return list(self.state.rows)

    @rows.setter
    def rows(self, rows) -> None:
        self.state.rows = tuple(rows)

    def _on_rows(self, _rows):
        self.sections.reset_choices()
        self._forget_study()
        self.state.status = self._rows_status()

    def _on_running(self, running: bool):
        self.train_btn.enabled = not running
        self.cancel_btn.enabled = running
        for w in (self.load_table_btn, self.add_btn, self.add_open_btn, self.remove_btn):
            w.enabled = not running

    def _on_resumable(self, resumable: bool):
        self.train_btn.text = "Resume" if resumable else "Train"

    def _on_done_fraction(self, fraction: float):
        permille = int(1000 * min(max(fraction, 0.0), 1.0))
        set_progress(self.progress, permille)
        self._show_activity(permille, 1000, self.state.status if self.worker is not None else None)

    # -------------------------------------------------------------- sections
    def _section_choices(self, _widget=None):
        return [(r.describe() + (f", patient {r.patient}" if r.patient else ""), r.section) for r in self.rows]

    def _rows_status(self) -> str:
        n = len(self.rows)
        if n == 0:
            return NO_SECTIONS
        if n == 1:
            return "1 section. Add at least one more to measure held-out PCC."
        return f"{n} sections. Ready to train."

    def _forget_study(self):
        self.study, self.study_key, self.resume_key = None, None, None
        self.state.resumable = False

    def _add_rows(self, rows):
        from ..io.readers.samples import check_rows

        names = {r.section for r in self.rows}
        new = [r for r in rows if r.section not in names]
        check_rows(self.rows + new, "sections")
        self.rows = self.rows + new  # the list, the status and a forgotten study follow

    def load_table(self):
        from ..io.readers.samples import read_samples_table

        try:
            path = _chosen(self.table_file.value, "Choose a samples table (CSV with section,folder[,image,patient]).")
            self._add_rows(read_samples_table(path))
        except Exception as e:
            self._fail(e)

    def add_folder(self):
        from ..io.readers.samples import SampleRow, section_kind

        try:
            folder = Path(_chosen(self.folder.value, "Choose a section folder (Space Ranger outs/, HER2+ ST, or an "
                                                     "image with spots.csv and a counts table)."))
            if section_kind(folder) == "unknown":
                raise ValueError(f"{folder} is not a Space Ranger outs/ folder, a HER2+ ST folder or a folder with "
                                 "spots.csv and a counts table")
            img = self.folder_image.value
            image = Path(img) if img and str(img).strip() not in ("", ".") else None
            name = folder.parent.name if folder.name == "outs" else folder.name
            self._add_rows([SampleRow(_unique(name, self.rows), folder, image, self.patient.value.strip() or None)])
        except Exception as e:
            self._fail(e)

    def add_open_slides(self):
        """Visium / HER2+ ST slides opened in the viewer by this plugin, whose folders hold counts."""
        from ..io.readers.samples import SampleRow, section_kind

        found = []
        for ly in self.viewer.layers:
            info = layer_info(ly, ImageLayerInfo)
            src = info.source if info is not None else None
            if not src:
                continue
            p = Path(src)
            for cand in (p, p.parent.parent, p.parent):  # HER2+ folder; outs/spatial/x.png -> outs
                if cand.is_dir() and section_kind(cand) in ("visium", "her2st"):
                    name = cand.parent.name if cand.name == "outs" else cand.name
                    found.append(SampleRow(_unique(name, self.rows + found), cand))
                    break
        if not found:
            self._fail(ValueError("No Visium or HER2+ ST slide with counts is open: open a Space Ranger outs/ or "
                                  "HER2+ ST folder with the plugin's reader, or add section folders here."))
            return
        self._add_rows(found)

    def remove_selected(self):
        drop = set(self.sections.value or [])
        if not drop:
            return
        self.rows = [r for r in self.rows if r.section not in drop]

    def _on_panel(self, value):
        self.hvg.visible = value == HVG
        self.genes_file.visible = value == GENE_FILE

    # -------------------------------------------------------------- training
    def _options(self):
        from ..training.study import StudyOptions
        from ..training.config import TrainConfig

        genes_file = None
        if self.panel.value == GENE_FILE:
            genes_file = _chosen(self.genes_file.value, "Choose a gene list file (one gene per line), or pick the "
                                                        "most variable genes.")
        return StudyOptions(hvg=None if genes_file else int(self.hvg.value), genes_file=genes_file,
                            train=TrainConfig(epochs=int(self.epochs.value), device=self.device.value),
                            minutes=float(self.minutes.value))

    def _out_path(self) -> str:
        out = _chosen(self.out_file.value, "Choose where to save the model (a .pt file).")
        return out if out.lower().endswith(".pt") else out + ".pt"

    def _key(self, opts, out: str):
        """What a run is: a resumed run must have the same sections, options and model file."""
        return (tuple((r.section, str(r.folder), str(r.image), r.patient) for r in self.rows), repr(opts), out,
                self.encoder.choice())

    def _current_key(self):
        try:
            return self._key(self._options(), self._out_path())
        except Exception:
            return None

    def _sync_train_button(self, *_):
        """"Resume" only while the cancelled run can be continued: changing an option (the time
        budget included) makes the next run start afresh, and the button and status say so."""
        if self.worker is not None or self.resume_key is None:
            return
        can = self._current_key() == self.resume_key
        if can and not self.state.resumable:
            self.state.resumable = True
            self.state.status = "Cancelled: no model was written. Press Resume to continue where it stopped."
        elif not can and self.state.resumable:
            self.state.resumable = False
            self.state.status = ("The options differ from the cancelled run's: Train starts afresh (set them back "
                                 "to resume instead).")

    def run(self):
        if self.worker is not None:
            return
        try:
            if not self.rows:
                raise ValueError("Add labelled sections first (a samples table, section folders, or open slides).")
            out = self._out_path()
            opts = self._options()
            encoder = self.encoder.choice()
        except Exception as e:
            self._fail(e)
            return
        from ..training.study import Study

        warm_up_torch()  # usually done already: the dock started it when it opened
        key = self._key(opts, out)
        resume = self.study is not None and self.study_key == key
        if not resume:
            self.study = Study(list(self.rows), opts, log=self.events.log.emit)
            self.study_key = key
        self.resume_key = None
        self.state.resumable = False
        study = self.study
        self.stop_flag.clear()
        self._start_clock(None if study.opts.minutes is None else 60.0 * float(study.opts.minutes))
        self.planned_epochs = int(study.opts.train.epochs)
        if not resume:  # a resumed run keeps the curves so far; a training it redoes replaces its own
            self.plot.reset("", self.planned_epochs)
        events, stop = self.events, self.stop_flag

        def job():
            wait_for_torch()  # in this worker thread: the GUI never waits for torch's import
            import torch

            try:
                if encoder is not None and study.opts.encoder is None:  # its weights read and checked here
                    study.opts.encoder, study.opts.encoder_weights = resolve(encoder)
                # autograd on, whatever this pool thread was left in: a cancelled prediction's generator
                # stops inside torch.inference_mode and never leaves it in the thread that ran it
                with torch.inference_mode(False):
                    bundle = study.run(out, progress=events.event.emit, should_stop=stop.is_set, resume=resume)
                return out, len(bundle.genes)
            except RuntimeError as e:  # see jobs.JobError: keep the widget from hanging
                raise JobError(str(e)) from e

        budget = "" if self.budget_s is None else f" The time budget of this run is {_duration(self.budget_s)}."
        self._start_job(job, status=("Resuming…" if resume else "Reading the sections…") + budget,
                        returned=self._on_done, errored=self._on_error)

    def cancel(self):
        if self.worker is not None:
            self.state.status = "Cancelling after the current step…"
            self.stop_flag.set()

    def _set_running(self, running: bool):
        self.state.running = running

    def _start_clock(self, budget_s: float | None) -> None:
        """A run starts: its ETA is measured from its own events, and its time budget (Study
        counts the budget from the start of each run, a resumed one too) from now."""
        self.t_start = time.time()
        self._rate_from = None
        self.budget_s = budget_s

    def _on_event(self, ev):
        """A :class:`~napari_hggep.training.study.StudyEvent`: the progress bar, the status and, for
        an epoch, the plot. The status is made from the epoch's own numbers (the event's text rounds
        PCC to three decimals, which hides a change in the fourth)."""
        now = time.time()
        self.state.done = float(ev.done)
        if self._rate_from is None or ev.done < self._rate_from[1]:
            self._rate_from = (now, float(ev.done))
        text = ev.text
        if ev.epoch is not None:
            final = ev.phase == "final" or not ev.fold
            name = "final model" if final else f"held-out {ev.fold}"
            rec = ev.epoch
            self.plot.add(rec["loss"], rec["val_pcc"], epoch=rec["epoch"], name=name, final=final)
            label = ev.text.split(": epoch ")[0] if ": epoch " in ev.text else name
            text = f"{label}, {_epoch_summary(self.plot.current, self.planned_epochs)}"
        self.state.status = text + self._time_left(now, float(ev.done))

    def _time_left(self, now: float, done: float) -> str:
        """ETA from this run's own pace: a resumed run starts part-way, so the fraction done
        before it says nothing about its speed; no more than the time budget left."""
        if not 0 < done < 1 or self._rate_from is None:
            return ""
        t0, d0 = self._rate_from
        budget_left = None if self.budget_s is None else max(self.budget_s - (now - self.t_start), 0.0)
        eta = None
        if done - d0 >= 0.02 and now - t0 >= 1.0:
            eta = (now - t0) / (done - d0) * (1.0 - done)
        if eta is None:
            return "" if budget_left is None else f" — time budget left: {_duration(budget_left)}"
        if budget_left is not None and budget_left < eta:
            return f" — about {_duration(budget_left)} left (the time budget ends the training)"
        return f" — about {_duration(eta)} left" + ("" if budget_left is None else
                                                   f" (time budget left: {_duration(budget_left)})")

    def _on_log(self, text: str):
        if any(w in text for w in ("one section only", "no gene list", "left out", "skipped")):
            from napari.utils.notifications import show_info

            show_info(f"HGGEP: {text}")

    def _on_done(self, result):
        out, n_genes = result
        self.last_model = out
        self._forget_study()
        import json

        m = json.loads(Path(out).with_suffix(".json").read_text()).get("metrics", {})
        held = m.get("heldout_pcc_mean")
        note = (f"held-out mean PCC {held:.3f} ({m.get('gene_pcc_protocol')})" if held is not None else
                "no held-out PCC (one section only)")
        self.state.status = f"Saved {Path(out).name}: {n_genes} genes; {note}. It is now in the Predict widget's list."
        self.state.done = 1.0
        model_trained(out, f"{Path(out).stem} (trained here)")

    def _on_error(self, err):
        from ..training.train import TrainingCancelled

        if isinstance(err, TrainingCancelled) or isinstance(getattr(err, "__cause__", None), TrainingCancelled):
            self.resume_key = self.study_key
            self.state.status = "Cancelled: no model was written. Press Resume to continue where it stopped."
            self.state.resumable = True
            return
        if not isinstance(err, (OSError, MemoryError)):  # bad input: the next run reads the sections again
            self._forget_study()
        self._fail(err)

    def _fail(self, err):
        self._show_error(err)


def _epoch_summary(curve, planned: int) -> str:
    """``epoch 3/12: val PCC 0.3762 (+0.0012 on epoch 2), best so far 0.3762 (epoch 3); loss 0.8123``."""
    e, v, loss = curve.epochs[-1], curve.pcc[-1], curve.loss[-1]
    s = f"epoch {e}/{max(planned, e)}: "
    if not math.isfinite(v):
        s += "no validation PCC (no validation spots)"
    else:
        s += f"val PCC {v:.4f}"
        if len(curve.pcc) > 1 and math.isfinite(curve.pcc[-2]) and curve.epochs[-2] == e - 1:
            s += f" ({v - curve.pcc[-2]:+.4f} on epoch {e - 1})"
        best = curve.best()
        if best is not None:
            s += f", best so far {best[1]:.4f} (epoch {best[0]})"
    return s + (f"; loss {loss:.4f}" if math.isfinite(loss) else "")


def _chosen(value, message: str) -> str:
    s = str(value or "").strip()
    if not s or s == ".":
        raise ValueError(message)
    return s


def _unique(name: str, rows) -> str:
    names = {r.section for r in rows}
    out, k = name, 2
    while out in names:
        out, k = f"{name}_{k}", k + 1
    return out


def _duration(s: float) -> str:
    s = max(int(round(s)), 0)
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"
