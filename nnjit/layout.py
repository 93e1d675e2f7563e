"""The flat memory layout every form, engine, file and estimator shares: parameters in one
vector, a batch's activations in a few buffers.

As in llm.c, the network lives in flat buffers: ``theta = [W^(1), b^(1), W^(2), b^(2), ...]``,
W^(l) as the lecture's matrix (N_l, N_{l-1}), rows j, columns i; the optimizer state (``vel``,
``sq``) and gradients have the same layout. A :class:`Shape` says where each piece starts;
one batch's a, z, δ of every layer, its targets, costs and sample weights live in a
:class:`Batch`, allocated once per fit. The compiled forms take these namedtuples as they are
(Numba accepts namedtuples of arrays), so ``shape.sizes`` and ``bufs.delta`` read as the
lecture does.

This module is the only place that computes offsets: views of a layer (:func:`layer`),
splitting and joining the per-layer lists (:func:`split`, :func:`join`), the L2 mask
(:func:`weight_mask`). The loop form's compiled views are in ``nnjit.loops.views``.
"""
from collections import namedtuple

import numpy as np

#: The flat layout: units per layer, where W^(l) and b^(l) start in theta, activation codes,
#: and where layer l's rows start in a batch buffer (in units of the batch capacity).
Shape = namedtuple("Shape", "sizes w_off b_off acts a_off")
#: One batch's buffers: a, z, delta of every layer (laid out by Shape.a_off), the targets y,
#: the per-sample costs, the sample weights s, and p, the loop form's scratch for packed
#: panels (nnjit.loops GEMM path; empty where no layer uses it).
Batch = namedtuple("Batch", "a z delta y cost s p")


def n_params(sizes):
    """Weights and biases of a network with these layer sizes."""
    return int(sum(int(sizes[l]) * int(sizes[l - 1]) + int(sizes[l]) for l in range(1, len(sizes))))


def make_shape(sizes, acts, input_rows=True):
    """The flat layout of parameters and batch buffers (a Shape) and the parameter count.
    input_rows=False: the batch buffers hold no rows for layer 0 (a sparse first layer reads
    its input from the CSR matrix itself; a 100,000-feature layer 0 would cost cap x 100,000)."""
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
    widths = sizes.copy()
    if not input_rows:
        widths[0] = 0
    a_off = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
    return Shape(sizes, w_off, b_off, np.asarray(acts, np.int64), a_off), int(p)


def make_batch(shape, cap, dtype, n_pack=0):
    """Zeroed buffers for batches of up to cap samples, with n_pack elements of scratch for
    the loop form's GEMM path (nnjit.loops.gemm_scratch)."""
    n_units = int(shape.a_off[-1])
    K = int(shape.sizes[-1])
    z = lambda n: np.zeros(n, dtype)     # noqa: E731
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


def layer(flat, shape, l):
    """Views (W^(l) (N_l, N_{l-1}), b^(l) (N_l,)) into a flat parameter-shaped vector."""
    n_out, n_in = int(shape.sizes[l]), int(shape.sizes[l - 1])
    w, b = int(shape.w_off[l - 1]), int(shape.b_off[l - 1])
    return flat[w:w + n_out * n_in].reshape(n_out, n_in), flat[b:b + n_out]


def split(flat, shape):
    """([W^(1), ..., W^(L)], [b^(1), ..., b^(L)]) as copies."""
    views = [layer(flat, shape, l) for l in range(1, len(shape.sizes))]
    return [W.copy() for W, _ in views], [b.copy() for _, b in views]


def join(Ws, bs):
    """The flat vector of per-layer weights and biases (the inverse of split)."""
    return np.concatenate([np.concatenate([np.ravel(W), np.ravel(b)]) for W, b in zip(Ws, bs)])


def weight_mask(shape):
    """1.0 at the flat positions of weights, 0.0 at biases: the L2 term penalises weights only."""
    mask = np.zeros(n_params(shape.sizes))
    for l in range(1, len(shape.sizes)):
        layer(mask, shape, l)[0][...] = 1.0
    return mask


def transpose_first(flat, shape):
    """A copy of flat with W^(1)'s block stored transposed, (N_0, N_1): the sparse first
    layer's layout, in which a stored feature i selects one contiguous row."""
    out = flat.copy()
    W, _ = layer(flat, shape, 1)
    w = int(shape.w_off[0])
    out[w:w + W.size] = W.T.ravel()
    return out


def untranspose_first(flat, shape):
    """The inverse of transpose_first."""
    out = flat.copy()
    n_out, n_in = int(shape.sizes[1]), int(shape.sizes[0])
    w = int(shape.w_off[0])
    out[w:w + n_out * n_in] = flat[w:w + n_out * n_in].reshape(n_in, n_out).T.ravel()
    return out
