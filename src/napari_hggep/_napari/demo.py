"""``napari-hggep demo``: the sample slide, the bundled model, a gene map."""
from __future__ import annotations

import sys


def run_demo(screenshot: str | None = None, gene: str | None = None, timeout_s: float = 300.0) -> int:
    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    viewer = napari.Viewer(title="napari-hggep demo")
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-hggep", "he_spots")
    _, widget = viewer.window.add_plugin_dock_widget("napari-hggep", "Predict gene expression")
    loop = QEventLoop()
    failed = []
    widget.run()
    if widget.worker is None:  # failed before starting
        print(f"napari-hggep demo: {widget.status.value}", file=sys.stderr)
        return 1
    widget.worker.errored.connect(lambda e: failed.append(e))
    widget.worker.finished.connect(loop.quit)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    if failed or widget.result.value is None:
        print(f"napari-hggep demo: {widget.status.value}", file=sys.stderr)
        return 1
    if gene:
        widget.gene_filter.value = gene
        if widget.gene.value != gene:
            print(f"napari-hggep demo: gene {gene!r} is not predicted by this model", file=sys.stderr)
            return 1
    print(f"napari-hggep demo: {widget.status.value} Coloured by {widget.gene.value}.", file=sys.stderr)
    if screenshot:
        viewer.reset_view()
        for _ in range(5):
            napari.qt.get_qapp().processEvents()
        viewer.screenshot(screenshot, canvas_only=False)
        print(f"napari-hggep demo: screenshot written to {screenshot}", file=sys.stderr)
        viewer.close()
        return 0
    napari.run()
    return 0
