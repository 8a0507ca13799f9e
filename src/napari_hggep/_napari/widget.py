"""Dock widget "Predict gene expression": a thin Qt layer over ``predict_steps``.

Prediction runs in a napari ``thread_worker`` generator that yields per batch; the worker
never touches a layer. Errors show as a notification and in the status line, and the
buttons reset.
"""
from __future__ import annotations

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
)

from .layers import KEY, color_by_gene, is_prediction_layer, prediction_layer_data

GENERATE = "Generate spots over tissue"
BUNDLED = "Bundled model (HER2+ compact)"
CHECKPOINT = "Checkpoint file…"
COLORMAPS = ["viridis", "magma", "inferno", "plasma", "turbo", "red", "gray"]
UNRELIABLE_PCC = 0.1


def image_px(points_layer, image_layer) -> np.ndarray:
    """Points layer data -> (x, y) pixel coordinates of the image layer (via world coordinates)."""
    d = np.asarray(points_layer.data, dtype=float)[:, -2:]
    world = d * np.asarray(points_layer.scale[-2:]) + np.asarray(points_layer.translate[-2:])
    px = (world - np.asarray(image_layer.translate[-2:])) / np.asarray(image_layer.scale[-2:])
    return px[:, ::-1]


def gene_caption(gene: str, pcc: float | None, new_patients: bool) -> str:
    """One short line for the canvas, above napari's colour bar (which has no title of its own)."""
    if pcc is None:
        return gene
    text = f"{gene}   held-out PCC {pcc:.2f}"
    return text + ("  ⚠ unreliable" if pcc < UNRELIABLE_PCC else "")


def gene_label(gene: str, pcc: float | None, lo: float, hi: float) -> str:
    if pcc is None:
        acc = "PCC n/a"
    else:
        acc = f"PCC {pcc:.2f}" + ("  ⚠ unreliable" if pcc < UNRELIABLE_PCC else "")
    return f"{gene}   ({acc}; {lo:.2f}–{hi:.2f})"


class PredictWidget(Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.worker = None
        self.notices: list[str] = []  # fallbacks reported by the last runs (e.g. out of GPU memory)
        self.image_layer = ComboBox(label="Image", choices=self._image_layers)
        self.spots = ComboBox(label="Spots", choices=self._spot_sources)
        self.pitch_um = FloatSpinBox(label="Grid pitch (µm)", value=200.0, min=20.0, max=2000.0, step=10.0)
        self.um_per_px = FloatSpinBox(label="µm per pixel", value=0.5, min=0.01, max=100.0, step=0.001)
        self.model_choice = ComboBox(label="Model", choices=[BUNDLED, CHECKPOINT], value=BUNDLED)
        self.model_file = FileEdit(label="Checkpoint", mode="r", filter="*.pt", visible=False)
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.device_info = Label(label="", value="")
        self.predict_btn = PushButton(text="Predict")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=1)
        self.status = Label(label="Status", value="Pick an image, then press Predict.")
        # result section
        self.result = ComboBox(label="Result layer", choices=self._prediction_layers)
        self.gene_filter = LineEdit(label="Find gene", value="")
        self.sort_by_pcc = CheckBox(text="sort by held-out PCC", value=True)
        self.gene = ComboBox(label="Gene", choices=[])
        self.colormap = ComboBox(label="Colormap", choices=COLORMAPS, value="viridis")
        self.gene_info = Label(label="", value="")
        self.export_file = FileEdit(label="Export to", mode="w", filter="*.csv *.h5ad")
        self.export_selected = CheckBox(text="only the selected gene", value=False)
        self.export_btn = PushButton(text="Export")
        self.extend([
            self.image_layer, self.spots, self.pitch_um, self.um_per_px, self.model_choice, self.model_file,
            self.device, self.device_info, self.predict_btn, self.cancel_btn, self.progress, self.status,
            self.result, self.gene_filter, self.sort_by_pcc, self.gene, self.colormap, self.gene_info,
            self.export_file, self.export_selected, self.export_btn,
        ])
        self.image_layer.changed.connect(self._on_image)
        self.spots.changed.connect(self._on_spots)
        self.model_choice.changed.connect(lambda v: setattr(self.model_file, "visible", v == CHECKPOINT))
        self.device.changed.connect(self._on_device)
        self.predict_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self.result.changed.connect(self._refresh_genes)
        self.gene_filter.changed.connect(self._refresh_genes)
        self.sort_by_pcc.changed.connect(self._refresh_genes)
        self.gene.changed.connect(self._recolor)
        self.colormap.changed.connect(self._recolor)
        self.export_btn.clicked.connect(self.export)
        self.native.setMaximumWidth(460)  # leave the canvas most of the window
        for lab in (self.status, self.gene_info, self.device_info):
            lab.native.setWordWrap(True)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._reset_choices)
        self._on_image(self.image_layer.value)
        self._on_spots(self.spots.value)
        self._on_device("auto")

    # -------------------------------------------------------------- choices
    def _image_layers(self, _=None):
        return [ly for ly in self.viewer.layers if ly.__class__.__name__ == "Image"]

    def _spot_sources(self, _=None):
        pts = [ly for ly in self.viewer.layers if ly.__class__.__name__ == "Points" and not is_prediction_layer(ly)]
        return [(ly.name, ly) for ly in pts] + [(GENERATE, GENERATE)]

    def _prediction_layers(self, _=None):
        return [ly for ly in self.viewer.layers if is_prediction_layer(ly)]

    def _reset_choices(self, event=None):
        for w in (self.image_layer, self.spots, self.result):
            w.reset_choices()

    def _on_image(self, layer):
        if layer is None:
            return
        upp = layer.metadata.get(KEY, {}).get("um_per_px")
        if upp is None and layer.scale[-1] != 1:
            upp = float(layer.scale[-1])  # a scale in micrometres
        if upp:
            self.um_per_px.value = float(upp)
        # prefer the spots that came with this image
        for name, obj in self._spot_sources():
            if obj != GENERATE and name.startswith(layer.name):
                self.spots.value = obj
                break

    def _on_spots(self, value):
        self.pitch_um.visible = value == GENERATE

    def _on_device(self, value):
        if value != "auto":
            self.device_info.value = ""
            return
        import sys

        if "torch" not in sys.modules:  # do not import torch just to show this label
            self.device_info.value = "auto: CUDA, then MPS, then CPU"
            return
        from ..devices import resolve_device

        self.device_info.value = f"auto → {resolve_device('auto').type}"

    # -------------------------------------------------------------- predict
    def _build_request(self):
        from ..data.image import as_pyramid
        from ..data.slide import Slide, SlideError

        img = self.image_layer.value
        if img is None:
            raise SlideError("Open or pick an H&E image layer first.")
        if not img.rgb:
            raise SlideError(f"Layer {img.name!r} is not an RGB image; the model needs an RGB H&E image.")
        image = as_pyramid(img.data) if img.multiscale else img.data
        upp = float(self.um_per_px.value)
        src = self.spots.value
        if src == GENERATE or src is None:
            return {"image": image, "um_per_px": upp, "grid_pitch": float(self.pitch_um.value), "name": img.name,
                    "image_layer": img}
        xy = image_px(src, img)
        feats = src.features
        ids = feats["spot_id"].astype(str).to_numpy() if "spot_id" in feats else np.arange(len(xy)).astype(str)
        rc = feats[["array_row", "array_col"]].to_numpy() if {"array_row", "array_col"} <= set(feats.columns) else None
        diameter = src.metadata.get(KEY, {}).get("spot_diameter_um") or float(np.median(src.size)) * upp
        slide = Slide(image=image, um_per_px=upp, spot_ids=ids, xy=xy, array_rc=rc, name=img.name,
                      spot_diameter_um=float(diameter))
        slide.validate()  # fail fast, on the main thread, with a clear message
        return {"slide": slide, "image_layer": img}

    def _model_path(self):
        if self.model_choice.value == CHECKPOINT:
            p = self.model_file.value
            if not p or not str(p).strip() or str(p) == ".":
                raise FileNotFoundError("Choose a checkpoint file, or switch Model to the bundled model.")
            return str(p)
        return None

    def run(self):
        if self.worker is not None:
            return
        try:
            req = self._build_request()
            model_path = self._model_path()
        except Exception as e:  # bad input: say what to fix, keep the widget usable
            self._fail(e)
            return
        from napari.qt.threading import thread_worker

        _import_torch_stack()
        device = self.device.value
        self.worker = thread_worker(_predict_job, start_thread=False, ignore_errors=True)(req, model_path, device)
        self.worker.yielded.connect(self._on_progress)
        spots_layer = None if self.spots.value == GENERATE else self.spots.value
        self.worker.returned.connect(lambda res: self._on_done(res, req["image_layer"], spots_layer))
        self.worker.errored.connect(self._fail)
        self.worker.aborted.connect(self._on_aborted)
        self.worker.finished.connect(self._on_finished)
        self._set_running(True)
        self.status.value = "Loading model…"
        self.worker.start()

    def cancel(self):
        if self.worker is not None:
            self.status.value = "Cancelling…"
            self.worker.quit()

    def _set_running(self, running: bool):
        self.predict_btn.enabled = not running
        self.cancel_btn.enabled = running
        if running:
            self.progress.value = 0

    def _on_progress(self, msg):
        kind, done, total, text = msg
        if kind == "notice":
            from napari.utils.notifications import show_warning

            show_warning(f"HGGEP: {text}")
            self.notices.append(text)
            return
        self.progress.max = max(int(total), 1)
        self.progress.value = int(done)
        self.status.value = text

    def _on_done(self, result, image_layer, spots_layer=None):
        pred, diameter, device, gene_pcc, protocol = result
        name = f"{image_layer.name} genes"
        data, kwargs, _ = prediction_layer_data(pred, diameter, gene_pcc, name=name, gene_pcc_protocol=protocol)
        kwargs["scale"] = tuple(image_layer.scale[-2:])
        kwargs["translate"] = tuple(image_layer.translate[-2:])
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_points(data, **kwargs)
        if spots_layer is not None and spots_layer in self.viewer.layers:
            spots_layer.visible = False  # the coloured spots now sit where the input spots were
        self.result.reset_choices()
        self.result.value = layer
        self._refresh_genes()
        self.status.value = f"Predicted {len(pred.genes)} genes for {len(pred.spot_ids)} spots on {device}."
        self.device_info.value = f"{self.device.value} → {device}"

    def _fail(self, err):
        from napari.utils.notifications import show_error

        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        self.status.value = f"Error: {msg}"
        show_error(f"HGGEP: {msg}")
        self._set_running(False)

    def _on_aborted(self):
        self.status.value = "Cancelled."

    def _on_finished(self):
        self.worker = None
        self._set_running(False)

    # -------------------------------------------------------------- genes
    def _refresh_genes(self, _=None):
        layer = self.result.value
        if layer is None:
            self.gene.choices = []
            return
        meta = layer.metadata[KEY]
        pcc = meta.get("gene_pcc") or {}
        text = (self.gene_filter.value or "").strip().upper()
        genes = [g for g in meta["genes"] if text in g.upper()]
        if self.sort_by_pcc.value and pcc:
            genes.sort(key=lambda g: -(pcc.get(g) if pcc.get(g) is not None else -1))
        vals = layer.features
        choices = []
        for g in genes:
            v = vals[g].to_numpy()
            choices.append((gene_label(g, pcc.get(g), float(v.min()), float(v.max())), g))
        current = meta.get("gene")
        self.gene.choices = choices
        if genes:
            self.gene.value = current if current in genes else genes[0]

    def _recolor(self, _=None):
        layer, gene = self.result.value, self.gene.value
        if layer is None or gene is None:
            return
        lo, hi = color_by_gene(layer, gene, self.colormap.value)
        pcc = layer.metadata[KEY].get("gene_pcc", {}).get(gene)
        where = layer.metadata[KEY].get("gene_pcc_protocol") == "leave-one-patient-out"
        note = ("no held-out PCC for this model" if pcc is None else
                f"held-out PCC {pcc:.2f}" + (" on patients not trained on" if where else ""))
        if pcc is not None and pcc < UNRELIABLE_PCC:
            note += " — the model does not predict this gene; do not trust its map"
        self.gene_info.value = f"{gene}: colour {lo:.2f}–{hi:.2f} (1st–99th pct); {note}"
        self._caption(gene_caption(gene, pcc, where))

    def _caption(self, text: str):
        """Name the gene on the canvas, beside napari's colour bar (which has no title of its own)."""
        ov = getattr(self.viewer, "text_overlay", None)
        if ov is None:
            return
        ov.text = text
        ov.position = "top_left"
        ov.font_size = 12
        ov.visible = True

    # -------------------------------------------------------------- export
    def export(self):
        from .writer import write_points_csv, write_points_h5ad

        layer = self.result.value
        try:
            if layer is None:
                raise ValueError("Nothing to export yet: run Predict first.")
            path = str(self.export_file.value or "")
            if not path.lower().endswith((".csv", ".h5ad")):
                raise ValueError("Choose an export file ending in .csv or .h5ad.")
            meta = {"features": layer.features, "metadata": layer.metadata, "name": layer.name}
            if self.export_selected.value and self.gene.value:
                meta = {**meta, "metadata": {KEY: {**layer.metadata[KEY], "genes": [self.gene.value]}}}
            writer = write_points_h5ad if path.lower().endswith(".h5ad") else write_points_csv
            writer(path, layer.data, meta)
            self.status.value = f"Exported {layer.name} to {path}"
        except Exception as e:
            self._fail(e)


def _import_torch_stack():
    """Import torch and friends on the main thread, once, on the first Predict: importing
    them for the first time inside a worker thread crashes, and importing them at widget
    creation would slow napari's start.

    Triton (pulled in by ``torch._dynamo``, which torch_geometric imports) bundles its own
    LLVM, which segfaults when loaded into a process whose OpenGL already loaded Mesa's
    llvmpipe LLVM (every software-rendered napari). Inference never compiles kernels, so
    inside napari torch is told triton is absent, unless something imported it already.
    """
    import sys

    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # makes `import triton` raise ImportError: torch treats it as missing
    import torch  # noqa: F401
    import torch_geometric.nn  # noqa: F401

    from ..model import hggep  # noqa: F401


class JobError(Exception):
    """A RuntimeError from the prediction, re-raised as something else: superqt's generator
    worker takes a RuntimeError for "the worker was deleted" and ends without emitting
    ``errored`` or ``finished``, which would leave the widget busy for ever."""


def _predict_job(req: dict, model_path, device: str):
    """Runs in the worker thread: no layer is touched here."""
    try:
        return (yield from _predict_job_steps(req, model_path, device))
    except RuntimeError as e:
        raise JobError(str(e)) from e


def _predict_job_steps(req: dict, model_path, device: str):
    from .._bundled import load_model
    from ..data.readers import grid_slide
    from ..predict import predict_steps

    yield ("status", 0, 1, "Loading model…")
    bundle = load_model(model_path, device)
    slide = req.get("slide")
    if slide is None:
        yield ("status", 0, 1, "Finding tissue…")
        slide = grid_slide(req["image"], req["um_per_px"], req["grid_pitch"], name=req["name"])
    notices: list[str] = []  # out-of-memory fallbacks, shown by the widget on the main thread
    gen = predict_steps(bundle, slide, notify=notices.append)
    while True:
        try:
            done, total = next(gen)
        except StopIteration as stop:
            return (stop.value, slide.spot_diameter_um, bundle.device.type, bundle.gene_pcc(),
                    bundle.gene_pcc_protocol())
        while notices:
            yield ("notice", done, total, notices.pop(0))
        yield ("progress", done, total, f"Predicting… {done}/{total} spots")
