"""What a training run starts from: the targets (optionally denoised), each gene's mean and spread,
the principal output axes, the statistics branch fixed at its ridge solution, and the image path's
weights copied from a checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.features import standardise_features
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
