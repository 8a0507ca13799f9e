"""The training forward pass and what feeds it: patches, a frozen trunk's stage maps or a frozen
encoder's tokens (precomputed for a few flipped / rotated / rescaled views) to tokens, and a large
section's overlapping training windows (bounded memory)."""
from __future__ import annotations

import torch

from ..data.patches import to_tensor
from ..model.hggep import HGGEP, dihedral_view
from .augment import resolution_jitter
from .config import TrainConfig
from .dataset import SectionData


class TrainForward(torch.nn.Module):
    """One training forward pass as a module, so DistributedDataParallel can wrap it: patches
    (or a frozen trunk's views, or frozen tokens) to tokens, then attention, hypergraph and heads."""

    def __init__(self, model: HGGEP):
        super().__init__()
        self.model = model

    def forward(self, inputs, coords, stats):
        return self.model.forward_tokens(patch_tokens(self.model, inputs), coords, stats)


def patch_tokens(model: HGGEP, inputs):
    """Patches (``N x 3 x P x P``), a frozen trunk's stage maps (a list) or tokens (``N x 3 x d``)."""
    if isinstance(inputs, list):
        return model.project(inputs)
    return inputs if inputs.ndim == 3 else model.encode(inputs)


@torch.no_grad()
def frozen_trunk_views(model: HGGEP, sections, g: torch.Generator, tcfg: TrainConfig, device,
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
def frozen_token_views(model: HGGEP, sections, tcfg: TrainConfig, device, batch: int = 256) -> list[list[torch.Tensor]]:
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


def train_windows(sec: SectionData, max_spots: int, device) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """``[(spot indices, core mask)]`` of a section's training windows; ``[(None, None)]``
    (the whole section at once) when it has at most ``max_spots`` spots."""
    from ..model.windows import spatial_windows

    if sec.n_spots <= max_spots:
        return [(None, None)]
    out = []
    for idx, w in spatial_windows(sec.coords_um, max_spots):
        out.append((torch.from_numpy(idx).to(device), torch.from_numpy(w >= 1.0 - 1e-9).to(device)))
    return out
