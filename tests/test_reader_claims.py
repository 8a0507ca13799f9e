"""The napari reader claims only what it reads (issue 34): the manifest's patterns name the files
it opens, each is told apart by its header (never by reading it whole), an unrelated file is not
offered to it, and our own ``.h5ad`` reads back as the prediction it was written from."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import he_like_image
from napari_hggep._napari import reader
from napari_hggep._napari.reader import get_reader
from napari_hggep.records import Prediction, Provenance, Reliability, SlideInfo


def small_prediction(image_path=None, n=40, genes=("GA", "GB", "GC"), seed=0) -> Prediction:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(50, 350, (n, 2))
    return Prediction(spot_ids=np.array([f"s{i}" for i in range(n)]), xy=xy, genes=list(genes),
                      values=rng.gamma(2.0, 1.0, (n, len(genes))).astype(np.float32),
                      array_rc=np.column_stack([np.arange(n), np.arange(n) * 2]), um_per_px=2.0, name="sec",
                      slide=SlideInfo(image_path=None if image_path is None else str(image_path), library_id="sec"),
                      provenance=Provenance(model="m.pt", patch_um=112.0, gene_pcc={"GA": 0.3, "GB": None, "GC": 0.05},
                                            gene_pcc_protocol="leave-one-patient-out"),
                      reliability=Reliability(slide_reliability=np.array([0.1, np.nan, 0.4], np.float32),
                                              spread=np.array([1.0, 0.5, 0.2], np.float32),
                                              protocol="5 folds", clipped_fraction=0.0),
                      spot_diameter_um=55.0)


def manifest_readers(path) -> list[str]:
    """The plugins npe2 offers ``path`` to, from the shipped manifest alone."""
    import npe2

    import napari_hggep

    pm = npe2.PluginManager()
    pm.register(npe2.PluginManifest.from_file(Path(napari_hggep.__file__).parent / "napari.yaml"))
    return [r.plugin_name for r in pm.iter_compatible_readers([str(path)])]


@pytest.mark.parametrize("name", ["notes.txt", "photo.png", "slide.jpg", "data.json", "matrix.h5", "table.parquet",
                                  "counts.tsv.gz", "script.py", "archive.zip"])
def test_an_unrelated_file_is_not_offered_to_the_reader(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"something")
    assert manifest_readers(p) == []


@pytest.mark.parametrize("name", ["pred.h5ad", "spots.csv", "slide.tif", "slide.ome.tiff", "SLIDE.SVS", "big.btf"])
def test_the_files_it_reads_are_offered(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"x")
    assert manifest_readers(p) == ["napari-hggep"]
    assert manifest_readers(tmp_path) == ["napari-hggep"]  # folders (outs/, ST folders, .zarr stores)


def test_files_are_told_apart_by_their_header(tmp_path, monkeypatch):
    import anndata as ad

    from napari_hggep.io.writers.anndata_export import write_h5ad

    # never a whole table parsed to decide
    monkeypatch.setattr(reader, "read_spots_csv", lambda p: pytest.fail("get_reader parsed the table"))
    spots = tmp_path / "spots.csv"
    spots.write_text("spot_id,x,y\na,1,2\nb,3,4\n")
    assert get_reader(str(spots)) is reader.read_spots_table
    semi = tmp_path / "semi.csv"
    semi.write_bytes('"Spot_ID";"X";"Y"\r\na;1,5;2\n'.encode("utf-16"))  # a spreadsheet's "Unicode text"
    assert get_reader(str(semi)) is reader.read_spots_table
    other = tmp_path / "genes.csv"
    other.write_text("gene,pcc\nGA,0.3\n")
    assert get_reader(str(other)) is None
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\x00\x01x,y\n")
    assert get_reader(str(binary)) is None
    (tmp_path / "empty.csv").write_text("")
    assert get_reader(str(tmp_path / "empty.csv")) is None
    # a TIFF by its magic bytes, not its name
    Image.fromarray(he_like_image(40, 50)).save(tmp_path / "real.tif")
    assert get_reader(str(tmp_path / "real.tif")) is reader.read_tiff
    Image.fromarray(he_like_image(40, 50)).save(tmp_path / "fake.tif", format="PNG")
    assert get_reader(str(tmp_path / "fake.tif")) is None
    # an .h5ad of ours by its uns/napari_hggep group; another tool's is left to other readers
    ours = write_h5ad(small_prediction(), tmp_path / "ours.h5ad")
    assert get_reader(str(ours)) is reader.read_prediction_file
    ad.AnnData(X=np.zeros((3, 2), np.float32)).write_h5ad(tmp_path / "theirs.h5ad")
    assert get_reader(str(tmp_path / "theirs.h5ad")) is None
    (tmp_path / "text.h5ad").write_text("not hdf5")
    assert get_reader(str(tmp_path / "text.h5ad")) is None
    assert get_reader(str(tmp_path / "missing.h5ad")) is None
    assert get_reader(str(tmp_path)) is None  # a folder that is no slide


def test_a_spot_table_with_a_bad_row_is_claimed_and_says_why(tmp_path):
    from napari_hggep.data.slide import SlideError

    bad = tmp_path / "spots.csv"
    bad.write_text("spot_id,x,y\na,1,2\nb,three,4\n")
    read = get_reader(str(bad))
    assert read is reader.read_spots_table
    with pytest.raises(SlideError, match="row 3"):
        read(str(bad))


def test_our_h5ad_reads_back_as_the_prediction_it_was_written_from(tmp_path):
    import anndata as ad

    from napari_hggep.io.writers.anndata_export import write_h5ad
    from napari_hggep.io.readers.anndata_reader import read_prediction_h5ad

    pred = small_prediction(tmp_path / "he.png")
    first = write_h5ad(pred, tmp_path / "a.h5ad")
    back = read_prediction_h5ad(first)
    assert list(back.spot_ids) == list(pred.spot_ids) and back.genes == pred.genes
    assert np.array_equal(back.values, pred.values) and np.array_equal(back.xy, pred.xy)
    assert np.array_equal(back.array_rc, pred.array_rc)
    assert back.um_per_px == pred.um_per_px and back.spot_diameter_um == pred.spot_diameter_um
    assert back.provenance.gene_pcc == pytest.approx({"GA": 0.3, "GB": None, "GC": 0.05}, nan_ok=True)
    assert back.slide.image_path == str((tmp_path / "he.png").resolve()) and back.slide.library_id == "sec"
    np.testing.assert_array_equal(back.reliability.slide_reliability, pred.reliability.slide_reliability)
    # written again, the file holds the same
    second = write_h5ad(back, tmp_path / "b.h5ad")
    a, b = ad.read_h5ad(first), ad.read_h5ad(second)
    assert np.array_equal(a.X, b.X) and np.array_equal(a.obsm["spatial"], b.obsm["spatial"])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert a.uns["napari_hggep"] == b.uns["napari_hggep"]
    for k, img in a.uns["spatial"]["sec"]["images"].items():
        assert np.array_equal(img, b.uns["spatial"]["sec"]["images"][k])
    assert a.uns["spatial"]["sec"]["scalefactors"] == b.uns["spatial"]["sec"]["scalefactors"]


def test_measured_counts_read_back_too(tmp_path):
    import anndata as ad
    import scipy.sparse as sp

    from napari_hggep.io.writers.anndata_export import write_h5ad
    from napari_hggep.io.readers.anndata_reader import read_prediction_h5ad
    from napari_hggep.records import Measured

    pred = small_prediction()
    rng = np.random.default_rng(1)
    has = rng.random(len(pred.spot_ids)) < 0.7
    vals = sp.csr_matrix(rng.gamma(1.0, 1.0, pred.values.shape).astype(np.float32) * has[:, None])
    pred.measured = Measured(values=vals, has_counts=has, pcc=np.array([0.2, np.nan, -0.1]),
                             normalisation="log1p(counts / total x 1e4)", source="counts.h5")
    back = read_prediction_h5ad(write_h5ad(pred, tmp_path / "a.h5ad"))
    assert np.array_equal(back.measured.values.toarray(), vals.toarray())
    assert np.array_equal(back.measured.has_counts, has) and back.measured.source == "counts.h5"
    np.testing.assert_array_equal(back.measured.pcc, np.asarray(pred.measured.pcc, np.float32))
    a, b = ad.read_h5ad(tmp_path / "a.h5ad"), ad.read_h5ad(write_h5ad(back, tmp_path / "b.h5ad"))
    assert (a.layers["measured"] != b.layers["measured"]).nnz == 0
    ia, ib = dict(a.uns["napari_hggep"]), dict(b.uns["napari_hggep"])
    # var keeps each gene's measured PCC as float32: their mean, computed again, agrees to float32
    assert ib.pop("measured_pcc_mean") == pytest.approx(ia.pop("measured_pcc_mean"), rel=1e-6) and ia == ib
    pd.testing.assert_frame_equal(a.var, b.var)
