"""scikit-learn estimators around :class:`nnjit.MLP`: ``MLPClassifier`` and ``MLPRegressor``.

What it is for: dropping nnjit into Pipeline, GridSearchCV, cross_val_score and the rest of
scikit-learn. The estimators follow its conventions (``__init__`` only stores, ``fit`` returns
self, learned state ends in ``_``, all randomness through ``random_state``) and pass
``sklearn.utils.estimator_checks``. What it is not for: the training itself, which is
:meth:`nnjit.MLP.fit` (the fitted network is ``net_``). Needs the ``sklearn`` extra; nnjit's
core never imports scikit-learn.

Differences from ``sklearn.neural_network``: the optimizer is SGD with classical momentum
(``learning_rate``, ``momentum``), the lecture's ``error_threshold`` criterion is available,
and ``partial_fit`` and ``warm_start`` keep the momentum velocities between calls (scikit-learn
resets its optimizer state there), so ``partial_fit`` called n times trains exactly like
``fit`` with ``max_iter=n``.
"""
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from .model import MLP

__all__ = ["MLPClassifier", "MLPRegressor"]


class _BaseMLP(BaseEstimator):
    """Shared fit/partial_fit logic; subclasses say how targets map onto the output layer."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, output=None, init="xavier",
                 backend="loops", dtype="float64", batch_size=32, learning_rate=0.001,
                 momentum=0.9, max_iter=200, shuffle=True, tol=1e-4, n_iter_no_change=10,
                 early_stopping=False, validation_fraction=0.1, error_threshold=None,
                 random_state=None, warm_start=False, verbose=False, callbacks=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.output = output
        self.init = init
        self.backend = backend
        self.dtype = dtype
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.error_threshold = error_threshold
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.callbacks = callbacks

    # -- learned state read from the network, in scikit-learn's layout
    @property
    def coefs_(self):
        """Per layer l, W^(l).T of shape (N_{l-1}, N_l) -- scikit-learn's (n_in, n_out) layout,
        the transpose of the lecture's W[j, i] that ``net_.weights`` returns (copies)."""
        check_is_fitted(self, "net_")
        return [W.T for W in self.net_.weights]

    @property
    def intercepts_(self):
        """Per layer l, b^(l) of shape (N_l,) (copies)."""
        check_is_fitted(self, "net_")
        return self.net_.biases

    @property
    def loss_curve_(self):
        """Mean training loss per epoch, over all fit/partial_fit calls since the network was made."""
        check_is_fitted(self, "net_")
        return list(self.net_.history_["loss"])

    @property
    def validation_scores_(self):
        """Validation score per epoch when early_stopping is on (accuracy or R^2)."""
        check_is_fitted(self, "net_")
        return list(self.net_.history_["val_score"])

    @property
    def n_iter_(self):
        """Epochs trained since the network was made (fit resets it unless warm_start)."""
        check_is_fitted(self, "net_")
        return self.net_.n_epochs_

    @property
    def n_layers_(self):
        check_is_fitted(self, "net_")
        return len(self.net_.layers)

    @property
    def n_outputs_(self):
        check_is_fitted(self, "net_")
        return self.net_.layers[-1]

    # -- fitting
    def _hidden(self):
        h = self.hidden_layer_sizes
        h = [h] if isinstance(h, numbers.Integral) else list(h)
        for n in h:
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
                raise ValueError(f"hidden_layer_sizes must hold positive integers, got {self.hidden_layer_sizes!r}")
        return [int(n) for n in h]

    def _check_settings(self):
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (isinstance(self.validation_fraction, numbers.Real) and 0 < self.validation_fraction < 1):
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        if self.batch_size != "auto" and (isinstance(self.batch_size, bool)
                                          or not isinstance(self.batch_size, numbers.Integral)
                                          or self.batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or 'auto', got {self.batch_size!r}")

    def _new_net(self, n_features, n_outputs, output, loss=None):
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        return MLP([n_features] + self._hidden() + [n_outputs], activation=self.activation,
                   output=output, loss=loss, init=self.init, backend=self.backend,
                   dtype=self.dtype, seed=seed)

    def _train(self, X, y, epochs, incremental):
        n = X.shape[0]
        batch = min(200, n) if self.batch_size == "auto" else self.batch_size
        kw = dict(lr=self.learning_rate, momentum=self.momentum, batch_size=batch,
                  shuffle=self.shuffle, error_threshold=self.error_threshold,
                  progress=self.verbose, callbacks=self.callbacks)
        tol = None if incremental or self.tol is None else self.tol
        if self.early_stopping and not incremental:
            stratify = y if self._stratify(y) else None
            X, Xv, y, yv = train_test_split(X, y, test_size=self.validation_fraction,
                                            random_state=self.net_.seed, stratify=stratify)
            kw["validation_data"] = (Xv, yv)
            tol = 0.0 if tol is None else tol
        before = self.net_.n_epochs_
        self.net_.fit(X, y, epochs=epochs, tol=tol, n_iter_no_change=self.n_iter_no_change, **kw)
        if not incremental and tol is not None and self.net_.n_epochs_ - before == epochs:
            warnings.warn(f"{type(self).__name__} reached max_iter={epochs} epochs before the "
                          "loss stopped improving by tol; the model may not have converged",
                          ConvergenceWarning)
        return self

    def _stratify(self, y):
        return False

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.backend == "cuda"
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multilayer perceptron classifier trained by the lecture's backpropagation (nnjit).

    Two classes use one sigmoid output unit, more classes a softmax layer, both with
    cross-entropy loss. Parameters are those of :class:`nnjit.MLP` and :meth:`nnjit.MLP.fit`:

    hidden_layer_sizes : tuple of int, default (100,)
    activation : {"relu", "tanh", "sigmoid", "gelu", "identity"}, default "relu"
    output : {None, "softmax", "sigmoid"}, default None
        None: one sigmoid unit for 2 classes, softmax for more; "softmax" also for 2 classes
        (two output units).
    init : {"xavier", "he", "normal"}; backend : {"loops", "vectorised", "cuda"};
    dtype : {"float64", "float32"}
    batch_size : int or "auto" (min(200, n_samples)), default 32
    learning_rate : float, default 0.001 -- eta; momentum : float in [0, 1), default 0.9 -- mu
    max_iter : int, default 200 -- epochs per ``fit``
    shuffle : bool; tol : float or None; n_iter_no_change : int
        Stop when the training loss (validation loss with early_stopping) has not improved by
        tol for n_iter_no_change epochs; tol=None trains exactly max_iter epochs.
    early_stopping : bool; validation_fraction : float
        Hold out a stratified validation_fraction of the data and watch its loss. The model keeps
        its final weights (like Keras' EarlyStopping default, unlike scikit-learn's MLP which
        rolls back to the best epoch).
    error_threshold : float or None -- the lecture's criterion: stop once every |a - y| < it
    random_state : int, RandomState or None -- initial weights, shuffling, validation split
    warm_start : bool -- ``fit`` continues from the current weights *and velocities*
    verbose : bool -- tqdm progress bar; callbacks : list of cb(net, epoch, history)

    Attributes
    ----------
    net_ : nnjit.MLP, the fitted network (save it with ``net_.save(path)``)
    classes_, n_features_in_, coefs_ (scikit-learn layout: W.T per layer, (n_in, n_out)),
    intercepts_, loss_curve_, validation_scores_, n_iter_, n_layers_, n_outputs_
    """

    def fit(self, X, y):
        """Train for up to max_iter epochs (from scratch unless warm_start). Returns self."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y), continuing from the current weights and momentum velocities.
        ``classes`` (all labels) is required on the first call."""
        if not hasattr(self, "net_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        return self._fit(X, y, incremental=True, classes=classes)

    def _fit(self, X, y, incremental, classes=None):
        self._check_settings()
        fresh = not hasattr(self, "net_") or not (incremental or self.warm_start)
        X, y = validate_data(self, X, y, reset=fresh, dtype=(np.float64, np.float32))
        check_classification_targets(y)
        if fresh:
            labels = unique_labels(y) if classes is None else np.asarray(classes)
            labels = np.unique(labels)
            if len(labels) < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; "
                                 f"y has {len(labels)} class ({labels.tolist()})")
            self.classes_ = labels
            if self.output not in (None, "softmax", "sigmoid"):
                raise ValueError(f"MLPClassifier's output must be None, 'softmax' or 'sigmoid', "
                                 f"got {self.output!r}")
            if self.output == "sigmoid" and len(labels) > 2:
                raise ValueError(f"output='sigmoid' is for 2 classes; y has {len(labels)}")
            binary = len(labels) == 2 and self.output != "softmax"
            self.net_ = self._new_net(X.shape[1], 1 if binary else len(labels),
                                      "sigmoid" if binary else "softmax")
            self.net_.classes_ = self.classes_
        else:
            if classes is not None and not np.array_equal(np.unique(classes), self.classes_):
                raise ValueError(f"classes={list(classes)!r} differs from the classes of the first "
                                 f"call, {self.classes_.tolist()!r}")
            unseen = np.setdiff1d(unique_labels(y), self.classes_)
            if unseen.size:
                raise ValueError(f"y has labels not in classes_: {unseen[:5].tolist()}")
        return self._train(X, y, 1 if incremental else self.max_iter, incremental)

    def _stratify(self, y):
        return np.unique(y, return_counts=True)[1].min() >= 2

    def predict(self, X):
        """Predicted class labels (from classes_)."""
        check_is_fitted(self, "net_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return self.net_.predict(X)

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes), columns in the order of classes_."""
        check_is_fitted(self, "net_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return self.net_.predict_proba(X).astype(np.float64)

    def predict_log_proba(self, X):
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multilayer perceptron regressor trained by the lecture's backpropagation (nnjit).

    Squared-error loss on an identity output layer (``output`` may also be "tanh", "relu" or
    "gelu"); one output unit per target column.
    The other parameters and attributes are those of :class:`MLPClassifier` (without
    classes_). Predictions are float64 whatever ``dtype`` the network computes in.
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, output="identity",
                 init="xavier", backend="loops", dtype="float64", batch_size=32,
                 learning_rate=0.001, momentum=0.9, max_iter=200, shuffle=True, tol=1e-4,
                 n_iter_no_change=10, early_stopping=False, validation_fraction=0.1,
                 error_threshold=None, random_state=None, warm_start=False, verbose=False,
                 callbacks=None):
        super().__init__(hidden_layer_sizes, activation, output=output, init=init, backend=backend,
                         dtype=dtype, batch_size=batch_size, learning_rate=learning_rate,
                         momentum=momentum, max_iter=max_iter, shuffle=shuffle, tol=tol,
                         n_iter_no_change=n_iter_no_change, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, error_threshold=error_threshold,
                         random_state=random_state, warm_start=warm_start, verbose=verbose,
                         callbacks=callbacks)

    def fit(self, X, y):
        """Train for up to max_iter epochs (from scratch unless warm_start). Returns self."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y):
        """One epoch over (X, y), continuing from the current weights and momentum velocities."""
        return self._fit(X, y, incremental=True)

    def _fit(self, X, y, incremental):
        self._check_settings()
        if self.output not in ("identity", "tanh", "relu", "gelu"):
            raise ValueError(f"MLPRegressor's output must be 'identity', 'tanh', 'relu' or 'gelu', "
                             f"got {self.output!r} (for probabilities use MLPClassifier)")
        fresh = not hasattr(self, "net_") or not (incremental or self.warm_start)
        X, y = validate_data(self, X, y, reset=fresh, multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32))
        n_out = 1 if y.ndim == 1 else y.shape[1]
        if fresh:
            self.net_ = self._new_net(X.shape[1], n_out, self.output, "squared_error")
        elif n_out != self.net_.layers[-1]:
            raise ValueError(f"y has {n_out} target columns but the model was fitted on "
                             f"{self.net_.layers[-1]}")
        return self._train(X, y, 1 if incremental else self.max_iter, incremental)

    def predict(self, X):
        """Predictions, (n_samples,) for one target, else (n_samples, n_targets); float64."""
        check_is_fitted(self, "net_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        a = self.net_.forward(X).astype(np.float64)
        return a[:, 0] if a.shape[1] == 1 else a

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.regressor_tags.poor_score = False
        return tags
