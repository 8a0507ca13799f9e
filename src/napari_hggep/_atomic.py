"""Atomic file output: write a temporary file beside the target, rename it over the target
only when writing succeeded, so a failed run never overwrites a good file.

A temporary file is named ``.<target>~<host>~<pid>~<random><suffix>``: a run that fails or is
interrupted (SIGINT, or SIGTERM, which the CLI turns into an exit) removes its own; one that was
SIGKILLed cannot, so the next write of the same target removes temporaries whose process on this
host is gone."""
from __future__ import annotations

import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_HOST = socket.gethostname().replace("~", "-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its file alone
    return True


def remove_stale_temporaries(path) -> list[Path]:
    """Delete temporaries of ``path`` left by processes on this host that no longer run."""
    path = Path(path)
    removed = []
    for f in path.parent.glob(f".{path.name}~*"):
        parts = f.name[len(path.name) + 2:].split("~")
        if len(parts) >= 3 and parts[0] == _HOST and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist")
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}~{_HOST}~{os.getpid()}~", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
