"""The Train dock's live plot: training loss and validation PCC per epoch."""
from __future__ import annotations

from qtpy.QtCore import QPointF
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget


class CurvePlot(QWidget):
    """Training loss and validation PCC per epoch, drawn with QPainter (no plotting library):
    loss in orange on its own scale, PCC in blue on [min, max] with its values labelled."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.loss: list[float] = []
        self.pcc: list[float] = []
        self.title = ""
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)

    def reset(self, title: str = ""):
        self.loss, self.pcc, self.title = [], [], title
        self.update()

    def add(self, loss: float, pcc: float):
        self.loss.append(float(loss))
        self.pcc.append(float(pcc))
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt's name)
        import math

        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor(38, 41, 48))
        left, right, top, bottom = 8, 8, 18, 16
        pw, ph = max(w - left - right, 10), max(h - top - bottom, 10)
        p.setPen(QColor(200, 200, 200))
        p.drawText(left, 13, (self.title + "   ") if self.title else "")
        legend_x = w - 190
        p.setPen(QColor(255, 160, 60))
        p.drawText(legend_x, 13, "loss")
        p.setPen(QColor(90, 170, 255))
        last = next((v for v in reversed(self.pcc) if math.isfinite(v)), None)
        p.drawText(legend_x + 40, 13, "val PCC" + (f" {last:.3f}" if last is not None else ""))
        p.setPen(QPen(QColor(90, 90, 100), 1))
        p.drawRect(left, top, pw, ph)
        n = len(self.loss)
        if n == 0:
            p.setPen(QColor(150, 150, 150))
            p.drawText(left + 6, top + ph // 2, "loss and validation PCC appear here per epoch")
            p.end()
            return
        for series, colour in ((self.loss, QColor(255, 160, 60)), (self.pcc, QColor(90, 170, 255))):
            vals = [v for v in series if math.isfinite(v)]
            if not vals:
                continue
            lo, hi = min(vals), max(vals)
            span = hi - lo if hi > lo else 1.0
            pts = [QPointF(left + (pw * i / max(n - 1, 1)), top + ph - ph * ((v - lo) / span if hi > lo else 0.5))
                   for i, v in enumerate(series) if math.isfinite(v)]
            p.setPen(QPen(colour, 2))
            p.drawPolyline(QPolygonF(pts))
        p.setPen(QColor(150, 150, 150))
        p.drawText(left, h - 3, f"epoch 1 … {n}")
        p.end()
