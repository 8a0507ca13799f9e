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
