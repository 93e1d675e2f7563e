"""The training loop never loses work: checkpoints and resume (also after SIGKILL), Ctrl-C
leaving the last completed epoch, callbacks and the progress bar."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from nnjit import MLP
from nnjit import io as nio

FIT = {"lr": 0.2, "momentum": 0.9, "batch_size": 4}


def _data(M=23, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(M, 5)), rng.integers(0, 3, M)


def _net(backend="loops", dtype="float64", seed=3):
    return MLP([5, 7, 3], activation="tanh", backend=backend, dtype=dtype, seed=seed)


def _same(a, b):
    for u, v in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(a.engine.get_state()["vel"], b.engine.get_state()["vel"])
    assert a.n_epochs_ == b.n_epochs_ and a.history_ == b.history_


def _interrupt_in_epoch(monkeypatch, net, at):
    """Make the engine raise KeyboardInterrupt in the middle of the at-th epoch from now, after
    it has already changed the weights and velocities (a half-updated model)."""
    real = net.engine.train_epoch
    calls = {"n": 0}

    def train_epoch(*args):
        calls["n"] += 1
        out = real(*args)
        if calls["n"] == at:
            net.engine.set_params(net.engine.get_params() * 1.5)
            raise KeyboardInterrupt
        return out
    monkeypatch.setattr(net.engine, "train_epoch", train_epoch)


@pytest.mark.parametrize("backend", ["loops", "vectorised"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ctrl_c_leaves_the_last_completed_epoch(backend, dtype, monkeypatch):
    X, y = _data()
    Xv, yv = _data(9, seed=1)
    net = _net(backend, dtype)
    _interrupt_in_epoch(monkeypatch, net, at=3)
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, epochs=5, validation_data=(Xv, yv), **FIT)
    monkeypatch.undo()
    two = _net(backend, dtype).fit(X, y, epochs=2, validation_data=(Xv, yv), **FIT)
    _same(net, two)                     # weights, velocities, history, n_epochs_ of epoch 2
    assert len(net.history_["val_loss"]) == 2
    # the shuffling state was restored too: continuing gives the uninterrupted run
    net.fit(X, y, epochs=3, validation_data=(Xv, yv), **FIT)
    _same(net, _net(backend, dtype).fit(X, y, epochs=5, validation_data=(Xv, yv), **FIT))


def test_ctrl_c_writes_a_checkpoint_that_resumes_exactly(tmp_path, monkeypatch):
    X, y = _data()
    path = tmp_path / "ck.npz"
    net = _net()
    _interrupt_in_epoch(monkeypatch, net, at=5)
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, epochs=8, checkpoint=path, checkpoint_every=3, **FIT)
    assert nio.info(path)["n_epochs"] == 4        # written on Ctrl-C, not only at epoch 3
    fresh = _net(seed=99)                          # a new process would start from anything
    fresh.fit(X, y, epochs=8, checkpoint=path, checkpoint_every=3, resume=True, **FIT)
    _same(fresh, _net().fit(X, y, epochs=8, **FIT))
    assert nio.info(path)["n_epochs"] == 8


def test_checkpoint_every_n_epochs_and_at_the_end(tmp_path, monkeypatch):
    X, y = _data()
    path = tmp_path / "ck.npz"
    seen = []
    real = nio.save
    monkeypatch.setattr(nio, "save", lambda net, p, **kw: (seen.append(net.n_epochs_), real(net, p, **kw)))
    _net().fit(X, y, epochs=7, checkpoint=path, checkpoint_every=3, **FIT)
    assert seen == [3, 6, 7]
    info = nio.info(path)
    assert info["checkpoint"]["start_epoch"] == 0 and info["checkpoint"]["epochs"] == 7
    assert info["fit"]["batch_size"] == 4 and info["fit"]["momentum"] == 0.9


KILLED_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from nnjit import MLP
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(23, 5)), rng.integers(0, 3, 23)
    net = MLP([5, 7, 3], activation="tanh", backend="vectorised", dtype="float64", seed=3)
    print("started", flush=True)
    net.fit(X, y, epochs=200, lr=0.2, momentum=0.9, batch_size=4, checkpoint=sys.argv[1],
            callbacks=[lambda net, epoch, hist: time.sleep(0.05)])
    print("finished", flush=True)
""")


def test_resume_after_the_process_was_killed(tmp_path):
    """A subprocess trains with checkpoints; SIGKILL it mid-run; resuming here gives the weights
    of an uninterrupted run."""
    path = tmp_path / "ck.npz"
    script = tmp_path / "train.py"
    script.write_text(KILLED_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    proc = subprocess.Popen([sys.executable, str(script), str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and nio.info(path)["n_epochs"] >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        out, err = proc.communicate()
    assert "finished" not in out and proc.returncode == -signal.SIGKILL
    done = nio.info(path)["n_epochs"]
    assert 3 <= done < 200
    X, y = _data()
    resumed = MLP([5, 7, 3], activation="tanh", backend="vectorised", dtype="float64", seed=3)
    resumed.fit(X, y, epochs=200, checkpoint=path, resume=True, **FIT)
    straight = MLP([5, 7, 3], activation="tanh", backend="vectorised", dtype="float64", seed=3)
    straight.fit(X, y, epochs=200, **FIT)
    _same(resumed, straight)


def test_resume_semantics(tmp_path):
    X, y = _data()
    path = tmp_path / "ck.npz"
    # no checkpoint yet: the same call starts from scratch (and writes one)
    a = _net().fit(X, y, epochs=3, checkpoint=path, resume=True, **FIT)
    _same(a, _net().fit(X, y, epochs=3, **FIT))
    # the run is complete: rerunning the call resumes nothing
    b = _net(seed=5).fit(X, y, epochs=3, checkpoint=path, resume=True, **FIT)
    _same(b, a)
    # a larger epochs continues the same run up to the new total
    c = _net(seed=5).fit(X, y, epochs=5, checkpoint=path, resume=True, **FIT)
    _same(c, _net().fit(X, y, epochs=5, **FIT))
    # a fit that started on an already trained model counts epochs from its own start
    d = _net().fit(X, y, epochs=2, **FIT)
    d.fit(X, y, epochs=4, checkpoint=tmp_path / "d.npz", **FIT)
    e = _net(seed=7).fit(X, y, epochs=4, checkpoint=tmp_path / "d.npz", resume=True, **FIT)
    assert e.n_epochs_ == 6


def test_resume_after_early_stop_stays_stopped_and_stops_identically(tmp_path, monkeypatch):
    X, y = _data()
    kw = dict(epochs=60, tol=0.05, n_iter_no_change=2, **FIT)
    straight = _net().fit(X, y, **kw)
    assert 4 < straight.n_epochs_ < 60
    net = _net()
    _interrupt_in_epoch(monkeypatch, net, at=straight.n_epochs_ - 1)   # while the stall counts
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, checkpoint=tmp_path / "ck.npz", **kw)
    resumed = _net(seed=1).fit(X, y, checkpoint=tmp_path / "ck.npz", resume=True, **kw)
    _same(resumed, straight)
    assert nio.info(tmp_path / "ck.npz")["checkpoint"]["stopped"] is True
    again = _net(seed=1).fit(X, y, checkpoint=tmp_path / "ck.npz", resume=True, **kw)
    assert again.n_epochs_ == straight.n_epochs_


def test_resume_refuses_a_different_run(tmp_path):
    X, y = _data()
    path = tmp_path / "ck.npz"
    _net().fit(X, y, epochs=2, checkpoint=path, **FIT)
    with pytest.raises(ValueError, match=r"lr \(0.2 there, 0.1 here\)"):
        _net().fit(X, y, epochs=4, checkpoint=path, resume=True, **{**FIT, "lr": 0.1})
    with pytest.raises(ValueError, match="data_crc32"):
        _net().fit(X + 1, y, epochs=4, checkpoint=path, resume=True, **FIT)
    with pytest.raises(ValueError, match="different network: layers"):
        MLP([5, 4, 3], seed=1).fit(X, y, epochs=4, checkpoint=path, resume=True, **FIT)
    with pytest.raises(ValueError, match="needs checkpoint="):
        _net().fit(X, y, epochs=4, resume=True, **FIT)
    with pytest.raises(FileNotFoundError, match="directory"):
        _net().fit(X, y, epochs=4, checkpoint=tmp_path / "no" / "ck.npz", **FIT)
    with pytest.raises(ValueError, match="checkpoint_every"):
        _net().fit(X, y, epochs=4, checkpoint=path, checkpoint_every=0, **FIT)
    _net().save(tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="not a checkpoint"):
        _net().fit(X, y, epochs=4, checkpoint=tmp_path / "plain.npz", resume=True, **FIT)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(nio.ModelFileError):
        _net().fit(X, y, epochs=4, checkpoint=tmp_path / "junk.npz", resume=True, **FIT)


# ---------------------------------------------------------------- callbacks and progress
def test_callbacks_see_the_history_so_far_and_can_stop():
    X, y = _data()
    Xv, yv = _data(9, seed=1)
    seen = []

    def record(net, epoch, history):
        seen.append((epoch, net.n_epochs_, len(history["loss"]), len(history["val_loss"]),
                     history["loss"][-1]))
        return epoch == 3                    # stop after the 4th epoch (epochs count from 0)
    net = _net().fit(X, y, epochs=10, validation_data=(Xv, yv), callbacks=[record, lambda *a: None],
                     **FIT)
    assert [s[:4] for s in seen] == [(e, e + 1, e + 1, e + 1) for e in range(4)]
    assert net.n_epochs_ == 4 and [s[4] for s in seen] == net.history_["loss"]


def test_progress_bar_shows_loss_and_validation_metrics(capsys):
    pytest.importorskip("tqdm")
    X, y = _data()
    Xv, yv = _data(9, seed=1)
    net = _net().fit(X, y, epochs=3, validation_data=(Xv, yv), progress=True, **FIT)
    err = capsys.readouterr().err
    assert "fit" in err and "epoch" in err
    assert f"loss={net.history_['loss'][-1]:.4g}" in err
    assert f"val_loss={net.history_['val_loss'][-1]:.4g}" in err
    assert f"val_score={net.history_['val_score'][-1]:.4g}" in err
