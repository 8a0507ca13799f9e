import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from helpers import N_BUNDLED, he_like_image, write_her2st, write_visium
from napari_hggep import __version__, load_model, predict_slide
from napari_hggep.cli import main


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "napari_hggep.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout
    out = subprocess.run([sys.executable, "-m", "napari_hggep.cli", "--help"], capture_output=True, text=True)
    for cmd in ("predict", "train", "evaluate", "demo"):
        assert cmd in out.stdout


def test_predict_slide_on_sample(bundle):
    from napari_hggep._napari.sample import sample_slide

    s = sample_slide()
    s = s.subset(np.arange(s.n_spots) % 6 == 0)  # ~180 spots: batches of 8 stay quick
    calls = []
    pred = predict_slide(bundle, s, batch_size=8, progress=lambda d, t: calls.append((d, t)))
    assert pred.values.shape == (s.n_spots, N_BUNDLED) and np.isfinite(pred.values).all()
    # every spot's patch, then the phases after it; the last units are the caller's (writing, the layer)
    done, total = calls[-1]
    assert s.n_spots <= done < total and len(calls) >= s.n_spots // 8
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len({t for _, t in calls}) == 1
    assert pred.values.std(axis=0).max() > 0  # varies across spots
    # batching does not change the result
    again = predict_slide(bundle, s, batch_size=1000)
    np.testing.assert_allclose(again.values, pred.values, atol=1e-4)


def test_cli_predict_csv_and_h5ad(tmp_path, bundle):
    img = he_like_image(700, 700)
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "he.png")
    pd.DataFrame({"spot_id": ["s1", "s2", "s3"], "x": [300.0, 350, 400], "y": [350.0, 350, 360],
                  "array_row": [1, 1, 2], "array_col": [1, 3, 2]}).to_csv(tmp_path / "spots.csv", index=False)
    out, h5 = tmp_path / "pred.csv", tmp_path / "pred.h5ad"
    rc = main(["predict", str(tmp_path / "he.png"), "--spots", str(tmp_path / "spots.csv"), "--um-per-px", "0.7",
               "-o", str(out), "--h5ad", str(h5), "--device", "cpu"])
    assert rc == 0
    df = pd.read_csv(out)
    assert list(df.columns[:5]) == ["spot_id", "x", "y", "array_row", "array_col"] and df.shape == (3, 5 + N_BUNDLED)
    a = ad.read_h5ad(h5)
    assert a.shape == (3, N_BUNDLED) and a.obsm["spatial"].shape == (3, 2)
    np.testing.assert_allclose(a.X, df.iloc[:, 5:].to_numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a.obsm["spatial"], df[["x", "y"]].to_numpy())


def test_cli_predict_grid_and_visium(tmp_path):
    from PIL import Image

    Image.fromarray(he_like_image(600, 800)).save(tmp_path / "he.png")
    out = tmp_path / "grid.csv"
    assert main(["predict", str(tmp_path / "he.png"), "--grid", "--pitch-um", "100", "--um-per-px", "2",
                 "-o", str(out), "--genes", "KRT8,GNAS"]) == 0
    df = pd.read_csv(out)
    assert len(df) > 20 and list(df.columns[-2:]) == ["KRT8", "GNAS"]
    v = write_visium(tmp_path / "outs", he_like_image(500, 420))
    out2 = tmp_path / "vis.csv"
    assert main(["predict", str(v), "--visium", str(v), "-o", str(out2)]) == 0
    assert len(pd.read_csv(out2)) == 64
    assert main(["predict", str(v), "-o", str(out2)]) == 0  # a slide folder needs no spot flag
    assert len(pd.read_csv(out2)) == 64
    h = write_her2st(tmp_path / "S1", he_like_image())
    assert main(["predict", str(h), "-o", str(out2)]) == 0
    df = pd.read_csv(out2)
    assert len(df) == 63 and df.spot_id.iloc[0] == "3x3"
    assert main(["predict", str(tmp_path / "he.png"), "-o", str(out2)]) == 2  # no spots: a user error, one line


def test_cli_errors_are_clear_and_keep_old_output(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(he_like_image()).save(tmp_path / "he.png")
    pd.DataFrame({"spot_id": ["a"], "x": [9000.0], "y": [1.0]}).to_csv(tmp_path / "far.csv", index=False)
    out = tmp_path / "pred.csv"
    out.write_text("keep me\n")
    rc = main(["predict", str(tmp_path / "he.png"), "--spots", str(tmp_path / "far.csv"), "--um-per-px", "1",
               "-o", str(out)])
    assert rc == 2 and "outside" in capsys.readouterr().err
    assert out.read_text() == "keep me\n"
    # the same spot twice would be predicted twice and exported with clashing ids
    pd.DataFrame({"spot_id": ["a", "b", "a"], "x": [100.0, 200.0, 300.0], "y": [100.0, 100.0, 100.0]}).to_csv(
        tmp_path / "dup.csv", index=False)
    rc = main(["predict", str(tmp_path / "he.png"), "--spots", str(tmp_path / "dup.csv"), "--um-per-px", "1",
               "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "'a'" in err and "more than once" in err
    assert out.read_text() == "keep me\n"
    rc = main(["predict", str(tmp_path / "missing.png"), "--grid", "--um-per-px", "1", "-o", str(out)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    rc = main(["predict", str(tmp_path / "he.png"), "--grid", "--um-per-px", "1", "--model", str(bad), "-o", str(out)])
    assert rc == 2 and "bad.pt" in capsys.readouterr().err
    rc = main(["predict", str(tmp_path / "he.png"), "--grid", "--um-per-px", "1", "-o", str(out), "--genes", "NOPE"])
    assert rc == 2 and "NOPE" in capsys.readouterr().err
    assert out.read_text() == "keep me\n"


def test_train_resume_predict_evaluate(tiny_data, tmp_path):
    ck = tmp_path / "m.pt"
    args = ["train", "--data", str(tiny_data), "--sections", "S1", "S2", "--keep-state", "--epochs", "2",
            "--branches", "both", "--out", str(ck), "--seed", "1"]  # both: the image path kept whatever it adds
    assert main(args) == 0
    b = load_model(ck, device="cpu")
    assert b.genes == ["GA", "GB", "GC", "GD"] and b.card.sections == ["S1", "S2"]
    assert len(b.card.extra["history"]) == 2
    # resume continues from the saved state up to the new epoch count
    assert main(args[:-4] + ["--epochs", "3", "--out", str(ck), "--resume", "--seed", "1"]) == 0
    assert len(load_model(ck, device="cpu").card.extra["history"]) == 3
    from napari_hggep.io.readers import read_her2st

    pred = predict_slide(b, read_her2st(tiny_data / "S1", with_counts=False))
    assert pred.values.shape == (63, 4)
    out = tmp_path / "eval"
    assert main(["evaluate", "--loo", "--data", str(tiny_data), "--epochs", "1", "--out", str(out)]) == 0
    import json

    res = json.loads((out / "loo.json").read_text())
    assert set(res["per_section"]) == {"S1", "S2"}
    for r in res["per_section"].values():
        assert {"pcc_mean", "pcc_median", "ssim_mean", "rmse"} <= set(r["hggep"])
        assert "pcc_mean" in r["ridge_baseline"]
    assert "| S1 |" in (out / "loo.md").read_text()


def test_pretrain_then_train_and_evaluate_with_honest_backbones(tiny_data, tmp_path, capsys):
    import json

    bb = tmp_path / "bb.pt"
    args = ["pretrain", "--data", str(tiny_data), "--sections", "S1", "S2", "--max-steps", "2", "--batch-size", "8",
            "--patches-per-slide", "16", "--out", str(bb), "--device", "cpu"]
    assert main(args) == 0 and bb.is_file()
    # resume adds steps to the same run
    assert main(args[:-4] + ["--max-steps", "3", "--out", str(bb), "--resume", "--device", "cpu"]) == 0
    from napari_hggep.model.pretrained import read_backbone

    assert read_backbone(bb)[1]["steps"] == 3
    ck = tmp_path / "m.pt"
    assert main(["train", "--data", str(tiny_data), "--epochs", "1", "--out", str(ck), "--backbone", str(bb),
                 "--freeze-backbone", "--device", "cpu"]) == 0
    assert load_model(ck, device="cpu").card.pretrained_backbone["steps"] == 3
    out = tmp_path / "eval"
    assert main(["evaluate", "--loo", "--data", str(tiny_data), "--epochs", "1", "--out", str(out), "--ablation",
                 "--patients", "S1=P1", "S2=P2", "--backbone-without", f"P1={bb}", f"P2={bb}",
                 "--freeze-backbone", "--resample-um", "10", "--device", "cpu"]) == 0
    res = json.loads((out / "loo.json").read_text())
    assert set(res["resampled"]["10"]) == {"S1", "S2"}
    assert {k.split(" <- ")[0] for k in res["leave_one_patient_out"]} == {"S1", "S2"}
    assert list(res["ablation"]) == ["ridge on statistics", "statistics branch", "image path", "both (full model)"]
    md = (out / "loo.md").read_text()
    assert "Leave-one-patient-out" in md and "Ablation" in md and "PCC at 10 um/px" in md
    # a backbone for the wrong patients is refused with a clear message
    rc = main(["evaluate", "--loo", "--data", str(tiny_data), "--epochs", "1", "--out", str(out),
               "--backbone-without", f"Q={bb}", "--resample-um", "--device", "cpu"])
    assert rc == 2 and "no backbone pretrained without" in capsys.readouterr().err
    bad = tmp_path / "bad_bb.pt"
    bad.write_bytes(b"not a torch file")
    rc = main(["train", "--data", str(tiny_data), "--epochs", "1", "--out", str(ck), "--backbone", str(bad)])
    assert rc == 2 and "bad_bb.pt" in capsys.readouterr().err


# ---------------------------------------------------------------- issue 17: what is predicted on is tissue
def _visium_blank_hires(folder, lowres_blank=False):
    import json

    from PIL import Image

    full = he_like_image(500, 420)
    write_visium(folder, full)
    sp = folder / "spatial"
    hi = np.asarray(Image.open(sp / "tissue_hires_image.png"))
    Image.fromarray(np.zeros_like(hi)).save(sp / "tissue_hires_image.png")  # as Space Ranger 1.0 sometimes writes
    lo = full[::10, ::10]
    assert json.loads((sp / "scalefactors_json.json").read_text())["tissue_lowres_scalef"] == 0.1
    Image.fromarray(np.zeros_like(lo) if lowres_blank else lo).save(sp / "tissue_lowres_image.png")
    return folder


def test_cli_visium_blank_hires_png_predicts_from_an_image_with_tissue(tmp_path, capsys):
    v = _visium_blank_hires(tmp_path / "outs")
    out = tmp_path / "p.csv"
    assert main(["predict", str(v), "-o", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "notice: tissue_hires_image.png shows no tissue" in err and "tissue_lowres_image.png instead" in err
    df = pd.read_csv(out)
    assert len(df) == 64
    vals = df.iloc[:, 5:].to_numpy()
    assert np.median(np.ptp(vals, axis=0)) >= 0.01  # a map, not a constant
    # with no image that shows tissue: a clear error, nothing written
    v2 = _visium_blank_hires(tmp_path / "outs2", lowres_blank=True)
    out2 = tmp_path / "p2.csv"
    assert main(["predict", str(v2), "-o", str(out2)]) == 2
    err = capsys.readouterr().err
    assert "none of this folder's images shows tissue" in err and "blank or nearly uniform" in err
    assert not out2.exists()


def test_cli_refuses_a_blank_image_and_warns_on_resolution_and_stain(tmp_path, capsys):
    from PIL import Image
    from skimage.data import immunohistochemistry

    Image.fromarray(np.full((600, 600, 3), 12, np.uint8)).save(tmp_path / "black.png")
    pd.DataFrame({"spot_id": ["23x20", "24x20"], "x": [300.0, 340], "y": [300.0, 300]}).to_csv(
        tmp_path / "spots.csv", index=False)
    out = tmp_path / "p.csv"
    rc = main(["predict", str(tmp_path / "black.png"), "--spots", str(tmp_path / "spots.csv"), "--um-per-px", "1",
               "-o", str(out)])
    assert rc == 2 and "blank or nearly uniform" in capsys.readouterr().err and not out.exists()
    Image.fromarray(immunohistochemistry()).save(tmp_path / "ihc.png")
    rc = main(["predict", str(tmp_path / "ihc.png"), "--grid", "--pitch-um", "100", "--um-per-px", "0.5",
               "-o", str(out), "--genes", "GNAS", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0 and "warning: the image does not look like H&E" in err and "brown" in err
    Image.fromarray(he_like_image(400, 400)).save(tmp_path / "he.png")
    rc = main(["predict", str(tmp_path / "he.png"), "--grid", "--pitch-um", "100", "--um-per-px", "6",
               "-o", str(out), "--genes", "GNAS", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0 and "warning: 6 µm per pixel is coarser than the scans the model was trained on" in err
    assert "look like H&E" not in err


def test_cli_checkpoint_and_id_messages_are_plain(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(he_like_image(400, 400)).save(tmp_path / "he.png")
    args = ["predict", str(tmp_path / "he.png"), "--grid", "--um-per-px", "2", "-o", str(tmp_path / "p.csv")]
    assert main([*args, "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a checkpoint file" in err and "does not exist" not in err
    (tmp_path / "bad.pt").write_bytes(b"\x80\x04garbage")
    assert main([*args, "--model", str(tmp_path / "bad.pt")]) == 2
    err = capsys.readouterr().err
    assert "not a readable napari-hggep checkpoint" in err
    assert "weights_only" not in err and "Weights only" not in err
    pd.DataFrame({"spot_id": ["23x20", "23x20"], "x": [100.0, 200], "y": [100.0, 200]}).to_csv(
        tmp_path / "dup.csv", index=False)
    assert main(["predict", str(tmp_path / "he.png"), "--spots", str(tmp_path / "dup.csv"), "--um-per-px", "1",
                 "-o", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "'23x20'" in err and "np.str_" not in err
