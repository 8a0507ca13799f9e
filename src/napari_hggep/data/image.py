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


def _to_rgb(arr: np.ndarray) -> np.ndarray:
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
    """An ``H x W x 3`` uint8 view over a zarr array of a TIFF level (YXS, SYX or YX)."""

    def __init__(self, z):
        self._z = z
        shape = tuple(z.shape)
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

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        ys, xs = (list(key) + [slice(None), slice(None)])[:2]
        if self._layout == "yxs":
            arr = np.asarray(self._z[ys, xs])
        elif self._layout == "syx":
            arr = np.moveaxis(np.asarray(self._z[:, ys, xs]), 0, -1)
        else:
            arr = np.asarray(self._z[ys, xs])
        return _to_rgb(arr)

    def __array__(self, dtype=None, copy=None):
        a = self[:, :]
        return a.astype(dtype) if dtype else a


def read_image(path) -> np.ndarray | LazyRGB:
    """Read an H&E image as ``H x W x 3`` uint8 (lazy for TIFF, full resolution level)."""
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
                if small:
                    return _to_rgb(series.asarray())
            import zarr

            store = tifffile.imread(path, aszarr=True, level=0)
            return LazyRGB(zarr.open(store, mode="r"))
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
    path = Path(path)
    if not path.name.lower().endswith(TIFF_SUFFIXES):
        return None
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            if tf.is_ome and tf.ome_metadata:
                import re

                m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tf.ome_metadata)
                unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tf.ome_metadata)
                if m and (unit is None or unit.group(1) in ("µm", "um", "micron")):
                    return float(m.group(1))
            page = tf.pages[0]
            tags = page.tags
            if "XResolution" in tags and "ResolutionUnit" in tags:
                num, den = tags["XResolution"].value
                unit = int(tags["ResolutionUnit"].value)
                if num > 0 and den > 0:
                    per_unit = num / den  # pixels per unit
                    um = {2: 25400.0, 3: 10000.0}.get(unit)
                    if um and per_unit > 1:
                        return um / per_unit
    except Exception:
        return None
    return None
