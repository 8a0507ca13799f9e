"""Where the bundled model lives, and loading it (or any checkpoint)."""
from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parents[1] / "weights"  # the package's weights/
BUNDLED_NAME = "hggep_compact_her2st"


def bundled_checkpoint() -> Path:
    return WEIGHTS_DIR / f"{BUNDLED_NAME}.pt"


class NoBundledModelError(FileNotFoundError):
    pass


def load_model(path=None, device: str = "auto", encoder_weights=None):
    """Load a checkpoint (``path``) or, with no path, the model bundled in the package.
    ``encoder_weights``: the weights file (or snapshot folder) of a model whose frozen pretrained
    encoder is kept outside its checkpoint (checked against the sha256 the checkpoint records)."""
    from .checkpoint import load_checkpoint

    if path is None:
        path = bundled_checkpoint()
        if not path.is_file():
            raise NoBundledModelError(
                "no trained model is bundled with this installation of napari-hggep; "
                "train one with `napari-hggep train` and pass its path"
            )
    return load_checkpoint(path, device, encoder_weights)


def bundled_card(required: bool = False):
    """The bundled model's card (the JSON beside its weights, a :class:`~napari_hggep.records.ModelCard`),
    empty when none is bundled (``required``: FileNotFoundError then)."""
    import json

    from ..records import ModelCard

    card = WEIGHTS_DIR / f"{BUNDLED_NAME}.json"
    if not card.is_file() and not required:
        return ModelCard()
    return ModelCard.from_dict(json.loads(card.read_text()))
