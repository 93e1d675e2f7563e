"""Data-parallel training on a Dask cluster (``pip install 'nnjit[distributed]'``).

The lecture's batch mode makes this possible: the correction is a mean over the M samples,
Δw_ij = (1/M) Σ_m a_i δ_j,m, so it splits into per-shard sums Σ_{m in shard} Δw_m that can be
computed anywhere and added. :func:`fit` cuts X, y into one shard per worker (rows), keeps
each shard in its worker's memory for the whole run (validated and converted once, on the
worker), and per step sends only the weights out and the sums back:

``mode="sync"``
    Each worker computes Σ s_m Δw_m and Σ s_m C_m over its shard with the compiled loops
    (one forward pass, :meth:`nnjit.engine.CPUEngine.sums`); the driver adds the shards' sums
    in a fixed order, divides by their weight and applies the update rule -- any of
    nnjit.rules, with alpha's L2 term -- to its copy of the weights, and sends them out
    again. With ``batch_size=None`` one step per epoch: exactly single-machine full-batch
    training, ``MLP.fit(batch_size=None)``, to float rounding, for every rule. With
    ``batch_size=B`` every shard contributes its next B rows per step (a global batch of
    about B x shards): large-batch training, one round trip per step. Rows are taken in
    their stored order (no shuffling: shuffle the data once beforehand).
``mode="average"``
    Each worker runs a whole local epoch of mini-batch training (``batch_size``, default 32)
    on its shard (rows shuffled with a seed per epoch and shard) from the same weights and
    optimizer state; the driver averages the returned weights and state, weighted by shard
    weight (periodic model averaging, "local SGD"; the update count becomes the largest
    shard's). One round trip per epoch instead of one per step, so it communicates far less;
    but it is an approximation: the workers' trajectories drift apart within an epoch, so the
    average is not the step single-machine training would take and it usually needs more
    epochs. With ``batch_size=None`` each local epoch is one full-batch step and averaging
    gives exactly the sync update (for rules whose state averages linearly: SGD, Nesterov).

Both run nnjit's one training loop (nnjit.training): the schedules, stopping rules,
validation data, restore_best, checkpoints and callbacks of :meth:`nnjit.MLP.fit` work the
same here.

What travels per step: the weights to every shard, a flat vector of P parameters (P x
itemsize bytes each), and one P-vector of sums back: 2 x P x shards x itemsize bytes, where
P = ``net.n_params`` (sync; "average" sends weights and optimizer state both ways once per
epoch, 6 x P x shards x itemsize). The data never moves after the shards are built, unless a
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
import threading
import time
from concurrent.futures import CancelledError

import numpy as np

from . import checks, config
from . import data as _data
from .layout import weight_mask
from .model import MLP

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
    X = net.check_X(X)
    S = np.ones(X.shape[0]) if S is None else S
    return X, net.check_y(y, X.shape[0], fit=True), np.ascontiguousarray(S, net.dtype)


_local = threading.local()


def _engine(spec, theta, state=None):
    """This worker thread's engine for spec's network, loaded with theta (and the optimizer
    state): kept between tasks so that its buffers are allocated once, not every step."""
    if spec["threads"] is not None:     # numba's thread count is per calling thread
        import numba
        numba.set_num_threads(min(spec["threads"], numba.config.NUMBA_NUM_THREADS))
    key = tuple(repr(spec[k]) for k in ("layers", "activation", "output", "loss", "dtype", "backend"))
    cached = getattr(_local, "net", None)
    if cached is None or cached[0] != key:
        cached = _local.net = (key, _worker_net(spec))
    net = cached[1]
    net.engine.set_params(theta)
    if state is not None:
        net.engine.set_state(state)
    return net


def _shard_sums(spec, theta, shard, lo, hi):
    """(Σ s_m Δw_m flat, Σ s_m C_m, max |a - y|, Σ s_m, seconds) over rows lo:hi of one shard."""
    t0 = time.perf_counter()
    X, Y, S = shard
    net = _engine(spec, theta)
    # pieces bound the activation buffers (3 x rows x all units) to about STREAM_CHUNK_BYTES
    step = max(1, config.STREAM_CHUNK_BYTES // (3 * int(net.shape.a_off[-1]) * X.itemsize))
    g, c, e, w = np.zeros(theta.shape, np.float64), 0.0, 0.0, 0.0
    for s in range(lo, hi, step):
        sl = slice(s, min(s + step, hi))
        gs, cs, es, ws = net.engine.sums(X[sl], Y[sl], net.loss_code, S[sl])
        g += gs
        c, e, w = c + cs, max(e, es), w + ws
    return g.astype(theta.dtype), c, e, w, time.perf_counter() - t0


def _shard_epoch(spec, theta, state, shard, batch_size, rule, h, seed):
    """One local epoch of training on a shard: (theta, optimizer state, the epoch's five
    sums, Σ s_m, seconds)."""
    t0 = time.perf_counter()
    X, Y, S = shard
    net = _engine(spec, theta, state)
    M = X.shape[0]
    order = (np.arange(M) if seed is None else np.random.default_rng(seed).permutation(M))
    net.engine.begin_fit(X, Y, min(batch_size, M), S)
    try:
        sums = net.engine.train_epoch(order.astype(np.int64), min(batch_size, M), rule, h,
                                      net.loss_code)
    finally:
        net.engine.end_fit()
    return (net.engine.get_params(), net.engine.get_state(), sums,
            float(S.astype(np.float64).sum()), time.perf_counter() - t0)


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
            gone = []
            if all(f.status == "finished" for f in tasks.values()):
                try:
                    return self.client.gather([tasks[s] for s in which])
                except CancelledError:
                    # a worker died holding a finished result (and its shard) between the
                    # wait and the gather, and Dask forgot the key: run those steps again
                    gone = [s for s in which if tasks[s].status != "finished"] or which
            lost = [s for s in which if s in gone or tasks[s].status in ("cancelled", "lost")
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


def _workers(client):
    """The addresses of the workers alive now, asked of the scheduler. Not
    client.scheduler_info(): its answer is a cache that the client's periodic refresh (which
    asks for no per-worker detail) can overwrite between the fetch and the return, so it
    sometimes lists no workers on a healthy cluster (576 of 2,000 calls with a 1 ms refresh)."""
    return sorted(client.nthreads())


def _alive_worker(client, s):
    """The s-th worker (round robin) among those alive now; waits for one to come back."""
    workers = _workers(client)
    if not workers:
        try:
            client.wait_for_workers(1, timeout=120)
        except TimeoutError:
            raise WorkerCrashError("the Dask cluster has no workers left (they died and did "
                                   "not come back within 120 s)") from None
        workers = _workers(client)
    return workers[s % len(workers)]


def _labels(net, y):
    """Set net.classes_ from all of y (1-D labels of a classifier), as MLP.fit does."""
    if not (net.is_classifier and len(y.shape) == 1 and net.classes_ is None):
        return
    if hasattr(y, "__dask_graph__"):
        import dask.array as da
        labels = da.unique(y).compute()
    else:
        labels = np.unique(np.asarray(y))
    net.check_y(labels, labels.shape[0], fit=True)


def fit(net, X, y, client=None, mode="sync", epochs=10, lr=0.1, momentum=0.0,
        batch_size="auto", n_shards=None, shuffle=True, callbacks=None, timeout="10s",
        worker_threads=None, timings=None, sample_weight=None, **options):
    """Train ``net`` (an :class:`nnjit.MLP`) data-parallel on a Dask cluster; returns ``net``.

    X, y: Dask arrays, or anything MLP.fit takes (NumPy, memmap, zarr), cut into shards here.
    client: a ``distributed.Client``, a scheduler address ("tcp://host:8786", connected with
    ``timeout`` and closed afterwards), or None for the current default client.
    mode: "sync" (exact: the sum of the shards' corrections) or "average" (local epochs,
    weights averaged); see the module docstring. batch_size: "auto" is None (full batch) for
    sync and 32 for average; an int is the rows each shard contributes per step (sync) or
    the local mini-batch (average). n_shards: default one per worker. shuffle: "average"
    shuffles each shard's rows every epoch (seeded from the net's generator, so a rerun
    gives the same weights); "sync" keeps stored order. sample_weight: (n,) weights as in
    MLP.fit (held in memory, cut with the shards): sync mode's step is the weighted mean
    Σ s_m Δw_m / Σ s_m over the step's rows of all shards; average mode weights each shard's
    result by its weight sum. worker_threads: Numba threads each task uses on its worker
    (None: Numba's default, every core of the worker's machine; give cores / worker
    processes when several share one). timings: a list to which a dict per epoch is
    appended (wall seconds, the slowest worker's compute seconds per step summed, bytes of
    weights and sums moved); for benchmarks.

    Every other keyword of :meth:`nnjit.MLP.fit` is taken and means the same: ``lr``,
    ``momentum``, ``optimizer`` and its hyper-parameters (``nesterov``, ``betas``, ``eps``,
    ``adam_eps``, ``weight_decay``, ``rho``, ...), ``alpha``, ``schedule`` /
    ``schedule_params``, ``tol`` / ``n_iter_no_change`` / ``error_threshold``,
    ``validation_data`` (evaluated on the driver), ``restore_best``, ``callbacks``,
    ``progress``, ``checkpoint`` / ``checkpoint_every`` / ``resume``; net.history_,
    n_epochs_ and t_ are updated the same way.
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net must be an nnjit.MLP, got {type(net).__name__}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(map(repr, MODES))}")
    if batch_size == "auto":
        batch_size = None if mode == "sync" else 32
    batch_size = checks.positive_int("batch_size", batch_size, allow_none=True)
    if not hasattr(X, "shape"):
        X = np.asarray(X)
    if not hasattr(y, "shape"):
        y = np.asarray(y)
    if len(X.shape) != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be 2-D (samples, features) with samples, got shape {tuple(X.shape)}")
    if len(y.shape) not in (1, 2) or y.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples but y has shape {tuple(y.shape)}")
    S = net.check_weights(sample_weight, int(X.shape[0]))
    if worker_threads is not None:
        worker_threads = checks.positive_int("worker_threads", worker_threads)
    if n_shards is not None:
        n_shards = checks.positive_int("n_shards", n_shards)
    M = int(X.shape[0])
    client, opened = _connect(client, timeout)
    try:
        with client.as_current():     # dask.compute and distributed.wait use this client
            _labels(net, y)           # classes_ before validation data is encoded
            runner = _Runner(net, mode, batch_size, shuffle, worker_threads, timings)
            trainer, epochs = net.trainer(
                runner.epoch, M, float(M) if S is None else float(S.sum()), epochs, lr,
                data=(X, y, S), settings=dict(batch_size=batch_size, mode=mode, shuffle=shuffle,
                                              n_shards=n_shards),
                momentum=momentum, callbacks=callbacks, **options)
            runner.start(client, X, y, S, n_shards)
            trainer.run(epochs)
    finally:
        if opened:
            client.close()
    return net


class _Runner:
    """The epochs of a Dask fit, for the training loop: epoch(rule, h, loss) -> the five sums
    of nnjit.loops.train_epoch, with the driver's weights and optimizer state in net.engine."""

    def __init__(self, net, mode, batch_size, shuffle, threads, timings):
        self.net, self.mode, self.batch_size, self.shuffle = net, mode, batch_size, shuffle
        self.threads, self.timings = threads, timings
        self.seed0 = None

    def start(self, client, X, y, S, n_shards):
        """Build the shards on the workers (one per worker unless n_shards says otherwise)."""
        net = self.net
        workers = _workers(client)
        if not workers:
            raise ConnectionError("the Dask cluster has no workers; start some with "
                                  "`dask worker <scheduler address>`")
        M = int(X.shape[0])
        n = min(n_shards if n_shards is not None else len(workers), M)
        rows = tuple(int(r) for r in np.diff(np.linspace(0, M, n + 1).round().astype(np.int64)))
        spec = dict(layers=net.layers, activation=net.activation, output=net.output,
                    loss=net.loss, dtype=net.dtype, classes=net.classes_,
                    backend=net.backend if net.backend in ("loops", "vectorised") else "loops",
                    threads=self.threads)
        edges = np.concatenate([[0], np.cumsum(rows)])
        xbs, ybs = _blocks(X, rows), _blocks(y, rows)

        def build(s):           # shard s on a live worker (a restriction to a dead one never runs)
            w = _alive_worker(client, s)
            Ss = None if S is None else S[edges[s]:edges[s + 1]]
            return client.submit(_prepare, spec, xbs[s](client, w), ybs[s](client, w), Ss,
                                 pure=False, workers=[w], allow_other_workers=True)
        self.client, self.rows, self.spec = client, rows, spec
        self.shards = _Shards(client, build, len(rows))
        self.seed0 = (int(net.rng.integers(2**63)) if (self.mode == "average" and self.shuffle)
                      else None)

    def epoch(self, rule, h, loss):
        t0 = time.perf_counter()
        if self.mode == "sync":
            out, compute, moved, steps = self._sync(rule, h)
        else:
            out, compute, moved, steps = self._average(rule, h)
        if self.timings is not None:
            self.timings.append({"wall_s": time.perf_counter() - t0, "compute_s": compute,
                                 "bytes": moved, "steps": steps})
        return out

    def _sync(self, rule, h):
        engine, rows, client = self.net.engine, self.rows, self.client
        alpha = float(h.alpha)
        mask = weight_mask(engine.shape) if alpha else None
        b = max(rows) if self.batch_size is None else self.batch_size
        steps = -(-max(rows) // b)
        total = pen = emax = batch_cost = batch_pen = 0.0
        compute, moved = 0.0, 0
        for t in range(steps):
            theta = engine.get_params()
            bounds = {s: (min(t * b, r), min((t + 1) * b, r)) for s, r in enumerate(rows)
                      if min((t + 1) * b, r) > min(t * b, r)}
            res = self.shards.run(lambda s, shard: client.submit(
                _shard_sums, self.spec, theta, shard, *bounds[s], pure=False), bounds)
            g = np.zeros(theta.shape, np.float64)
            for r in res:                     # in shard order: the same sum every run
                g += r[0]
            count = sum(r[3] for r in res)          # the step's weight (rows unweighted)
            cost = sum(r[1] for r in res)
            mb = sum(hi - lo for lo, hi in bounds.values())
            total += cost
            emax = max([emax] + [r[2] for r in res])
            compute += max(r[4] for r in res)
            moved += 2 * len(res) * theta.nbytes
            if count <= 0:                        # only zero-weight rows: no step
                continue
            batch_cost += cost * mb / count
            if alpha:
                p = engine.penalty()
                pen += p
                batch_pen += p * mb / count
                g += alpha * mask * theta.astype(np.float64)
            engine.update(g / count, rule, h)
        return (total, pen, emax, batch_cost, batch_pen), compute, moved, steps

    def _average(self, rule, h):
        engine, rows, client, net = self.net.engine, self.rows, self.client, self.net
        theta, state = engine.get_params(), engine.get_state()
        epoch = net.n_epochs_
        res = self.shards.run(lambda s, shard: client.submit(
            _shard_epoch, self.spec, theta, state, shard, self.batch_size or rows[s], rule, h,
            None if self.seed0 is None else (self.seed0, epoch, s), pure=False), range(len(rows)))
        w = np.array([r[3] for r in res], np.float64)
        w /= w.sum()
        dtype = theta.dtype
        engine.set_params(sum(wi * r[0].astype(np.float64) for wi, r in zip(w, res)).astype(dtype))
        engine.set_state({k: sum(wi * r[1][k].astype(np.float64) for wi, r in zip(w, res)).astype(dtype)
                          for k in ("vel", "sq")} | {"step": max(r[1]["step"] for r in res)})
        sums = np.sum([r[2] for r in res], axis=0)
        out = (sums[0], sums[1], max(r[2][2] for r in res), sums[3], sums[4])
        return out, max(r[4] for r in res), 2 * len(res) * 3 * theta.nbytes, 1
