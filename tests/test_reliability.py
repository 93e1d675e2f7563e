"""Odd inputs, hostile model files and other processes (issue 14): nothing lost, nothing
wrong, nothing hung. Each test names what it guards."""
import warnings

import numpy as np
import pytest

from nnjit import MLP
from nnjit.model import DataConversionWarning


def _binary(n=200, seed=0, labels=(0, 2)):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = np.where(X[:, 0] + 0.5 * X[:, 1] > 0, labels[1], labels[0])
    return X, y


# ---------------------------------------------------------------- labels and targets
def test_label_column_is_ravelled_with_warning():
    X, y = _binary()
    flat = MLP([4, 8, 1], output="sigmoid", backend="vectorised", dtype="float64", seed=0)
    flat.fit(X, y, epochs=20, lr=0.5)
    col = MLP([4, 8, 1], output="sigmoid", backend="vectorised", dtype="float64", seed=0)
    with pytest.warns(DataConversionWarning, match="ravel"):
        col.fit(X, y[:, None], epochs=20, lr=0.5)
    assert col.classes_.tolist() == [0, 2]
    assert col.history_["loss"] == flat.history_["loss"]
    assert 0 < col.history_["loss"][-1] < 0.3
    assert col.score(X, y) == flat.score(X, y) > 0.95
    soft = MLP([4, 3], backend="vectorised", seed=0)       # softmax: a column is labels too
    with pytest.warns(DataConversionWarning):
        soft.fit(X, y[:, None], epochs=1)
    assert soft.classes_.tolist() == [0, 2]


@pytest.mark.parametrize("kind", ["soft", "hard", "one"])
def test_probability_column_stays_a_target_for_one_sigmoid_unit(kind):
    X, y = _binary(labels=(0, 1))
    p = {"soft": 1 / (1 + np.exp(-X[:, :1])), "hard": y[:, None].astype(float),
         "one": np.ones((len(y), 1))}[kind]              # targets, not labels
    net = MLP([4, 1], output="sigmoid", backend="vectorised", dtype="float64", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.fit(X, p, epochs=2)
        dw, _ = net.gradients(X, p)
    assert net.classes_ is None
    a = net.forward(X)
    np.testing.assert_allclose(dw[0], ((a - p) * X).mean(0, keepdims=True), rtol=1e-10)


@pytest.mark.parametrize("output,Y,match", [
    ("softmax", lambda y: np.eye(3)[y % 3] * 5 - 1, r"\[0, 1\].*-1 to 4"),
    ("softmax", lambda y: np.eye(3)[y % 3] * 0.5, "sum to 1"),
    ("sigmoid", lambda y: np.stack([y, -y], 1).astype(float), r"\[0, 1\]"),
])
def test_cross_entropy_refuses_targets_that_are_not_probabilities(output, Y, match):
    X, y = _binary()
    net = MLP([4, 3 if output == "softmax" else 2], output=output, backend="vectorised", seed=0)
    with pytest.raises(ValueError, match=match):
        net.fit(X, Y(y), epochs=1)
    with pytest.raises(ValueError, match=match):
        net.loss_value(X, Y(y))
    smooth = np.full((len(y), 3), 0.1) + 0.7 * np.eye(3)[y % 3]      # label smoothing is fine
    MLP([4, 3], backend="vectorised", seed=0).fit(X, smooth, epochs=1)


def test_score_of_label_column_equals_score_of_labels():
    X, y = _binary(labels=(1, 2))
    net = MLP([4, 8, 1], output="sigmoid", backend="vectorised", dtype="float64", seed=0)
    net.fit(X, y, epochs=30, lr=0.5)
    with pytest.warns(DataConversionWarning):
        col = net.score(X, y[:, None])
    assert col == net.score(X, y) > 0.95
    soft = MLP([4, 3], backend="vectorised", seed=0).fit(X, y, epochs=5)
    with pytest.warns(DataConversionWarning):
        assert soft.score(X, y[:, None]) == soft.score(X, y)


def test_softmax_never_predicts_a_unit_without_a_class():
    X, y = _binary(labels=(0, 2))
    net = MLP([4, 5], backend="vectorised", seed=0).fit(X, y, epochs=1)
    W = net.weights
    W[0][4] += 100 * X.std(0)            # make the unused fifth unit win everywhere
    net.weights = W
    assert set(net.predict(X).tolist()) <= {0, 2}


@pytest.mark.parametrize("call", ["loss_value", "gradients"])
def test_loss_and_gradients_leave_unfitted_classes_unset(call):
    X, y = _binary()
    net = MLP([4, 3], backend="vectorised", seed=0)
    getattr(net, call)(X, y)
    assert net.classes_ is None
    net.fit(X, np.where(y == 2, "b", "a"), epochs=1)       # other labels: still accepted
    assert net.classes_.tolist() == ["a", "b"]


# ---------------------------------------------------------------- complex and odd dtypes
def test_complex_inputs_are_refused_everywhere():
    X, y = _binary()
    net = MLP([4, 3], backend="vectorised", seed=0)
    for bad in (X + 1j, X.astype(np.complex64)):
        with pytest.raises(TypeError, match="complex"):
            net.fit(bad, y, epochs=1)
        with pytest.raises(TypeError, match="complex"):
            net.predict(bad)
    with pytest.raises(TypeError, match="complex"):
        net.fit(X, y, epochs=1, validation_data=(X + 1j, y))
    with pytest.raises(TypeError, match="complex"):
        net.fit(X, y + 0j, epochs=1)
    with pytest.raises(TypeError, match="complex"):
        MLP([4, 1], output="identity").fit(X, y + 1j, epochs=1)
    with pytest.raises(TypeError, match="complex"):
        net.weights = [w + 1j for w in net.weights]
    with pytest.raises(TypeError, match="complex"):
        net.biases = [b + 0j for b in net.biases]


@pytest.mark.parametrize("y,err,match", [
    (np.array([1, None] * 100, dtype=object), ValueError, "missing"),
    (np.array([1, "a"] * 100, dtype=object), TypeError, "mixes label types"),
    (np.array([1.0, np.nan] * 100), ValueError, "NaN"),
])
def test_unorderable_or_missing_labels_get_our_message(y, err, match):
    X, _ = _binary()
    with pytest.raises(err, match=match):
        MLP([4, 3], backend="vectorised").fit(X, y, epochs=1)


def test_dataframe_with_bool_and_nullable_columns_is_accepted():
    pd = pytest.importorskip("pandas")
    X, y = _binary()
    df = pd.DataFrame({"a": X[:, 0], "b": X[:, 1] > 0,
                       "c": pd.array(X[:, 2], dtype="Float64"),
                       "d": pd.array(np.round(X[:, 3] * 3).astype(int), dtype="Int64")})
    plain = np.column_stack([X[:, 0], X[:, 1] > 0, X[:, 2], np.round(X[:, 3] * 3)])
    a = MLP([4, 3], backend="vectorised", dtype="float64", seed=0).fit(df, pd.Series(y), epochs=3)
    b = MLP([4, 3], backend="vectorised", dtype="float64", seed=0).fit(plain, y, epochs=3)
    np.testing.assert_array_equal(a.weights[0], b.weights[0])
    assert a.score(df, y) == b.score(plain, y)
    df.iloc[3, 2] = pd.NA
    with pytest.raises(ValueError, match="NaN"):
        a.predict(df)
    with pytest.raises(ValueError, match="missing|NaN"):
        a.fit(X, pd.Series(pd.array([0, None] * 100, dtype="Int64")), epochs=1)
    with pytest.raises(TypeError, match="numbers"):
        a.predict(df.assign(c=["x"] * len(df)))


# ---------------------------------------------------------------- model files: exact labels
import decimal  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tracemalloc  # noqa: E402
import zipfile  # noqa: E402

import nnjit.io as nio  # noqa: E402
from nnjit import cli  # noqa: E402


@pytest.mark.parametrize("labels", [
    np.array(["a", "a\x00"], dtype=object),            # NumPy's <U drops trailing NULs
    np.array([0.5, 2**53 + 1], dtype=object),           # float64 would round 2**53 + 1
    np.array([1, 2**70], dtype=object),                 # beyond int64
    np.array([True, 2], dtype=object),
])
def test_saved_class_labels_read_back_exactly(labels, tmp_path):
    X, y01 = _binary(labels=(0, 1))
    y = labels[y01]
    net = MLP([4, 6, 1], output="sigmoid", backend="vectorised", dtype="float64", seed=0)
    net.fit(X, y, epochs=5, lr=0.5)
    net.save(tmp_path / "m.npz")
    back = MLP.load(tmp_path / "m.npz")
    assert [(type(v), v) for v in back.classes_.tolist()] == [(type(v), v) for v in net.classes_.tolist()]
    pred, pred_back = net.predict(X), back.predict(X)
    assert all(type(a) is type(b) and a == b for a, b in zip(pred.tolist(), pred_back.tolist()))
    assert back.score(X, y) == net.score(X, y)
    assert nio.info(tmp_path / "m.npz")["classes"] == net.classes_.tolist()


def test_labels_that_cannot_be_stored_exactly_are_refused_at_save(tmp_path):
    X, y01 = _binary(labels=(0, 1))
    y = np.array([decimal.Decimal("0.1"), decimal.Decimal("0.2")], dtype=object)[y01]
    net = MLP([4, 1], output="sigmoid", backend="vectorised", seed=0).fit(X, y, epochs=1)
    with pytest.raises(TypeError, match="Decimal"):
        net.save(tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- model files: untrusted input
def _saved(tmp_path, **fit):
    X, y = _binary()
    net = MLP([4, 5, 3], backend="vectorised", dtype="float64", seed=0).fit(X, y, epochs=2, **fit)
    path = tmp_path / "good.npz"
    net.save(path)
    return net, path, X


def _rewrite(src, dst, header=None, **members):
    """A copy of nnjit file src with its header dict changed by header(h) and members replaced
    (name -> ndarray, or name -> (raw bytes, compress_type) for a hand-made member)."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    h = json.loads(arrays["header"].tobytes())
    if header is not None:
        h = header(h) or h
    text = h if isinstance(h, str) else json.dumps(h)
    arrays["header"] = np.frombuffer(text.encode(), np.uint8)
    raw = {k: v for k, v in members.items() if isinstance(v, tuple)}
    arrays.update({k: v for k, v in members.items() if not isinstance(v, tuple)})
    for k in raw:
        arrays.pop(k, None)
    np.savez(dst, **arrays)
    if raw:
        with zipfile.ZipFile(dst, "a") as zf:
            for k, (data, how) in raw.items():
                zf.writestr(zipfile.ZipInfo(k + ".npy"), data, compress_type=how)
    return dst


def _npy_header(dtype, shape):
    import io as _io
    buf = _io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def _load_peak(path, *, call=MLP.load):
    tracemalloc.start()
    try:
        with pytest.raises(nio.ModelFileError, match=os.path.basename(path)) as e:
            call(path)
        return tracemalloc.get_traced_memory()[1], e.value
    finally:
        tracemalloc.stop()


def test_deflate_bomb_is_refused_before_decompressing(tmp_path):
    _, good, _ = _saved(tmp_path)
    bomb = _npy_header("<f8", (5, 4)) + bytes(60 * 2**20)          # 60 MiB of zeros, ~60 kB zipped
    path = _rewrite(good, tmp_path / "bomb.npz", W1=(bomb, zipfile.ZIP_DEFLATED))
    assert os.path.getsize(path) < 2**20
    peak, err = _load_peak(path)
    assert peak < 8 * 2**20 and "W1" in str(err)


def test_npy_header_claiming_huge_array_is_refused_without_allocating(tmp_path):
    _, good, _ = _saved(tmp_path)
    liar = _npy_header("<f8", (10**6, 10**5)) + bytes(160)            # claims 8e11 bytes
    path = _rewrite(good, tmp_path / "liar.npz", W1=(liar, zipfile.ZIP_STORED))
    peak, _ = _load_peak(path)
    assert peak < 8 * 2**20


@pytest.mark.parametrize("cap", [None, 10**11])
def test_header_claiming_a_huge_network_is_refused_before_allocating(tmp_path, monkeypatch, cap):
    from nnjit import config
    if cap:                          # even with the cap raised, the members must match first
        monkeypatch.setattr(config, "MODEL_FILE_MAX_PARAMS", cap)
    _, good, _ = _saved(tmp_path)

    def huge(h):
        h["architecture"]["layers"] = [100000, 100000]
    path = _rewrite(good, tmp_path / "huge.npz", header=huge)       # the digest stays valid
    peak, err = _load_peak(path)
    assert peak < 8 * 2**20
    peak, _ = _load_peak(path, call=nio.info)
    assert peak < 8 * 2**20


@pytest.mark.parametrize("name", ["seed", "random", "set_state", "default_rng", "__class__"])
def test_rng_name_from_file_is_never_looked_up_on_numpy(tmp_path, name):
    _, good, _ = _saved(tmp_path)

    def evil(h):
        h["rng"]["bit_generator"] = name
    path = _rewrite(good, tmp_path / "rng.npz", header=evil)
    before = np.random.get_state()
    with pytest.raises(nio.ModelFileError, match="bit generator"):
        MLP.load(path)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]


@pytest.mark.parametrize("change", [
    lambda h: "[" * 100000 + "]" * 100000,                                 # RecursionError
    lambda h: h["architecture"].update(layers=[4, -5, 3]),
    lambda h: h["architecture"].update(layers="45"),
    lambda h: h["architecture"].update(layers=[4, 5.5, 3]),
    lambda h: h["architecture"].update(activation="evil"),
    lambda h: h["architecture"].update(activation=["relu", "tanh"]),
    lambda h: h["architecture"].update(dtype="float16"),
    lambda h: h["architecture"].update(backend="gpu"),
    lambda h: h["architecture"].update(init_scale=-1),
    lambda h: h["architecture"].update(seed="x"),
    lambda h: h.update(n_epochs=-1),
    lambda h: h.update(history={"loss": ["x"]}),
    lambda h: h.update(history=[1, 2]),
    lambda h: h.update(rng={"bit_generator": "PCG64", "state": "x"}),
    lambda h: h.update(classes={"object": True, "values": [2, 1]}),        # unsorted labels
    lambda h: h.update(classes={"object": True, "values": [[1], 2]}),
    lambda h: h.update(classes=[1]),
    lambda h: h.update(version="1"),
    lambda h: h.pop("architecture"),
])
def test_every_crafted_header_is_a_model_file_error(tmp_path, change, capsys):
    _, good, _ = _saved(tmp_path)
    path = _rewrite(good, tmp_path / "crafted.npz", header=change)
    with pytest.raises(nio.ModelFileError, match="crafted.npz"):
        MLP.load(path)
    assert cli.main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnjit info: error: ") and err.count("\n") == 1


def test_flipped_or_truncated_bytes_always_give_model_file_error(tmp_path, capsys):
    """Fuzz: flip each of ~400 bytes spread over a valid file (all of the zip's central
    directory at its end) and truncate it at ~100 lengths: loading either raises
    ModelFileError or, where the byte carries nothing (a timestamp), loads the same model."""
    net, good, X = _saved(tmp_path)
    data = good.read_bytes()
    n = len(data)
    ref = net.forward(X)
    where = sorted(set(range(0, n, max(1, n // 300))) | set(range(max(0, n - 120), n)))
    bad = tmp_path / "bad.npz"
    for pos in where:
        for flip in (0xFF, 0x01):
            bad.write_bytes(data[:pos] + bytes([data[pos] ^ flip]) + data[pos + 1:])
            try:
                back = MLP.load(bad)
            except nio.ModelFileError as e:
                assert "bad.npz" in str(e)
                continue
            np.testing.assert_array_equal(back.forward(X), ref)
            assert back.history_ == net.history_
    for cut in sorted(set(range(0, n, max(1, n // 100))) | {n - 1, 1, 3}):
        bad.write_bytes(data[:cut])
        with pytest.raises(nio.ModelFileError):
            MLP.load(bad)
    assert cli.main(["info", str(bad)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ---------------------------------------------------------------- saving and checkpoints
def test_history_with_inf_and_nan_saves_and_reads_back(tmp_path):
    net, path, _ = _saved(tmp_path)
    net.history_["val_loss"] = [1.0, float("inf")]
    net.history_["val_score"] = [float("nan"), -float("inf")]
    net.save(path)
    back = MLP.load(path)
    assert back.history_["val_loss"] == [1.0, float("inf")]
    assert np.isnan(back.history_["val_score"][0]) and back.history_["val_score"][1] == -np.inf


def test_checkpointing_fit_with_infinite_validation_loss_does_not_crash(tmp_path):
    X, _ = _binary()
    y = X[:, 0] * 3
    net = MLP([4, 1], output="identity", backend="vectorised", dtype="float64", seed=0)
    Xv = np.full((5, 4), 1e300)                 # finite, but its squared error overflows to inf
    net.fit(X, y, epochs=2, lr=0.01, validation_data=(Xv, np.zeros(5)), checkpoint=tmp_path / "ck.npz")
    assert net.history_["val_loss"] == [np.inf, np.inf]
    net.fit(X, y, epochs=3, lr=0.01, validation_data=(Xv, np.zeros(5)),
            checkpoint=tmp_path / "ck.npz", resume=True)       # refit resumes the same run
    assert MLP.load(tmp_path / "ck.npz").n_epochs_ == 3     # that run extended to 3 epochs


def test_memmap_checkpoint_fingerprint_reads_in_chunks(tmp_path, monkeypatch):
    from nnjit import config
    monkeypatch.setattr(config, "STREAM_CHUNK_BYTES", 64 * 1024)
    rng = np.random.default_rng(1)
    Xa = rng.normal(size=(20000, 8)).astype(np.float32)           # 640 kB: 10+ chunks
    np.save(tmp_path / "X.npy", Xa)
    X = np.load(tmp_path / "X.npy", mmap_mode="r")
    y = (Xa[:, 0] > 0).astype(np.int64)
    seen = []
    real = nio.zlib.crc32
    monkeypatch.setattr(nio.zlib, "crc32", lambda b, c=0: (seen.append(memoryview(b).nbytes), real(b, c))[1])
    net = MLP([8, 2], backend="vectorised", seed=0)
    net.fit(X, y, epochs=1, checkpoint=tmp_path / "ck.npz")
    crc = nio.info(tmp_path / "ck.npz")["checkpoint"]["settings"]["data_crc32"]
    assert crc is not None and crc == real(y, real(Xa))
    assert max(seen) <= 64 * 1024 and sum(seen) == Xa.nbytes + y.nbytes
    Xb = Xa.copy()
    Xb[-1, -1] += 1                              # other data: resuming refuses it
    np.save(tmp_path / "X.npy", Xb)
    X = np.load(tmp_path / "X.npy", mmap_mode="r")
    with pytest.raises(ValueError, match="data_crc32"):
        MLP([8, 2], backend="vectorised", seed=0).fit(X, y, epochs=2, checkpoint=tmp_path / "ck.npz",
                                                      resume=True)


def test_save_into_missing_directory_names_the_users_path(tmp_path):
    net, _, _ = _saved(tmp_path)
    target = tmp_path / "nope" / "model.npz"
    with pytest.raises(FileNotFoundError) as e:
        net.save(target)
    assert str(target) in str(e.value) and ".tmp" not in str(e.value)


def test_stale_temporaries_of_killed_saves_are_cleaned(tmp_path):
    net, path, _ = _saved(tmp_path)
    prefix = nio._tmp_prefix(str(path))
    # a save SIGKILLed mid-write leaves its temporary behind ...
    code = ("import os, signal, numpy as np\n"
            "real = np.savez\n"
            "def die(f, **a): real(f, **a); os.kill(os.getpid(), signal.SIGKILL)\n"
            "np.savez = die\n"
            f"from nnjit import MLP; MLP([4, 3]).save({str(path)!r})\n")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == -9
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{prefix}{dead.pid}-abc123.tmp"
    live = tmp_path / f"{prefix}{os.getppid()}-def456.tmp"            # a live process: kept
    other = tmp_path / ".good.npz.something-else.tmp"                  # not ours: kept
    for f in (stale, live, other):
        f.write_bytes(b"x" * 1000)
    assert len([f for f in os.listdir(tmp_path) if f.startswith(prefix)]) == 3
    net.save(path)                                   # ... the next save removes the stale ones
    assert sorted(os.listdir(tmp_path)) == sorted(["good.npz", live.name, other.name])
    assert MLP.load(path).n_epochs_ == 2


# ---------------------------------------------------------------- history and plots
def test_validation_history_is_aligned_with_its_epochs_in_plot_and_file(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    from nnjit.plot import loss_curve
    X, y = _binary()
    net = MLP([4, 3], backend="vectorised", seed=0)
    net.fit(X, y, epochs=3, validation_data=(X[:50], y[:50]))
    net.fit(X, y, epochs=2)                                    # no validation in epochs 4, 5
    net.fit(X, y, epochs=2, validation_data=(X[:50], y[:50]))
    assert net.history_["val_epoch"] == [0, 1, 2, 5, 6]
    ax = loss_curve(net, Figure().add_subplot())
    (train, val), score = ax.get_lines(), ax.figure.axes[1].get_lines()[0]
    np.testing.assert_array_equal(train.get_xdata(), [1, 2, 3, 4, 5, 6, 7])
    for line, values in ((val, net.history_["val_loss"]), (score, net.history_["val_score"])):
        np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, np.nan, 6, 7])
        np.testing.assert_array_equal(line.get_ydata(), np.insert(values, 3, np.nan))
    net.save(tmp_path / "m.npz")
    assert MLP.load(tmp_path / "m.npz").history_ == net.history_


# ---------------------------------------------------------------- other processes, other installs
_FORK_AND_THREADS = """
import multiprocessing as mp, threading, numpy as np, nnjit
from nnjit import MLP
X = np.random.default_rng(0).normal(size=(256, 16)); y = np.arange(256) % 3
def work(i):
    return MLP([16, 32, 3], seed=i).fit(X, y, epochs=2, batch_size=16).history_["loss"][-1]
ref = [work(0), work(1)]                        # the parent has run parallel kernels
print("layer", nnjit.threading_layer(), flush=True)
with mp.get_context("fork").Pool(2) as pool:
    assert pool.map(work, [0, 1]) == ref
print("fork ok", flush=True)
out = {}
ts = [threading.Thread(target=lambda i=i: out.__setitem__(i, work(i))) for i in (0, 1, 0, 1)]
[t.start() for t in ts]; [t.join() for t in ts]
assert [out[0], out[1]] == ref
print("threads ok", flush=True)
"""


def _run(code, timeout=480, cwd=None, **env):
    full = dict(os.environ, PYTHONPATH=os.getcwd())
    full.pop("NUMBA_THREADING_LAYER", None)
    for k, v in env.items():        # None: unset it in the child
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def test_fork_after_fit_and_fitting_in_two_threads_do_not_hang_or_abort():
    """A fork Pool after a loops fit used to hang (GNU OpenMP) and two threads fitting at
    once aborted the process (workqueue); nnjit selects TBB, which is safe for both."""
    from nnjit import threads as ns
    if ns.SELECTED == "default":
        pytest.skip("TBB cannot be loaded on this platform (nnjit warned at import)")
    r = _run(_FORK_AND_THREADS)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "layer tbb" in r.stdout and "fork ok" in r.stdout and "threads ok" in r.stdout
    assert "RuntimeWarning" not in r.stderr


@pytest.mark.parametrize("layer, expect", [("workqueue", "workqueue"), ("tbb", "tbb"),
                                           ("safe", "tbb"), ("threadsafe", "tbb"),
                                           ("forksafe", "tbb")])
def test_explicit_threading_layer_is_respected(layer, expect):
    """The user's NUMBA_THREADING_LAYER stands, and any layer that resolves to the installed
    TBB works (it failed with "No threading layer could be loaded": nnjit loaded TBB's
    library only when it chose the layer itself)."""
    from nnjit import threads as ns
    if expect == "tbb" and ns.SELECTED != "tbb":
        pytest.skip("TBB cannot be loaded on this platform")
    code = ("import warnings; warnings.simplefilter('error')\n"
            "import numpy as np, nnjit\n"
            "nnjit.MLP([4, 40, 3]).fit(np.ones((64, 4)), np.arange(64) % 3, epochs=1, batch_size=64)\n"
            "print(nnjit.threading_layer(), nnjit.threads.SELECTED)\n")
    r = _run(code, NUMBA_THREADING_LAYER=layer)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == [expect, "user"]


def test_without_tbb_nnjit_warns_and_falls_back():
    code = ("import ctypes\n"
            "real = ctypes.CDLL\n"
            "class NoTBB(real):\n"
            "    def __init__(self, name, *a, **k):\n"
            "        if 'tbb' in str(name): raise OSError('no tbb here')\n"
            "        super().__init__(name, *a, **k)\n"
            "ctypes.CDLL = NoTBB\n"
            "import sys; sys.modules['numba.np.ufunc.tbbpool'] = None\n"
            "import numpy as np, nnjit\n"
            "net = nnjit.MLP([4, 3]).fit(np.ones((64, 4)), np.arange(64) % 3, epochs=1)\n"
            "print(nnjit.threading_layer(), nnjit.threads.SELECTED)\n")
    r = _run(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[1] == "default" and r.stdout.split()[0] in ("omp", "workqueue")
    assert r.stderr.count("TBB threading layer could not be loaded") == 1


def test_read_only_install_without_writable_home_imports_and_trains(tmp_path):
    """A read-only package folder and a home where nothing can be created (emulated so that it
    holds for root too: a regular file stands where Numba would create its folders)."""
    import shutil
    root = tmp_path / "site"
    shutil.copytree(os.path.join(os.getcwd(), "nnjit"), root / "nnjit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for d in [root / "nnjit", *[p for p in (root / "nnjit").rglob("*") if p.is_dir()]]:
        (d / "__pycache__").write_text("not a folder")
    (tmp_path / "home").write_text("not a folder")
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    code = ("import numpy as np, nnjit\n"
            "assert nnjit.__file__.startswith(%r), nnjit.__file__\n"
            "import nnjit.jit, nnjit.loops   # every module with kernels\n"
            "net = nnjit.MLP([4, 8, 3], seed=0).fit(np.eye(4).repeat(8, 0), np.arange(32) %% 3, epochs=2)\n"
            "print('trained', net.n_epochs_, nnjit.jit.CACHE)\n") % str(root)
    env = {"PYTHONPATH": str(root), "HOME": str(tmp_path / "home" / "x"), "PYTHONDONTWRITEBYTECODE": "1",
           "XDG_CACHE_HOME": str(tmp_path / "home" / "y"),
           "NUMBA_CACHE_DIR": None}      # a user's (or CI's) cache folder would be writable
    try:
        r = _run(code, cwd=tmp_path, **env)
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["trained", "2", "False"]
    assert r.stderr.count("NUMBA_CACHE_DIR") == 1
    # the README's fix; the vectorised backend with GELU keeps this run short (its erf is the
    # one small kernel it compiles, which the first run could not cache)
    r = _run(code.replace("seed=0)", "seed=0, backend='vectorised', activation='gelu')"), cwd=tmp_path,
             **dict(env, NUMBA_CACHE_DIR=str(tmp_path / "cache")))
    assert r.returncode == 0 and r.stdout.split() == ["trained", "2", "True"], r.stderr[-2000:]
    assert "NUMBA_CACHE_DIR" not in r.stderr and any((tmp_path / "cache").rglob("*.nbi"))


def test_busy_machine_gets_fewer_threads_per_epoch(monkeypatch):
    """With other runnable tasks holding cores, an epoch uses only the free ones (a thread
    that must wait for a time slice stalls every parallel region); the caller's setting is
    the ceiling and comes back after fit."""
    import numba
    from nnjit import threads as ns, config
    seen = []
    monkeypatch.setattr(ns, "cores", lambda: 4)
    busy = iter([0, 2, 3, 9, 0])
    monkeypatch.setattr(ns, "_others_running", lambda: next(busy))
    X, y = _binary()
    before = numba.get_num_threads()
    numba.set_num_threads(min(2, before))
    try:
        cap = numba.get_num_threads()
        net = MLP([4, 3], backend="loops", seed=0)
        net.fit(X, y, epochs=4, callbacks=[lambda *a: seen.append(numba.get_num_threads())])
        assert seen == [min(cap, 4), min(cap, 2), 1, 1]
        assert numba.get_num_threads() == cap
        monkeypatch.setattr(config, "ADAPTIVE_THREADS", False)
        seen.clear()
        net.fit(X, y, epochs=1, callbacks=[lambda *a: seen.append(numba.get_num_threads())])
        assert seen == [cap]
    finally:
        numba.set_num_threads(before)


def test_own_threads_going_idle_are_not_other_tasks(monkeypatch):
    """The run queue and this process's threads are read at different instants: a worker
    thread of the last epoch still spinning when the run queue was read and asleep when the
    process's threads were read is not another task (it had made every other epoch run on one
    thread); a task seen once and gone at the next readings costs no threads; one that stays
    is counted."""
    from nnjit import threads as ns
    queue_read = []                     # a worker spins until the run queue is read, then sleeps
    monkeypatch.setattr(ns, "_mine_running", lambda: 2 if queue_read else 3)
    monkeypatch.setattr(ns, "_run_queue", lambda: queue_read.append(1) or 3)
    assert ns._others_running() == 0
    monkeypatch.setattr(ns, "_mine_running", lambda: 2)
    queue = iter([4, 2, 2])                          # another task, for one reading
    monkeypatch.setattr(ns, "_run_queue", lambda: next(queue))
    assert ns._others_running() == 0
    reads = []
    monkeypatch.setattr(ns, "_run_queue", lambda: reads.append(1) or 5)   # three others stay
    assert ns._others_running() == 3 and len(reads) == 3


def test_others_running_reads_the_run_queue():
    from nnjit import threads as ns
    if not os.path.exists("/proc/loadavg"):
        pytest.skip("Linux /proc only")
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        import time
        time.sleep(0.5)
        assert ns._others_running() >= 2
    finally:
        for p in procs:
            p.kill()
            p.wait()
