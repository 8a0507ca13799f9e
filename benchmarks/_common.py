"""Helpers shared by the benchmarks (run them as ``python benchmarks/<name>.py``)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DEFAULT_IMAGE = str(Path(__file__).resolve().parents[2] / "shared/data/her2st/B4/he.jpg")


def add_slide_args(ap) -> None:
    """``--image``, ``--um-per-px`` and ``--pitch-um``: a grid over a whole HER2+ section."""
    ap.add_argument("--image", default=DEFAULT_IMAGE)
    ap.add_argument("--um-per-px", type=float, default=0.6876)
    ap.add_argument("--pitch-um", type=float, default=100.0)


def child(code: str, *args) -> dict:
    """Run ``code`` in a fresh Python process; it prints one JSON object last."""
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


class FreezeClock:
    """A 50 ms QTimer on the GUI thread: the gaps between its ticks are how long the GUI froze.
    ``pump(s)`` runs the event loop for ``s`` seconds; ``longest(t0)`` is the longest gap since
    ``t0`` (with ``at``: and when it began, seconds after ``t0``)."""

    def __init__(self, app):
        import time

        from qtpy.QtCore import QTimer

        self.app, self.time = app, time
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start(50)

    def start(self) -> float:
        t0 = self.time.perf_counter()
        self.ticks.append(t0)
        return t0

    def pump(self, s: float) -> None:
        t = self.time.perf_counter()
        while self.time.perf_counter() - t < s:
            self.app.processEvents()
            self.time.sleep(0.005)

    def longest(self, t0: float, at: bool = False):
        ts = [t0] + [t for t in self.ticks if t >= t0] + [self.time.perf_counter()]
        worst, when = max((b - a, a - t0) for a, b in zip(ts, ts[1:]))
        return (worst, when) if at else worst
