"""Repeatable and resumable runs: each step's random streams (the same on one process or many) and
the saved state a run resumes from, refused when it belongs to another run."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def draw_seed(seed: int, epoch: int, step_start: int, position: int) -> int:
    return (int(seed) * 1_000_003 + epoch * 10_007 + step_start * 101 + position) % (2**63 - 1)


@contextlib.contextmanager
def rng_scope(own: bool, gen: torch.Generator, device: torch.device):
    """With ``own``: dropout and the like draw from a stream seeded from ``gen`` (the same on
    one process or many); otherwise from the run's global stream, as always."""
    if not own:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(gen.initial_seed() + 1)
        yield


def read_state(path: Path, fingerprint: dict) -> dict:
    """A resumable state, refused with a clear message when it belongs to another run."""
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable training state ({type(e).__name__}); delete it to start "
                         "afresh") from None
    have = st.get("fingerprint") if isinstance(st, dict) else None
    if have is None or "torch_rng" not in st:
        raise ValueError(f"{path} was written by an older napari-hggep and cannot be resumed exactly; delete it "
                         "to start afresh")
    for key, what in (("genes", "gene set"), ("sections", "set of training sections"), ("config", "model config"),
                      ("seed", "seed")):
        if have.get(key) != fingerprint[key]:
            detail = {"genes": f"{len(have['genes'])} genes, this run {len(fingerprint['genes'])}",
                      "config": "they differ"}.get(key, f"{have.get(key)} vs {fingerprint[key]}")
            raise ValueError(f"{path} was made for another {what} ({detail}); resume with the same "
                             "arguments, or choose another --out")
    return st
