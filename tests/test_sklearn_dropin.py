"""nnjit.sklearn as a drop-in for sklearn.neural_network: from the same random_state both
train the same trajectory (same initial weights, shuffles, updates), to 1e-9 in float64."""
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
import scipy.sparse as sp  # noqa: E402
from sklearn import neural_network as sk  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from nnjit import sklearn as nn  # noqa: E402


def _data(kind, n=67, d=9):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, d))
    if kind == "multiclass":
        return X, (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5)
    if kind == "binary":
        return X, np.where(X[:, 0] - X[:, 3] > 0, "yes", "no")
    if kind == "multilabel":
        return X, np.column_stack([X[:, 0] > 0, X[:, 1] > 0, X[:, 0] + X[:, 1] > 1]).astype(int)
    return X, np.column_stack([X[:, 0] - 2 * X[:, 1], np.sin(X[:, 2])]) if kind == "multioutput" else X @ rng.normal(size=d)


def _pair(kind, **params):
    X, y = _data(kind)
    S, N = (sk.MLPRegressor, nn.MLPRegressor) if kind.startswith(("regression", "multioutput")) else (sk.MLPClassifier, nn.MLPClassifier)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return S(**params).fit(X, y), N(**params).fit(X, y), X


def _assert_same(a, b, tol=1e-9):
    assert len(a.coefs_) == len(b.coefs_)
    for u, v in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        assert u.shape == v.shape and v.dtype == u.dtype
        np.testing.assert_allclose(v, u, rtol=0, atol=tol)
    assert a.n_iter_ == b.n_iter_ and a.t_ == b.t_
    np.testing.assert_allclose(b.loss_, a.loss_, rtol=1e-9)
    if hasattr(a, "loss_curve_"):
        np.testing.assert_allclose(b.loss_curve_, a.loss_curve_, rtol=1e-9)


SOLVERS = [dict(solver="sgd", nesterovs_momentum=False, learning_rate_init=0.05),
           dict(solver="sgd", nesterovs_momentum=True, learning_rate_init=0.05),
           dict(solver="sgd", momentum=0.0, learning_rate="invscaling", learning_rate_init=0.2),
           dict(solver="adam", learning_rate_init=0.01),
           dict(solver="lbfgs")]


@pytest.mark.parametrize("opt", SOLVERS, ids=lambda o: "-".join(str(v) for v in o.values()))
@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regression", "multioutput"])
def test_same_trajectory_as_scikit_learn(opt, kind):
    a, b, X = _pair(kind, hidden_layer_sizes=(7, 5), activation="tanh", alpha=0.01, batch_size=16,
                    max_iter=12, random_state=1, **opt)
    _assert_same(a, b)
    if kind.startswith(("regression", "multioutput")):
        np.testing.assert_allclose(b.predict(X), a.predict(X), rtol=0, atol=1e-9)
    else:
        np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), rtol=0, atol=1e-9)
        np.testing.assert_array_equal(b.predict(X), a.predict(X))


@pytest.mark.parametrize("activation", ["identity", "logistic", "relu"])
def test_same_trajectory_every_activation_early_stopping_and_adaptive(activation):
    a, b, _ = _pair("multiclass", hidden_layer_sizes=(6,), activation=activation, solver="sgd",
                    learning_rate="adaptive", early_stopping=True, validation_fraction=0.2,
                    n_iter_no_change=2, tol=0.05, alpha=0.001, max_iter=40, random_state=0,
                    batch_size=10)
    _assert_same(a, b)
    assert b.validation_scores_ == a.validation_scores_
    assert b.best_validation_score_ == a.best_validation_score_


def test_sparse_sample_weight_and_poisson_match_scikit_learn():
    X, y = _data("regression")
    Xs = sp.random(67, 40, density=0.1, format="csr", random_state=0)
    sw = np.random.default_rng(0).uniform(0.2, 3.0, 67)
    p = dict(hidden_layer_sizes=(5,), solver="adam", learning_rate_init=0.01, alpha=0.01,
             max_iter=6, random_state=0, batch_size=20)
    for fitargs in [(Xs, y), (X, y, sw), (Xs, y, sw)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            _assert_same(sk.MLPRegressor(**p).fit(*fitargs), nn.MLPRegressor(**p).fit(*fitargs))
    counts = np.random.default_rng(1).poisson(np.exp(X[:, 0] / 3))
    for solver in ("lbfgs", "adam"):
        q = dict(p, solver=solver, loss="poisson")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            a, b = sk.MLPRegressor(**q).fit(X, counts), nn.MLPRegressor(**q).fit(X, counts)
        _assert_same(a, b, tol=1e-8)


def test_loss_grad_lbfgs_equals_scikit_learns_and_finite_differences():
    """The public loss_grad_lbfgs is scikit-learn's _loss_grad_lbfgs (same packing), and its
    gradient is the derivative of its loss (central differences, float64)."""
    X, y = _data("multiclass", n=11, d=5)
    p = dict(hidden_layer_sizes=(3,), activation="tanh", solver="lbfgs", alpha=0.1, max_iter=1,
             random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a, b = sk.MLPClassifier(**p).fit(X, y), nn.MLPClassifier(**p).fit(X, y)
    Y = a._label_binarizer.transform(y).astype(float)
    theta = np.hstack([w.ravel() for w in a.coefs_ + a.intercepts_])
    layers = [5, 3, 3]
    acts = [X] + [np.empty((11, n)) for n in layers[1:]]
    ref = a._loss_grad_lbfgs(theta, X, Y, None, acts, [None, None],
                             [np.empty((i, o)) for i, o in zip(layers, layers[1:])],
                             [np.empty(o) for o in layers[1:]])
    loss, grad = b.loss_grad_lbfgs(theta, X, Y)
    np.testing.assert_allclose(loss, ref[0], rtol=1e-12)
    np.testing.assert_allclose(grad, ref[1], rtol=0, atol=1e-12)
    eps = 1e-6
    num = [(b.loss_grad_lbfgs(theta + eps * e, X, Y)[0] - b.loss_grad_lbfgs(theta - eps * e, X, Y)[0]) / (2 * eps)
           for e in np.eye(theta.size)]
    np.testing.assert_allclose(grad, num, rtol=0, atol=1e-7)


@pytest.mark.parametrize("backend", ["vectorised", "loops"])
def test_backends_and_numpy_pass_agree(backend):
    """The kernel pass (loops: compiled epoch; vectorised: per batch), the sparse kernels
    (nnjit.loops.sparse) or SciPy's sparse products (vectorised) for CSR X, and sample weights all
    train the same model: with alpha=0, equal weights of 2 give the unweighted objective."""
    X, y = _data("multiclass")
    p = dict(hidden_layer_sizes=(7, 5), solver="adam", alpha=0.0, max_iter=5, batch_size=9,
             random_state=2, learning_rate_init=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        k = nn.MLPClassifier(backend=backend, **p).fit(X, y)
        w = nn.MLPClassifier(backend=backend, **p).fit(X, y, sample_weight=np.full(67, 2.0))
        s = nn.MLPClassifier(backend=backend, **p).fit(sp.csr_matrix(X), y)
    for u, v, t in zip(k.coefs_, w.coefs_, s.coefs_):
        np.testing.assert_allclose(v, u, rtol=0, atol=1e-9)
        np.testing.assert_allclose(t, u, rtol=0, atol=1e-9)


def test_verbose_prints_scikit_learns_lines(capsys):
    X, y = _data("binary")
    p = dict(hidden_layer_sizes=(4,), max_iter=3, random_state=0, verbose=True, solver="sgd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk.MLPClassifier(**p).fit(X, y)
        ref = capsys.readouterr().out
        nn.MLPClassifier(**p).fit(X, y)
        ours = capsys.readouterr().out
    assert ours == ref and ours.count("Iteration") == 3


def test_float32_in_float32_out_and_dtype_override():
    X, y = _data("regression")
    reg = nn.MLPRegressor(hidden_layer_sizes=(5,), max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(X.astype(np.float32), y)
        assert all(w.dtype == np.float32 for w in reg.coefs_ + reg.intercepts_)
        assert reg.predict(X.astype(np.float32)).dtype == np.float32
        reg.set_params(dtype="float64").fit(X.astype(np.float32), y)
    assert reg.coefs_[0].dtype == np.float64


def test_diverging_sgd_records_nan_score_or_raises():
    X, y = _data("regression")
    p = dict(hidden_layer_sizes=(20,), activation="identity", solver="sgd", learning_rate_init=5.0,
             max_iter=10, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        es = nn.MLPRegressor(early_stopping=True, **p).fit(X * 1e3, y)
        assert np.isnan(es.validation_scores_[-1]) and np.isfinite(es.coefs_[0]).all()
        with pytest.raises(ValueError, match="non-finite parameter weights"):
            nn.MLPRegressor(**p).fit(X * 1e3, y)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_sparse_kernels_match_scikit_learn_without_densifying(solver, monkeypatch):
    """CSR X through nnjit.loops.sparse (two hidden layers, odd sizes, sample weights, L2): the same
    trajectory as scikit-learn; X is never made dense (toarray is refused)."""
    rng = np.random.default_rng(4)
    X = sp.random(83, 301, density=0.02, format="csr", random_state=1)
    y = (X @ rng.normal(size=301) > 0).astype(int) + (X @ rng.normal(size=301) > 0.1)
    sw = rng.uniform(0.5, 2.0, 83)
    p = dict(hidden_layer_sizes=(7, 5), activation="tanh", solver=solver, alpha=0.01,
             batch_size=19, max_iter=4, random_state=0, learning_rate_init=0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = sk.MLPClassifier(**p).fit(X, y, sample_weight=sw)
        monkeypatch.setattr(sp.csr_matrix, "toarray", lambda *a, **k: pytest.fail("densified"))
        b = nn.MLPClassifier(**p).fit(X, y, sample_weight=sw)
    _assert_same(a, b, tol=1e-12)


def test_cuda_backend_trains_the_same_and_refuses_sparse():
    """backend="cuda" (Numba's simulator without a GPU): per batch through the engine's sums,
    the same trajectory as the loops backend; sparse X is refused with a clear error."""
    pytest.importorskip("numba.cuda")
    X, y = _data("multiclass", n=11, d=5)
    p = dict(hidden_layer_sizes=(3,), solver="adam", alpha=0.01, max_iter=2, batch_size=4,
             random_state=0, learning_rate_init=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        g = nn.MLPClassifier(backend="cuda", **p).fit(X, y)
        c = nn.MLPClassifier(backend="loops", **p).fit(X, y)
        sw = np.linspace(0.5, 2.0, 11)
        gw = nn.MLPClassifier(backend="cuda", **p).fit(X, y, sample_weight=sw)
        cw = nn.MLPClassifier(backend="loops", **p).fit(X, y, sample_weight=sw)
    for u, v in zip(g.coefs_ + g.intercepts_ + gw.coefs_, c.coefs_ + c.intercepts_ + cw.coefs_):
        np.testing.assert_allclose(u, v, rtol=0, atol=1e-9)
    np.testing.assert_allclose(gw.loss_curve_, cw.loss_curve_, rtol=1e-9)
    np.testing.assert_allclose(g.predict_proba(X), c.predict_proba(X), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="sparse X is not supported on the cuda backend"):
        nn.MLPClassifier(backend="cuda", **p).fit(sp.csr_matrix(X), y)


def test_grid_search_in_threads_equals_one_job():
    """GridSearchCV(n_jobs=2) under joblib's threading backend (the README's advice: nnjit's
    kernels release the GIL, and threads start in no time where a loky worker re-imports
    Python, NumPy and scikit-learn) trains every candidate exactly as n_jobs=1 does: two fits
    at once in one process share nothing but the compiled kernels."""
    import joblib
    from sklearn.model_selection import GridSearchCV
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 7))
    y = (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(int) + (X[:, 2] > 1)
    grid = {"hidden_layer_sizes": [(5,), (9,)], "activation": ["relu", "tanh"]}

    def search(n_jobs):
        g = GridSearchCV(nn.MLPClassifier(max_iter=15, random_state=0, batch_size=16), grid,
                         cv=3, n_jobs=n_jobs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            with joblib.parallel_backend("threading"):
                g.fit(X, y)
        return g
    one, two = search(1), search(2)
    for key in ("mean_test_score", "split0_test_score", "split2_test_score"):
        np.testing.assert_array_equal(one.cv_results_[key], two.cv_results_[key])
    for a, b in zip(one.best_estimator_.coefs_, two.best_estimator_.coefs_):
        np.testing.assert_array_equal(a, b)
