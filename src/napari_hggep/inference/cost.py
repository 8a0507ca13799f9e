"""What a prediction will cost, said before it starts: spots, genes, the patch in pixels of the
image read, memory and time; and whether that is out of proportion to this machine (more than
half of the memory free now). The command line and the napari dock ask the same questions here.
No torch, no Qt: only arithmetic on the slide's and the model's sizes.

The memory model counts what a prediction holds at its peak: the spots x genes values (float32,
once in the prediction, which a napari layer keeps without a copy; a writer's chunks), the
slide's counts when they are compared, the image tokens (3 stages x the model width), one batch
of patches read at the image's resolution (a patch of 70 um is 1,410 px a side at 0.05 um/px:
the pixel-size typo that once took a machine down) and about 0.5 GB for torch and the model.
Calibrated on this project's benchmarks (``benchmarks/bench_dense.py``: 193,753 Visium HD bins x
2,072 genes peaked at 3.8 GB through the command line).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..data.slide import SlideError

BASE_BYTES = 512 * 2**20  # torch, the model and the interpreter
MAX_SHARE_OF_FREE = 0.5  # a prediction may take at most half of the memory free when it starts
SPOTS_PER_S = {"per patch": 400.0, "shared trunk": 1000.0}  # end to end on 2 CPU cores (README, benchmarks)
# a pretrained encoder's patches per second on 2 CPU cores (docs/encoders.md: EfficientNet-Lite0 at 224 px,
# ~16; a timm ViT-L and larger, about one or less; cached maps are not counted)
ENCODER_PATCHES_PER_S = {"imagenet": 15.0, "timm": 1.0}
GPU_SPEEDUP = 5.0  # a rough factor for an unmeasured accelerator: the time is said as "about"


class CostTooLarge(SlideError):
    """A prediction out of proportion to this machine, refused until the user says to go on
    (``key``: what identifies the request, for the napari dock's "Predict anyway")."""

    def __init__(self, message: str, key=None):
        super().__init__(message)
        self.key = key


@dataclass
class PredictionCost:
    """The estimated cost of one prediction."""

    spots: int
    genes: int
    patch_px: float  # the patch's side in pixels of the image read
    memory_bytes: int
    seconds: float
    free_bytes: int | None  # memory available now (None: unknown on this system)
    counts: bool = False  # the slide's counts are compared after predicting

    @property
    def too_large(self) -> bool:
        return self.free_bytes is not None and self.memory_bytes > MAX_SHARE_OF_FREE * self.free_bytes

    def describe(self) -> str:
        """One line: what will run and about how much it takes."""
        return (f"{self.spots:,} spots x {self.genes:,} genes, patches of {self.patch_px:,.0f} px: about "
                f"{gib(self.memory_bytes)} of memory and {duration(self.seconds)}"
                + (" (with the slide's counts)" if self.counts else ""))

    def problem(self) -> str | None:
        """Why this prediction should not start without the user's word; None when it fits."""
        if not self.too_large:
            return None
        return (f"this prediction needs about {gib(self.memory_bytes)} of memory, more than half of the "
                f"{gib(self.free_bytes)} free now ({self.spots:,} spots x {self.genes:,} genes, patches of "
                f"{self.patch_px:,.0f} px). Check the pixel size and the spot pitch, predict fewer spots or "
                "genes, or close other programs")


def gib(n: float | None) -> str:
    if n is None:
        return "an unknown amount"
    return f"{n / 2**30:.1f} GB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MB"


def duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


def free_memory_bytes() -> int | None:
    """Memory available to a new allocation now (Linux ``MemAvailable``, else psutil), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # no psutil, or a platform it does not know: unknown, never a refusal
        return None


def estimate_cost(spots: int, genes: int, um_per_px: float, config, shared: bool = False, layer: bool = False,
                  counts: bool = False, device: str = "cpu", batch_size: int = 256,
                  free_bytes: int | None = None) -> PredictionCost:
    """The cost of predicting ``genes`` genes for ``spots`` spots of an image at ``um_per_px`` with
    a model of ``config`` (an ``HGGEPConfig``: ``patch_um``, ``patch_px``, ``dim``, ``image_path``);
    ``shared``: dense spots encoded by the shared trunk; ``layer``: the result becomes a napari layer
    (its colour ranges computed in chunks); ``counts``: the slide's counts are compared. ``free_bytes``
    defaults to what :func:`free_memory_bytes` reads now."""
    n, g = max(int(spots), 0), max(int(genes), 0)
    patch_px = float(config.patch_um) / float(um_per_px)
    values = n * g * 4
    copies = 1.0 + (0.25 if layer else 0.5)  # the prediction (a layer keeps it, no copy); a writer's chunks
    mem = BASE_BYTES + copies * values
    if counts:
        mem += 0.5 * values  # sparse counts of the predicted genes, in the target space
    if getattr(config, "image_path", True):
        mem += n * 3 * int(config.dim) * 4 * 2  # image tokens, and their copy on the way to the model
        if shared:
            mem += 4 * 512 * 512 * 3 * 4  # a few tissue tiles at patch resolution
        else:
            side = max(patch_px, float(config.patch_px))
            mem += min(batch_size, max(n, 1)) * (side * side * 3 * 2 + 3 * int(config.patch_px) ** 2 * 4)
    rate = SPOTS_PER_S["shared trunk" if shared else "per patch"] * (1.0 if device == "cpu" else GPU_SPEEDUP)
    if config.image_path and getattr(config, "pretrained_encoder", False):  # its encoder, not ShuffleNet, sets the pace
        rate = min(rate, ENCODER_PATCHES_PER_S.get(config.encoder.name, 1.0) * (1.0 if device == "cpu" else GPU_SPEEDUP))
    seconds = 2.0 + n / rate + values / 400e6  # the model, then values written at ~400 MB/s
    crops = len(getattr(config, "pooled_um", ()) or ())
    if crops:  # the pretrained encoder over each spot's crops for the statistics branch's pooled features
        seconds += n * crops / (ENCODER_PATCHES_PER_S.get(config.encoder.name, 1.0) *
                                (1.0 if device == "cpu" else GPU_SPEEDUP))
        side = float(max(config.pooled_um)) / float(um_per_px)
        mem += 256 * (side * side * 3 + 3 * int(config.encoder.input_px) ** 2 * 4)  # 256 spots' crops at a time
    return PredictionCost(spots=n, genes=g, patch_px=patch_px, memory_bytes=int(mem), seconds=float(seconds),
                          free_bytes=free_memory_bytes() if free_bytes is None else free_bytes, counts=counts)


def grid_spots_upper_bound(height_px: int, width_px: int, um_per_px: float, pitch_um: float) -> int:
    """At most how many spots a hexagonal grid of ``pitch_um`` lays over an image (every pixel tissue)."""
    area = float(height_px) * float(width_px) * float(um_per_px) ** 2
    return int(math.ceil(area / (float(pitch_um) ** 2 * math.sqrt(3) / 2))) + 1


def slide_cost(slide, config, genes: int, shared_trunk: str = "auto", layer: bool = False, device: str = "cpu",
               batch_size: int = 256, free_bytes: int | None = None) -> PredictionCost:
    """:func:`estimate_cost` for a slide that is read (its spots known), as ``predict_steps``
    would run it: the shared trunk chosen as it chooses, the counts compared when the slide's
    source has them."""
    from ..data.counts import counts_source
    from .dense import use_shared_trunk

    shared = use_shared_trunk(slide, config, shared_trunk)
    counts = slide.counts is not None or (slide.info.counts_source is not False and counts_source(slide) is not None)
    return estimate_cost(slide.n_spots, genes, slide.um_per_px, config, shared=shared, layer=layer, counts=counts,
                         device=device, batch_size=batch_size, free_bytes=free_bytes)
