"""Ecosystem defaults (issue 27): scverse's default image keys always there, GeoJSON a QuPath or
geopandas user opens quickly, with no geographic CRS claimed for pixels."""
import json

import anndata as ad
import numpy as np
import pytest

from helpers import he_like_image, write_visium_study_section
from napari_hggep import load_model, open_slide, predict_slide
from napari_hggep.data import export, geojson_export


@pytest.fixture(scope="module")
def pred(tmp_path_factory):
    root = tmp_path_factory.mktemp("eco")
    outs, _ = write_visium_study_section(root, "V1", he_like_image(520, 700), n_genes=50)  # black hires PNG
    return predict_slide(load_model(), open_slide(outs))


def test_hires_and_lowres_always_there_and_scanpy_squidpy_draw_with_defaults(pred, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    a = ad.read_h5ad(pred.write(tmp_path / "p.h5ad", genes=["GNAS", "FN1"]))
    lib = next(iter(a.uns["spatial"]))
    sp = a.uns["spatial"][lib]
    assert {"hires", "lowres"} <= set(sp["images"])
    for kind in ("hires", "lowres"):  # the scale factor maps obsm['spatial'] onto the image's tissue
        img, sf = sp["images"][kind], sp["scalefactors"][f"tissue_{kind}_scalef"]
        x, y = (a.obsm["spatial"] * sf).round().astype(int).T
        assert (x < img.shape[1]).all() and (y < img.shape[0]).all()
        assert img[y, x].mean() > 20  # not the black PNG: tissue under the spots
    sc.pl.spatial(a, color="GNAS", img_key="hires", show=False)
    sq = pytest.importorskip("squidpy")
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
