"""Models trained in this session, offered to every Predict widget: the Train widget announces
a finished model (:func:`model_trained`); a Predict widget joins (:func:`register_predict_widget`)
and is offered every model trained so far, and later ones."""
from __future__ import annotations

import weakref

_PREDICT_WIDGETS: "weakref.WeakSet" = weakref.WeakSet()  # Predict widgets alive in this session
TRAINED_MODELS: dict[str, str] = {}  # models trained in this session: path -> label


def register_predict_widget(widget) -> None:
    """A Predict widget joins the session: it is offered every model trained so far (its Model box
    stays on the bundled model), and later ones (selected: the user just trained it)."""
    _PREDICT_WIDGETS.add(widget)
    for path, label in TRAINED_MODELS.items():
        _offer(widget, path, label, select=False)


def model_trained(path: str, label: str) -> None:
    TRAINED_MODELS[str(path)] = label
    for w in list(_PREDICT_WIDGETS):
        _offer(w, str(path), label)


def _offer(widget, path: str, label: str, select: bool = True) -> None:
    try:
        widget.add_model(path, label, select=select)
    except RuntimeError:  # its Qt side was deleted (the viewer closed): forget it
        _PREDICT_WIDGETS.discard(widget)
