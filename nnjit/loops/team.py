"""Online learning (batch 1) of a network with a wide layer: the epoch's threads enter once
and meet at barriers between a sample's stages.

Why: a sample of 784-128-10 is ~10 us of work; run as one parallel region a sample
(update_forward_next) it paid the threading layer's entry and exit each time: under TBB the
calling thread starts its half 3.4 us in, the worker 5.4 us, and the region returns at 14.8 us
for 8 us of work a thread (clock_gettime inside the region, 3,000 calls). A barrier here is
~0.1-0.3 us.

The team: ``run_team`` starts P - 1 threads (a pool kept for the process; the kernel releases
the GIL) and runs member 0, the leader, itself; each thread runs ``team_member`` over the
same samples:

* the leader alone: load the sample, f(z^(1)), feed-forward of the narrow layers, the loss,
  the output error, the error recursion and the narrow layers' updates;
* every member its own block of rows (units j in [N r / P, N (r + 1) / P) for member r) of
  each wide layer (N_l N_{l-1} >= par_work): feed-forward z_j = w_j . a + b_j, the update of
  its rows, and for the first layer the update fused with the next sample's z^(1) (the per-row
  work of nnjit.loops.blocked.update_forward_next), so a member's rows stay in its core's
  cache from sample to sample.

Every row is computed by the same per-row functions in the same order whatever P is, so the
result is bit for bit the per-sample kernels' and does not depend on the thread count. Between
two barriers a member writes only its own rows (the leader: everything else).

Not a Numba prange: a parallel region compiled around this body took a first online fit
from 10.6 to 21 s (the parfor body's module, with everything it calls, optimised again), and
a prange does not promise that its iterations run at once (TBB may run both on one thread
when its other worker is busy), which a barrier needs. Waiting spins on an acquire load for
a while (the other core is about to arrive), then yields the core (``sched_yield``) so that a
member whose core another process holds gets it back sooner (pure spinning is what makes
OpenMP 10-200x slower on a busy machine: nnjit.threads).
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
from .blocked import (backward_layer_tiled_serial, corrections_update_tiled_serial,
                      corrections_update_units, forward_layer_tiled_serial)
from .epoch import blocks, kernel_types
from .network import load_batch
from .reference import output_error, penalty_from, sample_loss, weight_sum
from .rows import apply_f, check_act, check_rule, rule_at, rule_row, step_coefs
from .simd import dot
from .views import OPTS, params, rows, targets

#: the barrier's arrival count sits alone in sync's first cache line
ARRIVED, SYNC_LEN = 0, 8
#: acquire loads before a waiting member starts yielding its core
SPINS = 1 << 12
_YIELD = sys.platform != "win32"


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
def wait_until(sync, i, target):
    """Wait until sync[i] >= target: spin, then yield the core between looks."""
    spins = 0
    while load_acquire(sync, i) < target:
        spins += 1
        if spins > SPINS:
            yield_core()


@jit(**OPTS)
def barrier(sync, P, k):
    """The team's k-th barrier (k from 0): returns when all P members have arrived; returns
    k + 1. Everything a member wrote before it is visible to every member after it."""
    if P > 1:
        fetch_add(sync, ARRIVED, 1)
        wait_until(sync, ARRIVED, P * (k + 1))
    return k + 1


@jit(**OPTS)
def _forward_rows(z, a_prev, W, b, lo, hi):
    """z_j = w_j . a + b_j for units j in [lo, hi) of one sample (the fixed-order dot)."""
    for j in range(lo, hi):
        z[j] = dot(W[j], a_prev) + b[j]


@jit(**OPTS)
def team_member(theta, vel, sq, step, grad, shape, bufs, X, Y, S, order, rule, h, loss,
            par_work, tile, role, P, sync, res):
    """Member ``role`` (0: the leader) of a team of P: the whole epoch, the leader's part and
    its rows (see the module docstring). sync (SYNC_LEN,) int64 zeros, shared by the team;
    res (5,) float64: the leader writes train_epoch's five sums there. The other arguments
    as nnjit.loops.epoch.train_epoch's (batch 1, dense first layer)."""
    acts = shape.acts
    L = shape.sizes.shape[0] - 1
    check_rule(rule)        # every member raises here, or none later: a member that raised
    for l in range(L):      # between barriers would leave the others waiting for ever
        check_act(acts[l])
    n = order.shape[0]
    alpha = h.alpha
    one = int(1)
    lead = role == 0
    total = pen = batch_cost = batch_pen = 0.0
    emax = 0.0
    k = int(0)     # int(): a literal 0 passed on would compile barrier twice
    W1, b1 = params(theta, shape, one)
    vW1, vb1 = params(vel, shape, one)
    sW1, sb1 = params(sq, shape, one)
    lo1, hi1 = W1.shape[0] * role // P, W1.shape[0] * (role + 1) // P
    z1 = rows(bufs.z, shape, one, one)[0]
    x = rows(bufs.a, shape, int(0), one)[0]
    d1 = rows(bufs.delta, shape, one, one)[0]
    if n > 0:
        _forward_rows(z1, X[order[0]], W1, b1, lo1, hi1)
    k = barrier(sync, P, k)
    for t in range(n):
        if lead:
            load_batch(bufs, shape, X, Y, S, order, t, one)
            apply_f(rows(bufs.a, shape, one, one)[0], z1, acts[0])
        for l in range(2, L + 1):                       # feed-forward
            W, b = params(theta, shape, l)
            a_prev = rows(bufs.a, shape, l - 1, one)
            z, a = rows(bufs.z, shape, l, one), rows(bufs.a, shape, l, one)
            if W.size >= par_work:
                k = barrier(sync, P, k)                 # a^(l-1) is complete
                _forward_rows(z[0], a_prev[0], W, b, W.shape[0] * role // P,
                              W.shape[0] * (role + 1) // P)
                k = barrier(sync, P, k)
                if lead:
                    apply_f(a[0], z[0], acts[l - 1])
            elif lead:
                mc, nc, _, _, _, _ = blocks(tile, W.shape[0], W.shape[1])
                forward_layer_tiled_serial(z, a, a_prev, W, b, acts[l - 1], mc, nc,
                                           W.size < par_work)
        if lead:
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
        k = barrier(sync, P, k)       # every member reads the sample's weight and step now
        Sb = weight_sum(bufs.s[:1])
        ahead = t + 1 < n
        if Sb > 0.0:
            c = step_coefs(rule, h, step[0], alpha / Sb)
            for l in range(L, 1, -1):
                delta = rows(bufs.delta, shape, l, one)
                a_prev = rows(bufs.a, shape, l - 1, one)
                W, b = params(theta, shape, l)
                vW, vb = params(vel, shape, l)
                sW, sb = params(sq, shape, l)
                dW, db = params(grad, shape, l)
                _, _, mc, nc, ju, ic = blocks(tile, W.shape[0], W.shape[1])
                small = W.size < par_work
                if lead:    # error recursion first: it needs W^(l) before the update
                    backward_layer_tiled_serial(rows(bufs.delta, shape, l - 1, one), delta, W,
                                                rows(bufs.z, shape, l - 1, one), a_prev,
                                                acts[l - 2], mc, nc, small)
                if not small:
                    k = barrier(sync, P, k)
                    corrections_update_units(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule,
                                             c, W.shape[0] * role // P,
                                             W.shape[0] * (role + 1) // P, ic)
                elif lead:
                    corrections_update_tiled_serial(W, b, vW, vb, sW, sb, dW, db, delta,
                                                    a_prev, rule, c, ju, ic, small)
            k = barrier(sync, P, k)   # delta^(1) is complete
            an = c.alpha_n
            x_next = X[order[t + 1 if ahead else t]]
            for j in range(lo1, hi1):
                rule_row(rule, W1[j], vW1[j], sW1[j], x, np.float64(d1[j]), an, c)
                rule_at(rule, b1, vb1, sb1, np.int64(j), d1[j], c)
                if ahead:
                    z1[j] = dot(W1[j], x_next) + b1[j]
        elif ahead:
            _forward_rows(z1, X[order[t + 1]], W1, b1, lo1, hi1)
        k = barrier(sync, P, k)       # z^(1) of the next sample is complete
    if lead:
        res[0], res[1], res[2], res[3], res[4] = total, pen, emax, batch_cost, batch_pen


def compile_plan(dtype):
    """What a second process compiles into the cache beside a first online fit in dtype
    (nnjit.jit.compile_beside): team_member's longest-compiling helpers with the argument
    types it calls them with, in the reverse of the order it first calls them (see
    nnjit.loops.epoch.compile_plan)."""
    T = kernel_types(dtype)
    A1, A2, i, f = T["A1"], T["A2"], T["i"], T["f"]
    return [(corrections_update_tiled_serial, T["corr"] + (i, i, T["t"])),
            (corrections_update_units, T["corr"] + (i, i, i)),
            (backward_layer_tiled_serial, T["bwd"]),
            (step_coefs, (i, T["Ht"], i, f)),
            (output_error, (A2, A2, A2, A2, A1, i, i)),
            (penalty_from, (A1, T["St"], i)),
            (sample_loss, (A1, A2, A2, A2, i, i)),
            (forward_layer_tiled_serial, T["fwd"])]


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
    sync, res = np.zeros(SYNC_LEN, np.int64), np.zeros(5)
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
