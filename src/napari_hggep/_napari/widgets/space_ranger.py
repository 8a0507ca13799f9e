"""The Predict dock's choices for a slide opened from a Space Ranger folder (Visium or Visium HD):
which of the folder's images to predict on (its hires or lowres PNG, or a full-resolution image),
and for Visium HD the bin size. A new choice reads the folder again and puts the new layers where
the old ones were."""
from __future__ import annotations

from magicgui.widgets import ComboBox, FileEdit, Label

from ..layers import SpotsLayerInfo, image_info, layer_info

OTHER_FULLRES = "Another full-resolution image…"  # a Space Ranger folder's image chosen by file
IMAGE_KINDS = {"hires": "hires PNG", "lowres": "lowres PNG", "fullres": "full resolution"}
BIN_CHOICES = ["16 µm", "8 µm", "2 µm"]


def image_kind(path) -> str:
    """``hires``, ``lowres`` or ``fullres`` for one of a Space Ranger folder's images, by its name."""
    from pathlib import Path

    name = Path(str(path)).name.lower()
    return next((k for k in ("hires", "lowres") if f"tissue_{k}_image" in name), "fullres")


def image_used_text(slide) -> str:
    """Which image a layer shows (and Predict uses), and its scale to Space Ranger's full resolution;
    ``slide``: the :class:`~napari_hggep.records.SlideInfo` of the layer (or of a prediction)."""
    from pathlib import Path

    if slide is None:
        return ""
    path, scale = slide.image_path, float(slide.image_scale or 1.0)
    if not path:
        return ""
    file, _, element = str(path).partition("::")  # a SpatialData store's image element: store.zarr::he
    name = Path(file).name + (f"::{element}" if element else "")
    if slide.space_ranger is None:
        return name if scale == 1 else f"{name} ({scale:.4g} × full resolution)"
    kind = image_kind(path)
    return f"{name} ({IMAGE_KINDS[kind]}" + (f", {scale:.4g} × full resolution)" if kind != "fullres" else ")")



class SpaceRangerControls:
    """Part of the Predict dock: the image of a Space Ranger folder to predict on, and Visium HD bins."""

    def _space_ranger_widgets(self) -> list:
        # a Space Ranger folder: which of its images to predict on, and Visium HD bins
        self._sr_choices: list = []  # (label, path) of the folder's images; a callable survives reset_choices
        self.sr_image = ComboBox(label="Predict on", choices=lambda _=None: self._sr_choices, visible=False)
        self.sr_fullres = FileEdit(label="Full-res image", mode="r", visible=False,
                                   filter="Images (*.tif *.tiff *.ome.tif *.svs *.ndpi *.jpg *.jpeg *.png)")
        self.bins = ComboBox(label="Bins", choices=BIN_CHOICES, value=BIN_CHOICES[0], visible=False)
        self.image_used = Label(label="", value="", visible=False)
        self._syncing = False
        return [self.sr_image, self.sr_fullres, self.bins, self.image_used]

    def _connect_space_ranger(self):
        self.sr_image.changed.connect(self._on_sr_image)
        self.sr_fullres.changed.connect(self._on_sr_fullres)
        self.bins.changed.connect(self._on_bins)

    def _sync_space_ranger(self, layer=None):
        """Show, for an image opened from a Space Ranger folder, which of the folder's images it is
        (the one Predict uses) and the others to choose from; for Visium HD, the bin size."""
        from pathlib import Path

        from ...io.readers.space_ranger import space_ranger_images

        info = None if layer is None else image_info(layer)
        sr = None if info is None else info.slide.space_ranger
        self._syncing = True
        try:
            for w in (self.sr_image, self.image_used):
                w.visible = sr is not None
            self.bins.visible = sr is not None and sr.kind == "hd"
            self.sr_fullres.visible = False
            if sr is None:
                return
            try:
                cands = space_ranger_images(sr.folder)
            except OSError:
                cands = []
            cur, kind = Path(sr.image), image_kind(sr.image)
            choices = [(f"{p.name} ({IMAGE_KINDS[k]})", str(p)) for k, p in cands]
            same = [str(p) for k, p in cands if p.resolve() == cur.resolve()]
            same = same or [str(p) for k, p in cands if k == kind and kind != "fullres"]
            if not same:  # a full-resolution file chosen from elsewhere
                choices.insert(0, (f"{cur.name} ({IMAGE_KINDS[kind]})", str(cur)))
                same = [str(cur)]
            self._sr_choices = choices + [(OTHER_FULLRES, OTHER_FULLRES)]
            self.sr_image.reset_choices()
            self.sr_image.value = same[0]
            if sr.kind == "hd":
                self.bins.value = f"{int(sr.bin_um)} µm"
            self.image_used.value = "Predicts on " + image_used_text(info.slide)
        finally:
            self._syncing = False

    def _on_sr_image(self, value):
        if self._syncing or value is None:
            return
        if value == OTHER_FULLRES:
            self.sr_fullres.visible = True
            self.state.status = "Choose the slide's full-resolution image file (Space Ranger does not copy it in)."
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
        from ..reader import space_ranger_layers

        layer = self.image_layer.value

        def failed(e):
            from ..._log import is_unexpected

            if is_unexpected(e):  # a bug: said with the log file that keeps its traceback
                self._fail(e)
            else:
                msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
                self._fail(ValueError(msg.replace("Use --bin-um 8 or 16.", "Choose 8 or 16 µm bins.")))
            self._sync_space_ranger(layer)  # the choices show what is open again

        try:
            if self.worker is not None:
                raise RuntimeError("Wait for the prediction to finish (or cancel it) before changing the image.")
            sr = image_info(layer).slide.space_ranger
            hd = sr.kind == "hd"
            if image is None:
                image = sr.image  # other bins over the same image
        except Exception as e:
            failed(e)
            return

        def read():  # in a worker thread: a folder's positions and images are read off the GUI thread
            return space_ranger_layers(sr.folder, image=image, bin_um=(bin_um or sr.bin_um) if hd else None)

        def done(result):
            layers, slide = result
            self._replace_space_ranger_layers(layer, layers)
            what = f"{len(slide.spot_ids):,} {'bins' if hd else 'spots'}"
            self.state.status = (f"Showing {what} on {image_used_text(image_info(self.image_layer.value).slide)}; "
                                 "press Predict.")

        self._start_job(read, status="Reading the folder again…", returned=done, errored=failed)

    def _replace_space_ranger_layers(self, old_image, layers):
        folder = image_info(old_image).slide.space_ranger.folder
        vl = self.viewer.layers
        old_spots = [ly for ly in vl if ly.__class__.__name__ == "Points"
                     and (info := layer_info(ly, SpotsLayerInfo)) is not None
                     and info.space_ranger is not None and info.space_ranger.folder == folder]
        at = vl.index(old_image)
        self._replacing = True  # the dock's own layer events: not a slide opened by the user
        try:
            for ly in [old_image, *old_spots]:
                vl.remove(ly)
            img, pts = self._add_layers(layers, at=min(at, len(vl)))
        finally:
            self._replacing = False
        self.image_layer.reset_choices()
        self.image_layer.value = img
        self.spots.reset_choices()
        self.spots.value = pts
