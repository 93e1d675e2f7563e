"""The CUDA form equals the vectorised form: every kernel on tiny odd shapes (7 samples,
5 -> 3 units), and the whole model on backend="cuda" against "loops" and "vectorised".

Without a GPU these run in Numba's CUDA simulator (tests/conftest.py sets
NUMBA_ENABLE_CUDASIM=1 before numba.cuda is imported). Threads per block and the tile edge
are patched small so tiny arrays span several blocks and several tiles of the summed index.
Outputs are poisoned with NaN first: an element a kernel forgets to write fails. The
simulator runs each thread as Python (about a millisecond a thread), so shapes stay tiny.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from nnjit import MLP, activations as A, config, vectorised
from helpers import OUTPUT_LOSS, assert_close

nc = pytest.importorskip("nnjit.cuda", reason="numba-cuda is not installed")
from numba import cuda  # noqa: E402  (after the skip: numba-cuda may be missing)

if not cuda.is_available():
    pytest.skip("neither a CUDA GPU nor the simulator is usable", allow_module_level=True)

M, N_IN, N_OUT = 7, 5, 3
DTYPES = ["float64", "float32"]
CODES = [a.code for a in A.ELEMENTWISE]
GELU, TANH = A.CODES['gelu'], A.CODES['tanh']
VERSIONS = ["simple", "tiled"]
ON_GPU = not nc.simulated()


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(config, "CUDA_THREADS", 4)
    monkeypatch.setattr(config, "CUDA_TILE", 4)


def data(dtype, *shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(dtype) for s in shapes]


def nan(*shapes, dtype):
    return [np.full(s, np.nan, dtype) for s in shapes]


def run_cuda(fn, args, n_out):
    """fn(*args) on device copies of args; returns the first n_out arguments back on the host."""
    d = [cuda.to_device(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in args]
    fn(*d)
    return [x.copy_to_host() for x in d[:n_out]]


def run_vec(name, args, n_out):
    args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    getattr(vectorised, name)(*args)
    return args[:n_out]


def coefs(rule, t=3, an=0.05):
    from nnjit import rules as R
    from test_kernels import hyper
    return R.coefs(rule, hyper(rule), t, an)


RULES = [r.code for r in __import__("nnjit.rules").rules.RULES]


def launcher(name, version):
    return getattr(nc, name + ("_tiled" if version == "tiled" else ""))


# ---------------------------------------------------------------- kernel by kernel
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", CODES + [A.SOFTMAX])
def test_forward_layer(version, dtype, act):
    a_prev, W, b = data(dtype, (M, N_IN), (N_OUT, N_IN), (N_OUT,))
    args = nan((M, N_OUT), (M, N_OUT), dtype=dtype) + [a_prev, W, b, act]
    got = run_cuda(launcher("forward_layer", version), args, 2)
    want = run_vec("forward_layer", args, 2)
    for x, y in zip(got, want):
        assert np.isfinite(x).all()
        assert_close(x, y, dtype)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", CODES)
def test_backward_layer(version, dtype, act):
    delta, W, z_prev = data(dtype, (M, N_OUT), (N_OUT, N_IN), (M, N_IN))
    a_prev = vectorised.f(z_prev, act).astype(dtype)
    args = nan((M, N_IN), dtype=dtype) + [delta, W, z_prev, a_prev, act]
    got = run_cuda(launcher("backward_layer", version), args, 1)
    want = run_vec("backward_layer", args, 1)
    assert np.isfinite(got[0]).all()
    assert_close(got[0], want[0], dtype)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_corrections(version, dtype):
    delta, a_prev, W = data(dtype, (M, N_OUT), (M, N_IN), (N_OUT, N_IN))
    args = nan((N_OUT, N_IN), (N_OUT,), dtype=dtype) + [delta, a_prev, 1.0 / M, W, 0.25]
    got = run_cuda(launcher("corrections", version), args, 2)
    for x, y in zip(got, run_vec("corrections", args, 2)):
        assert_close(x, y, dtype)
    dw = sum(np.outer(delta[m], a_prev[m]) for m in range(M)) / M + 0.25 * W   # mean + L2
    assert_close(got[0], dw, dtype)
    assert_close(got[1], delta.mean(axis=0), dtype)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
def test_corrections_update(version, dtype, rule):
    W, b, vW, vb, delta, a_prev = data(dtype, (N_OUT, N_IN), (N_OUT,), (N_OUT, N_IN), (N_OUT,),
                                       (M, N_OUT), (M, N_IN))
    sW, sb = [np.abs(x) for x in data(dtype, (N_OUT, N_IN), (N_OUT,), seed=5)]
    args = [W, b, vW, vb, sW, sb] + nan((N_OUT, N_IN), (N_OUT,), dtype=dtype) + [
        delta, a_prev, rule, coefs(rule)]
    got = run_cuda(launcher("corrections_update", version), args, 6)
    for x, y in zip(got, run_vec("corrections_update", args, 6)):
        assert_close(x, y, dtype)
    if rule == 0:
        v = 0.9 * vW - 0.3 * (delta.T @ a_prev / M + 0.05 * W)
        assert_close(got[2], v, dtype)
        assert_close(got[0], W + v, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiled_equals_simple(dtype):
    """The fast version against the simple one on shapes that leave partial tiles in every
    dimension (9 samples, 11 -> 6 units, tiles of 4): feed-forward, error recursion and the
    fused correction + update."""
    Mb, n_in, n_out = 9, 11, 6
    a_prev, W, b, vW, vb, delta, z_prev = data(dtype, (Mb, n_in), (n_out, n_in), (n_out,),
                                               (n_out, n_in), (n_out,), (Mb, n_out), (Mb, n_in), seed=5)
    a_act = vectorised.f(z_prev, GELU).astype(dtype)
    cases = [("forward_layer", nan((Mb, n_out), (Mb, n_out), dtype=dtype) + [a_prev, W, b, GELU], 2),
             ("backward_layer", nan((Mb, n_in), dtype=dtype) + [delta, W, z_prev, a_act, GELU], 1),
             ("corrections_update", [W, b, vW, vb, np.abs(vW), np.abs(vb)]
              + nan((n_out, n_in), (n_out,), dtype=dtype) + [delta, a_prev, 3, coefs(3)], 6)]
    for name, args, n in cases:
        simple = run_cuda(launcher(name, "simple"), args, n)
        tiled = run_cuda(launcher(name, "tiled"), args, n)
        for x, y in zip(tiled, simple):
            assert np.isfinite(x).all(), name
            assert_close(x, y, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocks", [None, 1])
@pytest.mark.parametrize("rule", RULES)
def test_update(dtype, blocks, rule):
    # blocks=1: 4 threads for 11 parameters, so each thread strides over several
    theta, vel, grad = data(dtype, (11,), (11,), (11,))
    args = [theta, vel, np.abs(grad) + 0.5, grad, rule, coefs(rule)]
    got = run_cuda(lambda *a: nc.update(*a, blocks=blocks), args, 3)
    for x, y in zip(got, run_vec("update", args, 3)):
        assert_close(x, y, dtype)
    if rule == 0:
        assert_close(got[1], 0.9 * vel - 0.3 * grad, dtype)


PAIRS = [(A.CODES[o], A.LOSSES[x]) for o, x in OUTPUT_LOSS]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,loss", PAIRS)
def test_output_error_and_loss(dtype, act, loss):
    z, y = data(dtype, (M, N_OUT), (M, N_OUT), seed=3)
    if loss == A.CROSS_ENTROPY:
        y = (y > 0).astype(dtype)
    if loss == A.LOSSES["poisson"]:
        y = np.abs(np.round(2 * y)).astype(dtype)
    a = vectorised.f(z, act).astype(dtype)
    for sw in (np.ones(M, dtype), np.linspace(0, 2, M).astype(dtype)):
        args = nan((M, N_OUT), dtype=dtype) + [a, z, y, sw, act, loss]
        got = run_cuda(nc.output_error, args, 1)
        assert_close(got[0], run_vec("output_error", args, 1)[0], dtype)
    cost, err = run_cuda(nc.sample_loss, nan((M,), (M,), dtype=dtype) + [a, z, y, act, loss], 2)
    want = np.full(M, np.nan, dtype)
    emax = vectorised.sample_loss(want, a, z, y, act, loss)
    assert_close(cost, want, dtype)
    assert_close(err, np.abs(a - y).max(axis=1), dtype)   # per sample; the max is the engine's
    assert_close(err.max(), emax, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,loss", PAIRS)
def test_output_layer(dtype, act, loss):
    """The fused training-step kernel: softmax rows (a arrives poisoned for softmax), the
    per-sample cost and error, and delta^L, as the three separate vectorised steps."""
    z, y = data(dtype, (M, N_OUT), (M, N_OUT), seed=4)
    if loss == A.CROSS_ENTROPY:
        y = (y > 0).astype(dtype)
    if loss == A.LOSSES["poisson"]:
        y = np.abs(np.round(2 * y)).astype(dtype)
    a = vectorised.f(z, act).astype(dtype)
    a_in = np.full_like(a, np.nan) if act == A.SOFTMAX else a
    sw = np.linspace(0, 2, M).astype(dtype)
    delta, cost, err, a_out = run_cuda(nc.output_layer, nan((M, N_OUT), (M,), (M,), dtype=dtype)
                                       + [a_in, z, y, sw, M / sw.astype(float).sum(), act, loss], 4)
    assert_close(a_out, a, dtype)
    assert_close(delta, run_vec("output_error", [np.empty_like(a), a, z, y, sw, act, loss], 1)[0], dtype)
    want = np.empty(M, dtype)
    vectorised.sample_loss(want, a, z, y, act, loss)
    assert_close(cost, want, dtype)
    assert_close(err, np.abs(a - y).max(axis=1), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_loss_is_finite_where_a_saturates(dtype):
    z = np.array([[200.0, -200.0], [-200.0, 200.0]], dtype)
    y = np.array([[0.0, 1.0], [0.0, 1.0]], dtype)
    # softmax: -log a_1 = 400; sigmoid: -log(1 - a_0) - log a_1 = 200 + 200; a is 0 or 1 there
    for act, want in ((A.SOFTMAX, [400.0, 0.0]), (A.SIGMOID, [400.0, 0.0])):
        a = vectorised.f(z, act).astype(dtype)
        cost, _ = run_cuda(nc.sample_loss, nan((2,), (2,), dtype=dtype) + [a, z, y, act, A.CROSS_ENTROPY], 2)
        assert_close(cost, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_is_stable(dtype):
    z = np.array([[1000.0, 999.0, -1000.0]], dtype)
    a, _ = run_cuda(nc.softmax, nan((1, 3), dtype=dtype) + [z], 2)
    assert_close(a, vectorised.f(z, A.SOFTMAX), dtype)


def test_load_batch():
    X, Y = data("float64", (M, N_IN), (M, N_OUT))
    order = np.array([6, 2, 0, 5, 1, 3, 4], np.int64)
    S = np.arange(M, dtype=np.float64) / 2
    a0, y, sw = run_cuda(nc.load_batch, nan((3, N_IN), (3, N_OUT), (3,), dtype="float64")
                         + [X, Y, S, order, 2], 3)
    np.testing.assert_array_equal(a0, X[order[2:5]])
    np.testing.assert_array_equal(y, Y[order[2:5]])
    np.testing.assert_array_equal(sw, S[order[2:5]])


# ---------------------------------------------------------------- the whole model
NETS = [  # (layers, hidden, output, loss)
    ([5, 4, 3], "tanh", "softmax", "cross_entropy"),
    ([5, 6, 4, 3], ["gelu", "relu"], "softmax", "squared_error"),
    ([5, 4, 2], "sigmoid", "sigmoid", "cross_entropy"),
    ([5, 3, 2], "relu", "identity", "squared_error"),
]


def problem(layers, output, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(M, layers[0]))
    K = layers[-1]
    if output == "softmax":
        Y = np.eye(K)[rng.integers(0, K, M)]
    elif output == "sigmoid":
        Y = rng.integers(0, 2, (M, K)).astype(float)
    else:
        Y = rng.normal(size=(M, K))
    return X, Y


def nets(layers, hidden, output, loss, dtype, backends=("loops", "vectorised", "cuda")):
    return [MLP(layers, activation=hidden, output=output, loss=loss, backend=bk, dtype=dtype,
                init="normal", init_scale=0.5, seed=3) for bk in backends]


def use_kernels(monkeypatch, version):
    """Whole-model tests: tiles of 8 (the kernel tests above cover tiles spanning blocks;
    the simulator's cost grows with the number of blocks)."""
    monkeypatch.setattr(config, "CUDA_KERNELS", version)
    monkeypatch.setattr(config, "CUDA_TILE", 8)


# every net on the simple kernels; the tiled ones (tested kernel by kernel above) on the two
# softmax nets, which cover one and two hidden layers (the simulator is slow on tiles)
NET_VERSIONS = [(n, "simple") for n in NETS] + [(n, "tiled") for n in NETS[:2]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("net,version", NET_VERSIONS,
                         ids=lambda x: x if isinstance(x, str) else f"{x[1]}-{x[2]}-{x[3]}")
def test_model_outputs_and_gradients(monkeypatch, version, dtype, net):
    use_kernels(monkeypatch, version)
    layers, hidden, output, loss = net
    X, Y = problem(layers, output)
    lo, ve, cu = nets(layers, hidden, output, loss, dtype)
    out = cu.forward(X)
    assert isinstance(out, np.ndarray) and out.shape == (M, layers[-1])
    assert_close(out, lo.forward(X), dtype, "forward")
    assert_close(out, ve.forward(X), dtype, "forward")
    assert_close(cu.loss_value(X, Y), lo.loss_value(X, Y), dtype, "loss")
    gl, gc = lo.gradients(X, Y), cu.gradients(X, Y)
    for l, (x, y) in enumerate(zip(gl[0] + gl[1], gc[0] + gc[1])):
        assert np.abs(x).max() > 0      # a gradient of zeros would compare equal to anything
        assert_close(y, x, dtype, f"gradient array {l}")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_size", [1, 3, None])
def test_model_weights_after_training(monkeypatch, version, dtype, batch_size):
    """Two epochs with momentum and shuffling: batch sizes 1 (7 steps), 3 (3 + 3 + 1) and
    full batch; the same weights, velocities, loss history as loops and vectorised."""
    use_kernels(monkeypatch, version)
    layers, hidden, output, loss = NETS[1] if batch_size == 3 else NETS[0]
    X, Y = problem(layers, output, seed=1)
    trained = [n.fit(X, Y, epochs=2, lr=0.2, momentum=0.9, batch_size=batch_size)
               for n in nets(layers, hidden, output, loss, dtype)]
    lo, ve, cu = trained
    assert not np.allclose(lo.weights[0], nets(layers, hidden, output, loss, dtype, ("loops",))[0].weights[0])
    for ref in (lo, ve):
        for x, y in zip(ref.weights + ref.biases, cu.weights + cu.biases):
            assert isinstance(y, np.ndarray) and y.dtype == np.dtype(dtype)
            assert_close(y, x, dtype, f"parameters after training vs {ref.backend}")
        assert_close(cu.engine.get_state()["vel"], ref.engine.get_state()["vel"], dtype, "velocity")
        assert_close(cu.history_["loss"], ref.history_["loss"], dtype, "loss history")


def test_weights_round_trip_and_error_threshold():
    X, y = problem([5, 4, 3], "softmax")
    net = MLP([5, 4, 3], activation="tanh", backend="cuda", dtype="float64", seed=0)
    Ws = [w * 2 for w in net.weights]
    net.weights = Ws
    for a, b in zip(net.weights, Ws):
        np.testing.assert_array_equal(a, b)
    ref = MLP([5, 4, 3], activation="tanh", backend="loops", dtype="float64", seed=0)
    ref.weights = Ws
    # huge threshold: both stop after the first epoch, on the same max |a - y|
    for n in (net, ref):
        n.fit(X, y, epochs=5, batch_size=4, error_threshold=10.0)
        assert n.n_epochs_ == 1
    np.testing.assert_array_equal(net.predict(X), ref.predict(X))


def test_unknown_kernel_set_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(config, "CUDA_KERNELS", "warp-speed")
    net = MLP([5, 4, 3], backend="cuda", seed=0)
    with pytest.raises(ValueError, match="CUDA_KERNELS"):
        net.forward(np.zeros((2, 5)))


@pytest.mark.skipif(ON_GPU, reason="a CUDA driver is present, so backend='cuda' works here")
def test_no_gpu_and_no_simulator_is_a_clear_error():
    code = ("from nnjit import MLP\n"
            "try:\n    MLP([3, 2], backend='cuda')\n"
            "except OSError as e:\n    print(type(e).__name__, e)\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["NUMBA_ENABLE_CUDASIM"] = "0"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    if "CUDAUnavailableError" not in r.stdout:
        pytest.skip("numba found a usable CUDA device without the simulator")
    assert "NUMBA_ENABLE_CUDASIM=1" in r.stdout and "driver" in r.stdout


# ---------------------------------------------------------------- real hardware only
gpu = pytest.mark.skipif(not ON_GPU, reason="needs a real CUDA GPU (runs under the simulator here)")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("version", VERSIONS)
def test_gpu_mnist_sized_epoch_matches_float64_loops(monkeypatch, version):
    monkeypatch.setattr(config, "CUDA_KERNELS", version)
    rng = np.random.default_rng(0)
    X = rng.random((2048, 784))
    y = rng.integers(0, 10, 2048)
    nets_ = [MLP([784, 128, 10], activation="relu", backend=bk, dtype=dt, seed=0)
             for bk, dt in (("loops", "float64"), ("cuda", "float64"), ("cuda", "float32"))]
    for n in nets_:
        n.fit(X, y, epochs=1, lr=0.05, momentum=0.9, batch_size=256)
    ref = nets_[0].weights
    for n, rtol in ((nets_[1], 1e-9), (nets_[2], 1e-3)):
        for a, b in zip(n.weights, ref):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


@pytest.mark.gpu
@gpu
def test_gpu_tiled_matches_simple_on_wide_layers():
    rng = np.random.default_rng(1)
    a_prev, W, b = (rng.normal(size=s).astype(np.float32) for s in ((1000, 513), (257, 513), (257,)))
    out = []
    for fn in (nc.forward_layer, nc.forward_layer_tiled):
        out.append(run_cuda(fn, nan((1000, 257), (1000, 257), dtype="float32")
                            + [a_prev, W, b, TANH], 2))
    for x, y in zip(*out):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- the GPU benchmark script
def test_gpu_bench_refuses_to_time_the_simulator(capsys):
    from nnjit.bench import gpu as gpu_bench
    if ON_GPU:
        pytest.skip("a GPU is present")
    assert gpu_bench.main(["--json", os.devnull]) == 2
    assert "only --tiny" in capsys.readouterr().err


def test_gpu_bench_pieces_run(monkeypatch):
    """The timing and report code runs (the simulator's numbers mean nothing); the whole
    script runs with ``NUMBA_ENABLE_CUDASIM=1 python -m nnjit.bench.gpu --tiny``."""
    from nnjit.bench import gpu as gpu_bench
    monkeypatch.setattr(config, "CUDA_TILE", 8)
    X, y = gpu_bench.make_data(10, 6, 3)
    r = {"numba-simple": gpu_bench.time_numba([6, 5, 3], X, y, 10, "simple", 1),
         "loops": gpu_bench.time_loops([6, 5, 3], X, y, 10, 10), "torch": {"skipped": "test"}}
    assert r["numba-simple"]["ms"] > 0 and r["loops"]["measured_samples"] == 10
    text = gpu_bench.table([dict(network="6-5-3", batch=10, impls=r)], 10)
    assert "numba-simple" in text and "skipped: test" in text and "x" in text


def test_gpu_bench_torch_sgd_is_ours():
    """The benchmark's PyTorch loop (Linear + ReLU, mean cross-entropy, foreach momentum)
    follows the same trajectory as the float64 loops backend, so its timing compares like
    with like. Runs on the CPU; needs torch."""
    torch = pytest.importorskip("torch")
    from nnjit.bench import gpu as gpu_bench
    X, y = gpu_bench.make_data(20, 6, 3, seed=1)
    ref = MLP([6, 7, 5, 3], activation="relu", backend="loops", dtype="float64", seed=0)
    w = gpu_bench.torch_weights(torch, ref.weights, ref.biases, X, y, 7, 2, device="cpu")
    ref.fit(X, y, epochs=2, lr=gpu_bench.LR, momentum=gpu_bench.MU, batch_size=7, shuffle=False)
    want = np.concatenate([x.ravel() for x in ref.weights + ref.biases])
    assert np.abs(want - np.concatenate([x.ravel() for x in
                  MLP([6, 7, 5, 3], backend="loops", seed=0).weights + [np.zeros(7), np.zeros(5), np.zeros(3)]])).max() > 1e-3
    np.testing.assert_allclose(w, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_engine_sums_match_the_cpu_engine(dtype):
    """sums(): the per-shard sum of corrections, costs and max error that chunked and
    distributed training add up, twice with one kept buffer (the second call smaller)."""
    layers, hidden, output, loss = NETS[1]
    X, Y = problem(layers, output, seed=2)
    lo, cu = nets(layers, hidden, output, loss, dtype, ("loops", "cuda"))
    if not hasattr(lo.engine, "sums"):
        pytest.skip("this CPU engine has no sums()")
    for n in (M, 4):
        Xc, Yc = lo.check_X(X[:n]), lo.check_y(Y[:n], n)
        want, got = lo.engine.sums(Xc, Yc, lo.loss_code), cu.engine.sums(Xc, Yc, cu.loss_code)
        assert len(want) == len(got) == 4
        assert np.abs(want[0]).max() > 0
        assert_close(got[0], want[0], dtype, "sum of corrections")
        assert_close(got[1:], want[1:], dtype, "sum of costs, max error")


def test_copy_and_save_move_weights_between_backends(tmp_path):
    """deepcopy (what joblib and sklearn's clone use) and the .npz format carry a cuda
    net's weights and velocities off the device and onto another backend."""
    import copy
    X, y = problem([5, 4, 3], "softmax")
    net = MLP([5, 4, 3], activation="tanh", backend="cuda", dtype="float64", seed=0)
    net.fit(X, y.argmax(axis=1), epochs=1, batch_size=4, momentum=0.9)
    twin = copy.deepcopy(net)
    assert twin.backend == "cuda" and twin.engine is not net.engine
    np.testing.assert_array_equal(twin.engine.get_state()["vel"], net.engine.get_state()["vel"])
    net.save(tmp_path / "net.npz")
    cpu = MLP.load(tmp_path / "net.npz", backend="loops")
    for a, b in zip(cpu.weights + cpu.biases, twin.weights + twin.biases):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(cpu.predict(X), net.predict(X))


_R = __import__("nnjit").rules


@pytest.mark.parametrize("case,rule", [("denormal_state_case", r.code) for r in _R.RULES]
                         + [("tiny_gradient_case", _R.CODES[n]) for n in ("adam", "rmsprop")])
def test_rules_keep_clear_of_denormals_on_cuda(case, rule):
    """The rules' flush of denormal state, and the second moment's cut at SQ_MIN, run in the
    CUDA form as in the others (the cases of test_kernels)."""
    import test_kernels
    args = getattr(test_kernels, case)(np.float32, rule)
    from nnjit import cuda as nc
    got = run_cuda(lambda *a: nc.update(*a), args, 3)
    want = run_vec("update", args, 3)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kernel", ["forward_layer", "backward_layer", "output_error"])
def test_tiny_activations_and_errors_are_flushed_on_cuda(version, kernel):
    """The flush of activations and errors below sqrt(TINY) (nnjit.activations.flush) runs in
    the CUDA form as in the others: the same zeros, nothing left in (0, sqrt(TINY)) (the cases
    of test_kernels)."""
    import test_kernels
    cases, root = test_kernels.flush_cases(np.float32)
    args, n = cases[kernel]
    fn = nc.output_error if kernel == "output_error" else launcher(kernel, version)
    got = run_cuda(fn, args, n)
    want = run_vec(kernel, args, n)
    for g, w in zip(got, want):
        assert not ((g != 0) & (np.abs(g) < root)).any(), g
        np.testing.assert_array_equal(g == 0, w == 0)
        assert_close(g, w, np.float32)


@pytest.mark.parametrize("text", ["Grid size 6 will likely result in GPU under-utilization due "
                                  "to low occupancy.",
                                  "\x1b[1mGrid size 64 will likely result in GPU "
                                  "under-utilization due to low occupancy.\x1b[0m",
                                  "\x1b[1m\x1b[1mGrid size 640 will likely result in GPU "
                                  "under-utilization due to low occupancy.\x1b[0m\x1b[0m"])
@pytest.mark.parametrize("colorama", [False, True])
def test_small_grid_warnings_are_silenced_plain_and_bold(text, colorama, tmp_path):
    """numba-cuda warns on every small-grid launch; on a real GPU (first seen on an H200) the
    text comes wrapped in a terminal's bold escape, which the filter missed: 91 warnings in
    one test run. Where colorama is installed, Numba's warning class wraps every message in
    one escape more (CI's interpreter has it): a stand-in colorama module plays that case. A
    fresh process, so pytest's own filters play no part; the other warning must still show,
    whatever escapes surround it."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    if colorama:
        (tmp_path / "colorama").mkdir()
        (tmp_path / "colorama" / "__init__.py").write_text(
            "__version__ = '0.4.6'\n"
            "class _S:\n    def __getattr__(self, name):\n        return ''\n"
            "class Style:\n    BRIGHT = '\\x1b[1m'\n    RESET_ALL = '\\x1b[0m'\n"
            "Fore = Back = _S()\n"
            "def init(*a, **k):\n    pass\n"
            "reinit = deinit = init\n")
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    else:
        env["NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING"] = "1"  # plain, colorama or not
    code = ("import warnings, sys, re\nimport nnjit.cuda\n"
            "from numba.core.errors import NumbaPerformanceWarning\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            f"    warnings.warn(NumbaPerformanceWarning({text!r}))\n"
            "    warnings.warn(NumbaPerformanceWarning('another performance warning'))\n"
            "print(repr([str(x.message) for x in w]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    shown = eval(r.stdout.strip())
    assert [re.sub(r"\x1b\[[0-9;]*m", "", m) for m in shown] == ["another performance warning"], shown
