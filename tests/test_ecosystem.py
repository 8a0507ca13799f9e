"""Ecosystem defaults (issue 27): scverse's default image keys always there, GeoJSON a QuPath or
geopandas user opens quickly, with no geographic CRS claimed for pixels."""
import json

import anndata as ad
import numpy as np
import pytest

from helpers import he_like_image, write_visium_study_section
from napari_hggep import load_model, open_slide, predict_slide
from napari_hggep.io.writers import export, geojson_export
from napari_hggep.io.writers.export import write_prediction


@pytest.fixture(scope="module")
def pred(tmp_path_factory):
    root = tmp_path_factory.mktemp("eco")
    outs, _ = write_visium_study_section(root, "V1", he_like_image(520, 700), n_genes=50)  # black hires PNG
    return predict_slide(load_model(), open_slide(outs))


def test_hires_and_lowres_always_there_and_scanpy_squidpy_draw_with_defaults(pred, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    a = ad.read_h5ad(write_prediction(pred, tmp_path / "p.h5ad", genes=["GNAS", "FN1"]))
    lib = next(iter(a.uns["spatial"]))
    sp = a.uns["spatial"][lib]
    assert {"hires", "lowres"} <= set(sp["images"])
    for kind in ("hires", "lowres"):  # the scale factor maps obsm['spatial'] onto the image's tissue
        img, sf = sp["images"][kind], sp["scalefactors"][f"tissue_{kind}_scalef"]
        x, y = (a.obsm["spatial"] * sf).round().astype(int).T
        assert (x < img.shape[1]).all() and (y < img.shape[0]).all()
        assert img[y, x].mean() > 20  # not the black PNG: tissue under the spots
    sc.pl.spatial(a, color="GNAS", img_key="hires", show=False)
    import squidpy as sq  # in the dev extra: this test never skips
    sq.pl.spatial_scatter(a, color="GNAS")


def test_geojson_default_is_small_and_not_geographic(pred, tmp_path):
    gpd = pytest.importorskip("geopandas")
    path = geojson_export.write_geojson(pred, tmp_path / "p.geojson")
    per_spot = path.stat().st_size / len(pred.spot_ids)
    assert per_spot <= 10_000
    doc = json.loads(path.read_text())
    names = list(doc["features"][0]["properties"]["measurements"])
    assert names == geojson_export.geojson_default_genes(pred) and 0 < len(names) <= geojson_export.GEOJSON_MAX_GENES
    g = gpd.read_file(path)
    assert g.crs is not None and not g.crs.is_geographic and "pixel" in g.crs.to_wkt()
    # every gene on request, values to 3 significant digits
    full = geojson_export.write_geojson(pred, tmp_path / "all.geojson", export.check_genes(pred.genes, "all"))
    m = json.loads(full.read_text())["features"][3]["properties"]["measurements"]
    assert list(m) == pred.genes
    j = pred.genes.index("GNAS")
    assert m["GNAS"] == pytest.approx(float(pred.values[3, j]), rel=5e-3, abs=1e-6)


def test_predictions_join_a_store_spatialdata_io_wrote_without_touching_it(tmp_path):
    """`-o` to a store spatialdata-io wrote for the same Space Ranger folder adds one table that
    annotates that store's own spots (its integer instance ids), in its coordinate systems."""
    sd = pytest.importorskip("spatialdata")
    sdio = pytest.importorskip("spatialdata_io")
    from helpers import write_visium
    from napari_hggep.cli import main
    from napari_hggep.io.writers.spatialdata_export import ADDED_TABLE

    outs = write_visium(tmp_path / "lib1" / "outs", he_like_image(500, 420))
    store = tmp_path / "lib1.zarr"
    sdio.visium(outs, dataset_id="lib1").write(store)
    before = sd.read_zarr(store)
    assert main(["predict", str(outs), "-o", str(store), "--genes", "GNAS,FN1"]) == 0
    after = sd.read_zarr(store)
    assert set(after.tables) == {"table", ADDED_TABLE}
    assert set(after.images) == set(before.images) and set(after.shapes) == set(before.shapes)
    np.testing.assert_array_equal(after.tables["table"].X.toarray(), before.tables["table"].X.toarray())
    t = after.tables[ADDED_TABLE]
    attrs = t.uns["spatialdata_attrs"]
    assert attrs["region"] == "lib1" and attrs["instance_key"] == "spot_id" and list(t.var_names) == ["GNAS", "FN1"]
    theirs = before.tables["table"].obs
    np.testing.assert_array_equal(t.obs["spot_id"].to_numpy(), theirs.loc[t.obs_names, "spot_id"].to_numpy())
    # spatialdata's own join puts each prediction on the store's shape of the same barcode
    from spatialdata import join_spatialelement_table

    shapes, table = join_spatialelement_table(after, spatial_element_names="lib1", table_name=ADDED_TABLE, how="inner")
    assert len(table) == t.n_obs == 64
    # run again: the table is replaced, the rest stays
    assert main(["predict", str(outs), "-o", str(store), "--genes", "GNAS"]) == 0
    again = sd.read_zarr(store)
    assert list(again.tables[ADDED_TABLE].var_names) == ["GNAS"] and set(again.tables) == {"table", ADDED_TABLE}


def test_a_new_store_lines_up_with_spatialdata_io(tmp_path):
    sd = pytest.importorskip("spatialdata")
    sdio = pytest.importorskip("spatialdata_io")
    from spatialdata.transformations import get_transformation

    from helpers import write_visium
    from napari_hggep.cli import main

    outs = write_visium(tmp_path / "lib1" / "outs", he_like_image(500, 420))
    ours = tmp_path / "pred.zarr"
    assert main(["predict", str(outs), "-o", str(ours), "--genes", "GNAS"]) == 0
    a, b = sd.read_zarr(ours), sdio.visium(outs, dataset_id="lib1")
    assert set(a.shapes) == set(b.shapes) == {"lib1"} and "lib1_hires_image" in a.images and "lib1_hires_image" in b.images
    assert {"lib1", "global"} <= set(a.coordinate_systems)
    m = lambda el: np.asarray(get_transformation(el, "lib1").to_affine_matrix(("x", "y"), ("x", "y")))  # noqa: E731
    np.testing.assert_allclose(m(a.images["lib1_hires_image"]), m(b.images["lib1_hires_image"]))
    np.testing.assert_allclose(m(a.shapes["lib1"]), m(b.shapes["lib1"]))
