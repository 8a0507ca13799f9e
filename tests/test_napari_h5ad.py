"""Our own ``.h5ad`` dropped onto napari (issue 34): napari-hggep is the one reader offered, and it
opens the prediction as a prediction layer over the image it was predicted on, spots on their
tissue; without that image, the predicted spots alone."""
import shutil

import numpy as np
import pytest

pytest.importorskip("napari")  # before the imports of the plugin's napari layer
from PIL import Image

from helpers import he_like_image
from napari_hggep._napari.layers import KEY, PredictionLayerInfo, gene_values, is_prediction_layer


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    from napari_hggep.cli import main

    d = tmp_path_factory.mktemp("h5ad")
    Image.fromarray(he_like_image(420, 500)).save(d / "he.png")
    assert main(["predict", str(d / "he.png"), "--grid", "--pitch-um", "100", "--um-per-px", "2",
                 "-o", str(d / "p.h5ad"), "-o", str(d / "p.zarr")]) == 0
    return d / "p.h5ad"


def test_a_plain_open_of_our_h5ad_shows_the_prediction_over_its_image(viewer, h5ad):
    import anndata as ad

    from napari_hggep._napari.predict_widget import PredictWidget

    from napari.plugins import _npe2

    a = ad.read_h5ad(h5ad)
    assert list(_npe2.get_readers(str(h5ad))) == ["napari-hggep"]  # a drop offers it no other reader
    img, pts = viewer.open(str(h5ad), plugin=None)  # as File > Open and a drop do: no plugin named
    assert img.__class__.__name__ == "Image" and img.rgb and img.data.shape[:2] == (420, 500)
    assert tuple(img.scale) == pytest.approx((2.0, 2.0))
    assert is_prediction_layer(pts) and pts.name == "he genes"
    info = pts.metadata[KEY]
    assert isinstance(info, PredictionLayerInfo) and info.genes == list(a.var_names)
    # the spots sit on their tissue: the same micrometres as the image's pixels they were predicted at
    np.testing.assert_allclose(pts.data * pts.scale, a.obsm["spatial"][:, ::-1] * 2.0)
    # coloured by a gene, through napari's own feature colouring; every value as written
    assert info.gene in info.genes and pts.face_color_mode == "colormap" and list(pts.features.columns)[-1] == info.gene
    np.testing.assert_array_equal(gene_values(pts, info.gene), np.asarray(a[:, info.gene].X).ravel())
    # the Predict dock takes it as a result: its gene list and exports work on it
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.result.value is pts
    from napari_hggep._napari.writer import write_points_h5ad

    out = h5ad.parent / "again.h5ad"
    write_points_h5ad(str(out), pts.data, {"metadata": pts.metadata, "name": pts.name})
    b = ad.read_h5ad(out)
    assert np.array_equal(b.X, a.X) and np.array_equal(b.obsm["spatial"], a.obsm["spatial"])
    assert b.uns["napari_hggep"]["image_predicted_on"] == a.uns["napari_hggep"]["image_predicted_on"]


def test_without_its_image_the_prediction_opens_as_spots(viewer, h5ad, tmp_path):
    import anndata as ad

    moved = tmp_path / "p.h5ad"
    shutil.copy(h5ad, moved)
    a = ad.read_h5ad(moved)
    a.uns["napari_hggep"]["image_predicted_on"] = str(tmp_path / "gone.png")
    a.write_h5ad(moved)
    (pts,) = viewer.open(str(moved), plugin=None)
    assert is_prediction_layer(pts) and len(pts.data) == a.n_obs
    np.testing.assert_allclose(pts.data * pts.scale, a.obsm["spatial"][:, ::-1] * 2.0)


def test_an_unrelated_file_finds_no_reader(viewer, tmp_path):
    from napari.errors.reader_errors import NoAvailableReaderError

    p = tmp_path / "notes.txt"
    p.write_text("x,y\n1,2\n")
    with pytest.raises(NoAvailableReaderError):
        viewer.open(str(p), plugin=None)


def test_a_prediction_made_on_a_spatialdata_store_opens_over_the_stores_image(viewer, h5ad, tmp_path):
    import anndata as ad

    from napari_hggep.cli import main

    pytest.importorskip("spatialdata")
    out = tmp_path / "q.h5ad"
    assert main(["predict", str(h5ad.parent / "p.zarr"), "-o", str(out)]) == 0
    a = ad.read_h5ad(out)
    assert a.uns["napari_hggep"]["image_predicted_on"].endswith("p.zarr::he_full_image")
    img, pts = viewer.open(str(out), plugin=None)
    assert img.rgb and tuple(img.level_shapes[0][:2] if img.multiscale else img.data.shape[:2]) == (420, 500)
    assert is_prediction_layer(pts)
    np.testing.assert_allclose(pts.data * pts.scale, a.obsm["spatial"][:, ::-1] * a.uns["napari_hggep"]["um_per_px"],
                               rtol=1e-6)
    np.testing.assert_allclose(img.scale[-2:], pts.scale, rtol=1e-6)
