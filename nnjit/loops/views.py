"""Compiled views into the flat layout (nnjit.layout) and the compile options of the loop form.

Nothing in the loop form allocates, so it is compiled without Numba's reference counting
(``_nrt=False``, as Numba's own mergesort and unicode helpers are): with it, every call and
every view (W[j], a layer's block of a buffer, each array of the Shape tuple passed along)
took an atomic increment and decrement, over 1000 locked instructions a sample online: 34 % of
a 64-32-10 online epoch's time in NRT_incref/NRT_decref (perf). An allocation here would not
compile ("NRT required"). A function without counting may not return a view, so ``params``,
``rows`` and ``targets`` are inlined into their callers (Numba IR inlining); their counted
twins (``*_rc``) serve the counting callers (the batch epochs: a view per layer per batch
costs nothing there, and inlining ~25 views added 3.5 s to each epoch's first compile).

error_model="numpy": a division is a plain IEEE division (x/0 gives inf, which the wrapper
reports as divergence) instead of a branch raising ZeroDivisionError, which would stop LLVM
from vectorising Adam's w -= A m / (sqrt(v) B + eps) (measured: 3 ns -> 0.4 ns an element).

Compiled code calls a kernel with int(0), int(4) or a comparison, never a bare 0, 4 or True:
Numba types a literal argument as Literal[int](0) and compiles the callee once more for it (a
second specialisation: seconds of a first fit; test_a_fit_compiles_each_kernel_once).
"""
import types

from ..config import FASTMATH
from ..jit import jit

#: the counted kernels' options, and the uncounted ones' (see above)
RC_OPTS = dict(fastmath=FASTMATH, nogil=True, error_model="numpy")
OPTS = dict(RC_OPTS, _nrt=False)
_VIEW_OPTS = dict(OPTS, inline="always")


@jit(**_VIEW_OPTS)
def params(theta, shape, l):
    """Views W^(l) (N_l, N_{l-1}) and b^(l) (N_l,) into a flat parameter buffer."""
    n_out, n_in = shape.sizes[l], shape.sizes[l - 1]
    W = theta[shape.w_off[l - 1]:shape.w_off[l - 1] + n_out * n_in].reshape((n_out, n_in))
    b = theta[shape.b_off[l - 1]:shape.b_off[l - 1] + n_out]
    return W, b


@jit(**_VIEW_OPTS)
def params_t(theta, shape):
    """W^(1) held transposed, (N_0, N_1) (a sparse first layer's layout), and b^(1)."""
    n_out, n_in = shape.sizes[1], shape.sizes[0]
    WT = theta[shape.w_off[0]:shape.w_off[0] + n_out * n_in].reshape((n_in, n_out))
    return WT, theta[shape.b_off[0]:shape.b_off[0] + n_out]


@jit(**_VIEW_OPTS)
def rows(buf, shape, l, mb):
    """Layer l's (mb, N_l) block of a batch buffer laid out by shape's a_off."""
    cap = buf.shape[0] // shape.a_off[-1]
    off = shape.a_off[l] * cap
    return buf[off:off + mb * shape.sizes[l]].reshape((mb, shape.sizes[l]))


@jit(**_VIEW_OPTS)
def targets(bufs, shape, mb):
    K = shape.sizes[-1]
    return bufs.y[:mb * K].reshape((mb, K))


def kernel_types(dtype):
    """The Numba types a fit in dtype calls the epoch's kernels with, for the compile plans:
    arrays A1, A2 (C order), I1 (int64), F1 (float64); scalars i, f, t (int64, float64,
    bool); c, St, Bt, Ht (Coefs, Shape, Batch, Hyper); and the argument tuples of the tiled
    forward (fwd), error recursion (bwd) and correction + update (corr, without the blocks)."""
    import numpy as np
    from numba import typeof, types

    from ..layout import make_batch, make_shape
    from ..rules import Hyper, zero_coefs
    dt = np.dtype(dtype)
    A1, A2 = typeof(np.zeros(1, dt)), typeof(np.zeros((1, 1), dt))
    i, c, t = types.int64, typeof(zero_coefs()), types.boolean
    shape, _ = make_shape([1, 1], [0])
    return dict(A1=A1, A2=A2, I1=typeof(np.zeros(1, np.int64)), F1=typeof(np.zeros(1)), i=i,
                f=types.float64, c=c, t=t, St=typeof(shape),
                Bt=typeof(make_batch(shape, 1, dt)),
                Ht=typeof(Hyper(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)),
                fwd=(A2, A2, A2, A2, A1, i, i, i, t), bwd=(A2, A2, A2, A2, A2, i, i, i, t),
                corr=(A2, A1, A2, A1, A2, A1, A2, A1, A2, A2, i, c))


def renamed(fn, suffix, opts, **globals_):
    """fn compiled under a name of its own (fn's name + suffix), with module globals replaced
    by ``globals_``: Numba's disk cache files entries by function name and signature, so a
    twin sharing its name would load the other's machine code; and Numba freezes globals at
    compile time and prunes branches on them (a twin compiles only what its constants keep)."""
    fn = getattr(fn, "py_func", fn)
    g = dict(fn.__globals__)
    g.update(globals_)
    twin = types.FunctionType(fn.__code__, g, fn.__name__ + suffix, fn.__defaults__,
                              fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + suffix
    twin.__doc__ = fn.__doc__
    return jit(**opts)(twin)


params_rc = renamed(params, "_rc", RC_OPTS)
params_t_rc = renamed(params_t, "_rc", RC_OPTS)
rows_rc = renamed(rows, "_rc", RC_OPTS)
targets_rc = renamed(targets, "_rc", RC_OPTS)
