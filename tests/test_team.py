"""Online learning by a team of threads meeting at each sample's stages (nnjit.loops.team).

The team must give the per-sample kernels' numbers bit for bit (config.ONLINE_TEAM off), for
every rule, dtype, team size and place of the wide layer, with zero sample weights and L2
among them, and stay correct when its threads do not run at once."""
import multiprocessing as mp
import threading

import numba
import numpy as np
import pytest

from nnjit import MLP, DivergenceError, config
from nnjit.loops import team
from nnjit.loops.epoch import ONLINE_WIDE, epoch_mode

RULES = [("sgd", dict(momentum=0.9)), ("nesterov", dict(momentum=0.5)), ("adam", {}),
         ("sgd", dict(momentum=0.5, alpha=1e-3, sample_weight="zeros"))]
# 260 x 256 and 60 x 1100 / 1100 x 64 reach PARALLEL_MIN_WORK (65,536): the first layer
# wide, then a middle and an output-side layer wide with a narrow first one (odd widths)
SIZES = [[260, 256, 3], [60, 1100, 64, 5], [7, 9, 7300, 9, 3]]


def _data(D, K, M=23, seed=0):
    rng = np.random.default_rng(seed)
    X, y = rng.normal(size=(M, D)), rng.integers(0, K, M)
    sw = rng.uniform(0.2, 2.0, M)
    sw[[0, M // 4, M // 4 + 1, M - 1]] = 0.0     # the first, two in a row, the last
    return X, y, sw


def _fit(sizes, dtype, optimizer, kw, team_on, threads=None, X=None):
    Xd, y, sw = _data(sizes[0], sizes[-1])
    kw = dict(kw)
    if kw.get("sample_weight") == "zeros":
        kw["sample_weight"] = sw
    n0 = numba.get_num_threads()
    old = config.ONLINE_TEAM
    try:
        config.ONLINE_TEAM = team_on
        if threads:
            numba.set_num_threads(threads)
        net = MLP(sizes, activation="tanh", seed=3, dtype=dtype)
        net.fit(Xd.astype(dtype) if X is None else X, y, epochs=2, lr=0.05, batch_size=1,
                optimizer=optimizer, shuffle=X is None, **kw)
    finally:
        config.ONLINE_TEAM = old
        numba.set_num_threads(n0)
    return net


def _same(a, b, loss_grouped=False):
    """The same weights, biases and step count bit for bit, and the same loss history (bit for
    bit, or with loss_grouped to rounding: streamed data sums the same per-sample losses
    chunk by chunk, a different grouping, as nnjit.data documents)."""
    for p, q in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_array_equal(p, q)
    if loss_grouped:
        np.testing.assert_allclose(a.history_["loss"], b.history_["loss"], rtol=1e-13)
    else:
        np.testing.assert_array_equal(a.history_["loss"], b.history_["loss"])
    assert a.engine.step[0] == b.engine.step[0]


@pytest.mark.parametrize("sizes", SIZES, ids=["first", "middle", "deep"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer,kw", RULES, ids=["sgd", "nesterov", "adam", "l2_weights"])
def test_team_equals_the_per_sample_kernels(sizes, dtype, optimizer, kw):
    ref = _fit(sizes, dtype, optimizer, kw, False)
    for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
        _same(ref, _fit(sizes, dtype, optimizer, kw, True, threads))
    # the per-sample kernels' run must really differ from an untrained net, and learn
    assert ref.history_["loss"][-1] != ref.history_["loss"][0]
    if kw.get("sample_weight") == "zeros":       # 4 zero-weight samples make no update
        assert ref.engine.step[0] == 2 * (23 - 4)


@pytest.mark.parametrize("sizes", SIZES[:2], ids=["first", "middle"])
@pytest.mark.parametrize("team_on", [True, False], ids=["team", "per_sample"])
def test_online_divergence_raises_and_restores(sizes, team_on):
    """Without an L2 term the team's rows skip its multiply-add (rule_row_plain), so a weight
    that overflows stays inf where rule_row would make it NaN; saturated sigmoid units can
    keep the loss finite meanwhile. The epoch's check of every parameter must still raise
    DivergenceError and put back the weights the epoch started from."""
    X, y, _ = _data(sizes[0], sizes[-1])
    old = config.ONLINE_TEAM
    try:
        config.ONLINE_TEAM = team_on
        net = MLP(sizes, activation="sigmoid", seed=3, dtype="float32")
        net.fit(X.astype("float32"), y, epochs=1, lr=0.01, batch_size=1, momentum=0.9)
        before = [p.copy() for p in net.weights + net.biases]
        with pytest.raises(DivergenceError, match="diverged"):
            net.fit(X.astype("float32"), y, epochs=3, lr=1e36, batch_size=1, momentum=0.9)
    finally:
        config.ONLINE_TEAM = old
    for p, q in zip(net.weights + net.biases, before):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("P", [2, 3, 5])
def test_any_team_size_gives_the_same_bits_even_on_fewer_cores(P):
    """run_team with more members than cores (they take turns through sched_yield) and with
    one: the same weights and sums."""
    sizes = [260, 256, 3]
    X, y, _ = _data(sizes[0], sizes[-1], M=9)
    calls = []
    real = team.run_team

    def forced(p, *args):
        calls.append(P if not calls else 1)
        return real(calls[-1], *args)
    nets = []
    for force in (False, True):
        net = MLP(sizes, activation="relu", seed=2)
        if force:
            team_run, team.run_team = team.run_team, forced
        try:
            net.fit(X, y, epochs=2, lr=0.05, batch_size=1, momentum=0.9, shuffle=False)
        finally:
            if force:
                team.run_team = team_run
        nets.append(net)
    assert calls == [P, 1]      # the first epoch by P members, the second by one
    _same(nets[0], nets[1])


@pytest.mark.parametrize("sizes", [[260, 256, 3], [60, 1100, 64, 5]], ids=["first", "middle"])
def test_a_member_that_never_runs_or_runs_late_changes_nothing(sizes, monkeypatch):
    """The leader takes the units of a member that has not started (its core held by another
    process): here member 1 of 2 runs only after the leader has finished the epoch, in the
    same thread. It must find every unit taken and write nothing: the bits of one thread."""
    X, y, sw = _data(sizes[0], sizes[-1], M=11)

    def late(P, *args):
        sync, res = np.zeros(team.sync_len(2), np.int64), np.zeros(5)
        team.team_member(*args, 0, 2, sync, res)
        before = [a.copy() for a in args[:5]]             # theta, vel, sq, step, grad
        team.team_member(*args, 1, 2, sync, res)
        for a, b in zip(before, args[:5]):
            np.testing.assert_array_equal(a, b)
        return tuple(res)
    nets = []
    for lone in (False, True):
        if lone:
            monkeypatch.setattr(team, "run_team", late)
        net = MLP(sizes, activation="tanh", seed=5)
        net.fit(X, y, epochs=2, lr=0.05, batch_size=1, optimizer="adam", sample_weight=sw)
        nets.append(net)
    _same(nets[0], nets[1])


def test_an_epoch_over_no_samples_does_nothing(monkeypatch):
    """An empty order: every member returns before any stage (no read of X[order[0]])."""
    real = team.run_team
    seen = []

    def empty_first(P, *args):
        args = list(args)
        theta = args[0].copy()
        order = args[10]
        args[10] = order[:0]
        seen.append(real(max(P, 2), *args))
        np.testing.assert_array_equal(args[0], theta)
        args[10] = order
        return real(P, *args)
    monkeypatch.setattr(team, "run_team", empty_first)
    X, y, _ = _data(260, 3, M=4)
    MLP([260, 256, 3]).fit(X, y, epochs=1, batch_size=1)
    assert seen == [(0.0, 0.0, 0.0, 0.0, 0.0)]


def test_a_team_epoch_is_chosen_only_online_with_a_wide_layer():
    net = MLP([260, 256, 3])
    bufs = net.engine._buffers(1, train=True)
    shape = net.engine.shape
    assert epoch_mode(shape, bufs, 1, config.PARALLEL_MIN_SAMPLES, config.tiles(),
                      config.PARALLEL_MIN_WORK) == ONLINE_WIDE
    seen = []
    real = team.run_team
    team.run_team = lambda P, *a: seen.append(P) or real(P, *a)
    try:
        X, y, _ = _data(260, 3, M=5)
        net.fit(X, y, epochs=1, batch_size=1)
        net.fit(X, y, epochs=1, batch_size=2)             # not online: the per-batch kernels
        MLP([20, 8, 3]).fit(X[:, :20], y, epochs=1, batch_size=1)   # no wide layer
    finally:
        team.run_team = real
    assert len(seen) == 1 and 1 <= seen[0] <= numba.config.NUMBA_NUM_THREADS


def test_streamed_data_gives_the_in_memory_bits(tmp_path, monkeypatch):
    """Out-of-core X arrives in chunks, each an epoch call of its own: a chunk's first
    sample gets z^(1) by feed-forward, the same dot the fused update computes in memory."""
    sizes = [260, 256, 3]
    X, y, _ = _data(sizes[0], sizes[-1])          # 23 rows: chunks of 8, 8 and 7
    np.save(tmp_path / "X.npy", X)
    monkeypatch.setattr(config, "STREAM_CHUNK_BYTES", 8 * sizes[0] * 8)    # chunks of 8 rows
    mem = _fit(sizes, "float64", "sgd", dict(momentum=0.9), True, X=X)
    streamed = _fit(sizes, "float64", "sgd", dict(momentum=0.9), True,
                    X=np.load(tmp_path / "X.npy", mmap_mode="r"))
    _same(mem, streamed, loss_grouped=True)


def _child_fit(q):
    X, y, _ = _data(260, 3, M=9)
    net = MLP([260, 256, 3], seed=1)
    net.fit(X, y, epochs=1, batch_size=1, momentum=0.9)
    q.put(net.weights[0].sum())


def test_a_forked_child_trains_online_after_its_parent_did():
    """The team's thread pool does not survive fork(): the child must start its own, not
    wait for threads it does not have."""
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork() here")
    X, y, _ = _data(260, 3, M=9)
    net = MLP([260, 256, 3], seed=1)
    net.fit(X, y, epochs=1, batch_size=1, momentum=0.9)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_fit, args=(q,))
    p.start()
    p.join(120)
    assert p.exitcode == 0
    assert q.get(timeout=5) == net.weights[0].sum()


def test_fits_in_several_threads_at_once():
    """Two online fits from two Python threads (GridSearchCV's threading backend): each its
    own team, the same bits as one after the other."""
    X, y, _ = _data(260, 3, M=15)
    alone = MLP([260, 256, 3], seed=4).fit(X, y, epochs=2, batch_size=1, momentum=0.9)
    nets = [MLP([260, 256, 3], seed=4) for _ in range(2)]
    threads = [threading.Thread(target=n.fit, args=(X, y),
                                kwargs=dict(epochs=2, batch_size=1, momentum=0.9))
               for n in nets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for n in nets:
        _same(alone, n)


def test_atomics_count_exactly_from_many_threads():
    """fetch_add from 4 threads at once loses no increment; load_acquire reads the total."""
    from numba import njit

    @njit(nogil=True)
    def bump(sync, n):
        for _ in range(n):
            team.fetch_add(sync, 0, 1)
        return team.load_acquire(sync, 0)

    sync = np.zeros(team.sync_len(1), np.int64)
    bump(sync, 1)
    sync[0] = 0
    ts = [threading.Thread(target=bump, args=(sync, 200_000)) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sync[0] == 800_000
    assert bump(sync, 0) == 800_000
