"""Readers for HER2+ ST folders, 10x Visium Space Ranger output, and plain images with or
without a spot table. Each returns a :class:`Slide`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .image import image_um_per_px, is_image_path, read_image
from .slide import Slide, SlideError
from .tissue import DEFAULT_PITCH_UM, tissue_grid

ST_PITCH_UM = 200.0  # legacy ST: 100 um spots, 200 um centre-to-centre
ST_SPOT_UM = 100.0
VISIUM_SPOT_UM = 55.0


# ---------------------------------------------------------------- HER2+ ST
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


# ---------------------------------------------------------------- Visium
def _visium_spatial(folder: Path) -> Path:
    for cand in (folder / "spatial", folder / "outs" / "spatial"):
        if cand.is_dir():
            return cand
    raise SlideError(f"{folder} is not a Space Ranger output folder: no spatial/ subfolder")


def is_visium_folder(path) -> bool:
    p = Path(path)
    if not p.is_dir():
        return False
    try:
        sp = _visium_spatial(p)
    except SlideError:
        return False
    return any((sp / n).is_file() for n in POSITION_FILES)


POSITION_FILES = ("tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet")


def read_visium_positions(spatial: Path) -> pd.DataFrame:
    cols = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    new, old, pq = (spatial / n for n in POSITION_FILES)
    src = next((f for f in (new, pq, old) if f.is_file()), None)
    if src is None:
        raise SlideError(f"{spatial}: none of {', '.join(POSITION_FILES)} exists")
    if src == pq:
        try:
            df = pd.read_parquet(pq)
        except Exception as e:
            raise SlideError(f"{pq}: cannot read it ({type(e).__name__}: {e})") from None
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise SlideError(f"{pq}: columns {missing} are missing (expected {cols})")
        df = df[cols]
    else:
        df = parse_table(decode_text(src.read_bytes(), src), src, "tissue positions table", sep=",", header=None)
        if [str(c).strip() for c in df.iloc[0, :6]] == cols:  # Space Ranger 2+ writes a header; 1.x does not
            df = df.iloc[1:]
        if df.shape[1] < 6:
            raise SlideError(f"{src}: expected 6 columns ({', '.join(cols)}), found {df.shape[1]}")
        df = df.iloc[:, :6].set_axis(cols, axis=1)
    out = pd.DataFrame({"barcode": df["barcode"].astype(str).to_numpy()})
    for c in cols[1:]:
        out[c] = numeric_column(df[c], src, c, whole=c in ("in_tissue", "array_row", "array_col"))
    out[["in_tissue", "array_row", "array_col"]] = out[["in_tissue", "array_row", "array_col"]].astype(np.int64)
    return out


def read_10x_h5(path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Counts (barcodes x genes, dense float32), gene names, barcodes from a 10x ``.h5``."""
    import h5py
    from scipy.sparse import csc_matrix

    with h5py.File(path, "r") as f:
        m = f["matrix"]
        shape = tuple(m["shape"][:])
        mat = csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=shape)
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in m["features"]["name"][:]]
        barcodes = np.array([b.decode() if isinstance(b, bytes) else str(b) for b in m["barcodes"][:]])
    return np.asarray(mat.T.todense(), dtype=np.float32), names, barcodes


def visium_image_scale(name: str, shape, xy_fullres: np.ndarray, sf: dict, sf_path) -> float:
    """How the image relates to Space Ranger's full-resolution pixels: 1 for the full-resolution
    image, ``tissue_hires_scalef`` / ``tissue_lowres_scalef`` for the PNGs. Known by the file
    name, otherwise the largest of those scales that puts every spot inside the image."""
    scales = {"hires": float(sf.get("tissue_hires_scalef", 0) or 0),
              "lowres": float(sf.get("tissue_lowres_scalef", 0) or 0)}
    for kind in ("hires", "lowres"):
        if f"tissue_{kind}_image" in name.lower():
            if scales[kind] <= 0:
                raise SlideError(f"{sf_path}: tissue_{kind}_scalef is missing, cannot place spots on {name}")
            return scales[kind]
    h, w = int(shape[0]), int(shape[1])
    if max(h, w) > 2000:  # Space Ranger's PNGs are at most 2,000 px: this is the full-resolution image
        return 1.0
    for s in sorted({1.0, *(v for v in scales.values() if v > 0)}, reverse=True):
        p = xy_fullres * s
        if len(p) == 0 or ((p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)).all():
            return s
    raise SlideError(f"{name} ({w}x{h} px) is neither the full-resolution image nor the hires or lowres "
                     "image of this Space Ranger output: its spots fall outside it at every scale factor")


def visium_image_with_tissue(folder: Path, spatial: Path, xy: np.ndarray, sf: dict, sf_path, diameter: float):
    """The folder's image to predict from when none is named: ``tissue_hires_image.png``, or, when
    that shows no tissue under the spots (Space Ranger 1.0 sometimes writes a black one), the lowres
    PNG or a full-resolution image beside ``spatial/``. Returns ``(path, image, scale, notice)``."""
    from .image import IMAGE_SUFFIXES
    from .quality import tissue_under_spots

    cands = [spatial / "tissue_hires_image.png", spatial / "tissue_lowres_image.png"]
    cands += sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    cands = [p for p in cands if p.is_file()]
    if not cands:
        raise SlideError(f"{spatial}: no tissue_hires_image.png or tissue_lowres_image.png; name the "
                         "full-resolution image")
    problems = []
    for path in cands:
        try:
            img = read_image(path)
            scale = visium_image_scale(path.name, img.shape, xy, sf, sf_path)
        except SlideError as e:
            problems.append(f"{path.name}: {e}")
            continue
        rep = tissue_under_spots(img, xy * scale, diameter * scale)
        if rep.ok:
            notice = None
            if path != cands[0]:
                notice = (f"{cands[0].name} shows no tissue under the spots ({'; '.join(problems)}); "
                          f"predicting from {path.name} instead")
            return path, img, scale, notice
        problems.append(f"{path.name}: {rep.problem()}")
    # the folder still reads (positions, counts); predicting on it is refused by quality.require_tissue
    first = cands[0]
    img = read_image(first)
    notice = (f"none of this folder's images shows tissue under the spots ({'; '.join(problems)}); give the "
              "slide's full-resolution image (predict IMAGE --visium outs/, or open it in napari with the spots)")
    return first, img, visium_image_scale(first.name, img.shape, xy, sf, sf_path), notice


def visium_spatial_meta(folder: Path, spatial: Path, sf: dict, notice: str | None = None) -> dict:
    """What an AnnData export needs to look like ``sc.read_visium``'s: the library id, the scale
    factors as Space Ranger wrote them and the folder's hires / lowres PNGs (a PNG that the
    fallback found blank, e.g. Space Ranger 1.0's black hires image, is left out)."""
    files = {}
    for kind in ("hires", "lowres"):
        f = spatial / f"tissue_{kind}_image.png"
        blank = notice is not None and (f"{f.name} shows no tissue" in notice or f"{f.name}: " in notice)
        if f.is_file() and float(sf.get(f"tissue_{kind}_scalef", 0) or 0) > 0 and not blank:
            files[kind] = str(f)
    lib = folder.parent.name if folder.name == "outs" else folder.name
    return {"library_id": lib or "slide", "scalefactors": {k: v for k, v in sf.items() if isinstance(v, (int, float))},
            "image_files": files}


def space_ranger_images(folder) -> list[tuple[str, Path]]:
    """The images a Space Ranger folder (Visium ``outs/``, an HD ``outs/`` or one of its bin folders)
    offers to predict on, as ``(kind, path)``: ``hires`` / ``lowres`` for the PNGs in ``spatial/``, then
    ``fullres`` for each image file in the folder or beside ``outs/`` (where the full-resolution
    image usually is: Space Ranger does not copy it in)."""
    from .image import IMAGE_SUFFIXES

    folder = Path(folder)
    spatials = [folder / "spatial", folder / "outs" / "spatial"]
    if folder.parent.name == "binned_outputs":  # a bin folder: its PNGs, then those of the whole HD run
        spatials.append(folder.parent.parent / "spatial")
    out, seen = [], set()
    for kind in ("hires", "lowres"):
        f = next((sp / f"tissue_{kind}_image.png" for sp in spatials if (sp / f"tissue_{kind}_image.png").is_file()),
                 None)
        if f is not None:
            out.append((kind, f))
    outs = folder if folder.name == "outs" or not (folder / "outs").is_dir() else folder / "outs"
    if outs.parent.name == "binned_outputs":
        outs = outs.parent.parent
    for d in (outs, outs.parent if outs.name == "outs" else None):
        if d is None or not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES) and f.resolve() not in seen \
                    and not f.name.lower().startswith(("tissue_hires_image", "tissue_lowres_image")):
                seen.add(f.resolve())
                out.append(("fullres", f))
    return out


def visium_named_image(image, xy_fullres: np.ndarray, sf: dict, sf_path) -> tuple[Path, object, float]:
    """The image a user named for a Space Ranger folder (full-resolution, hires or lowres), read,
    with its scale to full-resolution pixels: ``(path, image, scale)``."""
    image = Path(image)
    if not image.is_file():
        raise SlideError(f"{image} does not exist; name the full-resolution image, tissue_hires_image.png "
                         "or tissue_lowres_image.png")
    img = read_image(image)
    return image, img, visium_image_scale(image.name, img.shape, xy_fullres, sf, sf_path)


def read_visium(folder, image=None, genes: list[str] | None = None, with_counts: bool = True) -> Slide:
    """A Space Ranger ``outs/`` folder. ``image``: the full-resolution image, or
    ``tissue_hires_image.png`` / ``tissue_lowres_image.png`` (recognised by name or size;
    default: the hires PNG); spot positions and um/px follow the image. Pixel size from
    ``spot_diameter_fullres`` (Visium spots are 55 um). ``with_counts=False`` keeps every
    in-tissue spot (prediction needs no counts); with counts, only the matrix's barcodes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SlideError(f"{folder} is not a folder")
    spatial = _visium_spatial(folder)
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

        return read_hd_bins(folder, image=image, with_counts=with_counts, genes=genes)
    for key in ("tissue_hires_scalef", "tissue_lowres_scalef"):
        try:
            v = float(sf.get(key, 0) or 0)
        except (TypeError, ValueError):
            v = -1.0
        if not (np.isfinite(v) and v >= 0):
            raise SlideError(f"{sf_path}: {key} must be a positive number")
    pos = read_visium_positions(spatial)
    pos = pos[pos["in_tissue"] == 1]
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    um_per_px = VISIUM_SPOT_UM / diameter
    notice = None
    if image is None:  # the hires PNG, or another of the folder's images when it shows no tissue
        image, img, scale, notice = visium_image_with_tissue(folder, spatial, xy, sf, sf_path, diameter)
    else:
        image, img, scale = visium_named_image(image, xy, sf, sf_path)
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
        name=folder.name,
        spot_diameter_um=VISIUM_SPOT_UM,
        source=src,
        meta={"image_path": src, "um_per_px_source": "spot_diameter_fullres in scalefactors_json.json",
              "image_scale": float(scale), **visium_spatial_meta(folder, spatial, sf, notice),
              "space_ranger": {"folder": str(folder), "kind": "visium"},  # to predict on another of its images
              **({"notice": notice} if notice else {})},
    )


# ---------------------------------------------------------------- image + CSV / grid
def decode_text(raw: bytes, path) -> str:
    """Text of a table as spreadsheets save it: UTF-8 (with or without BOM), UTF-16 with BOM
    ("Unicode text"), otherwise Windows-1252/Latin-1."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            raise SlideError(f"{path}: broken UTF-16 text; save the table again as CSV (UTF-8)") from None
    if b"\x00" in raw:
        raise SlideError(f"{path}: not a text table (binary data); save it as CSV (UTF-8)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def parse_table(text: str, path, what: str, sep: str | None = None, header: int | None = 0) -> pd.DataFrame:
    """Every cell as the string it is (ids keep leading zeros, "NA" stays "NA"); the delimiter is
    the commonest of , ; tab in the header line unless ``sep`` is given."""
    import io

    if not text.strip():
        raise SlideError(f"{path}: the {what} is empty")
    if sep is None:
        first_line = text.lstrip().splitlines()[0]
        sep = max([",", ";", "\t"], key=first_line.count)
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False, header=header)
        df.attrs["sep"] = sep
        return df
    except Exception as e:  # ParserError, csv.Error, ...: all mean the same to a user
        raise SlideError(f"{path}: not a readable {what} ({type(e).__name__}: {str(e).strip()[:200]})") from None


def _parse_floats(cells: np.ndarray) -> np.ndarray:
    """Correctly rounded (pandas' fast parser is not: "180.1932653" came back 1 ulp off); NaN where a
    cell is not a number."""
    try:
        return cells.astype(float)
    except (ValueError, OverflowError):
        out = np.empty(len(cells))
        for i, c in enumerate(cells):
            try:
                out[i] = float(c)
            except (ValueError, OverflowError):
                out[i] = np.nan
        return out


def numeric_column(values, path, column: str, whole: bool = False, decimal_comma: bool = False) -> np.ndarray:
    """A column of numbers, or a SlideError that names the first bad row (spreadsheet numbering)."""
    dtype = getattr(values, "dtype", None)
    if dtype is not None and (pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_float_dtype(dtype)) \
            and not pd.api.types.is_extension_array_dtype(dtype):
        # already numbers (a parquet table, Visium HD's 600,000 bins): checked without text parsing
        num = np.asarray(values, dtype=np.float64)
        bad = ~np.isfinite(num)
        if whole:
            bad |= np.isfinite(num) & (np.round(num) != num)
        if not bad.any():
            return num
    raw = pd.Series(values, dtype=object).astype(str).str.strip()
    if decimal_comma:
        raw = raw.str.replace(",", ".", regex=False)
    num = _parse_floats(raw.to_numpy(dtype=str))
    bad = ~np.isfinite(num)
    if whole:
        bad |= np.isfinite(num) & (np.round(num) != num)
    if bad.any():
        i = int(np.argmax(bad))
        kind = "a whole number" if whole else "a finite number"
        raise SlideError(f"{path}: {column} must be {kind} on every row; row {i + 2} has {str(raw.iloc[i])[:40]!r}")
    return num


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
        name=Path(image_path).stem,
        source=str(image_path),
    )


def read_image_with_grid(image_path, um_per_px: float | None = None, pitch_um: float = DEFAULT_PITCH_UM) -> Slide:
    """A plain H&E slide: spots on a hexagonal grid over the detected tissue."""
    image = read_image(image_path)
    upp = _resolve_um_per_px(image_path, um_per_px)
    return grid_slide(image, upp, pitch_um, name=Path(image_path).stem, source=str(image_path))


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
        slide.meta["notice"] = (f"predicting on the full-resolution image {image} ({slide.um_per_px:.3g} µm/px) found "
                                f"{'in' if image.parent == Path(folder) else 'beside'} the folder; give the image "
                                "to predict on another")
        return slide
    return read(None)


def open_slide(path, spots=None, visium=None, grid: bool = False, um_per_px=None, pitch_um=DEFAULT_PITCH_UM,
               bin_um=None) -> Slide:
    """One entry point: a HER2+ folder, a Visium or Visium HD folder (``bin_um``: 8 or 16, default
    16), or an image with spots / a grid."""
    from .visium_hd import is_visium_hd_folder, read_visium_hd

    path = Path(path)
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
        from .spatialdata_export import is_spatialdata_store, read_spatialdata

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
