"""``train --encoder timm:ARCH --encoder-weights FILE`` on tiny sections, then ``predict`` (issue 35): a
random-init timm ViT saved to a local file (the real loading code, nothing downloaded); another
weights file is refused with exit status 2; a repeated prediction takes the encoder's maps from disk."""
from __future__ import annotations

import json

import pytest
import torch

from napari_hggep import load_model, predict_slide
from napari_hggep.cli import main

pytest.importorskip("timm")
from helpers import VIT, save_random_vit  # noqa: E402
ARCH = VIT
_vit = save_random_vit


def test_train_and_predict_on_a_timm_encoder(tiny_data, tmp_path, monkeypatch, capsys):
    from napari_hggep.io.readers import read_her2st
    from napari_hggep.training.feature_cache import ENV

    monkeypatch.setenv(ENV, str(tmp_path / "cache"))
    w, other = _vit(tmp_path / "vit.pth", 0), _vit(tmp_path / "other.pth", 1)
    ck = tmp_path / "m.pt"
    rc = main(["train", "--data", str(tiny_data), "--encoder", f"timm:{ARCH}", "--encoder-weights", str(w),
               "--encoder-arg", "img_size=112", "--epochs", "2", "--branches", "both", "--no-heldout",
               "--device", "cpu", "--out", str(ck)])
    assert rc == 0
    card = json.loads(ck.with_suffix(".json").read_text())
    e = card["config"]["encoder"]
    assert (e["name"], e["arch"], e["input_px"], e["stored"]) == ("timm", ARCH, 112, False)
    assert card["encoder"]["weights_sha256"] == e["weights_sha256"] and len(e["weights_sha256"]) == 64
    assert "timm:vit_tiny_patch16_224 encoder, frozen" in card["extra"]["study"]["recipe"]
    assert not any(k.startswith("backbone.") for k in torch.load(ck, weights_only=True)["state_dict"])
    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_data / "S1"), "--model", str(ck), "-o", str(out)]) == 0
    assert out.is_file()
    assert main(["predict", str(tiny_data / "S1"), "--model", str(ck), "--encoder-weights", str(w),
                 "-o", str(tmp_path / "p1.csv")]) == 0
    assert (tmp_path / "p1.csv").read_text() == out.read_text()
    capsys.readouterr()
    rc = main(["predict", str(tiny_data / "S1"), "--model", str(ck), "--encoder-weights", str(other),
               "-o", str(tmp_path / "p2.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "sha256" in err and "--encoder-weights" in err and "vit.pth" in err
    assert not (tmp_path / "p2.csv").exists()
    # a repeated prediction does not run the encoder: its maps come from the disk cache
    monkeypatch.setenv(ENV, str(tmp_path / "cache2"))
    b = load_model(ck, device="cpu")
    calls = []
    b.model.backbone.register_forward_hook(lambda *a: calls.append(1))
    slide = read_her2st(tiny_data / "S1", with_counts=False)
    p1 = predict_slide(b, slide)
    n = len(calls)
    p2 = predict_slide(b, slide)
    assert n > 0 and len(calls) == n and (p1.values == p2.values).all()
    # leave-one-out by retraining on the same encoder: the sections' maps come from the cache
    capsys.readouterr()
    res = tmp_path / "loo"
    assert main(["evaluate", "--loo", "--data", str(tiny_data), "--encoder", f"timm:{ARCH}", "--encoder-weights",
                 str(w), "--encoder-arg", "img_size=112", "--epochs", "1", "--resample-um", "--device", "cpu",
                 "--out", str(res)]) == 0
    assert set(json.loads((res / "loo.json").read_text())["per_section"]) == {"S1", "S2"}


def test_imagenet_encoder_trains_and_predicts_with_the_package_weights(tiny_data, tmp_path, monkeypatch):
    from napari_hggep.training.feature_cache import ENV

    monkeypatch.setenv(ENV, str(tmp_path / "cache"))
    ck = tmp_path / "m.pt"
    assert main(["train", "--data", str(tiny_data), "--encoder", "imagenet", "--epochs", "1", "--branches", "image",
                 "--no-heldout", "--device", "cpu", "--out", str(ck)]) == 0
    b = load_model(ck, device="cpu")
    assert (b.config.encoder.name, b.config.patch_px, b.config.patch_um) == ("imagenet", 224, 110.0)
    assert b.card.encoder["weights_sha256"].startswith("579344248a93")
    assert main(["predict", str(tiny_data / "S2"), "--model", str(ck), "-o", str(tmp_path / "p.csv")]) == 0


def test_shufflenet_weights_are_the_backbone_option(tiny_data, tmp_path, capsys):
    bad = tmp_path / "bad_bb.pt"
    bad.write_bytes(b"not a torch file")
    out = str(tmp_path / "m.pt")
    rc = main(["train", "--data", str(tiny_data), "--epochs", "1", "--out", out, "--encoder", "shufflenet",
               "--encoder-weights", str(bad)])
    assert rc == 2 and "bad_bb.pt" in capsys.readouterr().err  # read as --backbone is, before any section
    rc = main(["train", "--data", str(tiny_data), "--out", out, "--encoder-weights", str(bad), "--backbone",
               str(tmp_path / "other.pt")])
    assert rc == 2 and "give one of them" in capsys.readouterr().err
