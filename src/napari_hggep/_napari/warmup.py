"""The canvas's text drawn ahead of need: napari renders each character of a text on the canvas
(a caption, a colour bar's ticks, map titles) into its glyph atlas the first time it is drawn,
about 10 ms a character on 2 cores, which made the first result's draw freeze the window for
0.4 s. A dock renders the characters it will use a few at a time, in idle event-loop turns after
it opens. napari keeps the atlas in its canvas (``font_info.font_manager``); where a napari
version has it elsewhere, nothing is warmed and nothing else changes."""
from __future__ import annotations

import string

CHARS = string.ascii_letters + string.digits + " .,:;-+–−·()[]%/?=<>_'µ⚠≥≤×"
TURN_S = 0.025  # at most this long per event-loop turn


def warm_up_canvas_text(viewer, delay_ms: int = 100) -> None:
    """Render :data:`CHARS` into the canvas's glyph atlas, a few per idle event-loop turn (at most
    :data:`TURN_S` each)."""
    import time
    import warnings

    try:
        real = getattr(viewer, "__wrapped__", viewer)  # a plugin's viewer is napari's public-only proxy
        with warnings.catch_warnings():  # napari warns that _qt_viewer is private
            warnings.simplefilter("ignore")
            info = real.window._qt_viewer.canvas.font_info
        info = info() if callable(info) else info  # a method in napari 0.9
        font = info.font_manager.get_font(info.face)
        done = font._glyphs
    except Exception:  # noqa: BLE001 (another napari: draw the glyphs when they are needed)
        return
    from qtpy.QtCore import QTimer

    todo = [c for c in CHARS if c not in done]

    def step():
        t0 = time.perf_counter()
        try:
            while todo and time.perf_counter() - t0 < TURN_S:
                c = todo.pop(0)
                if c not in done:
                    font[c]
        except Exception:  # noqa: BLE001 (a glyph napari cannot render: it draws what it can)
            return
        if todo:
            QTimer.singleShot(5, step)

    if todo:
        QTimer.singleShot(delay_ms, step)
