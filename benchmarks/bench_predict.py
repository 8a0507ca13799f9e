"""End-to-end ``napari-hggep predict`` on a Visium-sized slide, and patch reading speed.

    python benchmarks/bench_predict.py [--image ../shared/data/her2st/B4/he.jpg] [--pitch-um 100]

A 100 um hexagonal grid (the Visium pitch) over a whole 6.8 x 6.4 mm HER2+ section gives
about 5,000 spots, the size of a Visium capture area. Prints the CLI's wall time (read
image, read spots, patches, model, CSV), and patches/s of the reader alone against the
model's own throughput so one can see which is the bottleneck.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import add_slide_args


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    add_slide_args(ap)
    a = ap.parse_args(argv)
    from napari_hggep.cli import main as cli
    from napari_hggep.data.image import read_image
    from napari_hggep.data.patches import extract_patches
    from napari_hggep.data.slide import Slide
    from napari_hggep.data.tissue import hex_grid

    img = read_image(a.image)
    h, w = img.shape[:2]
    xy, rc = hex_grid(w, h, a.pitch_um / a.um_per_px)
    with tempfile.TemporaryDirectory() as tmp:
        spots = Path(tmp) / "spots.csv"
        pd.DataFrame({"spot_id": [f"s{i}" for i in range(len(xy))], "x": xy[:, 0], "y": xy[:, 1],
                      "array_row": rc[:, 0], "array_col": rc[:, 1]}).to_csv(spots, index=False)
        out = Path(tmp) / "pred.csv"
        t = time.perf_counter()
        rc_ = cli(["predict", a.image, "--spots", str(spots), "--um-per-px", str(a.um_per_px), "-o", str(out),
                   "--device", "cpu"])
        total = time.perf_counter() - t
        assert rc_ == 0
        size_mb = out.stat().st_size / 2**20
    print(f"\npredict end to end: {len(xy)} spots, image {w}x{h} px: {total:.1f} s "
          f"({len(xy) / total:.0f} spots/s; CSV {size_mb:.0f} MB)  target: <= 60 s")
    slide = Slide(image=img, um_per_px=a.um_per_px, spot_ids=np.arange(len(xy)).astype(str), xy=xy)
    t = time.perf_counter()
    for s in range(0, len(xy), 256):
        extract_patches(slide, 70.5, 112, np.arange(s, min(s + 256, len(xy))))
    dt = time.perf_counter() - t
    print(f"patch reading alone: {len(xy) / dt:.0f} patches/s ({dt:.1f} s for all, {100 * dt / total:.0f}% of the run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
