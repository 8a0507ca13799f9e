"""What File ▸ Open costs the viewer (issue 32): napari calls a plugin's reader on the GUI thread, so
whatever the reader decodes freezes the window. For each input, in a fresh process, this opens it
through the plugin and prints the longest GUI freeze (a 50 ms QTimer on the GUI thread, the largest
gap between its ticks, as ``../shared/tools/ui_probe.py`` measures it), the wall time of the open,
the process's peak RSS and how much it grew.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_open.py --make /tmp/lazybench
    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_open.py --data /tmp/lazybench

``--make DIR`` first writes the inputs (once): ``DIR/C3`` with ``python ../shared/tools/to_visium.py C3
DIR`` (a Space Ranger ``outs/`` and the full-resolution TIFF beside it, 9270 x 9936 px, one level),
and ``DIR/hdC3`` a Visium HD ``outs/`` (8 and 16 µm bins, ``tests/helpers.py: write_visium_hd``) over
the same H&E image with its full-resolution TIFF beside ``outs/``. Cases: ``sample`` (``open_sample``,
``he_spots``), ``visium`` (``DIR/C3/outs``), ``hd`` (``DIR/hdC3/outs``); ``--cases`` picks some.
The target is a freeze of at most 1.0 s for a folder with its full-resolution TIFF.

``--modes``: ``cold`` opens into a fresh viewer, so the figure includes napari's own one-time
costs of a process's first layer (its unit registry, pint, about 0.8 s, and its thumbnail's
``scipy.ndimage`` import, about 0.5 s, here); ``warm`` adds and removes a tiny image layer first,
so the figure is what the plugin's open costs; ``dock`` opens the Predict dock first, as
``../shared/tools/ui_probe.py --folder`` does. ``--src OLD/src`` runs the cases against another
source tree (e.g. ``git archive HEAD src | tar -x -C OLD``: the figures before a change).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CASES = ("sample", "visium", "hd")


def make_inputs(data: Path) -> None:
    """The Space Ranger and Visium HD folders the cases open (skipped when already there)."""
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "C3" / "outs" / "filtered_feature_bc_matrix.h5").is_file():
        subprocess.run([sys.executable, str(SHARED / "tools" / "to_visium.py"), "C3", str(data)], check=True)
    hd = data / "hdC3"
    if not (hd / "outs" / "binned_outputs" / "square_016um").is_dir():
        import numpy as np
        from PIL import Image

        sys.path.insert(0, str(ROOT / "tests"))
        from helpers import write_visium_hd

        Image.MAX_IMAGE_PIXELS = None
        im = Image.open(SHARED / "data" / "her2st" / "C3" / "he.jpg").convert("RGB")
        img = np.asarray(im)
        h, w = img.shape[:2]
        grey = np.asarray(im.resize((w // 16, h // 16))).mean(axis=-1)  # bins in tissue where the scan is not glass

        def tissue(x, y):
            return grey[min(int(y) // 16, grey.shape[0] - 1), min(int(x) // 16, grey.shape[1] - 1)] < 215

        write_visium_hd(hd, img, mpp=0.6876, bins=(8, 16), hires_scalef=2000 / max(h, w),
                        lowres_scalef=600 / max(h, w), tissue=tissue)
        im.save(hd / "hdC3_fullres.tif", compression="tiff_deflate")  # beside outs/, as to_visium.py writes it


CHILD = r"""
import json, resource, sys, time
case, path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
import napari
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

viewer = napari.Viewer(show=True)
app = QApplication.instance()
viewer.window._qt_window.resize(1600, 1000)
ticks = []
timer = QTimer(); timer.timeout.connect(lambda: ticks.append(time.perf_counter())); timer.start(50)

def pump(s):
    t = time.perf_counter()
    while time.perf_counter() - t < s:
        app.processEvents(); time.sleep(0.005)

rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GB (ru_maxrss is in kB on Linux)
import napari_hggep._napari.reader  # noqa: F401  (the plugin's import is not what is measured)
if mode == "warm":  # napari's one-time costs of a first layer, paid before the open
    import numpy as np
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="warm-up")
    viewer.add_points(np.zeros((1, 2)), name="warm-up points")
    pump(0.5)
    viewer.layers.clear()
elif mode == "dock":
    viewer.window.add_plugin_dock_widget("napari-hggep", "Predict gene expression")
pump(1.0)
m0 = rss()
t0 = time.perf_counter(); ticks.append(t0)
if case == "sample":
    layers = viewer.open_sample("napari-hggep", "he_spots")
else:
    layers = viewer.open(path, plugin="napari-hggep")
t_open = time.perf_counter() - t0
pump(2.0)  # napari draws the layers: any decoding it does of them counts too
ts = [t0] + [t for t in ticks if t >= t0] + [time.perf_counter()]
worst = max(b - a for a, b in zip(ts, ts[1:]))
img = next((ly for ly in viewer.layers if ly.__class__.__name__ == "Image"), None)
data = None if img is None else (img.data[0] if img.multiscale else img.data)
print(json.dumps({"case": case, "mode": mode, "open_s": t_open, "freeze_s": worst, "peak_rss_gb": rss(), "rss_growth_gb": rss() - m0,
                  "layers": [ly.name for ly in viewer.layers],
                  "image": None if img is None else f"{type(data).__name__} {tuple(int(s) for s in data.shape)}"
                                                    + (f", {len(img.data)} levels" if img.multiscale else "")}))
"""


def run_case(case: str, data: Path, mode: str = "cold", src: Path | None = None) -> dict:
    import os

    path = {"sample": "", "visium": data / "C3" / "outs", "hd": data / "hdC3" / "outs"}[case]
    env = dict(os.environ)
    if src is not None:  # another source tree of the package before the installed one
        env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([sys.executable, "-c", CHILD, case, str(path), mode], capture_output=True, text=True,
                         cwd=ROOT, env=env)
    if out.returncode:
        raise RuntimeError(f"{case}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/lazybench"), help="where the folders are")
    ap.add_argument("--make", type=Path, help="write the folders here first (then read from here)")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    ap.add_argument("--modes", nargs="*", default=["cold", "warm"], choices=("cold", "warm", "dock"))
    ap.add_argument("--src", type=Path, help="a source tree (its src/) to import the package from instead")
    ap.add_argument("--repeat", type=int, default=1, help="fresh processes per case (the worst freeze is printed)")
    args = ap.parse_args()
    data = args.make or args.data
    if args.make:
        make_inputs(args.make)
    print(f"package from {(args.src or ROOT / 'src').resolve()}", flush=True)
    for case in args.cases:
        for mode in args.modes:
            runs = [run_case(case, data, mode, args.src) for _ in range(max(1, args.repeat))]
            r = max(runs, key=lambda r: r["freeze_s"])
            print(f"{case:<7} {mode:<5} open {r['open_s']:5.2f} s   longest GUI freeze {r['freeze_s']:5.2f} s   "
                  f"peak RSS {r['peak_rss_gb']:5.2f} GB (+{r['rss_growth_gb']:.2f} GB during the open)   "
                  f"image: {r['image']}" + (f"   freezes of {len(runs)} runs: "
                                            + ", ".join(f"{x['freeze_s']:.2f}" for x in runs) if len(runs) > 1 else ""),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
