"""Training with honest model selection: the validation spots come from the training
sections only; the held-out section is never looked at while training."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .._atomic import atomic_write_bytes
from ..data.features import standardise_features
from ..data.patches import to_tensor
from ..devices import resolve_device
from ..distributed import SINGLE, DistContext, all_sum, barrier
from ..model.checkpoint import ModelBundle, save_checkpoint
from ..model.config import HGGEPConfig
from ..model.hggep import HGGEP, dihedral_view
from ..model.losses import hggep_loss
from ..model.pretrained import load_backbone_into
from ..model.smoothing import neighbour_blend
from .augment import resolution_jitter, train_augment
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
    backbone: str | None = None  # pretrained image path from `napari-hggep pretrain`
    freeze_backbone: bool = False  # keep GEM + ShuffleNet fixed (their outputs are computed once)
    res_range: tuple[float, float] = (0.5, 4.0)  # scan resolutions (um/px) the image path sees in training
    ridge_alpha: float | None = None  # statistics branch; None: chosen by leave-one-section-out on the training sections
    # sections whose gradients are averaged into one step; under torchrun each rank takes its share
    # of a group (default there: one section per rank), and one process with the same group size
    # gives the same loss curve
    sections_per_step: int = 1
    # a napari-hggep checkpoint to start from (e.g. the bundled model): every weight of the image
    # path whose name and shape match is copied; the outputs (heads, PCA basis, statistics
    # ridge) are new, made for this run's genes
    init_from: str | None = None
    # keep GEM + ShuffleNet + the stage projections fixed: each spot's tokens are computed once
    # for a few flipped/rotated/rescaled views, and only the slide-level part (attention,
    # hypergraph, fusion, heads) trains; the cheap way to use a pretrained image path on a CPU
    freeze_encoder: bool = False
    encoder_views: int = 2
    max_minutes: float | None = None  # time budget for the epochs (the best model so far is kept)
    # a section with more spots trains window by window (overlapping spatial windows, the loss on
    # each window's core), gradients accumulated into the section's step: bounded memory
    train_window_spots: int = 2048


def smooth_targets(target: np.ndarray, coords_um: np.ndarray, weight: float) -> np.ndarray:
    """Denoise ST targets: blend each spot with the mean of its nearest-ring neighbours."""
    if weight <= 0 or len(target) < 3:
        return target
    t = neighbour_blend(torch.from_numpy(np.asarray(target, np.float32)),
                        torch.from_numpy(np.asarray(coords_um, np.float32)), weight)
    return t.numpy().astype(np.float32)


def gene_stats(sections: list[SectionData], masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    y = np.concatenate([s.target[m] for s, m in zip(sections, masks)])
    return y.mean(0), np.maximum(y.std(0), 1e-3)


def pca_basis(z: np.ndarray, k: int, blocks=None) -> np.ndarray:
    """The top ``k`` principal axes (``k x G``, orthonormal rows) of standardised targets; with
    ``blocks`` (gene counts of consecutive blocks), ``k`` axes per block, each zero outside its
    block (``k * len(blocks) x G``)."""
    if blocks:
        out = np.zeros((k * len(blocks), z.shape[1]), np.float32)
        start = 0
        for b, n in enumerate(blocks):
            out[b * k:(b + 1) * k, start:start + n] = pca_basis(z[:, start:start + n], k)
            start += n
        return out
    _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
    basis = np.zeros((k, z.shape[1]), np.float32)
    basis[: min(k, len(vt))] = vt[:k]  # fewer axes than k when there are few genes or spots
    return basis


def _stats_rows(sec: SectionData, mask: np.ndarray) -> np.ndarray:
    """A section's z-scored statistics at its own resolution, then at the resampled ones."""
    return np.concatenate([standardise_features(f)[mask] for f in (sec.stats, *sec.stats_aug)])


@torch.no_grad()
def init_stats_branch(model: HGGEP, sections, z_targets, masks, alpha: float | None = None) -> float:
    """Fix the statistics branch at the ridge solution from the tissue statistics to the
    output (principal components, or genes) on the training spots, and freeze it; the image
    path then learns what the statistics cannot explain. Rows computed on the slide resampled
    to other resolutions are added, so the branch holds at any scan resolution. ``alpha``
    None: chosen by leave-one-section-out over the training sections. Returns alpha."""
    from .baseline import choose_alpha, ridge_solve

    if any(s.stats is None for s in sections):
        raise ValueError("the statistics branch needs the sections' tissue statistics")
    basis = model.pca_basis.cpu().numpy() if model.config.pca_k is not None else None
    xs, ys, zs = [], [], []
    for sec, z, m in zip(sections, z_targets, masks):
        copies = 1 + len(sec.stats_aug)
        xs.append(_stats_rows(sec, m))
        out = z[m] @ basis.T if basis is not None else z[m]
        ys.append(np.concatenate([out] * copies))
        zs.append(z[m])

    def score(pred, i):
        p = pred[: len(zs[i])]
        return float(np.nanmean(gene_pcc(p @ basis if basis is not None else p, zs[i])))

    alpha = choose_alpha(xs, ys, score) if alpha is None else float(alpha)
    x, y = np.concatenate(xs), np.concatenate(ys)
    w = ridge_solve(x, y - y.mean(0), alpha)
    model.stats_head.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
    model.stats_head.bias.copy_(torch.from_numpy(y.mean(0).astype(np.float32)))
    model.stats_head.requires_grad_(False)
    return alpha


def _stats_tensor(sec: SectionData, device):
    return None if sec.stats is None else torch.from_numpy(standardise_features(sec.stats)).to(device)


@torch.no_grad()
def predict_section(model: HGGEP, sec: SectionData, mean: np.ndarray, std: np.ndarray, device,
                    views: int = 1) -> np.ndarray:
    """A section's predicted expression; patches are encoded in batches of 256 (memory stays
    bounded on a section of thousands of spots), then attention and the hypergraph run over
    the whole section."""
    model.eval()
    tokens = None
    if model.config.image_path:
        colour = None
        if model.config.colour_norm == "slide":  # the section's own colour statistics, as one batch would give
            s1, s2, n = np.zeros(3), np.zeros(3), 0
            for i in range(0, sec.n_spots, 256):
                p = sec.patches[i:i + 256].reshape(-1, 3).astype(np.float64) / 255.0
                s1, s2, n = s1 + p.sum(0), s2 + (p * p).sum(0), n + len(p)
            mu = s1 / n
            sd = np.sqrt(np.maximum(s2 - n * mu * mu, 0) / max(n - 1, 1))
            colour = (torch.tensor(mu, dtype=torch.float32, device=device),
                      torch.tensor(np.maximum(sd, 1e-3), dtype=torch.float32, device=device))
        tokens = torch.cat([model.encode_views(to_tensor(sec.patches[i:i + 256]).to(device), colour, views=views)
                            for i in range(0, sec.n_spots, 256)])
    c = torch.from_numpy(sec.coords_um).to(device)
    st = _stats_tensor(sec, device) if model.config.stats_features else None
    z = model.forward_tokens(tokens, c, st)["expr"].float().cpu().numpy()
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
    dist: DistContext = SINGLE,
    should_stop: Callable[[], bool] | None = None,
    keep_state: bool = True,
    card: dict | None = None,
) -> tuple[ModelBundle, list[dict]]:
    """Train HGGEP on ``sections`` (one slide per step, or groups of ``sections_per_step``).
    A fraction ``val_frac`` of each training section's spots is held out of the loss and used
    for model selection. With ``out``, the best model is written there and a resumable state
    beside it (by rank 0 only under torchrun, where ``dist`` is this rank's context), removed
    after success unless ``keep_state``. ``should_stop()`` true between steps cancels the run
    (:class:`TrainingCancelled`; the state of the last finished epoch is kept for resuming).
    ``card``: more entries for the model card's ``extra``."""
    if not sections:
        raise ValueError("no training sections")
    group = max(int(tcfg.sections_per_step), 1)
    if dist.active:
        group = group if group > 1 else dist.world
        if group % dist.world:
            raise ValueError(f"sections per step ({group}) must be a multiple of the {dist.world} processes")
    if config.n_genes != len(genes):
        config = config.replace(n_genes=len(genes))
    torch.manual_seed(tcfg.seed)
    g = torch.Generator().manual_seed(tcfg.seed)
    device = resolve_device(tcfg.device)
    train_masks = _split(sections, tcfg.val_frac, tcfg.seed, tcfg.val_split)
    # the loss may see denoised targets; validation always scores against the raw ones
    fit_targets = [smooth_targets(s.target, s.coords_um, tcfg.smooth_targets) for s in sections]
    mean, std = gene_stats(sections, train_masks)
    model = HGGEP(config)
    provenance: dict = {}
    if tcfg.init_from and config.image_path:
        provenance["initialised_from"] = init_from_checkpoint(model, tcfg.init_from)
    if tcfg.backbone and config.image_path:
        provenance["pretrained_backbone"] = load_backbone_into(model, tcfg.backbone)
    z_targets = [((t - mean) / std).astype(np.float32) for t in fit_targets]
    if config.pca_k is not None:
        basis = pca_basis(np.concatenate([z[m] for z, m in zip(z_targets, train_masks)]), config.pca_k,
                          config.pca_blocks)
        model.pca_basis.copy_(torch.from_numpy(basis))
    if config.stats_features:
        provenance["ridge_alpha"] = init_stats_branch(model, sections, z_targets, train_masks, tcfg.ridge_alpha)
    model.to(device)
    if (tcfg.freeze_backbone or tcfg.freeze_encoder) and config.image_path:
        model.gem.requires_grad_(False)
        model.backbone.requires_grad_(False)
    if tcfg.freeze_encoder and config.image_path:
        model.stages.requires_grad_(False)
    ema = copy.deepcopy(model).eval()
    step_net = _TrainForward(model)
    if dist.active:  # gradients averaged across ranks by PyTorch's DistributedDataParallel
        from torch.nn.parallel import DistributedDataParallel

        step_net = DistributedDataParallel(step_net, device_ids=[device] if device.type == "cuda" else None,
                                           find_unused_parameters=True)
    trainable = [p for p in model.parameters() if p.requires_grad] or [torch.zeros(1, requires_grad=True)]
    opt = torch.optim.AdamW(trainable, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    n_trainable = sum(bool(m.any()) for m in train_masks)
    total_steps = tcfg.epochs * (n_trainable if group == 1 else -(-n_trainable // group))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(len(sections) * 2, 1)) * 0.5 * (1 + math.cos(math.pi * s / max(total_steps, 1)))
    )
    start_epoch, best, best_state, history = 0, -float("inf"), None, []
    state_path = Path(str(out) + ".state") if out else None
    tensors = [
        (torch.from_numpy(z).to(device), torch.from_numpy(s.counts).to(device),
         torch.from_numpy(m).to(device), torch.from_numpy(s.coords_um).to(device), _stats_tensor(s, device))
        for s, z, m in zip(sections, z_targets, train_masks)
    ]
    has_val = any((~m).any() for m in train_masks)
    epochs = tcfg.epochs if config.image_path else 0  # a statistics-only model is fitted in closed form
    frozen, kind = None, None
    if epochs and tcfg.freeze_encoder:
        t_tok = time.time()
        frozen, kind = _frozen_token_views(model, sections, tcfg, device), "tokens"
        provenance["token_views_seconds"] = round(time.time() - t_tok, 1)
    elif epochs and tcfg.freeze_backbone:
        frozen, kind = _frozen_trunk_views(model, sections, g, tcfg, device), "maps"
    # what makes a run repeatable: the same sections, genes and config, then every random stream
    fingerprint = {"config": json.dumps(config.to_dict(), sort_keys=True), "genes": list(genes),
                   "sections": [s.name for s in sections], "seed": int(tcfg.seed)}
    if resume and state_path and state_path.is_file():  # after the frozen views, which an uninterrupted run draws first
        st = _read_state(state_path, fingerprint)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        g.set_state(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        start_epoch, best, history = st["epoch"], st["best"], list(st["history"])
        best_state = st["best_state"]
    windows = [_train_windows(s, tcfg.train_window_spots, device) for s in sections]
    t_start = time.time()
    stopped_early = False
    for epoch in range(start_epoch, epochs):
        per_epoch = (time.time() - t_start) / max(epoch - start_epoch, 1)
        if tcfg.max_minutes is not None and epoch > start_epoch and \
                time.time() - t_start + per_epoch > 60 * tcfg.max_minutes:  # the next epoch would not fit
            stopped_early = True
            break
        t0 = time.time()
        model.train()
        if frozen is not None:
            model.gem.eval()
            model.backbone.eval()
            if kind == "tokens":
                model.stages.eval()
        losses = []
        order = torch.randperm(len(sections), generator=g).tolist()
        order = [j for j in order if train_masks[j].any()]
        if group == 1:  # one section per step, every draw from the run's generator
            steps = [[(i, g)] for i in order]
        else:  # groups (cyclically filled): every section's draws from its own generator, so that
            # one process and many give the same steps
            order += order[: (-len(order)) % group]
            steps = [[(i, torch.Generator().manual_seed(_draw_seed(tcfg.seed, epoch, k, pos)))
                      for pos, i in enumerate(order[k:k + group])][dist.rank::dist.world]
                     for k in range(0, len(order), group)]
        for step in steps:
            if should_stop is not None and should_stop():
                raise TrainingCancelled(f"cancelled in epoch {epoch + 1}; the state after epoch {epoch} is kept"
                                        + (f" in {state_path}" if state_path else ""))
            opt.zero_grad()
            for n_done, (i, gen) in enumerate(step):
                sec = sections[i]
                z, counts, mask, coords, st = tensors[i]
                wins = windows[i]
                with _rng_scope(group > 1, gen, device):
                    if frozen is not None:  # one of the precomputed views for every spot
                        views = frozen[i]
                        pick = torch.randint(0, views[0].shape[0], (sec.n_spots,), generator=gen).to(device)
                        spots = torch.arange(sec.n_spots, device=device)
                        inputs = [v[pick, spots] for v in views]
                        inputs = inputs[0] if kind == "tokens" else inputs
                    elif len(wins) == 1:
                        inputs = train_augment(to_tensor(sec.patches), gen, tcfg.jitter, config.patch_um / config.patch_px,
                                               config.patch_um, tcfg.res_range).to(device)
                    else:
                        inputs = None  # augmented window by window (memory)
                    if torch.rand(1, generator=gen).item() < 0.5:  # mirror the slide layout too
                        coords = coords * torch.tensor([-1.0, 1.0], device=device)
                    sec_loss = 0.0
                    for n_win, (idx, core) in enumerate(wins):
                        # a large section trains window by window (attention within each, as in
                        # prediction), gradients accumulated: memory stays bounded
                        m_w = mask if idx is None else mask[idx] & core
                        share = float(m_w.sum()) / max(float(mask.sum()), 1.0)
                        if share == 0:
                            continue
                        if idx is None:
                            x = inputs
                        elif inputs is None:
                            x = train_augment(to_tensor(sec.patches[idx.cpu().numpy()]), gen, tcfg.jitter,
                                              config.patch_um / config.patch_px, config.patch_um,
                                              tcfg.res_range).to(device)
                        else:
                            x = [v[idx] for v in inputs] if isinstance(inputs, list) else inputs[idx]
                        sel = (lambda t: t) if idx is None else (lambda t: None if t is None else t[idx])  # noqa: E731
                        last = n_done == len(step) - 1 and n_win == len(wins) - 1
                        with (contextlib.nullcontext() if last or not dist.active else step_net.no_sync()):
                            out_ = step_net(x, sel(coords), sel(st))
                            loss = hggep_loss(out_, sel(z), sel(counts), tcfg.zinb_weight, m_w)
                            (loss * share / len(step)).backward()
                        sec_loss += loss.item() * share
                losses.append(sec_loss)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                for pe, pm in zip(ema.state_dict().values(), model.state_dict().values()):
                    if pe.is_floating_point():
                        pe.mul_(tcfg.ema).add_(pm.detach(), alpha=1 - tcfg.ema)
                    else:
                        pe.copy_(pm)
        if dist.active:  # the epoch's loss over every rank's sections
            total, count = all_sum(dist, [sum(losses), len(losses)], device)
            losses = [total / max(count, 1)]
        val = _val_pcc(ema, sections, train_masks, mean, std, device, frozen, kind) if has_val else float("nan")
        rec = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"), "val_pcc": val, "seconds": time.time() - t0}
        history.append(rec)
        score = val if has_val else -rec["loss"]
        if score > best or best_state is None:
            best = score
            best_state = {k: v.detach().cpu().clone() for k, v in ema.state_dict().items()}
        if progress:
            progress(rec)
        if state_path is not None and dist.is_main:
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "rng": g.get_state(), "torch_rng": torch.get_rng_state(),
                        "epoch": epoch + 1, "best": best, "history": history, "best_state": best_state,
                        "fingerprint": fingerprint}, buf)
            atomic_write_bytes(state_path, buf.getvalue())
    if best_state is None:  # nothing to train (statistics only): the closed-form model
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if has_val:
            best = _val_pcc(model, sections, train_masks, mean, std, device)
    final = HGGEP(config)
    final.load_state_dict(best_state)
    final.to(device).eval()
    target_norm = {"kind": "log1p_median_total", "mean": mean.tolist(), "std": std.tolist()}
    if stopped_early:
        provenance["stopped_early"] = f"time budget of {tcfg.max_minutes:g} min reached after {len(history)} epochs"
    extra = {"train": asdict(tcfg), "history": history, **provenance, **(card or {})}
    meta = {"metrics": metrics or {}, "history": history, "train": asdict(tcfg), "extra": extra}
    bundle = ModelBundle(final, config, list(genes), target_norm, meta)
    if out and dist.is_main:
        save_checkpoint(out, final, config, genes, target_norm, [s.name for s in sections],
                        {**(metrics or {}), "best_val_pcc": best if has_val else None}, extra=extra, half=True)
    barrier(dist)  # no rank ends before the files are written
    if state_path is not None and dist.is_main and not keep_state:
        state_path.unlink(missing_ok=True)
    return bundle, history


class TrainingCancelled(Exception):
    """The user stopped training; nothing was written but the resumable state."""


OUTPUT_PREFIXES = ("head.", "zinb_", "stats_head.", "pca_basis")


def init_from_checkpoint(model: HGGEP, path) -> dict:
    """Start ``model`` from a napari-hggep checkpoint (e.g. the bundled model): every weight of
    the image path whose name and shape match is copied; the outputs, which belong to the
    checkpoint's genes, are not. Returns provenance for the model card."""
    from ..model.checkpoint import CheckpointError, read_checkpoint

    meta, state = read_checkpoint(path)
    own = model.state_dict()
    body = [k for k in own if not k.startswith(OUTPUT_PREFIXES)]
    bad = [k for k in body if k in state and state[k].shape != own[k].shape]
    if bad or not any(k in state for k in body):
        k = bad[0] if bad else body[0]
        raise CheckpointError(f"{path}: its image path does not fit this model (e.g. {k}); start from a model of the "
                              "same preset, or use --from-scratch")
    copied = 0
    with torch.no_grad():
        for k in body:
            if k in state:
                own[k].copy_(state[k].to(own[k].dtype))
                copied += 1
    pre = meta.get("extra", {}).get("pretrained_backbone")
    return {"checkpoint": Path(path).name, "sections": meta.get("sections"), "tensors_copied": copied,
            "image_path_pretraining": pre}


class _TrainForward(torch.nn.Module):
    """One training forward pass as a module, so DistributedDataParallel can wrap it: patches
    (or a frozen trunk's views, or frozen tokens) to tokens, then attention, hypergraph and heads."""

    def __init__(self, model: HGGEP):
        super().__init__()
        self.model = model

    def forward(self, inputs, coords, stats):
        return self.model.forward_tokens(_tokens(self.model, inputs), coords, stats)


def _tokens(model: HGGEP, inputs):
    """Patches (``N x 3 x P x P``), a frozen trunk's stage maps (a list) or tokens (``N x 3 x d``)."""
    if isinstance(inputs, list):
        return model.project(inputs)
    return inputs if inputs.ndim == 3 else model.encode(inputs)


def _draw_seed(seed: int, epoch: int, step_start: int, position: int) -> int:
    return (int(seed) * 1_000_003 + epoch * 10_007 + step_start * 101 + position) % (2**63 - 1)


@contextlib.contextmanager
def _rng_scope(own: bool, gen: torch.Generator, device: torch.device):
    """With ``own``: dropout and the like draw from a stream seeded from ``gen`` (the same on
    one process or many); otherwise from the run's global stream, as always."""
    if not own:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(gen.initial_seed() + 1)
        yield


def _read_state(path: Path, fingerprint: dict) -> dict:
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


def _val_pcc(model, sections, masks, mean, std, device, frozen=None, kind="maps") -> float:
    """Mean gene PCC on the validation spots of the training sections (never a test section).
    ``frozen``: the precomputed trunk maps (their first view is the patch as it is)."""
    rs = []
    for i, (sec, m) in enumerate(zip(sections, masks)):
        if (~m).sum() > 2:
            if frozen is None:
                pred = predict_section(model, sec, mean, std, device)
            else:
                with torch.no_grad():
                    model.eval()
                    tokens = _tokens(model, frozen[i][0][0] if kind == "tokens" else [v[0] for v in frozen[i]])
                    z = model.forward_tokens(tokens, torch.from_numpy(sec.coords_um).to(device),
                                             _stats_tensor(sec, device))["expr"].float().cpu().numpy()
                pred = z * std + mean
            rs.append(np.nanmean(gene_pcc(pred[~m], sec.target[~m])))
    return float(np.mean(rs)) if rs else float("nan")


@torch.no_grad()
def _frozen_trunk_views(model: HGGEP, sections, g: torch.Generator, tcfg: TrainConfig, device,
                        n_views: int = 8, batch: int = 256) -> list[list[torch.Tensor]]:
    """With a frozen GEM + ShuffleNet, their stage maps are computed once per spot for
    ``n_views`` (up to 8) views: the flips/rotations, every second one also at a random scan resolution
    in ``tcfg.res_range``. Per section: [S3, S4, S5] tensors ``V x N x C x h x w``."""
    was = model.training
    model.eval()
    cfg = model.config
    out = []
    for sec in sections:
        per_view = []
        for k in range(n_views):
            maps = []
            for i in range(0, sec.n_spots, batch):
                x = to_tensor(sec.patches[i:i + batch])
                x = dihedral_view(x, k)
                if k % 2:
                    x = resolution_jitter(x, g, cfg.patch_um / cfg.patch_px, cfg.patch_um, *tcfg.res_range)
                maps.append(model.trunk(x.contiguous().to(device)))
            per_view.append([torch.cat(m) for m in zip(*maps)])
        out.append([torch.stack(v) for v in zip(*per_view)])
    model.train(was)
    return out


@torch.no_grad()
def _frozen_token_views(model: HGGEP, sections, tcfg: TrainConfig, device, batch: int = 256) -> list[list[torch.Tensor]]:
    """With a frozen encoder, each spot's tokens for ``tcfg.encoder_views`` views (the patch as
    it is, then flips/rotations, every second one at a random scan resolution): per section
    ``[V x N x 3 x d]``. The views are drawn per section (seeded by its name), so they are the
    same in every fold that trains on it, and cached on the section for the same encoder."""
    import hashlib

    from ..model.hggep import use_fast_inference_layout

    was = model.training
    model.eval()
    use_fast_inference_layout(model)  # the frozen encoder only runs here, without gradients: ~2x on a CPU
    cfg = model.config
    enc = hashlib.sha1()
    for k, v in model.state_dict().items():
        if k.startswith(("gem.", "backbone.", "stages.")):
            enc.update(k.encode())
            enc.update(v.detach().cpu().float().numpy().tobytes())
    key = (enc.hexdigest(), int(tcfg.encoder_views), tuple(tcfg.res_range), str(device))
    out = []
    for sec in sections:
        cache = getattr(sec, "_token_cache", None)
        if cache is not None and cache[0] == key:
            out.append(cache[1])
            continue
        gen = torch.Generator().manual_seed(int(hashlib.sha1(sec.name.encode()).hexdigest()[:8], 16))
        views = []
        for k in range(max(int(tcfg.encoder_views), 1)):
            toks = []
            for i in range(0, sec.n_spots, batch):
                x = dihedral_view(to_tensor(sec.patches[i:i + batch]), k)
                if k % 2:
                    x = resolution_jitter(x, gen, cfg.patch_um / cfg.patch_px, cfg.patch_um, *tcfg.res_range)
                toks.append(model.encode(x.to(device).contiguous(memory_format=torch.channels_last)))
            views.append(torch.cat(toks))
        entry = [torch.stack(views)]
        sec._token_cache = (key, entry)
        out.append(entry)
    model.train(was)
    return out


def _train_windows(sec: SectionData, max_spots: int, device) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """``[(spot indices, core mask)]`` of a section's training windows; ``[(None, None)]``
    (the whole section at once) when it has at most ``max_spots`` spots."""
    from ..model.windows import spatial_windows

    if sec.n_spots <= max_spots:
        return [(None, None)]
    out = []
    for idx, w in spatial_windows(sec.coords_um, max_spots):
        out.append((torch.from_numpy(idx).to(device), torch.from_numpy(w >= 1.0 - 1e-9).to(device)))
    return out
