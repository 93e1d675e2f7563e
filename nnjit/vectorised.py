"""The vectorised form: the lecture's matrix notation in NumPy, the reference.

Same function names and signatures as :mod:`nnjit.loops`; batches are rows, so the lecture's
column-vector z = W a + b reads ``Z = A_prev @ W.T + b`` here. The activations' f and f' and
the update rules' steps are the tables' own definitions (nnjit.activations, nnjit.rules),
run on whole arrays (nnjit.forms); softmax and the costs keep array expressions of their own.
X may be a scipy.sparse matrix (a sparse first layer: ``A_prev @ W.T`` is a sparse product).
"""
import numpy as np

from . import activations as A
from . import rules as R
from .forms import specialise
from .layout import layer

_F = {}


def _fn(kind, code, dtype):
    """The table's f or f' of activation ``code`` on arrays of dtype (KeyError-free: an
    unknown code raises ValueError)."""
    key = (kind, code, np.dtype(dtype))
    if key not in _F:
        act = A.BY_CODE.get(int(code))
        if act is None or act.f is None:
            raise ValueError(f"unknown elementwise activation code {code!r}")
        _F[key] = specialise(act.f if kind == "f" else act.fprime, "vectorised", dtype)
    return _F[key]


def flush(x):
    """x with every element below sqrt(TINY) in magnitude set to 0 (nnjit.activations.flush)."""
    return specialise(A.flush, "vectorised", x.dtype)(x)


def f(z, act):
    """a = flush(f(z)) for an array z (softmax: row by row, the max subtracted)."""
    if act == A.SOFTMAX:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return flush(e / e.sum(axis=1, keepdims=True))
    with np.errstate(over="ignore"):        # e^-z = inf gives sigmoid 0, correctly
        return flush(_fn("f", act, z.dtype)(z))


def fprime(z, a, act):
    """f'(z) for arrays z and a = f(z) (elementwise f only)."""
    return _fn("fprime", act, z.dtype)(z, a)


def forward_layer(z, a, a_prev, W, b, act):
    """z = W a_prev + b ; a = flush(f(z)).  a_prev (M, N_{l-1}); W (N_l, N_{l-1}); z, a (M, N_l)."""
    if isinstance(a_prev, np.ndarray):
        np.matmul(a_prev, W.T, out=z)
    else:                       # a scipy.sparse a_prev: the first layer of CSR input
        z[...] = a_prev @ W.T
    z += b
    a[...] = f(z, act)


def backward_layer(delta_prev, delta, W, z_prev, a_prev, act_prev):
    """delta^(l) = flush(f'(z^(l)) * (W^(l+1)^T delta^(l+1))).  delta (M, N_{l+1}); W (N_{l+1}, N_l)."""
    np.matmul(delta, W, out=delta_prev)
    delta_prev *= fprime(z_prev, a_prev, act_prev)
    delta_prev[...] = flush(delta_prev)


def step_coefs(rule, h, t, alpha_n):
    """The Coefs of update t (nnjit.rules.coefs)."""
    return R.coefs(rule, h, t, alpha_n)


def apply_rule(rule, w, v, q, d, c):
    """The rule's step (nnjit.rules, the same definition as every form's) on arrays w
    (parameters), v, q (its state) with gradient d, in place."""
    r = R.BY_CODE.get(int(rule))
    if r is None:
        raise ValueError(f"unknown update rule code {rule!r}")
    w[...], v[...], q[...] = specialise(r.step, "vectorised", w.dtype)(
        w, v, q, d, R.cast(c, w.dtype.type))


def corrections(dW, db, delta, a_prev, scale, W, an):
    """dW = scale delta^T a_prev + an W ; db = scale sum_m delta.  (scale = 1/M: the batch
    mean; an = alpha / n_batch: the L2 penalty's gradient, weights only.)"""
    if isinstance(a_prev, np.ndarray):
        np.matmul(delta.T, a_prev, out=dW)
    else:                       # a scipy.sparse a_prev: (a_prev^T delta)^T
        dW[...] = (a_prev.T @ delta).T
    dW *= scale
    dW += W.dtype.type(an) * W
    db[...] = delta.sum(axis=0) * scale


def corrections_update(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c):
    """Corrections (batch mean + L2 term) then the update rule on W and b."""
    corrections(dW, db, delta, a_prev, 1.0 / delta.shape[0], W, c.alpha_n)
    apply_rule(rule, W, vW, sW, dW, c)
    apply_rule(rule, b, vb, sb, db, c)


def update(theta, vel, sq, grad, rule, c):
    """The update rule on the flat parameter vectors (grad holds any L2 term already)."""
    apply_rule(rule, theta, vel, sq, grad, c)


def weight_sum(sw):
    """sum_m s_m (the batch's weight)."""
    return float(np.sum(sw, dtype=np.float64))


def output_error(delta, a, z, y, sw, act, loss):
    """delta^L = dC/dz^L (nnjit.activations: a - y for the canonical pairs, f'(z)(a - y) for
    squared error with an elementwise f, the softmax Jacobian times (a - y) for softmax with
    squared error), each row times s_m M / sum_m s_m (the weighted mean)."""
    _check_pair(act, loss)
    np.subtract(a, y, out=delta)
    if loss == A.SQUARED_ERROR and act == A.SOFTMAX:
        delta[...] = a * (delta - (a * delta).sum(axis=1, keepdims=True))
    elif loss == A.SQUARED_ERROR and act != A.IDENTITY:
        delta *= fprime(z, a, act)
    S = weight_sum(sw)
    w = (sw.astype(np.float64) * delta.shape[0] / S) if S > 0 else np.zeros(delta.shape[0])
    delta *= w.astype(delta.dtype)[:, None]
    delta[...] = flush(delta)


def _check_pair(act, loss):
    x = A.LOSS_BY_CODE.get(int(loss))
    if x is None:
        raise ValueError(f"unknown loss code {loss!r}")
    if A.NAMES.get(int(act)) not in x.outputs:
        raise ValueError(f"loss {x.name!r} does not take the output {A.NAMES.get(int(act))!r}")


def sample_loss(out, a, z, y, act, loss):
    """Per-sample cost C_m into out (M,) (nnjit.activations.cost); returns max |a - y|."""
    _check_pair(act, loss)
    if loss == A.SQUARED_ERROR:
        out[...] = 0.5 * ((a - y) ** 2).sum(axis=1)
    elif loss == A.POISSON:
        with np.errstate(divide="ignore", invalid="ignore"):
            ylogy = np.where(y > 0, y * np.log(np.where(y > 0, y, 1)), 0)
        out[...] = (a - y * z - y + ylogy).sum(axis=1)
    elif act == A.SOFTMAX:
        zmax = z.max(axis=1, keepdims=True)
        lse = zmax + np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
        out[...] = -(y * (z - lse)).sum(axis=1)
    else:
        out[...] = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).sum(axis=1)
    return float(np.abs(a - y).max()) if a.size else 0.0


# ---------------------------------------------------------------- the whole network
def rows(buf, shape, l, mb):
    """Layer l's (mb, N_l) block of a batch buffer."""
    off = shape.a_off[l] * (buf.shape[0] // shape.a_off[-1])
    return buf[off:off + mb * shape.sizes[l]].reshape((mb, shape.sizes[l]))


def targets(bufs, shape, mb):
    K = shape.sizes[-1]
    return bufs.y[:mb * K].reshape((mb, K))


def forward(theta, shape, bufs, mb, par, par_work, l0):
    """Feed-forward through layers l0..L for the mb samples already in layer l0-1 of bufs."""
    for l in range(l0, len(shape.sizes)):
        W, b = layer(theta, shape, l)
        forward_layer(rows(bufs.z, shape, l, mb), rows(bufs.a, shape, l, mb),
                      rows(bufs.a, shape, l - 1, mb), W, b, shape.acts[l - 1])


def backprop(theta, grad, shape, bufs, mb, loss, alpha, l_lo):
    """Gradient of the (weighted) mean cost plus alpha/(2 sum_m s_m) sum ||W||^2 over the
    batch into grad, after forward(): output error, then for l = L..l_lo the corrections of
    layer l and the error recursion to layer l-1 (l_lo = 2: the caller does layer 1's
    corrections itself, from a sparse input, with delta^(1) in bufs). The loop form compiles
    this very function with its own kernels (nnjit.loops.network)."""
    acts, L = shape.acts, len(shape.sizes) - 1
    sw = bufs.s[:mb]
    S = weight_sum(sw)
    an = alpha / S if S > 0 else 0.0
    output_error(rows(bufs.delta, shape, L, mb), rows(bufs.a, shape, L, mb),
                 rows(bufs.z, shape, L, mb), targets(bufs, shape, mb), sw, acts[L - 1], loss)
    for l in range(L, l_lo - 1, -1):
        W, _ = layer(theta, shape, l)
        dW, db = layer(grad, shape, l)
        delta, a_prev = rows(bufs.delta, shape, l, mb), rows(bufs.a, shape, l - 1, mb)
        corrections(dW, db, delta, a_prev, 1.0 / mb, W, an)
        if l > 1:
            backward_layer(rows(bufs.delta, shape, l - 1, mb), delta, W,
                           rows(bufs.z, shape, l - 1, mb), a_prev, acts[l - 2])


def load_batch(bufs, shape, X, Y, S, order, start, mb):
    """Copy samples order[start:start+mb] into layer 0, the targets and the weight row."""
    idx = order[start:start + mb]
    rows(bufs.a, shape, 0, mb)[...] = X[idx]
    targets(bufs, shape, mb)[...] = Y[idx]
    bufs.s[:mb] = S[idx]


def penalty(theta, shape):
    """sum_l ||W^(l)||^2 (weights only)."""
    return float(sum((layer(theta, shape, l)[0].astype(np.float64) ** 2).sum()
                     for l in range(1, len(shape.sizes))))


def train_epoch(theta, vel, sq, step, grad, shape, bufs, X, Y, S, csr, order, batch_size,
                rule, h, loss, par_min, par_work, tile):
    """One epoch, batch by batch in Python (see nnjit.loops.train_epoch: the same arguments
    and results; csr, par_min, par_work and tile choose loop kernels and mean nothing here).
    A scipy.sparse X is its own first layer's input (its batch rows are never densified)."""
    acts, L = shape.acts, len(shape.sizes) - 1
    n = order.shape[0]
    alpha = h.alpha
    sparse = hasattr(X, "tocsr")
    total = pen = batch_cost = batch_pen = 0.0
    emax = 0.0
    for start in range(0, n, batch_size):
        mb = min(batch_size, n - start)
        idx = order[start:start + mb]
        if sparse:
            targets(bufs, shape, mb)[...] = Y[idx]
            bufs.s[:mb] = S[idx]
            Xb = X[idx]
            W, b = layer(theta, shape, 1)
            forward_layer(rows(bufs.z, shape, 1, mb), rows(bufs.a, shape, 1, mb), Xb, W, b, acts[0])
            forward(theta, shape, bufs, mb, True, par_work, 2)
        else:
            load_batch(bufs, shape, X, Y, S, order, start, mb)
            forward(theta, shape, bufs, mb, True, par_work, 1)
        aL, zL = rows(bufs.a, shape, L, mb), rows(bufs.z, shape, L, mb)
        y = targets(bufs, shape, mb)
        sw = bufs.s[:mb]
        emax = max(emax, sample_loss(bufs.cost[:mb], aL, zL, y, acts[L - 1], loss))
        bc = float((sw.astype(np.float64) * bufs.cost[:mb]).sum())
        total += bc
        Sb = weight_sum(sw)
        if Sb <= 0.0:
            continue
        batch_cost += bc * mb / Sb
        if alpha > 0.0:
            p = penalty(theta, shape)
            pen += p
            batch_pen += p * mb / Sb
        step[0] += 1
        c = step_coefs(rule, h, int(step[0]), alpha / Sb)
        output_error(rows(bufs.delta, shape, L, mb), aL, zL, y, sw, acts[L - 1], loss)
        for l in range(L, 0, -1):
            W, b = layer(theta, shape, l)
            vW, vb = layer(vel, shape, l)
            sW, sb = layer(sq, shape, l)
            dW, db = layer(grad, shape, l)
            delta = rows(bufs.delta, shape, l, mb)
            a_prev = Xb if (sparse and l == 1) else rows(bufs.a, shape, l - 1, mb)
            if l > 1:
                backward_layer(rows(bufs.delta, shape, l - 1, mb), delta, W,
                               rows(bufs.z, shape, l - 1, mb), a_prev, acts[l - 2])
            corrections_update(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c)
    return total, pen, emax, batch_cost, batch_pen
