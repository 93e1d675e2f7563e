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

import numpy as np
from numba import types
from numba.extending import intrinsic, overload

from .jit import jit

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


@jit(error_model="numpy", _nrt=False)
def _erf_flat(out, x):
    for i in range(x.shape[0]):
        out[i] = math.erf(x[i])


def erf(x):
    """Elementwise erf of an array (NumPy has none; SciPy is not a dependency)."""
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    _erf_flat(out.reshape(-1), x.reshape(-1))
    return out


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


# e^x in the loop form. LLVM turns math.exp into a call of the C library's expf, one element
# at a time (and its underflow path, e^-100 in a saturated sigmoid, is slower still), so the
# sigmoid and softmax rows could not vectorise: 3.6 ns an element against NumPy's 2. For
# float32 nnjit computes e^x itself, in plain arithmetic LLVM vectorises: Cody-Waite range
# reduction x = n ln2 + r, |r| <= ln2/2, Cephes' degree-6 polynomial for e^r (within 1 ulp
# of the correctly rounded e^x, tests/test_kernels.py), and 2^n built in the exponent bits
# (two factors 2^(n//2) 2^(n - n//2), so n from -149 to 128 needs no special case). 0.9 ns
# an element here. Overflow gives inf, x < -103.97 gives 0, NaN stays NaN; float64 keeps the
# library's exp. (tanh stays the library's, 19 ns an element: a polynomial tanh calling this
# e^x was not inlined by LLVM and stayed scalar; left for later.)
@intrinsic
def _f32_bits(typingctx, x):
    """The bits of a float32 as an int32 (a bit cast, no conversion)."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.int32))
    return types.int32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, x):
    """The float32 whose bits are this int32."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.int32), codegen


# The row kernels' flags: no reassoc, which would fold (k - magic) back into x log2e and lose
# the rounding to n, and n C1 + n C2 into n ln2.
_ROW_FLAGS = {"nsz", "contract"}
_ROW_OPTS = dict(fastmath=_ROW_FLAGS, error_model="numpy", _nrt=False)


def _exp32(x):
    T = np.float32
    hi, lo = T(88.72283905206835), T(-103.97207708)
    xc = hi if x > hi else x                 # NaN passes through both
    xc = lo if xc < lo else xc
    magic = T(12582912.0)                    # 1.5 2^23: k's low bits hold round(x log2e)
    k = xc * T(1.4426950408889634) + magic
    n = k - magic
    r = xc - n * T(0.693359375) - n * T(-2.12194440e-4)
    p = T(1.9875691500e-4)
    p = p * r + T(1.3981999507e-3)
    p = p * r + T(8.3334519073e-3)
    p = p * r + T(4.1665795894e-2)
    p = p * r + T(1.6666665459e-1)
    p = p * r + T(5.0000001201e-1)
    p = p * r * r + r + T(1.0)
    ni = _f32_bits(k) - np.int32(0x4B400000)
    n1 = ni >> np.int32(1)
    e = p * _bits_f32((n1 + np.int32(127)) << np.int32(23)) \
        * _bits_f32((ni - n1 + np.int32(127)) << np.int32(23))
    e = T(0.0) if x < lo else e
    return T(np.inf) if x > hi else e


def _exp(x):
    return math.exp(x)


# A function of its own (LLVM inlines it into the row loops): inlining it into Numba's IR
# instead took 5 s more to compile apply_f.
@overload(_exp, jit_options=_ROW_OPTS)
def _exp_impl(x):
    if x != types.float32:
        return lambda x: math.exp(x)
    return _exp32


@jit(fastmath=_ROW_FLAGS, error_model="numpy", _nrt=False)
def exp_row(out, x):
    """out_j = e^(x_j) as the loop form computes it (tests read it)."""
    for j in range(x.shape[0]):
        out[j] = _exp(x[j])



# The loop form's twins: one row a[j] = f(z[j]) at a time, the branch on the code hoisted
# out of the loop so each inner loop stays a plain SIMD-friendly loop (error_model numpy: a
# division is a plain IEEE one, no zero check in the loop to stop the vectoriser). Without
# reassoc (see _ROW_FLAGS) softmax sums its row in order.
@jit(fastmath=_ROW_FLAGS, error_model="numpy", _nrt=False)
def apply_f(a, z, code):
    """a_j = f(z_j) for one sample's row; a, z: (N_l,)."""
    n = z.shape[0]
    one = z.dtype.type(1.0)
    zero = z.dtype.type(0.0)
    half = z.dtype.type(0.5)
    r2 = z.dtype.type(_INV_SQRT2)
    if code == SIGMOID:
        for j in range(n):
            a[j] = one / (one + _exp(-z[j]))
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
            a[j] = _exp(z[j] - zmax)
            s += a[j]
        for j in range(n):
            a[j] = a[j] / s
    else:
        for j in range(n):
            a[j] = z[j]


@jit(fastmath=_ROW_FLAGS, error_model="numpy", _nrt=False)
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
