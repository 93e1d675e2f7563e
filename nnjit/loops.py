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
``shape`` (an :class:`nnjit.engine.Shape` namedtuple: sizes, w_off, b_off, acts, a_off) says
where each piece starts. ``bufs`` (a :class:`nnjit.engine.Batch`: a, z, delta, y, cost, s)
hold one batch's activations, weighted inputs and errors of every layer, its targets, per-sample
costs and sample weights.

The update rule is a code (``nnjit.rules.RULE_*``) and a tuple of per-step scalars
``c = (eta, mu, beta1, beta2, A, B, eps, decay, alpha_n)`` made by :func:`step_coefs`; the
optimizer state is ``vel`` (velocity, or Adam's m) and ``sq`` (Adam's v) beside theta.
"""
import math
import types

import numpy as np
from numba import prange

from .activations import (CROSS_ENTROPY, IDENTITY, SIGMOID, SOFTMAX, SQUARED_ERROR,
                          apply_f, mul_fprime)
from .jit import jit
from .config import FASTMATH
from .microkernel import MR, NR, block as _block
from .rules import H_ALPHA, H_BETA1, H_BETA2, H_EPS, H_EPS_MODE, H_ETA, H_MU, H_WD, RULE_ADAM, \
    RULE_ADAMW, RULE_NESTEROV, RULE_SGD

# error_model="numpy": a division is a plain IEEE division (x/0 gives inf, which the wrapper
# reports as divergence) instead of a branch raising ZeroDivisionError, which would stop LLVM
# from vectorising Adam's w -= A m / (sqrt(v) B + eps) (measured: 3 ns -> 0.4 ns an element)
_OPTS = dict(fastmath=FASTMATH, nogil=True, error_model="numpy")
# Nothing in the loop form allocates, so it is compiled without Numba's reference counting
# (_nrt=False, as Numba's own mergesort and unicode helpers are): with it, every call and every
# view (W[j], a layer's block of a buffer, each array of the Shape tuple passed along) took an
# atomic increment and decrement, over 1000 locked instructions a sample online: 34 % of a
# 64-32-10 online epoch's time in NRT_incref/NRT_decref (perf). An allocation here would not
# compile ("NRT required"). A function without counting may not return a view, so _params,
# _rows and _targets are inlined into their callers (Numba IR inlining); their counted twins
# (*_rc) serve the counting callers: the batch twins of the epoch (_EPOCH), nnjit.sparse and
# nnjit.sklearn_loops.
_RC_OPTS = _OPTS
_OPTS = dict(_RC_OPTS, _nrt=False)
_VIEW_OPTS = dict(_OPTS, inline="always")
# Compiled code calls a kernel with int(0), int(4) or a comparison, never a bare 0, 4 or True:
# Numba types a literal argument as Literal[int](0) and compiles the callee once more for it
# (a second specialisation: seconds of a first fit; test_a_fit_compiles_each_kernel_once).


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


# ---------------------------------------------------------------- update rules
# The rules are compiled without reassoc/contract: LLVM inlines them into every fused kernel
# (they are small once uncounted), and flags of their own keep each update the same
# arithmetic in every caller, bit for bit (fast-math flags travel with the instructions).
_RULE_OPTS = dict(_OPTS, fastmath={"nsz"})


@jit(**_RULE_OPTS)
def step_coefs(rule, hyper, t, alpha_n):
    """Per-step scalars c = (eta, mu, beta1, beta2, A, B, eps, decay, alpha_n) of update t
    (1-based) from the hyper vector: Adam's w <- w decay - A m / (sqrt(v) B + eps) with
    A = eta/(1-b1^t), B = 1/sqrt(1-b2^t) (PyTorch) or A = eta sqrt(1-b2^t)/(1-b1^t), B = 1
    (scikit-learn); AdamW's decay = 1 - eta wd. alpha_n = alpha / n_batch, the L2 term."""
    eta, mu = hyper[H_ETA], hyper[H_MU]
    b1, b2, eps = hyper[H_BETA1], hyper[H_BETA2], hyper[H_EPS]
    A, B, decay = eta, 1.0, 1.0
    if rule == RULE_ADAM or rule == RULE_ADAMW:
        bc1 = 1.0 - b1 ** t
        bc2 = 1.0 - b2 ** t
        if hyper[H_EPS_MODE] == 0.0:
            A = eta / bc1
            B = 1.0 / math.sqrt(bc2)
        else:
            A = eta * math.sqrt(bc2) / bc1
        if rule == RULE_ADAMW:
            decay = 1.0 - eta * hyper[H_WD]
    return (eta, mu, b1, b2, A, B, eps, decay, alpha_n)


@jit(**_RULE_OPTS)
def _rule_row(rule, w, v, q, g, scale, an, c):
    """Apply the rule to one row, gradient dw_i = scale g_i + an w_i (the L2 term):
    sgd v <- mu v - eta dw ; w <- w + v.  nesterov v <- mu v - eta dw ; w <- w + mu v - eta dw.
    adam(w) m <- b1 m + (1-b1) dw ; s <- b2 s + (1-b2) dw^2 ; w <- w decay - A m/(sqrt(s) B + eps)
    with m in v and s in q. w, v, q, g (N,). The branch sits outside the loops so each
    rule's loop vectorises on its own."""
    T = w.dtype.type
    sc, an_ = T(scale), T(an)
    eta, mu = T(c[0]), T(c[1])
    n = w.shape[0]
    if rule == RULE_SGD:
        for i in range(n):
            d = sc * g[i] + an_ * w[i]
            v[i] = mu * v[i] - eta * d
            w[i] += v[i]
    elif rule == RULE_NESTEROV:
        for i in range(n):
            d = sc * g[i] + an_ * w[i]
            u = mu * v[i] - eta * d
            v[i] = u
            w[i] += mu * u - eta * d
    else:
        b1, b2, A, B, eps, decay = T(c[2]), T(c[3]), T(c[4]), T(c[5]), T(c[6]), T(c[7])
        one = T(1.0)
        for i in range(n):
            d = sc * g[i] + an_ * w[i]
            m = b1 * v[i] + (one - b1) * d
            s = b2 * q[i] + (one - b2) * d * d
            v[i] = m
            q[i] = s
            w[i] = w[i] * decay - A * m / (math.sqrt(s) * B + eps)


@jit(**_RULE_OPTS)
def _rule_at(rule, w, v, q, j, d, c):
    """The rule for the single element j (a bias) with gradient d; see _rule_row."""
    T = w.dtype.type
    eta, mu = T(c[0]), T(c[1])
    d = T(d)
    if rule == RULE_SGD:
        v[j] = mu * v[j] - eta * d
        w[j] += v[j]
    elif rule == RULE_NESTEROV:
        u = mu * v[j] - eta * d
        v[j] = u
        w[j] += mu * u - eta * d
    else:
        b1, b2, A, B, eps, decay = T(c[2]), T(c[3]), T(c[4]), T(c[5]), T(c[6]), T(c[7])
        one = T(1.0)
        m = b1 * v[j] + (one - b1) * d
        s = b2 * q[j] + (one - b2) * d * d
        v[j] = m
        q[j] = s
        w[j] = w[j] * decay - A * m / (math.sqrt(s) * B + eps)


def _corrections(dW, db, delta, a_prev, scale, W, an):
    """Corrections: dw_ij = scale sum_m a_i delta_j + an w_ij ;  db_j = scale sum_m delta_j.

    With scale = 1/M this is the lecture's batch average; an = alpha/n_batch adds the L2
    penalty's gradient (biases are not penalised). delta (M, N_l); a_prev (M, N_{l-1});
    dW, W (N_l, N_{l-1}); db (N_l,). prange over output units j: no race.
    """
    M, n_in = a_prev.shape
    n_out = delta.shape[1]
    zero = dW.dtype.type(0.0)
    s = dW.dtype.type(scale)
    an_ = dW.dtype.type(an)
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
            row[i] = row[i] * s + an_ * W[j, i]
        db[j] = sb * s


def _corrections_update(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c):
    """Corrections fused with the update rule, one row j at a time while it is in cache:
    dw_ij = mean_m a_i delta_j + alpha_n w_ij, then the rule (see _rule_row) on w_ij, b_j.

    W, vW, sW, dW (N_l, N_{l-1}); b, vb, sb, db (N_l,); delta (M, N_l); a_prev (M, N_{l-1}).
    prange over output units j.
    """
    M, n_in = a_prev.shape
    n_out = delta.shape[1]
    zero = W.dtype.type(0.0)
    s = 1.0 / M
    for j in prange(n_out):
        row = dW[j]
        for i in range(n_in):
            row[i] = zero
        bsum = zero
        for m in range(M):
            d = delta[m, j]
            bsum += d
            for i in range(n_in):
                row[i] += d * a_prev[m, i]
        _rule_row(rule, W[j], vW[j], sW[j], row, s, c[8], c)
        db[j] = bsum * W.dtype.type(s)
        _rule_at(rule, b, vb, sb, j, db[j], c)


def _update(theta, vel, sq, grad, rule, c):
    """The update rule on every parameter (flat (P,) theta, vel, sq, grad), for gradients
    added up outside the epoch (streamed or Dask full batches); grad already holds any L2
    term, so c's alpha_n is not used. prange over blocks of the flat index."""
    n = theta.shape[0]
    for blk in prange((n + 1023) // 1024):
        lo = blk * 1024
        hi = min(n, lo + 1024)
        _rule_row(rule, theta[lo:hi], vel[lo:hi], sq[lo:hi], grad[lo:hi], 1.0, 0.0, c)


# ---------------------------------------------------------------- register-blocked kernels
# The same equations, reorganised for speed: each weight load serves 4 samples and each
# sample load serves 4 units (a 4 x 4 block of sums held in registers), so the inner loops
# do 16 multiply-adds per 8 loads instead of 1 per 2. These are what train_epoch runs; the
# plain kernels above stay as the readable reference, and tests hold both to the NumPy twin.

@jit(fastmath={"nsz", "arcp"}, nogil=True, error_model="numpy", _nrt=False)
def _dot(w, x):
    """sum_i w_i x_i in one fixed order: 8 explicit partial sums, added pairwise. Compiled
    without ``reassoc``/``contract``, so LLVM cannot regroup it for its vector width (or fuse
    multiply-adds in one caller and not another): every feed-forward of one sample, fused
    into the online update or not, gives bit-identical z on any CPU."""
    n = w.shape[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = w.dtype.type(0.0)
    i = 0
    while i + 8 <= n:
        s0 += w[i] * x[i]
        s1 += w[i + 1] * x[i + 1]
        s2 += w[i + 2] * x[i + 2]
        s3 += w[i + 3] * x[i + 3]
        s4 += w[i + 4] * x[i + 4]
        s5 += w[i + 5] * x[i + 5]
        s6 += w[i + 6] * x[i + 6]
        s7 += w[i + 7] * x[i + 7]
        i += 8
    while i < n:
        s0 += w[i] * x[i]
        i += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@jit(**_OPTS)
def _dot_rows(z, a_prev, W, b, m0, nm):
    """z[m0:m0+nm, :] = a_prev[m0:m0+nm] W^T + b for nm <= 4 samples, 2 units at a time."""
    _dot_rows_range(z, a_prev, W, b, m0, nm, int(0), W.shape[0])   # int(): see _VIEW_OPTS


@jit(**_OPTS)
def _dot_rows_range(z, a_prev, W, b, m0, nm, j_lo, j_hi):
    """z[m0:m0+nm, j_lo:j_hi] = a_prev[m0:m0+nm] W[j_lo:j_hi]^T + b[j_lo:j_hi] for nm <= 4
    samples, 2 units at a time from j_lo (the units left over use the fixed-order _dot).
    4 samples x 2 units = 8 vector sums fit the registers with the 6 loads; 4 x 4 spilled
    (measured, float32 AVX2: 70-75 -> 95-100 GFLOP/s on 1024 x 784 x 1024)."""
    n_in = W.shape[1]
    j = j_lo
    if nm == 4:
        x0, x1, x2, x3 = a_prev[m0], a_prev[m0 + 1], a_prev[m0 + 2], a_prev[m0 + 3]
        while j + 2 <= j_hi:
            w0, w1 = W[j], W[j + 1]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = z.dtype.type(0.0)
            for i in range(n_in):
                a0, a1, a2, a3 = x0[i], x1[i], x2[i], x3[i]
                u = w0[i]
                s00 += u * a0; s01 += u * a1; s02 += u * a2; s03 += u * a3  # noqa: E702
                u = w1[i]
                s10 += u * a0; s11 += u * a1; s12 += u * a2; s13 += u * a3  # noqa: E702
            z[m0, j], z[m0 + 1, j], z[m0 + 2, j], z[m0 + 3, j] = s00, s01, s02, s03
            z[m0, j + 1], z[m0 + 1, j + 1], z[m0 + 2, j + 1], z[m0 + 3, j + 1] = s10, s11, s12, s13
            j += 2
    for m in range(m0, m0 + nm):        # fewer than 4 samples: the shared fixed-order dot
        x = a_prev[m]
        for jj in range(j, j_hi):
            z[m, jj] = _dot(W[jj], x)
    for m in range(m0, m0 + nm):
        for jj in range(j_lo, j_hi):
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
    units j instead; a step owns z[:, j]. z_j = _dot(w_j, a) + b_j, the order the fused online
    update uses too (update_forward_next). Then a_j = f(z_j) row by row.

    a_prev (M, N_{l-1}); W (N_l, N_{l-1}); b (N_l,); z, a (M, N_l).
    """
    M = a_prev.shape[0]
    n_out = W.shape[0]
    for j in prange(n_out):
        for m in range(M):
            z[m, j] = _dot(W[j], a_prev[m]) + b[j]
    for m in range(M):
        apply_f(a[m], z[m], act)


@jit(**_OPTS)
def _backward_row_range(row, d, W, j_lo, j_hi):
    """row[j] = sum_k w_jk d_k for j in [j_lo, j_hi), 4 units k per pass (W[k, j] = w_jk).
    The loops index slices from 0: from a run-time j_lo, Numba's negative-index wraparound
    check stays in the loop and stops LLVM from vectorising it (measured 5x slower)."""
    n_out = W.shape[0]
    r = row[j_lo:j_hi]
    n = r.shape[0]
    zero = row.dtype.type(0.0)
    for j in range(n):
        r[j] = zero
    k = 0
    while k + 4 <= n_out:
        d0, d1, d2, d3 = d[k], d[k + 1], d[k + 2], d[k + 3]
        w0, w1 = W[k, j_lo:j_hi], W[k + 1, j_lo:j_hi]
        w2, w3 = W[k + 2, j_lo:j_hi], W[k + 3, j_lo:j_hi]
        for j in range(n):
            r[j] += w0[j] * d0 + w1[j] * d1 + w2[j] * d2 + w3[j] * d3
        k += 4
    while k < n_out:
        dk = d[k]
        wk = W[k, j_lo:j_hi]
        for j in range(n):
            r[j] += wk[j] * dk
        k += 1


@jit(**_OPTS)
def _backward_rows4_range(delta_prev, delta, W, m0, j_lo, j_hi):
    """_backward_row_range for the 4 samples m0..m0+3 at once: each load of w_jk serves 4
    samples. Every element gets the same sum, in the same order, as from _backward_row_range."""
    n_out = W.shape[0]
    r0, r1 = delta_prev[m0, j_lo:j_hi], delta_prev[m0 + 1, j_lo:j_hi]
    r2, r3 = delta_prev[m0 + 2, j_lo:j_hi], delta_prev[m0 + 3, j_lo:j_hi]
    e0, e1, e2, e3 = delta[m0], delta[m0 + 1], delta[m0 + 2], delta[m0 + 3]
    n = r0.shape[0]
    zero = delta_prev.dtype.type(0.0)
    for j in range(n):
        r0[j] = zero
        r1[j] = zero
        r2[j] = zero
        r3[j] = zero
    k = 0
    while k + 4 <= n_out:
        w0, w1 = W[k, j_lo:j_hi], W[k + 1, j_lo:j_hi]
        w2, w3 = W[k + 2, j_lo:j_hi], W[k + 3, j_lo:j_hi]
        for j in range(n):
            u0, u1, u2, u3 = w0[j], w1[j], w2[j], w3[j]
            r0[j] += u0 * e0[k] + u1 * e0[k + 1] + u2 * e0[k + 2] + u3 * e0[k + 3]
            r1[j] += u0 * e1[k] + u1 * e1[k + 1] + u2 * e1[k + 2] + u3 * e1[k + 3]
            r2[j] += u0 * e2[k] + u1 * e2[k + 1] + u2 * e2[k + 2] + u3 * e2[k + 3]
            r3[j] += u0 * e3[k] + u1 * e3[k + 1] + u2 * e3[k + 2] + u3 * e3[k + 3]
        k += 4
    while k < n_out:
        wk = W[k, j_lo:j_hi]
        for j in range(n):
            u = wk[j]
            r0[j] += u * e0[k]
            r1[j] += u * e1[k]
            r2[j] += u * e2[k]
            r3[j] += u * e3[k]
        k += 1


def _backward_layer_blocked(delta_prev, delta, W, z_prev, a_prev, act_prev):
    """Error recursion delta_j = f'(z_j) sum_k w_jk delta_k, 4 units k per pass over row j.

    delta (M, N_{l+1}); W (N_{l+1}, N_l), W[k, j] = w_jk; delta_prev, z_prev, a_prev (M, N_l).
    prange over samples m.
    """
    M = delta.shape[0]
    n_in = W.shape[1]
    for m in prange(M):
        _backward_row_range(delta_prev[m], delta[m], W, int(0), n_in)
        mul_fprime(delta_prev[m], z_prev[m], a_prev[m], act_prev)


def _corrections_update_blocked(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c):
    """Corrections dw_ij = mean_m a_i delta_j + alpha_n w_ij fused with the update rule
    (see _rule_row), each row updated right after its sum while it is in cache.

    W, vW, sW, dW (N_l, N_{l-1}); b, vb, sb, db (N_l,); delta (M, N_l); a_prev (M, N_{l-1}).
    prange over blocks of 4 output units j: a step owns 4 rows of W, vW, sW, dW, so each load
    of a sample row a_prev[m] serves 4 units, and 4 samples are added per pass over a row.
    With one sample the correction a_i delta_j goes straight into the update: dW is scratch
    here and its contents afterwards are unspecified (db holds the bias correction).
    """
    M, n_in = a_prev.shape
    n_out = delta.shape[1]
    zero = W.dtype.type(0.0)
    s = 1.0 / M
    an = c[8]
    for jb in prange((n_out + 3) // 4):
        j0 = 4 * jb
        nj = min(4, n_out - j0)
        if M == 1:
            x = a_prev[0]
            for j in range(j0, j0 + nj):
                _rule_row(rule, W[j], vW[j], sW[j], x, np.float64(delta[0, j]), an, c)
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
                _rule_row(rule, W[j], vW[j], sW[j], dW[j], s, an, c)
                db[j] *= W.dtype.type(s)
        for j in range(j0, j0 + nj):
            _rule_at(rule, b, vb, sb, j, db[j], c)


# ---------------------------------------------------------------- cache-blocked kernels
# The same sums as the register-blocked kernels above, element for element and in the same
# order, with the loops reordered so a block of W (or of the activations) stays in the
# core's L2 cache while a chunk of samples (or a block of units) passes over it: for a wide
# layer (W^(l) larger than L2) the blocked kernels stream all of W from L3 or memory for
# every 4 samples, and the memory bus, not the multiply-adds, bounds them. Block sizes come
# from nnjit.config (TILE_*) as plain values; with mc = 4 (1 for the error recursion) and a
# block as wide as the layer they are the blocked kernels' loops exactly.

def _forward_layer_tiled(z, a, a_prev, W, b, act, mc, nc):
    """Feed-forward z_j = sum_i w_ij a_i + b_j ; a_j = f(z_j), cache-blocked.

    a_prev (M, N_{l-1}); W (N_l, N_{l-1}); b (N_l,); z, a (M, N_l). prange over chunks of mc
    samples m (mc a multiple of 4), each owning its rows of z and a; inside a chunk, blocks
    of nc units j (a multiple of 4): nc rows of W stay in cache while every 4-sample group
    of the chunk is summed against them (the 4 x 4 register block of _dot_rows_range).
    """
    M = a_prev.shape[0]
    n_out = W.shape[0]
    for ch in prange((M + mc - 1) // mc):
        m_lo = ch * mc
        m_hi = min(M, m_lo + mc)
        for j_lo in range(0, n_out, nc):
            j_hi = min(n_out, j_lo + nc)
            for m0 in range(m_lo, m_hi, 4):
                _dot_rows_range(z, a_prev, W, b, m0, min(4, m_hi - m0), j_lo, j_hi)
        for m in range(m_lo, m_hi):
            apply_f(a[m], z[m], act)


def _backward_layer_tiled(delta_prev, delta, W, z_prev, a_prev, act_prev, mc, nc):
    """Error recursion delta_j = f'(z_j) sum_k w_jk delta_k, cache-blocked.

    delta (M, N_{l+1}); W (N_{l+1}, N_l), W[k, j] = w_jk; delta_prev, z_prev, a_prev (M, N_l).
    prange over chunks of mc samples m, each owning its rows of delta_prev; inside a chunk,
    blocks of nc units j: the columns W[:, j block] stay in cache for every sample of the
    chunk, and each load of w_jk serves 4 samples (_backward_rows4_range). Sums over k as in
    _backward_row_range, whatever the blocks.
    """
    M = delta.shape[0]
    n_in = W.shape[1]
    for ch in prange((M + mc - 1) // mc):
        m_lo = ch * mc
        m_hi = min(M, m_lo + mc)
        for j_lo in range(0, n_in, nc):
            j_hi = min(n_in, j_lo + nc)
            m = m_lo
            while m + 4 <= m_hi:
                _backward_rows4_range(delta_prev, delta, W, m, j_lo, j_hi)
                m += 4
            for mm in range(m, m_hi):
                _backward_row_range(delta_prev[mm], delta[mm], W, j_lo, j_hi)
        for m in range(m_lo, m_hi):
            mul_fprime(delta_prev[m], z_prev[m], a_prev[m], act_prev)


@jit(**_OPTS)
def _corr_rows_range(dW, db, delta, a_prev, j0, nj, i_lo, i_hi, bias):
    """dW[j, i] += sum_m delta_mj a_mi for nj <= 4 units j from j0 and i in [i_lo, i_hi), 4
    samples per pass; with bias, db[j] += sum_m delta_mj too. Samples run m = 0..M-1 in
    groups of 4, then one by one, so every element is summed in one order whatever i block.
    Loops index slices from 0 (see _backward_row_range)."""
    M = a_prev.shape[0]
    n = i_hi - i_lo
    m = 0
    if nj == 4:
        r0, r1 = dW[j0, i_lo:i_hi], dW[j0 + 1, i_lo:i_hi]
        r2, r3 = dW[j0 + 2, i_lo:i_hi], dW[j0 + 3, i_lo:i_hi]
        while m + 4 <= M:
            x0, x1 = a_prev[m, i_lo:i_hi], a_prev[m + 1, i_lo:i_hi]
            x2, x3 = a_prev[m + 2, i_lo:i_hi], a_prev[m + 3, i_lo:i_hi]
            c00, c01, c02, c03 = delta[m, j0], delta[m + 1, j0], delta[m + 2, j0], delta[m + 3, j0]
            c10, c11, c12, c13 = (delta[m, j0 + 1], delta[m + 1, j0 + 1],
                                  delta[m + 2, j0 + 1], delta[m + 3, j0 + 1])
            c20, c21, c22, c23 = (delta[m, j0 + 2], delta[m + 1, j0 + 2],
                                  delta[m + 2, j0 + 2], delta[m + 3, j0 + 2])
            c30, c31, c32, c33 = (delta[m, j0 + 3], delta[m + 1, j0 + 3],
                                  delta[m + 2, j0 + 3], delta[m + 3, j0 + 3])
            for i in range(n):
                a0, a1, a2, a3 = x0[i], x1[i], x2[i], x3[i]
                r0[i] += c00 * a0 + c01 * a1 + c02 * a2 + c03 * a3
                r1[i] += c10 * a0 + c11 * a1 + c12 * a2 + c13 * a3
                r2[i] += c20 * a0 + c21 * a1 + c22 * a2 + c23 * a3
                r3[i] += c30 * a0 + c31 * a1 + c32 * a2 + c33 * a3
            if bias:
                for j in range(j0, j0 + 4):
                    db[j] += delta[m, j] + delta[m + 1, j] + delta[m + 2, j] + delta[m + 3, j]
            m += 4
    for mm in range(m, M):
        x = a_prev[mm, i_lo:i_hi]
        for j in range(j0, j0 + nj):
            row, d = dW[j, i_lo:i_hi], delta[mm, j]
            for i in range(n):
                row[i] += d * x[i]
            if bias:
                db[j] += d


def _corrections_update_tiled(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c, ju, ic):
    """Corrections dw_ij = mean_m a_i delta_j + alpha_n w_ij fused with the update rule
    (see _rule_row), cache-blocked.

    W, vW, sW, dW (N_l, N_{l-1}); b, vb, sb, db (N_l,); delta (M, N_l); a_prev (M, N_{l-1}).
    prange over blocks of ju output units j (a multiple of 4), each owning its rows of W, vW,
    sW, dW; inside a block, column blocks of ic inputs i: a_prev[:, i block] stays in cache
    while every 4-unit group of the block adds its samples (_corr_rows_range). Each row gets
    its update once all its sums are done. With one sample the correction goes straight into
    the update; dW is scratch and its contents afterwards are unspecified.
    """
    M, n_in = a_prev.shape
    n_out = delta.shape[1]
    zero = W.dtype.type(0.0)
    s = 1.0 / M
    an = c[8]
    for jb in prange((n_out + ju - 1) // ju):
        j_lo = jb * ju
        j_hi = min(n_out, j_lo + ju)
        if M == 1:
            x = a_prev[0]
            for j in range(j_lo, j_hi):
                _rule_row(rule, W[j], vW[j], sW[j], x, np.float64(delta[0, j]), an, c)
                db[j] = delta[0, j]
        else:
            for j in range(j_lo, j_hi):
                row = dW[j]
                for i in range(n_in):
                    row[i] = zero
                db[j] = zero
            for i_lo in range(0, n_in, ic):
                i_hi = min(n_in, i_lo + ic)
                for j0 in range(j_lo, j_hi, 4):
                    _corr_rows_range(dW, db, delta, a_prev, j0, min(4, j_hi - j0), i_lo, i_hi,
                                     i_lo == 0)
            for j in range(j_lo, j_hi):
                _rule_row(rule, W[j], vW[j], sW[j], dW[j], s, an, c)
                db[j] *= W.dtype.type(s)
        for j in range(j_lo, j_hi):
            _rule_at(rule, b, vb, sb, j, db[j], c)


# ---------------------------------------------------------------- GEMM path (large batches)
# The same three products for batches of GEMM_MIN_BATCH samples or more, organised as
# high-performance matrix multiplication is: one operand packed into contiguous panels of
# NR = 32 columns (zero-padded), and nnjit.microkernel.block summing a 3 x 32 block of outputs
# in registers over a block of kc terms k while its panel (kc x 32) stays in L1. Each product
# is C[r, c] = sum_k A[r, k] B[k, c] with A's rows contiguous in k:
#   feed-forward    z[m, j]   = sum_i a_prev[m, i] W[j, i]   A = a_prev, B = W^T packed
#   error recursion d_prev[m, j] = sum_k delta[m, k] W[k, j]  A = delta,  B = W packed
#   corrections     dW[j, i]  = sum_m delta[m, j] a_prev[m, i]  A = delta^T (packed), B = a_prev packed
# Every element is summed k = 0..K-1 in order whatever the blocks and threads.
# The feed-forward and corrections of a layer of fewer than NR units (an output layer of 10)
# run the tiled kernels' loops instead, inside the same parallel kernel (no second kernel to
# compile): padding 10 units to 32 tripled the work, packing a 1024 x 1024 a_prev for 10 rows
# of sums cost more than the sums, and 10 rows were one parallel step (measured at 1024
# inputs, batch 256-1024: 0.6-0.8 -> 0.26 us a sample forward, 0.7-1.7 -> 0.4-0.5
# corrections). Those results equal the tiled kernels' bit for bit. The error recursion
# keeps its panels: to 10 units from 1024 (K = 10) it runs as fast as the tiled loops.

#: rows a parallel packing step copies (_pack_rows, _transpose_rows; measured: 16-32 best)
PACK_ROWS = 32


@jit(**_OPTS)
def _pack_rows(P, X, k_lo, k_hi):
    """Rows k_lo .. k_hi - 1 of X into every panel: P[t K NR + k NR + c] = X[k, NR t + c]
    (zero past X's last column), K = X's rows. A row is read once, in order, and written as
    128-byte pieces of its panels (a panel at a time read 32 elements from each of K rows
    thousands of bytes apart, a page each: 1.3-5 ns an element for 1024 rows, as the TLB
    allowed)."""
    u = np.uint64
    K, n = u(X.shape[0]), u(X.shape[1])
    nr = u(NR)
    zero = P.dtype.type(0.0)
    for k in range(u(k_lo), u(k_hi)):
        for t in range((n + nr - u(1)) // nr):
            o = t * K * nr + k * nr
            c_hi = min(nr, n - nr * t)
            for c in range(c_hi):
                P[o + c] = X[k, nr * t + c]
            for c in range(c_hi, nr):
                P[o + c] = zero


@jit(**_OPTS)
def _pack_panel_t(P, X, t):
    """Panel t of X^T into P: P[t K NR + k NR + c] = X[NR t + c, k], K = X's columns
    (zero-padded past X's last row). Eight rows of X at a time, k in order: a step writes 8
    consecutive elements of P from 8 read streams (16 k of all 32 rows at a time, rows 4 KB
    apart collided in L1: 1.6-4 ns an element for a 1024-wide W, 0.4 ns this way)."""
    u = np.uint64
    n, K = u(X.shape[0]), u(X.shape[1])
    nr = u(NR)
    base = u(t) * K * nr
    zero = P.dtype.type(0.0)
    for c0 in range(u(0), nr, u(8)):
        for k in range(K):
            o = base + k * nr + c0
            for r in range(u(8)):
                c = nr * u(t) + c0 + r
                P[o + r] = X[c, k] if c < n else zero


@jit(**_OPTS)
def _transpose_rows(D, off, X, m_lo, m_hi):
    """D[off + j M + m] = X[m, j] for m_lo <= m < m_hi and every column j of X (M rows).
    Sixteen rows of X at a time (32 KB for 512 columns: they stay in L1 while j runs), a step
    writing 16 consecutive elements of D (a row of X at a time wrote streams M elements
    apart, 4 KB at M = 1024, in one L1 set: 7-9 ns an element; about 1 ns this way)."""
    u = np.uint64
    M, n = u(X.shape[0]), u(X.shape[1])
    m0, m_hi = u(m_lo), u(m_hi)
    while m0 + u(16) <= m_hi:
        for j in range(n):
            o = u(off) + j * M + m0
            for q in range(u(16)):
                D[o + q] = X[m0 + q, j]
        m0 += u(16)
    for j in range(n):
        for m in range(m0, m_hi):
            D[u(off) + j * M + m] = X[m, j]


@jit(**_OPTS)
def _gemm_rows(C, ldc, A, lda, P, r_lo, r_hi, n, K, kc):
    """C[r, c] = sum_k A[r, k] B[k, c] for rows r_lo <= r < r_hi and c < n; C, A flat with
    row strides ldc, lda; B (K x n) packed in panels of NR columns in P (_pack_rows). Blocks
    of kc terms k (the first block writes C, later ones go on from it), panels of NR columns,
    and micro-kernel calls of MR rows, in that loop order: a panel's kc x NR block is reused
    by every row block of the range while it is in L1. A block cut by the edge of C (fewer
    rows or columns) sums all K terms in its first call."""
    nt = (n + NR - 1) // NR
    u = np.uint64
    nkb = (K + kc - 1) // kc
    kc = (K + nkb - 1) // nkb          # equal blocks: K = 784 is 4 x 196, not 3 x 256 + 16
    for k0 in range(0, K, kc):
        for t in range(nt):
            nc = min(NR, n - NR * t)
            for r0 in range(r_lo, r_hi, MR):
                nr = min(MR, r_hi - r0)
                kk = min(kc, K - k0)
                if nr < MR or nc < NR:
                    if k0 > 0:
                        continue
                    kk = K
                pb = u(t * K * NR + k0 * NR)
                a0 = u(r0 * lda + k0)
                a1 = a0 + u(lda) if nr > 1 else a0
                a2 = a0 + u(2 * lda) if nr > 2 else a0
                _block(C, u(r0 * ldc + NR * t), u(ldc), nr, nc, A, a0, a1, a2, P, pb, u(kk),
                       k0 > 0)


def _forward_layer_gemm(z, a, a_prev, W, b, act, P, mc, kc):
    """Feed-forward z_j = sum_i w_ij a_i + b_j ; a_j = f(z_j) by packed panels of W^T.

    a_prev (M, N_{l-1}); W (N_l, N_{l-1}); b (N_l,); z, a (M, N_l); P scratch of at least
    ceil(N_l / NR) NR N_{l-1} elements. Two parallel loops: panels of W^T (a step packs one),
    then chunks of mc samples m (a step owns their rows of z and a). Fewer than NR units: no
    packing, and steps of 4 samples with the tiled kernel's sums (_dot_rows_range)."""
    M, n_in = a_prev.shape
    n_out = W.shape[0]
    narrow = n_out < NR     # the tiled kernel's loops, 4 samples a step (see the note above)
    if narrow:
        mc = 4              # (groups of 4 from 0 whatever mc: the same bits)
    if not narrow:
        for t in prange((n_out + NR - 1) // NR):
            _pack_panel_t(P, W, np.int64(t))     # prange indices are unsigned: one specialisation
    zf, af = z.reshape(z.size), a_prev.reshape(a_prev.size)
    for ch in prange((M + mc - 1) // mc):   # one parallel loop for both: each is a gufunc
        m_lo = ch * mc                      # Numba compiles (seconds)
        m_hi = min(M, m_lo + mc)
        if narrow:
            _dot_rows_range(z, a_prev, W, b, m_lo, m_hi - m_lo, int(0), n_out)
        else:
            _gemm_rows(zf, n_out, af, n_in, P, m_lo, m_hi, n_out, n_in, kc)
            for m in range(m_lo, m_hi):
                for j in range(n_out):
                    z[m, j] += b[j]
        for m in range(m_lo, m_hi):
            apply_f(a[m], z[m], act)


def _backward_layer_gemm(delta_prev, delta, W, z_prev, a_prev, act_prev, P, mc, kc):
    """Error recursion delta_j = f'(z_j) sum_k w_jk delta_k by packed panels of W.

    delta (M, N_{l+1}); W (N_{l+1}, N_l), W[k, j] = w_jk; delta_prev, z_prev, a_prev (M, N_l);
    P scratch of at least N_{l+1} ceil(N_l / NR) NR elements. Parallel loops: packing W
    (PACK_ROWS rows k a step), then chunks of mc samples m (a step owns their rows of
    delta_prev)."""
    M, n_out = delta.shape
    n_in = W.shape[1]
    for kb in prange((n_out + PACK_ROWS - 1) // PACK_ROWS):
        k0 = kb * PACK_ROWS
        _pack_rows(P, W, k0, min(n_out, k0 + PACK_ROWS))
    df, dpf = delta.reshape(delta.size), delta_prev.reshape(delta_prev.size)
    for ch in prange((M + mc - 1) // mc):
        m_lo = ch * mc
        m_hi = min(M, m_lo + mc)
        _gemm_rows(dpf, n_in, df, n_out, P, m_lo, m_hi, n_in, n_out, kc)
        for m in range(m_lo, m_hi):
            mul_fprime(delta_prev[m], z_prev[m], a_prev[m], act_prev)


@jit(**_OPTS)
def _sum8(x, o, n):
    """x[o] + ... + x[o + n - 1] in eight interleaved partial sums (m = r mod 8), added in a
    fixed order: the same bits whatever the blocks and threads, and eight independent
    additions in flight (one running sum waited on each addition's latency: ~1 ns an
    element, a millisecond of the corrections at 512 units x 1024 samples)."""
    z = x.dtype.type(0.0)
    t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = z
    u = np.uint64
    p, e = u(o), u(o) + u(n)
    while p + u(8) <= e:
        t0 += x[p]
        t1 += x[p + u(1)]
        t2 += x[p + u(2)]
        t3 += x[p + u(3)]
        t4 += x[p + u(4)]
        t5 += x[p + u(5)]
        t6 += x[p + u(6)]
        t7 += x[p + u(7)]
        p += u(8)
    t = ((t0 + t1) + (t2 + t3)) + ((t4 + t5) + (t6 + t7))
    while p < e:
        t += x[p]
        p += u(1)
    return t


def _corrections_update_gemm(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c, P, ju, kc):
    """Corrections dw_ij = mean_m a_i delta_j + alpha_n w_ij fused with the update rule
    (_rule_row), by packed panels of a_prev and delta^T.

    W, vW, sW, dW (N_l, N_{l-1}); b, vb, sb, db (N_l,); delta (M, N_l); a_prev (M, N_{l-1});
    P scratch of ceil(N_{l-1} / NR) NR M + N_l M elements: the panels of a_prev, then
    delta^T (N_l, M). Parallel loops: packing (PACK_ROWS samples m a step: their rows of
    a_prev into the panels, their columns of delta^T), then blocks of ju units j (a step
    owns their rows of W, vW, sW, dW and their biases; each row gets its update once its
    sums are done). Fewer than NR units: no packing, and steps of 4 units with the tiled
    kernel's sums over a_prev in place (_corr_rows_range)."""
    M, n_in = a_prev.shape
    n_out = delta.shape[1]
    s = 1.0 / M
    an = c[8]
    zero = W.dtype.type(0.0)
    narrow = n_out < NR     # the tiled kernel's loops, 4 units a step (see the note above)
    nt = (n_in + NR - 1) // NR
    off = nt * NR * M
    if not narrow:
        for mb in prange((M + PACK_ROWS - 1) // PACK_ROWS):
            m0 = mb * PACK_ROWS
            m1 = min(M, m0 + PACK_ROWS)
            _pack_rows(P, a_prev, m0, m1)
            _transpose_rows(P, off, delta, m0, m1)
    D = P[off:off + n_out * M]
    dWf = dW.reshape(dW.size)
    if narrow:
        ju = 4
    for jb in prange((n_out + ju - 1) // ju):     # one parallel loop for both (see forward)
        j_lo = jb * ju
        j_hi = min(n_out, j_lo + ju)
        if narrow:
            for j in range(j_lo, j_hi):
                row = dW[j]
                for i in range(n_in):
                    row[i] = zero
                db[j] = zero
            i0 = int(0)
            _corr_rows_range(dW, db, delta, a_prev, j_lo, j_hi - j_lo, i0, n_in, i0 == 0)
        else:
            _gemm_rows(dWf, n_in, D, M, P, j_lo, j_hi, n_in, M, kc)
            for j in range(j_lo, j_hi):
                db[j] = _sum8(D, j * M, M)        # db_j = sum_m delta_mj
        for j in range(j_lo, j_hi):
            _rule_row(rule, W[j], vW[j], sW[j], dW[j], s, an, c)
            db[j] *= W.dtype.type(s)
            _rule_at(rule, b, vb, sb, j, db[j], c)


def _update_forward_next(W, b, vW, vb, sW, sb, delta, x, x_next, z_next, rule, c):
    """Online learning, first layer: the update rule with dw_ij = x_i delta_j + alpha_n w_ij
    fused with the next sample's feed-forward sum z'_j = sum_i w_ij x'_i + b_j, computed
    from each row right after its update, while the row is still in cache: the weights are
    read once per sample instead of twice. The same numbers as update-then-forward, bit for
    bit (the sum is the shared fixed-order _dot).

    W, vW, sW (N_1, D); b, vb, sb, delta, z_next (N_1,); x, x_next (D,). prange over units j.
    """
    n_out = W.shape[0]
    an = c[8]
    for j in prange(n_out):
        _rule_row(rule, W[j], vW[j], sW[j], x, np.float64(delta[j]), an, c)
        _rule_at(rule, b, vb, sb, np.int64(j), delta[j], c)   # prange's j is unsigned: one
        z_next[j] = _dot(W[j], x_next) + b[j]                  # _rule_at specialisation, not two


# Each kernel twice: parallel, and serial for batches too small to pay for a parallel region.
forward_layer = jit(parallel=True, **_OPTS)(_forward_layer)
backward_layer = jit(parallel=True, **_OPTS)(_backward_layer)
corrections = jit(parallel=True, **_OPTS)(_corrections)
corrections_update = jit(parallel=True, **_OPTS)(_corrections_update)
update = jit(parallel=True, **_OPTS)(_update)
forward_layer_blocked = jit(parallel=True, **_OPTS)(_forward_layer_blocked)
forward_layer_units = jit(parallel=True, **_OPTS)(_forward_layer_units)
update_forward_next = jit(parallel=True, **_OPTS)(_update_forward_next)
backward_layer_blocked = jit(parallel=True, **_OPTS)(_backward_layer_blocked)
corrections_update_blocked = jit(parallel=True, **_OPTS)(_corrections_update_blocked)
forward_layer_tiled = jit(parallel=True, **_OPTS)(_forward_layer_tiled)
backward_layer_tiled = jit(parallel=True, **_OPTS)(_backward_layer_tiled)
corrections_update_tiled = jit(parallel=True, **_OPTS)(_corrections_update_tiled)
forward_layer_gemm = jit(parallel=True, **_OPTS)(_forward_layer_gemm)
backward_layer_gemm = jit(parallel=True, **_OPTS)(_backward_layer_gemm)
corrections_update_gemm = jit(parallel=True, **_OPTS)(_corrections_update_gemm)


def _serial(fn):
    """The serial twin of a prange kernel, compiled under a name of its own: Numba's disk
    cache files entries by function name and signature, not by the parallel flag, so twins
    sharing one name would load each other's machine code (a parallel region where a serial
    loop was meant, or worse)."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                              fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_serial"
    return jit(**_OPTS)(twin)


_forward_layer_s = _serial(_forward_layer_blocked)
_backward_layer_s = _serial(_backward_layer_blocked)
_corrections_update_s = _serial(_corrections_update_blocked)
_update_forward_next_s = _serial(_update_forward_next)
_forward_layer_tiled_s = _serial(_forward_layer_tiled)
_backward_layer_tiled_s = _serial(_backward_layer_tiled)
_corrections_update_tiled_s = _serial(_corrections_update_tiled)


# ---------------------------------------------------------------- the output layer
@jit(**_OPTS)
def weight_sum(sw):
    """sum_m s_m in the fixed order m = 0..M-1 (the batch's weight, n_batch unweighted)."""
    t = 0.0
    for m in range(sw.shape[0]):
        t += sw[m]
    return t


@jit(**_OPTS)
def output_error(delta, a, z, y, sw, act, loss):
    """Output error delta^L = dC/dz^L, exact for every output/loss pair, times the sample
    weight factor s_m M / sum_m s_m (exactly 1 for unit weights).

    delta_out = a - y; then delta^L = delta_out for the canonical pairs (softmax with
    cross-entropy, sigmoid with binary cross-entropy, identity with squared error),
    f'(z) delta_out for squared error with an elementwise f, and the full Jacobian
    delta_k = a_k (delta_out_k - sum_k' a_k' delta_out_k') for softmax with squared error.
    The error recursion is linear in delta, so the weight factor here turns every layer's
    batch mean (1/M) sum_m into the weighted mean sum_m s_m (.) / sum_m s_m.
    a, z, y, delta (M, N_L); sw (M,). Serial: O(M K) work is smaller than a parallel region.
    """
    M, K = a.shape
    S = weight_sum(sw)
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
        f = delta.dtype.type(sw[m] * M / S if S > 0 else 0.0)
        if f != 1.0:
            for k in range(K):
                delta[m, k] *= f


@jit(**_OPTS)
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
@jit(**_VIEW_OPTS)
def _params(theta, shape, l):
    """Views W^(l) (N_l, N_{l-1}) and b^(l) (N_l,) into a flat parameter buffer."""
    n_out, n_in = shape.sizes[l], shape.sizes[l - 1]
    W = theta[shape.w_off[l - 1]:shape.w_off[l - 1] + n_out * n_in].reshape((n_out, n_in))
    b = theta[shape.b_off[l - 1]:shape.b_off[l - 1] + n_out]
    return W, b


@jit(**_VIEW_OPTS)
def _rows(buf, shape, l, mb):
    """Layer l's (mb, N_l) block of a batch buffer laid out by shape's a_off."""
    cap = buf.shape[0] // shape.a_off[-1]
    off = shape.a_off[l] * cap
    return buf[off:off + mb * shape.sizes[l]].reshape((mb, shape.sizes[l]))


@jit(**_VIEW_OPTS)
def _targets(bufs, shape, mb):
    K = shape.sizes[-1]
    return bufs.y[:mb * K].reshape((mb, K))



def _counted(fn):
    """fn compiled with reference counting under a name of its own (see _serial)."""
    twin = types.FunctionType(fn.py_func.__code__, fn.py_func.__globals__,
                              fn.py_func.__name__ + "_rc")
    twin.__qualname__ = fn.py_func.__qualname__ + "_rc"
    return jit(**_RC_OPTS)(twin)


_params_rc, _rows_rc, _targets_rc = _counted(_params), _counted(_rows), _counted(_targets)

@jit(**_OPTS)
def _blocks(tile, n_out, n_in):
    """A layer's block sizes (forward mc, nc; error recursion mc, nc; corrections ju, ic) for
    W (n_out, n_in): tile[:6] when W has at least tile[6] > 0 elements (a size 0 there: the
    whole layer), else (4, n_out, 4, n_in, 4, n_in), the register-blocked kernels' loops
    (with 4 samples a pass in the error recursion). See config.TILE_*."""
    if tile[6] > 0 and n_out * n_in >= tile[6]:
        return (tile[0], tile[1] if tile[1] > 0 else n_out, tile[2],
                tile[3] if tile[3] > 0 else n_in, tile[4], tile[5] if tile[5] > 0 else n_in)
    return 4, n_out, 4, n_in, 4, n_in


#: tile value that turns cache blocking and the GEMM path off (see _blocks, epoch_mode)
NO_TILE = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def gemm_need(n_out, n_in, M, train):
    """Scratch elements the GEMM path needs for a layer W (n_out, n_in) at batch M: the
    panels of W^T (feed-forward); for training also those of W (error recursion), and those
    of a_prev with delta^T (corrections), the largest of the three."""
    f = (n_out + NR - 1) // NR * NR * n_in
    if not train:
        return f
    return max(f, n_out * ((n_in + NR - 1) // NR * NR), ((n_in + NR - 1) // NR * NR + n_out) * M)


@jit(**_OPTS)
def forward(theta, shape, bufs, mb, par, par_work, l0):
    """Feed-forward through layers l0..L for the mb samples already in layer l0-1 of bufs
    (prediction, scoring, gradients; the epoch has its own). Always the parallel kernel split
    by samples: a region costs microseconds, and one kernel instead of three (serial, by
    units) is seconds less to compile on a first predict. par and par_work mean nothing here
    (the other forms' signature). (No default arguments: Numba's dispatcher takes a slow
    path, ~100 us, for omitted ones.)"""
    L = shape.sizes.shape[0] - 1
    for l in range(l0, L + 1):
        W, b = _params(theta, shape, l)
        a_prev = _rows(bufs.a, shape, l - 1, mb)
        z, a = _rows(bufs.z, shape, l, mb), _rows(bufs.a, shape, l, mb)
        # int(4): a literal 4 would make Numba compile a second specialisation of the kernel
        forward_layer_tiled(z, a, a_prev, W, b, shape.acts[l - 1], int(4), W.shape[0])


@jit(**_OPTS)
def backprop(theta, grad, shape, bufs, mb, loss, alpha):
    """Gradient of the (weighted) mean cost plus alpha/(2 sum_m s_m) sum ||W||^2 over the
    batch into grad, after forward(): output error, then for l = L..1 the corrections of
    layer l and the error recursion to layer l-1."""
    acts = shape.acts
    L = shape.sizes.shape[0] - 1
    sw = bufs.s[:mb]
    S = weight_sum(sw)
    an = alpha / S if S > 0 else 0.0
    output_error(_rows(bufs.delta, shape, L, mb), _rows(bufs.a, shape, L, mb),
                 _rows(bufs.z, shape, L, mb), _targets(bufs, shape, mb), sw, acts[L - 1], loss)
    for l in range(L, 0, -1):
        W, b = _params(theta, shape, l)
        dW, db = _params(grad, shape, l)
        delta, a_prev = _rows(bufs.delta, shape, l, mb), _rows(bufs.a, shape, l - 1, mb)
        corrections(dW, db, delta, a_prev, 1.0 / mb, W, an)
        if l > 1:
            backward_layer(_rows(bufs.delta, shape, l - 1, mb), delta, W,
                           _rows(bufs.z, shape, l - 1, mb), a_prev, acts[l - 2])


@jit(**_OPTS)
def load_batch(bufs, shape, X, Y, S, order, start, mb):
    """Copy samples order[start:start+mb] into layer 0, the targets and the weight row.
    (Flat offsets, as _rows and _targets lay them out, rather than their views: inlining
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


@jit(**_OPTS)
def penalty(theta, shape):
    """sum_l ||W^(l)||^2 over the weights (not the biases), for the L2 term of the cost."""
    t = 0.0
    for l in range(1, shape.sizes.shape[0]):
        W, _ = _params(theta, shape, l)
        for j in range(W.shape[0]):
            for i in range(W.shape[1]):
                t += W[j, i] * W[j, i]
    return t


#: Which kernels _train_epoch runs: a module constant, not an option. Each twin of it is
#: compiled with its own value, so Numba prunes the other branches and a fit compiles only
#: the kernels its batch size runs (a shorter first compile):
#: _ONLINE (batch_size < par_min; one sample is a batch of 1): the per-sample kernels run
#: serially and the first layer's update is fused with the next sample's feed-forward;
#: _ONLINE_WIDE: the same, with a layer wide enough (N_l N_{l-1} batch_size >= par_work) in
#: parallel (a network with no such layer does not compile the three parallel kernels);
#: _TILED: the parallel cache-blocked kernels; _GEMM (batch_size >= tile[7] and scratch for
#: every layer): the GEMM path for every layer.
_ONLINE, _TILED, _GEMM, _ONLINE_WIDE = 0, 1, 2, 3
_MODE = _TILED


def epoch_mode(shape, bufs, batch_size, par_min, tile, par_work=None):
    """Which twin of _train_epoch runs a fit (see _MODE); par_work None: as if a layer were
    wide (_ONLINE_WIDE rather than _ONLINE)."""
    if batch_size == 1 or batch_size < par_min:
        sizes = [int(x) for x in shape.sizes]
        widest = max(o * i for i, o in zip(sizes[:-1], sizes[1:]))
        return _ONLINE if par_work is not None and widest * batch_size < par_work else _ONLINE_WIDE
    if 0 < tile[7] <= batch_size and bufs.p.shape[0] >= gemm_scratch(shape.sizes, batch_size):
        return _GEMM
    return _TILED


def gemm_scratch(sizes, M):
    """Scratch elements the GEMM path needs for a network of these sizes at batch M."""
    return max([gemm_need(int(o), int(i), int(M), True) for i, o in zip(sizes[:-1], sizes[1:])] + [0])


def train_epoch(theta, vel, sq, step, grad, shape, bufs, X, Y, S, order, batch_size, rule,
                hyper, loss, par_min, par_work, tile):
    """One epoch (see _train_epoch) in the twin compiled for this batch size (epoch_mode)."""
    fn = _EPOCH[epoch_mode(shape, bufs, batch_size, par_min, tile, par_work)]
    return fn(theta, vel, sq, step, grad, shape, bufs, X, Y, S, order, batch_size, rule,
              hyper, loss, par_min, par_work, tile)


def _train_epoch(theta, vel, sq, step, grad, shape, bufs, X, Y, S, order, batch_size, rule,
                 hyper, loss, par_min, par_work, tile):
    """One epoch of the lecture's algorithm, every batch inside compiled code: for each
    batch, feed-forward, output error (weighted by S), then from l = L down to 1 the error
    recursion to layer l-1 (with W^(l) before its update) and the fused correction + update
    (rule, hyper: see step_coefs) of layer l. step[0] counts the updates (Adam's t); a batch
    whose weights sum to 0 makes none. Returns (sum_m s_m C_m + sum over batches of
    alpha/2 ||W||^2 before the batch's update, max |a - y|): the wrapper divides by sum_m s_m.

    par_min: batches of fewer samples run the per-sample kernels serially (_ONLINE twin);
    par_work: there, a layer runs in parallel anyway once N_l N_{l-1} mb reaches it; tile:
    the cache-blocked kernels' block sizes and the layer size from which they block
    (_blocks), and the GEMM path's (tile[8:11]; nnjit.config.tiles())."""
    acts = shape.acts
    L = shape.sizes.shape[0] - 1
    n = order.shape[0]
    alpha = hyper[H_ALPHA]
    total = 0.0
    emax = 0.0
    ahead = False          # online: is z^(1) of this sample already computed (fused)?
    for start in range(0, n, batch_size):
        mb = min(batch_size, n - start)
        load_batch(bufs, shape, X, Y, S, order, start, mb)
        l0 = int(1)    # int(): a literal 1 passed on would compile another _rows_rc
        if ahead:      # (l0 and mb are 1)
            apply_f(_rows(bufs.a, shape, l0, mb)[0], _rows(bufs.z, shape, l0, mb)[0], acts[0])
            l0 = 2
        for l in range(l0, L + 1):                       # feed-forward
            W, b = _params(theta, shape, l)
            a_prev = _rows(bufs.a, shape, l - 1, mb)
            z, a = _rows(bufs.z, shape, l, mb), _rows(bufs.a, shape, l, mb)
            mc, nc, _, _, _, _ = _blocks(tile, W.shape[0], W.shape[1])
            if _MODE == _GEMM:
                forward_layer_gemm(z, a, a_prev, W, b, acts[l - 1], bufs.p, tile[8], tile[9])
            elif _MODE == _TILED:
                forward_layer_tiled(z, a, a_prev, W, b, acts[l - 1], mc, nc)
            elif _MODE == _ONLINE_WIDE and W.size * mb >= par_work:
                forward_layer_units(z, a, a_prev, W, b, acts[l - 1])
            else:
                _forward_layer_tiled_s(z, a, a_prev, W, b, acts[l - 1], mc, nc)
        aL, zL = _rows(bufs.a, shape, L, mb), _rows(bufs.z, shape, L, mb)
        y = _targets(bufs, shape, mb)
        costs, sw = bufs.cost[:mb], bufs.s[:mb]
        emax = max(emax, sample_loss(costs, aL, zL, y, acts[L - 1], loss))
        for m in range(mb):
            total += sw[m] * costs[m]
        Sb = weight_sum(sw)
        ahead = False
        if Sb <= 0.0:      # only zero-weight samples: nothing to learn from this batch
            continue
        if alpha > 0.0:
            total += 0.5 * alpha * penalty(theta, shape)
        step[0] += 1
        c = step_coefs(rule, hyper, step[0], alpha / Sb)
        output_error(_rows(bufs.delta, shape, L, mb), aL, zL, y, sw, acts[L - 1], loss)
        for l in range(L, 0, -1):
            W, b = _params(theta, shape, l)
            vW, vb = _params(vel, shape, l)
            sW, sb = _params(sq, shape, l)
            dW, db = _params(grad, shape, l)
            delta, a_prev = _rows(bufs.delta, shape, l, mb), _rows(bufs.a, shape, l - 1, mb)
            _, _, mc, nc, ju, ic = _blocks(tile, W.shape[0], W.shape[1])
            if l > 1:       # error recursion first: it needs W^(l) before the update
                d_prev, z_prev = _rows(bufs.delta, shape, l - 1, mb), _rows(bufs.z, shape, l - 1, mb)
                if _MODE == _GEMM:
                    backward_layer_gemm(d_prev, delta, W, z_prev, a_prev, acts[l - 2], bufs.p,
                                        tile[8], tile[9])
                elif _MODE == _TILED:
                    backward_layer_tiled(d_prev, delta, W, z_prev, a_prev, acts[l - 2], mc, nc)
                else:
                    _backward_layer_tiled_s(d_prev, delta, W, z_prev, a_prev, acts[l - 2], mc, nc)
            if _MODE == _GEMM:
                corrections_update_gemm(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c,
                                        bufs.p, tile[10], tile[9])
            elif _MODE == _TILED:
                corrections_update_tiled(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c,
                                         ju, ic)
            else:
                ahead = l == 1 and batch_size == 1 and start + 1 < n
                if ahead:   # online: fuse the next sample's z^(1) into this update
                    x_next, z_next = X[order[start + 1]], _rows(bufs.z, shape, l, mb)[0]
                    if _MODE == _ONLINE_WIDE and W.size >= par_work:
                        update_forward_next(W, b, vW, vb, sW, sb, delta[0], a_prev[0], x_next,
                                            z_next, rule, c)
                    else:
                        _update_forward_next_s(W, b, vW, vb, sW, sb, delta[0], a_prev[0],
                                               x_next, z_next, rule, c)
                elif _MODE == _ONLINE_WIDE and W.size * mb >= par_work:   # pays for a region
                    corrections_update_tiled(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule,
                                             c, ju, ic)
                else:
                    _corrections_update_tiled_s(W, b, vW, vb, sW, sb, dW, db, delta, a_prev,
                                                rule, c, ju, ic)
    return total, emax


def _twin(fn, suffix, opts, **consts):
    """fn compiled under its own name (see _serial) with module globals replaced: Numba
    freezes globals at compile time and prunes branches on them."""
    g = dict(fn.__globals__)
    g.update(consts)
    twin = types.FunctionType(fn.__code__, g, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + suffix
    twin.__doc__ = fn.__doc__
    return jit(**opts)(twin)


# The online twin runs without reference counting, its views inlined (a sample is ~4 us, and
# the counts of ~30 views a sample cost ~1 of them); the batch twins count references and call
# the counted view helpers: a view per layer per batch costs nothing there, and Numba's IR
# inlining of ~25 view calls added 3.5 s to each twin's first compile.
_EPOCH = {_ONLINE: _twin(_train_epoch, "_online", _OPTS, _MODE=_ONLINE),
          _ONLINE_WIDE: _twin(_train_epoch, "_online_wide", _OPTS, _MODE=_ONLINE_WIDE),
          _TILED: _twin(_train_epoch, "_batch", _RC_OPTS, _MODE=_TILED, _params=_params_rc,
                        _rows=_rows_rc, _targets=_targets_rc),
          _GEMM: _twin(_train_epoch, "_gemm", _RC_OPTS, _MODE=_GEMM, _params=_params_rc,
                       _rows=_rows_rc, _targets=_targets_rc)}
