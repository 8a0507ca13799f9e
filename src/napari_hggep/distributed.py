"""Runs across processes and machines with PyTorch's own engine (``torchrun``; gloo on CPUs,
NCCL on GPUs). Nothing here starts processes: ``torchrun`` does, and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous for each; a plain run is a world of one."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def world_from_env() -> int:
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def init_distributed(device: str = "auto"):
    """``(DistContext, torch.device)`` for this process. Under torchrun: joins the process group
    (NCCL when this rank gets a CUDA GPU, its ``LOCAL_RANK``-th; gloo otherwise)."""
    import torch

    from .devices import resolve_device

    world = world_from_env()
    dev = resolve_device(device)
    if world == 1:
        return SINGLE, dev
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    elif dev.type == "mps":
        raise RuntimeError("torch.distributed has no MPS backend; run with --device cpu under torchrun")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return DistContext(rank, world, local), dev


def shutdown(ctx: DistContext) -> None:
    if ctx.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()


def all_sum(ctx: DistContext, values, device=None):
    """Element-wise sum of a list of floats over all ranks (a copy of it in a world of one)."""
    if not ctx.active:
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(t)
    return t.cpu().tolist()


def any_rank(ctx: DistContext, flag: bool, device=None) -> bool:
    """True on every rank when ``flag`` is true on one (e.g. "the time budget is spent")."""
    return all_sum(ctx, [1.0 if flag else 0.0], device)[0] > 0


def shard(items: list, ctx: DistContext) -> list:
    """This rank's share of ``items``: every ``world``-th one, starting at ``rank``."""
    return list(items)[ctx.rank::ctx.world]
