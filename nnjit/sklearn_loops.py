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


from . import loops, rules
from .jit import jit
from .config import FASTMATH

SGD, NESTEROV, ADAM = rules.RULE_SGD, rules.RULE_NESTEROV, rules.RULE_ADAM

_OPTS = dict(fastmath=FASTMATH, nogil=True)


# The corrections sum_m a_i delta_j fused with the update of row j (scikit-learn's L2 term
# c[8] = alpha / sum of the batch's weights, its rules through loops._rule_row) are nnjit.loops'
# own fused kernels: the same arguments (W, b, first moments, second moments, dW, db, delta,
# a_prev, rule, c), so the drop-in trains with whatever the loop form's fastest kernel is.
corrections_rule = loops.corrections_update_blocked
_corrections_rule_s = loops._corrections_update_s


@jit(**_OPTS)
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
        aL, zL = loops._rows_rc(bufs.a, shape, L, mb), loops._rows_rc(bufs.z, shape, L, mb)
        y = loops._targets_rc(bufs, shape, mb)
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
        loops.output_error(loops._rows_rc(bufs.delta, shape, L, mb), aL, zL, y, sw, acts[L - 1], loss)
        for l in range(L, 0, -1):
            W, b = loops._params_rc(theta, shape, l)
            S1W, S1b = loops._params_rc(s1, shape, l)
            S2W, S2b = loops._params_rc(s2, shape, l)
            dW, db = loops._params_rc(grad, shape, l)
            delta, a_prev = loops._rows_rc(bufs.delta, shape, l, mb), loops._rows_rc(bufs.a, shape, l - 1, mb)
            if l > 1:       # error recursion first: it needs W^(l) before the update
                if par:
                    loops.backward_layer_blocked(loops._rows_rc(bufs.delta, shape, l - 1, mb), delta, W,
                                                 loops._rows_rc(bufs.z, shape, l - 1, mb), a_prev,
                                                 acts[l - 2])
                else:
                    loops._backward_layer_s(loops._rows_rc(bufs.delta, shape, l - 1, mb), delta, W,
                                            loops._rows_rc(bufs.z, shape, l - 1, mb), a_prev,
                                            acts[l - 2])
            if par or W.size * mb >= par_work:
                corrections_rule(W, b, S1W, S1b, S2W, S2b, dW, db, delta, a_prev, rule, c)
            else:
                _corrections_rule_s(W, b, S1W, S1b, S2W, S2b, dW, db, delta, a_prev, rule, c)
    return total, emax, t
