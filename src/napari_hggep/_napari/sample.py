"""Sample data: a 1,500 x 1,500 px crop of HER2+ section B4 (Andersson et al., Nat. Commun. 2021)
with its ST spots, shipped in the package so it works offline."""
from __future__ import annotations

import json
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample"


def sample_slide():
    from ..data.readers import read_image_with_spots

    info = json.loads((SAMPLE_DIR / "he_B4_crop.json").read_text())
    slide = read_image_with_spots(SAMPLE_DIR / "he_B4_crop.jpg", SAMPLE_DIR / "he_B4_crop_spots.csv",
                                  um_per_px=info["um_per_px"])
    slide.name = "HER2+ B4 crop"
    slide.spot_diameter_um = 100.0
    return slide


def sample_he_with_spots():
    from .layers import image_layer_data, spots_layer_data

    slide = sample_slide()
    return [image_layer_data(slide), spots_layer_data(slide)]
