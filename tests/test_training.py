import numpy as np
import pytest
import torch

from napari_hggep.model import preset
from napari_hggep.training.augment import dihedral, hed_jitter, resolution_jitter, train_augment
from napari_hggep.training.dataset import SectionData
from napari_hggep.training.config import TrainConfig
from napari_hggep.training.initialise import gene_stats, init_stats_branch, pca_basis, smooth_targets
from napari_hggep.training.train import train_model
from napari_hggep.training.validation import validation_split

N_FEAT = 6


def section(name, n=30, g=5, seed=0):
    """Random patches; counts that depend on the tissue statistics (so a ridge can find them)."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    xy = np.array([(i % side, i // side) for i in range(n)], np.float32) * 200
    patches = rng.integers(0, 255, (n, 112, 112, 3), dtype=np.uint8)
    stats = rng.normal(size=(n, N_FEAT)).astype(np.float32)
    rate = np.exp(1.0 + 0.5 * stats[:, :1] @ np.ones((1, g)) + 0.3 * rng.normal(size=(n, g)))
    counts = rng.poisson(rate).astype(np.float32)
    aug = (stats + 0.1 * rng.normal(size=stats.shape).astype(np.float32),)
    return SectionData(name, patches, xy, np.log1p(counts), counts, np.array([f"s{i}" for i in range(n)]),
                       stats, aug)


def small_cfg(**over):
    return preset("compact", n_genes=5, stats_features=N_FEAT, pca_k=3, **over)


def test_validation_never_uses_held_out_section_and_section_split():
    secs = [section("A"), section("B", seed=1), section("C", seed=2)]
    m = validation_split(secs, 0.2, 0)
    assert all((~x).sum() == 6 for x in m)
    ms = validation_split(secs, 0.2, 0, "section")
    assert sum((~x).all() for x in ms) == 1 and sum(x.all() for x in ms) == 2
    with pytest.raises(ValueError):
        validation_split(secs[:1], 0.2, 0, "section")


def test_statistics_branch_starts_at_ridge_and_stays_frozen_image_path_trains():
    secs = [section("A"), section("B", seed=1)]
    cfg = small_cfg()
    tcfg = TrainConfig(epochs=2, device="cpu", ridge_alpha=10.0)
    bundle, hist = train_model(secs, cfg, [f"G{i}" for i in range(5)], tcfg)
    assert len(hist) == 2 and all(np.isfinite(h["loss"]) for h in hist)
    from napari_hggep.model import HGGEP

    masks = validation_split(secs, tcfg.val_frac, tcfg.seed)
    mean, std = gene_stats(secs, masks)
    z = [((s.target - mean) / std).astype(np.float32) for s in secs]
    fresh = HGGEP(cfg)
    fresh.pca_basis.copy_(torch.from_numpy(pca_basis(np.concatenate([a[m] for a, m in zip(z, masks)]), 3)))
    init_stats_branch(fresh, secs, z, masks, 10.0)
    assert fresh.stats_head.weight.abs().sum() > 0
    assert torch.allclose(bundle.model.stats_head.weight, fresh.stats_head.weight, atol=1e-6)
    assert torch.allclose(bundle.model.pca_basis, fresh.pca_basis, atol=1e-6)
    # the image path started silent and has learnt something
    assert bundle.model.head.weight.abs().sum() > 0


def test_pca_basis_orthonormal_and_output_in_its_span():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 8)) @ rng.normal(size=(8, 12))
    b = pca_basis(z, 4)
    assert np.allclose(b @ b.T, np.eye(4), atol=1e-5)
    # more components than the data has: the extra rows are zero
    assert np.allclose(pca_basis(z[:3], 5)[3:], 0)
    from napari_hggep.model import HGGEP

    m = HGGEP(preset("compact", n_genes=12, stats_features=N_FEAT, pca_k=4, image_path=False, smooth_weight=0.0))
    m.pca_basis.copy_(torch.from_numpy(b))
    torch.nn.init.normal_(m.stats_head.weight)
    out = m(None, torch.rand(20, 2) * 1000, torch.randn(20, N_FEAT))
    expr = out["expr"].detach().numpy()
    assert np.allclose(expr @ b.T @ b, expr, atol=1e-4)  # lies in the 4-d span


def test_statistics_only_model_is_the_closed_form_ridge():
    secs = [section("A", n=40), section("B", n=40, seed=1), section("C", n=40, seed=2)]
    cfg = small_cfg(image_path=False, smooth_weight=0.0)
    bundle, hist = train_model(secs, cfg, [f"G{i}" for i in range(5)], TrainConfig(device="cpu"))
    assert hist == []
    # alpha was chosen within the training sections, and the model predicts the held-out signal
    assert bundle.card.extra["ridge_alpha"] in (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
    from napari_hggep.training.metrics import gene_pcc
    from napari_hggep.training.validation import predict_section

    test = section("T", n=60, seed=7)
    tn = bundle.target_norm
    pred = predict_section(bundle.model, test, np.array(tn["mean"]), np.array(tn["std"]), "cpu")
    assert np.nanmean(gene_pcc(pred, test.target)) > 0.3


def test_frozen_pretrained_trunk_stays_fixed(tmp_path):
    from napari_hggep.model.pretrained import read_backbone
    from napari_hggep.training.pretrain import PretrainConfig, pretrain

    from helpers import he_like_image
    from napari_hggep.data.slide import Slide

    img = he_like_image(400, 400)
    slide = Slide(img, 0.5, np.array(["a"]), np.array([[200.0, 200.0]]), name="S")
    bb = tmp_path / "bb.pt"
    meta = pretrain([slide], PretrainConfig(max_steps=2, batch_size=8, patches_per_slide=32, device="cpu",
                                            minutes=5), out=bb)
    assert meta["steps"] == 2 and bb.is_file()
    state, _ = read_backbone(bb)
    secs = [section("A"), section("B", seed=1)]
    tcfg = TrainConfig(epochs=2, device="cpu", backbone=str(bb), freeze_backbone=True)
    bundle, hist = train_model(secs, small_cfg(), [f"G{i}" for i in range(5)], tcfg)
    own = bundle.model.state_dict()
    for k, v in state.items():
        assert torch.allclose(own[k].float(), v.float()), k
    assert bundle.card.pretrained_backbone["steps"] == 2


def test_augmentations_keep_range_shape_and_identities():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 3, 16, 16) * 0.8 + 0.1
    y = train_augment(x, g, 0.1, 0.63, 70.5, (0.5, 4.0), hed=0.2)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    # flips and rotations only permute pixels
    z = dihedral(x, g)
    assert torch.allclose(z.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    # no stain change: HED -> RGB round trip is the identity
    assert torch.allclose(hed_jitter(x, g, 0.0, 0.0), x, atol=1e-4)
    # a resolution no coarser than the patches' own changes nothing; a coarse one blurs
    assert torch.equal(resolution_jitter(x, g, 0.63, 70.5, 0.3, 0.6), x)
    sharp = torch.rand(4, 3, 112, 112)
    blurred = resolution_jitter(sharp, g, 0.63, 70.5, 3.9, 4.0)
    assert (blurred.diff(dim=-1).abs().mean() < 0.5 * sharp.diff(dim=-1).abs().mean())


def test_smooth_targets_blends_ring_neighbours():
    xy = np.array([[0, 0], [200, 0], [400, 0], [5000, 5000]], np.float32)
    t = np.array([[0.0], [3.0], [6.0], [9.0]], np.float32)
    s = smooth_targets(t, xy, 0.5)
    assert s[1, 0] == pytest.approx(0.5 * 3 + 0.5 * 3)  # neighbours 0 and 6
    assert s[0, 0] == pytest.approx(1.5) and s[3, 0] == pytest.approx(9.0)  # isolated spot unchanged
