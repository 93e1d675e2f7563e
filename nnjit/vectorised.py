"""The vectorised form: the lecture's matrix notation in NumPy, the reference.

Same function names and signatures as :mod:`nnjit.loops`; batches are rows, so the
lecture's column-vector z = W a + b reads ``Z = A_prev @ W.T + b`` here.
"""
import numpy as np

from .activations import CROSS_ENTROPY, F, F_PRIME, IDENTITY, SOFTMAX, SQUARED_ERROR


def forward_layer(z, a, a_prev, W, b, act):
    """z = W a_prev + b ; a = f(z).  a_prev (M, N_{l-1}); W (N_l, N_{l-1}); z, a (M, N_l)."""
    np.matmul(a_prev, W.T, out=z)
    z += b
    a[...] = F[act](z)


def backward_layer(delta_prev, delta, W, z_prev, a_prev, act_prev):
    """delta^(l) = f'(z^(l)) * (W^(l+1)^T delta^(l+1)).  delta (M, N_{l+1}); W (N_{l+1}, N_l)."""
    np.matmul(delta, W, out=delta_prev)
    delta_prev *= F_PRIME[act_prev](z_prev, a_prev)


def corrections(dW, db, delta, a_prev, scale):
    """dW = scale delta^T a_prev ; db = scale sum_m delta.  (scale = 1/M: the batch mean.)"""
    np.matmul(delta.T, a_prev, out=dW)
    dW *= scale
    db[...] = delta.sum(axis=0) * scale


def corrections_update(W, b, vW, vb, dW, db, delta, a_prev, eta, mu):
    """Corrections (batch mean) then v <- mu v - eta dW ; W <- W + v."""
    corrections(dW, db, delta, a_prev, 1.0 / delta.shape[0])
    for p, v, g in ((W, vW, dW), (b, vb, db)):
        v *= mu
        v -= eta * g
        p += v


def update(theta, vel, grad, eta, mu):
    """v <- mu v - eta grad ; theta <- theta + v, on the flat parameter vectors."""
    vel *= mu
    vel -= eta * grad
    theta += vel


def output_error(delta, a, z, y, act, loss):
    """delta^L = dC/dz^L: a - y for the canonical pairs, f'(z)(a - y) for squared error with
    an elementwise f, the softmax Jacobian times (a - y) for softmax with squared error."""
    np.subtract(a, y, out=delta)
    if loss == CROSS_ENTROPY or act == IDENTITY:
        return
    if act == SOFTMAX:
        delta[...] = a * (delta - (a * delta).sum(axis=1, keepdims=True))
    else:
        delta *= F_PRIME[act](z, a)


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
    sizes, w_off, b_off = shape[0], shape[1], shape[2]
    n_out, n_in = sizes[l], sizes[l - 1]
    W = theta[w_off[l - 1]:w_off[l - 1] + n_out * n_in].reshape((n_out, n_in))
    return W, theta[b_off[l - 1]:b_off[l - 1] + n_out]


def _rows(buf, shape, l, mb):
    sizes, a_off = shape[0], shape[4]
    off = a_off[l] * (buf.shape[0] // a_off[-1])
    return buf[off:off + mb * sizes[l]].reshape((mb, sizes[l]))


def forward(theta, shape, bufs, mb, par, par_work, l0):
    """Feed-forward through all L layers for the mb samples already in layer 0 of bufs."""
    for l in range(l0, len(shape[0])):
        W, b = _params(theta, shape, l)
        forward_layer(_rows(bufs[1], shape, l, mb), _rows(bufs[0], shape, l, mb),
                      _rows(bufs[0], shape, l - 1, mb), W, b, shape[3][l - 1])


def backprop(theta, grad, shape, bufs, mb, loss):
    """Mean gradient over the batch into grad, after forward()."""
    acts, L = shape[3], len(shape[0]) - 1
    y = bufs[3][:mb * shape[0][L]].reshape((mb, shape[0][L]))
    output_error(_rows(bufs[2], shape, L, mb), _rows(bufs[0], shape, L, mb),
                 _rows(bufs[1], shape, L, mb), y, acts[L - 1], loss)
    for l in range(L, 0, -1):
        W, _ = _params(theta, shape, l)
        dW, db = _params(grad, shape, l)
        delta, a_prev = _rows(bufs[2], shape, l, mb), _rows(bufs[0], shape, l - 1, mb)
        corrections(dW, db, delta, a_prev, 1.0 / mb)
        if l > 1:
            backward_layer(_rows(bufs[2], shape, l - 1, mb), delta, W,
                           _rows(bufs[1], shape, l - 1, mb), a_prev, acts[l - 2])


def load_batch(bufs, shape, X, Y, order, start, mb):
    """Copy samples order[start:start+mb] into layer 0 and the target block of bufs."""
    idx = order[start:start + mb]
    _rows(bufs[0], shape, 0, mb)[...] = X[idx]
    bufs[3][:mb * Y.shape[1]].reshape((mb, Y.shape[1]))[...] = Y[idx]


def train_epoch(theta, vel, grad, shape, bufs, X, Y, order, batch_size, eta, mu, loss,
                par_min, par_work):
    """One epoch, batch by batch in Python (see nnjit.loops.train_epoch)."""
    acts, L = shape[3], len(shape[0]) - 1
    K = shape[0][L]
    n = order.shape[0]
    total, emax = 0.0, 0.0
    for start in range(0, n, batch_size):
        mb = min(batch_size, n - start)
        load_batch(bufs, shape, X, Y, order, start, mb)
        forward(theta, shape, bufs, mb, True, par_work, 1)
        aL, zL = _rows(bufs[0], shape, L, mb), _rows(bufs[1], shape, L, mb)
        y = bufs[3][:mb * K].reshape((mb, K))
        emax = max(emax, sample_loss(bufs[4][:mb], aL, zL, y, acts[L - 1], loss))
        total += float(bufs[4][:mb].sum())
        output_error(_rows(bufs[2], shape, L, mb), aL, zL, y, acts[L - 1], loss)
        for l in range(L, 0, -1):
            W, b = _params(theta, shape, l)
            vW, vb = _params(vel, shape, l)
            dW, db = _params(grad, shape, l)
            delta, a_prev = _rows(bufs[2], shape, l, mb), _rows(bufs[0], shape, l - 1, mb)
            if l > 1:
                backward_layer(_rows(bufs[2], shape, l - 1, mb), delta, W,
                               _rows(bufs[1], shape, l - 1, mb), a_prev, acts[l - 2])
            corrections_update(W, b, vW, vb, dW, db, delta, a_prev, eta, mu)
    return total, emax
