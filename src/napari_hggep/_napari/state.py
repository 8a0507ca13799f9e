"""The Predict dock's state: one typed, evented object (psygnal's evented dataclass, as
careamics-napari keeps its docks' state in ``signals/``). The dock's boxes set it; what the dock
shows about the slide, the job and the result follows its events: the buttons and the busy line
from ``busy`` and ``confirm``, the pixel size, warnings and Space Ranger choices from ``image``,
the gene list from ``result``, the colours, caption, info line and measured view from ``gene``.
Layer insertions, removals and renames reach it through the boxes (napari resets their choices).
No layer data is kept here: the layers hold their own typed objects (:mod:`.layers`)."""
from __future__ import annotations

from dataclasses import dataclass

from psygnal import evented


@evented
@dataclass
class PredictDockState:
    image: object = None  # the image layer to predict on (None: no image open)
    spots: object = None  # the spots layer, or the "generate a grid" choice
    result: object = None  # the prediction layer shown
    gene: str | None = None  # the gene shown
    busy: str = ""  # what the dock is waiting for, in words ("" when idle)
    confirm: object = None  # a request whose cost awaits the user's word ("Predict anyway")
