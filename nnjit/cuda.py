"""The CUDA form: the lecture's per-unit equations as Numba CUDA kernels, one thread per output.

Each kernel is the loop kernel's body (:mod:`nnjit.loops`) indexed by a thread, with the
parallel axis chosen per output so no two threads write the same memory (no atomics; each
sum runs in a fixed order, the simple kernels' in the loop form's, so results are
deterministic):

=================  ===========================================  ===================
kernel             equation                                     a thread owns
=================  ===========================================  ===================
forward_layer      z_j = sum_i w_ij a_i + b_j ; a_j = f(z_j)    (m, j)
softmax            a_k = e^(z_k - zmax) / sum_k' e^(z_k'-zmax)  sample m
output_error       delta^L = dC/dz^L (see loops.output_error)   (m, k)
sample_loss        C_m and max_k |a_k - y_k|                    sample m
output_layer       softmax rows + sample_loss + output_error    sample m (a training step: 1 launch)
backward_layer     delta_j = f'(z_j) sum_k w_jk delta_k         (m, j)
corrections        dw_ij = scale sum_m a_i delta_j ; db_j       (j, i), i = N_{l-1} is the bias
corrections_update the same (+ alpha_n w_ij), then the update rule (j, i)
update             the update rule on flat vectors              flat index, grid-stride
load_batch         a^(0), y <- rows order[start:start+mb]       (m, column)
=================  ===========================================  ===================

The public names are launchers with the loop form's signatures (device arrays in place of
NumPy arrays), so one parametrised test covers all three forms; departures: ``sample_loss``
writes max_k |a - y| per sample into an ``err`` array instead of returning the maximum (a
kernel returns nothing, and the engine reduces once per epoch), and ``load_batch`` takes the
two destination blocks instead of the flat buffers. The ``*_tiled`` launchers are the fast
second version of the three matrix products (feed-forward, error recursion, corrections):
the same equations, each thread still owning one output, with operands staged through
shared-memory tiles of ``config.CUDA_TILE``; they are tested against the simple kernels.

Kernels are built per dtype (and tile size) by a factory, so every constant is of the
array's dtype and a float32 kernel does no float64 arithmetic (checked on the PTX by
tests/test_cuda_ptx.py). All CUDA imports of nnjit live in this module.

Not for: multi-GPU, streams, or half precision. Without a GPU, set NUMBA_ENABLE_CUDASIM=1 to
run these kernels in Numba's simulator (slow, for tests).
"""
import functools
import math
import time
import types
import warnings

import numpy as np

try:
    import numba
    from numba import cuda
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("backend='cuda' needs numba-cuda: pip install 'nnjit[cuda]'") from e

import sys

from . import activations as A
from . import config
from . import rules as R
from .forms import specialise, switch
from .layout import layer

SOFTMAX = A.SOFTMAX
_HERE = sys.modules[__name__]

# A 10-unit output layer or a small batch is a small grid by nature; numba-cuda would warn
# about under-utilisation on every such launch, with a new message text each grid size. On a
# GPU the text starts with a terminal escape (bold), and where colorama is installed Numba's
# warning class wraps every message in one more: a filter's message must take any number.
SMALL_GRID_WARNING = r"(\x1b\[[0-9;]*m)*Grid size \d+ will likely result in GPU under-utilization"
warnings.filterwarnings("ignore", message=SMALL_GRID_WARNING)


class CUDAUnavailableError(OSError):
    """backend='cuda' was asked for where neither a CUDA GPU nor the simulator is usable."""


def check_available():
    """Raise CUDAUnavailableError, naming the fix, unless a GPU or the simulator is usable."""
    if not cuda.is_available():
        raise CUDAUnavailableError(
            "backend='cuda' found no usable CUDA GPU (numba.cuda.is_available() is False). "
            "On a machine with an NVIDIA GPU, install the NVIDIA driver (libcuda) and "
            "numba-cuda (pip install 'nnjit[cuda]'); without a GPU, set "
            "NUMBA_ENABLE_CUDASIM=1 in the environment before starting Python to run the "
            "kernels in Numba's CUDA simulator (slow; meant for tests), or use "
            "backend='loops'.")
    if not simulated():
        check_compiler(cuda.get_current_device().compute_capability)


@functools.lru_cache(maxsize=None)
def check_compiler(cc):
    """Raise CUDAUnavailableError, naming the fix, unless numba-cuda can compile a kernel for
    compute capability cc here (once a process and cc).

    A GPU and a driver are not enough: numba-cuda 0.30.4 (in maintenance, its last release)
    registers an overload of np.row_stack, which NumPy 2.5 removed, when it builds its first
    kernel, so every launch would fail deep inside numba-cuda with an AttributeError. A tiny
    kernel compiled up front turns that, and a missing NVVM, into one clear message."""
    def probe(x):
        x[0] = 1.0
    try:
        cuda.compile_ptx(probe, "void(float32[::1])", cc=tuple(cc))
    except Exception as e:
        from importlib.metadata import version
        try:
            have = f"numba-cuda {version('numba-cuda')}"
        except Exception:
            have = "numba-cuda"
        hint = ("NumPy 2.5 removed np.row_stack, which this numba-cuda still uses: "
                "pip install 'numpy<2.5' (nnjit's cuda extra pins it), or use backend='loops'."
                if not hasattr(np, "row_stack") else
                "numba-cuda needs NVVM and libdevice from a CUDA toolkit (CUDA_HOME, or pip "
                "install 'numba-cuda[cu13]'); or use backend='loops'.")
        raise CUDAUnavailableError(
            f"backend='cuda': {have} cannot compile a kernel for compute capability "
            f"{'.'.join(map(str, cc))} with NumPy {np.__version__} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). {hint}") from e


def simulated():
    """True when the kernels run in Numba's CUDA simulator rather than on a GPU."""
    from numba.cuda import config as cuda_config   # numba-cuda's own settings
    return bool(getattr(cuda_config, "ENABLE_CUDASIM", False))


def device_name():
    """The current device's name ("SIMULATOR" under the simulator)."""
    name = getattr(cuda.get_current_device(), "name", "SIMULATOR")
    return name.decode() if isinstance(name, bytes) else str(name)


def timed(fn):
    """Run fn() between two CUDA events on the default stream: returns (fn's result, device
    milliseconds between the events, host milliseconds), after synchronising."""
    start, end = cuda.event(), cuda.event()
    t = time.perf_counter()
    start.record()
    out = fn()
    end.record()
    end.synchronize()
    return out, start.elapsed_time(end), (time.perf_counter() - t) * 1e3


# ================================================================ the kernels, per dtype
@functools.lru_cache(maxsize=None)
def _device(dtype):
    """The tables' definitions (nnjit.activations, nnjit.rules) as device functions for one
    dtype: f(z, act), fprime(z, a, act), flush(x), softmax_row(a, z), cost(a, z, y, m, act, loss),
    output_error(delta, a, z, y, m, act, loss, w), max_error(a, y, m) and
    rule_step(rule, w, v, q, g, c) -> (w, v, q). Each dispatch is generated from its table;
    its last branch raises (a device cannot report it: the launchers check every code on the
    host first)."""
    dtype = np.dtype(dtype)
    dev = cuda.jit(device=True)

    def compiled(fn, **names):
        return dev(specialise(fn, "cuda", dtype, dev, **names))
    ns = {}
    for a in A.ELEMENTWISE:
        ns[f"F_{a.name}"] = compiled(a.f)
        ns[f"FP_{a.name}"] = compiled(a.fprime)
    for r in R.RULES:
        ns[f"STEP_{r.code}"] = compiled(r.step)
    sfx = f"__cuda_{dtype.name}"
    unknown_act = ["raise ValueError('unknown activation code')"]
    k = _Kernels()
    k.f = dev(switch("f" + sfx, ("z", "act"), "act",
                     [(a.code, [f"return F_{a.name}(z)"]) for a in A.ELEMENTWISE], unknown_act,
                     ns, _HERE))
    k.fprime = dev(switch("fprime" + sfx, ("z", "a", "act"), "act",
                          [(a.code, [f"return FP_{a.name}(z, a)"]) for a in A.ELEMENTWISE],
                          unknown_act, ns, _HERE))
    k.rule_step = dev(switch("rule_step" + sfx, ("rule", "w", "v", "q", "g", "c"), "rule",
                             [(r.code, [f"return STEP_{r.code}(w, v, q, g, c)"]) for r in R.RULES],
                             ["raise ValueError('unknown update rule code')"], ns, _HERE))
    k.flush = compiled(A.flush)
    k.softmax_row = compiled(A.softmax_row)
    k.cost = compiled(A.cost)
    k.output_error = compiled(A.output_error, fprime=k.fprime)
    k.max_error = compiled(A.max_error)
    return k


def _check(act=None, loss=None, rule=None):
    """Refuse codes not in the tables on the host (a device function cannot raise)."""
    if act is not None and int(act) not in A.BY_CODE:
        raise ValueError(f"unknown activation code {act!r}")
    if loss is not None:
        x = A.LOSS_BY_CODE.get(int(loss))
        if x is None:
            raise ValueError(f"unknown loss code {loss!r}")
        if act is not None and A.NAMES[int(act)] not in x.outputs:
            raise ValueError(f"loss {x.name!r} does not take the output {A.NAMES[int(act)]!r}")
    if rule is not None and int(rule) not in R.BY_CODE:
        raise ValueError(f"unknown update rule code {rule!r}")


class _Kernels:
    """A namespace of compiled kernels (attribute per kernel)."""


@functools.lru_cache(maxsize=None)
def simple_kernels(dtype):
    """The simple kernels for one dtype: each is a loop body of nnjit.loops, indexed by thread."""
    dtype = np.dtype(dtype)
    d = _device(dtype)
    f, fprime, rule_step, flush = d.f, d.fprime, d.rule_step, d.flush
    softmax_row, cost, output_error_row, max_error = d.softmax_row, d.cost, d.output_error, d.max_error
    ZERO = dtype.type(0.0)
    k = _Kernels()

    @cuda.jit
    def forward_layer(z, a, a_prev, W, b, act):
        """Feed-forward: z_j = sum_i w_ij a_i + b_j ; a_j = f(z_j) (f elementwise; softmax
        rows follow in their own kernel). a_prev (M, N_{l-1}); W (N_l, N_{l-1}); b (N_l,);
        z, a (M, N_l). Thread t owns (m, j) = divmod(t, N_l)."""
        M, n_in = a_prev.shape
        n_out = W.shape[0]
        t = cuda.grid(1)
        if t < M * n_out:
            m = t // n_out
            j = t - m * n_out
            s = b[j]
            for i in range(n_in):
                s += W[j, i] * a_prev[m, i]
            z[m, j] = s
            if act != SOFTMAX:
                a[m, j] = flush(f(s, act))
    k.forward_layer = forward_layer

    @cuda.jit
    def softmax(a, z):
        """a_k = e^(z_k - zmax) / sum_k' e^(z_k' - zmax). z, a (M, K). Thread m owns row m
        (the row's sum couples its units)."""
        m = cuda.grid(1)
        if m < z.shape[0]:
            softmax_row(a[m], z[m])
    k.softmax = softmax

    @cuda.jit
    def output_error(delta, a, z, y, sw, wscale, act, loss):
        """Output error delta^L = dC/dz^L (nnjit.activations.output_error) times the sample
        weight factor s_m wscale, wscale = M / sum_m s_m. a, z, y, delta (M, K); sw (M,).
        Thread m owns sample m."""
        m = cuda.grid(1)
        if m < a.shape[0]:
            output_error_row(delta, a, z, y, m, act, loss, sw[m] * wscale)
    k.output_error = output_error

    @cuda.jit
    def sample_loss(out, err, a, z, y, act, loss):
        """Per-sample cost C_m into out (M,) and max_k |a_k - y_k| into err (M,).
        a, z, y (M, K). Thread m owns sample m."""
        m = cuda.grid(1)
        if m < a.shape[0]:
            out[m] = cost(a, z, y, m, act, loss)
            err[m] = max_error(a, y, m)
    k.sample_loss = sample_loss

    @cuda.jit
    def output_layer(delta, out, err, a, z, y, sw, wscale, act, loss):
        """A training step's output layer in one launch: softmax rows (if act is softmax;
        forward_layer left them out), sample_loss, then output_error (weighted by
        s_m wscale). delta, a, z, y (M, K); out, err, sw (M,). Thread m owns sample m."""
        m = cuda.grid(1)
        if m < a.shape[0]:
            if act == SOFTMAX:
                softmax_row(a[m], z[m])
            out[m] = cost(a, z, y, m, act, loss)
            err[m] = max_error(a, y, m)
            output_error_row(delta, a, z, y, m, act, loss, sw[m] * wscale)
    k.output_layer = output_layer

    @cuda.jit
    def backward_layer(delta_prev, delta, W, z_prev, a_prev, act_prev):
        """Error recursion: delta_j = f'(z_j) sum_k w_jk delta_k. delta (M, N_{l+1}); W
        (N_{l+1}, N_l) is W^(l+1), so W[k, j] = w_jk; z_prev, a_prev, delta_prev (M, N_l).
        Thread t owns (m, j) = divmod(t, N_l)."""
        M, n_out = delta.shape
        n_in = W.shape[1]
        t = cuda.grid(1)
        if t < M * n_in:
            m = t // n_in
            j = t - m * n_in
            s = ZERO
            for kk in range(n_out):
                s += W[kk, j] * delta[m, kk]
            delta_prev[m, j] = flush(s * fprime(z_prev[m, j], a_prev[m, j], act_prev))
    k.backward_layer = backward_layer

    @cuda.jit
    def corrections_update(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, scale, an, upd, rule, c):
        """Corrections dw_ij = scale sum_m a_i delta_j + an w_ij ; db_j = scale sum_m
        delta_j, then if upd the update rule (rule_step, c its Coefs) on w, v, s. W, vW, sW,
        dW (N_l, N_{l-1}); b, vb, sb, db (N_l,); delta (M, N_l); a_prev (M, N_{l-1}). Thread
        t owns (j, i) = divmod(t, N_{l-1} + 1); i = N_{l-1} is the bias, the weight of an
        input always 1 (and not penalised)."""
        M, n_in = a_prev.shape
        n_out = delta.shape[1]
        t = cuda.grid(1)
        if t < n_out * (n_in + 1):
            j = t // (n_in + 1)
            i = t - j * (n_in + 1)
            s = ZERO
            if i < n_in:
                for m in range(M):
                    s += delta[m, j] * a_prev[m, i]
                g = s * scale + an * W[j, i]
                dW[j, i] = g
                if upd:
                    W[j, i], vW[j, i], sW[j, i] = rule_step(rule, W[j, i], vW[j, i], sW[j, i], g, c)
            else:
                for m in range(M):
                    s += delta[m, j]
                g = s * scale
                db[j] = g
                if upd:
                    b[j], vb[j], sb[j] = rule_step(rule, b[j], vb[j], sb[j], g, c)
    k.corrections_update = corrections_update

    @cuda.jit
    def update(theta, vel, sq, grad, rule, c):
        """The update rule (rule_step) on flat theta, vel, sq, grad (P,).
        Grid-stride: thread t owns p = t, t + stride, ..."""
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for p in range(start, theta.shape[0], stride):
            theta[p], vel[p], sq[p] = rule_step(rule, theta[p], vel[p], sq[p], grad[p], c)
    k.update = update

    @cuda.jit
    def load_batch(a0, y, sw, X, Y, S, order, start):
        """Gather a^(0)[m] = X[order[start + m]], y[m] = Y[order[start + m]] and the weight
        sw[m] = S[order[start + m]] on the device. a0 (mb, D); y (mb, K); sw (mb,); X (n, D);
        Y (n, K); S (n,); order (n,). Thread t owns (m, column), column D + K the weight."""
        mb, D = a0.shape
        K = y.shape[1]
        t = cuda.grid(1)
        if t < mb * (D + K + 1):
            m = t // (D + K + 1)
            c = t - m * (D + K + 1)
            r = order[start + m]
            if c < D:
                a0[m, c] = X[r, c]
            elif c < D + K:
                y[m, c - D] = Y[r, c - D]
            else:
                sw[m] = S[r]
    k.load_batch = load_batch
    return k


@functools.lru_cache(maxsize=None)
def tiled_kernels(dtype, tile):
    """The fast second version of the three matrix products, for one dtype and tile size:
    a block of tile x tile threads computes a tile x tile block of outputs (each thread still
    owns one), staging both operands through shared memory one tile of the summed index at a
    time, so each global element is read once per block instead of once per thread."""
    dtype = np.dtype(dtype)
    d = _device(dtype)
    f, fprime, rule_step, flush = d.f, d.fprime, d.rule_step, d.flush
    T = numba.from_dtype(dtype)
    ZERO = dtype.type(0.0)
    ONE = dtype.type(1.0)
    TL = tile
    TL1 = tile + 1          # shared shapes must be compile-time constants: no TL + 1 inline
    k = _Kernels()

    @cuda.jit
    def forward_layer(z, a, a_prev, W, b, act):
        """Feed-forward, tiled: z_j = sum_i w_ij a_i + b_j ; a_j = f(z_j). Shapes as
        forward_layer; thread (ty, tx) of block (bx, by) owns m = bx TL + ty, j = by TL + tx."""
        As = cuda.shared.array((TL, TL), T)          # As[r, t] = a_prev[m0 + r, i0 + t]
        Bs = cuda.shared.array((TL, TL1), T)      # Bs[c, t] = W[j0 + c, i0 + t]; +1: no bank conflict
        M, n_in = a_prev.shape
        n_out = W.shape[0]
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        m0, j0 = cuda.blockIdx.x * TL, cuda.blockIdx.y * TL
        s = ZERO
        for i0 in range(0, n_in, TL):
            i = i0 + tx                                # loads run along i: coalesced
            As[ty, tx] = a_prev[m0 + ty, i] if (m0 + ty < M and i < n_in) else ZERO
            Bs[ty, tx] = W[j0 + ty, i] if (j0 + ty < n_out and i < n_in) else ZERO
            cuda.syncthreads()
            for t in range(TL):
                s += As[ty, t] * Bs[tx, t]
            cuda.syncthreads()
        m, j = m0 + ty, j0 + tx
        if m < M and j < n_out:
            zz = s + b[j]
            z[m, j] = zz
            if act != SOFTMAX:
                a[m, j] = flush(f(zz, act))
    k.forward_layer = forward_layer

    @cuda.jit
    def backward_layer(delta_prev, delta, W, z_prev, a_prev, act_prev):
        """Error recursion, tiled: delta_j = f'(z_j) sum_k w_jk delta_k. Shapes as
        backward_layer; thread (ty, tx) owns m = bx TL + ty, j = by TL + tx."""
        As = cuda.shared.array((TL, TL), T)          # As[r, t] = delta[m0 + r, k0 + t]
        Bs = cuda.shared.array((TL, TL), T)          # Bs[t, c] = W[k0 + t, j0 + c]
        M, n_out = delta.shape
        n_in = W.shape[1]
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        m0, j0 = cuda.blockIdx.x * TL, cuda.blockIdx.y * TL
        s = ZERO
        for k0 in range(0, n_out, TL):
            kx, ky = k0 + tx, k0 + ty
            As[ty, tx] = delta[m0 + ty, kx] if (m0 + ty < M and kx < n_out) else ZERO
            Bs[ty, tx] = W[ky, j0 + tx] if (ky < n_out and j0 + tx < n_in) else ZERO
            cuda.syncthreads()
            for t in range(TL):
                s += As[ty, t] * Bs[t, tx]
            cuda.syncthreads()
        m, j = m0 + ty, j0 + tx
        if m < M and j < n_in:
            delta_prev[m, j] = flush(s * fprime(z_prev[m, j], a_prev[m, j], act_prev))
    k.backward_layer = backward_layer

    @cuda.jit
    def corrections_update(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, scale, an, upd, rule, c):
        """Corrections (+ the update rule if upd), tiled: dw_ij = scale sum_m a_i delta_j +
        an w_ij, db_j likewise with a_i = 1 at i = N_{l-1}. Shapes as corrections_update; thread
        (ty, tx) owns j = bx TL + ty, i = by TL + tx, i in [0, N_{l-1}]."""
        Ds = cuda.shared.array((TL, TL1), T)      # Ds[t, r] = delta[m0 + t, j0 + r]
        As = cuda.shared.array((TL, TL), T)          # As[t, c] = a_prev[m0 + t, i0 + c], 1 for the bias
        M, n_in = a_prev.shape
        n_out = delta.shape[1]
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        j0, i0 = cuda.blockIdx.x * TL, cuda.blockIdx.y * TL
        s = ZERO
        for m0 in range(0, M, TL):
            mm = m0 + ty
            Ds[ty, tx] = delta[mm, j0 + tx] if (mm < M and j0 + tx < n_out) else ZERO
            ic = i0 + tx
            if mm < M and ic < n_in:
                As[ty, tx] = a_prev[mm, ic]
            elif mm < M and ic == n_in:
                As[ty, tx] = ONE
            else:
                As[ty, tx] = ZERO
            cuda.syncthreads()
            for t in range(TL):
                s += Ds[t, ty] * As[t, tx]
            cuda.syncthreads()
        j, i = j0 + ty, i0 + tx
        if j < n_out and i < n_in:
            g = s * scale + an * W[j, i]
            dW[j, i] = g
            if upd:
                W[j, i], vW[j, i], sW[j, i] = rule_step(rule, W[j, i], vW[j, i], sW[j, i], g, c)
        elif j < n_out and i == n_in:
            g = s * scale
            db[j] = g
            if upd:
                b[j], vb[j], sb[j] = rule_step(rule, b[j], vb[j], sb[j], g, c)
    k.corrections_update = corrections_update
    return k


# ================================================================ launchers (loops' signatures)
def _blocks(n, threads):
    return max(1, -(-n // threads))


def _simple(x):
    return simple_kernels(x.dtype)


def _tiled(x):
    return tiled_kernels(x.dtype, int(config.CUDA_TILE))


def _launch1(kernel, n):
    threads = int(config.CUDA_THREADS)
    return kernel[_blocks(n, threads), threads]


def _launch2(kernel, rows, cols):
    tl = int(config.CUDA_TILE)
    return kernel[(_blocks(rows, tl), _blocks(cols, tl)), (tl, tl)]


def forward_layer(z, a, a_prev, W, b, act, rows=True):
    """Feed-forward of one layer (see simple_kernels' forward_layer), then softmax rows
    unless rows=False (training leaves them to output_layer)."""
    M, n_out = z.shape
    _check(act=act)
    if M == 0:
        return
    _launch1(_simple(z).forward_layer, M * n_out)(z, a, a_prev, W, b, act)
    if act == SOFTMAX and rows:
        softmax(a, z)


def forward_layer_tiled(z, a, a_prev, W, b, act, rows=True):
    """Feed-forward of one layer with shared-memory tiles; softmax rows as forward_layer."""
    M, n_out = z.shape
    _check(act=act)
    if M == 0:
        return
    _launch2(_tiled(z).forward_layer, M, n_out)(z, a, a_prev, W, b, act)
    if act == SOFTMAX and rows:
        softmax(a, z)


def softmax(a, z):
    """a = softmax(z) row by row; z, a (M, K)."""
    if z.shape[0]:
        _launch1(_simple(z).softmax, z.shape[0])(a, z)


def backward_layer(delta_prev, delta, W, z_prev, a_prev, act_prev):
    """Error recursion to layer l (see simple_kernels' backward_layer)."""
    M, n = delta_prev.shape
    _check(act=act_prev)
    if M:
        _launch1(_simple(delta).backward_layer, M * n)(delta_prev, delta, W, z_prev, a_prev, act_prev)


def backward_layer_tiled(delta_prev, delta, W, z_prev, a_prev, act_prev):
    """Error recursion to layer l with shared-memory tiles."""
    M, n = delta_prev.shape
    _check(act=act_prev)
    if M:
        _launch2(_tiled(delta).backward_layer, M, n)(delta_prev, delta, W, z_prev, a_prev, act_prev)


def _corr(kernels, launch, W, b, vW, vb, sW, sb, dW, db, delta, a_prev, scale, an, upd, rule, c):
    _check(rule=rule)
    t = dW.dtype.type
    n_out, n_in = dW.shape
    launch(kernels.corrections_update, n_out, n_in + 1)(
        W, b, vW, vb, sW, sb, dW, db, delta, a_prev, t(scale), t(an), upd, rule, R.cast(c, t))


#: the Coefs of a corrections launch that updates nothing
_NO_RULE = R.zero_coefs()


def corrections(dW, db, delta, a_prev, scale, W, an):
    """Corrections dW = scale delta^T a_prev + an W ; db = scale sum_m delta (scale = 1/M:
    the mean; an = alpha / n_batch: the L2 term)."""
    _corr(_simple(dW), lambda k, r, c: _launch1(k, r * c), W, db, dW, db, dW, db, dW, db,
          delta, a_prev, scale, an, 0, 0, _NO_RULE)


def corrections_update(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c):
    """Corrections (batch mean + the L2 term c.alpha_n w) fused with the update rule (rule, c:
    nnjit.rules)."""
    _corr(_simple(W), lambda k, r, cc: _launch1(k, r * cc), W, b, vW, vb, sW, sb, dW, db,
          delta, a_prev, 1.0 / delta.shape[0], c.alpha_n, 1, rule, c)


def corrections_tiled(dW, db, delta, a_prev, scale, W, an):
    """corrections with shared-memory tiles."""
    _corr(_tiled(dW), _launch2, W, db, dW, db, dW, db, dW, db, delta, a_prev, scale, an, 0, 0,
          _NO_RULE)


def corrections_update_tiled(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c):
    """corrections_update with shared-memory tiles."""
    _corr(_tiled(W), _launch2, W, b, vW, vb, sW, sb, dW, db, delta, a_prev,
          1.0 / delta.shape[0], c.alpha_n, 1, rule, c)


def update(theta, vel, sq, grad, rule, c, blocks=None):
    """The update rule on flat vectors (grid-stride; blocks caps the grid, so fewer threads
    than elements each take several). grad holds any L2 term already."""
    _check(rule=rule)
    threads = int(config.CUDA_THREADS)
    n = _blocks(theta.shape[0], threads) if blocks is None else int(blocks)
    _simple(theta).update[n, threads](theta, vel, sq, grad, rule, R.cast(c, theta.dtype.type))


def _wscale(sw, M):
    S = float(np.asarray(sw.copy_to_host() if hasattr(sw, "copy_to_host") else sw,
                         np.float64).sum())
    return M / S if S > 0 else 0.0


def output_error(delta, a, z, y, sw, act, loss):
    """Output error delta^L times s_m M / sum_m s_m (see simple_kernels' output_error)."""
    M = a.shape[0]
    _check(act=act, loss=loss)
    if M:
        _launch1(_simple(a).output_error, M)(delta, a, z, y, sw, a.dtype.type(_wscale(sw, M)),
                                             act, loss)


def sample_loss(out, err, a, z, y, act, loss):
    """Per-sample cost into out (M,) and max_k |a - y| into err (M,)."""
    _check(act=act, loss=loss)
    if a.shape[0]:
        _launch1(_simple(a).sample_loss, a.shape[0])(out, err, a, z, y, act, loss)


def output_layer(delta, out, err, a, z, y, sw, wscale, act, loss):
    """softmax rows (for a softmax output), sample_loss and output_error (weighted by
    s_m wscale) in one launch."""
    _check(act=act, loss=loss)
    if a.shape[0]:
        _launch1(_simple(a).output_layer, a.shape[0])(delta, out, err, a, z, y, sw,
                                                      a.dtype.type(wscale), act, loss)


def load_batch(a0, y, sw, X, Y, S, order, start):
    """a0[m] = X[order[start + m]], y[m] = Y[order[start + m]], sw[m] = S[order[start + m]]
    for m < a0.shape[0]."""
    mb = a0.shape[0]
    if mb:
        _launch1(_simple(a0).load_batch, mb * (a0.shape[1] + y.shape[1] + 1))(
            a0, y, sw, X, Y, S, order, start)


#: The kernel sets the engine chooses between by config.CUDA_KERNELS.
KERNEL_SETS = {
    "simple": dict(forward_layer=forward_layer, backward_layer=backward_layer,
                   corrections=corrections, corrections_update=corrections_update),
    "tiled": dict(forward_layer=forward_layer_tiled, backward_layer=backward_layer_tiled,
                  corrections=corrections_tiled, corrections_update=corrections_update_tiled),
}


def kernel_signatures(dtype, tile=None):
    """Every kernel's Python function with an explicit Numba signature, for compiling to PTX
    without a GPU: a list of (name, py_func, signature)."""
    dtype = np.dtype(dtype)
    T = numba.from_dtype(dtype)
    m2, v1 = T[:, ::1], T[::1]
    i8 = numba.int64
    s, t = simple_kernels(dtype), tiled_kernels(dtype, int(tile or config.CUDA_TILE))
    fwd = (m2, m2, m2, m2, v1, i8)
    bwd = (m2, m2, m2, m2, m2, i8)
    coefs = numba.typeof(R.zero_coefs(dtype.type))
    corr = (m2, v1, m2, v1, m2, v1, m2, v1, m2, m2, T, T, i8, i8, coefs)
    sigs = [
        ("forward_layer", s.forward_layer, fwd),
        ("softmax", s.softmax, (m2, m2)),
        ("output_error", s.output_error, (m2, m2, m2, m2, v1, T, i8, i8)),
        ("sample_loss", s.sample_loss, (v1, v1, m2, m2, m2, i8, i8)),
        ("output_layer", s.output_layer, (m2, v1, v1, m2, m2, m2, v1, T, i8, i8)),
        ("backward_layer", s.backward_layer, bwd),
        ("corrections_update", s.corrections_update, corr),
        ("update", s.update, (v1, v1, v1, v1, i8, coefs)),
        ("load_batch", s.load_batch, (m2, m2, v1, m2, m2, v1, numba.int64[::1], i8)),
        ("forward_layer_tiled", t.forward_layer, fwd),
        ("backward_layer_tiled", t.backward_layer, bwd),
        ("corrections_update_tiled", t.corrections_update, corr),
    ]
    return [(name, k.py_func, numba.void(*args)) for name, k, args in sigs]


# ================================================================ the engine
class _Batch:
    """One batch's device buffers: a^(l), z^(l), delta^(l) per layer (M, N_l), targets y
    (M, K), per-sample cost and error (M,). ``rows(mb)`` gives views of the first mb rows."""

    def __init__(self, sizes, cap, dtype):
        self.cap = cap
        self.a = [cuda.device_array((cap, n), dtype) for n in sizes]
        self.z = [None] + [cuda.device_array((cap, n), dtype) for n in sizes[1:]]
        self.delta = [None] + [cuda.device_array((cap, n), dtype) for n in sizes[1:]]
        self.y = cuda.device_array((cap, sizes[-1]), dtype)
        self.s = cuda.device_array(cap, dtype)
        self.cost = cuda.device_array(cap, dtype)
        self.err = cuda.device_array(cap, dtype)
        self._views = {cap: self}

    def rows(self, mb):
        if mb not in self._views:
            v = types.SimpleNamespace()
            v.a = [x[:mb] for x in self.a]
            v.z = [None] + [x[:mb] for x in self.z[1:]]
            v.delta = [None] + [x[:mb] for x in self.delta[1:]]
            v.y, v.s, v.cost, v.err = self.y[:mb], self.s[:mb], self.cost[:mb], self.err[:mb]
            self._views[mb] = v
        return self._views[mb]


class CUDAEngine:
    """Parameters, velocities, batch buffers and (during fit) the training data on the device.

    The methods are those of nnjit.engine.CPUEngine; only get_params/get_state and the
    per-epoch order, costs and errors cross to the host during a fit. config.CUDA_KERNELS
    ("tiled" or "simple") picks the matrix-product kernels at each call.
    """

    def __init__(self, shape, n_params, dtype):
        check_available()
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.sizes = [int(n) for n in shape.sizes]
        self.acts = [int(a) for a in shape.acts]
        self.theta = cuda.to_device(np.zeros(n_params, self.dtype))
        self.vel = cuda.to_device(np.zeros(n_params, self.dtype))
        self.sq = cuda.to_device(np.zeros(n_params, self.dtype))
        self.grad = cuda.to_device(np.zeros(n_params, self.dtype))
        self.step = np.zeros(1, np.int64)      # updates made (Adam's t), counted on the host
        # per-layer (W, b) views into the flat vectors, made once: they stay valid because
        # set_params copies into the same device memory
        self._p = [self._layers(x) for x in (self.theta, self.vel, self.grad, self.sq)]
        self._fit = None
        self._sum_buf = None

    def _layers(self, flat):
        sizes, w_off, b_off = self.shape.sizes, self.shape.w_off, self.shape.b_off
        out = [None]
        for l in range(1, len(sizes)):
            n_out, n_in, w, b = int(sizes[l]), int(sizes[l - 1]), int(w_off[l - 1]), int(b_off[l - 1])
            out.append((flat[w:w + n_out * n_in].reshape(n_out, n_in), flat[b:b + n_out]))
        return out

    def _k(self):
        name = config.CUDA_KERNELS
        if name not in KERNEL_SETS:
            raise ValueError(f"config.CUDA_KERNELS must be one of {sorted(KERNEL_SETS)}, got {name!r}")
        return KERNEL_SETS[name]

    # -- state the wrapper reads and writes
    def get_params(self):
        return self.theta.copy_to_host()

    def set_params(self, theta):
        self.theta.copy_to_device(np.ascontiguousarray(theta, self.dtype))

    def get_state(self):
        """The optimizer state: {"vel": (P,), "sq": (P,), "step": int} on the host."""
        return {"vel": self.vel.copy_to_host(), "sq": self.sq.copy_to_host(),
                "step": int(self.step[0])}

    def set_state(self, state):
        self.vel.copy_to_device(np.ascontiguousarray(state["vel"], self.dtype))
        self.sq.copy_to_device(np.ascontiguousarray(state["sq"], self.dtype))
        self.step[0] = int(state["step"])

    def penalty(self):
        """sum_l ||W^(l)||^2 (weights only), from a host copy of theta."""
        theta = self.get_params()
        return float(sum((layer(theta, self.shape, l)[0].astype(np.float64) ** 2).sum()
                         for l in range(1, len(self.sizes))))

    # -- the passes over one batch already in v.a[0] (and v.y)
    def _forward(self, k, v, rows=True):
        for l in range(1, len(self.sizes)):
            W, b = self._p[0][l]
            k["forward_layer"](v.z[l], v.a[l], v.a[l - 1], W, b, self.acts[l - 1], rows)

    # -- whole-data calls, chunked so device memory stays O(chunk x width)
    def _chunks(self, X, Y, fn):
        M = X.shape[0]
        cap = min(M, int(config.PREDICT_CHUNK))
        buf = _Batch(self.sizes, cap, self.dtype)
        k = self._k()
        for start in range(0, M, cap):
            mb = min(cap, M - start)
            v = buf.rows(mb)
            v.a[0].copy_to_device(np.ascontiguousarray(X[start:start + mb]))
            if Y is not None:
                v.y.copy_to_device(np.ascontiguousarray(Y[start:start + mb]))
            self._forward(k, v)
            fn(v, start, mb)

    def forward(self, X):
        """Output activations a^(L) (M, K), copied to the host."""
        out = np.empty((X.shape[0], self.sizes[-1]), self.dtype)

        def take(v, start, mb):
            out[start:start + mb] = v.a[-1].copy_to_host()
        self._chunks(X, None, take)
        return out

    def loss(self, X, Y, loss, S=None, alpha=0.0):
        """(weighted mean cost over the samples + alpha/(2 sum s) sum ||W||^2, max |a - y|)."""
        total = [0.0, 0.0]
        L = len(self.sizes) - 1
        S = np.ones(X.shape[0]) if S is None else np.asarray(S, np.float64)

        def take(v, start, mb):
            sample_loss(v.cost, v.err, v.a[L], v.z[L], v.y, self.acts[L - 1], loss)
            total[0] += float((v.cost.copy_to_host().astype(np.float64) * S[start:start + mb]).sum())
            total[1] = max(total[1], float(v.err.copy_to_host().max()))
        self._chunks(X, Y, take)
        if alpha:
            total[0] += 0.5 * alpha * self.penalty()
        return total[0] / float(S.sum()), total[1]

    def _backprop(self, X, Y, loss, S, scale, wscale, an, v=None):
        """Forward, output layer (delta weighted by s_m wscale) and every layer's corrections
        scaled by scale (+ an W) into self.grad, for all M samples as one batch; returns the
        batch buffers (cost and err filled)."""
        M = X.shape[0]
        k = self._k()
        v = _Batch(self.sizes, M, self.dtype) if v is None else v.rows(M)
        v.a[0].copy_to_device(np.ascontiguousarray(X, self.dtype))
        v.y.copy_to_device(np.ascontiguousarray(Y, self.dtype))
        v.s.copy_to_device(np.ascontiguousarray(np.ones(M) if S is None else S, self.dtype))
        self._forward(k, v, rows=False)
        L = len(self.sizes) - 1
        output_layer(v.delta[L], v.cost, v.err, v.a[L], v.z[L], v.y, v.s, wscale,
                     self.acts[L - 1], loss)
        for l in range(L, 0, -1):
            W, _ = self._p[0][l]
            dW, db = self._p[2][l]
            k["corrections"](dW, db, v.delta[l], v.a[l - 1], scale, W, an)
            if l > 1:
                k["backward_layer"](v.delta[l - 1], v.delta[l], W, v.z[l - 1], v.a[l - 1],
                                    self.acts[l - 2])
        return v

    def gradients(self, X, Y, loss, S=None, alpha=0.0):
        """Flat gradient of the (weighted) mean cost over all M samples plus the L2 term."""
        M = X.shape[0]
        Ssum = float(M if S is None else np.asarray(S, np.float64).sum())
        self._backprop(X, Y, loss, S, 1.0 / M, M / Ssum, alpha / Ssum)
        return self.grad.copy_to_host()

    def sums(self, X, Y, loss, S=None):
        """(sum_m s_m Delta w_m as a flat vector, sum_m s_m C_m, max |a - y|, sum_m s_m) over
        the M samples: the per-shard pieces of the batch mean that nnjit.data and
        nnjit.distributed add up. The buffers are kept between calls of at most the same size."""
        M = X.shape[0]
        if self._sum_buf is None or self._sum_buf.cap < M:
            self._sum_buf = _Batch(self.sizes, M, self.dtype)
        v = self._backprop(X, Y, loss, S, 1.0, 1.0, 0.0, self._sum_buf)
        sw = np.ones(M) if S is None else np.asarray(S, np.float64)
        cost, err = v.cost.copy_to_host(), v.err.copy_to_host()
        return (self.grad.copy_to_host(), float((cost.astype(np.float64) * sw).sum()),
                float(err.max()), float(sw.sum()))

    def update(self, grad, rule, h):
        """One update with the flat mean gradient grad (any L2 term included); counts a step."""
        self.step[0] += 1
        c = R.coefs(rule, h, int(self.step[0]), 0.0)
        self.grad.copy_to_device(np.ascontiguousarray(grad, self.dtype))
        update(self.theta, self.vel, self.sq, self.grad, rule, c)

    # -- training: data on the device for the whole fit
    def begin_fit(self, X, Y, batch_size, S=None):
        if hasattr(X, "tocsr"):
            raise ValueError("sparse X is not supported on the cuda backend (it would be "
                             "densified); use backend='loops' (sparse loop kernels) or pass "
                             "X.toarray()")
        n = X.shape[0]
        self._fit = types.SimpleNamespace()
        f = self._fit
        f.X, f.Y = cuda.to_device(np.ascontiguousarray(X)), cuda.to_device(np.ascontiguousarray(Y))
        f.S_host = np.ones(n) if S is None else np.asarray(S, np.float64)
        f.S = cuda.to_device(np.ascontiguousarray(f.S_host, self.dtype))
        f.order = cuda.device_array(n, np.int64)
        f.cost, f.err = cuda.device_array(n, self.dtype), cuda.device_array(n, self.dtype)
        f.buf = _Batch(self.sizes, min(batch_size, n), self.dtype)

    def train_epoch(self, order, batch_size, rule, h, loss):
        """One epoch of the lecture's algorithm with every batch on the device (see
        nnjit.loops.train_epoch: the same five sums). The batch loop and the rule's per-step
        scalars live on the host; the data, weights and optimizer state stay on the device."""
        _check(act=self.acts[-1], loss=loss, rule=rule)
        f = self._fit
        k = self._k()
        n = order.shape[0]
        order = np.ascontiguousarray(order, np.int64)
        f.order.copy_to_device(order)   # once per epoch
        sw_epoch = f.S_host[order]
        alpha = float(h.alpha)
        L = len(self.sizes) - 1
        pen = batch_pen = 0.0
        batches = []
        for start in range(0, n, batch_size):
            mb = min(batch_size, n - start)
            v = f.buf.rows(mb)
            Sb = 0.0
            for x in sw_epoch[start:start + mb]:     # the loop form's order
                Sb += x
            batches.append((start, mb, Sb))
            load_batch(v.a[0], v.y, v.s, f.X, f.Y, f.S, f.order, start)
            self._forward(k, v, rows=False)      # output_layer does the softmax rows
            output_layer(v.delta[L], f.cost[start:start + mb], f.err[start:start + mb],
                         v.a[L], v.z[L], v.y, v.s, mb / Sb if Sb > 0 else 0.0,
                         self.acts[L - 1], loss)
            if Sb <= 0.0:
                continue
            if alpha > 0.0:
                p = self.penalty()
                pen += p
                batch_pen += p * mb / Sb
            self.step[0] += 1
            c = R.coefs(rule, h, int(self.step[0]), alpha / Sb)
            for l in range(L, 0, -1):
                W, b = self._p[0][l]
                vW, vb = self._p[1][l]
                dW, db = self._p[2][l]
                sW, sb = self._p[3][l]
                if l > 1:       # error recursion first: it needs W^(l) before the update
                    k["backward_layer"](v.delta[l - 1], v.delta[l], W, v.z[l - 1], v.a[l - 1],
                                        self.acts[l - 2])
                k["corrections_update"](W, b, vW, vb, sW, sb, dW, db, v.delta[l], v.a[l - 1],
                                        rule, c)
        cost = f.cost.copy_to_host().astype(np.float64) * sw_epoch   # one copy per epoch
        batch_cost = sum(float(cost[s:s + mb].sum()) * mb / Sb for s, mb, Sb in batches if Sb > 0)
        return (float(cost.sum()), pen, float(f.err.copy_to_host().max()), batch_cost, batch_pen)

    def end_fit(self):
        self._fit = None
        self._sum_buf = None
