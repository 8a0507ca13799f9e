"""A pretrained encoder's pooled features in the statistics branch (issue 35): trained and predicted
with a random-init timm ViT saved to a local file (the real loading code, nothing downloaded), the
weights' sha256 checked for a model that reads only pooled features, each training keeping them
only when they add at least 0.005 mean PCC within its own sections, and the fast ridge path equal
to the plain solve."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_hggep.cli import main

pytest.importorskip("timm")
from helpers import VIT, save_random_vit  # noqa: E402
ARCH = VIT
_vit = save_random_vit


def test_pooled_features_train_predict_and_their_weights_are_checked(tiny_data, tmp_path, monkeypatch, capsys):
    from napari_hggep import load_model, predict_slide
    from napari_hggep.io.readers import read_her2st
    from napari_hggep.training.feature_cache import ENV

    monkeypatch.setenv(ENV, str(tmp_path / "cache"))
    w, other = _vit(tmp_path / "vit.pth", 0), _vit(tmp_path / "other.pth", 1)
    ck = tmp_path / "m.pt"
    # the weight fixed (random tiny sections would not earn their place otherwise)
    assert main(["train", "--data", str(tiny_data), "--encoder", f"timm:{ARCH}", "--encoder-weights", str(w),
                 "--encoder-arg", "img_size=112", "--branches", "stats", "--pooled-um", "110", "330",
                 "--pooled-weight", "1", "--no-heldout", "--device", "cpu", "--out", str(ck)]) == 0
    card = json.loads(ck.with_suffix(".json").read_text())
    cfg = card["config"]
    assert cfg["image_path"] is False and cfg["pooled_um"] == [110.0, 330.0]
    assert cfg["pooled_features"] == 2 * 3 * 192  # two crops x three ViT blocks' 192-wide tokens, averaged
    assert cfg["stats_features"] == cfg["pooled_features"] + 90
    assert card["extra"]["pooled_features"] == {"weight": 1.0, "kept": True, "chosen": "fixed (--pooled-weight)"}
    state = torch.load(ck, weights_only=True)["state_dict"]
    assert not any(k.startswith("backbone.") for k in state)  # the encoder's weights stay in the user's file
    pooled_block = state["stats_head.weight"][:, 90:].float()
    assert pooled_block.abs().sum() > 0  # the ridge reads them

    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_data / "S2"), "--model", str(ck), "-o", str(out)]) == 0
    capsys.readouterr()
    rc = main(["predict", str(tiny_data / "S2"), "--model", str(ck), "--encoder-weights", str(other),
               "-o", str(tmp_path / "p2.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "sha256" in err and not (tmp_path / "p2.csv").exists()
    # the features from the disk cache are those computed afresh
    slide = read_her2st(tiny_data / "S2", with_counts=False)
    cached = predict_slide(load_model(ck, device="cpu"), slide).values
    monkeypatch.setenv(ENV, "off")
    fresh = predict_slide(load_model(ck, device="cpu"), slide).values
    np.testing.assert_array_equal(cached, fresh)


def test_the_image_branch_reads_the_encoders_pooled_features_alone(tiny_data, tmp_path, monkeypatch):
    """``--branches image`` with a pretrained encoder: everything from the encoder, the multi-stage
    image path and the ridge on its pooled features; no tissue statistics are computed, in training
    or in prediction."""
    from napari_hggep import load_model, predict_slide
    from napari_hggep.data import features
    from napari_hggep.io.readers import read_her2st
    from napari_hggep.training.feature_cache import ENV

    monkeypatch.setenv(ENV, str(tmp_path / "cache"))
    w = _vit(tmp_path / "vit.pth", 0)
    ck = tmp_path / "m.pt"
    calls = []
    real = features.tissue_features
    from napari_hggep.training import dataset

    counted = lambda *a, **k: (calls.append(1), real(*a, **k))[1]  # noqa: E731
    monkeypatch.setattr(features, "tissue_features", counted)  # prediction's
    monkeypatch.setattr(dataset, "tissue_features", counted)  # training's
    assert main(["train", "--data", str(tiny_data), "--encoder", f"timm:{ARCH}", "--encoder-weights", str(w),
                 "--encoder-arg", "img_size=112", "--branches", "image", "--epochs", "1", "--no-heldout",
                 "--device", "cpu", "--out", str(ck)]) == 0
    cfg = json.loads(ck.with_suffix(".json").read_text())["config"]
    assert cfg["image_path"] is True and cfg["stats_features"] == cfg["pooled_features"] == 2 * 3 * 192
    b = load_model(ck, device="cpu")
    assert b.config.tissue_features == 0
    pred = predict_slide(b, read_her2st(tiny_data / "S2", with_counts=False))
    assert np.isfinite(pred.values).all() and pred.values.std(0).max() > 0
    assert calls == []  # neither training nor prediction computed tissue statistics


def _sections(n_sections=3, n=120, informative_pooled=False, seed=0):
    from napari_hggep.training.dataset import SectionData

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_sections):
        tissue = rng.normal(size=(n, 90))
        signal = tissue[:, :4] @ rng.normal(size=(4, 6)) * 0.5
        pooled = rng.normal(size=(n, 40))
        if informative_pooled:  # what the tissue statistics miss, the pooled features see
            hidden = rng.normal(size=(n, 6))
            pooled[:, :6] = hidden
            signal = signal + hidden
        target = (signal + 0.3 * rng.normal(size=signal.shape)).astype(np.float32) + 3
        out.append(SectionData(f"S{k}", np.zeros((n, 8, 8, 3), np.uint8), rng.random((n, 2)).astype(np.float32) * 1000,
                               target, np.expm1(target).astype(np.float32), np.arange(n).astype(str),
                               tissue.astype(np.float32), (), pooled.astype(np.float32)))
    return out


@pytest.mark.parametrize("informative", [False, True])
def test_a_training_keeps_pooled_features_only_when_they_add(informative):
    from napari_hggep.model.config import HGGEPConfig
    from napari_hggep.model.encoders import make_spec
    from napari_hggep.training.config import TrainConfig
    from napari_hggep.training.train import train_model

    spec, _ = make_spec("imagenet")
    cfg = HGGEPConfig(n_genes=6, image_path=False, stats_features=130, pca_k=None, zinb=False).with_encoder(spec)
    cfg = cfg.replace(pooled_um=(110.0, 330.0), pooled_features=40)
    sections = _sections(informative_pooled=informative)
    if informative:  # sections of two patients: the features are held out by patient
        for sec, patient in zip(sections, ("P1", "P1", "P2")):
            sec.patient = patient
    bundle, _ = train_model(sections, cfg, [f"G{i}" for i in range(6)], TrainConfig(epochs=1, device="cpu"))
    note = bundle.card.extra["pooled_features"]
    assert note["kept"] is informative and (note["gain"] >= 0.005) is informative
    assert note["held_out_by"] == ("patient" if informative else "section")
    if informative:
        assert bundle.config.pooled_features == 40 and bundle.model.stats_head.weight.shape[1] == 130
    else:  # left out of the model: predicting never runs the encoder for them
        assert bundle.config.pooled_um == () and bundle.config.stats_features == 90
        assert bundle.model.stats_head.weight.shape[1] == 90


def test_pooled_features_with_nothing_to_choose_on_are_left_out():
    from napari_hggep.model.config import HGGEPConfig
    from napari_hggep.model.encoders import make_spec
    from napari_hggep.training.config import TrainConfig
    from napari_hggep.training.train import train_model

    spec, _ = make_spec("imagenet")
    cfg = HGGEPConfig(n_genes=6, image_path=False, stats_features=130, pca_k=None, zinb=False).with_encoder(spec)
    cfg = cfg.replace(pooled_um=(110.0, 330.0), pooled_features=40)
    one = _sections(informative_pooled=True)[:1]  # one training section: one group, nothing held out
    plain, _ = train_model(one, cfg, [f"G{i}" for i in range(6)], TrainConfig(epochs=1, device="cpu"))
    assert plain.card.extra["pooled_features"]["chosen"] == "one training group: nothing to choose on"
    assert plain.config.pooled_um == ()


@pytest.mark.parametrize("n_features", [20, 400])  # more spots than features, and fewer
def test_the_ridge_path_scores_what_a_plain_solve_scores(n_features):
    from napari_hggep.training.baseline import ALPHAS, ridge_scores, ridge_solve

    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(60, n_features)) for _ in range(3)]
    ys = [x[:, :3] @ rng.normal(size=(3, 5)) + rng.normal(size=(60, 5)) for x in xs]

    def score(pred, i):
        return float(np.mean([np.corrcoef(pred[:, g], ys[i][:, g])[0, 1] for g in range(5)]))

    want = []
    for a in ALPHAS:
        s = []
        for i in range(3):
            x = np.concatenate([v for j, v in enumerate(xs) if j != i])
            y = np.concatenate([v for j, v in enumerate(ys) if j != i])
            s.append(score(xs[i] @ ridge_solve(x, y - y.mean(0), a) + y.mean(0), i))
        want.append(np.mean(s))
    np.testing.assert_allclose(ridge_scores(xs, ys, score), want, rtol=1e-6, atol=1e-9)


def test_pooled_crops_need_a_pretrained_encoder(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "m.pt")
    assert main(["train", "--data", str(tiny_data), "--pooled-um", "110", "--out", out]) == 2
    assert "--pooled-um needs a pretrained encoder" in capsys.readouterr().err
    assert main(["train", "--data", str(tiny_data), "--encoder", "imagenet", "--pooled-um", "wide", "--out",
                 out]) == 2
    assert "'wide'" in capsys.readouterr().err


def test_the_estimated_cost_counts_the_encoder_over_each_crop():
    from napari_hggep.inference.cost import ENCODER_PATCHES_PER_S, estimate_cost
    from napari_hggep.model.config import HGGEPConfig
    from napari_hggep.model.encoders import make_spec

    spec, _ = make_spec("imagenet")
    plain = HGGEPConfig(n_genes=785, image_path=False, stats_features=90).with_encoder(spec)
    pooled = plain.replace(pooled_um=(110.0, 330.0), pooled_features=2864, stats_features=2954)
    a = estimate_cost(3000, 785, 0.5, plain, free_bytes=1 << 40)
    b = estimate_cost(3000, 785, 0.5, pooled, free_bytes=1 << 40)
    assert b.seconds - a.seconds == pytest.approx(3000 * 2 / ENCODER_PATCHES_PER_S["imagenet"])
    assert b.memory_bytes > a.memory_bytes


def test_sections_read_back_from_their_cache_files_are_the_sections(tiny_data, tmp_path, monkeypatch):
    """Training and study caches (``--cache DIR``) give back every array, the pooled features
    included; a study's older files, which did not store the name, still read."""
    from napari_hggep.io.readers.samples import rows_from_data_dir
    from napari_hggep.model.config import preset
    from napari_hggep.training.config import TrainConfig
    from napari_hggep.training.dataset import load_sections, read_genes, read_section_file, write_section_file
    from napari_hggep.training.feature_cache import ENV
    from napari_hggep.training.study import Study, StudyOptions

    monkeypatch.setenv(ENV, str(tmp_path / "maps"))
    genes = read_genes(tiny_data / "genes.txt")
    cfg = preset("compact", n_genes=len(genes))
    first = load_sections(tiny_data, ["S1"], genes, cfg, tmp_path / "c", stats_res_copies=1)
    again = load_sections(tiny_data, ["S1"], genes, cfg, tmp_path / "c", stats_res_copies=1)
    assert len(list((tmp_path / "c").iterdir())) == 1

    def same(a, b):
        assert a.name == b.name and len(a.stats_aug) == len(b.stats_aug) == 1
        for k in ("patches", "coords_um", "target", "counts", "spot_ids", "stats"):
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
        np.testing.assert_array_equal(a.stats_aug[0], b.stats_aug[0])

    same(first[0], again[0])
    from napari_hggep.model.encoders import make_spec

    opts = StudyOptions(hvg=3, branches="stats", encoder=make_spec("imagenet")[0], cache=str(tmp_path / "s"),
                        stats_res_copies=1, train=TrainConfig(epochs=1, device="cpu"))
    rows = rows_from_data_dir(tiny_data, ["S1", "S2"])
    a, b = Study(rows, opts, log=lambda m: None), Study(rows, opts, log=lambda m: None)
    a.load()
    b.load()  # from the files
    for x, y in zip(a.sections, b.sections):
        same(x, y)
        assert x.pooled is not None and x.pooled.shape == (x.n_spots, a.config.pooled_features)
        np.testing.assert_array_equal(x.pooled, y.pooled)
    # a file as a study wrote it before the name was stored
    old = tmp_path / "old.npz"
    write_section_file(old, a.sections[0])
    with np.load(old) as z:
        np.savez(old, **{k: z[k] for k in z.files if k != "name"})
    assert read_section_file(old, 1).name == "old"
