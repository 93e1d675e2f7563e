"""The one compiled epoch as scikit-learn's solvers run it, against a NumPy reference of
scikit-learn's solver, on small odd shapes (7 samples, 5 -> 3 -> 2 units), serial and
parallel, with sample weights and the L2 term: the weights, the optimizer state, the update
count and scikit-learn's loss (each batch's mean loss weighted by its size, the epoch's fourth
and fifth sums). And a sparse first layer (CSR input) trains exactly as the dense one."""
import numpy as np
import pytest

from nnjit import config, rules as R
from nnjit.layout import layer
from nnjit.model import MLP

sp = pytest.importorskip("scipy.sparse")


def _reference(theta, s1, s2, net, X, Y, S, order, bs, rule, eta, mu, b1, b2, eps, alpha, t):
    """scikit-learn's _backprop + optimizer, written out in NumPy on nnjit's flat layout."""
    L = len(net.layers) - 1
    views = lambda v: [layer(v, net.shape, l) for l in range(1, L + 1)]   # noqa: E731
    total = 0.0
    for start in range(0, len(order), bs):
        rows = order[start:start + bs]
        x, y, s = X[rows], Y[rows], S[rows]
        acts = [x]
        for l, (W, b) in enumerate(views(theta)):
            z = acts[-1] @ W.T + b
            acts.append(np.tanh(z) if l < L - 1 else np.exp(z - z.max(1, keepdims=True)))
        p = acts[-1] / acts[-1].sum(1, keepdims=True)
        acts[-1] = p
        Sb = s.sum()
        sq = sum(float((W * W).sum()) for W, _ in views(theta))
        total += (-(s * (y * np.log(p)).sum(1)).sum() / Sb + 0.5 * alpha * sq / Sb) * len(rows)
        grad = np.zeros_like(theta)
        delta = (p - y) * s[:, None]
        for l in range(L - 1, -1, -1):
            (W, _), (dW, db) = views(theta)[l], views(grad)[l]
            dW[...] = (delta.T @ acts[l] + alpha * W) / Sb
            db[...] = delta.sum(0) / Sb
            if l:
                delta = (delta @ W) * (1 - acts[l] ** 2)
        t += 1
        if rule == "adam":
            s1[...] = b1 * s1 + (1 - b1) * grad
            s2[...] = b2 * s2 + (1 - b2) * grad ** 2
            theta += -eta * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * s1 / (np.sqrt(s2) + eps)
        else:
            s1[...] = mu * s1 - eta * grad
            theta += (mu * s1 - eta * grad) if rule == "nesterov" else s1
    return total, t


@pytest.mark.parametrize("par_min", [1, 10**9], ids=["parallel", "serial"])
@pytest.mark.parametrize("rule", ["sgd", "nesterov", "adam"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_compiled_epoch_equals_numpy_reference(rule, par_min, sparse, monkeypatch):
    monkeypatch.setattr(config, "PARALLEL_MIN_SAMPLES", par_min)
    rng = np.random.default_rng(5)
    net = MLP([5, 3, 2], activation="tanh", output="softmax", dtype="float64", seed=1)
    X = rng.normal(size=(7, 5))
    X[X < 0.3] = 0.0                        # a matrix worth storing sparse
    Y = np.eye(2)[rng.integers(0, 2, 7)]
    S = rng.uniform(0.5, 2.0, 7)
    order = rng.permutation(7).astype(np.int64)
    eta, mu, b1, b2, eps, alpha = 0.1, 0.9, 0.9, 0.999, 1e-8, 0.3
    kw = dict(momentum=mu) if rule != "adam" else dict(betas=(b1, b2), eps=eps, adam_eps="sklearn")
    code, params = R.check(rule, alpha, **kw)
    e = net.engine
    theta0 = e.get_params()
    ref_theta, r1, r2 = theta0.copy(), np.zeros_like(theta0), np.zeros_like(theta0)
    e.begin_fit(sp.csr_matrix(X) if sparse else X, Y, 3, S)
    for epoch in range(2):
        sums = e.train_epoch(order, 3, code, R.hyper(eta, params), net.loss_code)
        ref_total, ref_t = _reference(ref_theta, r1, r2, net, X, Y, S, order, 3, rule, eta, mu,
                                      b1, b2, eps, alpha, 3 * epoch)
        assert int(e.step[0]) == ref_t == 3 * (epoch + 1)
        np.testing.assert_allclose(e.get_params(), ref_theta, rtol=0, atol=1e-12)
        np.testing.assert_allclose(e.get_state()["vel"], r1, rtol=0, atol=1e-12)
        np.testing.assert_allclose(sums[3] + 0.5 * alpha * sums[4], ref_total, rtol=1e-12)
        assert 0 < sums[2] < 1
    e.end_fit()
    np.testing.assert_allclose(e.get_params(), ref_theta, rtol=0, atol=1e-12)  # layout restored
    assert np.abs(e.get_params() - theta0).max() > 1e-3          # it did train
