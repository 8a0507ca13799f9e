import pytest
import torch
import torch.nn.functional as F

from napari_hggep.model import HGGEP, HGGEPConfig, preset
from napari_hggep.model.gem import CentralDifferenceConv2d, GEM
from napari_hggep.model.losses import hggep_loss
from napari_hggep.model.transformer import position_encoding


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: HGGEP(preset(name)).eval() for name in ("compact", "paper")}


@pytest.mark.parametrize("name", ["compact", "paper"])
@pytest.mark.parametrize("n", [1, 2, 7, 300])
def test_output_shapes(models, name, n):
    m = models[name]
    x = torch.rand(n, 3, 112, 112)
    c = torch.rand(n, 2) * 5000
    stats = torch.randn(n, m.config.stats_features) if m.config.stats_features else None
    with torch.no_grad():
        out = m(x, c, stats)
    d = m.config.dim
    assert out["expr"].shape == (n, 785)
    assert out["embedding"].shape == (n, d)
    for k in ("mean", "disp", "pi"):
        assert out[k].shape == (n, 785)
        assert torch.isfinite(out[k]).all()
    assert torch.isfinite(out["expr"]).all()
    assert (out["pi"] >= 0).all() and (out["pi"] <= 1).all() and (out["disp"] > 0).all()


def test_paper_shapes_match_spec(models):
    m = models["paper"]
    cfg = m.config
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.lstm_layers, cfg.k, cfg.gem_theta, cfg.patch_px) == (1024, 4, 8, 4, 3, 0.7, 112)
    with torch.no_grad():
        g = m.gem(torch.rand(2, 3, 112, 112))
        s3, s4, s5 = m.backbone(g)
    assert g.shape == (2, 3, 56, 56)
    assert s3.shape[1:2] == (96,) and s4.shape[1:] == (192, 4, 4) and s5.shape[1:] == (1024, 4, 4)
    assert m.ham.conv1.out_channels == 512 and m.ham.conv2.out_channels == 1024


def test_compact_weights_are_small(models):
    n = sum(p.numel() for p in models["compact"].parameters())
    assert n * 2 <= 10 * 2**20, f"compact preset has {n} parameters ({n * 2 / 2**20:.1f} MB fp16)"


def test_theta_zero_cdc_equals_plain_conv():
    torch.manual_seed(1)
    cdc = CentralDifferenceConv2d(3, 5, 3, stride=2, padding=1, theta=0.0)
    x = torch.randn(4, 3, 17, 17)
    assert torch.allclose(cdc(x), F.conv2d(x, cdc.weight, stride=2, padding=1), atol=1e-6)


def test_cdc_matches_definition():
    torch.manual_seed(2)
    theta = 0.7
    cdc = CentralDifferenceConv2d(2, 3, 3, stride=1, padding=1, theta=theta)
    x = torch.randn(1, 2, 6, 6)
    y = cdc(x)
    # direct evaluation at one interior output pixel (i, j)
    i, j = 3, 2
    w = cdc.weight
    patch = x[0, :, i - 1 : i + 2, j - 1 : j + 2]
    direct = (w * patch).sum(dim=(1, 2, 3)) - theta * (x[0, :, i, j][None, :] * w.sum(dim=(2, 3))).sum(1)
    assert torch.allclose(y[0, :, i, j], direct, atol=1e-5)


def test_gem_theta_zero_branches_equal():
    torch.manual_seed(3)
    gem = GEM(3, theta=0.0).eval()
    gem.cdc[0].weight.data.copy_(gem.plain[0].weight.data)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(gem.plain(x), gem.cdc(x), atol=1e-6)


def test_position_encoding_any_layout():
    # 10x Visium has 78 x 128 array positions; the reference's 64-entry embedding breaks there
    rows, cols = torch.meshgrid(torch.arange(78), torch.arange(128), indexing="ij")
    c = torch.stack([cols.flatten() * 100.0, rows.flatten() * 86.6], dim=1)
    pe = position_encoding(c, 128)
    assert pe.shape == (78 * 128, 128) and torch.isfinite(pe).all()
    assert torch.unique(pe, dim=0).shape[0] == 78 * 128  # every position distinct
    assert torch.allclose(position_encoding(c + 1234.0, 128), pe, atol=1e-3)  # translation invariant


def test_config_round_trip():
    cfg = preset("compact", k=5, ham_rule="largest")
    assert HGGEPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        HGGEPConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="preset"):
        preset("huge")


def test_few_steps_lower_the_loss():
    torch.manual_seed(0)
    cfg = preset("compact", n_genes=20, dropout=0.0)
    m = HGGEP(cfg)
    with torch.no_grad():
        m.pca_basis.copy_(torch.linalg.qr(torch.randn(20, cfg.pca_k)).Q.T)
    n = 24
    x = torch.rand(n, 3, 112, 112)
    c = torch.rand(n, 2) * 2000
    target = torch.randn(n, 20)
    stats = torch.randn(n, cfg.stats_features)
    counts = torch.poisson(torch.full((n, 20), 3.0))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = hggep_loss(m(x, c, stats), target, counts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_channels_last_input_trains():
    """uint8 HWC patches permuted to NCHW are channels-last; oneDNN crashed on them in backward."""
    m = HGGEP(preset("compact", n_genes=8, stats_features=0, pca_k=None))
    x = torch.rand(30, 112, 112, 3).permute(0, 3, 1, 2)
    m(x, torch.rand(30, 2) * 1000)["expr"].sum().backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cpu_and_cuda_agree():
    torch.manual_seed(0)
    m = HGGEP(preset("compact", pca_k=None)).eval()
    torch.nn.init.normal_(m.head.weight)
    x, c, s = torch.rand(64, 3, 112, 112), torch.rand(64, 2) * 3000, torch.randn(64, 90)
    with torch.no_grad():
        a = m(x, c, s)["expr"]
        b = m.cuda()(x.cuda(), c.cuda(), s.cuda())["expr"].cpu()
    assert (a - b).abs().max() < 1e-3


def test_slide_colour_norm_uses_slide_statistics():
    from napari_hggep.model.hggep import colour_stats_of

    torch.manual_seed(0)
    m = HGGEP(preset("compact", n_genes=4, colour_norm="slide")).eval()
    x = torch.rand(12, 3, 112, 112)
    with torch.no_grad():
        whole = m.encode(x)  # the batch is the slide
        stats = colour_stats_of(x)
        batched = torch.cat([m.encode(x[:5], stats), m.encode(x[5:], stats)])
        # a stain shift of the whole slide is removed
        shifted = m.encode(x * 0.8 + 0.1)
    assert torch.allclose(whole, batched, atol=1e-5)
    assert torch.allclose(whole, shifted, atol=1e-3)


def test_tta_views_average_flips_and_rotations():
    torch.manual_seed(0)
    m = HGGEP(preset("compact")).eval()  # its features depend on orientation
    x = torch.zeros(3, 3, 112, 112)
    x[:, 0, :, :40] = 1.0
    x[:, 2, 70:, :] = 0.7
    with torch.no_grad():
        a = m.encode_views(x, views=8)
        b = m.encode_views(torch.rot90(x, 1, dims=(2, 3)), views=8)  # 8 views are rotation invariant
        one = m.encode_views(x, views=1)
    # 8 views are rotation invariant, while a single view depends on orientation
    assert (a - one).abs().max() > 0 and (a - b).abs().max() < 1e-2 * (a - one).abs().max()


def test_statistics_only_model_and_bad_statistics():
    m = HGGEP(preset("compact", n_genes=10, image_path=False)).eval()
    assert not hasattr(m, "backbone")  # no image path at all
    with torch.no_grad():
        torch.nn.init.normal_(m.pca_basis)
        torch.nn.init.normal_(m.stats_head.weight)
        out = m(None, torch.rand(5, 2) * 1000, torch.randn(5, 90))
    assert out["expr"].shape == (5, 10) and "mean" not in out
    with pytest.raises(ValueError, match="tissue statistics"):
        m(None, torch.rand(5, 2) * 1000)
    with pytest.raises(ValueError, match="expects 90"):
        m(None, torch.rand(5, 2) * 1000, torch.randn(5, 30))
    with pytest.raises(ValueError, match="image path"):
        HGGEP(preset("compact", image_path=False, stats_features=0))


def test_neighbour_blend_ring():
    from napari_hggep.model.smoothing import neighbour_blend

    xy = torch.tensor([[0.0, 0.0], [200.0, 0.0], [400.0, 0.0], [5000.0, 5000.0]])
    x = torch.tensor([[0.0], [3.0], [6.0], [9.0]])
    y = neighbour_blend(x, xy, 0.5)
    assert torch.allclose(y[:, 0], torch.tensor([1.5, 3.0, 4.5, 9.0]))
    assert torch.equal(neighbour_blend(x, xy, 0.0), x)


def test_spatial_windows_cover_every_spot_and_stay_small():
    import numpy as np

    from napari_hggep.model.windows import spatial_windows

    rng = np.random.default_rng(0)
    xy = np.array([(x, y) for x in range(0, 20000, 100) for y in range(0, 10000, 100)], float)  # 20,000 spots
    xy += rng.normal(0, 5, xy.shape)
    wins = spatial_windows(xy, 2000)
    assert len(wins) > 1
    best = np.zeros(len(xy))
    for idx, w in wins:
        assert len(idx) <= 1.3 * 2000 and (w > 0).all() and (w <= 1).all()
        np.maximum.at(best, idx, w)
    assert (best == 1).all()  # every spot is in the core of a window
    one = spatial_windows(xy[:500], 2000)
    assert len(one) == 1 and (one[0][1] == 1).all()


def test_windowed_slide_matches_whole_slide_when_it_fits_and_blends_otherwise():
    torch.manual_seed(0)
    m = HGGEP(preset("compact", n_genes=6, stats_features=0, pca_k=None, dropout=0.0)).eval()
    torch.nn.init.normal_(m.head.weight)
    g = torch.stack(torch.meshgrid(torch.arange(30.0), torch.arange(20.0), indexing="ij"), -1).reshape(-1, 2) * 100
    tokens = torch.randn(len(g), 3, m.config.dim)
    with torch.no_grad():
        whole = m.forward_tokens(tokens, g)["expr"]
        m.config = m.config.replace(window_spots=len(g))  # exactly fits: one window, same result
        assert torch.equal(m.forward_tokens(tokens, g)["expr"], whole)
        m.config = m.config.replace(window_spots=150)  # 600 spots in overlapping windows
        win = m.forward_tokens(tokens, g)["expr"]
    assert win.shape == whole.shape and torch.isfinite(win).all()
    # attention is global in one and windowed (a quarter of the slide) in the other: an untrained
    # model mixes the whole slide, yet the windowed map still follows the whole-slide one
    r = torch.corrcoef(torch.stack([win.flatten(), whole.flatten()]))[0, 1]
    assert r > 0.5, float(r)


def test_fast_inference_layout_gives_the_same_tokens():
    import copy

    from napari_hggep.model.hggep import use_fast_inference_layout

    torch.manual_seed(0)
    m = HGGEP(preset("compact")).eval()
    fast = copy.deepcopy(m)
    use_fast_inference_layout(fast)
    x = torch.rand(16, 3, 112, 112)
    with torch.inference_mode():
        a = m.encode(x)
        b = fast.encode(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(a, b, atol=1e-5 * max(1.0, float(a.abs().max())))
