"""What 10x Space Ranger folders share, for Visium (:mod:`.visium`) and Visium HD (:mod:`.visium_hd`):
``spatial/`` and its tissue positions, the feature-barcode matrix, and the images (hires / lowres
PNGs, a full-resolution image) with their scale to full-resolution pixels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...data.image import read_image
from ...data.slide import SlideError
from .tables import decode_text, numeric_column, parse_table

POSITION_FILES = ("tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet")


def visium_spatial(folder: Path) -> Path:
    for cand in (folder / "spatial", folder / "outs" / "spatial"):
        if cand.is_dir():
            return cand
    raise SlideError(f"{folder} is not a Space Ranger output folder: no spatial/ subfolder")


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
        df, first_row = df[cols], 1
    else:
        df = parse_table(decode_text(src.read_bytes(), src), src, "tissue positions table", sep=",", header=None)
        first_row = 1  # the file's line of the first spot (1.x files have no header)
        if [str(c).strip() for c in df.iloc[0, :6]] == cols:  # Space Ranger 2+ writes a header; 1.x does not
            df, first_row = df.iloc[1:], 2
        if df.shape[1] < 6:
            raise SlideError(f"{src}: expected 6 columns ({', '.join(cols)}), found {df.shape[1]}")
        df = df.iloc[:, :6].set_axis(cols, axis=1)
    out = pd.DataFrame({"barcode": df["barcode"].astype(str).to_numpy()})
    for c in cols[1:]:
        out[c] = numeric_column(df[c], src, c, whole=c in ("in_tissue", "array_row", "array_col"), first_row=first_row)
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


def visium_image_with_tissue(folder: Path, spatial: Path, xy: np.ndarray, sf: dict, sf_path, diameter: float,
                             lazy: bool | None = None):
    """The folder's image to predict from when none is named: ``tissue_hires_image.png``, or, when
    that shows no tissue under the spots (Space Ranger 1.0 sometimes writes a black one), the lowres
    PNG or a full-resolution image beside ``spatial/``. Returns ``(path, image, scale, notice)``.
    ``lazy``: as :func:`~napari_hggep.data.image.read_image` for a TIFF among them (the PNGs are read whole: they are small)."""
    from ...data.image import IMAGE_SUFFIXES
    from ...data.quality import NO_TISSUE_IMAGE, tissue_under_spots

    cands = [spatial / "tissue_hires_image.png", spatial / "tissue_lowres_image.png"]
    cands += sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    cands = [p for p in cands if p.is_file()]
    if not cands:
        raise SlideError(f"{spatial}: no tissue_hires_image.png or tissue_lowres_image.png; name the "
                         "full-resolution image")
    problems: list[tuple[str, str]] = []  # (file name, what is wrong with it), said once each

    def listed() -> str:
        if len(problems) == 1:
            return problems[0][1]
        return "; ".join(f"{n}: {why}" for n, why in problems)

    for path in cands:
        try:
            img = read_image(path, lazy=lazy)
            scale = visium_image_scale(path.name, img.shape, xy, sf, sf_path)
        except SlideError as e:
            problems.append((path.name, str(e)))
            continue
        rep = tissue_under_spots(img, xy * scale, diameter * scale)
        if rep.ok:
            notice = None
            if path != cands[0]:
                notice = f"{cands[0].name} shows no tissue under the spots ({listed()}); predicting from {path.name} instead"
            return path, img, scale, notice
        problems.append((path.name, rep.reason()))
    # the folder still reads (positions, counts); predicting on it is refused by quality.require_tissue
    first = cands[0]
    img = read_image(first, lazy=lazy)
    problems_said = "; ".join(f"{n}: {why}" for n, why in problems)
    notice = (f"{NO_TISSUE_IMAGE} ({problems_said}); give the slide's full-resolution image (predict IMAGE "
              "--visium outs/, or open it in napari with the spots)")
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
    from ...data.image import IMAGE_SUFFIXES

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


def visium_named_image(image, xy_fullres: np.ndarray, sf: dict, sf_path,
                       lazy: bool | None = None) -> tuple[Path, object, float]:
    """The image a user named for a Space Ranger folder (full-resolution, hires or lowres), read,
    with its scale to full-resolution pixels: ``(path, image, scale)``. Which image it is follows
    from its name and shape (metadata): no pixel is looked at here. ``lazy=True``: a TIFF stays on
    disk (:func:`~napari_hggep.data.image.read_image`), only its metadata read."""
    image = Path(image)
    if not image.is_file():
        raise SlideError(f"{image} does not exist; name the full-resolution image, tissue_hires_image.png "
                         "or tissue_lowres_image.png")
    img = read_image(image, lazy=lazy)
    return image, img, visium_image_scale(image.name, img.shape, xy_fullres, sf, sf_path)


def png_levels(slide) -> list[np.ndarray]:
    """The folder's hires / lowres PNGs as coarser levels of a slide read on its full-resolution
    image (largest first), for napari to show the whole slide from them without decoding the
    full-resolution image: Space Ranger made them from that image at ``tissue_*_scalef``. A PNG is
    kept only when its size is the full-resolution size times its scale factor (within 2 px) and it
    shows tissue under the spots (Space Ranger 1.0 sometimes writes a black hires PNG); reading and
    checking them costs what two small PNGs cost."""
    from ...data.quality import tissue_under_spots

    info = slide.info
    if abs(float(info.image_scale) - 1.0) > 1e-6 or not info.image_files:
        return []
    h, w = slide.shape
    sf = info.scalefactors or {}
    out = []
    for kind in ("hires", "lowres"):
        f, s = (info.image_files or {}).get(kind), float(sf.get(f"tissue_{kind}_scalef", 0) or 0)
        if not f or s <= 0:
            continue
        try:
            png = read_image(f)
        except SlideError:
            continue
        ph, pw = png.shape[:2]
        if abs(ph - h * s) > 2 or abs(pw - w * s) > 2 or max(ph, pw) >= max(h, w):
            continue
        if not tissue_under_spots(png, slide.xy * s, slide.spot_diameter_um / slide.um_per_px * s).ok:
            continue
        out.append(png)
    return sorted(out, key=lambda a: -a.shape[1])
