"""Engines: the state a form keeps (parameters, optimizer state, batch buffers) and the few
calls the training loop, the model and the estimators make on it. The CPU engine serves the
loop form and the vectorised form, which share one flat layout (nnjit.layout) and one set of
kernel names; the CUDA engine (:mod:`nnjit.cuda`) offers the same methods with its state on
the device.

=====================================  ==================================================
``get_params()``, ``set_params(t)``    the flat parameters theta (copies in, copies out)
``get_state()``, ``set_state(s)``      the optimizer state {"vel", "sq", "step"}
``forward(X)``                         a^(L) of X (M, K), in chunks of config.PREDICT_CHUNK
``loss(X, Y, loss, S, alpha)``         (weighted mean cost + L2 term, max |a - y|)
``gradients(X, Y, loss, S, alpha)``    the flat gradient of that mean cost
``sums(X, Y, loss, S)``                (sum_m s_m Δw_m, sum_m s_m C_m, max |a - y|, sum_m s_m)
``update(grad, rule, h)``              one step of the rule with a flat mean gradient
``begin_fit``, ``train_epoch``, ``end_fit``   an epoch over data held for the fit
=====================================  ==================================================

X may be a scipy.sparse matrix wherever it is an input (a sparse first layer; loops and
vectorised forms).
"""
import numba
import numpy as np

from . import config
from .layout import make_batch, make_shape, staggered, transpose_first, untranspose_first


#: a size no batch or layer reaches: every loop kernel runs without its parallel region
_NEVER = 2**62


def _sparse(X):
    return hasattr(X, "tocsr") and hasattr(X, "nnz")


class CPUEngine:
    """Parameters and buffers in host memory; ``kernels`` is nnjit.loops or nnjit.vectorised."""

    def __init__(self, kernels, shape, n_params, dtype):
        self.k = kernels
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.loops = kernels.__name__ == "nnjit.loops"
        self.theta, self.vel, self.sq, self.grad = staggered(4, n_params, self.dtype)
        # vel: momentum velocity, Adam's m or RMSprop's buffer; sq: second moment
        self.step = np.zeros(1, np.int64)              # updates made (Adam's t)
        self._fit = None
        self._sum_bufs = None
        self._transposed = False     # W^(1)'s block held transposed (a loops sparse fit)

    def _par_work(self, batch_size=None):
        """The work (N_l N_{l-1} mb) from which a loop kernel runs its parallel region
        (config.PARALLEL_MIN_WORK), or one nothing reaches when Numba runs one thread (a joblib
        or Dask worker given one core, EpochThreads on a busy machine): a region of one thread
        pays its launch and gains nothing (digits 64-100-10 b200, one thread: 59-66 ms a
        50-epoch fit against 65-69 with the regions). The bits do not change (every sum runs
        in a fixed order either way). Not for an online epoch (batch_size under
        PARALLEL_MIN_SAMPLES), whose kernels par_work chooses."""
        if (self.loops and (batch_size is None or batch_size >= config.PARALLEL_MIN_SAMPLES)
                and numba.get_num_threads() == 1):
            return _NEVER
        return config.PARALLEL_MIN_WORK

    # -- state the wrapper reads and writes (in the standard layout, whatever the fit holds)
    def get_params(self):
        return untranspose_first(self.theta, self.shape) if self._transposed else self.theta.copy()

    def set_params(self, theta):
        theta = np.asarray(theta)
        self.theta[...] = transpose_first(theta, self.shape) if self._transposed else theta

    def get_state(self):
        """The optimizer state: {"vel": (P,), "sq": (P,), "step": int} (copies)."""
        if self._transposed:
            return {"vel": untranspose_first(self.vel, self.shape),
                    "sq": untranspose_first(self.sq, self.shape), "step": int(self.step[0])}
        return {"vel": self.vel.copy(), "sq": self.sq.copy(), "step": int(self.step[0])}

    def set_state(self, state):
        vel, sq = np.asarray(state["vel"]), np.asarray(state["sq"])
        if self._transposed:
            vel, sq = transpose_first(vel, self.shape), transpose_first(sq, self.shape)
        self.vel[...] = vel
        self.sq[...] = sq
        self.step[0] = int(state["step"])

    def _buffers(self, cap, train=False, shape=None):
        """Batch buffers; the loop form's scratch (fused batch, GEMM path) only where its epoch
        runs them."""
        shape = self.shape if shape is None else shape
        n_pack = 0
        if train and self.loops:
            n_pack = self.k.epoch_scratch(shape.sizes, cap, self.dtype, config.tiles())
        return make_batch(shape, cap, self.dtype, n_pack)

    # -- whole-data calls, chunked so memory stays O(chunk x width)
    def _chunks(self, X, Y, S, fn, chunk=None):
        chunk = chunk or config.PREDICT_CHUNK
        M = X.shape[0]
        cap = min(M, chunk)
        sparse = _sparse(X)
        shape = make_shape(self.shape.sizes, self.shape.acts, not sparse)[0] if sparse else self.shape
        bufs = self._buffers(cap, shape=shape)
        Y = np.zeros((M, int(self.shape.sizes[-1])), self.dtype) if Y is None else Y
        S = np.ones(M, self.dtype) if S is None else np.asarray(S, self.dtype)
        order = np.arange(M, dtype=np.int64)
        pwork = self._par_work()
        for start in range(0, M, cap):
            mb = min(cap, M - start)
            if sparse:
                self._sparse_first(X[start:start + mb], bufs, shape, mb)
                K = int(shape.sizes[-1])
                bufs.y[:mb * K] = np.asarray(Y[start:start + mb], self.dtype).ravel()
                bufs.s[:mb] = S[start:start + mb]
                self.k.forward(self.theta, shape, bufs, mb, True, pwork, 2)
            else:
                self.k.load_batch(bufs, shape, X, Y, S, order, start, mb)
                self.k.forward(self.theta, shape, bufs, mb, mb >= config.PARALLEL_MIN_SAMPLES,
                               pwork, 1)
            fn(bufs, start, mb)

    def _sparse_first(self, Xb, bufs, shape, mb):
        """Layer 1 of sparse rows Xb: z = Xb W^T + b, a = f(z) (a sparse-dense product)."""
        from .layout import layer
        from .vectorised import f
        W, b = layer(self.get_params() if self._transposed else self.theta, self.shape, 1)
        n1 = int(shape.sizes[1])
        off = int(shape.a_off[1]) * (bufs.a.shape[0] // int(shape.a_off[-1]))
        z = bufs.z[off:off + mb * n1].reshape(mb, n1)
        z[...] = Xb @ W.T
        z += b
        with np.errstate(over="ignore", invalid="ignore"):
            bufs.a[off:off + mb * n1].reshape(mb, n1)[...] = f(z, int(shape.acts[0]))

    def forward(self, X):
        """Output activations a^(L) (M, K)."""
        out = np.empty((X.shape[0], int(self.shape.sizes[-1])), self.dtype)

        def take(bufs, start, mb):
            out[start:start + mb] = self._output(bufs, mb)[0]
        self._chunks(X, None, None, take)
        return out

    def _output(self, bufs, mb):
        """(a^(L), z^(L)) of a batch buffer: the last layer's block, at the end of a buffer
        in either layout (with or without rows for layer 0)."""
        n = int(self.shape.sizes[-1])
        cap = bufs.cost.shape[0]
        end = bufs.a.shape[0] - cap * n
        return bufs.a[end:end + mb * n].reshape(mb, n), bufs.z[end:end + mb * n].reshape(mb, n)

    def loss(self, X, Y, loss, S=None, alpha=0.0):
        """(weighted mean cost over the samples + alpha/(2 sum s) sum ||W||^2, max |a - y|)."""
        total = [0.0, 0.0, 0.0]
        act = int(self.shape.acts[-1])

        def take(bufs, start, mb):
            a, z = self._output(bufs, mb)
            y = bufs.y[:a.size].reshape(a.shape)
            total[1] = max(total[1], self.k.sample_loss(bufs.cost[:mb], a, z, y, act, loss))
            total[0] += float((bufs.s[:mb].astype(np.float64) * bufs.cost[:mb]).sum())
            total[2] += float(bufs.s[:mb].astype(np.float64).sum())
        self._chunks(X, Y, S, take)
        if alpha:
            total[0] += 0.5 * alpha * self.penalty()
        return total[0] / total[2], total[1]

    def _backprop(self, X, Y, S, loss, alpha, keep=False):
        """Feed-forward and backpropagation of all M samples as one batch: (grad, bufs, shape).
        Sparse X: layer 1 by sparse products here, the rest by the kernels. keep: reuse the
        buffers between calls (Dask workers and L-BFGS call this every step)."""
        M = X.shape[0]
        sparse = _sparse(X)
        shape = make_shape(self.shape.sizes, self.shape.acts, not sparse)[0] if sparse else self.shape
        bufs = self._sum_bufs if keep else None
        if bufs is None or bufs.cost.shape[0] < M or len(bufs.a) != int(shape.a_off[-1]) * bufs.cost.shape[0]:
            bufs = self._buffers(M, shape=shape)
            if keep:
                self._sum_bufs = bufs
        S = np.ones(M, self.dtype) if S is None else np.asarray(S, self.dtype)
        grad = np.zeros_like(self.theta)
        pwork = self._par_work()
        if sparse:
            X = X.tocsr()
            self._sparse_first(X, bufs, shape, M)
            K = int(shape.sizes[-1])
            bufs.y[:M * K] = np.asarray(Y, self.dtype).ravel()
            bufs.s[:M] = S
            self.k.forward(self.theta, shape, bufs, M, True, pwork, 2)
            self.k.backprop(self.theta, grad, shape, bufs, M, loss, float(alpha), 2)
            from .layout import layer
            n1 = int(shape.sizes[1])
            off = int(shape.a_off[1]) * (bufs.a.shape[0] // int(shape.a_off[-1]))
            delta1 = bufs.delta[off:off + M * n1].reshape(M, n1)
            dW, db = layer(grad, shape, 1)
            W, _ = layer(self.theta, shape, 1)
            wsum = float(bufs.s[:M].astype(np.float64).sum())
            dW[...] = np.asarray(X.T @ delta1).T / M + self.dtype.type(alpha / wsum if wsum > 0 else 0.0) * W
            db[...] = delta1.sum(axis=0) / M
        else:
            self.k.load_batch(bufs, shape, X, Y, S, np.arange(M, dtype=np.int64), 0, M)
            self.k.forward(self.theta, shape, bufs, M, M >= config.PARALLEL_MIN_SAMPLES,
                           pwork, 1)
            self.k.backprop(self.theta, grad, shape, bufs, M, loss, float(alpha), 1)
        return grad, bufs, shape

    def gradients(self, X, Y, loss, S=None, alpha=0.0):
        """Flat gradient of the (weighted) mean cost over all M samples, plus the L2 term."""
        return self._backprop(X, Y, S, loss, alpha)[0]

    def sums(self, X, Y, loss, S=None):
        """(sum_m s_m Delta w_m as a flat vector, sum_m s_m C_m, max |a - y|, sum_m s_m) over
        the M samples in one forward pass: the per-shard pieces of the lecture's batch mean,
        which nnjit.data and nnjit.distributed add up across chunks and workers."""
        M = X.shape[0]
        grad, bufs, shape = self._backprop(X, Y, S, loss, 0.0, keep=True)
        a, z = self._output(bufs, M)
        emax = self.k.sample_loss(bufs.cost[:M], a, z, bufs.y[:a.size].reshape(a.shape),
                                  int(self.shape.acts[-1]), loss)
        sw = bufs.s[:M].astype(np.float64)
        ssum = float(sw.sum())
        grad *= self.dtype.type(ssum)   # backprop's weighted mean; undo it for a weighted sum
        return grad, float((sw * bufs.cost[:M]).sum()), float(emax), ssum

    def update(self, grad, rule, h):
        """One update with the flat mean gradient grad (any L2 term included); counts a step."""
        from . import rules
        self.step[0] += 1
        c = rules.coefs(rule, h, int(self.step[0]), 0.0)
        self.k.update(self.theta, self.vel, self.sq, np.ascontiguousarray(grad, self.dtype), rule, c)

    def penalty(self):
        return float(self.k.penalty(self.theta, self.shape))

    # -- training
    def begin_fit(self, X, Y, batch_size, S=None):
        """Hold X (dense, or scipy.sparse: a sparse first layer), Y, S for train_epoch."""
        S = np.ones(X.shape[0], self.dtype) if S is None else np.ascontiguousarray(S, self.dtype)
        shape, csr = self.shape, None
        if _sparse(X) and self.loops:
            X = X.tocsr()
            shape = make_shape(self.shape.sizes, self.shape.acts, input_rows=False)[0]
            csr = self.k.make_csr(X, int(self.shape.sizes[1]), self.dtype)
            theta, st = self.get_params(), self.get_state()
            self._transposed = True
            self.set_params(theta)
            self.set_state(st)
            WT = self.theta[:int(self.shape.sizes[0]) * int(self.shape.sizes[1])].reshape(
                int(self.shape.sizes[0]), -1)
            csr.rowsq[...] = np.einsum("ij,ij->i", WT, WT, dtype=np.float64)
            X = np.zeros((0, 0), self.dtype)
        elif _sparse(X):
            X = X.tocsr().astype(self.dtype)
        if csr is None and self.loops:
            csr = self.k.empty_csr(self.dtype)
        self._fit = (X, Y, S, csr, shape, self._buffers(batch_size, train=True, shape=shape))

    def train_epoch(self, order, batch_size, rule, h, loss):
        """One epoch (nnjit.loops.train_epoch): its five sums."""
        X, Y, S, csr, shape, bufs = self._fit
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):   # divergence is the wrapper's to report
            return self.k.train_epoch(self.theta, self.vel, self.sq, self.step, self.grad, shape,
                                      bufs, X, Y, S, csr, order, batch_size, int(rule), h, loss,
                                      config.PARALLEL_MIN_SAMPLES, self._par_work(batch_size),
                                      config.tiles())

    def end_fit(self):
        if self._transposed:
            theta, st = self.get_params(), self.get_state()
            self._transposed = False
            self.set_params(theta)
            self.set_state(st)
        self._fit = None
        self._sum_bufs = None
