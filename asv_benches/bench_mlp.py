"""nnjit's benchmarks: the loop form against the vectorised form (and CUDA on a GPU).

Every table has one row per backend. The timed benchmarks share the parameters
(threads, network, backend, batch_size); ``setup`` compiles the backend for that batch size
and asserts it agrees with the vectorised form (common.check_backend), so what is timed is
steady state, never a compile. Compile and cache-load times have benchmarks of their own
(``timeraw_``, each sample a fresh interpreter). CUDA results come back to the host inside
every timed call (loss totals, outputs, gradients), so the device is synchronised.

``threads`` is NNJIT_BENCH_THREADS (default 2), applied to Numba and to BLAS alike.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np

from .common import (BACKENDS, BATCH_SIZES, LR, MOMENTUM, N_TEST, NETWORKS, THREADS,
                     check_backend, cuda_ready, data, max_dev, new_net, pin_threads, require)

PARAMS = ([THREADS], list(NETWORKS), BACKENDS, BATCH_SIZES)
PARAM_NAMES = ["threads", "network", "backend", "batch_size"]
_WARM = set()


class Speed:
    """Steady-state time of one training epoch (2048 samples, through ``MLP.fit`` as a
    user calls it), one forward pass and one ``gradients`` call on a batch."""
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 300

    def setup(self, threads, network, backend, batch_size):
        require(backend)
        pin_threads(threads)
        check_backend(network, backend, batch_size)
        self.X, self.y = data(network)
        # one-hot targets: a batch of 1 or 32 need not hold every label, and 1-D labels
        # would fix the model's classes_ to those it saw
        self.Xb = self.X[:batch_size]
        self.Yb = np.eye(NETWORKS[network][-1], dtype=np.float32)[self.y[:batch_size]]
        key = (network, backend, batch_size)
        if key not in _WARM:
            # a batch below config.PARALLEL_MIN_SAMPLES takes the serial kernels, which the
            # check did not call: load (or compile) them here, not in the first timed call
            warm = new_net(network, backend)
            warm.forward(self.Xb)
            warm.gradients(self.Xb, self.Yb)
            _WARM.add(key)
        self.net = new_net(network, backend)

    def time_epoch(self, threads, network, backend, batch_size):
        self.net.fit(self.X, self.y, epochs=1, lr=LR, momentum=MOMENTUM,
                     batch_size=batch_size, shuffle=False)

    # an epoch at batch 1 takes a fifth of a second: a few samples suffice
    time_epoch.repeat = (3, 10, 10.0)

    def time_forward(self, threads, network, backend, batch_size):
        self.net.forward(self.Xb)

    def time_gradients(self, threads, network, backend, batch_size):
        self.net.gradients(self.Xb, self.Yb)


class Memory:
    """Peak resident memory of the process through a one-epoch fit at batch 32 (includes
    the interpreter, NumPy, Numba and LLVM: compare rows, not absolute values; the batch
    size moves it by under 1 %, so it is not a parameter here)."""
    params = PARAMS[:3]
    param_names = PARAM_NAMES[:3]
    timeout = 300

    def setup(self, threads, network, backend):
        Speed.setup(self, threads, network, backend, 32)

    def peakmem_fit(self, threads, network, backend):
        self.net.fit(self.X, self.y, epochs=1, lr=LR, momentum=MOMENTUM, batch_size=32,
                     shuffle=False)


QUALITY_EPOCHS = 10
QUALITY_BATCH = 32
AGREEMENT_EPOCHS = 2


def _short_fit(network, backend, batch_size=QUALITY_BATCH, epochs=QUALITY_EPOCHS):
    """A fixed-seed fit (shuffled by the model's own seeded generator, so every backend
    sees the same batches)."""
    X, y = data(network)
    net = new_net(network, backend)
    net.fit(X, y, epochs=epochs, lr=LR, momentum=MOMENTUM, batch_size=batch_size,
            shuffle=True)
    return net


def _runnable(backends):
    return [b for b in backends if b != "cuda" or cuda_ready() is None]


class Quality:
    """Accuracy beside speed: final training loss and held-out accuracy of a short
    fixed-seed fit (10 epochs, batch 32, lr 0.02, momentum 0.9). A kernel change that is
    faster but wrong shows up here. The fits run once, in ``setup_cache``."""
    params = (list(NETWORKS), BACKENDS)
    param_names = ["network", "backend"]
    timeout = 300

    def setup_cache(self):
        pin_threads(THREADS)
        out = {}
        for network in NETWORKS:
            Xt, yt = data(network, N_TEST, split=1)
            for backend in _runnable(BACKENDS):
                net = _short_fit(network, backend)
                out[network, backend] = (net.history_["loss"][-1], net.score(Xt, yt))
        return out

    def setup(self, results, network, backend):
        require(backend)

    def track_final_loss(self, results, network, backend):
        return results[network, backend][0]

    track_final_loss.unit = "cross-entropy"

    def track_test_accuracy(self, results, network, backend):
        return results[network, backend][1]

    track_test_accuracy.unit = "accuracy"


class Agreement:
    """How far the loop form (and cuda) drifts from the vectorised form after the same
    2-epoch fixed-seed fit: max |w - w_vectorised| over all weights and biases, and
    max |a^(L) - a^(L)_vectorised| on held-out data. float32 rounding only: ~1e-6.
    The fits run once, in ``setup_cache``."""
    params = (list(NETWORKS), ["loops", "cuda"], BATCH_SIZES)
    param_names = ["network", "backend", "batch_size"]
    timeout = 300

    def setup_cache(self):
        pin_threads(THREADS)
        out = {}
        for network in NETWORKS:
            Xt, _ = data(network, N_TEST, split=1)
            for batch_size in BATCH_SIZES:
                ref = _short_fit(network, "vectorised", batch_size, AGREEMENT_EPOCHS)
                for backend in _runnable(["loops", "cuda"]):
                    net = _short_fit(network, backend, batch_size, AGREEMENT_EPOCHS)
                    out[network, backend, batch_size] = (
                        max_dev(net.weights + net.biases, ref.weights + ref.biases)[0],
                        max_dev([net.forward(Xt)], [ref.forward(Xt)])[0])
        return out

    def setup(self, results, network, backend, batch_size):
        require(backend)

    def track_max_weight_deviation(self, results, network, backend, batch_size):
        return results[network, backend, batch_size][0]

    track_max_weight_deviation.unit = "abs. difference"

    def track_max_output_deviation(self, results, network, backend, batch_size):
        return results[network, backend, batch_size][1]

    track_max_output_deviation.unit = "abs. difference"


# ---------------------------------------------------------------- start-up: fresh processes
STARTUP_NETWORK = "784-128-10"
STARTUP_BATCH = 32


def _startup_code(backend, threads, cache_dir=None):
    """(stmt, setup) for a fresh interpreter: setup imports nnjit and builds the model
    (untimed); stmt is the first fit, forward and gradients call, which compile the
    kernels (empty Numba cache) or load them (cache_dir filled beforehand)."""
    if cache_dir is None:
        cache = ("_cache = tempfile.TemporaryDirectory()\n"
                 "os.environ['NUMBA_CACHE_DIR'] = _cache.name")
    else:
        cache = f"os.environ['NUMBA_CACHE_DIR'] = {cache_dir!r}"
    layers = NETWORKS[STARTUP_NETWORK]
    setup = f"""
import os, tempfile
{cache}
os.environ['NUMBA_NUM_THREADS'] = '{threads}'
os.environ['OPENBLAS_NUM_THREADS'] = '{threads}'
import numpy as np
from nnjit import MLP
rng = np.random.default_rng(0)
X = rng.random((64, {layers[0]}), dtype=np.float32)
y = np.arange(64) % {layers[-1]}
net = MLP({layers!r}, backend='{backend}', dtype='float32', seed=0)
"""
    stmt = f"""
net.fit(X, y, epochs=1, batch_size={STARTUP_BATCH}, shuffle=False)
net.forward(X)
net.gradients(X, y)
"""
    return stmt, setup


class Compile:
    """First-call time in a fresh process with an empty Numba cache: the JIT compile of
    every kernel a fit, a forward pass and a gradients call need (784-128-10, batch 32).
    For vectorised this is just the first-call overhead."""
    params = ([THREADS], BACKENDS)
    param_names = ["threads", "backend"]
    number = 1
    repeat = (1, 3, 120.0)
    processes = 1
    timeout = 600

    def setup(self, threads, backend):
        require(backend)

    def timeraw_first_call(self, threads, backend):
        return _startup_code(backend, threads)


class CacheLoad:
    """The same first calls in a fresh process whose Numba cache was filled by another
    process: what every later ``import nnjit`` session pays instead of a compile."""
    params = ([THREADS], BACKENDS)
    param_names = ["threads", "backend"]
    number = 1
    repeat = (1, 5, 60.0)
    processes = 1
    timeout = 600

    def setup_cache(self):
        dirs = {}
        for backend in BACKENDS:
            if backend == "cuda" and cuda_ready():
                continue
            d = os.path.abspath(f"numba-cache-{backend}")
            stmt, setup = _startup_code(backend, THREADS, d)
            subprocess.run([sys.executable, "-c", textwrap.dedent(setup) + textwrap.dedent(stmt)],
                           check=True)
            dirs[backend] = d
        return dirs

    def setup(self, dirs, threads, backend):
        require(backend)
        if backend not in dirs:
            raise NotImplementedError(f"no filled cache for {backend}")

    def timeraw_cached_first_call(self, dirs, threads, backend):
        return _startup_code(backend, threads, dirs[backend])


class Rules:
    """Steady-state time of one training epoch (2048 samples, ``MLP.fit``) per update rule on
    the loop form, float32: the rule is applied inside the fused correction kernels, so an
    Adam epoch should cost little more than a momentum-SGD one (README "Update rules")."""
    params = ([THREADS], ["784-128-10"], ["sgd", "nesterov", "adam", "adamw"], [32, 256])
    param_names = ["threads", "network", "optimizer", "batch_size"]
    timeout = 300

    def setup(self, threads, network, optimizer, batch_size):
        pin_threads(threads)
        self.X, self.y = data(network)
        self.kw = {"sgd": dict(momentum=MOMENTUM), "nesterov": dict(optimizer="nesterov", momentum=MOMENTUM),
                   "adam": dict(optimizer="adam"), "adamw": dict(optimizer="adamw", weight_decay=0.01)}[optimizer]
        new_net(network, "loops").fit(self.X[:2 * batch_size], self.y[:2 * batch_size], epochs=1,
                                      lr=LR, batch_size=batch_size, **self.kw)   # compile
        self.net = new_net(network, "loops")

    def time_epoch(self, threads, network, optimizer, batch_size):
        self.net.fit(self.X, self.y, epochs=1, lr=LR, batch_size=batch_size, shuffle=False, **self.kw)


WIDE = [784, 1024, 1024, 10]


class WideSpeed:
    """Steady-state time of one training epoch (2048 samples) of the wide network
    784-1024-1024-10 at batch 256 and 1024, where the products are large enough that BLAS
    sets the bar (README, *Performance*: ``nnjit bench --sweep``). ``setup`` checks the
    backend's outputs and one epoch's weights against the vectorised form first."""
    params = ([THREADS], ["loops", "vectorised"], [256, 1024])
    param_names = ["threads", "backend", "batch_size"]
    timeout = 300

    def setup(self, threads, backend, batch_size):
        from nnjit import MLP
        pin_threads(threads)
        from .common import RTOL, teacher_data
        self.X, self.y = teacher_data(WIDE[0], WIDE[-1])

        def make(b):
            return MLP(WIDE, activation="sigmoid", output="softmax", backend=b, dtype="float32", seed=0)
        got, want = make(backend), make("vectorised")
        for net in (got, want):
            net.fit(self.X[:batch_size], self.y[:batch_size], epochs=1, lr=LR, momentum=MOMENTUM,
                    batch_size=batch_size, shuffle=False)
        dev, scale = max_dev([got.forward(self.X[:64])] + got.weights,
                             [want.forward(self.X[:64])] + want.weights)
        if not dev <= RTOL * scale:
            raise AssertionError(f"{backend} disagrees with vectorised on the wide network at "
                                 f"batch {batch_size}: max |diff| {dev:.3g} (largest {scale:.3g})")
        self.net = make(backend)

    def time_epoch(self, threads, backend, batch_size):
        self.net.fit(self.X, self.y, epochs=1, lr=LR, momentum=MOMENTUM, batch_size=batch_size,
                     shuffle=False)

    time_epoch.repeat = (2, 5, 10.0)
