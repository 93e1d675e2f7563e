"""scikit-learn's ``MLPClassifier`` and ``MLPRegressor``, trained by nnjit: a drop-in replacement.

What it is for: ``from nnjit.sklearn import MLPClassifier, MLPRegressor`` in place of
``from sklearn.neural_network import ...`` and nothing else changes -- the same constructor
(parameter names, meanings, defaults), the same fitted attributes (``coefs_`` in scikit-learn's
(n_in, n_out) layout, ``intercepts_``, ``loss_curve_``, ``n_iter_``, ``t_``, ...), the same
solvers (``"adam"``, ``"sgd"`` with (Nesterov) momentum and the three learning-rate schedules,
``"lbfgs"``), the same random-number use (the same ``random_state`` gives the same initial
weights, shuffles and validation split as scikit-learn, so the two train the same trajectory),
the same early stopping, warm_start and partial_fit rules. What changes is where the work is
done: the stochastic solvers run nnjit's training loop (nnjit.training) over the backend's
engine -- every batch of an epoch in one compiled call on the loops backend, dense or sparse
(CSR) X, with or without sample weights, the Poisson loss too -- in scikit-learn's batch
order, with scikit-learn's loss accounting and stopping rules; L-BFGS evaluates the loss and
gradient with the engine's one-pass ``sums``. Needs the ``sklearn`` extra (and SciPy, which
scikit-learn brings); nnjit's core never imports scikit-learn.

Extra keywords, all after scikit-learn's: ``backend`` ("loops", "vectorised", "cuda"),
``dtype`` (None: as scikit-learn -- the stochastic solvers train in X's float32/float64,
L-BFGS in float64, outputs come in the dtype of X @ coefs_; or force the one fit and predict
compute in), ``error_threshold`` (the lecture's stop criterion), ``callbacks``
(cb(estimator, epoch, info), True stops) and ``progress`` (a tqdm bar). ``activation`` also
accepts nnjit's hidden names ("sigmoid" = "logistic", "gelu", "leaky_relu").

Where scikit-learn's own tests read private state, the same information has a public name here:
``optimizer_`` (sklearn's ``_optimizer``: ``learning_rate``, ``velocities`` / ``ms``, ``vs``,
``t``), ``no_improvement_count_`` (``_no_improvement_count``) and :meth:`loss_grad_lbfgs`
(``_loss_grad_lbfgs``).

How the work is split: the estimator keeps scikit-learn's state (``coefs_``, ``intercepts_``;
assignable) and copies it into the flat parameter vector of an :class:`nnjit.MLP` (``net_``) at
the start of every fit, partial_fit and predict; the optimizer state lives in that network's
engine beside it.
"""
import numbers
import warnings
from itertools import chain

import numpy as np
import scipy.optimize
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils._param_validation import Interval, Options, StrOptions
try:                        # scikit-learn's own shim for SciPy's iprint deprecation
    from sklearn.utils.fixes import _get_additional_lbfgs_options_dict
except ImportError:         # pragma: no cover - older scikit-learn
    def _get_additional_lbfgs_options_dict(key, value):
        return {key: value}
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from . import activations as A
from . import rules as R
from .layout import layer, n_params
from .model import MLP
from .training import Best, Progress, Schedule, Stopper, Trainer

__all__ = ["MLPClassifier", "MLPRegressor"]

_STOCHASTIC_SOLVERS = ("sgd", "adam")
# scikit-learn's activation names -> nnjit's (nnjit's own hidden names pass through)
ACTIVATION_NAMES = {"logistic": "sigmoid", **{name: name for name in A.HIDDEN}}
# scikit-learn's out_activation_ -> nnjit (output, loss)
_OUTPUT = {"softmax": ("softmax", "cross_entropy"), "logistic": ("sigmoid", "cross_entropy"),
           "identity": ("identity", "squared_error"), "exp": ("exp", "poisson")}


def _stochastic(est):
    """partial_fit's availability: a stochastic solver."""
    if est.solver not in _STOCHASTIC_SOLVERS:
        raise AttributeError("partial_fit is only available for stochastic optimizers. "
                             "%s is not stochastic." % est.solver)
    return True


class OptimizerState:
    """scikit-learn's ``_optimizer`` as its tests read it, over the state in the engine:
    ``learning_rate`` (SGD: the current eta of its schedule; Adam: eta_t = eta_0
    sqrt(1 - b2^t) / (1 - b1^t)), ``velocities`` (SGD), ``ms``, ``vs``, ``t`` (Adam)."""

    def __init__(self, est, schedule):
        self.est, self.schedule = est, schedule
        self.learning_rate_init = est.learning_rate_init

    @property
    def _state(self):
        return self.est.optimizer_arrays()

    @property
    def learning_rate(self):
        est = self.est
        if est.solver == "adam":
            t = self.t
            if t == 0:
                return float(est.learning_rate_init)
            return (est.learning_rate_init * np.sqrt(1 - est.beta_2 ** t)
                    / (1 - est.beta_1 ** t))
        return float(self.schedule.lr(0, 0, est.t_))

    @property
    def velocities(self):
        return self._state["vel"]

    @property
    def ms(self):
        return self._state["vel"]

    @property
    def vs(self):
        return self._state["sq"]

    @property
    def t(self):
        return int(self._state["step"])


_CONSTRAINTS = {
    "hidden_layer_sizes": ["array-like", Interval(numbers.Integral, 1, None, closed="left")],
    "activation": [StrOptions(set(ACTIVATION_NAMES))],
    "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
    "alpha": [Interval(numbers.Real, 0, None, closed="left")],
    "batch_size": [StrOptions({"auto"}), Interval(numbers.Integral, 1, None, closed="left")],
    "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
    "learning_rate_init": [Interval(numbers.Real, 0, None, closed="neither")],
    "power_t": [Interval(numbers.Real, 0, None, closed="left")],
    "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
    "shuffle": ["boolean"],
    "random_state": ["random_state"],
    "tol": [Interval(numbers.Real, 0, None, closed="left")],
    "verbose": ["verbose"],
    "warm_start": ["boolean"],
    "momentum": [Interval(numbers.Real, 0, 1, closed="both")],
    "nesterovs_momentum": ["boolean"],
    "early_stopping": ["boolean"],
    "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
    "beta_1": [Interval(numbers.Real, 0, 1, closed="left")],
    "beta_2": [Interval(numbers.Real, 0, 1, closed="left")],
    "epsilon": [Interval(numbers.Real, 0, None, closed="neither")],
    "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left"),
                         Options(numbers.Real, {np.inf})],
    "max_fun": [Interval(numbers.Integral, 1, None, closed="left")],
    "backend": [StrOptions({"loops", "vectorised", "cuda"})],
    "dtype": [None, StrOptions({"float32", "float64"}), type],
    "error_threshold": [None, Interval(numbers.Real, 0, None, closed="neither")],
    "callbacks": [None, list, tuple],
    "progress": ["boolean"],
}


class _Record:
    """The training loop's counters for an estimator (see nnjit.training): mirrored into
    scikit-learn's attributes after a fit."""

    def __init__(self, est, early_stopping):
        self.n_epochs_, self.t_, self.lr_ = 0, est.t_, None
        self.history_ = {"loss": est.loss_curve_, "val_loss": [],
                         "val_score": est.validation_scores_ if early_stopping else [],
                         "val_epoch": []}
        self.best_epoch_ = self.best_loss_ = self.best_score_ = None


def _shuffled(idx, rs):
    """sklearn.utils.shuffle(idx, random_state=rs) for a RandomState rs, the same draws
    (resample without replacement: rs.shuffle of arange(n), then idx in that order) without
    its validation of the arguments, 0.2 ms an epoch (a tenth of an epoch of scikit-learn's
    defaults on digits). test_sklearn_dropin's weight-for-weight tests hold the two to one
    order."""
    perm = np.arange(idx.shape[0])
    rs.shuffle(perm)
    return idx[perm]


class _BaseMLP(BaseEstimator):
    """Shared fit logic: scikit-learn's BaseMultilayerPerceptron with nnjit doing the passes."""

    _parameter_constraints: dict = _CONSTRAINTS

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 backend="loops", dtype=None, error_threshold=None, callbacks=None,
                 progress=False):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.dtype = dtype
        self.error_threshold = error_threshold
        self.callbacks = callbacks
        self.progress = progress

    # -- the compute network: an nnjit.MLP whose flat theta mirrors coefs_ / intercepts_
    def _net_dtype(self, X_dtype):
        if self.dtype is None:
            return np.dtype(X_dtype) if np.dtype(X_dtype) in (np.float32, np.float64) else np.dtype(np.float64)
        dt = np.dtype(self.dtype)
        if dt not in (np.float32, np.float64):
            raise ValueError(f"dtype must be None, 'float32' or 'float64', got {self.dtype!r}")
        return dt

    def _ensure_net(self, dtype=None, slot="_net"):
        """The nnjit.MLP for the current coefs_ (rebuilt when the architecture, dtype or
        backend changed), with coefs_ / intercepts_ copied into its parameter vector. Slot
        "_net" is the network fits train; its optimizer state survives a dtype or backend
        change (partial_fit on float64 after float32 keeps its momentum, as scikit-learn's).
        Predictions in another dtype use slot "_net_predict" and leave it alone."""
        layers = [self.coefs_[0].shape[0]] + [W.shape[1] for W in self.coefs_]
        dtype = np.dtype(dtype if dtype is not None else self.coefs_[0].dtype)
        if dtype not in (np.float32, np.float64):
            dtype = np.dtype(np.float64)
        out = getattr(self, "out_activation_", "identity")
        output, loss = _OUTPUT.get(out, ("identity", "squared_error"))
        if output == "softmax" and layers[-1] < 2:     # hand-built one-unit "softmax": sklearn's math still holds
            output, loss = "sigmoid", "cross_entropy"
        net = getattr(self, slot, None)
        key = (tuple(layers), ACTIVATION_NAMES[self.activation], output, dtype.name, self.backend)
        old_key = getattr(self, slot + "_key", None)
        if net is None or old_key != key:
            state = (net.engine.get_state() if slot == "_net" and net is not None
                     and old_key[:3] == key[:3] else None)
            net = MLP(layers, activation=ACTIVATION_NAMES[self.activation], output=output, loss=loss,
                      backend=self.backend, dtype=dtype.name, seed=0)
            if state is not None:
                net.engine.set_state(state)
            setattr(self, slot, net)
            setattr(self, slot + "_key", key)
        self._layer_units = layers
        theta = np.empty(net.n_params, dtype)
        for l, (W, b) in enumerate(zip(self.coefs_, self.intercepts_), start=1):
            Wl, bl = layer(theta, net.shape, l)
            Wl[...] = np.asarray(W).T
            bl[...] = np.ravel(b)
        net.engine.set_params(theta)
        return net

    def _unpack_theta(self, theta=None):
        net = self._net
        theta = net.engine.get_params() if theta is None else theta
        views = [layer(theta, net.shape, l) for l in range(1, len(net.layers))]
        self.coefs_ = [np.ascontiguousarray(W.T) for W, _ in views]
        self.intercepts_ = [b.copy() for _, b in views]

    def _sk_order(self):
        """Index maps between scikit-learn's packing (coefs_ raveled, then intercepts_) and
        nnjit's flat theta (W^(1) rows j, b^(1), W^(2), ...): theta = x[sk_of_theta]."""
        net = self._net
        n = n_params(net.layers)
        n_w = sum(a * b for a, b in zip(net.layers[:-1], net.layers[1:]))
        sk_of_theta = np.empty(n, np.int64)
        cs, bs = 0, n_w
        for l in range(1, len(net.layers)):
            W, b = layer(sk_of_theta, net.shape, l)
            n_out, n_in = W.shape
            W[...] = cs + np.arange(n_in)[None, :] * n_out + np.arange(n_out)[:, None]
            b[...] = bs + np.arange(n_out)
            cs += n_in * n_out
            bs += n_out
        theta_of_sk = np.empty_like(sk_of_theta)
        theta_of_sk[sk_of_theta] = np.arange(n)
        return sk_of_theta, theta_of_sk

    def _loss_scale(self):
        """scikit-learn's squared error is a mean over the K outputs too; nnjit's a sum."""
        return 1.0 / self.n_outputs_ if self._net.loss == "squared_error" else 1.0

    # -- scikit-learn's initialisation: the same RNG draws in the same order
    def _initialize(self, y, layer_units, dtype):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        if not is_classifier(self):
            self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        elif self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_ = "softmax"
        else:
            self.out_activation_ = "logistic"
        self.coefs_, self.intercepts_ = [], []
        for i in range(self.n_layers_ - 1):
            factor = 2.0 if ACTIVATION_NAMES[self.activation] == "sigmoid" else 6.0
            bound = np.sqrt(factor / (layer_units[i] + layer_units[i + 1]))
            W = self._random_state.uniform(-bound, bound, (layer_units[i], layer_units[i + 1]))
            b = self._random_state.uniform(-bound, bound, layer_units[i + 1])
            self.coefs_.append(W.astype(dtype, copy=False))
            self.intercepts_.append(b.astype(dtype, copy=False))
        if self.solver in _STOCHASTIC_SOLVERS:
            self.loss_curve_ = []
            self.no_improvement_count_ = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _fit(self, X, y, sample_weight=None, incremental=False):
        hidden = self.hidden_layer_sizes
        if not hasattr(hidden, "__iter__"):
            hidden = [hidden]
        hidden = list(hidden)
        if np.any(np.array(hidden) <= 0):
            raise ValueError("hidden_layer_sizes must be > 0, got %s." % hidden)
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        dtype = self._net_dtype(X.dtype)
        # scikit-learn's L-BFGS optimises SciPy's float64 vector and keeps coefs_ in it: X's
        # float32 only rounds the initial weights (and sample weights), the passes are float64
        work = np.dtype(np.float64) if self.solver == "lbfgs" and self.dtype is None else dtype
        if sp.issparse(X) and self.backend == "cuda":
            raise ValueError("sparse X is not supported on the cuda backend (it would be "
                             "densified); use backend='loops' (sparse loop kernels) or pass "
                             "X.toarray()")
        X = X.astype(work, copy=False)
        if sp.issparse(X):
            X = X.tocsr()
        else:
            X = np.ascontiguousarray(X)
        n_samples, n_features = X.shape
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=dtype).astype(work)
            if np.all(sample_weight == 1):      # exactly the unweighted objective
                sample_weight = None
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        self.n_outputs_ = y.shape[1]
        layer_units = [n_features] + hidden + [self.n_outputs_]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units, dtype)
        elif [self.coefs_[0].shape[0]] + [W.shape[1] for W in self.coefs_] != layer_units:
            raise ValueError(f"the network has layers {[self.coefs_[0].shape[0]] + [W.shape[1] for W in self.coefs_]} "
                             f"but X and y need {layer_units}; set warm_start=False to start afresh")
        net = self._ensure_net(work)
        Y = np.ascontiguousarray(y, dtype=work)
        if self.solver in _STOCHASTIC_SOLVERS:
            self._fit_stochastic(net, X, Y, y, sample_weight, incremental)
        else:
            self._fit_lbfgs(net, X, Y, sample_weight)
        self._unpack_theta()
        if not all(np.isfinite(w).all() for w in chain(self.coefs_, self.intercepts_)):
            raise ValueError("Solver produced non-finite parameter weights. The input data may"
                             " contain large values and need to be preprocessed.")
        return self

    # -- L-BFGS-B over the flat vector, in scikit-learn's packing order
    def loss_grad_lbfgs(self, packed, X, y, sample_weight=None):
        """(loss, gradient) of scikit-learn's objective at the packed parameters
        ``np.hstack([W.ravel() for W in coefs_ + intercepts_])`` (its ``_loss_grad_lbfgs``):
        mean loss + alpha/2 sum ||W||^2 / n and its gradient in the same packing, computed in
        float64 as scikit-learn's (unless ``dtype`` forces one). The fitted weights are set to
        ``packed``."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False,
                          dtype=(np.float64, np.float32))
        dtype = np.dtype(np.float64 if self.dtype is None else self.dtype)
        Y = np.asarray(y, dtype=dtype)
        Y = Y.reshape(-1, 1) if Y.ndim == 1 else Y
        net = self._ensure_net(dtype)
        Xc = X.astype(dtype).tocsr() if sp.issparse(X) else np.ascontiguousarray(X, dtype=dtype)
        sw = None if sample_weight is None else _check_sample_weight(sample_weight, X, dtype=dtype)
        out = self._lbfgs_objective(net, Xc, Y, sw)(np.asarray(packed, dtype=np.float64))
        self._unpack_theta()
        return out

    def _lbfgs_objective(self, net, X, Y, sw):
        """f(x) = (loss, gradient) in scikit-learn's packing, from one pass of the engine's
        sums (feed-forward, costs, backpropagation of all samples at once)."""
        sk_of_theta, theta_of_sk = self._sk_order()
        mask = np.zeros(net.n_params)
        for l in range(1, len(net.layers)):
            layer(mask, net.shape, l)[0][...] = 1.0
        scale = self._loss_scale()
        engine = net.engine

        def f(x):
            theta = x[sk_of_theta]
            engine.set_params(theta.astype(engine.dtype))
            with np.errstate(over="ignore", invalid="ignore"):
                g, cost, _, wsum = engine.sums(X, Y, net.loss_code, sw)
            theta = engine.get_params().astype(np.float64)
            loss = cost / wsum * scale + 0.5 * self.alpha * float(np.dot(theta * mask, theta)) / wsum
            grad = (np.asarray(g, np.float64) + self.alpha * mask * theta) / wsum
            return loss, grad[theta_of_sk]
        return f

    def _fit_lbfgs(self, net, X, Y, sw):
        sk_of_theta, theta_of_sk = self._sk_order()
        x0 = net.engine.get_params()[theta_of_sk].astype(np.float64)
        iprint = 1 if self.verbose is True or self.verbose >= 1 else -1
        opt_res = scipy.optimize.minimize(
            self._lbfgs_objective(net, X, Y, sw), x0, method="L-BFGS-B", jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol,
                     **_get_additional_lbfgs_options_dict("iprint", iprint)})
        self.n_iter_ = _check_optimize_result("lbfgs", opt_res, self.max_iter)
        self.loss_ = opt_res.fun
        net.engine.set_params(opt_res.x[sk_of_theta].astype(net.engine.dtype))

    # -- the stochastic solvers: nnjit's training loop, scikit-learn's rules
    def _rule(self):
        """(rule code, hyper-parameters, Schedule) of scikit-learn's optimizer."""
        if self.solver == "sgd":
            code, params = R.check("nesterov" if self.nesterovs_momentum and self.momentum > 0
                                   else "sgd", self.alpha, momentum=self.momentum)
            name = self.learning_rate
            sched = {"invscaling": {"power_t": self.power_t},
                     "adaptive": {"factor": 5.0, "min_lr": 1e-6}}.get(name, {})
            return code, params, Schedule(self.learning_rate_init, name, sched)
        code, params = R.check("adam", self.alpha, betas=(self.beta_1, self.beta_2),
                               eps=self.epsilon, adam_eps="sklearn")
        return code, params, Schedule(self.learning_rate_init)

    def _fit_stochastic(self, net, X, Y, y, sample_weight, incremental):
        engine = net.engine
        code, params, schedule = self._rule()
        opt = getattr(self, "optimizer_", None)
        if not incremental or opt is None or getattr(self, "_opt_key", None) != (self.solver, net.n_params):
            engine.set_state({"vel": np.zeros(net.n_params, engine.dtype),
                              "sq": np.zeros(net.n_params, engine.dtype), "step": 0})
            opt = self.optimizer_ = OptimizerState(self, schedule)
            self._opt_key = (self.solver, net.n_params)
        schedule = opt.schedule         # partial_fit: the adaptive lr carries over
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        for name, default in (("loss_curve_", []), ("no_improvement_count_", 0), ("t_", 0),
                              ("best_loss_", np.inf), ("validation_scores_", None),
                              ("best_validation_score_", None)):
            if not hasattr(self, name):
                setattr(self, name, default if not isinstance(default, list) else [])
        early_stopping = self.early_stopping
        validate = None
        if early_stopping:
            if self.validation_scores_ is None:
                self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
            stratify = y if (is_classifier(self) and self.n_outputs_ == 1) else None
            n_all = X.shape[0]
            try:        # tiny data: scikit-learn's ValueError, said in the user's terms
                if sample_weight is None:
                    X, X_val, Y, y_val = train_test_split(
                        X, Y, random_state=self._random_state,
                        test_size=self.validation_fraction, stratify=stratify)
                    sample_weight = sw_val = None
                else:
                    X, X_val, Y, y_val, sample_weight, sw_val = train_test_split(
                        X, Y, sample_weight, random_state=self._random_state,
                        test_size=self.validation_fraction, stratify=stratify)
            except ValueError as e:
                raise ValueError(
                    f"early_stopping=True cannot hold out validation_fraction="
                    f"{self.validation_fraction:g} of {n_all} samples"
                    + (" stratified by class" if stratify is not None else "")
                    + f": {str(e).rstrip('.')}. Use more data, a larger 'validation_fraction', or "
                    "early_stopping=False.") from e
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 f"or the size of your dataset (validation_fraction="
                                 f"{self.validation_fraction:g} of {n_all} samples holds "
                                 f"{X_val.shape[0]}; early stopping needs 2 or more).")
            if is_classifier(self):
                y_val = self._label_binarizer.inverse_transform(y_val.astype(bool))
            X = X.tocsr() if sp.issparse(X) else np.ascontiguousarray(X)
            Y = np.ascontiguousarray(Y)
            validate = lambda: (None, self._score_theta(X_val, y_val, sw_val))   # noqa: E731
        n = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n))
        sample_idx = [np.arange(n, dtype=int)]

        def epoch(rule, h, loss):
            if self.shuffle:        # scikit-learn's order: its generator, its shuffle of the last
                sample_idx[0] = _shuffled(sample_idx[0], self._random_state)
            return engine.train_epoch(sample_idx[0].astype(np.int64), batch_size, rule, h, loss)

        rec = _Record(self, early_stopping)
        say = print if self.verbose else None
        stopper = Stopper(self.tol, self.n_iter_no_change, "max" if early_stopping else "min",
                          strict=True, threshold=self.error_threshold,
                          schedule=schedule if self.solver == "sgd" else None, say=say,
                          what="Validation score" if early_stopping else "Training loss")
        stopper.stall = self.no_improvement_count_
        stopper.best = (self.best_validation_score_ if early_stopping else self.best_loss_)
        best = None
        if early_stopping:
            best = Best(rec, engine, keep=True, mode="max")
            best.metric = self.best_validation_score_
            best.theta = getattr(self, "_best_theta", None)
        callbacks = [lambda e, cb=cb: cb(self, e, {"loss": self.loss_curve_,
                                                   "val_score": self.validation_scores_})
                     for cb in (self.callbacks or [])]
        scale = self._loss_scale()
        trainer = Trainer(
            epoch, engine, rec, code, params, net.loss_code, n,
            lambda st: (st[3] * scale + 0.5 * self.alpha * st[4]) / n, schedule, stopper,
            validate=validate, monitor="score" if early_stopping else "loss", best=best,
            callbacks=callbacks, progress=Progress(1 if incremental else self.max_iter)
            if self.progress else None, on_divergence="continue", on_interrupt="warn", say=say)
        engine.begin_fit(X, Y, batch_size, sample_weight)
        try:
            stopped = trainer.run(1 if incremental else self.max_iter)
        finally:
            engine.end_fit()
        self.n_iter_ = rec.n_epochs_
        self.t_ = rec.t_
        if rec.history_["loss"]:
            self.loss_ = rec.history_["loss"][-1]
        self.no_improvement_count_ = stopper.stall
        if early_stopping:
            self.best_validation_score_ = stopper.best
            self._best_theta = best.theta
        else:
            self.best_loss_ = stopper.best
        if not (stopped or incremental) and self.n_iter_ == self.max_iter:
            warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the "
                          "optimization hasn't converged yet." % self.max_iter, ConvergenceWarning)

    # -- prediction
    def _forward_theta(self, X, net=None):
        """Output activations for validated X from the parameter vector of ``net`` (default:
        the one being trained)."""
        net = self._net if net is None else net
        if sp.issparse(X):
            Xc = X.astype(net.engine.dtype).tocsr()
        else:
            Xc = np.ascontiguousarray(X, dtype=net.engine.dtype)
        if Xc.shape[0] == 0:
            return np.zeros((0, self.n_outputs_), net.engine.dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            return net.engine.forward(Xc)

    def _forward_pass_fast(self, X, check_input=True):
        """Output activations in scikit-learn's dtype, that of X @ coefs_: float32 weights give
        float32 for float32 X but float64 for float64 or int64 X, computed in float64 as
        scikit-learn does (or in a forced ``dtype``)."""
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        out = np.result_type(X.dtype, self.coefs_[0].dtype)
        out = out if out in (np.float32, np.float64) else np.dtype(np.float64)
        work = out if self.dtype is None else np.dtype(self.dtype)
        if work == self.coefs_[0].dtype:
            net = self._ensure_net()
        else:
            net = self._ensure_net(work, slot="_net_predict")
        return self._forward_theta(X, net).astype(out, copy=False)

    def _score_theta(self, X, y, sample_weight):
        """Validation score from the parameter vector being trained (NaN if predictions are not
        finite, as scikit-learn records it)."""
        y_pred = self._predict_from(self._forward_theta(X))
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return float(self._score_function(y, y_pred, sample_weight=sample_weight))

    def _score_with_function(self, X, y, sample_weight, score_function):
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return score_function(y, y_pred, sample_weight=sample_weight)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the model to X and y (scikit-learn's ``fit``; sample_weight optional). Returns self."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    def optimizer_arrays(self):
        """The stochastic solver's state: {"vel": velocities or Adam's m, "sq": Adam's v,
        "step": Adam's t}, flat in the layout of ``net_``'s parameters (copies)."""
        check_is_fitted(self, "coefs_")
        return self._ensure_net().engine.get_state()

    @property
    def net_(self):
        """The fitted network as an :class:`nnjit.MLP` (``net_.save(path)``, ``net_.weights``
        in the lecture's W[j, i] layout)."""
        check_is_fitted(self, "coefs_")
        net = self._ensure_net()
        net.history_["loss"] = list(getattr(self, "loss_curve_", []) or [])
        net.history_["val_score"] = list(getattr(self, "validation_scores_", None) or [])
        if is_classifier(self) and self.out_activation_ != "logistic" or (
                is_classifier(self) and self.n_outputs_ == 1):
            net.classes_ = self.classes_
        return net

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        if "_net" in state:             # the optimizer state lives in the net's engine
            state["_opt_state"] = state["_net"].engine.get_state()
        for name in ("_net", "_net_key", "_net_predict", "_net_predict_key"):
            state.pop(name, None)       # rebuilt from coefs_ on demand
        return state

    def __setstate__(self, state):
        opt = state.pop("_opt_state", None)
        self.__dict__.update(state)
        if opt is not None and hasattr(self, "coefs_"):
            self._ensure_net().engine.set_state(opt)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.non_deterministic = self.backend == "cuda"
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier: scikit-learn's ``MLPClassifier``, trained by nnjit.

    Parameters, attributes and behaviour are those of
    :class:`sklearn.neural_network.MLPClassifier` (see its documentation); the same
    ``random_state`` gives the same initial weights, shuffles and validation split. Extra
    keywords: ``backend``, ``dtype``, ``error_threshold``, ``callbacks``, ``progress`` (see the
    module docstring). Public names for what scikit-learn keeps private: ``optimizer_``,
    ``no_improvement_count_``, :meth:`loss_grad_lbfgs`; ``net_`` is the :class:`nnjit.MLP`.
    """

    loss = "log_loss"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in the "
                        f"previous call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError("`y` has classes not in `self.classes_`. "
                                 f"`self.classes_` has {self.classes_}. 'y' has {classes}.")
        y = self._label_binarizer.transform(y).astype(bool)
        return X, y

    def predict(self, X):
        """Predicted classes, (n_samples,) or an indicator matrix for multilabel targets."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict_from(self, y_pred):
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def _predict(self, X, check_input=True):
        return self._predict_from(self._forward_pass_fast(X, check_input=check_input))

    @staticmethod
    def _score_function(y, y_pred, sample_weight=None):
        return accuracy_score(y, y_pred, sample_weight=sample_weight)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, accuracy_score)

    @available_if(_stochastic)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y) from the current state (scikit-learn's ``partial_fit``):
        ``classes`` is required on the first call; the optimizer state carries over."""
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict_log_proba(self, X):
        """log(predict_proba(X))."""
        y_prob = self.predict_proba(X)
        with np.errstate(divide="ignore"):
            return np.log(y_prob, out=y_prob)

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes), columns in the order of classes_."""
        check_is_fitted(self)
        y_pred = self._forward_pass_fast(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor: scikit-learn's ``MLPRegressor``, trained by nnjit.

    ``loss`` is "squared_error" (identity output) or "poisson" (exponential output, y >= 0;
    computed by the NumPy pass). Everything else as :class:`MLPClassifier`.
    """

    _parameter_constraints: dict = {**_CONSTRAINTS,
                                    "loss": [StrOptions({"squared_error", "poisson"})]}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 backend="loops", dtype=None, error_threshold=None, callbacks=None,
                 progress=False):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            max_fun=max_fun, backend=backend, dtype=dtype, error_threshold=error_threshold,
            callbacks=callbacks, progress=progress)
        self.loss = loss

    def predict(self, X):
        """Predicted values, (n_samples,) or (n_samples, n_outputs)."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict_from(self, y_pred):
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def _predict(self, X, check_input=True):
        return self._predict_from(self._forward_pass_fast(X, check_input=check_input))

    @staticmethod
    def _score_function(y, y_pred, sample_weight=None):
        return r2_score(y, y_pred, sample_weight=sample_weight)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, r2_score)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             y_numeric=True, dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and np.any(y < 0):
            raise ValueError("loss='poisson' needs non-negative targets y")
        return X, y

    @available_if(_stochastic)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y) from the current state (scikit-learn's ``partial_fit``)."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)
