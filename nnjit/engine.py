"""Engines: the state a backend keeps (parameters, velocities, batch buffers) and the few
calls the MLP wrapper makes on it. The CPU engine serves both the loop form and the
vectorised form, which share one flat memory layout and one set of kernel names; the CUDA
engine (:mod:`nnjit.cuda`) offers the same methods with its state on the device.
"""
from collections import namedtuple

import numpy as np

from . import config

#: The flat layout: units per layer, where W^(l) and b^(l) start in theta, activation codes,
#: and where layer l's rows start in a batch buffer (in units of the batch capacity).
Shape = namedtuple("Shape", "sizes w_off b_off acts a_off")
#: One batch's buffers: a, z, delta of every layer (laid out by Shape.a_off), the targets y,
#: the per-sample costs, the sample weights s, and p, the loop form's scratch for packed
#: panels (nnjit.loops GEMM path; empty where no layer uses it).
Batch = namedtuple("Batch", "a z delta y cost s p")


def make_shape(sizes, acts):
    """The flat layout of parameters and batch buffers (a Shape) and the parameter count."""
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
    return Shape(sizes, w_off, b_off, np.asarray(acts, np.int64), a_off), int(p)


def pack_size(sizes, cap, train=True):
    """Elements of scratch the loop form's GEMM path needs for batches of up to cap samples
    (0 below config.GEMM_MIN_BATCH, where it does not run; nnjit.loops.epoch_mode)."""
    from .loops import gemm_need      # numba: imported only when a buffer is made
    if config.GEMM_MIN_BATCH <= 0 or cap < config.GEMM_MIN_BATCH:
        return 0
    return max([gemm_need(int(n_out), int(n_in), cap, train)
                for n_in, n_out in zip(sizes[:-1], sizes[1:])] + [0])


def make_batch(shape, cap, dtype, train=True, pack=True):
    """Zeroed buffers for batches of up to cap samples; with pack, scratch for the loop
    form's GEMM path (for training, or train=False: the feed-forward only)."""
    n_units = int(shape.a_off[-1])
    K = int(shape.sizes[-1])
    z = lambda n: np.zeros(n, dtype)     # noqa: E731
    n_pack = pack_size(shape.sizes, cap, train) if pack else 0
    return Batch(z(cap * n_units), z(cap * n_units), z(cap * n_units), z(cap * K), z(cap),
                 np.ones(cap, dtype), z(n_pack))


def staggered(k, n, dtype):
    """k zeroed arrays of n elements in one block, the i-th starting i x 1088 bytes past a
    4096-byte boundary. The update rule streams w, v (and g, s) side by side: where two of
    them start at nearly the same address modulo 4096, the CPU takes a load of one for a
    reload of the other's pending store ("4K aliasing") and stalls; malloc placed them at
    random, and online training ran at 7 or 11 us a sample from run to run (64-32-10)."""
    dtype = np.dtype(dtype)
    step = -(-n * dtype.itemsize // 4096) * 4096 + 4096
    raw = np.zeros(k * step + 4096, np.uint8)
    base = -raw.ctypes.data % 4096
    return [raw[base + i * step + i * 1088:][:n * dtype.itemsize].view(dtype) for i in range(k)]


class CPUEngine:
    """Parameters and buffers in host memory; ``kernels`` is nnjit.loops or nnjit.vectorised."""

    def __init__(self, kernels, shape, n_params, dtype):
        self.k = kernels
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.theta, self.vel, self.sq, self.grad = staggered(4, n_params, self.dtype)
        # vel: momentum velocity, or Adam's m; sq: Adam's second moment v
        self.step = np.zeros(1, np.int64)              # updates made (Adam's t)
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

    def get_state(self):
        """The optimizer state: {"vel": (P,), "sq": (P,), "step": int} (copies)."""
        return {"vel": self.vel.copy(), "sq": self.sq.copy(), "step": int(self.step[0])}

    def set_state(self, state):
        self.vel[...] = state["vel"]
        self.sq[...] = state["sq"]
        self.step[0] = int(state["step"])

    def _buffers(self, cap, train=False):
        """Batch buffers; the loop form's packing scratch only where train_epoch runs."""
        return make_batch(self.shape, cap, self.dtype, train,
                          pack=train and self.k.__name__ == "nnjit.loops")

    # -- whole-data calls, chunked so memory stays O(chunk x width)
    def _chunks(self, X, Y, S, fn, chunk=None):
        chunk = chunk or config.PREDICT_CHUNK
        M = X.shape[0]
        cap = min(M, chunk)
        bufs = self._buffers(cap)
        Y = np.zeros((M, int(self.shape.sizes[-1])), self.dtype) if Y is None else Y
        S = np.ones(M, self.dtype) if S is None else S
        order = np.arange(M, dtype=np.int64)
        for start in range(0, M, cap):
            mb = min(cap, M - start)
            self.k.load_batch(bufs, self.shape, X, Y, S, order, start, mb)
            self.k.forward(self.theta, self.shape, bufs, mb, mb >= config.PARALLEL_MIN_SAMPLES,
                           config.PARALLEL_MIN_WORK, 1)
            fn(bufs, start, mb)

    def _out(self, bufs, mb):
        L = len(self.shape.sizes) - 1
        n, off = int(self.shape.sizes[L]), int(self.shape.a_off[L]) * (bufs.a.shape[0] // int(self.shape.a_off[-1]))
        return (bufs.a[off:off + mb * n].reshape(mb, n), bufs.z[off:off + mb * n].reshape(mb, n))

    def forward(self, X):
        """Output activations a^(L) (M, K)."""
        out = np.empty((X.shape[0], int(self.shape.sizes[-1])), self.dtype)

        def take(bufs, start, mb):
            out[start:start + mb] = self._out(bufs, mb)[0]
        self._chunks(X, None, None, take)
        return out

    def loss(self, X, Y, loss, S=None, alpha=0.0):
        """(weighted mean cost over the samples + alpha/(2 sum s) sum ||W||^2, max |a - y|)."""
        total = [0.0, 0.0, 0.0]
        act = int(self.shape.acts[-1])

        def take(bufs, start, mb):
            a, z = self._out(bufs, mb)
            y = bufs.y[:a.size].reshape(a.shape)
            total[1] = max(total[1], self.k.sample_loss(bufs.cost[:mb], a, z, y, act, loss))
            total[0] += float((bufs.s[:mb].astype(np.float64) * bufs.cost[:mb]).sum())
            total[2] += float(bufs.s[:mb].astype(np.float64).sum())
        self._chunks(X, Y, S, take)
        if alpha:
            total[0] += 0.5 * alpha * self.k.penalty(self.theta, self.shape)
        return total[0] / total[2], total[1]

    def gradients(self, X, Y, loss, S=None, alpha=0.0):
        """Flat gradient of the (weighted) mean cost over all M samples, plus the L2 term."""
        M = X.shape[0]
        bufs = self._buffers(M)
        S = np.ones(M, self.dtype) if S is None else S
        self.k.load_batch(bufs, self.shape, X, Y, S, np.arange(M, dtype=np.int64), 0, M)
        self.k.forward(self.theta, self.shape, bufs, M, M >= config.PARALLEL_MIN_SAMPLES,
                       config.PARALLEL_MIN_WORK, 1)
        grad = np.zeros_like(self.theta)
        self.k.backprop(self.theta, grad, self.shape, bufs, M, loss, float(alpha))
        return grad

    def sums(self, X, Y, loss, S=None):
        """(sum_m s_m Delta w_m as a flat vector, sum_m s_m C_m, max |a - y|, sum_m s_m) over
        the M samples in one forward pass: the per-shard pieces of the lecture's batch mean,
        which nnjit.data and nnjit.distributed add up across chunks and workers."""
        M = X.shape[0]
        bufs = self._sum_bufs       # kept between calls (a worker calls this every step)
        if bufs is None or bufs.cost.shape[0] < M:
            bufs = self._sum_bufs = self._buffers(M)
        S = np.ones(M, self.dtype) if S is None else S
        self.k.load_batch(bufs, self.shape, X, Y, S, np.arange(M, dtype=np.int64), 0, M)
        self.k.forward(self.theta, self.shape, bufs, M, M >= config.PARALLEL_MIN_SAMPLES,
                       config.PARALLEL_MIN_WORK, 1)
        a, z = self._out(bufs, M)
        emax = self.k.sample_loss(bufs.cost[:M], a, z, bufs.y[:a.size].reshape(a.shape),
                                  int(self.shape.acts[-1]), loss)
        grad = np.zeros_like(self.theta)
        self.k.backprop(self.theta, grad, self.shape, bufs, M, loss, 0.0)
        sw = bufs.s[:M].astype(np.float64)
        ssum = float(sw.sum())
        grad *= self.dtype.type(ssum)   # backprop's weighted mean; undo it for a weighted sum
        return grad, float((sw * bufs.cost[:M]).sum()), float(emax), ssum

    def update(self, grad, rule, hyper, alpha_n=0.0):
        """One update with the flat mean gradient grad (any L2 term included); counts a step."""
        self.step[0] += 1
        c = self.k.step_coefs(rule, hyper, int(self.step[0]), float(alpha_n))
        self.k.update(self.theta, self.vel, self.sq, np.ascontiguousarray(grad, self.dtype), rule, c)

    def penalty(self):
        return float(self.k.penalty(self.theta, self.shape))

    # -- training
    def begin_fit(self, X, Y, batch_size, S=None):
        S = np.ones(X.shape[0], self.dtype) if S is None else S
        self._fit = (X, Y, S, self._buffers(batch_size, train=True))

    def train_epoch(self, order, batch_size, rule, hyper, loss):
        X, Y, S, bufs = self._fit
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):   # divergence is the wrapper's to report
            return self.k.train_epoch(self.theta, self.vel, self.sq, self.step, self.grad,
                                      self.shape, bufs, X, Y, S, order, batch_size, int(rule),
                                      np.asarray(hyper, np.float64), loss,
                                      config.PARALLEL_MIN_SAMPLES, config.PARALLEL_MIN_WORK,
                                      config.tiles())

    def end_fit(self):
        self._fit = None
        self._sum_bufs = None
