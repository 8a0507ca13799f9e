"""Visium HD (Space Ranger 3+): ``outs/binned_outputs/square_002um|008um|016um/``, each with
``spatial/tissue_positions.parquet`` and ``spatial/scalefactors_json.json`` (``bin_size_um``,
``microns_per_pixel``, ``spot_diameter_fullres`` = the bin side in full-resolution pixels, hires /
lowres scale factors). The pixel size comes from ``microns_per_pixel``, never from the 55 µm spot
rule of standard Visium; bins are squares of their size."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ...records import SlideInfo, SpaceRangerRef
from ...data.slide import Slide, SlideError
from .space_ranger import read_visium_positions, visium_image_with_tissue, visium_named_image, visium_spatial_meta

HD_BINS_UM = (2, 8, 16)
DEFAULT_BIN_UM = 16
SMALLEST_BIN_UM = 8
_BIN_DIR = re.compile(r"^square_(\d{3})um$")


def bins_root(path) -> Path | None:
    """The ``binned_outputs`` folder of an HD ``outs/`` (or of the folder above it), or None."""
    p = Path(path)
    for cand in (p / "binned_outputs", p / "outs" / "binned_outputs", p):
        if cand.is_dir() and cand.name == "binned_outputs":
            return cand
    return None


def available_bins(root: Path) -> dict[int, Path]:
    out = {}
    for c in sorted(root.iterdir()):
        m = _BIN_DIR.match(c.name)
        if m and c.is_dir():
            out[int(m.group(1))] = c
    return out


def is_bin_folder(path) -> bool:
    """``binned_outputs/square_XXXum`` itself (or any folder whose scale factors give a bin size)."""
    p = Path(path)
    sf = p / "spatial" / "scalefactors_json.json"
    if _BIN_DIR.match(p.name) and (p / "spatial").is_dir():
        return True
    if sf.is_file():
        try:
            d = json.loads(sf.read_bytes().decode("utf-8-sig"))
        except (ValueError, UnicodeError):
            return False
        return isinstance(d, dict) and "bin_size_um" in d
    return False


def is_visium_hd_folder(path) -> bool:
    p = Path(path)
    if not p.is_dir():
        return False
    root = bins_root(p)
    if root is not None:
        return bool(available_bins(root))
    return is_bin_folder(p)


def check_bin_um(bin_um) -> int:
    try:
        b = float(bin_um)
    except (TypeError, ValueError):
        raise SlideError(f"--bin-um must be 8 or 16, not {bin_um!r}") from None
    if b < SMALLEST_BIN_UM:
        raise SlideError(
            f"{b:g} µm bins are refused: a 2 µm bin is smaller than a cell and about 35 times narrower than "
            "the model's 70 µm patch, so neighbouring bins would be predicted from nearly the same pixels "
            "(the model was trained on 100 µm spots and cannot resolve 2 µm), and a section has millions of "
            "them (hours of computing, outputs of many GB). Use --bin-um 8 or 16.")
    if int(b) != b or int(b) not in HD_BINS_UM:
        raise SlideError(f"--bin-um must be 8 or 16 (Space Ranger bins are {', '.join(map(str, HD_BINS_UM))} µm), "
                         f"not {b:g}")
    return int(b)


def hd_bin_folder(path, bin_um=None) -> Path:
    """The ``square_XXXum`` folder to read for ``path`` (an HD ``outs/``, its parent,
    ``binned_outputs/`` or a bin folder) and ``bin_um`` (default 16)."""
    p = Path(path)
    if is_bin_folder(p) and bins_root(p) is None:
        if bin_um is not None:
            m = _BIN_DIR.match(p.name)
            if m and int(m.group(1)) != check_bin_um(bin_um):
                raise SlideError(f"{p} holds {int(m.group(1))} µm bins, not the {bin_um:g} µm asked for; "
                                 f"name the HD outs/ folder to choose the bins")
        return p
    root = bins_root(p)
    if root is None:
        raise SlideError(f"{p} is not a Visium HD outs/ folder: no binned_outputs/ in it")
    bins = available_bins(root)
    if not bins:
        raise SlideError(f"{root}: no square_002um, square_008um or square_016um folder, so the bin size is "
                         "unknown; Space Ranger 3+ writes them under binned_outputs/")
    b = check_bin_um(DEFAULT_BIN_UM if bin_um is None else bin_um)
    if b not in bins:
        have = ", ".join(f"{k} µm" for k in bins if k >= SMALLEST_BIN_UM) or "none usable"
        raise SlideError(f"{root}: no {b} µm bins (square_{b:03d}um); this folder has {have}")
    return bins[b]


def read_hd_scalefactors(spatial: Path) -> tuple[dict, Path]:
    sf_path = spatial / "scalefactors_json.json"
    if not sf_path.is_file():
        raise SlideError(f"{spatial}: scalefactors_json.json is missing; it gives the bin size and microns_per_pixel")
    try:
        sf = json.loads(sf_path.read_bytes().decode("utf-8-sig"))
    except (ValueError, UnicodeError) as e:
        raise SlideError(f"{sf_path}: not readable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(sf, dict):
        raise SlideError(f"{sf_path}: not a JSON object of scale factors")
    for key in ("bin_size_um", "microns_per_pixel"):
        try:
            v = float(sf[key])
        except KeyError:
            raise SlideError(f"{sf_path}: {key} is missing. A Visium HD bin folder's scale factors say the bin size "
                             "and microns_per_pixel (Space Ranger 3+); without them the pixel size is unknown, and it "
                             "is never guessed") from None
        except (TypeError, ValueError):
            v = float("nan")
        if not (np.isfinite(v) and v > 0):
            raise SlideError(f"{sf_path}: {key} must be a positive number, not {sf.get(key)!r}")
    return sf, sf_path


def read_hd_bins(folder, image=None, with_counts: bool = False, genes=None, lazy: bool | None = None) -> Slide:
    """One bin folder (``binned_outputs/square_016um``): every in-tissue bin as a square spot.
    ``lazy=True``: a TIFF image stays on disk, only its metadata read (:func:`~napari_hggep.data.image.read_image`)."""
    folder = Path(folder)
    spatial = folder / "spatial"
    if not spatial.is_dir():
        raise SlideError(f"{folder} is not a Visium HD bin folder: no spatial/ subfolder")
    sf, sf_path = read_hd_scalefactors(spatial)
    bin_um, mpp = float(sf["bin_size_um"]), float(sf["microns_per_pixel"])
    m = _BIN_DIR.match(folder.name)
    if m and abs(int(m.group(1)) - bin_um) > 1e-6:
        raise SlideError(f"{sf_path}: bin_size_um is {bin_um:g} but the folder is {folder.name}")
    check_bin_um(bin_um)
    pos = read_visium_positions(spatial)
    pos = pos[pos["in_tissue"] == 1]
    if len(pos) == 0:
        raise SlideError(f"{spatial}: no bin is marked in_tissue")
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    side_px = bin_um / mpp
    notice = None
    outs = folder.parent.parent if folder.parent.name == "binned_outputs" else folder
    if image is None:
        img_spatial = spatial
        if not any((spatial / f"tissue_{k}_image.png").is_file() for k in ("hires", "lowres")) \
                and (outs / "spatial").is_dir():
            img_spatial = outs / "spatial"  # the PNGs of the whole HD run
        image, img, scale, notice = visium_image_with_tissue(outs if img_spatial != spatial else folder, img_spatial,
                                                             xy, sf, sf_path, side_px, lazy=lazy)
    else:
        image, img, scale = visium_named_image(image, xy, sf, sf_path, lazy=lazy)
        img_spatial = spatial
    lib = outs.parent.name if outs.name == "outs" else outs.name
    meta_sp = visium_spatial_meta(outs, img_spatial, sf, notice)
    meta_sp["library_id"] = f"{lib or 'visium_hd'}_{int(bin_um):03d}um"
    return Slide(
        image=img,
        um_per_px=mpp / scale,
        spot_ids=pos["barcode"].astype(str).to_numpy(),
        xy=xy * scale,
        array_rc=pos[["array_row", "array_col"]].to_numpy(int),
        name=meta_sp["library_id"],
        spot_diameter_um=bin_um,
        source=str(image),
        info=SlideInfo(image_path=str(image), um_per_px_source=f"microns_per_pixel in {sf_path.name} (Visium HD)",
                       image_scale=float(scale), spot_shape="square", bin_size_um=bin_um, **meta_sp,
                       space_ranger=SpaceRangerRef(str(outs), "hd", int(bin_um)),  # other bins / images
                       notice=notice or None),
    )


def read_visium_hd(path, bin_um=None, image=None, lazy: bool | None = None) -> Slide:
    """A Visium HD ``outs/`` folder (or its parent, ``binned_outputs/`` or one bin folder) at
    ``bin_um`` µm bins (8 or 16; default 16). ``lazy``: as :func:`read_hd_bins`."""
    return read_hd_bins(hd_bin_folder(path, bin_um), image=image, lazy=lazy)
