"""10x Visium (standard, 55 µm spots): a Space Ranger ``outs/`` folder read as a slide; the pixel
size from ``spot_diameter_fullres``. A Visium HD bin folder given here is read by :mod:`.visium_hd`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ...records import SlideInfo, SpaceRangerRef
from ...data.slide import Slide, SlideError
from .space_ranger import (
    POSITION_FILES,
    read_10x_h5,
    read_visium_positions,
    visium_image_with_tissue,
    visium_named_image,
    visium_spatial,
    visium_spatial_meta,
)

VISIUM_SPOT_UM = 55.0


def is_visium_folder(path) -> bool:
    p = Path(path)
    if not p.is_dir():
        return False
    try:
        sp = visium_spatial(p)
    except SlideError:
        return False
    return any((sp / n).is_file() for n in POSITION_FILES)


def read_visium(folder, image=None, genes: list[str] | None = None, with_counts: bool = True,
                lazy: bool | None = None) -> Slide:
    """A Space Ranger ``outs/`` folder. ``image``: the full-resolution image, or
    ``tissue_hires_image.png`` / ``tissue_lowres_image.png`` (recognised by name or size;
    default: the hires PNG); spot positions and um/px follow the image. Pixel size from
    ``spot_diameter_fullres`` (Visium spots are 55 um). ``with_counts=False`` keeps every
    in-tissue spot (prediction needs no counts); with counts, only the matrix's barcodes.
    ``lazy=True``: a TIFF image stays on disk, only its metadata read (napari's reader; see
    :func:`~napari_hggep.data.image.read_image`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SlideError(f"{folder} is not a folder")
    spatial = visium_spatial(folder)
    sf_path = spatial / "scalefactors_json.json"
    if not sf_path.is_file():
        raise SlideError(f"{spatial}: scalefactors_json.json is missing")
    try:
        sf = json.loads(sf_path.read_bytes().decode("utf-8-sig"))
        diameter = float(sf["spot_diameter_fullres"])
    except (ValueError, KeyError, TypeError, UnicodeError) as e:
        raise SlideError(f"{sf_path}: cannot read spot_diameter_fullres ({type(e).__name__}: {e})") from None
    if not (np.isfinite(diameter) and diameter > 0):
        raise SlideError(f"{sf_path}: spot_diameter_fullres must be a positive number, not {diameter}")
    if "bin_size_um" in sf or "microns_per_pixel" in sf:  # a Visium HD bin folder: never the 55 um spot rule
        from .visium_hd import read_hd_bins

        return read_hd_bins(folder, image=image, with_counts=with_counts, genes=genes, lazy=lazy)
    for key in ("tissue_hires_scalef", "tissue_lowres_scalef"):
        try:
            v = float(sf.get(key, 0) or 0)
        except (TypeError, ValueError):
            v = -1.0
        if not (np.isfinite(v) and v >= 0):
            raise SlideError(f"{sf_path}: {key} must be a positive number")
    pos = read_visium_positions(spatial)
    n_rows = len(pos)
    pos = pos[pos["in_tissue"] == 1]
    if len(pos) == 0:
        raise SlideError(f"{spatial}: no spot is in tissue (in_tissue is 0 on all {n_rows} rows of the tissue "
                         "positions), so there is nothing to predict; check that this is the right Space Ranger "
                         "folder, or predict on its full-resolution image with --grid")
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    um_per_px = VISIUM_SPOT_UM / diameter
    notice = None
    if image is None:  # the hires PNG, or another of the folder's images when it shows no tissue
        image, img, scale, notice = visium_image_with_tissue(folder, spatial, xy, sf, sf_path, diameter, lazy=lazy)
    else:
        image, img, scale = visium_named_image(image, xy, sf, sf_path, lazy=lazy)
    xy, um_per_px, src = xy * scale, um_per_px / scale, str(image)
    counts = gene_names = None
    h5 = folder / "filtered_feature_bc_matrix.h5"
    barcodes = pos["barcode"].astype(str).to_numpy()
    if with_counts and h5.is_file():
        try:
            mat, names, bc = read_10x_h5(h5)
        except Exception as e:  # a cut-off download, another HDF5 layout, ...
            raise SlideError(f"{h5}: not a readable 10x feature-barcode matrix ({type(e).__name__}: "
                             f"{str(e).strip()[:200]})") from None
        df = pd.DataFrame(mat, index=bc, columns=names)
        df = df.loc[:, ~df.columns.duplicated()]
        keep = np.isin(barcodes, df.index)
        pos, xy, barcodes = pos[keep], xy[keep], barcodes[keep]
        df = df.loc[barcodes]
        if genes is not None:
            df = df.reindex(columns=list(genes), fill_value=0)
        counts, gene_names = df.to_numpy(np.float32), [str(g) for g in df.columns]
    return Slide(
        image=img,
        um_per_px=um_per_px,
        spot_ids=barcodes,
        xy=xy,
        array_rc=pos[["array_row", "array_col"]].to_numpy(int),
        counts=counts,
        genes=gene_names,
        name=folder.parent.name if folder.name == "outs" and folder.parent.name else folder.name,  # the section
        spot_diameter_um=VISIUM_SPOT_UM,
        source=src,
        info=SlideInfo(image_path=src, um_per_px_source="spot_diameter_fullres in scalefactors_json.json",
                       image_scale=float(scale), **visium_spatial_meta(folder, spatial, sf, notice),
                       space_ranger=SpaceRangerRef(str(folder), "visium"),  # to predict on another of its images
                       notice=notice or None),
    )
