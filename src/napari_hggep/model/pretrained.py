"""Self-supervised image-path weights (GEM + ShuffleNet stages) as written by ``napari-hggep
pretrain``: one file with the weights, the recipe and provenance; read with ``weights_only``."""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from .._atomic import atomic_write_bytes
from .checkpoint import CheckpointError

FORMAT = "napari-hggep-backbone"
PREFIXES = ("gem.", "backbone.")


def save_backbone(path, state: dict[str, torch.Tensor], meta: dict) -> None:
    keep = {k: v.detach().cpu().clone() for k, v in state.items() if k.startswith(PREFIXES)}
    if not keep:
        raise ValueError("no GEM/backbone weights to save")
    meta = json.loads(json.dumps(meta, default=str))  # plain types only: loadable with weights_only
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "state": keep, "meta": meta}, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_backbone(path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained backbone {path} does not exist (make one with `napari-hggep pretrain`)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled code
        raise CheckpointError(f"{path}: not a readable backbone file ({type(e).__name__}); "
                              "make one with `napari-hggep pretrain`") from None
    if isinstance(obj, dict) and {"meta_json", "state_dict", "sha256"} <= set(obj):
        # a whole napari-hggep checkpoint (e.g. the bundled model): its image path, verified
        from .checkpoint import read_checkpoint

        card, state = read_checkpoint(path)
        keep = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if k.startswith(PREFIXES)}
        if not keep:
            raise CheckpointError(f"{path}: this model has no image path (statistics only); it cannot give a backbone")
        # the checkpoint's own image-path provenance (e.g. its SimCLR recipe), then this file
        return keep, {**(card.pretrained_backbone or {}), "from_checkpoint": path.name, "sections": card.sections}
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: neither a pretrained backbone (made by `napari-hggep pretrain`) nor a "
                              "napari-hggep model checkpoint")
    return obj["state"], obj.get("meta", {})


def load_backbone_into(model: torch.nn.Module, path) -> dict:
    """Copy pretrained GEM + ShuffleNet weights into an HGGEP model; returns the file's meta."""
    state, meta = read_backbone(path)
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        k = bad[0]
        have = f"model {tuple(own[k].shape)}" if k in own else "not in this model"
        raise CheckpointError(f"{path}: made for another image path than this model's (e.g. {k}: file "
                              f"{tuple(state[k].shape)}, {have}); pretrain a backbone for this preset")
    missing = [k for k in own if k.startswith(PREFIXES) and k not in state]
    if missing:
        raise CheckpointError(f"{path}: the image path is incomplete (missing {missing[0]})")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))
    return meta
