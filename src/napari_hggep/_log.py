"""The ``napari_hggep`` logger, and where an unexpected error's traceback is kept.

A user error (a slide that cannot be read, a value that cannot work) is said in one line and is
not logged: the line says what to fix. An *unexpected* error (:func:`is_unexpected`: a bug, or a
library's error that no code of ours turned into advice) is said in one line too, but its
traceback is appended to a log file (:func:`log_path`: ``$NAPARI_HGGEP_LOG``, else the platform's
user log folder) and the line names that file (:func:`record_unexpected`, :func:`unexpected_note`).

The command line and the docks call :func:`enable_file_log`; a program that only imports the
package gets no file and no handler beyond logging's own (``logging.getLogger("napari_hggep")``
is theirs to configure). ``napari-hggep --verbose`` adds DEBUG lines on stderr (:func:`verbose`).
"""
from __future__ import annotations

import linecache
import logging
import os
import sys
from pathlib import Path

LOGGER_NAME = "napari_hggep"
LOG_ENV = "NAPARI_HGGEP_LOG"  # a file to log to instead of the platform's user log folder
LOG_NAME = "napari-hggep.log"
MAX_LOG_BYTES = 2 * 2**20  # a longer log is moved to napari-hggep.log.1 when the next run starts logging
FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
PACKAGE_DIR = str(Path(__file__).resolve().parent)

logger = logging.getLogger(LOGGER_NAME)
logger.addHandler(logging.NullHandler())  # a library's logger: silent unless someone configures logging

_file_handler: logging.Handler | None = None
_file_problem: str | None = None


def user_log_dir() -> Path:
    """The platform's folder for a user's application logs (as ``platformdirs.user_log_dir``)."""
    home = Path.home()
    if sys.platform.startswith("win"):
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "napari-hggep" / "Logs"
    if sys.platform == "darwin":
        return home / "Library" / "Logs" / "napari-hggep"
    return Path(os.environ.get("XDG_STATE_HOME") or home / ".local" / "state") / "napari-hggep" / "log"


def log_path() -> Path:
    """The log file: ``$NAPARI_HGGEP_LOG`` when set, else ``napari-hggep.log`` in :func:`user_log_dir`."""
    env = os.environ.get(LOG_ENV, "").strip()
    return Path(env).expanduser() if env else user_log_dir() / LOG_NAME


def _writable(path: Path) -> str | None:
    """Why ``path`` cannot be appended to (None: it can); creates nothing."""
    if path.is_dir():
        return f"{path} is a folder"
    target = path
    while not target.exists() and target.parent != target:
        target = target.parent  # the nearest folder that exists: the log's folders are made at the first record
    if target != path and not target.is_dir():
        return f"{target} is a file"
    return None if os.access(target, os.W_OK) else f"{target} is not writable"


class _LogFile(logging.FileHandler):
    """A log file made (with its folders) only when the first record comes; a failure to write
    it is remembered (:func:`record_unexpected` then says no file could be written), never printed."""

    failed: str | None = None

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()

    def handleError(self, record):  # noqa: N802 - logging's hook
        self.failed = str(sys.exc_info()[1] or "the log file could not be written")


def enable_file_log() -> Path | None:
    """Send the ``napari_hggep`` logger's warnings and errors to :func:`log_path` (once per
    process; the file and its folders are made at the first record). A log over
    :data:`MAX_LOG_BYTES` is moved aside first. Falls back to the temporary folder; None when no
    file can be written."""
    global _file_handler, _file_problem
    if _file_handler is not None:
        return Path(_file_handler.baseFilename)
    import tempfile

    for path in (log_path(), Path(tempfile.gettempdir()) / f"napari-hggep-{os.getuid() if hasattr(os, 'getuid') else 0}.log"):
        problem = _writable(path)
        if problem is None:
            break
        _file_problem = problem
    else:
        return None
    try:
        if path.is_file() and path.stat().st_size > MAX_LOG_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    except OSError:
        pass  # another process moved it first
    handler = _LogFile(path, mode="a", encoding="utf-8", delay=True)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)
    _file_handler, _file_problem = handler, None
    return path


def disable_file_log() -> None:
    """Stop logging to the file (the next :func:`enable_file_log` reads :func:`log_path` again)."""
    global _file_handler
    if _file_handler is not None:
        logger.removeHandler(_file_handler)
        _file_handler.close()
        _file_handler = None


def verbose(stream=None) -> None:
    """DEBUG and up of the ``napari_hggep`` logger on ``stream`` (stderr): ``--verbose``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("napari-hggep: %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


def is_unexpected(err: BaseException) -> bool:
    """Whether ``err`` is a bug or a failure below us rather than a message for the user.

    Expected: an interrupt, running out of memory, an ``OSError`` (a missing file, a full disk, no
    permission: said with its reason and file), and a ``ValueError``, ``KeyError`` or
    ``RuntimeError`` that the package's own code raised on purpose (the innermost frame of its
    traceback is a ``raise`` statement in napari_hggep: its text is advice). Unexpected: every
    other error (``TypeError``, ``AttributeError``, ``IndexError``, ...) and those types when they
    came out of a library or out of an operation in our code (``d[key]``, ``np.stack``) unasked."""
    if isinstance(err, (KeyboardInterrupt, SystemExit, MemoryError, OSError)) or type(err).__name__ == "OutOfMemoryError":
        return False
    if isinstance(err, IndexError) or not isinstance(err, (ValueError, KeyError, RuntimeError)):
        return True
    tb = err.__traceback__
    if tb is None:  # made, never raised: a message composed by our code
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = str(Path(tb.tb_frame.f_code.co_filename).resolve())
    if not filename.startswith(PACKAGE_DIR):
        return True
    return not linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).lstrip().startswith("raise")


def record_unexpected(err: BaseException, where: str) -> Path | None:
    """Append ``err``'s traceback to the log file (see :func:`enable_file_log`); its path, or None
    when no log file can be written."""
    global _file_problem
    path = enable_file_log()
    logger.error("%s: unexpected %s: %s", where, type(err).__name__, err,
                 exc_info=(type(err), err, err.__traceback__))
    if _file_handler is None:
        return None
    _file_handler.flush()
    if _file_handler.failed:
        _file_problem = _file_handler.failed
        return None
    return path


def unexpected_note(err: BaseException, path: Path | None) -> str:
    """What the one-line message adds for an unexpected error: its type and where its traceback is."""
    if path is not None:
        return f"unexpected {type(err).__name__}; its traceback is in {path}"
    why = f" ({_file_problem})" if _file_problem else ""
    return f"unexpected {type(err).__name__}; no log file could be written{why}, run with --verbose to see it"


def describe(err: BaseException, where: str) -> str:
    """``err`` for a one-line message: as it is when expected; an unexpected error's traceback is
    logged (:func:`record_unexpected`) and the line says where."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else (str(err) or type(err).__name__)
    text = " ".join(str(text).split())
    if not is_unexpected(err):
        return text
    return f"{text} ({unexpected_note(err, record_unexpected(err, where))})"
