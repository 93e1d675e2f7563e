"""The vectorised form: the lecture's matrix notation in NumPy, the reference.

Same function names and signatures as :mod:`nnjit.loops`; batches are rows, so the
lecture's column-vector z = W a + b reads ``Z = A_prev @ W.T + b`` here.
"""
import numpy as np

import math

from .activations import CROSS_ENTROPY, F, F_PRIME, IDENTITY, SOFTMAX, SQUARED_ERROR
from .rules import H_ALPHA, H_BETA1, H_BETA2, H_EPS, H_EPS_MODE, H_ETA, H_MU, H_WD, RULE_ADAM, \
    RULE_ADAMW, RULE_NESTEROV, RULE_SGD


def forward_layer(z, a, a_prev, W, b, act):
    """z = W a_prev + b ; a = f(z).  a_prev (M, N_{l-1}); W (N_l, N_{l-1}); z, a (M, N_l)."""
    np.matmul(a_prev, W.T, out=z)
    z += b
    a[...] = F[act](z)


def backward_layer(delta_prev, delta, W, z_prev, a_prev, act_prev):
    """delta^(l) = f'(z^(l)) * (W^(l+1)^T delta^(l+1)).  delta (M, N_{l+1}); W (N_{l+1}, N_l)."""
    np.matmul(delta, W, out=delta_prev)
    delta_prev *= F_PRIME[act_prev](z_prev, a_prev)


def step_coefs(rule, hyper, t, alpha_n):
    """Per-step scalars (eta, mu, beta1, beta2, A, B, eps, decay, alpha_n) of update t; see
    nnjit.loops.step_coefs."""
    eta, mu = float(hyper[H_ETA]), float(hyper[H_MU])
    b1, b2, eps = float(hyper[H_BETA1]), float(hyper[H_BETA2]), float(hyper[H_EPS])
    A, B, decay = eta, 1.0, 1.0
    if rule in (RULE_ADAM, RULE_ADAMW):
        bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
        if hyper[H_EPS_MODE] == 0:
            A, B = eta / bc1, 1.0 / math.sqrt(bc2)
        else:
            A = eta * math.sqrt(bc2) / bc1
        if rule == RULE_ADAMW:
            decay = 1.0 - eta * float(hyper[H_WD])
    return (eta, mu, b1, b2, A, B, eps, decay, alpha_n)


def apply_rule(rule, w, v, q, d, c):
    """The update rule on arrays w (parameters), v (velocity or Adam's m), q (Adam's v) with
    gradient d: sgd v = mu v - eta d, w += v; nesterov v = mu v - eta d, w += mu v - eta d;
    adam(w) m = b1 m + (1-b1) d, s = b2 s + (1-b2) d^2, w = w decay - A m / (sqrt(s) B + eps)."""
    T = w.dtype.type
    eta, mu = T(c[0]), T(c[1])
    if rule == RULE_SGD:
        v *= mu
        v -= eta * d
        w += v
    elif rule == RULE_NESTEROV:
        v *= mu
        v -= eta * d
        w += mu * v - eta * d
    else:
        b1, b2, A, B, eps, decay = (T(x) for x in c[2:8])
        v[...] = b1 * v + (T(1) - b1) * d
        q[...] = b2 * q + (T(1) - b2) * d * d
        w[...] = w * decay - A * v / (np.sqrt(q) * B + eps)


def corrections(dW, db, delta, a_prev, scale, W, an):
    """dW = scale delta^T a_prev + an W ; db = scale sum_m delta.  (scale = 1/M: the batch
    mean; an = alpha / n_batch: the L2 penalty's gradient, weights only.)"""
    np.matmul(delta.T, a_prev, out=dW)
    dW *= scale
    dW += W.dtype.type(an) * W
    db[...] = delta.sum(axis=0) * scale


def corrections_update(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c):
    """Corrections (batch mean + L2 term) then the update rule on W and b."""
    corrections(dW, db, delta, a_prev, 1.0 / delta.shape[0], W, c[8])
    apply_rule(rule, W, vW, sW, dW, c)
    apply_rule(rule, b, vb, sb, db, c)


def update(theta, vel, sq, grad, rule, c):
    """The update rule on the flat parameter vectors (grad holds any L2 term already)."""
    apply_rule(rule, theta, vel, sq, grad, c)


def weight_sum(sw):
    """sum_m s_m (the batch's weight)."""
    return float(np.sum(sw, dtype=np.float64))


def output_error(delta, a, z, y, sw, act, loss):
    """delta^L = dC/dz^L: a - y for the canonical pairs, f'(z)(a - y) for squared error with
    an elementwise f, the softmax Jacobian times (a - y) for softmax with squared error;
    each row times s_m M / sum_m s_m (the weighted mean, see nnjit.loops.output_error)."""
    np.subtract(a, y, out=delta)
    if not (loss == CROSS_ENTROPY or act == IDENTITY):
        if act == SOFTMAX:
            delta[...] = a * (delta - (a * delta).sum(axis=1, keepdims=True))
        else:
            delta *= F_PRIME[act](z, a)
    S = weight_sum(sw)
    f = (sw.astype(np.float64) * delta.shape[0] / S) if S > 0 else np.zeros(delta.shape[0])
    delta *= f.astype(delta.dtype)[:, None]


def sample_loss(out, a, z, y, act, loss):
    """Per-sample cost C_m into out (M,); returns max |a - y| (see nnjit.loops.sample_loss)."""
    if loss == SQUARED_ERROR:
        out[...] = 0.5 * ((a - y) ** 2).sum(axis=1)
    elif act == SOFTMAX:
        zmax = z.max(axis=1, keepdims=True)
        lse = zmax + np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
        out[...] = -(y * (z - lse)).sum(axis=1)
    else:
        out[...] = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).sum(axis=1)
    return float(np.abs(a - y).max()) if a.size else 0.0


# ---------------------------------------------------------------- the whole network
def _params(theta, shape, l):
    n_out, n_in = shape.sizes[l], shape.sizes[l - 1]
    W = theta[shape.w_off[l - 1]:shape.w_off[l - 1] + n_out * n_in].reshape((n_out, n_in))
    return W, theta[shape.b_off[l - 1]:shape.b_off[l - 1] + n_out]


def _rows(buf, shape, l, mb):
    off = shape.a_off[l] * (buf.shape[0] // shape.a_off[-1])
    return buf[off:off + mb * shape.sizes[l]].reshape((mb, shape.sizes[l]))


def _targets(bufs, shape, mb):
    K = shape.sizes[-1]
    return bufs.y[:mb * K].reshape((mb, K))


def forward(theta, shape, bufs, mb, par, par_work, l0):
    """Feed-forward through all L layers for the mb samples already in layer 0 of bufs."""
    for l in range(l0, len(shape.sizes)):
        W, b = _params(theta, shape, l)
        forward_layer(_rows(bufs.z, shape, l, mb), _rows(bufs.a, shape, l, mb),
                      _rows(bufs.a, shape, l - 1, mb), W, b, shape.acts[l - 1])


def backprop(theta, grad, shape, bufs, mb, loss, alpha):
    """Gradient of the (weighted) mean cost + L2 term into grad, after forward()."""
    acts, L = shape.acts, len(shape.sizes) - 1
    sw = bufs.s[:mb]
    S = weight_sum(sw)
    an = alpha / S if S > 0 else 0.0
    output_error(_rows(bufs.delta, shape, L, mb), _rows(bufs.a, shape, L, mb),
                 _rows(bufs.z, shape, L, mb), _targets(bufs, shape, mb), sw, acts[L - 1], loss)
    for l in range(L, 0, -1):
        W, _ = _params(theta, shape, l)
        dW, db = _params(grad, shape, l)
        delta, a_prev = _rows(bufs.delta, shape, l, mb), _rows(bufs.a, shape, l - 1, mb)
        corrections(dW, db, delta, a_prev, 1.0 / mb, W, an)
        if l > 1:
            backward_layer(_rows(bufs.delta, shape, l - 1, mb), delta, W,
                           _rows(bufs.z, shape, l - 1, mb), a_prev, acts[l - 2])


def load_batch(bufs, shape, X, Y, S, order, start, mb):
    """Copy samples order[start:start+mb] into layer 0, the targets and the weight row."""
    idx = order[start:start + mb]
    _rows(bufs.a, shape, 0, mb)[...] = X[idx]
    _targets(bufs, shape, mb)[...] = Y[idx]
    bufs.s[:mb] = S[idx]


def penalty(theta, shape):
    """sum_l ||W^(l)||^2 (weights only)."""
    return float(sum((_params(theta, shape, l)[0].astype(np.float64) ** 2).sum()
                     for l in range(1, len(shape.sizes))))


def train_epoch(theta, vel, sq, step, grad, shape, bufs, X, Y, S, order, batch_size, rule,
                hyper, loss, par_min, par_work, tile):
    """One epoch, batch by batch in Python (see nnjit.loops.train_epoch; par_min, par_work
    and tile choose loop kernels and mean nothing here)."""
    acts, L = shape.acts, len(shape.sizes) - 1
    n = order.shape[0]
    alpha = float(hyper[H_ALPHA])
    total, emax = 0.0, 0.0
    for start in range(0, n, batch_size):
        mb = min(batch_size, n - start)
        load_batch(bufs, shape, X, Y, S, order, start, mb)
        forward(theta, shape, bufs, mb, True, par_work, 1)
        aL, zL = _rows(bufs.a, shape, L, mb), _rows(bufs.z, shape, L, mb)
        y = _targets(bufs, shape, mb)
        sw = bufs.s[:mb]
        emax = max(emax, sample_loss(bufs.cost[:mb], aL, zL, y, acts[L - 1], loss))
        total += float((sw.astype(np.float64) * bufs.cost[:mb]).sum())
        Sb = weight_sum(sw)
        if Sb <= 0.0:
            continue
        if alpha > 0.0:
            total += 0.5 * alpha * penalty(theta, shape)
        step[0] += 1
        c = step_coefs(rule, hyper, int(step[0]), alpha / Sb)
        output_error(_rows(bufs.delta, shape, L, mb), aL, zL, y, sw, acts[L - 1], loss)
        for l in range(L, 0, -1):
            W, b = _params(theta, shape, l)
            vW, vb = _params(vel, shape, l)
            sW, sb = _params(sq, shape, l)
            dW, db = _params(grad, shape, l)
            delta, a_prev = _rows(bufs.delta, shape, l, mb), _rows(bufs.a, shape, l - 1, mb)
            if l > 1:
                backward_layer(_rows(bufs.delta, shape, l - 1, mb), delta, W,
                               _rows(bufs.z, shape, l - 1, mb), a_prev, acts[l - 2])
            corrections_update(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c)
    return total, emax
