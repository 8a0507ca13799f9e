"""Text tables as users save them (spot tables, ST spot files, Visium positions, sample sheets):
the encoding (UTF-8, UTF-16, Windows-1252), the delimiter, every cell read as text, then numeric
columns checked with the first bad row named."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ...data.slide import SlideError


def decode_text(raw: bytes, path) -> str:
    """Text of a table as spreadsheets save it: UTF-8 (with or without BOM), UTF-16 with BOM
    ("Unicode text"), otherwise Windows-1252/Latin-1."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            raise SlideError(f"{path}: broken UTF-16 text; save the table again as CSV (UTF-8)") from None
    if b"\x00" in raw:
        raise SlideError(f"{path}: not a text table (binary data); save it as CSV (UTF-8)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def parse_table(text: str, path, what: str, sep: str | None = None, header: int | None = 0) -> pd.DataFrame:
    """Every cell as the string it is (ids keep leading zeros, "NA" stays "NA"); the delimiter is
    the commonest of , ; tab in the header line unless ``sep`` is given."""
    import io

    if not text.strip():
        raise SlideError(f"{path}: the {what} is empty")
    if sep is None:
        first_line = text.lstrip().splitlines()[0]
        sep = max([",", ";", "\t"], key=first_line.count)
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False, header=header)
        df.attrs["sep"] = sep
        return df
    except Exception as e:  # ParserError, csv.Error, ...: all mean the same to a user
        raise SlideError(f"{path}: not a readable {what} ({type(e).__name__}: {str(e).strip()[:200]})") from None


def _parse_floats(cells: np.ndarray) -> np.ndarray:
    """Correctly rounded (pandas' fast parser is not: "180.1932653" came back 1 ulp off); NaN where a
    cell is not a number."""
    try:
        return cells.astype(float)
    except (ValueError, OverflowError):
        out = np.empty(len(cells))
        for i, c in enumerate(cells):
            try:
                out[i] = float(c)
            except (ValueError, OverflowError):
                out[i] = np.nan
        return out


def numeric_column(values, path, column: str, whole: bool = False, decimal_comma: bool = False,
                   first_row: int = 2) -> np.ndarray:
    """A column of numbers, or a SlideError that names the first bad row as a spreadsheet numbers
    it: ``first_row`` is the file's line of the first value (2 below a header, 1 without one)."""
    dtype = getattr(values, "dtype", None)
    if dtype is not None and (pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_float_dtype(dtype)) \
            and not pd.api.types.is_extension_array_dtype(dtype):
        # already numbers (a parquet table, Visium HD's 600,000 bins): checked without text parsing
        num = np.asarray(values, dtype=np.float64)
        bad = ~np.isfinite(num)
        if whole:
            bad |= np.isfinite(num) & (np.round(num) != num)
        if not bad.any():
            return num
    raw = pd.Series(values, dtype=object).astype(str).str.strip()
    if decimal_comma:
        raw = raw.str.replace(",", ".", regex=False)
    num = _parse_floats(raw.to_numpy(dtype=str))
    bad = ~np.isfinite(num)
    if whole:
        bad |= np.isfinite(num) & (np.round(num) != num)
    if bad.any():
        i = int(np.argmax(bad))
        kind = "a whole number" if whole else "a finite number"
        raise SlideError(f"{path}: {column} must be {kind} on every row; row {i + first_row} has {str(raw.iloc[i])[:40]!r}")
    return num
