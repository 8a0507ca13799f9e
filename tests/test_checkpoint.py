import pytest
from helpers import N_BUNDLED
import torch

import napari_hggep
from napari_hggep.model._bundled import bundled_checkpoint
from napari_hggep.model import HGGEP, preset
from napari_hggep.model.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    cfg = preset("compact", n_genes=6)
    m = HGGEP(cfg).eval()
    with torch.no_grad():  # not the silent start: outputs that differ between spots
        torch.nn.init.normal_(m.pca_basis)
        torch.nn.init.normal_(m.stats_head.weight)
        torch.nn.init.normal_(m.head.weight)
    path = tmp_path / "m.pt"
    genes = [f"G{i}" for i in range(6)]
    save_checkpoint(path, m, cfg, genes, {"mean": [0.0] * 6, "std": [1.0] * 6}, ["B4"], {"pcc": 0.1})
    return path, m, genes


def test_round_trip(saved):
    path, m, genes = saved
    b = load_checkpoint(path, device="cpu")
    assert b.genes == genes and b.config == m.config and b.card.sections == ["B4"]
    assert b.card.metrics == {"pcc": 0.1} and b.patch_um == m.config.patch_um
    x, c, s = torch.rand(5, 3, 112, 112), torch.rand(5, 2) * 1000, torch.randn(5, 90)
    with torch.no_grad():
        want = m(x, c, s)["expr"]
        assert want.std() > 0.01
        assert torch.allclose(b.model(x, c, s)["expr"], want, atol=1e-5 * max(1.0, float(want.abs().max())))


def test_truncated_file(saved):
    path = saved[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path.name)):
        read_checkpoint(path)


def test_tampered_file(saved, tmp_path):
    path = saved[0]
    raw = torch.load(path, weights_only=True)
    k = next(iter(raw["state_dict"]))
    raw["state_dict"][k] = raw["state_dict"][k] + 1
    bad = tmp_path / "tampered.pt"
    torch.save(raw, bad)
    with pytest.raises(CheckpointError, match="sha256"):
        read_checkpoint(bad)


def test_foreign_files(tmp_path):
    other = tmp_path / "resnet.pt"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a napari-hggep checkpoint"):
        read_checkpoint(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        read_checkpoint(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"meta_json": Evil(), "state_dict": {}, "sha256": ""}, p)
    with pytest.raises(CheckpointError, match="evil.pt"):
        read_checkpoint(p)


def test_failed_save_keeps_the_good_file(saved):
    path, m, genes = saved
    before = path.read_bytes()
    with pytest.raises(ValueError):
        save_checkpoint(path, m, m.config, genes[:3])  # wrong gene count
    assert path.read_bytes() == before


def test_load_model_bundled_or_clear_error():
    if bundled_checkpoint().is_file():
        b = napari_hggep.load_model(device="cpu")
        assert len(b.genes) == b.config.n_genes == N_BUNDLED >= 785
        assert b.card.gene_pcc, "the bundled model card must carry held-out PCC per gene"
    else:
        with pytest.raises(FileNotFoundError, match="no trained model is bundled"):
            napari_hggep.load_model()


def test_device_auto_cpu():
    from napari_hggep.devices import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    with pytest.raises(ValueError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            resolve_device("cuda")
