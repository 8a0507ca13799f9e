"""Reading back an ``.h5ad`` napari-hggep wrote (:mod:`napari_hggep.io.writers.anndata_export`) as the
:class:`~napari_hggep.records.Prediction` it was written from: the values, spots, genes, the
per-gene figures in ``var``, what ``uns["napari_hggep"]`` says of the slide, the model and the
reliability, the measured counts, and the thumbnails of ``uns["spatial"]``.

:func:`is_prediction_h5ad` tells such a file from any other ``.h5ad`` by its header (the HDF5
signature, then the group ``uns/napari_hggep``), without reading its arrays."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...records import Measured, Prediction, Provenance, Reliability, SlideInfo

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
INFO_KEY = "napari_hggep"  # the uns entry every napari-hggep export writes


def is_hdf5(path) -> bool:
    """The file starts with the HDF5 signature (anndata writes no user block)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
    except OSError:
        return False


def is_prediction_h5ad(path) -> bool:
    """An HDF5 file with the ``uns/napari_hggep`` group our exports write (metadata only)."""
    if not is_hdf5(path):
        return False
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return isinstance(f.get(f"uns/{INFO_KEY}"), h5py.Group) and "X" in f and "obsm" in f
    except (OSError, ValueError):  # truncated, locked, not HDF5 after all
        return False


def _text(v):
    return None if v is None else str(v)


def _num(v):
    return None if v is None else float(v)


def _column(var, name):
    return var[name].to_numpy(np.float32) if name in var else None


def read_prediction_h5ad(path) -> Prediction:
    """The prediction an ``.h5ad`` of ours holds. ``image`` is not read (``slide.image_path`` says
    where it was); ``images`` holds the file's thumbnails, so writing the prediction again keeps
    them. Files written before a figure existed read without it."""
    import anndata as ad

    from ...data.slide import SlideError

    path = Path(path)
    try:
        a = ad.read_h5ad(path)
    except Exception as e:  # noqa: BLE001 - any failure of anndata's reader means the same to a user
        raise SlideError(f"{path}: not a readable AnnData file ({type(e).__name__}: {str(e)[:200]})") from None
    info = dict(a.uns.get(INFO_KEY) or {})
    if not info or "spatial" not in a.obsm:
        raise SlideError(f"{path}: not a napari-hggep prediction (no uns['{INFO_KEY}'] or obsm['spatial'])")
    lib = _text(info.get("library_id")) or next(iter(a.uns.get("spatial") or {}), None)
    spatial = dict((a.uns.get("spatial") or {}).get(lib) or {})
    sf = {k: float(v) for k, v in dict(spatial.get("scalefactors") or {}).items()}
    thumbs = dict(spatial.get("images") or {})
    images = {k: (np.asarray(img), sf[f"tissue_{k}_scalef"]) for k, img in thumbs.items()
              if f"tissue_{k}_scalef" in sf} or None
    var, obs = a.var, a.obs
    genes = [str(g) for g in a.var_names]
    pcc = _column(var, "heldout_pcc")
    gene_pcc = {} if pcc is None else {g: (None if not np.isfinite(p) else float(p)) for g, p in zip(genes, pcc)}
    blend = re.search(r"weight ([-+0-9.eE]+)", str(info.get("neighbour_blending") or ""))
    provenance = Provenance(model=_text(info.get("model")), patch_um=_num(info.get("patch_um")),
                            smooth_weight=float(blend.group(1)) if blend else None, gene_pcc=gene_pcc,
                            gene_pcc_protocol=_text(info.get("gene_pcc_protocol")))
    reliability = Reliability(
        slide_reliability=_column(var, "slide_reliability"), spread=_column(var, "spread"),
        unfamiliar=None if "unfamiliar" not in info else bool(info["unfamiliar"]),
        unfamiliar_score=_num(info.get("unfamiliar_score")), unfamiliar_threshold=_num(info.get("unfamiliar_threshold")),
        unknown_because=_text(info.get("slide_reliability_unknown_because")),
        protocol=_text(info.get("slide_reliability_calibrated_on")), clipped_fraction=_num(info.get("clipped_fraction")))
    if reliability.unfamiliar_threshold is not None and not np.isfinite(reliability.unfamiliar_threshold):
        reliability.unfamiliar_threshold = None
    measured = None
    if "measured" in a.layers and "has_counts" in obs:
        import scipy.sparse as sp

        measured = Measured(values=sp.csr_matrix(a.layers["measured"], dtype=np.float32),
                            has_counts=obs["has_counts"].to_numpy(bool),
                            pcc=_column(var, "measured_pcc") if "measured_pcc" in var else np.full(len(genes), np.nan),
                            normalisation=str(info.get("measured_normalisation", "")),
                            source=str(info.get("measured_source", "")))
    image_scale = float(info.get("image_scale", 1.0))
    shape = str(info.get("spot_shape", "circle"))
    slide = SlideInfo(image_path=_text(info.get("image_predicted_on")) or None, library_id=lib, scalefactors=sf or None,
                      um_per_px_source=_text(info.get("um_per_px_source")), bin_size_um=_num(info.get("bin_size_um")),
                      image_scale=image_scale, spot_shape=shape)
    rc = obs[["array_row", "array_col"]].to_numpy(np.int64) if {"array_row", "array_col"} <= set(obs.columns) else None
    X = a.X.toarray() if hasattr(a.X, "toarray") else a.X
    return Prediction(spot_ids=np.asarray(a.obs_names).astype(str), xy=np.asarray(a.obsm["spatial"], np.float64),
                      genes=genes, values=np.asarray(X, np.float32), array_rc=rc,
                      um_per_px=float(info.get("um_per_px", 1.0)), name=str(info.get("slide", path.stem)),
                      slide=slide, provenance=provenance, reliability=reliability, image_scale=image_scale,
                      spot_diameter_um=_num(info.get("spot_diameter_um")), spot_shape=shape, images=images,
                      measured=measured)
