"""Update the bundled model card without retraining: the per-gene reliability
(``metrics.reliability.gene``) refitted from the evaluation's calibration block, and the branches'
shares of the maps' variance (``metrics.branch_shares``) from ``benchmarks/exp_image_path.py``.
Or the pretrained encoder's measurement (``metrics.pretrained_encoder``: what
``benchmarks/exp_encoder.py`` measured and why the bundled model does not use it). The weights are
untouched; the card (inside the checkpoint, beside it as JSON, and its sha256) is rewritten.

    python scripts/update_card.py docs/loo.json docs/image_path.json src/napari_hggep/weights/hggep_compact_her2st.pt
    python scripts/update_card.py --encoder docs/encoder_results.json src/napari_hggep/weights/hggep_compact_her2st.pt
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

from napari_hggep._atomic import atomic_write_bytes
from napari_hggep.model.checkpoint import _digest
from napari_hggep.training.calibrate import gene_report, gene_rows, new_patient_coef


def main(loo_json: str, image_path_json: str, checkpoint: str) -> None:
    ev = json.loads(Path(loo_json).read_text())
    patients = ev.get("protocol", {}).get("patients") or {}
    rows = gene_rows(ev["calibration"], patients)
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    meta, state = json.loads(raw["meta_json"]), raw["state_dict"]
    rel = meta["metrics"]["reliability"]
    old = rel.get("gene", {})
    rel["gene"] = new_patient_coef(rows, patients)
    rel["gene_folds"] = gene_report(rows)
    print(f"a {old.get('a')} -> {rel['gene']['a']:.4f}, b {old.get('b')} -> {rel['gene']['b']:.4f}; "
          f"{rel['gene']['protocol']}; residuals {rel['gene']['patient_residuals']}")
    diag = json.loads(Path(image_path_json).read_text())["diagnosis"]
    share = {k: v["image_share_of_component_variance"] for k, v in diag.items()}
    meta["metrics"]["branch_shares"] = {
        "image_path": float(np.mean(list(share.values()))), "statistics_branch": 1 - float(np.mean(list(share.values()))),
        "per_section_image_path": {k: float(v) for k, v in share.items()},
        "means": "share of the variance across spots of the model's output components carried by each branch",
        "measured_by": "benchmarks/exp_image_path.py (docs/image-path.md)"}
    print(f"image path share {meta['metrics']['branch_shares']['image_path']:.2e}")
    rewrite(checkpoint, meta, state)


def encoder_note(results_json: str, checkpoint: str) -> None:
    """``metrics.pretrained_encoder`` from the measurement and decision in ``results_json``."""
    note = json.loads(Path(results_json).read_text())
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    meta, state = json.loads(raw["meta_json"]), raw["state_dict"]
    meta["metrics"]["pretrained_encoder"] = note
    print(f"pretrained encoder: {note['decision']}")
    rewrite(checkpoint, meta, state)


def rewrite(checkpoint: str, meta: dict, state: dict) -> None:
    """The checkpoint with ``meta`` as its card (same weights), the JSON card beside it and its sha256."""
    digest = _digest(meta, state)
    buf = io.BytesIO()
    torch.save({"meta_json": json.dumps(meta), "state_dict": state, "sha256": digest}, buf)
    data = buf.getvalue()
    atomic_write_bytes(checkpoint, data)
    card_path = Path(checkpoint).with_suffix(".json")
    card = json.loads(card_path.read_text())
    card.update(meta)
    card["file_sha256"], card["content_sha256"] = hashlib.sha256(data).hexdigest(), digest
    atomic_write_bytes(card_path, json.dumps(card, indent=1).encode())
    atomic_write_bytes(Path(checkpoint + ".sha256"), f"{card['file_sha256']}  {Path(checkpoint).name}\n".encode())
    print(f"wrote {checkpoint}, {card_path}")

if __name__ == "__main__":
    if sys.argv[1] == "--encoder":
        encoder_note(*sys.argv[2:4])
    else:
        main(*sys.argv[1:4])
