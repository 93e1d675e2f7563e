"""The MLP wrapper: validates input, owns the epoch loop (stopping, history, progress) and
hands every batch of an epoch to a backend's compiled or vectorised ``train_epoch``."""
import math
import numbers
import warnings

import numpy as np

from . import activations as A
from . import data as _data
from . import rules as R
from ._numba_setup import EpochThreads as _EpochThreads
from .engine import CPUEngine, make_shape

BACKENDS = ("loops", "vectorised", "cuda")
INITS = ("normal", "xavier", "he")


class DivergenceError(FloatingPointError):
    """Training produced a NaN/inf loss or weight; the model keeps its last finite weights."""


class DataConversionWarning(UserWarning):
    """Input was converted to what it must mean (e.g. an (n, 1) label column ravelled to 1-D),
    as scikit-learn's warning of the same name says."""


def _as_array(X, name):
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
    raise TypeError(f"{name} must be an array-like of numbers, got {type(X).__name__}")


def _check_real(a, name):
    """Refuse complex and non-numeric arrays: casting them to float would drop parts silently."""
    if a.dtype.kind == "c":
        raise TypeError(f"{name} is complex (dtype {a.dtype}); nnjit trains on real numbers only "
                        "(pass the real part, or the real and imaginary parts as separate features)")
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")


def _unique_labels(y):
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


def _engine(backend, shape, n_params, dtype):
    if backend == "loops":
        from . import loops
        return CPUEngine(loops, shape, n_params, dtype)
    if backend == "vectorised":
        from . import vectorised
        return CPUEngine(vectorised, shape, n_params, dtype)
    from .cuda import CUDAEngine        # imports numba.cuda only when asked for
    return CUDAEngine(shape, n_params, dtype)


def _all_finite(X, rows=4096):
    """np.isfinite(X).all() in row chunks, so checking costs O(chunk) memory, not O(X)."""
    return all(np.isfinite(X[s:s + rows]).all() for s in range(0, X.shape[0], rows))


def _check_name(kind, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(map(repr, allowed))}")
    return value


def _check_positive_int(name, v, allow_none=False):
    if v is None and allow_none:
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


class MLP:
    """A multilayer perceptron trained by the lecture's backpropagation.

    Parameters
    ----------
    layers : sequence of int
        Units per layer, input first: [N^(0)=D, hidden sizes..., N^(L)=K].
    activation : str or list of str
        Hidden-layer f: "sigmoid", "tanh", "relu", "gelu", "identity"; a list gives one per
        hidden layer.
    output : str
        Output f: "softmax", "sigmoid", "identity", or any hidden name.
    loss : {"squared_error", "cross_entropy"} or None
        None picks cross_entropy for softmax/sigmoid outputs, else squared_error.
    init : {"normal", "xavier", "he"}
        "normal": w, b ~ N(0, init_scale) with init_scale the *variance* (the lecture's
        epsilon); "xavier": Glorot normal, std sqrt(2/(fan_in+fan_out)), b = 0; "he":
        std sqrt(2/fan_in), b = 0.
    backend : {"loops", "vectorised", "cuda"}
    dtype : {"float32", "float64"}
    seed : int or None
        Seeds initial weights and shuffling; the same seed gives the same initial weights on
        every backend.
    """

    def __init__(self, layers, activation="sigmoid", output="softmax", loss=None,
                 init="xavier", init_scale=0.01, backend="loops", dtype="float32", seed=None):
        layers = list(layers) if not isinstance(layers, (str, bytes)) else None
        if not layers or len(layers) < 2:
            raise ValueError("layers must list at least an input and an output size, e.g. [64, 10]")
        self.layers = [_check_positive_int(f"layers[{i}]", n) for i, n in enumerate(layers)]
        L = len(self.layers) - 1
        hidden = [activation] * (L - 1) if isinstance(activation, str) else list(activation)
        if len(hidden) != L - 1:
            raise ValueError(f"activation lists {len(hidden)} names for {L - 1} hidden layers")
        for h in hidden:
            _check_name("activation", h, A.HIDDEN)
        self.activation = activation if isinstance(activation, str) else list(hidden)
        self.output = _check_name("output activation", output, A.OUTPUT)
        if loss is None:
            loss = "cross_entropy" if output in ("softmax", "sigmoid") else "squared_error"
        self.loss = _check_name("loss", loss, tuple(A.LOSSES))
        if self.loss == "cross_entropy" and output not in ("softmax", "sigmoid"):
            raise ValueError("loss='cross_entropy' needs output='softmax' or 'sigmoid' "
                             f"(its outputs must be probabilities), got output={output!r}")
        if output == "softmax" and self.layers[-1] < 2:
            raise ValueError("output='softmax' needs at least 2 output units")
        self.init = _check_name("init", init, INITS)
        if not (isinstance(init_scale, numbers.Real) and init_scale > 0 and math.isfinite(init_scale)):
            raise ValueError(f"init_scale must be a positive finite variance, got {init_scale!r}")
        self.init_scale = float(init_scale)
        if backend == "vectorized":
            backend = "vectorised"
        self.backend = _check_name("backend", backend, BACKENDS)
        if dtype in (np.float32, np.float64):
            dtype = np.dtype(dtype).name
        self.dtype = _check_name("dtype", dtype, ("float32", "float64"))
        self.seed = seed
        self._acts = [A.CODES[h] for h in hidden] + [A.CODES[output]]
        self._loss = A.LOSSES[self.loss]
        self._shape, self._n_params = make_shape(self.layers, self._acts)
        self._engine = _engine(self.backend, self._shape, self._n_params, self.dtype)
        self._rng = np.random.default_rng(seed)
        self._engine.set_params(self._initial_params())
        self.classes_ = None
        self.x_scaler = None    # nnjit.preprocessing.Scaler for X, or None (saved with the model)
        self.y_scaler = None    # the same for regression targets: fitted on y, inverted by predict
        # val_epoch: the epoch (0-based, as n_epochs_ counts) of each val_loss/val_score entry,
        # since a fit without validation_data adds epochs with none
        self.history_ = {"loss": [], "val_loss": [], "val_score": [], "val_epoch": []}
        self.n_epochs_ = 0
        self.t_ = 0             # training samples seen (scikit-learn's t_), drives "invscaling"
        self.lr_ = None         # the lr of the last epoch trained
        self.best_epoch_ = self.best_loss_ = self.best_score_ = None

    # ------------------------------------------------------------------ parameters
    def _initial_params(self):
        theta = np.zeros(self._n_params)
        sizes, w_off, b_off = self._shape[:3]
        for l in range(1, len(sizes)):
            n_out, n_in = int(sizes[l]), int(sizes[l - 1])
            std = {"normal": math.sqrt(self.init_scale),
                   "xavier": math.sqrt(2.0 / (n_in + n_out)),
                   "he": math.sqrt(2.0 / n_in)}[self.init]
            theta[w_off[l - 1]:w_off[l - 1] + n_out * n_in] = self._rng.normal(0.0, std, n_out * n_in)
            if self.init == "normal":
                theta[b_off[l - 1]:b_off[l - 1] + n_out] = self._rng.normal(0.0, std, n_out)
        return theta.astype(self.dtype)

    def _split(self, flat):
        sizes, w_off, b_off = self._shape[:3]
        Ws, bs = [], []
        for l in range(1, len(sizes)):
            n_out, n_in = int(sizes[l]), int(sizes[l - 1])
            Ws.append(flat[w_off[l - 1]:w_off[l - 1] + n_out * n_in].reshape(n_out, n_in).copy())
            bs.append(flat[b_off[l - 1]:b_off[l - 1] + n_out].copy())
        return Ws, bs

    def _join(self, Ws, bs):
        return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in zip(Ws, bs)])

    def _check_params(self, arrays, kind):
        L = len(self.layers) - 1
        arrays = list(arrays)
        if len(arrays) != L:
            raise ValueError(f"expected {L} {kind} arrays, one per layer, got {len(arrays)}")
        out = []
        for l, x in enumerate(arrays, start=1):
            x = np.asarray(x)
            want = (self.layers[l], self.layers[l - 1]) if kind == "weight" else (self.layers[l],)
            if x.shape != want:
                raise ValueError(f"{kind} array {l} has shape {x.shape}; layer {l} needs {want}")
            _check_real(x, f"{kind} array {l}")
            if not np.isfinite(x).all():
                raise ValueError(f"{kind} array {l} contains NaN or inf")
            out.append(x.astype(self.dtype))
        return out

    @property
    def weights(self):
        """W^(l) for l = 1..L, each (N_l, N_{l-1}): rows j, columns i (copies)."""
        return self._split(self._engine.get_params())[0]

    @weights.setter
    def weights(self, Ws):
        Ws = self._check_params(Ws, "weight")
        self._engine.set_params(self._join(Ws, self.biases))

    @property
    def biases(self):
        """b^(l) for l = 1..L, each (N_l,) (copies)."""
        return self._split(self._engine.get_params())[1]

    @biases.setter
    def biases(self, bs):
        bs = self._check_params(bs, "bias")
        self._engine.set_params(self._join(self.weights, bs))

    @property
    def n_params(self):
        return self._n_params

    # ------------------------------------------------------------------ data checks
    def _check_X(self, X, name="X"):
        X = _as_array(X, name)
        _check_real(X, name)
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D (samples, features), got {X.ndim}-D shape {X.shape}")
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty: it has 0 samples")
        if X.shape[1] != self.layers[0]:
            raise ValueError(f"{name} has {X.shape[1]} features but the network's input layer "
                             f"has N^(0) = {self.layers[0]} units")
        X = np.ascontiguousarray(X, dtype=self.dtype)
        if not _all_finite(X):
            raise ValueError(f"{name} contains NaN or inf")
        return X

    @property
    def _is_classifier(self):
        return self.output in ("softmax", "sigmoid")

    def _is_label_column(self, y):
        """Whether a (n, 1) y is a column of class labels (to ravel) rather than a one-unit
        target matrix: always for softmax and for a model fitted on labels; for one sigmoid
        unit of an unfitted model only if y is not numbers in [0, 1] (0/1 or probability
        targets, the lecture's y, stay targets; labels such as {0, 2} or strings are labels)."""
        if not self._is_classifier or y.ndim != 2 or y.shape[1] != 1:
            return False
        if self.output == "softmax" or self.classes_ is not None:
            return True
        if self.layers[-1] != 1:
            return False
        if y.dtype.kind not in "biuf":
            return True
        finite = y[np.isfinite(y)] if y.dtype.kind == "f" else y
        return not ((finite >= 0) & (finite <= 1)).all()

    def _ravel_label_column(self, y):
        warnings.warn("a column-vector y of shape (n_samples, 1) was passed where 1-D class labels "
                      "are expected; it is used as y.ravel() (pass a 1-D array to silence this)",
                      DataConversionWarning, stacklevel=4)
        return y[:, 0]

    def _check_y(self, y, n, fit=False, infer=False):
        """Targets as the (M, K) matrix the output layer is compared with.

        fit: the first fit sets classes_ from y's labels. infer: an unfitted model encodes
        labels with y's own classes for this call only (gradients, loss_value), leaving
        classes_ unset, so a later fit still chooses its own."""
        y = _as_array(y, "y")
        K = self.layers[-1]
        if y.ndim == 0 or y.ndim > 2:
            raise ValueError(f"y must be 1-D labels or a 2-D (samples, {K}) target matrix, got shape {y.shape}")
        if y.shape[0] != n:
            raise ValueError(f"X has {n} samples but y has {y.shape[0]}")
        if self._is_label_column(y):
            y = self._ravel_label_column(y)
        elif y.ndim == 2 and y.shape[1] == 1 and K == 1 and not self._is_classifier:
            y = y[:, 0]                     # a regression target column: the same as 1-D
        if y.ndim == 2:
            if y.shape[1] != K:
                raise ValueError(f"y has {y.shape[1]} columns but the output layer has K = {K} units")
            return self._finite_targets(y)
        if self._is_classifier:
            labels = _unique_labels(y)
            classes = self.classes_
            if classes is None and (fit or infer):
                limit = K if self.output == "softmax" else 2
                if len(labels) > limit:
                    raise ValueError(f"y has {len(labels)} classes but the output layer can "
                                     f"represent {limit} ({self.output} with {K} units)")
                if self.output == "sigmoid" and K != 1:
                    raise ValueError("1-D labels with a sigmoid output need 1 output unit; for "
                                     f"{K} sigmoid outputs pass a 2-D (samples, {K}) 0/1 matrix")
                classes = labels
                if fit:
                    self.classes_ = labels
            if classes is None:
                raise ValueError("1-D labels given but the model was not fitted on labels")
            unseen = np.setdiff1d(labels, classes)
            if unseen.size:
                raise ValueError(f"y has labels not seen in fit: {unseen[:5].tolist()}")
            idx = np.searchsorted(classes, y)
            Y = np.zeros((n, K), self.dtype)
            if self.output == "softmax":
                Y[np.arange(n), idx] = 1
            else:
                Y[:, 0] = idx
            return Y
        if K != 1:
            raise ValueError(f"1-D y given but the output layer has {K} units; pass a 2-D (samples, {K}) matrix")
        return self._finite_targets(y[:, None])

    def _finite_targets(self, Y):
        """A target matrix, refused where the loss cannot mean it: cross-entropy compares
        probabilities, so its targets lie in [0, 1], and with softmax each row sums to 1 (else
        delta^L = a - y is not the gradient of the cost and training drifts to a negative loss)."""
        if Y.dtype.kind == "c":
            _check_real(Y, "y")
        if Y.dtype == object or not (np.issubdtype(Y.dtype, np.number) or Y.dtype == bool):
            raise TypeError(f"y must hold numbers as a target matrix, got dtype {Y.dtype}")
        Y = np.ascontiguousarray(Y, dtype=self.dtype)
        if not _all_finite(Y):
            raise ValueError("y contains NaN or inf")
        if self.loss == "cross_entropy":
            lo, hi = float(Y.min()), float(Y.max())
            if lo < 0 or hi > 1:
                raise ValueError(f"cross-entropy targets must be probabilities in [0, 1], but y "
                                 f"holds values from {lo:g} to {hi:g}; pass class labels, a one-hot "
                                 "matrix, or use loss='squared_error' for other targets")
            if self.output == "softmax":
                dev = np.abs(Y.sum(axis=1, dtype=np.float64) - 1.0)
                tol = 1e-3 if self.dtype == "float32" else 1e-6
                if dev.max() > tol:
                    m = int(dev.argmax())
                    raise ValueError(f"softmax + cross-entropy targets must be probability rows that "
                                     f"sum to 1 (one-hot or soft labels); row {m} of y sums to "
                                     f"{float(Y[m].sum(dtype=np.float64)):g}")
        return Y

    # ------------------------------------------------------------------ scaling (nnjit.preprocessing)
    def _scale_X(self, X, fit=False):
        """Raw X through x_scaler (fitted on this X first when fit=True and it is not fitted
        yet), in float64 *before* _check_X casts to the model's dtype: a float32 cast first
        would round away a feature like 1000.0008 +- 0.0004. Input that _check_X refuses
        passes through unchanged, so that _check_X says what is wrong with it."""
        if self.x_scaler is None or not (hasattr(X, "__array__") or isinstance(X, (list, tuple))):
            return X
        A = np.asarray(X)
        if A.dtype.kind not in "biuf" or A.ndim != 2 or 0 in A.shape or A.shape[1] != self.layers[0]:
            return X
        A = A.astype(np.float64, copy=False)
        if fit and self.x_scaler.offset_ is None:
            if not _all_finite(A):
                return X
            self.x_scaler.fit(A)
        return self.x_scaler.transform(A)

    def _scale_Y(self, Y, fit=False):
        if self.y_scaler is None or self._is_classifier:
            return Y
        if fit and self.y_scaler.offset_ is None:
            self.y_scaler.fit(Y)
        return np.ascontiguousarray(self.y_scaler.transform(Y), dtype=self.dtype)

    def _unscale_Y(self, A):
        if self.y_scaler is None or self._is_classifier:
            return A
        return self.y_scaler.inverse_transform(A).astype(A.dtype, copy=False)

    def _no_stream_scaling(self, X):
        if _data.is_out_of_core(X) and (self.x_scaler is not None or self.y_scaler is not None):
            raise ValueError("x_scaler/y_scaler are not applied to out-of-core data; scale the "
                             "data beforehand or load it into memory")

    def _check_weights(self, sample_weight, n):
        """sample_weight as a float64 (n,) array: 1-D, length n, finite, >= 0, not all zero."""
        if sample_weight is None:
            return None
        if _data.is_out_of_core(sample_weight):
            sample_weight = _data.read(sample_weight, 0, sample_weight.shape[0])
        try:
            s = np.asarray(sample_weight)
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

    # ------------------------------------------------------------------ forward, gradients
    def forward(self, X):
        """Output activations a^(L), shape (M, K), of X after x_scaler if one is set (in the
        y_scaler's scaled units for a model that has one: predict undoes it)."""
        self._no_stream_scaling(X)
        if _data.is_out_of_core(X):         # memmap, zarr, Dask: chunk by chunk (nnjit.data)
            return _data.forward(self, X)
        return self._engine.forward(self._check_X(self._scale_X(X)))

    def gradients(self, X, Y, sample_weight=None, alpha=0.0):
        """(dW list, db list): the gradient of the mean loss over the M samples, i.e. the
        lecture's batch average of Delta w_ij,m and Delta b_j,m; with ``sample_weight`` the
        weighted mean sum_m s_m Delta w_m / sum_m s_m; ``alpha`` adds the L2 term alpha W /
        sum_m s_m (scikit-learn's penalty; biases not penalised). Does not change the weights."""
        X = self._check_X(self._scale_X(X))
        Y = self._scale_Y(self._check_y(Y, X.shape[0], infer=True))
        S = self._check_weights(sample_weight, X.shape[0])
        alpha = R._real("alpha", alpha, 0)
        return self._split(self._engine.gradients(X, Y, self._loss,
                                                  None if S is None else S.astype(self.dtype), alpha))

    def loss_value(self, X, y, sample_weight=None, alpha=0.0):
        """Mean cost over the samples (squared error 1/2 sum_k (a_k - y_k)^2 or cross-entropy),
        weighted by ``sample_weight``, plus alpha/(2 sum_m s_m) sum_l ||W^(l)||^2."""
        X = self._check_X(self._scale_X(X))
        S = self._check_weights(sample_weight, X.shape[0])
        alpha = R._real("alpha", alpha, 0)
        Y = self._scale_Y(self._check_y(y, X.shape[0], infer=True))
        return self._engine.loss(X, Y, self._loss,
                                 None if S is None else S.astype(self.dtype), alpha)[0]

    # ------------------------------------------------------------------ optimizer state
    def reset_optimizer(self):
        """Zero all optimizer state (velocities, Adam's moments, the step count) and the
        sample counter t_ (scikit-learn re-creates its optimizer on every non-incremental
        fit; nnjit's fit continues from the current state unless this is called)."""
        P = self._n_params
        self._engine.set_state({"vel": np.zeros(P, self.dtype), "sq": np.zeros(P, self.dtype),
                                "step": 0})
        self.t_ = 0
        self.lr_ = None

    def optimizer_state(self):
        """{"velocity": (P,) momentum velocity or Adam's first moment m, "square": (P,) Adam's
        second moment v, "step": updates made so far (Adam's t)}, flat in theta's layout
        (W^(1), b^(1), W^(2), ...); copies."""
        st = self._engine.get_state()
        return {"velocity": st["vel"], "square": st["sq"], "step": st["step"]}

    # ------------------------------------------------------------------ training
    def fit(self, X, y, epochs=10, lr=0.1, momentum=0.0, batch_size=32, shuffle=True, tol=None,
            n_iter_no_change=10, error_threshold=None, validation_data=None, progress=False,
            callbacks=None, checkpoint=None, checkpoint_every=1, resume=False, *,
            optimizer="sgd", nesterov=False, betas=(0.9, 0.999), eps=1e-8, adam_eps="pytorch",
            alpha=0.0, weight_decay=0.0, schedule="constant", schedule_params=None,
            sample_weight=None, restore_best=False):
        """Train by backpropagation; continues from the current weights and optimizer state.

        batch_size=1 is the lecture's online learning, None full batch mode, otherwise
        mini-batches (the last averaged over its own size). lr is a float or lr(epoch).

        Update rule (README "Update rules"): ``optimizer`` "sgd" (the lecture's heavy-ball
        momentum v <- mu v - eta dw ; w <- w + v), "nesterov" (or sgd with nesterov=True),
        "adam", "adamw" (``betas``, ``eps``; ``adam_eps`` "pytorch" divides by
        sqrt(v_hat) + eps, "sklearn" by sqrt(v) + eps with a bias-corrected lr;
        ``weight_decay`` is AdamW's decoupled decay). ``alpha`` adds scikit-learn's L2
        penalty alpha/(2 n_batch) sum ||W||^2 to each batch's cost (and to the reported loss).
        ``schedule``: "constant", "invscaling" (lr / (t_ + 1)^power_t), "adaptive" (divide lr
        by ``factor`` after n_iter_no_change epochs without a ``tol`` improvement, stop once
        lr <= min_lr), "step" (lr gamma^(e // step_size)) or "cosine" (PyTorch's
        CosineAnnealingLR over t_max epochs), with ``schedule_params``; e counts this call's
        epochs. ``sample_weight`` (n,) makes every mean a weighted mean.

        Stops after ``epochs``, or when every output error |a - y| of an epoch is below
        ``error_threshold`` (the lecture's criterion), or when the loss (validation loss if
        ``validation_data`` is given) has not improved by ``tol`` for ``n_iter_no_change``
        epochs. ``callbacks`` are called as cb(net, epoch, history) after each epoch; one
        that returns True stops training. ``restore_best=True`` puts back the weights of the
        epoch with the lowest (validation) loss when training ends; ``best_epoch_``,
        ``best_loss_`` and ``best_score_`` record it. Returns self.

        ``checkpoint="path"`` saves the whole training state (nnjit.io format) every
        ``checkpoint_every`` epochs of this call, at its end and on Ctrl-C. ``resume=True``
        first loads that checkpoint (if the file exists; else trains from the start) and trains
        until the interrupted call has done ``epochs`` epochs in all: rerunning the same call
        with resume=True continues it exactly, bit for bit. Ctrl-C (KeyboardInterrupt), a
        divergence or a bad chunk of streamed data during an epoch restores the weights,
        optimizer state, shuffling state and history of the epoch's start before raising,
        so the model is left at its last completed epoch.

        X (and y) may be out of core, a numpy.memmap, zarr or Dask array: it is then read
        chunk by chunk, in memory bounded by nnjit.config.STREAM_CHUNK_BYTES (nnjit.data).
        """
        self._no_stream_scaling(X)
        stream = _data.Stream(self, X, y) if _data.is_out_of_core(X) else None   # nnjit.data
        X = X if stream else self._check_X(self._scale_X(X, fit=True))        # x_scaler, y_scaler:
        Y = None if stream else self._scale_Y(self._check_y(y, X.shape[0], fit=True), fit=True)
        epochs = _check_positive_int("epochs", epochs)
        M = X.shape[0]
        batch_size = M if batch_size is None else min(_check_positive_int("batch_size", batch_size), M)
        if not callable(lr) and not (isinstance(lr, numbers.Real) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive number or a callable lr(epoch), got {lr!r}")
        if not (isinstance(momentum, numbers.Real) and 0 <= momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if tol is not None and not (isinstance(tol, numbers.Real) and tol >= 0):
            raise ValueError(f"tol must be a non-negative number or None, got {tol!r}")
        n_iter_no_change = _check_positive_int("n_iter_no_change", n_iter_no_change)
        if error_threshold is not None and not (isinstance(error_threshold, numbers.Real) and error_threshold > 0):
            raise ValueError(f"error_threshold must be a positive number or None, got {error_threshold!r}")
        rule, betas, eps, alpha, weight_decay = R.check(optimizer, nesterov, momentum, betas, eps,
                                                        adam_eps, alpha, weight_decay)
        schedule, sched = R.check_schedule(schedule, schedule_params)
        if callable(lr) and schedule != "constant":
            raise ValueError(f"lr is a callable schedule already; it cannot be combined with schedule={schedule!r}")
        S = self._check_weights(sample_weight, M)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            Xv = self._check_X(self._scale_X(validation_data[0]), "X_val")
            val = (Xv, self._scale_Y(self._check_y(validation_data[1], Xv.shape[0])),
                   validation_data[1], validation_data[0])
        callbacks = list(callbacks or [])
        sched_epochs = epochs
        stopper = _Stopper(tol, n_iter_no_change, error_threshold, callbacks, schedule, sched,
                           None if callable(lr) else float(lr))
        best = _Best(self, restore_best)
        ckpt = None
        if checkpoint is not None or resume:            # nnjit.io: checkpoints and resume
            from .io import Checkpoint
            ckpt = Checkpoint(self, checkpoint, checkpoint_every, X, stream.y if stream else Y,
                              epochs, lr, momentum=momentum,
                              batch_size=batch_size, shuffle=shuffle, tol=tol,
                              n_iter_no_change=n_iter_no_change, error_threshold=error_threshold,
                              optimizer=optimizer, nesterov=bool(nesterov), betas=list(betas),
                              eps=eps, adam_eps=adam_eps, alpha=alpha, weight_decay=weight_decay,
                              schedule=schedule, schedule_params=sched,
                              sample_weight_crc32=_data_crc(S), restore_best=bool(restore_best))
            epochs, state = ckpt.start(resume)      # epochs left; may load the checkpoint
            if state is not None:
                stopper.set_state(state.get("stopper", {}))
                best.set_state(state.get("best", {}), ckpt.best_theta)
        fit_start = ckpt.start_epoch if ckpt is not None else self.n_epochs_
        w_total = float(M) if S is None else float(S.sum())
        S_fit = None if S is None else S.astype(self.dtype)
        bar = _Progress(epochs) if progress else None

        def state():
            return {"stopper": stopper.get_state(), "best": best.get_state()}

        if stream is None:
            self._engine.begin_fit(X, Y, batch_size, S_fit)
        saved = None
        threads = _EpochThreads() if self.backend == "loops" else None    # other processes
        try:
            for _ in range(epochs):
                if threads is not None:
                    threads.adjust()
                epoch = self.n_epochs_
                if callable(lr):
                    eta = lr(epoch)
                    if not (isinstance(eta, numbers.Real) and eta > 0 and math.isfinite(eta)):
                        raise ValueError(f"lr({epoch}) returned {eta!r}; it must be a positive number")
                else:
                    eta = stopper.lr(epoch - fit_start, self.t_, sched_epochs)
                self.lr_ = float(eta)
                hyper = R.hyper(eta, momentum, betas, eps, alpha, weight_decay, adam_eps)
                saved = _Saved(self)       # restored on divergence, bad data or Ctrl-C
                try:
                    if stream is not None:
                        total, emax = stream.train_epoch(self._engine, batch_size, rule, hyper,
                                                         self._loss, shuffle, self._rng, S_fit)
                    else:
                        order = (self._rng.permutation(M) if shuffle else np.arange(M)).astype(np.int64)
                        total, emax = self._engine.train_epoch(order, batch_size, rule, hyper, self._loss)
                    loss = total / w_total
                    if not math.isfinite(loss) or not np.isfinite(self._engine.get_params()).all():
                        raise DivergenceError(
                            f"training diverged in epoch {epoch} (loss {loss}); the weights and "
                            "optimizer state were restored to the last finite values; try a "
                            "smaller lr or momentum")
                except Exception:       # divergence, a bad streamed chunk, an I/O error
                    saved.restore()
                    raise
                self.t_ += M
                self.history_["loss"].append(loss)
                metric, vscore = loss, None
                if val is not None:
                    vloss = self._engine.loss(val[0], val[1], self._loss)[0]
                    vscore = self.score(val[3], val[2])     # raw X_val: score scales it
                    self.history_["val_loss"].append(vloss)
                    self.history_["val_score"].append(vscore)
                    self.history_.setdefault("val_epoch", []).append(epoch)
                    metric = vloss
                self.n_epochs_ += 1     # the commit point: from here on the epoch is complete
                best.after_epoch(epoch, metric, vscore)
                if bar is not None:
                    bar.update(loss, None if val is None else metric, vscore)
                stop = stopper.after_epoch(self, epoch, metric, emax)
                if ckpt is not None:
                    ckpt.after_epoch(state(), stop, best.theta)
                if stop:
                    break
            best.restore()
        except KeyboardInterrupt:
            if saved is not None and self.n_epochs_ == saved.n_epochs:    # interrupted mid-epoch
                saved.restore()
                if ckpt is not None:
                    ckpt.save(state(), best_theta=best.theta)
            raise
        finally:
            if threads is not None:
                threads.restore()
            self._engine.end_fit()
            if bar is not None:
                bar.close()
        return self

    # ------------------------------------------------------------------ prediction
    def predict_proba(self, X):
        """Class probabilities: softmax outputs, or [1 - a, a] for one sigmoid output."""
        if not self._is_classifier:
            raise ValueError(f"predict_proba needs a softmax or sigmoid output, not {self.output!r}")
        a = self.forward(X)
        if self.output == "sigmoid" and a.shape[1] == 1:
            return np.hstack([1 - a, a])
        return a

    def predict(self, X):
        """Class labels for classifiers (argmax, or a > 0.5 for sigmoid), else a^(L)."""
        return self._predict_from(self.forward(X))

    def _predict_from(self, a):
        if self.output == "softmax":
            if self.classes_ is None:
                return a.argmax(axis=1)
            # units beyond the classes seen in fit were never a target: never predict them
            return self.classes_[a[:, :len(self.classes_)].argmax(axis=1)]
        if self.output == "sigmoid":
            hit = (a > 0.5).astype(np.int64)
            if a.shape[1] == 1:
                return self.classes_[hit[:, 0]] if self.classes_ is not None else hit[:, 0]
            return hit
        a = self._unscale_Y(a)
        return a[:, 0] if a.shape[1] == 1 else a

    def score(self, X, y):
        """Accuracy for classifiers; R^2 (averaged over outputs) for other outputs."""
        self._no_stream_scaling(X)
        if _data.is_out_of_core(X):         # memmap, zarr, Dask: chunk by chunk (nnjit.data)
            return _data.score(self, X, y)
        X = self._check_X(self._scale_X(X))
        y = _as_array(y, "y")
        if y.shape[:1] != (X.shape[0],):
            raise ValueError(f"X has {X.shape[0]} samples but y has shape {y.shape}")
        if self._is_label_column(y):        # labels as a column: compare labels, not units
            y = self._ravel_label_column(y)
        a = self._engine.forward(X)
        if self._is_classifier and y.ndim == 2:     # a target matrix: compare unit by unit
            if y.shape[1] != a.shape[1]:
                raise ValueError(f"y has {y.shape[1]} columns but the output layer has {a.shape[1]} units")
            if self.output == "softmax":
                return float((a.argmax(axis=1) == y.argmax(axis=1)).mean())
            return float(((a > 0.5) == (y > 0.5)).all(axis=1).mean())
        if self._is_classifier:
            pred = self._predict_from(a)
            return float((pred == y.reshape(pred.shape)).mean())
        Y = self._check_y(y, X.shape[0]).astype(np.float64)
        P = self._unscale_Y(a.astype(np.float64))
        ss_res = ((Y - P) ** 2).sum(axis=0)
        ss_tot = ((Y - Y.mean(axis=0)) ** 2).sum(axis=0)
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), 0.0)
        return float(r2.mean())

    def __repr__(self):
        return (f"MLP({self.layers}, activation={self.activation!r}, output={self.output!r}, "
                f"loss={self.loss!r}, backend={self.backend!r}, dtype={self.dtype!r})")

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Write the model (architecture, weights, biases, velocities, classes_, history_,
        n_epochs_ and the shuffling state) to path atomically; format in :mod:`nnjit.io`."""
        from . import io
        io.save(self, path)

    @classmethod
    def load(cls, path, backend=None):
        """The model saved at path (never executes code from the file); ``backend``
        overrides the stored backend. Raises nnjit.io.ModelFileError for a bad file."""
        from . import io
        return io.load(path, backend=backend)

    def __getstate__(self):
        # pickle/deepcopy (joblib, sklearn's clone of fitted nets): the engine holds kernel
        # modules or device arrays, so it travels as its parameter and optimizer-state vectors
        state = self.__dict__.copy()
        engine = state.pop("_engine")
        state["_theta"], state["_opt"] = engine.get_params(), engine.get_state()
        return state

    def __setstate__(self, state):
        state = dict(state)
        theta = state.pop("_theta")
        opt = state.pop("_opt", None)
        if opt is None:                 # a pickle from before optimizer state was kept
            vel = state.pop("_vel")
            opt = {"vel": vel, "sq": np.zeros_like(vel), "step": 0}
        state.setdefault("t_", 0)
        state.setdefault("lr_", None)
        for k in ("best_epoch_", "best_loss_", "best_score_"):
            state.setdefault(k, None)
        self.__dict__.update(state)
        self._engine = _engine(self.backend, self._shape, self._n_params, self.dtype)
        self._engine.set_params(theta)
        self._engine.set_state(opt)


def _data_crc(S):
    import zlib
    return None if S is None else zlib.crc32(np.ascontiguousarray(S).view(np.uint8).reshape(-1))


class _Saved:
    """The model's state at an epoch's start: weights, optimizer state, shuffling generator,
    sample counter and history lengths; restore() puts it all back (after a divergence, a
    bad chunk of streamed data or Ctrl-C mid-epoch), so the next epoch is the one a model
    that never failed would run."""

    def __init__(self, net):
        self.net = net
        self.theta = net._engine.get_params()
        self.opt = net._engine.get_state()
        self.rng = net._rng.bit_generator.state
        self.n_epochs = net.n_epochs_
        self.t = net.t_
        self.hist = {k: len(v) for k, v in net.history_.items()}

    def restore(self):
        net = self.net
        net._engine.set_params(self.theta)
        net._engine.set_state(self.opt)
        net._rng.bit_generator.state = self.rng
        net.n_epochs_, net.t_ = self.n_epochs, self.t
        for k, n in self.hist.items():
            del net.history_[k][n:]


class _Stopper:
    """When to stop, and the scheduled lr: callbacks, the lecture's error threshold, the
    tol/n_iter_no_change criterion, and the schedules (the "adaptive" one replaces the
    tol stop by scikit-learn's divide-lr-then-stop rule)."""

    def __init__(self, tol, n_iter_no_change, error_threshold, callbacks, schedule, params, lr0):
        self.tol, self.patience, self.threshold = tol, n_iter_no_change, error_threshold
        self.callbacks, self.schedule, self.params, self.lr0 = callbacks, schedule, params, lr0
        if schedule == "adaptive" and tol is None:
            self.tol = 1e-4                 # scikit-learn's default tol
        self.best, self.stall, self.adaptive_lr = math.inf, 0, lr0

    def get_state(self):
        return {"best": None if not math.isfinite(self.best) else float(self.best),
                "stall": int(self.stall), "adaptive_lr": self.adaptive_lr}

    def set_state(self, st):
        self.best = math.inf if st.get("best") is None else float(st["best"])
        self.stall = int(st.get("stall", 0))
        self.adaptive_lr = st.get("adaptive_lr", self.lr0)

    def lr(self, e, t, epochs):
        if self.schedule == "adaptive":
            return self.adaptive_lr
        return R.scheduled_lr(self.schedule, self.params, self.lr0, e, t, epochs)

    def after_epoch(self, net, epoch, metric, emax):
        stop = any([bool(cb(net, epoch, net.history_)) for cb in self.callbacks])
        if self.threshold is not None and emax < self.threshold:
            stop = True
        if self.tol is not None:
            self.stall = self.stall + 1 if metric > self.best - self.tol else 0
            self.best = min(self.best, metric)
            if self.schedule == "adaptive":     # scikit-learn: count > n_iter_no_change
                if self.stall > self.patience:
                    if self.adaptive_lr <= self.params["min_lr"]:
                        stop = True
                    else:
                        self.adaptive_lr /= self.params["factor"]
                        self.stall = 0
            elif self.stall >= self.patience:
                stop = True
        return stop


class _Best:
    """restore_best: the weights of the epoch with the lowest monitored loss (validation loss
    if given, else training loss), put back when training ends."""

    def __init__(self, net, keep):
        self.net, self.keep = net, keep
        self.loss, self.theta = math.inf, None

    def get_state(self):
        n = self.net
        return {"loss": None if not math.isfinite(self.loss) else self.loss,
                "epoch": n.best_epoch_, "best_loss": n.best_loss_, "score": n.best_score_}

    def set_state(self, st, theta):
        self.loss = math.inf if st.get("loss") is None else float(st["loss"])
        self.theta = theta if self.keep else None

    def after_epoch(self, epoch, metric, score):
        if metric < self.loss:
            self.loss = metric
            n = self.net
            n.best_epoch_, n.best_loss_, n.best_score_ = epoch, float(metric), score
            if self.keep:
                self.theta = n._engine.get_params()

    def restore(self):
        if self.keep and self.theta is not None:
            self.net._engine.set_params(self.theta)


class _Progress:
    """The tqdm bar of progress=True."""

    def __init__(self, epochs):
        try:
            from tqdm.auto import tqdm
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("progress=True needs tqdm: pip install 'nnjit[progress]'") from e
        self.bar = tqdm(total=epochs, desc="fit", unit="epoch", leave=False)

    def update(self, loss, vloss, vscore):
        post = {"loss": f"{loss:.4g}"}
        if vloss is not None:
            post.update(val_loss=f"{vloss:.4g}", val_score=f"{vscore:.4g}")
        self.bar.set_postfix(post)
        self.bar.update(1)

    def close(self):
        self.bar.close()
