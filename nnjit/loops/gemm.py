"""The loop form's GEMM path: the three products of a large batch (config.GEMM_MIN_BATCH
samples or more) organised as high-performance matrix multiplication is (BLIS's loops around
one micro-kernel): one operand packed into contiguous panels of
NR = 32 columns (zero-padded), and nnjit.loops.microkernel.block summing an mr x 32 block of
outputs in registers (AVX-512: 12 x 32 float32, 6 x 32 float64; otherwise 3 x 32) over a
block of kc terms k while its panel (kc x 32) stays in L1. Each product
is C[r, c] = sum_k A[r, k] B[k, c] with A's rows contiguous in k:
  feed-forward    z[m, j]   = sum_i a_prev[m, i] W[j, i]   A = a_prev, B = W^T packed
  error recursion d_prev[m, j] = sum_k delta[m, k] W[k, j]  A = delta,  B = W packed
  corrections     dW[j, i]  = sum_m delta[m, j] a_prev[m, i]  A = delta^T (packed), B = a_prev packed
Every element is summed k = 0..K-1 in order whatever the blocks and threads.
The feed-forward and corrections of a layer of fewer than NR units (an output layer of 10)
run the tiled kernels' loops instead, inside the same parallel kernel (no second kernel to
compile): padding 10 units to 32 tripled the work, packing a 1024 x 1024 a_prev for 10 rows
of sums cost more than the sums, and 10 rows were one parallel step (measured at 1024
inputs, batch 256-1024: 0.6-0.8 -> 0.26 us a sample forward, 0.7-1.7 -> 0.4-0.5
corrections). Those results equal the tiled kernels' bit for bit. The error recursion
keeps its panels: to 10 units from 1024 (K = 10) it runs as fast as the tiled loops.
"""
import numpy as np
import numba
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..activations import SOFTMAX
from ..jit import jit
from .blocked import corr_rows_range, dot_rows_range
from .microkernel import NR, block, block_cut, rows
from .rows import apply_f, check_act, check_rule, mul_fprime, rule_at, rule_row
from .views import OPTS

#: rows a parallel packing step copies (_pack_rows, _transpose_rows; measured: 16-32 best)
PACK_ROWS = 32


@jit(**OPTS)
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


@jit(**OPTS)
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


@jit(**OPTS)
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


@jit(**OPTS)
def gemm_rows(C, ldc, A, lda, ka, P, r_lo, r_hi, t_lo, t_hi, n, K, kc):
    """C[r, c] = sum_k A[r, k] B[k, c] for rows r_lo <= r < r_hi and the columns c < n of
    panels t_lo <= t < t_hi; C, A flat with row strides ldc, lda, A's k stride ka (1: A's
    rows; lda 1 and ka its row length: the transpose of a row-major array, read in place);
    B (K x n) packed in panels of NR columns in P (_pack_rows). Blocks of kc terms k (the
    first block writes C, later ones go on from it), panels of NR columns, and micro-kernel
    calls of mr rows (microkernel.rows), in that loop order: a panel's kc x NR block is
    reused by every row block of the range while it is in L1. A block cut by the edge of C
    (fewer rows or columns) sums all K terms in its first call."""
    mr = rows(C)
    u = np.uint64
    nkb = (K + kc - 1) // kc
    kc = (K + nkb - 1) // nkb          # equal blocks: K = 784 is 4 x 196, not 3 x 256 + 16
    for k0 in range(0, K, kc):
        for t in range(t_lo, t_hi):
            nc = min(NR, n - NR * t)
            for r0 in range(r_lo, r_hi, mr):
                nr = min(mr, r_hi - r0)
                kk = min(kc, K - k0)
                if nr < mr or nc < NR:
                    if k0 > 0:
                        continue
                    kk = K
                pb = u(t * K * NR + k0 * NR)
                if nc < NR:
                    block_cut(C, u(r0 * ldc + NR * t), u(ldc), nr, nc, A,
                              u(r0 * lda + k0 * ka), u(lda), u(ka), P, pb, u(kk), k0 > 0)
                else:
                    block(C, u(r0 * ldc + NR * t), u(ldc), nr, nc, A, u(r0 * lda + k0 * ka),
                          u(lda), u(ka), P, pb, u(kk), k0 > 0)


#: parallel steps the feed-forward and the error recursion aim for (at least, while a batch
#: has fewer chunks of mc samples than this and a layer more than one panel)
GEMM_STEPS = 4


@jit(**OPTS)
def panel_groups(nch, n):
    """Groups of panels (NR of the n columns each) each of nch chunks of samples is cut into,
    so that a small batch still makes GEMM_STEPS parallel steps: at batch 32 one chunk of 48
    samples was one step, and one of two cores ran the whole product."""
    return max(1, min((n + NR - 1) // NR, (GEMM_STEPS + nch - 1) // nch))


@intrinsic
def threads(typingctx):
    """numba.get_num_threads() in compiled code that can be cached: Numba's own overload
    calls the threading layer through a ctypes pointer, a dynamic global that keeps every
    caller out of the disk cache; this calls the same C function by the symbol the
    threading layer registers as it starts (nnjit.jit starts it before any load), as the
    parallel regions Numba generates do to schedule their iterations."""
    numba.get_num_threads()         # starts the threading layer: the symbol is defined

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(cgutils.intp_t, []),
                                            "get_num_threads")
        return builder.call(fn, [])
    return types.intp(), codegen


@jit(**OPTS)
def balanced(n, size, mr):
    """Parallel pieces n items (samples, or units) are cut into, about size each: a multiple
    of the thread count once there is more than one, so that Numba's static schedule (equal
    runs of consecutive iterations a thread) gives every thread the same work. With pieces
    of exactly size items the last one was short: 256 samples in 48s were 5 x 48 + 16, and
    the thread with 3 x 48 set the time (batch 240, 256 and 288 took the same 4.1 ms for a
    1024 x 1024 feed-forward on the 2-core Milan host)."""
    nch = (n + size - 1) // size
    if nch > 1:
        t = threads()
        nch = (nch + t - 1) // t * t
    return max(1, min(nch, (n + mr - 1) // mr))


@jit(**OPTS)
def piece(p, np_, n, mr):
    """Items lo <= i < hi of piece p of np_ (balanced): whole groups of mr (the micro-kernel's
    rows) shared out as evenly as they go, so the pieces differ by one group at most."""
    g = (n + mr - 1) // mr
    return min(n, mr * (p * g // np_)), min(n, mr * ((p + 1) * g // np_))


@jit(**OPTS)
def _step(st, ng, nch, M, n, mr):
    """Parallel step st of the feed-forward or recursion: samples m_lo <= m < m_hi (piece
    st // ng of nch), panels t_lo <= t < t_hi (group st % ng of ng), their columns c_lo <= c <
    c_hi of the n of C. st int64 (prange's unsigned index converted: one specialisation)."""
    ch = st // ng
    m_lo, m_hi = piece(ch, nch, M, mr)
    npn = (n + NR - 1) // NR
    t_lo, t_hi = (st - ch * ng) * npn // ng, (st - ch * ng + 1) * npn // ng
    return m_lo, m_hi, t_lo, t_hi, t_lo * NR, min(n, t_hi * NR)


@jit(parallel=True, **OPTS)
def forward_layer_gemm(z, a, a_prev, W, b, act, P, mc, kc):
    """Feed-forward z_j = sum_i w_ij a_i + b_j ; a_j = f(z_j) by packed panels of W^T.

    a_prev (M, N_{l-1}); W (N_l, N_{l-1}); b (N_l,); z, a (M, N_l); P scratch of at least
    ceil(N_l / NR) NR N_{l-1} elements. Two parallel loops: panels of W^T (a step packs one),
    then chunks of about mc samples m (balanced; a step owns their rows of z and a). Fewer
    than NR units: no packing, and steps of 4 samples with the tiled kernel's sums
    (dot_rows_range)."""
    check_act(act)
    M, n_in = a_prev.shape
    n_out = W.shape[0]
    narrow = n_out < NR     # the tiled kernel's loops, 4 samples a step (see the note above)
    if narrow:
        mc = 4              # (groups of 4 from 0 whatever mc: the same bits)
    if not narrow:
        for t in prange((n_out + NR - 1) // NR):
            _pack_panel_t(P, W, np.int64(t))     # prange indices are unsigned: one specialisation
    zf, af = z.reshape(z.size), a_prev.reshape(a_prev.size)
    nch = (M + mc - 1) // mc if narrow else balanced(M, mc, rows(z))
    ng = 1 if narrow or act == SOFTMAX else panel_groups(nch, n_out)   # softmax: whole rows
    for st in prange(nch * ng):     # one parallel loop for both: each a gufunc to compile
        m_lo, m_hi, t_lo, t_hi, c_lo, c_hi = _step(np.int64(st), ng, nch, M, n_out,
                                                   mc if narrow else rows(z))
        if narrow:
            dot_rows_range(z, a_prev, W, b, m_lo, m_hi - m_lo, int(0), n_out)
        else:
            gemm_rows(zf, n_out, af, n_in, int(1), P, m_lo, m_hi, t_lo, t_hi, n_out, n_in, kc)
            for m in range(m_lo, m_hi):
                for j in range(c_lo, c_hi):
                    z[m, j] += b[j]
        for m in range(m_lo, m_hi):
            apply_f(a[m, c_lo:c_hi], z[m, c_lo:c_hi], act)


@jit(parallel=True, **OPTS)
def backward_layer_gemm(delta_prev, delta, W, z_prev, a_prev, act_prev, P, mc, kc):
    """Error recursion delta_j = f'(z_j) sum_k w_jk delta_k by packed panels of W.

    delta (M, N_{l+1}); W (N_{l+1}, N_l), W[k, j] = w_jk; delta_prev, z_prev, a_prev (M, N_l);
    P scratch of at least N_{l+1} ceil(N_l / NR) NR elements. Parallel loops: packing W
    (PACK_ROWS rows k a step), then chunks of about mc samples m (balanced), cut into groups
    of panels as the feed-forward's (a step owns its block of delta_prev)."""
    check_act(act_prev)
    M, n_out = delta.shape
    n_in = W.shape[1]
    for kb in prange((n_out + PACK_ROWS - 1) // PACK_ROWS):
        k0 = kb * PACK_ROWS
        _pack_rows(P, W, k0, min(n_out, k0 + PACK_ROWS))
    df, dpf = delta.reshape(delta.size), delta_prev.reshape(delta_prev.size)
    nch = balanced(M, mc, rows(delta_prev))
    ng = panel_groups(nch, n_in)
    for st in prange(nch * ng):
        m_lo, m_hi, t_lo, t_hi, c_lo, c_hi = _step(np.int64(st), ng, nch, M, n_in,
                                                   rows(delta_prev))
        gemm_rows(dpf, n_in, df, n_out, int(1), P, m_lo, m_hi, t_lo, t_hi, n_in, n_out, kc)
        for m in range(m_lo, m_hi):
            mul_fprime(delta_prev[m, c_lo:c_hi], z_prev[m, c_lo:c_hi], a_prev[m, c_lo:c_hi],
                       act_prev)


@jit(**OPTS)
def sum8(x, o, n, st):
    """x[o] + x[o + st] + ... + x[o + (n - 1) st] in eight interleaved partial sums (m = r mod
    8), added in a fixed order: the same bits whatever the blocks and threads, and eight
    independent additions in flight (one running sum waited on each addition's latency: ~1 ns
    an element, a millisecond of the corrections at 512 units x 1024 samples). st: 1 for a
    row, the row length for a column (delta^T read in place)."""
    z = x.dtype.type(0.0)
    t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = z
    u = np.uint64
    s = u(st)
    p, e = u(o), u(o) + u(n) * s
    while p + u(7) * s < e:
        t0 += x[p]
        t1 += x[p + s]
        t2 += x[p + u(2) * s]
        t3 += x[p + u(3) * s]
        t4 += x[p + u(4) * s]
        t5 += x[p + u(5) * s]
        t6 += x[p + u(6) * s]
        t7 += x[p + u(7) * s]
        p += u(8) * s
    t = ((t0 + t1) + (t2 + t3)) + ((t4 + t5) + (t6 + t7))
    while p < e:
        t += x[p]
        p += s
    return t


@jit(parallel=True, **OPTS)
def corrections_update_gemm(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c, P, ju, kc):
    """Corrections dw_ij = mean_m a_i delta_j + alpha_n w_ij fused with the update rule
    (rule_row), by packed panels of a_prev and delta^T.

    W, vW, sW, dW (N_l, N_{l-1}); b, vb, sb, db (N_l,); delta (M, N_l); a_prev (M, N_{l-1});
    P scratch of ceil(N_{l-1} / NR) NR M + N_l M elements: the panels of a_prev, then
    delta^T (N_l, M). Parallel loops: packing (PACK_ROWS samples m a step: their rows of
    a_prev into the panels, their columns of delta^T), then one step a thread (balanced
    groups of the micro-kernel's rows), which owns its units' rows of W, vW, sW and biases
    and sums them in blocks of about ju units into rows of dW of its own (dW is scratch:
    it ends holding the last blocks), each row updated once its sums are done. Fewer than
    NR units: no packing, and steps of 4 units with the tiled kernel's sums over a_prev in
    place (corr_rows_range), dW's own rows."""
    check_rule(rule)
    M, n_in = a_prev.shape
    n_out = delta.shape[1]
    s = 1.0 / M
    an = c.alpha_n
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
    # Wide: one step a thread, its units in blocks of sub (about ju) summed into its own sub
    # rows of dW, kept in L2 for the rule (dW is scratch here): a dW row a unit went out to
    # memory and came back each batch, twice the layer's weights (15 MB a batch of
    # 784-1024-1024-10). Narrow: steps of 4 units, dW's own rows.
    mr = 4 if narrow else rows(dW)
    nb = (n_out + 3) // 4 if narrow else max(1, min(threads(), n_out // mr))
    sub = 4 if narrow else max(mr, min(ju, n_out // nb // mr * mr))
    for jb in prange(nb):     # one parallel loop for both (see forward)
        j_lo, j_hi = piece(np.int64(jb), nb, n_out, mr)
        for j0 in range(j_lo, j_hi, sub):
            j1 = min(j_hi, j0 + sub)
            so = j0 if narrow else np.int64(jb) * sub   # dW's row for unit j0 (nb sub <= n_out)
            if narrow:
                for j in range(j0, j1):
                    row = dW[j]
                    for i in range(n_in):
                        row[i] = zero
                    db[j] = zero
                i0 = int(0)
                corr_rows_range(dW, db, delta, a_prev, j0, j1 - j0, i0, n_in, i0 == 0)
            else:
                gemm_rows(dWf[so * n_in:], n_in, D[j0 * M:], M, int(1), P, int(0), j1 - j0,
                          int(0), nt, n_in, M, kc)
                for j in range(j0, j1):
                    db[j] = sum8(D, j * M, M, int(1))     # db_j = sum_m delta_mj
            for j in range(j0, j1):
                rule_row(rule, W[j], vW[j], sW[j], dW[so + j - j0], s, an, c)
                db[j] *= W.dtype.type(s)
                rule_at(rule, b, vb, sb, j, db[j], c)


def gemm_need(n_out, n_in, M, train):
    """Scratch elements the GEMM path needs for a layer W (n_out, n_in) at batch M: the
    panels of W^T (feed-forward); for training also those of W (error recursion), and those
    of a_prev with delta^T (corrections), the largest of the three."""
    f = (n_out + NR - 1) // NR * NR * n_in
    if not train:
        return f
    return max(f, n_out * ((n_in + NR - 1) // NR * NR), ((n_in + NR - 1) // NR * NR + n_out) * M)


def gemm_scratch(sizes, M):
    """Scratch elements the GEMM path needs for a network of these sizes at batch M."""
    return max([gemm_need(int(o), int(i), int(M), True) for i, o in zip(sizes[:-1], sizes[1:])] + [0])
