"""scikit-learn's ``MLPClassifier`` and ``MLPRegressor``, trained by nnjit: a drop-in replacement.

What it is for: ``from nnjit.sklearn import MLPClassifier, MLPRegressor`` in place of
``from sklearn.neural_network import ...`` and nothing else changes -- the same constructor
(parameter names, meanings, defaults), the same fitted attributes (``coefs_`` in scikit-learn's
(n_in, n_out) layout, ``intercepts_``, ``loss_curve_``, ``n_iter_``, ``t_``, ...), the same
solvers (``"adam"``, ``"sgd"`` with (Nesterov) momentum and the three learning-rate schedules,
``"lbfgs"``), the same random-number use (the same ``random_state`` gives the same initial
weights, shuffles and validation split as scikit-learn, so the two train the same trajectory),
the same early stopping, warm_start and partial_fit rules. What changes is where the work is
done: each batch's feed-forward, loss and backpropagation run in nnjit's compiled loop kernels
(:mod:`nnjit.loops`), or the chosen ``backend``. Needs the ``sklearn`` extra (and SciPy, which
scikit-learn brings); nnjit's core never imports scikit-learn.

Extra keywords, all after scikit-learn's: ``backend`` ("loops", "vectorised", "cuda"),
``dtype`` (None: follow X's float32/float64, as scikit-learn does; or force one),
``error_threshold`` (the lecture's stop criterion), ``callbacks`` (cb(estimator, epoch, info),
True stops) and ``progress`` (a tqdm bar). ``activation`` also accepts nnjit's "sigmoid" (=
"logistic") and "gelu".

Where scikit-learn's own tests read private state, the same information has a public name here:
``optimizer_`` (sklearn's ``_optimizer``: ``learning_rate``, ``velocities`` / ``ms``, ``vs``,
``t``), ``no_improvement_count_`` (``_no_improvement_count``) and :meth:`loss_grad_lbfgs`
(``_loss_grad_lbfgs``).

How the work is split: the estimator keeps scikit-learn's state (``coefs_``, ``intercepts_``;
assignable) and copies it into the flat parameter vector of an :class:`nnjit.MLP` (``net_``) at
the start of every fit, partial_fit and predict; the update rules work on that flat vector.
Dense X without sample weights runs on the backend's kernels; sparse X, non-unit sample weights
and the Poisson loss (exponential output, which the kernels do not have) run on a NumPy/SciPy
twin of the same equations (:class:`_NumpyPass`), as scikit-learn itself computes them.
"""
import numbers
import warnings
from itertools import chain

import numpy as np
import scipy.optimize
import scipy.sparse as sp
from scipy.special import xlogy
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d, gen_batches, shuffle
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
from . import config
from .model import MLP

__all__ = ["MLPClassifier", "MLPRegressor"]

_STOCHASTIC_SOLVERS = ("sgd", "adam")
# scikit-learn's activation names -> nnjit's (nnjit's own names pass through)
_HIDDEN = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
           "sigmoid": "sigmoid", "gelu": "gelu"}
# scikit-learn's out_activation_ -> nnjit (output, loss); "exp" (Poisson) has no kernel twin
_OUTPUT = {"softmax": ("softmax", "cross_entropy"), "logistic": ("sigmoid", "cross_entropy"),
           "identity": ("identity", "squared_error")}


# ---------------------------------------------------------------- update rules on a flat vector
class SGDOptimizer:
    """scikit-learn's SGD with momentum on one flat parameter vector (same arithmetic, in the
    same order, as ``sklearn.neural_network._stochastic_optimizers.SGDOptimizer``):
    v <- mu v - eta g ; w <- w + v, or with Nesterov w <- w + mu v - eta g (v already updated).
    ``learning_rate`` is the current eta: "invscaling" sets it to eta_0 / (t + 1)^power_t after
    each epoch (t = samples seen), "adaptive" divides it by 5 when training stalls."""

    def __init__(self, n_params, dtype, learning_rate_init=0.1, lr_schedule="constant",
                 momentum=0.9, nesterov=False, power_t=0.5):
        self.learning_rate_init = learning_rate_init
        self.learning_rate = float(learning_rate_init)
        self.lr_schedule = lr_schedule
        self.momentum = momentum
        self.nesterov = nesterov
        self.power_t = power_t
        self.velocities = np.zeros(n_params, dtype)
        self._tmp = np.zeros(n_params, dtype)

    def update_params(self, theta, grad):
        v, tmp = self.velocities, self._tmp
        np.multiply(v, self.momentum, out=v)
        np.multiply(grad, self.learning_rate, out=tmp)
        v -= tmp                                   # v = mu v - eta g
        if self.nesterov:
            np.multiply(v, self.momentum, out=tmp)
            tmp -= self.learning_rate * grad       # mu v - eta g, with the new v
            theta += tmp
        else:
            theta += v

    def iteration_ends(self, time_step):
        if self.lr_schedule == "invscaling":
            self.learning_rate = float(self.learning_rate_init) / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg, verbose):
        if self.lr_schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate)
        return False


class AdamOptimizer:
    """scikit-learn's Adam on one flat vector: m <- b1 m + (1-b1) g ; v <- b2 v + (1-b2) g^2 ;
    eta_t = eta_0 sqrt(1 - b2^t) / (1 - b1^t) ; w <- w - eta_t m / (sqrt(v) + eps)
    (``learning_rate`` is eta_t, eps added to sqrt(v), as ``_stochastic_optimizers``)."""

    def __init__(self, n_params, dtype, learning_rate_init=0.001, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8):
        self.learning_rate_init = learning_rate_init
        self.learning_rate = float(learning_rate_init)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.t = 0
        self.ms = np.zeros(n_params, dtype)
        self.vs = np.zeros(n_params, dtype)
        self._tmp = np.zeros(n_params, dtype)

    def update_params(self, theta, grad):
        self.t += 1
        m, v, tmp = self.ms, self.vs, self._tmp
        np.multiply(m, self.beta_1, out=m)
        np.multiply(grad, 1 - self.beta_1, out=tmp)
        m += tmp
        np.multiply(v, self.beta_2, out=v)
        np.multiply(grad, grad, out=tmp)
        tmp *= 1 - self.beta_2
        v += tmp
        self.learning_rate = (self.learning_rate_init * np.sqrt(1 - self.beta_2 ** self.t)
                              / (1 - self.beta_1 ** self.t))
        np.sqrt(v, out=tmp)
        tmp += self.epsilon
        np.divide(-self.learning_rate * m, tmp, out=tmp)
        theta += tmp

    def iteration_ends(self, time_step):
        pass

    def trigger_stopping(self, msg, verbose):
        if verbose:
            print(msg + " Stopping.")
        return True


# ---------------------------------------------------------------- one pass: loss and gradient
class _KernelPass:
    """Loss and (weighted) mean gradient of a batch from the backend's kernels (dense X):
    load_batch, forward, sample_loss, backprop on the net's own buffers."""

    def __init__(self, net, X, Y, sw, cap):
        self.e = net._engine
        self.k = self.e.k
        self.shape = self.e.shape
        self.X, self.Y = X, Y
        self.S = np.ones(X.shape[0], X.dtype) if sw is None else np.ascontiguousarray(sw, X.dtype)
        self.bufs = self.e._buffers(max(int(cap), 1))
        self.grad = np.zeros_like(self.e.theta)
        self.loss_code = net._loss
        self.act = int(self.shape.acts[-1])
        # scikit-learn's squared error is a mean over the K outputs too; ours a sum over them
        self.loss_scale = 1.0 / Y.shape[1] if net.loss == "squared_error" else 1.0
        self.loaded = False

    def run(self, order, start, mb, reuse=False):
        """(sum_m s_m C_m over the batch, max |a - y|); weighted mean gradient in self.grad.
        reuse: the batch is the one loaded by the previous call (lbfgs: X never changes)."""
        e, k, bufs = self.e, self.k, self.bufs
        if not (reuse and self.loaded):
            k.load_batch(bufs, self.shape, self.X, self.Y, self.S, order, start, mb)
            self.loaded = True
        k.forward(e.theta, self.shape, bufs, mb, mb >= config.PARALLEL_MIN_SAMPLES,
                  config.PARALLEL_MIN_WORK, 1)
        a, z = e._out(bufs, mb)
        y = bufs.y[:a.size].reshape(a.shape)
        emax = k.sample_loss(bufs.cost[:mb], a, z, y, self.act, self.loss_code)
        k.backprop(e.theta, self.grad, self.shape, bufs, mb, self.loss_code, 0.0)
        total = float((bufs.s[:mb].astype(np.float64) * bufs.cost[:mb]).sum())
        return total * self.loss_scale, float(emax)


class _SumsPass:
    """The same through the engine's ``sums`` (the CUDA engine: rows gathered on the host)."""

    def __init__(self, net, X, Y, sw, cap):
        self.e, self.X, self.Y, self.loss_code = net._engine, X, Y, net._loss
        self.S = None if sw is None else np.ascontiguousarray(sw, X.dtype)
        self.loss_scale = 1.0 / Y.shape[1] if net.loss == "squared_error" else 1.0
        self.grad = None

    def run(self, order, start, mb, reuse=False):
        rows = order[start:start + mb]
        g, total, emax, ssum = self.e.sums(np.ascontiguousarray(self.X[rows]),
                                           np.ascontiguousarray(self.Y[rows]), self.loss_code,
                                           None if self.S is None else self.S[rows])
        self.grad = np.asarray(g) / ssum          # the weighted sum -> the weighted mean
        return total * self.loss_scale, emax


class _SparsePass:
    """Sparse CSR X on the loops backend (nnjit.sparse): W^(1) and its optimizer state are
    held transposed, (D, N_1), for the epoch and written back into theta after it."""

    def __init__(self, net, X, Y, sw, cap, opt):
        from .engine import make_batch, make_shape
        e = net._engine
        layers = [int(n) for n in net.layers]
        D, N1 = layers[0], layers[1]
        self.n1w = n1w = D * N1
        theta = e.theta
        dt = theta.dtype
        self.net, self.opt = net, opt
        self.X = X if X.dtype == dt else X.astype(dt)
        self.indptr = self.X.indptr.astype(np.int64)
        self.indices = self.X.indices.astype(np.int64)
        self.Y = Y
        self.S = np.ones(X.shape[0], dt) if sw is None else np.ascontiguousarray(sw, dt)
        self.W1 = theta[:n1w].reshape(N1, D)
        self.b1 = theta[n1w:n1w + N1]
        self.tail = theta[n1w + N1:]
        self.tshape, n_tail = make_shape(layers[1:], net._acts[1:])
        assert n_tail == self.tail.size
        self.tbufs = make_batch(self.tshape, max(int(cap), 1), dt, pack=False)
        self.GT = np.zeros((D, N1), dt)
        self.gb1 = np.zeros(N1, dt)
        self.mark = np.full(D, -1, np.int64)
        self.zero_row = np.zeros(N1, dt)
        self.z1, self.a1, self.d1 = (np.zeros((max(int(cap), 1), N1), dt) for _ in range(3))
        self.tgrad = np.zeros_like(self.tail)
        self.loss_code = net._loss
        self.act1 = int(net._acts[0])
        self.loss_scale = 1.0 / Y.shape[1] if net.loss == "squared_error" else 1.0
        self.grad = None

    def _state(self):
        opt = self.opt
        return (opt.ms, opt.vs) if isinstance(opt, AdamOptimizer) else (opt.velocities, opt._tmp)

    def epoch(self, order, batch_size, rule, hyper, t):
        from . import sparse
        n1w, N1 = self.n1w, self.b1.size
        s1, s2 = self._state()
        WT = np.ascontiguousarray(self.W1.T)
        V1 = np.ascontiguousarray(s1[:n1w].reshape(N1, -1).T)
        Q1 = np.ascontiguousarray(s2[:n1w].reshape(N1, -1).T)
        rowsq = np.einsum("ij,ij->i", WT, WT, dtype=np.float64)
        total, emax, t = sparse.train_epoch(
            WT, self.b1, V1, Q1, s1[n1w:n1w + N1], s2[n1w:n1w + N1], self.GT, self.gb1,
            self.mark, rowsq, self.zero_row, self.z1, self.a1, self.d1, self.act1, self.tail,
            s1[n1w + N1:], s2[n1w + N1:], self.tgrad, self.tshape, self.tbufs, self.indptr,
            self.indices, self.X.data, self.Y, self.S, order, batch_size, rule, hyper, t,
            self.loss_code, float(self.loss_scale), config.PARALLEL_MIN_SAMPLES,
            config.PARALLEL_MIN_WORK)
        self.W1[...] = WT.T
        s1[:n1w].reshape(N1, -1)[...] = V1.T
        s2[:n1w].reshape(N1, -1)[...] = Q1.T
        return total, emax, t


class _NumpyPass:
    """NumPy/SciPy twin of the loss and gradient, as scikit-learn computes them: for sparse X
    (scipy.sparse products), sample weights and the Poisson loss. Works on the net's flat theta.

    z^(l) = a^(l-1) W^(l).T + b^(l); delta^L = s_m (a - y) (canonical pairs, s_m the sample
    weight); delta^(l) = f'(z^(l)) delta^(l+1) W^(l+1); dW = delta.T a / sum_m s_m."""

    def __init__(self, est, net, X, Y, sw, cap, theta):
        self.est, self.net = est, net
        self.X, self.Y, self.sw = X, Y, sw
        self.theta = theta
        self.grad = np.zeros_like(self.theta)

    def run(self, order, start, mb, reuse=False):
        rows = order[start:start + mb]
        Xb = self.X[rows]
        Yb = self.Y[rows]
        swb = None if self.sw is None else self.sw[rows]
        loss, emax = _numpy_backprop(self.est, self.theta, self.grad, Xb, Yb, swb)
        return loss * (mb if swb is None else float(swb.sum())), emax


def _host_params(net):
    """The parameter vector to update in place: the engine's own (CPU engines), or a host copy
    that the caller writes back with set_params after each change (the cuda engine)."""
    theta = net._engine.theta
    return theta if isinstance(theta, np.ndarray) else net._engine.get_params()


def _layer_views(theta, layers):
    out, p = [], 0
    for n_in, n_out in zip(layers[:-1], layers[1:]):
        W = theta[p:p + n_in * n_out].reshape(n_out, n_in)
        p += n_in * n_out
        out.append((W, theta[p:p + n_out]))
        p += n_out
    return out


def _hidden_f(name, z):
    code = A.CODES[_HIDDEN[name]]
    return A.F[code](z)


def _out_f(name, z):
    if name == "exp":
        return np.exp(z)
    return A.F[A.CODES[_OUTPUT[name][0]]](z)


def _forward_np(est, theta, X):
    """Activations of every layer for X (dense or sparse), scikit-learn's forward pass."""
    layers = est._layer_units
    acts, zs = [X], []
    a = X
    views = _layer_views(theta, layers)
    for l, (W, b) in enumerate(views):
        z = np.asarray(a @ W.T) + b        # scipy.sparse @ dense gives a dense array
        zs.append(z)
        a = _hidden_f(est.activation, z) if l < len(views) - 1 else _out_f(est.out_activation_, z)
        acts.append(a)
    return acts, zs


def _sk_loss(est, y, p, sw):
    """scikit-learn's loss functions (sklearn.neural_network._base), probabilities clipped."""
    if est.out_activation_ in ("softmax", "logistic"):
        eps = np.finfo(p.dtype).eps
        p = np.clip(p, eps, 1 - eps)
        if est.out_activation_ == "logistic":      # binary and multilabel: binary_log_loss
            return -np.average(xlogy(y, p) + xlogy(1 - y, 1 - p), weights=sw, axis=0).sum()
        return -np.average(xlogy(y, p), weights=sw, axis=0).sum()
    if est.out_activation_ == "exp":
        return np.average(xlogy(y, y / p) - y + p, weights=sw, axis=0).sum()
    return 0.5 * np.average((y - p) ** 2, weights=sw, axis=0).mean()


def _numpy_backprop(est, theta, grad, X, Y, sw):
    """Mean data loss (scikit-learn's definition) of the batch and its gradient into grad."""
    acts, zs = _forward_np(est, theta, X)
    layers = est._layer_units
    views = _layer_views(theta, layers)
    gviews = _layer_views(grad, layers)
    loss = _sk_loss(est, Y, acts[-1], sw)
    n = X.shape[0] if sw is None else sw.sum()
    delta = acts[-1] - Y                        # canonical loss/link pairs: a - y
    emax = float(np.abs(delta).max()) if delta.size else 0.0
    if sw is not None:
        delta = delta * sw.reshape(-1, 1)
    code = A.CODES[_HIDDEN[est.activation]]
    for l in range(len(views) - 1, -1, -1):
        dW, db = gviews[l]
        a_prev = acts[l]
        g = a_prev.T @ delta                       # (n_in, n_out); sparse a_prev too
        dW[...] = np.asarray(g).T / n
        db[...] = delta.sum(axis=0) / n
        if l > 0:
            delta = (delta @ views[l][0]) * A.F_PRIME[code](zs[l - 1], acts[l])
    return float(loss), emax


# ---------------------------------------------------------------- the estimators
class _BaseMLP(BaseEstimator):
    """Shared fit logic: scikit-learn's BaseMultilayerPerceptron with nnjit doing the passes."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(numbers.Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(_HIDDEN))],
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

    def _ensure_net(self, dtype=None):
        """The nnjit.MLP for the current coefs_ (rebuilt when the architecture, dtype or
        backend changed), with coefs_ / intercepts_ copied into its parameter vector."""
        layers = [self.coefs_[0].shape[0]] + [W.shape[1] for W in self.coefs_]
        dtype = np.dtype(dtype if dtype is not None else self.coefs_[0].dtype)
        if dtype not in (np.float32, np.float64):
            dtype = np.dtype(np.float64)
        out = getattr(self, "out_activation_", "identity")
        output, loss = _OUTPUT.get(out, ("identity", "squared_error"))
        if output == "softmax" and layers[-1] < 2:     # hand-built one-unit "softmax": sklearn's math still holds
            output, loss = "sigmoid", "cross_entropy"
        net = getattr(self, "_net", None)
        key = (tuple(layers), _HIDDEN[self.activation], output, dtype.name, self.backend)
        if net is None or getattr(self, "_net_key", None) != key:
            net = MLP(layers, activation=_HIDDEN[self.activation], output=output, loss=loss,
                      backend=self.backend, dtype=dtype.name, seed=0)
            self._net, self._net_key = net, key
        self._layer_units = layers
        theta = np.empty(net._n_params, dtype)
        p = 0
        for W, b in zip(self.coefs_, self.intercepts_):
            W = np.asarray(W)
            theta[p:p + W.size] = W.T.ravel()
            p += W.size
            theta[p:p + b.size] = np.ravel(b)
            p += np.size(b)
        net._engine.set_params(theta)
        return net

    def _unpack_theta(self, theta=None):
        theta = self._net._engine.get_params() if theta is None else theta
        self.coefs_, self.intercepts_ = [], []
        for W, b in _layer_views(theta, self._layer_units):
            self.coefs_.append(np.ascontiguousarray(W.T))
            self.intercepts_.append(b.copy())

    def _sk_order(self):
        """Index maps between scikit-learn's packing (coefs_ raveled, then intercepts_) and
        nnjit's flat theta (W^(1) rows j, b^(1), W^(2), ...): theta = x[sk_of_theta]."""
        layers = self._layer_units
        n = sum(a * b + b for a, b in zip(layers[:-1], layers[1:]))
        sk_of_theta = np.empty(n, np.int64)
        n_w = sum(a * b for a, b in zip(layers[:-1], layers[1:]))
        p, cs, bs = 0, 0, n_w
        for n_in, n_out in zip(layers[:-1], layers[1:]):
            j, i = np.meshgrid(np.arange(n_out), np.arange(n_in), indexing="ij")
            sk_of_theta[p:p + n_in * n_out] = (cs + i * n_out + j).ravel()
            p += n_in * n_out
            cs += n_in * n_out
            sk_of_theta[p:p + n_out] = bs + np.arange(n_out)
            p += n_out
            bs += n_out
        theta_of_sk = np.empty_like(sk_of_theta)
        theta_of_sk[sk_of_theta] = np.arange(n)
        return sk_of_theta, theta_of_sk

    def _wslices(self):
        out, p = [], 0
        for n_in, n_out in zip(self._layer_units[:-1], self._layer_units[1:]):
            out.append(slice(p, p + n_in * n_out))
            p += n_in * n_out + n_out
        return out

    def _l2(self, theta, grad, n, wsl):
        """Add scikit-learn's L2 term: loss + alpha/2 sum ||W||^2 / n, grad_W + alpha W / n."""
        if self.alpha == 0:
            return 0.0
        sq = 0.0
        for s in wsl:
            w = theta[s]
            sq += float(np.dot(w, w))
            grad[s] += self.alpha * w / n
        return 0.5 * self.alpha * sq / n

    def _make_pass(self, net, X, Y, sw, cap, theta):
        if sp.issparse(X) or self.out_activation_ == "exp":
            return _NumpyPass(self, net, X, Y, sw, cap, theta)
        if self.backend == "cuda":
            return _SumsPass(net, X, Y, sw, cap)
        return _KernelPass(net, X, Y, sw, cap)

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
            factor = 2.0 if _HIDDEN[self.activation] == "sigmoid" else 6.0
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
        if sp.issparse(X) and self.backend == "cuda":
            raise ValueError("sparse X is not supported on the cuda backend (it would be "
                             "densified); use backend='loops' (sparse loop kernels) or pass "
                             "X.toarray()")
        X = X.astype(dtype, copy=False)
        if sp.issparse(X):
            X = X.tocsr()
        else:
            X = np.ascontiguousarray(X)
        n_samples, n_features = X.shape
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=dtype)
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
        net = self._ensure_net(dtype)
        Y = np.ascontiguousarray(y, dtype=dtype)
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
        mean loss + alpha/2 sum ||W||^2 / n and its gradient in the same packing. The fitted
        weights are set to ``packed``."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False,
                          dtype=(np.float64, np.float32))
        dtype = np.dtype(self.coefs_[0].dtype)
        Y = np.asarray(y, dtype=dtype)
        Y = Y.reshape(-1, 1) if Y.ndim == 1 else Y
        net = self._ensure_net(dtype)
        Xc = X.astype(dtype).tocsr() if sp.issparse(X) else np.ascontiguousarray(X, dtype=dtype)
        sw = None if sample_weight is None else _check_sample_weight(sample_weight, X, dtype=dtype)
        f = self._lbfgs_objective(net, Xc, Y, sw)
        out = f(np.asarray(packed, dtype=np.float64))
        self._unpack_theta()
        return out

    def _lbfgs_objective(self, net, X, Y, sw):
        n = X.shape[0]
        theta = _host_params(net)      # the cuda engine's theta lives on the device
        passer = self._make_pass(net, X, Y, sw, n, theta)
        order = np.arange(n, dtype=np.int64)
        sk_of_theta, theta_of_sk = self._sk_order()
        wsl = self._wslices()
        sw_sum = n if sw is None else float(sw.sum())

        def f(x):
            theta[...] = x[sk_of_theta]
            if self.backend == "cuda":
                net._engine.set_params(theta)
            with np.errstate(over="ignore", invalid="ignore"):
                total, _ = passer.run(order, 0, n, reuse=True)
            loss = total / sw_sum
            grad = passer.grad
            loss += self._l2(theta, grad, sw_sum, wsl)
            return loss, grad[theta_of_sk].astype(np.float64)
        return f

    def _fit_lbfgs(self, net, X, Y, sw):
        sk_of_theta, theta_of_sk = self._sk_order()
        x0 = net._engine.get_params()[theta_of_sk].astype(np.float64)
        iprint = 1 if self.verbose is True or self.verbose >= 1 else -1
        opt_res = scipy.optimize.minimize(
            self._lbfgs_objective(net, X, Y, sw), x0, method="L-BFGS-B", jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol,
                     **_get_additional_lbfgs_options_dict("iprint", iprint)})
        self.n_iter_ = _check_optimize_result("lbfgs", opt_res, self.max_iter)
        self.loss_ = opt_res.fun
        net._engine.set_params(opt_res.x[sk_of_theta].astype(net._engine.theta.dtype))

    # -- the stochastic solvers: scikit-learn's epoch loop, nnjit's passes
    def _new_optimizer(self, n_params, dtype):
        if self.solver == "sgd":
            return SGDOptimizer(n_params, dtype, self.learning_rate_init, self.learning_rate,
                                self.momentum, self.nesterovs_momentum, self.power_t)
        return AdamOptimizer(n_params, dtype, self.learning_rate_init, self.beta_1, self.beta_2,
                             self.epsilon)

    def _fit_stochastic(self, net, X, Y, y, sample_weight, incremental):
        theta = _host_params(net)      # the cuda engine's theta lives on the device
        opt = getattr(self, "optimizer_", None)
        if (not incremental or opt is None or opt.__class__ is not
                (SGDOptimizer if self.solver == "sgd" else AdamOptimizer)
                or len(getattr(opt, "velocities", getattr(opt, "ms", ()))) != theta.size):
            opt = self.optimizer_ = self._new_optimizer(theta.size, theta.dtype)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        for name, default in (("loss_curve_", []), ("no_improvement_count_", 0), ("t_", 0),
                              ("best_loss_", np.inf), ("validation_scores_", None),
                              ("best_validation_score_", None)):
            if not hasattr(self, name):
                setattr(self, name, default if not isinstance(default, list) else [])
        early_stopping = self.early_stopping
        if early_stopping:
            if self.validation_scores_ is None:
                self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
            stratify = y if (is_classifier(self) and self.n_outputs_ == 1) else None
            if sample_weight is None:
                X_train, X_val, y_train, y_val = train_test_split(
                    X, Y, random_state=self._random_state, test_size=self.validation_fraction,
                    stratify=stratify)
                sw_train = sw_val = None
            else:
                X_train, X_val, y_train, y_val, sw_train, sw_val = train_test_split(
                    X, Y, sample_weight, random_state=self._random_state,
                    test_size=self.validation_fraction, stratify=stratify)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
            if is_classifier(self):
                y_val = self._label_binarizer.inverse_transform(y_val.astype(bool))
            if not sp.issparse(X_train):
                X_train = np.ascontiguousarray(X_train)
            y_train = np.ascontiguousarray(y_train)
            best_theta = theta.copy()
        else:
            X_train, y_train, sw_train = X, Y, sample_weight
            X_val = y_val = sw_val = None
        n_samples = X_train.shape[0]
        sample_idx = np.arange(n_samples, dtype=int)
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        passer = self._make_pass(net, X_train, y_train, sw_train, batch_size, theta)
        compiled = isinstance(passer, _KernelPass) and self.backend == "loops"
        if (sp.issparse(X_train) and self.backend == "loops" and self.out_activation_ != "exp"
                and len(self._layer_units) >= 3):       # nnjit.sparse: no densifying
            passer = _SparsePass(net, X_train, y_train, sw_train, batch_size, opt)
            compiled = True
        wsl = self._wslices()
        bar = None
        if self.progress:
            try:
                from tqdm.auto import tqdm
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError("progress=True needs tqdm: pip install 'nnjit[progress]'") from e
            bar = tqdm(total=1 if incremental else self.max_iter, desc="fit", unit="epoch", leave=False)
        try:
            self.n_iter_ = 0
            for it in range(self.max_iter):
                if self.shuffle:
                    sample_idx = shuffle(sample_idx, random_state=self._random_state)
                order = sample_idx.astype(np.int64, copy=False)
                accumulated_loss, emax = 0.0, 0.0
                with np.errstate(over="ignore", invalid="ignore"):
                    if compiled:                    # the whole epoch in one compiled call
                        accumulated_loss, emax = self._compiled_epoch(passer, opt, order, batch_size)
                    for sl in ([] if compiled else gen_batches(n_samples, batch_size)):
                        mb = sl.stop - sl.start
                        total, e = passer.run(order, sl.start, mb)
                        emax = max(emax, e)
                        grad = passer.grad
                        sw_sum = mb if sw_train is None else float(sw_train[order[sl]].sum())
                        l2 = self._l2(theta, grad, sw_sum, wsl)
                        accumulated_loss += (total / sw_sum + l2) * mb
                        opt.update_params(theta, grad)
                        if self.backend == "cuda":
                            net._engine.set_params(theta)
                self.n_iter_ += 1
                self.loss_ = accumulated_loss / X_train.shape[0]
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                if early_stopping:
                    val_score = self._score_theta(X_val, y_val, sw_val)
                    self.validation_scores_.append(val_score)
                    if self.verbose:
                        print("Validation score: %f" % self.validation_scores_[-1])
                    if val_score < self.best_validation_score_ + self.tol:
                        self.no_improvement_count_ += 1
                    else:
                        self.no_improvement_count_ = 0
                    if val_score > self.best_validation_score_:
                        self.best_validation_score_ = val_score
                        best_theta[...] = theta
                else:
                    if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                        self.no_improvement_count_ += 1
                    else:
                        self.no_improvement_count_ = 0
                    if self.loss_curve_[-1] < self.best_loss_:
                        self.best_loss_ = self.loss_curve_[-1]
                opt.iteration_ends(self.t_)
                if bar is not None:
                    bar.set_postfix(loss=f"{self.loss_:.4g}")
                    bar.update(1)
                stop = False
                if self.no_improvement_count_ > self.n_iter_no_change:
                    if early_stopping:
                        msg = ("Validation score did not improve more than tol=%f for %d "
                               "consecutive epochs." % (self.tol, self.n_iter_no_change))
                    else:
                        msg = ("Training loss did not improve more than tol=%f for %d "
                               "consecutive epochs." % (self.tol, self.n_iter_no_change))
                    if opt.trigger_stopping(msg, self.verbose):
                        stop = True
                    else:
                        self.no_improvement_count_ = 0
                if self.error_threshold is not None and emax < self.error_threshold:
                    stop = True
                if self.callbacks:
                    info = {"loss": self.loss_curve_, "val_score": self.validation_scores_}
                    if any([bool(cb(self, self.n_iter_ - 1, info)) for cb in self.callbacks]):
                        stop = True
                if stop or incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the "
                                  "optimization hasn't converged yet." % self.max_iter,
                                  ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        finally:
            if bar is not None:
                bar.close()
        if early_stopping:
            theta[...] = best_theta
        net._engine.set_params(theta)

    def _compiled_epoch(self, passer, opt, order, batch_size):
        """One epoch in nnjit.sklearn_loops.train_epoch (nnjit.sparse.train_epoch for sparse X);
        returns (sum of batch loss x mb, max |a - y|)."""
        from . import rules
        from . import sklearn_loops as K
        if isinstance(opt, AdamOptimizer):
            rule, s1, s2, t = K.ADAM, opt.ms, opt.vs, opt.t
            hyper = rules.hyper(opt.learning_rate_init, 0.0, (opt.beta_1, opt.beta_2), opt.epsilon,
                                float(self.alpha), 0.0, "sklearn")
        else:
            rule, s1, s2, t = (K.NESTEROV if opt.nesterov else K.SGD), opt.velocities, opt._tmp, 0
            hyper = rules.hyper(opt.learning_rate, opt.momentum, (0.0, 0.0), 1.0,
                                float(self.alpha), 0.0, "sklearn")
        if isinstance(passer, _SparsePass):
            total, emax, t = passer.epoch(order, int(batch_size), rule, hyper, int(t))
        else:
            total, emax, t = K.train_epoch(
                passer.e.theta, s1, s2, passer.grad, passer.shape, passer.bufs, passer.X,
                passer.Y, passer.S, order, int(batch_size), rule, hyper, int(t),
                passer.loss_code, float(passer.loss_scale), config.PARALLEL_MIN_SAMPLES,
                config.PARALLEL_MIN_WORK)
        if rule == K.ADAM:
            opt.t = int(t)
            opt.learning_rate = (opt.learning_rate_init * np.sqrt(1 - opt.beta_2 ** opt.t)
                                 / (1 - opt.beta_1 ** opt.t))
        return float(total), float(emax)

    # -- prediction
    def _forward_theta(self, X):
        """Output activations for validated X from the current parameter vector."""
        net = self._net
        if sp.issparse(X) or self.out_activation_ == "exp":
            Xc = X.astype(net._engine.theta.dtype) if sp.issparse(X) else np.asarray(X, net._engine.theta.dtype)
            return _forward_np(self, net._engine.get_params(), Xc)[0][-1]
        Xc = np.ascontiguousarray(X, dtype=net._engine.theta.dtype)
        if Xc.shape[0] == 0:
            return np.zeros((0, self.n_outputs_), Xc.dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            return net._engine.forward(Xc)

    def _forward_pass_fast(self, X, check_input=True):
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        self._ensure_net()
        return self._forward_theta(X)

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

    def _check_solver(self):
        if self.solver not in _STOCHASTIC_SOLVERS:
            raise AttributeError("partial_fit is only available for stochastic optimizers. "
                                 "%s is not stochastic." % self.solver)
        return True

    @property
    def net_(self):
        """The fitted network as an :class:`nnjit.MLP` (``net_.save(path)``, ``net_.weights``
        in the lecture's W[j, i] layout); not available for the Poisson loss."""
        check_is_fitted(self, "coefs_")
        if getattr(self, "out_activation_", None) == "exp":
            raise AttributeError("net_ is not available for loss='poisson' (exponential output)")
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
        state.pop("_net", None)            # rebuilt from coefs_ on demand
        state.pop("_net_key", None)
        return state

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

    @available_if(lambda est: est._check_solver())
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

    _parameter_constraints: dict = {**_BaseMLP._parameter_constraints,
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

    @available_if(lambda est: est._check_solver())
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y) from the current state (scikit-learn's ``partial_fit``)."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)
