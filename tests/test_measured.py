"""Measured beside predicted (issue 25): a slide whose source has counts carries them in the
target space and each gene's PCC on it, in every export; nothing is read for a slide without
counts; no confident figures where the model has no evidence. Real files, the bundled model."""
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from helpers import he_like_image, study_counts, write_10x_h5, write_her2st, write_visium, write_visium_hd
from napari_hggep import load_model, open_slide, predict_slide
from napari_hggep.cli import main
from napari_hggep.model.reliability import assess, gene_reliability, slide_verdict
from napari_hggep.training.metrics import gene_pcc
from napari_hggep.io.writers.export import write_prediction


@pytest.fixture(scope="module")
def bundle():
    return load_model()


def _independent(counts: np.ndarray) -> np.ndarray:
    """What a scanpy user computes: normalize_total to the median library size, then log1p."""
    tot = counts.sum(axis=1, keepdims=True).astype(float)
    return np.log1p(counts / np.where(tot > 0, tot, 1) * np.median(tot))


def _visium_with_counts(root, genes, seed=0, drop=0):
    """A Space Ranger outs/ folder whose sparse matrix lists ``genes`` for every in-tissue spot
    but the last ``drop`` ones."""
    img = he_like_image(520, 700, seed=seed)
    outs = write_visium(root / "S1" / "outs", img, with_h5=False)
    pos = pd.read_csv(outs / "spatial" / "tissue_positions.csv")
    pos = pos[pos.in_tissue == 1]
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    counts = study_counts(img, xy, len(genes), seed) + np.random.default_rng(seed).poisson(2, (len(xy), len(genes)))
    keep = slice(0, len(xy) - drop)
    write_10x_h5(outs / "filtered_feature_bc_matrix.h5", pos.barcode[keep], genes,
                 [f"ENSG{i:011d}" for i in range(len(genes))], counts[keep])
    return outs, pos.barcode.to_numpy()[keep], counts[keep]


def test_space_ranger_counts_beside_the_prediction_in_h5ad_and_csv(bundle, tmp_path):
    genes = list(bundle.genes[:60]) + ["NOT_PREDICTED1", "NOT_PREDICTED2"]
    outs, barcodes, counts = _visium_with_counts(tmp_path, genes, drop=3)
    h5ad, csv = tmp_path / "p.h5ad", tmp_path / "p.csv"
    assert main(["predict", str(outs), "-o", str(h5ad), "-o", str(csv), "--genes", ",".join(genes[:5])]) == 0
    a = ad.read_h5ad(h5ad)
    assert sparse.issparse(a.layers["measured"]) and a.layers["measured"].shape == a.shape
    has = a.obs["has_counts"].to_numpy()
    assert has.sum() == len(barcodes) and (~has).sum() == 3  # in tissue, not in the matrix
    assert a.layers["measured"][~has].nnz == 0
    ind = pd.DataFrame(_independent(counts), index=barcodes, columns=genes).loc[a.obs_names[has], list(a.var_names)]
    mine = np.asarray(a.layers["measured"][has].todense())
    r = gene_pcc(mine, ind.to_numpy())
    assert np.nanmin(r) > 0.999
    want = gene_pcc(np.asarray(a.X)[has].astype(float), ind.to_numpy())
    np.testing.assert_allclose(a.var["measured_pcc"].to_numpy(), want, atol=1e-4)
    info = a.uns["napari_hggep"]
    assert "normalize_total" in info["measured_normalisation"] and info["measured_spots"] == has.sum()
    assert "smoother" in info["values_are"] and "weight 0.5" in info["neighbour_blending"]
    # CSV: measured columns beside the genes, empty where a spot has no counts; PCC in the gene table
    t = pd.read_csv(csv)
    assert [c for c in t.columns if c.startswith("measured:")] == [f"measured:{g}" for g in genes[:5]]
    assert t.set_index("spot_id").loc[a.obs_names[~has], "measured:" + genes[0]].isna().all()
    gt = pd.read_csv(tmp_path / "p.genes.csv", index_col=0)
    np.testing.assert_allclose(gt["measured_pcc"].to_numpy(), a.var["measured_pcc"].to_numpy()[:5], atol=1e-6)


def test_her2st_and_hd_counts_are_compared_and_absent_genes_have_no_pcc(bundle, tmp_path):
    genes = list(bundle.genes[:30])
    folder = write_her2st(tmp_path / "ST1", he_like_image(520, 520), genes=genes[:20])
    pred = predict_slide(bundle, open_slide(folder))
    m = pred.measured
    assert m is not None and m.n_spots == pred.values.shape[0] and m.values.shape == pred.values.shape
    assert np.isnan(m.pcc[[pred.genes.index(g) for g in genes[20:30]]]).all()  # not in the counts
    assert set(genes[20:30]) <= set(m.genes_absent)
    raw = pd.read_csv(folder / "counts.tsv.gz", sep="\t", index_col=0).loc[pred.spot_ids]
    ind = _independent(raw.to_numpy(float))
    j = [pred.genes.index(g) for g in genes[:20]]
    assert np.nanmin(gene_pcc(np.asarray(m.values[:, j].todense()), ind)) > 0.999
    assert any(line.startswith("measured on this slide") for line in slide_verdict(pred))

    # Visium HD: the bin folder's own matrix, kept sparse
    img = he_like_image(640, 800)
    outs = write_visium_hd(tmp_path / "hd", img, mpp=0.5, bins=(16,))
    b16 = outs / "binned_outputs" / "square_016um"
    pos = pd.read_parquet(b16 / "spatial" / "tissue_positions.parquet")
    pos = pos[pos.in_tissue == 1]
    c = study_counts(img, pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float), 40)
    write_10x_h5(b16 / "filtered_feature_bc_matrix.h5", pos.barcode, list(bundle.genes[:40]),
                 [f"E{i}" for i in range(40)], c)
    hd = predict_slide(bundle, open_slide(outs))
    assert hd.measured is not None and sparse.issparse(hd.measured.values)
    assert hd.measured.n_spots == len(pos) and np.isfinite(hd.measured_pcc[:20]).any()


def test_no_counts_nothing_read_and_bad_counts_never_cost_the_prediction(bundle, tmp_path):
    outs = write_visium(tmp_path / "S" / "outs", he_like_image(520, 700), with_h5=False)
    pred = predict_slide(bundle, open_slide(outs))
    assert pred.measured is None and pred.measured_pcc is None
    a = write_prediction(pred, tmp_path / "p.h5ad")
    assert "measured" not in ad.read_h5ad(a).layers
    (outs / "filtered_feature_bc_matrix.h5").write_bytes(b"not an HDF5 file")
    with pytest.warns(UserWarning, match="not compared"):
        pred = predict_slide(bundle, open_slide(outs))
    assert pred.values.shape[0] > 0 and "not a readable 10x" in pred.measured_error


CALIB = {"gene": {"prior_mean": 0.1, "prior_sd": 0.1, "spread_mean": -2.0, "spread_sd": 0.5, "a": 0.05, "b": 0.1,
                  "protocol": "leave-one-patient-out folds"},
         "slide": {"features": [0, 1, 2], "feature_scale": [1.0, 1.0, 1.0], "train_signatures": [[0, 0, 0], [1, 1, 1]],
                   "distance_scale": 1.0, "threshold": 2.0}}


def test_no_confident_figures_without_evidence():
    values = np.random.default_rng(0).random((50, 3)).astype(np.float32)
    card = {"G0": 0.4, "G1": 0.2}  # G2 has no held-out PCC
    genes = ["G0", "G1", "G2"]
    near = np.zeros((50, 3))
    ok = assess(values, near, genes, card, None, CALIB, um_per_px=0.5, trained_um_per_px=(0.25, 4.0))
    assert not ok["unfamiliar"] and np.isfinite(ok["slide_reliability"][:2]).all()
    assert np.isnan(ok["slide_reliability"][2])  # no held-out PCC, no expected figure
    for stats, um, why in ((near + 10, 0.5, "unlike the tissue"), (near * np.nan, 0.5, "cannot be scored"),
                           (near, 0.05, "outside the 0.25-4")):
        r = assess(values, stats, genes, card, None, CALIB, um_per_px=um, trained_um_per_px=(0.25, 4.0))
        assert np.isnan(r["slide_reliability"]).all() and why in r["reliability_unknown"]
        if why != "outside the 0.25-4":
            assert r["unfamiliar"] is True  # a NaN score is not "familiar"
    assert np.isnan(gene_reliability(np.array([np.nan, 0.3]), np.array([0.1, 0.1]), CALIB["gene"]))[0]


def test_unknown_slides_export_no_reliable_gene_and_say_why(bundle, tmp_path):
    slide = open_slide(write_her2st(tmp_path / "ST1", he_like_image(520, 520), genes=list(bundle.genes[:5])))
    slide.um_per_px = 12.0  # a typo: far coarser than anything trained on
    pred = predict_slide(bundle, slide)
    assert np.isnan(pred.reliability.slide_reliability).all()
    assert "outside" in pred.reliability.unknown_because
    assert any("expected PCC on this slide: unknown" in line for line in slide_verdict(pred))
    a = ad.read_h5ad(write_prediction(pred, tmp_path / "p.h5ad"))
    assert not a.var["reliable"].any() and "outside" in a.uns["napari_hggep"]["slide_reliability_unknown_because"]


def test_the_bundled_card_is_calibrated_on_new_patients(bundle):
    from napari_hggep.training.calibrate import gene_rows, new_patient_coef

    gene = bundle.reliability()["gene"]
    assert gene["protocol"].startswith("leave-one-patient-out") and gene["intercept_shift"] <= 0
    # the rule: fitted on the new-patient folds only, never above what the worst patient got
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(200)]
    mk = lambda mu: {"pcc": list(rng.normal(mu, 0.1, 200)), "spread": list(np.exp(rng.normal(-2, 0.5, 200)))}  # noqa: E731
    calib = {"genes": genes, "leave-one-section-out": {"A1": mk(0.4), "A2": mk(0.4), "B1": mk(0.3)},
             "leave-one-patient-out": {"A1": mk(0.05), "A2": mk(0.05), "B1": mk(0.2)}}
    pats = {"A1": "A", "A2": "A", "B1": "B"}
    coef = new_patient_coef(gene_rows(calib, pats), pats)
    assert coef["protocol"].startswith("leave-one-patient-out") and coef["intercept_shift"] < 0
    for sec in ("A1", "A2"):  # the worse patient's mean is not overclaimed
        r = calib["leave-one-patient-out"][sec]
        prior = np.mean([calib["leave-one-patient-out"]["B1"]["pcc"]], axis=0)
        est = gene_reliability(prior, np.asarray(r["spread"]), coef)
        assert est.mean() <= np.mean(r["pcc"]) + 0.02
    one = new_patient_coef(gene_rows({**calib, "leave-one-patient-out": {}}, {}), {})
    assert "one patient" in one["protocol"]


def test_score_an_existing_model_without_training(bundle, tmp_path):
    from napari_hggep.io.readers.samples import rows_from_data_dir
    from napari_hggep.evaluation.scoring import check_score_dir, score_model, write_score

    genes = list(bundle.genes[:60])
    outs, barcodes, counts = _visium_with_counts(tmp_path / "data", genes)
    res = score_model(bundle, rows_from_data_dir(tmp_path / "data"))
    row = res["per_section"][0]
    pred = predict_slide(bundle, open_slide(outs))
    ind = pd.DataFrame(_independent(counts), index=barcodes, columns=genes).loc[pred.spot_ids]
    want = gene_pcc(pred.values[:, :60].astype(float), ind.to_numpy())
    assert abs(row["pcc_mean"] - np.nanmean(want)) < 0.005 and not row["in_training"]
    assert res["summary"]["pcc_mean"] == pytest.approx(row["pcc_mean"])
    paths = write_score(res, check_score_dir(tmp_path / "out"))
    genes_csv = pd.read_csv(paths[3], index_col=0)
    np.testing.assert_allclose(genes_csv.loc[genes, "pcc_mean"].to_numpy(), want, atol=2e-4)
    assert json.loads(paths[0].read_text())["protocol"]["kind"].startswith("score")


def test_evaluate_without_loo_scores_the_bundled_model_from_the_command_line(bundle, tmp_path, capsys):
    genes = list(bundle.genes[:50])
    _visium_with_counts(tmp_path / "data", genes)
    out = tmp_path / "res"
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--out", str(out), "--device", "cpu"]) == 0
    table = pd.read_csv(out / "score_sections.csv")
    assert list(table.section) == ["S1"] and not table.in_training[0] and table.n_genes_scored[0] == 50
    assert "| S1 |" in capsys.readouterr().out
    # a file where the folder should go is refused before any prediction
    bad = tmp_path / "file"
    bad.write_text("x")
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--out", str(bad)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_counts_from_a_spatialdata_store_and_from_a_table_beside_an_image(bundle, tmp_path):
    """The two other sources: the raw counts table of a store spatialdata-io wrote, and an
    ``.h5ad`` counts table beside an image with its spot table."""
    sdio = pytest.importorskip("spatialdata_io")
    genes = list(bundle.genes[:30])
    outs, barcodes, counts = _visium_with_counts(tmp_path, genes)
    store = tmp_path / "S1.zarr"
    sdio.visium(outs, dataset_id="S1").write(store)
    pred = predict_slide(bundle, open_slide(store, um_per_px=55 / 20))
    assert pred.measured is not None and pred.measured.n_spots == len(barcodes)
    ind = _independent(counts)
    order = pd.Index(barcodes)  # spatialdata-io numbers the spots in the matrix's order
    got = np.asarray(pred.measured.values[:, :30].todense())[np.argsort(pred.spot_ids.astype(int))]
    assert np.nanmin(gene_pcc(got, ind[: len(order)])) > 0.999
    # an image, its spot table and counts.h5ad beside them
    from PIL import Image

    folder = tmp_path / "img"
    folder.mkdir()
    img = he_like_image(520, 700)
    Image.fromarray(img).save(folder / "he.png")
    pos = pd.read_csv(outs / "spatial" / "tissue_positions.csv")
    pos = pos[pos.in_tissue == 1]
    pd.DataFrame({"spot_id": pos.barcode, "x": pos.pxl_col_in_fullres, "y": pos.pxl_row_in_fullres}).to_csv(
        folder / "spots.csv", index=False)
    ad.AnnData(X=sparse.csr_matrix(counts.astype(np.float32)), obs=pd.DataFrame(index=barcodes),
               var=pd.DataFrame(index=genes)).write_h5ad(folder / "counts.h5ad")
    p2 = predict_slide(bundle, open_slide(folder / "he.png", spots=folder / "spots.csv", um_per_px=55 / 20))
    assert p2.measured is not None and "counts.h5ad" in p2.measured.source and p2.measured.n_spots == len(barcodes)
