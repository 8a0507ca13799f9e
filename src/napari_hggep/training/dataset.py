"""Training sections prepared once: patches, spot coordinates (um), targets and raw counts."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.patches import extract_patches
from ..data.readers import is_visium_folder, read_her2st, read_visium
from ..data.slide import SlideError
from .targets import normalise_counts


@dataclass
class SectionData:
    name: str
    patches: np.ndarray  # N x P x P x 3 uint8
    coords_um: np.ndarray  # N x 2
    target: np.ndarray  # N x G, log-normalised expression
    counts: np.ndarray  # N x G raw counts
    spot_ids: np.ndarray

    @property
    def n_spots(self) -> int:
        return len(self.patches)


def read_genes(path) -> list[str]:
    genes = [g.strip() for g in Path(path).read_text().splitlines() if g.strip()]
    if not genes:
        raise SlideError(f"{path}: no gene names in it")
    return genes


def load_section(folder, genes: list[str], patch_um: float, patch_px: int, cache_dir=None) -> SectionData:
    """A HER2+ ST or Visium training section; patches are cached in ``cache_dir`` when given."""
    folder = Path(folder)
    key = hashlib.sha1(f"{folder.resolve()}|{patch_um}|{patch_px}|{len(genes)}|{genes[:5]}".encode()).hexdigest()[:12]
    cache = Path(cache_dir) / f"{folder.name}-{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        return SectionData(folder.name, z["patches"], z["coords_um"], z["target"], z["counts"], z["spot_ids"])
    slide = read_visium(folder, genes=genes) if is_visium_folder(folder) else read_her2st(folder, genes=genes)
    if slide.counts is None:
        raise SlideError(f"{folder}: training needs counts (counts.tsv.gz or filtered_feature_bc_matrix.h5)")
    slide.validate()
    sec = SectionData(
        name=folder.name,
        patches=extract_patches(slide, patch_um, patch_px),
        coords_um=slide.coords_um.astype(np.float32),
        target=normalise_counts(slide.counts),
        counts=slide.counts.astype(np.float32),
        spot_ids=slide.spot_ids,
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, patches=sec.patches, coords_um=sec.coords_um, target=sec.target, counts=sec.counts,
                 spot_ids=sec.spot_ids)
        tmp.replace(cache)
    return sec


def load_sections(data_dir, sections: list[str], genes: list[str], patch_um: float, patch_px: int,
                  cache_dir=None) -> list[SectionData]:
    data_dir = Path(data_dir)
    missing = [s for s in sections if not (data_dir / s).is_dir()]
    if missing:
        raise SlideError(f"{data_dir}: no section folder(s) {missing}")
    return [load_section(data_dir / s, genes, patch_um, patch_px, cache_dir) for s in sections]
