"""SpatialData stores (``.zarr``; the optional extra ``spatialdata``): the slide as a multiscale
image element in micrometres, the spots as a circles shapes element (squares for Visium HD bins),
and a table annotating them with every exported gene and the per-gene held-out PCC in ``var``.
Written to a temporary folder beside the target and renamed over it only when complete."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

IMAGE_KEY = "he"
SHAPES_KEY = "spots"
TABLE_KEY = "table"
CS = "global"  # coordinate system, in micrometres


def _image_element(pred, transformations_mod, Image2DModel):
    """The image predicted on (lazily, through dask, for a whole-slide image), or the hires copy an
    export carries when the image itself is not at hand (an export from the napari layer)."""
    import dask.array as da

    from .export import spatial_images

    if pred.image is not None:
        img, um = pred.image, float(pred.image_um_per_px)
    else:
        imgs = spatial_images(pred)
        if not imgs:
            return None
        kind = "hires" if "hires" in imgs else next(iter(imgs))
        img, s = imgs[kind]
        um = float(pred.um_per_px) / float(s)
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
                              transformations={CS: transformations_mod.Scale([um, um], axes=("y", "x"))})


def _shapes_element(pred, transformations_mod, ShapesModel):
    import geopandas as gpd
    import shapely

    from .export import spot_diameter_px

    xy = np.asarray(pred.xy, float)
    d = spot_diameter_px(pred)
    scale = transformations_mod.Scale([float(pred.um_per_px)] * 2, axes=("x", "y"))
    index = np.asarray(pred.spot_ids).astype(str)
    if pred.spot_shape == "square":
        r = d / 2
        boxes = shapely.box(xy[:, 0] - r, xy[:, 1] - r, xy[:, 0] + r, xy[:, 1] + r)
        gdf = gpd.GeoDataFrame({"geometry": boxes}, index=index)
        return ShapesModel.parse(gdf, transformations={CS: scale})
    gdf = gpd.GeoDataFrame({"geometry": shapely.points(xy), "radius": np.full(len(xy), d / 2)}, index=index)
    return ShapesModel.parse(gdf, transformations={CS: scale})


def to_spatialdata(pred, genes=None):
    import spatialdata as sd
    from spatialdata import transformations as tr
    from spatialdata.models import Image2DModel, ShapesModel, TableModel

    from .export import to_anndata

    adata = to_anndata(pred, genes)
    del adata.uns["spatial"]  # the image is an element of the store
    adata.obs["region"] = SHAPES_KEY
    adata.obs["region"] = adata.obs["region"].astype("category")
    adata.obs["spot_id"] = adata.obs_names.to_numpy()
    table = TableModel.parse(adata, region=SHAPES_KEY, region_key="region", instance_key="spot_id")
    images = {}
    img = _image_element(pred, tr, Image2DModel)
    if img is not None:
        images[IMAGE_KEY] = img
    return sd.SpatialData(images=images, shapes={SHAPES_KEY: _shapes_element(pred, tr, ShapesModel)},
                          tables={TABLE_KEY: table})


def write_zarr(pred, path, genes=None) -> Path:
    """Write a SpatialData store to ``path`` (a folder): to a temporary folder first, then renamed
    over ``path``; a failed write leaves the old store."""
    path = Path(str(path).rstrip("/\\"))
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
