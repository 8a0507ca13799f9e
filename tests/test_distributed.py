"""torch.distributed under torchrun (gloo on the CPU, 2 processes): training follows the same
loss curve as one process, pretraining repeats, sharded prediction equals one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import he_like_image, write_tiny_dataset

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch has no gloo backend")
CLI = [sys.executable, "-m", "napari_hggep.cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "napari_hggep.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(cmd, ok=True):
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("st"), ("S1", "S2", "S3"))


def _history(ck):
    return json.loads(Path(ck).with_suffix(".json").read_text())["extra"]["history"]


def test_train_under_torchrun_matches_one_process_and_resumes(tiny_data, tmp_path):
    args = ["train", "--data", str(tiny_data), "--epochs", "3", "--seed", "5", "--device", "cpu", "--keep-state"]
    one, two, resumed = tmp_path / "one" / "m.pt", tmp_path / "two" / "m.pt", tmp_path / "res" / "m.pt"
    for p in (one, two, resumed):
        p.parent.mkdir()
    run([*CLI, *args, "--sections-per-step", "2", "--out", str(one)])  # 3 sections: groups filled cyclically
    r = run([*TORCHRUN, *args, "--out", str(two)])
    assert "rank 1 of 2 on cpu" in r.stderr
    a, b = _history(one), _history(two)
    assert len(a) == len(b) == 3
    np.testing.assert_allclose([h["loss"] for h in a], [h["loss"] for h in b], rtol=1e-5)
    np.testing.assert_allclose([h["val_pcc"] for h in a], [h["val_pcc"] for h in b], atol=1e-4)
    # rank 0 alone wrote the files, atomically: nothing else in the folder
    assert sorted(f.name for f in two.parent.iterdir()) == ["m.json", "m.pt", "m.pt.sha256", "m.pt.state"]
    # all its processes SIGKILLed once the first epoch's state is written, then resumed under
    # torchrun: the same curve as in one go
    import signal
    import time

    state = Path(str(resumed) + ".state")
    p = subprocess.Popen([*TORCHRUN, *args, "--out", str(resumed)], env=ENV, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while p.poll() is None and not state.exists():
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not resumed.exists(), "the run ended before it could be killed"
    run([*TORCHRUN, *args, "--out", str(resumed), "--resume"])
    np.testing.assert_allclose([h["loss"] for h in _history(resumed)], [h["loss"] for h in b], rtol=1e-5)
    # a group size the processes cannot share is refused clearly
    r = run([*TORCHRUN, *args, "--sections-per-step", "3", "--out", str(tmp_path / "x.pt")], ok=False)
    assert r.returncode != 0 and "must be a multiple of the 2 processes" in r.stderr


def test_pretrain_under_torchrun_repeats_and_rank_0_writes(tiny_data, tmp_path):
    args = ["pretrain", "--data", str(tiny_data), "--sections", "S1", "S2", "--max-steps", "12", "--batch-size", "8",
            "--patches-per-slide", "16", "--device", "cpu", "--seed", "2"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run([*TORCHRUN, *args, "--out", str(tmp_path / "a" / "bb.pt")])
    run([*TORCHRUN, *args, "--out", str(tmp_path / "b" / "bb.pt")])
    from napari_hggep.model.pretrained import read_backbone

    (sa, ma), (sb, _) = read_backbone(tmp_path / "a" / "bb.pt"), read_backbone(tmp_path / "b" / "bb.pt")
    assert ma["steps"] == 12 and ma["processes"] == 2
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sorted(f.name for f in (tmp_path / "a").iterdir()) == ["bb.pt", "bb.pt.state"]


def test_sharded_predict_equals_one_process_skips_done_and_reports_bad_slides(tiny_data, tmp_path):
    from PIL import Image

    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(3):
        Image.fromarray(he_like_image(500, 600, seed=10 + i)).save(slides / f"slide{i}.png")
    (slides / "broken.png").write_bytes(b"\x89PNG but cut off")
    args = ["predict", str(slides), str(tiny_data / "S1"), "--grid", "--pitch-um", "60", "--um-per-px", "1",
            "--device", "cpu"]
    one, two, four = tmp_path / "one", tmp_path / "two", tmp_path / "four"
    r = run([*CLI, *args, "--out-dir", str(one), "--formats", "csv", "h5ad"], ok=False)
    assert r.returncode == 1 and "broken.png: error: could not read image" in r.stderr
    assert "done 4, already done 0, failed 1 of 5 slides" in r.stderr
    r = run([*TORCHRUN, *args, "--out-dir", str(two), "--formats", "csv", "h5ad"], ok=False)
    assert r.returncode != 0 and "failed 1 of 5 slides" in r.stderr
    r = run([*CLI, *args, "--out-dir", str(four), "--workers", "2"], ok=False)
    assert "done 4, already done 0, failed 1 of 5 slides" in r.stderr
    names = ["S1", "slide0", "slide1", "slide2"]
    # each slide's CSV has its per-gene table (held-out PCC, this slide's reliability) beside it
    assert sorted(f.name for f in two.iterdir()) == sorted([f"{n}.{x}" for n in names
                                                            for x in ("csv", "genes.csv", "h5ad")])
    for n in names:
        a = pd.read_csv(one / f"{n}.csv")
        for other in (two, four):
            b = pd.read_csv(other / f"{n}.csv")
            assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
            np.testing.assert_allclose(a.iloc[:, 3:].to_numpy(float), b.iloc[:, 3:].to_numpy(float), atol=1e-5)
    # a rerun skips what is done and retries only the bad slide
    mtime = (two / "slide0.csv").stat().st_mtime_ns
    r = run([*TORCHRUN, *args, "--out-dir", str(two), "--formats", "csv", "h5ad"], ok=False)
    assert "done 0, already done 4, failed 1 of 5 slides" in r.stderr
    assert (two / "slide0.csv").stat().st_mtime_ns == mtime
