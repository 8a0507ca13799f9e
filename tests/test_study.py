"""Training on a user's own study: samples tables over Space Ranger, HER2+ ST and image + table
folders written to disk, gene panels from the data, held-out PCC in the card, bad input."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from helpers import he_like_image, study_counts, write_her2st, write_visium_study_section
from napari_hggep.cli import main
from napari_hggep.io.readers.samples import read_10x_h5_sparse, read_labelled_section, read_samples_table
from napari_hggep.training.panel import panel_from_list, select_hvg


@pytest.fixture(scope="module")
def visium_study(tmp_path_factory):
    """Three Space Ranger sections with 2,000 genes, full-resolution TIFFs beside outs/, black hires PNGs."""
    root = tmp_path_factory.mktemp("study")
    rows = []
    for i in range(3):
        outs, full = write_visium_study_section(root, f"V{i + 1}", he_like_image(500, 420, seed=10 + i), seed=i)
        rows.append({"section": f"V{i + 1}", "folder": f"V{i + 1}/outs", "image": f"V{i + 1}/V{i + 1}_fullres.tif"})
    pd.DataFrame(rows).to_csv(root / "samples.csv", index=False)
    return root


def test_sparse_h5_every_gene_never_dense(visium_study):
    x, names, ids, barcodes = read_10x_h5_sparse(visium_study / "V1" / "outs" / "filtered_feature_bc_matrix.h5")
    assert sparse.issparse(x) and x.shape == (64, 2000) and x.nnz < 0.5 * x.shape[0] * x.shape[1]
    assert names[0] == "GENE0" and ids[0] == "ENSG00000000000" and barcodes[0].startswith("BC")
    lab = read_labelled_section(read_samples_table(visium_study / "samples.csv")[0])
    # the full-resolution TIFF given in the table, not the (black) hires PNG
    assert lab.slide.source.endswith("V1_fullres.tif") and lab.slide.um_per_px == pytest.approx(55 / 20)
    assert sparse.issparse(lab.counts) and lab.counts.shape == (64, 2000)


def test_train_from_samples_table_hvg_heldout_card_and_predict(visium_study, tmp_path, capsys):
    ck = tmp_path / "m.pt"
    rc = main(["train", "--samples", str(visium_study / "samples.csv"), "--hvg", "40", "--epochs", "2",
               "--device", "cpu", "--out", str(ck)])
    err = capsys.readouterr().err
    assert rc == 0, err
    card = json.loads(ck.with_suffix(".json").read_text())
    m = card["metrics"]
    assert len(card["genes"]) == 40 and card["extra"]["study"]["panel"]["source"] == "hvg"
    assert "variance of log-normalised expression" in card["extra"]["study"]["panel"]["rule"]
    assert m["gene_pcc_protocol"] == "leave-one-section-out" and set(m["heldout_sections"]) == {"V1", "V2", "V3"}
    assert set(m["gene_pcc"]) == set(card["genes"])
    # the genes that follow the tissue are chosen first and are predicted on held-out sections
    signal = [g for g in card["genes"] if int(g[4:]) < 200]
    assert len(signal) >= 30
    assert np.nanmean([m["gene_pcc"][g] for g in signal if m["gene_pcc"][g] is not None]) > 0.15
    # the image path is measured in the held-out folds and kept only when it earns its place (issue 28)
    img = m["image_path_heldout"]
    assert img["gain"] == pytest.approx(img["heldout_pcc_both"] - img["heldout_pcc_statistics_only"], abs=2e-4)
    assert img["kept"] == (img["gain"] >= 0.005) and card["config"]["image_path"] == img["kept"]
    assert ("image path kept" if img["kept"] else "image path left out of the final model") in err
    if img["kept"]:
        assert card["extra"]["initialised_from"]["checkpoint"] == "hggep_compact_her2st.pt"
    else:
        assert "image path left out" in card["extra"]["study"]["recipe"]
        assert m["heldout_pcc_mean"] == pytest.approx(img["heldout_pcc_statistics_only"], abs=2e-4)
    # the study's own folds calibrate the per-slide reliability (one fold per held-out section)
    rel = m["reliability"]
    assert {f["section"] for f in rel["gene_folds"]} == {"V1", "V2", "V3"}
    assert rel["gene"]["w_prior"] == 0.5 and len(rel["slide"]["train_signatures"]) == 3
    assert not any(f["flagged"] for f in rel["slide"]["folds"] if f["expected"] == "familiar")
    assert not Path(str(ck) + ".state").exists() and not Path(str(ck) + ".study.json").exists()
    # the study's model predicts a new section of the study
    outs, full = write_visium_study_section(tmp_path, "V9", he_like_image(500, 420, seed=99), seed=9)
    out = tmp_path / "p.csv"
    assert main(["predict", str(full), "--visium", str(outs), "--model", str(ck), "-o", str(out)]) == 0
    pred = pd.read_csv(out)
    assert len(pred) == 64 and set(card["genes"]) <= set(pred.columns)


def test_blank_image_genes_not_found_and_missing_inputs_are_clear(visium_study, tmp_path, capsys):
    # without the image column the section's own (black) hires PNG is used: refused
    pd.DataFrame({"section": ["V1", "V2"], "folder": ["V1/outs", "V2/outs"]}).to_csv(visium_study / "noimg.csv",
                                                                                   index=False)
    rc = main(["train", "--samples", str(visium_study / "noimg.csv"), "--hvg", "10", "--out", str(tmp_path / "m.pt")])
    assert rc == 2 and "shows no tissue under the spots" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
    # a gene list in another naming: most genes not found -> error with examples
    (tmp_path / "genes.txt").write_text("\n".join(["ERBB2", "GNAS", "FN1", "GENE1"]) + "\n")
    rc = main(["train", "--samples", str(visium_study / "samples.csv"), "--genes", str(tmp_path / "genes.txt"),
               "--out", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and "3 of 4 genes of the list are not in its counts (e.g. ERBB2, GNAS, FN1)" in err
    assert "GENE0" in err  # says how the section names its genes
    # no data at all; a table naming a missing folder
    rc = main(["train", "--out", str(tmp_path / "m.pt")])
    assert rc == 2 and "--samples" in capsys.readouterr().err
    pd.DataFrame({"section": ["X"], "folder": ["nowhere"]}).to_csv(tmp_path / "bad.csv", index=False)
    rc = main(["train", "--samples", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and "section X" in err and "does not exist" in err


def test_gene_list_by_ensembl_id_or_symbol(visium_study):
    secs = [read_labelled_section(r) for r in read_samples_table(visium_study / "samples.csv")[:2]]
    p = panel_from_list(["ENSG00000000003.7", "GENE5", "gene7"], secs)  # id with version, symbol, other case
    assert p.genes == ["ENSG00000000003.7", "GENE5", "gene7"] and not p.missing
    from napari_hggep.training.panel import panel_counts

    np.testing.assert_array_equal(panel_counts(secs[0], p.genes), secs[0].counts[:, [3, 5, 7]].toarray())


def test_hvg_rule_uses_within_section_variance_and_detection():
    rng = np.random.default_rng(0)

    class Sec:
        def __init__(self, x, name):
            self.counts, self.symbols, self.ids, self.name = sparse.csr_matrix(x), np.array(names), None, name

    names = ["flat", "varies", "rare", "offset"]
    secs = []
    for s in range(2):
        x = np.zeros((200, 4))
        x[:, 0] = 5
        x[:, 1] = rng.poisson(np.where(np.arange(200) < 100, 1, 20))
        x[:5, 2] = 200  # very variable but detected in 2.5 % of spots
        x[:, 3] = 3 + 20 * s  # differs between sections only
        x[:, :] += rng.poisson(1, (200, 4)) * (x > 0)
        secs.append(Sec(x + 10 * (np.arange(4) == 0), f"s{s}"))
    p = select_hvg(secs, 2)
    assert p.genes[0] == "varies" and "rare" not in p.genes


def test_her2st_and_image_table_sections_with_patients(tmp_path, capsys):
    import anndata

    genes = [f"G{i}" for i in range(60)]
    write_her2st(tmp_path / "A1", he_like_image(520, 520, seed=1), genes=genes, seed=1)
    write_her2st(tmp_path / "A2", he_like_image(520, 520, seed=2), genes=genes, seed=2)
    # an image with a spot CSV and counts as .h5ad, then as CSV
    from PIL import Image

    for name, kind in (("B1", "h5ad"), ("B2", "csv")):
        d = tmp_path / name
        d.mkdir()
        img = he_like_image(520, 520, seed=5 + len(kind))
        Image.fromarray(img).save(d / "slide.png")
        xy = np.array([(x, y) for x in range(100, 440, 40) for y in range(100, 440, 40)], float)
        ids = [f"s{i}" for i in range(len(xy))]
        pd.DataFrame({"spot_id": ids, "x": xy[:, 0], "y": xy[:, 1]}).to_csv(d / "spots.csv", index=False)
        counts = study_counts(img, xy, len(genes), seed=3)
        if kind == "h5ad":
            anndata.AnnData(sparse.csr_matrix(counts.astype(np.float32)), obs=pd.DataFrame(index=ids),
                            var=pd.DataFrame(index=genes)).write_h5ad(d / "counts.h5ad")
        else:
            pd.DataFrame(counts, index=ids, columns=genes).to_csv(d / "counts.csv")
    pd.DataFrame({"section": ["A1", "A2", "B1", "B2"], "folder": ["A1", "A2", "B1", "B2"],
                  "patient": ["A", "A", "B", "B"], "um_per_px": ["", "", "2.5", "2.5"]}).to_csv(
        tmp_path / "s.csv", index=False)
    ck = tmp_path / "m.pt"
    rc = main(["train", "--samples", str(tmp_path / "s.csv"), "--epochs", "1", "--device", "cpu", "--out", str(ck),
               "--branches", "stats"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "the model predicts the 500 most variable genes" in err  # the default, said
    card = json.loads(ck.with_suffix(".json").read_text())
    assert card["metrics"]["gene_pcc_protocol"] == "leave-one-patient-out"
    assert card["metrics"]["heldout_patients"] == 2 and len(card["genes"]) <= 60
    rel = card["metrics"]["reliability"]
    assert {f["fold"] for f in rel["gene_folds"]} == {"leave-one-patient-out"}
    assert {f["section"] for f in rel["gene_folds"]} == {"A1", "A2", "B1", "B2"}


def test_one_section_trains_without_heldout_and_says_so(tmp_path, capsys):
    write_her2st(tmp_path / "S1", he_like_image(520, 520), genes=[f"G{i}" for i in range(30)])
    ck = tmp_path / "m.pt"
    assert main(["train", "--data", str(tmp_path), "--hvg", "10", "--epochs", "1", "--out", str(ck),
                 "--device", "cpu"]) == 0
    assert "one section only" in capsys.readouterr().err
    card = json.loads(ck.with_suffix(".json").read_text())
    assert "gene_pcc" not in card["metrics"] and card["metrics"]["heldout"].startswith("none")


def test_cancel_keeps_no_model_and_resume_finishes(visium_study, tmp_path):
    from napari_hggep.training.study import Study, StudyOptions
    from napari_hggep.training.config import TrainConfig
    from napari_hggep.training.train import TrainingCancelled

    rows = read_samples_table(visium_study / "samples.csv")
    opts = StudyOptions(hvg=20, train=TrainConfig(epochs=2, device="cpu"))
    ck = tmp_path / "m.pt"
    seen = []

    def stop_in_second_fold():
        return len([f for f in seen if f == "V2"]) > 0

    study = Study(rows, opts, log=lambda m: None)
    with pytest.raises(TrainingCancelled):
        study.run(ck, progress=lambda ev: seen.append(ev.fold), should_stop=stop_in_second_fold)
    assert not ck.exists()
    state = json.loads(Path(str(ck) + ".study.json").read_text())
    assert list(state["folds"]) == ["V1"]  # the first fold's result is kept
    seen.clear()
    bundle = study.run(ck, progress=lambda ev: seen.append(ev.fold), resume=True)  # same object: no re-reading
    assert "V1" not in seen and ck.exists() and len(bundle.genes) == 20
    assert set(json.loads(ck.with_suffix(".json").read_text())["metrics"]["heldout_sections"]) == {"V1", "V2", "V3"}


def test_bundled_model_as_backbone_for_the_expert_recipe(tmp_path):
    from helpers import write_tiny_dataset
    from napari_hggep.model._bundled import bundled_checkpoint

    data = write_tiny_dataset(tmp_path / "d")
    ck = tmp_path / "m.pt"
    assert main(["train", "--data", str(data), "--epochs", "1", "--backbone", str(bundled_checkpoint()),
                 "--freeze-backbone", "--device", "cpu", "--out", str(ck)]) == 0
    card = json.loads(ck.with_suffix(".json").read_text())
    assert card["extra"]["pretrained_backbone"]["from_checkpoint"] == "hggep_compact_her2st.pt"
    assert card["extra"]["pretrained_backbone"]["method"] == "SimCLR (NT-Xent)"  # the bundled one's provenance
    assert not (tmp_path / "m.pt.state").exists()
