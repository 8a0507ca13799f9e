"""File ▸ Open never decodes a full-resolution image on napari's GUI thread (issue 32): the reader
returns lazy views and reads metadata and spot tables only; the whole-slide view comes from the
Space Ranger folder's PNGs (or an overview made in strips); thumbnails of a big single-level TIFF
are read in strips, with bounded memory, and shared by the checks that need them.

What tifffile decodes is counted (every strip or tile of a compressed TIFF goes through
``TiffPage.decode``, whether read whole or through zarr)."""
import functools
import threading
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import he_like_image, write_visium, write_visium_hd

H, W = 2400, 2800  # 6.7 Mpx: more than the reader decodes itself (EAGER_PIXELS)


@pytest.fixture(autouse=True, scope="module")
def _no_triton_beside_mesa():
    """These viewers load Mesa's OpenGL without torch; a later test of this process importing torch
    would load triton's LLVM beside Mesa's and crash (``_napari/jobs.py: import_torch_stack``). As
    the Predict dock does, torch is told triton is absent (it is left so: the import comes later)."""
    import sys

    if "torch" not in sys.modules and "triton" not in sys.modules:
        sys.modules["triton"] = None
    yield


@pytest.fixture
def decoded(monkeypatch):
    """Bytes of pixels tifffile decodes, per file name, while the test runs."""
    import tifffile

    counts, lock = Counter(), threading.Lock()
    make = tifffile.TiffPage.__dict__["decode"].func

    def counting(page):
        dec, name = make(page), str(page.parent.filehandle.name)

        def wrapped(data, index, **kwargs):
            out = dec(data, index, **kwargs)
            if out[0] is not None:
                with lock:
                    counts[name] += int(out[0].nbytes)
            return out

        return wrapped

    prop = functools.cached_property(counting)
    prop.__set_name__(tifffile.TiffPage, "decode")
    monkeypatch.setattr(tifffile.TiffPage, "decode", prop)
    return counts


def tissue_image(h=H, w=W, seed=0) -> np.ndarray:
    """Glass with textured purple tissue over the top-left corner, where write_visium's spots are."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (235, 225, 235)
    th, tw = 480, 480
    img[:th, :tw] = np.stack([150 + 40 * rng.random((th, tw)), 80 + 40 * rng.random((th, tw)),
                              160 + 40 * rng.random((th, tw))], -1).astype(np.uint8)
    return img


def write_tiled(path, img):
    import tifffile

    tifffile.imwrite(path, img, tile=(256, 256), compression="zlib")
    return path


def visium_with_fullres(tmp_path, blank_hires=False):
    """A Space Ranger outs/ (hires 0.5, lowres 0.1 PNGs) and its full-resolution tiled TIFF beside it."""
    full = tissue_image()
    outs = write_visium(tmp_path / "lib1" / "outs", full)
    sp = outs / "spatial"
    Image.fromarray(full[::10, ::10]).save(sp / "tissue_lowres_image.png")
    if blank_hires:
        Image.fromarray(np.zeros_like(full[::2, ::2])).save(sp / "tissue_hires_image.png")
    tif = write_tiled(tmp_path / "lib1" / "lib1_fullres.tif", full)
    pos = pd.read_csv(sp / "tissue_positions.csv")
    return outs, tif, full, pos[pos.in_tissue == 1].set_index("barcode")


def test_space_ranger_folder_opens_without_decoding_the_full_resolution_tiff(viewer, qtbot, tmp_path, decoded):
    from napari_hggep._napari.layers import KEY
    from napari_hggep.data.image import as_pyramid
    from napari_hggep.data.quality import require_tissue
    from napari_hggep.data.slide import Slide

    outs, tif, full, pos = visium_with_fullres(tmp_path)
    img, pts = viewer.open(str(outs), plugin="napari-hggep")
    qtbot.wait(200)  # napari slices and draws the layers
    assert decoded[tif.name] == 0, f"File > Open decoded {decoded[tif.name]:,} bytes of the full-resolution TIFF"
    # the full-resolution image, lazy, shown through the folder's PNGs at the whole-slide view
    assert img.multiscale and not isinstance(img.data[0], np.ndarray)
    assert [tuple(lev.shape) for lev in img.data] == [(H, W, 3), (H // 2, W // 2, 3), (H // 10, W // 10, 3)]
    assert img.metadata[KEY].source == str(tif) and img.metadata[KEY].slide.image_scale == 1.0
    assert img.scale[-1] == pytest.approx(55.0 / 20.0)  # spot_diameter_fullres 20 px for 55 µm
    np.testing.assert_array_equal(np.asarray(img.data[-1]), full[::10, ::10])
    # the spots: every in-tissue barcode at its full-resolution pixel, on the same µm grid as the image
    assert sorted(pts.features["spot_id"]) == sorted(pos.index)
    np.testing.assert_allclose(pts.data[:, ::-1], pos.loc[pts.features["spot_id"],
                                                          ["pxl_col_in_fullres", "pxl_row_in_fullres"]])
    assert tuple(pts.scale) == pytest.approx(tuple(img.scale[-2:]))
    # what the Predict dock hands the model: level 0 with the PNGs as coarser levels; the blank-image
    # check that runs before predicting looks at a PNG level, still no full-resolution tile decoded
    image = as_pyramid(img.data)
    slide = Slide(image=image, um_per_px=2.75, spot_ids=pts.features["spot_id"], xy=pts.data[:, ::-1],
                  spot_diameter_um=55.0)
    assert require_tissue(slide).ok and decoded[tif.name] == 0
    # zooming in reads only the tiles shown: a 100 px box of level 0 is one 256 px tile
    np.testing.assert_array_equal(np.asarray(img.data[0][100:200, 100:200]), full[100:200, 100:200])
    assert decoded[tif.name] == 256 * 256 * 3


def test_visium_hd_folder_opens_lazily(viewer, qtbot, tmp_path, decoded):
    from napari_hggep._napari.layers import KEY

    full = he_like_image(H, W)
    outs = write_visium_hd(tmp_path / "hdA", full, mpp=0.5, bins=(16,))
    tif = write_tiled(tmp_path / "hdA" / "hdA_fullres.tif", full)
    img, pts = viewer.open(str(outs), plugin="napari-hggep")
    qtbot.wait(200)
    assert decoded[tif.name] == 0
    assert img.name == "hdA_016um" and img.multiscale and img.metadata[KEY].source == str(tif)
    assert [tuple(lev.shape[:2]) for lev in img.data] == [(H, W), (H // 4, W // 4), (H // 10, W // 10)]
    assert pts.symbol[0].value == "square" and pts.size[0] == pytest.approx(32.0)  # 16 µm at 0.5 µm/px
    pq = pd.read_parquet(outs / "binned_outputs" / "square_016um" / "spatial" / "tissue_positions.parquet")
    pq = pq[pq.in_tissue == 1].set_index("barcode")
    assert len(pts.data) == len(pq)
    np.testing.assert_allclose(pts.data[:, ::-1], pq.loc[pts.features["spot_id"],
                                                         ["pxl_col_in_fullres", "pxl_row_in_fullres"]])


def test_a_blank_png_is_never_a_level_and_the_cli_still_reads_small_images_whole(tmp_path, decoded):
    """A black hires PNG (Space Ranger 1.0) is left out of the levels, so no check judges the slide
    by it; the command line's readers are unchanged (a TIFF under 256 MB is read whole)."""
    from napari_hggep._napari.reader import space_ranger_layers
    from napari_hggep.data.quality import slide_tissue
    from napari_hggep.io.readers.visium import read_visium

    outs, tif, full, _ = visium_with_fullres(tmp_path, blank_hires=True)
    layers, slide = space_ranger_layers(outs)
    assert decoded[tif.name] == 0
    assert [tuple(lev.shape[:2]) for lev in layers[0][0]] == [(H, W), (H // 10, W // 10)]
    assert slide_tissue(slide).ok  # judged on the TIFF (in strips) and the lowres PNG, not the black PNG
    cli = read_visium(outs, image=tif, with_counts=False)
    assert isinstance(cli.image, np.ndarray) and cli.image.shape == (H, W, 3)


def test_single_level_tiff_opens_with_an_overview(viewer, qtbot, tmp_path, decoded):
    from napari_hggep._napari.reader import read_tiff
    from napari_hggep.data.image import LazyRGB, Overview, as_pyramid

    full = he_like_image(3000, 3200)
    tif = write_tiled(tmp_path / "slide.tif", full)
    ((data, kwargs, kind),) = read_tiff(str(tif))
    assert decoded[tif.name] == 0  # the reader reads metadata only
    assert kwargs["multiscale"] and isinstance(data[0], LazyRGB) and isinstance(data[1], Overview)
    (img,) = viewer.open(str(tif), plugin="napari-hggep")
    qtbot.wait(200)
    assert decoded[tif.name] <= full.nbytes * 1.1  # at most one pass over the file, for the overview
    s = data[1].step
    np.testing.assert_array_equal(np.asarray(img.data[1]), full[::s, ::s])
    pyr = as_pyramid(img.data)  # the overview is napari's, never a level patches are read from
    assert isinstance(pyr, LazyRGB) and pyr.levels == [] and pyr.shape == (3000, 3200, 3)


def _write_big_tiled(path, h, w, tile=256):
    """A tiled single-level TIFF written tile by tile (never whole in memory); pixel (y, x) is
    :func:`_pixel`."""
    import tifffile

    def tiles():
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                yy, xx = np.mgrid[ty:ty + tile, tx:tx + tile]
                yield _pixel(yy, xx)

    tifffile.imwrite(path, tiles(), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), compression="zlib",
                     compressionargs={"level": 1})
    return path


def _pixel(yy, xx):
    return np.stack([(yy * 7 + xx * 3) % 256, (yy // 97) % 256, (xx // 89) % 256], -1).astype(np.uint8)


def test_thumbnails_of_a_big_single_level_tiff_are_read_in_strips_and_shared(tmp_path, decoded):
    import tracemalloc

    from napari_hggep.data.image import read_image
    from napari_hggep.data.quality import stain_warning
    from napari_hggep.data.tissue import thumbnail, tissue_mask

    h = w = 12000  # 432 MB decoded
    tif = _write_big_tiled(tmp_path / "big.tif", h, w)
    image = read_image(tif, lazy=True)
    assert not image.levels and decoded[tif.name] == 0
    tracemalloc.start()
    try:
        thumb, step = thumbnail(image, 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert step == 12 and thumb.shape == (1000, 1000, 3)
    yy, xx = np.mgrid[0:h:12, 0:w:12]
    np.testing.assert_array_equal(thumb, _pixel(yy, xx))
    assert peak < 96 * 2**20, f"peak {peak / 2**20:.0f} MB while making a 3 MB thumbnail of a 432 MB image"
    n_tiles = -(-h // 256) * -(-w // 256)
    assert decoded[tif.name] == n_tiles * 256 * 256 * 3  # every tile once (each holds a row of the step grid)
    # the tissue and stain checks that follow (512 px thumbnails) are cut from it: nothing decoded again
    before = decoded[tif.name]
    tissue_mask(image, 512)
    stain_warning(image)
    assert decoded[tif.name] == before
