"""Attention windows on a dense grid: time of the slide-level part (``forward_tokens``) and how far
its output moves, against one window holding every spot.

    python benchmarks/bench_windows.py [--pitch-um 16] [--windows 4096:0.25 1024:0.125 512:0.125 256:0.125]

The sample section (HER2+ B4, shipped in the package) on a hexagonal grid at ``--pitch-um``; its
patch tokens (shared trunk) and tissue statistics are computed once, then ``forward_tokens`` runs
with each ``SPOTS:OVERLAP`` window setting. Printed per setting: seconds, the mean / min per-gene
PCC of the predicted maps, and of the image path's own output (its head before the statistics
branch is added), each against one window of all spots; and the image path's share of the maps'
variance. The figures behind ``napari_hggep.inference.dense.DENSE_WINDOW_SPOTS``.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np


def gene_pcc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return p[np.isfinite(p)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pitch-um", type=float, default=16.0)
    ap.add_argument("--windows", nargs="+", default=["4096:0.25", "1024:0.125", "512:0.125", "256:0.125"])
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    from napari_hggep import load_model
    from napari_hggep._napari.sample import sample_slide
    from napari_hggep.data.features import standardise_features, tissue_features
    from napari_hggep.io.readers.open import grid_slide
    from napari_hggep.inference.dense import iter_shared_tokens
    from napari_hggep.devices import MemoryGuard

    bundle = load_model(device="cpu")
    m, cfg = bundle.model.eval(), bundle.config
    sample = sample_slide()
    s = grid_slide(sample.image, sample.um_per_px, a.pitch_um, name="B4", source=sample.source)
    n = s.n_spots
    tokens = torch.empty(n, 3, cfg.dim)
    with torch.inference_mode():
        for idx, tok in iter_shared_tokens(m, s, MemoryGuard(m, 256), None, True):
            tokens[torch.from_numpy(idx)] = tok
        stats = torch.from_numpy(standardise_features(tissue_features(s, cfg.context_um, cfg.stats_um_per_px)))
        coords = torch.from_numpy(s.coords_um.astype(np.float32))

        def run(spots, overlap):
            t = time.perf_counter()
            out = m.forward_tokens(tokens, coords, stats, zinb=False, window_spots=spots, window_overlap=overlap)
            dt = time.perf_counter() - t
            return out["expr"].numpy(), (m.head(out["embedding"]) @ m.pca_basis).numpy(), dt

        ref, ref_img, dt = run(n, None)
        print(f"{n} spots at a {a.pitch_um:g} um pitch; one window of all: {dt:.1f}s; the image path's share "
              f"of the maps' variance {ref_img.var(0).sum() / ref.var(0).sum():.1e}", flush=True)
        for w in a.windows:
            spots, overlap = w.split(":")
            expr, img, dt = run(int(spots), float(overlap))
            p, q = gene_pcc(expr, ref), gene_pcc(img, ref_img)
            print(f"windows of {spots} spots, margin {overlap}: {dt:5.1f}s; maps PCC mean {p.mean():.5f} min "
                  f"{p.min():.5f}; image path PCC mean {q.mean():.3f} min {q.min():.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
