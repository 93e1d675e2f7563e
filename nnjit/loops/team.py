"""Online learning (batch 1) of a network with a wide layer: the epoch's threads enter once
and meet at the stages of each sample.

Why: a sample of 784-128-10 is ~10 us of work; run as one parallel region a sample
(update_forward_next) it paid the threading layer's entry and exit each time: under TBB the
calling thread starts its half 3.4 us in, the worker 5.4 us, and the region returns at 14.8 us
for 8 us of work a thread (clock_gettime inside the region, 3,000 calls). A stage here costs
a few atomic operations.

The team: ``run_team`` starts P - 1 threads (a pool kept for the process; the kernel releases
the GIL) and runs member 0, the leader, itself. Each runs ``team_member`` over the same
samples and walks the same stages:

* the leader alone, between stages: load the sample, f(z^(1)), feed-forward of the narrow
  layers, the loss, the output error, the error recursion and the narrow layers' updates;
* a stage (``_stage``): the leader opens it; each member takes its own unit, a block of rows
  (units j in [N r / P, N (r + 1) / P) for member r) of a wide layer (N_l N_{l-1} >=
  par_work): its feed-forward z_j = w_j . a + b_j (FWD), its update (CORR), or the first
  layer's update fused with the next sample's z^(1) (FIRST: the per-row work of
  nnjit.loops.blocked.update_forward_next). The leader goes on once all units are done. A
  member keeps its rows, so they stay in its core's cache from sample to sample.

A unit is taken by an atomic compare-and-swap on its claim slot; the leader takes the unit of
a member that has not started after a while itself (that member's core is held by another
process, or the member is not running yet): a late member then finds its units taken and
catches up without touching anything, so no one waits for a thread the OS has parked (a
team of fixed halves, one busy process beside it: 90 us a sample against 29 for the
per-sample kernels). Every row is computed by the same per-row functions in the same order,
whoever computes it and whatever P is, so the result is bit for bit the per-sample kernels'
and does not depend on the thread count or on who took which unit.

Not a Numba prange: a parallel region compiled around this body took a first online fit
from 10.6 to 21 s (the parfor body's module, with everything it calls, optimised again), and
a prange does not promise that its iterations run at once (TBB may run both on one thread
when its other worker is busy). Waiting spins on an acquire load for a while (the other core
is about to arrive), then yields the core (``sched_yield``): pure spinning is what makes
OpenMP 10-200x slower on a busy machine (nnjit.threads).
"""
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..jit import jit
from .blocked import (backward_layer_tiled_serial, blocks, corrections_update_tiled_serial,
                      corrections_update_units, forward_layer_tiled_serial)
from .network import forward, load_batch
from .reference import output_error, penalty_from, sample_loss, weight_sum
from .rows import apply_f, check_act, check_rule, online_row, rule_at, step_coefs
from .simd import dot
from .views import OPTS, kernel_types, params, rows, targets

#: sync's slots, a cache line (8 int64) apart: the stage the leader has opened, units done,
#: then unit r's claim at CLAIM + 8 r (the last stage whose unit r someone took)
READY, DONE, CLAIM = 0, 8, 16
#: acquire loads before a waiting thread starts yielding its core (and the leader starts
#: taking a late member's unit)
SPINS = 1 << 12
_YIELD = sys.platform != "win32"
#: the stages of a sample: feed-forward of a wide layer, its correction + update, the first
#: layer's update fused with the next sample's z^(1) (or that z^(1) alone); START: the first
#: sample's z^(1)
FWD, CORR, FIRST, START = 0, 1, 2, 3


def sync_len(P):
    """Elements of a team of P's sync array."""
    return CLAIM + 8 * P


def _slot(context, builder, sig, args):
    aryty = sig.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])


def _int64_slot(arr, i):
    return (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1
            and isinstance(i, types.Integer))


@intrinsic
def load_acquire(typingctx, arr, i):
    """arr[i] read with acquire order: what another thread wrote before it released the
    value read (fetch_add) is visible after."""
    if not _int64_slot(arr, i):
        return None

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_slot(context, builder, sig, args), "acquire", 8)
    return types.int64(arr, i), codegen


@intrinsic
def fetch_add(typingctx, arr, i, v):
    """old = arr[i]; arr[i] += v, atomically (acquire and release); returns old."""
    if not (_int64_slot(arr, i) and isinstance(v, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", _slot(context, builder, sig, args), v, "acq_rel")
    return types.int64(arr, i, v), codegen


@intrinsic
def claim(typingctx, arr, i, old, new):
    """arr[i] = new if it holds old, atomically (acquire and release); returns whether."""
    if not (_int64_slot(arr, i) and isinstance(old, types.Integer)
            and isinstance(new, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        old = context.cast(builder, args[2], sig.args[2], types.int64)
        new = context.cast(builder, args[3], sig.args[3], types.int64)
        pair = builder.cmpxchg(_slot(context, builder, sig, args), old, new, "acq_rel",
                               "acquire")
        return builder.extract_value(pair, 1)
    return types.boolean(arr, i, old, new), codegen


@intrinsic
def yield_core(typingctx):
    """Give the core to another runnable thread (sched_yield; nothing on Windows)."""
    def codegen(context, builder, sig, args):
        if _YIELD:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
                ir.IntType(32), []), "sched_yield")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen


@jit(**OPTS)
def _forward_rows(z, a_prev, W, b, lo, hi):
    """z_j = w_j . a + b_j for units j in [lo, hi) of one sample (the fixed-order dot)."""
    for j in range(lo, hi):
        z[j] = dot(W[j], a_prev) + b[j]


@jit(**OPTS)
def _unit(theta, vel, sq, step, grad, shape, bufs, X, order, rule, h, tile, kind, l, t, u, P):
    """Unit u of P of a stage (kind, layer l, sample t): its rows j in [N_l u / P,
    N_l (u + 1) / P). Reads the sample's weight, step and errors from the shared buffers
    (the leader wrote them before it opened the stage)."""
    one = int(1)
    W, b = params(theta, shape, l)
    lo, hi = W.shape[0] * u // P, W.shape[0] * (u + 1) // P
    z1 = rows(bufs.z, shape, one, one)[0]
    if kind == START:
        _forward_rows(z1, X[order[0]], W, b, lo, hi)
        return
    if kind == FWD:
        _forward_rows(rows(bufs.z, shape, l, one)[0], rows(bufs.a, shape, l - 1, one)[0], W, b,
                      lo, hi)
        return
    Sb = weight_sum(bufs.s[:1])
    ahead = kind == FIRST and t + 1 < order.shape[0]
    if Sb > 0.0:
        c = step_coefs(rule, h, step[0], h.alpha / Sb)
        vW, vb = params(vel, shape, l)
        sW, sb = params(sq, shape, l)
        a_prev, delta = rows(bufs.a, shape, l - 1, one), rows(bufs.delta, shape, l, one)
        if kind == CORR:
            dW, db = params(grad, shape, l)
            _, _, _, _, _, ic = blocks(tile, W.shape[0], W.shape[1])
            corrections_update_units(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c, lo,
                                     hi, ic)
            return
        an = c.alpha_n
        x, d = a_prev[0], delta[0]
        x_next = X[order[t + 1 if ahead else t]]
        for j in range(lo, hi):
            online_row(rule, W[j], vW[j], sW[j], x, np.float64(d[j]), an, c)
            rule_at(rule, b, vb, sb, np.int64(j), d[j], c)   # (j of a prange was unsigned)
            if ahead:
                z1[j] = dot(W[j], x_next) + b[j]
    elif ahead:
        _forward_rows(z1, X[order[t + 1]], W, b, lo, hi)


@jit(**OPTS)
def _take(sync, q, u, theta, vel, sq, step, grad, shape, bufs, X, order, rule, h, tile, kind, l,
          t, P):
    """Unit u of stage q, unless someone has taken it: then do it and count it done."""
    if claim(sync, CLAIM + 8 * u, q - 1, q):
        _unit(theta, vel, sq, step, grad, shape, bufs, X, order, rule, h, tile, kind, l, t, u, P)
        fetch_add(sync, DONE, 1)


@jit(**OPTS)
def _stage(sync, q, role, theta, vel, sq, step, grad, shape, bufs, X, order, rule, h, tile,
           kind, l, t, P):
    """Stage q (from 1) for member ``role``. The leader opens it, does its unit and returns
    when all P units are done, taking any unit a member has not started after SPINS looks (a
    member whose core another process holds). A member waits for the stage to open, does its
    unit unless taken, and goes on to wait for the next stage."""
    if P == 1:
        _unit(theta, vel, sq, step, grad, shape, bufs, X, order, rule, h, tile, kind, l, t,
              int(0), int(1))
        return
    spins = 0
    if role == 0:
        fetch_add(sync, READY, 1)       # READY: q
    else:
        while load_acquire(sync, READY) < q:
            spins += 1
            if spins > SPINS:
                yield_core()
    _take(sync, q, role, theta, vel, sq, step, grad, shape, bufs, X, order, rule, h, tile, kind,
          l, t, P)
    if role == 0:
        while load_acquire(sync, DONE) < q * P:
            spins += 1
            if spins > SPINS:
                for u in range(1, P):
                    _take(sync, q, u, theta, vel, sq, step, grad, shape, bufs, X, order, rule,
                          h, tile, kind, l, t, P)
                yield_core()


@jit(**OPTS)
def team_member(theta, vel, sq, step, grad, shape, bufs, X, Y, S, order, rule, h, loss,
                par_work, tile, role, P, sync, res):
    """Member ``role`` (0: the leader) of a team of P: one online epoch (see the module
    docstring). Every member walks the same stages (START, then per sample FWD of each wide
    layer, CORR of each wide layer from the top, FIRST); the leader does the rest between
    them. sync (sync_len(P),) int64 zeros, shared by the team; res (5,) float64: the leader
    writes train_epoch's five sums there. The other arguments as
    nnjit.loops.epoch.train_epoch's (batch 1, dense first layer)."""
    acts = shape.acts
    L = shape.sizes.shape[0] - 1
    check_rule(rule)        # every member raises here, or none later: a member that raised
    for l in range(L):      # in the middle would leave the leader waiting for its units
        check_act(acts[l])
    n = order.shape[0]
    if n == 0:              # (every member returns: no stage, res stays 0)
        return
    one = int(1)
    lead = role == 0
    q = int(1)
    # int(): a literal constant passed on would compile the stage once per kind
    fwd, corr, first = int(FWD), int(CORR), int(FIRST)
    _stage(sync, q, role, theta, vel, sq, step, grad, shape, bufs, X, order, rule, h, tile,
           int(START), one, int(0), P)
    if not lead:
        for t in range(n):
            for l in range(2, L + 1):
                if shape.sizes[l] * shape.sizes[l - 1] >= par_work:
                    q += 1
                    _stage(sync, q, role, theta, vel, sq, step, grad, shape, bufs, X, order,
                           rule, h, tile, fwd, l, t, P)
            for l in range(L, 1, -1):
                if shape.sizes[l] * shape.sizes[l - 1] >= par_work:
                    q += 1
                    _stage(sync, q, role, theta, vel, sq, step, grad, shape, bufs, X, order,
                           rule, h, tile, corr, l, t, P)
            q += 1
            _stage(sync, q, role, theta, vel, sq, step, grad, shape, bufs, X, order, rule, h,
                   tile, first, one, t, P)
        return
    alpha = h.alpha
    total = pen = batch_cost = batch_pen = 0.0
    emax = 0.0
    z1 = rows(bufs.z, shape, one, one)[0]
    for t in range(n):
        load_batch(bufs, shape, X, Y, S, order, t, one)
        apply_f(rows(bufs.a, shape, one, one)[0], z1, acts[0])
        for l in range(2, L + 1):                       # feed-forward
            W, b = params(theta, shape, l)
            a_prev = rows(bufs.a, shape, l - 1, one)
            z, a = rows(bufs.z, shape, l, one), rows(bufs.a, shape, l, one)
            if W.size >= par_work:
                q += 1
                _stage(sync, q, role, theta, vel, sq, step, grad, shape, bufs, X, order, rule,
                       h, tile, fwd, l, t, P)
                apply_f(a[0], z[0], acts[l - 1])
            else:
                mc, nc, _, _, _, _ = blocks(tile, W.shape[0], W.shape[1])
                forward_layer_tiled_serial(z, a, a_prev, W, b, acts[l - 1], mc, nc,
                                           W.size < par_work)
        aL, zL = rows(bufs.a, shape, L, one), rows(bufs.z, shape, L, one)
        y = targets(bufs, shape, one)
        costs, sw = bufs.cost[:1], bufs.s[:1]
        Sb = weight_sum(sw)
        emax = max(emax, sample_loss(costs, aL, zL, y, acts[L - 1], loss))
        p = 0.0
        if Sb > 0.0:
            if alpha > 0.0:
                p = penalty_from(theta, shape, one)
            step[0] += 1
        bc = 0.0
        bc += sw[0] * costs[0]
        total += bc
        if Sb > 0.0:
            batch_cost += bc * one / Sb
            pen += p
            batch_pen += p * one / Sb
            output_error(rows(bufs.delta, shape, L, one), aL, zL, y, sw, acts[L - 1], loss)
        for l in range(L, 1, -1):
            delta = rows(bufs.delta, shape, l, one)
            a_prev = rows(bufs.a, shape, l - 1, one)
            W, b = params(theta, shape, l)
            _, _, mc, nc, ju, ic = blocks(tile, W.shape[0], W.shape[1])
            small = W.size < par_work
            if Sb > 0.0:    # error recursion first: it needs W^(l) before the update
                backward_layer_tiled_serial(rows(bufs.delta, shape, l - 1, one), delta, W,
                                            rows(bufs.z, shape, l - 1, one), a_prev,
                                            acts[l - 2], mc, nc, small)
            if not small:   # (a stage even for a zero weight: every member walks the same)
                q += 1
                _stage(sync, q, role, theta, vel, sq, step, grad, shape, bufs, X, order, rule,
                       h, tile, corr, l, t, P)
            elif Sb > 0.0:
                vW, vb = params(vel, shape, l)
                sW, sb = params(sq, shape, l)
                dW, db = params(grad, shape, l)
                c = step_coefs(rule, h, step[0], alpha / Sb)
                corrections_update_tiled_serial(W, b, vW, vb, sW, sb, dW, db, delta, a_prev,
                                                rule, c, ju, ic, small)
        q += 1
        _stage(sync, q, role, theta, vel, sq, step, grad, shape, bufs, X, order, rule, h, tile,
               first, one, t, P)
    res[0], res[1], res[2], res[3], res[4] = total, pen, emax, batch_cost, batch_pen


def compile_plan(dtype):
    """What a second process compiles into the cache beside a first online fit in dtype
    (nnjit.jit.compile_beside): the leader's helpers with the argument types team_member
    calls them with, in the reverse of the order it first calls them (it starts with the
    stages; see nnjit.loops.epoch.compile_plan), then the prediction's forward (the second
    process had finished its list 5 s before the fitting process its team, which then
    compiled the forward for its first predict: 3.3 s, AMD Milan)."""
    T = kernel_types(dtype)
    A1, A2, i = T["A1"], T["A2"], T["i"]
    return [(corrections_update_tiled_serial, T["corr"] + (i, i, T["t"])),
            (backward_layer_tiled_serial, T["bwd"]),
            (output_error, (A2, A2, A2, A2, A1, i, i)),
            (penalty_from, (A1, T["St"], i)),
            (sample_loss, (A1, A2, A2, A2, i, i)),
            (forward_layer_tiled_serial, T["fwd"]),
            (forward, (A1, T["St"], T["Bt"], i, T["t"], i, i))]


_POOL, _POOL_LOCK = None, threading.Lock()


def _forget_pool():     # a forked child has the pool object but none of its threads
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run_team(P, *args):
    """One epoch by a team of P threads (team_member's arguments before role); returns
    train_epoch's five sums. The pool starts a thread for each member no idle thread can
    take, so fits in several threads at once never queue behind one another."""
    global _POOL
    sync, res = np.zeros(sync_len(P), np.int64), np.zeros(5)
    if P == 1:
        team_member(*args, 0, 1, sync, res)
        return tuple(res)
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=256, thread_name_prefix="nnjit-team")
        members = [_POOL.submit(team_member, *args, r, P, sync, res) for r in range(1, P)]
    team_member(*args, 0, P, sync, res)
    for m in members:
        m.result()
    return tuple(res)
