"""Regenerate the README's screenshot from today's dock: the sample section predicted with the
bundled model, the Predict dock beside the canvas, in a 1600x1000 window.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot.py [docs/screenshot.png]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


def main(out: str = "docs/screenshot.png") -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-hggep")
    viewer.window._qt_window.resize(1600, 1000)
    app = QApplication.instance()
    viewer.open_sample("napari-hggep", "he_spots")
    _, w = viewer.window.add_plugin_dock_widget("napari-hggep", "Predict gene expression")
    w.run()
    t = time.time()
    while w.worker is not None and time.time() - t < 600:
        app.processEvents()
        time.sleep(0.02)
    if w.result.value is None:
        print(f"screenshot: no prediction: {w.status.value}", file=sys.stderr)
        return 1
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(out, canvas_only=False)
    print(f"wrote {out}: {w.status.value}", file=sys.stderr)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
