"""e^x and erf for the loop form: the ``exp`` and ``erf`` primitives of nnjit.forms there.

e^x. LLVM turns math.exp into a call of the C library's expf, one element at a time (and its
underflow path, e^-100 in a saturated sigmoid, is slower still), so the sigmoid and softmax
rows could not vectorise: 3.6 ns an element against NumPy's 2. For float32 nnjit computes
e^x itself, in plain arithmetic LLVM vectorises: Cody-Waite range reduction x = n ln2 + r,
|r| <= ln2/2, Cephes' degree-6 polynomial for e^r (within 1 ulp of the correctly rounded e^x,
tests/test_kernels.py), and 2^n built in the exponent bits (two factors 2^(n//2) 2^(n - n//2),
so n from -149 to 128 needs no special case). 0.9 ns an element here. Overflow gives inf,
x < -103.97 gives 0, NaN stays NaN. float64 the same way with Cephes' rational e^r (the
library's exp had kept sigmoid and softmax rows scalar in float64 too).

tanh x. The library's tanh is one call an element as well (a 100 x 64 tanh layer's
feed-forward at batch 200 took 3.7x its sums in float32, 3.3x in float64); Cephes' tanhf and
tanh are plain arithmetic on top of the e^x above: x + x^3 P(x^2) (float64 P/Q) below 0.625,
1 - 2 / (e^2|x| + 1) with x's sign above, both computed and one selected, so the row loop
vectorises. Both functions within 1.5 ulp of the correctly rounded value
(tests/test_kernels.py::test_loop_form_exp_and_tanh; 1.0 measured).
"""
import math

import numpy as np
from numba import types
from numba.extending import intrinsic, overload

from ..jit import jit


def _bitcast(src, dst):
    """An intrinsic: the dst (a Numba type of src's width) with the bits of a src, no
    conversion. The pairs below: float32 <-> int32, float64 <-> int64."""
    @intrinsic
    def cast(typingctx, x):
        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], context.get_value_type(dst))
        return dst(src), codegen
    return cast


_f32_bits, _bits_f32 = _bitcast(types.float32, types.int32), _bitcast(types.int32, types.float32)
_f64_bits, _bits_f64 = _bitcast(types.float64, types.int64), _bitcast(types.int64, types.float64)


# No reassoc: it would fold (k - magic) back into x log2e and lose the rounding to n, and
# n C1 + n C2 into n ln2.
ROW_FLAGS = {"nsz", "contract"}
_ROW_OPTS = dict(fastmath=ROW_FLAGS, error_model="numpy", _nrt=False)


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


def _exp64(x):
    # Cephes' exp: the same reduction with ln2 in two parts, e^r = 1 + 2 r P(r^2) / (Q(r^2) -
    # r P(r^2)) (a division vectorises too)
    hi, lo = 709.782712893384, -745.1332191019412
    xc = hi if x > hi else x
    xc = lo if xc < lo else xc
    magic = 6755399441055744.0               # 1.5 2^52
    k = xc * 1.4426950408889634 + magic
    n = k - magic
    r = xc - n * 6.93145751953125e-1 - n * 1.42860682030941723212e-6
    rr = r * r
    px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
              + 9.99999999999999999910e-1)
    qx = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
          + 2.27265548208155028766e-1) * rr + 2.00000000000000000009
    e = 1.0 + 2.0 * (px / (qx - px))
    ni = _f64_bits(k) - _f64_bits(magic)
    n1 = ni >> np.int64(1)
    e = e * _bits_f64((n1 + np.int64(1023)) << np.int64(52)) \
        * _bits_f64((ni - n1 + np.int64(1023)) << np.int64(52))
    e = 0.0 if x < lo else e
    return np.inf if x > hi else e


def exp(x):
    """e^x in compiled loop-form code (the polynomials above, float32 and float64); a function
    of its own that LLVM inlines into the row loops (inlining it into Numba's IR instead took
    5 s more to compile the activation rows)."""
    return math.exp(x)


@overload(exp, jit_options=_ROW_OPTS)
def _exp_impl(x):
    if x == types.float32:
        return _exp32
    if x == types.float64:
        return _exp64
    return lambda x: math.exp(x)


def _tanh32(x):
    # Cephes' tanhf: x + x^3 P(x^2) below 0.625, else 1 - 2 / (e^2|x| + 1) with its sign
    T = np.float32
    s = x * x
    small = ((((T(-5.70498872745e-3) * s + T(2.06390887954e-2)) * s - T(5.37397155531e-2)) * s
              + T(1.33314422036e-1)) * s - T(3.33332819422e-1)) * s * x + x
    z = abs(x)
    big = T(1.0) - T(2.0) / (exp(T(2.0) * z) + T(1.0))
    big = -big if x < T(0.0) else big
    return big if z > T(0.625) else small


def _tanh64(x):
    # Cephes' tanh: x + x^3 P(x^2) / Q(x^2) below 0.625, else as above
    s = x * x
    p = (-9.64399179425052238628e-1 * s - 9.92877231001918586564e1) * s \
        - 1.61468768441708447952e3
    q = ((s + 1.12811678491632931402e2) * s + 2.23548839060100448583e3) * s \
        + 4.84406305325125486048e3
    small = x + x * s * (p / q)
    z = abs(x)
    big = 1.0 - 2.0 / (exp(2.0 * z) + 1.0)
    big = -big if x < 0.0 else big
    return big if z > 0.625 else small


def tanh(x):
    """tanh x in compiled loop-form code: plain arithmetic LLVM vectorises (the library's tanh
    is one call an element: a 100 x 64 tanh layer's feed-forward took 3-4x its sums)."""
    return math.tanh(x)


@overload(tanh, jit_options=_ROW_OPTS)
def _tanh_impl(x):
    if x == types.float32:
        return _tanh32
    if x == types.float64:
        return _tanh64
    return lambda x: math.tanh(x)


@jit(**_ROW_OPTS)
def exp_row(out, x):
    """out_j = e^(x_j) as the loop form computes it (tests read it)."""
    for j in range(x.shape[0]):
        out[j] = exp(x[j])


@jit(**_ROW_OPTS)
def tanh_row(out, x):
    """out_j = tanh(x_j) as the loop form computes it (tests read it)."""
    for j in range(x.shape[0]):
        out[j] = tanh(x[j])


@jit(error_model="numpy", _nrt=False)
def erf_flat(out, x):
    """out_i = erf(x_i) for flat arrays (the vectorised form's erf: NumPy has none)."""
    for i in range(x.shape[0]):
        out[i] = math.erf(x[i])
