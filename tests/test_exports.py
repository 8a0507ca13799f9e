"""Data out the way scverse and pathology tools expect it (issue 18): the output format follows the
file name, coordinates are full-resolution pixels whichever image was predicted on, AnnData as
scanpy lays it out (drawn by sc.pl.spatial), QuPath GeoJSON detections, SpatialData stores.
Real files in Space Ranger's layouts, the bundled model, the real command line."""
import json
import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import he_like_image, write_visium, N_BUNDLED
from napari_hggep.cli import main
from napari_hggep.io.writers.export import check_output, output_format
from napari_hggep.io.writers.export_values import UNRELIABLE_PCC, VALUES

GENES = "GNAS,FN1,KRT8"


@pytest.fixture(scope="module")
def visium(tmp_path_factory):
    """A Space Ranger 2.x outs/ folder (header in tissue_positions.csv) with hires (0.5) and lowres
    (0.25) PNGs, and the 1.x layout (tissue_positions_list.csv, no header) of the same slide."""
    root = tmp_path_factory.mktemp("visium")
    img = he_like_image(500, 420)
    out = {}
    for name, old in (("sr2", False), ("sr1", True)):
        v = write_visium(root / name / "outs", img, old_format=old)
        sf = json.load(open(v / "spatial" / "scalefactors_json.json"))
        sf["tissue_lowres_scalef"] = 0.25
        json.dump(sf, open(v / "spatial" / "scalefactors_json.json", "w"))
        Image.fromarray(img).resize((105, 125), Image.NEAREST).save(v / "spatial" / "tissue_lowres_image.png")
        out[name] = v
    Image.fromarray(img).save(root / "fullres.png")
    out["fullres"] = root / "fullres.png"
    pos = pd.read_csv(out["sr2"] / "spatial" / "tissue_positions.csv")
    out["pos"] = pos[pos.in_tissue == 1].set_index("barcode")
    return out


def _check_geojson(path, genes, n, shape="circle"):
    """The GeoJSON QuPath imports: a FeatureCollection of detections, one closed polygon each, the
    genes as numeric measurements. Returns the centres (x, y) by name and the measurements."""
    doc = json.load(open(path))
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == n
    centres, meas = {}, {}
    for f in doc["features"]:
        assert f["type"] == "Feature" and isinstance(f["id"], str)
        g = f["geometry"]
        assert g["type"] == "Polygon" and len(g["coordinates"]) == 1
        ring = np.asarray(g["coordinates"][0], float)
        assert ring.ndim == 2 and ring.shape[1] == 2 and np.isfinite(ring).all()
        assert (ring[0] == ring[-1]).all() and len(ring) == (5 if shape == "square" else 17)
        p = f["properties"]
        assert p["objectType"] == "detection" and isinstance(p["name"], str)
        assert list(p["measurements"]) == genes
        assert all(isinstance(v, (int, float)) and np.isfinite(v) for v in p["measurements"].values())
        centres[p["name"]] = ring[:-1].mean(axis=0)
        meas[p["name"]] = p["measurements"]
    return centres, meas


# ---------------------------------------------------------------- the format follows the file name
def test_format_from_the_name_and_clear_errors_before_any_work(tmp_path, capsys, monkeypatch):
    assert [output_format(p) for p in ("a.csv", "b.H5AD", "c.geojson", "d.zarr", "e.zarr/")] == \
        ["csv", "h5ad", "geojson", "zarr", "zarr"]
    Image.fromarray(he_like_image()).save(tmp_path / "he.png")
    keep = tmp_path / "pred.csv"
    keep.write_text("keep me\n")
    (tmp_path / "d.csv").mkdir()

    import napari_hggep.inference.predict as predict_mod

    def never(*a, **k):
        raise AssertionError("the model ran")

    monkeypatch.setattr(predict_mod, "predict_slide", never)
    base = ["predict", str(tmp_path / "he.png"), "--grid", "--um-per-px", "1"]
    cases = [
        (["-o", str(tmp_path / "pred.txt")], "'.txt' is not one of them"),
        (["-o", str(tmp_path / "pred")], "'no extension' is not one of them"),
        (["-o", str(keep), "-o", str(tmp_path / "pred.json")], ".geojson"),
        (["-o", str(tmp_path / "nowhere" / "p.csv")], "does not exist"),
        (["-o", str(keep / "p.csv")], "does not exist"),  # the "folder" is a file
        (["-o", str(tmp_path / "d.csv")], "a folder has that name"),
        (["-o", str(keep), "-o", str(keep)], "given twice"),
        (["--h5ad", str(tmp_path / "x.csv")], "must end in .h5ad"),
        (["-o", str(keep), "--genes", "NOPE,GNAS"], "'NOPE'"),  # checked before the model runs
    ]
    for extra, says in cases:
        rc = main(base + extra)
        err = capsys.readouterr().err
        assert rc == 2 and says in err, (extra, err)
        assert keep.read_text() == "keep me\n"
    assert not (tmp_path / "pred.txt").exists() and not (tmp_path / "pred").exists()
    assert main(base) == 2 and "give -o OUTPUT" in capsys.readouterr().err  # a user error: one line, status 2
    # .zarr without the optional extra: said before any work
    import napari_hggep.io.writers.export as export_mod

    monkeypatch.setattr(export_mod, "spatialdata_available", lambda: False)
    rc = main(base + ["-o", str(tmp_path / "p.zarr")])
    assert rc == 2 and "napari-hggep[spatialdata]" in capsys.readouterr().err
    # a .zarr path holding something else is left alone
    monkeypatch.setattr(export_mod, "spatialdata_available", lambda: True)
    other = tmp_path / "mine.zarr"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a zarr store"):
        check_output(other)


def test_every_format_at_once_with_h5ad_alias(tmp_path, visium):
    """One run, four files; CSV x,y and obsm['spatial'] agree; the GeoJSON holds the same spots."""
    v = visium["sr2"]
    outs = {k: tmp_path / f"pred.{k}" for k in ("csv", "geojson")}
    h5 = tmp_path / "alias.h5ad"
    rc = main(["predict", str(v), "-o", str(outs["csv"]), "-o", str(outs["geojson"]), "--h5ad", str(h5),
               "--genes", GENES, "--device", "cpu"])
    assert rc == 0
    df = pd.read_csv(outs["csv"]).set_index("spot_id")
    a = ad.read_h5ad(h5)
    predicted = [c for c in df.columns if not c.startswith("measured:")]  # the folder's counts follow them
    assert list(a.var_names) == GENES.split(",") and predicted[-3:] == GENES.split(",")
    np.testing.assert_array_equal(a.obsm["spatial"], df.loc[a.obs_names, ["x", "y"]].to_numpy())
    np.testing.assert_allclose(a.X, df.loc[a.obs_names, GENES.split(",")].to_numpy(), atol=1e-6)
    centres, meas = _check_geojson(outs["geojson"], GENES.split(","), len(df))
    for sid in df.index[:10]:
        np.testing.assert_allclose(centres[sid], df.loc[sid, ["x", "y"]].to_numpy(float), atol=0.02)
        np.testing.assert_allclose([meas[sid][g] for g in GENES.split(",")], df.loc[sid, GENES.split(",")],
                                   rtol=5e-3, atol=1e-6)  # GeoJSON keeps 3 significant digits


# ---------------------------------------------------------------- full-resolution pixels everywhere
@pytest.mark.parametrize("layout", ["sr2", "sr1"])
def test_coordinates_are_full_resolution_whichever_image(tmp_path, visium, layout):
    """hires PNG (x0.5), lowres PNG (x0.25), the full-resolution image: the same x, y, those of
    tissue_positions, and the image used and its scale recorded."""
    v, pos = visium[layout], visium["pos"]
    runs = {"hires": [str(v)],
            "lowres": [str(v / "spatial" / "tissue_lowres_image.png"), "--visium", str(v)],
            "full": [str(visium["fullres"]), "--visium", str(v)]}
    scale = {"hires": 0.5, "lowres": 0.25, "full": 1.0}
    for kind, args in runs.items():
        csv, h5 = tmp_path / f"{kind}.csv", tmp_path / f"{kind}.h5ad"
        assert main(["predict", *args, "-o", str(csv), "-o", str(h5), "--genes", GENES]) == 0
        df = pd.read_csv(csv).set_index("spot_id")
        want = pos.loc[df.index, ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
        np.testing.assert_allclose(df[["x", "y"]].to_numpy(), want, atol=1e-9)
        a = ad.read_h5ad(h5)
        np.testing.assert_allclose(a.obsm["spatial"], pos.loc[a.obs_names, ["pxl_col_in_fullres",
                                                                            "pxl_row_in_fullres"]].to_numpy(float))
        info = a.uns["napari_hggep"]
        assert info["image_scale"] == pytest.approx(scale[kind])
        assert info["um_per_px"] == pytest.approx(55.0 / 20.0)  # full-resolution pixels: spot_diameter_fullres 20
        used = {"hires": "tissue_hires_image.png", "lowres": "tissue_lowres_image.png", "full": "fullres.png"}[kind]
        assert info["image_predicted_on"].endswith(used)


# ---------------------------------------------------------------- AnnData for scanpy / squidpy
def test_anndata_as_scanpy_expects_and_sc_pl_spatial_draws_it(tmp_path, visium, bundle):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    v = visium["sr1"]  # Space Ranger 1.x layout
    h5 = tmp_path / "p.h5ad"
    assert main(["predict", str(v), "-o", str(h5)]) == 0
    a = sc.read_h5ad(h5)
    (lib,) = a.uns["spatial"]
    assert lib == "sr1"  # the folder above outs/
    sp = a.uns["spatial"][lib]
    sf = sp["scalefactors"]
    assert set(sp["images"]) == {"hires", "lowres"}
    assert sf["tissue_hires_scalef"] == pytest.approx(0.5) and sf["tissue_lowres_scalef"] == pytest.approx(0.25)
    assert sf["spot_diameter_fullres"] == pytest.approx(20.0)
    assert sp["images"]["hires"].shape == (250, 210, 3) and sp["images"]["lowres"].shape == (125, 105, 3)
    # var: held-out PCC and the reliability flag from the model card
    pcc = bundle.gene_pcc()
    assert a.n_vars == N_BUNDLED
    np.testing.assert_allclose(a.var["heldout_pcc"].to_numpy(),
                               [np.nan if pcc[g] is None else pcc[g] for g in a.var_names])
    # and none reliable on a slide whose expected PCC is unknown (issue 25)
    unknown = bool(a.uns["napari_hggep"].get("slide_reliability_unknown_because"))
    assert (a.var["reliable"].to_numpy() == ((a.var["heldout_pcc"].to_numpy() >= UNRELIABLE_PCC) & (not unknown))).all()
    assert unknown and not a.var["reliable"].any()  # a synthetic slide at 5.5 um/px: nothing to trust
    # X: what it holds is said, and it is never negative
    assert a.uns["napari_hggep"]["X"] == VALUES and a.X.min() >= 0
    assert 0 <= a.uns["napari_hggep"]["clipped_fraction"] < 1
    ax = sc.pl.spatial(a, color="GNAS", show=False)[0]  # no spot_size, no img_key: all from uns
    assert len(ax.images) == 1 and len(ax.collections) >= 1
    plt.close("all")


def test_anndata_of_an_image_without_visium_images_gets_a_downscaled_copy(tmp_path, bundle):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    img = he_like_image(1200, 2600)
    Image.fromarray(img).save(tmp_path / "big.png")
    pd.DataFrame({"spot_id": ["a", "b", "c"], "x": [1200.0, 1300, 1400], "y": [600.0, 600, 650]}).to_csv(
        tmp_path / "spots.csv", index=False)
    h5 = tmp_path / "big.h5ad"
    assert main(["predict", str(tmp_path / "big.png"), "--spots", str(tmp_path / "spots.csv"), "--um-per-px", "0.5",
                 "-o", str(h5), "--genes", GENES]) == 0
    a = sc.read_h5ad(h5)
    sp = a.uns["spatial"]["big"]
    assert sp["images"]["hires"].shape == (923, 2000, 3) and sp["images"]["lowres"].shape[1] == 600
    assert sp["scalefactors"]["tissue_hires_scalef"] == pytest.approx(2000 / 2600)
    assert sp["scalefactors"]["spot_diameter_fullres"] == pytest.approx(200.0)  # a 100 um spot at 0.5 um/px
    np.testing.assert_array_equal(a.obsm["spatial"], [[1200, 600], [1300, 600], [1400, 650]])
    sc.pl.spatial(a, color="FN1", show=False)
    plt.close("all")


# ---------------------------------------------------------------- QuPath
def test_geojson_is_streamed_atomically_and_a_failure_keeps_the_old_file(tmp_path, visium, monkeypatch):
    from napari_hggep.io.writers import export
    from napari_hggep.inference.predict import Prediction

    n = 1200
    rng = np.random.default_rng(0)
    pred = Prediction(spot_ids=np.array([f"s{i}" for i in range(n)]), xy=rng.uniform(0, 5000, (n, 2)),
                      genes=["A%", 'B"q', "C"], values=rng.normal(0, 1, (n, 3)).astype(np.float32),
                      um_per_px=0.5, spot_diameter_um=55.0)
    out = tmp_path / "d.geojson"
    writes = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def write(self, s):
            writes.append(len(s))
            return self.f.write(s)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

    monkeypatch.setattr("builtins.open", lambda *a, **k: Spy(real_open(*a, **k)) if str(a[0]).endswith(".geojson")
                        else real_open(*a, **k))
    export.write_geojson(pred, out, chunk=100)
    monkeypatch.undo()
    assert len(writes) >= n // 100 and max(writes) < out.stat().st_size / 5  # written in pieces
    centres, meas = _check_geojson(out, ["A%", 'B"q', "C"], n)
    np.testing.assert_allclose(centres["s7"], pred.xy[7], atol=0.01)
    ring = np.asarray(json.load(open(out))["features"][0]["geometry"]["coordinates"][0])
    np.testing.assert_allclose(np.hypot(*(ring[:-1] - pred.xy[0]).T), 55.0, atol=0.02)  # diameter 110 px
    assert meas["s3"]["C"] == pytest.approx(max(float(pred.values[3, 2]), 0), rel=5e-3, abs=1e-6)  # 3 digits
    good = out.read_bytes()
    calls = {"n": 0}
    import uuid

    real_uuid5 = uuid.uuid5

    def failing(*a):
        calls["n"] += 1
        if calls["n"] > 700:
            raise OSError("disk full")
        return real_uuid5(*a)

    monkeypatch.setattr(uuid, "uuid5", failing)
    with pytest.raises(OSError, match="disk full"):
        export.write_geojson(pred, out, chunk=100)
    assert out.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["d.geojson"]  # no temporary left


# ---------------------------------------------------------------- many slides
def test_out_dir_writes_every_format_and_skips_done_ones(tmp_path, visium, capsys):
    out = tmp_path / "preds"
    rc = main(["predict", str(visium["sr2"]), str(visium["fullres"]), "--grid", "--um-per-px", "2.75", "--out-dir",
               str(out), "--formats", "csv", "h5ad", "geojson", "--genes", GENES])
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    # a Space Ranger outs/ folder is named after the folder above it (sr2/outs -> sr2.*)
    assert names == sorted(f"{s}.{e}" for s in ("sr2", "fullres") for e in ("csv", "genes.csv", "h5ad", "geojson"))
    a = ad.read_h5ad(out / "sr2.h5ad")
    assert "spatial" in a.uns and a.X.min() >= 0
    pos = visium["pos"]
    np.testing.assert_allclose(a.obsm["spatial"], pos.loc[a.obs_names, ["pxl_col_in_fullres",
                                                                        "pxl_row_in_fullres"]].to_numpy(float))
    _check_geojson(out / "sr2.geojson", GENES.split(","), a.n_obs)
    mtime = (out / "sr2.csv").stat().st_mtime_ns
    assert main(["predict", str(visium["sr2"]), "--out-dir", str(out), "--formats", "csv", "h5ad", "geojson"]) == 0
    assert (out / "sr2.csv").stat().st_mtime_ns == mtime  # already done: skipped
    rc = main(["predict", str(visium["sr2"]), "--out-dir", str(tmp_path / "x"), "--formats", "csv",
               "--genes", "NOPE"])
    assert rc == 2 and "NOPE" in capsys.readouterr().err


# ---------------------------------------------------------------- SpatialData
def test_spatialdata_store_round_trip(tmp_path, visium):
    sd = pytest.importorskip("spatialdata")
    z = tmp_path / "p.zarr"
    assert main(["predict", str(visium["fullres"]), "--visium", str(visium["sr2"]), "-o", str(z),
                 "--genes", GENES]) == 0
    s = sd.read_zarr(z)
    # named as spatialdata_io.visium names them (the library: the folder above outs/)
    assert set(s.images) == {"sr2_full_image"} and set(s.shapes) == {"sr2"} and set(s.tables) == {"table"}
    t = s.tables["table"]
    assert list(t.var_names) == GENES.split(",") and "heldout_pcc" in t.var
    shapes = s.shapes["sr2"]
    assert len(shapes) == t.n_obs == 64 and (shapes["radius"] == 10.0).all()
    from spatialdata.transformations import get_transformation

    tr = get_transformation(shapes, "global")
    pos = visium["pos"]
    um = np.asarray(tr.to_affine_matrix(("x", "y"), ("x", "y")))[:2, :2].diagonal()
    np.testing.assert_allclose(um, 55.0 / 20.0)
    he = s.images["sr2_full_image"]  # multiscale, in micrometres: the full-resolution image at 55 / 20 um per pixel
    assert list(he.keys())[:2] == ["scale0", "scale1"] and he["scale0"]["image"].shape == (3, 500, 420)
    img_um = np.asarray(get_transformation(he, "global").to_affine_matrix(("y", "x"), ("y", "x")))[:2, :2].diagonal()
    np.testing.assert_allclose(img_um, 55.0 / 20.0)
    sid = str(shapes.index[0])
    np.testing.assert_allclose([shapes.geometry.iloc[0].x, shapes.geometry.iloc[0].y],
                               pos.loc[sid, ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float))
    # written again over itself: replaced whole, nothing else left beside it
    assert main(["predict", str(visium["fullres"]), "--visium", str(visium["sr2"]), "-o", str(z),
                 "--genes", "GNAS"]) == 0
    assert list(sd.read_zarr(z).tables["table"].var_names) == ["GNAS"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr"]
    assert os.path.isdir(z)


def test_a_spatialdata_store_is_a_slide_to_predict_on(tmp_path, visium, capsys):
    """Our own store read back as a slide: the same spots, the same pixel size, the same values;
    a store without an image, or with no stated pixel size, is refused with the reason."""
    sd = pytest.importorskip("spatialdata")
    from napari_hggep.io.readers.open import open_slide

    z = tmp_path / "s.zarr"
    csv = tmp_path / "a.csv"
    assert main(["predict", str(visium["fullres"]), "--visium", str(visium["sr2"]), "-o", str(z), "-o", str(csv),
                 "--genes", GENES]) == 0
    s = open_slide(z)
    assert s.um_per_px == pytest.approx(55.0 / 20.0) and s.spot_diameter_um == pytest.approx(55.0)
    assert s.shape == (500, 420) and s.image[10:20, 30:35].shape == (10, 5, 3)
    again = tmp_path / "b.csv"
    assert main(["predict", str(z), "-o", str(again), "--genes", GENES]) == 0
    a, b = pd.read_csv(csv).set_index("spot_id"), pd.read_csv(again).set_index("spot_id")
    b = b.loc[a.index]
    np.testing.assert_allclose(b[["x", "y"]], a[["x", "y"]], atol=1e-6)
    np.testing.assert_allclose(b[GENES.split(",")], a[GENES.split(",")], atol=1e-4)
    # no image: refused; another tool's store: the pixel size is asked for
    st = sd.read_zarr(z)
    bare = sd.SpatialData(shapes=dict(st.shapes), tables=dict(st.tables))
    bare.write(tmp_path / "bare.zarr")
    rc = main(["predict", str(tmp_path / "bare.zarr"), "-o", str(tmp_path / "c.csv")])
    assert rc == 2 and "no RGB image" in capsys.readouterr().err
    del st.tables["table"]
    st.write(tmp_path / "other.zarr")
    rc = main(["predict", str(tmp_path / "other.zarr"), "-o", str(tmp_path / "c.csv")])
    assert rc == 2 and "--um-per-px" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "other.zarr"), "--um-per-px", "2.75", "-o", str(tmp_path / "c.csv"),
                 "--genes", GENES]) == 0
    assert len(pd.read_csv(tmp_path / "c.csv")) == 64
