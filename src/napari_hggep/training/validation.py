"""Honest model selection: the validation spots come from the training sections only (a fraction of
each, or one whole section), scored by mean gene PCC; and a section's predicted expression."""
from __future__ import annotations

import numpy as np
import torch

from ..data.patches import to_tensor
from ..model.hggep import HGGEP
from .dataset import SectionData
from .forward import patch_tokens
from .metrics import gene_pcc


def validation_split(sections: list[SectionData], frac: float, seed: int, how: str = "spots") -> list[np.ndarray]:
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


def stats_tensor(sec: SectionData, device, n_features: int):
    """The section's statistics as a model with ``n_features`` statistics columns reads them (None: none)."""
    x = sec.stats_input(n_features)
    return None if x is None else torch.from_numpy(x).to(device)


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
        if model.config.encoder_spec.external and views <= 1:  # a frozen pretrained encoder: its maps once
            from .feature_cache import encoder_maps

            maps = encoder_maps(model, sec.patches, device, cache=getattr(model, "feature_cache", None))
            tokens = torch.cat([model.project([m[i:i + 256].to(device) for m in maps])
                                for i in range(0, sec.n_spots, 256)])
        else:
            tokens = torch.cat([model.encode_views(to_tensor(sec.patches[i:i + 256]).to(device), colour, views=views)
                                for i in range(0, sec.n_spots, 256)])
    c = torch.from_numpy(sec.coords_um).to(device)
    st = stats_tensor(sec, device, model.config.stats_features)
    z = model.forward_tokens(tokens, c, st)["expr"].float().cpu().numpy()
    return z * std + mean


def validation_pcc(model, sections, masks, mean, std, device, frozen=None, kind="maps") -> float:
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
                    tokens = patch_tokens(model, frozen[i][0][0] if kind == "tokens" else [v[0] for v in frozen[i]])
                    z = model.forward_tokens(tokens, torch.from_numpy(sec.coords_um).to(device),
                                             stats_tensor(sec, device, model.config.stats_features))["expr"].float().cpu().numpy()
                pred = z * std + mean
            rs.append(np.nanmean(gene_pcc(pred[~m], sec.target[~m])))
    return float(np.mean(rs)) if rs else float("nan")
