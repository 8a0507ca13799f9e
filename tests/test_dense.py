"""Dense grids: the shared trunk (napari_hggep.inference.dense) against the per-patch path, on the sample
section (HER2+ B4, shipped in the package) with the bundled model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_hggep.inference.dense import grid_pitch_um, iter_shared_tokens, use_shared_trunk
from napari_hggep.inference.predict import _patch_tokens, predict_slide


@pytest.fixture(scope="module")
def sample():
    from napari_hggep._napari.sample import sample_slide

    return sample_slide()


def _grid(sample, pitch_um: float, box_um: float | None = 450.0):
    """A hexagonal grid at ``pitch_um`` over the sample's tissue; with ``box_um``, only its spots
    in a square of that side around the tissue's middle (a few seconds for both paths)."""
    from napari_hggep.io.readers.open import grid_slide

    s = grid_slide(sample.image, sample.um_per_px, pitch_um, name="B4", source=sample.source)
    if box_um is None:
        return s
    c = s.coords_um
    mid = np.median(c, axis=0)
    keep = np.nonzero(np.all(np.abs(c - mid) < box_um / 2, axis=1))[0]
    sub = s.subset(keep)
    sub.info.tissue_checked = True
    return sub


def _tokens(model, slide, shared: bool):
    from napari_hggep.devices import MemoryGuard

    g = MemoryGuard(model, 128)
    out = torch.empty(slide.n_spots, 3, model.config.dim)
    it = iter_shared_tokens(model, slide, g, None, False) if shared else _patch_tokens(model, slide, g, None, False, 128)
    with torch.inference_mode():
        for idx, tok in it:
            out[torch.from_numpy(idx)] = tok
    return out


def _gene_pcc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return p[np.isfinite(p)]


def test_shared_trunk_agrees_with_the_per_patch_path(bundle, sample):
    s = _grid(sample, 25.0)
    assert 200 < s.n_spots < 800
    off = predict_slide(bundle, s, shared_trunk="off")
    on = predict_slide(bundle, s, shared_trunk="on")
    assert off.provenance.image_encoding == "per patch" and on.provenance.image_encoding == "shared trunk"
    pcc = _gene_pcc(off.values, on.values)
    assert len(pcc) > 700 and pcc.mean() >= 0.98, pcc.mean()
    # the image path's tokens themselves (what the statistics branch does not hide)
    a, b = _tokens(bundle.model, s, False), _tokens(bundle.model, s, True)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=2).mean(0)  # per stage
    assert bool((cos >= 0.97).all()), cos


def test_shared_trunk_is_exact_where_a_tile_is_one_patch(bundle, sample):
    """Isolated spots, no margin: each tile is the spot's own window, so the sampled stage maps
    are its patch's (the geometry of the sampling, for every flip/rotation view too)."""
    from napari_hggep.data.patches import extract_patches, to_tensor
    from napari_hggep.devices import MemoryGuard

    m = bundle.model.eval()
    s = sample.subset(np.arange(0, sample.n_spots, 97)[:4])
    g = MemoryGuard(m, 64)
    patches = to_tensor(extract_patches(s, m.config.patch_um, m.config.patch_px))
    with torch.inference_mode():
        for views in (1, 8):
            ref = m.encode_views(patches, views=views)
            out = torch.full_like(ref, float("nan"))
            for idx, tok in iter_shared_tokens(m, s, g, None, False, views=views, margin_px=0):
                out[torch.from_numpy(idx)] = tok
            assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (views, float((out - ref).abs().max()))


def test_sampling_matches_roi_align():
    """The stage-map sampling is torchvision's roi_align (aligned, one sample per bin) on the boxes."""
    from torchvision.ops import roi_align

    from napari_hggep.inference.dense import sample_boxes, sample_maps

    rng = np.random.default_rng(0)
    for c_, h, w, stride, cells in ((96, 43, 40, 16, 7), (64, 22, 21, 32, 4)):
        maps = torch.randn(1, c_, h, w)
        fp = np.c_[rng.random((50, 2)) * [(w - cells - 1) * stride, (h - cells - 1) * stride],
                   1 + rng.random((50, 2)) * 0.01]
        rois = torch.cat([torch.zeros(50, 1), torch.from_numpy(sample_boxes(fp, stride, cells))], dim=1)
        ref = roi_align(maps, rois, (cells, cells), 1.0, 1, True)
        out = sample_maps(maps, torch.from_numpy(fp), stride, cells)  # n x cells^2 x C, channels last
        assert out.shape == (50, cells * cells, c_)
        assert torch.allclose(out, ref.flatten(2).transpose(1, 2), atol=1e-4)
        for layout in (torch.channels_last, torch.contiguous_format):  # the trunk's maps may be either
            assert torch.allclose(sample_maps(maps.contiguous(memory_format=layout), torch.from_numpy(fp),
                                              stride, cells), out)


def test_fused_projection_equals_the_modules(bundle):
    """project_points (CBAM, pooling and projection fused, channels last) equals project on the
    same maps, for every stage of the bundled model (7x7 cells pooled to 2x2 with overlapping
    bins, and 4x4), with and without pooling."""
    from napari_hggep.model.hggep import StageProjection

    m = bundle.model.eval()
    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(33, c, s, s, generator=g) * 3 for c, s in ((96, 7), (192, 4), (1024, 4))]
    with torch.inference_mode():
        ref = m.project(maps)
        out = m.project_points([(x.flatten(2).transpose(1, 2), x.shape[2], x.shape[3]) for x in maps])
        assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5), float((out - ref).abs().max())
        sp = StageProjection(24, 5, 16, None, 4).eval()  # no pooling: every cell projected
        x = torch.rand(7, 24, 5, 5, generator=g)
        assert torch.allclose(sp.forward_points(x.flatten(2).transpose(1, 2), 5, 5), sp(x), atol=1e-5)


def test_auto_choice_by_spot_density(bundle, sample):
    cfg = bundle.config  # 70.5 um patches
    dense, sparse = _grid(sample, 25.0), _grid(sample, 100.0, None)
    assert grid_pitch_um(dense.coords_um) == pytest.approx(25.0, rel=0.05)
    assert use_shared_trunk(dense, cfg) and use_shared_trunk(dense, cfg, "auto")
    assert not use_shared_trunk(sparse, cfg)
    assert use_shared_trunk(sparse, cfg, "on") and not use_shared_trunk(dense, cfg, "off")
    assert not use_shared_trunk(dense.subset(np.array([0])), cfg)  # one spot: nothing to share
    assert not use_shared_trunk(dense, cfg.replace(image_path=False), "on")  # statistics only: nothing to encode
    with pytest.raises(ValueError, match="auto, on, off"):
        use_shared_trunk(dense, cfg, "sometimes")


def test_cli_flag_forces_either_way(bundle, sample, tmp_path, monkeypatch):
    import pandas as pd

    import napari_hggep.inference.dense as dense
    from napari_hggep.cli import main

    calls = []
    real = dense.iter_shared_tokens

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(dense, "iter_shared_tokens", spy)
    img = sample.source
    for pitch, flag, expect in ((100.0, "on", True), (25.0, "off", False)):  # forced against the density
        s = _grid(sample, pitch, 250.0)
        spots = tmp_path / f"spots_{pitch:g}.csv"
        pd.DataFrame({"spot_id": s.spot_ids, "x": s.xy[:, 0], "y": s.xy[:, 1]}).to_csv(spots, index=False)
        calls.clear()
        out = tmp_path / f"pred_{pitch:g}_{flag}.csv"
        assert main(["predict", img, "--spots", str(spots), "--um-per-px", str(sample.um_per_px), "-o", str(out),
                     "--device", "cpu", "--shared-trunk", flag]) == 0
        assert bool(calls) is expect, (pitch, flag)
        assert len(pd.read_csv(out)) == s.n_spots
    # and the parameter of predict_slide, by default chosen by density
    dense = _grid(sample, 25.0, 150.0)
    calls.clear()
    assert predict_slide(bundle, dense).provenance.image_encoding == "shared trunk" and calls
    with pytest.raises(SystemExit):
        main(["predict", img, "--grid", "-o", str(tmp_path / "x.csv"), "--shared-trunk", "maybe"])


def test_windows_are_the_full_scan_in_linear_time():
    """spatial_windows tests each spot's few candidate windows: the same windows, members and
    weights as scanning every window over every spot."""
    from napari_hggep.model.windows import spatial_windows

    def scan(xy, max_spots, overlap=0.25):
        lo, hi = xy.min(0), xy.max(0)
        area = max(float(np.prod(np.maximum(hi - lo, 1e-6))), 1e-6)
        t = np.sqrt(max_spots / (len(xy) / area)) / (1 + 2 * overlap)
        m = overlap * t
        nx, ny = (np.floor((hi - lo) / t).astype(int) + 1)
        out = []
        for i in range(nx):
            for j in range(ny):
                c0 = lo + np.array([i, j]) * t
                idx = np.nonzero(np.all((xy >= c0 - m) & (xy < c0 + t + m), axis=1))[0]
                if len(idx):
                    d = np.minimum(xy[idx] - (c0 - m), (c0 + t + m) - xy[idx]).min(axis=1)
                    out.append((idx, np.clip(d / max(m, 1e-9), 1e-6, 1.0)))
        return out

    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(60) * 16.0, np.arange(50) * 16.0), -1).reshape(-1, 2)
    for xy, k in ((rng.random((3000, 2)) * [3000, 5000], 500), (grid, 256), (grid, 7)):
        a, b = scan(xy, k), spatial_windows(xy, k)
        assert len(a) == len(b)
        for (i1, w1), (i2, w2) in zip(a, b):
            assert np.array_equal(i1, i2) and np.array_equal(w1, w2)


def test_dense_grids_attend_in_smaller_windows_with_the_same_result(bundle, sample, monkeypatch):
    """Dense grids attend within windows of DENSE_WINDOW_SPOTS spots (speed), and the smaller
    windows are really used; the maps agree with the model's own windows. The image path's own
    output (its head; the statistics branch makes most of the maps) agrees with one window holding
    every spot: windows keep the slide's origin for the position encoding (a window centred on
    itself gave PCC 0.53 here)."""
    import napari_hggep.inference.dense as dense
    import napari_hggep.model.hggep as hggep
    from napari_hggep.data.features import standardise_features, tissue_features

    s = _grid(sample, 25.0, 1200.0)
    spots, overlap = dense.DENSE_WINDOW_SPOTS, dense.DENSE_WINDOW_OVERLAP
    assert s.n_spots > 2 * spots
    seen = []
    real = hggep.spatial_windows

    def spy(coords, max_spots, *a, **k):
        seen.append((max_spots, *a))
        return real(coords, max_spots, *a, **k)

    monkeypatch.setattr(hggep, "spatial_windows", spy)
    small = predict_slide(bundle, s).values
    assert seen == [(spots, overlap)]
    monkeypatch.setattr(dense, "DENSE_WINDOW_SPOTS", bundle.config.window_spots)
    whole = predict_slide(bundle, s).values
    assert seen[-1][0] == bundle.config.window_spots
    pcc = [np.corrcoef(small[:, g], whole[:, g])[0, 1] for g in range(small.shape[1])
           if small[:, g].std() > 0 and whole[:, g].std() > 0]
    assert np.mean(pcc) >= 0.999 and np.min(pcc) >= 0.99

    m = bundle.model.eval()
    tokens = _tokens(m, s, True)
    stats = torch.from_numpy(standardise_features(tissue_features(s, m.config.context_um, m.config.stats_um_per_px)))
    coords = torch.from_numpy(s.coords_um.astype(np.float32))
    with torch.inference_mode():
        def image_path(spots, overlap):
            h = m.forward_tokens(tokens, coords, stats, zinb=False, window_spots=spots,
                                 window_overlap=overlap)["embedding"]
            return (m.head(h) @ m.pca_basis).numpy()

        one = image_path(s.n_spots, None)
        windowed = image_path(spots, overlap)
    assert np.mean(_gene_pcc(windowed, one)) >= 0.95  # 0.989 (windows centred on themselves: 0.53)
