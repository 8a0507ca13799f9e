"""``napari-hggep demo``: napari with the sample slide, predicted on."""
from __future__ import annotations


def _cmd_demo(a) -> int:
    from .._napari.demo import run_demo

    return run_demo(screenshot=a.screenshot, gene=a.gene)
