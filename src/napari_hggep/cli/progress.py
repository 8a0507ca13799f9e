"""Progress on stderr: a one-line bar, the epochs of a training, a whole study job."""
from __future__ import annotations

import sys
import time


class Bar:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str, stream=sys.stderr):
        self.label, self.stream, self.t0, self.width = label, stream, time.time(), 0

    def __call__(self, done: int, total: int, extra: str = "") -> None:
        frac = done / total if total else 1.0
        bar = "#" * int(30 * frac)
        line = f"\r{self.label} [{bar:<30}] {done}/{total} {time.time() - self.t0:5.1f}s {extra}"
        self.stream.write(line.ljust(self.width))  # a shorter phase text leaves nothing of the last one
        self.width = len(line)
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def epoch_printer(total):
    """A progress bar over epochs that shows the loss and the validation PCC."""
    bar = Bar("train")

    def show(rec):
        if rec["epoch"] == 1:
            bar.t0 = time.time() - rec["seconds"]
        bar(rec["epoch"], total, f"loss {rec['loss']:.4f}  val PCC {rec['val_pcc']:.4f}")

    return show


class StudyBar:
    """One progress line for the whole study job (reading, held-out folds, final model)."""

    def __init__(self):
        self.bar, self.open = Bar("train"), False

    def __call__(self, ev) -> None:
        eta = ""
        el = time.time() - self.bar.t0
        if 0.02 < ev.done < 1:
            eta = f" ETA {el / ev.done - el:4.0f}s"
        self.bar(int(1000 * ev.done), 1000, ev.text[:90] + eta)
        self.open = ev.done < 1
