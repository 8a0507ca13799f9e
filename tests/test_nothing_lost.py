"""Nothing lost: interrupted runs leave neither partial outputs nor temporary files, and a
training run killed with SIGKILL resumes to exactly the model an uninterrupted run makes."""
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from helpers import he_like_image
from napari_hggep._atomic import atomic_write_bytes
from napari_hggep.model.checkpoint import read_checkpoint

CLI = [sys.executable, "-m", "napari_hggep.cli"]


def _temporaries(folder: Path):
    return sorted(p.name for p in folder.iterdir() if "~" in p.name)


# A training child that runs the real CLI and stops at a named point until it is killed: the kill lands
# exactly there (no sleeps). "step N" blocks before the N-th optimiser step (counted over the run, two
# per epoch here); "write N" blocks after the N-th state file's temporary is written, before its rename.
_KILLABLE = """
import sys, threading, torch
import napari_hggep._atomic as atomic
import napari_hggep.training.train as train
from napari_hggep.cli import main
kind, at = sys.argv[1], int(sys.argv[2])
count = [0]
def stop_here():
    print(f"@@killpoint {kind} {at}", flush=True)
    threading.Event().wait()
clip = torch.nn.utils.clip_grad_norm_
def counted_clip(*a, **k):
    count[0] += 1
    if kind == "step" and count[0] == at:
        stop_here()
    return clip(*a, **k)
torch.nn.utils.clip_grad_norm_ = counted_clip
writes = [0]
def write_then_stop(path, data):
    writes[0] += 1
    if kind != "write" or writes[0] != at:
        return atomic.atomic_write_bytes(path, data)
    with atomic.atomic_path(path) as tmp:
        tmp.write_bytes(data)
        stop_here()
train.atomic_write_bytes = write_then_stop
sys.exit(main(sys.argv[3:]))
"""


def _kill_at(args, kind, at, env):
    """Run ``train`` with ``args`` until it reaches the kill point, SIGKILL it there."""
    p = subprocess.Popen([sys.executable, "-c", _KILLABLE, kind, str(at), *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if line.startswith("@@killpoint"):
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, f"the run ended before it reached {kind} {at}"


def test_train_killed_mid_epoch_and_mid_write_resumes_to_the_same_model(tiny_data, tmp_path):
    args = ["train", "--data", str(tiny_data), "--sections", "S1", "S2", "--epochs", "6", "--seed", "3",
            "--device", "cpu", "--no-heldout"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    (tmp_path / "ref").mkdir()
    (tmp_path / "run").mkdir()
    ref, ck = tmp_path / "ref" / "m.pt", tmp_path / "run" / "m.pt"
    subprocess.run([*CLI, *args, "--out", str(ref)], env=env, check=True, capture_output=True)
    state = Path(str(ck) + ".state")
    epoch = lambda: torch.load(state, map_location="cpu", weights_only=True)["epoch"]  # noqa: E731

    _kill_at([*args, "--out", str(ck)], "step", 6, env)  # the second step of epoch 3
    assert epoch() == 2 and not ck.exists()  # the model is written at the end only
    _kill_at([*args, "--out", str(ck), "--resume"], "write", 2, env)  # writing epoch 4's state
    assert epoch() == 3 and not ck.exists()
    assert len(_temporaries(ck.parent)) == 1  # the killed writer's temporary, not yet renamed

    subprocess.run([*CLI, *args, "--out", str(ck), "--resume"], env=env, check=True, capture_output=True)
    (meta_a, a), (meta_b, b) = read_checkpoint(ref), read_checkpoint(ck)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["loss"] for h in meta_a.extra["history"]] == [h["loss"] for h in meta_b.extra["history"]]
    assert _temporaries(ck.parent) == []


def test_resume_state_of_another_run_is_refused(tiny_data, tmp_path, capsys):
    from napari_hggep.cli import main

    ck = tmp_path / "m.pt"
    assert main(["train", "--data", str(tiny_data), "--sections", "S1", "S2", "--epochs", "1", "--out", str(ck),
                 "--no-heldout", "--keep-state"]) == 0
    genes = tmp_path / "genes.txt"
    genes.write_text("GA\nGB\n")
    rc = main(["train", "--data", str(tiny_data), "--sections", "S1", "S2", "--epochs", "2", "--out", str(ck),
               "--genes", str(genes), "--resume", "--no-heldout"])
    err = capsys.readouterr().err
    assert rc == 2 and "another gene set (4 genes, this run 2)" in err
    rc = main(["train", "--data", str(tiny_data), "--sections", "S1", "--epochs", "2", "--out", str(ck), "--resume",
               "--no-heldout"])
    assert rc == 2 and "another set of training sections" in capsys.readouterr().err


def test_sigterm_during_predict_keeps_the_old_output_and_no_temporaries(tmp_path):
    from PIL import Image

    Image.fromarray(he_like_image(1600, 1600, seed=2)).save(tmp_path / "he.png")
    out = tmp_path / "pred.csv"
    out.write_text("keep me\n")
    p = subprocess.Popen([*CLI, "predict", str(tmp_path / "he.png"), "--grid", "--pitch-um", "20", "--um-per-px",
                          "1", "-o", str(out), "--device", "cpu"], stderr=subprocess.PIPE)
    seen = []
    reader = threading.Thread(target=lambda: seen.append(p.stderr.read()), daemon=True)
    buf = b""
    while p.poll() is None and b"predict [" not in buf:
        buf += os.read(p.stderr.fileno(), 256)
    reader.start()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM
    assert out.read_text() == "keep me\n" and _temporaries(tmp_path) == []


def test_a_sigkilled_writers_temporary_is_removed_by_the_next_write(tmp_path):
    from napari_hggep._atomic import _HOST

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "pred.csv"
    stale = tmp_path / f".pred.csv~{_HOST}~{dead.pid}~abc123.csv"
    live = tmp_path / f".pred.csv~{_HOST}~{os.getpid()}~def456.csv"  # a writer still running: kept
    other_host = tmp_path / f".pred.csv~elsewhere~{dead.pid}~ghi789.csv"  # not ours to judge: kept
    for f in (stale, live, other_host):
        f.write_text("partial")
    atomic_write_bytes(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert not stale.exists() and live.exists() and other_host.exists()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from napari_hggep._atomic import atomic_path

    target = tmp_path / "model.pt"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"good" and _temporaries(tmp_path) == []
