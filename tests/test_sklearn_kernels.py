"""nnjit.sklearn_loops' compiled epoch against a NumPy reference of scikit-learn's solver, on
small odd shapes (7 samples, 5 -> 3 -> 2 units), serial and parallel, every rule, with sample
weights and the L2 term."""
import numpy as np
import pytest

from nnjit import rules, sklearn_loops as K
from nnjit.model import MLP


def _reference(theta, s1, s2, net, X, Y, S, order, bs, rule, eta, mu, b1, b2, eps, alpha, t):
    """scikit-learn's _backprop + optimizer, written out in NumPy on nnjit's flat layout."""
    sizes = net.layers
    views = lambda v: [(v[o:o + n * m].reshape(n, m), v[o + n * m:o + n * m + n])  # noqa: E731
                       for o, n, m in _offsets(sizes)]
    total = 0.0
    for start in range(0, len(order), bs):
        rows = order[start:start + bs]
        x, y, s = X[rows], Y[rows], S[rows]
        acts = [x]
        for l, (W, b) in enumerate(views(theta)):
            z = acts[-1] @ W.T + b
            acts.append(np.tanh(z) if l < len(sizes) - 2 else np.exp(z - z.max(1, keepdims=True)))
        p = acts[-1] / acts[-1].sum(1, keepdims=True)
        acts[-1] = p
        Sb = s.sum()
        sq = sum(float((W * W).sum()) for W, _ in views(theta))
        total += (-(s * (y * np.log(p)).sum(1)).sum() / Sb + 0.5 * alpha * sq / Sb) * len(rows)
        grad = np.zeros_like(theta)
        delta = (p - y) * s[:, None]
        for l in range(len(sizes) - 2, -1, -1):
            (W, _), (dW, db) = views(theta)[l], views(grad)[l]
            dW[...] = (delta.T @ acts[l] + alpha * W) / Sb
            db[...] = delta.sum(0) / Sb
            if l:
                delta = (delta @ W) * (1 - acts[l] ** 2)
        t += 1
        if rule == K.ADAM:
            s1[...] = b1 * s1 + (1 - b1) * grad
            s2[...] = b2 * s2 + (1 - b2) * grad ** 2
            theta += -eta * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * s1 / (np.sqrt(s2) + eps)
        else:
            s1[...] = mu * s1 - eta * grad
            theta += (mu * s1 - eta * grad) if rule == K.NESTEROV else s1
    return total, t


def _offsets(sizes):
    o = 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        yield o, n_out, n_in
        o += n_out * n_in + n_out


@pytest.mark.parametrize("par_min", [1, 10**9], ids=["parallel", "serial"])
@pytest.mark.parametrize("rule", [K.SGD, K.NESTEROV, K.ADAM], ids=["sgd", "nesterov", "adam"])
def test_compiled_epoch_equals_numpy_reference(rule, par_min):
    rng = np.random.default_rng(5)
    net = MLP([5, 3, 2], activation="tanh", output="softmax", dtype="float64", seed=1)
    X = rng.normal(size=(7, 5))
    Y = np.eye(2)[rng.integers(0, 2, 7)]
    S = rng.uniform(0.5, 2.0, 7)
    order = rng.permutation(7).astype(np.int64)
    eta, mu, b1, b2, eps, alpha = 0.1, 0.9, 0.9, 0.999, 1e-8, 0.3
    e = net._engine
    theta0 = e.get_params()
    ref_theta, r1, r2 = theta0.copy(), np.zeros_like(theta0), np.zeros_like(theta0)
    s1, s2, grad = np.zeros_like(theta0), np.zeros_like(theta0), np.zeros_like(theta0)
    bufs = e._buffers(3)
    for epoch in range(2):
        hyper = rules.hyper(eta, mu, (b1, b2), eps, alpha, 0.0, "sklearn")
        total, emax, t = K.train_epoch(e.theta, s1, s2, grad, e.shape, bufs, X, Y, S, order, 3,
                                       rule, hyper, 3 * epoch, net._loss, 1.0, par_min, 1)
        ref_total, ref_t = _reference(ref_theta, r1, r2, net, X, Y, S, order, 3, rule, eta, mu,
                                      b1, b2, eps, alpha, 3 * epoch)
        assert t == ref_t == 3 * (epoch + 1)
        np.testing.assert_allclose(e.theta, ref_theta, rtol=0, atol=1e-12)
        np.testing.assert_allclose(s1, r1, rtol=0, atol=1e-12)
        np.testing.assert_allclose(total, ref_total, rtol=1e-12)
        assert 0 < emax < 1
    assert np.abs(e.theta - theta0).max() > 1e-3          # it did train
