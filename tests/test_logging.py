"""Logging (issue 34): an unexpected error keeps its traceback in a log file that its one-line
message names (command line, batch, docks); a user error stays one clean line; ``--verbose``
puts debug lines and tracebacks on stderr."""
import logging
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import he_like_image
from napari_hggep import _log
from napari_hggep.cli import main


@pytest.fixture
def log_file(tmp_path, monkeypatch):
    """The log file of this test ($NAPARI_HGGEP_LOG), and no file handler left behind."""
    path = tmp_path / "logs" / "hggep.log"
    monkeypatch.setenv(_log.LOG_ENV, str(path))
    _log.disable_file_log()
    yield path
    _log.disable_file_log()


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "he.png"
    Image.fromarray(he_like_image(200, 240)).save(p)
    return p


def _broken(*args, **kwargs):
    return len(None)  # a bug: TypeError


def test_an_unexpected_error_keeps_its_traceback_in_the_log_the_line_names(log_file, image, tmp_path, monkeypatch,
                                                                         capsys):
    import napari_hggep.model._bundled

    monkeypatch.setattr(napari_hggep.model._bundled, "load_model", _broken)
    rc = main(["predict", str(image), "--grid", "--um-per-px", "2", "-o", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    (line,) = [ln for ln in err if "error" in ln]
    assert line.startswith("napari-hggep: error: ") and str(log_file) in line and "TypeError" in line
    assert "Traceback" not in "\n".join(err)  # one line on the terminal
    text = log_file.read_text()
    assert "Traceback (most recent call last)" in text and "in _broken" in text and "len(None)" in text
    assert "TypeError" in text and "napari-hggep: unexpected TypeError" in text
    assert not (tmp_path / "p.csv").exists()


def test_a_user_error_stays_one_clean_line_and_is_not_logged(log_file, tmp_path, capsys):
    rc = main(["predict", str(tmp_path / "missing.tif"), "--grid", "--um-per-px", "2", "-o", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("napari-hggep: error: ") and len(err.splitlines()) == 1
    assert "log" not in err and "unexpected" not in err
    assert not log_file.exists() or "Traceback" not in log_file.read_text()


def _raise(fn):
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("did not raise")


def test_which_errors_are_unexpected(tmp_path):
    from napari_hggep.io.readers.open import read_spots_csv
    from napari_hggep.io.readers.tables import parse_table
    from napari_hggep.records import Prediction

    pred = Prediction(spot_ids=np.array(["a"]), xy=np.zeros((1, 2)), genes=["GA"], values=np.zeros((1, 1), np.float32))
    # raised on purpose by the package, with advice: expected
    assert not _log.is_unexpected(_raise(lambda: read_spots_csv(tmp_path / "none.csv")))  # SlideError
    assert not _log.is_unexpected(_raise(lambda: pred.gene_index("GB")))  # KeyError with a message
    assert not _log.is_unexpected(_raise(lambda: parse_table("", "t.csv", "table")))
    assert not _log.is_unexpected(_raise(lambda: open(tmp_path / "none")))  # OSError: its reason and file
    assert not _log.is_unexpected(_raise(lambda: (_ for _ in ()).throw(MemoryError())))
    # a bug, or a library's error that no code of ours turned into advice: unexpected
    assert _log.is_unexpected(_raise(lambda: np.stack([np.zeros(2), np.zeros(3)])))  # numpy's ValueError
    assert _log.is_unexpected(_raise(lambda: _broken()))
    assert _log.is_unexpected(_raise(lambda: [][1]))
    assert _log.is_unexpected(_raise(lambda: {}["k"]))  # a KeyError no one raised on purpose


def test_a_batch_slide_that_fails_unexpectedly_names_the_log(log_file):
    from napari_hggep._log import describe

    err = _raise(lambda: _broken())
    msg = describe(err, "batch: slide7")
    assert str(log_file) in msg and msg.startswith("object of type 'NoneType' has no len()")
    assert "batch: slide7: unexpected TypeError" in log_file.read_text()
    assert describe(_raise(lambda: open(log_file.parent / "none")), "batch") .startswith("[Errno 2]")


def test_the_dock_status_names_the_log_file(log_file):
    pytest.importorskip("napari")
    from napari_hggep._napari.jobs import JobError, JobRunner
    from napari_hggep._napari.state import PredictDockState

    class Dock(JobRunner):
        state = PredictDockState()  # the status line follows the dock's state

    d = Dock()
    try:
        try:
            _broken()
        except TypeError as e:
            raise JobError(str(e)) from e  # as a job's worker re-raises a RuntimeError
    except JobError as e:
        d._show_error(e)
    assert d.state.status.startswith("Error: object of type 'NoneType' has no len()")
    assert str(log_file) in d.state.status and "unexpected TypeError" in d.state.status
    assert "Dock: unexpected TypeError" in log_file.read_text() and "len(None)" in log_file.read_text()
    d._show_error(_raise(lambda: (_ for _ in ()).throw(ValueError("x"))))  # not raised by the package:
    assert "unexpected ValueError" in d.state.status  # made here, in a test, so judged unexpected
    d._show_error(_raise(lambda: read_missing()))  # a user error: its own words, nothing more
    assert d.state.status == "Error: spot table none.csv does not exist"


def read_missing():
    from napari_hggep.io.readers.open import read_spots_csv

    read_spots_csv("none.csv")


def test_verbose_shows_debug_lines_and_tracebacks_on_stderr(tmp_path):
    for argv in (["--verbose", "predict"], ["predict", "--verbose"]):
        out = subprocess.run([sys.executable, "-m", "napari_hggep.cli", *argv, str(tmp_path / "missing.png"), "--grid",
                              "--um-per-px", "2", "-o", str(tmp_path / "p.csv")],
                             capture_output=True, text=True, env={**__import__("os").environ,
                                                                  _log.LOG_ENV: str(tmp_path / "l.log")})
        assert out.returncode == 2, out.stderr
        assert "DEBUG napari_hggep" in out.stderr and "Traceback (most recent call last)" in out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith("napari-hggep: error: ")


def test_the_logger_is_the_packages_and_silent_by_default():
    assert _log.logger is logging.getLogger("napari_hggep")
    assert any(isinstance(h, logging.NullHandler) for h in _log.logger.handlers)


def test_nothing_is_made_until_something_is_logged_and_an_unwritable_log_is_said(log_file, tmp_path, monkeypatch):
    assert _log.enable_file_log() == log_file and not log_file.parent.exists()  # no folder for a clean run
    _log.disable_file_log()
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(_log.LOG_ENV, str(blocker / "sub" / "x.log"))  # under a file: not writable
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(blocker))  # and no fallback either
    assert _log.enable_file_log() is None
    msg = _log.describe(_raise(lambda: _broken()), "test")
    assert "no log file could be written" in msg and "--verbose" in msg
