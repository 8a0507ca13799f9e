"""What a training run starts from: the targets (optionally denoised), each gene's mean and spread,
the principal output axes, the statistics branch fixed at its ridge solution, and the image path's
weights copied from a checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..model.hggep import HGGEP
from ..model.smoothing import neighbour_blend
from .dataset import SectionData
from .metrics import gene_pcc

OUTPUT_PREFIXES = ("head.", "zinb_", "stats_head.", "pca_basis")



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


def _stats_rows(sec: SectionData, mask: np.ndarray, n_features: int) -> np.ndarray:
    """A section's z-scored statistics at its own resolution, then at the resampled ones (each
    with the pooled encoder features when the model reads them)."""
    return np.concatenate([sec.stats_input(n_features, aug)[mask] for aug in (None, *range(len(sec.stats_aug)))])


# weights of the pooled encoder features' block against the tissue statistics, as multiples of
# sqrt(tissue columns / pooled columns) (at 1 both blocks carry the same total variance)
POOLED_WEIGHTS = (0.5, 1.0, 2.0)
# the pooled features are kept when they add at least this much mean PCC over the tissue statistics
# alone, held out within the training sections (by patient when they name two or more, else by
# section; else weight 0: the model drops them)
POOLED_MIN_GAIN = 0.005


def _pooled_base(cfg) -> float:
    return float(np.sqrt(cfg.tissue_features / cfg.pooled_features)) if cfg.tissue_features else 1.0


def choose_pooled_weight(cfg, sections, xs, ys, zs, basis, alpha=None, fixed=None) -> tuple[float, float, dict]:
    """The pooled features' block weight (0: left out), the ridge strength that goes with it and a
    note for the card. Held out by patient when the training sections name two or more (the
    features must hold on a patient not trained on), else by section; with one group there is
    nothing to choose on and they are left out. ``fixed``: that weight, not chosen."""
    from .baseline import ALPHAS, ridge_scores

    base = _pooled_base(cfg)
    pats = [s.patient for s in sections]
    by = pats if all(pats) and len(set(pats)) >= 2 else [s.name for s in sections]
    groups = list(dict.fromkeys(by))
    if fixed is not None or len(groups) < 2:
        weight = 0.0 if fixed is None else float(fixed)
        why = "fixed (--pooled-weight)" if fixed is not None else "one training group: nothing to choose on"
        return weight, 300.0 if alpha is None else float(alpha), {"weight": weight, "kept": weight > 0, "chosen": why}
    alphas = ALPHAS if alpha is None else (float(alpha),)

    def rows(arrs, g):  # a group's rows at each section's own resolution first, then the copies
        own = [a[: len(z)] for a, z, b in zip(arrs, zs, by) if b == g]
        rest = [a[len(z):] for a, z, b in zip(arrs, zs, by) if b == g]
        return np.concatenate(own + rest)

    gx, gy = [rows(xs, g) for g in groups], [rows(ys, g) for g in groups]
    gz = [[z for z, b in zip(zs, by) if b == g] for g in groups]

    def group_score(pred, i):  # the mean over the group's sections, at their own resolution
        out, at = [], 0
        for z in gz[i]:
            p = pred[at:at + len(z)]
            at += len(z)
            out.append(float(np.nanmean(gene_pcc(p @ basis if basis is not None else p, z))))
        return float(np.mean(out))

    found = {}
    for wgt in (0.0, *POOLED_WEIGHTS):
        s = np.ones(cfg.stats_features)
        s[cfg.tissue_features:] = wgt * base
        res = ridge_scores([x * s for x in gx], gy, group_score, alphas)
        k = int(np.argmax(res))
        found[wgt] = (float(res[k]), float(alphas[k]))
    best = max(POOLED_WEIGHTS, key=lambda w: found[w][0])
    gain = found[best][0] - found[0.0][0]
    weight = best if gain >= POOLED_MIN_GAIN else 0.0
    return weight, found[weight][1], {
        "weight": weight, "held_out_by": "patient" if by is pats else "section", "inner_pcc_with": round(found[best][0], 4),
        "inner_pcc_without": round(found[0.0][0], 4), "gain": round(gain, 4), "min_gain": POOLED_MIN_GAIN,
        "kept": weight > 0}


@torch.no_grad()
def init_stats_branch(model: HGGEP, sections, z_targets, masks, alpha: float | None = None,
                      pooled_weight: float | None = None) -> tuple[float, dict | None]:
    """Fix the statistics branch at the ridge solution from the tissue statistics to the
    output (principal components, or genes) on the training spots, and freeze it; the image
    path then learns what the statistics cannot explain. Rows computed on the slide resampled
    to other resolutions are added, so the branch holds at any scan resolution. ``alpha``
    None: chosen by leave-one-section-out over the training sections. With the encoder's pooled
    features (``config.pooled_um``) their block's weight is chosen the same way (from
    :data:`POOLED_WEIGHTS`, or 0 when none adds :data:`POOLED_MIN_GAIN` over the tissue statistics
    alone; held out by patient when the sections name two or more; ``pooled_weight``: fixed instead) and
    folded into the branch's weights. Returns alpha and a note on the pooled features
    (None without them): weight, the inner held-out PCC with and without them."""
    from .baseline import choose_alpha, ridge_solve

    cfg = model.config
    if cfg.tissue_features and any(s.stats is None for s in sections):
        raise ValueError("the statistics branch needs the sections' tissue statistics")
    if cfg.pooled_um and any(s.pooled is None for s in sections):
        raise ValueError("the statistics branch needs the sections' pooled encoder features")
    basis = model.pca_basis.cpu().numpy() if cfg.pca_k is not None else None
    xs, ys, zs = [], [], []
    for sec, z, m in zip(sections, z_targets, masks):
        copies = 1 + len(sec.stats_aug)
        xs.append(_stats_rows(sec, m, model.config.stats_features))
        out = z[m] @ basis.T if basis is not None else z[m]
        ys.append(np.concatenate([out] * copies))
        zs.append(z[m])

    def score(pred, i):
        p = pred[: len(zs[i])]
        return float(np.nanmean(gene_pcc(p @ basis if basis is not None else p, zs[i])))

    scale, note = np.ones(cfg.stats_features), None
    if cfg.pooled_um and not cfg.tissue_features:  # the branch's only columns: nothing to weigh them against
        note = {"weight": 1.0, "kept": True, "chosen": "the statistics branch reads the pooled features alone"}
    elif cfg.pooled_um:
        weight, pooled_alpha, note = choose_pooled_weight(cfg, sections, xs, ys, zs, basis, alpha, pooled_weight)
        scale[cfg.tissue_features:] = weight * _pooled_base(cfg)
        if weight > 0:
            alpha = pooled_alpha
        else:  # left out: exactly the tissue statistics' own ridge
            t = cfg.tissue_features
            alpha = choose_alpha([x[:, :t] for x in xs], ys, score) if alpha is None else float(alpha)
    alpha = choose_alpha(xs, ys, score) if alpha is None else float(alpha)
    x, y = np.concatenate(xs) * scale, np.concatenate(ys)
    w = ridge_solve(x, y - y.mean(0), alpha) * scale[:, None]  # the block weights folded into the weights
    model.stats_head.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
    model.stats_head.bias.copy_(torch.from_numpy(y.mean(0).astype(np.float32)))
    model.stats_head.requires_grad_(False)
    return alpha, note


def init_from_checkpoint(model: HGGEP, path) -> dict:
    """Start ``model`` from a napari-hggep checkpoint (e.g. the bundled model): every weight of
    the image path whose name and shape match is copied; the outputs, which belong to the
    checkpoint's genes, are not. Returns provenance for the model card."""
    from ..model.checkpoint import CheckpointError, read_checkpoint

    card, state = read_checkpoint(path)
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
    return {"checkpoint": Path(path).name, "sections": card.sections, "tensors_copied": copied,
            "image_path_pretraining": card.pretrained_backbone}
