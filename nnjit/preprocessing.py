"""Feature and target scaling that travels with a model.

A :class:`Scaler` is an affine map x -> (x - offset_) / scale_ per column, fitted on training
data only. ``MLP.x_scaler`` (applied to every X before the input layer) and ``MLP.y_scaler``
(regression targets: fitted on y, inverted on predictions) hold one each; both are saved in the
model file, so ``nnjit predict`` and ``MLP.load(...).predict`` see raw data as the training
data was given. Not a general preprocessing library: for pipelines use scikit-learn's.
"""
import numpy as np

KINDS = ("standard", "minmax")


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
        if self.kind == "standard":
            offset, scale = X.mean(axis=0), X.std(axis=0)
        else:
            offset = X.min(axis=0)
            scale = X.max(axis=0) - offset
        # a constant column (or one varying at rounding level) carries no information
        scale[scale <= 1e-12 * np.maximum(1.0, np.abs(offset))] = 1.0
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
