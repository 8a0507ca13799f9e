"""A study's labelled sections, as users have them: a samples table (``section,folder,image,
patient``) over Space Ranger ``outs/`` folders, HER2+ ST folders, or an image with a spot CSV
and a counts table (CSV/TSV or ``.h5ad``). Counts stay sparse: every gene of a section is read,
but never as a dense spots x genes matrix."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from ...data.counts import COUNT_TABLES, read_10x_h5_sparse, read_counts_table
from ...data.image import is_image_path
from .her2st import is_her2st_folder, read_her2st
from .open import read_image_with_spots
from ...data.slide import Slide, SlideError
from .tables import decode_text, numeric_column, parse_table
from .visium import is_visium_folder, read_visium

SAMPLE_COLUMNS = ("section", "folder", "image", "patient", "um_per_px")


@dataclass
class SampleRow:
    """One labelled section of a study."""

    section: str
    folder: Path
    image: Path | None = None  # the section's full-resolution image (default: the folder's own)
    patient: str | None = None
    um_per_px: float | None = None  # for an image whose file does not record its pixel size

    def describe(self) -> str:
        return f"{self.section} ({self.folder}" + (f", image {self.image.name}" if self.image else "") + ")"


@dataclass
class LabelledSection:
    """A section with every gene's counts: ``counts`` is a sparse CSR matrix ``spots x genes``;
    ``symbols`` the gene names, ``ids`` the gene ids (Ensembl) when the file has them."""

    row: SampleRow
    slide: Slide  # image and spots; no counts (they are in ``counts``)
    counts: sparse.csr_matrix
    symbols: np.ndarray
    ids: np.ndarray | None

    @property
    def name(self) -> str:
        return self.row.section


def read_samples_table(path) -> list[SampleRow]:
    """The samples table: CSV/TSV with ``section`` and ``folder`` columns, optional ``image``,
    ``patient`` and ``um_per_px``. Relative paths are relative to the table's folder."""
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"samples table {path} does not exist")
    df = parse_table(decode_text(path.read_bytes(), path), path, "samples table")
    cols = {str(c).strip().lower(): c for c in df.columns}
    if not {"section", "folder"} <= set(cols):
        raise SlideError(f"{path}: a samples table needs columns section,folder (optional image,patient,"
                         f"um_per_px); found {list(df.columns)[:8]}")
    unknown = [c for c in cols if c not in SAMPLE_COLUMNS]
    if unknown:
        raise SlideError(f"{path}: unknown column(s) {unknown}; the columns are {', '.join(SAMPLE_COLUMNS)}")
    if len(df) == 0:
        raise SlideError(f"{path}: the samples table has a header but no sections")
    base = path.parent

    def cell(i, name):
        v = str(df.iloc[i][cols[name]]).strip() if name in cols else ""
        return v or None

    rows = []
    for i in range(len(df)):
        section, folder = cell(i, "section"), cell(i, "folder")
        if not section or not folder:
            raise SlideError(f"{path}: row {i + 2} needs a section name and a folder")
        image = cell(i, "image")
        upp = cell(i, "um_per_px")
        if upp is not None:
            upp = float(numeric_column([upp], path, f"um_per_px (row {i + 2})")[0])
            if upp <= 0:
                raise SlideError(f"{path}: row {i + 2}: um_per_px must be positive, not {upp:g}")
        rows.append(SampleRow(section, _resolve(base, folder), _resolve(base, image) if image else None,
                              cell(i, "patient"), upp))
    check_rows(rows, str(path))
    return rows


def _resolve(base: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else base / q


def rows_from_data_dir(data_dir, sections: list[str] | None = None) -> list[SampleRow]:
    """``--data DIR``: every section folder in it (or the named ones)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise SlideError(f"{data_dir} is not a folder of section folders")
    names = sections or sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise SlideError(f"{data_dir}: no section folders in it")
    rows = [SampleRow(n, data_dir / n) for n in names]
    check_rows(rows, str(data_dir))
    return rows


def check_rows(rows: list[SampleRow], where: str) -> None:
    names = [r.section for r in rows]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SlideError(f"{where}: section name(s) {dup} appear more than once; each section needs its own name")
    for r in rows:
        if not r.folder.exists():
            raise SlideError(f"{where}: section {r.section}: {r.folder} does not exist")
        if r.image is not None and not r.image.is_file():
            raise SlideError(f"{where}: section {r.section}: image {r.image} does not exist")


def section_kind(folder: Path) -> str:
    if is_visium_folder(folder):
        return "visium"
    if is_her2st_folder(folder):
        return "her2st"
    if folder.is_dir() and (folder / "spots.csv").is_file():
        return "table"
    return "unknown"


def read_labelled_section(row: SampleRow) -> LabelledSection:
    """Image, spots and every gene's counts (sparse) of one section."""
    folder = row.folder
    kind = section_kind(folder)
    if kind == "visium":
        slide = read_visium(folder, image=row.image, with_counts=False)
        if row.um_per_px:
            slide.um_per_px = float(row.um_per_px)
        h5 = next((p for p in (folder / "filtered_feature_bc_matrix.h5", folder / "outs" / "filtered_feature_bc_matrix.h5")
                   if p.is_file()), None)
        if h5 is None:
            raise SlideError(f"section {row.section}: {folder} has no filtered_feature_bc_matrix.h5; training "
                             "needs the section's counts")
        counts, symbols, ids, barcodes = read_10x_h5_sparse(h5)
        return _join(row, slide, counts, symbols, ids, barcodes, str(h5))
    if kind == "her2st":
        if not (folder / "counts.tsv.gz").is_file():
            raise SlideError(f"section {row.section}: {folder} has no counts.tsv.gz; training needs the counts")
        slide = read_her2st(folder, with_counts=True)
        if row.image is not None:  # the same spots on another copy of the image (same pixel grid)
            from ...data.image import read_image

            slide.image, slide.source = read_image(row.image), str(row.image)
        if row.um_per_px:
            slide.um_per_px = float(row.um_per_px)
        counts = sparse.csr_matrix(slide.counts)
        symbols = np.asarray(slide.genes, dtype=str)
        slide.counts, slide.genes = None, None
        return LabelledSection(row, slide, counts, symbols, None)
    if kind == "table":
        image = row.image or _single_image(folder, row.section)
        slide = read_image_with_spots(image, folder / "spots.csv", row.um_per_px)
        table = next((folder / n for n in COUNT_TABLES if (folder / n).is_file()), None)
        if table is None:
            h5ads = sorted(folder.glob("*.h5ad"))
            table = h5ads[0] if len(h5ads) == 1 else None
        if table is None:
            raise SlideError(f"section {row.section}: {folder} has spots.csv but no counts table ("
                             f"{', '.join(COUNT_TABLES)})")
        counts, symbols, ids, spot_ids = read_counts_table(table)
        return _join(row, slide, counts, symbols, ids, spot_ids, str(table))
    raise SlideError(f"section {row.section}: {folder} is not a Space Ranger outs/ folder, a HER2+ ST folder "
                     "(spots.tsv, counts.tsv.gz, he.jpg) or a folder with an image, spots.csv and a counts table")


def _single_image(folder: Path, section: str) -> Path:
    imgs = sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p))
    if len(imgs) != 1:
        raise SlideError(f"section {section}: {folder} holds {len(imgs)} images; name the H&E image in the "
                         "samples table's image column")
    return imgs[0]


def _join(row, slide: Slide, counts, symbols, ids, spot_ids, src: str) -> LabelledSection:
    """Keep the spots that have counts, in the slide's order."""
    spot_ids = np.asarray(spot_ids).astype(str)
    index = pd.Index(spot_ids)
    if index.has_duplicates:
        raise SlideError(f"section {row.section}: {src} lists spot/barcode {index[index.duplicated()][0]} more than once")
    pos = index.get_indexer(slide.spot_ids)
    keep = pos >= 0
    if not keep.any():
        raise SlideError(f"section {row.section}: none of the {slide.n_spots} spots of the image have counts in "
                         f"{src} (e.g. spot {slide.spot_ids[0]} vs {spot_ids[0] if len(spot_ids) else 'nothing'}); "
                         "the spot ids or barcodes must match")
    slide = slide.subset(keep)
    return LabelledSection(row, slide, counts[pos[keep]].tocsr(), np.asarray(symbols, dtype=str),
                           None if ids is None else np.asarray(ids, dtype=str))
