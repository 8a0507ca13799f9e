"""The command line's error discipline and the checks that need no slide.

Everything a run can know to be wrong before it reads a slide is checked first, in seconds: the
outputs can be written, the device exists here, the model loads and has the genes asked for,
the tables and files named can be read, a pixel size typed by hand is plausible. Then:

* a user error (bad input, a value that cannot work) is one line on stderr starting
  ``napari-hggep: error:`` that names the value and says what to do, and exit status 2;
* a failure at run time (a full disk, a write that fails, out of memory) is one line and exit
  status 1; an interrupt is one line and 130 (SIGTERM: 143);
* never a traceback for either.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

PROG = "napari-hggep"


class UsageError(ValueError):
    """A user error the command line finds itself (exit status 2)."""


class RunFailure(RuntimeError):
    """Work that failed at run time, not because of the input (exit status 1)."""


# ---------------------------------------------------------------- the parser
class Parser(argparse.ArgumentParser):
    """argparse's parser with one-line errors in the command's wording (exit status 2)."""

    def error(self, message):  # noqa: D102 - argparse's hook
        sub = self.prog[len(PROG):].strip()
        hint = f"see {self.prog} --help"
        self.exit(2, f"{PROG}: error: {(sub + ': ') if sub else ''}{message} ({hint})\n")


DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def device_arg(text: str) -> str:
    """``--device``: auto, cpu, cuda, cuda:N or mps (whether it is there is checked after parsing)."""
    name = str(text).strip().lower()
    if not DEVICE_RE.match(name):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; choose auto, cpu, cuda, cuda:N or mps")
    return name


def _number(kind, text, minimum, strict, what):
    try:
        v = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if kind is float and not (v == v and abs(v) != float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    if (v <= minimum) if strict else (v < minimum):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return v


def positive_float(text: str) -> float:
    return _number(float, text, 0.0, True, "a positive number")


def nonnegative_float(text: str) -> float:
    return _number(float, text, 0.0, False, "a number of at least 0")


def positive_int(text: str) -> int:
    return _number(int, text, 0, True, "a whole number of at least 1")


def count_arg(text: str) -> int:
    return _number(int, text, 0, False, "a whole number (0 or more)")


def fraction_arg(text: str) -> float:
    v = _number(float, text, 0.0, False, "a number from 0 to 1")
    if v > 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 1")
    return v


def um_per_px_arg(text: str) -> float:
    """``--um-per-px``: a number (its plausibility is checked with the other no-slide checks, so the
    message can say what the value would mean)."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of micrometres per pixel") from None
    return v


# ---------------------------------------------------------------- checks that need no slide
def check_device(name: str):
    """The device asked for is there (``auto`` and ``cpu`` always are); torch is imported only for
    cuda and mps. Returns the name."""
    name = device_arg(name) if name else "auto"
    if name == "mps" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("--device mps: torch.distributed has no MPS backend; run with --device cpu under torchrun")
    if name in ("auto", "cpu"):
        return name
    from ..devices import resolve_device

    try:
        resolve_device(name)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"--device {name}: {e}") from None
    return name


def check_um_per_px(value, flag: str = "--um-per-px") -> float | None:
    """A pixel size typed by hand: positive and within :data:`~napari_hggep.data.quality.PLAUSIBLE_UM_PER_PX`."""
    if value is None:
        return None
    from ..data.quality import plausible_um_per_px_problem

    problem = plausible_um_per_px_problem(value)
    if problem:
        raise UsageError(f"{flag} {value:g} {problem}; check the value given to {flag} (a typo?)")
    return float(value)


def _probe_folder(folder: Path, flag: str, shown) -> None:
    """``folder`` exists (it is made now when missing) and takes a new file."""
    above = folder
    while not above.exists() and above.parent != above:
        above = above.parent
    if above.exists() and not above.is_dir():
        raise UsageError(f"{flag} {shown}: {above} is a file, not a folder; choose a folder you can write to")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".napari-hggep-write-test-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        why = e.strerror or str(e)
        raise UsageError(f"{flag} {shown}: cannot write in {folder} ({why}); choose a folder you can write to") \
            from None


def check_out_file(path, flag: str) -> Path:
    """A file written at the end of a long run (a checkpoint, a backbone, a screenshot): not a
    folder, and its folder takes files (it is made now when missing)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {p} is a folder; give a file name (e.g. {p / 'model.pt'})")
    _probe_folder(p.parent if str(p.parent) else Path("."), flag, p)
    return p


def check_out_dir(path, flag: str, files=()) -> Path:
    """A folder the results go to: not a file, and it takes files (it is made now when missing)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        what = f" for {', '.join(files)}" if files else ""
        raise UsageError(f"{flag} {p} is a file; give a folder{what}")
    _probe_folder(p, flag, p)
    return p


def check_in_file(path, flag: str, what: str = "file") -> Path:
    """An input file named on the command line: there, a file, readable."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{flag} {p}: no such {what}")
    if p.is_dir():
        raise UsageError(f"{flag} {p} is a folder, not a {what}")
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as e:
        raise UsageError(f"{flag} {p}: cannot read it ({e.strerror or e})") from None
    return p


def check_in_path(path, flag: str) -> Path:
    """A slide, image or folder named on the command line: it must exist."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{flag + ' ' if flag else ''}{p} does not exist")
    return p


def check_pairs(values, flag: str, meta: str) -> dict[str, str]:
    """``KEY=VALUE`` arguments (``--patients``, ``--backbone-without``)."""
    out = {}
    for kv in values or []:
        k, sep, v = str(kv).partition("=")
        if not sep or not k.strip() or not v.strip():
            raise UsageError(f"{flag} {kv!r}: expected {meta}")
        out[k.strip()] = v.strip()
    return out


# ---------------------------------------------------------------- how errors end a run
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def one_line(err: BaseException) -> str:
    """An error as one line: a KeyError without its quotes, an OSError as its reason and file."""
    if isinstance(err, KeyError) and err.args:
        msg = str(err.args[0])
    elif isinstance(err, OSError) and err.strerror and not isinstance(err, RunFailure):
        msg = err.strerror + (f": {err.filename}" if err.filename else "")
    else:
        msg = str(err) or type(err).__name__
    return " ".join(msg.split())


def report(err: BaseException, stream=None) -> int:
    """Print ``err`` as one line and return the exit status: 2 for a user error, 1 for a failure
    at run time. An unexpected error (a bug, or a library's error no check turned into advice: see
    :func:`napari_hggep._log.is_unexpected`) keeps its traceback in the log file, and the line
    names that file; any error's traceback is on stderr with ``--verbose``."""
    from .._log import is_unexpected, logger, record_unexpected, unexpected_note

    stream = stream or sys.stderr
    runtime = isinstance(err, (RunFailure, MemoryError)) or (
        isinstance(err, OSError) and not isinstance(err, USER_ERRORS)) or (
        isinstance(err, RuntimeError) and not isinstance(err, USER_ERRORS)) or (
        not isinstance(err, (ValueError, KeyError, OSError, MemoryError, RuntimeError)))
    line = one_line(err)
    if is_unexpected(err):
        line += f" ({unexpected_note(err, record_unexpected(err, PROG))})"
    else:  # --verbose: the traceback, and that of the error it replaced (``raise ... from None`` hides it)
        logger.debug("%s: %s", type(err).__name__, line, exc_info=(type(err), err, err.__traceback__))
        hidden = err.__context__ if err.__suppress_context__ else None
        if hidden is not None:
            logger.debug("it replaced %s: %s", type(hidden).__name__, hidden,
                         exc_info=(type(hidden), hidden, hidden.__traceback__))
    print(f"{PROG}: error: {line}", file=stream)
    return 1 if runtime else 2


def write_failure(path, err: OSError, kept: bool) -> RunFailure:
    """A write that failed at run time (a full disk, a folder removed meanwhile)."""
    why = err.strerror or " ".join(str(err).split()) or type(err).__name__
    tail = f"the earlier {Path(path).name} is kept" if kept else "nothing half-written is left"
    return RunFailure(f"could not write {path}: {why}; {tail}")
