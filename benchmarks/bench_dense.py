"""Dense grids (Visium HD bins): end-to-end bins/s, model-only rate and peak RSS, with the
shared trunk against the per-patch path.

    python benchmarks/bench_dense.py [--bins 16 8] [--tissue-mm2 12.4] [--subset 12000] [--device cpu]
                                     [--profile PROFILE.txt]

The layout: a Visium HD capture area (6.5 mm a side) as a tiled, zlib-compressed pyramidal TIFF at
0.69 um/px (``bench_wsi.write_slide``'s H&E-like texture), and a Space Ranger 3 ``outs/`` folder
with 16 and 8 um bins, in tissue over a disc of ``--tissue-mm2`` (default 12.4 mm2: about the
48,000 16 um bins of an HER2+ section). For each bin size:

* **end to end**: ``napari-hggep predict FULLRES.tif --visium OUTS --bin-um B -o out.h5ad`` in a
  fresh process (shared trunk chosen automatically): wall time, bins/s, peak RSS;
* **same run, same process, on a subset** (the ``--subset`` bins nearest the centre): the
  per-patch path (``shared_trunk="off"``) and the shared trunk (``"on"``) through
  ``predict_slide``: bins/s of each and their ratio, and the image encoding alone (tokens)
  for each; the per-patch rate on the whole slide is this subset's rate (extrapolated);
* **model only**, on the subset: the shared trunk on the subset's tiles (random pixels),
  the sampling and projection, and ``forward_tokens`` (random statistics).

``--breakdown`` times each phase of the end-to-end prediction (wall seconds per phase, helper
threads apart). ``--profile FILE`` also runs the first bin size's end-to-end prediction under cProfile and
writes the top functions (cumulative and internal time) to FILE.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import child
from bench_wsi import _pattern, write_slide

UM = 0.69
CAPTURE_MM = 6.5

CHILD_PREDICT = """
import json, resource, sys, time
from napari_hggep.cli import main
t = time.perf_counter()
rc = main(["predict", sys.argv[1], "--visium", sys.argv[2], "--bin-um", sys.argv[3], "-o", sys.argv[4],
           "--device", sys.argv[5], "--shared-trunk", sys.argv[6]])
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""

CHILD_PROFILE = """
import cProfile, io, json, pstats, sys, time
from napari_hggep.cli import main
prof = cProfile.Profile()
t = time.perf_counter()
prof.enable()
rc = main(["predict", sys.argv[1], "--visium", sys.argv[2], "--bin-um", sys.argv[3], "-o", sys.argv[4],
           "--device", sys.argv[5]])
prof.disable()
dt = time.perf_counter() - t
out = io.StringIO()
st = pstats.Stats(prof, stream=out)
st.sort_stats("cumulative").print_stats(45)
st.sort_stats("tottime").print_stats(30)
open(sys.argv[6], "w").write(f"end to end {dt:.1f} s under cProfile (main thread; threads show as waits)\\n" + out.getvalue())
print(json.dumps({"rc": rc, "seconds": dt}))
"""

CHILD_BREAKDOWN = """
import collections, functools, json, resource, sys, threading, time
import torch
T = collections.defaultdict(float); C = collections.Counter()
def wrap(obj, name, label):
    f = getattr(obj, name)
    @functools.wraps(f)
    def g(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            side = "" if threading.current_thread() is threading.main_thread() else " (thread)"
            T[label + side] += time.perf_counter() - t; C[label + side] += 1
    setattr(obj, name, g)
import napari_hggep.inference.dense as D, napari_hggep.data.features as F, napari_hggep.model.hggep as H
import napari_hggep.model.hypergraph as HG, napari_hggep.model.transformer as TR, napari_hggep.model.reliability as R
import napari_hggep.io.writers.export as E
for obj, name, label in ((D, "read_tile", "read tiles"), (H.HGGEP, "trunk", "trunk (GEM + ShuffleNet on tiles)"),
                         (D, "sample_maps", "sample stage maps per bin"),
                         (H.HGGEP, "project_points", "CBAM + pooling + projection per bin"),
                         (F, "tissue_features", "tissue statistics"), (H.HGGEP, "forward_tokens", "forward_tokens (all)"),
                         (TR.SpotTransformer, "forward", "  transformers"), (HG.HAM, "forward", "  hypergraph (HAM)"),
                         (torch.nn.LSTM, "forward", "  LSTM fusion"), (H, "neighbour_blend", "  neighbour blending"),
                         (R, "assess", "reliability (spread, verdict)"), (E, "write_prediction", "write .h5ad")):
    wrap(obj, name, label)
from napari_hggep.cli import main
t = time.perf_counter()
rc = main(["predict", sys.argv[1], "--visium", sys.argv[2], "--bin-um", sys.argv[3], "-o", sys.argv[4],
           "--device", sys.argv[5]])
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t, "phases": dict(T), "calls": dict(C),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""

CHILD_SUBSET = """
import json, sys, time, warnings
import numpy as np, torch
warnings.filterwarnings("ignore")
from napari_hggep import load_model
from napari_hggep.io.readers.open import open_slide
from napari_hggep.inference.dense import iter_shared_tokens, plan_tiles, sample_maps, footprints, STRIDES
from napari_hggep.inference.dense import DENSE_WINDOW_OVERLAP, DENSE_WINDOW_SPOTS
from napari_hggep.devices import MemoryGuard
from napari_hggep.model.hggep import use_fast_inference_layout
from napari_hggep.inference.predict import predict_slide, _patch_tokens

tif, outs, bin_um, k, device = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
b = load_model(device=device); m = b.model.eval(); dev = b.device
full = open_slide(tif, visium=outs, bin_um=bin_um)
c = full.coords_um
keep = np.argsort(((c - c.mean(0)) ** 2).sum(1))[:k]
s = full.subset(np.sort(keep)); n = s.n_spots
s.info.tissue_checked = True
res = {"subset_bins": n}
def timed(fn):
    t = time.perf_counter(); out = fn()
    if dev.type == "cuda": torch.cuda.synchronize()
    return out, time.perf_counter() - t
predict_slide(b, s.subset(np.arange(min(n, 300))), shared_trunk="on")  # warm up
for mode in ("off", "on"):
    _, dt = timed(lambda: predict_slide(b, s, shared_trunk=mode))
    res[f"predict_{mode}_bins_per_s"] = n / dt
fast = dev.type == "cpu"
if fast:
    use_fast_inference_layout(m)
g = MemoryGuard(m, 256)
with torch.inference_mode():
    _, dt = timed(lambda: [t for t in _patch_tokens(m, s, g, None, fast, 256)])
    res["encode_off_bins_per_s"] = n / dt
    _, dt = timed(lambda: [t for t in iter_shared_tokens(m, s, g, None, fast)])
    res["encode_on_bins_per_s"] = n / dt
    # model only: the shared trunk on the subset's tiles (random pixels), sampling, projection, forward_tokens
    level, side, origins, tiles = plan_tiles(s, m.config.patch_um, m.config.patch_px)
    P = m.config.patch_px; cells = [int(np.ceil(P / st)) for st in STRIDES]
    f = P / side
    shapes = [(max(round((bx[3] - bx[1]) * f), 1), max(round((bx[2] - bx[0]) * f), 1)) for _, bx in tiles]
    coords = torch.from_numpy(s.coords_um.astype(np.float32)).to(dev)
    stats = torch.randn(n, m.config.stats_features, device=dev) if m.config.stats_features else None
    def model_only():
        toks = []
        for (idx, bx), (h, w) in zip(tiles, shapes):
            x = torch.rand(1, 3, h, w, device=dev)
            if fast:
                x = x.contiguous(memory_format=torch.channels_last)
            maps = m.trunk(x)
            fp = torch.from_numpy(footprints(origins[idx], bx, side, P, w / (bx[2] - bx[0]), h / (bx[3] - bx[1])))
            for i in range(0, len(idx), 512):
                sampled = [(sample_maps(mp, fp[i:i + 512], st, cc), cc, cc) for mp, st, cc in zip(maps, STRIDES, cells)]
                toks.append(m.project_points(sampled))
        tok = torch.cat(toks)
        return m.forward_tokens(tok, coords, stats, zinb=False, window_spots=DENSE_WINDOW_SPOTS,
                                window_overlap=DENSE_WINDOW_OVERLAP)
    _, dt = timed(model_only)
    res["model_only_bins_per_s"] = n / dt
    _, dt = timed(lambda: m.forward_tokens(torch.randn(n, 3, m.config.dim, device=dev), coords, stats, zinb=False,
                                           window_spots=DENSE_WINDOW_SPOTS, window_overlap=DENSE_WINDOW_OVERLAP))
    res["forward_tokens_bins_per_s"] = n / dt
print(json.dumps(res))
"""


def write_hd(root: Path, tif_side: int, bins=(16, 8), tissue_mm2: float = 12.4) -> Path:
    """A Space Ranger 3 Visium HD ``outs/`` (positions parquet, scale factors, small PNGs) over the
    TIFF, bins in tissue over a central disc of ``tissue_mm2``."""
    import pandas as pd
    from PIL import Image

    outs = root / "outs"
    r_px = np.sqrt(tissue_mm2 * 1e6 / np.pi) / UM
    centre = tif_side / 2
    pngs = {}
    for kind, s in (("hires", 0.1), ("lowres", 0.03)):
        n = max(1, round(tif_side * s))
        pngs[kind] = (Image.fromarray(_pattern(0, 0, n, n, 1 / s)), s)
    base = {"microns_per_pixel": UM, "tissue_hires_scalef": 0.1, "tissue_lowres_scalef": 0.03,
            "regist_target_img_scalef": 0.1, "fiducial_diameter_fullres": 100.0}
    (outs / "spatial").mkdir(parents=True, exist_ok=True)
    for kind, (im, _) in pngs.items():
        im.save(outs / "spatial" / f"tissue_{kind}_image.png")
    json.dump({**base, "bin_size_um": 2.0, "spot_diameter_fullres": 2.0 / UM},
              open(outs / "spatial" / "scalefactors_json.json", "w"))
    for b in bins:
        sp = outs / "binned_outputs" / f"square_{b:03d}um" / "spatial"
        sp.mkdir(parents=True, exist_ok=True)
        side = b / UM
        n = int(tif_side // side)
        rr, cc = np.mgrid[0:n, 0:n]
        rr, cc = rr.ravel(), cc.ravel()
        x, y = (cc + 0.5) * side, (rr + 0.5) * side
        inside = ((x - centre) ** 2 + (y - centre) ** 2 < r_px ** 2).astype(int)
        barcode = np.char.add(np.char.add(np.char.add(f"s_{b:03d}um_", np.char.zfill(rr.astype(str), 5)), "_"),
                              np.char.add(np.char.zfill(cc.astype(str), 5), "-1"))
        pd.DataFrame({"barcode": barcode, "in_tissue": inside, "array_row": rr, "array_col": cc,
                      "pxl_row_in_fullres": y, "pxl_col_in_fullres": x}).to_parquet(
            sp / "tissue_positions.parquet", index=False)
        json.dump({**base, "bin_size_um": float(b), "spot_diameter_fullres": side},
                  open(sp / "scalefactors_json.json", "w"))
    return outs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bins", type=int, nargs="+", default=[16, 8], choices=[8, 16])
    ap.add_argument("--tissue-mm2", type=float, default=12.4)
    ap.add_argument("--capture-mm", type=float, default=CAPTURE_MM)
    ap.add_argument("--subset", type=int, default=12000, help="bins of the per-patch / model-only comparison")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--profile", help="cProfile the first bin size end to end; the breakdown goes to this file")
    ap.add_argument("--skip-subset", action="store_true", help="end to end only")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time each phase (wall seconds, main thread and helper threads apart) end to end")
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        side = int(np.ceil(a.capture_mm * 1000 / UM))
        tif = tmp / "fullres.ome.tif"
        t = time.perf_counter()
        write_slide(tif, side, um=UM)
        outs = write_hd(tmp / "hd", side, tuple(a.bins), a.tissue_mm2)
        print(f"{side} px TIFF at {UM} um/px ({tif.stat().st_size / 2**30:.2f} GB) and HD folder written in "
              f"{time.perf_counter() - t:.0f}s; load average {os.getloadavg()[0]:.2f}", flush=True)
        if a.profile:
            r = child(CHILD_PROFILE, tif, outs, a.bins[0], tmp / "prof.h5ad", a.device, Path(a.profile).resolve())
            print(f"profile of {a.bins[0]} um end to end ({r['seconds']:.1f}s under cProfile) -> {a.profile}", flush=True)
        for b in a.bins:
            load0 = os.getloadavg()[0]
            r = child(CHILD_PREDICT, tif, outs, b, tmp / f"pred_{b}.h5ad", a.device, "auto")
            import pandas as pd

            pos = pd.read_parquet(outs / "binned_outputs" / f"square_{b:03d}um" / "spatial" / "tissue_positions.parquet")
            n = int(pos["in_tissue"].sum())
            row = {"bin_um": b, "bins": n, "seconds": round(r["seconds"], 1),
                   "end_to_end_bins_per_s": round(n / r["seconds"], 1), "ms_per_bin": round(1000 * r["seconds"] / n, 3),
                   "peak_rss_gb": round(r["peak_rss_gb"], 2), "load_avg_before": round(load0, 2),
                   "load_avg_after": round(os.getloadavg()[0], 2)}
            print(f"{b:>2} um: {n} bins end to end in {r['seconds']:.1f}s = {row['end_to_end_bins_per_s']:.0f} bins/s "
                  f"({row['ms_per_bin']:.3f} ms/bin), peak RSS {row['peak_rss_gb']:.2f} GB; load average "
                  f"{load0:.2f} -> {row['load_avg_after']:.2f}", flush=True)
            if not a.skip_subset:
                s = child(CHILD_SUBSET, tif, outs, b, a.subset, a.device)
                row.update({k: (round(v, 1) if isinstance(v, float) else v) for k, v in s.items()})
                row["subset_speedup_shared_vs_per_patch"] = round(s["predict_on_bins_per_s"] / s["predict_off_bins_per_s"], 2)
                row["encode_speedup_shared_vs_per_patch"] = round(s["encode_on_bins_per_s"] / s["encode_off_bins_per_s"], 2)
                row["per_patch_end_to_end_s_extrapolated"] = round(n / s["predict_off_bins_per_s"], 1)
                print(f"    subset of {s['subset_bins']} central bins, same process: predict per-patch "
                      f"{s['predict_off_bins_per_s']:.0f} bins/s, shared {s['predict_on_bins_per_s']:.0f} bins/s "
                      f"(x{row['subset_speedup_shared_vs_per_patch']}); encode per-patch {s['encode_off_bins_per_s']:.0f}, "
                      f"shared {s['encode_on_bins_per_s']:.0f} bins/s (x{row['encode_speedup_shared_vs_per_patch']}); "
                      f"model only {s['model_only_bins_per_s']:.0f} bins/s (forward_tokens alone "
                      f"{s['forward_tokens_bins_per_s']:.0f}); per-patch on all {n} bins ~"
                      f"{row['per_patch_end_to_end_s_extrapolated']:.0f}s (extrapolated)", flush=True)
            if a.breakdown:
                r = child(CHILD_BREAKDOWN, tif, outs, b, tmp / f"pred_{b}.h5ad", a.device)
                row["breakdown_s"] = {k: round(v, 1) for k, v in r["phases"].items()}
                print(f"    where the time goes ({r['seconds']:.1f}s end to end, timed per phase; threads overlap the "
                      f"main thread):", flush=True)
                for k, v in sorted(r["phases"].items(), key=lambda kv: -kv[1]):
                    print(f"      {k:45s} {v:6.1f}s  ({r['calls'][k]} calls)", flush=True)
            rows.append(row)
    if len(rows) == 2 and {r["bin_um"] for r in rows} == {8, 16}:
        r16, r8 = sorted(rows, key=lambda r: -r["bin_um"])
        print(f"time per bin at 8 um / at 16 um: {r8['ms_per_bin'] / r16['ms_per_bin']:.2f}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
