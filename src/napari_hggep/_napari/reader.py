"""npe2 reader: a Visium outs/ folder, a HER2+ ST folder, or a spots CSV."""
from __future__ import annotations

from pathlib import Path

from ..data.image import TIFF_SUFFIXES
from ..data.readers import is_her2st_folder, is_visium_folder, read_her2st, read_spots_csv, read_visium
from .layers import image_data_tuple, image_layer_data, spots_layer_data


def get_reader(path):
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir() and (is_visium_folder(p) or is_her2st_folder(p)):
        return read_slide_folder
    if p.is_file() and p.name.lower().endswith(TIFF_SUFFIXES):
        return read_tiff
    if p.suffix.lower() == ".csv" and p.is_file():
        try:
            read_spots_csv(p)
        except ValueError:
            return None  # not a spot table: let other readers try
        return read_spots_table
    return None


def read_slide_folder(path):
    path = Path(path[0] if isinstance(path, list) else path)
    slide = read_visium(path, with_counts=False) if is_visium_folder(path) else read_her2st(path, with_counts=False)
    return [image_layer_data(slide), spots_layer_data(slide)]


def read_tiff(path):
    """A TIFF, OME-TIFF or SVS: a pyramid opens lazily as a multiscale layer (napari decodes
    only the tiles it shows, from the level that fits the zoom), scaled in micrometres when the
    file says its pixel size (OME physical size, Aperio MPP, TIFF resolution tags)."""
    from ..data.image import image_stem, image_um_per_px, read_image

    path = Path(path[0] if isinstance(path, list) else path)
    image = read_image(path, lazy=True)
    if not image.levels:
        image = read_image(path)  # one level: eager when small, lazy over level 0 when huge
    return [image_data_tuple(image, image_um_per_px(path), image_stem(path), source=str(path))]


def read_spots_table(path):
    """Spots in full-resolution pixels; drop them on the image they belong to."""
    import numpy as np

    path = Path(path[0] if isinstance(path, list) else path)
    df = read_spots_csv(path)
    from .layers import spot_features

    rc = df[["array_row", "array_col"]].to_numpy() if "array_row" in df else None
    kwargs = {"name": path.stem, "size": 20, "face_color": "transparent", "border_color": "yellow",
              "features": spot_features(df["spot_id"], rc), "metadata": {"hggep": {"kind": "spots"}}}
    return [(np.column_stack([df["y"].to_numpy(float), df["x"].to_numpy(float)]), kwargs, "points")]
