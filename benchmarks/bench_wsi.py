"""Whole-slide prediction: end-to-end spots/s and peak memory against the model-only rate.

    python benchmarks/bench_wsi.py [--spots 1000 10000 100000] [--pitch-um 50] [--device cpu]

For each size, the benchmark writes a tiled, zlib-compressed pyramidal TIFF at 0.5 um/px
(levels 1, 1/2, 1/4, 1/8) just large enough for that many spots on a 50 um hexagonal grid, then
runs ``napari-hggep predict IMAGE --spots CSV`` in a fresh process and reads its wall time and
peak RSS. The model-only rate (``encode`` + ``forward_tokens`` on random tensors, same process
kind and memory layout as ``predict``, same spot count up to 10,000) is measured beside it, so the ratio shows what reading,
statistics and writing cost. Needs a few GB of disk for 100,000 spots.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import child

UM = 0.5
TILE = 512


def _pattern(y0: int, x0: int, h: int, w: int, scale: float) -> np.ndarray:
    """H&E-like texture as a function of level-0 position (so pyramid levels agree)."""
    yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.float32) * scale
    nuc = (np.sin(xx * 0.9) * np.sin(yy * 0.8) > 0.6).astype(np.float32)
    stroma = 0.5 + 0.5 * np.sin(xx * 0.013 + np.sin(yy * 0.007) * 3)
    r = 230 - 90 * nuc - 30 * stroma
    g = 170 - 100 * nuc - 40 * stroma
    b = 210 - 60 * nuc - 20 * stroma
    return np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)


def write_slide(path: Path, side: int, levels: int = 4, um: float = UM) -> None:
    import tifffile

    def tiles(k):
        s = 2 ** k
        n = -(-side // s)
        for ty in range(0, n, TILE):
            for tx in range(0, n, TILE):
                yield _pattern(ty * s, tx * s, TILE, TILE, s)

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k in range(levels):
            n = -(-side // 2 ** k)
            kw = {"subifds": levels - 1, "metadata": {"axes": "YXS", "PhysicalSizeX": um, "PhysicalSizeY": um}} if k == 0 \
                else {"subfiletype": 1}
            tw.write(tiles(k), shape=(n, n, 3), dtype=np.uint8, tile=(TILE, TILE), compression="zlib",
                     photometric="rgb", **kw)


CHILD_PREDICT = """
import json, resource, sys, time
from napari_hggep.cli import main
t = time.perf_counter()
rc = main(["predict", sys.argv[1], "--spots", sys.argv[2], "-o", sys.argv[3], "--device", sys.argv[4]])
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""

CHILD_MODEL = """
import json, sys, time, torch
from napari_hggep import load_model
from napari_hggep.model.hggep import use_fast_inference_layout
b = load_model(device=sys.argv[2]); m = b.model; n = int(sys.argv[1]); dev = b.device
x = torch.rand(256, 3, 112, 112, device=dev)
if dev.type == "cpu":  # as predict runs it
    use_fast_inference_layout(m); x = x.contiguous(memory_format=torch.channels_last)
c = torch.rand(n, 2, device=dev) * (n ** 0.5) * 50
st = torch.randn(n, m.config.stats_features, device=dev) if m.config.stats_features else None
with torch.inference_mode():
    m.encode(x[:8])
    t = time.perf_counter()
    tok = torch.cat([m.encode(x) for _ in range(0, n, 256)])[:n] if m.config.image_path else None
    m.forward_tokens(tok, c, st)
    if dev.type == "cuda": torch.cuda.synchronize()
    dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "spots_per_s": n / dt}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spots", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--pitch-um", type=float, default=50.0)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    import pandas as pd

    from napari_hggep.data.tissue import hex_grid

    rows = []
    for n in a.spots:
        with tempfile.TemporaryDirectory() as tmp:
            side_um = np.sqrt(n * a.pitch_um ** 2 * np.sqrt(3) / 2)
            side = int(np.ceil(side_um / UM)) + 200
            img = Path(tmp) / "slide.ome.tif"
            t = time.perf_counter()
            write_slide(img, side)
            made = time.perf_counter() - t
            xy, rc = hex_grid(side, side, a.pitch_um / UM)
            xy = xy[:n]
            spots = Path(tmp) / "spots.csv"
            pd.DataFrame({"spot_id": [f"s{i}" for i in range(len(xy))], "x": xy[:, 0], "y": xy[:, 1]}).to_csv(
                spots, index=False)
            r = child(CHILD_PREDICT, img, spots, Path(tmp) / "pred.csv", a.device)
            model = child(CHILD_MODEL, min(len(xy), 10000), a.device)
            e2e = len(xy) / r["seconds"]
            rows.append({"spots": len(xy), "image_px": side, "tiff_gb": img.stat().st_size / 2**30,
                         "end_to_end_spots_per_s": round(e2e, 1), "seconds": round(r["seconds"], 1),
                         "peak_rss_gb": round(r["peak_rss_gb"], 2), "model_only_spots_per_s": round(model["spots_per_s"], 1),
                         "ratio": round(e2e / model["spots_per_s"], 2)})
            print(f"{len(xy):>7} spots, {side} px TIFF ({rows[-1]['tiff_gb']:.2f} GB, written in {made:.0f}s): "
                  f"end to end {e2e:.0f} spots/s ({r['seconds']:.1f}s), peak RSS {r['peak_rss_gb']:.2f} GB; "
                  f"model only {model['spots_per_s']:.0f} spots/s; ratio {e2e / model['spots_per_s']:.2f}", flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
