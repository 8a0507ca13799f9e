"""Slides from what users have: one entry point, :func:`open_slide`, for a HER2+ ST folder
(:mod:`.her2st`), a Visium or Visium HD folder (:mod:`.visium`, :mod:`.visium_hd`), a SpatialData
store (:mod:`.spatialdata_reader`) or an image with a spot table or a generated grid (here).
Each returns a :class:`Slide`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .her2st import is_her2st_folder, read_her2st
from ...data.image import image_stem, image_um_per_px, is_image_path, read_image
from ...records import SlideInfo
from ...data.slide import Slide, SlideError
from .space_ranger import space_ranger_images
from .tables import decode_text, numeric_column, parse_table
from ...data.tissue import DEFAULT_PITCH_UM, tissue_grid
from .visium import is_visium_folder, read_visium


SPOT_TABLE_PEEK = 65536  # bytes read to see a table's header line


def spot_table_columns(path) -> list[str] | None:
    """The header of a text table, lower-cased, from its first bytes only (the encodings and
    delimiters :func:`read_spots_csv` reads); None for a binary or empty file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(SPOT_TABLE_PEEK)
    except OSError:
        return None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = raw[: len(raw) // 2 * 2].decode("utf-16", errors="ignore")
    elif b"\x00" in raw:
        return None
    else:
        text = raw.decode("utf-8-sig", errors="replace")
    lines = text.lstrip().splitlines()
    if not lines:
        return None
    sep = max([",", ";", "\t"], key=lines[0].count)
    return [c.strip().strip("\"'").strip().lower() for c in lines[0].split(sep)]


def looks_like_spot_table(path) -> bool:
    """A spot table by its header line (``x`` and ``y`` columns): what the napari reader claims,
    decided without reading the table itself."""
    cols = spot_table_columns(path)
    return cols is not None and {"x", "y"} <= set(cols)


def read_spots_csv(path) -> pd.DataFrame:
    """A spot table ``spot_id,x,y`` (full-resolution px), optional ``array_row,array_col``.
    Comma, semicolon or tab delimited; UTF-8, UTF-16 or Latin-1; a semicolon table may use
    decimal commas."""
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"spot table {path} does not exist")
    df = parse_table(decode_text(path.read_bytes(), path), path, "spot table (CSV)")
    cols = {str(c).lower().strip(): c for c in df.columns}
    if not {"x", "y"} <= set(cols):
        raise SlideError(f"{path}: a spot table needs columns spot_id,x,y (full-resolution pixels); found {list(df.columns)[:10]}")
    if len(df) == 0:
        raise SlideError(f"{path}: the spot table has a header but no spots")
    comma = df.attrs["sep"] != ","  # with ; or tab between cells, a comma in a number is a decimal comma
    out = pd.DataFrame({
        "spot_id": df[cols["spot_id"]].astype(str).to_numpy() if "spot_id" in cols else [f"spot_{i}" for i in range(len(df))],
        "x": numeric_column(df[cols["x"]], path, "x", decimal_comma=comma),
        "y": numeric_column(df[cols["y"]], path, "y", decimal_comma=comma),
    })
    if "array_row" in cols and "array_col" in cols:
        out["array_row"] = numeric_column(df[cols["array_row"]], path, "array_row", whole=True).astype(np.int64)
        out["array_col"] = numeric_column(df[cols["array_col"]], path, "array_col", whole=True).astype(np.int64)
    return out


def _resolve_um_per_px(image_path, um_per_px) -> float:
    if um_per_px:
        return float(um_per_px)
    meta = image_um_per_px(image_path)
    if meta:
        return meta
    raise SlideError(
        f"{image_path}: the image does not record its pixel size; give micrometres per pixel "
        "(--um-per-px, or the um/px field in the widget)"
    )


def read_image_with_spots(image_path, spots_csv, um_per_px: float | None = None) -> Slide:
    df = read_spots_csv(spots_csv)
    rc = df[["array_row", "array_col"]].to_numpy(np.int64) if "array_row" in df else None
    return Slide(
        image=read_image(image_path),
        um_per_px=_resolve_um_per_px(image_path, um_per_px),
        spot_ids=df["spot_id"].to_numpy(),
        xy=df[["x", "y"]].to_numpy(float),
        array_rc=rc,
        name=image_stem(image_path),  # slide.ome.tif -> slide: the library id of its exports
        source=str(image_path),
        info=SlideInfo(library_id=image_stem(image_path), image_path=str(image_path)),
    )


def read_image_with_grid(image_path, um_per_px: float | None = None, pitch_um: float = DEFAULT_PITCH_UM) -> Slide:
    """A plain H&E slide: spots on a hexagonal grid over the detected tissue."""
    image = read_image(image_path)
    upp = _resolve_um_per_px(image_path, um_per_px)
    slide = grid_slide(image, upp, pitch_um, name=image_stem(image_path), source=str(image_path))
    slide.info.library_id, slide.info.image_path = image_stem(image_path), str(image_path)
    return slide


def grid_slide(image, um_per_px: float, pitch_um: float = DEFAULT_PITCH_UM, name: str = "slide", source: str = "") -> Slide:
    xy, rc = tissue_grid(image, um_per_px, pitch_um)
    if len(xy) == 0:
        raise SlideError(f"{name}: no tissue found in the image (is it empty or not an H&E stain?)")
    return Slide(
        image=image,
        um_per_px=um_per_px,
        spot_ids=np.array([f"grid_{r}_{c}" for r, c in rc]),
        xy=xy,
        array_rc=rc,
        name=name,
        spot_diameter_um=float(pitch_um),  # shown as touching cells: a map, not dots on glass
        source=source,
    )


FULLRES_NOTICE = "predicting on the full-resolution image"  # how on_best_image's notice begins


def on_best_image(read, folder) -> Slide:
    """A Space Ranger / Visium HD folder given alone, read on the best image it has: a
    full-resolution image found in or beside ``outs/`` (the search the widget offers, see
    :func:`space_ranger_images`) when one fits the spots, else the folder's own PNGs. A notice
    says which image and its pixel size."""
    for kind, image in space_ranger_images(folder):
        if kind != "fullres":
            continue
        try:
            slide = read(image)
        except SlideError:  # not this slide's image (another size, no tissue under the spots): the next one
            continue
        if abs(float(slide.info.image_scale) - 1.0) > 1e-6:  # a copy of a PNG, not full resolution
            continue
        slide.info.notice = (f"{FULLRES_NOTICE} {image} ({slide.um_per_px:.3g} µm/px) found "
                                f"{'in' if image.parent == Path(folder) else 'beside'} the folder; give the image "
                                "to predict on another")
        return slide
    return read(None)


def open_slide(path, spots=None, visium=None, grid: bool = False, um_per_px=None, pitch_um=DEFAULT_PITCH_UM,
               bin_um=None) -> Slide:
    """One entry point: a HER2+ folder, a Visium or Visium HD folder (``bin_um``: 8 or 16, default
    16), or an image with spots / a grid."""
    from ..._log import logger
    from .visium_hd import is_visium_hd_folder, read_visium_hd

    path = Path(path)
    logger.debug("opening %s (spots %s, visium %s, grid %s, um/px %s, bins %s)", path, spots, visium, grid, um_per_px,
                 bin_um)
    hd = [f for f in (visium, path) if f is not None and is_visium_hd_folder(f)]
    if bin_um is not None and not hd:
        raise SlideError(f"--bin-um is for Visium HD folders (binned_outputs/square_008um, square_016um); "
                         f"{visium or path} is not one")
    if hd:
        if visium is not None and path.is_file():
            return read_visium_hd(hd[0], bin_um, image=path)
        return on_best_image(lambda image: read_visium_hd(hd[0], bin_um, image=image), hd[0])
    if visium is not None:
        if path.is_file():
            return read_visium(visium, image=path, with_counts=False)
        return on_best_image(lambda image: read_visium(visium, image=image, with_counts=False), visium)
    if path.is_dir():
        if is_visium_folder(path):
            return on_best_image(lambda image: read_visium(path, image=image, with_counts=False), path)
        if is_her2st_folder(path):
            slide = read_her2st(path, with_counts=False)
            if um_per_px:  # the user's figure over the one estimated from the 200 um spot pitch
                slide.um_per_px = float(um_per_px)
            return slide
        from .spatialdata_reader import is_spatialdata_store, read_spatialdata

        if is_spatialdata_store(path):  # an H&E image and spot shapes in a SpatialData store
            return read_spatialdata(path, um_per_px)
        raise SlideError(f"{path} is neither a Space Ranger outs/ folder (Visium or Visium HD), a HER2+ ST folder "
                         "nor a SpatialData store (.zarr)")
    if not path.exists():
        raise SlideError(f"{path} does not exist")
    if not is_image_path(path):
        raise SlideError(f"{path}: not an image (TIFF, OME-TIFF, JPEG, PNG) or a slide folder")
    if spots is not None:
        return read_image_with_spots(path, spots, um_per_px)
    if grid:
        return read_image_with_grid(path, um_per_px, pitch_um)
    raise SlideError(f"{path}: say where the spots are: --spots CSV, --visium DIR or --grid")
