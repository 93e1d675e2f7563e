"""The MLP wrapper: validates input, owns the epoch loop (stopping, history, progress) and
hands every batch of an epoch to a backend's compiled or vectorised ``train_epoch``."""
import math
import numbers
import warnings

import numpy as np

from . import activations as A
from . import data as _data
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
        # val_epoch: the epoch (0-based, as n_epochs_ counts) of each val_loss/val_score entry,
        # since a fit without validation_data adds epochs with none
        self.history_ = {"loss": [], "val_loss": [], "val_score": [], "val_epoch": []}
        self.n_epochs_ = 0

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

    # ------------------------------------------------------------------ forward, gradients
    def forward(self, X):
        """Output activations a^(L), shape (M, K)."""
        if _data.is_out_of_core(X):         # memmap, zarr, Dask: chunk by chunk (nnjit.data)
            return _data.forward(self, X)
        return self._engine.forward(self._check_X(X))

    def gradients(self, X, Y):
        """(dW list, db list): the gradient of the mean loss over the M samples, i.e. the
        lecture's batch average of Delta w_ij,m and Delta b_j,m. Does not change the weights."""
        X = self._check_X(X)
        Y = self._check_y(Y, X.shape[0], infer=True)
        return self._split(self._engine.gradients(X, Y, self._loss))

    def loss_value(self, X, y):
        """Mean cost over the samples: squared error 1/2 sum_k (a_k - y_k)^2 or cross-entropy."""
        X = self._check_X(X)
        return self._engine.loss(X, self._check_y(y, X.shape[0], infer=True), self._loss)[0]

    # ------------------------------------------------------------------ training
    def fit(self, X, y, epochs=10, lr=0.1, momentum=0.0, batch_size=32, shuffle=True, tol=None,
            n_iter_no_change=10, error_threshold=None, validation_data=None, progress=False,
            callbacks=None, checkpoint=None, checkpoint_every=1, resume=False):
        """Train by backpropagation; continues from the current weights and velocities.

        batch_size=1 is the lecture's online learning, None full batch mode, otherwise
        mini-batches (the last averaged over its own size). lr is a float or lr(epoch).
        Momentum is classical heavy-ball: v <- mu v - eta dw ; w <- w + v.
        Stops after ``epochs``, or when every output error |a - y| of an epoch is below
        ``error_threshold`` (the lecture's criterion), or when the loss (validation loss if
        ``validation_data`` is given) has not improved by ``tol`` for ``n_iter_no_change``
        epochs. ``callbacks`` are called as cb(net, epoch, history) after each epoch; one
        that returns True stops training. Returns self.

        ``checkpoint="path"`` saves the whole training state (nnjit.io format) every
        ``checkpoint_every`` epochs of this call, at its end and on Ctrl-C. ``resume=True``
        first loads that checkpoint (if the file exists; else trains from the start) and trains
        until the interrupted call has done ``epochs`` epochs in all: rerunning the same call
        with resume=True continues it exactly, bit for bit. Ctrl-C (KeyboardInterrupt) during an
        epoch restores the weights, velocities, shuffling state and history of the epoch's start
        before re-raising, so the model is left at its last completed epoch.

        X (and y) may be out of core, a numpy.memmap, zarr or Dask array: it is then read
        chunk by chunk, in memory bounded by nnjit.config.STREAM_CHUNK_BYTES (nnjit.data).
        """
        stream = _data.Stream(self, X, y) if _data.is_out_of_core(X) else None   # nnjit.data
        X = X if stream else self._check_X(X)
        Y = None if stream else self._check_y(y, X.shape[0], fit=True)
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
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            Xv = self._check_X(validation_data[0], "X_val")
            val = (Xv, self._check_y(validation_data[1], Xv.shape[0]), validation_data[1])
        callbacks = list(callbacks or [])
        best, stall, ckpt, saved = math.inf, 0, None, None
        if checkpoint is not None or resume:            # nnjit.io: checkpoints and resume
            from .io import Checkpoint
            ckpt = Checkpoint(self, checkpoint, checkpoint_every, X, stream.y if stream else Y,
                              epochs, lr, momentum=momentum, batch_size=batch_size, shuffle=shuffle, tol=tol,
                              n_iter_no_change=n_iter_no_change, error_threshold=error_threshold)
            epochs, best, stall = ckpt.start(resume)     # epochs left; may load the checkpoint

        bar = None
        if progress:
            try:
                from tqdm.auto import tqdm
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError("progress=True needs tqdm: pip install 'nnjit[progress]'") from e
            bar = tqdm(total=epochs, desc="fit", unit="epoch", leave=False)

        if stream is None:
            self._engine.begin_fit(X, Y, batch_size)
        threads = _EpochThreads() if self.backend == "loops" else None    # other processes
        try:
            for _ in range(epochs):
                if threads is not None:
                    threads.adjust()
                epoch = self.n_epochs_
                eta = lr(epoch) if callable(lr) else lr
                if not (isinstance(eta, numbers.Real) and eta > 0 and math.isfinite(eta)):
                    raise ValueError(f"lr({epoch}) returned {eta!r}; it must be a positive number")
                # the state at the epoch's start, restored on divergence or on Ctrl-C mid-epoch
                saved = (self._engine.get_params(), self._engine.get_velocity(),
                         self._rng.bit_generator.state, self.n_epochs_,
                         {k: len(v) for k, v in self.history_.items()})
                order = None if stream else (self._rng.permutation(M) if shuffle else np.arange(M)).astype(np.int64)
                total, emax = (stream.train_epoch(self._engine, batch_size, eta, momentum, self._loss,
                                                  shuffle, self._rng) if stream else
                               self._engine.train_epoch(order, batch_size, eta, momentum, self._loss))
                loss = total / M
                if not math.isfinite(loss) or not np.isfinite(self._engine.get_params()).all():
                    self._engine.set_params(saved[0])
                    self._engine.set_velocity(saved[1])
                    raise DivergenceError(
                        f"training diverged in epoch {epoch} (loss {loss}); the weights were "
                        "restored to the last finite values; try a smaller lr or momentum")
                self.history_["loss"].append(loss)
                metric = loss
                if val is not None:
                    vloss = self._engine.loss(val[0], val[1], self._loss)[0]
                    self.history_["val_loss"].append(vloss)
                    self.history_["val_score"].append(self.score(val[0], val[2]))
                    self.history_.setdefault("val_epoch", []).append(epoch)
                    metric = vloss
                self.n_epochs_ += 1     # the commit point: from here on the epoch is complete
                if bar is not None:
                    post = {"loss": f"{loss:.4g}"}
                    if val is not None:
                        post.update(val_loss=f"{metric:.4g}", val_score=f"{self.history_['val_score'][-1]:.4g}")
                    bar.set_postfix(post)
                    bar.update(1)
                stop = any([bool(cb(self, epoch, self.history_)) for cb in callbacks])
                if error_threshold is not None and emax < error_threshold:
                    stop = True
                if tol is not None:
                    stall = stall + 1 if metric > best - tol else 0
                    best = min(best, metric)
                    if stall >= n_iter_no_change:
                        stop = True
                if ckpt is not None:
                    ckpt.after_epoch(best, stall, stop)
                if stop:
                    break
        except KeyboardInterrupt:
            if saved is not None and self.n_epochs_ == saved[3]:    # interrupted mid-epoch
                self._engine.set_params(saved[0])
                self._engine.set_velocity(saved[1])
                self._rng.bit_generator.state = saved[2]
                for k, n in saved[4].items():
                    del self.history_[k][n:]
                if ckpt is not None:
                    ckpt.save(best, stall)
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
        a = self.forward(X)
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
        return a[:, 0] if a.shape[1] == 1 else a

    def score(self, X, y):
        """Accuracy for classifiers; R^2 (averaged over outputs) for other outputs."""
        if _data.is_out_of_core(X):         # memmap, zarr, Dask: chunk by chunk (nnjit.data)
            return _data.score(self, X, y)
        X = self._check_X(X)
        y = _as_array(y, "y")
        if y.shape[:1] != (X.shape[0],):
            raise ValueError(f"X has {X.shape[0]} samples but y has shape {y.shape}")
        if self._is_label_column(y):        # labels as a column: compare labels, not units
            y = self._ravel_label_column(y)
        if self._is_classifier and y.ndim == 2:     # a target matrix: compare unit by unit
            a = self.forward(X)
            if y.shape[1] != a.shape[1]:
                raise ValueError(f"y has {y.shape[1]} columns but the output layer has {a.shape[1]} units")
            if self.output == "softmax":
                return float((a.argmax(axis=1) == y.argmax(axis=1)).mean())
            return float(((a > 0.5) == (y > 0.5)).all(axis=1).mean())
        if self._is_classifier:
            pred = self.predict(X)
            return float((pred == y.reshape(pred.shape)).mean())
        Y = self._check_y(y, X.shape[0]).astype(np.float64)
        P = self.forward(X).astype(np.float64)
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
        # modules or device arrays, so it travels as its parameter and velocity vectors
        state = self.__dict__.copy()
        engine = state.pop("_engine")
        state["_theta"], state["_vel"] = engine.get_params(), engine.get_velocity()
        return state

    def __setstate__(self, state):
        state = dict(state)
        theta, vel = state.pop("_theta"), state.pop("_vel")
        self.__dict__.update(state)
        self._engine = _engine(self.backend, self._shape, self._n_params, self.dtype)
        self._engine.set_params(theta)
        self._engine.set_velocity(vel)
