"""A sparse first layer for the loop form: X as CSR (indptr, indices, data), never densified.

What it is for: training on wide sparse inputs (a 100,000-feature TF-IDF matrix). The first
layer's feed-forward sum and its corrections run only over the stored entries of each row,
z_j = sum_{i in nz(m)} w_ij x_mi + b_j; the layers above are the dense kernels; the epoch
(nnjit.loops.epoch, ``first=SPARSE``) calls these for layer 1 and its own for the rest.
Every parameter then gets its rule's update: the L2 term and the optimizer state touch every
weight, as in scikit-learn, so the update of W^(1) is dense even where the correction is 0.

Layout: W^(1) is held transposed during a sparse fit, WT[i, j] = w_ij of shape (D, N_1)
(nnjit.layout.transpose_first), so the feature i of a stored entry selects one contiguous
row WT[i, :] -- in the lecture's W[j, i] each entry would touch N_1 cache lines. Index
names: m sample, i input feature, j unit of layer 1. The scratch a fit needs beside the
parameters is a :class:`CSR` (a dense fit passes an empty one).
"""
from collections import namedtuple

import numpy as np
from numba import prange

from ..jit import jit
from .rows import apply_f, check_act, check_rule, rule_row
from .views import OPTS

#: the sparse input and its scratch: CSR arrays (int64 indptr, indices), GT (D, N_1) the
#: corrections of W^(1) (zero between batches), mark (D,) the batch that last wrote a row
#: of GT, rowsq (D,) ||WT[i]||^2 (the L2 term, kept up to date by dense_rule), zero_row
#: (N_1,) zeros
CSR = namedtuple("CSR", "indptr indices data GT mark rowsq zero_row")


def make_csr(X, n1, dtype):
    """The CSR workspace for a scipy.sparse matrix X and a first layer of n1 units."""
    X = X.tocsr()
    dt = np.dtype(dtype)
    D = X.shape[1]
    return CSR(X.indptr.astype(np.int64), X.indices.astype(np.int64), X.data.astype(dt),
               np.zeros((D, n1), dt), np.full(D, -1, np.int64), np.zeros(D, np.float64),
               np.zeros(n1, dt))


def empty_csr(dtype):
    """The CSR a dense fit passes (the same types, no storage)."""
    dt = np.dtype(dtype)
    e = np.zeros(0, np.int64)
    return CSR(e, e, np.zeros(0, dt), np.zeros((0, 0), dt), e, np.zeros(0), np.zeros(0, dt))


@jit(parallel=True, **OPTS)
def sparse_forward(z1, a1, WT, b1, indptr, indices, data, order, start, act):
    """Feed-forward of layer 1 over stored entries: z_j = b_j + sum_{i in nz(m)} w_ij x_mi ;
    a_j = f(z_j).

    z1, a1 (mb, N_1); WT (D, N_1) = W^(1).T; b1 (N_1,); CSR rows order[start + m].
    prange over samples m."""
    check_act(act)
    mb, n1 = z1.shape
    for m in prange(mb):
        r = order[start + m]
        zr = z1[m]
        for j in range(n1):
            zr[j] = b1[j]
        for p in range(indptr[r], indptr[r + 1]):
            x = data[p]
            w = WT[indices[p]]
            for j in range(n1):               # contiguous row WT[i, :]: SIMD
                zr[j] += w[j] * x
        apply_f(a1[m], zr, act)


@jit(**OPTS)
def sparse_corrections(GT, gb, mark, stamp, d1, indptr, indices, data, order, start):
    """Corrections of layer 1 over stored entries: dw_ij += sum_m x_mi delta_j (summed; the
    rule scales by 1/M), db_j += sum_m delta_j; mark[i] = stamp for every feature touched.

    GT (D, N_1) zero on entry in every row; gb (N_1,); d1 (mb, N_1). Serial: two samples
    sharing a feature i write the same row, and this is O(nnz N_1), small next to the update."""
    mb, n1 = d1.shape
    for m in range(mb):
        r = order[start + m]
        d = d1[m]
        for j in range(n1):
            gb[j] += d[j]
        for p in range(indptr[r], indptr[r + 1]):
            i = indices[p]
            mark[i] = stamp
            x = data[p]
            g = GT[i]
            for j in range(n1):
                g[j] += x * d[j]


@jit(parallel=True, **OPTS)
def dense_rule(WT, V, Q, GT, mark, stamp, zero_row, rowsq, scale, an, rule, c):
    """The rule's update of every row of WT (D, N_1) with gradient scale GT[i] + an WT[i]
    (GT[i] only where mark[i] == stamp; the rest have zero correction but still decay and
    move with their optimizer state); rowsq[i] = ||WT[i]||^2 afterwards (the next batch's L2
    term, added up in a fixed order by the caller). prange over rows i: each owns its row."""
    check_rule(rule)
    D = WT.shape[0]
    for i in prange(D):
        g = GT[i] if mark[i] == stamp else zero_row
        rule_row(rule, WT[i], V[i], Q[i], g, scale, an, c)
        w = WT[i]
        acc = 0.0
        for j in range(w.shape[0]):
            acc += w[j] * w[j]
        rowsq[i] = acc


@jit(**OPTS)
def clear_rows(GT, indptr, indices, order, start, mb):
    """GT[i, :] = 0 for the features of the batch (the only rows written)."""
    n1 = GT.shape[1]
    for m in range(mb):
        r = order[start + m]
        for p in range(indptr[r], indptr[r + 1]):
            g = GT[indices[p]]
            for j in range(n1):
                g[j] = 0.0


@jit(**dict(OPTS, fastmath={"nsz"}))
def fixed_sum(v):
    """sum_i v_i in the order i = 0..n-1 (OPTS's reassoc let LLVM sum it in vectors: an order
    of the compiler's, not this one)."""
    acc = 0.0
    for i in range(v.shape[0]):
        acc += v[i]
    return acc
