"""SpatialData stores (``.zarr``; the optional extra ``spatialdata``).

* A new store: the slide as a multiscale image element, the spots as a circles shapes element
  (squares for Visium HD bins), and a table annotating them with every exported gene and the
  per-gene figures in ``var``. Elements are named as ``spatialdata_io.visium`` names them
  (shapes ``<library>``, image ``<library>_full_image`` / ``_hires_image`` / ``_lowres_image``,
  table ``table``) and placed in two coordinate systems: ``<library>`` in full-resolution pixels
  (spatialdata-io's) and ``global`` in micrometres. Written to a temporary folder beside the
  target and renamed over it only when complete.
* An existing store (for example one ``spatialdata_io.visium`` wrote for the same folder): the
  predictions are added as one more table, :data:`ADDED_TABLE`, annotating the store's own spot
  shapes (matched by barcode through the store's table, else by position), in its coordinate
  systems; nothing that is there is touched (:func:`add_to_store`)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..readers.spatialdata_reader import CS, is_spatialdata_store

TABLE_KEY = "table"
ADDED_TABLE = "hggep_predictions"  # the table added to a store that exists


def element_names(pred) -> dict:
    """spatialdata-io's names for this slide's elements: ``library`` (the shapes element and the
    full-resolution pixel coordinate system), ``image`` and ``table``."""
    import re

    from .anndata_export import library_id

    lib = re.sub(r"[^A-Za-z0-9_.-]", "_", library_id(pred)) or "slide"
    scale = float(pred.image_scale or 1.0)
    sf = pred.slide.scalefactors or {}
    kind = "full"
    for k in ("hires", "lowres"):
        if abs(scale - 1.0) > 1e-6 and abs(float(sf.get(f"tissue_{k}_scalef", -1)) - scale) < 1e-6:
            kind = k
    if abs(scale - 1.0) > 1e-6 and kind == "full":
        kind = "hires"
    return {"library": lib, "image": f"{lib}_{kind}_image", "shapes": lib, "table": TABLE_KEY}


def _image_element(pred, transformations_mod, Image2DModel, lib: str):
    """The image predicted on (lazily, through dask, for a whole-slide image), or the hires copy an
    export carries when the image itself is not at hand (an export from the napari layer); in
    micrometres (``global``) and in full-resolution pixels (``lib``)."""
    import dask.array as da

    from .anndata_export import spatial_images

    if pred.image is not None:
        img, um, px = pred.image, float(pred.image_um_per_px), 1.0 / float(pred.image_scale or 1.0)
    else:
        imgs = spatial_images(pred)
        if not imgs:
            return None
        kind = "hires" if "hires" in imgs else next(iter(imgs))
        img, s = imgs[kind]
        um, px = float(pred.um_per_px) / float(s), 1.0 / float(s)
    h, w = int(img.shape[0]), int(img.shape[1])
    arr = da.from_array(img, chunks=(min(h, 2048), min(w, 2048), 3)) if not isinstance(img, np.ndarray) \
        else da.from_array(np.asarray(img)[..., :3], chunks=(min(h, 2048), min(w, 2048), 3))
    arr = arr[..., :3].transpose(2, 0, 1)
    factors = []
    side = max(h, w)
    while side > 256 and len(factors) < 8:  # levels down to about 256 px: napari-spatialdata draws the coarse ones
        factors.append(2)
        side //= 2
    return Image2DModel.parse(arr, dims=("c", "y", "x"), c_coords=["r", "g", "b"],
                              scale_factors=factors or None,
                              transformations={CS: transformations_mod.Scale([um, um], axes=("y", "x")),
                                               lib: transformations_mod.Scale([px, px], axes=("y", "x"))})


def _shapes_element(pred, transformations_mod, ShapesModel, lib: str):
    import geopandas as gpd
    import shapely

    from .export_values import spot_diameter_px

    xy = np.asarray(pred.xy, float)
    d = spot_diameter_px(pred)
    tfs = {CS: transformations_mod.Scale([float(pred.um_per_px)] * 2, axes=("x", "y")),
           lib: transformations_mod.Identity()}  # full-resolution pixels, as spatialdata-io places Visium spots
    index = np.asarray(pred.spot_ids).astype(str)
    if pred.spot_shape == "square":
        r = d / 2
        boxes = shapely.box(xy[:, 0] - r, xy[:, 1] - r, xy[:, 0] + r, xy[:, 1] + r)
        gdf = gpd.GeoDataFrame({"geometry": boxes}, index=index)
        return ShapesModel.parse(gdf, transformations=tfs)
    gdf = gpd.GeoDataFrame({"geometry": shapely.points(xy), "radius": np.full(len(xy), d / 2)}, index=index)
    return ShapesModel.parse(gdf, transformations=tfs)


def to_spatialdata(pred, genes=None):
    import spatialdata as sd
    from spatialdata import transformations as tr
    from spatialdata.models import Image2DModel, ShapesModel, TableModel

    from .anndata_export import to_anndata

    names = element_names(pred)
    adata = to_anndata(pred, genes)
    del adata.uns["spatial"]  # the image is an element of the store
    adata.obs["region"] = names["shapes"]
    adata.obs["region"] = adata.obs["region"].astype("category")
    adata.obs["spot_id"] = adata.obs_names.to_numpy()
    # the spot ids stay the obs names, but the index is not named like the instance-key column: an
    # index named "spot_id" made join_spatialelement_table (and napari-spatialdata colouring the
    # shapes by a gene) fail with "cannot insert spot_id, already exists"
    adata.obs.index.name = None
    table = TableModel.parse(adata, region=names["shapes"], region_key="region", instance_key="spot_id")
    images = {}
    img = _image_element(pred, tr, Image2DModel, names["library"])
    if img is not None:
        images[names["image"]] = img
    return sd.SpatialData(images=images,
                          shapes={names["shapes"]: _shapes_element(pred, tr, ShapesModel, names["library"])},
                          tables={names["table"]: table})


def _match_store_spots(s, pred) -> tuple[str, str, np.ndarray, np.ndarray]:
    """Which of the store's shapes elements holds this prediction's spots, and for each spot of
    the prediction its instance id there (``ok`` marks the spots found): through a table of the
    store that annotates shapes (its obs names are barcodes, as spatialdata-io writes them), else
    by position (a shape centre within 1 px of the spot in a coordinate system of full-resolution
    pixels). Returns ``(shapes key, instance key, ids, ok)``."""
    from spatialdata.transformations import get_transformation

    from ...data.slide import SlideError

    ids = np.asarray(pred.spot_ids).astype(str)
    for tname, t in s.tables.items():
        attrs = t.uns.get("spatialdata_attrs") or {}
        regions = attrs.get("region")
        regions = [regions] if isinstance(regions, str) else list(regions or [])
        rkey, ikey = attrs.get("region_key"), attrs.get("instance_key")
        for reg in regions:
            if reg not in s.shapes or ikey not in t.obs:
                continue
            sub = t.obs[t.obs[rkey].astype(str) == reg] if rkey in t.obs else t.obs
            pos = {str(b): v for b, v in zip(sub.index.astype(str), sub[ikey].to_numpy())}
            found = np.array([i in pos for i in ids])
            if found.mean() >= 0.5:
                return reg, str(ikey), np.array([pos.get(i, -1) for i in ids], dtype=object), found
    from scipy.spatial import cKDTree

    xy = np.asarray(pred.xy, float)
    for key, shapes in s.shapes.items():
        c = shapes.geometry.centroid
        pts = np.column_stack([c.x.to_numpy(), c.y.to_numpy(), np.ones(len(c))])
        for cs, tf in get_transformation(shapes, get_all=True).items():
            m = np.asarray(tf.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), float)
            d, j = cKDTree((m @ pts.T).T[:, :2]).query(xy)
            found = d <= 1.0
            if found.mean() >= 0.5:
                return key, "instance_id", np.asarray(shapes.index)[j].astype(object), found
    raise SlideError(f"the store's shapes do not hold this slide's spots (no table of it lists their barcodes, and "
                     f"no shapes element has them at their full-resolution positions; shapes: {list(s.shapes)})")


def _written_by_us(path) -> bool:
    """A store napari-hggep wrote as a whole (re-exporting replaces it), as opposed to another
    tool's store that predictions were added to."""
    try:
        import spatialdata as sd

        s = sd.read_zarr(path)
    except Exception:
        return False
    return any("napari_hggep" in t.uns for k, t in s.tables.items() if k != ADDED_TABLE)


def add_to_store(pred, path, genes=None) -> Path:
    """Add the predictions to an existing SpatialData store as the table :data:`ADDED_TABLE`,
    annotating the store's own spots (see :func:`_match_store_spots`); the store's elements and
    coordinate systems are left as they are. A previous ``hggep_predictions`` is replaced only
    once the new one is written."""
    import spatialdata as sd
    from spatialdata.models import TableModel

    from .anndata_export import to_anndata
    from ...data.slide import SlideError

    path = Path(str(path).rstrip("/\\"))
    try:
        s = sd.read_zarr(path)
    except Exception as e:
        raise SlideError(f"{path}: exists but is not a readable SpatialData store ({type(e).__name__}: "
                         f"{str(e)[:200]}); give a new .zarr path, or remove it") from None
    shapes_key, ikey, inst, ok = _match_store_spots(s, pred)
    adata = to_anndata(pred, genes)
    del adata.uns["spatial"]
    adata = adata[ok].copy()
    adata.obs.index.name = None  # the barcodes stay the obs names; the store's instance ids go in a column
    adata.obs["region"] = shapes_key
    adata.obs["region"] = adata.obs["region"].astype("category")
    adata.obs[ikey] = np.asarray(list(inst[ok]))
    adata.uns["napari_hggep"]["added_to_store"] = (f"annotates shapes {shapes_key!r} of this store ({int(ok.sum())} of "
                                                   f"{len(ok)} predicted spots found there)")
    table = TableModel.parse(adata, region=shapes_key, region_key="region", instance_key=ikey)
    staging = f"{ADDED_TABLE}_new"
    s.tables[staging] = table
    s.write_element(staging, overwrite=True)
    if ADDED_TABLE in s.tables:
        s.delete_element_from_disk(ADDED_TABLE)
        del s.tables[ADDED_TABLE]
    s.tables[ADDED_TABLE] = table
    s.write_element(ADDED_TABLE)
    s.delete_element_from_disk(staging)
    return path


def write_zarr(pred, path, genes=None) -> Path:
    """Write a SpatialData store to ``path`` (a folder): to a temporary folder first, then renamed
    over ``path``; a failed write leaves the old store.

    anndata 0.12 warns "zarr v3 autosharding will be the default in the next minor release" for
    every array of a table it writes (14 per store): a note to developers about a default, not about
    this store. That warning alone is silenced, only while the store is written."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="zarr v3 autosharding will be the default", category=UserWarning)
        return _write_zarr(pred, path, genes)


def _write_zarr(pred, path, genes=None) -> Path:
    path = Path(str(path).rstrip("/\\"))
    if path.exists() and is_spatialdata_store(path) and not _written_by_us(path):
        return add_to_store(pred, path, genes)  # another tool's store: add to it, never replace it
    sdata = to_spatialdata(pred, genes)
    tmp_parent = Path(tempfile.mkdtemp(prefix=f".{path.name}~{os.getpid()}~", dir=path.parent))
    old = None
    try:
        tmp = tmp_parent / path.name
        sdata.write(tmp)
        if path.exists():
            old = path.parent / f".{path.name}~old~{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)  # put the old store back
        raise
    finally:
        shutil.rmtree(tmp_parent, ignore_errors=True)
        if old is not None and old.exists() and path.exists():
            shutil.rmtree(old, ignore_errors=True)
    return path
