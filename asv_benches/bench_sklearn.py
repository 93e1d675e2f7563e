"""scikit-learn's MLP against nnjit.sklearn's drop-in: one fit each, same data, parameters and
random_state (the issue's cases, shrunk to CI size: digits and a 5,000-sample regression, a few
iterations). ``setup`` fits both once and checks they reach the same weights, so a timed fit
is never a compile. The full-size table is ``nnjit bench --sklearn``."""
import warnings

import numpy as np

from .common import THREADS, pin_threads

CASES = {
    "adam-defaults-digits": ("clf", dict(max_iter=10)),
    "sgd-batch32-digits": ("clf", dict(solver="sgd", batch_size=32, learning_rate_init=0.01, max_iter=10)),
    "lbfgs-regression-5000": ("reg", dict(solver="lbfgs", max_iter=20)),
}
_DATA = {}


def _data(kind):
    if kind not in _DATA:
        from sklearn.datasets import load_digits, make_regression
        if kind == "clf":
            X, y = load_digits(return_X_y=True)
            _DATA[kind] = (X / 16.0, y)
        else:
            X, y = make_regression(n_samples=5000, n_features=20, noise=5.0, random_state=0)
            _DATA[kind] = (X, (y - y.mean()) / y.std())
    return _DATA[kind]


def _estimator(lib, kind, params):
    if lib == "sklearn":
        from sklearn import neural_network as m
    else:
        from nnjit import sklearn as m
    cls = m.MLPClassifier if kind == "clf" else m.MLPRegressor
    return cls(random_state=0, **params)


class DropIn:
    """Fit time of scikit-learn's MLP and of nnjit.sklearn's, per case."""
    params = ([THREADS], list(CASES), ["sklearn", "nnjit"])
    param_names = ["threads", "case", "library"]
    timeout = 300

    def setup(self, threads, case, library):
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise NotImplementedError("scikit-learn not installed")
        pin_threads(threads)
        kind, params = CASES[case]
        self.X, self.y = _data(kind)
        self.make = lambda: _estimator(library, kind, params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = _estimator("nnjit", kind, params).fit(self.X, self.y)
            ref = _estimator("sklearn", kind, params).fit(self.X, self.y)
        dev = max(float(np.abs(a - b).max()) for a, b in zip(ours.coefs_, ref.coefs_))
        assert dev < 1e-8, f"nnjit and scikit-learn weights differ by {dev}"

    def time_fit(self, threads, case, library):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.make().fit(self.X, self.y)
