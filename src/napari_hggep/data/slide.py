"""The slide object every reader returns and every consumer (patches, model, napari) reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..records import SlideInfo


class SlideError(ValueError):
    """Bad input: the message says what is wrong and what to fix."""


@dataclass
class Slide:
    """An H&E image with spot positions (and counts when known).

    ``image`` is ``H x W x 3`` uint8, a numpy array or a lazy array (zarr) that
    supports slicing. ``xy`` are spot centres ``(x, y)`` in full-resolution pixels
    of ``image``; ``array_rc`` the array row/col when the platform has them.
    """

    image: Any
    um_per_px: float
    spot_ids: np.ndarray
    xy: np.ndarray
    array_rc: np.ndarray | None = None
    counts: np.ndarray | None = None
    genes: list[str] | None = None
    name: str = "slide"
    spot_diameter_um: float = 100.0
    source: str = ""
    info: SlideInfo = field(default_factory=SlideInfo)  # what the reader knows beyond pixels and spots

    def __post_init__(self):
        self.xy = np.asarray(self.xy, dtype=np.float64).reshape(-1, 2)
        self.spot_ids = np.asarray(self.spot_ids).astype(str)
        if len(self.spot_ids) != len(self.xy):
            raise SlideError(f"{self.name}: {len(self.spot_ids)} spot ids but {len(self.xy)} coordinates")
        if self.array_rc is not None:
            self.array_rc = np.asarray(self.array_rc).reshape(-1, 2)
        if self.counts is not None:
            if self.genes is None or self.counts.shape != (len(self.xy), len(self.genes)):
                raise SlideError(f"{self.name}: counts shape does not match spots x genes")
        if not (np.isfinite(self.um_per_px) and self.um_per_px > 0):
            raise SlideError(f"{self.name}: micrometres per pixel must be a positive number, got {self.um_per_px}")

    @property
    def n_spots(self) -> int:
        return len(self.xy)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def coords_um(self) -> np.ndarray:
        return self.xy * self.um_per_px

    def validate(self) -> None:
        """Raise :class:`SlideError` for an empty slide or spots outside the image."""
        if self.n_spots == 0:
            raise SlideError(
                f"{self.name}: the slide has no spots. Give a spot table, or generate a grid over the tissue."
            )
        finite = np.isfinite(self.xy).all(axis=1)
        if not finite.all():
            raise SlideError(f"{self.name}: spot {str(self.spot_ids[~finite][0])!r} has no valid position "
                             f"(x={self.xy[~finite][0, 0]}, y={self.xy[~finite][0, 1]}); every spot needs finite x, y")
        ids, counts = np.unique(self.spot_ids, return_counts=True)
        if (counts > 1).any():
            dup = ids[counts > 1]
            raise SlideError(
                f"{self.name}: {len(dup)} spot id(s) appear more than once (e.g. {str(dup[0])!r}, "
                f"{int(counts.max())} times). Each spot needs its own id: remove or rename the duplicate rows."
            )
        h, w = self.shape
        outside = (self.xy[:, 0] < 0) | (self.xy[:, 0] >= w) | (self.xy[:, 1] < 0) | (self.xy[:, 1] >= h)
        if outside.all():
            raise SlideError(
                f"{self.name}: all {self.n_spots} spots lie outside the {w}x{h} px image. Spot x/y must be "
                "full-resolution pixel coordinates of this image (check the image and the scale factor)."
            )
        if outside.any():
            raise SlideError(
                f"{self.name}: {int(outside.sum())} of {self.n_spots} spots lie outside the {w}x{h} px image "
                f"(e.g. spot {str(self.spot_ids[outside][0])!r} at x={self.xy[outside][0, 0]:.0f}, "
                f"y={self.xy[outside][0, 1]:.0f}). Spot coordinates must be full-resolution pixels of this image."
            )

    def resampled(self, um_per_px: float) -> "Slide":
        """This slide as if scanned at ``um_per_px`` (the image is resampled in memory; area
        averaging when coarser). Spots, counts and names are kept."""
        from PIL import Image

        f = self.um_per_px / float(um_per_px)
        h, w = self.shape
        size = (max(1, int(round(w * f))), max(1, int(round(h * f))))
        resample = Image.BOX if f < 1 else Image.BILINEAR
        img = np.asarray(Image.fromarray(np.asarray(self.image)[..., :3]).resize(size, resample=resample))
        return Slide(image=img, um_per_px=float(um_per_px), spot_ids=self.spot_ids, xy=(self.xy + 0.5) * f - 0.5,
                     array_rc=self.array_rc, counts=self.counts, genes=self.genes,
                     name=f"{self.name}@{float(um_per_px):g}um", spot_diameter_um=self.spot_diameter_um,
                     source=self.source,
                     info=self.info.copy(image_scale=float(self.info.image_scale) * f))

    def subset(self, keep: np.ndarray) -> "Slide":
        keep = np.asarray(keep)
        return Slide(
            image=self.image,
            um_per_px=self.um_per_px,
            spot_ids=self.spot_ids[keep],
            xy=self.xy[keep],
            array_rc=None if self.array_rc is None else self.array_rc[keep],
            counts=None if self.counts is None else self.counts[keep],
            genes=self.genes,
            name=self.name,
            spot_diameter_um=self.spot_diameter_um,
            source=self.source,
            info=self.info.copy(),
        )
