"""The loop form's batch for small networks: every layer of a batch in two parallel regions.

The tiled and GEMM paths run each layer's product as a parallel kernel of its own: five
regions a batch for two layers, each with its start, its wait for the slowest thread and its
sums in loops tuned for large products. For a network whose weights all fit in a core's
cache (scikit-learn's defaults: 64-100-10 or 100-100-1 at batch 200) that cost more than the
products. Here a batch is:

1. ``forward_backward_fused``, prange over G chunks of samples (config.FUSED_CHUNKS, at
   least 16 samples each; a chunk owns their rows and runs them in steps of rb mr
   samples): the samples' inputs, targets and weights loaded (each core the rows it works
   on), the feed-forward z_j = sum_i w_ij a_i + b_j, a_j = f(z_j) of every layer, the
   output error delta^L, the error recursion delta_j = f'(z_j) sum_k w_jk delta_k down to
   layer 1, each step writing its rows of a^(l-1) into the chunk's panels; then the
   chunk's corrections sum_m a_i delta_j, sum_m delta_j over its samples (delta^T read in
   place: the micro-kernel's k stride) into its part of the scratch. A core thus reads
   only what it wrote: with one region of samples and one of units, half of every panel
   and error crossed to the other core's cache between the two (on 2 cores, 64-100-10 at
   batch 200: 25 of 130 us a batch);
2. ``corrections_update_fused``, prange over steps of units j of every layer (a step owns
   their rows of W, v, q, dW and their biases): the chunks' sums added in chunk order,
   dw_ij = mean_m a_i delta_j + alpha_n w_ij, db_j = mean_m delta_j, the update rule, and
   the updated rows packed again for the next batch's region 1; besides, each step
   computes an n-th of the samples' costs C_m and max |a - y| (region 1's compile is a
   first fit's longest: they are here instead).

The products are the GEMM path's (nnjit.loops.gemm.gemm_rows: the micro-kernel's mr x 32
blocks of sums in registers, each summed k = 0..K-1 in order, kc terms a pass) on panels
packed while their numbers were being made, so no region packs; a step is ``rb`` blocks of
mr rows, so a panel serves rb blocks while it is in L1. A narrow layer (an output layer of
10 units) takes the same path: its panel's cut kernel sums 1 or 2 vectors of 8 or 16
(nnjit.loops.microkernel.block_wide_cut; the tiled loops it took before were one more tree
of code in region 1's compile). Every element is summed in one order whatever the
threads, so results do not depend on them (they do differ, by rounding, from the tiled
path's, whose sums vectorise along k).

The scratch ``P`` (nnjit.layout.Batch.p; :func:`fused_scratch` elements) holds, for each layer
l: FW, the panels of W^T (K = N_{l-1} rows of 32 units j); BW (l >= 2), the panels of W (K =
N_l rows of 32 inputs j); then the batch's max |a - y| per sample; then G chunks'
corrections, each laid out as theta; then for each layer AP, the panels of a^(l-1), chunk
by chunk (K = the chunk's samples, rows of 32 inputs i).
:func:`pack_weights` fills FW and BW from theta at the start of an epoch.
"""
import numpy as np
from numba import prange

from ..jit import jit
from .gemm import gemm_rows, sum8
from .microkernel import NR
from .microkernel import rows as block_rows
from .rows import apply_f, check_act, check_loss, check_rule, cost, max_error, mul_fprime, \
    output_error, rule_at, rule_row
from .views import OPTS, params


#: the fewest samples a chunk of the fused batch has (see config.FUSED_CHUNKS)
CHUNK_MIN = 16


@jit(**OPTS)
def chunks(M, most):
    """How many chunks of samples (at most ``most``, of CHUNK_MIN or more) a batch of M has."""
    return max(1, min(most, M // CHUNK_MIN))


@jit(**OPTS)
def fused_offsets(sizes, M, G, l):
    """Where layer l's pieces of the scratch start (see the module docstring): (FW, BW, AP,
    errors, chunk corrections, end) for a batch of M samples in G chunks; l = sizes' length
    gives the end of it all."""
    L = sizes.shape[0] - 1
    o = 0
    fw = bw = 0
    n_par = 0
    for k in range(1, L + 1):            # the weights' panels, kept from batch to batch
        if k == l:
            fw = o
        o += (sizes[k] + NR - 1) // NR * NR * sizes[k - 1]
        if k == l:
            bw = o
        if k >= 2:
            o += (sizes[k - 1] + NR - 1) // NR * NR * sizes[k]
        n_par += sizes[k] * (sizes[k - 1] + 1)
    err = o
    o += M
    pg = o
    o += G * n_par
    ap = o
    for k in range(1, L + 1):            # the batch's panels
        if k == l:
            ap = o
        o += (sizes[k - 1] + NR - 1) // NR * NR * M
    return fw, bw, ap, err, pg, o


def fused_scratch(sizes, M, most):
    """Scratch elements the fused batch needs for a network of these sizes at batch M in at
    most ``most`` chunks (fused_offsets run as Python: a first fit asks before anything is
    compiled)."""
    sizes = np.asarray(sizes, np.int64)
    G = chunks.py_func(int(M), int(most))
    return int(fused_offsets.py_func(sizes, int(M), G, sizes.shape[0])[5])


@jit(**OPTS)
def _pack_row(P, fw, bw, W, j, second):
    """Row j of W (N_l, N_{l-1}) into its place in FW (column j of panel j // NR) and, for a
    layer l >= 2 (second), in BW (row j of every panel)."""
    u = np.uint64
    n_out, n_in = u(W.shape[0]), u(W.shape[1])
    nr, jj = u(NR), u(j)
    w = W[j]
    o = u(fw) + jj // nr * n_in * nr + jj % nr
    for i in range(n_in):
        P[o + i * nr] = w[i]
    if second:
        o = u(bw) + jj * nr
        for i in range(n_in):
            P[o + i // nr * n_out * nr + i % nr] = w[i]


@jit(**OPTS)
def pack_weights(theta, shape, P):
    """FW and BW of every layer from theta (each epoch's start: the caller may have changed
    the weights since the last batch packed them)."""
    L = shape.sizes.shape[0] - 1
    for l in range(1, L + 1):
        W, _ = params(theta, shape, l)
        fw, bw, _, _, _, _ = fused_offsets(shape.sizes, int(0), int(0), l)
        for j in range(W.shape[0]):
            _pack_row(P, fw, bw, W, j, l >= 2)


@jit(**OPTS)
def _samples(theta, shape, bufs, X, Y, Sw, order, start, mb, loss, S, m_lo, m_hi, m0, m1, g,
             G, kc):
    """A step of forward_backward_fused's chunk g of G (samples m0 .. m1 - 1): the samples
    m_lo .. m_hi - 1 loaded, through every layer and back (see the module docstring); the
    chunk's last step then sums the chunk's corrections (here, not in a function of its
    own: each level of calls re-optimises the whole tree below it, 1 s of a first fit)."""
    u = np.uint64
    P = bufs.p
    sizes = shape.sizes
    L = sizes.shape[0] - 1
    M = mb
    cap = bufs.a.shape[0] // shape.a_off[-1]
    D, ny = u(X.shape[1]), u(Y.shape[1])        # load_batch's copies, for these rows
    for m in range(u(m_lo), u(m_hi)):
        r = u(order[start + m])
        o = u(shape.a_off[0] * cap) + m * D
        for i in range(D):
            bufs.a[o + i] = X[r, i]
        for k in range(ny):
            bufs.y[m * ny + k] = Y[r, k]
        bufs.s[m] = Sw[r]
    for l in range(1, L + 1):                           # feed-forward
        n_in, n_out = sizes[l - 1], sizes[l]
        fw, _, ap, _, _, _ = fused_offsets(sizes, M, G, l)
        ap += m0 * ((n_in + NR - 1) // NR * NR)       # the chunk's panels: K = m1 - m0 rows
        ao, zo = shape.a_off[l - 1] * cap, shape.a_off[l] * cap
        bo, wo = shape.b_off[l - 1], shape.w_off[l - 1]
        for m in range(m_lo, m_hi):                     # a^(l-1) into AP for the corrections
            for t in range((n_in + NR - 1) // NR):      # (unsigned offsets: no wraparound
                o, x = u(ap + (t * (m1 - m0) + m - m0) * NR), u(ao + m * n_in + NR * t)
                for i in range(u(min(NR, n_in - NR * t))):
                    P[o + i] = bufs.a[x + i]
        nt = (n_out + NR - 1) // NR     # z rows = a^(l-1) rows x W^T (FW's panels; a
        gemm_rows(bufs.z[zo:zo + mb * n_out], n_out, bufs.a[ao:ao + mb * n_in], n_in,   # narrow
                  int(1), P[fw:fw + nt * NR * n_in], m_lo, m_hi, int(0), nt, n_out, n_in, kc)
        for m in range(u(m_lo), u(m_hi)):          # layer: the cut kernel's 1 or 2 vectors)
            for j in range(u(n_out)):
                bufs.z[u(zo) + m * u(n_out) + j] += theta[u(bo) + j]
        for m in range(m_lo, m_hi):     # (flat offsets here, not the rows/params views:
            x = zo + m * n_out          # each inlined view was ~0.1 s of this region's compile)
            apply_f(bufs.a[x:x + n_out], bufs.z[x:x + n_out], shape.acts[l - 1])
    K, lo = sizes[L], shape.a_off[L] * cap
    aL, zL = bufs.a[lo:lo + mb * K].reshape((mb, K)), bufs.z[lo:lo + mb * K].reshape((mb, K))
    delta, y = bufs.delta[lo:lo + mb * K].reshape((mb, K)), bufs.y[:mb * K].reshape((mb, K))
    act = shape.acts[L - 1]
    for m in range(m_lo, m_hi):                         # delta^L
        w = delta.dtype.type(bufs.s[m] * M / S if S > 0 else 0.0)
        output_error(delta, aL, zL, y, m, act, loss, w)
    for l in range(L, 0, -1):                           # error recursion
        n_in, n_out = sizes[l - 1], sizes[l]
        if l == 1:
            break
        bw = fused_offsets(sizes, M, G, l)[1]
        do, po = shape.a_off[l] * cap, shape.a_off[l - 1] * cap
        nt = (n_in + NR - 1) // NR       # delta^(l-1) rows = delta^(l) rows x W (BW's panels)
        gemm_rows(bufs.delta[po:po + mb * n_in], n_in, bufs.delta[do:do + mb * n_out], n_out,
                  int(1), P[bw:bw + nt * NR * n_out], m_lo, m_hi, int(0), nt, n_in, n_out, kc)
        for m in range(m_lo, m_hi):
            x = po + m * n_in
            mul_fprime(bufs.delta[x:x + n_in], bufs.z[x:x + n_in], bufs.a[x:x + n_in],
                       shape.acts[l - 2])
    if m_hi < m1:
        return
    # the chunk's corrections sum_m a_i delta_j, sum_m delta_j (m in the chunk) of every
    # layer into its part of the scratch, from the panels and errors this core wrote
    pg = fused_offsets(sizes, M, G, L)[4]
    pg += g * ((fused_offsets(sizes, M, G, int(1))[2] - pg) // G)     # (G equal parts)
    K = m1 - m0
    for l in range(1, L + 1):        # dW rows = delta^T rows x a^(l-1) (AP's panels)
        n_in, n_out = sizes[l - 1], sizes[l]
        nt = (n_in + NR - 1) // NR
        ap = fused_offsets(sizes, M, G, l)[2] + m0 * nt * NR
        do = shape.a_off[l] * cap + m0 * n_out    # delta^T: row j at j, k (= m) stride n_out
        wo, bo = pg + shape.w_off[l - 1], pg + shape.b_off[l - 1]
        D = bufs.delta[do:do + K * n_out]
        gemm_rows(P[wo:wo + n_out * n_in], n_in, D, int(1), n_out, P[ap:ap + nt * NR * K],
                  int(0), n_out, int(0), nt, n_in, K, kc)
        for j in range(n_out):
            P[bo + j] = sum8(D, j, K, n_out)


@jit(parallel=True, **OPTS)
def forward_backward_fused(theta, shape, bufs, X, Y, Sw, order, start, mb, loss, S, G, rb,
                           kc, serial):
    """Region 1 of a fused batch: the samples order[start:start+mb] loaded (as
    nnjit.loops.load_batch: rows of X, Y, Sw into layer 0, bufs.y, bufs.s), feed-forward
    z_j = sum_i w_ij a_i + b_j ; a_j = f(z_j) of every layer, delta^L = dC/dz^L times the
    weight factor s_m M / S (see nnjit.loops.reference.output_error), the error recursion
    delta_j = f'(z_j) sum_k w_jk delta_k for l = L .. 2, and each chunk's corrections
    sum_m a_i delta_j, sum_m delta_j.

    theta (P,) the parameters; shape, bufs: the layout and the batch (bufs.p holding FW and
    BW); X (n, N_0), Y (n, K), Sw (n,): the fit's inputs, targets, sample weights; loss: the
    loss code; S = sum_m s_m of the batch. prange over the G chunks of samples (chunks()),
    a chunk owning its rows of z, a, delta, its panels and its corrections, and running
    its samples in steps of rb mr (mr = microkernel.rows); kc terms a pass of the
    micro-kernel. serial: the chunks one after another, no region (it costs more than a
    tiny network's batch: the caller decides).
    """
    for l in range(shape.acts.shape[0]):
        check_act(shape.acts[l])
    check_loss(shape.acts[shape.acts.shape[0] - 1], loss)
    mc = rb * block_rows(bufs.p)
    if serial:
        for g in range(G):
            m0, m1 = mb * g // G, mb * (g + 1) // G
            for m_lo in range(m0, m1, mc):
                _samples(theta, shape, bufs, X, Y, Sw, order, start, mb, loss, S, m_lo,
                         min(m1, m_lo + mc), m0, m1, g, G, kc)
    else:
        for q in prange(G):
            g = np.int64(q)
            m0, m1 = mb * g // G, mb * (g + 1) // G
            for m_lo in range(m0, m1, mc):
                _samples(theta, shape, bufs, X, Y, Sw, order, start, mb, loss, S, m_lo,
                         min(m1, m_lo + mc), m0, m1, g, G, kc)


@jit(**OPTS)
def _units(theta, vel, sq, shape, bufs, mb, loss, rule, c, G, q, n, ju):
    """corrections_update_fused's step q of n: block q of ju units, counted through the
    layers from l = 1 (see the module docstring), and the costs of the q-th n-th of the
    samples."""
    P = bufs.p
    sizes = shape.sizes
    L = sizes.shape[0] - 1
    M = mb
    K, lo = sizes[L], shape.a_off[L] * (bufs.a.shape[0] // shape.a_off[-1])
    aL, zL = bufs.a[lo:lo + mb * K].reshape((mb, K)), bufs.z[lo:lo + mb * K].reshape((mb, K))
    y = bufs.y[:mb * K].reshape((mb, K))    # (flat offsets, not the views: see _samples)
    act = shape.acts[L - 1]
    err = fused_offsets(sizes, M, G, L)[3]
    for m in range(M * q // n, M * (q + 1) // n):          # C_m and max_k |a_k - y_k|
        bufs.cost[m] = cost(aL, zL, y, m, act, loss)
        P[err + m] = max_error(aL, y, m)
    l = 1
    while l < L and q >= (sizes[l] + ju - 1) // ju:
        q -= (sizes[l] + ju - 1) // ju
        l += 1
    n_in, n_out = sizes[l - 1], sizes[l]
    j_lo = q * ju
    j_hi = min(n_out, j_lo + ju)
    fw, bw, _, _, pg, _ = fused_offsets(sizes, M, G, l)
    n_par = (fused_offsets(sizes, M, G, int(1))[2] - pg) // G
    wo, bo = shape.w_off[l - 1], shape.b_off[l - 1]
    for j in range(j_lo, j_hi):     # the chunks' sums, added in their order into chunk 0's
        x, y0 = pg + wo + j * n_in, pg + bo + j
        for g in range(1, G):
            o = g * n_par
            for i in range(n_in):
                P[x + i] += P[o + x + i]
            P[y0] += P[o + y0]
    s = 1.0 / M
    b, vb, sb = theta[bo:bo + n_out], vel[bo:bo + n_out], sq[bo:bo + n_out]
    W = theta[wo:wo + n_out * n_in].reshape((n_out, n_in))
    for j in range(j_lo, j_hi):
        x = wo + j * n_in
        rule_row(rule, theta[x:x + n_in], vel[x:x + n_in], sq[x:x + n_in],
                 P[pg + x:pg + x + n_in], s, c.alpha_n, c)
        rule_at(rule, b, vb, sb, j, P[pg + bo + j] * theta.dtype.type(s), c)
        _pack_row(P, fw, bw, W, j, l >= 2)


@jit(parallel=True, **OPTS)
def corrections_update_fused(theta, vel, sq, shape, bufs, mb, loss, rule, c, G, rb, serial):
    """Region 2 of a fused batch: corrections dw_ij = mean_m a_i delta_j + alpha_n w_ij,
    db_j = mean_m delta_j (the G chunks' sums from region 1, added in chunk order), fused
    with the update rule (nnjit.loops.rows.rule_row) of every layer, the updated rows packed
    into FW and BW for the next batch; and each sample's cost C_m into bufs.cost and
    max_k |a_k - y_k| into P's errors (O(M K) work, which took ~5 % of a batch of
    scikit-learn's defaults serially).

    theta, vel, sq (P,): parameters, optimizer state; bufs.p holding the chunks'
    corrections (region 1; chunk 0's afterwards their sum); loss: the loss code; rule, c:
    the update rule's code and this step's Coefs. prange over steps of rb mr units j of
    layer 1, then of layer 2, ..., a step owning their rows and an n-th of the samples'
    costs; serial: as in forward_backward_fused.
    """
    check_rule(rule)
    ju = rb * block_rows(bufs.p)
    n = (shape.sizes[1] + ju - 1) // ju     # (not n = 0: a literal 0 passed on in the
    for l in range(2, shape.sizes.shape[0]):    # serial loop compiled _units twice)
        n += (shape.sizes[l] + ju - 1) // ju
    if serial:
        for q in range(n):
            _units(theta, vel, sq, shape, bufs, mb, loss, rule, c, G, q, n, ju)
    else:
        for q in prange(n):
            _units(theta, vel, sq, shape, bufs, mb, loss, rule, c, G, np.int64(q), n, ju)
