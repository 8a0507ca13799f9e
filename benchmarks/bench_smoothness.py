"""How much smoother predicted maps are than measured expression: Moran's I (6 nearest
neighbours, row-standardised) of the prediction and of the same section's counts (target space),
per gene, on the HER2+ sections in ../shared (skips when absent).

    python benchmarks/bench_smoothness.py [SECTION ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "her2st"


def main(sections):
    from napari_hggep import load_model, open_slide, predict_slide
    from napari_hggep.training.metrics import morans_i

    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent")
        return
    bundle = load_model()
    for name in sections:
        pred = predict_slide(bundle, open_slide(DATA / name))
        meas = np.asarray(pred.measured.values.todense())
        has = pred.measured.has_counts
        ip, im = morans_i(pred.values[has], pred.xy[has]), morans_i(meas[has], pred.xy[has])
        ok = np.isfinite(ip) & np.isfinite(im)
        line = [f"{name} (the bundled model was trained on it): median Moran's I over {int(ok.sum())} genes, "
                f"predicted {np.median(ip[ok]):.2f} vs measured {np.median(im[ok]):.2f}; "
                f"predicted higher for {100 * np.mean(ip[ok] > im[ok]):.0f} % of genes"]
        for g in ("GNAS", "FN1", "ERBB2"):
            if g in pred.genes:
                j = pred.genes.index(g)
                line.append(f"{g} {ip[j]:.2f} vs {im[j]:.2f}")
        print("; ".join(line))


if __name__ == "__main__":
    main(sys.argv[1:] or ["B4", "C2", "C3", "C4", "C5"])
