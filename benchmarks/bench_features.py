"""Cost of the multi-scale tissue statistics against the rest of ``predict`` (target: <= 10 %).

    python benchmarks/bench_features.py [--image ../shared/data/her2st/B4/he.jpg] [--pitch-um 100]

A 100 um hexagonal grid over a whole HER2+ section (about 5,000 spots). Times, in one
process: the statistics of every spot alone (``tissue_features``); the whole
``predict_slide`` with the bundled model, which computes them in a thread beside the image
path; and the same with the statistics replaced by zeros (no cost). The difference of the last
two is what the statistics add to a prediction's wall time.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from _common import add_slide_args


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    add_slide_args(ap)
    a = ap.parse_args(argv)
    import torch

    from napari_hggep import load_model
    from napari_hggep.data.features import tissue_features
    from napari_hggep.data.image import read_image
    from napari_hggep.data.slide import Slide
    from napari_hggep.data.tissue import hex_grid
    from napari_hggep.inference.predict import predict_slide

    torch.set_num_threads(torch.get_num_threads())
    img = read_image(a.image)
    h, w = img.shape[:2]
    xy, _ = hex_grid(w, h, a.pitch_um / a.um_per_px)
    slide = Slide(image=img, um_per_px=a.um_per_px, spot_ids=np.arange(len(xy)).astype(str), xy=xy)
    bundle = load_model(device="cpu")
    cfg = bundle.config
    tissue_features(slide.subset(np.arange(10)), cfg.context_um, cfg.stats_um_per_px)  # warm up
    t = time.perf_counter()
    tissue_features(slide, cfg.context_um, cfg.stats_um_per_px)
    feat = time.perf_counter() - t
    import napari_hggep.data.features as features

    def timed() -> float:
        t = time.perf_counter()
        predict_slide(bundle, slide)
        return time.perf_counter() - t

    timed()  # warm up
    total = min(timed() for _ in range(2))
    real = features.tissue_features
    features.tissue_features = lambda s, *args, **kw: np.zeros((s.n_spots, cfg.stats_features), np.float32)
    try:
        without = min(timed() for _ in range(2))
    finally:
        features.tissue_features = real
    print(f"{len(xy)} spots over a {w}x{h} px image at {a.um_per_px} um/px")
    print(f"tissue statistics alone: {feat:.2f} s ({len(xy) / feat:.0f} spots/s)")
    print(f"predict_slide (bundled model, image path {'on' if cfg.image_path else 'off'}): {total:.2f} s "
          f"({len(xy) / total:.0f} spots/s); without the statistics: {without:.2f} s")
    print(f"statistics alone / predict: {100 * feat / total:.1f} %; what they add to predict's wall time: "
          f"{100 * (total - without) / total:.1f} %  (target <= 10 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
