"""The command line checks before it works (issue 26) and says things once (issue 27): every check
that needs no slide runs first; a user error is one line, ``napari-hggep: error:``, exit status 2;
a failure at run time is one line and status 1; never a traceback; every option has help, and no
RST backticks; batches name Space Ranger sections after their folder and print the reliability
lines; exports name the library after the image and give absolute paths; the evaluation table
shows the paper's figures only for the paper's panel."""
from __future__ import annotations

import argparse
import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import he_like_image, write_her2st, write_visium
from napari_hggep.cli import build_parser, main

CLI = [sys.executable, "-m", "napari_hggep.cli"]


def _one_line_error(err: str) -> str:
    """The error line of a run's stderr: exactly one, no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and lines[0].startswith("napari-hggep: error: "), err
    return lines[0]


@pytest.fixture
def no_slide_read(monkeypatch):
    """Fail the test if any slide is read (the checks that need no slide must come first)."""
    import napari_hggep.io.readers.open as readers

    def refuse(*a, **k):
        raise AssertionError("a slide was read before the checks that need no slide")

    monkeypatch.setattr(readers, "open_slide", refuse)
    return refuse


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    p = tmp_path / "he.png"
    Image.fromarray(he_like_image(400, 400)).save(p)
    return p


# ---------------------------------------------------------------- help
def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    act = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(act.choices)


def test_help_is_complete_and_plain():
    p = build_parser()
    top = p.format_help()
    assert "`" not in top
    for cmd in ("predict", "train", "evaluate", "pretrain", "demo"):
        assert cmd in top
    for name, sub in _subparsers(p).items():
        text = sub.format_help()
        assert "`" not in text, name
        for act in sub._actions:
            assert act.help and act.help != argparse.SUPPRESS, (name, act.option_strings or act.dest)
    ev = _subparsers(p)["evaluate"].format_help()
    assert "--loo" in ev and "without --loo" in ev  # --loo is optional: without it an existing model is scored


# ---------------------------------------------------------------- checks before work
def test_unknown_device_is_refused_at_once_before_any_slide(tmp_path, capsys, no_slide_read):
    s = write_her2st(tmp_path / "S1", he_like_image())
    with pytest.raises(SystemExit) as e:
        main(["predict", str(s), "-o", str(tmp_path / "p.csv"), "--device", "tpu"])
    assert e.value.code == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "'tpu'" in line and "cpu" in line
    # as a command: the device is checked before the slide is looked at (a slide that is not there
    # is not what the one line names), status 2
    out = subprocess.run([*CLI, "predict", str(tmp_path / "missing"), "-o", str(tmp_path / "p.csv"), "--device",
                          "tpu"], capture_output=True, text=True)
    assert out.returncode == 2
    line = _one_line_error(out.stderr)
    assert "'tpu'" in line and "missing" not in line


def test_missing_gpu_is_refused_before_any_slide(tmp_path, capsys, monkeypatch, no_slide_read, image):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["predict", str(image), "--grid", "--um-per-px", "1", "-o", str(tmp_path / "p.csv"), "--device", "cuda"])
    assert rc == 2 and "no CUDA GPU" in _one_line_error(capsys.readouterr().err)


def test_model_and_genes_are_checked_before_any_slide(tmp_path, capsys, no_slide_read, image):
    base = ["predict", str(image), "--grid", "--um-per-px", "1", "-o", str(tmp_path / "p.csv")]
    assert main([*base, "--genes", "NOPE"]) == 2
    assert "'NOPE'" in _one_line_error(capsys.readouterr().err)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main([*base, "--model", str(tmp_path / "bad.pt")]) == 2
    assert "bad.pt" in _one_line_error(capsys.readouterr().err)


def test_implausible_pixel_size_is_refused_naming_it(tmp_path, capsys, no_slide_read, image):
    base = ["predict", str(image), "--grid", "-o", str(tmp_path / "p.csv")]
    assert main([*base, "--um-per-px", "0.02"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--um-per-px 0.02" in line and "µm/px" in line
    assert main([*base, "--um-per-px", "0"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--um-per-px 0 " in line and "positive" in line and "does not record" not in line
    assert main([*base, "--um-per-px", "50"]) == 2
    assert "coarser" in _one_line_error(capsys.readouterr().err)
    assert main(base) == 2  # a PNG does not record its pixel size: said before the image is read
    assert "does not record its pixel size" in _one_line_error(capsys.readouterr().err)
    from napari_hggep.data.quality import PLAUSIBLE_UM_PER_PX, TRAINED_UM_PER_PX

    lo, hi = PLAUSIBLE_UM_PER_PX
    assert lo < TRAINED_UM_PER_PX[0] and TRAINED_UM_PER_PX[1] < hi


def test_pixel_size_recorded_wrongly_in_a_tiff_is_refused(tmp_path, capsys, no_slide_read):
    import tifffile

    p = tmp_path / "scan.tif"
    tifffile.imwrite(p, he_like_image(200, 200), resolution=(500000.0, 500000.0), resolutionunit="CENTIMETER")
    rc = main(["predict", str(p), "--grid", "-o", str(tmp_path / "p.csv")])
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2 and "0.02 µm/px" in line and "--um-per-px" in line


def _blocked(tmp_path) -> Path:
    """A path no one can write, even root: it lies under an existing file."""
    f = tmp_path / "blocker"
    f.write_text("a file, not a folder")
    return f / "results"


def test_unwritable_out_is_refused_before_evaluation_or_training(tiny_data, tmp_path, capsys, monkeypatch):
    import napari_hggep.cli.evaluate as cli_eval
    import napari_hggep.cli.train as cli_train

    def refuse(*a, **k):
        raise AssertionError("sections were read before --out was checked")

    monkeypatch.setattr(cli_eval, "read_sections", refuse)
    monkeypatch.setattr(cli_eval, "make_study", refuse)
    monkeypatch.setattr(cli_train, "read_sections", refuse)
    monkeypatch.setattr(cli_train, "make_study", refuse)
    bad = _blocked(tmp_path)
    runs = [
        ["evaluate", "--loo", "--data", str(tiny_data), "--epochs", "1", "--out", str(bad)],
        ["evaluate", "--loo", "--samples", str(tmp_path / "none.csv"), "--out", str(bad)],
        ["evaluate", "--data", str(tiny_data), "--out", str(bad)],
        ["train", "--data", str(tiny_data), "--epochs", "1", "--out", str(bad / "m.pt")],
        ["train", "--data", str(tiny_data), "--freeze-backbone", "--out", str(bad / "m.pt")],
        ["pretrain", "--data", str(tiny_data), "--sections", "S1", "--out", str(bad / "bb.pt")],
    ]
    for args in runs:
        rc = main(args)
        line = _one_line_error(capsys.readouterr().err)
        assert rc == 2 and "--out" in line and "blocker is a file, not a folder" in line, (args, line)
    # a folder where the checkpoint file goes
    assert main(["train", "--data", str(tiny_data), "--out", str(tmp_path)]) == 2
    assert "is a folder" in _one_line_error(capsys.readouterr().err)


def test_unwritable_out_as_a_command_is_refused_before_the_data(tmp_path):
    bad, data = _blocked(tmp_path), str(tmp_path / "no-data")  # the data are not looked at first
    for args in (["evaluate", "--loo", "--data", data, "--out", str(bad)],
                 ["train", "--data", data, "--out", str(bad / "m.pt")]):
        out = subprocess.run([*CLI, *args], capture_output=True, text=True)
        assert out.returncode == 2, args
        assert "is a file, not a folder" in _one_line_error(out.stderr)


def test_bad_training_inputs_are_refused_before_any_section(tiny_data, tmp_path, capsys, monkeypatch):
    import napari_hggep.cli.evaluate as cli_eval

    monkeypatch.setattr(cli_eval, "read_sections", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    out = tmp_path / "ev"
    cases = [
        (["--genes", str(tmp_path / "nope.txt")], "no such gene list"),
        (["--patients", "S1"], "SECTION=PATIENT"),
        (["--backbone-without", f"P={tmp_path / 'nope.pt'}"], "does not exist"),
        (["--labels", str(tmp_path / "nope.csv")], "no such labels table"),
        (["--sections", "S1", "S9"], "S9"),
    ]
    for extra, says in cases:
        rc = main(["evaluate", "--loo", "--data", str(tiny_data), "--out", str(out), *extra])
        line = _one_line_error(capsys.readouterr().err)
        assert rc == 2 and says in line, (extra, line)
    assert main(["evaluate", "--loo", "--out", str(out)]) == 2  # no sections given
    assert "--samples" in _one_line_error(capsys.readouterr().err)


# ---------------------------------------------------------------- status 2 vs 1
def test_a_full_disk_is_a_runtime_failure_in_one_line(tmp_path, capsys, monkeypatch, image):
    import pyarrow.csv as pa_csv

    out = tmp_path / "p.csv"
    out.write_text("keep me\n")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pa_csv, "write_csv", full)
    rc = main(["predict", str(image), "--grid", "--um-per-px", "1", "--genes", "GNAS", "-o", str(out),
               "--device", "cpu"])
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 1 and "No space left on device" in line and "p.csv" in line and "kept" in line
    assert out.read_text() == "keep me\n"
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".p.csv")]  # nothing half-written


def test_user_errors_exit_2_runtime_failures_exit_1(capsys):
    from napari_hggep.cli.checks import RunFailure, report
    from napari_hggep.data.slide import SlideError

    for err, code in ((SlideError("bad spots"), 2), (KeyError("missing"), 2), (FileNotFoundError(2, "gone", "x"), 2),
                      (PermissionError(13, "Permission denied", "y"), 2), (OSError(errno.ENOSPC, "No space"), 1),
                      (OSError(errno.EIO, "Input/output error"), 1), (MemoryError("out of memory"), 1),
                      (RunFailure("could not write"), 1), (RuntimeError("torch failed"), 1)):
        assert report(err) == code, err
        _one_line_error(capsys.readouterr().err)


def test_argument_errors_are_one_line(capsys):
    for args in (["predict", "x.png", "--batch-size", "0"], ["predict", "x.png", "--pitch-um", "-5"],
                 ["train", "--out", "m.pt", "--val-frac", "2"], ["predict", "x.png", "--shared-trunk", "maybe"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
        _one_line_error(capsys.readouterr().err)


# ---------------------------------------------------------------- wording
def test_space_ranger_wording(tmp_path, capsys):
    from PIL import Image

    from napari_hggep.io.readers.visium import read_visium

    # a NaN in a headerless (Space Ranger 1.x) tissue_positions_list.csv: the file's own line number
    v = write_visium(tmp_path / "old", he_like_image(500, 420), old_format=True)
    f = v / "spatial" / "tissue_positions_list.csv"
    lines = f.read_text().splitlines()
    cells = lines[4].split(",")
    cells[4] = "NaN"
    lines[4] = ",".join(cells)
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="row 5 has 'NaN'"):
        read_visium(v)
    # no spot in tissue
    v = write_visium(tmp_path / "none", he_like_image(500, 420))
    pos = pd.read_csv(v / "spatial" / "tissue_positions.csv")
    pos["in_tissue"] = 0
    pos.to_csv(v / "spatial" / "tissue_positions.csv", index=False)
    assert main(["predict", str(v), "-o", str(tmp_path / "p.csv")]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "in_tissue" in line and "no spot is in tissue" in line and "Give a spot table" not in line
    # black hires and lowres PNGs: each file's problem said once, no nested sentences
    v = write_visium(tmp_path / "black", he_like_image(500, 420))
    for name in ("tissue_hires_image.png", "tissue_lowres_image.png"):
        png = v / "spatial" / name
        shape = np.asarray(Image.open(png)).shape if png.exists() else (42, 50, 3)
        Image.fromarray(np.zeros(shape, np.uint8)).save(png)
    assert main(["predict", str(v), "-o", str(tmp_path / "p.csv")]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "none of this folder's images shows tissue under the spots" in line
    assert line.count("the image under the spots") == 0 and line.count("((") == 0
    assert line.count("tissue_hires_image.png") == 1 and line.count("Nothing would be predicted") == 0


# ---------------------------------------------------------------- batches
def _reliability_lines(err: str, name: str | None = None) -> list[str]:
    out = []
    for ln in err.splitlines():
        ln = ln.strip()
        if not ln.startswith("napari-hggep: "):
            continue
        body = ln[len("napari-hggep: "):]
        if name is not None:
            if not body.startswith(f"{name}: "):
                continue
            body = body[len(name) + 2:]
        if body.startswith(("slide reliability:", "expected PCC on this slide:", "warning: this slide is unlike",
                            "measured on this slide:")):
            out.append(body)
    return out


def test_batch_names_space_ranger_sections_and_prints_reliability(tmp_path, capsys):
    for name in ("C2", "C3"):
        write_visium(tmp_path / name / "outs", he_like_image(500, 420))
    out = tmp_path / "preds"
    rc = main(["predict", str(tmp_path / "C2" / "outs"), str(tmp_path / "C3" / "outs"), "--out-dir", str(out),
               "--genes", "GNAS", "--device", "cpu"])
    batch_err = capsys.readouterr().err
    assert rc == 0, batch_err
    written = {p.name for p in out.iterdir()}
    assert {"C2.csv", "C3.csv"} <= written and not any(n.startswith("outs") for n in written), written
    assert main(["predict", str(tmp_path / "C2" / "outs"), "-o", str(tmp_path / "one.csv"), "--genes", "GNAS",
                 "--device", "cpu"]) == 0
    single = _reliability_lines(capsys.readouterr().err)
    assert single  # a single predict says how far to trust the slide
    assert _reliability_lines(batch_err, "C2") == single
    assert _reliability_lines(batch_err, "C3")


# ---------------------------------------------------------------- names and paths in exports
def test_library_id_is_the_image_stem_and_paths_are_absolute(tmp_path, monkeypatch):
    import anndata as ad
    import tifffile

    monkeypatch.chdir(tmp_path)
    tifffile.imwrite("slide7.ome.tif", he_like_image(400, 400))
    pd.DataFrame({"spot_id": ["a", "b"], "x": [180.0, 220.0], "y": [200.0, 200.0]}).to_csv("spots.csv", index=False)
    assert main(["predict", "slide7.ome.tif", "--spots", "spots.csv", "--um-per-px", "0.7", "-o", "p.h5ad",
                 "--device", "cpu"]) == 0
    a = ad.read_h5ad(tmp_path / "p.h5ad")
    info = a.uns["napari_hggep"]
    assert list(a.uns["spatial"]) == ["slide7"] and info["library_id"] == "slide7"
    assert Path(info["image_predicted_on"]).is_absolute()
    assert Path(info["image_predicted_on"]) == (tmp_path / "slide7.ome.tif").resolve()
    assert Path(a.uns["spatial"]["slide7"]["metadata"]["source_image_path"]).is_absolute()


def test_absolute_path_keeps_a_store_element(tmp_path, monkeypatch):
    from napari_hggep.io.writers.anndata_export import absolute_path

    monkeypatch.chdir(tmp_path)
    assert absolute_path("a/b.png") == str((tmp_path / "a" / "b.png").resolve())
    assert absolute_path("s.zarr::he") == str((tmp_path / "s.zarr").resolve()) + "::he"
    assert absolute_path(None) == "" and absolute_path("") == ""


# ---------------------------------------------------------------- evaluation tables
def _result(genes, patients, lopo=True):
    sec = {"n_spots": 10, "pcc_mean": 0.2, "pcc_median": 0.2, "ssim_mean": 0.1, "rmse": 1.0}
    names = list(patients)
    return {
        "protocol": {"patients": patients},
        "per_section": {n: {"hggep": sec, "ridge_baseline": sec,
                            "published_hggep_pcc": {"B4": 0.315, "C2": 0.177}.get(n)} for n in names},
        "leave_one_patient_out": {"B4 <- C2": {"B4": sec}, "C2 <- B4": {"C2": sec}} if lopo else {},
        "resampled": {},
        "summary": {"hggep_pcc_mean": 0.2, "hggep_ssim_mean": 0.1, "hggep_rmse": 1.0, "lopo_pcc_mean": 0.2 if lopo else None,
                    "resampled_pcc_mean": {}, "published_pcc_mean_same_sections": 0.246, "ridge_pcc_mean": 0.2},
        "calibration": {"genes": list(genes)},
    }


def test_published_figures_only_for_the_papers_panel():
    from napari_hggep.model._bundled import bundled_card
    from napari_hggep.evaluation.evaluate import is_paper_panel, markdown_table

    card_genes = bundled_card().genes
    if len(card_genes) < 785:
        pytest.skip("no bundled model card with the HER2+ panel")
    panel = card_genes[:785]  # the bundled model's first 785 genes are the paper's HER2+ panel
    assert is_paper_panel(panel) and is_paper_panel(list(reversed(panel)))
    assert not is_paper_panel(panel[:784]) and not is_paper_panel(card_genes) and not is_paper_panel(["GA", "GB"])
    md = markdown_table(_result(panel, {"B4": "B", "C2": "C"}))
    assert "HGGEP published PCC" in md and "0.315" in md and "not shown" not in md
    md = markdown_table(_result(card_genes, {"B4": "B", "C2": "C"}))
    assert "HGGEP published PCC |" not in md and "0.315" not in md
    assert "not shown" in md and "785-gene" in md and f"these {len(card_genes)} genes" in md


def test_one_patient_says_why_there_is_no_leave_one_patient_out():
    from napari_hggep.evaluation.evaluate import markdown_table

    md = markdown_table(_result(["GA", "GB"], {"S1": "P", "S2": "P"}, lopo=False))
    assert "one patient (P): no leave-one-patient-out" in md


def test_evaluate_loo_table_on_another_panel_and_one_patient(tiny_data, tmp_path, capsys):
    import json

    out = tmp_path / "ev"
    assert main(["evaluate", "--loo", "--data", str(tiny_data), "--epochs", "1", "--resample-um", "--patients",
                 "S1=P", "S2=P", "--out", str(out), "--device", "cpu"]) == 0
    md = (out / "loo.md").read_text()
    assert "HGGEP published PCC |" not in md and "not shown" in md
    assert "one patient (P): no leave-one-patient-out" in md
    res = json.loads((out / "loo.json").read_text())
    assert res["protocol"]["published_comparable"] is False
    assert all(r["published_hggep_pcc"] is None for r in res["per_section"].values())


# ---------------------------------------------------------------- a normal run is quiet
def test_a_normal_run_prints_no_warnings_from_dependencies(tmp_path, image):
    """Neither anndata's "zarr v3 autosharding" notices (14 per SpatialData store) nor torch's
    FutureWarning about torch.jit.script (from importing torch_geometric) reach a user."""
    outputs = ["-o", str(tmp_path / "p.csv"), "-o", str(tmp_path / "p.h5ad")]
    from napari_hggep.io.writers.export import spatialdata_available

    if spatialdata_available():
        outputs += ["-o", str(tmp_path / "p.zarr")]
    out = subprocess.run([*CLI, "predict", str(image), "--grid", "--um-per-px", "1", "--genes", "GNAS", *outputs,
                          "--device", "cpu"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Warning:" not in out.stderr and "warnings.warn" not in out.stderr, out.stderr
