"""A dot product in one fixed order that still runs at vector speed: the sum of every
single-sample feed-forward z_j = sum_i w_ij a_i + b_j (online learning, the fused update).

Why written in LLVM IR: online learning computes the next sample's z^(1) inside the update
(nnjit.loops.blocked.update_forward_next) and, at a streamed chunk's start, by feed-forward;
both must give the same bits, so the sum needs one order that no optimiser decides. In plain
Numba that meant eight scalar partial sums compiled without reassociation, which LLVM left
scalar: 71 us for the 128 dot products of 784 terms a sample of a 784-128-10 network, most of
an online step. Here the order is written as vector instructions (no fast-math flags, so LLVM
keeps every add where it stands, and no contraction into fused multiply-adds): 14 us. The
instructions live in a function of its own (:func:`dot`), compiled without
the callers' fast-math flags (see ``_OWN`` below for why that matters).

The order, for w, x of n elements (``LANES`` = 16, ``ACCS`` = 4), with T the dtype:

1. ``ACCS`` vectors of ``LANES`` partial sums; pass p adds w[i] x[i] for i in
   [p 64 + 16 a, p 64 + 16 a + 16) into vector a, lane by lane, while a whole 64 fit;
2. then whole groups of 16 into vector 0;
3. the vectors added pairwise ((v0 + v1) + (v2 + v3)), then the 16 lanes by halves (lane k
   + lane k + 8, then k + 4, k + 2, k + 1): one number;
4. the last n mod 16 products added to it one by one.

The same on every x86 CPU (a 16-lane vector is split into the machine's registers, lane for
lane) and for any strides (non-contiguous rows are gathered into the same vectors), so every
caller and thread count gives the same z. :func:`dot_model` is this order in NumPy (the
tests hold the compiled dot to it bit for bit, called from code with and without fast-math
flags).
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..jit import jit

#: lanes of one vector of partial sums, and vectors summed side by side (the adds of one
#: vector wait ~4 cycles for the previous one; four keep the loads busy)
LANES, ACCS = 16, 4


@intrinsic
def _dot_ir(typingctx, w, x):
    """dot's instructions (called by dot, never by a kernel directly: see _OWN)."""
    if not (isinstance(w, types.Array) and isinstance(x, types.Array) and w.ndim == 1
            and x.ndim == 1 and w.dtype == x.dtype
            and w.dtype in (types.float32, types.float64)):
        return None

    def codegen(context, builder, sig, args):
        tw, tx = sig.args
        aw = context.make_array(tw)(context, builder, args[0])
        ax = context.make_array(tx)(context, builder, args[1])
        fty = context.get_value_type(tw.dtype)
        vty = ir.VectorType(fty, LANES)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        size = context.get_abi_sizeof(fty)

        def const(v):
            return ir.Constant(i64, v)

        n = builder.extract_value(aw.shape, 0)
        arrays = [(builder.ptrtoint(a.data, i64), builder.extract_value(a.strides, 0),
                   t.layout == "C") for a, t in ((aw, tw), (ax, tx))]

        def address(base, stride, i, ty):
            return builder.inttoptr(builder.add(base, builder.mul(i, stride)), ty.as_pointer())

        def vector(base, stride, contiguous, i):
            if contiguous:
                return builder.load(address(base, const(size), i, vty), align=size)
            v = ir.Constant(vty, ir.Undefined)
            for k in range(LANES):
                e = builder.load(address(base, stride, builder.add(i, const(k)), fty))
                v = builder.insert_element(v, e, ir.Constant(i32, k))
            return v

        def product(i):
            return builder.fmul(*(vector(b, s, c, i) for b, s, c in arrays))

        zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * LANES)
        acc = [cgutils.alloca_once_value(builder, zero) for _ in range(ACCS)]
        block = LANES * ACCS
        passes = builder.udiv(n, const(block))
        with cgutils.for_range(builder, passes) as loop:                        # step 1
            base = builder.mul(loop.index, const(block))
            for a in range(ACCS):
                p = product(builder.add(base, const(a * LANES)))
                builder.store(builder.fadd(builder.load(acc[a]), p), acc[a])
        start = builder.mul(passes, const(block))
        groups = builder.udiv(builder.sub(n, start), const(LANES))
        with cgutils.for_range(builder, groups) as loop:                        # step 2
            p = product(builder.add(start, builder.mul(loop.index, const(LANES))))
            builder.store(builder.fadd(builder.load(acc[0]), p), acc[0])
        v = [builder.load(a) for a in acc]                                      # step 3
        while len(v) > 1:
            v = [builder.fadd(v[k], v[k + 1]) for k in range(0, len(v), 2)]
        v, width = v[0], LANES
        while width > 1:
            half = width // 2
            pick = [ir.Constant(ir.VectorType(i32, half), list(r))
                    for r in (range(half), range(half, width))]
            v = builder.fadd(*(builder.shuffle_vector(v, v, m) for m in pick))
            width = half
        total = cgutils.alloca_once_value(builder, builder.extract_element(v, ir.Constant(i32, 0)))
        tail = builder.add(start, builder.mul(groups, const(LANES)))
        with cgutils.for_range(builder, builder.sub(n, tail)) as loop:          # step 4
            i = builder.add(tail, loop.index)
            wi, xi = (builder.load(address(b, s, i, fty)) for b, s, _ in arrays)
            builder.store(builder.fadd(builder.load(total), builder.fmul(wi, xi)), total)
        return builder.load(total)

    return w.dtype(w, x), codegen


# The callers are compiled with fast-math flags (nnjit.config.FASTMATH: reassoc, contract),
# and Numba adds a function's flags to every instruction in it, an intrinsic's included:
# there the sums were contracted into fused multiply-adds (143 of 200 float32 dots of 64-784
# terms differed from dot_model) and might have been reordered caller by caller. A function
# of its own keeps its instructions' flags when LLVM inlines it (flags travel with the
# instructions), but only with fastmath set explicitly: a callee that leaves it unset
# inherits its caller's (Numba's option inheritance).
_OWN = dict(fastmath=False, nogil=True, error_model="numpy", _nrt=False)


@jit(**_OWN)
def dot(w, x):
    """sum_i w_i x_i for 1-D arrays w, x of one float dtype and the same length, in the
    order of the module docstring (n = len(w); x must have at least n elements)."""
    return _dot_ir(w, x)


def dot_model(w, x):
    """:func:`dot`'s order in NumPy (elementwise vector arithmetic, no reduction calls): the
    definition the compiled dot is tested against bit for bit."""
    n = w.shape[0]
    x = x[:n]
    block = LANES * ACCS
    acc = np.zeros((ACCS, LANES), w.dtype)
    i = 0
    while i + block <= n:
        for a in range(ACCS):
            s = slice(i + a * LANES, i + (a + 1) * LANES)
            acc[a] = acc[a] + w[s] * x[s]
        i += block
    while i + LANES <= n:
        acc[0] = acc[0] + w[i:i + LANES] * x[i:i + LANES]
        i += LANES
    while acc.shape[0] > 1:
        acc = acc[0::2] + acc[1::2]
    v = acc[0]
    while v.shape[0] > 1:
        v = v[:v.shape[0] // 2] + v[v.shape[0] // 2:]
    total = v[0]
    for k in range(i, n):
        total = total + w[k] * x[k]
    return total
