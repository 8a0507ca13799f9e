"""Visium HD (issue 18): Space Ranger 3+ binned outputs open in the CLI at 8 or 16 µm bins, the
pixel size comes from microns_per_pixel (never the 55 µm spot rule), bins are squares, and the
same bins given as a spot table at the true pixel size give the same values."""
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import tifffile

from helpers import he_like_image, write_visium_hd
from napari_hggep.cli import main
from napari_hggep.io.readers.open import open_slide, read_visium
from napari_hggep.data.slide import SlideError
from napari_hggep.io.readers.visium_hd import is_visium_hd_folder, read_visium_hd

GENES = "GNAS,FN1,KRT8"
MPP = 0.5


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    root = tmp_path_factory.mktemp("hd")
    img = he_like_image(640, 800)
    outs = write_visium_hd(root / "sampleA", img, mpp=MPP)
    full = root / "sampleA_fullres.tif"
    tifffile.imwrite(full, img)
    return outs, full, img


def _positions(outs, b):
    pos = pd.read_parquet(outs / "binned_outputs" / f"square_{b:03d}um" / "spatial" / "tissue_positions.parquet")
    return pos[pos.in_tissue == 1].set_index("barcode")


def test_reading_hd_folders_pixel_size_from_microns_per_pixel(hd):
    outs, full, img = hd
    for where in (outs, outs.parent, outs / "binned_outputs", outs / "binned_outputs" / "square_016um"):
        assert is_visium_hd_folder(where)
        s = read_visium_hd(where)  # default: 16 um bins, on the hires PNG (x0.25)
        assert s.spot_diameter_um == 16 and s.info.spot_shape == "square"
        assert s.um_per_px == pytest.approx(MPP / 0.25)  # never 55 / spot_diameter_fullres
        assert s.info.image_scale == pytest.approx(0.25) and s.n_spots == len(_positions(outs, 16))
    s8 = read_visium_hd(outs, 8)
    assert s8.spot_diameter_um == 8 and s8.n_spots == len(_positions(outs, 8))
    # the bin folder through the plain Visium reader: still HD rules (the 2.37 um/px bug)
    s = read_visium(outs / "binned_outputs" / "square_016um", with_counts=False)
    assert s.um_per_px == pytest.approx(MPP / 0.25) and s.spot_diameter_um == 16
    s = open_slide(full, visium=outs, bin_um=8)
    assert s.um_per_px == pytest.approx(MPP) and s.info.image_scale == 1.0 and s.spot_diameter_um == 8
    np.testing.assert_allclose(s.xy, _positions(outs, 8).loc[s.spot_ids, ["pxl_col_in_fullres",
                                                                          "pxl_row_in_fullres"]].to_numpy())


def test_bad_hd_input_is_refused_with_a_reason(hd, tmp_path, capsys):
    outs, full, img = hd
    with pytest.raises(SlideError, match="smaller than a cell"):
        read_visium_hd(outs, 2)
    rc = main(["predict", str(outs), "--bin-um", "2", "-o", str(tmp_path / "p.csv")])
    assert rc == 2 and "2 µm bins are refused" in capsys.readouterr().err
    with pytest.raises(SlideError, match="8 or 16"):
        read_visium_hd(outs, 12)
    with pytest.raises(SlideError, match="is for Visium HD folders"):
        open_slide(full, bin_um=16)  # --bin-um on an image
    # an HD folder whose bins lack a bin size / pixel size
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(outs, bad / "outs")
    sfp = bad / "outs" / "binned_outputs" / "square_016um" / "spatial" / "scalefactors_json.json"
    sf = json.load(open(sfp))
    for key in ("bin_size_um", "microns_per_pixel"):
        json.dump({k: v for k, v in sf.items() if k != key}, open(sfp, "w"))
        rc = main(["predict", str(bad / "outs"), "-o", str(tmp_path / "p.csv")])
        err = capsys.readouterr().err
        assert rc == 2 and f"{key} is missing" in err and "never guessed" in err
    json.dump(sf, open(sfp, "w"))
    # a parquet without its columns
    pq = sfp.parent / "tissue_positions.parquet"
    pd.read_parquet(pq).drop(columns=["pxl_row_in_fullres"]).to_parquet(pq)
    rc = main(["predict", str(bad / "outs"), "-o", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "pxl_row_in_fullres" in err and "missing" in err
    # a binned_outputs folder with no bins at all
    shutil.rmtree(bad / "outs" / "binned_outputs")
    (bad / "outs" / "binned_outputs").mkdir()
    with pytest.raises(SlideError, match="bin size is"):
        read_visium_hd(bad / "outs")
    assert not (tmp_path / "p.csv").exists()


def test_hd_predict_full_resolution_and_same_as_a_spot_table(hd, tmp_path):
    """One row per in-tissue bin, obs names = barcodes, obsm['spatial'] in full-resolution pixels;
    the bins given as a spot table at the true pixel size give the same values."""
    outs, full, img = hd
    h5, csv = tmp_path / "hd.h5ad", tmp_path / "hd.csv"
    assert main(["predict", str(full), "--visium", str(outs), "--bin-um", "16", "-o", str(h5), "-o", str(csv),
                 "--genes", GENES]) == 0
    a = ad.read_h5ad(h5)
    pos = _positions(outs, 16)
    assert a.n_obs == len(pos) and set(a.obs_names) == set(pos.index)
    np.testing.assert_allclose(a.obsm["spatial"], pos.loc[a.obs_names, ["pxl_col_in_fullres",
                                                                        "pxl_row_in_fullres"]].to_numpy())
    info = a.uns["napari_hggep"]
    assert info["um_per_px"] == pytest.approx(MPP) and info["spot_shape"] == "square"
    assert info["spot_diameter_um"] == 16 and info["bin_size_um"] == 16
    lib, = a.uns["spatial"]
    assert lib == "sampleA_016um"
    sf = a.uns["spatial"][lib]["scalefactors"]
    assert sf["spot_diameter_fullres"] == pytest.approx(32.0) and sf["microns_per_pixel"] == MPP
    table = tmp_path / "bins.csv"
    pd.DataFrame({"spot_id": pos.index, "x": pos.pxl_col_in_fullres, "y": pos.pxl_row_in_fullres}).to_csv(
        table, index=False)
    same = tmp_path / "same.csv"
    assert main(["predict", str(full), "--spots", str(table), "--um-per-px", str(MPP), "-o", str(same),
                 "--genes", GENES]) == 0
    x = pd.read_csv(csv).set_index("spot_id")
    y = pd.read_csv(same).set_index("spot_id").loc[x.index]
    np.testing.assert_allclose(x[["x", "y"]], y[["x", "y"]])
    np.testing.assert_allclose(x[GENES.split(",")], y[GENES.split(",")], atol=1e-5)
    # from the folder alone (hires PNG): the same bins, coordinates still full-resolution
    alone = tmp_path / "alone.geojson"
    assert main(["predict", str(outs), "-o", str(alone), "--genes", GENES]) == 0
    doc = json.load(open(alone))
    assert len(doc["features"]) == len(pos)
    f = doc["features"][0]
    ring = np.asarray(f["geometry"]["coordinates"][0])
    assert len(ring) == 5 and (ring[0] == ring[-1]).all()  # a square of the bin's size
    np.testing.assert_allclose(np.ptp(ring, axis=0), [32.0, 32.0], atol=0.02)
    np.testing.assert_allclose(ring[:-1].mean(axis=0),
                               pos.loc[f["properties"]["name"], ["pxl_col_in_fullres", "pxl_row_in_fullres"]]
                               .to_numpy(float), atol=0.01)


# sc.pl.spatial on purpose (what scanpy users still call; scanpy points to squidpy, tested elsewhere),
# and scanpy's own use of matplotlib's Colormap.set_bad inside it
@pytest.mark.filterwarnings("ignore:Use `squidpy.pl.spatial_scatter` instead:FutureWarning")
@pytest.mark.filterwarnings("ignore:The set_bad function will be deprecated:PendingDeprecationWarning:scanpy")
def test_hd_h5ad_drawn_by_sc_pl_spatial(hd, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    outs, full, img = hd
    h5 = tmp_path / "hd.h5ad"
    assert main(["predict", str(outs), "--bin-um", "16", "-o", str(h5), "--genes", GENES]) == 0
    a = sc.read_h5ad(h5)
    ax = sc.pl.spatial(a, color="GNAS", show=False)[0]
    assert len(ax.images) == 1
    plt.close("all")


def test_hd_folders_in_a_cohort(hd, tmp_path, capsys):
    outs, full, img = hd
    out = tmp_path / "preds"
    assert main(["predict", str(outs.parent), "--out-dir", str(out), "--bin-um", "16", "--formats", "h5ad",
                 "--genes", GENES]) == 0
    (h5,) = out.glob("*.h5ad")
    a = ad.read_h5ad(h5)
    assert a.n_obs == len(_positions(outs, 16)) and a.uns["napari_hggep"]["spot_shape"] == "square"
    rc = main(["predict", str(outs.parent), "--out-dir", str(tmp_path / "p2"), "--bin-um", "2"])
    assert rc == 2 and "2 µm bins are refused" in capsys.readouterr().err
    assert not (tmp_path / "p2").exists()
