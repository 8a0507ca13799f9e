"""A study of Visium size: time from command to trained model (with its held-out PCC) and peak memory.

    python benchmarks/bench_study.py [--sections 4] [--genes 18000] [--workdir DIR] [-- extra train args]

Writes four Space Ranger ``outs/`` folders, each with a 100 um hexagonal grid of Visium spots
(about 5,000) over a whole HER2+ section image (``../shared``; a synthetic H&E texture when it
is absent), a sparse ``filtered_feature_bc_matrix.h5`` of 18,000 genes (a tenth follow the
tissue, the rest are noise) and the full-resolution TIFF beside ``outs/``; then runs

    napari-hggep train --samples samples.csv --hvg 500 --out model.pt

in a fresh process with the defaults and reports its wall time, its peak RSS (the process's
own, from getrusage) and the held-out PCC stored in the card. Targets (issue 16): under 10
minutes and under 6 GB on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "her2st"
UM = 0.6876  # the HER2+ images' pixel size
PITCH_UM, SPOT_UM = 100.0, 55.0


def section_image(i: int) -> np.ndarray:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    names = ["B4", "C2", "C3", "C4", "C5"]
    p = SHARED / names[i % len(names)] / "he.jpg"
    if p.is_file():
        return np.asarray(Image.open(p).convert("RGB"))
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[:9000, :9000].astype(np.float32)
    nuc = (np.sin(xx * 0.9) * np.sin(yy * 0.8) > 0.6) * (rng.random((9000, 9000)) > 0.3)
    stroma = 0.5 + 0.5 * np.sin(xx * 0.013 + np.sin(yy * 0.007) * 3)
    return np.stack([230 - 90 * nuc - 30 * stroma, 170 - 100 * nuc - 40 * stroma, 210 - 60 * nuc - 20 * stroma],
                    -1).clip(0, 255).astype(np.uint8)


def write_section(root: Path, name: str, img: np.ndarray, n_genes: int, seed: int) -> dict:
    import h5py
    import pandas as pd
    import tifffile
    from PIL import Image
    from scipy import sparse

    outs = root / name / "outs"
    sp = outs / "spatial"
    sp.mkdir(parents=True, exist_ok=True)
    h, w = img.shape[:2]
    pitch = PITCH_UM / UM
    rows = []
    for r, y in enumerate(np.arange(pitch / 2, h - pitch / 2, pitch * np.sqrt(3) / 2)):
        for c, x in enumerate(np.arange(pitch / 2 + (r % 2) * pitch / 2, w - pitch / 2, pitch)):
            rows.append((f"{name}-{r:03d}{c:03d}-1", 1, r, 2 * c + r % 2, int(round(y)), int(round(x))))
    pos = pd.DataFrame(rows, columns=["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                                      "pxl_col_in_fullres"])
    pos.to_csv(sp / "tissue_positions.csv", index=False)
    hs = 2000 / max(h, w)
    Image.fromarray(img).resize((int(w * hs), int(h * hs))).save(sp / "tissue_hires_image.png")
    json.dump({"spot_diameter_fullres": SPOT_UM / UM, "tissue_hires_scalef": hs, "tissue_lowres_scalef": hs / 3.33,
               "fiducial_diameter_fullres": 1.6 * SPOT_UM / UM}, open(sp / "scalefactors_json.json", "w"))
    # counts: a tenth of the genes follow the local darkness of the tissue, the rest are noise
    rng = np.random.default_rng(seed)
    grey = img[::8, ::8].mean(axis=2)
    yy = np.clip(pos.pxl_row_in_fullres.to_numpy() // 8, 0, grey.shape[0] - 1)
    xx = np.clip(pos.pxl_col_in_fullres.to_numpy() // 8, 0, grey.shape[1] - 1)
    dark = 255 - grey[yy, xx]
    dark = (dark - dark.mean()) / (dark.std() + 1e-9)
    n, n_sig = len(pos), n_genes // 10
    blocks = []
    for g0 in range(0, n_genes, 2000):
        g1 = min(g0 + 2000, n_genes)
        rate = np.full((n, g1 - g0), 0.08, np.float32)
        s = max(0, min(n_sig, g1) - g0)
        if s:
            rate[:, :s] = np.exp(0.8 * dark[:, None] + rng.normal(0, 0.3, (1, s))) * 1.5
        blocks.append(sparse.csc_matrix(rng.poisson(rate).astype(np.int32)))
    m = sparse.hstack(blocks).T.tocsc()  # features x barcodes
    with h5py.File(outs / "filtered_feature_bc_matrix.h5", "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(pos.barcode, dtype="S")
        g["data"], g["indices"], g["indptr"], g["shape"] = m.data, m.indices, m.indptr, np.array(m.shape)
        fe = g.create_group("features")
        fe["name"] = np.array([f"GENE{i}" for i in range(n_genes)], dtype="S")
        fe["id"] = np.array([f"ENSG{i:011d}" for i in range(n_genes)], dtype="S")
        fe["feature_type"] = np.array(["Gene Expression"] * n_genes, dtype="S")
    full = root / name / f"{name}_fullres.tif"
    tifffile.imwrite(full, img, tile=(512, 512), resolution=(1e4 / UM, 1e4 / UM), resolutionunit="CENTIMETER")
    return {"section": name, "folder": str(outs), "image": str(full), "spots": n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", type=int, default=4)
    ap.add_argument("--genes", type=int, default=18000)
    ap.add_argument("--workdir", help="keep the study here (default: a temporary folder)")
    ap.add_argument("extra", nargs="*", help="more `train` arguments (after --)")
    a = ap.parse_args()
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        table = root / "samples.csv"
        if not table.is_file():
            rows = [write_section(root, f"S{i + 1}", section_image(i), a.genes, i) for i in range(a.sections)]
            pd.DataFrame(rows).drop(columns="spots").to_csv(table, index=False)
            print(f"wrote {a.sections} sections ({[r['spots'] for r in rows]} spots, {a.genes} genes) in "
                  f"{time.time() - t0:.0f}s", file=sys.stderr)
        out = root / "model.pt"
        cmd = [sys.executable, "-m", "napari_hggep.cli", "train", "--samples", str(table), "--hvg", "500",
               "--out", str(out), *a.extra]
        t0 = time.time()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        with open(root / "train.log", "w") as log:  # the command's own progress and timings
            r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        wall = time.time() - t0
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        if r.returncode:
            print((root / "train.log").read_text()[-3000:], file=sys.stderr)
            return 1
        card = json.loads(out.with_suffix(".json").read_text())
        m = card["metrics"]
        res = {"command": " ".join(cmd[3:]), "sections": a.sections, "genes_in_data": a.genes,
               "wall_s": round(wall, 1), "peak_rss_gb": round(peak_gb, 2),
               "peak_rss_note": "max RSS of the train process" if before == 0 else "max RSS of any child so far",
               "heldout_protocol": m.get("gene_pcc_protocol"), "heldout_pcc_mean": m.get("heldout_pcc_mean"),
               "heldout_sections": m.get("heldout_sections"), "recipe": card["extra"]["study"]["recipe"],
               "epochs_run": len(card["extra"]["history"])}
        print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
