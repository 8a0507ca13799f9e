"""Dock widget "Train on my sections": a thin Qt layer over :class:`napari_hggep.training.study.Study`.

The user lists labelled sections (a samples table, folders added one by one with their
full-resolution image, or the Visium / ST slides open in the viewer), chooses the gene panel,
a time budget and the device, and trains. The job runs in a worker thread; its events reach
the widget through a Qt signal (queued to the main thread): a progress bar with ETA and a
live plot of training loss and validation PCC. Cancel leaves no model file, only what a
resumed run needs; Resume continues. The finished model is added to every Predict widget.
"""
from __future__ import annotations

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

from .jobs import JobError, JobRunner, _import_torch_stack
from .layers import KEY
from .trained_models import model_trained
from .widgets.training_curves import CurvePlot

HVG = "Most variable genes (HVG)"
GENE_FILE = "Gene list file…"


class _Events(QObject):
    """Events from the worker thread; Qt queues them to the main thread."""

    event = Signal(object)
    log = Signal(str)


class TrainWidget(JobRunner, Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.rows: list = []
        self.study = None
        self.study_key = None
        self.worker = None
        self.stop_flag = threading.Event()
        self.t_start = 0.0
        self.last_model: str | None = None
        # sections
        self.table_file = FileEdit(label="Samples table", mode="r", filter="*.csv *.tsv *.txt")
        self.load_table_btn = PushButton(text="Load table")
        self.folder = FileEdit(label="Section folder", mode="d")
        self.folder_image = FileEdit(label="Its full-res image", mode="r",
                                     filter="*.tif *.tiff *.svs *.jpg *.jpeg *.png *.btf")
        self.patient = LineEdit(label="Patient (optional)", value="")
        self.add_btn = PushButton(text="Add section")
        self.add_open_btn = PushButton(text="Add open Visium / ST slides")
        self.sections = Select(label="Sections", choices=[])
        self.remove_btn = PushButton(text="Remove selected")
        # panel and budget
        self.panel = ComboBox(label="Genes", choices=[HVG, GENE_FILE], value=HVG)
        self.hvg = SpinBox(label="Number of genes", value=500, min=10, max=5000, step=50)
        self.genes_file = FileEdit(label="Gene list", mode="r", filter="*.txt *.csv", visible=False)
        self.minutes = FloatSpinBox(label="Time budget (min)", value=8.0, min=0.5, max=600.0, step=1.0)
        self.epochs = SpinBox(label="Epochs per training", value=12, min=1, max=400)
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.out_file = FileEdit(label="Save model to", mode="w", filter="*.pt")
        self.train_btn = PushButton(text="Train")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=1000)
        self.status = Label(label="Status", value="Add two or more labelled sections, then press Train.")
        self.extend([self.table_file, self.load_table_btn, self.folder, self.folder_image, self.patient, self.add_btn,
                     self.add_open_btn, self.sections, self.remove_btn, self.panel, self.hvg, self.genes_file,
                     self.minutes, self.epochs, self.device, self.out_file, self.train_btn, self.cancel_btn,
                     self.progress, self.status])
        self.plot = CurvePlot()
        self.native.layout().addWidget(self.plot)
        self.status.native.setWordWrap(True)
        self.status.native.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.native.setMaximumWidth(460)
        self.events = _Events()
        self.events.event.connect(self._on_event)
        self.events.log.connect(self._on_log)
        self.load_table_btn.clicked.connect(self.load_table)
        self.add_btn.clicked.connect(self.add_folder)
        self.add_open_btn.clicked.connect(self.add_open_slides)
        self.remove_btn.clicked.connect(self.remove_selected)
        self.panel.changed.connect(self._on_panel)
        self.train_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)

    # -------------------------------------------------------------- sections
    def _refresh_rows(self):
        self.sections.choices = [(r.describe() + (f", patient {r.patient}" if r.patient else ""), r.section)
                                 for r in self.rows]
        self._forget_study()

    def _forget_study(self):
        self.study, self.study_key = None, None
        self.train_btn.text = "Train"

    def _add_rows(self, rows):
        from ..data.samples import check_rows

        names = {r.section for r in self.rows}
        new = [r for r in rows if r.section not in names]
        check_rows(self.rows + new, "sections")
        self.rows.extend(new)
        self._refresh_rows()
        self.status.value = f"{len(self.rows)} section(s). " + ("Add at least one more to measure held-out PCC."
                                                               if len(self.rows) < 2 else "Ready to train.")

    def load_table(self):
        from ..data.samples import read_samples_table

        try:
            path = _chosen(self.table_file.value, "Choose a samples table (CSV with section,folder[,image,patient]).")
            self._add_rows(read_samples_table(path))
        except Exception as e:
            self._fail(e)

    def add_folder(self):
        from ..data.samples import SampleRow, section_kind

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
        from ..data.samples import SampleRow, section_kind

        found = []
        for ly in self.viewer.layers:
            meta = ly.metadata.get(KEY, {}) if ly.__class__.__name__ == "Image" else {}
            src = meta.get("source")
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
        self.rows = [r for r in self.rows if r.section not in drop]
        self._refresh_rows()

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

    def run(self):
        if self.worker is not None:
            return
        try:
            if not self.rows:
                raise ValueError("Add labelled sections first (a samples table, section folders, or open slides).")
            out = _chosen(self.out_file.value, "Choose where to save the model (a .pt file).")
            if not out.lower().endswith(".pt"):
                out += ".pt"
            opts = self._options()
        except Exception as e:
            self._fail(e)
            return
        from ..training.study import Study

        _import_torch_stack()
        key = (tuple((r.section, str(r.folder), str(r.image), r.patient) for r in self.rows), repr(opts), out)
        resume = self.study is not None and self.study_key == key
        if not resume:
            self.study = Study(list(self.rows), opts, log=self.events.log.emit)
            self.study_key = key
        study = self.study
        self.stop_flag.clear()
        self.t_start = time.time()
        self.plot.reset("")
        events, stop = self.events, self.stop_flag

        def job():
            import torch

            try:
                # autograd on, whatever this pool thread was left in: a cancelled prediction's generator
                # stops inside torch.inference_mode and never leaves it in the thread that ran it
                with torch.inference_mode(False):
                    bundle = study.run(out, progress=events.event.emit, should_stop=stop.is_set, resume=resume)
                return out, len(bundle.genes)
            except RuntimeError as e:  # see jobs.JobError: keep the widget from hanging
                raise JobError(str(e)) from e

        self._start_job(job, status="Resuming…" if resume else "Reading the sections…", returned=self._on_done,
                        errored=self._on_error)

    def cancel(self):
        if self.worker is not None:
            self.status.value = "Cancelling after the current step…"
            self.stop_flag.set()

    def _set_running(self, running: bool):
        self.train_btn.enabled = not running
        self.cancel_btn.enabled = running
        for w in (self.load_table_btn, self.add_btn, self.add_open_btn, self.remove_btn):
            w.enabled = not running

    def _on_event(self, ev):
        self.progress.value = int(1000 * ev.done)
        el = time.time() - self.t_start
        eta = f" — about {_duration(el / ev.done - el)} left" if 0.03 < ev.done < 1 else ""
        self.status.value = ev.text + eta
        if ev.epoch is not None:
            if ev.epoch["epoch"] == 1 or self.plot.title != (ev.fold or "final model"):
                self.plot.reset(ev.fold and f"held-out {ev.fold}" or "final model")
                self.plot.title = ev.fold or "final model"
            self.plot.add(ev.epoch["loss"], ev.epoch["val_pcc"])

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
        self.status.value = f"Saved {Path(out).name}: {n_genes} genes; {note}. It is now in the Predict widget's list."
        self.progress.value = 1000
        model_trained(out, f"{Path(out).stem} (trained here)")

    def _on_error(self, err):
        from ..training.train import TrainingCancelled

        if isinstance(err, TrainingCancelled) or isinstance(getattr(err, "__cause__", None), TrainingCancelled):
            self.status.value = "Cancelled: no model was written. Press Resume to continue where it stopped."
            self.train_btn.text = "Resume"
            return
        if not isinstance(err, (OSError, MemoryError)):  # bad input: the next run reads the sections again
            self._forget_study()
        self._fail(err)

    def _fail(self, err):
        self._show_error(err)


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
    s = max(int(s), 0)
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"
