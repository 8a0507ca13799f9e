"""The Train dock's live plot: validation PCC and training loss per epoch, one curve per training.

A study trains one model per held-out fold, then the final model on every section; each of those
trainings is a curve of its own colour, named in the legend. Two panels share the epoch axis:
validation PCC on top, training loss below, each with its values on the y axis. The PCC axis is
never narrower than :data:`PCC_MIN_SPAN` (centred on the data), so a change in the fourth decimal
stays a flat line instead of filling the plot; the loss axis is never narrower than
:data:`LOSS_MIN_REL_SPAN` of the loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFontMetrics, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

PCC_MIN_SPAN = 0.05  # the PCC axis shows at least this much PCC
LOSS_MIN_REL_SPAN = 0.1  # the loss axis shows at least this fraction of the loss's level

# fold colours (distinct on the dark background); the final model is drawn in white
FOLD_COLOURS = [(90, 170, 255), (255, 160, 60), (110, 210, 120), (240, 100, 110), (190, 140, 255),
                (230, 210, 90), (90, 220, 220), (255, 130, 210), (170, 170, 170)]
FINAL_COLOUR = (245, 245, 245)
BACKGROUND = QColor(38, 41, 48)
AXIS = QColor(110, 110, 120)
GRID = QColor(58, 62, 72)
TEXT = QColor(200, 200, 200)
MUTED = QColor(150, 150, 150)


@dataclass
class Curve:
    """One training's epochs: ``name`` as the legend says it."""

    name: str
    final: bool = False
    epochs: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    pcc: list[float] = field(default_factory=list)

    def add(self, epoch: int, loss: float, pcc: float) -> None:
        """An epoch's values; a resumed or restarted training drops what it redoes."""
        while self.epochs and self.epochs[-1] >= epoch:
            self.epochs.pop(), self.loss.pop(), self.pcc.pop()
        self.epochs.append(int(epoch))
        self.loss.append(float(loss))
        self.pcc.append(float(pcc))

    def best(self) -> tuple[int, float] | None:
        """``(epoch, val PCC)`` of the best epoch so far (the one the training keeps), or None."""
        vals = [(v, e) for e, v in zip(self.epochs, self.pcc) if math.isfinite(v)]
        if not vals:
            return None
        v, e = max(vals, key=lambda t: (t[0], -t[1]))  # the first epoch reaching the best value
        return e, v


def axis_range(values, min_span: float, clamp: tuple[float, float] | None = None) -> tuple[float, float]:
    """``(lo, hi)`` covering the finite ``values``, at least ``min_span`` wide and centred on the
    data when they span less; kept inside ``clamp`` when given (and wide enough)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return (0.0, 1.0)
    lo, hi = min(vals), max(vals)
    pad = 0.08 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if hi - lo < min_span:
        mid = 0.5 * (lo + hi)
        lo, hi = mid - 0.5 * min_span, mid + 0.5 * min_span
    if clamp is not None and clamp[1] - clamp[0] >= hi - lo:
        if lo < clamp[0]:
            lo, hi = clamp[0], clamp[0] + (hi - lo)
        if hi > clamp[1]:
            lo, hi = clamp[1] - (hi - lo), clamp[1]
    return lo, hi


def nice_ticks(lo: float, hi: float, most: int = 5) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) inside ``[lo, hi]``: the finest such
    step that gives at most ``most`` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    mag = 10 ** math.floor(math.log10((hi - lo) / max(most, 2)))
    for step in (m * mag * t for t in (1, 10, 100) for m in (1, 2, 5)):
        first = math.ceil(lo / step - 1e-9)
        last = math.floor(hi / step + 1e-9)
        if last - first + 1 <= most:
            return [round(k * step, 12) for k in range(first, last + 1)]
    return [lo, hi]


def tick_text(v: float, ticks: list[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else abs(v) or 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 3
    return f"{v:.{decimals}f}"


def epoch_ticks(last: int) -> list[int]:
    """Epoch numbers to label on an axis from 1 to ``last``."""
    if last <= 1:
        return [1]
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500) if (last - 1) / s <= 6)
    ticks = [1] + [k for k in range(step, last + 1, step) if k > 1]
    if ticks[-1] != last and last - ticks[-1] > step / 2:
        ticks.append(last)
    return ticks


class CurvePlot(QWidget):
    """Validation PCC (top) and training loss (bottom) per epoch, drawn with QPainter (no
    plotting library), one colour per training of the study."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.curves: list[Curve] = []
        self.title = ""
        self.planned_epochs = 0  # epochs per training, for the x axis before they are done
        self.setMinimumHeight(230)
        self.setMinimumWidth(240)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)

    def sizeHint(self):  # noqa: N802 (Qt's name)
        from qtpy.QtCore import QSize

        return QSize(400, 250)

    # ---------------------------------------------------------------- data
    def reset(self, title: str = "", epochs: int = 0):
        """Forget every curve (a new study)."""
        self.curves, self.title, self.planned_epochs = [], title, int(epochs or 0)
        self.update()

    def curve(self, name: str, final: bool = False) -> Curve:
        """The curve named ``name``, made (as the current one) when there is none."""
        for c in self.curves:
            if c.name == name:
                if c is not self.curves[-1]:  # it runs again (a resumed study): it is the current one
                    self.curves.remove(c)
                    self.curves.append(c)
                return c
        self.curves.append(Curve(name, final))
        self.update()
        return self.curves[-1]

    def add(self, loss: float, pcc: float, epoch: int | None = None, name: str | None = None,
            final: bool = False):
        """An epoch of the training ``name`` (default: the current one)."""
        if name is not None or not self.curves:
            c = self.curve(name if name is not None else (self.title or "training"), final)
        else:
            c = self.curves[-1]
        c.add(epoch if epoch is not None else (c.epochs[-1] + 1 if c.epochs else 1), loss, pcc)
        self.update()

    @property
    def current(self) -> Curve | None:
        return self.curves[-1] if self.curves else None

    @property
    def loss(self) -> list[float]:
        """The current training's loss per epoch."""
        return self.current.loss if self.curves else []

    @property
    def pcc(self) -> list[float]:
        """The current training's validation PCC per epoch."""
        return self.current.pcc if self.curves else []

    def pcc_range(self) -> tuple[float, float]:
        return axis_range([v for c in self.curves for v in c.pcc], PCC_MIN_SPAN, (-1.0, 1.0))

    def loss_range(self) -> tuple[float, float]:
        vals = [v for c in self.curves for v in c.loss if math.isfinite(v)]
        level = max((abs(v) for v in vals), default=1.0)
        return axis_range(vals, max(LOSS_MIN_REL_SPAN * level, 1e-6))

    def last_epoch(self) -> int:
        return max([self.planned_epochs, 2] + [c.epochs[-1] for c in self.curves if c.epochs])

    def colour(self, c: Curve) -> QColor:
        if c.final:
            return QColor(*FINAL_COLOUR)
        k = [x for x in self.curves if not x.final].index(c)
        return QColor(*FOLD_COLOURS[k % len(FOLD_COLOURS)])

    # ---------------------------------------------------------------- drawing
    def paintEvent(self, event):  # noqa: N802 (Qt's name)
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        font = p.font()
        font.setPointSizeF(max(font.pointSizeF() * 0.85, 7.0))
        p.setFont(font)
        fm = QFontMetrics(font)
        lh = fm.height()
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, BACKGROUND)
        pcc_lo, pcc_hi = self.pcc_range()
        loss_lo, loss_hi = self.loss_range()
        # numbers on an axis only when it has data (no made-up scale before the first epoch)
        has_pcc = any(math.isfinite(v) for c in self.curves for v in c.pcc)
        has_loss = any(math.isfinite(v) for c in self.curves for v in c.loss)
        pcc_ticks = nice_ticks(pcc_lo, pcc_hi) if has_pcc else []
        loss_ticks = nice_ticks(loss_lo, loss_hi, 4) if has_loss else []
        labels = [tick_text(v, pcc_ticks) for v in pcc_ticks] + [tick_text(v, loss_ticks) for v in loss_ticks]
        left = 6 + max([fm.horizontalAdvance(s) for s in labels] + [fm.horizontalAdvance("0.00")]) + 6
        right = 10
        # legend: one entry per training, wrapped over as many lines as it needs
        legend, x, y = [], left, 3
        for c in self.curves:
            tw = 16 + fm.horizontalAdvance(c.name) + 12
            if x + tw > w - right and x > left:
                x, y = left, y + lh
            legend.append((c, x, y))
            x += tw
        top = (y + lh + 4 if self.curves else lh + 6) + lh // 2  # room for the top tick's number
        bottom = lh + fm.height() + 8  # epoch numbers, then "epoch"
        gap = lh + 6
        avail = max(h - top - bottom - gap, 40)
        ph_pcc, ph_loss = int(avail * 0.58), avail - int(avail * 0.58)
        pw = max(w - left - right, 20)
        r_pcc = QRectF(left, top, pw, ph_pcc)
        r_loss = QRectF(left, top + ph_pcc + gap, pw, ph_loss)
        if not self.curves:
            p.setPen(TEXT)
            p.drawText(QRectF(left, 2, pw, lh + 2), Qt.AlignLeft | Qt.AlignVCenter,
                       self.title or "Validation PCC and training loss per epoch")
        for c, lx, ly in legend:
            col = self.colour(c)
            p.setPen(QPen(col, 3 if c is self.current else 2))
            p.drawLine(QPointF(lx, ly + lh / 2 + 1), QPointF(lx + 12, ly + lh / 2 + 1))
            p.setPen(col if c is self.current else col.darker(115))
            p.drawText(QRectF(lx + 16, ly, w, lh + 2), Qt.AlignLeft | Qt.AlignVCenter, c.name)
        last = self.last_epoch()
        x_of = lambda e: left + pw * (e - 1) / max(last - 1, 1)  # noqa: E731
        for rect, (lo, hi), ticks, name in ((r_pcc, (pcc_lo, pcc_hi), pcc_ticks, "val PCC"),
                                           (r_loss, (loss_lo, loss_hi), loss_ticks, "loss")):
            y_of = lambda v, rect=rect, lo=lo, hi=hi: rect.bottom() - rect.height() * (v - lo) / (hi - lo)  # noqa: E731
            for t in ticks:
                yy = y_of(t)
                p.setPen(QPen(GRID, 1))
                p.drawLine(QPointF(rect.left(), yy), QPointF(rect.right(), yy))
                p.setPen(MUTED)
                p.drawText(QRectF(0, yy - lh / 2, left - 5, lh), Qt.AlignRight | Qt.AlignVCenter,
                           tick_text(t, ticks))
            for e in epoch_ticks(last):
                p.setPen(QPen(GRID, 1))
                p.drawLine(QPointF(x_of(e), rect.top()), QPointF(x_of(e), rect.bottom()))
            p.setPen(QPen(AXIS, 1))
            p.drawRect(rect)
            p.setPen(TEXT)
            p.drawText(QRectF(rect.left() + 4, rect.top() + 1, rect.width() - 8, lh), Qt.AlignRight | Qt.AlignTop, name)
            p.save()
            p.setClipRect(rect.adjusted(-3, -3, 3, 3))
            for c in self.curves:
                vals = c.pcc if name == "val PCC" else c.loss
                pts = [QPointF(x_of(e), y_of(v)) for e, v in zip(c.epochs, vals) if math.isfinite(v)]
                if not pts:
                    continue
                col = self.colour(c)
                p.setPen(QPen(col, 2.5 if c is self.current else 1.5))
                if len(pts) > 1:
                    p.drawPolyline(QPolygonF(pts))
                p.setBrush(col)
                for pt in pts if len(pts) <= 40 else pts[-1:]:
                    p.drawEllipse(pt, 2.2, 2.2)
                p.setBrush(Qt.NoBrush)
                if name == "val PCC" and c is self.current and c.best() is not None:  # the epoch kept so far
                    e, v = c.best()
                    p.setPen(QPen(col, 1.5))
                    p.drawEllipse(QPointF(x_of(e), y_of(v)), 5, 5)
            p.restore()
        if not self.curves:
            p.setPen(MUTED)
            p.drawText(r_pcc, Qt.AlignCenter | Qt.TextWordWrap, "appears here at the end of each epoch")
        p.setPen(MUTED)
        yb = r_loss.bottom() + 2
        for e in epoch_ticks(last):
            s = str(e)
            p.drawText(QRectF(x_of(e) - 20, yb, 40, lh), Qt.AlignHCenter | Qt.AlignTop, s)
        p.setPen(TEXT)
        p.drawText(QRectF(left, yb + lh, pw, lh + 2), Qt.AlignHCenter | Qt.AlignTop, "epoch")
        p.end()
