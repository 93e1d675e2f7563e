"""What every nnjit benchmark shares: the synthetic data, the thread pinning, the backend
checks and the correctness check that runs in ``setup`` before anything is timed.

Not a benchmark module: asv finds no ``time_``/``peakmem_``/``track_`` names here.
Everything a ``setup`` needs is memoised per process, so asv_runner versions that re-run
``setup`` before every timed call (0.3) only pay a dictionary look-up.
"""
import math
import os

import numpy as np

#: Network sizes, named as the tables show them: digits-sized and MNIST-sized.
NETWORKS = {"64-32-10": [64, 32, 10], "784-128-10": [784, 128, 10]}
#: One row per backend in every table; "cuda" is skipped without a GPU.
BACKENDS = ["loops", "vectorised", "cuda"]
#: 1 is the lecture's online learning; 32 and 256 are mini-batches.
BATCH_SIZES = [1, 32, 256]
#: Samples in one timed epoch: small enough for --quick in CI, large enough that an
#: epoch at batch 256 still has 8 batches.
N_TRAIN = 2048
N_TEST = 1024
#: Training hyper-parameters of every timed and tracked fit. With sigmoid units, inputs
#: in [0, 1) and momentum 0.9, lr 0.1 is already chaotic: the loss climbs and two runs
#: that differ by one rounding (float64 included) end far apart. At 0.02 they agree.
LR, MOMENTUM = 0.02, 0.9
#: float32 agreement of loops (or cuda) with vectorised, relative to the largest value:
#: sums run in different orders, so bit equality is not expected.
RTOL = 1e-4


def bench_threads():
    """Threads for Numba and BLAS: NNJIT_BENCH_THREADS (default 2), at most what Numba's
    pool has (NUMBA_NUM_THREADS). A parameter of every timing, so results say it."""
    import numba
    raw = os.environ.get("NNJIT_BENCH_THREADS", "2")
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"NNJIT_BENCH_THREADS must be a positive integer, got {raw!r}") from None
    if n < 1:
        raise ValueError(f"NNJIT_BENCH_THREADS must be a positive integer, got {raw!r}")
    return min(n, numba.config.NUMBA_NUM_THREADS)


THREADS = bench_threads()
_blas_limit = None


def pin_threads(n):
    """Numba's prange pool and the BLAS behind NumPy both to n threads, so loops and
    vectorised get the same cores (an unpinned OpenBLAS would take all of them)."""
    global _blas_limit
    import numba
    numba.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:       # the limit is then whatever OPENBLAS_NUM_THREADS says
        return
    if _blas_limit is None:
        _blas_limit = threadpool_limits(limits=n)


def cuda_ready():
    """None if the cuda backend can run for real here, else why not. The simulator does
    not count: its timings say nothing about a GPU."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return "NUMBA_ENABLE_CUDASIM is set (simulator timings are meaningless)"
    try:
        from numba import cuda
        if not cuda.is_available():
            return "no CUDA GPU"
        import nnjit.cuda  # noqa: F401  (this commit may predate the cuda backend)
    except Exception as e:   # no numba-cuda, no driver, or no nnjit.cuda at this commit
        return f"cuda backend unavailable: {type(e).__name__}: {e}"
    return None


def require(backend):
    """Skip (NotImplementedError is asv's skip) a backend this machine cannot run."""
    if backend == "cuda":
        why = cuda_ready()
        if why:
            raise NotImplementedError(why)


_DATA = {}


def teacher_data(D, K=10, n=N_TRAIN, split=0):
    """(X (n, D) float32 in [0, 1), y (n,) labels 0..K-1) from a fixed random teacher
    network, so the task is learnable and every run sees the same numbers.
    split 0 is the training set, 1 the test set: same teacher, other inputs."""
    key = (D, K, n, split)
    if key not in _DATA:
        t = np.random.default_rng(12345)
        W1 = t.normal(0.0, 3.0 / math.sqrt(D), (D, 32))   # std(z) ~ 0.9: tanh not saturated
        W2 = t.normal(0.0, 1.0, (32, K))
        rng = np.random.default_rng(split)
        X = rng.random((n, D), dtype=np.float32)
        y = (np.tanh((X - 0.5) @ W1) @ W2).argmax(axis=1)
        _DATA[key] = (X, y)
    return _DATA[key]


def data(network, n=N_TRAIN, split=0):
    layers = NETWORKS[network]
    return teacher_data(layers[0], layers[-1], n, split)


def new_net(network, backend, seed=0):
    from nnjit import MLP
    return MLP(NETWORKS[network], activation="sigmoid", output="softmax", backend=backend,
               dtype="float32", seed=seed)


def max_dev(a, b):
    """(max |a - b|, max |b|) over lists of arrays."""
    return (max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                for x, y in zip(a, b)),
            max(float(np.max(np.abs(y))) for y in b))


_CHECKED = {}


def check_backend(network, backend, batch_size):
    """Compile ``backend`` for this batch size (the first call compiles, or loads Numba's
    cache) and assert it agrees with the vectorised form on forward, gradients and one
    epoch of training. Returns the largest relative deviation. Memoised per process."""
    key = (network, backend, batch_size)
    if key in _CHECKED:
        return _CHECKED[key]
    X, y = data(network)
    n = max(2 * batch_size, 64)
    Xs, ys = X[:n], y[:n]
    nets = {b: new_net(network, b) for b in {backend, "vectorised"}}
    outs = {}
    for b, net in nets.items():
        fwd = [net.forward(Xs)]
        dW, db = net.gradients(Xs, ys)
        net.fit(Xs, ys, epochs=1, lr=LR, momentum=MOMENTUM, batch_size=batch_size, shuffle=False)
        outs[b] = (fwd, dW + db, net.weights + net.biases)
    worst = 0.0
    for what, got, want in zip(("forward", "gradients", "weights after one epoch"),
                               outs[backend], outs["vectorised"]):
        dev, scale = max_dev(got, want)
        rel = dev / max(scale, 1e-30)
        if not rel <= RTOL:
            raise AssertionError(f"{backend} disagrees with vectorised on {what} for "
                                 f"{network}, batch {batch_size}: max |diff| {dev:.3g} "
                                 f"(largest value {scale:.3g}, allowed relative {RTOL})")
        worst = max(worst, rel)
    _CHECKED[key] = worst
    return worst
