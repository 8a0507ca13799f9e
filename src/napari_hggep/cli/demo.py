"""``napari-hggep demo``: napari with the sample slide, predicted on."""
from __future__ import annotations

from .checks import check_out_file


def cmd_demo(a) -> int:
    if a.screenshot:
        check_out_file(a.screenshot, "--screenshot")  # before napari starts
    from .._napari.demo import run_demo

    return run_demo(screenshot=a.screenshot, gene=a.gene)
