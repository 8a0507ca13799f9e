"""The Predict dock's model, device and run: the request built from the dock (image, spots, pixel
size), checked on the main thread; the prediction job in a worker thread, with progress, Cancel
and out-of-memory notices; the result added as a points layer."""
from __future__ import annotations

import warnings

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, Label, ProgressBar, PushButton

from ..jobs import JobError, in_turns, set_progress, torch_ready, wait_for_torch
from ..layers import (KEY, SpotsLayerInfo, image_info, is_prediction_layer, layer_info, place_on,
                      prediction_layer_data)
from .source import GENERATE, image_px, is_pixel_table, parse_um_per_px, place_on_image
from .space_ranger import image_used_text

BUNDLED = "Bundled model (HER2+ compact)"
CHECKPOINT = "Checkpoint file…"


class PredictionControls:
    """Part of the Predict dock: the model, the device, Predict / Cancel, progress and status."""

    def _prediction_widgets(self) -> list:
        self.model_choice = ComboBox(label="Model", choices=self._model_choices, value=BUNDLED)
        self.model_file = FileEdit(label="Checkpoint", mode="r", filter="*.pt", visible=False)
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.device_info = Label(label="", value="")
        self.predict_btn = PushButton(text="Predict")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=1)
        self.status = Label(label="Status", value=self.state.status)
        return [self.model_choice, self.model_file, self.device, self.device_info, self.predict_btn,
                self.cancel_btn, self.progress, self.status]

    def _connect_prediction(self):
        self.model_choice.changed.connect(lambda v: setattr(self.model_file, "visible", v == CHECKPOINT))
        self.device.changed.connect(self._on_device)
        self.state.events.busy.connect(self._on_busy)
        self.state.events.confirm.connect(self._on_confirm)
        self.state.events.status.connect(self._on_status)
        self.state.events.progress.connect(self._on_progress_state)
        self.predict_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)

    def _model_choices(self, _=None):
        return [BUNDLED, *self._models, CHECKPOINT]

    def add_model(self, path: str, label: str | None = None, select: bool = True) -> str:
        """Offer a checkpoint (e.g. one just trained) in the Model box and select it (unless
        ``select`` is False); returns its label."""
        from pathlib import Path

        label = label or f"{Path(path).stem} (checkpoint)"
        if label in (BUNDLED, CHECKPOINT):
            raise ValueError(f"{label!r} is taken by a built-in choice; give another label")
        self._models[label] = str(path)
        box = self.model_choice.native
        keep = self.model_choice.value
        box.blockSignals(True)  # refill in order (magicgui appends new choices after the old ones)
        try:
            box.clear()
            self.model_choice.reset_choices()
        finally:
            box.blockSignals(False)
        self.model_choice.value = label if select else keep
        self.model_file.visible = self.model_choice.value == CHECKPOINT
        return label

    def _on_device(self, value):
        if value != "auto":
            self.device_info.value = ""
            return
        import sys

        if "torch" not in sys.modules:  # do not import torch just to show this label
            self.device_info.value = "auto: CUDA, then MPS, then CPU"
            return
        from ...devices import resolve_device

        self.device_info.value = f"auto → {resolve_device('auto').type}"

    def _build_request(self):
        from ...data.image import as_pyramid
        from ...data.slide import Slide, SlideError

        img = self.image_layer.value
        if img is None:
            raise SlideError("Open or pick an H&E image layer first.")
        if not img.rgb:
            raise SlideError(f"Layer {img.name!r} is not an RGB image; the model needs an RGB H&E image.")
        info = image_info(img)
        upp = parse_um_per_px(self.um_per_px.value, info.um_per_px)
        image = as_pyramid(img.data) if img.multiscale else img.data
        src = self.spots.value
        if src == GENERATE or src is None:
            return {"image": image, "um_per_px": upp, "grid_pitch": float(self.pitch_um.value), "name": img.name,
                    "image_layer": img, "slide_info": info.slide.spatial().copy(spot_shape="circle")}
        spots = layer_info(src, SpotsLayerInfo) or SpotsLayerInfo()
        if is_pixel_table(src) and spots.placed_on != img.name:
            place_on_image(src, img)  # a spot table belongs to the image it is predicted on
        xy = image_px(src, img)
        feats = src.features
        ids = feats["spot_id"].astype(str).to_numpy() if "spot_id" in feats else np.arange(len(xy)).astype(str)
        rc = feats[["array_row", "array_col"]].to_numpy() if {"array_row", "array_col"} <= set(feats.columns) else None
        diameter = spots.spot_diameter_um
        if not diameter:  # drawn spots: their size in image pixels
            size_px = float(np.median(src.size)) * float(src.scale[-1]) / float(img.scale[-1]) if len(src.data) else 1.0
            diameter = size_px * upp
        # what the image's reader knew (a Visium PNG's scale to full resolution, the folder's images,
        # where its counts are, its notice), with the spots' shape
        slide = Slide(image=image, um_per_px=upp, spot_ids=ids, xy=xy, array_rc=rc, name=img.name,
                      spot_diameter_um=float(diameter), source=str(info.source or ""),
                      info=info.slide.copy(spot_shape=spots.spot_shape or "circle", tissue_checked=False))
        slide.validate()  # fail fast, on the main thread, with a clear message (the tissue: in the worker)
        return {"slide": slide, "image_layer": img}

    def _model_path(self):
        choice = self.model_choice.value
        if choice in self._models:
            return self._models[choice]
        if choice == CHECKPOINT:
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
        self.warnings_shown = self._update_warnings()  # the stain's verdict: from the background check
        img_id = id(req["image_layer"])
        new = [m for m in self.warnings_shown if m not in self._toasted.get(img_id, [])]
        if new:  # a toast once per slide and warning; the dock shows them all the time
            from napari.utils.notifications import show_warning

            show_warning("HGGEP: " + " ".join(new))
            self._toasted.setdefault(img_id, []).extend(new)
        # a request the user confirmed despite its cost runs; any other is checked in the worker
        req["allow_large"] = self.state.confirm is not None and self.state.confirm == _request_key(req)
        self.state.confirm = None
        device = self.device.value
        spots_layer = None if self.spots.value == GENERATE else self.spots.value
        self._start_job(_predict_job, req, model_path, device,
                        status="Loading the model…" if torch_ready() else "Loading torch and the model (first run)…",
                        yielded=self._on_progress,
                        returned=lambda res: self._on_done(res, req["image_layer"], spots_layer),
                        errored=self._fail, aborted=self._on_aborted)

    def cancel(self):
        if self.worker is not None:
            self.state.status = "Cancelling…"
            self.worker.quit()

    def _set_running(self, running: bool):
        if running:
            self.state.progress = (0, 1)
        self.state.busy = (self.state.status or "Working…") if running else ""

    def _on_status(self, text: str):
        self._show_status(text)
        if self.worker is not None:
            self._show_activity(*self.state.progress, text)

    def _on_progress_state(self, progress):
        done, total = progress
        set_progress(self.progress, done, max(int(total), 1))
        self._show_activity(done, total, self.state.status if self.worker is not None else None)

    def _on_busy(self, busy: str):
        """The buttons follow the dock's state: one job at a time, Cancel only while one runs."""
        self.predict_btn.enabled = not busy
        self.cancel_btn.enabled = bool(busy)

    def _on_confirm(self, pending):
        self.predict_btn.text = "Predict anyway" if pending is not None else "Predict"

    def _on_progress(self, msg):
        kind, done, total, text = msg
        if kind == "cost":  # the estimate, before any work: shown as it is
            self.state.status = text
            return
        if kind == "notice":
            from napari.utils.notifications import show_warning

            show_warning(f"HGGEP: {text}")
            self.notices.append(text)
            return
        self.state.status = text
        self.state.progress = (int(done), int(total))

    def _on_done(self, result, image_layer, spots_layer=None):
        """The result arrives in event-loop turns, each short enough for the canvas to draw and the
        window to answer between them: the layer; the gene list and the first gene's colours; the
        status and 100 %. The job counts as running until the last turn (the buttons, a test)."""
        self._after_arrival = []  # the job's end, held back until the result is all there
        made = {}
        in_turns([lambda: made.update(layer=self._add_result_layer(result, image_layer, spots_layer)),
                  lambda: self._select_result(made["layer"]),
                  lambda: self._result_status(result, image_layer, spots_layer)],
                 then=self._arrived, failed=self._fail)

    def _arrived(self):
        pending, self._after_arrival = self._after_arrival, None
        for f in pending or ():
            f()

    def _select_result(self, layer):
        """The result layer in the *Result layer* box: its genes listed, the first one coloured."""
        self.result.reset_choices()
        with self.result.changed.blocked():
            self.result.value = layer
        if self.state.result is layer:
            self._refresh_genes()  # the same layer, with a new prediction in it
        else:
            self.state.result = layer

    def _add_result_layer(self, result, image_layer, spots_layer):
        pred, device, gene_std, ranges, total = result
        name = f"{image_layer.name} genes"
        data, kwargs, kind = prediction_layer_data(pred, name=name, gene_std=gene_std, ranges=ranges)
        place_on(kwargs, image_layer)
        old = self.viewer.layers[name] if name in self.viewer.layers else None
        if old is not None and is_prediction_layer(old) and _same_kind(old, kind, kwargs):
            layer = _update_in_place(old, data, kwargs)  # no new layer: napari keeps its drawing set up
            self._gene_lists.pop(id(layer), None)
            self._drop_truth_layers(layer)
        else:
            if old is not None:
                self.viewer.layers.remove(old)
            # a Visium HD result: an image on the bin grid (one pixel per bin), else points
            with self.result.changed.blocked():  # its genes are listed in the next turn
                layer = (self.viewer.add_image if kind == "image" else self.viewer.add_points)(data, **kwargs)
        if spots_layer is not None and spots_layer in self.viewer.layers:
            spots_layer.visible = False  # the coloured spots now sit where the input spots were
        return layer

    def _result_status(self, result, image_layer, spots_layer):
        pred, device, gene_std, ranges, total = result
        # which image was predicted on (exports stay in full-resolution pixels whichever it is)
        used = image_used_text(pred.slide.copy(space_ranger=image_info(image_layer).slide.space_ranger))
        grid = "" if spots_layer is not None else f" of a {float(self.pitch_um.value):g} µm grid generated over the tissue"
        text = (f"Predicted {len(pred.genes)} genes for {len(pred.spot_ids)} spots{grid} on {device}"
                + (f", from {used}." if used else "."))
        from ...model.reliability import slide_verdict

        unknown = pred.reliability.unknown_because
        for m in slide_verdict(pred):
            if m.startswith("warning") and not unknown:
                from napari.utils.notifications import show_warning

                text += " ⚠ Unlike the training tissue: reliability figures may not hold."
                show_warning(f"HGGEP: {m}")
        if unknown:  # no confident figures without evidence: say why once, in the status and a toast
            from napari.utils.notifications import show_warning

            text += f" ⚠ Expected PCC on this slide unknown: {unknown}. No gene is marked reliable here."
            show_warning(f"HGGEP: expected PCC on this slide unknown, because {unknown}")
        measured = pred.measured_pcc
        if measured is not None:
            ok = np.isfinite(np.asarray(measured, float))
            if ok.any():
                text += (f" Measured against this slide's counts: mean PCC "
                         f"{float(np.mean(np.asarray(measured, float)[ok])):.3f} over {int(ok.sum())} genes "
                         "(Measured ▸ shows the counts).")
        self.state.status = text
        self.state.progress = (max(int(total), 1), max(int(total), 1))  # 100 % only now that the layer is there
        self.device_info.value = f"{self.device.value} → {device}"

    def _fail(self, err):
        from ...inference.cost import CostTooLarge

        self._show_error(err)
        self._set_running(False)
        self.state.progress = (0, 1)
        if isinstance(err, CostTooLarge):  # the user's word is asked for: press again to run anyway
            self.state.confirm = err.key
            self.state.status += " Press 'Predict anyway' to run it all the same."

    def _on_aborted(self):
        self.state.status = "Cancelled."
        self.state.progress = (0, 1)


def _same_kind(old, kind: str, kwargs) -> bool:
    """Whether a new result can go into the old layer: an image into an image, points of the same
    symbol into points."""
    if old.__class__.__name__ == "Image" or kind == "image":
        return old.__class__.__name__ == "Image" and kind == "image"
    return bool(len(old.data)) and ("square" in str(old.symbol[0]).lower()) == (kwargs.get("symbol") == "square")


def _update_in_place(layer, data, kwargs):
    """Put a new prediction into an existing prediction layer of the same slide (a second Predict)."""
    layer.metadata[KEY] = kwargs["metadata"][KEY]
    layer.visible = True
    if layer.__class__.__name__ == "Image":
        layer.data = data
        layer.affine = kwargs["affine"]
        return layer
    layer.face_color = "#808080"  # no gene mapped until the dock colours it
    layer.data = data
    with warnings.catch_warnings():  # the old gene's column leaves with the old features: napari says that
        # its colouring is dropped, which is the point (grey until the dock colours the new prediction)
        warnings.filterwarnings("ignore", message="property used for face_color dropped", category=RuntimeWarning)
        layer.features = kwargs["features"]
    layer.size = kwargs["size"]
    layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
    layer.visible = True
    return layer


def _request_key(req: dict) -> tuple:
    """What makes a prediction request the same one again (to confirm its cost once)."""
    img = req["image_layer"]
    slide = req.get("slide")
    return (id(img), float(req.get("um_per_px") or (slide.um_per_px if slide is not None else 0)),
            None if slide is None else slide.n_spots, req.get("grid_pitch"))


def _predict_job(req: dict, model_path, device: str):
    """Runs in the worker thread: no layer is touched here."""
    try:
        return (yield from _predict_job_steps(req, model_path, device))
    except RuntimeError as e:
        raise JobError(str(e)) from e


def _predict_job_steps(req: dict, model_path, device: str):
    yield ("status", 0, 1, "Loading torch and the model…")
    wait_for_torch()  # started in the background when the dock opened
    from ...model._bundled import load_model
    from ...inference.cost import CostTooLarge, slide_cost
    from ...data.quality import require_tissue
    from ...io.readers.open import grid_slide
    from ...inference.predict import predict_steps

    bundle = load_model(model_path, device)
    slide = req.get("slide")
    if slide is None:
        yield ("status", 0, 1, "Finding tissue and laying the grid…")
        slide = grid_slide(req["image"], req["um_per_px"], req["grid_pitch"], name=req["name"])
        slide.info = req["slide_info"]
    else:
        yield ("status", 0, 1, "Checking the tissue under the spots…")
        require_tissue(slide)  # a blank image under the spots is never predicted on
        slide.info.tissue_checked = True
    cost = slide_cost(slide, bundle.config, len(bundle.genes), layer=True, device=bundle.device.type)
    if cost.problem() and not req.get("allow_large"):
        raise CostTooLarge(f"{slide.name}: {cost.problem()}.", _request_key(req))
    yield ("cost", 0, 1, f"Predicting {cost.describe()}…")
    notices: list[str] = []  # out-of-memory fallbacks, shown by the widget on the main thread
    gen = predict_steps(bundle, slide, notify=notices.append)
    while True:
        try:
            step = next(gen)
            done, total = step
        except StopIteration as stop:
            pred = stop.value
            from ..layers import gene_ranges

            sd = (bundle.target_norm or {}).get("std")  # each gene's spread in training: the colour floor
            from ...io.writers.anndata_export import spatial_images

            pred.images = spatial_images(pred)  # the slide's small copies for an AnnData export, made here
            pred.image = None
            yield ("progress", total - 1, total, "Adding the result layer…")
            return (pred, bundle.device.type, None if sd is None else np.asarray(sd, np.float32),
                    gene_ranges(pred.values), total)  # percentiles here, off the main thread
        while notices:
            yield ("notice", done, total, notices.pop(0))
        yield ("progress", done, total, f"{getattr(step, 'phase', '') or 'Predicting'}…")
