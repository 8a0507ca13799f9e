"""Training with honest model selection: the validation spots come from the training
sections only; the held-out section is never looked at while training."""
from __future__ import annotations

import copy
import io
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.patches import to_tensor
from ..devices import resolve_device
from .._atomic import atomic_write_bytes
from ..model.checkpoint import ModelBundle, save_checkpoint
from ..model.config import HGGEPConfig
from ..model.hggep import HGGEP, stain_stats
from ..model.losses import hggep_loss
from .dataset import SectionData
from .metrics import gene_pcc


@dataclass
class TrainConfig:
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    zinb_weight: float = 0.25
    val_frac: float = 0.15
    # "spots": val_frac of every training section's spots; "section": one whole training
    # section (closer to what a new slide is like; needs 2+ sections)
    val_split: str = "spots"
    seed: int = 0
    ema: float = 0.9  # exponential moving average of the weights, per step
    jitter: float = 0.08  # colour jitter strength
    smooth_targets: float = 0.0  # weight of the neighbours' mean in denoised training targets (0: raw)
    device: str = "auto"


def smooth_targets(target: np.ndarray, coords_um: np.ndarray, weight: float) -> np.ndarray:
    """Denoise ST targets: blend each spot with the mean of its nearest-ring neighbours."""
    if weight <= 0 or len(target) < 3:
        return target
    d = np.sqrt(((coords_um[:, None] - coords_um[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    ring = d <= 1.25 * np.median(d.min(axis=1))
    cnt = ring.sum(1, keepdims=True)
    nb = np.where(cnt > 0, (ring.astype(np.float32) @ target) / np.maximum(cnt, 1), target)
    return ((1 - weight) * target + weight * nb).astype(np.float32)


def _dihedral(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random flip / 90 degree rotation for every patch."""
    t = torch.randint(0, 8, (x.shape[0],), generator=g)
    out = x.clone()
    for k in range(8):
        m = t == k
        if m.any():
            y = torch.rot90(x[m], k % 4, dims=(2, 3))
            out[m] = y.flip(3) if k >= 4 else y
    return out


def augment(x: torch.Tensor, g: torch.Generator, jitter: float) -> torch.Tensor:
    """Flips, 90 degree rotations and mild colour jitter (brightness, contrast, saturation)."""
    x = _dihedral(x, g)
    if jitter > 0:
        n = x.shape[0]
        u = lambda *s: (torch.rand(*s, generator=g) * 2 - 1) * jitter  # noqa: E731
        slide = 1 + u(1, 3, 1, 1)  # stain differences between slides
        spot = 1 + 0.5 * u(n, 1, 1, 1)
        x = x * slide * spot
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + u(n, 1, 1, 1)) + mean
        grey = x.mean(dim=1, keepdim=True)
        x = (x - grey) * (1 + u(n, 1, 1, 1)) + grey
    return x.clamp(0, 1)


def gene_stats(sections: list[SectionData], masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    y = np.concatenate([s.target[m] for s, m in zip(sections, masks)])
    return y.mean(0), np.maximum(y.std(0), 1e-3)


def init_low_rank_head(model: HGGEP, z: np.ndarray) -> None:
    """Start the low-rank gene head on the principal axes of the (standardised) training targets."""
    lin = model.head[1]
    r = lin.weight.shape[1]
    if model.config.stain_skip:
        # the deep path starts silent, so training begins at the stain-statistics ridge
        # solution and early stopping on a held-out section can keep it there
        torch.nn.init.zeros_(model.head[0].weight)
        torch.nn.init.zeros_(model.head[0].bias)
    _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
    k = min(r, vt.shape[0])  # fewer axes than the rank when there are few genes or spots
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[:, :k] = torch.from_numpy(vt[:k].T.copy())
        lin.bias.zero_()


@torch.no_grad()
def init_stain_skip(model: HGGEP, sections, targets, masks, mean, std, alpha: float = 1000.0) -> None:
    """Fix the stain-statistics skip at the ridge solution on the training spots (and freeze
    it), so the deep part learns only what colour statistics cannot explain. Measured by
    leave-one-out: letting the skip train with the rest drifts it away from a solution that
    generalises better across sections."""
    from ..model.hggep import zscore_within_slide

    xs, ys = [], []
    for sec, t, m in zip(sections, targets, masks):
        st = zscore_within_slide(stain_stats(to_tensor(sec.patches))).numpy()
        xs.append(st[m])
        ys.append((t[m] - mean) / std)
    x, y = np.concatenate(xs), np.concatenate(ys)
    from .baseline import ridge_solve

    w = ridge_solve(x, y - y.mean(0), alpha)
    model.stain_head.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
    model.stain_head.bias.zero_()
    model.stain_head.requires_grad_(False)


@torch.no_grad()
def predict_section(model: HGGEP, sec: SectionData, mean: np.ndarray, std: np.ndarray, device,
                    views: int = 1) -> np.ndarray:
    model.eval()
    x = to_tensor(sec.patches).to(device)
    c = torch.from_numpy(sec.coords_um).to(device)
    z = model(x, c, views=views)["expr"].float().cpu().numpy()
    return z * std + mean


def _split(sections: list[SectionData], frac: float, seed: int, how: str = "spots") -> list[np.ndarray]:
    """Training masks per section (False: a validation spot)."""
    rng = np.random.default_rng(seed)
    if how == "section":
        if len(sections) < 2:
            raise ValueError("a whole-section validation split needs at least two training sections")
        held = int(rng.integers(len(sections)))
        return [np.full(s.n_spots, i != held) for i, s in enumerate(sections)]
    if how != "spots":
        raise ValueError(f"val_split must be 'spots' or 'section', not {how!r}")
    masks = []
    for s in sections:
        m = np.ones(s.n_spots, bool)
        nval = int(round(frac * s.n_spots))
        if nval and s.n_spots > 5:
            m[rng.choice(s.n_spots, nval, replace=False)] = False
        masks.append(m)
    return masks


def train_model(
    sections: list[SectionData],
    config: HGGEPConfig,
    genes: list[str],
    tcfg: TrainConfig = TrainConfig(),
    out: str | Path | None = None,
    resume: bool = False,
    progress: Callable[[dict], None] | None = None,
    metrics: dict | None = None,
) -> tuple[ModelBundle, list[dict]]:
    """Train HGGEP on ``sections`` (one slide per step). A fraction ``val_frac`` of each
    training section's spots is held out of the loss and used for model selection.
    With ``out``, the best model is written there and a resumable state beside it."""
    if not sections:
        raise ValueError("no training sections")
    if config.n_genes != len(genes):
        config = config.replace(n_genes=len(genes))
    torch.manual_seed(tcfg.seed)
    g = torch.Generator().manual_seed(tcfg.seed)
    device = resolve_device(tcfg.device)
    train_masks = _split(sections, tcfg.val_frac, tcfg.seed, tcfg.val_split)
    # the loss may see denoised targets; validation always scores against the raw ones
    fit_targets = [smooth_targets(s.target, s.coords_um, tcfg.smooth_targets) for s in sections]
    mean, std = gene_stats(sections, train_masks)
    model = HGGEP(config).to(device)
    if config.head_rank:
        z = np.concatenate([(t[m] - mean) / std for t, m in zip(fit_targets, train_masks)])
        init_low_rank_head(model, z)
    if config.stain_skip:
        init_stain_skip(model, sections, fit_targets, train_masks, mean, std)
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tcfg.lr,
                            weight_decay=tcfg.weight_decay)
    total_steps = tcfg.epochs * sum(bool(m.any()) for m in train_masks)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(len(sections) * 2, 1)) * 0.5 * (1 + math.cos(math.pi * s / max(total_steps, 1)))
    )
    start_epoch, best, best_state, history = 0, -float("inf"), None, []
    state_path = Path(str(out) + ".state") if out else None
    if resume and state_path and state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        g.set_state(st["rng"])
        start_epoch, best, history = st["epoch"], st["best"], list(st["history"])
        best_state = st["best_state"]
    tensors = [
        (torch.from_numpy((t - mean) / std).float().to(device), torch.from_numpy(s.counts).to(device),
         torch.from_numpy(m).to(device), torch.from_numpy(s.coords_um).to(device))
        for s, t, m in zip(sections, fit_targets, train_masks)
    ]
    has_val = any((~m).any() for m in train_masks)
    for epoch in range(start_epoch, tcfg.epochs):
        t0 = time.time()
        model.train()
        losses = []
        order = torch.randperm(len(sections), generator=g).tolist()
        for i in (j for j in order if train_masks[j].any()):
            sec = sections[i]
            z, counts, mask, coords = tensors[i]
            x = augment(to_tensor(sec.patches), g, tcfg.jitter).to(device)
            if torch.rand(1, generator=g).item() < 0.5:  # mirror the slide layout too
                coords = coords * torch.tensor([-1.0, 1.0], device=device)
            out_ = model(x, coords)
            loss = hggep_loss(out_, z, counts, tcfg.zinb_weight, mask)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                for pe, pm in zip(ema.state_dict().values(), model.state_dict().values()):
                    if pe.is_floating_point():
                        pe.mul_(tcfg.ema).add_(pm.detach(), alpha=1 - tcfg.ema)
                    else:
                        pe.copy_(pm)
            losses.append(loss.item())
        val = float("nan")
        if has_val:
            rs = []
            for sec, m in zip(sections, train_masks):
                if (~m).sum() > 2:
                    pred = predict_section(ema, sec, mean, std, device)
                    rs.append(np.nanmean(gene_pcc(pred[~m], sec.target[~m])))
            val = float(np.mean(rs))
        rec = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_pcc": val, "seconds": time.time() - t0}
        history.append(rec)
        score = val if has_val else -rec["loss"]
        if score > best or best_state is None:
            best = score
            best_state = {k: v.detach().cpu().clone() for k, v in ema.state_dict().items()}
        if progress:
            progress(rec)
        if state_path is not None:
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "rng": g.get_state(), "epoch": epoch + 1, "best": best,
                        "history": history, "best_state": best_state}, buf)
            atomic_write_bytes(state_path, buf.getvalue())
    final = HGGEP(config)
    final.load_state_dict(best_state)
    final.to(device).eval()
    target_norm = {"kind": "log1p_median_total", "mean": mean.tolist(), "std": std.tolist()}
    meta = {"metrics": metrics or {}, "history": history, "train": asdict(tcfg)}
    bundle = ModelBundle(final, config, list(genes), target_norm, meta)
    if out:
        save_checkpoint(out, final, config, genes, target_norm, [s.name for s in sections],
                        {**(metrics or {}), "best_val_pcc": best if has_val else None},
                        extra={"train": asdict(tcfg), "history": history}, half=True)
    return bundle, history
