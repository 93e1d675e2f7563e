"""Feature and target scaling that travels with a model.

A :class:`Scaler` is an affine map x -> (x - offset_) / scale_ per column, fitted on training
data only. ``MLP.x_scaler`` (applied to every X before the input layer) and ``MLP.y_scaler``
(regression targets: fitted on y, inverted on predictions) hold one each; both are saved in the
model file, so ``nnjit predict`` and ``MLP.load(...).predict`` see raw data as the training
data was given. Not a general preprocessing library: for pipelines use scikit-learn's.
"""
import numpy as np

KINDS = ("standard", "minmax")

#: the largest |offset| and scale a Scaler holds (and a model file may carry): far above any
#: real column, and far enough below float64's 1.8e308 that inverting a network's output
#: (z * scale + offset, |z| up to ~1e50) cannot overflow
MAX_MAGNITUDE = 1e250
#: a column whose spread is below this fraction of its largest magnitude is constant (scale
#: 1): rounding noise, not information. Relative, so a feature measured in 1e-15 units scales.
MIN_RELATIVE_SCALE = 1e-12


def check_fitted(offset, scale):
    """None if (offset, scale) is what Scaler.fit can produce, else what is wrong: both
    finite, |offset| at most MAX_MAGNITUDE and scale at most twice it, scale 1 or positive and above
    MIN_RELATIVE_SCALE * |offset|. Model files are checked with it at load."""
    offset, scale = np.asarray(offset, np.float64), np.asarray(scale, np.float64)
    if offset.shape != scale.shape or offset.ndim != 1:
        return f"offset {offset.shape} and scale {scale.shape} are not two vectors of one length"
    if not (np.isfinite(offset).all() and np.isfinite(scale).all()):
        return "values must be finite"
    if (np.abs(offset) > MAX_MAGNITUDE).any() or (scale > 2 * MAX_MAGNITUDE).any():
        return f"values above {MAX_MAGNITUDE:g} (or a scale above twice that: max - min)"
    bad = (scale != 1.0) & ~((scale > 0) & (scale > MIN_RELATIVE_SCALE * np.abs(offset)))
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        return (f"scale[{j}] = {scale[j]!r} is not positive or below {MIN_RELATIVE_SCALE:g} x "
                "|offset|, which no fit produces")
    return None


class Scaler:
    """Per-column scaling: ``"standard"`` (mean 0, std 1, like scikit-learn's StandardScaler)
    or ``"minmax"`` (to [0, 1], like MinMaxScaler). Constant columns get scale 1, so they map
    to 0 instead of dividing by zero."""

    def __init__(self, kind="standard"):
        if kind not in KINDS:
            raise ValueError(f"unknown scaling {kind!r}; choose one of {', '.join(map(repr, KINDS))}")
        self.kind = kind
        self.offset_ = None
        self.scale_ = None

    def fit(self, X):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"a scaler is fitted on a non-empty 2-D array, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("cannot fit a scaler on data containing NaN or inf")
        big = np.abs(X).max(axis=0)
        if (big > MAX_MAGNITUDE).any():
            j = int(np.argmax(big))
            raise ValueError(f"column {j} holds {big[j]:.3g}; nnjit scales columns up to "
                             f"{MAX_MAGNITUDE:g} in magnitude (rescale it first)")
        # each column divided by a power of two near its largest magnitude first (exact, so
        # the mean and std are bit for bit NumPy's where those do not overflow): the squares
        # of a column of 1e200s overflow (std inf, every scaled value 0), its ratios do not
        m = np.ldexp(1.0, np.frexp(np.where(big > 0, big, 1.0))[1])
        U = X / m
        if self.kind == "standard":
            offset, scale = U.mean(axis=0) * m, U.std(axis=0) * m
        else:
            lo = U.min(axis=0)
            offset, scale = lo * m, (U.max(axis=0) - lo) * m
        # a constant column (or one varying at rounding level) carries no information
        scale[scale <= MIN_RELATIVE_SCALE * big] = 1.0
        self.offset_, self.scale_ = offset, scale
        return self

    def _check(self, X):
        if self.offset_ is None:
            raise ValueError("this Scaler is not fitted; call fit(X_train) first")
        if X.shape[-1] != self.offset_.shape[0]:
            raise ValueError(f"the scaler was fitted on {self.offset_.shape[0]} columns, "
                             f"got {X.shape[-1]}")

    def transform(self, X):
        """(X - offset_) / scale_, in X's floating dtype."""
        X = np.asarray(X)
        self._check(X)
        dtype = X.dtype if X.dtype.kind == "f" else np.float64
        return ((X - self.offset_) / self.scale_).astype(dtype, copy=False)

    def inverse_transform(self, Z):
        Z = np.asarray(Z)
        self._check(Z)
        return Z * self.scale_ + self.offset_

    def fit_transform(self, X):
        return self.fit(X).transform(X)

    def __repr__(self):
        return f"Scaler({self.kind!r}{'' if self.offset_ is None else ', fitted'})"


def make_scaler(kind):
    """A Scaler for "standard" / "minmax", None for "none" or None."""
    return None if kind in (None, "none") else Scaler(kind)


# ---------------------------------------------------------------- tables
#: the kinds of column a Table knows, in the order its report lists them
COLUMN_KINDS = ("number", "category", "date", "words", "drop")
#: a word of identifier-like text: a run of ASCII letters and digits, matched case-blind
#: (ASCII-only, so that ONNX's regular expressions find the same words)
WORD = r"[a-z0-9]+"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
#: a word is kept when at least this many rows (and this fraction of them) hold it
MIN_WORD_ROWS, MIN_WORD_FRACTION = 3, 0.01
#: days per year: a date's "years" feature is days since 1970-01-01 / this, and its season
#: the phase of the same ratio (so each is one multiplication, in NumPy and in ONNX alike)
YEAR_DAYS = 365.2425
NS_PER_DAY = 86_400 * 10**9     # a date column's ticks (datetime64[ns]) per day
#: date spellings recognised without being told (--date COL forces the rest through pandas)
_DATE_PATTERNS = (
    (r"\d{4}-\d{1,2}-\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?", "ISO8601"),
    (r"\d{4}/\d{1,2}/\d{1,2}", "%Y/%m/%d"),
    (r"\d{1,2}/\d{1,2}/\d{4}", "%m/%d/%Y"),      # "%d/%m/%Y" where a first part exceeds 12
    (r"\d{1,2}\.\d{1,2}\.\d{4}", "%d.%m.%Y"),
)
#: the formats a date column may be read with (a model file's "format"; None: datetime64)
DATE_FORMATS = tuple(f for _, f in _DATE_PATTERNS) + ("%d/%m/%Y",)
#: the longest column name and word a Table keeps (a category: nnjit.config.
#: MODEL_FILE_MAX_LABEL): what a model file may hold. Longer categories and words are left
#: out at fit (as unseen values); a longer column name is refused.
MAX_NAME, MAX_WORD = 1024, 200
#: the most columns a Table reads (dropped ones included): a model file's limit
MAX_COLUMNS = 2**16
#: text that is a code, not a quantity: digits with a leading zero ("02134", "007")
_CODE = r"0\d+"
_NUMBER_TEXT = r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("tables (nnjit.preprocessing.Table, CSV files in nnjit train) need "
                          "pandas: pip install 'nnjit[train]'") from None
    return pandas


def _short_names(names, n=4, width=24):
    """A list of column names for one report line: the first n, each cut to width."""
    cut = [s if len(s) <= width else s[:width - 1] + "…" for s in map(str, names)]
    return ", ".join(cut[:n]) + (f" and {len(cut) - n} more" if len(cut) > n else "")


def text_values(values):
    """Values as an object Series of stripped strings, None where missing or empty: what a
    Table parses numbers and dates from."""
    pd = _pandas()
    return pd.Series([None if v is None or (not isinstance(v, str) and pd.isna(v))
                      else (str(v).strip() or None) for v in list(values)], dtype=object)


def category_strings(values):
    """Values of a categorical column as the strings a Table matches (None where missing):
    text stripped, booleans "True"/"False", integral numbers without ".0" (a column of
    labels 1, 2, 3 that missing values turned into floats keeps its spelling)."""
    pd = _pandas()
    out = []
    for v in values:
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            out.append(None)
        elif isinstance(v, (bool, np.bool_)):
            out.append(str(bool(v)))
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            out.append(str(int(v)))
        else:
            s = str(v).strip()
            out.append(s if s else None)
    return out


def _canonical(text):
    """Another spelling of a category under which it still matches (None: none): a number's
    value ("2134" for "2134.0" or 2134, "1.5" for "1.50"; leading zeros dropped) and a
    boolean's ("True" for "true" and "TRUE"), so that a value read as text in one place and as
    a number or boolean in another (pandas' guess, a zip code "02134" read as 2134) is the
    same category."""
    import re
    low = text.lower()
    if low in ("true", "false"):
        return low.capitalize()
    if not re.fullmatch(_NUMBER_TEXT, text):
        return None
    f = float(text)
    if not np.isfinite(f):
        return None
    return str(int(f)) if f.is_integer() and abs(f) < 2**53 else repr(f)


def match_categories(column, values):
    """For a fitted category column (a state's dict) and raw values: per value, the index of
    its 0/1 column (len(categories) for the missing column), or -1 (unseen: all zeros). A
    value matches a category spelled the same (category_strings), else one whose
    _canonical spelling is the same, where no other category shares it."""
    cats = column["categories"]
    index = {v: k for k, v in enumerate(cats)}
    alias, twice = {}, set()
    for k, v in enumerate(cats):
        a = _canonical(v)
        if a is not None:
            if a in alias:
                twice.add(a)
            alias[a] = k
    for a in twice:
        del alias[a]
    out = np.full(len(values), -1, dtype=np.int64)
    for m, v in enumerate(category_strings(values)):
        if v is None:
            if column["missing"]:
                out[m] = len(cats)
            continue
        k = index.get(v)
        if k is None:
            a = _canonical(v)
            k = None if a is None else alias.get(a)
        if k is not None:
            out[m] = k
    return out


class Table:
    """What ``nnjit train`` does to a table's columns, as an object a model carries like
    ``x_scaler``: fitted on a pandas DataFrame of the training rows, it turns any DataFrame
    with the same columns into the float64 matrix the input layer takes, and is saved in the
    model file (JSON, never pickle).

    Each column gets a kind, guessed from its values unless named in an override:

    ==========  ==============================================  ===========================
    kind        when                                            becomes
    ==========  ==============================================  ===========================
    number      numeric (or text that is all numbers)           the value; missing: the
                                                                training median
    category    text, booleans, codes ("02134"),                one 0/1 column per value
                ``categorical``                                 (the ``max_categories`` most
                                                                frequent); missing: a column
                                                                of its own if training had
                                                                any; unseen: all zeros
    date        datetime64, or text that is all dates           days since 1970 / 365.2425
                (2024-03-01, 2024/03/01, 03/01/2024, 01.03.2024)  (years), and sin/cos of the
                                                                season and of the time of day
                                                                where those vary; missing:
                                                                the median
    words       identifier-like text (distinct values for more  one 0/1 column per word
                than half the rows, e.g. a car's name) whose    (letters and digits, case-
                words recur                                     blind) in 3 rows and 1 % of
                                                                them or more, the
                                                                ``max_categories`` most
                                                                frequent: "chevrolet", "sw"
    drop        identifier-like text with no recurring word     nothing; said in describe()
                (an ID), a row number (0..n-1 or 1..n; for a
                split's rows the index plus a constant), a
                column with no values, ``drop``
    ==========  ==============================================  ===========================

    ``transform`` refuses, in one line, a column it has never seen, a missing training
    column, and a value it cannot convert (text in a number column, a non-date in a date
    column). ``describe()`` says what was done, a line per kind. The output's category
    columns are left unscaled by the MLP's x_scaler (``onehot_mask_``), as scikit-learn's
    ColumnTransformer leaves a OneHotEncoder's.
    """

    def __init__(self, categorical=(), numeric=(), dates=(), drop=(), max_categories=50):
        self.categorical, self.numeric = list(categorical), list(numeric)
        self.dates, self.drop = list(dates), list(drop)
        if isinstance(max_categories, bool) or not isinstance(max_categories, int) or max_categories < 1:
            raise ValueError(f"max_categories must be a positive integer, got {max_categories!r}")
        self.max_categories = max_categories
        forced = self.categorical + self.numeric + self.dates + self.drop
        twice = sorted({c for c in forced if forced.count(c) > 1}, key=str)
        if twice:
            raise ValueError(f"column {twice[0]!r} is given two kinds (categorical, numeric, "
                             "dates, drop name each column once)")
        self.columns_ = None        # one dict per input column, see state()
        self.notes_ = {}            # column name -> what fit() noticed (describe())

    # ------------------------------------------------------------------ fitting
    def fit(self, df):
        """Choose each column's kind and fit what it needs (median, categories) on df."""
        df = self._frame(df, fitting=True)
        if len(df) == 0:
            raise ValueError("a Table is fitted on at least one row, got an empty table")
        names = [str(c) for c in df.columns]
        _check_names(names)
        unknown = [c for c in self.categorical + self.numeric + self.dates + self.drop
                   if str(c) not in names]
        if unknown:
            raise ValueError(f"column {unknown[0]!r} (named in an override) is not in the table; "
                             f"its columns: {_short_names(names, 8)}")
        self.notes_ = {}
        self.columns_ = [self._fit_column(name, df.iloc[:, j]) for j, name in enumerate(names)]
        return self

    def _fit_column(self, name, s):
        pd = _pandas()
        forced = {str(c): k for k, cols in (("category", self.categorical), ("number", self.numeric),
                                            ("date", self.dates), ("drop", self.drop)) for c in cols}
        kind = forced.get(name)
        n, present = len(s), int(s.notna().sum())
        if kind == "drop":
            return self._dropped(name, "as asked")
        if present == 0:
            return self._dropped(name, "no values")
        if kind is None:
            kind, why = self._guess(name, s)
            if kind == "drop":
                return self._dropped(name, why)
        if kind == "words":
            rows = [set(_words(v)) for v in category_strings(s.tolist()) if v is not None]
            counts = {}
            for ws in rows:
                for w in ws:
                    counts[w] = counts.get(w, 0) + 1
            need = max(MIN_WORD_ROWS, MIN_WORD_FRACTION * len(rows))
            common = sorted((w for w in counts if need <= counts[w] < len(rows)
                             and len(w) <= MAX_WORD),
                            key=lambda w: (-counts[w], w))[:self.max_categories]
            if not common:
                return self._dropped(name, f"{why}, no word in {need:.0f} rows")
            return {"name": name, "kind": "words", "words": sorted(common), "why": why}
        if kind == "number":
            v = self._numbers(name, s)
            big = np.flatnonzero(np.abs(v) > MAX_MAGNITUDE)
            if big.size:
                raise ValueError(f"{_row(s, int(big[0]))}, column {name!r}: {v[big[0]]:.3g} is beyond "
                                 f"the {MAX_MAGNITUDE:g} nnjit takes in magnitude (rescale the column)")
            fill = float(np.median(v[~np.isnan(v)]))
            self.notes_[name] = {"missing": int(np.isnan(v).sum())}
            return {"name": name, "kind": "number", "fill": fill}
        if kind == "date":
            fmt = self._date_format(s) if not pd.api.types.is_datetime64_any_dtype(s) else None
            days = self._days(name, s, fmt)
            ok = days[~np.isnan(days)]
            if ok.size == 0:
                raise ValueError(f"column {name!r}: no value reads as a date")
            t = np.floor(ok).astype(np.int64).astype("datetime64[D]")     # no overflow in 9999
            season = len(np.unique(t - t.astype("datetime64[Y]").astype("datetime64[D]"))) > 1
            time = bool((ok != np.floor(ok)).any())
            self.notes_[name] = {"missing": int(np.isnan(days).sum())}
            return {"name": name, "kind": "date", "fill": float(np.median(ok)), "season": season,
                    "time": time, "format": fmt}
        strings = category_strings(s.tolist())
        counts = {}
        for v in strings:
            if v is not None:
                counts[v] = counts.get(v, 0) + 1
        longest = _max_category()
        ranked = sorted((v for v in counts if len(v) <= longest), key=lambda v: (-counts[v], v))
        kept = ranked[:self.max_categories]
        missing = present < n
        self.notes_[name] = {"missing": n - present, "values": len(counts),
                             "infrequent": len(counts) - len(kept)}
        return {"name": name, "kind": "category", "categories": sorted(kept), "missing": missing}

    def _dropped(self, name, why):
        self.notes_[name] = {"why": why}
        return {"name": name, "kind": "drop", "why": why}

    def _guess(self, name, s):
        """(kind, why) of a column from its values (the class docstring's table); why says
        why a column is dropped."""
        import re
        pd = _pandas()
        present = s.dropna()
        if pd.api.types.is_bool_dtype(s):
            return "category", None
        if pd.api.types.is_datetime64_any_dtype(s):
            return "date", None
        if pd.api.types.is_numeric_dtype(s):
            if pd.api.types.is_integer_dtype(s) and len(present) == len(s) and _row_numbers(
                    present.to_numpy(dtype=np.int64), s.index):
                return "drop", "a row number"
            return "number", None
        text = [str(v).strip() for v in present.tolist()]
        bad = np.flatnonzero(pd.to_numeric(pd.Series(text), errors="coerce").isna().to_numpy())
        if bad.size == 0 and any(re.fullmatch(_CODE, t) for t in text) and all(
                re.fullmatch("[0-9]+", t) for t in text):
            pass            # codes such as zip codes "02134": their leading zeros say so
        elif bad.size == 0:
            return "number", None
        elif bad.size <= min(5, 0.1 * len(text)):
            # numbers and a stray word: a typo to fix, not a column of categories
            pos = int(np.flatnonzero(s.notna().to_numpy())[bad[0]])
            raise ValueError(f"{_row(s, pos)}, column {name!r}: {text[bad[0]]!r} is not a number, "
                             f"while {len(text) - bad.size} of the column's {len(text)} values "
                             "are; fix it, or pass the column as categorical")
        if self._date_format(present) is not None:
            return "date", None
        distinct = len(set(text))
        if distinct > 10 and distinct > 0.5 * len(text):
            return "words", f"identifier-like: {distinct} distinct values in {len(text)} rows"
        return "category", None

    @staticmethod
    def _date_format(s):
        """The format every present value of s matches (one of _DATE_PATTERNS), or None."""
        import re
        text = [str(v).strip() for v in s.dropna().tolist()]
        if not text:
            return None
        for pattern, fmt in _DATE_PATTERNS:
            rx = re.compile(pattern)
            if all(rx.fullmatch(t) for t in text):
                if fmt == "%m/%d/%Y" and any(int(t.split("/")[0]) > 12 for t in text):
                    fmt = "%d/%m/%Y"
                return fmt
        return None

    # ------------------------------------------------------------------ conversions
    def _numbers(self, name, s):
        pd = _pandas()
        if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            text = text_values(s)
            v = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            bad = np.flatnonzero(np.isnan(v) & text.notna().to_numpy())
            if bad.size:
                raise ValueError(f"{_row(s, int(bad[0]))}, column {name!r}: {text.iloc[bad[0]]!r} is "
                                 f"not a number ({bad.size} values like it); the column was "
                                 "numeric in training")
        inf = np.flatnonzero(np.isinf(v))
        if inf.size:
            raise ValueError(f"{_row(s, int(inf[0]))}, column {name!r}: {v[inf[0]]} is not finite")
        return v

    def _days(self, name, s, fmt):
        """Days since 1970-01-01 as float64 (NaN where missing) of a date column."""
        pd = _pandas()
        if pd.api.types.is_datetime64_any_dtype(s):
            ts = s
            if getattr(ts.dt, "tz", None) is not None:
                ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        else:
            text = text_values(s)
            kw = {"format": fmt} if fmt else {}
            try:
                ts = pd.to_datetime(text, errors="coerce", utc=True, **kw).dt.tz_localize(None)
            except (ValueError, TypeError) as e:
                raise ValueError(f"column {name!r}: cannot read its values as dates ({e})") from None
            bad = np.flatnonzero(ts.isna().to_numpy() & text.notna().to_numpy())
            if bad.size:
                raise ValueError(f"{_row(s, int(bad[0]))}, column {name!r}: {text.iloc[bad[0]]!r} "
                                 f"is not a date{f' like {fmt}' if fmt else ''} ({bad.size} "
                                 "values like it)")
        return _days_of(ts.to_numpy())

    # ------------------------------------------------------------------ applying
    def transform(self, df):
        """The float64 (rows, n_features_out_) matrix of df's columns, as fitted."""
        self._check_fitted()
        df = self._frame(df)
        by_name = {str(c): j for j, c in enumerate(df.columns)}
        if len(by_name) < df.shape[1]:
            names = [str(c) for c in df.columns]
            twice = next(c for c in names if names.count(c) > 1)
            raise ValueError(f"the table names the column {twice!r} twice; a Table reads its "
                             "columns by name")
        known = {c["name"] for c in self.columns_}
        unseen = [c for c in by_name if c not in known]
        missing = [c["name"] for c in self.columns_ if c["kind"] != "drop" and c["name"] not in by_name]
        if unseen or missing:
            raise ValueError("the table's columns do not match the training columns: " + "; ".join(
                f"{what} {_short_names(cols)}" for what, cols in
                (("missing", missing), ("never seen in training", unseen)) if cols))
        blocks = [np.empty((len(df), 0))]
        for c in self.columns_:
            if c["kind"] == "drop":
                continue
            s = df.iloc[:, by_name[c["name"]]]
            blocks.append(self._encode(c, s))
        return np.ascontiguousarray(np.hstack(blocks), dtype=np.float64)

    def _encode(self, c, s):
        kind = c["kind"]
        if kind == "number":
            v = self._numbers(c["name"], s)
            return np.where(np.isnan(v), c["fill"], v)[:, None]
        if kind == "date":
            d = self._days(c["name"], s, c.get("format"))
            d = np.where(np.isnan(d), c["fill"], d)
            cols = [d / YEAR_DAYS]
            if c["season"]:
                phase = 2 * np.pi * (d / YEAR_DAYS)
                cols += [np.sin(phase), np.cos(phase)]
            if c["time"]:
                phase = 2 * np.pi * (d - np.floor(d))
                cols += [np.sin(phase), np.cos(phase)]
            return np.stack(cols, axis=1)
        if kind == "words":
            index = {w: k for k, w in enumerate(c["words"])}
            out = np.zeros((len(s), len(index)))
            for m, v in enumerate(category_strings(s.tolist())):
                for w in _words(v or ""):
                    k = index.get(w)
                    if k is not None:
                        out[m, k] = 1.0
            return out
        k = match_categories(c, s.tolist())
        out = np.zeros((len(s), _width(c)))
        hit = np.flatnonzero(k >= 0)
        out[hit, k[hit]] = 1.0
        return out

    def fit_transform(self, df):
        return self.fit(df).transform(df)

    def _frame(self, df, fitting=False):
        """df as a pandas DataFrame; a 2-D array or list of rows is read by position as the
        training columns (a model trained on a headerless file, predicting on arrays)."""
        pd = _pandas()
        if isinstance(df, pd.DataFrame):
            return df
        if isinstance(df, dict):
            return pd.DataFrame(df)
        if fitting or self.columns_ is None:
            raise TypeError(f"a Table is fitted on a pandas DataFrame, got {type(df).__name__}")
        a = np.asarray(df, dtype=object)
        if a.ndim != 2 or a.shape[1] != len(self.columns_):
            raise ValueError(f"an array given to a Table must be 2-D with its {len(self.columns_)} "
                             f"training columns, got shape {a.shape}")
        return pd.DataFrame({c["name"]: a[:, j] for j, c in enumerate(self.columns_)})

    def _check_fitted(self):
        if self.columns_ is None:
            raise ValueError("this Table is not fitted; call fit(df) first")

    # ------------------------------------------------------------------ what it did
    @property
    def n_features_out_(self):
        """The number of columns transform returns: the input layer's size."""
        self._check_fitted()
        return sum(_width(c) for c in self.columns_)

    @property
    def onehot_mask_(self):
        """(n_features_out_,) bool: True for the 0/1 columns of categories."""
        self._check_fitted()
        return np.concatenate([np.full(_width(c), c["kind"] in ("category", "words"))
                               for c in self.columns_]
                              + [np.zeros(0, bool)])

    def feature_names_out(self):
        """A name per output column: "col", "col=value", "col:years", "col:season_sin", ..."""
        self._check_fitted()
        out = []
        for c in self.columns_:
            n = c["name"]
            if c["kind"] == "number":
                out.append(n)
            elif c["kind"] == "category":
                out += [f"{n}={v}" for v in c["categories"]] + ([f"{n}=(missing)"] if c["missing"] else [])
            elif c["kind"] == "words":
                out += [f"{n}~{w}" for w in c["words"]]
            elif c["kind"] == "date":
                out += [f"{n}:years"] + ([f"{n}:season_sin", f"{n}:season_cos"] if c["season"] else []) \
                    + ([f"{n}:time_sin", f"{n}:time_cos"] if c["time"] else [])
        return out

    def describe(self):
        """What fit did, one line per kind of column (names shortened), and how to override."""
        self._check_fitted()
        by = {k: [c for c in self.columns_ if c["kind"] == k] for k in COLUMN_KINDS}
        notes = self.notes_
        lines = []
        if by["number"]:
            filled = sum(notes.get(c["name"], {}).get("missing", 0) for c in by["number"])
            lines.append(f"numbers ({len(by['number'])}): {_short_names([c['name'] for c in by['number']])}"
                         + (f"; {_count(filled, 'missing value')} filled with the column's median"
                            if filled else ""))
        if by["category"]:
            parts = [f"{_short_names([c['name']], 1, 20)} {len(c['categories'])}" +
                     (" + missing" if c["missing"] else "") for c in by["category"]]
            rare = sum(notes.get(c["name"], {}).get("infrequent", 0) for c in by["category"])
            lines.append(f"categories ({len(by['category'])}), one-hot: "
                         + _short_names(parts, 4, 40).replace("…", "…")
                         + (f"; {rare} rare values beyond the {self.max_categories} most frequent "
                            "per column as unseen" if rare else "")
                         + "; unseen values at predict: all zeros")
        if by["date"]:
            parts = [c["name"] for c in by["date"]]
            filled = sum(notes.get(c["name"], {}).get("missing", 0) for c in by["date"])
            lines.append(f"dates ({len(by['date'])}): {_short_names(parts)} as years since 1970"
                         + (" + season" if any(c["season"] for c in by["date"]) else "")
                         + (" + time of day" if any(c["time"] for c in by["date"]) else "")
                         + (f"; {_count(filled, 'missing value')} filled with the median" if filled else ""))
        if by["words"]:
            parts = [f"{_short_names([c['name']], 1, 20)} {_count(len(c['words']), 'word')} "
                     f"({c['why']})" for c in by["words"]]
            lines.append(f"words ({len(by['words'])}): " + _short_names(parts, 4, 80)
                         + "; each value dropped, its recurring words as 0/1 columns")
        if by["drop"]:
            parts = [f"{_short_names([c['name']], 1, 20)} ({c['why']})" for c in by["drop"]]
            lines.append(f"dropped ({len(by['drop'])}): " + _short_names(parts, 4, 90))
        return lines

    # ------------------------------------------------------------------ saving
    def state(self):
        """The fitted state as JSON-able values: {"columns": [...]}, one dict per input column
        in order: {"name", "kind": "number", "fill"}, {"name", "kind": "category",
        "categories": [str], "missing": bool}, {"name", "kind": "date", "fill" (days),
        "season": bool, "time": bool, "format": str or None}, {"name", "kind": "drop", "why"}."""
        self._check_fitted()
        return {"columns": [dict(c) for c in self.columns_], "max_categories": self.max_categories}

    @classmethod
    def from_state(cls, state):
        """The Table of a state(): its fields checked (state_schema, as a model file's), then
        what no fit could produce; a ValueError naming the first problem."""
        from .schema import SchemaError
        try:
            state_schema()(state, "table")
        except SchemaError as e:
            raise ValueError(str(e)) from None
        t = cls(max_categories=state.get("max_categories", 50))
        cols = [dict(c) for c in state["columns"]]
        names = [c["name"] for c in cols]
        if not cols or len(set(names)) != len(names):
            raise ValueError("a table's column names must be distinct, and at least one")
        if all(c["kind"] == "drop" for c in cols):
            raise ValueError("a table must keep at least one column")
        for c in cols:
            if c["kind"] == "category":
                cats = c["categories"]
                if len(set(cats)) != len(cats) or cats != sorted(cats) or "" in cats:
                    raise ValueError(f"column {c['name']!r}: its categories must be distinct, "
                                     "sorted and not empty strings")
                if not cats and not c["missing"]:
                    raise ValueError(f"column {c['name']!r}: a category column without categories")
            if c["kind"] == "words":
                ws = c["words"]
                if not ws or ws != sorted(set(ws)) or any(_words(w) != [w] for w in ws):
                    raise ValueError(f"column {c['name']!r}: its words must be distinct, sorted, "
                                     f"and each a word ({WORD})")
        t.columns_ = cols
        return t

    def __repr__(self):
        if self.columns_ is None:
            return "Table()"
        kinds = [c["kind"] for c in self.columns_]
        return ("Table(" + ", ".join(f"{kinds.count(k)} {k}" for k in COLUMN_KINDS if k in kinds)
                + f" -> {self.n_features_out_} features)")


def _count(n, what):
    return f"{n} {what}" + ("" if n == 1 else "s")


def _width(c):
    """The output columns of one fitted column."""
    if c["kind"] == "number":
        return 1
    if c["kind"] == "category":
        return len(c["categories"]) + bool(c["missing"])
    if c["kind"] == "date":
        return 1 + 2 * bool(c["season"]) + 2 * bool(c["time"])
    if c["kind"] == "words":
        return len(c["words"])
    return 0


def _words(text):
    """The words of a text, as Table's words columns match them (WORD, case-blind)."""
    import re
    return re.findall(WORD, text.translate(_ASCII_LOWER))


def _row(s, pos):
    """Where the pos-th value of a column is, for messages: "row <index label>", or "line
    <n>" for a CSV read by nnjit train (its DataFrame's attrs say so)."""
    word = getattr(s, "attrs", {}).get("nnjit_row_word", "row")
    return f"{word} {s.index[pos]}"


def _check_names(names):
    """Refuse, in one line, column names a Table cannot read back by name: an empty one, one
    longer than MAX_NAME, two spelled alike (1 and "1" alike), more than MAX_COLUMNS."""
    if len(names) > MAX_COLUMNS:
        raise ValueError(f"a Table reads at most {MAX_COLUMNS} columns, got {len(names)}")
    for j, n in enumerate(names):
        if not n.strip():
            raise ValueError(f"column {j + 1} has no name ({n!r}); a Table reads columns by name: "
                             "name it")
        if len(n) > MAX_NAME:
            raise ValueError(f"column {j + 1}'s name is {len(n)} characters long, more than "
                             f"the {MAX_NAME} a model file holds: shorten it")
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"two columns are named {twice!r}; a Table reads columns by name")


def _row_numbers(v, index=None):
    """Whether integers v (a column without gaps) number the rows, more than 20 of them:
    0..n-1 or 1..n in any order, or, for some rows of a table (nnjit train's training split,
    df.iloc[rows]), its index plus a constant, from near 0 or 1 (at most 10)."""
    if len(v) <= 20:
        return False
    lo, hi = int(v.min()), int(v.max())
    if lo in (0, 1) and hi == lo + len(v) - 1 and len(np.unique(v)) == len(v):
        return True
    try:
        at = np.asarray(index, dtype=np.int64) if index is not None else None
    except (TypeError, ValueError, OverflowError):
        return False
    if at is None or at.shape != v.shape or not 0 <= lo <= 10:
        return False
    step = v - at
    return bool((step == step[0]).all() and (np.diff(v) > 0).all())


def _days_of(t):
    """Days since 1970-01-01 (float64, NaN for NaT) of a datetime64 array in any unit:
    datetime64[ns] (1677..2262) as ns / NS_PER_DAY, as the ONNX graph divides its int64
    input; other units (pandas 3 reads text as datetime64[us]: years 1..9999) from their own
    ticks, never through a silently wrapping cast to ns."""
    t = np.asarray(t)
    nat = np.isnat(t)
    unit, count = np.datetime_data(t.dtype)
    ticks = t.view(np.int64)
    per_day = {"ns": NS_PER_DAY, "us": NS_PER_DAY // 1000, "ms": NS_PER_DAY // 10**6,
               "s": 86_400, "m": 1440, "h": 24, "D": 1}.get(unit)
    if per_day is None:
        ticks, per_day = t.astype("datetime64[s]").view(np.int64), 86_400
    else:
        per_day /= count
    if unit != "ns":
        # in the ns range, as ns (what Table did, and the ONNX graph does, bit for bit)
        lo, hi = np.datetime64("1677-09-22", "D"), np.datetime64("2262-04-10", "D")
        ok = ~nat & (t >= lo) & (t <= hi)
        if ok[~nat].all():
            ticks, per_day = t.astype("datetime64[ns]").view(np.int64), NS_PER_DAY
    days = ticks / per_day
    days[nat] = np.nan
    return days


def state_schema(n_out=None):
    """The nnjit.schema spec of a Table's state() (a model file's "table" field): each
    column's fields, types and bounds; n_out: the input layer's units, which bound its lists
    of categories and words."""
    from .schema import Bool, Int, List, Null, Num, Obj, OneOf, Str
    n = n_out if n_out is not None else MAX_COLUMNS * 1024
    column = {"name": Str(MAX_NAME, min_len=1)}
    spec = OneOf(
        Obj({**column, "kind": Str(choices=("number",)), "fill": Num(-MAX_MAGNITUDE, MAX_MAGNITUDE)}),
        Obj({**column, "kind": Str(choices=("category",)), "missing": Bool(),
             "categories": List(Str(_max_category(), min_len=1), n,
                                what=f"a list of at most {n} category strings")}),
        Obj({**column, "kind": Str(choices=("date",)), "fill": Num(-1e7, 1e7), "season": Bool(),
             "time": Bool(), "format": Null(Str(choices=DATE_FORMATS))}),
        Obj({**column, "kind": Str(choices=("words",)), "why": Str(200),
             "words": List(Str(MAX_WORD, min_len=1), n, what=f"a list of at most {n} words")}),
        Obj({**column, "kind": Str(choices=("drop",)), "why": Str(200)}),
        what="a number, category, date, words or drop column entry (nnjit.preprocessing.Table)")
    return Obj({"columns": List(spec, MAX_COLUMNS, min_len=1), "max_categories": Int(1, 10**6)},
               optional=("max_categories",))



def _max_category():
    from . import config
    return int(config.MODEL_FILE_MAX_LABEL)
