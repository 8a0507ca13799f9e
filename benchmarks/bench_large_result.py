"""A Visium HD-sized result arriving in the Predict dock: the GUI freeze (a 50 ms QTimer on the GUI
thread, the gaps between its ticks) and the memory it adds, for a result drawn as points (before)
and as an image on the bin grid (now), in the same process.

The result is made here, not predicted (an 8 µm prediction of a whole section takes ~11 min on 2
cores): ``--bins`` square bins on their grid (default 193,783: the 8 µm bins of HER2+ section C3),
``--genes`` genes (default: the bundled model's 2,072) of float32 values, placed on an H&E-sized
image. The dock's own result handler (``_on_done``: the layer, the gene list, the first gene's
colours) runs on the GUI thread as after a real prediction; then a second gene is picked.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_large_result.py
    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_large_result.py --bins 48446   # 16 µm bins
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def make_prediction(n_bins: int, n_genes: int, bin_um: float = 8.0, um_per_px: float = 0.2738):
    """Square bins in a disc of tissue on their grid, with values that vary smoothly over it."""
    from napari_hggep.records import Prediction

    side = int(np.ceil(np.sqrt(n_bins / (np.pi / 4)))) + 2
    r, c = np.mgrid[0:side, 0:side]
    inside = (r - side / 2) ** 2 + (c - side / 2) ** 2 <= (side / 2) ** 2
    rr, cc = r[inside][:n_bins], c[inside][:n_bins]
    pitch = bin_um / um_per_px  # full-resolution pixels per bin
    xy = np.c_[cc, rr].astype(float) * pitch + 3 * pitch
    rng = np.random.default_rng(0)
    base = np.sin(rr / 17.0)[:, None] + np.cos(cc / 23.0)[:, None]
    values = (base * rng.random(n_genes, dtype=np.float32) + rng.random((len(rr), n_genes), dtype=np.float32)
              ).astype(np.float32)
    return Prediction(spot_ids=np.array([f"s_{i:06d}" for i in range(len(rr))]), xy=xy,
                      genes=[f"G{j:04d}" for j in range(n_genes)], values=values, array_rc=np.c_[rr, cc],
                      um_per_px=um_per_px, name="hd", spot_diameter_um=bin_um, spot_shape="square"), side, pitch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bins", type=int, default=193_783)
    ap.add_argument("--genes", type=int, default=2072)
    ap.add_argument("--only", choices=("points", "image"), help="one way only")
    ap.add_argument("--profile", action="store_true", help="print where the result's arrival spends its time")
    args = ap.parse_args()

    import logging

    import napari
    from _common import FreezeClock

    if args.profile:
        logging.basicConfig(level=logging.WARNING)
        logging.getLogger("napari_hggep").setLevel(logging.DEBUG)
    from qtpy.QtWidgets import QApplication

    from napari_hggep._napari import layers
    from napari_hggep._napari.layers import ImageLayerInfo, KEY, gene_ranges
    from napari_hggep._napari.predict_widget import PredictWidget

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.window._qt_window.resize(1600, 1000)
    pred, side, pitch = make_prediction(args.bins, args.genes)
    ranges = gene_ranges(pred.values)  # in the worker thread, after a real prediction
    down = 8  # the tissue image: a downscaled copy, as a Space Ranger hires PNG is
    h = w_px = int((side + 6) * pitch / down)
    # one tissue layer per way, so that no result layer is removed between them (napari 0.9.2 under
    # Mesa's llvmpipe can crash drawing a new layer after one whose colour bar was shown is removed)
    imgs = {k: viewer.add_image(np.full((h, w_px, 3), 220, np.uint8), rgb=True, name=f"hd {k}", scale=(down, down),
                                metadata={KEY: ImageLayerInfo(name=f"hd {k}", um_per_px=pred.um_per_px)})
            for k in ("points", "image", "image again")}
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    clock = FreezeClock(app)
    pump = clock.pump

    def measure(action) -> tuple[float, float, float]:
        pump(0.5)
        m0 = rss_gb()
        t0 = clock.start()
        action()
        pump(1.5)  # the first draws
        return clock.longest(t0), time.perf_counter() - t0 - 1.5, rss_gb() - m0

    from napari_hggep._napari.jobs import torch_ready

    while not torch_ready():  # the dock imports torch in the background; a result comes after that
        pump(0.2)
    print(f"{len(pred.spot_ids):,} square bins x {len(pred.genes):,} genes "
          f"({pred.values.nbytes / 2**30:.2f} GB of float32 values), grid {side} x {side}", flush=True)
    rows = {}
    for how, min_spots in (("points", 10**12), ("image on the bin grid", 1), ("image again", 1)):
        if args.only and not how.startswith(args.only):
            continue
        layers.BIN_IMAGE_MIN_SPOTS = min_spots
        img = imgs[" ".join(how.split()[:2]) if how == "image again" else how.split()[0]]
        name = f"{img.name} genes"
        for ly in viewer.layers:
            ly.visible = ly is img
        pump(0.5)
        def arrive_now():
            return w._on_done((pred, "cpu", None, ranges, 100), img, None)

        arrive = measure(arrive_now)
        kind = viewer.layers[name].__class__.__name__
        other = pred.genes[len(pred.genes) // 2]
        pick = measure(lambda: setattr(w.gene, "value", other))
        rows[how] = (arrive, pick)
        print(f"{how:<24} ({kind}): result arrives: longest freeze {arrive[0]:5.2f} s, +{arrive[2]:5.2f} GB; "
              f"another gene: longest freeze {pick[0]:5.2f} s", flush=True)
    if "points" not in rows or "image on the bin grid" not in rows:
        return 0
    (a0, p0), (a1, p1) = rows["points"], rows["image on the bin grid"]
    print(f"image / points: arrival freeze {a1[0] / a0[0]:.2f}x, gene change {p1[0] / p0[0]:.2f}x; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB", flush=True)
    clock.timer.stop()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
