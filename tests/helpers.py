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


def smooth_he(h, w, seed=0) -> np.ndarray:
    """:func:`he_like_image` blurred by a 3 px Gaussian: tissue without pixel noise."""
    from scipy import ndimage as ndi

    img = he_like_image(h, w, seed=seed).astype(np.float32)
    return np.stack([ndi.gaussian_filter(img[..., c], 3) for c in range(3)], -1).round().astype(np.uint8)


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


VIT = "vit_tiny_patch16_224"  # a small timm ViT for the encoder tests (random init, 112 px input)


def save_random_vit(path: Path, seed: int) -> Path:
    """A random-init timm ViT's weights saved to ``path``: the real loading code, nothing downloaded."""
    import timm
    import torch

    torch.manual_seed(seed)
    torch.save(timm.create_model(VIT, pretrained=False, img_size=112).state_dict(), path)
    return path


def write_10x_h5(path: Path, barcodes, genes, ids, counts) -> Path:
    """A 10x feature-barcode matrix (``counts``: spots x genes, dense or sparse), as Space Ranger writes it."""
    import h5py
    from scipy import sparse

    m = sparse.csc_matrix(sparse.csr_matrix(counts).T)  # features x barcodes, compressed by barcode
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(list(barcodes), dtype="S")
        g["data"], g["indices"], g["indptr"] = m.data.astype(np.int32), m.indices, m.indptr
        g["shape"] = np.array(m.shape)
        fe = g.create_group("features")
        fe["name"] = np.array(list(genes), dtype="S")
        fe["id"] = np.array(list(ids), dtype="S")
        fe["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
    return path


def study_counts(img: np.ndarray, xy: np.ndarray, n_genes: int, seed: int = 0) -> np.ndarray:
    """Counts that follow the tissue: the first tenth of the genes rise with the local darkness of
    the image (predictable from it), the rest are noise; sparse like real spot counts."""
    rng = np.random.default_rng(seed)
    grey = img.mean(axis=2)
    h, w = grey.shape
    dark = np.array([255 - grey[max(int(y) - 8, 0):min(int(y) + 8, h), max(int(x) - 8, 0):min(int(x) + 8, w)].mean()
                     for x, y in xy])
    dark = (dark - dark.mean()) / (dark.std() + 1e-9)
    n_sig = max(n_genes // 10, 1)
    rate = np.full((len(xy), n_genes), 0.15)
    rate[:, :n_sig] = np.exp(0.8 * dark[:, None] + rng.normal(0, 0.2, (1, n_sig))) * 2
    return rng.poisson(rate).astype(np.int32)


def write_visium_study_section(root: Path, name: str, img_full: np.ndarray, n_genes: int = 2000, seed: int = 0,
                               blank_hires: bool = True) -> tuple[Path, Path]:
    """A Space Ranger outs/ folder with a sparse matrix of ``n_genes`` genes (symbols and Ensembl
    ids), and its full-resolution TIFF beside outs/ (Space Ranger does not copy it in). The hires
    PNG is black unless ``blank_hires`` is False, so a test can tell which image was used."""
    import pandas as pd
    import tifffile
    from PIL import Image

    outs = write_visium(root / name / "outs", img_full, with_h5=False)
    pos = pd.read_csv(outs / "spatial" / "tissue_positions.csv")
    pos = pos[pos.in_tissue == 1]
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    genes = [f"GENE{i}" for i in range(n_genes)]
    ids = [f"ENSG{i:011d}" for i in range(n_genes)]
    write_10x_h5(outs / "filtered_feature_bc_matrix.h5", pos.barcode, genes, ids, study_counts(img_full, xy, n_genes, seed))
    if blank_hires:
        hires = outs / "spatial" / "tissue_hires_image.png"
        Image.fromarray(np.zeros_like(np.asarray(Image.open(hires)))).save(hires)
    full = root / name / f"{name}_fullres.tif"
    tifffile.imwrite(full, img_full)
    return outs, full


def write_visium_hd(root: Path, img_full: np.ndarray, mpp: float = 0.5, bins=(2, 8, 16), hires_scalef: float = 0.25,
                    lowres_scalef: float = 0.1, tissue=None) -> Path:
    """A Space Ranger 3+ Visium HD ``outs/`` folder as 10x documents it: ``binned_outputs/square_XXXum/``
    with ``spatial/tissue_positions.parquet`` (barcode, in_tissue, array_row, array_col,
    pxl_row_in_fullres, pxl_col_in_fullres), ``spatial/scalefactors_json.json`` (``bin_size_um``,
    ``microns_per_pixel``, ``spot_diameter_fullres`` = the bin side in full-resolution pixels, hires and
    lowres scale factors) and the hires / lowres PNGs; ``outs/spatial/`` holds the PNGs too. Bins are in
    tissue over he_like_image's blob (or where ``tissue(x, y)`` is true). Returns ``outs``."""
    import pandas as pd
    from PIL import Image

    outs = root / "outs"
    h, w = img_full.shape[:2]
    pngs = {}
    for kind, s in (("hires", hires_scalef), ("lowres", lowres_scalef)):
        size = (max(1, round(w * s)), max(1, round(h * s)))
        pngs[kind] = Image.fromarray(img_full).resize(size, Image.NEAREST)  # keeps the texture, like a scan
    if tissue is None:
        def tissue(x, y):
            return ((y - h / 2) / (h * 0.3)) ** 2 + ((x - w / 2) / (w * 0.3)) ** 2 < 0.8
    base = {"tissue_hires_scalef": hires_scalef, "tissue_lowres_scalef": lowres_scalef, "microns_per_pixel": mpp,
            "regist_target_img_scalef": hires_scalef, "fiducial_diameter_fullres": 100.0}
    (outs / "spatial").mkdir(parents=True, exist_ok=True)
    for kind, im in pngs.items():
        im.save(outs / "spatial" / f"tissue_{kind}_image.png")
    json.dump({**base, "bin_size_um": 2.0, "spot_diameter_fullres": 2.0 / mpp},
              open(outs / "spatial" / "scalefactors_json.json", "w"))
    for b in bins:
        sp = outs / "binned_outputs" / f"square_{b:03d}um" / "spatial"
        sp.mkdir(parents=True, exist_ok=True)
        side = b / mpp
        rows = []
        for r in range(int(h // side)):
            for c in range(int(w // side)):
                x, y = (c + 0.5) * side, (r + 0.5) * side
                rows.append((f"s_{b:03d}um_{r:05d}_{c:05d}-1", int(tissue(x, y)), r, c, y, x))
        pd.DataFrame(rows, columns=["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                                    "pxl_col_in_fullres"]).to_parquet(sp / "tissue_positions.parquet", index=False)
        json.dump({**base, "bin_size_um": float(b), "spot_diameter_fullres": side},
                  open(sp / "scalefactors_json.json", "w"))
        for kind, im in pngs.items():
            im.save(sp / f"tissue_{kind}_image.png")
    return outs


def _bundled_gene_count() -> int:
    """How many genes the bundled model predicts (from its card; 0 when none is bundled)."""
    from napari_hggep.model._bundled import bundled_card

    return len(bundled_card().genes)


N_BUNDLED = _bundled_gene_count()


def wait_predict(qtbot, w, timeout=180_000):
    """Start the widget's prediction and wait until its worker is gone. The worker may finish
    before a signal could be connected here, so the widget's state is polled."""
    w.run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=timeout)


def shown(widget) -> bool:
    """Shown in its dock (magicgui's ``visible`` is False for every widget of a dock not on screen, as
    in these tests, so the Qt widget's own hidden flag is asked)."""
    return not widget.native.isHidden()


def wait_idle(qtbot, w, timeout=120_000):
    """Wait until a dock's job (an export, a folder read again, a prediction) has ended."""
    qtbot.waitUntil(lambda: w.worker is None, timeout=timeout)


def caption(viewer):
    """The canvas text overlay the gene's caption goes to (napari >= 0.9: ``viewer.canvas.overlays.text``;
    ``viewer.text_overlay`` is deprecated there)."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    return overlays.text if overlays is not None else viewer.text_overlay
