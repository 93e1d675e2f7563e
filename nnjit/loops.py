"""The loop form: the lecture's per-unit equations as explicit scalar loops, compiled by Numba.

Index names are the lecture's: ``m`` sample, ``i`` unit of layer l-1, ``j`` unit of layer l,
``k`` unit of layer l+1. ``W[j, i]`` is w_ij of layer l (the lecture's matrix, rows j),
batches are rows. Every kernel writes into arrays it is given and never allocates.

Parallel axes are chosen per output, so a ``prange`` iteration writes only memory it owns:
feed-forward and the error recursion over samples m (a row of z, a, delta each), the
corrections over output units j (a row of dW each). Every sum runs in a fixed order, so the
result does not depend on the thread count.

The same function names, with the same signatures, exist in :mod:`nnjit.vectorised`
(NumPy) and :mod:`nnjit.cuda` (GPU), so the three forms read in three columns.

The network lives in flat buffers, as in llm.c: ``theta`` holds W^(1), b^(1), W^(2), ... and
``shape = (sizes, w_off, b_off, acts, a_off)`` says where each piece starts. ``bufs = (a, z,
delta, y, loss)`` hold one batch's activations, weighted inputs and errors of every layer.
"""
import math
import types

import numpy as np
from numba import njit, prange

from .activations import (CROSS_ENTROPY, IDENTITY, SIGMOID, SOFTMAX, SQUARED_ERROR,
                          apply_f, mul_fprime)
from ._numba_setup import CACHE   # False where no cache folder is writable
from .config import FASTMATH

_OPTS = dict(fastmath=FASTMATH, cache=CACHE, nogil=True)


# ---------------------------------------------------------------- one layer, forward and back
def _forward_layer(z, a, a_prev, W, b, act):
    """Feed-forward: z_j = sum_i w_ij a_i + b_j ;  a_j = f(z_j).

    a_prev (M, N_{l-1}); W (N_l, N_{l-1}); b (N_l,); z, a (M, N_l). prange over samples m.
    """
    M, n_in = a_prev.shape
    n_out = W.shape[0]
    for m in prange(M):
        for j in range(n_out):
            s = b[j]
            for i in range(n_in):          # contiguous in W[j, :] and a_prev[m, :]: SIMD
                s += W[j, i] * a_prev[m, i]
            z[m, j] = s
        apply_f(a[m], z[m], act)


def _backward_layer(delta_prev, delta, W, z_prev, a_prev, act_prev):
    """Error recursion: delta_j = f'(z_j) sum_k w_jk delta_k.

    delta (M, N_{l+1}) is delta^(l+1); W (N_{l+1}, N_l) is W^(l+1), so W[k, j] = w_jk;
    z_prev, a_prev, delta_prev (M, N_l) are layer l's. prange over samples m.
    """
    M, n_out = delta.shape
    n_in = W.shape[1]
    zero = delta.dtype.type(0.0)
    for m in prange(M):
        row = delta_prev[m]
        for j in range(n_in):
            row[j] = zero
        for k in range(n_out):             # k outer, j inner: row W[k, :] is contiguous
            dk = delta[m, k]
            for j in range(n_in):
                row[j] += W[k, j] * dk
        mul_fprime(row, z_prev[m], a_prev[m], act_prev)


def _corrections(dW, db, delta, a_prev, scale):
    """Corrections: dw_ij = scale sum_m a_i delta_j ;  db_j = scale sum_m delta_j.

    With scale = 1/M this is the lecture's batch average. delta (M, N_l); a_prev
    (M, N_{l-1}); dW (N_l, N_{l-1}); db (N_l,). prange over output units j: no race.
    """
    M, n_in = a_prev.shape
    n_out = delta.shape[1]
    zero = dW.dtype.type(0.0)
    s = dW.dtype.type(scale)
    for j in prange(n_out):
        row = dW[j]
        for i in range(n_in):
            row[i] = zero
        sb = zero
        for m in range(M):
            d = delta[m, j]
            sb += d
            for i in range(n_in):
                row[i] += d * a_prev[m, i]
        for i in range(n_in):
            row[i] *= s
        db[j] = sb * s


def _corrections_update(W, b, vW, vb, dW, db, delta, a_prev, eta, mu):
    """Corrections fused with the momentum update, one row j at a time while it is in cache:
    dw_ij = mean_m a_i delta_j ; v <- mu v - eta dw ; w <- w + v  (same for b).

    W, vW, dW (N_l, N_{l-1}); b, vb, db (N_l,); delta (M, N_l); a_prev (M, N_{l-1}).
    prange over output units j.
    """
    M, n_in = a_prev.shape
    n_out = delta.shape[1]
    zero = W.dtype.type(0.0)
    s = W.dtype.type(1.0 / M)
    eta_ = W.dtype.type(eta)
    mu_ = W.dtype.type(mu)
    for j in prange(n_out):
        row = dW[j]
        for i in range(n_in):
            row[i] = zero
        sb = zero
        for m in range(M):
            d = delta[m, j]
            sb += d
            for i in range(n_in):
                row[i] += d * a_prev[m, i]
        for i in range(n_in):
            row[i] *= s
            vW[j, i] = mu_ * vW[j, i] - eta_ * row[i]
            W[j, i] += vW[j, i]
        db[j] = sb * s
        vb[j] = mu_ * vb[j] - eta_ * db[j]
        b[j] += vb[j]


def _update(theta, vel, grad, eta, mu):
    """Update with momentum on every parameter: v <- mu v - eta dw ; w <- w + v.

    theta, vel, grad: flat (P,). prange over the flat index.
    """
    eta_ = theta.dtype.type(eta)
    mu_ = theta.dtype.type(mu)
    for p in prange(theta.shape[0]):
        vel[p] = mu_ * vel[p] - eta_ * grad[p]
        theta[p] += vel[p]


# ---------------------------------------------------------------- register-blocked kernels
# The same equations, reorganised for speed: each weight load serves 4 samples and each
# sample load serves 4 units (a 4 x 4 block of sums held in registers), so the inner loops
# do 16 multiply-adds per 8 loads instead of 1 per 2. These are what train_epoch runs; the
# plain kernels above stay as the readable reference, and tests hold both to the NumPy twin.

@njit(**_OPTS)
def _dot_rows(z, a_prev, W, b, m0, nm):
    """z[m0:m0+nm, :] = a_prev[m0:m0+nm] W^T + b for nm <= 4 samples, 4 units at a time."""
    n_out, n_in = W.shape
    j = 0
    if nm == 4:
        x0, x1, x2, x3 = a_prev[m0], a_prev[m0 + 1], a_prev[m0 + 2], a_prev[m0 + 3]
        while j + 4 <= n_out:
            w0, w1, w2, w3 = W[j], W[j + 1], W[j + 2], W[j + 3]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = z.dtype.type(0.0)
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = z.dtype.type(0.0)
            for i in range(n_in):
                a0, a1, a2, a3 = x0[i], x1[i], x2[i], x3[i]
                u = w0[i]
                s00 += u * a0; s01 += u * a1; s02 += u * a2; s03 += u * a3  # noqa: E702
                u = w1[i]
                s10 += u * a0; s11 += u * a1; s12 += u * a2; s13 += u * a3  # noqa: E702
                u = w2[i]
                s20 += u * a0; s21 += u * a1; s22 += u * a2; s23 += u * a3  # noqa: E702
                u = w3[i]
                s30 += u * a0; s31 += u * a1; s32 += u * a2; s33 += u * a3  # noqa: E702
            z[m0, j], z[m0 + 1, j], z[m0 + 2, j], z[m0 + 3, j] = s00, s01, s02, s03
            z[m0, j + 1], z[m0 + 1, j + 1], z[m0 + 2, j + 1], z[m0 + 3, j + 1] = s10, s11, s12, s13
            z[m0, j + 2], z[m0 + 1, j + 2], z[m0 + 2, j + 2], z[m0 + 3, j + 2] = s20, s21, s22, s23
            z[m0, j + 3], z[m0 + 1, j + 3], z[m0 + 2, j + 3], z[m0 + 3, j + 3] = s30, s31, s32, s33
            j += 4
    for m in range(m0, m0 + nm):
        x = a_prev[m]
        jj = j
        while jj + 4 <= n_out:
            w0, w1, w2, w3 = W[jj], W[jj + 1], W[jj + 2], W[jj + 3]
            s0 = s1 = s2 = s3 = z.dtype.type(0.0)
            for i in range(n_in):
                xi = x[i]
                s0 += w0[i] * xi; s1 += w1[i] * xi; s2 += w2[i] * xi; s3 += w3[i] * xi  # noqa: E702
            z[m, jj], z[m, jj + 1], z[m, jj + 2], z[m, jj + 3] = s0, s1, s2, s3
            jj += 4
        while jj < n_out:
            s = z.dtype.type(0.0)
            for i in range(n_in):
                s += W[jj, i] * x[i]
            z[m, jj] = s
            jj += 1
    for m in range(m0, m0 + nm):
        for jj in range(n_out):
            z[m, jj] += b[jj]


def _forward_layer_blocked(z, a, a_prev, W, b, act):
    """Feed-forward z_j = sum_i w_ij a_i + b_j ; a_j = f(z_j), 4 samples per prange step.

    a_prev (M, N_{l-1}); W (N_l, N_{l-1}); b (N_l,); z, a (M, N_l). Each step owns 4 rows.
    """
    M = a_prev.shape[0]
    for blk in prange((M + 3) // 4):
        m0 = 4 * blk
        nm = min(4, M - m0)
        _dot_rows(z, a_prev, W, b, m0, nm)
        for m in range(m0, m0 + nm):
            apply_f(a[m], z[m], act)


def _forward_layer_units(z, a, a_prev, W, b, act):
    """Feed-forward for a batch too small to split by samples (online learning): prange over
    blocks of 4 units j instead; a step owns z[:, j:j+4]. Then a_j = f(z_j) row by row.

    a_prev (M, N_{l-1}); W (N_l, N_{l-1}); b (N_l,); z, a (M, N_l).
    """
    M, n_in = a_prev.shape
    n_out = W.shape[0]
    for jb in prange((n_out + 3) // 4):
        j0 = 4 * jb
        for m in range(M):
            x = a_prev[m]
            if j0 + 4 <= n_out:
                w0, w1, w2, w3 = W[j0], W[j0 + 1], W[j0 + 2], W[j0 + 3]
                s0 = s1 = s2 = s3 = z.dtype.type(0.0)
                for i in range(n_in):
                    xi = x[i]
                    s0 += w0[i] * xi; s1 += w1[i] * xi; s2 += w2[i] * xi; s3 += w3[i] * xi  # noqa: E702
                z[m, j0], z[m, j0 + 1], z[m, j0 + 2], z[m, j0 + 3] = (
                    s0 + b[j0], s1 + b[j0 + 1], s2 + b[j0 + 2], s3 + b[j0 + 3])
            else:
                for j in range(j0, n_out):
                    s = b[j]
                    for i in range(n_in):
                        s += W[j, i] * x[i]
                    z[m, j] = s
    for m in range(M):
        apply_f(a[m], z[m], act)


def _backward_layer_blocked(delta_prev, delta, W, z_prev, a_prev, act_prev):
    """Error recursion delta_j = f'(z_j) sum_k w_jk delta_k, 4 units k per pass over row j.

    delta (M, N_{l+1}); W (N_{l+1}, N_l), W[k, j] = w_jk; delta_prev, z_prev, a_prev (M, N_l).
    prange over samples m.
    """
    M, n_out = delta.shape
    n_in = W.shape[1]
    zero = delta.dtype.type(0.0)
    for m in prange(M):
        row = delta_prev[m]
        for j in range(n_in):
            row[j] = zero
        k = 0
        while k + 4 <= n_out:
            d0, d1, d2, d3 = delta[m, k], delta[m, k + 1], delta[m, k + 2], delta[m, k + 3]
            w0, w1, w2, w3 = W[k], W[k + 1], W[k + 2], W[k + 3]
            for j in range(n_in):
                row[j] += w0[j] * d0 + w1[j] * d1 + w2[j] * d2 + w3[j] * d3
            k += 4
        while k < n_out:
            dk = delta[m, k]
            wk = W[k]
            for j in range(n_in):
                row[j] += wk[j] * dk
            k += 1
        mul_fprime(row, z_prev[m], a_prev[m], act_prev)


@njit(**_OPTS)
def _update_row(w, v, row, g, mu_):
    """v <- mu v - g row ; w <- w + v for one row (g = eta / M folds the mean into eta)."""
    for i in range(w.shape[0]):
        v[i] = mu_ * v[i] - g * row[i]
        w[i] += v[i]


def _corrections_update_blocked(W, b, vW, vb, dW, db, delta, a_prev, eta, mu):
    """Corrections dw_ij = mean_m a_i delta_j fused with v <- mu v - eta dw ; w <- w + v.

    W, vW, dW (N_l, N_{l-1}); b, vb, db (N_l,); delta (M, N_l); a_prev (M, N_{l-1}).
    prange over blocks of 4 output units j: a step owns 4 rows of W, vW, dW, so each load of
    a sample row a_prev[m] serves 4 units, and 4 samples are added per pass over a row.
    With one sample the correction a_i delta_j goes straight into the update: dW is scratch
    here and its contents afterwards are unspecified (db holds the bias correction).
    """
    M, n_in = a_prev.shape
    n_out = delta.shape[1]
    zero = W.dtype.type(0.0)
    s = W.dtype.type(1.0 / M)
    eta_ = W.dtype.type(eta)
    mu_ = W.dtype.type(mu)
    for jb in prange((n_out + 3) // 4):
        j0 = 4 * jb
        nj = min(4, n_out - j0)
        if M == 1:
            x = a_prev[0]
            for j in range(j0, j0 + nj):
                w, v, g = W[j], vW[j], eta_ * delta[0, j]
                for i in range(n_in):
                    v[i] = mu_ * v[i] - g * x[i]
                    w[i] += v[i]
                db[j] = delta[0, j]
        else:
            for j in range(j0, j0 + nj):
                row = dW[j]
                for i in range(n_in):
                    row[i] = zero
                db[j] = zero
            m = 0
            if nj == 4:
                r0, r1, r2, r3 = dW[j0], dW[j0 + 1], dW[j0 + 2], dW[j0 + 3]
                while m + 4 <= M:
                    x0, x1, x2, x3 = a_prev[m], a_prev[m + 1], a_prev[m + 2], a_prev[m + 3]
                    c00, c01, c02, c03 = delta[m, j0], delta[m + 1, j0], delta[m + 2, j0], delta[m + 3, j0]
                    c10, c11, c12, c13 = (delta[m, j0 + 1], delta[m + 1, j0 + 1],
                                          delta[m + 2, j0 + 1], delta[m + 3, j0 + 1])
                    c20, c21, c22, c23 = (delta[m, j0 + 2], delta[m + 1, j0 + 2],
                                          delta[m + 2, j0 + 2], delta[m + 3, j0 + 2])
                    c30, c31, c32, c33 = (delta[m, j0 + 3], delta[m + 1, j0 + 3],
                                          delta[m + 2, j0 + 3], delta[m + 3, j0 + 3])
                    for i in range(n_in):
                        a0, a1, a2, a3 = x0[i], x1[i], x2[i], x3[i]
                        r0[i] += c00 * a0 + c01 * a1 + c02 * a2 + c03 * a3
                        r1[i] += c10 * a0 + c11 * a1 + c12 * a2 + c13 * a3
                        r2[i] += c20 * a0 + c21 * a1 + c22 * a2 + c23 * a3
                        r3[i] += c30 * a0 + c31 * a1 + c32 * a2 + c33 * a3
                    for j in range(j0, j0 + 4):
                        db[j] += delta[m, j] + delta[m + 1, j] + delta[m + 2, j] + delta[m + 3, j]
                    m += 4
            for mm in range(m, M):           # the samples (or units) left over from the blocks
                x = a_prev[mm]
                for j in range(j0, j0 + nj):
                    row, d = dW[j], delta[mm, j]
                    for i in range(n_in):
                        row[i] += d * x[i]
                    db[j] += d
            for j in range(j0, j0 + nj):
                _update_row(W[j], vW[j], dW[j], eta_ * s, mu_)
                db[j] *= s
        for j in range(j0, j0 + nj):
            vb[j] = mu_ * vb[j] - eta_ * db[j]
            b[j] += vb[j]


def _update_forward_next(W, b, vW, vb, delta, x, x_next, z_next, eta, mu):
    """Online learning, first layer: the update w_ij <- w_ij + (mu v_ij - eta x_i delta_j)
    fused with the next sample's feed-forward sum z'_j = sum_i w_ij x'_i + b_j, computed
    from each row right after its update, while the row is still in cache: the weights are
    read once per sample instead of twice. Same numbers as update-then-forward.

    W, vW (N_1, D); b, vb, delta, z_next (N_1,); x, x_next (D,). prange over units j.
    """
    n_out, n_in = W.shape
    eta_ = W.dtype.type(eta)
    mu_ = W.dtype.type(mu)
    for j in prange(n_out):
        w, v = W[j], vW[j]
        g = eta_ * delta[j]
        s = W.dtype.type(0.0)
        for i in range(n_in):
            v[i] = mu_ * v[i] - g * x[i]
            w[i] += v[i]
            s += w[i] * x_next[i]
        vb[j] = mu_ * vb[j] - eta_ * delta[j]
        b[j] += vb[j]
        z_next[j] = s + b[j]


# Each kernel twice: parallel, and serial for batches too small to pay for a parallel region.
forward_layer = njit(parallel=True, **_OPTS)(_forward_layer)
backward_layer = njit(parallel=True, **_OPTS)(_backward_layer)
corrections = njit(parallel=True, **_OPTS)(_corrections)
corrections_update = njit(parallel=True, **_OPTS)(_corrections_update)
update = njit(parallel=True, **_OPTS)(_update)
forward_layer_blocked = njit(parallel=True, **_OPTS)(_forward_layer_blocked)
forward_layer_units = njit(parallel=True, **_OPTS)(_forward_layer_units)
update_forward_next = njit(parallel=True, **_OPTS)(_update_forward_next)
backward_layer_blocked = njit(parallel=True, **_OPTS)(_backward_layer_blocked)
corrections_update_blocked = njit(parallel=True, **_OPTS)(_corrections_update_blocked)


def _serial(fn):
    """The serial twin of a prange kernel, compiled under a name of its own: Numba's disk
    cache files entries by function name and signature, not by the parallel flag, so twins
    sharing one name would load each other's machine code (a parallel region where a serial
    loop was meant, or worse)."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                              fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_serial"
    return njit(**_OPTS)(twin)


_forward_layer_s = _serial(_forward_layer_blocked)
_backward_layer_s = _serial(_backward_layer_blocked)
_corrections_update_s = _serial(_corrections_update_blocked)
_update_forward_next_s = _serial(_update_forward_next)


# ---------------------------------------------------------------- the output layer
@njit(**_OPTS)
def output_error(delta, a, z, y, act, loss):
    """Output error delta^L = dC/dz^L, exact for every output/loss pair.

    delta_out = a - y; then delta^L = delta_out for the canonical pairs (softmax with
    cross-entropy, sigmoid with binary cross-entropy, identity with squared error),
    f'(z) delta_out for squared error with an elementwise f, and the full Jacobian
    delta_k = a_k (delta_out_k - sum_k' a_k' delta_out_k') for softmax with squared error.
    a, z, y, delta (M, N_L). Serial: O(M K) work is smaller than a parallel region.
    """
    M, K = a.shape
    for m in range(M):
        for k in range(K):
            delta[m, k] = a[m, k] - y[m, k]
        canonical = ((loss == CROSS_ENTROPY) or act == IDENTITY)
        if not canonical:
            if act == SOFTMAX:
                s = delta.dtype.type(0.0)
                for k in range(K):
                    s += a[m, k] * delta[m, k]
                for k in range(K):
                    delta[m, k] = a[m, k] * (delta[m, k] - s)
            else:
                mul_fprime(delta[m], z[m], a[m], act)


@njit(**_OPTS)
def sample_loss(out, a, z, y, act, loss):
    """Per-sample cost C_m into out (M,); returns max_m,k |a - y| (the stop criterion's error).

    squared error C = 1/2 sum_k (a_k - y_k)^2 (the lecture's cost); cross-entropy
    -sum_k y_k log a_k for softmax, the binary form for sigmoid, both from z so they stay
    finite when a rounds to 0 or 1.
    """
    M, K = a.shape
    half = a.dtype.type(0.5)
    zero = a.dtype.type(0.0)
    emax = zero
    for m in range(M):
        c = zero
        if loss == SQUARED_ERROR:
            for k in range(K):
                e = a[m, k] - y[m, k]
                c += half * e * e
        elif act == SOFTMAX:              # log a_k = z_k - zmax - log sum exp(z - zmax)
            zmax = z[m, 0]
            for k in range(1, K):
                zmax = max(zmax, z[m, k])
            se = zero
            for k in range(K):
                se += math.exp(z[m, k] - zmax)
            lse = zmax + math.log(se)
            for k in range(K):
                c -= y[m, k] * (z[m, k] - lse)
        else:                             # sigmoid: log(1+e^z) - y z, written stably
            for k in range(K):
                zk = z[m, k]
                c += max(zk, zero) - zk * y[m, k] + math.log1p(math.exp(-abs(zk)))
        out[m] = c
        for k in range(K):
            emax = max(emax, abs(a[m, k] - y[m, k]))
    return emax


# ---------------------------------------------------------------- the whole network
@njit(**_OPTS)
def _params(theta, shape, l):
    """Views W^(l) (N_l, N_{l-1}) and b^(l) (N_l,) into a flat parameter buffer."""
    sizes, w_off, b_off = shape[0], shape[1], shape[2]
    n_out, n_in = sizes[l], sizes[l - 1]
    W = theta[w_off[l - 1]:w_off[l - 1] + n_out * n_in].reshape((n_out, n_in))
    b = theta[b_off[l - 1]:b_off[l - 1] + n_out]
    return W, b


@njit(**_OPTS)
def _rows(buf, shape, l, mb):
    """Layer l's (mb, N_l) block of a batch buffer laid out by shape's a_off."""
    sizes, a_off = shape[0], shape[4]
    cap = buf.shape[0] // a_off[-1]
    off = a_off[l] * cap
    return buf[off:off + mb * sizes[l]].reshape((mb, sizes[l]))


@njit(**_OPTS)
def forward(theta, shape, bufs, mb, par, par_work, l0):
    """Feed-forward through layers l0..L for the mb samples already in layer l0-1 of bufs.
    par: split by samples; else a layer with N_l N_{l-1} mb >= par_work splits by units.
    (No default arguments: Numba's dispatcher takes a slow path, ~100 us, for omitted ones.)"""
    acts = shape[3]
    L = shape[0].shape[0] - 1
    for l in range(l0, L + 1):
        W, b = _params(theta, shape, l)
        a_prev = _rows(bufs[0], shape, l - 1, mb)
        z, a = _rows(bufs[1], shape, l, mb), _rows(bufs[0], shape, l, mb)
        if par:
            forward_layer_blocked(z, a, a_prev, W, b, acts[l - 1])
        elif W.size * mb >= par_work:
            forward_layer_units(z, a, a_prev, W, b, acts[l - 1])
        else:
            _forward_layer_s(z, a, a_prev, W, b, acts[l - 1])


@njit(**_OPTS)
def backprop(theta, grad, shape, bufs, mb, loss):
    """Mean gradient over the batch into grad, after forward(): output error, then for
    l = L..1 the corrections of layer l and the error recursion to layer l-1."""
    acts = shape[3]
    L = shape[0].shape[0] - 1
    y = bufs[3][:mb * shape[0][L]].reshape((mb, shape[0][L]))
    output_error(_rows(bufs[2], shape, L, mb), _rows(bufs[0], shape, L, mb),
                 _rows(bufs[1], shape, L, mb), y, acts[L - 1], loss)
    for l in range(L, 0, -1):
        W, b = _params(theta, shape, l)
        dW, db = _params(grad, shape, l)
        delta, a_prev = _rows(bufs[2], shape, l, mb), _rows(bufs[0], shape, l - 1, mb)
        corrections(dW, db, delta, a_prev, 1.0 / mb)
        if l > 1:
            backward_layer(_rows(bufs[2], shape, l - 1, mb), delta, W,
                           _rows(bufs[1], shape, l - 1, mb), a_prev, acts[l - 2])


@njit(**_OPTS)
def load_batch(bufs, shape, X, Y, order, start, mb):
    """Copy samples order[start:start+mb] into layer 0 and the target block of bufs."""
    D = X.shape[1]
    K = Y.shape[1]
    a0 = _rows(bufs[0], shape, 0, mb)
    y = bufs[3][:mb * K].reshape((mb, K))
    for m in range(mb):
        r = order[start + m]
        for i in range(D):
            a0[m, i] = X[r, i]
        for k in range(K):
            y[m, k] = Y[r, k]


@njit(**_OPTS)
def train_epoch(theta, vel, grad, shape, bufs, X, Y, order, batch_size, eta, mu, loss,
                par_min, par_work):
    """One epoch of the lecture's algorithm, every batch inside compiled code: for each
    batch, feed-forward, output error, then from l = L down to 1 the error recursion to
    layer l-1 (with W^(l) before its update) and the fused correction + momentum update
    of layer l. Returns (sum of per-sample costs, max |a - y|) seen during the epoch.

    par_min: batches of fewer samples run the per-sample kernels serially; par_work: a
    layer's correction runs in parallel anyway once N_l N_{l-1} mb reaches it."""
    acts = shape[3]
    L = shape[0].shape[0] - 1
    K = shape[0][L]
    n = order.shape[0]
    total = 0.0
    emax = 0.0
    ahead = False          # online: is z^(1) of this sample already computed (fused)?
    for start in range(0, n, batch_size):
        mb = min(batch_size, n - start)
        par = mb >= par_min
        load_batch(bufs, shape, X, Y, order, start, mb)
        if ahead:
            apply_f(_rows(bufs[0], shape, 1, 1)[0], _rows(bufs[1], shape, 1, 1)[0], acts[0])
            forward(theta, shape, bufs, mb, par, par_work, 2)
        else:
            forward(theta, shape, bufs, mb, par, par_work, 1)
        aL, zL = _rows(bufs[0], shape, L, mb), _rows(bufs[1], shape, L, mb)
        y = bufs[3][:mb * K].reshape((mb, K))
        lossrow = bufs[4][:mb]
        emax = max(emax, sample_loss(lossrow, aL, zL, y, acts[L - 1], loss))
        for m in range(mb):
            total += lossrow[m]
        output_error(_rows(bufs[2], shape, L, mb), aL, zL, y, acts[L - 1], loss)
        for l in range(L, 0, -1):
            W, b = _params(theta, shape, l)
            vW, vb = _params(vel, shape, l)
            dW, db = _params(grad, shape, l)
            delta, a_prev = _rows(bufs[2], shape, l, mb), _rows(bufs[0], shape, l - 1, mb)
            if l > 1:       # error recursion first: it needs W^(l) before the update
                if par:
                    backward_layer_blocked(_rows(bufs[2], shape, l - 1, mb), delta, W,
                                   _rows(bufs[1], shape, l - 1, mb), a_prev, acts[l - 2])
                else:
                    _backward_layer_s(_rows(bufs[2], shape, l - 1, mb), delta, W,
                                      _rows(bufs[1], shape, l - 1, mb), a_prev, acts[l - 2])
            ahead = l == 1 and batch_size == 1 and start + 1 < n
            if ahead:       # online: fuse the next sample's z^(1) into this update
                x_next, z_next = X[order[start + 1]], _rows(bufs[1], shape, 1, 1)[0]
                if W.size >= par_work:
                    update_forward_next(W, b, vW, vb, delta[0], a_prev[0], x_next, z_next, eta, mu)
                else:
                    _update_forward_next_s(W, b, vW, vb, delta[0], a_prev[0], x_next, z_next, eta, mu)
            elif par or W.size * mb >= par_work:   # a wide layer pays for a region at mb=1
                corrections_update_blocked(W, b, vW, vb, dW, db, delta, a_prev, eta, mu)
            else:
                _corrections_update_s(W, b, vW, vb, dW, db, delta, a_prev, eta, mu)
    return total, emax
