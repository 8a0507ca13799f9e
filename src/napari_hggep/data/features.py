"""Multi-scale tissue statistics around each spot, defined in micrometres.

The image is resampled to a fixed working resolution (``WORK_UM_PER_PX``), so a feature
means the same on a 0.25 um/px scan and on a 3 um/px one. Per pixel we compute colour
(RGB), stain densities (haematoxylin, eosin, DAB), glass/fat and tissue masks, nuclei
(segmented on the haematoxylin channel: mask, count, size, elongation, darkness) and
texture (gradient magnitude, uniform local binary patterns). Each map is integrated once
(summed-area table), so the statistics of any window around any spot cost four look-ups:
window means at ``CONTEXT_UM`` (about 70, 150 and 300 um) around every spot.

The slide is processed in tiles of working pixels, so memory stays flat for whole slides,
and spots are handled in tile order.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from .image import read_region, strided
from .slide import Slide
from .stain import rgb_to_hed

WORK_UM_PER_PX = 2.0
FEATURES_VERSION = 3  # bump when the definition changes (invalidates caches)
CONTEXT_UM = (70.0, 150.0, 300.0)
GLASS = 0.82  # a pixel whose every channel is brighter than this is glass (or fat)
TILE_PX = 1024  # tile side in working pixels (about 2 mm)
BLOCK_PX = 4  # maps are summed over 4 x 4 working-pixel blocks (8 um) before integration

_LBP_BINS = 10  # uniform LBP, P = 8: codes 0..9
PER_SCALE = (
    [f"mean_{c}" for c in ("R", "G", "B", "H", "E", "D")]
    + [f"std_{c}" for c in ("R", "G", "B", "H", "E", "D")]
    + ["glass_frac", "tissue_frac", "nuclei_area_frac", "nuclei_density", "nucleus_size",
       "nucleus_eccentricity", "nucleus_darkness", "gradient"]
    + [f"lbp_{i}" for i in range(_LBP_BINS)]
)


def feature_names(context_um=CONTEXT_UM) -> list[str]:
    return [f"{n}@{int(round(c))}um" for c in context_um for n in PER_SCALE]


def n_features(context_um=CONTEXT_UM) -> int:
    return len(PER_SCALE) * len(context_um)


def read_resampled(image, um_per_px: float, box_work: tuple[int, int, int, int], work_um: float) -> np.ndarray:
    """The working-resolution pixels ``box_work = (x0, y0, x1, y1)`` of a slide (uint8 RGB),
    decoded from the coarsest pyramid level that is still at least as fine as ``work_um``."""
    from PIL import Image

    x0, y0, x1, y1 = box_work
    f = work_um / um_per_px  # level-0 pixels per working pixel
    region, ds, (lx0, ly0) = read_region(image, x0 * f, y0 * f, x1 * f, y1 * f, max_downsample=max(f, 1.0))
    size = (x1 - x0, y1 - y0)
    fl = f / ds  # pixels of the level read per working pixel
    box = (x0 * fl - lx0, y0 * fl - ly0, x1 * fl - lx0, y1 * fl - ly0)  # keeps sub-pixel offsets
    if region.shape[1::-1] == size and all(abs(b - r) < 1e-9 for b, r in zip(box, (0, 0, *size))):
        return region
    resample = Image.BOX if fl > 1 else Image.BILINEAR
    return np.asarray(Image.fromarray(region).resize(size, resample=resample, box=box))


def nuclei_threshold(image, um_per_px: float, work_um: float = WORK_UM_PER_PX) -> float:
    """The slide's haematoxylin threshold for nuclei: Otsu over tissue pixels of a thumbnail
    at the working resolution (one threshold for the whole slide, so tiles agree)."""
    from skimage.filters import threshold_otsu

    h, w = int(image.shape[0]), int(image.shape[1])
    # a strided read at about the working resolution (at most ~1500 px a side; cheap on lazy images)
    stride = max(1, int(round(work_um / um_per_px)), int(np.ceil(max(h, w) / 1500)))
    thumb, _ = strided(image, stride)
    hed = rgb_to_hed(thumb)
    vals = hed[..., 0][thumb.min(axis=-1) < GLASS * 255]  # tissue: anything but glass
    if vals.size < 100 or np.ptp(vals) < 1e-4:
        return float("inf")  # no tissue: no nuclei
    return float(threshold_otsu(vals))


def uniform_lbp(grey: np.ndarray) -> np.ndarray:
    """Rotation-invariant uniform local binary patterns over the 8 nearest neighbours (codes
    0..8: the number of neighbours at least as bright, for uniform patterns; 9: non-uniform)."""
    g = np.pad(grey, 1, mode="edge")
    h, w = grey.shape
    ring = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]  # clockwise
    bits = [g[dy:dy + h, dx:dx + w] >= grey for dy, dx in ring]
    ones = np.zeros((h, w), np.int64)
    changes = np.zeros((h, w), np.int64)
    for i in range(8):
        ones += bits[i]
        changes += bits[i] != bits[(i + 1) % 8]
    return np.where(changes <= 2, ones, 9)


def _pixel_maps(rgb: np.ndarray, h_thr: float) -> tuple[list[np.ndarray], np.ndarray]:
    """The per-pixel maps whose window means make the features, and the LBP codes (whose
    window histograms are features too). Map order: RGB, HED, their squares, glass, tissue,
    nuclei mask, nucleus count (at centroids), size*count, eccentricity*count, darkness*count,
    gradient."""
    from scipy import ndimage as ndi

    x = rgb.astype(np.float32) / 255.0
    hed = rgb_to_hed(rgb)
    grey = x.mean(axis=-1)
    glass = (x.min(axis=-1) > GLASS).astype(np.float32)
    tissue = ((hed[..., 0] + hed[..., 1]) > 0.05).astype(np.float32)
    hs = ndi.gaussian_filter(hed[..., 0], 0.7)
    nuc = hs > h_thr
    lab, n = ndi.label(nuc)
    count = np.zeros(grey.shape, np.float32)
    size = np.zeros_like(count)
    ecc = np.zeros_like(count)
    dark = np.zeros_like(count)
    if n:
        yy, xx = np.nonzero(lab)
        li = lab[yy, xx]
        area = np.bincount(li, minlength=n + 1).astype(np.float64)
        a = np.maximum(area, 1)
        mx, my = np.bincount(li, xx, n + 1) / a, np.bincount(li, yy, n + 1) / a
        dx, dy = xx - mx[li], yy - my[li]
        cxx = np.bincount(li, dx * dx, n + 1) / a + 1 / 12
        cyy = np.bincount(li, dy * dy, n + 1) / a + 1 / 12
        cxy = np.bincount(li, dx * dy, n + 1) / a
        tr, det = cxx + cyy, cxx * cyy - cxy ** 2
        disc = np.sqrt(np.maximum(tr ** 2 / 4 - det, 0))
        l1, l2 = tr / 2 + disc, np.maximum(tr / 2 - disc, 0)
        e = np.sqrt(np.clip(1 - l2 / np.maximum(l1, 1e-9), 0, 1))
        hmean = np.bincount(li, hed[..., 0][yy, xx], n + 1) / a
        cy = np.clip(np.round(my[1:]).astype(int), 0, grey.shape[0] - 1)
        cx = np.clip(np.round(mx[1:]).astype(int), 0, grey.shape[1] - 1)
        np.add.at(count, (cy, cx), 1.0)
        np.add.at(size, (cy, cx), area[1:])
        np.add.at(ecc, (cy, cx), e[1:])
        np.add.at(dark, (cy, cx), hmean[1:])
    gy, gx = ndi.sobel(grey, 0), ndi.sobel(grey, 1)
    grad = np.hypot(gx, gy)
    lbp = uniform_lbp(grey)
    maps = [x[..., i] for i in range(3)] + [hed[..., i] for i in range(3)]  # float32
    maps += [m * m for m in maps[:6]]
    maps += [glass, tissue, nuc.astype(np.float32), count, size, ecc, dark, grad]
    return maps, lbp


def block_sums(m: np.ndarray, block: int) -> np.ndarray:
    """Sums over ``block x block`` pixel blocks (the map's sides are multiples of ``block``)."""
    cols = m[:, 0::block].astype(np.float32)  # strided adds: much faster than a reduce over a short axis
    for i in range(1, block):
        cols += m[:, i::block]
    out = cols[0::block].astype(np.float64)
    for i in range(1, block):
        out += cols[i::block]
    return out


def block_histogram(codes: np.ndarray, n_codes: int, block: int) -> np.ndarray:
    """Per ``block x block`` block, how many pixels have each code (``hb x wb x n_codes``)."""
    h, w = codes.shape
    by, bx = np.arange(h) // block, np.arange(w) // block
    bid = (by[:, None] * (w // block) + bx[None, :]) * n_codes + codes
    hist = np.bincount(bid.ravel(), minlength=(h // block) * (w // block) * n_codes)
    return hist.reshape(h // block, w // block, n_codes).astype(np.float64)


def summed_area(blocks: np.ndarray) -> np.ndarray:
    """Summed-area table with a leading zero row/column: ``T[j, i]`` sums blocks above-left."""
    t = np.zeros((blocks.shape[0] + 1, blocks.shape[1] + 1, *blocks.shape[2:]), np.float64)
    np.cumsum(np.cumsum(blocks, axis=0), axis=1, out=t[1:, 1:])
    return t


def _table_at(t: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The summed-area table at fractional block coordinates (x ``u``, y ``v``), bilinear: the
    integral of the maps when each block's content is spread evenly over the block."""
    hb, wb = t.shape[0] - 1, t.shape[1] - 1
    u, v = np.clip(u, 0, wb), np.clip(v, 0, hb)
    x0 = np.minimum(np.floor(u).astype(np.int64), wb - 1)
    y0 = np.minimum(np.floor(v).astype(np.int64), hb - 1)
    fx, fy = (u - x0)[:, None], (v - y0)[:, None]
    return (t[y0, x0] * (1 - fx) * (1 - fy) + t[y0, x0 + 1] * fx * (1 - fy)
            + t[y0 + 1, x0] * (1 - fx) * fy + t[y0 + 1, x0 + 1] * fx * fy)


def window_sums(t: np.ndarray, cx: np.ndarray, cy: np.ndarray, half: float, block: int) -> np.ndarray:
    """Sums of the maps over squares ``[c - half, c + half)`` (pixel units, continuous
    coordinates) around ``(cx, cy)``; ``t``: :func:`summed_area` of :func:`block_sums`."""
    x0, x1 = (cx - half) / block, (cx + half) / block
    y0, y1 = (cy - half) / block, (cy + half) / block
    return _table_at(t, x1, y1) - _table_at(t, x0, y1) - _table_at(t, x1, y0) + _table_at(t, x0, y0)


def _features_from_maps(maps: tuple[list[np.ndarray], np.ndarray], cx: np.ndarray, cy: np.ndarray,
                        halves: list[float], block: int) -> np.ndarray:
    dense, codes = maps
    t = summed_area(np.concatenate([np.stack([block_sums(m, block) for m in dense], axis=-1),
                                    block_histogram(codes, _LBP_BINS, block)], axis=-1))
    out = []
    for half in halves:
        sums = window_sums(t, cx, cy, half, block).T  # maps x n
        s = sums / float((2 * half) ** 2)  # window means
        mean = s[0:6]
        std = np.sqrt(np.maximum(s[6:12] - mean ** 2, 0))
        cnt = sums[15]
        with np.errstate(invalid="ignore", divide="ignore"):
            # per-nucleus means; a window needs about one nucleus to describe nuclei
            per = np.where(cnt > 0.5, sums[16:19] / np.maximum(cnt, 1e-9), np.nan)
        out += [mean, std, s[12:15], s[15:16], per, s[19:20], s[20:20 + _LBP_BINS]]
    return np.concatenate(out).T.astype(np.float32)


def tissue_features(slide: Slide, context_um=CONTEXT_UM, work_um: float = WORK_UM_PER_PX,
                    tile_px: int = TILE_PX, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``N x n_features`` statistics of the tissue around every spot (NaN where a window has
    no nuclei to describe; see :func:`standardise_features`)."""
    n = slide.n_spots
    out = np.full((n, n_features(context_um)), np.nan, np.float32)
    if n == 0:
        return out
    halves = [c / work_um / 2 for c in context_um]  # in working pixels
    block = BLOCK_PX
    tile_px = max(block, tile_px // block * block)
    # nuclei and filters at a tile edge see whole; multiples of the block keep blocks aligned
    margin = int(np.ceil((max(halves) + 20 / work_um) / block)) * block
    h_thr = nuclei_threshold(slide.image, slide.um_per_px, work_um)
    wxy = (slide.xy + 0.5) * (slide.um_per_px / work_um)  # spot centres, continuous working pixels
    tiles = np.floor(wxy / tile_px).astype(np.int64)
    keys, inverse = np.unique(tiles, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    done = 0
    for k in range(len(keys)):
        idx = np.nonzero(inverse == k)[0]
        # the tile's spots and their windows, widened by the margin, on the global block grid
        lo = np.floor((wxy[idx].min(axis=0) - margin) / block).astype(np.int64) * block
        hi = np.ceil((wxy[idx].max(axis=0) + margin) / block).astype(np.int64) * block
        x0, y0 = int(lo[0]), int(lo[1])
        rgb = read_resampled(slide.image, slide.um_per_px, (x0, y0, int(hi[0]), int(hi[1])), work_um)
        maps = _pixel_maps(rgb, h_thr)
        out[idx] = _features_from_maps(maps, wxy[idx, 0] - x0, wxy[idx, 1] - y0, halves, block)
        done += len(idx)
        if progress:
            progress(done, n)
    return out


def standardise_features(f: np.ndarray) -> np.ndarray:
    """Z-score each feature within one slide (stain and scanner differences between slides
    cancel); missing values (a window without nuclei) become the slide's mean, i.e. 0."""
    f = np.asarray(f, np.float64)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no nuclei anywhere
        mu = np.nanmean(f, axis=0) if len(f) else np.zeros(f.shape[1])
        sd = np.nanstd(f, axis=0) if len(f) > 1 else np.ones(f.shape[1])
    mu = np.where(np.isfinite(mu), mu, 0.0)
    # constant features (up to float noise) carry nothing: they become 0, not amplified noise
    sd = np.where(np.isfinite(sd) & (sd > 1e-5 * np.maximum(1.0, np.abs(mu))), sd, np.inf)
    z = (f - mu) / sd
    return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
