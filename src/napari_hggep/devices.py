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
