"""The ``nnjit`` command line.

  nnjit train   --data digits|file.csv|file.npz [--save model.npz] [--plot loss.png]
  nnjit predict --model model.npz --data file.csv|file.npz [--out predictions.csv]
  nnjit info    model.npz
  nnjit export  model.npz model.onnx
  nnjit bench   [options]

``nnjit train`` works on the data people have: a CSV table's columns are encoded by kind
(numbers with gaps filled, text one-hot, dates as numbers: nnjit.preprocessing.Table) and
standardised (fitted on the training split, saved in the model and applied again by
``nnjit predict``), the task is
detected from the target column and said, training stops early on a validation split and
keeps the best epoch's weights. A test or validation split too small to mean anything (under
MIN_SPLIT samples, or 2 per class) is not held out but trained on, with a warning. Every
error (missing or malformed files, bad options, divergence) prints one line and exits with
status 2; Ctrl-C exits with 130.
"""
import argparse
import csv
import json
import math
import os
import re
import sys
import threading
import time
import zipfile

import numpy as np

from . import activations as A
from . import rules as R

#: Seconds the first run spends compiling the loops kernels on the project's 2-core machine
#: (`nnjit train` with a fresh NUMBA_CACHE_DIR in a fresh venv: 8 s, two processes compiling,
#: see the README; more on a busy host); quoted in the compile notice.
COMPILE_SECONDS = 10

#: Integer targets are class labels when they take at most this many distinct values ...
MAX_CLASSES = 50
#: ... with at least this many samples per value on average; otherwise a regression.
MIN_PER_CLASS = 5
#: A held-out split needs at least this many samples (and, for classification, 2 per class)
#: to mean anything: below it one sample moves an accuracy by 10 points or more, an R^2 of one
#: sample is undefined, and early stopping picks the epoch that fits a handful of samples
#: best. A smaller split is not held out: its samples are trained on, and `nnjit train` says so.
MIN_SPLIT = 10

_MISSING = {"", "nan", "na", "n/a", "null", "none", "?", "-"}


class CLIError(ValueError):
    """A user error the CLI reports as one line, exit status 2."""


# ---------------------------------------------------------------- reading data
def _digits_file():
    """The digits table scikit-learn ships (sklearn/datasets/data/digits.csv.gz), found
    without importing scikit-learn, or None."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            return path
    return None


def _load_digits():
    """scikit-learn's digits, as ``load_digits()`` gives them (X float64 (1797, 64), y int).
    Read straight from the file scikit-learn ships: importing scikit-learn to read it took
    0.9 s of the 1.6 s of a warm ``nnjit train``. scikit-learn's own loader where the file is
    not where it keeps it."""
    path = _digits_file()
    if path is not None:
        import gzip
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                data = np.loadtxt(f, delimiter=",")
            if data.ndim == 2 and data.shape[1] == 65:
                return data[:, :-1], data[:, -1].astype(int, copy=False), None
        except (OSError, ValueError, EOFError):
            pass
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise CLIError("nnjit train --data digits needs scikit-learn (it ships the dataset): "
                       "pip install 'nnjit[train]'")
    d = load_digits()
    return d.data, d.target, None


def _check_file(path, what):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such {what} file: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory, not a {what} file")


def _number(cell):
    try:
        return float(cell)
    except ValueError:
        return None


def _missing(cell):
    return cell.strip().lower() in _MISSING


def _sniff_binary(path):
    with open(path, "rb") as f:
        head = f.read(8192)
    if head.startswith(b"\x93NUMPY"):
        kind = "a NumPy .npy file"
    elif head.startswith(b"PK\x03\x04"):
        kind = "a zip archive (a .npz?)"
    elif b"\0" in head:
        kind = "a binary file"
    else:
        return
    raise CLIError(f"{path!r} is {kind}, not CSV text; a CSV holds one sample per line, "
                   "values separated by commas")


def _delimiter_hint(path, first_line, delimiter):
    for d, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
        if d != delimiter and delimiter not in first_line and d in first_line:
            flag = "'\\t'" if d == "\t" else f"'{d}'"
            raise CLIError(f"{path!r} looks {name}-separated (line 1 has no {delimiter!r} but "
                           f"{first_line.count(d)} {d!r}); pass --delimiter {flag}")


def _is_column_numbers(cells):
    """True for a row like 0,1,2,... or 1,2,3,... (3 columns or more): a header of column
    numbers, or data?"""
    v = [_number(c) for c in cells]
    if len(v) < 3 or any(x is None or x != int(x) for x in v):
        return False
    v = [int(x) for x in v]
    return v == list(range(v[0], v[0] + len(v))) and v[0] in (0, 1)


def _has_header(path, rows, feats, t, header):
    """Whether line 1 is a header: as told by --header/--no-header, else guessed. Columns
    whose other lines are numbers decide: a word on line 1 above them is a name (all words:
    a header; words and numbers: refused as ambiguous); a table of text columns only has a
    header when line 1's words occur nowhere below them; numbers over the numeric columns
    and such words over the text ones are refused as ambiguous."""
    if header is not None:
        return header
    first, body = rows[0], rows[1:200]

    def numeric(j):
        cells = [r[j] for r in body if len(r) > j and not _missing(r[j])]
        return bool(cells) and all(_number(c) is not None for c in cells)

    def word(j):
        return not _missing(first[j]) and _number(first[j]) is None

    num = [j for j in feats if numeric(j)]
    words = [j for j in num if word(j)]
    if words and len(words) < len(num):
        j = words[0]
        raise CLIError(f"{path!r} line 1 mixes text and numbers (column {j + 1}: {first[j]!r}): "
                       "pass --header if line 1 names the columns, else fix that cell")
    if words:
        return True
    if not num:     # text columns only: a header's words are not values of their columns
        return bool(body) and all(word(j) and first[j].strip() not in
                                  {r[j].strip() for r in body if len(r) > j} for j in feats)
    if t is not None and word(t) and numeric(t):
        return True         # numbered feature columns with a named target column
    # numbers on line 1 above the numeric columns (data, or names such as "1"?), and above
    # every text column a word found nowhere below it, where some text column repeats its
    # values (so that a value of line 1 would recur): names, as in "colour,1,label,0"
    text = [j for j in feats + ([t] if t is not None else []) if not numeric(j)]
    values = {j: [r[j].strip() for r in body if len(r) > j and not _missing(r[j])] for j in text}
    if text and all(word(j) and values[j] and first[j].strip() not in values[j] for j in text) \
            and any(len(set(v)) < len(v) for v in values.values()):
        j = text[0]
        raise CLIError(f"{path!r} line 1 holds numbers above the numeric columns but "
                       f"{first[j].strip()!r} above column {j + 1}, a value found on no other "
                       "line: a header or a data row? pass --header or --no-header")
    if len(num) == len(feats) and len(rows) > 1 and _is_column_numbers([first[i] for i in feats]):
        raise CLIError(f"{path!r} line 1 is the numbers {first[feats[0]].strip()}.."
                       f"{first[feats[-1]].strip()}: a header of column numbers or a data row? "
                       "pass --header or --no-header")
    if t is not None and len(rows) > 2 * MIN_PER_CLASS:
        # a numeric header over class labels would add a class of one sample: line 1's label
        others = {_number(r[t]) for r in rows[1:] if len(r) > t}
        if None not in others and len(others) <= MAX_CLASSES and _number(first[t]) not in others \
                and all(v == int(v) for v in others):
            raise CLIError(f"{path!r} line 1's target {first[t].strip()!r} appears on no other "
                           f"line (the others hold {len(others)} labels): a header of numbers or "
                           "a data row? pass --header or --no-header")
    return False


def _by_name(path, first, columns):
    """(feature column indices, target index or None) of a header row matched to a model's
    (feature names, target name), or None when line 1 does not hold the feature names. A
    header naming some of them but not all, or naming other columns, is refused: by position
    such a file would feed a model the wrong columns (or its label as a feature)."""
    feature_names, target_name = columns
    cells = _header_names(first)
    found = [n for n in feature_names if n in cells]
    if not found:
        return None
    missing = [n for n in feature_names if n not in cells]
    extra = [c for c in cells if c not in feature_names and c != target_name]
    if missing or extra or len(set(cells)) != len(cells):
        what = "; ".join(f"{k} {', '.join(map(repr, v[:5]))}" + (f" and {len(v) - 5} more" if len(v) > 5 else "")
                         for k, v in (("missing", missing), ("not a training column", extra)) if v)
        raise CLIError(f"{path!r}: its header does not match the model's {len(feature_names)} "
                       f"training columns ({what or 'a repeated column name'}); the model "
                       "matches columns by name")
    return [cells.index(n) for n in feature_names], (cells.index(target_name)
                                                     if target_name in cells else None)


def _header_names(cells):
    """A header row's column names: stripped; an empty cell (a DataFrame's index, as to_csv
    writes it) named as pandas names it, so that pd.read_csv gives a model the same columns."""
    return [c.strip() or f"Unnamed: {j}" for j, c in enumerate(cells)]


def _is_int(text):
    try:
        int(text)
        return True
    except ValueError:
        return False


def _target_index(path, target, names, width):
    """The 0-based column of --target NAME|INDEX (or --target-column's int); None: none."""
    if target is None:
        return None
    if isinstance(target, str):
        wanted = target.strip()
        if names and wanted in names:
            return names.index(wanted)
        try:
            target = int(wanted)
        except ValueError:
            raise CLIError(f"--target {target!r}: {path!r} has no column of that name"
                           + (f" (its columns: {', '.join(map(repr, names[:8]))}"
                              + (" …)" if len(names) > 8 else ")") if names else
                              " (it has no header; give a 0-based index)")) from None
    if not -width <= target < width:
        raise CLIError(f"--target-column {target} is outside the {width} columns of {path!r}")
    return target % width


class Data:
    """A dataset as the commands use it: X (a pandas DataFrame of the feature columns for a
    CSV file, an array otherwise), y (an array or None), the names of the target and of the
    file (for messages), and what reading it dropped."""

    def __init__(self, X, y, target_name=None, notes=()):
        self.X, self.y, self.target_name, self.notes = X, y, target_name, list(notes)

    def rows(self, idx):
        return self.X.iloc[idx] if hasattr(self.X, "iloc") else self.X[idx]

    def __len__(self):
        return len(self.X)


def _read_rows(path, delimiter):
    """(rows, line numbers) of a CSV file's non-empty lines, by the csv module: the header
    guess and the ragged-line check read them; pandas reads the values."""
    _sniff_binary(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            # as pandas reads it (skipinitialspace: `1, "a, b"` is two cells); pandas skips
            # empty and blank lines but keeps a line of empty cells (",,") as a row of gaps
            reader = csv.reader(f, delimiter=delimiter, skipinitialspace=True)
            rows, lines = [], []
            for r in reader:
                if r and not (len(r) == 1 and not r[0].strip()):
                    rows.append(r)
                    lines.append(reader.line_num)
    except UnicodeDecodeError as e:
        raise CLIError(f"{path!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                       f"{e.start}); save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise CLIError(f"{path!r} is not readable as CSV ({e})") from None
    if not rows:
        raise CLIError(f"{path!r} is empty")
    if len(rows[0]) == 1:
        with open(path, encoding="utf-8-sig") as f:
            _delimiter_hint(path, f.readline(), delimiter)
    return rows, lines


def _check_widths(path, rows, lines):
    for r, line in zip(rows, lines):
        if len(r) != len(rows[0]):
            raise CLIError(f"{path!r} line {line} has {len(r)} columns; line 1 has {len(rows[0])}")


def _read_csv(path, target=-1, n_columns=None, header=None, delimiter=",", columns=None):
    """A Data of a CSV file, read by pandas (quoting, a BOM, NA spellings, types): the
    feature columns as a DataFrame named by the header (else "column 1", ...), the target
    column as an array with the rows that lack it dropped (and said). target: a name or an
    index (negative counts from the end; None: no target). n_columns: a model's input columns,
    so that a file of exactly that many holds no target. columns: a model's (feature names,
    target name): a header holding them selects the columns by name, in the model's order."""
    pd = _pandas()
    rows, lines = _read_rows(path, delimiter)
    width = len(rows[0])
    if n_columns is not None and width == n_columns:
        target = None
    named = _by_name(path, rows[0], columns) if columns and header is not False else None
    if named:
        feats, t = named
        start = 1
    else:
        cells = _header_names(rows[0])
        by_name = isinstance(target, str) and target.strip() in cells
        if by_name and header is None:
            header = True       # --target NAME names a column of line 1: it is a header
        guess = _target_index(path, target, cells if by_name else None, width) \
            if by_name or not isinstance(target, str) or _is_int(target) else None
        feats = [j for j in range(width) if j != guess]
        if not feats:
            raise CLIError(f"{path!r} has one column: no features besides the target")
        start = 1 if _has_header(path, rows, feats, guess, header) else 0
        t = _target_index(path, target, cells if start else None, width)
        feats = [j for j in range(width) if j != t]
    _check_widths(path, rows, lines)
    if len(rows) <= start:
        raise CLIError(f"{path!r} has a header but no data rows")
    # codes with leading zeros (zip codes "02134") stay text, as the file spells them
    codes = [j for j in feats if _is_codes([r[j] for r in rows[start:start + 200] if len(r) > j], True)
             and _is_codes([r[j] for r in rows[start:] if len(r) > j])]
    read = dict(sep=delimiter, header=0 if start else None, encoding="utf-8-sig",
                na_values=NA_SPELLINGS, keep_default_na=True, skipinitialspace=True,
                low_memory=False)
    try:
        df = pd.read_csv(path, **read)
        if codes:
            df = pd.read_csv(path, dtype={df.columns[j]: str for j in codes}, **read)
    except (ValueError, pd.errors.ParserError) as e:
        raise CLIError(f"{path!r} is not readable as CSV ({_one_line(e)})") from None
    names = _header_names(rows[0]) if start else [f"column {j + 1}" for j in range(width)]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise CLIError(f"{path!r}: the header names the column {twice!r} twice")
    df.columns = names
    mapped = len(df) == len(lines) - start
    if mapped:      # messages name the file's lines
        df.index = lines[start:]
        df.attrs["nnjit_row_word"] = "line"

    def where(i):
        return f"line {df.index[i]}" if mapped else f"data row {i + 1}"
    notes = []
    y, target_name = None, None
    if isinstance(target, str) and start and _is_int(target.strip()) and target.strip() in names:
        j = int(target.strip())
        if -width <= j < width and names[j % width] != target.strip():
            notes.append(f"--target {target.strip()} is the column named {target.strip()!r} (column "
                         f"{t + 1}); for column {j % width + 1} by position, --target-column {j}")
    if t is not None:
        target_name = names[t]      # "column 3" without a header: predict finds it there
        y, keep, bad = target_values(df.iloc[:, t])
        if bad is not None:
            raise CLIError(f"{path!r} {where(bad)}, column {t + 1} (the target): "
                           f"{df.iloc[bad, t]!r} is not finite")
        if not keep.all():
            lost = int((~keep).sum())
            if not keep.any():
                raise CLIError(f"{path!r}: the target column {t + 1} has no values")
            notes.append(f"dropped {_samples(lost).replace('sample', 'row')} without a target "
                         f"({where(int(np.flatnonzero(~keep)[0]))}"
                         + (" and more)" if lost > 1 else ")"))
            df, y = df[keep], y[keep]
    X = df.iloc[:, feats]
    return Data(X, y, target_name, notes)


#: spellings of a missing value beyond pandas' own (NA, N/A, NaN, null, None, the empty cell...)
NA_SPELLINGS = ["?", "-", "na", "Na", "NAN", "nan", "none", "NONE", "Null", "NULL", "missing"]


def _is_codes(cells, digits_only=False):
    """Whether a CSV column's cells are codes such as zip codes: digits only, some with a
    leading zero ("02134"), which pandas would read as the number 2134 (digits_only: whether
    they are digits only, a first look at a few)."""
    cells = [c.strip() for c in cells if not _missing(c)]
    return bool(cells) and all(c.isascii() and c.isdigit() for c in cells) and (
        digits_only or any(len(c) > 1 and c[0] == "0" for c in cells))


def target_values(col):
    """(labels or values as an array, mask of rows that have one, position of an infinite
    value or None): numbers as int64 where integral, else float64; text stripped."""
    pd = _pandas()
    keep = col.notna().to_numpy()
    if pd.api.types.is_bool_dtype(col):
        return col.to_numpy(), keep, None
    if pd.api.types.is_numeric_dtype(col):
        y = col.to_numpy(dtype=np.float64, na_value=np.nan)
        inf = np.flatnonzero(np.isinf(y))
        if inf.size:
            return y, keep, int(inf[0])
        v = y[keep]
        if v.size and (v == np.round(v)).all() and np.abs(v).max() < 2**53:
            y = np.where(keep, y, 0).astype(np.int64)
        return y, keep, None
    from .preprocessing import text_values
    text = text_values(col).fillna("").to_numpy(dtype=str)
    keep = keep & (text != "")
    return text, keep, None


def _pandas():
    try:
        import pandas
    except ImportError:
        raise CLIError("reading CSV files needs pandas: pip install 'nnjit[train]'") from None
    return pandas


def _read_npz(path):
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise CLIError(f"{path!r} is a .npy file (one array), not a .npz archive; write the data "
                       "with np.savez(path, X=X, y=y)")
    if magic[:4] != b"PK\x03\x04":
        raise CLIError(f"{path!r} is not a readable .npz file (it is not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z.files:
                raise CLIError(f"{path!r} has no array 'X' (it has {', '.join(z.files) or 'none'}); "
                               "a data .npz holds X (samples, features) and optionally y")
            X, y = z["X"], (z["y"] if "y" in z.files else None)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise CLIError(f"{path!r} is not a readable .npz file ({e})") from None
    except ValueError as e:
        if isinstance(e, CLIError):
            raise
        raise CLIError(f"{path!r} holds an array nnjit cannot read without pickle ({e})") from None
    if X.dtype.kind not in "biuf":
        raise CLIError(f"{path!r}: X must hold numbers, got dtype {X.dtype}")
    X = X.astype(np.float64, copy=False)
    if X.ndim == 2 and not np.isfinite(X).all():
        m, j = np.argwhere(~np.isfinite(X))[0]
        raise CLIError(f"{path!r}: X[{m}, {j}] is {X[m, j]} ({int((~np.isfinite(X)).sum())} "
                       "non-finite values); fill or drop them")
    return Data(X, y)


def _numbers(path, data):
    """A CSV's feature DataFrame as a float64 array, for models without a table (trained on
    .npz data or by an nnjit before tables): every cell a finite number."""
    df = data.X
    for j in range(df.shape[1]):
        col = df.iloc[:, j]
        v = _pandas().to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            m = int(bad[0])
            cell = col.iloc[m]
            what = ("missing value" if col.isna().iloc[m] else
                    "not finite" if _number(str(cell)) is not None else "not a number")
            raise CLIError(f"{path!r} line {df.index[m]}, column {df.columns[j]!r}: {cell!r} is "
                           f"{what}; this model has no table to fill or encode it (it was trained "
                           "on arrays): give it numbers")
    return df.to_numpy(dtype=np.float64)


def load_data(name, target_column=-1, n_features=None, header=None, delimiter=","):
    """(X, y) of numbers from "digits", a .csv file of numeric columns or a .npz file (arrays
    X and y); y may be None."""
    data = _load(name, target_column, n_features, header, delimiter)
    X = _numbers(name, data) if hasattr(data.X, "iloc") else data.X
    return X, data.y


def _load(name, target=-1, n_columns=None, header=None, delimiter=",", columns=None):
    if name == "digits":
        X, y, _ = _load_digits()
        data = Data(X, y)
    else:
        _check_file(name, "data")
        ext = os.path.splitext(name)[1].lower()
        if ext == ".csv":
            data = _read_csv(name, target, n_columns, header, delimiter, columns)
        elif ext == ".npz":
            data = _read_npz(name)
        else:
            raise CLIError(f"unsupported data file {name!r}: use 'digits', a .csv or a .npz file")
    X, y = data.X, data.y
    if X.ndim != 2 or X.shape[0] == 0:
        raise CLIError(f"{name!r}: X must be a non-empty 2-D (samples, features) array, got shape {X.shape}")
    if y is not None and len(y) != len(X):
        raise CLIError(f"{name!r}: X has {len(X)} samples but y has {len(y)}")
    return data


# ---------------------------------------------------------------- deciding
def detect_task(y, task="auto"):
    """(regression?, the reason in words) for a target column y."""
    if task != "auto":
        return task == "regression", "as asked by --task"
    if y.ndim == 2:
        return True, f"the target has {y.shape[1]} columns"
    if y.dtype.kind in "USO":
        return False, "the target holds text labels"
    if y.dtype.kind == "b":
        return False, "the target is boolean"
    if y.dtype.kind == "f" and not (y == np.round(y)).all():
        return True, "the target has non-integer values"
    k = len(np.unique(y))
    per = len(y) / k
    rule = f"classes need <= {MAX_CLASSES} values with >= {MIN_PER_CLASS} samples each on average"
    if k <= 2 or (k <= MAX_CLASSES and per >= MIN_PER_CLASS):
        return False, f"the target has {k} distinct integer values, {per:.0f} samples each on average"
    return True, f"the target has {k} distinct integer values, {per:.1f} samples each ({rule})"


def split_indices(n, fraction, rng):
    """(kept indices, held-out indices): a random `fraction` of range(n) held out."""
    idx = rng.permutation(n)
    k = int(round(n * fraction)) if fraction > 0 else 0
    if fraction > 0:
        k = min(max(1, k), n - 1)
    return np.sort(idx[k:]), np.sort(idx[:k])


def split_needs(n_classes=None):
    """The samples a held-out split needs to mean anything (see MIN_SPLIT); n_classes None:
    a regression."""
    return MIN_SPLIT if n_classes is None else max(MIN_SPLIT, 2 * n_classes)


def _small_splits(n_test, n_val, need, n_train, epochs):
    """The one warning line for test / validation splits too small to hold out (their sizes,
    0: not small), or None."""
    if n_test and n_val:
        return (f"test and validation splits of {n_test} and {n_val} samples are too small to "
                f"score or stop early on (they need at least {need}): training all {epochs} "
                f"epochs on all {n_train} samples, with no test score")
    if n_test:
        return (f"a test split of {_samples(n_test)} is too small to score (it needs at least "
                f"{need}): training on all {_samples(n_train)}, with no test score")
    if n_val:
        return (f"a validation split of {_samples(n_val)} is too small to stop early on (it "
                f"needs at least {need}): training all {epochs} epochs on all "
                f"{_samples(n_train)} of the training split")
    return None


def _samples(n):
    return f"{n} sample" + ("" if n == 1 else "s")


def _layers(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden wants sizes like 64,32, got {text!r}")
    if any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden wants positive sizes, got {text!r}")
    return sizes


def _fraction(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a number in [0, 1), got {text!r}")
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"wants a fraction in [0, 1) (0: none), got {text!r}")
    return v


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"wants a positive {kind.__name__}, got {text!r}")
        if not (v > 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"wants a positive {kind.__name__}, got {text!r}")
        return v
    parse.__name__ = kind.__name__
    return parse


def _delimiter(text):
    text = {"\\t": "\t", "tab": "\t"}.get(text, text)
    if len(text) != 1:
        raise argparse.ArgumentTypeError(f"wants one character (or 'tab'), got {text!r}")
    return text


def _check_outputs(args):
    """Fail now on paths that would only fail after training."""
    for opt, path in (("--save", args.save), ("--checkpoint", args.checkpoint)):
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise CLIError(f"{opt} {path!r} is a directory; give a file name like model.npz")
        if not os.path.isdir(folder):
            raise CLIError(f"{opt} {path!r}: the directory {os.path.dirname(path) or folder!r} "
                           "does not exist")
        if not os.access(folder, os.W_OK):
            raise CLIError(f"{opt} {path!r}: cannot write into {folder!r}")
    if args.resume and not args.checkpoint:
        raise CLIError("--resume needs --checkpoint CK.npz, the checkpoint to continue from")
    if args.plot:
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):
            raise CLIError(f"--plot {args.plot!r}: the directory does not exist")
        try:
            from matplotlib.backend_bases import FigureCanvasBase
        except ImportError:
            raise CLIError("--plot needs matplotlib: pip install 'nnjit[train]'") from None
        kinds = FigureCanvasBase.get_supported_filetypes()
        ext = os.path.splitext(args.plot)[1].lower().lstrip(".")
        if ext not in kinds:
            kind = ("." + ext) if ext else "(no extension)"
            raise CLIError(f"--plot {args.plot!r}: unknown image type {kind}; "
                           f"use one of {', '.join('.' + k for k in sorted(kinds))}")


# ---------------------------------------------------------------- compiling, progress
def _compile(make_net, X, Y, batch_size, backend, dtype, quiet):
    """Compile (or load from Numba's cache) the kernels a fit and a prediction need, on a
    tiny copy of the problem, saying so when it takes long: the first run compiles for about
    a minute, later runs load the cache in a fraction of a second. Returns seconds spent."""
    if backend == "vectorised":
        return 0.0
    done, failure = threading.Event(), []

    def work():
        try:
            net = make_net()
            # a full batch and a 1-sample remainder: the parallel and the serial variants
            n = min(len(X), batch_size + 1)
            net.fit(X[:n], Y[:n], epochs=1, batch_size=batch_size, validation_data=(X[:n], Y[:n]))
            net.predict(X[:n])
            net.predict(X[:1])
        except BaseException as e:      # noqa: BLE001 - re-raised in the main thread
            failure.append(e)
        finally:
            done.set()

    t = time.perf_counter()
    worker = threading.Thread(target=work, daemon=True, name="nnjit-compile")
    worker.start()
    said = False
    try:
        if not done.wait(1.0):
            said = True
            if not quiet:
                print(f"compiling the {backend} kernels for {dtype}, first run only — about "
                      f"{COMPILE_SECONDS} s on 2 cores (Numba caches them for later runs)", flush=True)
            while not done.wait(0.2):   # short waits: Ctrl-C is delivered between them
                pass
    except KeyboardInterrupt:
        # the compiling thread cannot be stopped, and interpreter shutdown would wait on
        # Numba's locks: leave at once (nothing is written before training starts)
        sys.stdout.flush()
        sys.stderr.write("\nnnjit train: interrupted while compiling; nothing was written\n")
        sys.stderr.flush()
        os._exit(130)
    dt = time.perf_counter() - t
    if failure:
        raise failure[0]
    if said and not quiet:
        print(f"compiled in {dt:.0f} s", flush=True)
    return dt


class _Progress:
    """The epoch bar as a fit callback: tqdm on a terminal, nothing when stderr is not one
    (logs stay clean). Created after compilation, so its ETA is the training's own."""

    def __init__(self, total, enabled):
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, desc="epochs (at most; stops early)", unit="epoch",
                            leave=False, dynamic_ncols=True)

    def __call__(self, net, epoch, history):
        if self.bar is not None:
            post = {"loss": f"{history['loss'][-1]:.4g}"}
            if history["val_loss"]:
                post["val_loss"] = f"{history['val_loss'][-1]:.4g}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- commands
def _rule_param(text):
    """NAME=VALUE of --rule-param: a number, numbers separated by commas, or a word."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if name not in R.PARAMS:
        raise argparse.ArgumentTypeError(f"unknown rule hyper-parameter {name!r}; the rules take "
                                         f"{', '.join(sorted(R.PARAMS))}")
    try:
        parts = [float(v) for v in value.split(",")]
        return name, parts[0] if len(parts) == 1 else tuple(parts)
    except ValueError:
        return name, value


def _rule(args):
    """The fit arguments of --optimizer, --momentum, --alpha and --rule-param."""
    if not 0 <= args.momentum < 1:
        raise CLIError(f"--momentum must be in [0, 1), got {args.momentum:g}")
    if not (args.alpha >= 0 and math.isfinite(args.alpha)):
        raise CLIError(f"--alpha must be 0 or more, got {args.alpha:g}")
    rule = {"optimizer": args.optimizer, "alpha": args.alpha}
    if "momentum" in R.BY_CODE[R.CODES[args.optimizer]].params:
        rule["momentum"] = args.momentum
    rule.update(dict(args.rule_param))
    R.check(**rule)         # every problem named before the data is read
    return rule


def _table(args, data, train):
    """The fitted Table of a CSV's feature columns (training rows only), or None for arrays."""
    if not hasattr(data.X, "iloc"):
        return None
    from .preprocessing import Table
    cols = list(data.X.columns)
    for opt in ("categorical", "numeric", "date", "drop"):
        for c in getattr(args, opt):
            if c not in cols:
                raise CLIError(f"--{opt} {c!r}: no such feature column in {args.data!r} (its columns: "
                               + ", ".join(map(repr, cols[:8])) + (" …)" if len(cols) > 8 else ")"))
    try:
        table = Table(categorical=args.categorical, numeric=args.numeric, dates=args.date,
                      drop=args.drop).fit(data.rows(train))
    except ValueError as e:
        raise CLIError(f"{args.data!r}: {e}") from None
    if table.n_features_out_ == 0:
        raise CLIError(f"{args.data!r}: every feature column was dropped ("
                       + "; ".join(table.describe()) + "); keep one with --numeric or --categorical")
    return table


def cmd_train(args):
    from . import MLP, DivergenceError
    from . import io as nio
    from .preprocessing import make_scaler
    _check_outputs(args)
    _rule(args)
    if args.patience < 0:
        raise CLIError(f"--patience must be 0 (no early stopping) or more, got {args.patience}")
    target = args.target if args.target is not None else args.target_column
    data = _load(args.data, target, header=args.header, delimiter=args.delimiter)
    y = data.y
    if y is None:
        raise CLIError(f"{args.data!r} has no targets: a .npz needs an array 'y'")
    if not hasattr(data.X, "iloc") and (args.categorical or args.numeric or args.date or args.drop):
        raise CLIError("--categorical, --numeric, --date and --drop apply to the columns of a "
                       f"CSV file, not to {args.data!r}")
    regression, why = detect_task(y, args.task)
    absent = None
    other = "classification" if regression else "regression"
    if len(data) < 2:
        raise CLIError(f"{args.data!r} has {_samples(len(data))}: too few to train on")
    need = split_needs(None if regression else len(np.unique(y)))
    rng = np.random.default_rng(args.seed)
    train, test = split_indices(len(data), args.test_fraction, rng)
    small_test = len(test) if 0 < len(test) < need else 0
    if small_test:
        train, test = np.arange(len(data)), test[:0]
    fit_idx, val = split_indices(len(train), args.validation_fraction, rng)
    fit_idx, val = train[fit_idx], train[val]
    small_val = len(val) if args.patience and 0 < len(val) < need else 0
    if small_val:
        fit_idx, val = train, val[:0]
    warning = _small_splits(small_test, small_val, need, len(train), args.epochs)
    if len(fit_idx) < 2:
        raise CLIError(f"{args.data!r} has {_samples(len(data))}: too few to hold out a "
                       "validation split; lower --validation-fraction")
    if regression:
        if y.dtype.kind not in "biuf":
            raise CLIError(f"{args.data!r}: --task regression needs a numeric target, the target "
                           f"holds text like {str(y.flat[0])!r}")
        y = y.astype(np.float64)
        K, output = (1 if y.ndim == 1 else y.shape[1]), "identity"
    else:
        K = len(np.unique(y[train]))
        if K < 2:
            raise CLIError(f"{args.data!r}: classification needs at least 2 classes, the "
                           f"training labels hold {K}; for a numeric target use --task regression")
        unseen = np.setdiff1d(np.unique(y), np.unique(y[train]))
        if unseen.size:     # a class too rare to land in the training split
            keep = ~np.isin(y[test], unseen)
            absent = (f"note: {int((~keep).sum())} test samples of classes absent from the "
                      f"training split ({unseen[:5].tolist()}) are left out of the test score")
            test = test[keep]
        output = "softmax" if K > 2 else "sigmoid"
        K = K if K > 2 else 1
    table = _table(args, data, train)
    n_in = data.X.shape[1] if table is None else table.n_features_out_
    layers = [n_in] + args.hidden + [K]

    def make_net():
        net = MLP(layers, activation=args.activation, output=output, backend=args.backend,
                  dtype=args.dtype, seed=args.seed)
        if not regression:      # every class, even one missing from a small warm-up subset
            net.classes_ = np.unique(y[train])
        net.table = table
        net.x_scaler = make_scaler(args.scale)
        net.y_scaler = make_scaler("standard" if regression and args.scale != "none" else None)
        return net

    net = make_net()
    where = "digits" if args.data == "digits" else os.path.basename(args.data)
    task = "regression" if regression else f"classification into {len(np.unique(y[train]))} classes"
    cols = "" if table is None or len(table.columns_) == n_in else f" from {len(table.columns_)} columns"
    print(f"{where}: {len(data)} samples, {n_in} features{cols}; {task} ({why}; "
          f"override with --task {other})")
    for note in data.notes:
        print(f"target {data.target_name or ''}: {note}".replace("target : ", "target: "))
    if table is not None:
        for line in table.describe():
            print(f"  {line}")
        if any(c["kind"] != "number" for c in table.columns_) or len(table.columns_) > 1:
            print("  (a column's kind: --categorical COL, --numeric COL, --date COL, --drop COL)")
    if absent:      # after the report of the table: its lines come first
        print(absent)
    print(f"split: {len(fit_idx)} train / {len(val)} validation / {len(test)} test samples; "
          f"network {layers}, {args.activation}, features scaled: {args.scale}, "
          f"backend={args.backend}, dtype={args.dtype}")
    if warning:
        print(f"warning: {warning}")      # in the report, beside the split it changes
    rows = data.rows
    compile_s = _compile(make_net, rows(fit_idx), y[fit_idx], args.batch_size, args.backend,
                         args.dtype, args.quiet)

    early = bool(len(val) and args.patience)
    bar = _Progress(args.epochs, not args.quiet)
    t = time.perf_counter()
    try:
        net.fit(rows(fit_idx), y[fit_idx], epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                **_rule(args), validation_data=(rows(val), y[val]) if len(val) else None,
                tol=1e-4 if early else None, n_iter_no_change=max(1, args.patience),
                restore_best=early, callbacks=[bar], checkpoint=args.checkpoint,
                checkpoint_every=args.checkpoint_every, resume=args.resume)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted after {net.n_epochs_} epochs"
              + (f"; the checkpoint {args.checkpoint} holds them: rerun with --resume"
                 if args.checkpoint else ""), file=sys.stderr)
        return 130
    except DivergenceError as e:
        bar.close()
        raise CLIError(f"{str(e).split(';')[0]}; try a smaller --lr (now {args.lr:g})"
                       + (f" or --momentum (now {args.momentum:g})"
                          if "momentum" in _rule(args) and args.momentum else "")
                       + ("" if args.scale != "none" else " or --scale standard")) from None
    finally:
        bar.close()
    dt = time.perf_counter() - t
    net.target_name_ = data.target_name     # feature names: the DataFrame's, kept by fit
    stopped = net.n_epochs_ < args.epochs and not args.resume
    msg = (f"trained {net.n_epochs_} epochs in {dt:.2f} s"
           + (f" (+{compile_s:.1f} s compiling/loading kernels)" if compile_s >= 0.05 else ""))
    if stopped:
        msg += (f"; stopped early: the validation loss had not improved for {args.patience} epochs")
    print(msg)
    if early and net.best_epoch_ is not None:
        print(f"kept the weights of epoch {net.best_epoch_ + 1} (lowest validation loss "
              f"{net.best_loss_:.4g})")
    if len(test):
        print(f"test {'R^2' if regression else 'accuracy'}: {net.score(rows(test), y[test]):.4f}")
    if args.save:
        nio.save(net, args.save, fit={"optimizer": args.optimizer, "lr": args.lr,
                                      "alpha": args.alpha, "momentum": args.momentum,
                                      "batch_size": args.batch_size, "epochs": args.epochs,
                                      "scale": args.scale, "patience": args.patience,
                                      "validation_fraction": args.validation_fraction,
                                      "data": args.data})
        print(f"saved the model to {args.save}")
    if args.plot:
        from .plot import save_loss_curve
        save_loss_curve(net, args.plot)
        print(f"saved the loss curve to {args.plot}")
    return 0


def cmd_predict(args):
    from .model import MLP
    net = MLP.load(args.model, backend=args.backend)
    columns = None if net.feature_names_in_ is None else (net.feature_names_in_, net.target_name_)
    n_columns = net.layers[0] if net.table is None else len(net.table.columns_)
    target = args.target if args.target is not None else args.target_column
    spot = _headerless_target(net)
    if args.target is None and not getattr(args, "target_column_given", False) and spot is not None:
        target = spot       # trained on a file without a header: its target's column

    data = _load(args.data, target, n_columns=n_columns, header=args.header,
                 delimiter=args.delimiter, columns=columns)
    X, y = data.X, data.y
    if X.shape[1] != n_columns:
        width = X.shape[1] + (y is not None)
        what = "features" if net.table is None else "columns (its table's)"
        raise CLIError(f"{args.data!r} has {width} columns but the model takes {n_columns} "
                       f"{what}: a file without a header must hold exactly those "
                       f"{n_columns} columns, or {n_columns + 1} with the label in --target-column")
    if hasattr(X, "iloc"):
        if net.table is None:
            X = _numbers(args.data, data)
        elif columns is None or list(X.columns) != list(net.feature_names_in_):
            X = X.set_axis([c["name"] for c in net.table.columns_], axis=1)   # by position
    for note in data.notes:
        print(f"target: {note}", file=sys.stderr)
    try:
        if args.proba:
            P = net.predict_proba(X)
            names = [f"proba_{c}" for c in (net.classes_ if net.classes_ is not None
                                            else range(P.shape[1]))]
        else:
            P = net.predict(X)
            names = ["prediction"] if P.ndim == 1 else [f"prediction_{k}" for k in range(P.shape[1])]
    except ValueError as e:         # the table's refusals: a column or value it cannot take
        raise CLIError(f"{args.data!r}: {_one_line(e)}") from None
    P = P.reshape(len(X), -1)
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(names)
        w.writerows(P.tolist())
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"wrote {len(X)} predictions to {args.out}", file=sys.stderr)
    if y is not None:
        kind = "accuracy" if net.is_classifier else "R^2"
        try:
            print(f"{kind} against the file's targets: {net.score(X, y):.4f}", file=sys.stderr)
        except (ValueError, TypeError) as e:
            print(f"(not scored against the file's last column: {e})", file=sys.stderr)
    return 0


def _headerless_target(net):
    """The 0-based column of the target in the file without a header a model was trained on
    (features "column 1", "column 2", ..., the target "column K"), else None."""
    feats, target = net.feature_names_in_, getattr(net, "target_name_", None)
    spots = [_column_number(n) for n in list(feats or []) + [target]]
    if not feats or target is None or None in spots or sorted(spots) != list(
            range(1, len(spots) + 1)):
        return None
    return spots[-1] - 1


def _column_number(name):
    m = re.fullmatch(r"column ([1-9][0-9]{0,5})", str(name))
    return int(m.group(1)) if m else None


def _short(v, n=40):
    text = repr(v)
    return text if len(text) <= n else text[:n - 1] + "…"


def _summary(values, n=10):
    """A list as one short line: its first n items, each cut to 40 characters, and a count."""
    head = ", ".join(_short(v) for v in values[:n])
    return f"[{head}{', …' if len(values) > n else ''}] ({len(values)})"


def cmd_info(args):
    from . import io as nio
    info = nio.info(args.model)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    arch = info["architecture"]
    print(f"file:            {info['file']} (nnjit format version {info['format_version']}, "
          f"written by nnjit {info['nnjit_version']})")
    print(f"layers:          {' -> '.join(map(str, arch['layers']))}")
    print(f"activation:      {arch['activation']} (hidden), {arch['output']} (output), loss {arch['loss']}")
    print(f"init, seed:      {arch['init']}, {arch['seed']}")
    print(f"backend, dtype:  {arch['backend']}, {arch['dtype']}")
    print(f"parameters:      {info['n_params']}")
    print(f"epochs trained:  {info['n_epochs']}")
    for key, label in (("final_loss", "final loss"), ("final_val_loss", "final val loss"),
                       ("final_val_score", "final val score")):
        if info[key] is not None:
            print(f"{label + ':':<17}{info[key]:.6g}")
    if info["classes"] is not None:
        c = info["classes"]
        print(f"classes:         {_summary(c)}")
    if info.get("columns"):
        cols = info["columns"]
        print(f"columns:         {_summary(cols['features'])}"
              + (f"; target {_short(cols['target'])}" if cols.get("target") else ""))
    if info.get("table"):
        kinds = [c.get("kind") for c in info["table"].get("columns", [])]
        print("table:           " + ", ".join(f"{kinds.count(k)} {k}" for k in
                                               ("number", "category", "date", "words", "drop")
                                               if k in kinds)
              + f" column{'s' if len(kinds) != 1 else ''} -> {arch['layers'][0]} features")
    if info.get("scalers"):
        print("scaling:         " + ", ".join(f"{k} {v}" for k, v in sorted(info["scalers"].items())))
    if info["fit"]:
        print("training:        " + ", ".join(f"{k}={v}" for k, v in sorted(info["fit"].items())
                                             if k not in ("data_crc32",)))
    if info["checkpoint"]:
        ck = info["checkpoint"]
        print(f"checkpoint of:   fit(epochs={ck['epochs']}) started at epoch {ck['start_epoch']}"
              f"{', stopped early' if ck['stopped'] else ''}")
    return 0


# ---------------------------------------------------------------- parser, main
from .clihelp import HelpFormatter  # noqa: E402

_Formatter = HelpFormatter


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `nnjit train: error: ...` and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_DATA_HELP = ("'digits' (scikit-learn's bundled 8x8 digits), a .csv file (a table: numbers, "
              "text, dates, gaps - see the README's 'Real tables'; the label in --target, an "
              "optional header row) or a .npz file with arrays X (samples, features) and y")


class _Given(argparse.Action):
    """store, and note that the option was given (args.<dest>_given)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, self.dest + "_given", True)


def _csv_options(p):
    p.add_argument("--target", metavar="NAME|INDEX",
                   help="CSV column holding the target: its header name, or a 0-based index "
                        "(negative counts from the end) (default: --target-column)")
    p.add_argument("--target-column", type=int, default=-1, metavar="INDEX", action=_Given,
                   help="CSV column holding the target, 0-based; negative counts from the end")
    h = p.add_mutually_exclusive_group()
    h.add_argument("--header", dest="header", action="store_true", default=None,
                   help="line 1 of the CSV names the columns (default: guessed; an ambiguous "
                        "line 1 is refused)")
    h.add_argument("--no-header", dest="header", action="store_false",
                   help="line 1 of the CSV is data (default: guessed, see --header)")
    p.add_argument("--delimiter", type=_delimiter, default=",",
                   help="CSV field separator, e.g. ';' or tab")


def build_parser():
    from . import __version__
    p = _Parser(prog="nnjit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-V", "--version", action="version", version=f"nnjit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p.subcommands = sub
    t = sub.add_parser("train", help="train an MLP on a dataset, report the test score, save it",
                       formatter_class=_Formatter,
                       description="Train an MLP on a dataset and report the held-out score. "
                                   "The defaults work on raw (unscaled) CSV files; see the "
                                   "README's table.")
    t.add_argument("--data", default="digits", help=_DATA_HELP)
    _csv_options(t)
    for opt, kind in (("categorical", "one-hot encode"), ("numeric", "read as numbers"),
                      ("date", "read as dates"), ("drop", "leave out")):
        t.add_argument(f"--{opt}", action="append", default=[], metavar="COL",
                       help=f"{kind} the CSV column COL (its header name, or 'column N' without a "
                            "header); repeatable (default: each column's kind is guessed from "
                            "its values, see the README's table)")
    t.add_argument("--task", default="auto", choices=["auto", "classification", "regression"],
                   help="auto: regression for non-integer targets and for integer targets with "
                        f"more than {MAX_CLASSES} values or under {MIN_PER_CLASS} samples per value")
    t.add_argument("--scale", default="standard", choices=["standard", "minmax", "none"],
                   help="feature scaling, fitted on the training split and saved in the model "
                        "(regression targets are standardised too unless 'none')")
    t.add_argument("--hidden", type=_layers, default="64", help="hidden layer sizes, e.g. 64,32")
    t.add_argument("--activation", default="tanh", choices=A.HIDDEN, help="hidden f")
    t.add_argument("--epochs", type=_positive(int), default=300,
                   help="at most this many epochs (early stopping usually ends sooner)")
    t.add_argument("--optimizer", default="adam", choices=tuple(R.CODES),
                   help="update rule (README: Update rules); sgd is the lecture's, with momentum")
    t.add_argument("--rule-param", action="append", default=[], type=_rule_param,
                   metavar="NAME=VALUE",
                   help="another hyper-parameter of the update rule, e.g. rho=0.9 (RMSprop), "
                        "betas=0.9,0.99, eps=1e-6, weight_decay=0.01 (AdamW); repeatable")
    t.add_argument("--lr", type=_positive(float), default=0.001, help="learning rate eta")
    t.add_argument("--momentum", type=float, default=0.9, help="momentum mu of sgd/nesterov, in [0, 1)")
    t.add_argument("--alpha", type=float, default=1e-4,
                   help="L2 penalty on the weights (scikit-learn's alpha)")
    t.add_argument("--batch-size", type=_positive(int), default=32, help="samples per update")
    t.add_argument("--validation-fraction", type=_fraction, default=0.15,
                   help="of the training split, held out for early stopping (0: none; a "
                        f"split under {MIN_SPLIT} samples or 2 per class is trained on instead)")
    t.add_argument("--patience", type=int, default=10,
                   help="stop when the validation loss has not improved for this many epochs, "
                        "then keep the best epoch's weights (0: train all --epochs)")
    t.add_argument("--test-fraction", type=_fraction, default=0.25,
                   help="held out for the test score (0: train on everything; a split under "
                        f"{MIN_SPLIT} samples or 2 per class is trained on instead)")
    t.add_argument("--seed", type=int, default=0, help="seeds the splits, weights and shuffling")
    t.add_argument("--backend", default="loops", choices=["loops", "vectorised", "cuda"],
                   help="loops: Numba kernels; vectorised: NumPy; cuda: NVIDIA GPU")
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="precision")
    t.add_argument("--save", metavar="MODEL.npz", help="save the trained model (nnjit.io format)")
    t.add_argument("--plot", metavar="OUT.png",
                   help="save the loss curve (matplotlib; .png, .pdf, .svg, ...)")
    t.add_argument("--checkpoint", metavar="CK.npz", help="write a checkpoint while training")
    t.add_argument("--checkpoint-every", type=_positive(int), default=1, metavar="N",
                   help="epochs between checkpoints")
    t.add_argument("--resume", action="store_true",
                   help="continue the run saved in --checkpoint (rerun the same command)")
    t.add_argument("--quiet", action="store_true", help="no progress bar or compile notice")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("predict", help="predict with a saved model, writing CSV", formatter_class=_Formatter,
                       description="Predict with a saved model (its feature scaling included); "
                                   "writes one CSV row per sample.")
    r.add_argument("--model", required=True, metavar="MODEL.npz", help="a model saved by nnjit train --save")
    r.add_argument("--data", required=True,
                   help="a .csv file (the model's feature columns, optionally plus a label column "
                        "at --target-column, which is then scored) or a .npz with X (and y)")
    _csv_options(r)
    r.add_argument("--out", metavar="PREDICTIONS.csv", help="output file (default: stdout)")
    r.add_argument("--proba", action="store_true", help="write class probabilities instead of labels")
    r.add_argument("--backend", default=None, choices=["loops", "vectorised", "cuda"],
                   help="run on another backend than the one the model was trained on")
    r.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="describe a saved model file", formatter_class=_Formatter,
                       description="Print a saved model's architecture, hyperparameters, epochs "
                                   "and parameter count.")
    i.add_argument("model", metavar="MODEL.npz")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_info)
    from .onnx import add_export_parser     # onnx itself is imported only when exporting
    add_export_parser(sub, _Formatter)
    from . import bench
    bench.build_parser(sub.add_parser(
        "bench", help="time an epoch: loops vs vectorised vs PyTorch / scikit-learn",
        description=bench.__doc__, formatter_class=HelpFormatter))
    sub.choices["bench"].set_defaults(func=bench.cmd)
    return p


def _one_line(text):
    lines = [s for s in str(text).splitlines() if s.strip()]
    return lines[0] if lines else type(text).__name__


def _broken_pipe():
    """The reader (e.g. `head`) went away: stop quietly, as `cat | head` does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # so the interpreter's final flush cannot fail
    except (OSError, ValueError, AttributeError):
        pass
    return 141      # 128 + SIGPIPE, the status of a shell tool killed by a closed pipe


def main(argv=None):
    command = "nnjit"
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        if argv[:1] == ["bench"] and "--sklearn" in argv:     # its own options: nnjit.bench.sklearn
            from .bench import sklearn as skbench
            command = "nnjit bench --sklearn"
            return skbench.main([a for a in argv[1:] if a != "--sklearn"])
        try:
            parser = build_parser()
            args, extra = parser.parse_known_args(argv)
            if extra:       # reported by the subcommand's parser, so the line names it
                parser.subcommands.choices[args.command].error(
                    f"unrecognized arguments: {' '.join(extra)}")
        except SystemExit as e:     # argparse: --help and --version exit 0, errors 2
            if e.code in (0, None):
                raise
            return e.code
        command = f"nnjit {args.command}"
        rc = args.func(args)
        sys.stdout.flush()      # a closed pipe fails here, inside the handlers below
        return rc
    except KeyboardInterrupt:
        print(f"\n{command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _broken_pipe()
    except SystemExit as e:
        if isinstance(e.code, str):         # nnjit bench's option checks: SystemExit("message")
            msg = e.code.split(": ", 1)[1] if e.code.startswith("nnjit bench: ") else e.code
            print(f"{command}: error: {_one_line(msg)}", file=sys.stderr)
            return 2
        raise
    except (ValueError, TypeError, OSError, ImportError, ArithmeticError) as e:
        print(f"{command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:      # a bug of nnjit's own: still one line, the traceback on request
        if os.environ.get("NNJIT_TRACEBACK"):
            raise
        print(f"{command}: error: internal error {type(e).__name__}: {_one_line(e)} (please "
              "report it; NNJIT_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
