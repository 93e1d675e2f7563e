"""Out-of-core data: X, y that do not sit in memory, read chunk by chunk into the compiled epoch.

For ``numpy.memmap`` files, zarr (and h5py) arrays and Dask arrays, :class:`nnjit.MLP`'s
``fit``, ``forward``, ``predict``, ``predict_proba`` and ``score`` read ``config.STREAM_CHUNK_BYTES``
of X at a time (``forward`` and ``predict`` return their (M, K) result in memory; ``fit`` and
``score`` hold O(chunk)), validate and convert that chunk (finite, the model's dtype, labels to the
(M, K) target matrix) and hand it to the engine's ``begin_fit`` / ``train_epoch`` (or
``forward``). Memory is O(chunk), not O(data). A ``numpy.memmap`` is always streamed, whatever
its size (it is an ndarray, but np.asarray on it would page the whole file in); an ordinary
ndarray never is.

How an epoch walks the data (M samples, B = batch_size, C = rows per chunk):

* C is rounded down to a multiple of B, so no mini-batch straddles two chunks. With
  ``shuffle=False`` the batch sequence is exactly the in-memory one, and so are the weights
  (bit for bit; the reported loss sums the same numbers in a different grouping).
* ``shuffle=True`` shuffles across chunks in two levels: the order of the chunks, then the
  rows inside each chunk (both from the model's seeded generator). A batch therefore mixes
  samples of one chunk only: data stored sorted by class should be shuffled once on disk.
* When B is larger than a chunk (full batch mode, ``batch_size=None``, on data larger than
  the chunk) the batch is read in pieces; each piece adds its sums Σ_m Δw_m, Σ_m Δb_m
  (:meth:`CPUEngine.sums`, weighted by the sample weights) and the update rule is applied
  once per batch to (Σ_m s_m Δw_m + alpha W) / Σ_m s_m (the flat ``update`` kernel): the
  lecture's batch mean, equal to in-memory training to rounding.
  Batches are then contiguous row ranges, shuffled as wholes.

Not for data that fits in memory (pass an ndarray; it is never streamed) and not for several
machines (see :mod:`nnjit.distributed`).
"""
import mmap
import zlib

import numpy as np

from . import config
from .layout import weight_mask


def is_out_of_core(X):
    """True for array-likes nnjit streams: numpy.memmap, Dask, zarr and h5py arrays."""
    if isinstance(X, np.memmap):
        return True
    if isinstance(X, np.ndarray):
        return False
    if hasattr(X, "__dask_graph__") and hasattr(X, "chunks"):
        return True
    mod = type(X).__module__.split(".")[0]
    return mod in ("zarr", "h5py") and hasattr(X, "shape") and hasattr(X, "dtype")


def read(A, start, stop):
    """Rows start:stop of A as a NumPy array (a Dask array is computed, a memmap is a view)."""
    block = A[start:stop]
    if hasattr(block, "__dask_graph__"):
        block = block.compute()
    return np.asarray(block)


def release(A):
    """Drop the pages of a memmap this process has touched so far.

    Pages read through a mapping count in the process's resident set until the kernel
    evicts them; MADV_DONTNEED unmaps them (the file stays in the page cache, a later read
    faults them back in). Skipped for copy-on-write memmaps (mode "c"), whose private
    changes it would discard, and where the OS has no MADV_DONTNEED."""
    mm = getattr(A, "_mmap", None)
    if (isinstance(A, np.memmap) and mm is not None and getattr(A, "mode", "c") != "c"
            and hasattr(mmap, "MADV_DONTNEED")):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # pragma: no cover - closed map or an exotic OS
            pass


def chunk_rows(X, multiple=1):
    """Rows per chunk: config.STREAM_CHUNK_BYTES of X (counting the wider of X's dtype and
    float64), rounded down to a multiple of ``multiple``, at least ``multiple``."""
    width = max(1, int(np.prod(X.shape[1:], dtype=np.int64)))
    itemsize = max(np.dtype(X.dtype).itemsize, 8) if hasattr(X, "dtype") else 8
    rows = max(1, int(config.STREAM_CHUNK_BYTES) // (width * itemsize))
    return max(multiple, rows // multiple * multiple)


def chunks(X, y, rows, rng=None):
    """Yield (start, X rows, y rows or None) chunk by chunk, ``rows`` rows each.

    With a ``numpy.random.Generator`` the chunk order is shuffled (rows inside a chunk are
    left to the caller). Each chunk is released (see :func:`release`) once the caller asks
    for the next one."""
    starts = np.arange(0, X.shape[0], rows)
    if rng is not None:
        starts = rng.permutation(starts)
    for s in starts.tolist():
        e = min(s + rows, X.shape[0])
        yield s, read(X, s, e), (None if y is None else read(y, s, e))
        release(X)
        release(y)


def _check_meta(net, X, name="X"):
    """Shape and dtype checks that need no data, then the first row through net.check_X."""
    if getattr(X, "ndim", 2) != 2 or len(X.shape) != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {tuple(X.shape)}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has 0 samples")
    net.check_X(read(X, 0, 1), name)
    return int(X.shape[0])


def forward(net, X):
    """Output activations a^(L) (M, K) of out-of-core X, computed chunk by chunk; the
    result is in memory (K columns, usually much less than X's D)."""
    M = _check_meta(net, X)
    out = np.empty((M, net.layers[-1]), net.dtype)
    for s, Xc, _ in chunks(X, None, chunk_rows(X)):
        out[s:s + Xc.shape[0]] = net.engine.forward(net.check_X(Xc, f"X[{s}:{s + Xc.shape[0]}]"))
    return out


def score(net, X, y):
    """MLP.score of out-of-core X (y in memory or not), chunk by chunk in O(chunk) memory:
    accuracy as a count of hits, R^2 from each output's running residual sum and the
    chunks' means and squared deviations merged pairwise (Chan et al.), not from y's
    mean first, so one pass suffices. Equals the in-memory score (R^2 to rounding)."""
    M = _check_meta(net, X)
    if not (is_out_of_core(y) or isinstance(y, np.ndarray)):
        y = np.asarray(y)
    if tuple(y.shape[:1]) != (M,):
        raise ValueError(f"X has {M} samples but y has shape {tuple(y.shape)}")
    hits, n, K = 0, 0, net.layers[-1]
    ss_res, mean, ss_tot = np.zeros(K), np.zeros(K), np.zeros(K)
    for s, Xc, yc in chunks(X, y, chunk_rows(X)):
        Xc = net.check_X(Xc, f"X[{s}:{s + Xc.shape[0]}]")
        mc = Xc.shape[0]
        if net.is_classifier:
            hits += round(net.score(Xc, yc) * mc)
            continue
        Y = net.check_y(yc, mc).astype(np.float64)
        ss_res += ((Y - net.engine.forward(Xc).astype(np.float64)) ** 2).sum(axis=0)
        mc_mean = Y.mean(axis=0)
        d = mc_mean - mean
        ss_tot += ((Y - mc_mean) ** 2).sum(axis=0) + d * d * n * mc / (n + mc)
        mean += d * mc / (n + mc)
        n += mc
    if net.is_classifier:
        return hits / M
    r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), 0.0)
    return float(r2.mean())


class Stream:
    """Training data for MLP.fit that stays on disk (or in a Dask graph): one object per fit."""

    def __init__(self, net, X, y):
        self.net = net
        self.X = X
        self.M = _check_meta(net, X)
        if not (is_out_of_core(y) or isinstance(y, np.ndarray)):
            y = np.asarray(y)
        if y.ndim == 0 or y.shape[0] != self.M:
            raise ValueError(f"X has {self.M} samples but y has shape {tuple(y.shape)}")
        self.y = y
        column = len(y.shape) == 2 and y.shape[1] == 1 and net.is_classifier
        if net.is_classifier and (y.ndim == 1 or column) and net.classes_ is None:
            # every chunk's labels are mapped with the classes of the whole y, found first
            labels = np.unique(np.concatenate(
                [np.unique(yc) for _, yc, _ in chunks(y, None, chunk_rows(y))]))
            net.check_y(labels[:, None] if column else labels, labels.shape[0], fit=True)

    def _chunk(self, s, Xc, yc):
        e = s + Xc.shape[0]
        Xc = self.net.check_X(Xc, f"X[{s}:{e}]")
        return Xc, self.net.check_y(yc, Xc.shape[0], fit=True)

    def train_epoch(self, engine, batch_size, rule, h, loss, shuffle, rng, S=None):
        """One epoch over all chunks; returns the five sums of the engine's train_epoch
        (nnjit.loops.train_epoch). S: the sample weights (n,) in memory, or None. If a chunk
        fails validation the error propagates; the training loop restores the epoch's start."""
        rows = chunk_rows(self.X)
        if batch_size <= rows:
            return self._minibatches(engine, rows // batch_size * batch_size, batch_size,
                                     rule, h, loss, shuffle, rng, S)
        return self._large_batches(engine, rows, batch_size, rule, h, loss, shuffle, rng, S)

    def _minibatches(self, engine, rows, batch_size, rule, h, loss, shuffle, rng, S):
        sums, emax = np.zeros(5), 0.0
        try:
            for s, Xc, yc in chunks(self.X, self.y, rows, rng if shuffle else None):
                Xc, Yc = self._chunk(s, Xc, yc)
                mc = Xc.shape[0]
                order = (rng.permutation(mc) if shuffle else np.arange(mc)).astype(np.int64)
                engine.begin_fit(Xc, Yc, batch_size, None if S is None else S[s:s + mc])
                part = engine.train_epoch(order, batch_size, rule, h, loss)
                sums += part
                emax = max(emax, part[2])       # a maximum, not a sum
        finally:
            engine.end_fit()
        return sums[0], sums[1], emax, sums[3], sums[4]

    def _large_batches(self, engine, rows, batch_size, rule, h, loss, shuffle, rng, S):
        """Batches larger than a chunk: add each piece's weighted sums, then one update per
        batch with the weighted mean sum_m s_m Delta w_m / sum_m s_m + alpha W / sum_m s_m."""
        starts = np.arange(0, self.M, batch_size)
        if shuffle:
            starts = rng.permutation(starts)
        alpha = float(h.alpha)
        mask = None
        total = pen = emax = batch_cost = batch_pen = 0.0
        for b in starts.tolist():
            mb = min(batch_size, self.M - b)
            gsum = np.zeros(engine.get_params().shape, np.float64)
            wsum = bc = 0.0
            for s in range(b, b + mb, rows):
                e = min(s + rows, b + mb)
                Xc, Yc = self._chunk(s, read(self.X, s, e), read(self.y, s, e))
                release(self.X)
                g, t, em, w = engine.sums(Xc, Yc, loss, None if S is None else S[s:e])
                gsum += g
                wsum += w
                bc += t
                emax = max(emax, em)
            total += bc
            if wsum <= 0:
                continue
            batch_cost += bc * mb / wsum
            if alpha:
                if mask is None:
                    mask = weight_mask(engine.shape)
                p = engine.penalty()
                pen += p
                batch_pen += p * mb / wsum
                gsum += alpha * mask * engine.get_params().astype(np.float64)
            engine.update(gsum / wsum, rule, h)
        return total, pen, emax, batch_cost, batch_pen


def crc32(*arrays):
    """CRC-32 of arrays' bytes (None entries skipped), row chunk by row chunk: O(chunk)
    memory for a memmap (its pages are released as it goes), zarr or Dask array as for an
    ndarray; the same value as one crc32 of the whole contiguous array. None where no bytes
    define the data (object arrays), or for no arrays at all."""
    crc, seen = 0, False
    for a in arrays:
        if a is None:
            continue
        if getattr(a, "dtype", np.dtype(object)) == object or not hasattr(a, "shape"):
            return None
        seen = True
        rows = chunk_rows(a)
        for s in range(0, max(1, a.shape[0]), rows):
            block = np.ascontiguousarray(read(a, s, s + rows))
            crc = zlib.crc32(block.reshape(-1).view(np.uint8), crc)
            release(a)
    return crc if seen else None
