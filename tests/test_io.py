"""nnjit.io: the model file format, bit-identical round trips, atomic writes, bad files."""
import copy
import json
import os
import pickle

import numpy as np
import pytest

from nnjit import MLP
from nnjit import io as nio

BACKENDS = ["loops", "vectorised", "cuda"]


def _data(M=23, D=5, K=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(M, D)), rng.integers(0, K, M)


def _net(backend="loops", dtype="float64", **kw):
    kw = {"activation": "tanh", "seed": 3, **kw}
    return MLP([5, 7, 3], backend=backend, dtype=dtype, **kw)


FIT = {"lr": 0.2, "momentum": 0.9, "batch_size": 4}


def _same_state(a, b):
    for u, v in zip(a.weights + a.biases, b.weights + b.biases):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(a.engine.get_state()["vel"], b.engine.get_state()["vel"])
    assert a.history_ == b.history_ and a.n_epochs_ == b.n_epochs_


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_predicts_and_continues_bit_identically(backend, dtype, tmp_path):
    """Train 3 epochs, save, load, train 2 more == train 5 epochs straight, bit for bit
    (1 + 1 == 2 in the CUDA simulator)."""
    X, y = _data()
    first, fit = 3, FIT
    if backend == "cuda":       # the simulator is slow: one batch per epoch, 1 + 1 epochs
        X, y, first, fit = X[:9], y[:9], 1, {**FIT, "batch_size": 9}
    a = _net(backend, dtype).fit(X, y, epochs=first, **fit)
    a.save(tmp_path / "m.npz")
    b = MLP.load(tmp_path / "m.npz")
    assert (b.layers, b.backend, b.dtype, b.activation) == (a.layers, backend, dtype, "tanh")
    np.testing.assert_array_equal(b.forward(X), a.forward(X))
    np.testing.assert_array_equal(b.predict(X), a.predict(X))
    _same_state(a, b)
    more = 1 if backend == "cuda" else 2
    b.fit(X, y, epochs=more, **fit)
    straight = _net(backend, dtype).fit(X, y, epochs=first + more, **fit)
    _same_state(b, straight)


def test_file_layout_is_the_documented_one(tmp_path):
    X, y = _data()
    net = _net().fit(X, y, epochs=2, **FIT)
    net.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        names = set(z.files)
        assert names == {"header", "W1", "b1", "vW1", "vb1", "sW1", "sb1",
                         "W2", "b2", "vW2", "vb2", "sW2", "sb2", "classes"}
        assert z["W1"].shape == (7, 5) and z["b2"].shape == (3,) and z["vW2"].shape == (3, 7)
        np.testing.assert_array_equal(z["W2"], net.weights[1])
        np.testing.assert_array_equal(z["classes"], [0, 1, 2])
        assert all(z[n].dtype != object for n in names)
        header = json.loads(z["header"].tobytes().decode())
    assert header["format"] == "nnjit-mlp" and header["version"] == nio.VERSION
    assert header["architecture"] == {"layers": [5, 7, 3], "activation": "tanh", "output": "softmax",
                                      "loss": "cross_entropy", "init": "xavier", "init_scale": 0.01,
                                      "backend": "loops", "dtype": "float64", "seed": 3}
    assert header["n_epochs"] == 2 and len(header["history"]["loss"]) == 2
    assert header["rng"]["bit_generator"] == "PCG64"


@pytest.mark.parametrize("labels", [np.array(["cat", "dog", "émeu"]),
                                    np.array(["cat", "dog", "émeu"], dtype=object),
                                    np.array([-1.5, 0.0, 2.5]), np.array([False, True])])
def test_class_labels_round_trip_without_object_arrays(labels, tmp_path):
    X, _ = _data()
    y = labels[np.arange(len(X)) % len(labels)]
    K = len(labels)
    net = MLP([5, 4, K], output="softmax" if K > 2 else "sigmoid", seed=0) if K > 2 else \
        MLP([5, 4, 1], output="sigmoid", seed=0)
    net.fit(X, y, epochs=2)
    net.save(tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        assert z["classes"].dtype.kind in "biufU"
    back = MLP.load(tmp_path / "c.npz")
    assert back.classes_.dtype == net.classes_.dtype
    np.testing.assert_array_equal(back.classes_, net.classes_)
    np.testing.assert_array_equal(back.predict(X), net.predict(X))


def test_backend_can_be_overridden_at_load(tmp_path):
    X, y = _data()
    net = _net("vectorised").fit(X, y, epochs=2, **FIT)
    net.save(tmp_path / "m.npz")
    loops = MLP.load(tmp_path / "m.npz", backend="loops")
    assert loops.backend == "loops"
    np.testing.assert_allclose(loops.forward(X), net.forward(X), rtol=1e-12)


def test_pickle_and_deepcopy_keep_training_state():
    X, y = _data()
    net = _net().fit(X, y, epochs=2, **FIT)
    for twin in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        _same_state(twin, net)
        twin.fit(X, y, epochs=1, **FIT)
    net.fit(X, y, epochs=1, **FIT)
    _same_state(twin, net)


# ---------------------------------------------------------------- atomic writes
def _tmp_leftovers(folder):
    return [f for f in os.listdir(folder) if f.endswith(".tmp")]


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_interrupted_save_keeps_the_previous_file(exc, tmp_path, monkeypatch):
    X, y = _data()
    path = tmp_path / "m.npz"
    old = _net().fit(X, y, epochs=1, **FIT)
    old.save(path)
    before = path.read_bytes()
    newer = _net().fit(X, y, epochs=4, **FIT)
    real_savez = np.savez

    def savez_then_die(f, **arrays):
        real_savez(f, **arrays)
        f.truncate(f.tell() // 2)       # half the archive is on disk when the crash comes
        raise exc
    monkeypatch.setattr(nio.np, "savez", savez_then_die)
    with pytest.raises(type(exc)):
        newer.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _tmp_leftovers(tmp_path) == []
    np.testing.assert_array_equal(MLP.load(path).forward(X), old.forward(X))


def test_saved_file_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    _net().save(tmp_path / "m.npz")
    assert os.stat(tmp_path / "m.npz").st_mode & 0o777 == 0o666 & ~umask


def test_save_path_is_used_exactly_and_overwrites(tmp_path):
    X, y = _data()
    path = tmp_path / "model.bin"
    _net().fit(X, y, epochs=1, **FIT).save(path)
    net = _net().fit(X, y, epochs=3, **FIT)
    net.save(str(path))
    assert sorted(os.listdir(tmp_path)) == ["model.bin"]
    assert MLP.load(path).n_epochs_ == 3


# ---------------------------------------------------------------- bad files
@pytest.fixture
def saved(tmp_path):
    X, y = _data()
    path = tmp_path / "good.npz"
    _net().fit(X, y, epochs=2, **FIT).save(path)
    return path


def _rewrite(src, dst, header=None, **arrays):
    """Copy an nnjit file, replacing its header dict and/or some arrays."""
    with np.load(src, allow_pickle=False) as z:
        out = {n: z[n] for n in z.files}
    h = json.loads(out["header"].tobytes().decode())
    if header is not None:
        h.update(header)
    out["header"] = np.frombuffer(json.dumps(h).encode(), np.uint8)
    out.update(arrays)
    np.savez(dst, **out)
    return dst


def test_truncated_file(saved, tmp_path):
    data = saved.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(nio.ModelFileError, match="truncated or corrupted"):
            MLP.load(bad)


def test_flipped_bytes_in_any_array(saved, tmp_path):
    data = saved.read_bytes()
    with np.load(saved) as z:
        arrays = {n: z[n] for n in z.files}
    for name, a in arrays.items():
        raw = a.tobytes()
        start = data.find(raw)
        assert start > 0, name
        for pos in (start, start + len(raw) // 2, start + len(raw) - 1):
            flipped = bytearray(data)
            flipped[pos] ^= 0x10
            bad = tmp_path / "flip.npz"
            bad.write_bytes(bytes(flipped))
            with pytest.raises(nio.ModelFileError, match="corrupted"):
                MLP.load(bad)


def test_changed_array_fails_the_checksum(saved, tmp_path):
    with np.load(saved) as z:
        W1 = z["W1"].copy()
    W1[0, 0] += 1e-9
    bad = _rewrite(saved, tmp_path / "w.npz", W1=W1)
    with pytest.raises(nio.ModelFileError, match="checksum"):
        MLP.load(bad)


def test_newer_and_invalid_versions(saved, tmp_path):
    with pytest.raises(nio.ModelFileError, match="version 99, written by a newer nnjit"):
        MLP.load(_rewrite(saved, tmp_path / "v.npz", {"version": 99}))
    with pytest.raises(nio.ModelFileError, match="invalid format version"):
        MLP.load(_rewrite(saved, tmp_path / "v0.npz", {"version": "1"}))


def test_foreign_files(saved, tmp_path):
    np.savez(tmp_path / "other.npz", x=np.arange(3))
    with pytest.raises(nio.ModelFileError, match="not an nnjit model file .it has no 'header'"):
        MLP.load(tmp_path / "other.npz")
    with pytest.raises(nio.ModelFileError, match="format 'keras'"):
        MLP.load(_rewrite(saved, tmp_path / "k.npz", {"format": "keras"}))
    (tmp_path / "text.csv").write_text("1,2,3\n")
    with pytest.raises(nio.ModelFileError, match="not a NumPy .npz archive"):
        MLP.load(tmp_path / "text.csv")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(nio.ModelFileError, match="empty"):
        MLP.load(tmp_path / "empty.npz")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(nio.ModelFileError, match="not a NumPy .npz"):
        MLP.load(tmp_path / "array.npy")
    with pytest.raises(FileNotFoundError, match="no such model file"):
        MLP.load(tmp_path / "missing.npz")
    with pytest.raises(nio.ModelFileError, match="directory"):
        MLP.load(tmp_path)


def test_bad_header_and_mismatched_arrays(saved, tmp_path):
    with np.load(saved) as z:
        out = {n: z[n] for n in z.files}
    out["header"] = np.frombuffer(b"{not json", np.uint8)
    np.savez(tmp_path / "h.npz", **out)
    with pytest.raises(nio.ModelFileError, match="corrupted header"):
        MLP.load(tmp_path / "h.npz")
    # arrays of the wrong shape, with a checksum that matches them (a consistent but wrong file)
    out = {n: v for n, v in out.items() if n != "header"}
    out["W1"] = np.zeros((5, 7))
    h = _rewrite(saved, tmp_path / "s.npz")
    with np.load(h) as z:
        header = json.loads(z["header"].tobytes().decode())
    header["sha256"] = nio._digest(out)
    out["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "s.npz", **out)
    with pytest.raises(nio.ModelFileError, match=r"'W1' is float64\(5, 7\)"):
        MLP.load(tmp_path / "s.npz")


class _Evil:
    def __reduce__(self):
        return (os.mkdir, ("/tmp/nnjit-pwned-by-pickle",))


def test_loading_never_unpickles(tmp_path):
    """A file smuggling a pickled object is refused without executing it."""
    marker = "/tmp/nnjit-pwned-by-pickle"
    if os.path.isdir(marker):
        os.rmdir(marker)
    np.savez(tmp_path / "evil.npz", header=np.array([_Evil()], dtype=object))
    with pytest.raises(nio.ModelFileError, match="truncated or corrupted|corrupted header|header.* has dtype object"):
        MLP.load(tmp_path / "evil.npz")
    assert not os.path.exists(marker)


def test_info_summarises_a_file(saved):
    info = nio.info(saved)
    assert info["n_params"] == 5 * 7 + 7 + 7 * 3 + 3 == _net().n_params
    assert info["n_epochs"] == 2 and info["architecture"]["layers"] == [5, 7, 3]
    assert info["classes"] == [0, 1, 2] and info["format_version"] == 2
