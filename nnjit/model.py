"""The MLP wrapper: the network's architecture and state, its input checks, and ``fit``, which
runs the one training loop (nnjit.training) over a backend's engine.

Public state: ``state_dict()`` / ``from_state()`` give and take everything that defines a
model (architecture, parameters, optimizer state, classes, scalers, history, counters, the
shuffling generator), as plain values and arrays: nnjit.io writes and reads files through
them and nothing else.
"""
import math

import numpy as np

from . import activations as A
from . import checks
from . import data as _data
from . import rules as R
from .threads import EpochThreads
from .checks import DataConversionWarning  # noqa: F401  (nnjit.model.DataConversionWarning)
from .engine import CPUEngine
from .layout import join, make_shape, split
from .training import (Best, DivergenceError, Progress, Schedule, Snapshot, Stopper, Trainer,
                       nnjit_loss)

BACKENDS, INITS = checks.BACKENDS, checks.INITS
__all__ = ["MLP", "DivergenceError", "DataConversionWarning", "BACKENDS", "INITS", "make_engine"]


def make_engine(backend, shape, n_params, dtype):
    """The engine of a backend for a network of this layout."""
    if backend == "loops":
        from . import loops
        return CPUEngine(loops, shape, n_params, dtype)
    if backend == "vectorised":
        from . import vectorised
        return CPUEngine(vectorised, shape, n_params, dtype)
    from .cuda import CUDAEngine        # imports numba.cuda only when asked for
    return CUDAEngine(shape, n_params, dtype)


def _column_names(X):
    """The column names of a table whose columns are all named by strings (scikit-learn's
    rule for feature_names_in_), else None."""
    cols = getattr(X, "columns", None)
    if cols is None or not hasattr(X, "iloc"):
        return None
    cols = list(cols)
    return cols if cols and all(isinstance(c, str) for c in cols) else None


class MLP:
    """A multilayer perceptron trained by the lecture's backpropagation.

    Parameters
    ----------
    layers : sequence of int
        Units per layer, input first: [N^(0)=D, hidden sizes..., N^(L)=K].
    activation : str or list of str
        Hidden-layer f: any hidden name of nnjit.activations (sigmoid, tanh, relu, gelu,
        leaky_relu, identity); a list gives one per hidden layer.
    output : str
        Output f: "softmax", "sigmoid", "identity", "exp", or any hidden name.
    loss : {"squared_error", "cross_entropy", "poisson"} or None
        None picks cross_entropy for softmax/sigmoid outputs, poisson for exp, else
        squared_error.
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
        self.layers = [checks.positive_int(f"layers[{i}]", n) for i, n in enumerate(layers)]
        L = len(self.layers) - 1
        hidden = [activation] * (L - 1) if isinstance(activation, str) else list(activation)
        if len(hidden) != L - 1:
            raise ValueError(f"activation lists {len(hidden)} names for {L - 1} hidden layers")
        for h in hidden:
            checks.name("activation", h, A.HIDDEN)
        self.activation = activation if isinstance(activation, str) else list(hidden)
        self.output = checks.name("output activation", output, A.OUTPUT)
        if loss is None:
            loss = A.default_loss(output)
        self.loss = checks.name("loss", loss, tuple(A.LOSSES))
        allowed = A.LOSS_BY_CODE[A.LOSSES[self.loss]].outputs
        if output not in allowed:
            raise ValueError(f"loss={self.loss!r} needs output in {allowed} (its outputs must be "
                             f"{'probabilities' if self.loss == 'cross_entropy' else 'positive'}), "
                             f"got output={output!r}")
        if output == "softmax" and self.layers[-1] < 2:
            raise ValueError("output='softmax' needs at least 2 output units")
        self.init = checks.name("init", init, INITS)
        self.init_scale = R.real("init_scale", init_scale, 0, lo_open=True)
        if backend == "vectorized":
            backend = "vectorised"
        self.backend = checks.name("backend", backend, BACKENDS)
        if dtype in (np.float32, np.float64):
            dtype = np.dtype(dtype).name
        self.dtype = checks.name("dtype", dtype, ("float32", "float64"))
        self.seed = seed
        self.acts = [A.CODES[h] for h in hidden] + [A.CODES[output]]
        self.loss_code = A.LOSSES[self.loss]
        self.shape, self._n_params = make_shape(self.layers, self.acts)
        #: the backend's engine: parameters, optimizer state and buffers on its device
        self.engine = make_engine(self.backend, self.shape, self._n_params, self.dtype)
        #: the generator of the initial weights and of every epoch's shuffle
        self.rng = np.random.default_rng(seed)
        self.engine.set_params(self._initial_params())
        self.classes_ = None
        #: nnjit.preprocessing.Table: a DataFrame's columns to numbers (one-hot, imputation,
        #: dates) before x_scaler; fitted by the first fit if not yet; saved with the model
        self.table = None
        self.x_scaler = None    # nnjit.preprocessing.Scaler for X, or None (saved with the model)
        self.y_scaler = None    # the same for regression targets: fitted on y, inverted by predict
        #: the training columns' names (a DataFrame's, or a CSV header's through the CLI), or
        #: None; saved with the model, and X given by name is matched to them (columns_of)
        self.feature_names_in_ = None
        #: the target column's name where the training table had one (the CLI's header)
        self.target_name_ = None
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
        for l in range(1, len(self.layers)):
            n_out, n_in = self.layers[l], self.layers[l - 1]
            std = {"normal": math.sqrt(self.init_scale),
                   "xavier": math.sqrt(2.0 / (n_in + n_out)),
                   "he": math.sqrt(2.0 / n_in)}[self.init]
            w, b = int(self.shape.w_off[l - 1]), int(self.shape.b_off[l - 1])
            theta[w:w + n_out * n_in] = self.rng.normal(0.0, std, n_out * n_in)
            if self.init == "normal":
                theta[b:b + n_out] = self.rng.normal(0.0, std, n_out)
        return theta.astype(self.dtype)

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
            checks.real_array(x, f"{kind} array {l}")
            if not np.isfinite(x).all():
                raise ValueError(f"{kind} array {l} contains NaN or inf")
            out.append(x.astype(self.dtype))
        return out

    @property
    def weights(self):
        """W^(l) for l = 1..L, each (N_l, N_{l-1}): rows j, columns i (copies)."""
        return split(self.engine.get_params(), self.shape)[0]

    @weights.setter
    def weights(self, Ws):
        Ws = self._check_params(Ws, "weight")
        self.engine.set_params(join(Ws, self.biases))

    @property
    def biases(self):
        """b^(l) for l = 1..L, each (N_l,) (copies)."""
        return split(self.engine.get_params(), self.shape)[1]

    @biases.setter
    def biases(self, bs):
        bs = self._check_params(bs, "bias")
        self.engine.set_params(join(self.weights, bs))

    @property
    def n_params(self):
        return self._n_params

    # ------------------------------------------------------------------ state (nnjit.io)
    def architecture(self):
        """The constructor's arguments (seed as a plain int or None)."""
        seed = self.seed if isinstance(self.seed, (int, np.integer)) and not isinstance(self.seed, bool) else None
        return {"layers": list(self.layers), "activation": self.activation, "output": self.output,
                "loss": self.loss, "init": self.init, "init_scale": self.init_scale,
                "backend": self.backend, "dtype": self.dtype,
                "seed": None if seed is None else int(seed)}

    def state_dict(self):
        """Everything that defines this model and where its training stands, as plain values
        and NumPy arrays: "architecture" (the constructor's arguments), "params",
        "velocity", "square" ((weights, biases) lists of the parameters and the optimizer
        state), "step" (updates made), "classes", "x_scaler", "y_scaler" (Scalers or
        None), "table" (a Table or None), "feature_names" (list of str or None), "target_name", "history", "n_epochs", "t", "lr", "best" ((epoch, loss, score)), "rng" (the
        shuffling generator's bit_generator.state)."""
        opt = self.engine.get_state()
        return {"architecture": self.architecture(),
                "params": split(self.engine.get_params(), self.shape),
                "velocity": split(opt["vel"], self.shape), "square": split(opt["sq"], self.shape),
                "step": int(opt["step"]), "classes": self.classes_,
                "x_scaler": self.x_scaler, "y_scaler": self.y_scaler, "table": self.table,
                "feature_names": (None if self.feature_names_in_ is None
                                  else list(self.feature_names_in_)),
                "target_name": self.target_name_,
                "history": {k: list(v) for k, v in self.history_.items()},
                "n_epochs": int(self.n_epochs_), "t": int(self.t_),
                "lr": None if self.lr_ is None else float(self.lr_),
                "best": (self.best_epoch_, self.best_loss_, self.best_score_),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, st, rng=None):
        """Set every piece of state from a state_dict() of the same architecture; ``rng``:
        the generator to use (nnjit.io builds it from an allow-list of bit generators)."""
        self.engine.set_params(join(*st["params"]))
        self.engine.set_state({"vel": join(*st["velocity"]), "sq": join(*st["square"]),
                               "step": int(st["step"])})
        self.classes_ = st["classes"]
        self.x_scaler, self.y_scaler = st["x_scaler"], st["y_scaler"]
        self.table = st.get("table")
        self.feature_names_in_ = st.get("feature_names")
        self.target_name_ = st.get("target_name")
        self.history_ = {k: list(v) for k, v in st["history"].items()}
        for k in ("loss", "val_loss", "val_score"):
            self.history_.setdefault(k, [])
        if "val_epoch" not in self.history_:     # files from before val_epoch: the latest epochs
            n = len(self.history_["val_loss"])
            self.history_["val_epoch"] = list(range(st["n_epochs"] - n, st["n_epochs"]))
        self.n_epochs_, self.t_, self.lr_ = int(st["n_epochs"]), int(st["t"]), st["lr"]
        self.best_epoch_, self.best_loss_, self.best_score_ = st["best"]
        if rng is not None:
            self.rng = rng
        return self

    @classmethod
    def from_state(cls, st, backend=None, rng=None):
        """The model of a state_dict(); ``backend`` overrides the stored one."""
        arch = dict(st["architecture"])
        if backend is not None:
            arch["backend"] = backend
        return cls(**arch).load_state_dict(st, rng)

    # ------------------------------------------------------------------ data checks
    def check_X(self, X, name="X"):
        """X as the input layer takes it (nnjit.checks.features)."""
        return checks.features(X, self.layers[0], self.dtype, name)

    @property
    def is_classifier(self):
        return self.output in A.PROBABILITY_OUTPUTS

    def _is_label_column(self, y):
        """Whether a (n, 1) y is a column of class labels (to ravel) rather than a one-unit
        target matrix: always for softmax and for a model fitted on labels; for one sigmoid
        unit of an unfitted model only if y is not numbers in [0, 1] (0/1 or probability
        targets, the lecture's y, stay targets; labels such as {0, 2} or strings are labels)."""
        if not self.is_classifier or y.ndim != 2 or y.shape[1] != 1:
            return False
        if self.output == "softmax" or self.classes_ is not None:
            return True
        if self.layers[-1] != 1:
            return False
        if y.dtype.kind not in "biuf":
            return True
        finite = y[np.isfinite(y)] if y.dtype.kind == "f" else y
        return not ((finite >= 0) & (finite <= 1)).all()

    def check_y(self, y, n, fit=False, infer=False):
        """Targets as the (M, K) matrix the output layer is compared with.

        fit: the first fit sets classes_ from y's labels. infer: an unfitted model encodes
        labels with y's own classes for this call only (gradients, loss_value), leaving
        classes_ unset, so a later fit still chooses its own."""
        y = checks.as_array(y, "y")
        K = self.layers[-1]
        if y.ndim == 0 or y.ndim > 2:
            raise ValueError(f"y must be 1-D labels or a 2-D (samples, {K}) target matrix, got shape {y.shape}")
        if y.shape[0] != n:
            raise ValueError(f"X has {n} samples but y has {y.shape[0]}")
        if self._is_label_column(y):
            y = checks.ravel_label_column(y)
        elif y.ndim == 2 and y.shape[1] == 1 and K == 1 and not self.is_classifier:
            y = y[:, 0]                     # a regression target column: the same as 1-D
        if y.ndim == 2:
            if y.shape[1] != K:
                raise ValueError(f"y has {y.shape[1]} columns but the output layer has K = {K} units")
            return checks.target_matrix(y, self.dtype, self.loss, self.output)
        if self.is_classifier:
            return self._encode_labels(y, n, fit, infer)
        if K != 1:
            raise ValueError(f"1-D y given but the output layer has {K} units; pass a 2-D (samples, {K}) matrix")
        return checks.target_matrix(y[:, None], self.dtype, self.loss, self.output)

    def _encode_labels(self, y, n, fit, infer):
        K = self.layers[-1]
        labels = checks.unique_labels(y)
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

    def check_weights(self, sample_weight, n):
        """sample_weight as a float64 (n,) array (nnjit.checks.sample_weight)."""
        read = (lambda s: _data.read(s, 0, s.shape[0])) if _data.is_out_of_core(sample_weight) else None
        return checks.sample_weight(sample_weight, n, read)

    # ------------------------------------------------------------------ scaling (nnjit.preprocessing)
    def scale_X(self, X, fit=False):
        """Raw X through table and x_scaler (each fitted on this X first when fit=True and
        it is not fitted yet), in float64 *before* check_X casts to the model's dtype: a
        float32 cast first would round away a feature like 1000.0008 +- 0.0004. Input that
        check_X refuses passes through unchanged, so that check_X says what is wrong with it."""
        X = self.columns_of(X, fit)
        if self.table is not None:
            X = self._encode_table(X, fit)
        if self.x_scaler is None or not (hasattr(X, "__array__") or isinstance(X, (list, tuple))):
            return X
        A_ = np.asarray(X)
        if A_.dtype.kind not in "biuf" or A_.ndim != 2 or 0 in A_.shape or A_.shape[1] != self.layers[0]:
            return X
        A_ = A_.astype(np.float64, copy=False)
        if fit and self.x_scaler.offset_ is None:
            if not checks.all_finite(A_):
                return X
            self.x_scaler.fit(A_)
            if self.table is not None:      # one-hot columns stay 0/1, as scikit-learn's
                keep = self.table.onehot_mask_      # ColumnTransformer leaves them
                self.x_scaler.offset_[keep], self.x_scaler.scale_[keep] = 0.0, 1.0
        return self.x_scaler.transform(A_)

    def _encode_table(self, X, fit):
        """X (a DataFrame, or rows by position) through self.table, fitted first if asked."""
        if fit and self.table.columns_ is None:
            self.table.fit(X)
        A_ = self.table.transform(X)
        if A_.shape[1] != self.layers[0]:
            raise ValueError(f"the table turns X into {A_.shape[1]} columns but the input layer "
                             f"has {self.layers[0]} units: build the MLP with layers[0] = "
                             "table.n_features_out_ (fit the Table on the training table first)")
        return A_

    def columns_of(self, X, fit=False):
        """X's columns in the training order. A table with named columns (a pandas
        DataFrame) is matched by name to feature_names_in_ (reordered; a missing or
        unexpected column is a ValueError naming it); fit=True records its names instead.
        Arrays have no names: their column count is checked by check_X."""
        names = _column_names(X)
        if fit:
            self.feature_names_in_ = names
            return X
        if names is None or self.feature_names_in_ is None:
            return X
        want = list(self.feature_names_in_)
        if names == want:
            return X
        missing = [c for c in want if c not in names]
        extra = [c for c in names if c not in want]
        if missing or extra or len(set(names)) != len(names):
            raise ValueError("X's columns do not match the training columns: "
                             + "; ".join(f"{what} {', '.join(map(repr, cols[:5]))}"
                                         + (f" and {len(cols) - 5} more" if len(cols) > 5 else "")
                                         for what, cols in (("missing", missing),
                                                            ("unexpected", extra)) if cols)
                             + ("" if missing or extra else "; repeated column names"))
        return X[want]

    def _scale_Y(self, Y, fit=False):
        if self.y_scaler is None or self.is_classifier:
            return Y
        if fit and self.y_scaler.offset_ is None:
            self.y_scaler.fit(Y)
        return np.ascontiguousarray(self.y_scaler.transform(Y), dtype=self.dtype)

    def _unscale_Y(self, A_):
        if self.y_scaler is None or self.is_classifier:
            return A_
        return self.y_scaler.inverse_transform(A_).astype(A_.dtype, copy=False)

    def _no_stream_scaling(self, X):
        if _data.is_out_of_core(X) and (self.x_scaler is not None or self.y_scaler is not None
                                        or self.table is not None):
            raise ValueError("table/x_scaler/y_scaler are not applied to out-of-core data; scale the "
                             "data beforehand or load it into memory")

    # ------------------------------------------------------------------ forward, gradients
    def forward(self, X):
        """Output activations a^(L), shape (M, K), of X after x_scaler if one is set (in the
        y_scaler's scaled units for a model that has one: predict undoes it)."""
        self._no_stream_scaling(X)
        if _data.is_out_of_core(X):         # memmap, zarr, Dask: chunk by chunk (nnjit.data)
            return _data.forward(self, X)
        return self.engine.forward(self.check_X(self.scale_X(X)))

    def gradients(self, X, Y, sample_weight=None, alpha=0.0):
        """(dW list, db list): the gradient of the mean loss over the M samples, i.e. the
        lecture's batch average of Delta w_ij,m and Delta b_j,m; with ``sample_weight`` the
        weighted mean sum_m s_m Delta w_m / sum_m s_m; ``alpha`` adds the L2 term alpha W /
        sum_m s_m (scikit-learn's penalty; biases not penalised). Does not change the weights."""
        X = self.check_X(self.scale_X(X))
        Y = self._scale_Y(self.check_y(Y, X.shape[0], infer=True))
        S = self.check_weights(sample_weight, X.shape[0])
        alpha = R.real("alpha", alpha, 0)
        return split(self.engine.gradients(X, Y, self.loss_code,
                                           None if S is None else S.astype(self.dtype), alpha),
                     self.shape)

    def loss_value(self, X, y, sample_weight=None, alpha=0.0):
        """Mean cost over the samples (nnjit.activations' costs), weighted by
        ``sample_weight``, plus alpha/(2 sum_m s_m) sum_l ||W^(l)||^2."""
        X = self.check_X(self.scale_X(X))
        S = self.check_weights(sample_weight, X.shape[0])
        alpha = R.real("alpha", alpha, 0)
        Y = self._scale_Y(self.check_y(y, X.shape[0], infer=True))
        return self.engine.loss(X, Y, self.loss_code,
                                None if S is None else S.astype(self.dtype), alpha)[0]

    # ------------------------------------------------------------------ optimizer state
    def reset_optimizer(self):
        """Zero all optimizer state (velocities, Adam's moments, the step count) and the
        sample counter t_ (scikit-learn re-creates its optimizer on every non-incremental
        fit; nnjit's fit continues from the current state unless this is called)."""
        P = self._n_params
        self.engine.set_state({"vel": np.zeros(P, self.dtype), "sq": np.zeros(P, self.dtype),
                               "step": 0})
        self.t_ = 0
        self.lr_ = None

    def optimizer_state(self):
        """{"velocity": (P,) momentum velocity, Adam's first moment m or RMSprop's buffer,
        "square": (P,) the second moment, "step": updates made so far (Adam's t)}, flat in
        theta's layout (W^(1), b^(1), W^(2), ...); copies."""
        st = self.engine.get_state()
        return {"velocity": st["vel"], "square": st["sq"], "step": st["step"]}

    # ------------------------------------------------------------------ training
    def fit(self, X, y, epochs=10, lr=0.1, momentum=0.0, batch_size=32, shuffle=True, tol=None,
            n_iter_no_change=10, error_threshold=None, validation_data=None, progress=False,
            callbacks=None, checkpoint=None, checkpoint_every=1, resume=False, *,
            optimizer="sgd", nesterov=False, betas=(0.9, 0.999), eps=1e-8, adam_eps="pytorch",
            alpha=0.0, weight_decay=0.0, schedule="constant", schedule_params=None,
            sample_weight=None, restore_best=False, **rule_params):
        """Train by backpropagation; continues from the current weights and optimizer state.

        batch_size=1 is the lecture's online learning, None full batch mode, otherwise
        mini-batches (the last averaged over its own size). lr is a float or lr(epoch).

        Update rule (README "Update rules", nnjit.rules.RULES): ``optimizer`` "sgd" (the
        lecture's heavy-ball momentum v <- mu v - eta dw ; w <- w + v), "nesterov" (or sgd with
        nesterov=True), "adam", "adamw", "rmsprop" (``betas``, ``eps``; ``adam_eps``
        "pytorch" divides by sqrt(v_hat) + eps, "sklearn" by sqrt(v) + eps with a
        bias-corrected lr; ``weight_decay`` is AdamW's decoupled decay; RMSprop's smoothing
        ``rho`` and any other rule's hyper-parameter by name, e.g. ``rho=0.9``). ``alpha``
        adds scikit-learn's L2 penalty alpha/(2 n_batch) sum ||W||^2 to each batch's cost
        (and to the reported loss). ``schedule``: "constant", "invscaling" (lr / (t_ +
        1)^power_t), "adaptive" (divide lr by ``factor`` after n_iter_no_change epochs
        without a ``tol`` improvement, stop once lr <= min_lr), "step" (lr gamma^(e //
        step_size)) or "cosine" (PyTorch's CosineAnnealingLR over t_max epochs), with
        ``schedule_params``; e counts this call's epochs. ``sample_weight`` (n,) makes every
        mean a weighted mean.

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
        X = X if stream else self.check_X(self.scale_X(X, fit=True))        # x_scaler, y_scaler:
        Y = None if stream else self._scale_Y(self.check_y(y, X.shape[0], fit=True), fit=True)
        M = X.shape[0]
        batch_size = M if batch_size is None else min(checks.positive_int("batch_size", batch_size), M)
        S = self.check_weights(sample_weight, M)
        S_fit = None if S is None else S.astype(self.dtype)
        engine = self.engine
        if stream is not None:
            def epoch(rule, h, loss):
                return stream.train_epoch(engine, batch_size, rule, h, loss, shuffle, self.rng, S_fit)
        else:
            def epoch(rule, h, loss):
                order = (self.rng.permutation(M) if shuffle else np.arange(M)).astype(np.int64)
                return engine.train_epoch(order, batch_size, rule, h, loss)
        trainer, epochs = self.trainer(
            epoch, M, float(M) if S is None else float(S.sum()), epochs, lr,
            data=(X, stream.y if stream else Y, S), settings=dict(batch_size=batch_size, shuffle=shuffle),
            tol=tol, n_iter_no_change=n_iter_no_change, error_threshold=error_threshold,
            validation_data=validation_data, progress=progress, callbacks=callbacks,
            checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume,
            optimizer=optimizer, nesterov=nesterov, momentum=momentum, betas=betas, eps=eps,
            adam_eps=adam_eps, alpha=alpha, weight_decay=weight_decay, schedule=schedule,
            schedule_params=schedule_params, restore_best=restore_best, **rule_params)
        if stream is None:
            engine.begin_fit(X, Y, batch_size, S_fit)
        try:
            trainer.run(epochs)
        finally:
            engine.end_fit()
        return self

    def trainer(self, epoch, n, w_total, epochs, lr, data, settings, *, tol=None,
                n_iter_no_change=10, error_threshold=None, validation_data=None, progress=False,
                callbacks=None, checkpoint=None, checkpoint_every=1, resume=False,
                optimizer="sgd", nesterov=False, momentum=0.0, betas=(0.9, 0.999), eps=1e-8,
                adam_eps="pytorch", alpha=0.0, weight_decay=0.0, schedule="constant",
                schedule_params=None, restore_best=False, **rule_params):
        """(the training loop of fit's options for this model, epochs to run): every option
        of :meth:`fit` but the data's, checked. ``epoch(rule, h, loss)`` runs one epoch of n
        samples weighing w_total in all; data = (X, Y, S) fingerprinted by a checkpoint,
        ``settings`` its data-side options (batch size, shuffle, ...). Used by fit and by
        nnjit.distributed.fit, so that both train with the same loop."""
        epochs = checks.positive_int("epochs", epochs)
        checks.positive_lr(lr)
        checks.tolerance(tol)
        n_iter_no_change = checks.positive_int("n_iter_no_change", n_iter_no_change)
        checks.threshold(error_threshold)
        rule, params = R.check(optimizer, alpha, nesterov, momentum=momentum, betas=betas,
                               eps=eps, adam_eps=adam_eps, weight_decay=weight_decay,
                               **rule_params)
        schedule, sched = R.check_schedule(schedule, schedule_params)
        if callable(lr) and schedule != "constant":
            raise ValueError(f"lr is a callable schedule already; it cannot be combined with schedule={schedule!r}")
        validate = None if validation_data is None else self._validator(validation_data)
        callbacks = list(callbacks or [])
        sched_obj = Schedule(lr, schedule, sched, epochs)
        stopper = Stopper(1e-4 if (tol is None and schedule == "adaptive") else tol,
                          n_iter_no_change, threshold=error_threshold, schedule=sched_obj)
        engine = self.engine
        trainer = Trainer(
            epoch, engine, self, rule, params, self.loss_code, n,
            lambda st: nnjit_loss(st, w_total, params["alpha"]), sched_obj, stopper,
            validate=validate, best=Best(self, engine, restore_best),
            callbacks=[lambda e, cb=cb: cb(self, e, self.history_) for cb in callbacks],
            progress=Progress(epochs) if progress else None,
            threads=EpochThreads() if self.backend == "loops" else None,
            snapshot=lambda: Snapshot(self, engine, self.rng))
        if checkpoint is not None or resume:            # nnjit.io: checkpoints and resume
            from .io import Checkpoint
            X, Y, S = data
            ckpt = Checkpoint(self, checkpoint, checkpoint_every, X, Y, epochs, lr,
                              **settings, momentum=momentum, tol=tol,
                              n_iter_no_change=n_iter_no_change, error_threshold=error_threshold,
                              optimizer=optimizer, nesterov=bool(nesterov), betas=list(betas),
                              eps=eps, adam_eps=adam_eps, alpha=params["alpha"],
                              weight_decay=weight_decay, schedule=schedule, schedule_params=sched,
                              sample_weight_crc32=_data.crc32(S), restore_best=bool(restore_best),
                              **rule_params)
            epochs, state = ckpt.start(resume)      # epochs left; may load the checkpoint
            if state is not None:
                trainer.set_fit_state(state, ckpt.best_theta)
            trainer.start_epoch = ckpt.start_epoch
            trainer.checkpoint = ckpt
        return trainer, epochs

    def _validator(self, validation_data):
        """validate() for the training loop: (validation loss, score) of the current weights."""
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (X_val, y_val)")
        X_raw, y_raw = validation_data
        Xv = self.check_X(self.scale_X(X_raw), "X_val")
        Yv = self._scale_Y(self.check_y(y_raw, Xv.shape[0]))
        return lambda: (self.engine.loss(Xv, Yv, self.loss_code)[0], self.score(X_raw, y_raw))

    # ------------------------------------------------------------------ prediction
    def predict_proba(self, X):
        """Class probabilities: softmax outputs, or [1 - a, a] for one sigmoid output."""
        if not self.is_classifier:
            raise ValueError(f"predict_proba needs a softmax or sigmoid output, not {self.output!r}")
        a = self.forward(X)
        if self.output == "sigmoid" and a.shape[1] == 1:
            return np.hstack([1 - a, a])
        return a

    def predict(self, X):
        """Class labels for classifiers (argmax, or a > 0.5 for sigmoid), else a^(L)."""
        return self.predict_from(self.forward(X))

    def predict_from(self, a):
        """predict's answer from output activations a (M, K)."""
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
        X = self.check_X(self.scale_X(X))
        y = checks.as_array(y, "y")
        if y.shape[:1] != (X.shape[0],):
            raise ValueError(f"X has {X.shape[0]} samples but y has shape {y.shape}")
        if self._is_label_column(y):        # labels as a column: compare labels, not units
            y = checks.ravel_label_column(y)
        a = self.engine.forward(X)
        if self.is_classifier and y.ndim == 2:     # a target matrix: compare unit by unit
            if y.shape[1] != a.shape[1]:
                raise ValueError(f"y has {y.shape[1]} columns but the output layer has {a.shape[1]} units")
            if self.output == "softmax":
                return float((a.argmax(axis=1) == y.argmax(axis=1)).mean())
            return float(((a > 0.5) == (y > 0.5)).all(axis=1).mean())
        if self.is_classifier:
            pred = self.predict_from(a)
            return float((pred == y.reshape(pred.shape)).mean())
        Y = self.check_y(y, X.shape[0]).astype(np.float64)
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
        """Write the model (architecture, weights, biases, optimizer state, classes_,
        scalers, history_, counters and the shuffling state) to path atomically; format in
        :mod:`nnjit.io`."""
        from . import io
        io.save(self, path)

    @classmethod
    def load(cls, path, backend=None):
        """The model saved at path (never executes code from the file); ``backend``
        overrides the stored backend. Raises nnjit.io.ModelFileError for a bad file."""
        from . import io
        st, rng = io.load_state(path)
        try:
            return cls.from_state(st, backend, rng)
        except (ValueError, TypeError) as e:
            raise io.ModelFileError(f"{str(path)!r} has an invalid architecture or state ({e})") from None

    def __getstate__(self):
        # pickle/deepcopy (joblib, sklearn's clone of fitted nets): the engine holds kernel
        # modules or device arrays, so it travels as its parameter and optimizer-state vectors
        state = self.__dict__.copy()
        engine = state.pop("engine")
        state["_theta"], state["_opt"] = engine.get_params(), engine.get_state()
        return state

    def __setstate__(self, state):
        state = dict(state)
        theta = state.pop("_theta")
        opt = state.pop("_opt")
        self.__dict__.update(state)
        self.engine = make_engine(self.backend, self.shape, self._n_params, self.dtype)
        self.engine.set_params(theta)
        self.engine.set_state(opt)
