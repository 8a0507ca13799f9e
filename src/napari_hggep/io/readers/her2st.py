"""HER2+ ST section folders (legacy Spatial Transcriptomics): ``he.jpg``, ``spots.tsv`` and
``counts.tsv.gz``; the pixel size from the 200 µm spot pitch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...data.image import read_image
from ...data.slide import Slide, SlideError
from .tables import decode_text, numeric_column, parse_table

ST_PITCH_UM = 200.0  # legacy ST: 100 um spots, 200 um centre-to-centre
ST_SPOT_UM = 100.0


def is_her2st_folder(path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "spots.tsv").is_file() and any((p / n).is_file() for n in ("he.jpg", "he.tif", "he.png"))


def _st_um_per_px(spots: pd.DataFrame) -> float:
    """Pixel size from the 200 um ST pitch: fit pixel = a * array + b on both axes."""
    a = []
    for arr, pix in (("x", "pixel_x"), ("y", "pixel_y")):
        xa, xp = spots[arr].to_numpy(float), spots[pix].to_numpy(float)
        if np.ptp(xa) > 0:
            a.append(abs(np.polyfit(xa, xp, 1)[0]))
    if not a or not np.isfinite(np.mean(a)) or np.mean(a) <= 0:
        raise SlideError("cannot infer the pixel size from the ST spots (a single spot, or pixel positions that "
                         "do not follow the array positions); pass um_per_px")
    return ST_PITCH_UM / float(np.mean(a))


def read_her2st(folder, genes: list[str] | None = None, with_counts: bool = True) -> Slide:
    """A HER2+ ST section folder: ``he.jpg``, ``spots.tsv`` and (optional) ``counts.tsv.gz``.

    Only ``selected == 1`` spots are kept; spots join counts by the rounded array
    coordinates (``"{x}x{y}"``). ``genes`` reorders/selects count columns (missing
    genes are zeros).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SlideError(f"{folder} is not a folder")
    spots_path = folder / "spots.tsv"
    if not spots_path.is_file():
        raise SlideError(f"{folder} is not a HER2+ ST folder: spots.tsv is missing")
    img_path = next((folder / n for n in ("he.jpg", "he.tif", "he.png") if (folder / n).is_file()), None)
    if img_path is None:
        raise SlideError(f"{folder}: no H&E image (he.jpg) found")
    table = parse_table(decode_text(spots_path.read_bytes(), spots_path), spots_path, "spot table (TSV)", sep="\t")
    need = ["x", "y", "pixel_x", "pixel_y"]
    if not set(need) <= set(table.columns):
        raise SlideError(f"{spots_path}: needs columns {need}, has {list(table.columns)[:10]}")
    spots = pd.DataFrame({c: numeric_column(table[c], spots_path, c) for c in need})
    if "selected" in table.columns:
        spots = spots[numeric_column(table["selected"], spots_path, "selected") == 1]
    if len(spots) == 0:
        raise SlideError(f"{spots_path}: no selected spots")
    spots = spots.assign(spot_id=[f"{int(round(x))}x{int(round(y))}" for x, y in zip(spots["x"], spots["y"])])
    spots = spots.drop_duplicates("spot_id")
    counts = gene_names = None
    counts_path = folder / "counts.tsv.gz"
    if with_counts and counts_path.is_file():
        try:
            df = pd.read_csv(counts_path, sep="\t", index_col=0)
            df.index = df.index.astype(str)
            df = df.loc[~df.index.duplicated()]
            spots = spots[spots["spot_id"].isin(df.index)]
            df = df.loc[spots["spot_id"]]
            if genes is not None:
                df = df.loc[:, ~df.columns.duplicated()].reindex(columns=list(genes), fill_value=0)
            counts = df.to_numpy(np.float32)
        except Exception as e:  # a cut-off gzip, text in the matrix, ...
            raise SlideError(f"{counts_path}: not a readable count matrix ({type(e).__name__}: "
                             f"{str(e).strip()[:200]})") from None
        if not np.isfinite(counts).all() or (counts < 0).any():
            raise SlideError(f"{counts_path}: counts must be finite and not negative")
        gene_names = [str(g) for g in df.columns]
    return Slide(
        image=read_image(img_path),
        um_per_px=_st_um_per_px(spots),
        spot_ids=spots["spot_id"].to_numpy(),
        xy=spots[["pixel_x", "pixel_y"]].to_numpy(float),
        array_rc=spots[["y", "x"]].to_numpy(float).round().astype(int),
        counts=counts,
        genes=gene_names,
        name=folder.name,
        spot_diameter_um=ST_SPOT_UM,
        source=str(folder),
    )
