"""Image reading: lazy for TIFF (tifffile + zarr), eager for JPEG/PNG; micrometres per pixel from metadata."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .slide import SlideError

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ome.tif", ".ome.tiff", ".btf")
PLAIN_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PLAIN_SUFFIXES


def is_image_path(path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def image_stem(path) -> str:
    """The name without its image suffix (``slide.ome.tiff`` -> ``slide``); a folder's name as it is."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    while arr.ndim > 3 and arr.shape[0] == 1:  # e.g. an SVS baseline: Z=1 x Y x X x S
        arr = arr[0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    elif arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise SlideError(f"expected an RGB image, got an array of shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        a = arr.astype(np.float32)
        hi = 65535.0 if arr.dtype == np.uint16 else (1.0 if a.max() <= 1.0 else 255.0)
        arr = np.clip(a / hi * 255.0, 0, 255).astype(np.uint8)
    return arr


class LazyRGB:
    """An ``H x W x 3`` uint8 view over a zarr array of a TIFF level (YXS, SYX or YX).

    ``levels``: the coarser levels of the pyramid (LazyRGB each), when the file has them, so
    a reader that needs fewer pixels can decode less (see :func:`read_region`)."""

    def __init__(self, z, levels: list | None = None):
        self._z = z
        self.levels = list(levels or [])
        shape = tuple(z.shape)
        self._lead = 0  # leading singleton axes (an SVS baseline is Z=1 x Y x X x S)
        while len(shape) > 3 and shape[0] == 1:
            shape, self._lead = shape[1:], self._lead + 1
        if len(shape) == 3 and shape[-1] in (3, 4):
            self._layout = "yxs"
            self.shape = (shape[0], shape[1], 3)
        elif len(shape) == 3 and shape[0] in (3, 4):
            self._layout = "syx"
            self.shape = (shape[1], shape[2], 3)
        elif len(shape) == 2:
            self._layout = "yx"
            self.shape = (shape[0], shape[1], 3)
        else:
            raise SlideError(f"unsupported TIFF layout with shape {shape}; expected an RGB image")
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.size = int(np.prod(self.shape))

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):  # napari and numpy users may write img[..., c]
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
        ys, xs, cs = (list(key) + [slice(None)] * 3)[:3]
        if not (isinstance(cs, slice) and cs == slice(None)):
            return self[ys, xs][..., cs]
        lead = (0,) * self._lead
        if self._layout == "yxs":
            arr = np.asarray(self._z[lead + (ys, xs)])
        elif self._layout == "syx":
            arr = np.moveaxis(np.asarray(self._z[lead + (slice(None), ys, xs)]), 0, -1)
        else:
            arr = np.asarray(self._z[lead + (ys, xs)])
        return _to_rgb(arr)

    def __array__(self, dtype=None, copy=None):
        a = self[:, :]
        return a.astype(dtype) if dtype else a


def read_image(path, lazy: bool | None = None) -> np.ndarray | LazyRGB:
    """Read an H&E image as ``H x W x 3`` uint8. TIFFs over 256 MB (or any TIFF with
    ``lazy=True``) stay on disk: a :class:`LazyRGB` over level 0 with the pyramid's levels."""
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"image {path} does not exist")
    name = path.name.lower()
    try:
        if name.endswith(TIFF_SUFFIXES):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                small = np.prod(series.shape) * series.dtype.itemsize < 256 * 2**20
                if (small and lazy is None) or lazy is False:
                    return _to_rgb(series.asarray())
                n_levels = len(series.levels)
            import zarr

            opened = [LazyRGB(zarr.open(tifffile.imread(path, aszarr=True, level=i), mode="r"))
                      for i in range(n_levels)]
            return LazyRGB(opened[0]._z, levels=opened[1:])
        if name.endswith(PLAIN_SUFFIXES):
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = None  # whole-slide JPEGs are large on purpose
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as im:
                    return _to_rgb(np.asarray(im.convert("RGB")))
    except SlideError:
        raise
    except Exception as e:
        raise SlideError(f"could not read image {path}: {type(e).__name__}: {e}") from None
    raise SlideError(f"{path}: unsupported image type; use TIFF, OME-TIFF, JPEG or PNG")


def image_um_per_px(path) -> float | None:
    """Micrometres per pixel from TIFF/OME metadata, or None when the file does not say."""
    return image_um_per_px_source(path)[0]


def image_um_per_px_source(path) -> tuple[float | None, str | None]:
    """Micrometres per pixel and where the file says it (``OME PhysicalSizeX``, ``Aperio MPP``,
    ``TIFF resolution tags``), or ``(None, None)``."""
    path = Path(path)
    if not path.name.lower().endswith(TIFF_SUFFIXES):
        return None, None
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            desc = str(tf.pages[0].description or "")
            if desc.startswith("Aperio"):  # SVS: "Aperio Image Library ... |MPP = 0.2520|..."
                import re

                m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", desc)
                if m and float(m.group(1)) > 0:
                    return float(m.group(1)), "Aperio MPP in the file"
            if tf.is_ome and tf.ome_metadata:
                import re

                m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tf.ome_metadata)
                unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tf.ome_metadata)
                if m and (unit is None or unit.group(1) in ("µm", "um", "micron")) and float(m.group(1)) > 0:
                    return float(m.group(1)), "OME PhysicalSizeX in the file"
            page = tf.pages[0]
            tags = page.tags
            if "XResolution" in tags and "ResolutionUnit" in tags:
                num, den = tags["XResolution"].value
                unit = int(tags["ResolutionUnit"].value)
                if num > 0 and den > 0:
                    per_unit = num / den  # pixels per unit
                    um = {2: 25400.0, 3: 10000.0}.get(unit)
                    if um and per_unit > 1:
                        return um / per_unit, "TIFF resolution tags in the file"
    except Exception:
        return None, None
    return None, None


def as_pyramid(levels) -> np.ndarray | LazyRGB:
    """An image for the readers and the model from napari multiscale data (finest level first):
    level 0 keeps the coarser levels (``.levels``) so region reads can use them."""
    levels = list(levels)
    first = levels[0]
    if len(levels) == 1:
        return first
    if isinstance(first, LazyRGB) and len(first.levels) == len(levels) - 1:
        return first
    return LazyRGB(first, levels=[lev if isinstance(lev, LazyRGB) else LazyRGB(lev) for lev in levels[1:]])


def pyramid(image) -> list[tuple[object, float]]:
    """``(level, downsample)`` pairs, finest first: level 0 is ``image`` itself; the
    downsample of a level is level 0's width over the level's width."""
    w0 = float(image.shape[1])
    out = [(image, 1.0)]
    for lev in getattr(image, "levels", []) or []:
        out.append((lev, w0 / float(lev.shape[1])))
    return out


def choose_level(image, max_downsample: float) -> tuple[object, float]:
    """The coarsest pyramid level whose downsample is at most ``max_downsample``."""
    level, ds = image, 1.0
    for lev, d in pyramid(image):
        if d <= max_downsample * (1 + 1e-6):
            level, ds = lev, d
    return level, ds


def strided(image, step: int) -> tuple[np.ndarray, float]:
    """About ``image[::step, ::step]`` (RGB), decoded from the coarsest pyramid level that has
    that resolution, so a whole-slide thumbnail never decodes level 0 of a pyramid. Returns the
    pixels and their actual step in level-0 pixels (a level's downsample times the stride
    within it: not always ``step``)."""
    level, ds = choose_level(image, step)
    s = max(1, int(round(step / ds)))
    return np.asarray(level[::s, ::s])[..., :3], ds * s


def read_box(level, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Pixels ``[y0:y1, x0:x1]`` of one (lazy) level; outside the image is white glass."""
    h, w = int(level.shape[0]), int(level.shape[1])
    out = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = np.asarray(level[sy0:sy1, sx0:sx1])[..., :3]
    return out


def read_region(image, x0: float, y0: float, x1: float, y1: float, max_downsample: float = 1.0):
    """Pixels of the level-0 box ``[x0, x1) x [y0, y1)`` from the coarsest pyramid level whose
    downsample is at most ``max_downsample`` (level 0 for plain images). Returns
    ``(pixels, downsample, (lx0, ly0))``: the level's pixels covering the box (white glass
    outside the image) and the box origin in that level's pixels."""
    level, ds = choose_level(image, max_downsample)
    lx0, ly0 = int(np.floor(x0 / ds)), int(np.floor(y0 / ds))
    lx1, ly1 = max(int(np.ceil(x1 / ds)), lx0 + 1), max(int(np.ceil(y1 / ds)), ly0 + 1)
    return read_box(level, lx0, ly0, lx1, ly1), ds, (lx0, ly0)
