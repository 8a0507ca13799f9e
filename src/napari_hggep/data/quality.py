"""Is this worth predicting on? Checks of the image a user brings, shared by the CLI and the widget.

* :func:`tissue_under_spots` / :func:`require_tissue`: the image under the spots must show tissue
  (a blank or nearly uniform image, e.g. a black ``tissue_hires_image.png``, gives a map made of
  nothing). A failure is an error.
* :func:`stain_warning`: does the tissue look like H&E (pink and purple), not an IHC stain (brown
  DAB) or a grey image? A warning: the model was trained on H&E only.
* :func:`resolution_warning`: the model was trained on scans between about 0.25 and 4 µm/px.
* :func:`plausible_um_per_px_problem`: a pixel size typed by hand outside
  :data:`PLAUSIBLE_UM_PER_PX` is a typo, not a scan (refused before any work).

All of them look at a thumbnail (the coarsest pyramid level that has it), never at level 0.
No Qt here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .slide import Slide, SlideError

TRAINED_UM_PER_PX = (0.25, 4.0)  # pretraining resampled to 0.25-4 um/px; statistics recomputed at 1-4 um/px
# what an H&E image can be: a 40x scan is about 0.25 um/px, a 600 px Visium lowres PNG about 10-20;
# a pixel size given by hand outside this range is a typo (0.02 for 0.2), not a scan
PLAUSIBLE_UM_PER_PX = (0.1, 20.0)
NO_TISSUE_IMAGE = "none of this folder's images shows tissue under the spots"  # a Space Ranger folder's notice
MIN_SPREAD = 3.0  # grey levels (0-255): below this the image under the spots is uniform
MIN_STAINED = 0.05  # fraction of spots with stained tissue under them
MAX_BROWN = 0.3  # fraction of tissue pixels that are brown (DAB) above which it is not H&E
MIN_PINK_PURPLE = 0.3


@dataclass
class TissueReport:
    spread: float  # standard deviation of the grey level under the spots (0-255)
    stained: float  # fraction of spots with stained tissue (saturated, neither black nor white) under them
    n_spots: int

    @property
    def ok(self) -> bool:
        return self.spread >= MIN_SPREAD and self.stained >= MIN_STAINED

    def problem(self) -> str:
        if self.spread < MIN_SPREAD:
            return (f"the image under the spots is blank or nearly uniform (grey-level spread {self.spread:.1f} "
                    f"of 255)")
        if self.stained < MIN_STAINED:
            return (f"no stained tissue under the spots (only {100 * self.stained:.0f} % of {self.n_spots} spots "
                    "sit on tissue; the rest is glass, black or white)")
        return ""

    def reason(self) -> str:
        """The problem in a few words, without parentheses (to be listed inside another sentence)."""
        if self.spread < MIN_SPREAD:
            return f"blank or nearly uniform, grey-level spread {self.spread:.1f} of 255"
        if self.stained < MIN_STAINED:
            return f"stained tissue under only {100 * self.stained:.0f} % of {self.n_spots} spots"
        return ""


def _thumb(image, max_side: int = 1024):
    from .tissue import thumbnail

    return thumbnail(image, max_side)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of uint8 RGB, ``(max - min) / max`` (0 where black), as
    ``skimage.color.rgb2hsv(rgb)[..., 1]`` gives it, in numpy alone (no skimage import, about a
    third of a second, on the GUI thread of a napari File ▸ Open)."""
    a = np.multiply(np.asarray(rgb), 1.0 / 255, dtype=np.float64)  # as skimage's img_as_float, bit for bit
    hi = a.max(axis=-1)
    delta = np.ptp(a, axis=-1)
    return np.divide(delta, hi, out=np.zeros_like(hi), where=delta != 0)


def tissue_under_spots(image, xy: np.ndarray, spot_diameter_px: float, max_side: int = 1024) -> TissueReport:
    """How much tissue the image shows under the spots ``xy`` (full-resolution px). Looks at a
    thumbnail (:func:`~.tissue.thumbnail`), in numpy only."""
    thumb, step = _thumb(image, max_side)
    thumb = np.asarray(thumb)[..., :3]
    xy = np.asarray(xy, float).reshape(-1, 2)
    xy = xy[np.isfinite(xy).all(axis=1)]
    if len(xy) > 4000:  # enough to judge
        xy = xy[np.linspace(0, len(xy) - 1, 4000).round().astype(int)]
    if len(xy) == 0:  # no spot with a position: nothing under them
        return TissueReport(0.0, 0.0, 0)
    h, w = thumb.shape[:2]
    r = max(1, int(round(spot_diameter_px / 2 / step)))
    c = np.clip((xy / step).round().astype(int), 0, [w - 1, h - 1])
    offs = np.arange(-r, r + 1)
    yy = np.clip(c[:, 1, None, None] + offs[None, :, None], 0, h - 1)
    xx = np.clip(c[:, 0, None, None] + offs[None, None, :], 0, w - 1)
    px = thumb[yy, xx].reshape(len(c), -1, 3).astype(np.float32)  # spots x pixels x RGB
    if px.size == 0:
        return TissueReport(0.0, 0.0, 0)
    grey = px.mean(axis=-1)
    spread = float(grey.std())
    sat = saturation(px.astype(np.uint8))
    stained_px = (sat > 0.08) & (grey > 25) & (grey < 245)
    stained = float((stained_px.mean(axis=1) > 0.25).mean())
    return TissueReport(spread, stained, len(c))


def slide_tissue(slide: Slide) -> TissueReport:
    return tissue_under_spots(slide.image, slide.xy, slide.spot_diameter_um / slide.um_per_px)


def require_tissue(slide: Slide) -> TissueReport:
    """Raise a :class:`SlideError` when the image under the slide's spots shows no tissue."""
    rep = slide_tissue(slide)
    if not rep.ok:
        notice = str(slide.info.notice or "")
        if notice.startswith(NO_TISSUE_IMAGE):  # a Space Ranger folder: the notice lists its images and what to do
            raise SlideError(f"{slide.name}: {notice}")
        src = f" ({slide.source})" if slide.source else ""
        raise SlideError(f"{slide.name}{src}: {rep.problem()}. Nothing would be predicted from tissue: check "
                         "that this is the slide's image and that the spots belong to it, or use another image of "
                         "the same slide (e.g. the full-resolution scan).")
    return rep


def stain_warning(image, max_side: int = 512) -> str | None:
    """A sentence when the tissue does not look like H&E (brown DAB of an IHC stain, or no colour)."""
    from skimage.color import rgb2hsv

    from .tissue import tissue_mask

    thumb, _ = _thumb(image, max_side)
    mask, _ = tissue_mask(image, max_side)
    if mask.shape != thumb.shape[:2]:
        mask = np.ones(thumb.shape[:2], bool)
    hsv = rgb2hsv(np.asarray(thumb)[..., :3])
    if mask.sum() < 50:
        return None  # no tissue: require_tissue / the grid say so
    h, s = hsv[..., 0][mask], hsv[..., 1][mask]
    brown = float(((h > 0.02) & (h < 0.17) & (s > 0.15)).mean())
    pink_purple = float((((h > 0.5) | (h < 0.02)) & (s > 0.1)).mean())
    if brown > MAX_BROWN:
        return (f"the image does not look like H&E: {100 * brown:.0f} % of its tissue is brown (DAB: an IHC stain?). "
                "The model was trained on H&E only; its predictions here mean little.")
    if pink_purple < MIN_PINK_PURPLE:
        return (f"the image does not look like H&E: only {100 * pink_purple:.0f} % of its tissue is pink or purple "
                "(grey, fluorescence or another stain?). The model was trained on H&E only; its predictions here "
                "mean little.")
    return None


def plausible_um_per_px_problem(um_per_px) -> str | None:
    """What is wrong with ``um_per_px`` as an H&E image's pixel size, as the end of a sentence
    that starts with the value ("0.02 µm/px ..."); None when it is plausible (a positive number
    within :data:`PLAUSIBLE_UM_PER_PX`)."""
    try:
        v = float(um_per_px)
    except (TypeError, ValueError):
        return "is not a number of micrometres per pixel"
    if not (np.isfinite(v) and v > 0):
        return "is not a pixel size: it must be a positive number of micrometres per pixel (e.g. 0.5 for a 20x scan)"
    lo, hi = PLAUSIBLE_UM_PER_PX
    if v < lo:
        return (f"is finer than any light-microscope scan (H&E scans are {lo:g}-{hi:g} µm/px: about 0.25 at 40x, "
                "0.5 at 20x)")
    if v > hi:
        return (f"is coarser than any H&E image the model can use ({lo:g}-{hi:g} µm/px: about 0.25 at 40x, 0.5 at "
                "20x, 10-20 for a Visium lowres PNG)")
    return None


def resolution_warning(um_per_px: float) -> str | None:
    lo, hi = TRAINED_UM_PER_PX
    if um_per_px is None or lo <= um_per_px <= hi:
        return None
    what = "finer" if um_per_px < lo else "coarser"
    return (f"{um_per_px:g} µm per pixel is {what} than the scans the model was trained on (about {lo:g}–{hi:g} "
            "µm/px); check the pixel size, or expect poorer predictions.")


def image_warnings(image, um_per_px: float | None) -> list[str]:
    """The warnings for an image about to be predicted on (resolution, stain)."""
    out = [resolution_warning(um_per_px) if um_per_px else None, stain_warning(image)]
    return [m for m in out if m]
