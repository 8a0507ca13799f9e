"""A frozen pretrained encoder's feature maps, computed once and kept on disk.

The encoder is the costly part of a model on a pretrained encoder (EfficientNet-Lite0 runs about
10 patches/s on 2 CPU cores, a ViT-H far fewer), and frozen it gives the same maps every time: so
each batch of patches' three maps is stored (float16, atomically) under a key made of the
patches' pixels (the image under the spots at the model's scale), the view (flip / rotation /
resolution draw), the encoder (architecture, arguments, layers, grid, normalisation and the
weights' sha256), and read back instead of recomputed: a study retrains its heads in seconds, a
repeated prediction does not run the encoder. Maps are rounded to float16 whether they come
from the cache or not, so a cached run gives exactly what a fresh one gives.

Where: ``cache`` (``train --cache DIR`` puts them in ``DIR/encoder-features``), else
``$NAPARI_HGGEP_CACHE`` (``off`` turns the disk cache off), else the platform's cache folder
(``~/.cache/napari-hggep/encoder-features`` on Linux)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_write_bytes
from ..data.patches import to_tensor

ENV = "NAPARI_HGGEP_CACHE"
SUBDIR = "encoder-features"
BATCH = 64


def cache_root(cache=None) -> Path | None:
    """The folder the maps go to (None: the disk cache is off)."""
    if cache:
        return Path(cache) / SUBDIR
    env = os.environ.get(ENV, "").strip()
    if env:
        return None if env.lower() in ("off", "0", "none", "no") else Path(env).expanduser() / SUBDIR
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "napari-hggep" / SUBDIR


def encoder_key(spec) -> str:
    """What makes two encoders give the same maps (the weights file's place does not)."""
    d = {k: v for k, v in spec.to_dict().items() if k not in ("weights_file", "stored")}
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _key(patches: np.ndarray, view: str) -> str:
    h = hashlib.sha1()
    h.update(str(patches.shape).encode())
    h.update(np.ascontiguousarray(patches).view(np.uint8).reshape(-1).data)
    h.update(view.encode())
    return h.hexdigest()


def _read(path: Path) -> list[torch.Tensor] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return [torch.from_numpy(z[f"m{i}"].astype(np.float32)) for i in range(3)]
    except (OSError, ValueError, KeyError):  # damaged or half-copied: recomputed and rewritten
        return None


def _write(path: Path, maps: list[torch.Tensor]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{f"m{i}": m.numpy().astype(np.float16) for i, m in enumerate(maps)})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except OSError:  # a full or read-only disk costs the cache, never the run
        pass


@torch.no_grad()
def encoder_maps(model, patches: np.ndarray, device, transform=None, view: str = "0", cache=None,
                 batch: int = BATCH) -> list[torch.Tensor]:
    """The frozen encoder's three maps (``N x C x g x g`` each, float32 of float16 values, on the
    CPU) of uint8 ``patches`` (``N x P x P x 3``), batch by batch through the disk cache.
    ``transform(x)`` makes the view (a flip, a rotation, a resolution draw) that ``view`` names;
    it must be a function of ``view`` and the patches alone for the cache to hold."""
    root = cache_root(cache)
    folder = None if root is None else root / encoder_key(model.config.encoder_spec)
    was = model.training
    model.eval()
    fast = torch.device(device).type == "cpu"
    if fast:  # channels-last weights and input: oneDNN runs EfficientNet-Lite0 ~2x faster (no backward here)
        from ..model.hggep import use_fast_inference_layout

        use_fast_inference_layout(model)
    out: list[list[torch.Tensor]] = [[], [], []]
    for i in range(0, len(patches), batch):
        p = patches[i:i + batch]
        path = None if folder is None else folder / f"{_key(p, view)}.npz"
        maps = _read(path) if path is not None and path.is_file() else None
        if maps is None:
            x = to_tensor(p)
            if transform is not None:
                x = transform(x)
            x = x.to(device).contiguous(memory_format=torch.channels_last if fast else torch.contiguous_format)
            maps = [m.float().cpu().contiguous().half().float() for m in model.trunk(x)]
            if path is not None:
                _write(path, maps)
        for j, m in enumerate(maps):
            out[j].append(m)
    model.train(was)
    return [torch.cat(o) for o in out]


def frozen_encoder_views(model, sections, tcfg, device) -> list[list[torch.Tensor]]:
    """A frozen pretrained encoder's maps for ``tcfg.encoder_views`` views of every section's spots
    (the patch as it is, then flips / rotations, every second one at a scan resolution drawn from
    ``tcfg.res_range``, by a generator seeded by the section's name, the view and the batch): per
    section ``[S3, S4, S5]`` tensors ``V x N x C x g x g`` on ``device``. The draws are the same in
    every fold that trains on a section, so the disk cache serves them all."""
    from ..model.hggep import dihedral_view
    from .augment import resolution_jitter

    cfg = model.config
    out = []
    for sec in sections:
        seed = int(hashlib.sha1(sec.name.encode()).hexdigest()[:8], 16)
        per_view = []
        for k in range(max(int(tcfg.encoder_views), 1)):
            parts: list[list[torch.Tensor]] = [[], [], []]
            for b, i in enumerate(range(0, sec.n_spots, BATCH)):
                if k % 2:
                    gen = torch.Generator().manual_seed(seed + 7919 * k + 104729 * b)
                    view = f"{k}|{sec.name}|{b}|{tuple(tcfg.res_range)}"

                    def transform(x, k=k, gen=gen):
                        return resolution_jitter(dihedral_view(x, k), gen, cfg.patch_um / cfg.patch_px,
                                                 cfg.patch_um, *tcfg.res_range)
                else:
                    view = str(k)

                    def transform(x, k=k):
                        return dihedral_view(x, k)
                maps = encoder_maps(model, sec.patches[i:i + BATCH], device, transform, view, tcfg.feature_cache)
                for j, m in enumerate(maps):
                    parts[j].append(m)
            per_view.append([torch.cat(p) for p in parts])
        out.append([torch.stack(v).to(device) for v in zip(*per_view)])
    return out


POOLED_SPOTS = 256  # spots whose crops are read at a time (memory: 256 x 224 x 224 x 3 bytes per crop size)


def pooled_statistics(encoder, slide, device="cpu", cache=None) -> np.ndarray:
    """``N x config.pooled_features`` pooled features of ``encoder`` (a
    :class:`~napari_hggep.model.pooled.PooledEncoder`) around every spot of ``slide``: for each
    crop size in ``encoder.config.pooled_um`` (um of tissue, read at the encoder's input size) the
    three maps averaged, through the disk cache of :func:`encoder_maps`. Raw: z-score them within
    the slide like the tissue statistics."""
    steps = iter_pooled_statistics(encoder, slide, device, cache)
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value


def iter_pooled_statistics(encoder, slide, device="cpu", cache=None):
    """:func:`pooled_statistics` as a generator: yields ``(done, total)`` crops after each group of
    spots and returns the features."""
    from ..data.patches import extract_patches

    cfg = encoder.config
    px = int(cfg.encoder_spec.input_px)
    n = slide.n_spots
    encoder.to(device)
    parts = []
    for c, um in enumerate(cfg.pooled_um):
        feats = []
        for i in range(0, n, POOLED_SPOTS):
            idx = np.arange(i, min(i + POOLED_SPOTS, n))
            patches = extract_patches(slide, float(um), px, idx)
            feats.append(encoder.pool(encoder_maps(encoder, patches, device, view=f"pooled|{float(um)}",
                                                   cache=cache)))
            yield c * n + idx[-1] + 1, len(cfg.pooled_um) * n
        parts.append(torch.cat(feats) if feats else torch.zeros(0, 0))
    out = torch.cat(parts, dim=1).numpy().astype(np.float32) if n else np.zeros((0, cfg.pooled_features), np.float32)
    if out.shape[1] != cfg.pooled_features:
        raise ValueError(f"the encoder gives {out.shape[1]} pooled features, the model expects {cfg.pooled_features}")
    return out
