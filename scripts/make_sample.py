"""Rebuild the plugin's sample data: HER2+ section B4 (Andersson et al., Nature Communications
2021) whole, at 2 um/px, cropped to its tissue, as a JPEG within 1.5 MB.

    python scripts/make_sample.py ../shared/data/her2st/B4 src/napari_hggep/sample
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

TARGET_UM_PER_PX = 2.0
MAX_BYTES = 1_500_000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("section", type=Path, help="a HER2+ section folder (he.jpg, spots.tsv)")
    ap.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    from PIL import Image

    from napari_hggep.io.readers.open import read_her2st
    from napari_hggep.data.tissue import tissue_mask

    slide = read_her2st(a.section, with_counts=False)
    src_upp = float(slide.um_per_px)
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(a.section / "he.jpg") as im:
        full = im.convert("RGB")
    f = src_upp / TARGET_UM_PER_PX
    small = full.resize((round(full.width * f), round(full.height * f)), Image.LANCZOS)
    upp = src_upp * full.width / small.width
    mask, step = tissue_mask(np.asarray(small))
    ys, xs = np.nonzero(mask)
    margin = int(round(300 / upp))  # 300 um of glass around the tissue
    x0, y0 = max(xs.min() * step - margin, 0), max(ys.min() * step - margin, 0)
    x1 = min((xs.max() + 1) * step + margin, small.width)
    y1 = min((ys.max() + 1) * step + margin, small.height)
    crop = small.crop((x0, y0, x1, y1))
    for quality in (90, 88, 85, 82, 80, 75):
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=quality, optimize=True)
        if buf.tell() <= MAX_BYTES:
            break
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "he_B4.jpg").write_bytes(buf.getvalue())
    info = {"um_per_px": round(upp, 5), "section": a.section.name, "jpeg_quality": quality,
            "origin_um": [round(x0 * upp, 1), round(y0 * upp, 1)],
            "source": "Andersson et al., Nature Communications 2021 (HER2+ breast cancer ST, section "
                      f"{a.section.name}), whole section resampled to {TARGET_UM_PER_PX:g} um/px"}
    (a.out / "he_B4.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{a.out / 'he_B4.jpg'}: {crop.width}x{crop.height} px at {upp:.4f} um/px, "
          f"{buf.tell() / 1e6:.2f} MB (JPEG q{quality})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
