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
