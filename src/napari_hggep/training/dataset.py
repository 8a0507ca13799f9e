"""Training sections prepared once: patches, spot coordinates (um), targets and raw counts."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from ..data.features import FEATURES_VERSION, standardise_features, tissue_features
from ..data.patches import extract_patches
from ..io.readers.her2st import read_her2st
from ..io.readers.visium import is_visium_folder, read_visium
from ..data.slide import SlideError
from ..model.pooled import pooled_encoder, pooled_key
from .targets import normalise_counts


@dataclass
class SectionData:
    name: str
    patches: np.ndarray  # N x P x P x 3 uint8
    coords_um: np.ndarray  # N x 2
    target: np.ndarray  # N x G, log-normalised expression
    counts: np.ndarray  # N x G raw counts
    spot_ids: np.ndarray
    stats: np.ndarray | None = None  # N x F tissue statistics (raw; z-score within the slide to use)
    # the same statistics with the slide resampled to other scan resolutions (training augmentation)
    stats_aug: tuple[np.ndarray, ...] = ()
    # N x P pooled features of a pretrained encoder (config.pooled_um; raw, z-scored within the slide to use)
    pooled: np.ndarray | None = None
    patient: str | None = None  # the section's patient, when a samples table names it

    @property
    def n_spots(self) -> int:
        return len(self.patches)

    def stats_input(self, n_features: int, aug: int | None = None) -> np.ndarray | None:
        """What the statistics branch of a model with ``n_features`` columns reads: the tissue
        statistics (``aug``: the resampled copy ``aug`` instead), z-scored within the slide, then the
        encoder's pooled features z-scored too when the model has more columns than tissue statistics."""
        if not n_features:
            return None
        tissue = 0 if self.stats is None else self.stats.shape[1]
        pooled = 0 if self.pooled is None else self.pooled.shape[1]
        parts = []
        if tissue and n_features in (tissue, tissue + pooled):
            parts.append(standardise_features(self.stats if aug is None else self.stats_aug[aug]))
        if pooled and n_features in (pooled, tissue + pooled):
            parts.append(standardise_features(self.pooled))
        if sum(p.shape[1] for p in parts) != n_features:
            raise ValueError(f"section {self.name}: the model reads {n_features} statistics, the section has "
                             f"{tissue} tissue statistics and {pooled} pooled encoder features")
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def read_genes(path) -> list[str]:
    genes = [g.strip() for g in Path(path).read_text().splitlines() if g.strip()]
    if not genes:
        raise SlideError(f"{path}: no gene names in it")
    return genes


def load_section(folder, genes: list[str], config, cache_dir=None, resample_um: float | None = None,
                 stats_res_copies: int = 0) -> SectionData:
    """A HER2+ ST or Visium training section: patches at ``config.patch_um``, tissue statistics
    when the config has a statistics branch (plus ``stats_res_copies`` copies computed on the
    slide resampled to random resolutions between 1 and 4 um/px), targets and counts.
    ``resample_um``: the whole section as if scanned at that resolution (for evaluation).
    Cached in ``cache_dir`` when given."""
    folder = Path(folder)
    with_stats = bool(config.tissue_features)
    ctx = tuple(config.context_um)
    spec = (f"{folder.resolve()}|{config.patch_um}|{config.patch_px}|{len(genes)}|{genes[:5]}|{resample_um}|"
            + (f"size{size_genes(config)}|" if size_genes(config) else "") +
            f"{with_stats and (ctx, config.stats_um_per_px, stats_res_copies, FEATURES_VERSION)}"
            + (f"|pooled{pooled_key(config)}" if config.pooled_um else ""))
    key = hashlib.sha1(spec.encode()).hexdigest()[:12]
    cache = Path(cache_dir) / f"{folder.name}-{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        return read_section_file(cache, stats_res_copies)
    slide = read_visium(folder, genes=genes) if is_visium_folder(folder) else read_her2st(folder, genes=genes)
    if slide.counts is None:
        raise SlideError(f"{folder}: training needs counts (counts.tsv.gz or filtered_feature_bc_matrix.h5)")
    slide.validate()
    name = folder.name
    if resample_um:
        slide = slide.resampled(resample_um)
        name = slide.name
    sec = build_section(slide, slide.counts, name, config, stats_res_copies)
    if cache is not None:
        write_section_file(cache, sec)
    return sec


def write_section_file(path: Path, sec: SectionData) -> None:
    """A section's arrays in one ``.npz`` (atomically): what :func:`read_section_file` reads back."""
    arrays = {f"stats_aug{i}": a for i, a in enumerate(sec.stats_aug)}
    arrays.update({k: v for k, v in (("stats", sec.stats), ("pooled", sec.pooled)) if v is not None})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, name=np.array(sec.name), patches=sec.patches, coords_um=sec.coords_um, target=sec.target,
                 counts=sec.counts, spot_ids=sec.spot_ids, **arrays)


def read_section_file(path: Path, stats_res_copies: int = 0) -> SectionData:
    with np.load(path, allow_pickle=False) as z:
        have = set(z.files)
        name = z["name"].item() if "name" in have else path.stem  # a study's files name it by its table
        return SectionData(name, z["patches"], z["coords_um"], z["target"], z["counts"], z["spot_ids"],
                           z["stats"] if "stats" in have else None,
                           tuple(z[f"stats_aug{i}"] for i in range(stats_res_copies) if f"stats_aug{i}" in have),
                           z["pooled"] if "pooled" in have else None)


def build_section(slide, counts: np.ndarray, name: str, config, stats_res_copies: int = 0,
                  progress=None, encoder_weights=None, feature_cache=None) -> SectionData:
    """A training section from a slide (image + spots) and its counts (``spots x genes``):
    patches, tissue statistics (and ``stats_res_copies`` copies on the slide resampled to random
    resolutions between 1 and 4 um/px), then the encoder's pooled features when the config has
    them (``encoder_weights``: a timm encoder's file; ``feature_cache``: where its maps are kept),
    targets. A section whose image shows no tissue under its spots is refused."""
    check_tissue(slide, name)
    patches = extract_patches(slide, config.patch_um, config.patch_px)
    stats, aug = None, ()
    if config.tissue_features:
        ctx = tuple(config.context_um)
        stats = tissue_features(slide, ctx, config.stats_um_per_px, progress=progress)
        rng = np.random.default_rng(int(hashlib.sha1(name.encode()).hexdigest()[:8], 16))
        aug = tuple(tissue_features(slide.resampled(float(np.exp(rng.uniform(0, np.log(4))))), ctx,
                                    config.stats_um_per_px) for _ in range(stats_res_copies))
    pooled = None
    if config.pooled_um:  # the encoder's pooled features (the same for every resampled copy)
        from .feature_cache import pooled_statistics

        pooled = pooled_statistics(pooled_encoder(config, encoder_weights), slide, cache=feature_cache)
    return SectionData(
        name=name,
        patches=patches,
        coords_um=slide.coords_um.astype(np.float32),
        target=normalise_counts(counts, size_genes(config)),
        counts=np.asarray(counts, np.float32),
        spot_ids=slide.spot_ids,
        stats=stats,
        stats_aug=aug,
        pooled=pooled,
    )


def size_genes(config) -> int | None:
    """With gene blocks, spot totals (size factors) come from the first block alone: widening a
    panel leaves its original genes' targets as they were (a total dominated by the added,
    most variable genes measurably lowered the original genes' held-out PCC: 0.183 -> 0.149 on C2)."""
    blocks = getattr(config, "pca_blocks", None)
    return int(blocks[0]) if blocks else None


def check_tissue(slide, name: str) -> None:
    """Refuse a section whose image shows no tissue under its spots (black, white or one flat
    colour: a placeholder, or the wrong file teaches the model nothing); see
    :func:`napari_hggep.data.quality.slide_tissue`."""
    from ..data.quality import slide_tissue

    rep = slide_tissue(slide)
    if not rep.ok:
        where = f" ({slide.source})" if slide.source else ""
        raise SlideError(f"section {name}: its image{where} shows no tissue under the spots: {rep.problem()}. Give "
                         "the section's H&E image (the samples table's image column)")


def load_sections(data_dir, sections: list[str], genes: list[str], config, cache_dir=None,
                  resample_um: float | None = None, stats_res_copies: int = 0) -> list[SectionData]:
    data_dir = Path(data_dir)
    missing = [s for s in sections if not (data_dir / s).is_dir()]
    if missing:
        raise SlideError(f"{data_dir}: no section folder(s) {missing}")
    return [load_section(data_dir / s, genes, config, cache_dir, resample_um, stats_res_copies) for s in sections]

