"""The scikit-learn estimators: the estimator checks, model selection, partial_fit/warm_start."""
import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from nnjit.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# Small networks and few epochs: the checks fit hundreds of times on tiny data.
CHECKED = [MLPClassifier(hidden_layer_sizes=(16,), max_iter=100, learning_rate_init=0.02, random_state=0),
           MLPRegressor(hidden_layer_sizes=(16,), max_iter=200, learning_rate_init=0.02, random_state=0)]

EXPECTED_FAILED = {}


@parametrize_with_checks(CHECKED, expected_failed_checks=lambda est: EXPECTED_FAILED.get(type(est).__name__, {}))
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------- beyond the checks
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return X, y


def _clf(**kw):
    kw = {"hidden_layer_sizes": (8,), "max_iter": 30, "solver": "sgd", "learning_rate_init": 0.05,
          "random_state": 0, "tol": 0.0, "n_iter_no_change": 1000, **kw}
    return MLPClassifier(**kw)


def test_pipeline_grid_search_and_cross_val_score(iris):
    X, y = iris
    pipe = make_pipeline(StandardScaler(), _clf())
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8
    grid = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(3,), (8,)],
                               "mlpclassifier__learning_rate_init": [0.0001, 0.05]}, cv=3)
    grid.fit(X, y)
    assert grid.best_params_["mlpclassifier__learning_rate_init"] == 0.05
    assert grid.best_score_ > 0.8
    assert grid.predict(X[:5]).shape == (5,)


def test_learned_attributes_use_sklearn_layout(iris):
    X, y = iris
    clf = _clf(hidden_layer_sizes=(7, 5), activation="relu").fit(X, y)
    assert [W.shape for W in clf.coefs_] == [(4, 7), (7, 5), (5, 3)]
    assert [b.shape for b in clf.intercepts_] == [(7,), (5,), (3,)]
    np.testing.assert_array_equal(clf.coefs_[0], clf.net_.weights[0].T)
    # a forward pass by hand in scikit-learn's layout reproduces predict_proba
    a = X
    for l, (W, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        z = a @ W + b
        a = np.maximum(z, 0) if l < 2 else np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(a / a.sum(1, keepdims=True), clf.predict_proba(X), rtol=1e-10)
    assert clf.n_iter_ == 30 and len(clf.loss_curve_) == 30 and clf.t_ == 30 * 150
    assert clf.n_features_in_ == 4 and clf.n_layers_ == 4 and clf.n_outputs_ == 3
    assert clf.out_activation_ == "softmax" and clf.loss_ == clf.loss_curve_[-1]
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]


def test_string_labels_binary_and_multilabel(iris):
    X, y = iris
    names = np.array(["setosa", "versicolor", "virginica"], dtype=object)[y]
    clf = _clf().fit(X, names)
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    assert set(clf.predict(X)) <= set(clf.classes_)
    binary = _clf().fit(X[50:], names[50:])
    assert binary.net_.layers[-1] == 1 and binary.out_activation_ == "logistic"
    proba = binary.predict_proba(X[50:])
    assert proba.shape == (100, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(binary.classes_[proba.argmax(1)], binary.predict(X[50:]))
    Y = np.column_stack([y == 0, y == 1, y >= 1]).astype(int)     # multilabel: 3 sigmoid units
    ml = _clf(max_iter=60).fit(StandardScaler().fit_transform(X), Y)
    assert ml.out_activation_ == "logistic" and ml.predict(X).shape == (150, 3)
    assert ml.score(StandardScaler().fit_transform(X), Y) > 0.8


def test_single_class_target_predicts_that_class(iris):
    X, _ = iris
    clf = _clf(max_iter=5).fit(X, np.full(150, "only"))
    assert list(clf.classes_) == ["only"] and set(clf.predict(X)) == {"only"}


def test_partial_fit_keeps_the_optimizer_state(iris):
    """n partial_fit calls train exactly like fit(max_iter=n) with shuffle=False and
    momentum: the velocity carries over between calls, as in scikit-learn."""
    X, y = iris
    inc = _clf(shuffle=False)
    for _ in range(3):
        inc.partial_fit(X, y, classes=[0, 1, 2])
    full = _clf(max_iter=3, shuffle=False).fit(X, y)
    for a, b in zip(inc.coefs_ + inc.intercepts_, full.coefs_ + full.intercepts_):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    assert inc.t_ == 3 * 150 and np.abs(inc.optimizer_.velocities).max() > 0


def test_partial_fit_needs_classes_and_rejects_unknown_labels(iris):
    X, y = iris
    with pytest.raises(ValueError, match="classes must be passed"):
        _clf().partial_fit(X, y)
    clf = _clf().partial_fit(X[:100], y[:100], classes=[0, 1, 2])   # first batch lacks class 2
    assert clf.net_.layers[-1] == 3
    with pytest.raises(ValueError, match="classes not in"):
        clf.partial_fit(X, y + 1)
    with pytest.raises(AttributeError, match="partial_fit"):
        _clf(solver="lbfgs").partial_fit(X, y, classes=[0, 1, 2])


def test_warm_start_continues_and_fit_restarts(iris):
    X, y = iris
    warm = _clf(max_iter=2, warm_start=True).fit(X, y)
    before = [W.copy() for W in warm.coefs_]
    warm.fit(X, y)
    assert warm.n_iter_ == 2 and len(warm.loss_curve_) == 4      # n_iter_ counts this fit
    assert not np.array_equal(before[0], warm.coefs_[0])
    cold = _clf(max_iter=2).fit(X, y).fit(X, y)
    np.testing.assert_array_equal(cold.coefs_[0], _clf(max_iter=2).fit(X, y).coefs_[0])


def test_early_stopping_restores_the_best_weights_and_tol_stops(iris):
    X, y = iris
    Xs = StandardScaler().fit_transform(X)
    es = _clf(max_iter=500, early_stopping=True, tol=1e-3, n_iter_no_change=3).fit(Xs, y)
    assert es.n_iter_ < 500
    assert len(es.validation_scores_) == es.n_iter_ and es.best_validation_score_ == max(es.validation_scores_)
    assert es.best_loss_ is None
    thr = _clf(max_iter=500, error_threshold=0.9).fit(Xs, y)
    assert thr.n_iter_ < 500
    seen = []
    cb = _clf(max_iter=50, callbacks=[lambda est, epoch, info: seen.append(epoch) or epoch == 4]).fit(Xs, y)
    assert seen == [0, 1, 2, 3, 4] and cb.n_iter_ == 5


def test_regressor_multi_output_and_score():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    Y = np.column_stack([X @ [1.0, -2.0, 0.5], np.tanh(X[:, 0])])
    reg = MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, learning_rate_init=0.01,
                       random_state=0).fit(X, Y)
    assert reg.predict(X).shape == (120, 2) and reg.predict(X).dtype == np.float64
    assert reg.score(X, Y) > 0.9
    one = MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, learning_rate_init=0.01,
                       random_state=0).fit(X, Y[:, 0])
    assert one.predict(X).shape == (120,)
    f32 = MLPRegressor(hidden_layer_sizes=(16,), max_iter=5, random_state=0).fit(X.astype(np.float32), Y)
    assert f32.coefs_[0].dtype == np.float32 and f32.predict(X.astype(np.float32)).dtype == np.float32
    forced = MLPRegressor(hidden_layer_sizes=(16,), max_iter=5, random_state=0, dtype="float32").fit(X, Y)
    assert forced.coefs_[0].dtype == np.float32


def test_fitted_estimator_pickles_and_its_net_saves(iris, tmp_path):
    import pickle
    X, y = iris
    clf = _clf().fit(X, y)
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
    from nnjit import MLP
    clf.net_.save(tmp_path / "iris.npz")
    net = MLP.load(tmp_path / "iris.npz")
    np.testing.assert_array_equal(net.predict(X), clf.predict(X))


def test_bad_hyperparameters_raise_at_fit(iris):
    X, y = iris
    for kw, msg in [({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes"), ({"max_iter": 0}, "max_iter"),
                    ({"validation_fraction": 1.5}, "validation_fraction"),
                    ({"batch_size": "big"}, "batch_size"), ({"activation": "swish"}, "activation"),
                    ({"momentum": 1.5}, "momentum"), ({"solver": "rmsprop"}, "solver"),
                    ({"backend": "tpu"}, "backend"), ({"learning_rate": 0.1}, "learning_rate")]:
        with pytest.raises(ValueError, match=msg):
            _clf(**kw).fit(X, y)


# ---------------------------------------------------------------- dtypes (issue 26)
import warnings  # noqa: E402

import scipy.sparse as sp  # noqa: E402
from sklearn import neural_network as sk  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402


def test_lbfgs_on_float32_works_in_float64_like_scikit_learn():
    """scikit-learn's L-BFGS optimises SciPy's float64 vector and leaves coefs_ in it; float32 X
    only rounds the initial weights. On diabetes nnjit's float32 fit tracks scikit-learn's as
    closely as scikit-learn's own float64 fit does (2.5x further with float32 passes), and after
    100 iterations its R^2 lies within scikit-learn's float32-vs-float64 spread."""
    from sklearn.datasets import load_diabetes
    X, y = load_diabetes(return_X_y=True)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    y = (y - y.mean()) / y.std()
    p = dict(hidden_layer_sizes=(32,), solver="lbfgs", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref, ref64, ours = (E(max_iter=30, **p).fit(Z, y) for E, Z in (
            (sk.MLPRegressor, X), (sk.MLPRegressor, X.astype(np.float64)), (MLPRegressor, X)))
        assert ref.coefs_[0].dtype == np.float64
        assert ours.coefs_[0].dtype == ours.intercepts_[0].dtype == np.float64

        def gap(m):
            return max(np.abs(u - v).max() for u, v in zip(ref.coefs_, m.coefs_))
        assert gap(ours) <= 1.5 * gap(ref64)
        r2 = [E(max_iter=100, **p).fit(Z, y).score(Z, y) for E, Z in (
            (sk.MLPRegressor, X), (sk.MLPRegressor, X.astype(np.float64)), (MLPRegressor, X))]
        assert min(r2[:2]) - 0.005 <= r2[2] <= max(r2[:2]) + 0.005, r2
        forced = MLPRegressor(max_iter=5, dtype="float32", **p).fit(X, y)     # as asked
    assert forced.coefs_[0].dtype == np.float32


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
@pytest.mark.parametrize("fit_dtype", [np.float32, np.float64])
def test_output_dtypes_are_scikit_learns(iris, solver, fit_dtype):
    """Outputs have the dtype of X @ coefs_, as scikit-learn's: float32 weights predict float32
    for float32 X and float64 for float64, integer or list X (computed in float64)."""
    X, y = iris
    inputs = [X.astype(np.float32), X, X.astype(np.int64), X.astype(np.int16), X.tolist(),
              sp.csr_matrix(X.astype(np.float32)), sp.csr_matrix(X)]
    p = dict(hidden_layer_sizes=(5,), solver=solver, max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for S, N, target in ((sk.MLPClassifier, MLPClassifier, y),
                             (sk.MLPClassifier, MLPClassifier, y > 0),
                             (sk.MLPRegressor, MLPRegressor, y.astype(float))):
            a, b = S(**p).fit(X.astype(fit_dtype), target), N(**p).fit(X.astype(fit_dtype), target)
            assert b.coefs_[0].dtype == a.coefs_[0].dtype
            methods = ["predict"] + (["predict_proba", "predict_log_proba"]
                                     if S is sk.MLPClassifier else [])
            for Xi in inputs:
                for m in methods:
                    assert getattr(b, m)(Xi).dtype == getattr(a, m)(Xi).dtype, (m, type(Xi))
    if fit_dtype is np.float32 and solver == "adam":   # float64 X: a float64 pass over the weights
        W, c = b.coefs_[0].astype(np.float64), b.intercepts_[0].astype(np.float64)
        by_hand = np.maximum(X @ W + c, 0) @ b.coefs_[1].astype(np.float64) + b.intercepts_[1]
        np.testing.assert_allclose(b.predict(X), by_hand.ravel(), rtol=1e-12)


def test_partial_fit_keeps_its_state_when_the_dtype_changes(iris):
    X, y = iris
    inc = _clf(solver="adam")
    inc.partial_fit(X.astype(np.float32), y, classes=[0, 1, 2])
    inc.predict_proba(X)            # a float64 pass does not touch the float32 training state
    assert inc.optimizer_.t == 1 and np.abs(inc.optimizer_.ms).max() > 0
    inc.partial_fit(X, y)
    assert inc.optimizer_.t == 2
