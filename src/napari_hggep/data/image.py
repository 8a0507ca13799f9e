"""Image reading: lazy for TIFF (tifffile + zarr), eager for JPEG/PNG; micrometres per pixel from metadata.

Opening a TIFF lazily reads only its metadata (shape, levels): zarr is imported and the store is
set up at the first pixel read. :func:`strided` (thumbnails) reads a lazy level in bounded strips
and keeps what it made, and :class:`Overview` is a coarse level of a single-level TIFF made the
same way, for napari to show the whole slide without holding level 0 in memory."""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np

from .slide import SlideError

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ome.tif", ".ome.tiff", ".btf")
PLAIN_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PLAIN_SUFFIXES


def is_image_path(path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, either byte order


def is_tiff_file(path) -> bool:
    """The file begins as a TIFF does (an SVS and an OME-TIFF too), whatever its name says."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in TIFF_MAGIC
    except OSError:
        return False


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


class _TiffLevel:
    """One level of a TIFF's first series as a zarr array, opened at the first read: its shape and
    dtype come from the file's metadata, so a reader that only needs the shape (napari's File ▸ Open)
    neither imports zarr nor sets up the store (about half a second together)."""

    def __init__(self, path, level: int, shape, dtype):
        self.path, self.level = str(path), int(level)
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self._z = None
        self._lock = threading.Lock()

    def __getstate__(self):  # picklable: the store is opened again where it is read
        return {"path": self.path, "level": self.level, "shape": self.shape, "dtype": self.dtype}

    def __setstate__(self, state):
        self.__init__(state["path"], state["level"], state["shape"], state["dtype"])

    def array(self):
        if self._z is None:
            with self._lock:
                if self._z is None:
                    import tifffile
                    import zarr

                    try:
                        z = zarr.open(tifffile.imread(self.path, aszarr=True, level=self.level), mode="r")
                    except Exception as e:  # the file changed or went since its metadata was read
                        raise SlideError(f"could not read image {self.path}: {type(e).__name__}: {e}") from None
                    if tuple(z.shape) != self.shape:
                        raise SlideError(f"{self.path}: level {self.level} reads as {tuple(z.shape)}, "
                                         f"its metadata says {self.shape}")
                    self._z = z
        return self._z

    @property
    def chunks(self) -> tuple:
        return tuple(self.array().chunks)

    def __getitem__(self, key):
        return self.array()[key]


STRIP_BYTES = 32 * 2**20  # decoded bytes of a lazy level that strided() reads at a time
CACHE_BYTES = 64 * 2**20  # a subsampled read at most this large is kept on its level for the next caller
CACHE_ENTRIES = 4


class LazyRGB:
    """An ``H x W x 3`` uint8 view over a zarr array of a TIFF level (YXS, SYX or YX).

    ``levels``: the coarser levels of the pyramid (LazyRGB each), when the file has them, so
    a reader that needs fewer pixels can decode less (see :func:`read_region`). Every-n-th-pixel
    reads (:meth:`subsampled`, for thumbnails) are made in strips and kept, so the tissue check,
    the stain check and napari's overview share one pass over the file."""

    def __init__(self, z, levels: list | None = None):
        self._z = z
        self.levels = list(levels or [])
        self._sub: dict[int, np.ndarray] = {}  # step -> image[::step, ::step], made by subsampled()
        self._sub_lock = threading.Lock()
        self._read_lock = threading.Lock()  # one subsampled read at a time: a second caller waits and reuses it
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

    def __getstate__(self):  # picklable without its locks and kept reads
        return {k: v for k, v in self.__dict__.items() if k not in ("_sub", "_sub_lock", "_read_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._sub, self._sub_lock, self._read_lock = {}, threading.Lock(), threading.Lock()

    def _chunk_hw(self) -> tuple[int, int]:
        """Rows and columns of one stored chunk (a strip or a tile), 1 x 1 when not known."""
        chunks = getattr(self._z, "chunks", None)
        try:
            c = tuple(int(n) for n in chunks)[self._lead:]
        except Exception:  # not chunked storage (an array in memory), or chunks not known
            return 1, 1
        return (c[1], c[2]) if self._layout == "syx" else (c[0], c[1])

    def cached_subsample(self, step: int) -> np.ndarray | None:
        """``self[::step, ::step]`` from a subsampled read already made (a step that divides ``step``), or None."""
        with self._sub_lock:
            for s, arr in sorted(self._sub.items(), reverse=True):
                if step % s == 0:
                    k = step // s
                    return arr[::k, ::k]
        return None

    def subsampled(self, step: int, keep: bool = True) -> np.ndarray:
        """``self[::step, ::step]`` read in strips of whole chunks (at most about
        :data:`STRIP_BYTES` decoded at a time), never the whole level at once. The result is kept
        (``keep``, when at most :data:`CACHE_BYTES`) and later calls for a multiple of ``step``
        are cut from it without reading the file again. Read-only: copy it to change it."""
        step = max(1, int(step))
        got = self.cached_subsample(step)
        if got is not None:
            return got
        with self._read_lock:  # e.g. napari's overview on the GUI thread while a worker checks the stain
            got = self.cached_subsample(step)
            return got if got is not None else self._subsample(step, keep)

    def _subsample(self, step: int, keep: bool) -> np.ndarray:
        h, w = self.shape[:2]
        out = np.empty((-(-h // step), -(-w // step), 3), np.uint8)
        px_bytes = 3 * int(np.dtype(getattr(self._z, "dtype", np.uint8)).itemsize)
        ch, cw = self._chunk_hw()
        cols = w if ch * w * px_bytes <= STRIP_BYTES else max(cw, STRIP_BYTES // (ch * px_bytes) // cw * cw)
        rows = max(ch, STRIP_BYTES // (cols * px_bytes) // ch * ch)
        for y0 in range(0, h, rows):
            ys = -(-y0 // step) * step  # the first row of the strip on the step grid
            y1 = min(y0 + rows, h)
            if ys >= y1:
                continue
            for x0 in range(0, w, cols):
                xs = -(-x0 // step) * step
                x1 = min(x0 + cols, w)
                if xs >= x1:
                    continue
                part = self[ys:y1:step, xs:x1:step]
                out[ys // step:ys // step + part.shape[0], xs // step:xs // step + part.shape[1]] = part
        out.flags.writeable = False
        if keep and out.nbytes <= CACHE_BYTES:
            with self._sub_lock:
                self._sub[step] = out
                while len(self._sub) > CACHE_ENTRIES:  # the finest reads are the largest: dropped first
                    del self._sub[min(self._sub)]
        return out


class Overview:
    """A coarse level of a single-level lazy image for napari's multiscale view: every
    ``step``-th pixel of ``image``, read in strips (:meth:`LazyRGB.subsampled`) the first time it
    is shown and kept. Never a pyramid level of the slide (patches are never read from it:
    :func:`as_pyramid` leaves it out)."""

    def __init__(self, image: LazyRGB, step: int):
        self.image, self.step = image, max(1, int(step))
        h, w = int(image.shape[0]), int(image.shape[1])
        self.shape = (-(-h // self.step), -(-w // self.step), 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.size = int(np.prod(self.shape))

    def pixels(self) -> np.ndarray:
        return self.image.subsampled(self.step)

    def __getitem__(self, key):
        return self.pixels()[key]

    def __array__(self, dtype=None, copy=None):
        a = self.pixels()
        return a.astype(dtype) if dtype else np.array(a)


OVERVIEW_SIDE = 2048  # the long side of an Overview: about a screen's width, a few MB


def display_levels(image, max_side: int = OVERVIEW_SIDE) -> list:
    """The levels napari shows an image with, finest first: a pyramid's levels; for a single-level
    lazy image larger than ``max_side``, level 0 and an :class:`Overview` (so the whole-slide view
    never decodes level 0 at full resolution, and zooming in reads only the tiles shown)."""
    levels = [lev for lev, _ in pyramid(image)]
    if len(levels) == 1 and isinstance(image, LazyRGB) and max(image.shape[:2]) > max_side:
        levels.append(Overview(image, int(np.ceil(max(image.shape[:2]) / max_side))))
    return levels


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
                shapes = [(lev.shape, lev.dtype) for lev in series.levels]
            # metadata only: each level's zarr array is opened at its first read
            opened = [LazyRGB(_TiffLevel(path, i, shape, dtype)) for i, (shape, dtype) in enumerate(shapes)]
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
    levels = [lev for lev in levels if not isinstance(lev, Overview)]  # napari's view only, not the slide's
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
    if isinstance(level, LazyRGB):  # in strips, kept for the next check (never level 0 whole in memory)
        return np.array(level.subsampled(s)), ds * s
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
