"""Every loop kernel equals its vectorised twin on small odd shapes (7 samples, 5 -> 3 units),
so a transposed index fails loudly. Outputs are poisoned with NaN first: an element a kernel
forgets to write fails the comparison."""
import numpy as np
import pytest

from nnjit import activations as A, loops, vectorised
from helpers import assert_close

M, N_IN, N_OUT = 7, 5, 3
DTYPES = ["float64", "float32"]
CODES = [A.IDENTITY, A.SIGMOID, A.TANH, A.RELU, A.GELU]


def data(dtype, *shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(dtype) for s in shapes]


def poisoned(*shapes, dtype):
    return [np.full(s, np.nan, dtype) for s in shapes]


def both(name, make_args, n_out):
    """Run loops.name and vectorised.name on copies of the same arguments; return outputs."""
    results = []
    for mod in (loops, vectorised):
        args = make_args()
        ret = getattr(mod, name)(*args)
        results.append(([np.array(a, copy=True) for a in args[:n_out]], ret))
    return results


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", CODES + [A.SOFTMAX])
def test_forward_layer(dtype, act):
    a_prev, W, b = data(dtype, (M, N_IN), (N_OUT, N_IN), (N_OUT,))
    (lo, _), (ve, _) = both("forward_layer", lambda: poisoned((M, N_OUT), (M, N_OUT), dtype=dtype)
                            + [a_prev, W, b, act], 2)
    for x, y in zip(lo, ve):
        assert np.isfinite(x).all()
        assert_close(x, y, dtype)
    # the lecture's sum, written out once, as the oracle for the oracle
    z = np.array([[sum(W[j, i] * a_prev[m, i] for i in range(N_IN)) + b[j] for j in range(N_OUT)]
                  for m in range(M)])
    assert_close(lo[0], z, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", CODES)
def test_backward_layer(dtype, act):
    delta, W, z_prev = data(dtype, (M, N_OUT), (N_OUT, N_IN), (M, N_IN))
    a_prev = vectorised.F[act](z_prev).astype(dtype)
    (lo, _), (ve, _) = both("backward_layer", lambda: poisoned((M, N_IN), dtype=dtype)
                            + [delta, W, z_prev, a_prev, act], 1)
    assert np.isfinite(lo[0]).all()
    assert_close(lo[0], ve[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_corrections(dtype):
    delta, a_prev = data(dtype, (M, N_OUT), (M, N_IN))
    (lo, _), (ve, _) = both("corrections", lambda: poisoned((N_OUT, N_IN), (N_OUT,), dtype=dtype)
                            + [delta, a_prev, 1.0 / M], 2)
    for x, y in zip(lo, ve):
        assert_close(x, y, dtype)
    dw = sum(np.outer(delta[m], a_prev[m]) for m in range(M)) / M   # mean_m a_i delta_j
    assert_close(lo[0], dw, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_corrections_update(dtype):
    W, b, vW, vb, delta, a_prev = data(dtype, (N_OUT, N_IN), (N_OUT,), (N_OUT, N_IN), (N_OUT,),
                                       (M, N_OUT), (M, N_IN))

    def args():
        return [W.copy(), b.copy(), vW.copy(), vb.copy()] + poisoned(
            (N_OUT, N_IN), (N_OUT,), dtype=dtype) + [delta, a_prev, 0.3, 0.9]
    (lo, _), (ve, _) = both("corrections_update", args, 6)
    for x, y in zip(lo, ve):
        assert_close(x, y, dtype)
    v = 0.9 * vW - 0.3 * (delta.T @ a_prev / M)
    assert_close(lo[0], W + v, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_update(dtype):
    theta, vel, grad = data(dtype, (11,), (11,), (11,))
    (lo, _), (ve, _) = both("update", lambda: [theta.copy(), vel.copy(), grad, 0.1, 0.5], 2)
    for x, y in zip(lo, ve):
        assert_close(x, y, dtype)
    assert_close(lo[1], 0.5 * vel - 0.1 * grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,loss", [(A.SOFTMAX, A.CROSS_ENTROPY), (A.SOFTMAX, A.SQUARED_ERROR),
                                      (A.SIGMOID, A.CROSS_ENTROPY), (A.SIGMOID, A.SQUARED_ERROR),
                                      (A.IDENTITY, A.SQUARED_ERROR), (A.TANH, A.SQUARED_ERROR),
                                      (A.RELU, A.SQUARED_ERROR), (A.GELU, A.SQUARED_ERROR)])
def test_output_error_and_loss(dtype, act, loss):
    z, y = data(dtype, (M, N_OUT), (M, N_OUT), seed=3)
    if loss == A.CROSS_ENTROPY:
        y = (y > 0).astype(dtype)
    a = vectorised.F[act](z).astype(dtype)
    (lo, _), (ve, _) = both("output_error", lambda: poisoned((M, N_OUT), dtype=dtype)
                            + [a, z, y, act, loss], 1)
    assert_close(lo[0], ve[0], dtype)
    (lo, e1), (ve, e2) = both("sample_loss", lambda: poisoned((M,), dtype=dtype)
                              + [a, z, y, act, loss], 1)
    assert_close(lo[0], ve[0], dtype)
    assert_close(e1, e2, dtype)
    assert_close(e1, np.abs(a - y).max(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_loss_is_finite_where_a_saturates(dtype):
    # z = +-200: a rounds to exactly 0 or 1, yet the cost from z stays finite and exact
    z = np.array([[200.0, -200.0], [-200.0, 200.0]], dtype)
    y = np.array([[0.0, 1.0], [0.0, 1.0]], dtype)
    out = np.zeros(2, dtype)
    for mod in (loops, vectorised):
        mod.sample_loss(out, vectorised.F[A.SOFTMAX](z), z, y, A.SOFTMAX, A.CROSS_ENTROPY)
        assert_close(out, [400.0, 0.0], dtype)
        mod.sample_loss(out, vectorised.F[A.SIGMOID](z), z, y, A.SIGMOID, A.CROSS_ENTROPY)
        assert_close(out, [400.0, 0.0], dtype)   # 200 + 200: each unit is wrong by z = 200


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_size", [1, 3, 7])
@pytest.mark.parametrize("par_min,par_work", [(2, 10**9), (1, 1)])   # serial and parallel paths
def test_train_epoch(dtype, batch_size, par_min, par_work):
    """The whole compiled epoch equals the vectorised one, batch by batch (7 = 3 + 3 + 1)."""
    from nnjit.engine import make_shape
    shape, P = make_shape([5, 4, 3], [A.TANH, A.SOFTMAX])
    rng = np.random.default_rng(1)
    theta = (rng.normal(size=P) * 0.5).astype(dtype)
    X = rng.normal(size=(M, 5)).astype(dtype)
    Y = np.eye(3, dtype=dtype)[rng.integers(0, 3, M)]
    order = rng.permutation(M).astype(np.int64)
    outs = []
    for mod in (loops, vectorised):
        th, vel, grad = theta.copy(), np.zeros(P, dtype), np.zeros(P, dtype)
        bufs = tuple(np.zeros(n, dtype) for n in (batch_size * 12,) * 3 + (batch_size * 3, batch_size))
        for _ in range(2):
            tot, emax = mod.train_epoch(th, vel, grad, shape, bufs, X, Y, order, batch_size,
                                        0.2, 0.9, A.CROSS_ENTROPY, par_min, par_work)
        outs.append((th, vel, tot, emax))
    for x, y in zip(*outs):
        assert_close(x, y, dtype)


# ---------------------------------------------------------------- the register-blocked kernels
# train_epoch runs these; shapes cover full 4 x 4 blocks and every remainder (9 = 4+4+1
# samples, 7 = 4+3 units, 6 = 4+2 units).
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M_,n_in,n_out", [(9, 5, 7), (7, 6, 3), (1, 5, 6), (4, 3, 4)])
@pytest.mark.parametrize("kernel", ["forward_layer_blocked", "_forward_layer_s", "forward_layer_units"])
def test_blocked_forward(dtype, M_, n_in, n_out, kernel):
    a_prev, W, b = data(dtype, (M_, n_in), (n_out, n_in), (n_out,))
    z, a = poisoned((M_, n_out), (M_, n_out), dtype=dtype)
    getattr(loops, kernel)(z, a, a_prev, W, b, A.TANH)
    z2, a2 = np.empty_like(z), np.empty_like(a)
    vectorised.forward_layer(z2, a2, a_prev, W, b, A.TANH)
    assert_close(z, z2, dtype)
    assert_close(a, a2, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M_,n_in,n_out", [(9, 5, 7), (7, 6, 3), (2, 5, 6)])
@pytest.mark.parametrize("kernel", ["backward_layer_blocked", "_backward_layer_s"])
def test_blocked_backward(dtype, M_, n_in, n_out, kernel):
    delta, W, z_prev = data(dtype, (M_, n_out), (n_out, n_in), (M_, n_in))
    a_prev = vectorised.F[A.GELU](z_prev).astype(dtype)
    d, = poisoned((M_, n_in), dtype=dtype)
    getattr(loops, kernel)(d, delta, W, z_prev, a_prev, A.GELU)
    d2 = np.empty_like(d)
    vectorised.backward_layer(d2, delta, W, z_prev, a_prev, A.GELU)
    assert_close(d, d2, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M_,n_in,n_out", [(9, 5, 7), (7, 6, 3), (1, 5, 6), (8, 3, 8)])
@pytest.mark.parametrize("kernel", ["corrections_update_blocked", "_corrections_update_s"])
def test_blocked_corrections_update(dtype, M_, n_in, n_out, kernel):
    W, b, vW, vb, delta, a_prev = data(dtype, (n_out, n_in), (n_out,), (n_out, n_in), (n_out,),
                                       (M_, n_out), (M_, n_in))
    outs = []
    for fn in (getattr(loops, kernel), vectorised.corrections_update):
        args = [W.copy(), b.copy(), vW.copy(), vb.copy()] + poisoned((n_out, n_in), (n_out,), dtype=dtype)
        fn(*args, delta, a_prev, 0.3, 0.9)
        outs.append([args[0], args[1], args[2], args[3], args[5]])   # dW is scratch
    for x, y in zip(*outs):
        assert np.isfinite(x).all()
        assert_close(x, y, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["update_forward_next", "_update_forward_next_s"])
def test_update_forward_next(dtype, kernel):
    """The online step fused with the next sample's z equals update, then feed-forward."""
    W, b, vW, vb, delta, x, x_next = data(dtype, (N_OUT, N_IN), (N_OUT,), (N_OUT, N_IN), (N_OUT,),
                                          (N_OUT,), (N_IN,), (N_IN,))
    got = [W.copy(), b.copy(), vW.copy(), vb.copy()]
    z_next, = poisoned((N_OUT,), dtype=dtype)
    getattr(loops, kernel)(*got, delta, x, x_next, z_next, 0.3, 0.9)
    want = [W.copy(), b.copy(), vW.copy(), vb.copy()]
    vectorised.corrections_update(*want, np.empty_like(W), np.empty_like(b), delta[None], x[None], 0.3, 0.9)
    z2, a2 = np.empty((1, N_OUT), dtype), np.empty((1, N_OUT), dtype)
    vectorised.forward_layer(z2, a2, x_next[None], want[0], want[1], A.IDENTITY)
    for g, w in zip(got + [z_next], want + [z2[0]]):
        assert_close(g, w, dtype)
