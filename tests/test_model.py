"""The MLP wrapper: backends agree on whole models, training semantics (online, mini-batch,
full batch, momentum, schedules, stop criteria), learning on real data, and bad input."""
import numba
import numpy as np
import pytest

from nnjit import MLP, DivergenceError, config
from helpers import assert_close, targets

BACKENDS = ["loops", "vectorised"]


def _data(M=7, D=5, K=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(M, D)), rng.integers(0, K, M)


# ---------------------------------------------------------------- backends agree
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch_size", [1, 3, None])
def test_backends_agree_on_outputs_gradients_and_training(dtype, batch_size):
    X, y = _data()
    nets = [MLP([5, 4, 6, 3], activation=["tanh", "gelu"], backend=b, dtype=dtype, seed=11)
            for b in BACKENDS]
    assert_close(nets[0].forward(X), nets[1].forward(X), dtype, "initial outputs")
    g0, g1 = nets[0].gradients(X, y), nets[1].gradients(X, y)
    for a, b in zip(g0[0] + g0[1], g1[0] + g1[1]):
        assert_close(a, b, dtype, "gradient")
    for net in nets:
        net.fit(X, y, epochs=4, lr=0.3, momentum=0.9, batch_size=batch_size)
    for a, b in zip(nets[0].weights + nets[0].biases, nets[1].weights + nets[1].biases):
        assert_close(a, b, dtype, "weights after training")
    assert_close(nets[0].history_["loss"], nets[1].history_["loss"], dtype, "loss history")
    assert_close(nets[0].engine.get_state()["vel"], nets[1].engine.get_state()["vel"], dtype, "velocity")


def test_same_seed_same_initial_weights_on_every_backend_and_dtype():
    a = MLP([5, 4, 3], seed=5, backend="loops", dtype="float64")
    b = MLP([5, 4, 3], seed=5, backend="vectorised", dtype="float32")
    c = MLP([5, 4, 3], seed=6, backend="loops", dtype="float64")
    np.testing.assert_allclose(a.weights[0], b.weights[0], rtol=1e-6)
    assert not np.allclose(a.weights[0], c.weights[0])


# ---------------------------------------------------------------- an independent reference
def reference_sgd(W, b, X, Y, epochs, eta, mu, batch):
    """Nielsen-style plain NumPy: tanh hidden, softmax + cross-entropy, heavy-ball momentum,
    samples in order, batches averaged over their own size."""
    W, b = [w.copy() for w in W], [x.copy() for x in b]
    vW, vb = [np.zeros_like(w) for w in W], [np.zeros_like(x) for x in b]
    for _ in range(epochs):
        for s in range(0, len(X), batch):
            xb, yb = X[s:s + batch], Y[s:s + batch]
            a1 = np.tanh(xb @ W[0].T + b[0])
            z2 = a1 @ W[1].T + b[1]
            a2 = np.exp(z2 - z2.max(1, keepdims=True))
            a2 /= a2.sum(1, keepdims=True)
            d2 = a2 - yb                               # delta_out = a - y
            d1 = (d2 @ W[1]) * (1 - a1 ** 2)           # delta_j = f'(z_j) sum_k w_jk delta_k
            grads = [(d1.T @ xb / len(xb), d1.mean(0)), (d2.T @ a1 / len(xb), d2.mean(0))]
            for l, (gw, gb) in enumerate(grads):
                vW[l] = mu * vW[l] - eta * gw
                vb[l] = mu * vb[l] - eta * gb
                W[l] += vW[l]
                b[l] += vb[l]
    return W, b


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_training_matches_an_independent_reference(backend, batch_size):
    X, y = _data()
    Y = np.eye(3)[y]
    net = MLP([5, 4, 3], activation="tanh", backend=backend, dtype="float64", seed=2)
    W, b = reference_sgd(net.weights, net.biases, X, Y, 3, 0.2, 0.8, batch_size)
    net.fit(X, y, epochs=3, lr=0.2, momentum=0.8, batch_size=batch_size, shuffle=False)
    for got, want in zip(net.weights + net.biases, W + b):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sizes,batch,dtype,mode", [
    ([9, 16, 4], 32, "float32", "fused"),        # (its regions serial anyway: small)
    ([40, 120, 10], 64, "float64", "fused"),
    ([600, 100, 10], 16, "float32", "tiled"),
    ([600, 450, 10], 48, "float32", "gemm"),
])
def test_thread_count_does_not_change_the_result(sizes, batch, dtype, mode):
    """One thread runs every kernel without its parallel region (engine._par_work), more run
    them in parallel: the same bits, in the fit, the prediction and the gradients."""
    from nnjit.loops.epoch import FUSED, GEMM, TILED, epoch_mode
    X, y = _data(M=150, D=sizes[0], K=sizes[-1])
    results = []
    n0 = numba.get_num_threads()
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            net = MLP(sizes, backend="loops", seed=1, dtype=dtype)
            net.fit(X, y, epochs=2, batch_size=batch, momentum=0.9)
            assert (net.engine._par_work(batch) > 2**40) == (threads == 1)
            Y = np.eye(sizes[-1], dtype=dtype)[y]
            results.append(net.weights + net.biases + [net.predict_proba(X)]
                           + net.gradients(X, Y)[0] + net.gradients(X, Y)[1])
    finally:
        numba.set_num_threads(n0)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    bufs = net.engine._buffers(batch, train=True)
    want = {"fused": FUSED, "gemm": GEMM}.get(mode, TILED)
    assert epoch_mode(net.engine.shape, bufs, batch, config.PARALLEL_MIN_SAMPLES, config.tiles(),
                      config.PARALLEL_MIN_WORK) == want


# ---------------------------------------------------------------- learning
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learns_xor(backend, seed):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], float)
    y = np.array([0, 1, 1, 0])
    net = MLP([2, 4, 1], activation="sigmoid", output="sigmoid", backend=backend, seed=seed)
    net.fit(X, y, epochs=1000, lr=1.0, momentum=0.5, batch_size=1)
    np.testing.assert_array_equal(net.predict(X), y)
    assert net.score(X, y) == 1.0
    assert net.history_["loss"][-1] < 0.05


@pytest.mark.parametrize("backend", BACKENDS)
def test_digits_accuracy(backend):
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    X, y = d.data / 16.0, d.target
    idx = np.random.default_rng(0).permutation(len(X))
    tr, te = idx[:1350], idx[1350:]
    net = MLP([64, 64, 10], activation="tanh", backend=backend, seed=0)
    net.fit(X[tr], y[tr], epochs=30, lr=0.1, momentum=0.9, batch_size=32)
    assert net.score(X[te], y[te]) >= 0.95


def test_regression_r2_and_identity_output():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(200, 2))
    y = np.sin(2 * X[:, 0]) + X[:, 1] ** 2
    net = MLP([2, 16, 1], activation="tanh", output="identity", seed=0, dtype="float64")
    assert net.loss == "squared_error"
    net.fit(X, y, epochs=300, lr=0.05, momentum=0.9, batch_size=16)
    assert net.predict(X).shape == (200,)
    assert net.score(X, y) > 0.95


def test_string_labels_and_probabilities():
    X, y = _data(M=30, K=3, seed=4)
    labels = np.array(["cat", "dog", "eel"])[y]
    net = MLP([5, 16, 3], seed=0).fit(X, labels, epochs=200, lr=0.5, momentum=0.9, batch_size=8)
    assert list(net.classes_) == ["cat", "dog", "eel"]
    p = net.predict_proba(X)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    assert set(net.predict(X)) <= {"cat", "dog", "eel"}
    assert net.score(X, labels) > 0.8


def test_binary_sigmoid_labels():
    X, y = _data(M=40, K=2, seed=5)
    net = MLP([5, 6, 1], output="sigmoid", seed=0).fit(X, np.where(y == 1, "yes", "no"), epochs=100, lr=0.5)
    p = net.predict_proba(X)
    assert p.shape == (40, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)
    assert set(net.predict(X)) <= {"yes", "no"}


# ---------------------------------------------------------------- semantics
def test_init_schemes():
    big = MLP([400, 300, 10], init="normal", init_scale=0.04, seed=0, dtype="float64")
    assert abs(big.weights[0].std() - 0.2) < 0.005           # init_scale is the variance
    assert abs(big.biases[0].std() - 0.2) < 0.03
    x = MLP([400, 300, 10], init="xavier", seed=0, dtype="float64")
    assert abs(x.weights[0].std() - np.sqrt(2 / 700)) < 0.002 and not x.biases[0].any()
    h = MLP([400, 300, 10], init="he", seed=0, dtype="float64")
    assert abs(h.weights[0].std() - np.sqrt(2 / 400)) < 0.002 and not h.biases[0].any()


def test_dtype_is_used_end_to_end():
    X, y = _data()
    net = MLP([5, 4, 3], dtype="float32", seed=0)
    assert net.weights[0].dtype == np.float32 and net.forward(X).dtype == np.float32
    net.fit(X, y, epochs=1)
    assert net.engine.get_params().dtype == np.float32


def test_gradients_do_not_change_weights():
    X, y = _data()
    net = MLP([5, 4, 3], seed=0)
    before = net.weights
    net.gradients(X, y)
    for a, b in zip(before, net.weights):
        np.testing.assert_array_equal(a, b)


def test_error_threshold_stops_training():
    X = np.array([[0.0], [1.0]])
    Y = np.array([[0.2], [0.8]])
    net = MLP([1, 3, 1], activation="tanh", output="identity", seed=0, dtype="float64")
    net.fit(X, Y, epochs=5000, lr=0.2, momentum=0.5, batch_size=None, error_threshold=0.01)
    assert net.n_epochs_ < 5000
    assert np.abs(net.forward(X) - Y).max() < 0.02


def test_tol_stops_after_n_iter_no_change():
    X, y = _data()
    net = MLP([5, 4, 3], seed=0)
    net.fit(X, y, epochs=100, tol=1e9, n_iter_no_change=3)
    assert net.n_epochs_ == 4      # epoch 1 sets the best; 3 epochs without a 1e9 improvement


def test_tol_uses_validation_loss_when_given():
    X, y = _data(M=40)
    net = MLP([5, 4, 3], seed=0)
    net.fit(X, y, epochs=20, validation_data=(X[:10], y[:10]), tol=0.0, n_iter_no_change=50)
    h = net.history_
    assert len(h["loss"]) == len(h["val_loss"]) == len(h["val_score"]) == 20
    assert h["val_loss"][-1] < h["val_loss"][0]


def test_learning_rate_schedule():
    X, y = _data()
    seen = []

    def lr(epoch):
        seen.append(epoch)
        return 0.1
    a = MLP([5, 4, 3], seed=0, dtype="float64").fit(X, y, epochs=3, lr=lr)
    b = MLP([5, 4, 3], seed=0, dtype="float64").fit(X, y, epochs=3, lr=0.1)
    assert seen == [0, 1, 2]
    np.testing.assert_array_equal(a.weights[0], b.weights[0])


def test_callback_can_stop_training():
    X, y = _data()
    calls = []
    net = MLP([5, 4, 3], seed=0)
    net.fit(X, y, epochs=10, callbacks=[lambda n, e, h: calls.append(len(h["loss"])) or e == 2])
    assert calls == [1, 2, 3] and net.n_epochs_ == 3


def test_shuffle_false_is_in_order_and_shuffle_true_is_seeded():
    X, y = _data(M=20)
    a = MLP([5, 4, 3], seed=1).fit(X, y, epochs=2, batch_size=1)
    b = MLP([5, 4, 3], seed=1).fit(X, y, epochs=2, batch_size=1)
    c = MLP([5, 4, 3], seed=1).fit(X, y, epochs=2, batch_size=1, shuffle=False)
    np.testing.assert_array_equal(a.weights[0], b.weights[0])
    assert not np.array_equal(a.weights[0], c.weights[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_divergence_raises_and_keeps_finite_weights(backend):
    X = np.linspace(-1, 1, 20)[:, None] * 100
    y = X[:, 0] * 1e3
    net = MLP([1, 8, 1], activation="relu", output="identity", backend=backend, seed=0)
    with pytest.raises(DivergenceError, match="diverged"):
        net.fit(X, y, epochs=50, lr=10.0, momentum=0.9)
    assert all(np.isfinite(w).all() for w in net.weights + net.biases)


def test_weights_are_assignable_and_validated():
    net = MLP([3, 2, 2], seed=0)
    net.weights = [np.ones((2, 3)), np.full((2, 2), 2.0)]
    np.testing.assert_array_equal(net.weights[1], 2.0)
    with pytest.raises(ValueError, match="shape"):
        net.weights = [np.ones((3, 2)), np.ones((2, 2))]      # transposed
    with pytest.raises(ValueError, match="expected 2"):
        net.biases = [np.ones(2)]
    with pytest.raises(ValueError, match="NaN"):
        net.biases = [np.array([np.nan, 0]), np.ones(2)]


# ---------------------------------------------------------------- bad input
@pytest.fixture
def net():
    return MLP([5, 4, 3], seed=0)


def test_bad_X_not_2d(net):
    with pytest.raises(ValueError, match="2-D"):
        net.forward(np.ones(5))


def test_bad_X_wrong_feature_count(net):
    with pytest.raises(ValueError, match="4 features"):
        net.forward(np.ones((3, 4)))


def test_bad_X_nan(net):
    X, y = _data()
    X[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        net.fit(X, y)


def test_bad_X_inf(net):
    X, y = _data()
    X[0, 0] = np.inf
    with pytest.raises(ValueError, match="inf"):
        net.forward(X)


def test_bad_X_not_numeric(net):
    with pytest.raises(TypeError, match="numbers"):
        net.forward(np.array([["a"] * 5]))


def test_bad_y_nan():
    X = np.ones((3, 1))
    with pytest.raises(ValueError, match="NaN"):
        MLP([1, 2, 1], output="identity").fit(X, np.array([1.0, np.nan, 2.0]))


def test_empty_X(net):
    with pytest.raises(ValueError, match="empty"):
        net.fit(np.ones((0, 5)), np.ones(0))


def test_length_mismatch(net):
    X, y = _data()
    with pytest.raises(ValueError, match="7 samples but y has 6"):
        net.fit(X, y[:6])


def test_more_classes_than_outputs(net):
    X, _ = _data()
    with pytest.raises(ValueError, match="4 classes"):
        net.fit(X, np.arange(7) % 4)


def test_target_matrix_wrong_width(net):
    X, _ = _data()
    with pytest.raises(ValueError, match="2 columns"):
        net.fit(X, np.ones((7, 2)))


@pytest.mark.parametrize("kw,match", [
    (dict(activation="swish"), "unknown activation"),
    (dict(activation=["tanh", "tanh"]), "2 names for 1 hidden"),
    (dict(output="softplus"), "unknown output"),
    (dict(loss="hinge"), "unknown loss"),
    (dict(init="zeros"), "unknown init"),
    (dict(backend="gpu"), "unknown backend"),
    (dict(dtype="float16"), "unknown dtype"),
    (dict(output="identity", loss="cross_entropy"), "cross_entropy"),
    (dict(init_scale=-1), "init_scale"),
])
def test_bad_constructor_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        MLP([5, 4, 3], **kw)


@pytest.mark.parametrize("layers", [[5, 0, 3], [5, -2, 3], [5], [5, 2.5, 3]])
def test_bad_layer_sizes(layers):
    with pytest.raises(ValueError):
        MLP(layers)


@pytest.mark.parametrize("kw,match", [
    (dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"), (dict(batch_size=-3), "batch_size"),
    (dict(lr=0), "lr"), (dict(lr=-0.1), "lr"), (dict(momentum=1.0), "momentum"),
    (dict(momentum=-0.1), "momentum"), (dict(validation_data=np.ones(3)), "validation_data"),
])
def test_bad_fit_arguments(net, kw, match):
    X, y = _data()
    with pytest.raises(ValueError, match=match):
        net.fit(X, y, **kw)


def test_predict_proba_needs_a_classifier():
    with pytest.raises(ValueError, match="predict_proba"):
        MLP([2, 2, 1], output="identity").predict_proba(np.ones((1, 2)))


def test_score_with_target_matrices():
    X, y = _data(M=30, K=3, seed=6)
    soft = MLP([5, 8, 3], seed=0).fit(X, y, epochs=100, lr=0.5, momentum=0.9, batch_size=8)
    assert soft.score(X, np.eye(3)[y]) == soft.score(X, y)
    sig = MLP([5, 8, 1], output="sigmoid", seed=0).fit(X, (y == 1).astype(int), epochs=100, lr=0.5, momentum=0.9)
    Y = (y == 1).astype(float)[:, None]
    assert sig.score(X, Y) == sig.score(X, (y == 1).astype(int))
    multi = MLP([5, 8, 2], output="sigmoid", seed=0)
    Y2 = np.stack([y == 1, y == 2], axis=1).astype(float)
    multi.fit(X, Y2, epochs=200, lr=0.5, momentum=0.9, batch_size=8)
    want = ((multi.forward(X) > 0.5) == (Y2 > 0.5)).all(axis=1).mean()
    assert multi.score(X, Y2) == want > 0.5
