"""Engines: the state a backend keeps (parameters, velocities, batch buffers) and the few
calls the MLP wrapper makes on it. The CPU engine serves both the loop form and the
vectorised form, which share one flat memory layout and one set of kernel names; the CUDA
engine (:mod:`nnjit.cuda`) offers the same methods with its state on the device.
"""
import numpy as np

from . import config


def make_shape(sizes, acts):
    """The flat layout of parameters and batch buffers: (sizes, w_off, b_off, acts, a_off)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    L = len(sizes) - 1
    w_off = np.empty(L, np.int64)
    b_off = np.empty(L, np.int64)
    p = 0
    for l in range(1, L + 1):
        w_off[l - 1] = p
        p += sizes[l] * sizes[l - 1]
        b_off[l - 1] = p
        p += sizes[l]
    a_off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return (sizes, w_off, b_off, np.asarray(acts, np.int64), a_off), int(p)


class CPUEngine:
    """Parameters and buffers in host memory; ``kernels`` is nnjit.loops or nnjit.vectorised."""

    def __init__(self, kernels, shape, n_params, dtype):
        self.k = kernels
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.theta = np.zeros(n_params, self.dtype)
        self.vel = np.zeros(n_params, self.dtype)
        self.grad = np.zeros(n_params, self.dtype)
        self._fit = None
        self._sum_bufs = None

    # -- state the wrapper reads and writes
    def get_params(self):
        return self.theta.copy()

    def set_params(self, theta):
        self.theta[...] = theta

    def get_velocity(self):
        return self.vel.copy()

    def set_velocity(self, vel):
        self.vel[...] = vel

    def _buffers(self, cap):
        n_units = int(self.shape[4][-1])
        K = int(self.shape[0][-1])
        z = lambda n: np.zeros(n, self.dtype)     # noqa: E731
        return (z(cap * n_units), z(cap * n_units), z(cap * n_units), z(cap * K), z(cap))

    # -- whole-data calls, chunked so memory stays O(chunk x width)
    def _chunks(self, X, Y, fn, chunk=None):
        chunk = chunk or config.PREDICT_CHUNK
        M = X.shape[0]
        cap = min(M, chunk)
        bufs = self._buffers(cap)
        Y = np.zeros((M, int(self.shape[0][-1])), self.dtype) if Y is None else Y
        order = np.arange(M, dtype=np.int64)
        for start in range(0, M, cap):
            mb = min(cap, M - start)
            self.k.load_batch(bufs, self.shape, X, Y, order, start, mb)
            self.k.forward(self.theta, self.shape, bufs, mb, mb >= config.PARALLEL_MIN_SAMPLES,
                           config.PARALLEL_MIN_WORK, 1)
            fn(bufs, start, mb)

    def _out(self, bufs, mb):
        L = len(self.shape[0]) - 1
        n, off = int(self.shape[0][L]), int(self.shape[4][L]) * (bufs[0].shape[0] // int(self.shape[4][-1]))
        return (bufs[0][off:off + mb * n].reshape(mb, n), bufs[1][off:off + mb * n].reshape(mb, n))

    def forward(self, X):
        """Output activations a^(L) (M, K)."""
        out = np.empty((X.shape[0], int(self.shape[0][-1])), self.dtype)

        def take(bufs, start, mb):
            out[start:start + mb] = self._out(bufs, mb)[0]
        self._chunks(X, None, take)
        return out

    def loss(self, X, Y, loss):
        """(mean cost over the samples, max |a - y|)."""
        total = [0.0, 0.0]
        act = int(self.shape[3][-1])

        def take(bufs, start, mb):
            a, z = self._out(bufs, mb)
            y = bufs[3][:a.size].reshape(a.shape)
            total[1] = max(total[1], self.k.sample_loss(bufs[4][:mb], a, z, y, act, loss))
            total[0] += float(bufs[4][:mb].astype(np.float64).sum())
        self._chunks(X, Y, take)
        return total[0] / X.shape[0], total[1]

    def gradients(self, X, Y, loss):
        """Flat gradient of the mean cost over all M samples (one batch: the lecture's mean)."""
        M = X.shape[0]
        bufs = self._buffers(M)
        self.k.load_batch(bufs, self.shape, X, Y, np.arange(M, dtype=np.int64), 0, M)
        self.k.forward(self.theta, self.shape, bufs, M, M >= config.PARALLEL_MIN_SAMPLES,
                       config.PARALLEL_MIN_WORK, 1)
        grad = np.zeros_like(self.theta)
        self.k.backprop(self.theta, grad, self.shape, bufs, M, loss)
        return grad

    def sums(self, X, Y, loss):
        """(sum_m Delta w_m as a flat vector, sum_m C_m, max |a - y|) over the M samples in
        one forward pass: the per-shard pieces of the lecture's batch mean, which
        nnjit.data and nnjit.distributed add up across chunks and workers."""
        M = X.shape[0]
        bufs = self._sum_bufs       # kept between calls (a worker calls this every step)
        if bufs is None or bufs[4].shape[0] < M:
            bufs = self._sum_bufs = self._buffers(M)
        self.k.load_batch(bufs, self.shape, X, Y, np.arange(M, dtype=np.int64), 0, M)
        self.k.forward(self.theta, self.shape, bufs, M, M >= config.PARALLEL_MIN_SAMPLES,
                       config.PARALLEL_MIN_WORK, 1)
        a, z = self._out(bufs, M)
        emax = self.k.sample_loss(bufs[4][:M], a, z, bufs[3][:a.size].reshape(a.shape),
                                  int(self.shape[3][-1]), loss)
        grad = np.zeros_like(self.theta)
        self.k.backprop(self.theta, grad, self.shape, bufs, M, loss)
        grad *= M                   # backprop averages over the M samples; undo it for a sum
        return grad, float(bufs[4][:M].astype(np.float64).sum()), float(emax)

    # -- training
    def begin_fit(self, X, Y, batch_size):
        self._fit = (X, Y, self._buffers(batch_size))

    def train_epoch(self, order, batch_size, eta, mu, loss):
        X, Y, bufs = self._fit
        with np.errstate(over="ignore", invalid="ignore"):   # divergence is the wrapper's to report
            return self.k.train_epoch(self.theta, self.vel, self.grad, self.shape, bufs, X, Y,
                                      order, batch_size, float(eta), float(mu), loss,
                                      config.PARALLEL_MIN_SAMPLES, config.PARALLEL_MIN_WORK)

    def end_fit(self):
        self._fit = None
        self._sum_bufs = None
