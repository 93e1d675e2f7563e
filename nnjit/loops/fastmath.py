"""e^x and erf for the loop form: the ``exp`` and ``erf`` primitives of nnjit.forms there.

e^x. LLVM turns math.exp into a call of the C library's expf, one element at a time (and its
underflow path, e^-100 in a saturated sigmoid, is slower still), so the sigmoid and softmax
rows could not vectorise: 3.6 ns an element against NumPy's 2. For float32 nnjit computes
e^x itself, in plain arithmetic LLVM vectorises: Cody-Waite range reduction x = n ln2 + r,
|r| <= ln2/2, Cephes' degree-6 polynomial for e^r (within 1 ulp of the correctly rounded e^x,
tests/test_kernels.py), and 2^n built in the exponent bits (two factors 2^(n//2) 2^(n - n//2),
so n from -149 to 128 needs no special case). 0.9 ns an element here. Overflow gives inf,
x < -103.97 gives 0, NaN stays NaN; float64 keeps the library's exp. (tanh stays the
library's: a polynomial tanh calling this e^x was not inlined by LLVM and stayed scalar.)
"""
import math

import numpy as np
from numba import types
from numba.extending import intrinsic, overload

from ..jit import jit


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


def exp(x):
    """e^x in compiled loop-form code (the float32 polynomial above, the library's exp for
    float64); a function of its own that LLVM inlines into the row loops (inlining it into
    Numba's IR instead took 5 s more to compile the activation rows)."""
    return math.exp(x)


@overload(exp, jit_options=_ROW_OPTS)
def _exp_impl(x):
    if x != types.float32:
        return lambda x: math.exp(x)
    return _exp32


@jit(**_ROW_OPTS)
def exp_row(out, x):
    """out_j = e^(x_j) as the loop form computes it (tests read it)."""
    for j in range(x.shape[0]):
        out[j] = exp(x[j])


@jit(error_model="numpy", _nrt=False)
def erf_flat(out, x):
    """out_i = erf(x_i) for flat arrays (the vectorised form's erf: NumPy has none)."""
    for i in range(x.shape[0]):
        out[i] = math.erf(x[i])
