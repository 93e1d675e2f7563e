"""Loop kernels for :mod:`nnjit.sklearn`: one compiled epoch with scikit-learn's update rules.

What it is for: the stochastic solvers of ``nnjit.sklearn.MLPClassifier`` / ``MLPRegressor``
on the loops backend -- every batch of an epoch (feed-forward, loss, error recursion, the
corrections with scikit-learn's L2 term, and the SGD / Nesterov / Adam update) inside one
compiled call, with no Python between batches. What it is not for: anything else; the
feed-forward and error recursion are :mod:`nnjit.loops`' own kernels, called from here.

Index names are the lecture's (``m`` sample, ``i`` unit of layer l-1, ``j`` unit of layer l);
W[j, i] is w_ij of layer l. Every kernel writes only into arrays it is given.

The rule codes (chosen in Python, passed as plain integers):
    SGD       v <- mu v - eta g ;  w <- w + v
    NESTEROV  v <- mu v - eta g ;  w <- w + mu v - eta g
    ADAM      m <- b1 m + (1 - b1) g ; v <- b2 v + (1 - b2) g^2 ; w <- w - eta_t m / (sqrt(v) + eps)
with g = (sum_m a_i delta_j + alpha w_ij) / M, scikit-learn's gradient of
mean loss + alpha / (2 M) sum ||W||^2 (no L2 on biases), and for Adam
eta_t = eta sqrt(1 - b2^t) / (1 - b1^t) at step t (scikit-learn's bias correction).
"""
from numba import njit, prange

from . import loops, rules
from ._numba_setup import CACHE   # False where no cache folder is writable
from .config import FASTMATH

SGD, NESTEROV, ADAM = rules.RULE_SGD, rules.RULE_NESTEROV, rules.RULE_ADAM

_OPTS = dict(fastmath=FASTMATH, cache=CACHE, nogil=True)


def _corrections_rule(W, b, S1W, S1b, S2W, S2b, dW, db, delta, a_prev, rule, c):
    """Corrections sum_m a_i delta_j (4 x 4 register blocks, as loops' blocked kernel) fused
    with scikit-learn's update of row j while it is in cache.

    W, S1W, S2W, dW (N_l, N_{l-1}); b, S1b, S2b, db (N_l,); delta (M, N_l); a_prev
    (M, N_{l-1}); rule, c: nnjit.loops.step_coefs (c[8] = alpha / n_batch). prange over
    blocks of 4 output units j: a step owns 4 rows. dW, db end up holding the summed (not
    averaged) corrections; the update is nnjit.loops' per-row rule (issue 10's helper)."""
    M, n_in = a_prev.shape
    n_out = delta.shape[1]
    zero = W.dtype.type(0.0)
    s = 1.0 / M
    for jb in prange((n_out + 3) // 4):
        j0 = 4 * jb
        nj = min(4, n_out - j0)
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
        for mm in range(m, M):               # the samples (or units) left over from the blocks
            x = a_prev[mm]
            for j in range(j0, j0 + nj):
                row, d = dW[j], delta[mm, j]
                for i in range(n_in):
                    row[i] += d * x[i]
                db[j] += d
        for j in range(j0, j0 + nj):
            loops._rule_row(rule, W[j], S1W[j], S2W[j], dW[j], s, c[8], c)
        loops._rule_row(rule, b[j0:j0 + nj], S1b[j0:j0 + nj], S2b[j0:j0 + nj], db[j0:j0 + nj],
                        s, 0.0, c)


corrections_rule = njit(parallel=True, **_OPTS)(_corrections_rule)
_corrections_rule_s = loops._serial(_corrections_rule)


@njit(**_OPTS)
def train_epoch(theta, s1, s2, grad, shape, bufs, X, Y, S, order, batch_size, rule, hyper, t,
                loss, loss_scale, par_min, par_work):
    """One epoch of scikit-learn's stochastic solver: for each batch (order[start:start+mb]),
    feed-forward, per-sample loss, output error (weighted by S), then for l = L..1 the error
    recursion to layer l-1 (with W^(l) before its update) and the fused correction + update
    of layer l.

    theta, s1, s2, grad (P,): parameters, optimizer state (velocity or Adam's m; Adam's v),
    scratch. X (n, D), Y (n, K), S (n,) sample weights. rule, hyper: nnjit.rules (hyper's
    alpha is scikit-learn's L2 strength). t: updates made before the epoch (Adam's step).
    Returns (sum over batches of scikit-learn's batch loss times mb -- the weighted mean cost
    (times loss_scale) plus alpha/(2 sum_m s_m) sum ||W||^2 before the update --, max |a - y|,
    t after the epoch)."""
    acts = shape.acts
    L = shape.sizes.shape[0] - 1
    n = order.shape[0]
    alpha = hyper[rules.H_ALPHA]
    total = 0.0
    emax = 0.0
    for start in range(0, n, batch_size):
        mb = min(batch_size, n - start)
        par = mb >= par_min
        loops.load_batch(bufs, shape, X, Y, S, order, start, mb)
        loops.forward(theta, shape, bufs, mb, par, par_work, 1)
        aL, zL = loops._rows(bufs.a, shape, L, mb), loops._rows(bufs.z, shape, L, mb)
        y = loops._targets(bufs, shape, mb)
        costs, sw = bufs.cost[:mb], bufs.s[:mb]
        emax = max(emax, loops.sample_loss(costs, aL, zL, y, acts[L - 1], loss))
        Sb = loops.weight_sum(sw)
        bl = 0.0
        for m in range(mb):
            bl += sw[m] * costs[m]
        bl = bl * loss_scale / Sb
        if alpha != 0.0:
            bl += 0.5 * alpha * loops.penalty(theta, shape) / Sb
        total += bl * mb
        t += 1
        c = loops.step_coefs(rule, hyper, t, alpha / Sb)
        loops.output_error(loops._rows(bufs.delta, shape, L, mb), aL, zL, y, sw, acts[L - 1], loss)
        for l in range(L, 0, -1):
            W, b = loops._params(theta, shape, l)
            S1W, S1b = loops._params(s1, shape, l)
            S2W, S2b = loops._params(s2, shape, l)
            dW, db = loops._params(grad, shape, l)
            delta, a_prev = loops._rows(bufs.delta, shape, l, mb), loops._rows(bufs.a, shape, l - 1, mb)
            if l > 1:       # error recursion first: it needs W^(l) before the update
                if par:
                    loops.backward_layer_blocked(loops._rows(bufs.delta, shape, l - 1, mb), delta, W,
                                                 loops._rows(bufs.z, shape, l - 1, mb), a_prev,
                                                 acts[l - 2])
                else:
                    loops._backward_layer_s(loops._rows(bufs.delta, shape, l - 1, mb), delta, W,
                                            loops._rows(bufs.z, shape, l - 1, mb), a_prev,
                                            acts[l - 2])
            if par or W.size * mb >= par_work:
                corrections_rule(W, b, S1W, S1b, S2W, S2b, dW, db, delta, a_prev, rule, c)
            else:
                _corrections_rule_s(W, b, S1W, S1b, S2W, S2b, dW, db, delta, a_prev, rule, c)
    return total, emax, t
