"""How responsive napari stays while the plugin works: the longest GUI freeze (a 50 ms QTimer on
the GUI thread, the gaps between its ticks) and the peak memory, for each step a user takes.

Run in a fresh process under Xvfb, from the project's root (the steps share one process, so the
first Predict pays for torch's import, in the background since the dock opened):

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_gui.py
    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_gui.py --folder OUTS   # a Space Ranger outs/
    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_gui.py --folder HD_OUTS --bins 16 8

``OUTS`` e.g. from ``python ../shared/tools/to_visium.py C3 DIR`` (then ``DIR/C3/outs``). Each line
prints the step, its wall time, the longest freeze and where it was (seconds after the step began),
and the process's peak RSS so far.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, help="a Space Ranger / Visium HD outs/ folder (default: the sample)")
    ap.add_argument("--bins", type=int, nargs="*", default=[], help="Visium HD bin sizes to switch to, in turn")
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()

    t_start = time.perf_counter()
    import napari
    from _common import FreezeClock
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.window._qt_window.resize(1600, 1000)
    clock = FreezeClock(app)
    pump = clock.pump

    def report(step: str, t0: float) -> None:
        worst, at = clock.longest(t0, at=True)
        ts = [time.perf_counter()]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{step:<44} {ts[-1] - t0:7.1f} s   longest freeze {worst:5.2f} s (at +{at:5.1f} s)   peak RSS {rss:5.2f} GB",
              flush=True)

    def step(name: str, action, until=None, settle: float = 1.0) -> None:
        t0 = time.perf_counter()
        clock.ticks.append(t0)
        action()
        while until is not None and not until() and time.perf_counter() - t0 < args.timeout:
            app.processEvents()
            time.sleep(0.005)
        pump(settle)
        report(name, t0)

    print(f"napari started in {time.perf_counter() - t_start:.1f} s", flush=True)
    holder = {}
    step("add the Predict dock", lambda: holder.update(
        w=viewer.window.add_plugin_dock_widget("napari-hggep", "Predict gene expression")[1]))
    w = holder["w"]
    if args.folder is None:
        step("open the sample", lambda: viewer.open_sample("napari-hggep", "he_spots"))
    else:
        step(f"File > Open {args.folder.parent.name}/{args.folder.name}",
             lambda: viewer.open(str(args.folder), plugin="napari-hggep"))

    def predict(label):
        step(label, w.run, until=lambda: w.worker is None, settle=1.5)  # the worker starts in run()
        print(f"    {w.status.value[:160]}", flush=True)

    predict("Predict (first: torch's import in the background)")
    predict("Predict again")
    for b in args.bins:
        choice = f"{b} µm"
        step(f"switch to {choice} bins", lambda c=choice: setattr(w.bins, "value", c))
        predict(f"Predict on {choice} bins")
    w.um_per_px.value = "0.05"
    step("Predict with 0.05 typed as µm per pixel", w.run)
    print(f"    {w.status.value[:160]}", flush=True)
    clock.timer.stop()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
