"""Self-supervised pretraining of the image path (GEM + ShuffleNet stages) without labels.

SimCLR (Chen et al. 2020): two strongly augmented views of each tissue patch are pulled
together and pushed away from the other patches of the batch (NT-Xent loss). The views
differ in crop, orientation, scan resolution (0.25-4 um/px), focus and H&E stain, so the
features learn what tissue looks like rather than how one lab stains it.
Patches are sampled at random tissue positions of the given slides (not only at spots).
"""
from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._atomic import atomic_write_bytes
from ..distributed import SINGLE, DistContext, all_sum, any_rank, barrier
from ..data.patches import extract_patches, to_tensor
from ..data.slide import Slide, SlideError
from ..data.tissue import tissue_mask
from ..devices import resolve_device
from ..model.backbone import ShuffleNetStages
from ..model import hggep
from ..model.gem import GEM
from ..model.pretrained import save_backbone
from .augment import ssl_view


@dataclass
class PretrainConfig:
    minutes: float = 90.0  # time budget (wall clock, summed over resumed runs)
    max_steps: int = 0  # 0: until the time budget is spent
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-5
    temperature: float = 0.2
    patches_per_slide: int = 3000
    res_low: float = 0.25
    res_high: float = 4.0
    patch_um: float = 70.5
    patch_px: int = 112
    gem_theta: float = 0.7
    seed: int = 0
    device: str = "auto"
    save_every_s: float = 120.0


_RGB_MEAN = torch.tensor(hggep._RGB_MEAN).view(1, 3, 1, 1)  # HGGEP's input standardisation
_RGB_STD = torch.tensor(hggep._RGB_STD).view(1, 3, 1, 1)


class SSLEncoder(nn.Module):
    """GEM -> ShuffleNet stages -> pooled conv5 -> projection MLP (the MLP is thrown away).
    Input standardisation is HGGEP's (ImageNet statistics), so the weights drop in."""

    def __init__(self, theta: float = 0.7, proj_dim: int = 128):
        super().__init__()
        self.gem = GEM(3, theta)
        self.backbone = ShuffleNetStages()
        self.head = nn.Sequential(nn.Linear(1024, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                  nn.Linear(512, proj_dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last input crashes oneDNN's conv backward on some CPUs: keep NCHW
        x = x.contiguous()
        x = (x - _RGB_MEAN.to(x.device)) / _RGB_STD.to(x.device)
        return self.backbone(self.gem(x))[2].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross entropy over 2N views."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def sample_tissue_patches(slide: Slide, n: int, patch_um: float, patch_px: int, seed: int) -> np.ndarray:
    """``n`` patches at random positions inside the slide's tissue mask."""
    mask, step = tissue_mask(slide.image)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise SlideError(f"{slide.name}: no tissue found to pretrain on")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ys), n)
    xy = np.column_stack([xs[pick], ys[pick]]).astype(np.float64) * step + rng.uniform(0, step, (n, 2))
    h, w = slide.shape
    xy = np.clip(xy, 0, [w - 1, h - 1])
    pool = Slide(slide.image, slide.um_per_px, np.arange(n).astype(str), xy, name=slide.name)
    return extract_patches(pool, patch_um, patch_px)


def pretrain(slides: list[Slide], cfg: PretrainConfig = PretrainConfig(), out=None, resume: bool = False,
             progress: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None,
             dist: DistContext = SINGLE) -> dict:
    """Pretrain on tissue from ``slides``; writes the backbone file ``out`` (and ``out.state``
    to resume). Returns the meta stored in the file.

    Under torchrun (``dist``): each rank takes ``batch_size / world`` patches of every step, drawn
    from a stream seeded by (seed, rank, step) so a run of the same world size repeats; the
    contrastive loss is computed within each rank's share (its negatives are local) and
    DistributedDataParallel averages the gradients; ranks stop together; rank 0 writes the files."""
    if not slides:
        raise ValueError("no slides to pretrain on")
    if dist.active and cfg.batch_size % dist.world:
        raise ValueError(f"batch size {cfg.batch_size} must be a multiple of the {dist.world} processes")
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed)
    pool = np.concatenate([sample_tissue_patches(s, cfg.patches_per_slide, cfg.patch_um, cfg.patch_px, cfg.seed + i)
                           for i, s in enumerate(slides)])
    if len(pool) < 2 * cfg.batch_size:
        raise ValueError(f"only {len(pool)} patches; need at least {2 * cfg.batch_size}")
    enc = SSLEncoder(cfg.gem_theta).to(device)
    net = enc
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(enc, device_ids=[device] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(enc.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    local_batch = cfg.batch_size // dist.world
    step, elapsed, history = 0, 0.0, []
    state_path = Path(str(out) + ".state") if out else None
    if resume and state_path is not None and state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        enc.load_state_dict(st["encoder"])
        opt.load_state_dict(st["opt"])
        g.set_state(st["rng"])
        step, elapsed, history = int(st["step"]), float(st["elapsed"]), list(st["history"])
    src_um = cfg.patch_um / cfg.patch_px

    def meta() -> dict:
        return {"method": "SimCLR (NT-Xent)", "recipe": asdict(cfg), "steps": step, "seconds": round(elapsed, 1),
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
                "torch": torch.__version__, "slides": [s.name for s in slides], "patches": int(len(pool)),
                "processes": dist.world, "loss_last": history[-1]["loss"] if history else None}

    def save_state():
        if state_path is None or not dist.is_main:
            return
        buf = io.BytesIO()
        torch.save({"encoder": enc.state_dict(), "opt": opt.state_dict(), "rng": g.get_state(), "step": step,
                    "elapsed": elapsed, "history": history}, buf)
        atomic_write_bytes(state_path, buf.getvalue())
        save_backbone(out, enc.state_dict(), meta())

    enc.train()
    t_start, last_save, losses = time.time() - elapsed, time.time(), []
    while True:
        elapsed = time.time() - t_start
        stop = (elapsed >= cfg.minutes * 60 or bool(cfg.max_steps and step >= cfg.max_steps)
                or (should_stop is not None and should_stop()))
        if any_rank(dist, stop, device):  # every rank stops at the same step
            break
        gen = g if not dist.active else torch.Generator().manual_seed(
            (cfg.seed * 1_000_003 + dist.rank * 7_919 + step) % (2**63 - 1))
        idx = torch.randint(0, len(pool), (local_batch,), generator=gen).numpy()
        x = to_tensor(pool[idx])
        v1 = ssl_view(x, gen, src_um, cfg.patch_um, (cfg.res_low, cfg.res_high)).to(device)
        v2 = ssl_view(x, gen, src_um, cfg.patch_um, (cfg.res_low, cfg.res_high)).to(device)
        loss = nt_xent(net(v1), net(v2), cfg.temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 10 == 0:
            mean_loss = all_sum(dist, [np.mean(losses)], device)[0] / dist.world  # over every rank's losses
            rec = {"step": step, "loss": mean_loss, "seconds": round(time.time() - t_start, 1)}
            history.append(rec)
            losses = []
            if progress:
                progress(rec)
        if time.time() - last_save > cfg.save_every_s:
            elapsed = time.time() - t_start
            save_state()
            last_save = time.time()
    elapsed = time.time() - t_start
    save_state()
    barrier(dist)
    return meta()
