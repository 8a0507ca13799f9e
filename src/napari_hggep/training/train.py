"""Training with honest model selection: the validation spots come from the training
sections only; the held-out section is never looked at while training.

:func:`train_model` runs the epochs; it starts from :mod:`.initialise`, feeds the model through
:mod:`.forward`, selects the best epoch by :mod:`.validation`, and saves and resumes through
:mod:`.resume`. Its settings are :class:`.config.TrainConfig`."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .._atomic import atomic_write_bytes
from ..data.patches import to_tensor
from ..devices import resolve_device
from ..distributed import SINGLE, DistContext, all_sum, barrier
from ..model.checkpoint import ModelBundle, save_checkpoint
from ..model.config import HGGEPConfig
from ..model.hggep import HGGEP
from ..model.losses import hggep_loss
from ..model.pretrained import load_backbone_into
from ..records import ModelCard
from .augment import train_augment
from .config import TrainConfig
from .dataset import SectionData
from .forward import TrainForward, frozen_token_views, frozen_trunk_views, train_windows
from .initialise import gene_stats, init_from_checkpoint, init_stats_branch, pca_basis, smooth_targets
from .resume import draw_seed, read_state, rng_scope
from .validation import stats_tensor, validation_pcc, validation_split


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
    train_masks = validation_split(sections, tcfg.val_frac, tcfg.seed, tcfg.val_split)
    # the loss may see denoised targets; validation always scores against the raw ones
    fit_targets = [smooth_targets(s.target, s.coords_um, tcfg.smooth_targets) for s in sections]
    mean, std = gene_stats(sections, train_masks)
    external = bool(config.image_path and config.encoder_spec.external)  # a frozen pretrained encoder
    weights = None
    if config.image_path and config.pretrained_encoder:
        from ..model.encoders import verify_weights

        weights = verify_weights(config.encoder, tcfg.encoder_weights)
        if tcfg.backbone:
            raise ValueError(f"a pretrained backbone from `napari-hggep pretrain` is a ShuffleNet; this model's "
                             f"encoder is {config.encoder.label}")
    model = HGGEP(config, encoder_weights=weights)
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
        provenance["ridge_alpha"], pooled = init_stats_branch(model, sections, z_targets, train_masks,
                                                              tcfg.ridge_alpha, tcfg.pooled_weight)
        if pooled is not None:
            provenance["pooled_features"] = pooled
    model.to(device)
    if (tcfg.freeze_backbone or tcfg.freeze_encoder or external) and config.image_path:
        model.gem.requires_grad_(False)
        model.backbone.requires_grad_(False)
    if tcfg.freeze_encoder and config.image_path and not external:
        model.stages.requires_grad_(False)
    ema = copy.deepcopy(model).eval()
    step_net = TrainForward(model)
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
         torch.from_numpy(m).to(device), torch.from_numpy(s.coords_um).to(device), stats_tensor(s, device, config.stats_features))
        for s, z, m in zip(sections, z_targets, train_masks)
    ]
    has_val = any((~m).any() for m in train_masks)
    epochs = tcfg.epochs if config.image_path else 0  # a statistics-only model is fitted in closed form
    frozen, kind = None, None
    if epochs and external:  # the encoder's maps once per view (and from the disk cache when there)
        from .feature_cache import frozen_encoder_views

        t_enc = time.time()
        frozen, kind = frozen_encoder_views(model, sections, tcfg, device), "maps"
        provenance["encoder_features_seconds"] = round(time.time() - t_enc, 1)
    elif epochs and tcfg.freeze_encoder:
        t_tok = time.time()
        frozen, kind = frozen_token_views(model, sections, tcfg, device), "tokens"
        provenance["token_views_seconds"] = round(time.time() - t_tok, 1)
    elif epochs and tcfg.freeze_backbone:
        frozen, kind = frozen_trunk_views(model, sections, g, tcfg, device), "maps"
    # what makes a run repeatable: the same sections, genes and config, then every random stream
    fingerprint = {"config": json.dumps(config.to_dict(), sort_keys=True), "genes": list(genes),
                   "sections": [s.name for s in sections], "seed": int(tcfg.seed)}
    if resume and state_path and state_path.is_file():  # after the frozen views, which an uninterrupted run draws first
        st = read_state(state_path, fingerprint)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        g.set_state(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        start_epoch, best, history = st["epoch"], st["best"], list(st["history"])
        best_state = st["best_state"]
    windows = [train_windows(s, tcfg.train_window_spots, device) for s in sections]
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
            steps = [[(i, torch.Generator().manual_seed(draw_seed(tcfg.seed, epoch, k, pos)))
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
                with rng_scope(group > 1, gen, device):
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
        val = validation_pcc(ema, sections, train_masks, mean, std, device, frozen, kind) if has_val else float("nan")
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
            best = validation_pcc(model, sections, train_masks, mean, std, device)
    if config.pooled_um and not provenance["pooled_features"].get("kept", True):
        # the pooled features added too little within the training sections: the model leaves them
        # out (their weights are 0), so predicting never runs the encoder for them
        from ..model.pooled import with_pooled

        best_state = dict(best_state, **{"stats_head.weight": best_state["stats_head.weight"][:, :config.tissue_features]})
        config = with_pooled(config, ())
    final = HGGEP(config)
    final.load_state_dict(best_state)
    final.to(device).eval()
    final.feature_cache = tcfg.feature_cache  # where predict_section finds a frozen encoder's maps
    target_norm = {"kind": "log1p_median_total", "mean": mean.tolist(), "std": std.tolist()}
    if stopped_early:
        provenance["stopped_early"] = f"time budget of {tcfg.max_minutes:g} min reached after {len(history)} epochs"
    extra = {"train": asdict(tcfg), "history": history, **provenance, **(card or {})}
    card = ModelCard(config=config.to_dict(), genes=list(genes), patch_um=float(config.patch_um),
                     target_norm=target_norm, sections=[s.name for s in sections], metrics=metrics or {}, extra=extra)
    bundle = ModelBundle(final, config, list(genes), target_norm, card)
    if out and dist.is_main:
        save_checkpoint(out, final, config, genes, target_norm, [s.name for s in sections],
                        {**(metrics or {}), "best_val_pcc": best if has_val else None}, extra=extra, half=True)
    barrier(dist)  # no rank ends before the files are written
    if state_path is not None and dist.is_main and not keep_state:
        state_path.unlink(missing_ok=True)
    return bundle, history


class TrainingCancelled(Exception):
    """The user stopped training; nothing was written but the resumable state."""
