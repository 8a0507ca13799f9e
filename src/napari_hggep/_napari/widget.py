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

from .layers import (
    FLAT_FRACTION,
    KEY,
    RANGE_NAME,
    clear_gene,
    color_by_gene,
    is_prediction_layer,
    prediction_layer_data,
)

GENERATE = "Generate spots over tissue"
BUNDLED = "Bundled model (HER2+ compact)"
CHECKPOINT = "Checkpoint file…"
COLORMAPS = ["viridis", "magma", "inferno", "plasma", "turbo", "red", "gray"]
UNRELIABLE_PCC = 0.1
PIXEL_FRAME = "image pixels"  # a spot table's coordinates: full-resolution pixels of the image it belongs to
ASK_UM = "not in the file: enter the pixel size (µm per pixel of the full-resolution image)"
EXPORT_FILTER = "*.csv *.h5ad *.geojson *.zarr"
OTHER_FULLRES = "Another full-resolution image…"  # a Space Ranger folder's image chosen by file
IMAGE_KINDS = {"hires": "hires PNG", "lowres": "lowres PNG", "fullres": "full resolution"}
BIN_CHOICES = ["16 µm", "8 µm", "2 µm"]


def image_kind(path) -> str:
    """``hires``, ``lowres`` or ``fullres`` for one of a Space Ranger folder's images, by its name."""
    from pathlib import Path

    name = Path(str(path)).name.lower()
    return next((k for k in ("hires", "lowres") if f"tissue_{k}_image" in name), "fullres")


def image_used_text(meta: dict) -> str:
    """Which image a layer shows (and Predict uses), and its scale to Space Ranger's full resolution."""
    from pathlib import Path

    path, scale = meta.get("image_path"), float(meta.get("image_scale", 1.0) or 1.0)
    if not path:
        return ""
    file, _, element = str(path).partition("::")  # a SpatialData store's image element: store.zarr::he
    name = Path(file).name + (f"::{element}" if element else "")
    if not meta.get("space_ranger"):
        return name if scale == 1 else f"{name} ({scale:.4g} × full resolution)"
    kind = image_kind(path)
    return f"{name} ({IMAGE_KINDS[kind]}" + (f", {scale:.4g} × full resolution)" if kind != "fullres" else ")")


def image_px(points_layer, image_layer) -> np.ndarray:
    """Points layer data -> (x, y) pixel coordinates of the image layer (via world coordinates)."""
    d = np.asarray(points_layer.data, dtype=float)[:, -2:]
    world = d * np.asarray(points_layer.scale[-2:]) + np.asarray(points_layer.translate[-2:])
    px = (world - np.asarray(image_layer.translate[-2:])) / np.asarray(image_layer.scale[-2:])
    return px[:, ::-1]


def is_pixel_table(layer) -> bool:
    """A spot table read from CSV: its coordinates are pixels of an image it does not know."""
    return layer.__class__.__name__ == "Points" and layer.metadata.get(KEY, {}).get("frame") == PIXEL_FRAME


def place_on_image(points_layer, image_layer) -> None:
    """Put a spot table (full-resolution pixels) on ``image_layer``'s pixel grid: its scale and translation."""
    points_layer.scale = tuple(image_layer.scale[-2:])
    points_layer.translate = tuple(image_layer.translate[-2:])
    points_layer.metadata.setdefault(KEY, {})["placed_on"] = image_layer.name


def gene_caption(gene: str, pcc: float | None, new_patients: bool = False, flat: bool = False,
                 here: float | None = None) -> str:
    """One short line for the canvas, above napari's colour bar (which has no title of its own)."""
    text = gene if pcc is None else f"{gene}   held-out PCC {pcc:.2f}"
    if here is not None:
        text += f" · expected here {here:.2f}"
    if pcc is not None and pcc < UNRELIABLE_PCC:
        text += "  ⚠ unreliable"
    if flat:
        text += "   — flat: the prediction barely varies over this slide"
    return text


def gene_label(gene: str, pcc: float | None, here: float | None = None) -> str:
    """The gene selector's entry: the name, its held-out PCC and, where the prediction carries it,
    the expected PCC on this slide (the colour range is on the info line)."""
    slide = "" if here is None else f" · here {here:.2f}"
    if pcc is None:
        return f"{gene}   (PCC n/a{slide})"
    low = pcc < UNRELIABLE_PCC or (here is not None and here < UNRELIABLE_PCC)
    return f"{gene}   (PCC {pcc:.2f}{slide}" + (", ⚠ unreliable)" if low else ")")


SORT_CHOICES = ["held-out PCC", "this slide's reliability", "name"]


def selector_tooltip(meta: dict) -> str:
    """What the gene selector's figures rest on, in words (the model card's evaluation)."""
    basis = meta.get("heldout_basis") or "the model card's evaluation"
    text = (f"PCC: each gene's held-out PCC, measured on {basis}. It ranks genes well for tissue like the "
            "training sections, less so for a new patient: on a third HER2+ patient's slide (another lab's "
            "image at 3.2 µm/px) the 785-gene bundled model reached mean PCC 0.01 and its card's ranking of the genes "
            "Spearman 0.04 (0.28 on a new section of a training patient).")
    if meta.get("slide_reliability"):
        text += (" 'here': the gene's expected PCC on this slide, from its held-out PCC and how much its "
                 "prediction varies over this slide; calibrated on held-out folds (README, 'How far to trust').")
    if meta.get("unfamiliar"):
        text += " ⚠ This slide is unlike the training tissue: these figures may not hold on it."
    return text


def parse_um_per_px(text) -> float:
    from ..data.slide import SlideError

    t = str(text if text is not None else "").strip().replace(",", ".")
    if not t:
        raise SlideError("Enter µm per pixel: this image does not record its pixel size, and a guess would put "
                         "the patches at the wrong size (e.g. 0.25 for a 40× scan, 0.5 for 20×; the HER2+ "
                         "JPEGs are 0.69).")
    try:
        v = float(t)
    except ValueError:
        raise SlideError(f"µm per pixel must be a number such as 0.5, not {str(text)[:30]!r}.") from None
    if not (np.isfinite(v) and v > 0):
        raise SlideError(f"µm per pixel must be a positive number, not {t}.")
    return v


class _GeneList:
    """Labels and orders of a result layer's genes, made once per layer (20,000 genes refilter in ms)."""

    def __init__(self, layer):
        meta = layer.metadata[KEY]
        pcc = meta.get("gene_pcc") or {}
        here = meta.get("slide_reliability") or {}
        self.genes = list(meta["genes"])
        self.upper = [g.upper() for g in self.genes]
        self.labels = [gene_label(g, pcc.get(g), here.get(g)) for g in self.genes]
        p = np.array([pcc[g] if pcc.get(g) is not None else -np.inf for g in self.genes], float)
        r = np.array([here[g] if here.get(g) is not None else -np.inf for g in self.genes], float)
        self.has_pcc = bool(np.isfinite(p).any())
        self.has_here = bool(np.isfinite(r).any())
        self.by_pcc = np.argsort(-p, kind="stable")
        self.by_here = np.argsort(-r, kind="stable")
        self.by_name = np.arange(len(self.genes))
        self.longest = max(self.labels, key=len) if self.labels else ""

    def select(self, text: str, sort) -> list[int]:
        """Indices of the genes whose name contains ``text``, in the order ``sort`` names (one of
        :data:`SORT_CHOICES`; True means held-out PCC, False the name)."""
        sort = SORT_CHOICES[0] if sort is True else SORT_CHOICES[2] if sort is False else sort
        order = (self.by_pcc if sort == SORT_CHOICES[0] and self.has_pcc else
                 self.by_here if sort == SORT_CHOICES[1] and self.has_here else self.by_name)
        if not text:
            return order.tolist()
        up = self.upper
        return [i for i in order.tolist() if text in up[i]]


class PredictWidget(Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.worker = None
        self.notices: list[str] = []  # fallbacks reported by the last runs (e.g. out of GPU memory)
        self.warnings_shown: list[str] = []  # the image's warnings shown at the last Predict
        self._models: dict[str, str] = {}  # checkpoints added by add_model: label -> path
        self._gene_lists: dict[int, _GeneList] = {}
        self._shown_genes: list[str] = []
        self.open_path = FileEdit(label="Open folder", mode="d")
        self.open_btn = PushButton(text="Open Space Ranger / Visium HD / SpatialData folder")
        self.image_layer = ComboBox(label="Image", choices=self._image_layers)
        # a Space Ranger folder: which of its images to predict on, and Visium HD bins
        self._sr_choices: list = []  # (label, path) of the folder's images; a callable survives reset_choices
        self.sr_image = ComboBox(label="Predict on", choices=lambda _=None: self._sr_choices, visible=False)
        self.sr_fullres = FileEdit(label="Full-res image", mode="r", visible=False,
                                   filter="Images (*.tif *.tiff *.ome.tif *.svs *.ndpi *.jpg *.jpeg *.png)")
        self.bins = ComboBox(label="Bins", choices=BIN_CHOICES, value=BIN_CHOICES[0], visible=False)
        self.image_used = Label(label="", value="", visible=False)
        self._syncing = False
        self.spots = ComboBox(label="Spots", choices=self._spot_sources)
        self.pitch_um = FloatSpinBox(label="Grid pitch (µm)", value=200.0, min=20.0, max=2000.0, step=10.0)
        self.um_per_px = LineEdit(label="µm per pixel", value="")
        self.um_source = Label(label="", value=ASK_UM)
        self.image_warning = Label(label="", value="", visible=False)
        self.model_choice = ComboBox(label="Model", choices=self._model_choices, value=BUNDLED)
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
        self.sort_by = ComboBox(label="Sort genes by", choices=SORT_CHOICES, value=SORT_CHOICES[0])
        self.gene = ComboBox(label="Gene", choices=[])
        self.colormap = ComboBox(label="Colormap", choices=COLORMAPS, value="viridis")
        self.gene_info = Label(label="", value="")
        self.export_file = FileEdit(label="Export to", mode="w", filter=EXPORT_FILTER)
        self.export_selected = CheckBox(text="only the selected gene", value=False)
        self.export_btn = PushButton(text="Export")
        self.extend([
            self.open_path, self.open_btn,
            self.image_layer, self.sr_image, self.sr_fullres, self.bins, self.image_used,
            self.spots, self.pitch_um, self.um_per_px, self.um_source, self.image_warning,
            self.model_choice, self.model_file,
            self.device, self.device_info, self.predict_btn, self.cancel_btn, self.progress, self.status,
            self.result, self.gene_filter, self.sort_by, self.gene, self.colormap, self.gene_info,
            self.export_file, self.export_selected, self.export_btn,
        ])
        self.image_layer.changed.connect(self._on_image)
        self.open_btn.clicked.connect(self.open_folder)
        self.sr_image.changed.connect(self._on_sr_image)
        self.sr_fullres.changed.connect(self._on_sr_fullres)
        self.bins.changed.connect(self._on_bins)
        self.spots.changed.connect(self._on_spots)
        self.um_per_px.changed.connect(self._on_um_per_px)
        self.model_choice.changed.connect(lambda v: setattr(self.model_file, "visible", v == CHECKPOINT))
        self.device.changed.connect(self._on_device)
        self.predict_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self.result.changed.connect(self._refresh_genes)
        self.gene_filter.changed.connect(self._refresh_genes)
        self.sort_by.changed.connect(self._refresh_genes)
        self.gene.changed.connect(self._on_gene)
        self.colormap.changed.connect(self._recolor)
        self.export_btn.clicked.connect(self.export)
        self.native.setMaximumWidth(460)  # leave the canvas most of the window
        self.um_per_px.native.setPlaceholderText("required: µm per pixel")
        self.image_warning.native.setStyleSheet("color: #f0a030;")
        for lab in (self.status, self.gene_info, self.device_info, self.um_source, self.image_warning,
                    self.image_used):
            lab.native.setWordWrap(True)
        self._setup_gene_box()
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._reset_choices)
        self._on_image(self.image_layer.value)
        self._on_spots(self.spots.value)
        self._on_device("auto")
        self._refresh_genes()  # a result layer already in the viewer
        from .train_widget import register_predict_widget

        register_predict_widget(self)  # models trained in this session appear in the Model box

    # -------------------------------------------------------------- choices
    def _image_layers(self, _=None):
        return [ly for ly in self.viewer.layers if ly.__class__.__name__ == "Image"]

    def _spot_sources(self, _=None):
        pts = [ly for ly in self.viewer.layers if ly.__class__.__name__ == "Points" and not is_prediction_layer(ly)]
        return [(ly.name, ly) for ly in pts] + [(GENERATE, GENERATE)]

    def _prediction_layers(self, _=None):
        return [ly for ly in self.viewer.layers if is_prediction_layer(ly)]

    def _model_choices(self, _=None):
        return [BUNDLED, *self._models, CHECKPOINT]

    def add_model(self, path: str, label: str | None = None) -> str:
        """Offer a checkpoint (e.g. one just trained) in the Model box and select it; returns its label."""
        from pathlib import Path

        label = label or f"{Path(path).stem} (checkpoint)"
        if label in (BUNDLED, CHECKPOINT):
            raise ValueError(f"{label!r} is taken by a built-in choice; give another label")
        self._models[label] = str(path)
        box = self.model_choice.native
        box.blockSignals(True)  # refill in order (magicgui appends new choices after the old ones)
        try:
            box.clear()
            self.model_choice.reset_choices()
        finally:
            box.blockSignals(False)
        self.model_choice.value = label
        self.model_file.visible = False
        return label

    def _reset_choices(self, event=None):
        for w in (self.image_layer, self.spots, self.result):
            w.reset_choices()
        self._gene_lists = {k: v for k, v in self._gene_lists.items()
                            if any(id(ly) == k for ly in self._prediction_layers())}
        img = self.image_layer.value
        if img is not None:  # a spot table opened after its image lands on the image's pixel grid
            for ly in self.viewer.layers:
                if is_pixel_table(ly) and "placed_on" not in ly.metadata.get(KEY, {}):
                    place_on_image(ly, img)

    def _on_image(self, layer):
        if layer is None:
            self._sync_space_ranger(None)
            return
        meta = layer.metadata.get(KEY, {})
        upp, where = meta.get("um_per_px"), meta.get("um_per_px_source")
        if upp is None and tuple(layer.scale[-2:]) != (1.0, 1.0):
            upp, where = float(layer.scale[-1]), "the layer's scale (taken as µm per pixel)"
        # a new image never inherits the last one's pixel size
        self.um_per_px.value = f"{float(upp):.6g}" if upp else ""
        self.um_source.value = f"from {where}" if upp else ASK_UM
        # prefer the spots that came with this image
        for name, obj in self._spot_sources():
            if obj != GENERATE and name.startswith(layer.name):
                self.spots.value = obj
                break
        src = self.spots.value
        if src not in (None, GENERATE) and is_pixel_table(src):
            place_on_image(src, layer)
        for ly in self.viewer.layers:
            if is_pixel_table(ly) and "placed_on" not in ly.metadata.get(KEY, {}):
                place_on_image(ly, layer)
        self._update_warnings()
        self._sync_space_ranger(layer)

    # -------------------------------------------------------------- Space Ranger folders
    def _sync_space_ranger(self, layer=None):
        """Show, for an image opened from a Space Ranger folder, which of the folder's images it is
        (the one Predict uses) and the others to choose from; for Visium HD, the bin size."""
        from pathlib import Path

        from ..data.readers import space_ranger_images

        meta = {} if layer is None else layer.metadata.get(KEY, {})
        sr = meta.get("space_ranger")
        self._syncing = True
        try:
            for w in (self.sr_image, self.image_used):
                w.visible = sr is not None
            self.bins.visible = sr is not None and sr.get("kind") == "hd"
            self.sr_fullres.visible = False
            if sr is None:
                return
            try:
                cands = space_ranger_images(sr["folder"])
            except OSError:
                cands = []
            cur, kind = Path(sr["image"]), image_kind(sr["image"])
            choices = [(f"{p.name} ({IMAGE_KINDS[k]})", str(p)) for k, p in cands]
            same = [str(p) for k, p in cands if p.resolve() == cur.resolve()]
            same = same or [str(p) for k, p in cands if k == kind and kind != "fullres"]
            if not same:  # a full-resolution file chosen from elsewhere
                choices.insert(0, (f"{cur.name} ({IMAGE_KINDS[kind]})", str(cur)))
                same = [str(cur)]
            self._sr_choices = choices + [(OTHER_FULLRES, OTHER_FULLRES)]
            self.sr_image.reset_choices()
            self.sr_image.value = same[0]
            if sr.get("kind") == "hd":
                self.bins.value = f"{int(sr['bin_um'])} µm"
            self.image_used.value = "Predicts on " + image_used_text(meta)
        finally:
            self._syncing = False

    def _on_sr_image(self, value):
        if self._syncing or value is None:
            return
        if value == OTHER_FULLRES:
            self.sr_fullres.visible = True
            self.status.value = "Choose the slide's full-resolution image file (Space Ranger does not copy it in)."
            return
        self.sr_fullres.visible = False
        self._reopen(image=value)

    def _on_sr_fullres(self, value):
        if self._syncing or not value or str(value).strip() in ("", "."):
            return
        self._reopen(image=str(value))

    def _on_bins(self, value):
        if self._syncing or value is None:
            return
        self._reopen(bin_um=int(str(value).split()[0]))

    def _reopen(self, image=None, bin_um=None):
        """Read the image's Space Ranger folder again with another of its images (or other Visium HD
        bins) and put the new image and spots layers where the old ones were: both are in micrometres,
        so they line up with each other and with results already drawn."""
        from .reader import space_ranger_layers

        layer = self.image_layer.value
        try:
            if self.worker is not None:
                raise RuntimeError("Wait for the prediction to finish (or cancel it) before changing the image.")
            sr = dict(layer.metadata[KEY]["space_ranger"])
            hd = sr.get("kind") == "hd"
            if image is None:
                image = sr["image"]  # other bins over the same image
            layers, slide = space_ranger_layers(sr["folder"], image=image,
                                                bin_um=(bin_um or sr.get("bin_um")) if hd else None)
        except Exception as e:
            msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
            self._fail(ValueError(msg.replace("Use --bin-um 8 or 16.", "Choose 8 or 16 µm bins.")))
            self._sync_space_ranger(layer)  # the choices show what is open again
            return
        self._replace_space_ranger_layers(layer, layers)
        what = f"{len(slide.spot_ids):,} {'bins' if hd else 'spots'}"
        self.status.value = (f"Showing {what} on {image_used_text(self.image_layer.value.metadata[KEY])}; "
                             "press Predict.")

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

    def _replace_space_ranger_layers(self, old_image, layers):
        folder = old_image.metadata[KEY]["space_ranger"]["folder"]
        vl = self.viewer.layers
        old_spots = [ly for ly in vl if ly.__class__.__name__ == "Points"
                     and ly.metadata.get(KEY, {}).get("kind") == "spots"
                     and ly.metadata.get(KEY, {}).get("space_ranger", {}).get("folder") == folder]
        at = vl.index(old_image)
        for ly in [old_image, *old_spots]:
            vl.remove(ly)
        img, pts = self._add_layers(layers, at=min(at, len(vl)))
        self.image_layer.value = img
        self.spots.value = pts

    def open_folder(self):
        """Open a Space Ranger outs/ folder (Visium or Visium HD, 16 µm bins), a SpatialData .zarr or a
        HER2+ ST folder from the widget; what is wrong with it is said in the status line."""
        from pathlib import Path

        from ..data.slide import SlideError
        from .reader import get_reader, read_spatialdata_store

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
        used = image_used_text(img.metadata.get(KEY, {}))
        self.status.value = (f"Opened {img.name}: {len(pts[0].data) if pts else 0:,} spots"
                             + (f" on {used}" if used else "") + "."
                             + ("" if img.metadata.get(KEY, {}).get("um_per_px") else
                                " Enter µm per pixel, then press Predict."))

    def _on_um_per_px(self, _=None):
        img = self.image_layer.value
        meta = {} if img is None else img.metadata.get(KEY, {})
        try:
            v = parse_um_per_px(self.um_per_px.value)
        except ValueError:
            v = None
        if v is not None and meta.get("um_per_px") is not None and abs(v - float(meta["um_per_px"])) > 1e-9:
            self.um_source.value = "entered here (the file says " + f"{float(meta['um_per_px']):.6g})"
        elif v is not None and meta.get("um_per_px") is None:
            self.um_source.value = "entered here"
        self._update_warnings(stain=False)

    def _update_warnings(self, stain: bool = True) -> list[str]:
        """The image's warnings (resolution outside training, not H&E), shown under the µm field."""
        from ..data.quality import resolution_warning, stain_warning

        img = self.image_layer.value
        msgs = []
        try:
            v = parse_um_per_px(self.um_per_px.value)
        except ValueError:
            v = None
        if v is not None and (m := resolution_warning(v)):
            msgs.append(m)
        if img is not None and img.rgb:
            key = ("stain", id(img.data))
            cache = img.metadata.setdefault(KEY, {})
            if stain or key not in cache.get("_warn", {}):
                from ..data.image import as_pyramid

                try:
                    w = stain_warning(as_pyramid(img.data) if img.multiscale else img.data)
                except Exception:  # a warning never blocks anything
                    w = None
                cache["_warn"] = {key: w}
            if cache["_warn"].get(key):
                msgs.append(cache["_warn"][key])
        notice = img.metadata.get(KEY, {}).get("notice") if img is not None else None
        if notice:
            msgs.append(notice)
        self.image_warning.value = "⚠ " + "\n⚠ ".join(msgs) if msgs else ""
        self.image_warning.visible = bool(msgs)
        return msgs

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
        from ..data.quality import require_tissue
        from ..data.slide import Slide, SlideError

        img = self.image_layer.value
        if img is None:
            raise SlideError("Open or pick an H&E image layer first.")
        if not img.rgb:
            raise SlideError(f"Layer {img.name!r} is not an RGB image; the model needs an RGB H&E image.")
        upp = parse_um_per_px(self.um_per_px.value)
        image = as_pyramid(img.data) if img.multiscale else img.data
        src = self.spots.value
        if src == GENERATE or src is None:
            from .layers import SPATIAL_META

            img_meta = img.metadata.get(KEY, {})
            return {"image": image, "um_per_px": upp, "grid_pitch": float(self.pitch_um.value), "name": img.name,
                    "image_layer": img,
                    "slide_meta": {k: img_meta[k] for k in SPATIAL_META if img_meta.get(k) is not None}}
        if is_pixel_table(src) and src.metadata[KEY].get("placed_on") != img.name:
            place_on_image(src, img)  # a spot table belongs to the image it is predicted on
        xy = image_px(src, img)
        feats = src.features
        ids = feats["spot_id"].astype(str).to_numpy() if "spot_id" in feats else np.arange(len(xy)).astype(str)
        rc = feats[["array_row", "array_col"]].to_numpy() if {"array_row", "array_col"} <= set(feats.columns) else None
        diameter = src.metadata.get(KEY, {}).get("spot_diameter_um")
        if not diameter:  # drawn spots: their size in image pixels
            size_px = float(np.median(src.size)) * float(src.scale[-1]) / float(img.scale[-1]) if len(src.data) else 1.0
            diameter = size_px * upp
        slide = Slide(image=image, um_per_px=upp, spot_ids=ids, xy=xy, array_rc=rc, name=img.name,
                      spot_diameter_um=float(diameter))
        slide.validate()  # fail fast, on the main thread, with a clear message
        slide.meta["notice"] = img.metadata.get(KEY, {}).get("notice")  # e.g. a folder without a tissue image
        from .layers import SPATIAL_META

        img_meta = img.metadata.get(KEY, {})  # a Visium PNG: its scale to full resolution, the folder's images
        slide.meta.update({k: img_meta[k] for k in SPATIAL_META if img_meta.get(k) is not None})
        slide.meta["spot_shape"] = src.metadata.get(KEY, {}).get("spot_shape", "circle")
        require_tissue(slide)  # a blank image under the spots is never predicted on
        slide.meta["tissue_checked"] = True
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
        from napari.qt.threading import thread_worker

        self.warnings_shown = self._update_warnings()
        if self.warnings_shown:
            from napari.utils.notifications import show_warning

            show_warning("HGGEP: " + " ".join(self.warnings_shown))
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
        pred, diameter, device, gene_pcc, protocol, gene_std, ranges = result
        name = f"{image_layer.name} genes"
        data, kwargs, _ = prediction_layer_data(pred, diameter, gene_pcc, name=name, gene_pcc_protocol=protocol,
                                                gene_std=gene_std, ranges=ranges)
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
        used = image_used_text({**image_layer.metadata.get(KEY, {}), "image_path": (pred.meta or {}).get("image_path"),
                                "image_scale": pred.image_scale})
        if used:  # which image was predicted on (exports stay in full-resolution pixels whichever it is)
            layer.metadata[KEY]["image_path"] = (pred.meta or {}).get("image_path")
        self.status.value = (f"Predicted {len(pred.genes)} genes for {len(pred.spot_ids)} spots on {device}"
                             + (f", from {used}." if used else "."))
        from ..reliability import slide_verdict

        for m in slide_verdict(pred):
            if m.startswith("warning"):
                from napari.utils.notifications import show_warning

                self.status.value += " ⚠ Unlike the training tissue: reliability figures may not hold."
                show_warning(f"HGGEP: {m}")
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
    def _setup_gene_box(self):
        """The Gene box is filled directly (magicgui's choices setter is quadratic in the number of
        items and keeps the old items' order): a list view with uniform rows and a popup as wide as
        the longest label, so names are never cut off."""
        from qtpy.QtWidgets import QComboBox

        box = self.gene.native
        box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        box.setMinimumContentsLength(18)
        box.view().setUniformItemSizes(True)
        box.setMaxVisibleItems(25)

    def _gene_list(self, layer) -> _GeneList:
        gl = self._gene_lists.get(id(layer))
        if gl is None or gl.genes is not layer.metadata[KEY]["genes"] and gl.genes != layer.metadata[KEY]["genes"]:
            gl = self._gene_lists[id(layer)] = _GeneList(layer)
        return gl

    def _fill_gene_box(self, labels: list[str], genes: list[str], current: int) -> None:
        box = self.gene.native
        box.blockSignals(True)
        try:
            box.clear()
            box.addItems(labels)
            for i, g in enumerate(genes):
                box.setItemData(i, g)
            box.setCurrentIndex(current)
        finally:
            box.blockSignals(False)
        self._shown_genes = genes
        if labels:  # the popup shows whole labels however narrow the dock is
            fm = box.view().fontMetrics()
            box.view().setMinimumWidth(fm.horizontalAdvance(max(labels, key=len)) + 40)

    def _refresh_genes(self, _=None):
        layer = self.result.value
        if layer is None:
            self._fill_gene_box([], [], -1)
            self.gene_info.value = ""
            self._caption(None)
            return
        meta = layer.metadata[KEY]
        gl = self._gene_list(layer)
        text = (self.gene_filter.value or "").strip().upper()
        idx = gl.select(text, self.sort_by.value)
        self.gene.native.setToolTip(selector_tooltip(meta))
        genes = [gl.genes[i] for i in idx]
        if not genes:
            self._fill_gene_box([], [], -1)
            clear_gene(layer)
            self._caption(None)
            self.gene_info.value = (f"No gene matches {self.gene_filter.value.strip()!r}: none of the "
                                    f"{len(gl.genes):,} genes this model predicts contains it. Clear or change "
                                    "the filter.")
            return
        want = meta.get("gene") or meta.get("last_gene")
        pos = {g: k for k, g in enumerate(genes)} if want is not None else {}
        current = pos.get(want, 0)
        self._fill_gene_box([gl.labels[i] for i in idx], genes, current)
        self._recolor()

    def _on_gene(self, _=None):
        layer = self.result.value
        if layer is not None and self.gene.value is not None:
            layer.metadata[KEY]["last_gene"] = self.gene.value  # what the user picked survives filtering
        self._recolor()

    def _recolor(self, _=None):
        layer, gene = self.result.value, self.gene.value
        if layer is None or gene is None:
            return
        lo, hi = color_by_gene(layer, gene, self.colormap.value)
        meta = layer.metadata[KEY]
        meta["last_gene"] = gene
        pcc = meta.get("gene_pcc", {}).get(gene)
        where = meta.get("gene_pcc_protocol") == "leave-one-patient-out"
        note = ("no held-out PCC for this model" if pcc is None else
                f"held-out PCC {pcc:.2f}" + (" on patients not trained on" if where else ""))
        here = (meta.get("slide_reliability") or {}).get(gene)
        if here is not None:
            note += f"; expected PCC on this slide {here:.2f}"
        if pcc is not None and pcc < UNRELIABLE_PCC:
            note += " — the model does not predict this gene; do not trust its map"
        elif here is not None and here < UNRELIABLE_PCC:
            note += " — too little signal on this slide; do not trust its map"
        if meta.get("unfamiliar"):
            note += ". ⚠ This slide is unlike the training tissue: these figures may not hold"
        i = meta["_gene_index"][gene]
        r_lo, r_hi = (float(x) for x in meta["ranges"][i])
        if meta.get("flat"):
            sd = float(meta["gene_std"][i])
            rng = (f"flat map: the prediction varies by only {r_hi - r_lo:.3g} over this slide ({RANGE_NAME}), "
                   f"under {100 * FLAT_FRACTION:.0f} % of the gene's training s.d. ({sd:.2f}), so it is shown in one "
                   f"colour ({lo:.2f}–{hi:.2f})")
        else:
            rng = f"colour range {lo:.2f}–{hi:.2f} ({RANGE_NAME} over the spots)"
        self.gene_info.value = f"{gene}: {rng}; {note}"
        self._caption(gene_caption(gene, pcc, where, flat=bool(meta.get("flat")), here=here))

    def _caption(self, text: str | None):
        """Name the gene on the canvas, beside napari's colour bar (which has no title of its own)."""
        ov = getattr(self.viewer, "text_overlay", None)
        if ov is None:
            return
        if not text:
            ov.text = ""
            ov.visible = False
            return
        ov.text = text
        ov.position = "top_left"
        ov.font_size = 12
        ov.visible = True

    # -------------------------------------------------------------- export
    def export(self):
        """Write the result layer in the format the file name says: .csv, .h5ad (scanpy/squidpy),
        .geojson (QuPath detections) or .zarr (SpatialData, optional extra)."""
        from ..data.export import check_output
        from .writer import write_points

        layer = self.result.value
        try:
            if layer is None:
                raise ValueError("Nothing to export yet: run Predict first.")
            path = str(self.export_file.value or "")
            if not path.strip() or path.strip() == ".":
                raise ValueError("Choose an export file ending in .csv, .h5ad, .geojson or .zarr.")
            check_output(path)  # unknown extension, unwritable folder: said before writing anything
            meta = {"features": layer.features, "metadata": layer.metadata, "name": layer.name}
            if self.export_selected.value:
                if not self.gene.value:
                    raise ValueError("No gene is selected: pick one, or untick 'only the selected gene'.")
                meta["genes"] = [self.gene.value]
            write_points(path, layer.data, meta)
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
        slide.meta.update(req.get("slide_meta") or {})
    notices: list[str] = []  # out-of-memory fallbacks, shown by the widget on the main thread
    gen = predict_steps(bundle, slide, notify=notices.append)
    while True:
        try:
            done, total = next(gen)
        except StopIteration as stop:
            pred = stop.value
            from .layers import gene_ranges

            sd = (bundle.target_norm or {}).get("std")  # each gene's spread in training: the colour floor
            from ..data.export import spatial_images

            pred.images = spatial_images(pred)  # the slide's small copies for an AnnData export, made here
            pred.image = None
            return (pred, slide.spot_diameter_um, bundle.device.type, bundle.gene_pcc(),
                    bundle.gene_pcc_protocol(), None if sd is None else np.asarray(sd, np.float32),
                    gene_ranges(pred.values))  # percentiles here, off the main thread
        while notices:
            yield ("notice", done, total, notices.pop(0))
        yield ("progress", done, total, f"Predicting… {done}/{total} spots")
