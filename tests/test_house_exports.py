"""Exports through their libraries' own writers (issue 34): AnnData written by anndata
(``write_h5ad``, atomically), value for value what the hand-written ``X`` held; every new
SpatialData store joins its table to its shapes."""
import numpy as np
import pandas as pd
import pytest

from napari_hggep import predict_slide


@pytest.fixture(scope="module")
def sample_pred(bundle):
    from napari_hggep._napari.sample import sample_slide

    return predict_slide(bundle, sample_slide())


def _old_write_h5ad(pred, path, genes=None):
    """The writer before issue 34: everything but ``X`` through anndata, then ``X`` written by hand
    with h5py under a hard-coded encoding version (kept here as the reference)."""
    import h5py

    from napari_hggep.io.writers.anndata_export import to_anndata

    adata = to_anndata(pred, genes)
    X = np.asarray(adata.X)
    adata.X = None
    adata.write_h5ad(path)
    with h5py.File(path, "a") as f:
        if "X" in f:
            del f["X"]
        ds = f.create_dataset("X", shape=X.shape, dtype="float32")
        ds.attrs["encoding-type"] = "array"
        ds.attrs["encoding-version"] = "0.2.0"
        ds[...] = X


def _same_uns(a, b, where="uns"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            _same_uns(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    else:
        assert type(a) is type(b) and (a == b or (a != a and b != b)), (where, a, b)


@pytest.mark.parametrize("genes", [None, ["KRT8", "GNAS", "FN1"]])
def test_h5ad_written_by_anndata_holds_what_the_hand_written_file_held(sample_pred, tmp_path, genes):
    import anndata as ad
    import h5py
    import scanpy as sc

    from napari_hggep.io.writers.anndata_export import write_h5ad

    old, new = tmp_path / "old.h5ad", tmp_path / "new.h5ad"
    _old_write_h5ad(sample_pred, old, genes)
    assert write_h5ad(sample_pred, new, genes) == new
    assert sorted(f.name for f in tmp_path.iterdir()) == ["new.h5ad", "old.h5ad"]  # no temporary left
    a, b = ad.read_h5ad(old), ad.read_h5ad(new)
    assert b.X.dtype == np.float32 and np.array_equal(a.X, b.X)
    cols = slice(None) if genes is None else [sample_pred.genes.index(g) for g in genes]
    assert np.array_equal(b.X, np.maximum(sample_pred.values[:, cols], 0))
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert set(a.obsm) == set(b.obsm) and np.array_equal(a.obsm["spatial"], b.obsm["spatial"])
    _same_uns(a.uns, b.uns)
    s = sc.read_h5ad(new)
    assert np.array_equal(s.X, a.X) and list(s.var_names) == list(a.var_names)
    # X carries the encoding anndata itself writes for a dense array, not a version typed by hand
    ref = tmp_path / "ref" / "plain.h5ad"
    ref.parent.mkdir()
    ad.AnnData(X=np.zeros((2, 2), np.float32)).write_h5ad(ref)
    with h5py.File(new) as f, h5py.File(ref) as r:
        assert dict(f["X"].attrs) == dict(r["X"].attrs)


def test_a_failed_h5ad_write_leaves_the_old_file(sample_pred, tmp_path, monkeypatch):
    import anndata as ad

    from napari_hggep.io.writers.anndata_export import write_h5ad

    p = write_h5ad(sample_pred, tmp_path / "p.h5ad", ["GNAS"])
    good = p.read_bytes()

    def boom(self, *a, **k):
        open(a[0], "wb").write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", boom)
    with pytest.raises(OSError):
        write_h5ad(sample_pred, p)
    assert p.read_bytes() == good and [f.name for f in tmp_path.iterdir()] == ["p.h5ad"]


@pytest.mark.parametrize("shape", ["circle", "square"])
def test_a_new_store_joins_its_table_to_its_shapes(sample_pred, tmp_path, shape):
    """join_spatialelement_table (what napari-spatialdata does to colour the shapes by a gene)
    works on a store just written: the table's index is not named like its instance-key column."""
    sd = pytest.importorskip("spatialdata")
    from dataclasses import replace

    from napari_hggep.io.writers.spatialdata_export import write_zarr

    pred = sample_pred if shape == "circle" else replace(sample_pred, spot_shape="square")
    path = write_zarr(pred, tmp_path / "p.zarr", ["GNAS", "KRT8"])
    s = sd.read_zarr(path)
    (shapes_key,) = s.shapes
    table = s.tables["table"]
    element_dict, joined = sd.join_spatialelement_table(sdata=s, spatial_element_names=shapes_key,
                                                        table_name="table", how="left")
    shapes = element_dict[shapes_key]
    assert len(shapes) == len(joined) == len(pred.spot_ids)
    # each shape meets its own spot's row: the ids, and the values, line up
    assert list(joined.obs["spot_id"].astype(str)) == list(shapes.index.astype(str))
    order = [list(pred.spot_ids).index(i) for i in shapes.index.astype(str)]
    j = pred.genes.index("GNAS")
    assert np.array_equal(np.asarray(joined[:, "GNAS"].X).ravel(), np.maximum(pred.values[order, j], 0))
    # the spot ids are still the table's obs names, values as before
    assert list(table.obs_names) == list(np.asarray(pred.spot_ids).astype(str))
    assert table.obs.index.name is None and table.uns["spatialdata_attrs"]["instance_key"] == "spot_id"


def test_the_store_reader_lives_among_the_readers():
    from napari_hggep._napari import reader
    from napari_hggep.io.readers import spatialdata_reader
    from napari_hggep.io.writers import spatialdata_export

    assert reader.is_spatialdata_store is spatialdata_reader.is_spatialdata_store
    assert "read_spatialdata" not in spatialdata_export.__dict__  # the writer reads no store for the reader
