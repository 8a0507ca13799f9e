"""Sample data: HER2+ section B4 (Andersson et al., Nat. Commun. 2021), the whole section at
2 um/px (``scripts/make_sample.py``), shipped in the package so it works offline, with a
100 um hexagonal spot grid over its tissue (the widget's *Generate spots over tissue*)."""
from __future__ import annotations

import json
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample"
SAMPLE_PITCH_UM = 100.0


def sample_slide():
    from ..data.image import read_image
    from ..io.readers.open import grid_slide

    info = json.loads((SAMPLE_DIR / "he_B4.json").read_text())
    image = read_image(SAMPLE_DIR / "he_B4.jpg")
    return grid_slide(image, float(info["um_per_px"]), SAMPLE_PITCH_UM, name="HER2+ B4",
                      source=str(SAMPLE_DIR / "he_B4.jpg"))


def sample_he_with_spots():
    from .layers import image_layer_data, spots_layer_data

    slide = sample_slide()
    return [image_layer_data(slide, "the sample's he_B4.json"),
            spots_layer_data(slide, name=f"{slide.name} spots ({SAMPLE_PITCH_UM:g} µm grid)")]
