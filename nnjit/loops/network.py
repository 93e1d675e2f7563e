"""The loop form over the whole network: loading a batch, the feed-forward of every layer
(prediction, scoring, gradients) and backpropagation of one batch (gradients, Dask's and
streamed data's sums). Training has its own compiled epoch (nnjit.loops.epoch)."""
import numpy as np

from .. import vectorised
from ..jit import jit
from .blocked import forward_layer_tiled
from .reference import backward_layer, corrections, output_error, weight_sum
from .views import OPTS, params, renamed, rows, targets


@jit(**OPTS)
def load_batch(bufs, shape, X, Y, S, order, start, mb):
    """Copy samples order[start:start+mb] into layer 0, the targets and the weight row (an
    X of 0 columns loads no inputs: a sparse first layer reads them from its CSR matrix).
    (Flat offsets, as rows and targets lay them out, rather than their views: inlining
    those cost this small function 0.5 s of first compile.) Unsigned indices: with signed
    ones Numba's negative-index checks kept the row copy scalar (1.1-1.5 us a 784-wide
    sample, as much as a third of a large-batch epoch of 784-128-10; now 0.4-0.6)."""
    u = np.uint64
    D = u(X.shape[1])
    K = u(Y.shape[1])
    off = u(shape.a_off[0] * (bufs.a.shape[0] // shape.a_off[-1]))
    for m in range(u(mb)):
        r = u(order[start + m])
        o = off + m * D
        for i in range(D):
            bufs.a[o + i] = X[r, i]
        for k in range(K):
            bufs.y[m * K + k] = Y[r, k]
        bufs.s[m] = S[r]


@jit(**OPTS)
def forward(theta, shape, bufs, mb, par, par_work, l0):
    """Feed-forward through layers l0..L for the mb samples already in layer l0-1 of bufs.
    Always the parallel kernel split by samples (one kernel instead of three, serial and by
    units, is seconds less to compile on a first predict), run without its parallel region
    for a layer whose N_l N_{l-1} mb is below par_work (a region costs ~6 us). par means
    nothing here (the other forms' signature). (No default arguments:
    Numba's dispatcher takes a slow path, ~100 us, for omitted ones.)"""
    L = shape.sizes.shape[0] - 1
    for l in range(l0, L + 1):
        W, b = params(theta, shape, l)
        a_prev = rows(bufs.a, shape, l - 1, mb)
        z, a = rows(bufs.z, shape, l, mb), rows(bufs.a, shape, l, mb)
        # int(4): a literal 4 would make Numba compile a second specialisation of the kernel
        forward_layer_tiled(z, a, a_prev, W, b, shape.acts[l - 1], int(4), W.shape[0],
                            W.size * mb < par_work)


# Backpropagation of a batch is written once, in nnjit.vectorised, in terms of the kernels'
# names; the loop form compiles that source with its own kernels and views.
backprop = renamed(vectorised.backprop, "_loops", OPTS, layer=params, rows=rows,
                   targets=targets, output_error=output_error, corrections=corrections,
                   backward_layer=backward_layer, weight_sum=weight_sum)
