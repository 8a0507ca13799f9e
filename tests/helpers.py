"""Small synthetic slides written to disk in each supported format."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def he_like_image(h=600, w=800, seed=0) -> np.ndarray:
    """Pinkish glass with a purple tissue blob in the middle, textured."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (235, 225, 235)
    yy, xx = np.mgrid[:h, :w]
    blob = ((yy - h / 2) / (h * 0.3)) ** 2 + ((xx - w / 2) / (w * 0.3)) ** 2 < 1
    tissue = np.stack([150 + 40 * rng.random((h, w)), 80 + 40 * rng.random((h, w)), 160 + 40 * rng.random((h, w))], -1)
    img[blob] = tissue[blob].astype(np.uint8)
    return img


def write_her2st(folder: Path, img: np.ndarray, genes=("GA", "GB", "GC"), pitch_px=40.0, seed=0) -> Path:
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(folder / "he.jpg", quality=92)
    rows = []
    for ax in range(3, 12):
        for ay in range(3, 10):
            rows.append((ax, ay, ax + 0.01, ay - 0.02, ax * pitch_px + 0.5, ay * pitch_px - 0.5, 1))
    rows.append((2, 2, 2, 2, 80, 80, 0))  # not selected
    spots = pd.DataFrame(rows, columns=["x", "y", "new_x", "new_y", "pixel_x", "pixel_y", "selected"])
    spots.to_csv(folder / "spots.tsv", sep="\t", index=False)
    sel = spots[spots.selected == 1]
    counts = pd.DataFrame(rng.poisson(5, (len(sel), len(genes))), columns=list(genes),
                          index=[f"{x}x{y}" for x, y in zip(sel.x, sel.y)])
    counts.to_csv(folder / "counts.tsv.gz", sep="\t", compression="gzip")
    return folder


def write_visium(folder: Path, img_full: np.ndarray, old_format=False, with_h5=True, genes=("GA", "GB")) -> Path:
    """A Space Ranger outs/ folder following 10x's documented layout."""
    import h5py
    import pandas as pd
    from PIL import Image
    from scipy.sparse import csc_matrix

    sp = folder / "spatial"
    sp.mkdir(parents=True, exist_ok=True)
    scalef = 0.5
    h, w = img_full.shape[:2]
    Image.fromarray(img_full[::2, ::2]).save(sp / "tissue_hires_image.png")
    json.dump({"spot_diameter_fullres": 20.0, "tissue_hires_scalef": scalef, "tissue_lowres_scalef": 0.1,
               "fiducial_diameter_fullres": 30.0}, open(sp / "scalefactors_json.json", "w"))
    rows = []
    for r in range(0, 12):
        for c in range(0, 16):
            if (r + c) % 2:
                continue
            rows.append((f"BC{r:02d}{c:02d}-1", int(2 <= r <= 9), r, c, 60 + r * 34, 60 + c * 20))
    pos = pd.DataFrame(rows, columns=["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                                      "pxl_col_in_fullres"])
    if old_format:
        pos.to_csv(sp / "tissue_positions_list.csv", header=False, index=False)
    else:
        pos.to_csv(sp / "tissue_positions.csv", index=False)
    if with_h5:
        bc = pos.barcode[pos.in_tissue == 1].tolist()
        dense = np.arange(len(genes) * len(bc)).reshape(len(genes), len(bc)) % 7
        m = csc_matrix(dense)
        with h5py.File(folder / "filtered_feature_bc_matrix.h5", "w") as f:
            g = f.create_group("matrix")
            g["barcodes"] = np.array(bc, dtype="S")
            g["data"], g["indices"], g["indptr"] = m.data, m.indices, m.indptr
            g["shape"] = np.array(m.shape)
            fe = g.create_group("features")
            fe["name"] = np.array(genes, dtype="S")
            fe["id"] = np.array([f"ENSG{i}" for i in range(len(genes))], dtype="S")
            fe["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
    return folder


def write_tiny_dataset(root: Path, sections=("S1", "S2"), genes=("GA", "GB", "GC", "GD")) -> Path:
    """A few small HER2+ ST sections and their genes.txt: enough to train and evaluate in seconds."""
    for i, name in enumerate(sections):
        write_her2st(root / name, he_like_image(520, 520, seed=i), genes=genes, pitch_px=40.0, seed=i)
    (root / "genes.txt").write_text("\n".join(genes) + "\n")
    return root
