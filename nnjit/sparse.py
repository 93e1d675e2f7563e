"""Loop kernels for a sparse first layer: X as scipy.sparse CSR (indptr, indices, data).

What it is for: training nnjit.sklearn's stochastic solvers on wide sparse inputs (a
100,000-feature TF-IDF matrix) without densifying X. The first layer's feed-forward sum and
its corrections run only over the stored entries of each row, z_j = sum_{i in nz(m)} w_ij x_mi
+ b_j; the layers above are the dense loop kernels (:mod:`nnjit.loops`) on the hidden
activations; every parameter then gets scikit-learn's update (issue 10's per-row rule
``loops._rule_row``: the L2 term and the optimizer state touch every weight, as in
scikit-learn, so the update of W^(1) is dense even where the correction is zero).
What it is not for: prediction (scipy.sparse products are fine there) or the CUDA backend.

Layout: W^(1) is held transposed during a fit, WT[i, j] = w_ij of shape (D, N_1), so the
feature i of a stored entry selects one contiguous row WT[i, :] -- in the lecture's W[j, i]
each entry would touch N_1 cache lines. Index names: m sample, i input feature, j unit of
layer 1. The layers above use nnjit's flat layout (a "tail" network whose input is layer 1).
"""
from numba import prange

from . import loops, rules
from .activations import apply_f
from .jit import jit
from .config import FASTMATH
from .sklearn_loops import _corrections_rule_s, corrections_rule

_OPTS = dict(fastmath=FASTMATH, nogil=True)


def _sparse_forward(z1, a1, WT, b1, indptr, indices, data, order, start, act):
    """Feed-forward of layer 1 over stored entries: z_j = b_j + sum_{i in nz(m)} w_ij x_mi ;
    a_j = f(z_j).

    z1, a1 (mb, N_1); WT (D, N_1) = W^(1).T; b1 (N_1,); CSR rows order[start + m].
    prange over samples m."""
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


sparse_forward = jit(parallel=True, **_OPTS)(_sparse_forward)


@jit(**_OPTS)
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


def _dense_rule(WT, V, Q, GT, mark, stamp, zero_row, rowsq, scale, an, rule, c):
    """scikit-learn's update of every row of WT (D, N_1) with gradient scale GT[i] + an WT[i]
    (GT[i] only where mark[i] == stamp; the rest have zero correction but still decay and
    move with their optimizer state); rowsq[i] = ||WT[i]||^2 afterwards (the next batch's L2
    term, added up in a fixed order by the caller). prange over rows i: each owns its row."""
    D = WT.shape[0]
    for i in prange(D):
        g = GT[i] if mark[i] == stamp else zero_row
        loops._rule_row(rule, WT[i], V[i], Q[i], g, scale, an, c)
        w = WT[i]
        acc = 0.0
        for j in range(w.shape[0]):
            acc += w[j] * w[j]
        rowsq[i] = acc


dense_rule = jit(parallel=True, **_OPTS)(_dense_rule)


@jit(**_OPTS)
def _clear_rows(GT, indptr, indices, order, start, mb):
    """GT[i, :] = 0 for the features of the batch (the only rows written)."""
    n1 = GT.shape[1]
    for m in range(mb):
        r = order[start + m]
        for p in range(indptr[r], indptr[r + 1]):
            g = GT[indices[p]]
            for j in range(n1):
                g[j] = 0.0


@jit(**_OPTS)
def _fixed_sum(v):
    acc = 0.0
    for i in range(v.shape[0]):
        acc += v[i]
    return acc


@jit(**_OPTS)
def train_epoch(WT, b1, V1, Q1, vb1, qb1, GT, gb1, mark, rowsq, zero_row, z1, a1, d1, act1,
                theta, s1, s2, grad, shape, bufs, indptr, indices, data, Y, S, order,
                batch_size, rule, hyper, t, loss, loss_scale, par_min, par_work):
    """One epoch of scikit-learn's stochastic solver with a sparse first layer: per batch,
    sparse feed-forward of layer 1, dense feed-forward of the tail (layers 2..L, flat theta,
    shape, bufs), loss, output error (weighted by S), error recursion down to layer 1, the
    tail's fused corrections + update, then layer 1's sparse corrections and dense update.

    WT, V1, Q1, GT (D, N_1): W^(1).T, its optimizer state and correction scratch (zero);
    b1, vb1, qb1, gb1 (N_1,) likewise for b^(1); mark (D,) int64; rowsq (D,) ||WT[i]||^2 on
    entry; zero_row (N_1,) zeros; z1, a1, d1 (cap, N_1). Returns as sklearn_loops.train_epoch."""
    acts = shape.acts
    L = shape.sizes.shape[0] - 1
    n1 = WT.shape[1]
    n = order.shape[0]
    alpha = hyper[rules.H_ALPHA]
    total = 0.0
    emax = 0.0
    for start in range(0, n, batch_size):
        mb = min(batch_size, n - start)
        par = mb >= par_min
        sparse_forward(z1[:mb], a1[:mb], WT, b1, indptr, indices, data, order, start, act1)
        a0 = loops._rows_rc(bufs.a, shape, 0, mb)
        y = loops._targets_rc(bufs, shape, mb)
        K = y.shape[1]
        for m in range(mb):
            r = order[start + m]
            for j in range(n1):
                a0[m, j] = a1[m, j]
            for k in range(K):
                y[m, k] = Y[r, k]
            bufs.s[m] = S[r]
        loops.forward(theta, shape, bufs, mb, par, par_work, 1)
        aL, zL = loops._rows_rc(bufs.a, shape, L, mb), loops._rows_rc(bufs.z, shape, L, mb)
        costs, sw = bufs.cost[:mb], bufs.s[:mb]
        emax = max(emax, loops.sample_loss(costs, aL, zL, y, acts[L - 1], loss))
        Sb = loops.weight_sum(sw)
        bl = 0.0
        for m in range(mb):
            bl += sw[m] * costs[m]
        bl = bl * loss_scale / Sb
        if alpha != 0.0:
            bl += 0.5 * alpha * (loops.penalty(theta, shape) + _fixed_sum(rowsq)) / Sb
        total += bl * mb
        t += 1
        c = loops.step_coefs(rule, hyper, t, alpha / Sb)
        loops.output_error(loops._rows_rc(bufs.delta, shape, L, mb), aL, zL, y, sw, acts[L - 1], loss)
        for l in range(L, 0, -1):
            W, b = loops._params_rc(theta, shape, l)
            S1W, S1b = loops._params_rc(s1, shape, l)
            S2W, S2b = loops._params_rc(s2, shape, l)
            dW, db = loops._params_rc(grad, shape, l)
            delta, a_prev = loops._rows_rc(bufs.delta, shape, l, mb), loops._rows_rc(bufs.a, shape, l - 1, mb)
            # error recursion first (W^(l) before its update); for l = 1 into the sparse layer
            d_prev = loops._rows_rc(bufs.delta, shape, l - 1, mb) if l > 1 else d1[:mb]
            z_prev = loops._rows_rc(bufs.z, shape, l - 1, mb) if l > 1 else z1[:mb]
            act_prev = acts[l - 2] if l > 1 else act1
            if par:
                loops.backward_layer_blocked(d_prev, delta, W, z_prev, a_prev, act_prev)
            else:
                loops._backward_layer_s(d_prev, delta, W, z_prev, a_prev, act_prev)
            if par or W.size * mb >= par_work:
                corrections_rule(W, b, S1W, S1b, S2W, S2b, dW, db, delta, a_prev, rule, c)
            else:
                _corrections_rule_s(W, b, S1W, S1b, S2W, S2b, dW, db, delta, a_prev, rule, c)
        for j in range(n1):
            gb1[j] = 0.0
        sparse_corrections(GT, gb1, mark, t, d1[:mb], indptr, indices, data, order, start)
        dense_rule(WT, V1, Q1, GT, mark, t, zero_row, rowsq, 1.0 / mb, c[8], rule, c)
        loops._rule_row(rule, b1, vb1, qb1, gb1, 1.0 / mb, 0.0, c)
        _clear_rows(GT, indptr, indices, order, start, mb)
    return total, emax, t
