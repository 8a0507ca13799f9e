"""A dock's form in a vertical scroll area, so that a dock asks for little height and napari's
window fits a laptop screen (1366x768) with both docks open, as careamics-napari wraps its docks."""
from __future__ import annotations

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea


class VerticalScroll(QScrollArea):
    """Scrolls its widget vertically: as wide as the widget needs (no horizontal scrolling,
    nothing cut off at the right), as little height as a scroll area needs."""

    def __init__(self, widget):
        super().__init__()
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarAsNeeded)
        self.setFrameShape(QFrame.NoFrame)
        self.setWidget(widget)

    def minimumSizeHint(self):  # noqa: N802 (Qt's name)
        hint = super().minimumSizeHint()
        inner = self.widget().minimumSizeHint().width() if self.widget() is not None else 0
        return QSize(max(hint.width(), inner + self.verticalScrollBar().sizeHint().width()), hint.height())

