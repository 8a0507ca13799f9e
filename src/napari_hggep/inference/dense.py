"""Dense grids: spots closer than a patch share the convolutional trunk.

On a grid finer than the model's patch (Visium HD bins at 8 or 16 um, ``--grid --pitch-um 25``)
neighbouring patches cover nearly the same tissue: at a 16 um pitch every pixel lies in about
19 patches. Here the image is read once, tile by tile, resampled to the patch resolution (as
each patch would be), and GEM + the ShuffleNet stages run once per tile; each spot's stage maps
are then sampled (bilinearly, as ``roi_align`` would) from the tile's maps at its patch footprint, on
the very cells its own patch would have (S3 every 16 patch pixels, S4 and S5 every 32), and go
through the model's own per-stage projection (CBAM, pooling, linear). A tile is its spots'
footprints plus a margin of context, so a spot never sees the tile's edge. The trunk's cost is
the tissue's area instead of spots x patch area.

What differs from encoding each patch on its own: a spot's maps near its patch border see the
neighbouring tissue instead of the zero padding at the patch's edge (and the sampling grid is
off the tile's by a fraction of a cell). ``benchmarks/bench_dense.py`` and the tests measure
the agreement with the per-patch path.
"""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..data.patches import origins_order, patch_plan
from ..data.image import read_box
from ..data.slide import Slide

# Attention and the hypergraph run in windows of a fixed number of spots, overlapping by a margin.
# On a dense grid the model's 4,096 spots with margins of 0.25 of the core cost most of the
# prediction (each bin pays for a 4,096-spot window about 2.25 times over). Measured on the sample
# section at a 16 um pitch (42,870 bins; ``benchmarks/bench_windows.py``), against one window
# holding every bin: the image path's own output (its head, before the statistics branch is
# added) agrees at mean per-gene PCC 0.980 with the model's windows (36 s), 0.972 with windows of
# 1,024 spots and margins of 0.125 (8 s) and 0.971 with 512 spots (7 s); the maps themselves at
# 1.00000 (min 0.99998) in every case, as the statistics branch makes the bundled model's maps.
# Attention costs grow with the window, so dense grids take 512: a window of 512 bins at 16 um
# still spans about 0.36 mm, at 8 um 0.18 mm.
DENSE_WINDOW_SPOTS = 512
DENSE_WINDOW_OVERLAP = 0.125


MODES = ("auto", "on", "off")
TILE_PX = 512  # a tile's core, in pixels at the patch resolution (groups spots)
MARGIN_PX = 32  # context around the spots' footprints, in pixels at the patch resolution
STRIDES = (16, 32, 32)  # S3, S4, S5 cells in input pixels: GEM, conv1 and stages 2..4 each halve


def grid_pitch_um(coords_um: np.ndarray, sample: int = 4096) -> float:
    """The spots' typical spacing: the median distance to the nearest other spot (over up to
    ``sample`` spots spread over the slide). ``inf`` for fewer than two spots."""
    from scipy.spatial import cKDTree

    xy = np.asarray(coords_um, np.float64).reshape(-1, 2)
    if len(xy) < 2:
        return float("inf")
    q = xy[np.unique(np.linspace(0, len(xy) - 1, min(len(xy), sample)).round().astype(int))]
    d, _ = cKDTree(xy).query(q, k=2)
    return float(np.median(d[:, 1]))


def use_shared_trunk(slide: Slide, config, mode: str = "auto") -> bool:
    """Whether to encode ``slide`` with the shared trunk: ``"on"`` / ``"off"`` force it, and
    ``"auto"`` chooses it when the spots are closer than the patch (pitch < ``patch_um``).
    Never for a model without an image path (there is nothing to encode)."""
    mode = str(mode).lower()
    if mode not in MODES:
        raise ValueError(f"shared_trunk must be one of {', '.join(MODES)}, not {mode!r}")
    if not config.image_path or mode == "off":
        return False
    if getattr(config, "pretrained_encoder", False):  # a ViT or a pooled CNN: no map to share across spots
        if mode == "on":
            raise ValueError(f"the shared trunk is ShuffleNet's; this model's encoder is {config.encoder.label}: "
                             "use --shared-trunk off (or auto)")
        return False
    if mode == "on":
        return True
    return slide.n_spots > 1 and grid_pitch_um(slide.coords_um) < float(config.patch_um)


def plan_tiles(slide: Slide, patch_um: float, patch_px: int, tile_px: int = TILE_PX, margin_px: int = MARGIN_PX):
    """``(level, side, origins, tiles)``: the pyramid level and window side the per-patch path
    reads, every spot's window origin on that level, and ``[(spot indices, (x0, y0, x1, y1)), ...]``
    the tiles (boxes in the level's pixels), row-major."""
    level, side, origins = patch_plan(slide, patch_um, patch_px)
    f = patch_px / side  # patch-resolution pixels per level pixel
    core = max(tile_px / f, 1.0)
    margin = int(np.ceil(margin_px / f))
    order = origins_order(origins)  # region-major, so tiles of one region are read together
    keys = np.floor_divide(origins, core).astype(np.int64)
    k = keys[order]
    # row-major tiles; spots of a tile in the per-patch path's order
    tile_order = np.lexsort((k[:, 0], k[:, 1]))
    order, k = order[tile_order], k[tile_order]
    cut = np.nonzero(np.any(np.diff(k, axis=0) != 0, axis=1))[0] + 1
    tiles = []
    for idx in np.split(order, cut):
        if not len(idx):
            continue
        o = origins[idx]
        x0, y0 = o.min(axis=0) - margin
        x1, y1 = o.max(axis=0) + side + margin
        tiles.append((idx, (int(x0), int(y0), int(x1), int(y1))))
    return level, side, origins, tiles


def read_tile(level, box, side: int, patch_px: int) -> tuple[np.ndarray, float, float]:
    """A tile's pixels resampled to the patch resolution (as :func:`resize_batch` resamples a
    patch), and the scale actually used in x and y (output pixels per level pixel)."""
    x0, y0, x1, y1 = box
    region = read_box(level, x0, y0, x1, y1)
    w, h = x1 - x0, y1 - y0
    ow, oh = max(int(round(w * patch_px / side)), 1), max(int(round(h * patch_px / side)), 1)
    if (ow, oh) == (w, h):
        return region, 1.0, 1.0
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(region).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(oh, ow), mode="bilinear", antialias=True, align_corners=False)
    out = t.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    return out, ow / w, oh / h


def footprints(origins: np.ndarray, box, side: int, patch_px: int, sx: float, sy: float) -> np.ndarray:
    """Each spot's patch in a tile's pixels: ``n x 4`` (x and y of its first pixel's centre, its
    pixel step in x and y). Patch pixel ``k`` sits at level coordinate ``o + (k + 0.5) side / P``
    and tile pixel ``t`` at ``x0 + (t + 0.5) / s``, so ``t = (o - x0 + (k + 0.5) side / P) s - 0.5``."""
    out = np.empty((len(origins), 4), np.float64)
    for a, (s, o0) in enumerate(((sx, box[0]), (sy, box[1]))):
        rel = origins[:, a].astype(np.float64) - o0
        out[:, a] = (rel + 0.5 * side / patch_px) * s - 0.5
        out[:, a + 2] = side * s / patch_px
    return out


def view_footprints(fp: np.ndarray, k: int, hw: tuple[int, int], patch_px: int) -> np.ndarray:
    """The footprints in view ``k`` (:func:`~napari_hggep.model.hggep.dihedral_view`: ``k % 4``
    quarter turns of ``torch.rot90``, then a left-right flip for ``k >= 4``) of a tile of
    ``hw`` pixels: a spot's patch view is the same view of the tile, cropped there."""
    if k == 0:
        return fp
    h, w = hw
    x, y, rx, ry = (fp[:, i].copy() for i in range(4))
    for _ in range(k % 4):
        # rot90 over dims (2, 3): new[i, j] = old[j, W - 1 - i], so (x, y) -> (y, W - 1 - x)
        x_end = x + (patch_px - 1) * rx
        x, y, rx, ry = y, (w - 1) - x_end, ry, rx
        h, w = w, h
    if k >= 4:
        x = (w - 1) - (x + (patch_px - 1) * rx)
    return np.stack([x, y, rx, ry], axis=1)


def sample_boxes(fp: np.ndarray, stride: int, cells: int) -> np.ndarray:
    """``roi_align`` boxes (map units, ``aligned=True``, one sample per bin) that sample a stage
    map of ``stride`` input pixels per cell at the cells each spot's own patch would have
    (patch cell ``i`` at patch pixel ``stride * i``; map cell ``j`` at tile pixel ``stride * j``)."""
    out = np.empty((len(fp), 4), np.float32)
    for a in range(2):
        c0, r = fp[:, a] / stride, fp[:, a + 2]
        start = c0 + 0.5 - 0.5 * r  # roi_align samples bin b of width r at start - 0.5 + (b + 0.5) r
        out[:, a] = start
        out[:, a + 2] = start + cells * r
    return out


def sample_maps(maps, fp, stride: int, cells: int):
    """Each spot's ``cells x cells`` stage map sampled bilinearly from a tile's map
    (``1 x C x H x W``) where its own patch has its cells: patch cell ``i`` at tile pixel
    ``x + stride * i * r``, i.e. map coordinate ``x / stride + i r`` (map cell ``j`` at ``j``);
    ``fp``: :func:`footprints` (a tensor). The same samples as torchvision's ``roi_align``
    (``aligned=True``, one sample per bin) on :func:`sample_boxes` (edge cells repeat).

    Returns ``n x (cells cells) x C``, cells row-major and channels last, the layout
    :meth:`~napari_hggep.model.hggep.HGGEP.project_points` takes. Computed as one sparse
    matrix (four bilinear weights per sample) times the map's ``(H W) x C`` pixels: on a CPU
    about twice as fast as ``grid_sample``, whose channel-major output the projection would
    have to transpose."""
    import torch

    _, C, H, W = maps.shape
    n = fp.shape[0]
    pixels = maps[0].permute(1, 2, 0).reshape(H * W, C)  # a view when the map is channels-last
    i = torch.arange(cells, dtype=torch.float64)
    fp = fp.to(torch.float64).cpu()
    corners = []
    for a, size in ((1, H), (0, W)):  # y then x: n x cells sample coordinates, clamped as "border"
        t = (fp[:, a:a + 1] / stride + i * fp[:, a + 2:a + 3]).clamp(0, size - 1)
        t0 = t.floor().clamp(max=max(size - 2, 0))
        frac = (t - t0).to(maps.dtype)
        t0 = t0.long()
        corners.append(((t0, 1 - frac), ((t0 + 1).clamp(max=size - 1), frac)))
    cols, vals = [], []
    for yy, wy in corners[0]:
        for xx, wx in corners[1]:
            cols.append((yy[:, :, None] * W + xx[:, None, :]).reshape(-1))
            vals.append((wy[:, :, None] * wx[:, None, :]).reshape(-1))
    points = n * cells * cells
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the CSR x dense product is stable
        warnings.simplefilter("ignore", UserWarning)
        a = torch.sparse_csr_tensor(torch.arange(0, 4 * points + 1, 4), torch.stack(cols, 1).reshape(-1),
                                    torch.stack(vals, 1).reshape(-1), size=(points, H * W), device=maps.device)
    return (a @ pixels).view(n, cells * cells, C)


def iter_shared_tokens(model, slide: Slide, guard, colour=None, fast: bool = True, prefetch: bool = True,
                       views: int | None = None, tile_px: int = TILE_PX, margin_px: int = MARGIN_PX):
    """Yield ``(indices, tokens)`` tile by tile (tokens ``n x 3 x d`` on the CPU), the patch
    tokens of every spot computed from the tiles' shared stage maps (see the module's doc);
    ``views`` flips/rotations averaged as :meth:`HGGEP.encode_views` does (default: the model's)."""
    import torch

    cfg = model.config
    views = int(cfg.tta_views if views is None else views)
    P = int(cfg.patch_px)
    cells = [int(np.ceil(P / s)) for s in STRIDES]
    level, side, origins, tiles = plan_tiles(slide, cfg.patch_um, P, tile_px, margin_px)

    def load(t):
        return read_tile(level, t[1], side, P)

    def encode_tile(idx, box, pixels, sx, sy):
        x_in = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float().div_(255.0)
        fp0 = footprints(origins[idx], box, side, P, sx, sy)
        hw = (x_in.shape[2], x_in.shape[3])
        acc = None
        for k in range(min(max(views, 1), 8)):
            def trunk(i, j, k=k):
                dev = guard.device
                x = _view(x_in, k).to(dev)
                if fast and dev.type == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last)
                c = None if colour is None else tuple(t.to(dev) for t in colour)
                return model.trunk(x, c)

            maps = guard.run(trunk, 1, "tiles")[0]
            fp = torch.from_numpy(view_footprints(fp0, k, hw, P))

            def project(i, j, maps=maps, fp=fp):
                dev = guard.device
                sampled = [(sample_maps(mm.to(dev), fp[i:j], st, c), c, c) for mm, st, c in zip(maps, STRIDES, cells)]
                return model.project_points(sampled).float().cpu()

            tok = torch.cat(guard.run(project, len(idx), "spots"))
            acc = tok if acc is None else acc + tok
        return acc / min(max(views, 1), 8)

    if not prefetch or len(tiles) < 2:
        for t in tiles:
            yield t[0], encode_tile(t[0], t[1], *load(t))
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-hggep-tiles") as pool:
        nxt = pool.submit(load, tiles[0])
        for i, t in enumerate(tiles):
            pixels = nxt.result()
            if i + 1 < len(tiles):
                nxt = pool.submit(load, tiles[i + 1])
            yield t[0], encode_tile(t[0], t[1], *pixels)


def _view(x, k: int):
    from ..model.hggep import dihedral_view

    return x if k == 0 else dihedral_view(x, k)
