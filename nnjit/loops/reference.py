"""The loop form's reference kernels: the lecture's per-unit equations, one plain loop nest each.

These are the readable versions, kept beside the fast ones (llm.c's habit): the blocked,
tiled and GEMM kernels (nnjit.loops.blocked, .gemm) compute the same sums, and the tests hold
every one of them to these and to the vectorised twins. Index names are the lecture's: ``m``
sample, ``i`` unit of layer l-1, ``j`` unit of layer l, ``k`` unit of layer l+1; ``W[j, i]``
is w_ij of layer l (rows j); batches are rows. Every kernel writes into arrays it is given.

Parallel axes are chosen per output, so a ``prange`` iteration writes only memory it owns:
feed-forward and the error recursion over samples m (a row of z, a, δ each), the corrections
over output units j (a row of dW each). Every sum runs in a fixed order, so the result does
not depend on the thread count.
"""
from numba import prange

from ..jit import jit
from .rows import (apply_f, check_act, check_rule, cost, max_error, mul_fprime, rule_at,
                   rule_row, output_error as output_error_row)
from .views import OPTS, params


@jit(parallel=True, **OPTS)
def forward_layer(z, a, a_prev, W, b, act):
    """Feed-forward: z_j = sum_i w_ij a_i + b_j ;  a_j = f(z_j).

    a_prev (M, N_{l-1}); W (N_l, N_{l-1}); b (N_l,); z, a (M, N_l). prange over samples m.
    """
    check_act(act)
    M, n_in = a_prev.shape
    n_out = W.shape[0]
    for m in prange(M):
        for j in range(n_out):
            s = b[j]
            for i in range(n_in):          # contiguous in W[j, :] and a_prev[m, :]: SIMD
                s += W[j, i] * a_prev[m, i]
            z[m, j] = s
        apply_f(a[m], z[m], act)


@jit(parallel=True, **OPTS)
def backward_layer(delta_prev, delta, W, z_prev, a_prev, act_prev):
    """Error recursion: delta_j = f'(z_j) sum_k w_jk delta_k.

    delta (M, N_{l+1}) is delta^(l+1); W (N_{l+1}, N_l) is W^(l+1), so W[k, j] = w_jk;
    z_prev, a_prev, delta_prev (M, N_l) are layer l's. prange over samples m.
    """
    check_act(act_prev)
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


@jit(parallel=True, **OPTS)
def corrections(dW, db, delta, a_prev, scale, W, an):
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


@jit(parallel=True, **OPTS)
def corrections_update(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c):
    """Corrections fused with the update rule, one row j at a time while it is in cache:
    dw_ij = mean_m a_i delta_j + alpha_n w_ij, then the rule (nnjit.rules, c its Coefs) on
    w_ij and b_j.

    W, vW, sW, dW (N_l, N_{l-1}); b, vb, sb, db (N_l,); delta (M, N_l); a_prev (M, N_{l-1}).
    prange over output units j.
    """
    check_rule(rule)
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
        rule_row(rule, W[j], vW[j], sW[j], row, s, c.alpha_n, c)
        db[j] = bsum * W.dtype.type(s)
        rule_at(rule, b, vb, sb, j, db[j], c)


@jit(parallel=True, **OPTS)
def update(theta, vel, sq, grad, rule, c):
    """The update rule on every parameter (flat (P,) theta, vel, sq, grad), for gradients
    added up outside the epoch (streamed or Dask full batches); grad already holds any L2
    term, so c's alpha_n is not used. prange over blocks of the flat index."""
    check_rule(rule)
    n = theta.shape[0]
    for blk in prange((n + 1023) // 1024):
        lo = blk * 1024
        hi = min(n, lo + 1024)
        rule_row(rule, theta[lo:hi], vel[lo:hi], sq[lo:hi], grad[lo:hi], 1.0, 0.0, c)


# ---------------------------------------------------------------- the output layer
@jit(**OPTS)
def weight_sum(sw):
    """sum_m s_m in the fixed order m = 0..M-1 (the batch's weight, n_batch unweighted)."""
    t = 0.0
    for m in range(sw.shape[0]):
        t += sw[m]
    return t


@jit(**OPTS)
def output_error(delta, a, z, y, sw, act, loss):
    """Output error delta^L = dC/dz^L, exact for every output/loss pair (nnjit.activations),
    times the sample weight factor s_m M / sum_m s_m (exactly 1 for unit weights): the error
    recursion is linear in delta, so this factor turns every layer's batch mean (1/M) sum_m
    into the weighted mean sum_m s_m (.) / sum_m s_m.
    a, z, y, delta (M, N_L); sw (M,). Serial: O(M K) work is smaller than a parallel region.
    """
    M = a.shape[0]
    S = weight_sum(sw)
    for m in range(M):
        w = delta.dtype.type(sw[m] * M / S if S > 0 else 0.0)
        output_error_row(delta, a, z, y, m, act, loss, w)


@jit(**OPTS)
def sample_loss(out, a, z, y, act, loss):
    """Per-sample cost C_m into out (M,) (nnjit.activations.cost); returns max_m,k |a - y|,
    the stop criterion's error."""
    emax = a.dtype.type(0.0)
    for m in range(a.shape[0]):
        out[m] = cost(a, z, y, m, act, loss)
        emax = max(emax, max_error(a, y, m))
    return emax


@jit(**OPTS)
def penalty(theta, shape):
    """sum_l ||W^(l)||^2 over the weights (not the biases), for the L2 term of the cost."""
    return penalty_from(theta, shape, int(1))


@jit(**OPTS)
def penalty_from(theta, shape, l0):
    """sum_l ||W^(l)||^2 for l = l0..L."""
    t = 0.0
    for l in range(l0, shape.sizes.shape[0]):
        W, _ = params(theta, shape, l)
        for j in range(W.shape[0]):
            for i in range(W.shape[1]):
                t += W[j, i] * W[j, i]
    return t
