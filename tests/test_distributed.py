"""Data-parallel training on a local Dask cluster (nnjit.distributed).

One LocalCluster of 2 worker processes is shared by the module. The core check: sync mode
is the lecture's batch mean split into per-shard sums, so it must equal single-machine
full-batch training, and a worker killed mid-training must not change the result."""
import os
import signal
import threading
import time

import numpy as np
import pytest

from nnjit import MLP

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
nd = pytest.importorskip("nnjit.distributed")

M, DIM, K = 301, 7, 3


@pytest.fixture(scope="module")
def client():
    with dask.config.set({"distributed.logging.distributed": "error"}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=50)
        c = distributed.Client(cluster, set_as_default=False)
        try:
            yield c
        finally:
            c.close()
            cluster.close()


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(M, DIM))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.8)
    return X, y


def _net(dtype="float64", **kw):
    return MLP([DIM, 6, K], activation="tanh", seed=4, dtype=dtype, **kw)


def _dfit(net, X, y, client, **kw):
    """nd.fit on the module's cluster: one Numba thread per task (2 workers, 2 cores)."""
    return nd.fit(net, X, y, client=client, worker_threads=1, **kw)


def _assert_same(a, b, rtol=1e-10):
    for p, q in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_allclose(q, p, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("as_dask", [False, True])
def test_sync_equals_single_machine_full_batch(client, xy, as_dask):
    X, y = xy
    ref = _net().fit(X, y, epochs=6, lr=0.5, momentum=0.7, batch_size=None)
    if as_dask:     # uneven chunks, rechunked into one shard per worker
        X, y = da.from_array(X, chunks=(97, DIM)), da.from_array(y, chunks=60)
    net = _dfit(_net(), X, y, client, mode="sync", epochs=6, lr=0.5, momentum=0.7)
    _assert_same(ref, net)
    np.testing.assert_allclose(net.history_["loss"], ref.history_["loss"], rtol=1e-12)
    assert net.n_epochs_ == 6 and list(net.classes_) == [0, 1, 2]
    assert net.history_["loss"][-1] < net.history_["loss"][0]


@pytest.mark.parametrize("mode", ["sync", "average"])
def test_sample_weights_equal_single_machine_full_batch(client, xy, mode):
    """Weighted: sync is the weighted batch mean split into per-shard weighted sums; average
    with full-batch local epochs is the same step, shards weighted by their weight sums."""
    X, y = xy
    sw = np.random.default_rng(1).uniform(0, 3, M)
    sw[:40] = 0.0                       # a run of zero weights
    ref = _net().fit(X, y, epochs=4, lr=0.5, momentum=0.7, batch_size=None, sample_weight=sw)
    kw = dict(batch_size=None) if mode == "sync" else dict(batch_size=M, shuffle=False)
    net = _dfit(_net(), X, y, client, mode=mode, epochs=4, lr=0.5, momentum=0.7,
                sample_weight=sw, **kw)
    if mode == "sync":
        _assert_same(ref, net)
        np.testing.assert_allclose(net.history_["loss"], ref.history_["loss"], rtol=1e-12)
    unweighted = _net().fit(X, y, epochs=4, lr=0.5, momentum=0.7, batch_size=None)
    assert np.abs(net.weights[0] - unweighted.weights[0]).max() > 1e-4
    with pytest.raises(ValueError, match="sample_weight"):
        _dfit(_net(), X, y, client, epochs=1, sample_weight=sw[:-1])


def test_sync_large_batch_equals_the_same_steps_by_hand(client, xy):
    # 3 shards of 100/101/100 rows, 40 rows each per step: steps take rows [0:40], [40:80],
    # [80:] of every shard; the reference adds the same rows' mean gradient on one machine
    X, y = xy
    net = _dfit(_net(), X, y, client, epochs=2, lr=0.4, momentum=0.5, batch_size=40,
                 n_shards=3)
    ref = _net()
    bounds = np.cumsum([0, 100, 101, 100])
    vel = [np.zeros_like(p) for p in ref.weights + ref.biases]
    for _ in range(2):
        for t in range(3):
            rows = np.concatenate([np.arange(lo + 40 * t, min(lo + 40 * (t + 1), hi))
                                   for lo, hi in zip(bounds[:-1], bounds[1:])])
            dW, db = ref.gradients(X[rows], y[rows])
            params = ref.weights + ref.biases
            vel = [0.5 * v - 0.4 * g for v, g in zip(vel, dW + db)]
            params = [p + v for p, v in zip(params, vel)]
            ref.weights, ref.biases = params[:2], params[2:]
    _assert_same(ref, net)


def test_average_learns_and_is_sync_for_full_batches(client, xy):
    X, y = xy
    net = _dfit(_net(), X, y, client, mode="average", epochs=15, lr=0.2, batch_size=8)
    h = net.history_["loss"]
    assert net.n_epochs_ == 15 and h[-1] < 0.6 * h[0]
    assert net.score(X, y) > 0.85
    again = _dfit(_net(), X, y, client, mode="average", epochs=15, lr=0.2, batch_size=8)
    _assert_same(net, again, rtol=0)     # seeded local shuffles: reproducible
    # one full-batch local step per worker, averaged by shard size, is the sync update
    avg = _dfit(_net(), X, y, client, mode="average", epochs=3, lr=0.5, momentum=0.3,
                 batch_size=None)
    sync = _dfit(_net(), X, y, client, mode="sync", epochs=3, lr=0.5, momentum=0.3)
    _assert_same(sync, avg, rtol=1e-9)


def test_a_client_refreshing_its_scheduler_info_often_still_finds_the_workers(client, xy):
    """CI once failed with 'the cluster has no workers' on a healthy cluster: the worker list
    came from client.scheduler_info(), whose cached answer the client's periodic refresh
    overwrites with one that lists no workers. A 1 ms refresh makes that race likely (old code:
    a quarter of the look-ups came back empty); every fit must find both workers."""
    X, y = xy
    # the heartbeat's answer would reset the refresh to seconds
    with dask.config.set({"distributed.client.scheduler-info-interval": "1ms",
                          "distributed.client.heartbeat": "1h"}):
        fast = distributed.Client(client.cluster, set_as_default=False)
    try:
        ref = _dfit(_net(), X, y, client, epochs=1, lr=0.5)
        for _ in range(8):
            net = _dfit(_net(), X, y, fast, epochs=1, lr=0.5)
            _assert_same(ref, net, rtol=0)
    finally:
        fast.close()


def test_float32_and_callbacks(client, xy):
    X, y = xy
    seen = []
    ref = _net("float32").fit(X, y, epochs=4, lr=0.5, batch_size=None)
    net = _dfit(_net("float32"), X, y, client, epochs=10, lr=0.5,
                 callbacks=[lambda n, e, h: seen.append(e) or e == 3])
    assert seen == [0, 1, 2, 3] and net.n_epochs_ == 4
    _assert_same(ref, net, rtol=2e-5)


def test_bad_arguments(client, xy):
    X, y = xy
    with pytest.raises(ValueError, match="mode"):
        _dfit(_net(), X, y, client, mode="async")
    with pytest.raises(TypeError, match="client"):
        nd.fit(_net(), X, y, client=42)
    with pytest.raises(TypeError, match="MLP"):
        nd.fit("net", X, y, client=client)
    with pytest.raises(ValueError, match="samples"):
        nd.fit(_net(), X, y[:-1], client=client)
    with pytest.raises(ValueError, match="Dask cluster"):
        nd.fit(_net(), X, y, client=None)     # the module's client is not the default
    Xbad = X.copy()
    Xbad[250, 1] = np.inf                      # validated on the worker that holds it
    with pytest.raises(ValueError, match="NaN or inf"):
        nd.fit(_net(), Xbad, y, client=client)


def test_unreachable_scheduler_is_a_clear_error(xy):
    X, y = xy
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"cannot reach the Dask scheduler at 'tcp://127.0.0.1:1'"):
        nd.fit(_net(), X, y, client="tcp://127.0.0.1:1", timeout="1s")
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize("mode", ["sync", "average"])
def test_worker_killed_mid_training_gives_the_same_result(client, mode):
    # bigger shards so a step lasts long enough to kill a worker while it computes
    rng = np.random.default_rng(1)
    X = rng.normal(size=(6000, 40))
    y = (X[:, :3].sum(axis=1) > 0).astype(np.int64)
    # n_shards fixed and both workers up first: by default a fit makes one shard per worker
    # alive when it starts (a worker still restarting after the other mode's kill made the
    # reference run a one-shard fit, a different computation)
    client.wait_for_workers(2, timeout=60)
    kw = dict(client=client, worker_threads=1, mode=mode, epochs=12, lr=0.3, momentum=0.5,
              batch_size=None if mode == "sync" else 4, n_shards=2)

    def net():
        return MLP([40, 48, 2], seed=2, dtype="float64")

    snapshots = []                             # the undisturbed run's weights after each epoch
    ref = nd.fit(net(), X, y, callbacks=[lambda n, e, h: snapshots.append(n.weights + n.biases)], **kw)
    client.wait_for_workers(2)
    pids = client.run(os.getpid)
    go, killed = threading.Event(), {}

    def killer():
        go.wait(60)
        deadline = time.time() + 30
        while time.time() < deadline:          # wait until a worker is running a shard's task
            busy = [w for w, tasks in client.processing().items()
                    if w in pids and any("shard" in str(t) for t in tasks)]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed["pid"] = pids[busy[0]]
                return
            time.sleep(0.001)

    def callback(n, epoch, h):                 # stop two epochs after the kill
        go.set()
        if "pid" in killed:
            killed.setdefault("epoch", epoch)
            return epoch >= killed["epoch"] + 2

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    out = nd.fit(net(), X, y, callbacks=[callback], **kw)
    thread.join(30)
    assert "pid" in killed and "epoch" in killed, "no worker was killed during training"
    client.wait_for_workers(2, timeout=60)
    assert killed["pid"] not in client.run(os.getpid).values()     # it really died
    for a, b in zip(snapshots[out.n_epochs_ - 1], out.weights + out.biases):
        np.testing.assert_array_equal(a, b)
    assert out.history_["loss"] == ref.history_["loss"][:out.n_epochs_]


class _Future:
    def __init__(self, key, value, status="finished"):
        self.key, self.value, self.status = key, value, status


class _DiesBeforeGather:
    """A client whose worker dies holding a finished step's result and its shard between
    the wait and the gather (seen on a fast machine: FutureCancelledError 'already
    forgotten' out of gather)."""

    def __init__(self):
        self.shards, self.built, self.runs, self.gathers = {}, 0, 0, 0

    def build(self, s):
        self.built += 1
        self.shards[s] = _Future(f"shard-{s}-{self.built}", s)
        return self.shards[s]

    def submit(self, s, shard):
        self.runs += 1
        assert shard.status == "finished"            # never a step on a lost shard
        return _Future(f"step-{s}-{self.runs}", ("sums of", s))

    def gather(self, futures):
        self.gathers += 1
        if self.gathers == 1:
            futures[0].status = "cancelled"
            self.shards[0].status = "lost"
            raise distributed.client.FutureCancelledError(futures[0].key, reason="forgotten")
        return [f.value for f in futures]

    def cancel(self, futures, force=False):
        for f in futures:
            f.status = "cancelled"


def test_a_result_lost_between_wait_and_gather_is_computed_again(monkeypatch):
    monkeypatch.setattr(distributed, "wait", lambda futures, timeout=None: None)
    fake = _DiesBeforeGather()
    runner = nd._Shards(fake, fake.build, 2)
    assert runner.run(fake.submit, [0, 1]) == [("sums of", 0), ("sums of", 1)]
    assert (fake.built, fake.runs, fake.gathers) == (3, 3, 2)     # shard 0 rebuilt, its step rerun


class _CrashOnSums(distributed.WorkerPlugin):
    """Every worker (and every restarted one) dies with a segmentation fault when it runs a
    step: what a broken kernel cache did to both workers of a LocalCluster."""

    def setup(self, worker):
        import nnjit.engine

        def sums(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGSEGV)
        nnjit.engine.CPUEngine.sums = sums


def test_workers_that_crash_on_every_try_stop_the_fit_with_an_error(xy):
    """Before: the workers restarted forever and fit never returned (the lost shards stayed
    stuck in Dask's scheduler). Now: WorkerCrashError after a few losses, the weights of the
    last finished epoch kept."""
    X, y = xy
    with dask.config.set({"distributed.logging.distributed": "critical"}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=60)
        c = distributed.Client(cluster, set_as_default=False)
        try:
            net = _dfit(_net(), X, y, c, epochs=1, lr=0.5)
            before = net.weights + net.biases
            c.register_plugin(_CrashOnSums())
            t0 = time.perf_counter()
            with pytest.raises(nd.WorkerCrashError, match="died"):
                _dfit(net, X, y, c, epochs=2, lr=0.5)
            assert time.perf_counter() - t0 < 240
            assert net.n_epochs_ == 1
            for a, b in zip(before, net.weights + net.biases):
                np.testing.assert_array_equal(a, b)
        finally:
            c.close()
            cluster.close()


RULES = {"sgd": dict(momentum=0.7), "nesterov": dict(momentum=0.7),
         "adam": dict(betas=(0.8, 0.95), eps=1e-6), "adamw": dict(weight_decay=0.05),
         "rmsprop": dict(rho=0.9, momentum=0.5)}


@pytest.mark.parametrize("rule", list(RULES))
def test_sync_equals_local_full_batch_for_every_rule(client, xy, rule):
    """Every rule of nnjit.rules, its hyper-parameters, alpha's L2 term, a schedule, sample
    weights, validation data and restore_best: the same options as MLP.fit, the same result
    as single-machine full-batch training to 1e-10."""
    from nnjit import rules as R
    assert set(RULES) == set(R.CODES)       # every rule of the table is tested here
    X, y = xy
    sw = np.random.default_rng(2).uniform(0.5, 2.0, M)
    kw = dict(optimizer=rule, **RULES[rule], lr=0.05, alpha=0.01, epochs=5, sample_weight=sw,
              schedule="cosine", validation_data=(X[:40], y[:40]), restore_best=True)
    ref = _net().fit(X, y, batch_size=None, **kw)
    net = _dfit(_net(), X, y, client, mode="sync", **kw)
    _assert_same(ref, net)
    np.testing.assert_allclose(net.history_["loss"], ref.history_["loss"], rtol=1e-10)
    np.testing.assert_allclose(net.history_["val_loss"], ref.history_["val_loss"], rtol=1e-10)
    assert net.best_epoch_ == ref.best_epoch_ and net.optimizer_state()["step"] == 5
    for k in ("velocity", "square"):
        np.testing.assert_allclose(net.optimizer_state()[k], ref.optimizer_state()[k],
                                   rtol=1e-9, atol=1e-12)


def test_rmsprop_and_leaky_relu_follow_pytorch(client, xy):
    """The Dask form of the proof of the one-source tables: RMSprop on a leaky-ReLU network,
    sync full batch, equals torch.optim.RMSprop on torch.nn.LeakyReLU, full batch, to 1e-9."""
    torch = pytest.importorskip("torch")
    X, y = xy
    net = MLP([DIM, 6, K], activation="leaky_relu", seed=4, dtype="float64")
    lin1, lin2 = torch.nn.Linear(DIM, 6).double(), torch.nn.Linear(6, K).double()
    with torch.no_grad():
        for lin, W, b in zip((lin1, lin2), net.weights, net.biases):
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b))
    model = torch.nn.Sequential(lin1, torch.nn.LeakyReLU(0.01), lin2)
    opt = torch.optim.RMSprop(model.parameters(), lr=0.01, alpha=0.9, momentum=0.5)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(Xt), yt).backward()
        opt.step()
    _dfit(net, X, y, client, mode="sync", epochs=4, lr=0.01, optimizer="rmsprop", rho=0.9,
          momentum=0.5)
    for ours, theirs in zip(net.weights + net.biases, (lin1.weight, lin2.weight, lin1.bias, lin2.bias)):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_dask_fit_checkpoints_and_resumes(client, xy, tmp_path):
    """checkpoint= and resume=True through Dask: an interrupted run continued equals one run."""
    X, y = xy
    kw = dict(mode="sync", lr=0.3, optimizer="adam", epochs=6)
    whole = _dfit(_net(), X, y, client, **kw)
    stop = lambda n, e, h: e == 2     # noqa: E731 - stops after the third epoch
    part = _dfit(_net(), X, y, client, checkpoint=tmp_path / "ck.npz", callbacks=[stop], **kw)
    assert part.n_epochs_ == 3
    # a stopped fit is complete: resume continues only a fit interrupted before its end
    resumed = _dfit(_net(), X, y, client, checkpoint=tmp_path / "ck2.npz", **dict(kw, epochs=3))
    resumed = _dfit(resumed, X, y, client, checkpoint=tmp_path / "ck2.npz", resume=True,
                    **dict(kw, epochs=3))
    assert resumed.n_epochs_ == 3
    cont = _dfit(part, X, y, client, **dict(kw, epochs=3))
    _assert_same(whole, cont)
