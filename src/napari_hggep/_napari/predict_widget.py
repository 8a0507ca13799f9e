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

from .jobs import JobRunner
from .layers import KEY
from .trained_models import register_predict_widget
from .widgets.export import ExportControls
from .widgets.genes import GeneControls, _GeneList
from .widgets.measured import MeasuredControls
from .widgets.prediction import PredictionControls
from .widgets.source import SourceControls, is_pixel_table, place_on_image
from .widgets.space_ranger import SpaceRangerControls


class PredictWidget(JobRunner, SourceControls, SpaceRangerControls, PredictionControls, GeneControls, MeasuredControls,
                    ExportControls, Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.worker = None
        self.notices: list[str] = []  # fallbacks reported by the last runs (e.g. out of GPU memory)
        self.warnings_shown: list[str] = []  # the image's warnings shown at the last Predict
        self._models: dict[str, str] = {}  # checkpoints added by add_model: label -> path
        self._gene_lists: dict[int, _GeneList] = {}
        self._shown_genes: list[str] = []
        self.extend([*self._source_widgets(), *self._prediction_widgets(), *self._gene_widgets(),
                     *self._measured_widgets(), *self._export_widgets()])
        self._measured_plot()
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
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._reset_choices)
        self._on_image(self.image_layer.value)
        self._on_spots(self.spots.value)
        self._on_device("auto")
        self._refresh_genes()  # a result layer already in the viewer
        register_predict_widget(self)  # models trained in this session appear in the Model box

    def _reset_choices(self, event=None):
        for w in (self.image_layer, self.spots, self.result):
            w.reset_choices()
        self._gene_lists = {k: v for k, v in self._gene_lists.items()
                            if any(id(ly) == k for ly in self._prediction_layers())}
        names = {ly.name for ly in self._prediction_layers()}
        for ly in list(self.viewer.layers):  # measured maps whose prediction is gone go with it
            meta = ly.metadata.get(KEY, {})
            if meta.get("kind") in ("measured", "difference") and meta.get("of") not in names:
                self.viewer.layers.remove(ly)
        img = self.image_layer.value
        if img is not None:  # a spot table opened after its image lands on the image's pixel grid
            for ly in self.viewer.layers:
                if is_pixel_table(ly) and "placed_on" not in ly.metadata.get(KEY, {}):
                    place_on_image(ly, img)
