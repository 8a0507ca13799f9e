"""The Predict dock's slide and spots: the image layer (or a folder opened from the dock), the
spots (a points layer, or a grid generated over the tissue), the pixel size and the image's
warnings. A spot table read from CSV is placed on the image it belongs to."""
from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, Label, LineEdit, PushButton
from qtpy.QtCore import QObject, Signal

from ..layers import (PIXEL_FRAME, ImageLayerInfo, MapLayerInfo, SpotsLayerInfo, image_info, is_prediction_layer,
                      layer_info)
from .space_ranger import image_used_text

GENERATE = "Generate spots over tissue"
ASK_UM = "not in the file: enter the pixel size (µm per pixel of the full-resolution image)"


def image_px(points_layer, image_layer) -> np.ndarray:
    """Points layer data -> (x, y) pixel coordinates of the image layer (via world coordinates)."""
    d = np.asarray(points_layer.data, dtype=float)[:, -2:]
    world = d * np.asarray(points_layer.scale[-2:]) + np.asarray(points_layer.translate[-2:])
    px = (world - np.asarray(image_layer.translate[-2:])) / np.asarray(image_layer.scale[-2:])
    return px[:, ::-1]


def is_pixel_table(layer) -> bool:
    """A spot table read from CSV: its coordinates are pixels of an image it does not know."""
    info = layer_info(layer, SpotsLayerInfo)
    return layer.__class__.__name__ == "Points" and info is not None and info.frame == PIXEL_FRAME


def place_on_image(points_layer, image_layer) -> None:
    """Put a spot table (full-resolution pixels) on ``image_layer``'s pixel grid: its scale and translation."""
    points_layer.scale = tuple(image_layer.scale[-2:])
    points_layer.translate = tuple(image_layer.translate[-2:])
    info = layer_info(points_layer, SpotsLayerInfo)
    if info is not None:
        info.placed_on = image_layer.name


def parse_um_per_px(text, recorded: float | None = None) -> float:
    """The pixel size typed in the dock, refused (before anything is read or allocated) when it is
    not a number or, typed by hand (not ``recorded``, what the image's files say), outside what an
    H&E scan can be, as the command line refuses ``--um-per-px``
    (:data:`~napari_hggep.data.quality.PLAUSIBLE_UM_PER_PX`)."""
    from ...data.quality import plausible_um_per_px_problem
    from ...data.slide import SlideError

    t = str(text if text is not None else "").strip().replace(",", ".")
    if not t:
        if recorded:
            raise SlideError(f"Enter µm per pixel: the field is empty (the image's file says {recorded:.6g}; "
                             "pick the image again to take it).")
        raise SlideError("Enter µm per pixel: this image does not record its pixel size, and a guess would put "
                         "the patches at the wrong size (e.g. 0.25 for a 40× scan, 0.5 for 20×; the HER2+ "
                         "JPEGs are 0.69).")
    try:
        v = float(t)
    except ValueError:
        raise SlideError(f"µm per pixel must be a number such as 0.5, not {str(text)[:30]!r}.") from None
    # what the image's files say is the slide's own figure (a Visium lowres PNG is 20-30 µm/px); a
    # value typed by hand is refused outside what an H&E scan can be
    typed = recorded is None or abs(v - float(recorded)) > 1e-6 * max(abs(v), 1.0)
    problem = plausible_um_per_px_problem(v) if typed else (None if v > 0 and np.isfinite(v) else "is not positive")
    if problem:
        raise SlideError(f"{v:g} µm per pixel {problem}: check the µm per pixel field (a typo?). Nothing was "
                         "predicted.")
    return v


def belongs_to(spots_layer, image_layer) -> bool:
    """Whether a spots layer came with an image layer (the same Space Ranger folder, or the same
    slide's name)."""
    spots, img = layer_info(spots_layer, SpotsLayerInfo), layer_info(image_layer, ImageLayerInfo)
    if spots is None or img is None:
        return False
    sr = img.slide.space_ranger
    if sr is not None and spots.space_ranger is not None:
        return spots.space_ranger.folder == sr.folder
    return spots_layer.name.startswith(image_layer.name)


class _Relay(QObject):
    """Carries a background check's verdict to the GUI thread (a queued Qt signal)."""

    ready = Signal(object)


class SourceControls:
    """Part of the Predict dock: the image, its spots and its pixel size."""

    def _source_widgets(self) -> list:
        self.open_path = FileEdit(label="Open folder", mode="d")
        self.open_btn = PushButton(text="Open Space Ranger / Visium HD / SpatialData folder")
        self.image_layer = ComboBox(label="Image", choices=self._image_layers)
        sr = self._space_ranger_widgets()
        self.spots = ComboBox(label="Spots", choices=self._spot_sources)
        self.pitch_um = FloatSpinBox(label="Grid pitch (µm)", value=200.0, min=20.0, max=2000.0, step=10.0)
        self.um_per_px = LineEdit(label="µm per pixel", value="")
        self.um_source = Label(label="", value=ASK_UM)
        self.image_warning = Label(label="", value="", visible=False)
        return [self.open_path, self.open_btn, self.image_layer, *sr,
                self.spots, self.pitch_um, self.um_per_px, self.um_source, self.image_warning]

    def _connect_source(self):
        # the boxes set the dock's state; what the dock shows follows the state's events
        self.image_layer.changed.connect(lambda v: setattr(self.state, "image", v))
        self.state.events.image.connect(self._on_image)
        self.open_btn.clicked.connect(self.open_folder)
        self._connect_space_ranger()
        self.spots.changed.connect(lambda v: setattr(self.state, "spots", v))
        self.state.events.spots.connect(self._on_spots)
        self.um_per_px.changed.connect(self._on_um_per_px)

    # -------------------------------------------------------------- choices
    def _image_layers(self, _=None):  # not the tissue copy under a measured map
        return [ly for ly in self.viewer.layers if ly.__class__.__name__ == "Image" and layer_info(ly, MapLayerInfo) is None
                and not is_prediction_layer(ly)]

    def _spot_sources(self, _=None):
        pts = [ly for ly in self.viewer.layers if ly.__class__.__name__ == "Points" and not is_prediction_layer(ly)
               and layer_info(ly, MapLayerInfo) is None]
        return [(ly.name, ly) for ly in pts] + [(GENERATE, GENERATE)]

    def _on_image(self, layer):
        if layer is None:  # no image: nothing of the last one stays in the dock
            self.um_per_px.value = ""
            self.um_source.value = ASK_UM
            self.image_warning.value = ""
            self.image_warning.visible = False
            self._sync_space_ranger(None)
            return
        info = image_info(layer)
        upp, where = info.um_per_px, info.um_per_px_source
        if upp is None and tuple(layer.scale[-2:]) != (1.0, 1.0):
            upp, where = float(layer.scale[-1]), "the layer's scale (taken as µm per pixel)"
        # a new image never inherits the last one's pixel size
        self.um_per_px.value = f"{float(upp):.6g}" if upp else ""
        self.um_source.value = f"from {where}" if upp else ASK_UM
        # prefer the spots that came with this image
        for name, obj in self._spot_sources():
            if obj != GENERATE and (belongs_to(obj, layer) or name.startswith(layer.name)):
                self.spots.value = obj
                break
        src = self.spots.value
        if src not in (None, GENERATE) and is_pixel_table(src):
            place_on_image(src, layer)
        for ly in self.viewer.layers:
            if is_pixel_table(ly) and layer_info(ly).placed_on is None:
                place_on_image(ly, layer)
        self._update_warnings()
        self._check_stain(layer)  # in the background: the warning appears when it is known
        self._sync_space_ranger(layer)

    def _add_layers(self, layers, at: int | None = None) -> list:
        from napari.layers import Layer

        added = []
        for k, t in enumerate(layers):
            ly = Layer.create(*t)
            if at is None:
                self.viewer.layers.append(ly)
            else:
                self.viewer.layers.insert(at + k, ly)
            added.append(ly)
        return added

    def open_folder(self):
        """Open a Space Ranger outs/ folder (Visium or Visium HD, 16 µm bins), a SpatialData .zarr or a
        HER2+ ST folder from the widget; what is wrong with it is said in the status line."""
        from pathlib import Path

        from ...data.slide import SlideError
        from ..reader import get_reader, read_spatialdata_store

        path = str(self.open_path.value or "").strip()
        try:
            if not path or path == ".":
                raise SlideError("Choose a Space Ranger outs/ folder (Visium or Visium HD) or a SpatialData "
                                 ".zarr store to open.")
            p = Path(path)
            if not p.is_dir():
                raise SlideError(f"{p} is not a folder")
            if p.name.lower().endswith(".zarr"):  # whatever is in it: read_spatialdata says what is missing
                layers = read_spatialdata_store(p)
            else:
                reader = get_reader(str(p))
                if reader is None:
                    raise SlideError(f"{p} is neither a Space Ranger outs/ folder (Visium or Visium HD), a "
                                     "SpatialData .zarr store nor a HER2+ ST folder")
                layers = reader(str(p))
        except Exception as e:
            self._fail(e)
            return
        added = self._add_layers(layers)
        img = next(ly for ly in added if ly.__class__.__name__ == "Image")
        self.image_layer.value = img
        pts = [ly for ly in added if ly.__class__.__name__ == "Points"]
        if pts:
            self.spots.value = pts[0]
        info = image_info(img)
        used = image_used_text(info.slide)
        self.state.status = (f"Opened {img.name}: {len(pts[0].data) if pts else 0:,} spots"
                             + (f" on {used}" if used else "") + "."
                             + ("" if info.um_per_px else
                                " Enter µm per pixel, then press Predict."))

    def _on_um_per_px(self, _=None):
        img = self.image_layer.value
        info = layer_info(img, ImageLayerInfo) if img is not None else None
        known = info.um_per_px if info is not None else None
        try:
            v = parse_um_per_px(self.um_per_px.value, known)
        except ValueError as e:
            v = None
            if str(self.um_per_px.value or "").strip():  # a typo is said at once, under the field
                self.um_source.value = f"⚠ {e}"
        if v is not None and known is not None and abs(v - float(known)) > 1e-9:
            self.um_source.value = "entered here (the file says " + f"{float(known):.6g})"
        elif v is not None and known is None:
            self.um_source.value = "entered here"
        self._update_warnings()

    def _check_stain(self, layer) -> None:
        """Whether the image looks like H&E, judged on a thumbnail in a background thread (never on
        the GUI thread); the warning line is updated when the verdict arrives (queued to the GUI
        thread by a Qt signal). A plain daemon thread: a dock or viewer closed meanwhile never
        takes the process down with it."""
        import threading

        from ...data.image import as_pyramid

        if layer is None or not layer.rgb:
            return
        info, key = image_info(layer), id(layer.data)
        if info.stain is not None and info.stain[0] == key:
            return
        if getattr(self, "_stain_relay", None) is None:
            self._stain_relay = _Relay(self.native)
            self._stain_relay.ready.connect(self._on_stain)
        data, relay = (as_pyramid(layer.data) if layer.multiscale else layer.data), self._stain_relay

        def check():
            from ...data.quality import stain_warning

            try:
                w = stain_warning(data)
            except Exception:  # a warning never blocks anything; a failed check keeps its traceback in the log
                from ..._log import logger

                logger.warning("the stain check of %r failed", getattr(layer, "name", layer), exc_info=True)
                w = None
            try:
                relay.ready.emit((layer, info, key, w))
            except RuntimeError:  # the dock is gone
                pass

        threading.Thread(target=check, name="napari-hggep-stain", daemon=True).start()

    def _on_stain(self, msg):
        layer, info, key, w = msg
        info.stain = (key, w)
        if self.state.image is layer:
            try:
                self._update_warnings()
            except RuntimeError:  # the dock's widgets were deleted meanwhile (napari closing)
                pass

    def _update_warnings(self) -> list[str]:
        """The image's warnings (resolution outside training, not H&E), shown under the µm field; the
        stain's verdict is the one :meth:`_check_stain` made in the background, once it is known."""
        from ...data.quality import resolution_warning
        from ...io.readers.open import FULLRES_NOTICE

        img = self.image_layer.value
        info = image_info(img) if img is not None else None
        msgs = []
        try:
            v = parse_um_per_px(self.um_per_px.value, info.um_per_px if info is not None else None)
        except ValueError:
            v = None
        if v is not None and (m := resolution_warning(v)):
            msgs.append(m)
        if info is not None and img.rgb and info.stain is not None and info.stain[0] == id(img.data) and info.stain[1]:
            msgs.append(info.stain[1])
        notice = info.slide.notice if info is not None else None
        if notice and not notice.startswith(FULLRES_NOTICE):  # that one is news, not a warning: the
            msgs.append(notice)  # "Predicts on" line says which image is used
        self.image_warning.value = "⚠ " + "\n⚠ ".join(msgs) if msgs else ""
        self.image_warning.visible = bool(msgs)
        return msgs

    def _on_spots(self, value):
        self.pitch_um.visible = value == GENERATE
