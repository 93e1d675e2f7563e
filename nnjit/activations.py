"""The lecture's activation functions f and their derivatives f', side by side.

One table, two forms: NumPy functions for the vectorised form (``F``, ``F_PRIME``) and
Numba row kernels for the loop form (``apply_f``, ``mul_fprime``). The CUDA form keeps its
scalar device twins in :mod:`nnjit.cuda`. Each f' is written in terms of z and a = f(z),
whichever the lecture uses.

=========  ===============================  ==============================================
name       f(z)                             f'(z)
=========  ===============================  ==============================================
identity   z                                1
sigmoid    1 / (1 + e^-z)                   a (1 - a)
tanh       tanh z                           1 - a^2
relu       max(0, z)                        1 if z > 0 else 0   (0 at z = 0, as the lecture)
gelu       z/2 (1 + erf(z / sqrt 2))        Phi(z) + z phi(z)   (exact erf form)
softmax    e^z_k / sum_k' e^z_k'            full Jacobian a_k (1[k=k'] - a_k'), output only
=========  ===============================  ==============================================
"""
import math

import numba
import numpy as np
from numba import njit

from ._numba_setup import CACHE   # False where no cache folder is writable
from .config import FASTMATH

IDENTITY, SIGMOID, TANH, RELU, GELU, SOFTMAX = range(6)
CODES = {"identity": IDENTITY, "sigmoid": SIGMOID, "tanh": TANH, "relu": RELU,
         "gelu": GELU, "softmax": SOFTMAX}
NAMES = {v: k for k, v in CODES.items()}
HIDDEN = ("sigmoid", "tanh", "relu", "gelu", "identity")
OUTPUT = ("softmax", "sigmoid", "identity", "tanh", "relu", "gelu")

SQUARED_ERROR, CROSS_ENTROPY = range(2)
LOSSES = {"squared_error": SQUARED_ERROR, "cross_entropy": CROSS_ENTROPY}

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@numba.vectorize(["float32(float32)", "float64(float64)"], cache=CACHE)
def erf(x):
    """Elementwise erf as a NumPy ufunc (NumPy has none; SciPy is not a dependency)."""
    return math.erf(x)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))   # subtract the max: exp never overflows
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z):
    with np.errstate(over="ignore"):               # e^-z = inf gives a = 0, correctly
        return 1.0 / (1.0 + np.exp(-z))


# The vectorised form's table: code -> f(z), and code -> f'(z, a).
F = {
    IDENTITY: lambda z: z.copy(),
    SIGMOID: _sigmoid,
    TANH: np.tanh,
    RELU: lambda z: np.maximum(z, 0),
    GELU: lambda z: 0.5 * z * (1.0 + erf(z * _INV_SQRT2)),
    SOFTMAX: _softmax,
}
F_PRIME = {
    IDENTITY: lambda z, a: np.ones_like(z),
    SIGMOID: lambda z, a: a * (1.0 - a),
    TANH: lambda z, a: 1.0 - a * a,
    RELU: lambda z, a: (z > 0).astype(z.dtype),
    GELU: lambda z, a: (0.5 * (1.0 + erf(z * _INV_SQRT2))
                        + z * (_INV_SQRT_2PI * np.exp(-0.5 * z * z))),
}


# The loop form's twins: one row a[j] = f(z[j]) at a time, the branch on the code hoisted
# out of the loop so each inner loop stays a plain SIMD-friendly loop.
@njit(fastmath=FASTMATH, cache=CACHE, _nrt=False)
def apply_f(a, z, code):
    """a_j = f(z_j) for one sample's row; a, z: (N_l,)."""
    n = z.shape[0]
    one = z.dtype.type(1.0)
    zero = z.dtype.type(0.0)
    half = z.dtype.type(0.5)
    r2 = z.dtype.type(_INV_SQRT2)
    if code == SIGMOID:
        for j in range(n):
            a[j] = one / (one + math.exp(-z[j]))
    elif code == TANH:
        for j in range(n):
            a[j] = math.tanh(z[j])
    elif code == RELU:
        for j in range(n):
            a[j] = z[j] if z[j] > zero else zero
    elif code == GELU:
        for j in range(n):
            a[j] = half * z[j] * (one + math.erf(z[j] * r2))
    elif code == SOFTMAX:
        zmax = z[0]
        for j in range(1, n):
            zmax = max(zmax, z[j])
        s = zero
        for j in range(n):
            a[j] = math.exp(z[j] - zmax)
            s += a[j]
        for j in range(n):
            a[j] = a[j] / s
    else:
        for j in range(n):
            a[j] = z[j]


@njit(fastmath=FASTMATH, cache=CACHE, _nrt=False)
def mul_fprime(d, z, a, code):
    """d_j <- f'(z_j) d_j for one sample's row (elementwise f only); d, z, a: (N_l,)."""
    n = z.shape[0]
    one = z.dtype.type(1.0)
    zero = z.dtype.type(0.0)
    half = z.dtype.type(0.5)
    r2 = z.dtype.type(_INV_SQRT2)
    r2pi = z.dtype.type(_INV_SQRT_2PI)
    if code == SIGMOID:
        for j in range(n):
            d[j] *= a[j] * (one - a[j])
    elif code == TANH:
        for j in range(n):
            d[j] *= one - a[j] * a[j]
    elif code == RELU:
        for j in range(n):
            d[j] = d[j] if z[j] > zero else zero
    elif code == GELU:
        for j in range(n):
            zj = z[j]
            d[j] *= half * (one + math.erf(zj * r2)) + zj * r2pi * math.exp(-half * zj * zj)
