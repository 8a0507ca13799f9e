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
    status: str = "Pick an image, then press Predict."  # the status line
    progress: tuple[int, int] = (0, 1)  # (done, total) of the job: the progress bar


@evented
@dataclass
class TrainDockState:
    """The Train dock's state: the sections listed, whether a run is going, whether a cancelled
    run can be resumed, the status line and the fraction done. The *Sections* list, the buttons,
    the Train/Resume text, the status and the progress bar follow its events."""

    rows: tuple = ()  # the labelled sections (:class:`~napari_hggep.io.readers.samples.SampleRow`)
    running: bool = False
    resumable: bool = False  # a cancelled run with today's options: the button says "Resume"
    status: str = ""
    done: float = 0.0  # fraction of the run done (0..1)
