"""Data-parallel training on a Dask cluster (``pip install 'nnjit[distributed]'``).

The lecture's batch mode makes this possible: the correction is a mean over the M samples,
Δw_ij = (1/M) Σ_m a_i δ_j,m, so it splits into per-shard sums Σ_{m in shard} Δw_m that can be
computed anywhere and added. :func:`fit` cuts X, y into one shard per worker (rows), keeps
each shard in its worker's memory for the whole run (validated and converted once, on the
worker), and per step sends only the weights out and the sums back:

``mode="sync"``
    Each worker computes Σ Δw, Σ Δb and Σ C_m over its shard with the compiled loops
    (one forward pass, :meth:`nnjit.engine.CPUEngine.sums`); the driver adds the shards'
    sums in a fixed order, divides by the number of samples, applies the momentum update
    v <- mu v - eta Δw ; w <- w + v and sends the new weights. With ``batch_size=None`` one
    step per epoch: exactly single-machine full-batch training, ``MLP.fit(batch_size=None)``,
    to float rounding. With ``batch_size=B`` every shard contributes its next B rows per step
    (a global batch of about B x shards): large-batch training, one round trip per step.
    Rows are taken in their stored order (no shuffling: shuffle the data once beforehand).
``mode="average"``
    Each worker runs a whole local epoch of mini-batch SGD (``batch_size``, default 32) on its
    shard (rows shuffled with a seed per epoch and shard) from the same weights and velocities; the driver averages the returned weights
    and velocities, weighted by shard size (periodic model averaging, "local SGD"). One
    round trip per epoch instead of one per step, so it communicates far less; but it is an
    approximation: the workers' trajectories drift apart within an epoch, so the average is
    not the step single-machine SGD would take and it usually needs more epochs (the drift
    grows with the learning rate and the number of workers). With ``batch_size=None`` each
    local epoch is one full-batch step and averaging gives exactly the sync update.

What travels per step: the weights to every shard, a flat vector of P parameters (P x
itemsize bytes each), and one P-vector of sums back: 2 x P x shards x itemsize bytes, where
P = ``net.n_params`` (sync; "average" sends weights and velocities both ways once per epoch,
4 x P x shards x itemsize). The data never moves after the shards are built, unless a
worker dies and its shards are rebuilt elsewhere.

Faults: the driver keeps each shard's recipe (a slice of the caller's array, or a block of
its Dask graph). When a worker dies, the shards it held are rebuilt on the remaining (or
restarted) workers and the step's lost tasks rerun. The shards' sums are added in shard
order, not arrival order, and every loop kernel sums in a fixed order, so a run with a worker
killed mid-training gives the same weights as one without. A worker that dies on every try
(a crash in native code, memory exhausted) stops the fit with :class:`WorkerCrashError`
after ``MAX_SHARD_LOSSES`` losses in one step, rather than restarting forever.

Not for one machine's worth of data (``MLP.fit`` is faster, and streams data larger than
memory by itself, see :mod:`nnjit.data`).
"""
import math
import numbers
import threading
import time

import numpy as np

from . import config
from . import data as _data
from . import rules as R
from .model import DivergenceError, MLP, _check_positive_int

MODES = ("sync", "average")


# ---------------------------------------------------------------- on the workers
def _worker_net(spec):
    """An MLP with the driver's architecture, for its input checks (cheap to build)."""
    net = MLP(spec["layers"], activation=spec["activation"], output=spec["output"],
              loss=spec["loss"], backend=spec["backend"], dtype=spec["dtype"])
    net.classes_ = spec["classes"]
    return net


def _prepare(spec, X, y, S=None):
    """A shard as the engine wants it: X contiguous in the model's dtype, y as (M, K), the
    sample weights S (M,) in the model's dtype (ones without weights)."""
    net = _worker_net(spec)
    X = net._check_X(X)
    S = np.ones(X.shape[0]) if S is None else S
    return X, net._check_y(y, X.shape[0], fit=True), np.ascontiguousarray(S, net.dtype)


_local = threading.local()


def _engine(spec, theta, vel=None):
    """This worker thread's engine for spec's network, loaded with theta (and vel): kept
    between tasks so that its buffers are allocated once, not every step."""
    if spec["threads"] is not None:     # numba's thread count is per calling thread
        import numba
        numba.set_num_threads(min(spec["threads"], numba.config.NUMBA_NUM_THREADS))
    key = tuple(repr(spec[k]) for k in ("layers", "activation", "output", "loss", "dtype", "backend"))
    cached = getattr(_local, "engine", None)
    if cached is None or cached[0] != key:
        net = _worker_net(spec)
        cached = _local.engine = (key, net._engine, net._loss)
    engine = cached[1]
    engine.set_params(theta)
    engine.set_velocity(np.zeros_like(theta) if vel is None else vel)
    return engine, cached[2]


def _shard_sums(spec, theta, shard, lo, hi):
    """(Σ s_m Δw_m flat, Σ s_m C_m, max |a - y|, Σ s_m, seconds) over rows lo:hi of one shard."""
    t0 = time.perf_counter()
    X, Y, S = shard
    engine, loss = _engine(spec, theta)
    # pieces bound the activation buffers (3 x rows x all units) to about STREAM_CHUNK_BYTES
    step = max(1, config.STREAM_CHUNK_BYTES // (3 * int(engine.shape.a_off[-1]) * X.itemsize))
    g, c, e, w = np.zeros(theta.shape, np.float64), 0.0, 0.0, 0.0
    for s in range(lo, hi, step):
        sl = slice(s, min(s + step, hi))
        gs, cs, es, ws = engine.sums(X[sl], Y[sl], loss, S[sl])
        g += gs
        c, e, w = c + cs, max(e, es), w + ws
    return g.astype(theta.dtype), c, e, w, time.perf_counter() - t0


def _shard_epoch(spec, theta, vel, shard, batch_size, eta, mu, seed):
    """One local epoch of SGD on a shard: (theta, vel, Σ s_m C_m, max |a - y|, Σ s_m, seconds)."""
    t0 = time.perf_counter()
    X, Y, S = shard
    engine, loss = _engine(spec, theta, vel)
    M = X.shape[0]
    order = (np.arange(M) if seed is None else np.random.default_rng(seed).permutation(M))
    engine.begin_fit(X, Y, min(batch_size, M), S)
    hyper = R.hyper(eta, mu, (0.9, 0.999), 1e-8, 0.0, 0.0, "pytorch")
    total, emax = engine.train_epoch(order.astype(np.int64), min(batch_size, M), R.RULE_SGD,
                                     hyper, loss)
    engine.end_fit()
    return (engine.get_params(), engine.get_velocity(), total, emax, float(S.astype(np.float64).sum()),
            time.perf_counter() - t0)


# ---------------------------------------------------------------- on the driver
class WorkerCrashError(RuntimeError):
    """A Dask worker process died (crashed or was killed) again and again while running
    nnjit's tasks; the weights are those of the last finished epoch."""


#: how many times the shards of one step may be lost with their workers (rebuilt from the
#: driver's data each time) before fit gives up with WorkerCrashError
MAX_SHARD_LOSSES = 3
_POLL_S = 0.5


class _Shards:
    """The shards on the workers, and the steps run on them.

    Dask's lineage alone does not bring lost shards back: when every worker holding them dies
    at once, the restarted workers get the tasks back but the shards stay "lost" and the step
    waits forever (reproduced with plain Dask). So the driver keeps the recipe of each shard,
    watches its tasks, rebuilds a shard that is lost and resubmits that shard's task, and after
    MAX_SHARD_LOSSES losses in one step (a worker that crashes on every try) stops with
    WorkerCrashError instead of an endless series of restarts."""

    def __init__(self, client, build, n):
        self.client, self.build = client, build
        self.futures = [build(s) for s in range(n)]
        self._check(self.futures, "building the shards")

    def _check(self, futures, what):
        import distributed
        distributed.wait(futures)
        for f in futures:
            if f.status == "error":
                _raise_task_error(f, what)

    def run(self, submit, which):
        """[submit(s, shard future) result for s in which], in that order."""
        import distributed
        from distributed.client import FuturesCancelledError
        which = list(which)
        tasks = {s: submit(s, self.futures[s]) for s in which}
        losses = 0
        while True:
            try:
                distributed.wait(list(tasks.values()), timeout=_POLL_S)
            except (TimeoutError, FuturesCancelledError):   # cancelled: its shard was lost
                pass
            for s, f in tasks.items():
                if f.status == "error":
                    _raise_task_error(f, "training")
            if all(f.status == "finished" for f in tasks.values()):
                return self.client.gather([tasks[s] for s in which])
            lost = [s for s in which if tasks[s].status == "cancelled"
                    or self.futures[s].status in ("lost", "cancelled", "error")]
            if not lost:
                continue
            losses += 1
            if losses > MAX_SHARD_LOSSES:
                raise WorkerCrashError(
                    f"Dask workers died {losses} times during one training step (the shards "
                    f"they held were lost each time); stopping instead of restarting them "
                    f"forever. A worker dies of a crash in native code or of running out of "
                    f"memory: see the workers' logs (client.get_worker_logs()). The weights "
                    f"are those of the last finished epoch.")
            # the lost keys stay stuck while anything holds them (their recomputation never
            # starts): cancel the waiting tasks and the lost shards, then build them anew
            self.client.cancel([tasks[s] for s in lost] + [self.futures[s] for s in lost],
                               force=True)
            for s in lost:
                self.futures[s] = self.build(s)
                tasks[s] = submit(s, self.futures[s])


def _raise_task_error(future, what):
    exc = future.exception()
    if type(exc).__name__ == "KilledWorker":
        raise WorkerCrashError(
            f"a Dask worker died each time it ran nnjit's task while {what} ({exc}); a worker "
            f"dies of a crash in native code or of running out of memory: see the workers' "
            f"logs (client.get_worker_logs()). The weights are those of the last finished "
            f"epoch.") from exc
    raise exc


def _connect(client, timeout):
    """(Client, whether we opened it) with clear errors for the ways this goes wrong."""
    try:
        from distributed import Client, default_client
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("nnjit.distributed needs Dask: pip install 'nnjit[distributed]'") from e
    if client is None:
        try:
            return default_client(), False
        except ValueError as e:
            raise ValueError("nnjit.distributed.fit needs a Dask cluster: pass client=Client(...) "
                             "or a scheduler address such as 'tcp://host:8786'") from e
    if isinstance(client, str):
        try:
            return Client(client, timeout=timeout, set_as_default=False), True
        except (OSError, TimeoutError) as e:
            raise ConnectionError(
                f"cannot reach the Dask scheduler at {client!r} within {timeout} ({e}); is "
                "`dask scheduler` running there, and reachable through the firewall?") from e
    if isinstance(client, Client):
        if client.status != "running":
            raise ConnectionError(f"the Dask client is not connected (status {client.status!r})")
        return client, False
    raise TypeError(f"client must be a distributed.Client, a scheduler address or None, "
                    f"got {type(client).__name__}")


def _blocks(A, rows):
    """Row blocks of A (lengths ``rows``): for each, a function (client, worker) giving a
    future of the block. Dask arrays and out-of-core data keep their lineage (workers compute or
    read their block); in-memory blocks are scattered anew each time (fresh keys: a block
    lost with its worker must not come back under its old key, which Dask keeps stuck)."""
    import dask.array as da
    if hasattr(A, "__dask_graph__") or _data.is_out_of_core(A):
        if not hasattr(A, "__dask_graph__"):        # memmap, zarr, h5py
            A = da.from_array(A, chunks=(rows,) + tuple(A.shape[1:]))
        blocks = list(A.rechunk({0: rows}).to_delayed().ravel())
        return [lambda client, w, b=b: client.compute(b) for b in blocks]
    A = np.asarray(A)
    bounds = np.cumsum((0,) + rows)
    return [lambda client, w, lo=lo, hi=hi: client.scatter(A[lo:hi], workers=[w], hash=False)
            for lo, hi in zip(bounds[:-1], bounds[1:])]


def _alive_worker(client, s):
    """The s-th worker (round robin) among those alive now; waits for one to come back."""
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    if not workers:
        try:
            client.wait_for_workers(1, timeout=120)
        except TimeoutError:
            raise WorkerCrashError("the Dask cluster has no workers left (they died and did "
                                   "not come back within 120 s)") from None
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    return workers[s % len(workers)]


def _labels(net, y):
    """Set net.classes_ from all of y (1-D labels of a classifier), as MLP.fit does."""
    if not (net._is_classifier and len(y.shape) == 1 and net.classes_ is None):
        return
    if hasattr(y, "__dask_graph__"):
        import dask.array as da
        labels = da.unique(y).compute()
    else:
        labels = np.unique(np.asarray(y))
    net._check_y(labels, labels.shape[0], fit=True)


def fit(net, X, y, client=None, mode="sync", epochs=10, lr=0.1, momentum=0.0,
        batch_size="auto", n_shards=None, shuffle=True, callbacks=None, timeout="10s",
        worker_threads=None, timings=None, sample_weight=None):
    """Train ``net`` (an :class:`nnjit.MLP`) data-parallel on a Dask cluster; returns ``net``.

    X, y: Dask arrays, or anything MLP.fit takes (NumPy, memmap, zarr), cut into shards here.
    client: a ``distributed.Client``, a scheduler address ("tcp://host:8786", connected with
    ``timeout`` and closed afterwards), or None for the current default client.
    mode: "sync" (exact: the sum of the shards' corrections) or "average" (local SGD epochs,
    weights averaged); see the module docstring. batch_size: "auto" is None (full batch) for
    sync and 32 for average; an int is the rows each shard contributes per step (sync) or
    the local mini-batch (average). n_shards: default one per worker. shuffle: "average"
    shuffles each shard's rows every epoch (seeded from the net's generator, so a rerun
    gives the same weights); "sync" keeps stored order. lr, momentum, epochs, callbacks as
    in MLP.fit; net.history_["loss"] and net.n_epochs_ are updated the same way.
    worker_threads: Numba threads each task uses on its worker (None: Numba's default, every
    core of the worker's machine; give cores / worker processes when several share one).
    timings: a list to which a dict per epoch is appended (wall seconds, the slowest
    worker's compute seconds per step summed, bytes of weights and sums moved); for
    benchmarks. sample_weight: (n,) weights as in MLP.fit (held in memory, cut with the
    shards): sync mode's step is then the weighted mean Σ s_m Δw_m / Σ s_m over the step's
    rows of all shards; average mode weights each shard's result by its weight sum.
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net must be an nnjit.MLP, got {type(net).__name__}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(map(repr, MODES))}")
    epochs = _check_positive_int("epochs", epochs)
    if not callable(lr) and not (isinstance(lr, numbers.Real) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number or a callable lr(epoch), got {lr!r}")
    if not (isinstance(momentum, numbers.Real) and 0 <= momentum < 1):
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if batch_size == "auto":
        batch_size = None if mode == "sync" else 32
    batch_size = _check_positive_int("batch_size", batch_size, allow_none=True)
    if not hasattr(X, "shape"):
        X = np.asarray(X)
    if not hasattr(y, "shape"):
        y = np.asarray(y)
    if len(X.shape) != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be 2-D (samples, features) with samples, got shape {tuple(X.shape)}")
    if len(y.shape) not in (1, 2) or y.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples but y has shape {tuple(y.shape)}")
    callbacks = list(callbacks or [])
    S = net._check_weights(sample_weight, int(X.shape[0]))
    if worker_threads is not None:
        worker_threads = _check_positive_int("worker_threads", worker_threads)

    client, opened = _connect(client, timeout)
    try:
        with client.as_current():     # dask.compute and distributed.wait use this client
            _fit(net, X, y, client, mode, epochs, lr, momentum, batch_size, n_shards, shuffle,
                 callbacks, worker_threads, timings, S)
    finally:
        if opened:
            client.close()
    return net


def _fit(net, X, y, client, mode, epochs, lr, momentum, batch_size, n_shards, shuffle,
         callbacks, threads, timings, S=None):
    """Build the shards on the workers (one per worker unless n_shards says otherwise), then train."""
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    if not workers:
        raise ConnectionError("the Dask cluster has no workers; start some with "
                              "`dask worker <scheduler address>`")
    M = int(X.shape[0])
    n = _check_positive_int("n_shards", n_shards) if n_shards is not None else len(workers)
    n = min(n, M)
    rows = tuple(int(r) for r in np.diff(np.linspace(0, M, n + 1).round().astype(np.int64)))
    _labels(net, y)
    spec = dict(layers=net.layers, activation=net.activation, output=net.output,
                loss=net.loss, dtype=net.dtype, classes=net.classes_,
                backend=net.backend if net.backend in ("loops", "vectorised") else "loops",
                threads=threads)
    edges = np.concatenate([[0], np.cumsum(rows)])
    xbs, ybs = _blocks(X, rows), _blocks(y, rows)

    def build(s):               # shard s on a live worker (a restriction to a dead one never runs)
        w = _alive_worker(client, s)
        Ss = None if S is None else S[edges[s]:edges[s + 1]]
        return client.submit(_prepare, spec, xbs[s](client, w), ybs[s](client, w), Ss, pure=False,
                             workers=[w], allow_other_workers=True)
    shards = _Shards(client, build, len(rows))
    seed0 = int(net._rng.integers(2**63)) if (mode == "average" and shuffle) else None
    _train(net, client, shards, rows, spec, mode, epochs, lr, momentum, batch_size,
           seed0, callbacks, timings, float(M) if S is None else float(S.sum()))


def _train(net, client, shards, rows, spec, mode, epochs, lr, momentum, batch_size, seed0,
           callbacks, timings, w_total):
    M = sum(rows)
    dtype = np.dtype(net.dtype)
    steps = 1 if (mode == "average" or batch_size is None) else -(-max(rows) // batch_size)
    for _ in range(epochs):
        epoch = net.n_epochs_
        eta = lr(epoch) if callable(lr) else lr
        if not (isinstance(eta, numbers.Real) and eta > 0 and math.isfinite(eta)):
            raise ValueError(f"lr({epoch}) returned {eta!r}; it must be a positive number")
        theta, vel = net._engine.get_params(), net._engine.get_velocity()
        saved = (theta.copy(), vel.copy())
        total, compute, moved = 0.0, 0.0, 0
        t0 = time.perf_counter()
        if mode == "sync":
            for t in range(steps):
                b = max(rows) if batch_size is None else batch_size
                parts = [(s, min(t * b, r), min((t + 1) * b, r)) for s, r in enumerate(rows)]
                bounds = {s: (lo, hi) for s, lo, hi in parts if hi > lo}
                res = shards.run(lambda s, shard: client.submit(
                    _shard_sums, spec, theta, shard, *bounds[s], pure=False), bounds)
                g = np.zeros(theta.shape, np.float64)
                for r in res:                     # in shard order: the same sum every run
                    g += r[0]
                count = sum(r[3] for r in res)          # the step's weight (rows unweighted)
                total += sum(r[1] for r in res)
                compute += max(r[4] for r in res)
                moved += 2 * len(res) * theta.nbytes
                if count <= 0:                        # only zero-weight rows: no step
                    continue
                vel = dtype.type(momentum) * vel - dtype.type(eta) * (g / count).astype(dtype)
                theta = theta + vel
        else:
            res = shards.run(lambda s, shard: client.submit(
                _shard_epoch, spec, theta, vel, shard, batch_size or rows[s], eta, momentum,
                None if seed0 is None else (seed0, epoch, s), pure=False), range(len(rows)))
            w = np.array([r[4] for r in res], np.float64)
            w /= w.sum()
            theta = sum(wi * r[0].astype(np.float64) for wi, r in zip(w, res)).astype(dtype)
            vel = sum(wi * r[1].astype(np.float64) for wi, r in zip(w, res)).astype(dtype)
            total = sum(r[2] for r in res)
            compute = max(r[5] for r in res)
            moved = 2 * len(res) * 2 * theta.nbytes      # weights and velocities, both ways
        wall = time.perf_counter() - t0
        loss = total / w_total
        if not math.isfinite(loss) or not np.isfinite(theta).all():
            net._engine.set_params(saved[0])
            net._engine.set_velocity(saved[1])
            raise DivergenceError(
                f"training diverged in epoch {epoch} (loss {loss}); the weights were "
                "restored to the last finite values; try a smaller lr or momentum")
        net._engine.set_params(theta)
        net._engine.set_velocity(vel)
        net.n_epochs_ += 1
        net.history_["loss"].append(loss)
        if timings is not None:
            timings.append({"wall_s": wall, "compute_s": compute, "bytes": moved, "steps": steps})
        if any([bool(cb(net, epoch, net.history_)) for cb in callbacks]):
            break
