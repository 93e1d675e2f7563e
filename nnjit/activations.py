"""The lecture's activation functions f and their derivatives f', and the costs with their
output errors δ^L: each written once, here, and compiled for every form (nnjit.forms).

One table, ``ACTIVATIONS``: a code, a name, f(z) and f'(z, a) side by side (each f' in terms
of z or a = f(z), whichever the lecture uses), and where the function may stand. The loop,
CUDA and vectorised forms all dispatch on the code through functions generated from this
table, and each dispatch raises on a code that is not in it. A new activation is a new
entry (two small functions and a line): nothing else in nnjit learns its name.

============  ===============================  ============================================
name          f(z)                             f'(z)
============  ===============================  ============================================
identity      z                                1
sigmoid       1 / (1 + e^-z)                   a (1 - a)
tanh          tanh z                           1 - a^2
relu          max(0, z)                        1 if z > 0 else 0   (0 at z = 0, as the lecture)
gelu          z/2 (1 + erf(z / sqrt 2))        Phi(z) + z phi(z)   (exact erf form)
leaky_relu    z if z > 0 else 0.01 z           1 if z > 0 else 0.01 (PyTorch's LeakyReLU)
softmax       e^z_k / sum_k' e^z_k'            full Jacobian a_k (1[k=k'] - a_k'), output only
exp           e^z                              a   (output only: Poisson regression's link)
============  ===============================  ============================================

Every activation and every error δ the kernels store passes through ``flush`` (0 below
sqrt(TINY)), so no product of an activation and an error is ever a slow denormal float.

The definitions are written with the names of :mod:`nnjit.forms` (ZERO, ONE, exp, where, ...)
so that each runs on scalars in the compiled forms and on whole arrays in the vectorised one.
Softmax couples a row's units, so its definition is a row function (``softmax_row``), and the
vectorised form keeps its own array expressions for softmax and the costs.

Costs (means over samples in every form), each with the output it belongs to:

=============  ====================================================  =====================
loss           C_m                                                   canonical output
=============  ====================================================  =====================
squared_error  1/2 sum_k (a_k - y_k)^2 (the lecture's)               identity (any other:
                                                                     f'(z)(a - y), softmax's
                                                                     Jacobian)
cross_entropy  -sum_k y_k log a_k (softmax), the binary form          softmax, sigmoid (only)
               (sigmoid), both from z: finite where a rounds to 0, 1
poisson        sum_k a_k - y_k log a_k + y_k log y_k - y_k, from z   exp (only)
=============  ====================================================  =====================

δ^L = dC/dz^L is exact for every pair: a - y for the canonical ones, f'(z)(a - y) for squared
error with another elementwise f, and the softmax Jacobian times (a - y) for softmax with
squared error. ``LOSSES`` names each loss's allowed outputs; a loss is refused with others.
"""
from collections import namedtuple

import numpy as np

from .forms import (EXP_LO, HALF, ONE, ROOT_TINY, ZERO, SQRT1_2, INV_SQRT_2PI, erf, exp, log,
                    log1p, tanh, where)

#: one row of the table: f(z) and f'(z, a) (None for softmax, a row function), and whether
#: the function may be a hidden layer's and an output layer's
Activation = namedtuple("Activation", "code name f fprime hidden output")


def identity(z):
    return z


def identity_prime(z, a):
    return ONE


def sigmoid(z):
    return ONE / (ONE + exp(-z))


def sigmoid_prime(z, a):
    return a * (ONE - a)


def tanh_(z):
    return tanh(z)


def tanh_prime(z, a):
    return ONE - a * a


def relu(z):
    return where(z > ZERO, z, ZERO)


def relu_prime(z, a):
    return where(z > ZERO, ONE, ZERO)


def gelu(z):
    return HALF * z * (ONE + erf(z * SQRT1_2))


def gelu_prime(z, a):
    # Phi(z) + z phi(z). Beyond |z| ~ 13.2 (float32; 37.6 in float64) e^(-z^2/2) is below the
    # smallest normal number: a denormal exp and product (~100 cycles each on x86) for every
    # such unit, most of a dead GELU layer (online Adam on the bench's data: 66 % of z below
    # -13.2). There the term is below TINY |z|, so it is 0 and exp's argument held at EXP_LO;
    # Phi(z) is then exactly 1 or 0.
    q = -HALF * z * z
    e = exp(where(q < EXP_LO, EXP_LO, q))
    return HALF * (ONE + erf(z * SQRT1_2)) + where(q < EXP_LO, ZERO, z * INV_SQRT_2PI * e)


LEAKY_SLOPE = 0.01      # PyTorch's LeakyReLU default negative_slope


def leaky_relu(z):
    return where(z > ZERO, z, LEAKY_SLOPE * z)


def leaky_relu_prime(z, a):
    return where(z > ZERO, ONE, LEAKY_SLOPE)


def exp_(z):
    return exp(z)


def exp_prime(z, a):
    return a


ACTIVATIONS = (
    Activation(0, "identity", identity, identity_prime, True, True),
    Activation(1, "sigmoid", sigmoid, sigmoid_prime, True, True),
    Activation(2, "tanh", tanh_, tanh_prime, True, True),
    Activation(3, "relu", relu, relu_prime, True, True),
    Activation(4, "gelu", gelu, gelu_prime, True, True),
    Activation(5, "softmax", None, None, False, True),
    Activation(6, "leaky_relu", leaky_relu, leaky_relu_prime, True, True),
    Activation(7, "exp", exp_, exp_prime, False, True),
)

CODES = {a.name: a.code for a in ACTIVATIONS}
NAMES = {a.code: a.name for a in ACTIVATIONS}
BY_CODE = {a.code: a for a in ACTIVATIONS}
HIDDEN = tuple(a.name for a in ACTIVATIONS if a.hidden)
OUTPUT = tuple(a.name for a in ACTIVATIONS if a.output)
ELEMENTWISE = tuple(a for a in ACTIVATIONS if a.f is not None)
IDENTITY, SIGMOID, SOFTMAX, EXP = CODES["identity"], CODES["sigmoid"], CODES["softmax"], CODES["exp"]
#: outputs whose values are probabilities (cross-entropy's and classifiers')
PROBABILITY_OUTPUTS = ("softmax", "sigmoid")


def flush(x):
    """x, or 0 where |x| < ROOT_TINY = sqrt(TINY) (float32 1.1e-19, float64 1.5e-154): every
    activation a and every error δ the kernels store passes through it. A saturated unit's a
    (a sigmoid's e^-60) or δ (a (1 - a) times a sum) below sqrt(TINY) makes its products a_i δ_j,
    w_jk δ_k and w_ij a_i denormal, and arithmetic on denormals costs ~100 cycles an operation
    on x86 (online Adam on saturated sigmoids ran at 70 µs a sample instead of 40). Kept at 0,
    any product of two such values is 0 or normal; what is dropped moves a sum by under
    sqrt(TINY) |w|, far below a unit in the last place of any z of ordinary size. Part of
    the equations, like the update rules' flush of state below 2**20 TINY (nnjit.rules), so every
    form and thread count computes the same numbers; a CPU's flush-to-zero mode is per thread."""
    return where(abs(x) < ROOT_TINY, ZERO, x)


def softmax_row(a, z):
    """a_k = e^(z_k - zmax) / sum_k' e^(z_k' - zmax) for one sample's row (the max
    subtracted, so e^x never overflows); a, z (K,)."""
    n = z.shape[0]
    zmax = z[0]
    for j in range(1, n):
        zmax = max(zmax, z[j])
    for j in range(n):                  # (its own loop: the exps vectorise, the sum in
        a[j] = exp(z[j] - zmax)         # order below cannot)
    s = ZERO
    for j in range(n):
        s += a[j]
    for j in range(n):
        q = a[j] / s
        a[j] = where(q < ROOT_TINY, ZERO, q)        # flush (inline: one function fewer to compile)


# ---------------------------------------------------------------- costs and output errors
Loss = namedtuple("Loss", "code name outputs canonical")
SQUARED_ERROR, CROSS_ENTROPY, POISSON = 0, 1, 2
LOSS_TABLE = (Loss(SQUARED_ERROR, "squared_error", OUTPUT, "identity"),
              Loss(CROSS_ENTROPY, "cross_entropy", PROBABILITY_OUTPUTS, None),
              Loss(POISSON, "poisson", ("exp",), "exp"))
LOSSES = {x.name: x.code for x in LOSS_TABLE}
LOSS_BY_CODE = {x.code: x for x in LOSS_TABLE}


def default_loss(output):
    """The loss an output gets when none is named: cross-entropy for probabilities, Poisson
    for exp, squared error otherwise."""
    return ("cross_entropy" if output in PROBABILITY_OUTPUTS else
            "poisson" if output == "exp" else "squared_error")


def cost(a, z, y, m, act, loss):
    """C_m, the cost of sample m (rows of a, z, y (M, K)): 1/2 sum_k (a_k - y_k)^2;
    cross-entropy from z: -sum_k y_k (z_k - log sum_k' e^z_k') for softmax, sum_k
    max(z_k, 0) - z_k y_k + log(1 + e^-|z_k|) for sigmoid; Poisson deviance's half from z,
    sum_k e^z_k - y_k z_k + y_k log y_k - y_k (scikit-learn's, zero at a = y)."""
    K = a.shape[1]
    c = ZERO
    if loss == SQUARED_ERROR:
        for k in range(K):
            e = a[m, k] - y[m, k]
            c += HALF * e * e
    elif loss == CROSS_ENTROPY and act == SOFTMAX:
        zmax = z[m, 0]
        for k in range(1, K):
            zmax = max(zmax, z[m, k])
        se = ZERO
        for k in range(K):
            se += exp(z[m, k] - zmax)
        lse = zmax + log(se)
        for k in range(K):
            c -= y[m, k] * (z[m, k] - lse)
    elif loss == CROSS_ENTROPY and act == SIGMOID:
        for k in range(K):
            zk = z[m, k]
            c += max(zk, ZERO) - zk * y[m, k] + log1p(exp(-abs(zk)))
    elif loss == POISSON and act == EXP:
        for k in range(K):
            yk = y[m, k]
            c += a[m, k] - yk * z[m, k] - yk
            if yk > ZERO:
                c += yk * log(yk)
    else:
        raise ValueError("unknown loss code, or a loss with an output it does not take")
    return c


def output_error(delta, a, z, y, m, act, loss, w):
    """δ^L of sample m (rows of delta, a, z, y (M, K)) times its weight factor w: a - y for
    the canonical pairs, f'(z)(a - y) for squared error with an elementwise f, a_k ((a - y)_k
    - sum_k' a_k' (a - y)_k') for softmax with squared error. f' is fprime, this form's
    dispatch on the activation table."""
    K = a.shape[1]
    for k in range(K):
        delta[m, k] = a[m, k] - y[m, k]
    if loss == SQUARED_ERROR and act == SOFTMAX:
        s = ZERO
        for k in range(K):
            s += a[m, k] * delta[m, k]
        for k in range(K):
            delta[m, k] = a[m, k] * (delta[m, k] - s)
    elif loss == SQUARED_ERROR and act != IDENTITY:
        for k in range(K):
            delta[m, k] *= fprime(z[m, k], a[m, k], act)
    elif not ((loss == SQUARED_ERROR) or (loss == CROSS_ENTROPY and (act == SOFTMAX or act == SIGMOID))
              or (loss == POISSON and act == EXP)):
        raise ValueError("unknown loss code, or a loss with an output it does not take")
    if w != ONE:
        for k in range(K):
            delta[m, k] *= w
    for k in range(K):                              # flush, inline
        d = delta[m, k]
        delta[m, k] = where(abs(d) < ROOT_TINY, ZERO, d)


def fprime(z, a, act):      # noqa: ARG001 - rebound per form: the table's dispatch on act
    raise NotImplementedError("output_error runs specialised, with its form's fprime")


def max_error(a, y, m):
    """max_k |a_k - y_k| of sample m (the lecture's stopping criterion)."""
    e = ZERO
    for k in range(a.shape[1]):
        e = max(e, abs(a[m, k] - y[m, k]))
    return e
