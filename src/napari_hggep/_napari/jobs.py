"""A dock widget's job off the main thread, shared by the Predict and Train widgets: napari's
``thread_worker`` started with its signals wired to the widget (progress, result, error, cancel,
finish), errors said in the status line and as a notification, and the buttons reset however
the job ends. The worker never touches a layer."""
from __future__ import annotations


def import_torch_stack():
    """Import torch and friends, once (a no-op when imported already).

    Triton (pulled in by ``torch._dynamo``, which torch_geometric imports) bundles its own
    LLVM, which segfaults when loaded into a process whose OpenGL already loaded Mesa's
    llvmpipe LLVM (every software-rendered napari). Inference never compiles kernels, so
    inside napari torch is told triton is absent, unless something imported it already.
    """
    import sys

    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # makes `import triton` raise ImportError: torch treats it as missing
    import torch  # noqa: F401

    from ..model.hypergraph import hypergraph_conv

    hypergraph_conv()  # torch_geometric, with its torch.jit FutureWarning filtered
    from ..model import hggep  # noqa: F401


_warm_up = None  # the background thread importing torch (one per process)


def warm_up_torch() -> None:
    """Start importing torch and the model's libraries in a background thread, so that neither a
    dock's first job nor the GUI waits for the 3-5 s import: called when a dock opens. The thread
    first builds what napari loads on the first layer of a slide (its unit registry, scipy.ndimage),
    so a slide opened after the dock does not wait for it. A job calls :func:`wait_for_torch` first
    (in its worker thread)."""
    global _warm_up
    import sys
    import threading

    if _warm_up is not None or "torch" in sys.modules:
        return
    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # before any thread imports torch (see import_torch_stack)
    _warm_up = threading.Thread(target=_quiet_import, name="napari-hggep-import", daemon=True)
    _warm_up.start()


def _quiet_import():
    try:  # first what napari itself loads on the first layer a slide adds (~1 s on 2 cores)
        import pint
        import scipy.ndimage  # noqa: F401  (napari's thumbnails)

        pint.get_application_registry().pixel  # the unit registry, built on first use
    except Exception:  # napari loads them itself when it needs them
        pass
    try:
        import_torch_stack()
    except Exception:  # said by the job that needs it, when it imports again
        import logging

        logging.getLogger("napari_hggep").exception("importing torch in the background failed")


def torch_ready() -> bool:
    import sys

    return "torch" in sys.modules and (_warm_up is None or not _warm_up.is_alive())


def wait_for_torch() -> None:
    """Wait for the background import (in a job's worker thread), then import what is still missing."""
    if _warm_up is not None:
        _warm_up.join()
    import_torch_stack()


class JobError(Exception):
    """A RuntimeError from a job (a prediction, a training), re-raised as something else: superqt's
    generator worker takes a RuntimeError for "the worker was deleted" and ends without emitting
    ``errored`` or ``finished``, which would leave the widget busy for ever."""


def error_text(err, where: str = "napari dock") -> str:
    """What an error says to the user in one line (a KeyError's message without its quotes). An
    unexpected error (a bug: see :func:`napari_hggep._log.is_unexpected`; a :class:`JobError` is
    judged by the error it wraps) keeps its traceback in the log file, and the line names it."""
    from .._log import describe

    if isinstance(err, JobError) and err.__cause__ is not None:
        return describe(err.__cause__, where)
    return describe(err, where)


class Activity:
    """A dock's job in napari's activity panel (the bottom right of the window): what it is doing
    and how far it is, as in the dock; removed when the job ends."""

    def __init__(self, desc: str):
        from napari.utils import progress

        self.bar = progress(total=0, desc=desc)  # total 0: napari shows a busy bar until one is known
        self.pending: tuple | None = None
        self.closed = False
        self.last = 0.0  # when the panel was last updated

    def show(self, done: int, total: int, desc: str | None = None) -> None:
        """Shown on a later event-loop turn, at most twice a second: each update of the panel's
        progress bar repaints napari's window at once and lets queued events in, which must not
        happen inside a dock's own handler, nor often."""
        if self.pending is None and not self.closed:
            import time

            from qtpy.QtCore import QTimer

            wait = max(0.0, self.last + 0.5 - time.perf_counter())
            QTimer.singleShot(int(1000 * wait), self._flush)
        self.pending = (int(done), int(total), desc)

    def _flush(self) -> None:
        import time

        if self.closed or self.pending is None:
            return
        (done, total, desc), self.pending = self.pending, None
        self.last = time.perf_counter()
        bar = self.bar
        if total and bar.total != total:
            bar.total = total
        if done != bar.n:
            bar.update(done - bar.n)  # napari's bar lets events in: the job may end (close) here
        if desc and desc != bar.desc and not self.closed:
            bar.set_description(desc)

    def close(self) -> None:
        self.closed = True
        self.bar.close()


class JobRunner:
    """What a dock widget running one job at a time shares. The widget has ``worker`` (None
    while idle), a ``state`` whose ``status`` its status line follows (:mod:`.state`) and
    ``_set_running(running)`` for its buttons."""

    def _enable_log(self) -> None:
        """An unexpected error in this dock keeps its traceback in the log file (called when it opens)."""
        from .._log import enable_file_log

        enable_file_log()

    def _start_job(self, job, *args, status: str, returned, errored, yielded=None, aborted=None):
        """Run ``job(*args)`` (a function, or a generator that yields progress) in a worker thread."""
        from napari.qt.threading import thread_worker

        self.worker = thread_worker(job, start_thread=False, ignore_errors=True)(*args)
        if yielded is not None:
            self.worker.yielded.connect(yielded)
        self.worker.returned.connect(returned)
        self.worker.errored.connect(errored)
        if aborted is not None:
            self.worker.aborted.connect(aborted)
        self.worker.finished.connect(self._on_finished)
        self.state.status = status
        self.activity = Activity(f"HGGEP: {status}")
        self._set_running(True)
        self.worker.start()

    def _show_error(self, err) -> None:
        """The error in the status line and as a napari notification."""
        from napari.utils.notifications import show_error

        msg = error_text(err, type(self).__name__)
        self.state.status = f"Error: {msg}"
        show_error(f"HGGEP: {msg}")

    def _on_finished(self):
        pending = getattr(self, "_after_arrival", None)
        if pending is not None:  # the result is still arriving, turn by turn: the job ends after it
            pending.append(self._on_finished)
            return
        self.worker = None
        activity, self.activity = getattr(self, "activity", None), None
        if activity is not None:
            activity.close()
        self._set_running(False)

    def _show_status(self, text: str) -> None:
        """The status line shows the state's status, whole in its tooltip (a narrow dock wraps it)."""
        self.status.value = text
        self.status.tooltip = text

    def _show_activity(self, done: int, total: int, text: str | None = None) -> None:
        """The job's phase and count in napari's activity panel. Each update repaints napari's
        window (its progress bars repaint at once): not while a result is being put on the canvas,
        and the phase without its details (what follows "—" or ":")."""
        if getattr(self, "activity", None) is None or getattr(self, "_after_arrival", None) is not None:
            return
        phase = str(text).split(" — ")[0].split(":")[0].strip() if text else None
        self.activity.show(done, total, f"HGGEP: {phase}" if phase else None)


def set_progress(bar, value: int, maximum: int | None = None) -> None:
    """Move a magicgui ProgressBar without a synchronous repaint: QProgressBar.setValue repaints at
    once when its text changes, which makes the whole window (napari's canvas too) draw in the middle
    of the caller's work; here the bar is drawn on the next event-loop turn, with everything else."""
    native = bar.native
    native.setUpdatesEnabled(False)
    try:
        if maximum is not None:
            bar.max = maximum
        bar.value = min(int(value), int(bar.max))
    finally:
        native.setUpdatesEnabled(True)
    native.update()


def in_turns(steps, then, failed) -> None:
    """Run ``steps`` (callables) one per event-loop turn, so that napari draws and the window answers
    between them; then ``then()``. A step that raises goes to ``failed(err)``, and the rest are skipped."""
    from qtpy.QtCore import QTimer

    import logging
    import time

    log = logging.getLogger("napari_hggep")
    todo = list(steps)

    def next_step():
        if todo:
            t0 = time.perf_counter()
            try:
                todo.pop(0)()
                log.debug("turn %d of %d: %.3f s", len(steps) - len(todo), len(steps), time.perf_counter() - t0)
            except Exception as err:  # noqa: BLE001 (said in the dock: the rest cannot run without it)
                todo.clear()
                failed(err)
            else:
                QTimer.singleShot(0, next_step)
                return
        then()

    next_step()
