"""The Train dock's image encoder (issue 35): the bundled model's ShuffleNet, the ImageNet encoder
that installs with the package (EfficientNet-Lite0), or a timm model whose weights the user
downloaded (a local file or a Hugging Face snapshot folder, read offline), as ``train --encoder``
takes them (docs/encoders.md). The choice is words on the GUI thread; the weights are read,
hashed and checked in the training's worker thread (a foundation model's file is GBs)."""
from __future__ import annotations

from magicgui.widgets import ComboBox, FileEdit, LineEdit

SHUFFLENET = "Bundled model's (ShuffleNet)"
IMAGENET = "ImageNet (EfficientNet-Lite0, installed)"
TIMM = "timm model from a file…"


class EncoderChoice:
    """The widgets (:attr:`widgets`) and what they say (:meth:`choice`, :meth:`resolve`)."""

    def __init__(self):
        self.kind = ComboBox(label="Image encoder", choices=[SHUFFLENET, IMAGENET, TIMM], value=SHUFFLENET,
                             tooltip="What the image path is built on. ImageNet: pretrained weights that come "
                                     "with the package, frozen, their features cached per section. timm: a "
                                     "pathology model you downloaded (UNI, H-optimus, Virchow…): its timm "
                                     "architecture name and its weights file or snapshot folder.")
        self.arch = LineEdit(label="timm architecture", value="", visible=False,
                             tooltip="e.g. vit_large_patch16_224 (UNI); docs/encoders.md lists recipes")
        self.weights = FileEdit(label="Encoder weights", mode="r", visible=False,
                                filter="*.pth *.pt *.bin *.safetensors",
                                tooltip="A .pth / .bin / .safetensors file, or a Hugging Face snapshot folder's "
                                        "weights file (its config.json beside it is read too); never downloaded")
        self.kind.changed.connect(self._on_kind)
        self.widgets = [self.kind, self.arch, self.weights]

    def _on_kind(self, value):
        self.arch.visible = self.weights.visible = value == TIMM

    def choice(self) -> tuple[str, str | None] | None:
        """``(--encoder NAME, --encoder-weights PATH or None)``; None for the bundled ShuffleNet."""
        if self.kind.value == IMAGENET:
            return "imagenet", None
        if self.kind.value == TIMM:
            arch = self.arch.value.strip()
            w = str(self.weights.value or "").strip()
            if not arch:
                raise ValueError("Give the timm architecture of your encoder (e.g. vit_large_patch16_224 for "
                                 "UNI; docs/encoders.md), or pick another image encoder.")
            if not w or w == ".":
                raise ValueError("Choose the encoder's weights file (or its snapshot folder's weights), or pick "
                                 "another image encoder.")
            return f"timm:{arch}", w
        return None


def resolve(choice) -> tuple[object, str | None]:
    """In the worker thread: the encoder's spec and weights file for a :meth:`EncoderChoice.choice`
    (read, hashed and checked as ``train --encoder`` does), or ``(None, None)``."""
    if choice is None:
        return None, None
    from ...model.encoders import make_spec

    spec, file = make_spec(*choice)
    return spec, None if file is None else str(file)
