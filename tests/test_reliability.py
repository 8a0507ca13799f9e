"""Per-slide reliability and the "unlike the training tissue" flag (issue 20): the calibration on
held-out folds, the bundled card's figures, what predict writes, and plain words in the CLI."""
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from napari_hggep.model.reliability import (assess, gene_reliability, prediction_spread, slide_signature,
                                     spread_of_components)
from napari_hggep.training.calibrate import calibrate, gene_rows
from napari_hggep.io.writers.export import write_prediction


def _section(name, rng, shift=0.0, n=200, f=12):
    stats = rng.normal(0, 1, (n, f)) + shift
    return SimpleNamespace(name=name, stats=stats)


def _fold_row(rng, q, strength):
    """A held-out section: each gene has its own predictability ``q`` (shared by the sections),
    and genes whose prediction varies more on this section are predicted better on it."""
    spread = np.exp(rng.normal(-1, 0.7, len(q)))
    pcc = np.clip(q + strength * np.log(spread) + 0.3 + rng.normal(0, 0.03, len(q)), -1, 1)
    return {"pcc": pcc.round(4).tolist(), "spread": spread.round(4).tolist(), "train": []}


def _ev(rng, g=300):
    q = rng.normal(0, 0.07, g)
    loso = {n: _fold_row(rng, q, 0.1) for n in ("A1", "A2", "A3", "B1")}
    lopo = {"B1": loso["B1"], **{n: _fold_row(rng, q, 0.08) for n in ("A1", "A2", "A3")}}
    return {"calibration": {"genes": [f"G{i}" for i in range(g)], "leave-one-section-out": loso,
                            "leave-one-patient-out": lopo, "signatures": {}},
            "protocol": {"patients": {"A1": "A", "A2": "A", "A3": "A", "B1": "B"}}}


def test_calibration_learns_the_spread_and_reports_each_fold(rng):
    ev = _ev(rng)
    secs = [_section("A1", rng), _section("A2", rng, 0.05), _section("A3", rng, -0.05), _section("B1", rng, 1.5)]
    rows = gene_rows(ev["calibration"], ev["protocol"]["patients"])
    # B1 is one whole patient: its leave-one-patient-out split is counted once
    assert sorted((r["fold"], r["section"]) for r in rows) == sorted(
        [("leave-one-patient-out", n) for n in ("A1", "A2", "A3", "B1")]
        + [("leave-one-section-out", n) for n in ("A1", "A2", "A3")])
    cal = calibrate(ev, secs)
    assert cal["gene"]["b"] > 0.05 and cal["gene"]["w_prior"] == 0.5  # more spread, more trust
    for f in cal["gene_folds"]:  # each fold scored with coefficients fitted on the other folds
        assert f["spearman_reliability"] > 0.6, f
        # both signals carry information here: together they rank better than either
        assert f["spearman_reliability"] > max(f["spearman_card"], f["spearman_spread"]), f
    sl = cal["slide"]
    # the shifted patient is unfamiliar to the others, the sections of patient A to each other are not
    by = {(f["test"], f["expected"]): f for f in sl["folds"]}
    assert not by[("A2", "familiar")]["flagged"]
    assert by[("B1", "unfamiliar")]["flagged"]
    assert sl["folds_correct"].split(" of ")[0] == sl["folds_correct"].split(" of ")[1]


def test_statistics_moved_by_resolution_are_left_out(rng):
    ev = _ev(rng)
    secs = [_section("A1", rng), _section("A2", rng), _section("A3", rng), _section("B1", rng, 1.0)]
    sig = slide_signature(secs[0].stats)
    moved = sig.copy()
    moved[3] += 5.0  # statistic 3 changes when A1 is resampled to a coarser scan resolution
    ev["calibration"]["signatures"] = {"A1@3.2um": moved.tolist()}
    cal = calibrate(ev, secs)
    assert 3 not in cal["slide"]["features"]
    assert len(cal["slide"]["features"]) == secs[0].stats.shape[1] - 1


def test_spread_of_components_is_the_spread_of_the_values(rng):
    c = rng.normal(size=(500, 6)) * [3, 1, 0.5, 0.2, 0.1, 0.01]
    b = rng.normal(size=(6, 40))
    tn = {"mean": rng.normal(size=40), "std": rng.random(40) + 0.5}
    values = (c @ b) * tn["std"] + tn["mean"]
    np.testing.assert_allclose(spread_of_components(c, b), prediction_spread(values, tn), rtol=1e-9)
    assert np.array_equal(spread_of_components(c[:1], b), np.zeros(40))


def test_assess_and_gene_reliability_numbers():
    pred = np.array([[0.0, 1.0, 2.0], [0.0, 3.0, 2.0], [0.0, 5.0, 2.1]])
    spread = prediction_spread(pred, {"std": [1.0, 2.0, 1.0]})
    np.testing.assert_allclose(spread, [0.0, np.std([1, 3, 5]) / 2, np.std([2, 2, 2.1])], rtol=1e-6)
    coef = {"a": 0.1, "b": 0.05, "prior_fill": 0.2, "prior_mean": 0.1, "prior_sd": 0.1, "spread_mean": -2.0,
            "spread_sd": 0.5, "w_prior": 0.5}
    rel = gene_reliability(np.array([0.4, np.nan, 0.1]), spread, coef)
    assert np.isnan(rel[1])  # no held-out PCC: no expected figure (issue 25), never the folds' mean
    score0 = 0.5 * (0.4 - 0.1) / 0.1 + 0.5 * (np.log(1e-3) + 2.0) / 0.5  # a flat map: spread clipped at 1e-3
    assert rel[0] == pytest.approx(0.1 + 0.05 * score0, abs=1e-6)
    out = assess(pred, None, ["a", "b", "c"], {"a": 0.4, "c": 0.1}, {"std": [1.0, 2.0, 1.0]}, {"gene": coef})
    assert set(out) == {"spread", "slide_reliability"}  # no statistics: no slide score


# ------------------------------------------------------------------ the bundled model

@pytest.fixture(scope="module")
def card():
    from napari_hggep.model._bundled import bundled_card

    c = bundled_card()
    if not c.genes:
        pytest.skip("no bundled model")
    return c


def test_bundled_card_is_calibrated_on_folds(card):
    rel = card.calibration
    assert {"a", "b", "w_prior", "prior_mean", "prior_sd", "spread_mean", "spread_sd"} <= set(rel["gene"])
    folds = rel["gene_folds"]
    assert {f["fold"] for f in folds} == {"leave-one-section-out", "leave-one-patient-out"}
    assert all(f["spearman_reliability"] is not None for f in folds)
    sl = rel["slide"]
    assert len(sl["train_signatures"]) == len(card.sections) and sl["threshold"] > 0
    assert sl["statistics"] and len(sl["statistics"]) == len(sl["features"])
    # resolution is not what makes a slide unfamiliar: no resampled copy of a patient-C section is flagged
    res = [f for f in sl["folds"] if "@" in f["test"] and f["expected"] == "familiar"]
    assert res and not any(f["flagged"] for f in res)


def test_predict_carries_reliability_into_every_output(bundle, tmp_path):
    import anndata as ad

    from napari_hggep._napari.sample import sample_slide
    from napari_hggep.inference.predict import predict_slide

    pred = predict_slide(bundle, sample_slide())
    rel = np.asarray(pred.reliability.slide_reliability)
    known = np.array([bundle.gene_pcc().get(g) is not None for g in pred.genes])
    assert rel.shape == (len(pred.genes),) and (np.isfinite(rel) == known).all()  # no held-out PCC: none here
    assert pred.reliability.unfamiliar is False  # the sample is a training section (B4)
    # the spread comes from the low-rank components: it equals the values' own spread wherever
    # clipping at 0 left a gene untouched
    ok = (pred.values > 0).all(axis=0)
    assert ok.sum() > 100
    ref = prediction_spread(pred.values[:, ok], {"std": np.asarray(bundle.target_norm["std"])[ok]})
    np.testing.assert_allclose(np.asarray(pred.reliability.spread)[ok], ref, rtol=1e-3, atol=1e-6)
    # the estimate follows the prediction's own spread for genes of equal held-out PCC
    write_prediction(pred, tmp_path / "p.h5ad")
    a = ad.read_h5ad(tmp_path / "p.h5ad")
    np.testing.assert_allclose(a.var["slide_reliability"].to_numpy(), rel, rtol=1e-6)
    assert a.uns["napari_hggep"]["unfamiliar"] is False or a.uns["napari_hggep"]["unfamiliar"] == 0
    assert a.uns["napari_hggep"]["unfamiliar_score"] < a.uns["napari_hggep"]["unfamiliar_threshold"]
    write_prediction(pred, tmp_path / "p.csv", genes=["GNAS", "ERBB2"])
    t = pd.read_csv(tmp_path / "p.genes.csv", index_col=0)
    assert list(t.index) == ["GNAS", "ERBB2"]
    assert {"heldout_pcc", "reliable", "slide_reliability", "spread", "slide_unfamiliar"} <= set(t.columns)
    assert t.loc["ERBB2", "slide_reliability"] == pytest.approx(rel[pred.genes.index("ERBB2")], abs=1e-6)


def test_an_ihc_slide_is_flagged_unlike_the_training_tissue(tmp_path, capsys):
    """A DAB/haematoxylin IHC image (scikit-image's) is not H&E: the CLI says so and the h5ad
    records it."""
    import anndata as ad
    from PIL import Image
    from skimage import data

    from napari_hggep.cli import main

    img = data.immunohistochemistry()  # 512 x 512
    big = np.asarray(Image.fromarray(img).resize((1536, 1536), Image.BILINEAR))
    Image.fromarray(big).save(tmp_path / "ihc.png")
    assert main(["predict", str(tmp_path / "ihc.png"), "--grid", "--pitch-um", "100", "--um-per-px", "0.5",
                 "-o", str(tmp_path / "ihc.h5ad"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "unlike the tissue the model was trained on" in err
    a = ad.read_h5ad(tmp_path / "ihc.h5ad")
    assert bool(a.uns["napari_hggep"]["unfamiliar"]) is True
    assert a.uns["napari_hggep"]["unfamiliar_score"] > a.uns["napari_hggep"]["unfamiliar_threshold"]
    assert "slide_reliability" in a.var


def test_card_json_says_what_the_folds_showed(card):
    """The README's reliability table comes from the card: every fold has its three Spearman figures."""
    rows = card.calibration["gene_folds"]
    text = json.dumps(rows)
    for key in ("spearman_card", "spearman_spread", "spearman_reliability"):
        assert key in text


# ------------------------------------------------------------------ the gene selector (a real viewer)

def test_gene_selector_shows_and_sorts_by_this_slides_reliability(make_napari_viewer, qtbot):
    pytest.importorskip("napari")
    from napari_hggep._napari.layers import KEY
    from napari_hggep._napari.predict_widget import PredictWidget
    from napari_hggep._napari.widgets.genes import SORT_CHOICES
    from helpers import caption

    viewer = make_napari_viewer()
    viewer.open_sample("napari-hggep", "he_spots")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=180_000)
    layer = viewer.layers["HER2+ B4 genes"]
    info = layer.metadata[KEY]
    assert len(info.prediction.reliability.slide_reliability) == len(info.genes)
    here = info.per_gene(info.prediction.reliability.slide_reliability)
    box = w.gene.native
    labels = [box.itemText(i) for i in range(box.count())]
    genes = [box.itemData(i) for i in range(box.count())]
    assert all(" · here " in t for t, g in zip(labels, genes) if np.isfinite(here[g]))  # none without a held-out PCC
    w.sort_by.value = SORT_CHOICES[1]
    genes = [box.itemData(i) for i in range(box.count())]
    vals = [here[g] for g in genes]
    assert vals == sorted(vals, reverse=True) and genes[0] == max(here, key=here.get)
    tip = box.toolTip()
    assert "5 held-out sections of 2 patients" in tip and "new patient" in tip and "calibrated on" in tip
    w.gene.value = genes[0]
    assert f"expected PCC on this slide {here[genes[0]]:.2f}" in w.gene_info.value
    assert f"expected here {here[genes[0]]:.2f}" in caption(viewer).text
    assert "Unlike the training tissue" not in w.status.value  # the sample is a training section
    w.sort_by.value = SORT_CHOICES[2]
    assert [box.itemData(i) for i in range(3)] == sorted(layer.metadata[KEY].genes, key=str.upper)[:3]
