"""Reading a SpatialData store (``.zarr``; the optional extra ``spatialdata``) as a :class:`~napari_hggep.data.slide.Slide`:
:func:`is_spatialdata_store` tells a store from any folder by its zarr group files and element
folders, :func:`read_spatialdata` reads its H&E image (lazily, level by level) and spot shapes.
The napari reader and :func:`~.open.open_slide` read stores through this module; the stores
napari-hggep writes are made in :mod:`napari_hggep.io.writers.spatialdata_export`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...records import SlideInfo

CS = "global"  # the coordinate system napari-hggep writes, in micrometres


def is_spatialdata_store(path) -> bool:
    p = Path(path)
    return (p.is_dir() and p.name.lower().rstrip("/").endswith(".zarr")
            and any((p / n).exists() for n in ("zarr.json", ".zgroup", ".zattrs"))
            and any((p / d).is_dir() for d in ("images", "shapes")))


class _CYXImage:
    """An ``H x W x 3`` uint8 view over a (dask) ``c, y, x`` image element, sliced lazily."""

    def __init__(self, arr, levels=None):
        self._a = arr
        self.shape = (int(arr.shape[1]), int(arr.shape[2]), 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.size = int(np.prod(self.shape))
        self.levels = list(levels or [])

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
        ys, xs, cs = (list(key) + [slice(None)] * 3)[:3]
        out = np.moveaxis(np.asarray(self._a[:3, ys, xs]), 0, -1)
        if out.dtype != np.uint8:
            hi = 65535.0 if out.dtype == np.uint16 else (1.0 if out.size and float(out.max()) <= 1.0 else 255.0)
            out = np.clip(out.astype(np.float32) / hi * 255.0, 0, 255).astype(np.uint8)
        return out if isinstance(cs, slice) and cs == slice(None) else out[..., cs]

    def __array__(self, dtype=None, copy=None):
        a = self[:, :]
        return a.astype(dtype) if dtype else a


def _levels(el) -> list:
    """The image arrays of an element, finest first (one for a single-scale image)."""
    if hasattr(el, "children") and len(getattr(el, "children", {})):
        return [el[k]["image"].data for k in sorted(el.children, key=lambda k: int(str(k).replace("scale", "") or 0))]
    return [el.data]


def _affine_xy(tr) -> np.ndarray:
    return np.asarray(tr.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), float)


def read_spatialdata(path, um_per_px: float | None = None, pixel_size_needed: bool = True):
    """A SpatialData store holding an H&E image and spot shapes, as a :class:`Slide`: the first RGB
    image element, the first shapes element (circles, or polygons such as Visium HD squares, taken
    by their centres) placed on the image through a coordinate system both share. Micrometres per
    pixel come from a store napari-hggep wrote (its coordinate system is in micrometres), else from
    ``um_per_px`` (never guessed). ``pixel_size_needed=False`` (napari, where the widget asks for it):
    an unknown pixel size gives a slide in pixels (``um_per_px`` 1, ``info.um_per_px_unknown``)."""
    from ...data.slide import Slide, SlideError

    path = Path(path)
    try:
        import spatialdata as sd
        from spatialdata.transformations import get_transformation
    except ImportError:
        raise SlideError(f"{path}: reading a SpatialData store needs the optional extra "
                         "(pip install \"napari-hggep[spatialdata]\")") from None
    try:
        s = sd.read_zarr(path)
    except Exception as e:  # not a store, a store from an incompatible version, ...
        raise SlideError(f"{path}: not a readable SpatialData store ({type(e).__name__}: {str(e)[:200]})") from None
    rgb = [k for k in s.images if int(_levels(s.images[k])[0].shape[0]) in (3, 4)]
    if not rgb:
        raise SlideError(f"{path}: the store holds no RGB image (images: {list(s.images) or 'none'}); an H&E image "
                         "element is needed to predict on")
    if not s.shapes:
        raise SlideError(f"{path}: the store holds no shapes element; the spots (circles or squares) are needed")
    ikey, skey = rgb[0], next(iter(s.shapes))
    img_el, shapes = s.images[ikey], s.shapes[skey]
    ti, ts = get_transformation(img_el, get_all=True), get_transformation(shapes, get_all=True)
    common = [c for c in ti if c in ts]
    if not common:
        raise SlideError(f"{path}: image {ikey!r} and shapes {skey!r} share no coordinate system")
    cs = CS if CS in common else common[0]
    mi, ms = _affine_xy(ti[cs]), _affine_xy(ts[cs])
    if abs(mi[0, 1]) > 1e-9 or abs(mi[1, 0]) > 1e-9 or not np.isclose(abs(mi[0, 0]), abs(mi[1, 1]), rtol=1e-3):
        raise SlideError(f"{path}: image {ikey!r} is rotated or has unequal pixel sides in {cs!r}; not supported")
    geom = shapes.geometry
    if (geom.geom_type == "Point").all():
        xy = np.column_stack([geom.x.to_numpy(), geom.y.to_numpy()])
        diam = 2 * np.asarray(shapes["radius"], float) if "radius" in shapes else np.full(len(xy), np.nan)
        shape = "circle"
    else:
        c = geom.centroid
        xy = np.column_stack([c.x.to_numpy(), c.y.to_numpy()])
        diam = np.sqrt(geom.area.to_numpy())
        shape = "square" if (geom.geom_type == "Polygon").all() and np.allclose(
            geom.area.to_numpy(), geom.envelope.area.to_numpy(), rtol=1e-3) else "circle"
    world = (ms @ np.column_stack([xy, np.ones(len(xy))]).T).T
    px = (np.linalg.inv(mi) @ world.T).T[:, :2]
    cs_per_px = abs(mi[0, 0])
    ours = any("napari_hggep" in t.uns for t in s.tables.values())
    unknown = False
    if um_per_px:
        upp = float(um_per_px)
    elif ours:
        upp = cs_per_px  # napari-hggep writes its coordinate system in micrometres
    elif not pixel_size_needed:
        upp, unknown = 1.0, True  # pixels; the user gives the size before predicting
    else:
        raise SlideError(f"{path}: the store does not say the pixel size of image {ikey!r}; give micrometres per "
                         "pixel (--um-per-px)")
    d_um = float(np.nanmedian(diam)) * abs(ms[0, 0]) / cs_per_px * upp if np.isfinite(diam).any() else 100.0
    levels = [_CYXImage(a) for a in _levels(img_el)]
    image = _CYXImage(_levels(img_el)[0], levels=levels[1:])
    return Slide(image=image, um_per_px=upp, spot_ids=np.asarray(shapes.index).astype(str), xy=px,
                 name=path.name[: -len(".zarr")] if path.name.lower().endswith(".zarr") else path.name,
                 spot_diameter_um=d_um, source=str(path),
                 info=SlideInfo(image_path=f"{path}::{ikey}", spot_shape=shape, spatialdata_shapes=skey,
                                um_per_px_source="the store's micrometre coordinates (written by napari-hggep)"
                                if not um_per_px and ours else "given", um_per_px_unknown=bool(unknown)))


def read_store_image(ref: str):
    """The image element ``store.zarr::element`` (as an export records the image it was predicted
    on) as a lazy ``H x W x 3`` image with its coarser levels; None when the store or the element
    is not there (or spatialdata is not installed)."""
    store, sep, element = str(ref).partition("::")
    if not sep or not is_spatialdata_store(store):
        return None
    try:
        import spatialdata as sd

        el = sd.read_zarr(store).images.get(element)
    except Exception:  # noqa: BLE001 - no extra, an unreadable store: the caller shows the spots alone
        from ..._log import logger

        logger.debug("could not read %s", ref, exc_info=True)
        return None
    if el is None:
        return None
    arrays = _levels(el)
    return _CYXImage(arrays[0], levels=[_CYXImage(a) for a in arrays[1:]])
