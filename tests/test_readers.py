
import numpy as np
import pandas as pd
import pytest
import tifffile

from helpers import he_like_image, smooth_he, write_her2st, write_visium
from napari_hggep.data import SlideError
from napari_hggep.io.readers import open_slide, read_her2st, read_visium
from napari_hggep.data.image import image_um_per_px, read_image
from napari_hggep.data.patches import extract_patches, patch_window_px
from napari_hggep.io.readers.open import is_visium_folder, read_image_with_grid, read_image_with_spots
from napari_hggep.data.tissue import tissue_mask


def test_her2st_round_trip(tmp_path):
    img = he_like_image()
    f = write_her2st(tmp_path / "S1", img)
    s = read_her2st(f, genes=["GB", "GA", "MISSING"])
    assert s.n_spots == 63 and s.genes == ["GB", "GA", "MISSING"]
    assert s.counts.shape == (63, 3) and (s.counts[:, 2] == 0).all()
    raw = pd.read_csv(f / "counts.tsv.gz", sep="\t", index_col=0)
    assert np.array_equal(s.counts[:, 1], raw.loc[s.spot_ids, "GA"].to_numpy())
    assert s.um_per_px == pytest.approx(200 / 40, rel=1e-3)  # 200 um pitch over 40 px
    assert s.spot_ids[0] == "3x3" and tuple(s.xy[0]) == (120.5, 119.5)
    assert s.image.shape == img.shape


def test_real_her2st_section(her2st_dir):
    s = read_her2st(her2st_dir / "C3")
    assert s.n_spots > 150 and s.counts.shape[0] == s.n_spots
    assert 0.6 < s.um_per_px < 0.75
    s.validate()


@pytest.mark.parametrize("old", [False, True])
def test_visium_round_trip(tmp_path, old):
    img = he_like_image(500, 420)
    f = write_visium(tmp_path / "outs", img, old_format=old)
    s = read_visium(f)  # hires image, spots scaled by tissue_hires_scalef
    pos = pd.read_csv(f / "spatial" / ("tissue_positions_list.csv" if old else "tissue_positions.csv"),
                      header=None if old else 0)
    n_in = int((pos.iloc[:, 1] == 1).sum())
    assert s.n_spots == n_in and s.counts.shape == (n_in, 2) and s.genes == ["GA", "GB"]
    assert s.image.shape[:2] == (250, 210)
    # first in-tissue spot: array row 2, col 0 -> full-res (x=60, y=60+2*34), hires x 0.5
    np.testing.assert_allclose(s.xy[0], [30.0, 64.0])
    assert tuple(s.array_rc[0]) == (2, 0)
    assert s.um_per_px == pytest.approx(55 / 20 / 0.5)
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, img)
    s2 = read_visium(f, image=full)
    assert s2.um_per_px == pytest.approx(55 / 20) and s2.image.shape == img.shape
    np.testing.assert_allclose(s2.xy * 0.5, s.xy)
    s2.validate()


def test_visium_counts_match_h5(tmp_path):
    f = write_visium(tmp_path / "outs", he_like_image(500, 420))
    s = read_visium(f)
    from napari_hggep.io.readers.space_ranger import read_10x_h5

    mat, names, bc = read_10x_h5(f / "filtered_feature_bc_matrix.h5")
    order = {b: i for i, b in enumerate(bc)}
    np.testing.assert_array_equal(s.counts, mat[[order[b] for b in s.spot_ids]])


def test_image_and_spots_csv(tmp_path):
    img = he_like_image()
    p = tmp_path / "slide.tif"
    tifffile.imwrite(p, img, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    assert image_um_per_px(p) == pytest.approx(0.5)
    csv = tmp_path / "spots.csv"
    pd.DataFrame({"spot_id": ["a", "b"], "x": [100.0, 400.0], "y": [300.0, 250.0]}).to_csv(csv, index=False)
    s = read_image_with_spots(p, csv)
    assert s.um_per_px == pytest.approx(0.5) and list(s.spot_ids) == ["a", "b"]
    np.testing.assert_array_equal(s.xy, [[100, 300], [400, 250]])
    png = tmp_path / "slide.png"
    from PIL import Image

    Image.fromarray(img).save(png)
    with pytest.raises(SlideError, match="micrometres per pixel"):
        read_image_with_spots(png, csv)
    assert read_image_with_spots(png, csv, um_per_px=0.7).um_per_px == 0.7


def test_ome_tiff_pixel_size_and_lazy_pyramid(tmp_path):
    img = he_like_image(512, 640)
    p = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(p) as tw:
        tw.write(img, subifds=1, tile=(128, 128), metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
        tw.write(img[::2, ::2], tile=(128, 128), subfiletype=1)
    assert image_um_per_px(p) == pytest.approx(0.25)
    im = read_image(p)
    assert im.shape == (512, 640, 3)
    np.testing.assert_array_equal(np.asarray(im[10:20, 30:50]), img[10:20, 30:50])


def test_bad_spot_tables(tmp_path):
    img = tmp_path / "s.png"
    from PIL import Image

    Image.fromarray(he_like_image()).save(img)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,col,row\n1,2,3\n")
    with pytest.raises(SlideError, match="spot_id,x,y"):
        read_image_with_spots(img, bad, um_per_px=0.5)
    with pytest.raises(SlideError, match="does not exist"):
        read_image_with_spots(img, tmp_path / "nope.csv", um_per_px=0.5)
    out = tmp_path / "out.csv"
    pd.DataFrame({"spot_id": ["a"], "x": [5000.0], "y": [10.0]}).to_csv(out, index=False)
    with pytest.raises(SlideError, match="outside"):
        read_image_with_spots(img, out, um_per_px=0.5).validate()
    with pytest.raises(SlideError, match="not an image"):
        open_slide(bad)


def test_tissue_grid(tmp_path):
    img = he_like_image(600, 800)
    mask, step = tissue_mask(img)
    assert 0.15 < mask.mean() < 0.4  # the blob covers ~28% of the image
    from PIL import Image

    p = tmp_path / "he.png"
    Image.fromarray(img).save(p)
    s = read_image_with_grid(p, um_per_px=2.0, pitch_um=60.0)
    assert s.n_spots > 50
    # every grid spot lies on tissue (purple), none on the glass
    px = img[s.xy[:, 1].astype(int), s.xy[:, 0].astype(int)]
    assert (px[:, 1] < 200).mean() > 0.95
    d = np.sqrt(((s.xy[:, None] - s.xy[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert np.median(d.min(1)) == pytest.approx(30.0, rel=0.02)  # 60 um / 2 um per px
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((300, 300, 3), 240, np.uint8)).save(blank)
    with pytest.raises(SlideError, match="no tissue"):
        read_image_with_grid(blank, um_per_px=1.0)


def test_patches_physical_size_and_border(tmp_path):
    img = he_like_image(300, 300)
    img[140:160, 140:160] = (0, 0, 0)  # a dark square in the middle
    f = write_her2st(tmp_path / "S", img, pitch_px=40.0)
    s = read_her2st(f)  # 5 um/px
    s.xy = np.array([[150.0, 150.0], [1.0, 1.0]])
    s.spot_ids = np.array(["c", "edge"])
    s.counts = None
    p = extract_patches(s, patch_um=200.0, patch_px=112)  # 40 px windows
    assert patch_window_px(5.0, 200.0) == 40
    assert p.shape == (2, 112, 112, 3) and p.dtype == np.uint8
    # the 20 px dark square is half of the 40 px window: the middle half of the patch
    assert p[0, 56, 56].max() < 30 and p[0, 5, 5].min() > 60
    assert (p[1, :40, :40] == 255).all()  # padded outside the image, no crash


def _write_pyramid(p, img, um=0.25, levels=3):
    with tifffile.TiffWriter(p) as tw:
        tw.write(img, subifds=levels - 1, tile=(256, 256), compression="zlib",
                 metadata={"axes": "YXS", "PhysicalSizeX": um, "PhysicalSizeY": um})
        for k in range(1, levels):
            tw.write(img[::2 ** k, ::2 ** k], tile=(256, 256), compression="zlib", subfiletype=1)


class _NoReads:
    """Stands in for level 0: any decode fails the test."""

    def __init__(self, shape):
        self.shape = shape

    def __getitem__(self, key):
        raise AssertionError("level 0 was decoded")


def test_patches_come_from_the_coarsest_sufficient_pyramid_level(tmp_path):
    from napari_hggep.data.image import choose_level, pyramid
    from napari_hggep.data.patches import iter_patch_batches, spatial_order
    from napari_hggep.data.slide import Slide

    img = smooth_he(1536, 2048)
    p = tmp_path / "slide.ome.tif"
    _write_pyramid(p, img)
    im = read_image(p, lazy=True)
    assert [round(d) for _, d in pyramid(im)] == [1, 2, 4]
    rng = np.random.default_rng(0)
    xy = rng.uniform([0, 0], [2048, 1536], (300, 2))  # some windows cross the border
    eager = Slide(img, 0.25, np.arange(300).astype(str), xy)
    lazy = Slide(im, 0.25, np.arange(300).astype(str), xy)
    want = extract_patches(eager, 70.5, 112)  # level 0 of the in-memory image: 282 px windows
    # 70.5 um at 112 px is 0.63 um/px: level 1 (0.5 um/px) is enough, level 0 is never decoded
    assert choose_level(im, patch_window_px(0.25, 70.5) / 112)[1] == pytest.approx(2.0)
    im._z = _NoReads(im._z.shape)
    got = extract_patches(lazy, 70.5, 112)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 12, (diff.mean(), np.percentile(diff, 99))
    # batches in spatial order, read ahead in a thread, cover every spot once with the same patches
    seen = np.zeros(300, int)
    for idx, patches in iter_patch_batches(lazy, 70.5, 112, batch_size=64):
        seen[idx] += 1
        np.testing.assert_array_equal(patches, got[idx])
    assert (seen == 1).all()
    order = spatial_order(lazy, 70.5, 112)
    assert sorted(order) == list(range(300))


def test_features_read_from_the_pyramid_match_level_0(tmp_path):
    from napari_hggep.data.features import feature_names, tissue_features
    from napari_hggep.data.slide import Slide

    img = smooth_he(1536, 2048, seed=3)
    p = tmp_path / "slide.ome.tif"
    _write_pyramid(p, img)
    im = read_image(p, lazy=True)
    xy = np.array([[x, y] for x in range(300, 1800, 300) for y in range(300, 1300, 300)], float)
    a = tissue_features(Slide(img, 0.25, np.arange(len(xy)).astype(str), xy))
    im._z = _NoReads(im._z.shape)  # 2 um/px statistics need only level 2 (1 um/px)
    b = tissue_features(Slide(im, 0.25, np.arange(len(xy)).astype(str), xy))
    means = [i for i, n in enumerate(feature_names()) if n.startswith("mean_")]
    np.testing.assert_allclose(a[:, means], b[:, means], atol=0.01)


def test_visium_as_it_comes_every_in_tissue_spot_any_image_parquet(tmp_path):
    """A matrix listing only some barcodes, the hires or lowres PNG named as the image (by name
    or, renamed, by its size) and Space Ranger's parquet positions."""
    import h5py
    from PIL import Image

    img = he_like_image(500, 420)
    f = write_visium(tmp_path / "outs", img)
    sp = f / "spatial"
    n_in = int((pd.read_csv(sp / "tissue_positions.csv").in_tissue == 1).sum())
    # the matrix keeps only the first 5 barcodes (as in a real Space Ranger 1.0 folder)
    with h5py.File(f / "filtered_feature_bc_matrix.h5", "a") as h:
        bc = h["matrix/barcodes"][:5]
        del h["matrix/barcodes"]
        h["matrix/barcodes"] = bc
        h["matrix/shape"][...] = [2, 5]
        indptr = h["matrix/indptr"][:6]
        del h["matrix/indptr"]
        h["matrix/indptr"] = indptr
    assert read_visium(f).n_spots == 5  # training: only spots with counts
    s = open_slide(f)  # prediction: every spot under tissue
    assert s.n_spots == n_in and s.counts is None
    # the lowres PNG by name, then the same image under another name (recognised by its size)
    Image.fromarray(img[::10, ::10]).save(sp / "tissue_lowres_image.png")
    low = open_slide(sp / "tissue_lowres_image.png", visium=f)
    assert low.image.shape[:2] == (50, 42) and low.um_per_px == pytest.approx(55 / 20 / 0.1)
    np.testing.assert_allclose(low.xy, s.xy / 0.5 * 0.1)
    Image.fromarray(img[::10, ::10]).save(tmp_path / "small.png")
    renamed = open_slide(tmp_path / "small.png", visium=f)
    np.testing.assert_allclose(renamed.xy, low.xy)
    renamed.validate()
    hires = open_slide(sp / "tissue_hires_image.png", visium=f)
    np.testing.assert_allclose(hires.xy, s.xy)
    # positions as parquet only
    pos = pd.read_csv(sp / "tissue_positions.csv")
    (sp / "tissue_positions.csv").unlink()
    pos.to_parquet(sp / "tissue_positions.parquet")
    assert is_visium_folder(f)
    pq = open_slide(f)
    assert pq.n_spots == n_in
    np.testing.assert_allclose(pq.xy, s.xy)
    pos.drop(columns=["array_row"]).to_parquet(sp / "tissue_positions.parquet")
    with pytest.raises(SlideError, match="array_row"):
        open_slide(f)


def _write_svs(p, img, mpp=0.5):
    """An Aperio SVS in its documented layout: tiled JPEG baseline whose description starts
    'Aperio Image Library' and carries '|MPP = …|', a stripped thumbnail, tiled reduced levels."""
    desc = (f"Aperio Image Library v12.0.15 \r\n{img.shape[1]}x{img.shape[0]} [0,0 {img.shape[1]}x{img.shape[0]}] "
            f"(256x256) JPEG/RGB Q=70|AppMag = 20|StripeWidth = 2040|ScanScope ID = SS1234|MPP = {mpp}")
    with tifffile.TiffWriter(p) as tw:
        tw.write(img, tile=(256, 256), photometric="rgb", compression="jpeg", description=desc, metadata=None)
        tw.write(img[::16, ::16], photometric="rgb", description="Aperio Image Library thumbnail", metadata=None)
        for k in (4, 16):
            tw.write(img[::k, ::k], tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None)


def test_svs_mpp_levels_and_eager_read(tmp_path):
    from napari_hggep.data.image import as_pyramid, pyramid

    img = smooth_he(1024, 1536, seed=5)
    p = tmp_path / "slide.svs"
    _write_svs(p, img, mpp=0.2527)
    assert image_um_per_px(p) == pytest.approx(0.2527)
    lazy = read_image(p, lazy=True)
    assert lazy.shape == (1024, 1536, 3) and [round(d) for _, d in pyramid(lazy)] == [1, 4, 16]
    eager = read_image(p, lazy=False)  # the baseline is Z=1 x Y x X x S in tifffile
    assert eager.shape == (1024, 1536, 3)
    np.testing.assert_array_equal(np.asarray(lazy[100:200, 300:420]), eager[100:200, 300:420])
    assert np.abs(eager.astype(int) - img).mean() < 3  # JPEG tiles decode (imagecodecs)
    # napari-style indexing of a level: ellipsis and channel keys
    np.testing.assert_array_equal(lazy[..., 1][5:9, 7:11], eager[5:9, 7:11, 1])
    assert lazy.size == 1024 * 1536 * 3
    # napari multiscale data (any arrays, finest first) back to an image that knows its levels
    again = as_pyramid([lev for lev, _ in pyramid(lazy)])
    assert again is lazy
    plain = as_pyramid([img, img[::2, ::2], img[::4, ::4]])
    assert [round(d) for _, d in pyramid(plain)] == [1, 2, 4]
    np.testing.assert_array_equal(np.asarray(plain[10:20, 10:30]), img[10:20, 10:30])


def test_tissue_grid_on_a_pyramid_matches_level_0(tmp_path):
    """The thumbnail of a pyramid comes from a level whose step is not the step asked for
    (here 4 where 3 was asked): the grid must still land on the tissue."""
    img = he_like_image(2000, 2600, seed=4)
    p = tmp_path / "slide.ome.tif"
    _write_pyramid(p, img, um=0.5)
    lazy = read_image(p, lazy=True)
    mask, step = tissue_mask(lazy)
    assert step == pytest.approx(4.0)
    from napari_hggep.data.tissue import tissue_grid

    a, _ = tissue_grid(img, 0.5, 100.0)
    b, _ = tissue_grid(lazy, 0.5, 100.0)
    on_tissue = img[b[:, 1].astype(int), b[:, 0].astype(int)][:, 1] < 200
    assert on_tissue.mean() > 0.95
    common = len({tuple(r) for r in a.round().astype(int)} & {tuple(r) for r in b.round().astype(int)})
    assert common / max(len(a), len(b)) > 0.9
