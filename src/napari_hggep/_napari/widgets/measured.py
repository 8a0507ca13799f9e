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

from ..layers import KEY, gene_index, measured_values

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
        self.native.layout().addWidget(self.scatter)

    def _connect_measured(self):
        self.measured_show.changed.connect(lambda _=None: self._show_measured(self.result.value, self.gene.value))

    # -------------------------------------------------------------- layers
    def _truth_layer(self, pred_layer, suffix: str):
        name = f"{pred_layer.name} {suffix}"
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _drop_truth_layers(self, pred_layer=None):
        for ly in list(self.viewer.layers):
            meta = ly.metadata.get(KEY, {})
            if meta.get("kind") in ("measured", "difference") and (pred_layer is None or meta.get("of") == pred_layer.name):
                self.viewer.layers.remove(ly)

    def _truth_points(self, pred_layer, suffix: str, kind: str, has: np.ndarray):
        """A Points layer on the spots that have counts, placed like the prediction layer."""
        ly = self._truth_layer(pred_layer, suffix)
        if ly is None or len(ly.data) != int(has.sum()):
            if ly is not None:
                self.viewer.layers.remove(ly)
            kwargs = {"name": f"{pred_layer.name} {suffix}", "scale": tuple(pred_layer.scale[-2:]),
                      "size": pred_layer.size[has] if np.ndim(pred_layer.size) else pred_layer.size,
                      "border_width": 0, "opacity": 0.9, "symbol": pred_layer.symbol[0] if np.ndim(pred_layer.symbol)
                      else pred_layer.symbol, "metadata": {KEY: {"kind": kind, "of": pred_layer.name}}}
            ly = self.viewer.add_points(np.asarray(pred_layer.data)[has], **kwargs)
        return ly

    def _colour(self, ly, name: str, values: np.ndarray, cmap: str, limits, colorbar: bool = True):
        import warnings

        import pandas as pd

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
        has_counts = layer is not None and layer.metadata.get(KEY, {}).get("measured") is not None
        self.measured_show.visible = has_counts
        self.scatter.setVisible(has_counts and gene is not None)
        if not has_counts or gene is None:
            if layer is None:
                self._drop_truth_layers()
            return
        meta = layer.metadata[KEY]
        measured, has = measured_values(layer, gene)
        predicted = meta["values"][has, gene_index(meta)[gene]]
        pcc = (meta.get("measured_pcc") or {}).get(gene)
        self.scatter.set_data(predicted, measured, f"{gene}: measured vs predicted, "
                              + ("PCC n/a" if pcc is None or not math.isfinite(pcc) else f"PCC {pcc:.2f}")
                              + f" ({int(has.sum())} spots)")
        mode = SHOW_CHOICES.index(self.measured_show.value)
        if mode == 0:
            self._drop_truth_layers(layer)
            layer.visible = True
            return
        lo, hi = joint_limits(predicted, measured)
        if mode in (1, 2):
            self._drop_one(layer, "measured − predicted")
            ly = self._truth_points(layer, "measured", "measured", has)
            # the prediction's colour bar serves both: one range
            self._colour(ly, gene, measured, meta.get("colormap") or "viridis", (lo, hi), colorbar=mode == 2)
            layer.face_contrast_limits = (lo, hi)  # the same colour range for both maps
            meta["contrast_limits"] = (lo, hi)
            shift = 0.0
            if mode == 1:  # to the right of the slide (its image, else its spots) with a margin, in µm
                img = getattr(self, "image_layer", None)
                img = img.value if img is not None else None
                ext = np.asarray(img.extent.world if img is not None else layer.extent.world, float)
                shift = float(ext[1, -1] - ext[0, -1]) * 1.04
            ly.translate = (float(layer.translate[-2]), float(layer.translate[-1]) + shift)
            layer.visible = mode == 1
        else:
            self._drop_one(layer, "measured")
            ly = self._truth_points(layer, "measured − predicted", "difference", has)
            diff = measured - predicted
            span = float(np.percentile(np.abs(diff), 99)) if len(diff) else 1.0
            self._colour(ly, f"{gene} measured − predicted", diff, DIFF_COLORMAP, (-max(span, 1e-6), max(span, 1e-6)))
            ly.translate = tuple(layer.translate[-2:])
            layer.visible = False

    def _drop_one(self, layer, suffix: str):
        ly = self._truth_layer(layer, suffix)
        if ly is not None:
            self.viewer.layers.remove(ly)
