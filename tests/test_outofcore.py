"""Out-of-core data (nnjit.data): memmap, zarr and Dask arrays streamed chunk by chunk.

The core check is "same computation two ways": streaming with shuffle=False must give the
in-memory weights bit for bit, since the batch sequence is the same."""
import tracemalloc

import numpy as np
import pytest

from nnjit import MLP, config
from nnjit import data as D

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")

M, DIM, K = 203, 7, 3


@pytest.fixture
def small_chunks(monkeypatch):
    # 40 float64 rows of 7 features per chunk: 203 samples span 6 chunks
    monkeypatch.setattr(config, "STREAM_CHUNK_BYTES", 40 * DIM * 8)


@pytest.fixture
def xy(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(M, DIM))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.8)
    np.save(tmp_path / "X.npy", X)
    return X, y, np.load(tmp_path / "X.npy", mmap_mode="r")


_made = iter(range(10**6))


def _as(kind, X, tmp_path):
    name = tmp_path / f"A{next(_made)}"
    if kind == "memmap":
        np.save(f"{name}.npy", X)
        return np.load(f"{name}.npy", mmap_mode="r")
    if kind == "zarr":
        z = zarr.create_array(store=f"{name}.zarr", shape=X.shape,
                              chunks=(30,) + X.shape[1:], dtype=X.dtype)
        z[:] = X
        return z
    return da.from_array(X, chunks=(50,) + X.shape[1:])


def _net(dtype="float64"):
    return MLP([DIM, 5, K], activation="tanh", seed=11, dtype=dtype)


def test_detection():
    X = np.zeros((4, 2))
    assert not D.is_out_of_core(X) and not D.is_out_of_core([[1.0, 2.0]])
    assert D.is_out_of_core(da.from_array(X))
    assert D.is_out_of_core(zarr.zeros((4, 2)))


@pytest.mark.parametrize("kind,batch_size,dtype", [
    ("memmap", 16, "float64"), ("memmap", 1, "float64"), ("memmap", 7, "float32"),
    ("zarr", 16, "float64"), ("dask", 7, "float32")])
def test_stream_equals_in_memory_without_shuffle(small_chunks, xy, tmp_path, kind, batch_size, dtype):
    X, y, _ = xy
    ref = _net(dtype).fit(X, y, epochs=3, lr=0.2, momentum=0.6, batch_size=batch_size, shuffle=False)
    net = _net(dtype).fit(_as(kind, X, tmp_path), _as(kind, y, tmp_path) if kind != "memmap" else y,
                          epochs=3, lr=0.2, momentum=0.6, batch_size=batch_size, shuffle=False)
    for a, b in zip(ref.weights + ref.biases, net.weights + net.biases):
        np.testing.assert_array_equal(a, b)     # same batches, same kernels: bit for bit
    np.testing.assert_allclose(net.history_["loss"], ref.history_["loss"], rtol=1e-6)
    assert net.n_epochs_ == 3 and list(net.classes_) == [0, 1, 2]


def test_chunk_rows_are_whole_batches(small_chunks):
    X = np.zeros((1000, DIM))
    assert D.chunk_rows(X) == 40
    assert D.chunk_rows(X, 16) == 32        # rounded down to a multiple of the batch
    assert D.chunk_rows(X, 64) == 64        # never below one batch


def test_full_batch_larger_than_a_chunk_accumulates(small_chunks, xy):
    # batch_size=None on 203 samples with 40-row chunks: each epoch adds six pieces' sums
    X, y, Xm = xy
    ref = _net().fit(X, y, epochs=4, lr=0.5, momentum=0.5, batch_size=None)
    net = _net().fit(Xm, y, epochs=4, lr=0.5, momentum=0.5, batch_size=None)
    for a, b in zip(ref.weights + ref.biases, net.weights + net.biases):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(net.history_["loss"], ref.history_["loss"], rtol=1e-12)
    big = _net().fit(X, y, epochs=2, lr=0.5, batch_size=100, shuffle=False)
    big_m = _net().fit(Xm, y, epochs=2, lr=0.5, batch_size=100, shuffle=False)
    np.testing.assert_allclose(big_m.weights[0], big.weights[0], rtol=1e-10, atol=1e-12)


def test_chunks_iterator_shuffles_chunk_order_and_covers_every_row(xy):
    _, _, Xm = xy
    rng = np.random.default_rng(0)
    orders = []
    for _ in range(3):
        starts, rows = [], 0
        for s, Xc, yc in D.chunks(Xm, None, 40, rng):
            np.testing.assert_array_equal(Xc, Xm[s:s + 40])
            assert yc is None
            starts.append(s)
            rows += Xc.shape[0]
        assert sorted(starts) == list(range(0, M, 40)) and rows == M
        orders.append(starts)
    assert orders[0] != orders[1] or orders[1] != orders[2]


def test_shuffle_is_seeded_and_learns(small_chunks, xy):
    X, y, Xm = xy
    # batches of 4 run the serial kernels: fast on a busy machine
    a = _net().fit(Xm, y, epochs=15, lr=0.2, batch_size=4)
    b = _net().fit(Xm, y, epochs=15, lr=0.2, batch_size=4)
    c = _net().fit(Xm, y, epochs=15, lr=0.2, batch_size=4, shuffle=False)
    np.testing.assert_array_equal(a.weights[0], b.weights[0])
    assert not np.array_equal(a.weights[0], c.weights[0])
    assert a.history_["loss"][-1] < 0.5 * a.history_["loss"][0]
    assert a.score(Xm, y) > 0.85


@pytest.mark.parametrize("kind", ["memmap", "zarr", "dask"])
def test_forward_predict_score_stream(small_chunks, xy, tmp_path, kind):
    X, y, _ = xy
    net = _net().fit(X, y, epochs=5, lr=0.3)
    Xo = _as(kind, X, tmp_path)
    np.testing.assert_array_equal(net.forward(Xo), net.forward(X))
    np.testing.assert_array_equal(net.predict(Xo), net.predict(X))
    np.testing.assert_array_equal(net.predict_proba(Xo), net.predict_proba(X))
    assert net.score(Xo, y) == net.score(X, y)


def test_regression_targets_stream(small_chunks, xy):
    X, _, Xm = xy
    Y = np.stack([X[:, 0] - X[:, 1], X[:, 2] * 0.5], axis=1)
    ref = MLP([DIM, 4, 2], output="identity", seed=2, dtype="float64").fit(X, Y, epochs=2, shuffle=False)
    net = MLP([DIM, 4, 2], output="identity", seed=2, dtype="float64").fit(Xm, Y, epochs=2, shuffle=False)
    np.testing.assert_array_equal(net.weights[1], ref.weights[1])
    assert net.score(Xm, Y) == pytest.approx(ref.score(X, Y), rel=1e-12)
    Yoff = Y + 1e4          # a large mean: no cancellation, the chunks' deviations are merged
    assert net.score(Xm, Yoff) == pytest.approx(ref.score(X, Yoff), rel=1e-9)


def test_labels_are_collected_from_every_chunk(small_chunks, xy, tmp_path):
    # sorted labels: the first chunks hold class 0 only; classes_ must still be all three
    X, y, _ = xy
    idx = np.argsort(y, kind="stable")
    net = _net().fit(_as("memmap", X[idx], tmp_path), da.from_array(y[idx], chunks=40), epochs=1)
    assert list(net.classes_) == [0, 1, 2]


def test_bad_chunk_raises_and_restores_the_weights(small_chunks, xy, tmp_path):
    X, y, _ = xy
    Xbad = X.copy()
    Xbad[190, 3] = np.nan                   # in the last chunk
    net = _net()
    before = net.weights
    with pytest.raises(ValueError, match=r"X\[160:200\] contains NaN"):
        net.fit(_as("memmap", Xbad, tmp_path), y, epochs=2, batch_size=8, shuffle=False)
    for a, b in zip(before, net.weights):
        np.testing.assert_array_equal(a, b)
    assert net.n_epochs_ == 0 and net.history_["loss"] == []
    with pytest.raises(ValueError, match="features"):
        _net().fit(_as("dask", X[:, :4], tmp_path), y)
    with pytest.raises(ValueError, match="samples"):
        _net().fit(_as("dask", X, tmp_path), y[:-1])
    with pytest.raises(ValueError, match="unseen|not seen"):
        net.fit(_as("dask", X, tmp_path), np.where(y == 2, 7, y)) if net.classes_ is not None else \
            _net().fit(X, y, epochs=1).fit(_as("dask", X, tmp_path), np.where(y == 2, 7, y))


def test_memory_is_bounded_by_the_chunk(monkeypatch, tmp_path):
    # 64k rows x 16 float64 = 8 MiB on disk, 256 KiB chunks: numpy allocations (tracemalloc
    # sees them) must stay near the chunk, far below the data
    n, d = 65536, 16
    X = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float64, shape=(n, d))
    X[:] = np.random.default_rng(0).normal(size=(n, d))
    y = (np.asarray(X[:, 0]) > 0).astype(np.int8)
    X.flush()
    Xm = np.load(tmp_path / "big.npy", mmap_mode="r")
    monkeypatch.setattr(config, "STREAM_CHUNK_BYTES", 2**18)
    net = MLP([d, 8, 2], seed=0)
    net.fit(Xm[:256], y[:256], epochs=1, batch_size=64)   # compile (or load) the same twin
    net.score(Xm[:64], y[:64])                            # outside the measurement
    tracemalloc.start()
    try:
        net.fit(Xm, y, epochs=1, batch_size=64)
        fit_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        net.score(Xm, y)
        score_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    data = Xm.nbytes
    assert fit_peak < data / 8, (fit_peak, data)
    # score counts hits chunk by chunk; engine.forward adds its own PREDICT_CHUNK-row buffers
    assert score_peak < data / 4, (score_peak, data)
    assert net.score(Xm, y) > 0.9
