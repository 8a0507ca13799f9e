"""Run-time device choice: CUDA, then MPS, then CPU. Nothing is hard-wired to ``.cuda()``."""
from __future__ import annotations

DEVICES = ("auto", "cuda", "mps", "cpu")


def resolve_device(device: str = "auto"):
    """Return a ``torch.device``; ``auto`` picks CUDA, then MPS, then CPU."""
    import torch

    name = str(device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but PyTorch sees no CUDA GPU; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device 'mps' was asked for but it is not available; use --device auto or cpu")
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}; choose one of {DEVICES}")
    return torch.device(name)


def is_out_of_memory(err: BaseException) -> bool:
    """A CUDA, MPS or CPU allocation failure (torch raises them as different types)."""
    import torch

    if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def release_memory(device) -> None:
    import torch

    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "empty_cache"):
        torch.mps.empty_cache()


class MemoryGuard:
    """Runs work in chunks of at most ``batch_size`` items on the model's device. On an
    out-of-memory error it halves the chunk (and keeps the smaller size), and when a single
    item does not fit on a GPU it moves the model to the CPU and goes on there. Every step
    is told to ``notify``; an out-of-memory error on the CPU with one item is a MemoryError
    that says what to do."""

    def __init__(self, model, batch_size: int, notify=None):
        import warnings

        self.model, self.cap = model, max(int(batch_size), 1)
        self.notify = notify or (lambda msg: warnings.warn(msg, RuntimeWarning, stacklevel=3))

    @property
    def device(self):
        return next(self.model.parameters()).device

    def run(self, fn, n: int, what: str = "patches") -> list:
        """``[fn(i, j), ...]`` over consecutive chunks ``[i, j)`` of ``range(n)``."""
        out, i = [], 0
        while i < n:
            j = min(i + self.cap, n)
            try:
                out.append(fn(i, j))
                i = j
            except Exception as err:  # noqa: BLE001 - re-raised unless it is an out-of-memory error
                if not is_out_of_memory(err):
                    raise
                self._recover(j - i, what)
        return out

    def _recover(self, size: int, what: str) -> None:
        import torch

        dev = self.device
        release_memory(dev)
        if size > 1:
            self.cap = max(1, size // 2)
            self.notify(f"out of memory on {dev.type} with {size} {what} at once; retrying {self.cap} at a time")
        elif dev.type != "cpu":
            self.model.to(torch.device("cpu"))
            self.notify(f"out of memory on {dev.type} even for the smallest step; continuing on the CPU")
        else:
            raise MemoryError(f"out of memory on the CPU even for the smallest step of {what}; close other "
                              "programs, or predict fewer spots at a time (a smaller region or a coarser grid)")
