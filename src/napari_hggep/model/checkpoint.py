"""The one checkpoint format: config, genes, patch size, target normalisation, provenance,
metrics and weights, with a sha256 over all of it. Loaded with ``weights_only=True``."""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .._atomic import atomic_write_bytes
from ..records import ModelCard
from .config import HGGEPConfig

FORMAT = "napari-hggep-checkpoint"
FORMAT_VERSION = 1
# a frozen pretrained encoder's weights stay outside the checkpoint (only their sha256 is in it)
EXTERNAL_PREFIX = "backbone."


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, tampered with or not ours."""


@dataclass
class ModelBundle:
    """A model ready to predict, with everything needed to read its outputs."""

    model: torch.nn.Module
    config: HGGEPConfig
    genes: list[str]
    target_norm: dict = field(default_factory=dict)
    card: ModelCard = field(default_factory=ModelCard)
    path: str | None = None
    encoder_weights: object = None  # the verified weights file of a pooled-features encoder (config.pooled_um)

    @property
    def patch_um(self) -> float:
        return float(self.config.patch_um)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def gene_pcc(self) -> dict[str, float]:
        """Held-out (leave-one-out) PCC per gene, when the card has it."""
        return self.card.gene_pcc

    def heldout_basis(self) -> str | None:
        """What the held-out PCC rests on, in words (:attr:`ModelCard.heldout_basis`)."""
        return self.card.heldout_basis

    def reliability(self) -> dict | None:
        """The card's calibration of the per-slide reliability and the "unlike the training
        tissue" score (see :mod:`napari_hggep.model.reliability`), or None for an older card."""
        return self.card.calibration

    def gene_pcc_protocol(self) -> str | None:
        """How :meth:`gene_pcc` was measured: ``leave-one-patient-out`` (new patients) or
        ``leave-one-section-out``."""
        return self.card.gene_pcc_protocol


def _digest(meta: dict, state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    config: HGGEPConfig,
    genes: list[str],
    target_norm: dict | None = None,
    sections: list[str] | None = None,
    metrics: dict | None = None,
    extra: dict | None = None,
    half: bool = False,
) -> str:
    """Write a checkpoint atomically; returns its content sha256."""
    if len(genes) != config.n_genes:
        raise ValueError(f"{len(genes)} genes but the config has n_genes={config.n_genes}")
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()
             if not (config.image_path and config.encoder_spec.external and k.startswith(EXTERNAL_PREFIX))}
    card = ModelCard(
        format=FORMAT, format_version=FORMAT_VERSION, config=config.to_dict(), genes=list(genes),
        patch_um=float(config.patch_um), target_norm=_jsonable(target_norm or {}), sections=list(sections or []),
        metrics=_jsonable(metrics or {}), extra=_jsonable(extra or {}),
        # what the image path runs on, for every model (config.encoder is None for ShuffleNet)
        encoder=config.encoder_spec.to_dict() if config.image_path else None)
    meta = card.to_dict()
    digest = _digest(meta, state)
    buf = io.BytesIO()
    torch.save({"meta_json": json.dumps(meta), "state_dict": state, "sha256": digest}, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    # the model card beside the weights, readable without torch (config, genes, metrics, sha256)
    card = replace(card, weights_file=Path(path).name, file_sha256=hashlib.sha256(data).hexdigest(),
                   content_sha256=digest, n_parameters=int(sum(v.numel() for v in state.values())))
    atomic_write_bytes(Path(path).with_suffix(".json"), json.dumps(card.to_dict(), indent=1).encode())
    # and the file's sha256 in `sha256sum -c` format
    atomic_write_bytes(Path(str(path) + ".sha256"), f"{card.file_sha256}  {Path(path).name}\n".encode())
    return digest


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def read_checkpoint(path: str | Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """Read and verify a checkpoint; returns ``(card, state_dict)``. Never unpickles code."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; choose the model's .pt file (the one "
                              "`napari-hggep train --out` wrote)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path, or use the bundled model")
    try:
        import warnings

        with warnings.catch_warnings():  # torch's unpickler warnings mean nothing to a user
            warnings.simplefilter("ignore")
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated zip, random bytes, a pickle with code in it ...: torch's text is no help here
        size = path.stat().st_size
        raise CheckpointError(
            f"{path} is not a readable napari-hggep checkpoint: it is damaged, cut short, or another kind of file "
            f"({size:,} bytes). Use a .pt file written by `napari-hggep train`, download or copy it again, or use "
            "the bundled model."
        ) from None
    if not isinstance(raw, dict) or not {"meta_json", "state_dict", "sha256"} <= set(raw):
        raise CheckpointError(f"{path} is a torch file but not a napari-hggep checkpoint (no model card inside)")
    try:
        meta = json.loads(raw["meta_json"])
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: the model card inside is not valid JSON") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the model card inside is not a JSON object")
    card = ModelCard.from_dict(meta)
    if card.format != FORMAT:
        raise CheckpointError(f"{path}: format {card.format!r} is not {FORMAT!r}")
    if int(card.format_version or 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer napari-hggep (format {card.format_version}); upgrade")
    state = raw["state_dict"]
    if _digest(meta, state) != raw["sha256"]:  # over the JSON as stored
        raise CheckpointError(f"{path}: sha256 mismatch, the file was modified or damaged; re-download or retrain it")
    return card, state


def check_inputs(card: ModelCard, config: HGGEPConfig, path) -> None:
    """A checkpoint whose gene list, or whose tissue statistics, do not match what it was made
    for says so, instead of failing later inside the model."""
    genes = card.genes or []
    if len(genes) != config.n_genes:
        raise CheckpointError(f"{path}: made for {config.n_genes} genes but lists {len(genes)}; the file is "
                              "inconsistent, retrain it")
    if config.tissue_features:
        from ..data.features import feature_names

        have = len(feature_names(config.context_um))
        if have != config.tissue_features:
            raise CheckpointError(f"{path}: made for {config.tissue_features} tissue statistics per spot, this "
                                  f"version of napari-hggep computes {have}; retrain it or use the version that "
                                  "made it")


def load_checkpoint(path: str | Path, device: str = "auto", encoder_weights=None) -> ModelBundle:
    """A checkpoint ready to predict. A model on a frozen pretrained encoder keeps only the sha256
    of the encoder's weights: they are read from the package (imagenet), from ``encoder_weights``
    (a file or snapshot folder) or from where they were when the model was trained, and a file
    whose sha256 differs is refused (:class:`CheckpointError`)."""
    from ..devices import resolve_device
    from .hggep import HGGEP

    card, state = read_checkpoint(path)
    config = HGGEPConfig.from_dict(card.config)
    check_inputs(card, config, path)
    external = config.image_path and config.encoder_spec.external
    weights = None
    if config.image_path and config.pretrained_encoder and (external or encoder_weights is not None):
        from .encoders import EncoderWeightsError, verify_weights

        try:
            weights = verify_weights(config.encoder, encoder_weights) if external else None
            if not external:  # the encoder is in the checkpoint (fine-tuned): a file given is checked all the same
                verify_weights(config.encoder.replace(weights_file=None), encoder_weights)
        except EncoderWeightsError as e:
            raise CheckpointError(f"{path}: {e}") from None
    elif encoder_weights is not None and not config.pooled_um:
        raise CheckpointError(f"{path}: this model's image path is {config.encoder_spec.label if config.image_path else 'absent'}"
                              "; it takes no --encoder-weights")
    pooled_weights = None
    if config.pooled_um:  # the statistics branch reads the encoder's pooled features: its weights, checked
        from .encoders import EncoderWeightsError, verify_weights

        try:
            pooled_weights = verify_weights(config.encoder_spec, encoder_weights)
        except EncoderWeightsError as e:
            raise CheckpointError(f"{path}: {e}") from None
    model = HGGEP(config, encoder_weights=weights)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=not external)
        missing = [k for k in missing if not k.startswith(EXTERNAL_PREFIX)]
        if missing or unexpected:
            raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the config stored with them: {str(e)[:300]}") from None
    model.to(resolve_device(device)).eval()
    return ModelBundle(model, config, list(card.genes), card.target_norm, card, str(path), pooled_weights)
