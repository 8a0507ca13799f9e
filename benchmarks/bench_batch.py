"""Many slides: ``napari-hggep predict --out-dir`` over K copies of the sample section
(2 um/px, 100 um grid, ~1,100 spots each), one process against ``--workers N`` and
``torchrun --nproc_per_node=N`` (gloo), each in fresh processes, from cold. Prints slides/s and
the ratios against one process.

    python benchmarks/bench_batch.py [--slides 6] [--procs 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd, env) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slides", type=int, default=6)
    ap.add_argument("--procs", type=int, default=2)
    a = ap.parse_args(argv)
    from napari_hggep._napari.sample import SAMPLE_DIR

    um = __import__("json").loads((SAMPLE_DIR / "he_B4.json").read_text())["um_per_px"]
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as d:
        slides = Path(d) / "slides"
        slides.mkdir()
        for i in range(a.slides):
            shutil.copy(SAMPLE_DIR / "he_B4.jpg", slides / f"section{i}.jpg")
        base = ["predict", str(slides), "--grid", "--pitch-um", "100", "--um-per-px", str(um), "--device", "cpu"]
        cli = [sys.executable, "-m", "napari_hggep.cli"]
        runs = {
            "1 process": (cli + base + ["--out-dir", f"{d}/one"], {}),
            f"--workers {a.procs}": (cli + base + ["--out-dir", f"{d}/workers", "--workers", str(a.procs)], {}),
            f"torchrun x{a.procs}": ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                      f"--nproc_per_node={a.procs}", "-m", "napari_hggep.cli"]
                                     + base + ["--out-dir", f"{d}/torchrun"],
                                     {"OMP_NUM_THREADS": str(max(cores // a.procs, 1))}),
        }
        times = {name: timed(cmd, {**os.environ, **extra}) for name, (cmd, extra) in runs.items()}
    one = times["1 process"]
    print(f"{a.slides} slides of ~1,100 spots on {cores} cores:")
    for name, t in times.items():
        print(f"  {name:>14}: {t:6.1f} s, {a.slides / t:.2f} slides/s, {one / t:.2f}x one process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
