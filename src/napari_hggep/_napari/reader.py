"""npe2 reader: a Visium outs/ folder, a HER2+ ST folder, or a spots CSV."""
from __future__ import annotations

from pathlib import Path

from ..data.image import TIFF_SUFFIXES
from ..data.readers import is_her2st_folder, is_visium_folder, read_her2st, read_spots_csv, read_visium
from ..data.visium_hd import DEFAULT_BIN_UM, is_visium_hd_folder, read_visium_hd
from .layers import image_data_tuple, image_layer_data, spots_layer_data


def get_reader(path):
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir() and (is_visium_folder(p) or is_visium_hd_folder(p) or is_her2st_folder(p)):
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
    if is_visium_hd_folder(path):  # 16 um bins (the CLI's --bin-um 8 chooses finer ones), drawn as squares
        slide = read_visium_hd(path, None)
        where = (f"microns_per_pixel in scalefactors_json.json (Visium HD, {slide.spot_diameter_um:g} µm bins"
                 + (f"; default {DEFAULT_BIN_UM} µm)" if slide.spot_diameter_um == DEFAULT_BIN_UM else ")"))
    elif is_visium_folder(path):
        slide = read_visium(path, with_counts=False)
        where = "spot_diameter_fullres in scalefactors_json.json (Visium spots are 55 µm)"
    else:
        slide = read_her2st(path, with_counts=False)
        where = "the 200 µm pitch of the ST spots"
    if slide.meta.get("notice"):  # e.g. a blank hires PNG replaced by the lowres one
        from napari.utils.notifications import show_warning

        show_warning(f"HGGEP: {slide.meta['notice']}")
    return [image_layer_data(slide, where), spots_layer_data(slide)]


def read_tiff(path):
    """A TIFF, OME-TIFF or SVS: a pyramid opens lazily as a multiscale layer (napari decodes
    only the tiles it shows, from the level that fits the zoom), scaled in micrometres when the
    file says its pixel size (OME physical size, Aperio MPP, TIFF resolution tags)."""
    from ..data.image import image_stem, image_um_per_px_source, read_image

    path = Path(path[0] if isinstance(path, list) else path)
    image = read_image(path, lazy=True)
    if not image.levels:
        image = read_image(path)  # one level: eager when small, lazy over level 0 when huge
    upp, where = image_um_per_px_source(path)
    return [image_data_tuple(image, upp, image_stem(path), source=str(path), um_per_px_source=where)]


def read_spots_table(path):
    """Spots in full-resolution pixels of an image not known here: the layer is marked as such
    (``frame``), and the Predict widget places it on the image's pixel grid (the image's scale
    and translation) as soon as it is open, and again at Predict."""
    import numpy as np

    path = Path(path[0] if isinstance(path, list) else path)
    df = read_spots_csv(path)
    from .layers import spot_features

    rc = df[["array_row", "array_col"]].to_numpy() if "array_row" in df else None
    kwargs = {"name": path.stem, "size": 20, "face_color": "transparent", "border_color": "yellow",
              "features": spot_features(df["spot_id"], rc),
              "metadata": {"hggep": {"kind": "spots", "frame": "image pixels", "source": str(path)}}}
    return [(np.column_stack([df["y"].to_numpy(float), df["x"].to_numpy(float)]), kwargs, "points")]
