"""Dock widget "Predict gene expression": a thin Qt layer over ``predict_steps``, assembled from
the parts a user sees (:mod:`.widgets`): the slide and its spots (:mod:`.widgets.source`, with
:mod:`.widgets.space_ranger` for a Space Ranger folder's images and bins), the model and the
prediction job (:mod:`.widgets.prediction`), the genes (:mod:`.widgets.genes`) and the export
(:mod:`.widgets.export`).

Prediction runs in a napari ``thread_worker`` generator that yields per batch (:mod:`.jobs`); the
worker never touches a layer. Errors show as a notification and in the status line, and the
buttons reset.
"""
from __future__ import annotations

from magicgui.widgets import Container

from .jobs import JobRunner, warm_up_torch
from .layers import ImageLayerInfo, MapLayerInfo, SpotsLayerInfo, is_prediction_layer, layer_info
from .state import PredictDockState
from .trained_models import register_predict_widget
from .warmup import warm_up_canvas_text
from .widgets.export import ExportControls
from .widgets.genes import GeneControls, GeneList
from .widgets.measured import MeasuredControls
from .widgets.prediction import PredictionControls
from .widgets.scroll import VerticalScroll
from .widgets.source import SourceControls, belongs_to, is_pixel_table, place_on_image
from .widgets.space_ranger import SpaceRangerControls


class PredictWidget(JobRunner, SourceControls, SpaceRangerControls, PredictionControls, GeneControls, MeasuredControls,
                    ExportControls, Container):
    """The dock: this container holds a scroll area, and the scroll area the form (``form``, a
    magicgui Container with every control, the status and the scatter), so the dock asks for
    little height and both docks fit a laptop screen."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.worker = None
        self.notices: list[str] = []  # fallbacks reported by the last runs (e.g. out of GPU memory)
        self.warnings_shown: list[str] = []  # the image's warnings shown at the last Predict
        self._toasted: dict[int, list[str]] = {}  # image layer id -> the warnings already shown as a toast
        self._models: dict[str, str] = {}  # checkpoints added by add_model: label -> path
        self._gene_lists: dict[int, GeneList] = {}
        self._shown_genes: list[str] = []
        self.state = PredictDockState()  # what the dock shows follows this one object's events
        self.form = Container(labels=True)
        self.form.extend([*self._source_widgets(), *self._prediction_widgets(), *self._gene_widgets(),
                          *self._measured_widgets(), *self._export_widgets()])
        self.append(self.form)
        self._measured_plot()
        self.scroll = VerticalScroll(self.form.native)  # takes the form out of this container's layout
        self.native.layout().addWidget(self.scroll)
        self.margins = (0, 0, 0, 0)
        self._connect_source()
        self._connect_prediction()
        self._connect_genes()
        self._connect_measured()
        self._connect_export()
        self.native.setMaximumWidth(460)  # leave the canvas most of the window
        self.um_per_px.native.setPlaceholderText("required: µm per pixel")
        self.image_warning.native.setStyleSheet("color: #f0a030;")
        for lab in (self.status, self.gene_info, self.device_info, self.um_source, self.image_warning,
                    self.image_used):
            lab.native.setWordWrap(True)
        self._setup_gene_box()
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.removed.connect(self._on_removed)
        self.viewer.layers.events.inserted.connect(self._reset_choices)
        self.viewer.layers.events.removed.connect(self._reset_choices)
        self.state.image, self.state.spots = self.image_layer.value, self.spots.value
        self._on_image(self.image_layer.value)
        self._on_spots(self.spots.value)
        self._on_device("auto")
        self._refresh_genes()  # a result layer already in the viewer
        register_predict_widget(self)  # models trained in this session appear in the Model box
        warm_up_torch()  # torch and the model's libraries load in the background, not on the first click
        warm_up_canvas_text(self.viewer)  # the caption's and colour bar's glyphs, in idle turns
        self._enable_log()  # an unexpected error keeps its traceback in the log file its message names

    def _reset_choices(self, event=None):
        for w in (self.image_layer, self.spots, self.result):
            w.reset_choices()
        self._gene_lists = {k: v for k, v in self._gene_lists.items()
                            if any(id(ly) == k for ly in self._prediction_layers())}
        names = {ly.name for ly in self._prediction_layers()}
        for ly in list(self.viewer.layers):  # measured maps whose prediction is gone go with it
            info = layer_info(ly, MapLayerInfo)
            if info is not None and info.of not in names and ly in self.viewer.layers:
                self.viewer.layers.remove(ly)
        img = self.image_layer.value
        if img is not None:  # a spot table opened after its image lands on the image's pixel grid
            for ly in self.viewer.layers:
                if is_pixel_table(ly) and layer_info(ly).placed_on is None:
                    place_on_image(ly, img)

    def _on_inserted(self, event):
        """A slide opened while the dock is open (File > Open of a folder, a sample) is the one to
        predict on: its image, and the spots that came with it (never a generated grid instead)."""
        layer = event.value
        if self.worker is not None or getattr(self, "_replacing", False):
            return
        if layer.__class__.__name__ == "Image" and layer_info(layer, ImageLayerInfo) is not None:
            self.image_layer.reset_choices()
            self.image_layer.value = layer
        elif layer_info(layer, SpotsLayerInfo) is not None and not is_prediction_layer(layer):
            img = self.image_layer.value
            if img is not None and belongs_to(layer, img):
                self.spots.reset_choices()
                self.spots.value = layer

    def _on_removed(self, event):
        """A layer gone: nothing in the dock names it any more (the gene shown, its caption and
        scatter for a result; the pixel size and choices for an image)."""
        layer = event.value
        if getattr(self, "_replacing", False):
            return
        if is_prediction_layer(layer):
            self._gene_lists.pop(id(layer), None)
            self.result.reset_choices()
            self._refresh_genes()
            self._show_measured(self.result.value, self.gene.value)
        elif layer.__class__.__name__ == "Image":
            self.image_layer.reset_choices()
            self._on_image(self.image_layer.value)
