"""Property-based tests (hypothesis) of the readers and writers: random valid tables round-trip
exactly; random corruptions give the library's clear error (SlideError, one line in the CLI),
never another exception or a traceback.

    python -m pytest tests/test_properties.py --hypothesis-show-statistics
"""
import contextlib
import gzip
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from napari_hggep.cli import main
from napari_hggep.data import SlideError
from napari_hggep.io.readers import read_her2st, read_visium
from napari_hggep.io.readers.open import read_image_with_spots, read_spots_csv
from napari_hggep.inference.predict import Prediction
from napari_hggep.io.writers.anndata_export import write_h5ad
from napari_hggep.io.writers.csv_export import write_csv

W, H = 240, 200  # the image every table is placed on
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# text a user may put in an id or a gene name: any printable character, commas, quotes, ; and tabs included
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x85\u2028\u2029"),
               min_size=1, max_size=12)
ID_TEXT = st.one_of(TEXT, st.text(st.sampled_from("0123456789"), min_size=1, max_size=5),  # "007" stays "007"
                    st.sampled_from(["NA", "nan", "None", "", " a ", "null", "-", "1e5", "TRUE"]))
COORD_X = st.floats(0, W, exclude_max=True, allow_nan=False, allow_infinity=False)
COORD_Y = st.floats(0, H, exclude_max=True, allow_nan=False, allow_infinity=False)
_image_dir = Path(tempfile.mkdtemp(prefix="hggep-prop-"))
IMAGE = _image_dir / "he.png"
Image.fromarray(np.full((H, W, 3), 200, np.uint8)).save(IMAGE)


@st.composite
def spot_tables(draw):
    n = draw(st.integers(1, 25))
    ids = draw(st.lists(ID_TEXT.filter(lambda s: s != ""), min_size=n, max_size=n, unique=True))
    df = pd.DataFrame({"spot_id": ids, "x": draw(st.lists(COORD_X, min_size=n, max_size=n)),
                       "y": draw(st.lists(COORD_Y, min_size=n, max_size=n))})
    if draw(st.booleans()):
        df["array_row"] = draw(st.lists(st.integers(-10**6, 10**6), min_size=n, max_size=n))
        df["array_col"] = draw(st.lists(st.integers(-10**6, 10**6), min_size=n, max_size=n))
    order = draw(st.permutations(list(df.columns)))  # columns in any order
    return df[order]


def _encode(df, sep, encoding):
    return df.to_csv(index=False, sep=sep).encode(encoding)


FORMATS = st.tuples(st.sampled_from([",", ";", "\t"]), st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]))


@settings(max_examples=300, **SETTINGS)
@given(df=spot_tables(), fmt=FORMATS)
def test_valid_spot_tables_round_trip_exactly(df, fmt):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "spots.csv"
        p.write_bytes(_encode(df, *fmt))
        got = read_spots_csv(p)
        assert list(got["spot_id"]) == list(df["spot_id"])
        assert np.array_equal(got["x"].to_numpy(), df["x"].to_numpy(float))
        assert np.array_equal(got["y"].to_numpy(), df["y"].to_numpy(float))
        if "array_row" in df:
            assert np.array_equal(got[["array_row", "array_col"]].to_numpy(), df[["array_row", "array_col"]].to_numpy())
        slide = read_image_with_spots(IMAGE, p, um_per_px=1.0)
        slide.validate()


BAD_CELLS = st.sampled_from(["", "abc", "nan", "NaN", "inf", "-inf", "1e999", "1,5", "12px", "0x1F", "--1",
                             "1e308", "-1e308", "9" * 400, "True", "\u0661\u0662", "½", " "])


@st.composite
def corrupted(draw, payload: bytes, frame: pd.DataFrame, sep=","):
    """One corruption of a valid table: truncated, a bad cell, a lost or renamed column,
    another delimiter, an old encoding, binary noise, or empty."""
    kind = draw(st.sampled_from(["truncate", "cell", "drop_column", "rename_column", "delimiter",
                                 "latin1", "noise", "empty", "header_only", "duplicate_header"]))
    if kind == "truncate":
        return kind, payload[:draw(st.integers(0, max(len(payload) - 1, 0)))]
    if kind == "noise":
        at = draw(st.integers(0, len(payload)))
        return kind, payload[:at] + draw(st.binary(min_size=1, max_size=40)) + payload[at:]
    if kind == "empty":
        return kind, b""
    df = frame.copy()
    if kind == "cell":
        col = draw(st.sampled_from([c for c in df.columns if df[c].dtype != object] or list(df.columns)))
        df[col] = df[col].astype(object)
        df.iloc[draw(st.integers(0, len(df) - 1)), list(df.columns).index(col)] = draw(BAD_CELLS)
    elif kind == "drop_column":
        df = df.drop(columns=[draw(st.sampled_from(list(df.columns)))])
    elif kind == "rename_column":
        df = df.rename(columns={draw(st.sampled_from(list(df.columns))): draw(TEXT)})
    elif kind == "header_only":
        df = df.iloc[:0]
    elif kind == "duplicate_header":
        df.columns = [df.columns[0]] * len(df.columns)
    if kind == "delimiter":
        return kind, df.to_csv(index=False, sep=draw(st.sampled_from(["|", " ", ":"]))).encode()
    text = df.to_csv(index=False, sep=sep)
    return kind, text.encode("latin-1", errors="replace") if kind == "latin1" else text.encode()


def _cli_error_line(args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, err.getvalue()


@settings(max_examples=400, **SETTINGS)
@given(data=st.data(), df=spot_tables())
def test_corrupted_spot_tables_give_a_clear_error(data, df):
    kind, payload = data.draw(corrupted(_encode(df, ",", "utf-8"), df))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "spots.csv"
        p.write_bytes(payload)
        try:
            slide = read_image_with_spots(IMAGE, p, um_per_px=1.0)
            slide.validate()
        except SlideError as e:
            msg = str(e)
            assert msg and "\n" not in msg.strip() and len(msg) < 600, msg
        else:  # still a valid table (e.g. truncated at a line end): finite spots on the image
            assert np.isfinite(slide.xy).all() and len(slide.spot_ids) == len(set(slide.spot_ids))
            return
        out = Path(d) / "pred.csv"
        out.write_text("keep me\n")
        rc, err = _cli_error_line(["predict", str(IMAGE), "--spots", str(p), "--um-per-px", "1", "-o", str(out)])
        assert rc == 2 and err.startswith("napari-hggep: error: ") and "Traceback" not in err, (kind, err)
        assert out.read_text() == "keep me\n"


# ---------------------------------------------------------------- HER2+ ST folders
@st.composite
def her2st_tables(draw):
    n = draw(st.integers(2, 20))
    cells = draw(st.lists(st.tuples(st.integers(1, 30), st.integers(1, 30)), min_size=n, max_size=n, unique=True))
    assume(len({c[0] for c in cells}) > 1 or len({c[1] for c in cells}) > 1)
    pitch = draw(st.floats(3.0, 6.0))
    spots = pd.DataFrame({"x": [c[0] for c in cells], "y": [c[1] for c in cells]})
    spots["new_x"], spots["new_y"] = spots.x + 0.01, spots.y - 0.02
    spots["pixel_x"] = spots.x * pitch + draw(st.floats(-2, 2))
    spots["pixel_y"] = spots.y * pitch + draw(st.floats(-2, 2))
    spots["selected"] = draw(st.lists(st.sampled_from([0, 1, 1, 1]), min_size=n, max_size=n))
    assume(spots.selected.sum() >= 2 and np.ptp(spots[spots.selected == 1][["x", "y"]].to_numpy(), axis=0).max() > 0)
    genes = draw(st.lists(TEXT.filter(lambda g: g.strip() == g and g not in ("", "nan")), min_size=1, max_size=5,
                          unique=True))
    counts = pd.DataFrame(draw(st.lists(st.lists(st.integers(0, 10**6), min_size=len(genes), max_size=len(genes)),
                                        min_size=n, max_size=n)), columns=genes,
                          index=[f"{x}x{y}" for x, y in cells])
    return spots, counts


def _write_her2st(folder: Path, spots, counts, spots_bytes=None, counts_bytes=None):
    folder.mkdir()
    Image.fromarray(np.full((H, W, 3), 200, np.uint8)).save(folder / "he.jpg")
    (folder / "spots.tsv").write_bytes(spots_bytes if spots_bytes is not None
                                       else spots.to_csv(sep="\t", index=False).encode())
    buf = io.BytesIO()
    counts.to_csv(buf, sep="\t")
    (folder / "counts.tsv.gz").write_bytes(counts_bytes if counts_bytes is not None else gzip.compress(buf.getvalue()))


@settings(max_examples=100, **SETTINGS)
@given(t=her2st_tables())
def test_valid_her2st_folders_round_trip(t):
    spots, counts = t
    with tempfile.TemporaryDirectory() as d:
        _write_her2st(Path(d) / "S", spots, counts)
        s = read_her2st(Path(d) / "S", genes=list(counts.columns))
        sel = spots[spots.selected == 1]
        ids = [f"{x}x{y}" for x, y in zip(sel.x, sel.y)]
        assert list(s.spot_ids) == ids
        assert np.array_equal(s.xy, sel[["pixel_x", "pixel_y"]].to_numpy(float))
        assert np.array_equal(s.counts, counts.loc[ids].to_numpy(np.float32)) and s.genes == list(counts.columns)


@settings(max_examples=150, **SETTINGS)
@given(data=st.data(), t=her2st_tables())
def test_corrupted_her2st_folders_give_a_clear_error(data, t):
    spots, counts = t
    which = data.draw(st.sampled_from(["spots", "counts"]))
    with tempfile.TemporaryDirectory() as d:
        if which == "spots":
            _, payload = data.draw(corrupted(spots.to_csv(sep="\t", index=False).encode(), spots, sep="\t"))
            _write_her2st(Path(d) / "S", spots, counts, spots_bytes=payload)
        else:
            buf = io.BytesIO()
            counts.to_csv(buf, sep="\t")
            gz = gzip.compress(buf.getvalue())
            cut = data.draw(st.sampled_from(["truncate", "plain", "noise"]))
            payload = (gz[:data.draw(st.integers(0, len(gz) - 1))] if cut == "truncate" else
                       buf.getvalue() if cut == "plain" else gz[:10] + data.draw(st.binary(min_size=1, max_size=50)))
            _write_her2st(Path(d) / "S", spots, counts, counts_bytes=payload)
        try:
            s = read_her2st(Path(d) / "S", genes=list(counts.columns))
            s.validate()
        except SlideError as e:
            assert str(e) and "\n" not in str(e).strip()
        else:
            assert np.isfinite(s.xy).all() and s.um_per_px > 0 and np.isfinite(s.um_per_px)


# ---------------------------------------------------------------- Visium outs/
@st.composite
def visium_positions(draw):
    n = draw(st.integers(1, 30))
    rc = draw(st.lists(st.tuples(st.integers(0, 77), st.integers(0, 127)), min_size=n, max_size=n, unique=True))
    barcodes = draw(st.lists(st.text("ACGT", min_size=6, max_size=16).map(lambda b: b + "-1"), min_size=n,
                             max_size=n, unique=True))
    pos = pd.DataFrame({"barcode": barcodes, "in_tissue": draw(st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n)),
                        "array_row": [r for r, _ in rc], "array_col": [c for _, c in rc],
                        "pxl_row_in_fullres": draw(st.lists(st.integers(0, 2 * H - 1), min_size=n, max_size=n)),
                        "pxl_col_in_fullres": draw(st.lists(st.integers(0, 2 * W - 1), min_size=n, max_size=n))})
    assume(pos.in_tissue.sum() > 0)
    return pos, draw(st.sampled_from(["csv", "csv_no_header", "list", "parquet"]))


def _write_visium(folder: Path, pos, fmt, positions_bytes=None, scalefactors=None):
    sp = folder / "spatial"
    sp.mkdir(parents=True)
    Image.fromarray(np.full((H, W, 3), 200, np.uint8)).save(sp / "tissue_hires_image.png")  # full-res is 2W x 2H
    (sp / "scalefactors_json.json").write_text(scalefactors if scalefactors is not None else json.dumps(
        {"spot_diameter_fullres": 20.0, "tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1}))
    name = {"csv": "tissue_positions.csv", "csv_no_header": "tissue_positions.csv", "list": "tissue_positions_list.csv",
            "parquet": "tissue_positions.parquet"}[fmt]
    if positions_bytes is not None:
        (sp / name).write_bytes(positions_bytes)
    elif fmt == "parquet":
        pos.to_parquet(sp / name)
    else:
        pos.to_csv(sp / name, index=False, header=fmt == "csv")


@settings(max_examples=100, **SETTINGS)
@given(t=visium_positions())
def test_valid_visium_folders_round_trip(t):
    pos, fmt = t
    with tempfile.TemporaryDirectory() as d:
        _write_visium(Path(d) / "outs", pos, fmt)
        s = read_visium(Path(d) / "outs", with_counts=False)
        tissue = pos[pos.in_tissue == 1]
        assert list(s.spot_ids) == list(tissue.barcode)
        assert np.array_equal(s.xy, tissue[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float) * 0.5)
        assert np.array_equal(s.array_rc, tissue[["array_row", "array_col"]].to_numpy())
        assert s.um_per_px == pytest.approx(55.0 / 20.0 / 0.5)


SCALEFACTORS = st.sampled_from([
    "", "{", "[]", "null", '{"spot_diameter_fullres": 0}', '{"spot_diameter_fullres": -3}',
    '{"spot_diameter_fullres": "big"}', '{"spot_diameter_fullres": null}', '{"spot_diameter_fullres": 1e999}',
    '{"spot_diameter_fullres": 20, "tissue_hires_scalef": "x"}', '{"spot_diameter_fullres": 20, "tissue_hires_scalef": -1}',
    '{"tissue_hires_scalef": 0.5}', '\ufeff{"spot_diameter_fullres": 20, "tissue_hires_scalef": 0.5}'])


@settings(max_examples=150, **SETTINGS)
@given(data=st.data(), t=visium_positions())
def test_corrupted_visium_folders_give_a_clear_error(data, t):
    pos, fmt = t
    fmt = "csv" if fmt == "parquet" else fmt
    with tempfile.TemporaryDirectory() as d:
        if data.draw(st.booleans()):
            _, payload = data.draw(corrupted(pos.to_csv(index=False, header=fmt == "csv").encode(), pos))
            _write_visium(Path(d) / "outs", pos, fmt, positions_bytes=payload)
        else:
            _write_visium(Path(d) / "outs", pos, fmt, scalefactors=data.draw(SCALEFACTORS))
        try:
            s = read_visium(Path(d) / "outs", with_counts=False)
            s.validate()
        except SlideError as e:
            assert str(e) and "\n" not in str(e).strip()
            out = Path(d) / "pred.csv"
            rc, err = _cli_error_line(["predict", str(Path(d) / "outs"), "-o", str(out)])
            assert rc == 2 and "Traceback" not in err and not out.exists(), err
        else:
            assert np.isfinite(s.xy).all() and np.isfinite(s.um_per_px) and s.um_per_px > 0


# ---------------------------------------------------------------- CSV and .h5ad writers
@st.composite
def predictions(draw):
    n = draw(st.integers(1, 20))
    genes = draw(st.lists(TEXT.filter(lambda g: g not in {"spot_id", "x", "y", "array_row", "array_col"}),
                          min_size=1, max_size=6, unique=True))
    finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
    values = np.array(draw(st.lists(st.lists(finite32, min_size=len(genes), max_size=len(genes)),
                                    min_size=n, max_size=n)), np.float32).reshape(n, len(genes))
    xy = np.array(draw(st.lists(st.tuples(st.floats(-1e9, 1e9), st.floats(-1e9, 1e9)), min_size=n, max_size=n)))
    rc = (np.array(draw(st.lists(st.tuples(st.integers(-10**9, 10**9), st.integers(-10**9, 10**9)), min_size=n,
                                 max_size=n)), np.int64) if draw(st.booleans()) else None)
    ids = np.array(draw(st.lists(ID_TEXT.filter(lambda s: s != ""), min_size=n, max_size=n, unique=True)), dtype=object)
    return Prediction(spot_ids=ids, xy=xy.reshape(n, 2), genes=genes, values=values, array_rc=rc, um_per_px=0.5,
                      name=draw(TEXT))


@settings(max_examples=150, **SETTINGS)
@given(pred=predictions())
def test_csv_export_round_trips_exactly(pred):
    with tempfile.TemporaryDirectory() as d:
        p = write_csv(pred, Path(d) / "pred.csv")
        df = pd.read_csv(p, dtype={"spot_id": str}, keep_default_na=False, na_filter=False,
                         float_precision="round_trip")  # pandas' default parser can be 1 ulp off
        assert list(df["spot_id"]) == list(pred.spot_ids)
        assert np.array_equal(df[["x", "y"]].to_numpy(float), pred.xy)
        # exports write the prediction clipped at 0 (a log1p target is never negative), exactly
        assert np.array_equal(df.iloc[:, -len(pred.genes):].to_numpy(np.float32), np.maximum(pred.values, 0))
        assert list(df.columns[-len(pred.genes):]) == pred.genes
        if pred.array_rc is not None:
            assert np.array_equal(df[["array_row", "array_col"]].to_numpy(), pred.array_rc)
        assert [f.name for f in Path(d).iterdir()] == ["pred.csv"]  # no temporary left


@settings(max_examples=60, **SETTINGS)
@given(pred=predictions(), rows=st.integers(1, 8), data=st.data())
def test_h5ad_export_round_trips_exactly(pred, rows, data):
    """Also streamed a few spots at a time and for a subset of the genes in any order."""
    import anndata as ad

    from napari_hggep.io.writers.export import write_h5ad

    with tempfile.TemporaryDirectory() as d:
        p = write_h5ad(pred, Path(d) / "pred.h5ad")
        a = ad.read_h5ad(p)
        assert list(a.obs_names) == list(pred.spot_ids) and list(a.var_names) == pred.genes
        assert np.array_equal(np.asarray(a.X), np.maximum(pred.values, 0)) and np.array_equal(a.obsm["spatial"], pred.xy)
        assert a.X.dtype == np.float32
        sub = data.draw(st.lists(st.sampled_from(pred.genes), min_size=1, unique=True))
        write_h5ad(pred, p, sub, rows=rows)
        b = ad.read_h5ad(p)
        cols = [pred.genes.index(g) for g in sub]
        assert list(b.var_names) == sub and np.array_equal(np.asarray(b.X), np.maximum(pred.values[:, cols], 0))
        assert [f.name for f in Path(d).iterdir()] == ["pred.h5ad"]
