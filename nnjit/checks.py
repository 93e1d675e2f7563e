"""Input checks: every way a user's data or argument can be wrong, named in one ValueError or
TypeError before anything is computed. Package-public functions, used by the model, the
estimators' extras, streamed data, Dask and the CLI alike.

What it is not for: model files (nnjit.schema checks those).
"""
import math
import numbers
import warnings

import numpy as np


#: the model's backends and initialisations (MLP's arguments; a model file may name no other)
BACKENDS = ("loops", "vectorised", "cuda")
INITS = ("normal", "xavier", "he")


class DataConversionWarning(UserWarning):
    """Input was converted to what it must mean (e.g. an (n, 1) label column ravelled to 1-D),
    as scikit-learn's warning of the same name says."""


def positive_int(name, v, allow_none=False):
    """v as an int if it is a positive integer (or None where allowed)."""
    if v is None and allow_none:
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def name(kind, value, allowed):
    """value if it is one of the allowed names."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(map(repr, allowed))}")
    return value


def positive_lr(lr):
    """A positive finite lr or a callable lr(epoch)."""
    if not callable(lr) and not (isinstance(lr, numbers.Real) and not isinstance(lr, bool)
                                 and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number or a callable lr(epoch), got {lr!r}")
    return lr


def as_array(X, what):
    """X as a NumPy array. pandas DataFrames/Series whose columns are all numeric or bool,
    nullable ones (Int64, Float64, boolean) included, become float64 with missing values as
    NaN (refused later, naming X), as scikit-learn converts them; plain numpy columns of one
    dtype keep it."""
    if hasattr(X, "to_numpy") and (hasattr(X, "dtypes") or hasattr(X, "dtype")):
        dtypes = X.dtypes if hasattr(X, "dtypes") else X.dtype
        dtypes = [dtypes] if hasattr(dtypes, "kind") else list(dtypes)   # a Series: one dtype
        if dtypes and all(getattr(d, "kind", "O") in "biuf" for d in dtypes):
            if len(set(dtypes)) == 1 and isinstance(dtypes[0], np.dtype):
                return X.to_numpy()
            return X.to_numpy(dtype=np.float64, na_value=np.nan)
        return np.asarray(X)
    if hasattr(X, "__array__") or isinstance(X, (list, tuple)):
        return np.asarray(X)
    raise TypeError(f"{what} must be an array-like of numbers, got {type(X).__name__}")


def real_array(a, what):
    """Refuse complex and non-numeric arrays: casting them to float would drop parts silently."""
    if a.dtype.kind == "c":
        raise TypeError(f"{what} is complex (dtype {a.dtype}); nnjit trains on real numbers only "
                        "(pass the real part, or the real and imaginary parts as separate features)")
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise TypeError(f"{what} must hold numbers, got dtype {a.dtype}")


def all_finite(X, rows=4096):
    """np.isfinite(X).all() in row chunks, so checking costs O(chunk) memory, not O(X)."""
    return all(np.isfinite(X[s:s + rows]).all() for s in range(0, X.shape[0], rows))


def features(X, n_features, dtype, what="X"):
    """X as a C-contiguous (M, n_features) array of dtype: 2-D, not empty, real and finite."""
    X = as_array(X, what)
    real_array(X, what)
    if X.ndim != 2:
        raise ValueError(f"{what} must be 2-D (samples, features), got {X.ndim}-D shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{what} is empty: it has 0 samples")
    if X.shape[1] != n_features:
        raise ValueError(f"{what} has {X.shape[1]} features but the network's input layer "
                         f"has N^(0) = {n_features} units")
    with np.errstate(over="ignore"):
        Xd = np.ascontiguousarray(X, dtype=dtype)
    if not all_finite(Xd):
        if X.dtype.kind == "f" and X.dtype.itemsize > Xd.dtype.itemsize and all_finite(X):
            raise ValueError(f"{what} holds values beyond {np.dtype(dtype).name}'s range "
                             f"(±{np.finfo(dtype).max:.3g}); scale it (e.g. "
                             "net.x_scaler = nnjit.preprocessing.Scaler()) or use "
                             "dtype='float64'")
        raise ValueError(f"{what} contains NaN or inf")
    return Xd


def unique_labels(y):
    """np.unique(y) for labels, with our own message where NumPy's sort fails (None, mixed
    int/str) or a label is missing (NaN, None)."""
    if y.dtype.kind == "c":
        raise TypeError(f"y is complex (dtype {y.dtype}); class labels must be numbers or strings")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError("y contains NaN or inf")
    if y.dtype == object:
        vals = y.tolist()
        if any(v is None or (isinstance(v, float) and math.isnan(v)) or type(v).__name__ == "NAType"
               for v in vals):
            raise ValueError("y contains missing labels (None, NaN or pd.NA)")
        kinds = {"str" if isinstance(v, (str, np.str_)) else
                 "bytes" if isinstance(v, bytes) else
                 "number" if isinstance(v, (numbers.Number, np.bool_)) else type(v).__name__
                 for v in vals}
        if len(kinds) > 1:
            raise TypeError(f"y mixes label types {sorted(kinds)}; labels must be all numbers or "
                            "all strings (convert them, e.g. y.astype(str))")
        if any(isinstance(v, complex) for v in vals):
            raise TypeError("y holds complex labels; class labels must be real numbers or strings")
    try:
        return np.unique(y)
    except TypeError as e:
        raise TypeError(f"y's labels cannot be ordered ({e}); labels must be all numbers or all "
                        "strings") from e


def ravel_label_column(y):
    """An (n, 1) label column as 1-D labels, with scikit-learn's warning."""
    warnings.warn("a column-vector y of shape (n_samples, 1) was passed where 1-D class labels "
                  "are expected; it is used as y.ravel() (pass a 1-D array to silence this)",
                  DataConversionWarning, stacklevel=4)
    return y[:, 0]


def target_matrix(Y, dtype, loss, output):
    """A target matrix, refused where the loss cannot mean it: cross-entropy compares
    probabilities, so its targets lie in [0, 1], and with softmax each row sums to 1 (else
    delta^L = a - y is not the gradient of the cost and training drifts to a negative loss);
    Poisson counts are >= 0."""
    if Y.dtype.kind == "c":
        real_array(Y, "y")
    if Y.dtype == object or not (np.issubdtype(Y.dtype, np.number) or Y.dtype == bool):
        raise TypeError(f"y must hold numbers as a target matrix, got dtype {Y.dtype}")
    Y = np.ascontiguousarray(Y, dtype=dtype)
    if not all_finite(Y):
        raise ValueError("y contains NaN or inf")
    if loss == "cross_entropy":
        lo, hi = float(Y.min()), float(Y.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"cross-entropy targets must be probabilities in [0, 1], but y "
                             f"holds values from {lo:g} to {hi:g}; pass class labels, a one-hot "
                             "matrix, or use loss='squared_error' for other targets")
        if output == "softmax":
            dev = np.abs(Y.sum(axis=1, dtype=np.float64) - 1.0)
            tol = 1e-3 if np.dtype(dtype) == np.float32 else 1e-6
            if dev.max() > tol:
                m = int(dev.argmax())
                raise ValueError(f"softmax + cross-entropy targets must be probability rows that "
                                 f"sum to 1 (one-hot or soft labels); row {m} of y sums to "
                                 f"{float(Y[m].sum(dtype=np.float64)):g}")
    if loss == "poisson" and float(Y.min()) < 0:
        raise ValueError("loss='poisson' needs non-negative targets y (counts or rates)")
    return Y


def sample_weight(s, n, read=None):
    """sample_weight as a float64 (n,) array: 1-D, length n, finite, >= 0, not all zero.
    read(s): an out-of-core array read into memory (nnjit.data)."""
    if s is None:
        return None
    if read is not None:
        s = read(s)
    try:
        s = np.asarray(s)
    except (TypeError, ValueError) as e:
        raise TypeError(f"sample_weight must be an array of numbers ({e})") from e
    if s.dtype == object or not (np.issubdtype(s.dtype, np.number) or s.dtype == bool):
        raise TypeError(f"sample_weight must hold numbers, got dtype {s.dtype}")
    if s.ndim != 1:
        raise ValueError(f"sample_weight must be 1-D, got shape {s.shape}")
    if s.shape[0] != n:
        raise ValueError(f"sample_weight has {s.shape[0]} entries but X has {n} samples")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise ValueError("sample_weight contains NaN or inf")
    if (s < 0).any():
        raise ValueError("sample_weight must be >= 0; it has negative entries")
    if not (s > 0).any():
        raise ValueError("sample_weight is all zero: no sample would count")
    return s


def tolerance(tol):
    if tol is not None and not (isinstance(tol, numbers.Real) and tol >= 0):
        raise ValueError(f"tol must be a non-negative number or None, got {tol!r}")
    return tol


def threshold(error_threshold):
    if error_threshold is not None and not (isinstance(error_threshold, numbers.Real)
                                            and error_threshold > 0):
        raise ValueError(f"error_threshold must be a positive number or None, got {error_threshold!r}")
    return error_threshold
