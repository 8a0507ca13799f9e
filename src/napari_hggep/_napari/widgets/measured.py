"""The Predict dock's truth, where the slide's source has counts (issue 25): the measured map of
the selected gene beside or instead of the predicted one (in the same colour range), the
difference, and a small predicted-vs-measured scatter with the gene's PCC on this slide.
Changing gene updates all of them without a new prediction."""
from __future__ import annotations

import math

import numpy as np
from magicgui.widgets import ComboBox
from qtpy.QtCore import QPointF, QRectF
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

from ..layers import (KEY, MIN_SPOT_SCREEN_PX, MapLayerInfo, PredictionLayerInfo, layer_info, measured_values, set_limits,
                      shift_x)

SHOW_CHOICES = ["hidden", "beside the prediction", "instead of the prediction", "difference (measured − predicted)"]
DIFF_COLORMAP = "PiYG"


def joint_limits(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """One colour range for two maps: the 1st-99th percentile of both together."""
    v = np.concatenate([np.asarray(a, np.float32).ravel(), np.asarray(b, np.float32).ravel()])
    v = v[np.isfinite(v)]
    if not len(v):
        return 0.0, 1.0
    lo, hi = (float(x) for x in np.percentile(v, [1, 99]))
    return lo, hi if hi > lo else lo + 1e-6


class ScatterPlot(QWidget):
    """Predicted (x) against measured (y) per spot for one gene, drawn with QPainter, with axis
    values and the PCC on this slide."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.x = self.y = np.zeros(0)
        self.title = ""
        self.setMinimumHeight(150)
        self.setMaximumHeight(170)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)

    def set_data(self, x, y, title: str):
        self.x, self.y, self.title = np.asarray(x, float), np.asarray(y, float), title
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt's name)
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor(38, 41, 48))
        left, right, top, bottom = 34, 8, 18, 28
        pw, ph = max(w - left - right, 10), max(h - top - bottom, 10)
        p.setPen(QColor(210, 210, 210))
        p.drawText(4, 13, self.title)
        p.setPen(QPen(QColor(90, 90, 100), 1))
        p.drawRect(left, top, pw, ph)
        ok = np.isfinite(self.x) & np.isfinite(self.y)
        if not ok.any():
            p.end()
            return
        x, y = self.x[ok], self.y[ok]
        (x0, x1), (y0, y1) = (float(x.min()), float(x.max())), (float(y.min()), float(y.max()))
        x1, y1 = (x1 if x1 > x0 else x0 + 1e-6), (y1 if y1 > y0 else y0 + 1e-6)
        px = left + (x - x0) / (x1 - x0) * pw
        py = top + ph - (y - y0) / (y1 - y0) * ph
        p.setPen(QPen(QColor(120, 200, 160, 160), 1))
        p.setBrush(QColor(120, 200, 160, 110))
        step = max(1, len(px) // 4000)  # a few thousand points are enough to see the relation
        for a, b in zip(px[::step], py[::step]):
            p.drawEllipse(QPointF(float(a), float(b)), 1.6, 1.6)
        p.setPen(QColor(170, 170, 170))
        font = p.font()
        font.setPointSizeF(max(font.pointSizeF() - 1.5, 6.0))
        p.setFont(font)
        p.drawText(QRectF(left, top + ph + 2, pw, 12), 0x0001, f"{x0:.2g}")  # AlignLeft
        p.drawText(QRectF(left, top + ph + 2, pw, 12), 0x0002, f"{x1:.2g}")  # AlignRight
        p.drawText(QRectF(left, top + ph + 13, pw, 12), 0x0004, "predicted")  # AlignHCenter
        p.drawText(QRectF(0, top + ph - 12, left - 3, 12), 0x0002, f"{y0:.2g}")
        p.drawText(QRectF(0, top, left - 3, 12), 0x0002, f"{y1:.2g}")
        p.save()
        p.translate(10, top + ph / 2 + 24)
        p.rotate(-90)
        p.drawText(0, 0, "measured")
        p.restore()
        p.end()


class MeasuredControls:
    """Part of the Predict dock: the measured expression beside the prediction (shown only when
    the result layer's slide has counts)."""

    def _measured_widgets(self) -> list:
        self.measured_show = ComboBox(label="Measured", choices=SHOW_CHOICES, value=SHOW_CHOICES[0],
                                      tooltip="This slide's own counts (normalised as the prediction's target) for "
                                              "the selected gene: beside the predicted map, instead of it, or the "
                                              "difference; the scatter shows each spot, predicted against measured")
        self.measured_show.visible = False
        return [self.measured_show]

    def _measured_plot(self):
        self.scatter = ScatterPlot()
        self.scatter.setVisible(False)
        self.form.native.layout().addWidget(self.scatter)

    def _connect_measured(self):
        self.measured_show.changed.connect(lambda _=None: self._show_measured(self.result.value, self.gene.value))

    # -------------------------------------------------------------- layers
    def _truth_layer(self, pred_layer, suffix: str):
        name = f"{pred_layer.name} {suffix}"
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _drop_truth_layers(self, pred_layer=None):
        self._place_caption("top_left")  # no titles left on the canvas
        for ly in list(self.viewer.layers):
            info = layer_info(ly, MapLayerInfo)
            if info is not None and (pred_layer is None or info.of == pred_layer.name) and ly in self.viewer.layers:
                self.viewer.layers.remove(ly)  # (a removal's own events may have removed it already)

    def _truth_points(self, pred_layer, suffix: str, kind: str, has: np.ndarray):
        """A map of the spots that have counts, placed like the prediction layer: points, or an image
        on the bin grid for a prediction drawn so."""
        ly = self._truth_layer(pred_layer, suffix)
        grid = layer_info(pred_layer, PredictionLayerInfo).grid
        if grid is not None:
            if ly is None or ly.__class__.__name__ != "Image":
                if ly is not None:
                    self.viewer.layers.remove(ly)
                ly = self.viewer.add_image(grid.paint(), name=f"{pred_layer.name} {suffix}", interpolation2d="nearest",
                                           affine=np.array(pred_layer.affine.affine_matrix), opacity=0.9,
                                           metadata={KEY: MapLayerInfo(kind, pred_layer.name)})
            ly.metadata[KEY].mask = has
            return ly
        if ly is None or len(ly.data) != int(has.sum()):
            if ly is not None:
                self.viewer.layers.remove(ly)
            kwargs = {"name": f"{pred_layer.name} {suffix}", "scale": tuple(pred_layer.scale[-2:]),
                      "size": pred_layer.size[has] if np.ndim(pred_layer.size) else pred_layer.size,
                      "border_width": 0, "opacity": 0.9, "canvas_size_limits": MIN_SPOT_SCREEN_PX, "symbol": pred_layer.symbol[0] if np.ndim(pred_layer.symbol)
                      else pred_layer.symbol, "metadata": {KEY: MapLayerInfo(kind, pred_layer.name)}}
            ly = self.viewer.add_points(np.asarray(pred_layer.data)[has], **kwargs)
        return ly

    def _colour(self, ly, name: str, values: np.ndarray, cmap: str, limits, colorbar: bool = True):
        import warnings

        import pandas as pd

        if ly.__class__.__name__ == "Image":  # on the bin grid: the values in their bins
            of = layer_info(ly, MapLayerInfo)
            grid = layer_info(self.viewer.layers[of.of], PredictionLayerInfo).grid
            ly.data = grid.paint(np.asarray(values, np.float32), of.mask)
            ly.colormap = cmap
            set_limits(ly, limits)
            ly.colorbar.visible = colorbar
            return

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ly.features = pd.DataFrame({name: np.asarray(values, np.float32)})
        if getattr(ly.face_colormap, "name", None) != cmap:
            ly.face_colormap = cmap
        ly.face_color = name
        ly.face_contrast_limits = limits
        bar = getattr(ly, "face_colorbar", None)
        if bar is not None:
            bar.visible = colorbar

    def _show_measured(self, layer, gene):
        """Update the measured map, the difference and the scatter for ``gene`` of ``layer``."""
        info = None if layer is None else layer_info(layer, PredictionLayerInfo)
        m = None if info is None else info.prediction.measured
        # counts that list none of the predicted genes (Ensembl ids, other symbols) have nothing to show
        has_counts = m is not None and len(set(m.genes_absent)) < len(info.genes)
        self.measured_show.visible = has_counts
        absent = has_counts and gene in set(m.genes_absent)
        self.scatter.setVisible(has_counts and gene is not None and not absent)
        if not has_counts or gene is None or absent:
            if layer is None or not has_counts:
                self._drop_truth_layers(layer)
            elif absent:
                self._drop_truth_layers(layer)
                layer.visible = True
                self.gene_info.value += f" {gene} is not in this slide's counts: no measured map."
            return
        measured, has = measured_values(layer, gene)
        i = info.index[gene]
        predicted = info.values[has, i]
        pcc = float(info.prediction.measured.pcc[i])
        self.scatter.set_data(predicted, measured, f"{gene}: measured vs predicted, "
                              + ("PCC n/a" if pcc is None or not math.isfinite(pcc) else f"PCC {pcc:.2f}")
                              + f" ({int(has.sum())} spots)")
        mode = SHOW_CHOICES.index(self.measured_show.value)
        if mode == 0:
            self._drop_truth_layers(layer)
            layer.visible = True
            return
        lo, hi = joint_limits(predicted, measured)
        img = getattr(self, "image_layer", None)
        img = img.value if img is not None else None
        if mode in (1, 2):
            self._drop_one(layer, "measured − predicted")
            ly = self._truth_points(layer, "measured", "measured", has)
            # the prediction's colour bar serves both: one range
            self._colour(ly, gene, measured, info.colormap or "viridis", (lo, hi), colorbar=mode == 2)
            set_limits(layer, (lo, hi))  # the same colour range for both maps
            info.contrast_limits = (lo, hi)
            shift = 0.0
            if mode == 1:  # to the right of the slide (its image, else its spots) with a margin, in µm
                ext = np.asarray(img.extent.world if img is not None else layer.extent.world, float)
                shift = float(ext[1, -1] - ext[0, -1]) * 1.04
                self._tissue_copy(layer, img, shift)  # the measured map on the same tissue
            else:
                self._drop_one(layer, "tissue (measured)")
            shift_x(ly, layer, shift)
            layer.visible = mode == 1
            rng = f"one colour range for both maps: {lo:.2f}–{hi:.2f} (the colour bar)"
            self._titles(layer, [(f"predicted {gene}", 0.0)] * (mode == 1) + [(f"measured {gene}", shift)])
            self.gene_info.value = f"{gene}: {rng}; {getattr(self, '_gene_note', '')}"
        else:
            self._drop_one(layer, "measured")
            ly = self._truth_points(layer, "measured − predicted", "difference", has)
            diff = measured - predicted
            span = float(np.percentile(np.abs(diff), 99)) if len(diff) else 1.0
            span = max(span, 1e-6)
            self._colour(ly, f"{gene} measured − predicted", diff, DIFF_COLORMAP, (-span, span))
            shift_x(ly, layer, 0.0)
            layer.visible = False
            self._drop_one(layer, "tissue (measured)")
            self._titles(layer, [(f"measured − predicted {gene}", 0.0)])
            self.gene_info.value = (f"{gene}: measured − predicted, from −{span:.2f} (pink: predicted too high) to "
                                    f"+{span:.2f} (green: predicted too low), 0 in white ({DIFF_COLORMAP}); "
                                    f"{getattr(self, '_gene_note', '')}")

    def _tissue_copy(self, pred_layer, img, shift: float) -> None:
        """The slide's image again, beside it (the same data, not a copy in memory), under the
        measured map."""
        name = f"{pred_layer.name} tissue (measured)"
        if img is None:
            return
        ly = self._truth_layer(pred_layer, "tissue (measured)")
        if ly is None:
            ly = self.viewer.add_image(img.data, rgb=True, multiscale=img.multiscale, scale=tuple(img.scale[-2:]),
                                       name=name, metadata={KEY: MapLayerInfo("tissue", pred_layer.name)})
            vl = self.viewer.layers
            vl.move(vl.index(ly), vl.index(pred_layer))  # under the maps
        ly.translate = (float(img.translate[-2]), float(img.translate[-1]) + shift)

    def _titles(self, pred_layer, titles: list[tuple[str, float]]) -> None:
        """Each map's title on the canvas, above its top-left corner (a points layer of text only);
        the gene's caption moves to the bottom left, out of their way, and a map beside the slide
        is brought into view the first time it is shown."""
        self._place_caption("bottom_left")
        if titles and titles[-1][1] > 0 and self._truth_layer(pred_layer, "titles") is None:
            self.viewer.reset_view()  # both maps in view
        ext = np.asarray(pred_layer.extent.world, float)
        y0, x0 = float(ext[0, -2]), float(ext[0, -1])
        height = float(ext[1, -2] - ext[0, -2])
        pts = np.array([[y0 - 0.04 * height, x0 + dx] for _, dx in titles], float).reshape(-1, 2)
        feats = {"title": [t for t, _ in titles]}
        ly = self._truth_layer(pred_layer, "titles")
        if ly is not None and len(ly.data) != len(pts):
            self.viewer.layers.remove(ly)
            ly = None
        if ly is None:
            ly = self.viewer.add_points(pts, features=feats, size=0, face_color="transparent", border_width=0,
                                        text={"string": "{title}", "size": 12, "color": "white", "anchor": "upper_left"},
                                        name=f"{pred_layer.name} titles",
                                        metadata={KEY: MapLayerInfo("titles", pred_layer.name)})
        else:
            ly.data = pts
            ly.features = feats
            ly.text.string = "{title}"
            ly.refresh_text()

    def _place_caption(self, corner: str) -> None:
        self._caption_corner = corner
        ov = self._caption_overlay()
        if ov is not None and ov.position != corner:
            ov.position = corner

    def _drop_one(self, layer, suffix: str):
        ly = self._truth_layer(layer, suffix)
        if ly is not None:
            self.viewer.layers.remove(ly)
