"""The loop form's fast kernels for small and medium products: the reference kernels'
equations (nnjit.loops.reference), with the loops reorganised so each load serves several
sums, and cache blocking for layers wider than L2.

Register blocking: each weight load serves 4 samples and each sample load serves 2 units (a
block of sums held in registers), so the inner loops do several multiply-adds per load
instead of 1 per 2. Cache blocking: for a wide layer (W^(l) larger than L2) a block of W (or
of the activations) stays in the core's L2 while a chunk of samples (or a block of units)
passes over it; block sizes come from nnjit.config (TILE_*) as plain values. Every element is
summed in one fixed order whatever the blocks and threads, so results do not depend on them.

Each parallel kernel has a serial twin (``*_serial``) for batches too small to pay for a
parallel region, compiled under a name of its own (see nnjit.loops.views.renamed). The tiled
kernels also take ``serial``: a batch's layer too small for a region (N_l N_{l-1} mb below
config.PARALLEL_MIN_WORK) runs the same chunks one after another in the parallel kernel
itself, so a batch fit compiles no serial twin (seconds of a first fit).
"""
import numpy as np
from numba import prange

from ..jit import jit
from .rows import apply_f, check_act, check_rule, mul_fprime, online_row, rule_at, rule_row
from .simd import dot
from .views import OPTS, renamed


@jit(**OPTS)
def blocks(tile, n_out, n_in):
    """A layer's block sizes (forward mc, nc; error recursion mc, nc; corrections ju, ic) for
    W (n_out, n_in): the tiles' when W has at least min_weights > 0 elements (a size 0 there:
    the whole layer), else (4, n_out, 4, n_in, 4, n_in), the register-blocked loops (with 4
    samples a pass in the error recursion). See config.TILE_*."""
    if tile.min_weights > 0 and n_out * n_in >= tile.min_weights:
        return (tile.fwd_mc, tile.fwd_nc if tile.fwd_nc > 0 else n_out, tile.bwd_mc,
                tile.bwd_nc if tile.bwd_nc > 0 else n_in, tile.corr_ju,
                tile.corr_ic if tile.corr_ic > 0 else n_in)
    return 4, n_out, 4, n_in, 4, n_in


@jit(**OPTS)
def dot_rows_range(z, a_prev, W, b, m0, nm, j_lo, j_hi):
    """z[m0:m0+nm, j_lo:j_hi] = a_prev[m0:m0+nm] W[j_lo:j_hi]^T + b[j_lo:j_hi] for nm <= 4
    samples, 2 units at a time from j_lo (the units left over use the fixed-order
    nnjit.loops.simd.dot).
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
            z[m, jj] = dot(W[jj], x)
    for m in range(m0, m0 + nm):
        for jj in range(j_lo, j_hi):
            z[m, jj] += b[jj]


@jit(parallel=True, **OPTS)
def forward_layer_units(z, a, a_prev, W, b, act):
    """Feed-forward for a batch too small to split by samples (online learning): prange over
    units j instead; a step owns z[:, j]. z_j = dot(w_j, a) + b_j, the order the fused online
    update uses too (update_forward_next). Then a_j = f(z_j) row by row.

    a_prev (M, N_{l-1}); W (N_l, N_{l-1}); b (N_l,); z, a (M, N_l).
    """
    check_act(act)
    M = a_prev.shape[0]
    n_out = W.shape[0]
    for j in prange(n_out):
        for m in range(M):
            z[m, j] = dot(W[j], a_prev[m]) + b[j]
    for m in range(M):
        apply_f(a[m], z[m], act)


@jit(**OPTS)
def backward_row_range(row, d, W, j_lo, j_hi):
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


@jit(**OPTS)
def backward_rows4_range(delta_prev, delta, W, m0, j_lo, j_hi):
    """backward_row_range for the 4 samples m0..m0+3 at once: each load of w_jk serves 4
    samples. Every element gets the same sum, in the same order, as from backward_row_range."""
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


# ---------------------------------------------------------------- cache-blocked kernels
# The same sums as the register-blocked kernels above, element for element and in the same
# order, with the loops reordered so a block of W (or of the activations) stays in the
# core's L2 cache while a chunk of samples (or a block of units) passes over it: for a wide
# layer (W^(l) larger than L2) the blocked kernels stream all of W from L3 or memory for
# every 4 samples, and the memory bus, not the multiply-adds, bounds them. Block sizes come
# from nnjit.config (TILE_*) as plain values; with mc = 4 (1 for the error recursion) and a
# block as wide as the layer they are the blocked kernels' loops exactly.

@jit(**OPTS)
def forward_chunk(z, a, a_prev, W, b, act, m_lo, m_hi, nc):
    """forward_layer_tiled's work for the samples m_lo..m_hi-1: blocks of nc units j, every
    4-sample group summed against them (dot_rows_range), then a = f(z) row by row."""
    n_out = W.shape[0]
    for j_lo in range(0, n_out, nc):
        j_hi = min(n_out, j_lo + nc)
        for m0 in range(m_lo, m_hi, 4):
            dot_rows_range(z, a_prev, W, b, m0, min(4, m_hi - m0), j_lo, j_hi)
    for m in range(m_lo, m_hi):
        apply_f(a[m], z[m], act)


@jit(parallel=True, **OPTS)
def forward_layer_tiled(z, a, a_prev, W, b, act, mc, nc, serial):
    """Feed-forward z_j = sum_i w_ij a_i + b_j ; a_j = f(z_j), cache-blocked.

    a_prev (M, N_{l-1}); W (N_l, N_{l-1}); b (N_l,); z, a (M, N_l). prange over chunks of mc
    samples m (mc a multiple of 4), each owning its rows of z and a; inside a chunk, blocks
    of nc units j (a multiple of 4): nc rows of W stay in cache while every 4-sample group
    of the chunk is summed against them (the 4 x 4 register block of dot_rows_range).
    serial: the chunks one after another, no parallel region (it costs ~6 us, more than a
    small layer's whole product: the caller decides, see nnjit.loops.train_epoch).
    """
    check_act(act)
    M = a_prev.shape[0]
    n = (M + mc - 1) // mc
    if serial:
        for ch in range(n):
            forward_chunk(z, a, a_prev, W, b, act, ch * mc, min(M, ch * mc + mc), nc)
    else:
        for ch in prange(n):
            forward_chunk(z, a, a_prev, W, b, act, ch * mc, min(M, ch * mc + mc), nc)


@jit(**OPTS)
def backward_chunk(delta_prev, delta, W, z_prev, a_prev, act_prev, m_lo, m_hi, nc):
    """backward_layer_tiled's work for the samples m_lo..m_hi-1: blocks of nc units j, 4
    samples a pass (backward_rows4_range), the rest one by one; then the rows times f'."""
    n_in = W.shape[1]
    for j_lo in range(0, n_in, nc):
        j_hi = min(n_in, j_lo + nc)
        m = m_lo
        while m + 4 <= m_hi:
            backward_rows4_range(delta_prev, delta, W, m, j_lo, j_hi)
            m += 4
        for mm in range(m, m_hi):
            backward_row_range(delta_prev[mm], delta[mm], W, j_lo, j_hi)
    for m in range(m_lo, m_hi):
        mul_fprime(delta_prev[m], z_prev[m], a_prev[m], act_prev)


@jit(parallel=True, **OPTS)
def backward_layer_tiled(delta_prev, delta, W, z_prev, a_prev, act_prev, mc, nc, serial):
    """Error recursion delta_j = f'(z_j) sum_k w_jk delta_k, cache-blocked.

    delta (M, N_{l+1}); W (N_{l+1}, N_l), W[k, j] = w_jk; delta_prev, z_prev, a_prev (M, N_l).
    prange over chunks of mc samples m, each owning its rows of delta_prev; inside a chunk,
    blocks of nc units j: the columns W[:, j block] stay in cache for every sample of the
    chunk, and each load of w_jk serves 4 samples (backward_rows4_range). Sums over k as in
    backward_row_range, whatever the blocks. serial: as in forward_layer_tiled.
    """
    check_act(act_prev)
    M = delta.shape[0]
    n = (M + mc - 1) // mc
    if serial:
        for ch in range(n):
            backward_chunk(delta_prev, delta, W, z_prev, a_prev, act_prev, ch * mc,
                           min(M, ch * mc + mc), nc)
    else:
        for ch in prange(n):
            backward_chunk(delta_prev, delta, W, z_prev, a_prev, act_prev, ch * mc,
                           min(M, ch * mc + mc), nc)


@jit(**OPTS)
def corr_rows_range(dW, db, delta, a_prev, j0, nj, i_lo, i_hi, bias):
    """dW[j, i] += sum_m delta_mj a_mi for nj <= 4 units j from j0 and i in [i_lo, i_hi), 4
    samples per pass; with bias, db[j] += sum_m delta_mj too. Samples run m = 0..M-1 in
    groups of 4, then one by one, so every element is summed in one order whatever i block.
    Loops index slices from 0 (see backward_row_range)."""
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


@jit(**OPTS)
def corrections_update_units(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c, j_lo, j_hi,
                             ic):
    """corrections_update_tiled's work for the units j_lo..j_hi-1 (it owns their rows)."""
    M, n_in = a_prev.shape
    zero = W.dtype.type(0.0)
    s = 1.0 / M
    an = c.alpha_n
    if M == 1:
        x = a_prev[0]
        for j in range(j_lo, j_hi):
            rule_row(rule, W[j], vW[j], sW[j], x, np.float64(delta[0, j]), an, c)
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
                corr_rows_range(dW, db, delta, a_prev, j0, min(4, j_hi - j0), i_lo, i_hi,
                                i_lo == 0)
        for j in range(j_lo, j_hi):
            rule_row(rule, W[j], vW[j], sW[j], dW[j], s, an, c)
            db[j] *= W.dtype.type(s)
    for j in range(j_lo, j_hi):
        rule_at(rule, b, vb, sb, j, db[j], c)


@jit(parallel=True, **OPTS)
def corrections_update_tiled(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c, ju, ic,
                             serial):
    """Corrections dw_ij = mean_m a_i delta_j + alpha_n w_ij fused with the update rule
    (nnjit.loops.rows.rule_row), cache-blocked.

    W, vW, sW, dW (N_l, N_{l-1}); b, vb, sb, db (N_l,); delta (M, N_l); a_prev (M, N_{l-1}).
    prange over blocks of ju output units j (a multiple of 4), each owning its rows of W, vW,
    sW, dW; inside a block, column blocks of ic inputs i: a_prev[:, i block] stays in cache
    while every 4-unit group of the block adds its samples (corr_rows_range). Each row gets
    its update once all its sums are done. With one sample the correction goes straight into
    the update; dW is scratch and its contents afterwards are unspecified. serial: as in
    forward_layer_tiled.
    """
    check_rule(rule)
    n_out = delta.shape[1]
    n = (n_out + ju - 1) // ju
    if serial:
        for jb in range(n):
            corrections_update_units(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c,
                                     jb * ju, min(n_out, jb * ju + ju), ic)
    else:
        for jb in prange(n):
            corrections_update_units(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c,
                                     jb * ju, min(n_out, jb * ju + ju), ic)


@jit(parallel=True, **OPTS)
def update_forward_next(W, b, vW, vb, sW, sb, delta, x, x_next, z_next, rule, c):
    """Online learning, first layer: the update rule with dw_ij = x_i delta_j + alpha_n w_ij
    fused with the next sample's feed-forward sum z'_j = sum_i w_ij x'_i + b_j, computed
    from each row right after its update, while the row is still in cache: the weights are
    read once per sample instead of twice. The same numbers as update-then-forward, bit for
    bit (the sum is the shared fixed-order dot).

    W, vW, sW (N_1, D); b, vb, sb, delta, z_next (N_1,); x, x_next (D,). prange over units j.
    """
    check_rule(rule)
    n_out = W.shape[0]
    an = c.alpha_n
    for j in prange(n_out):
        online_row(rule, W[j], vW[j], sW[j], x, np.float64(delta[j]), an, c)
        rule_at(rule, b, vb, sb, np.int64(j), delta[j], c)   # prange's j is unsigned: one
        z_next[j] = dot(W[j], x_next) + b[j]                  # rule_at specialisation, not two


# The serial twins inline the chunk helpers into their own IR (Numba's inlining): an online
# first fit then compiles no helper of its own (6.7-6.9 s instead of 7.7-8.2); the parallel
# kernels call them (inlined into a prange body they took a batch-32 first fit from 8.5-9.0
# to 9.9-10.0 s).
_INLINE = dict(OPTS, inline="always")
forward_layer_tiled_serial = renamed(forward_layer_tiled, "_serial", OPTS, forward_chunk=renamed(
    forward_chunk, "_inline", _INLINE))
backward_layer_tiled_serial = renamed(backward_layer_tiled, "_serial", OPTS,
                                      backward_chunk=renamed(backward_chunk, "_inline", _INLINE))
corrections_update_tiled_serial = renamed(
    corrections_update_tiled, "_serial", OPTS,
    corrections_update_units=renamed(corrections_update_units, "_inline", _INLINE))
# The serial twin (a narrow first layer, where the L2 multiply-add is a small part of a
# sample) calls rule_row itself: a second copy of every rule's loop added ~1 s to a first
# online fit of 64-32-10 on the 2-core AMD Milan.
update_forward_next_serial = renamed(update_forward_next, "_serial", OPTS, online_row=rule_row)
