"""The loop form's training epoch: every batch of one pass over the data inside one compiled
call, for every way nnjit trains (MLP.fit, the scikit-learn estimators, streamed chunks).

One source, ``_train_epoch``, compiled as a few twins that differ only in two module
constants (Numba freezes globals and prunes the branches on them, so a fit compiles only the
kernels its batch size and input run):

``_MODE``, which kernels the layers run:
    ``ONLINE`` (batch_size < par_min; one sample is a batch of 1): the per-sample kernels
    serially, the first layer's update fused with the next sample's feed-forward;
    ``ONLINE_WIDE``: the same, with a layer wide enough (N_l N_{l-1} batch_size >= par_work)
    in parallel (a network with no such layer does not compile the three parallel kernels);
    at batch 1 with a dense first layer, train_epoch runs a team of threads instead
    (nnjit.loops.team: one epoch, no region a sample);
    ``TILED``: the parallel cache-blocked kernels; ``GEMM`` (batch_size >= the GEMM batch
    and scratch for every layer): the GEMM path for every layer; ``FUSED`` (a dense first
    layer, a small network (config.FUSED_*) and its scratch): every layer in two parallel
    regions a batch (nnjit.loops.fused).
``_FIRST``, what the first layer reads: ``DENSE`` rows of X; ``SPARSE`` a CSR matrix,
    with W^(1) held transposed (nnjit.loops.sparse).

The batch order is the caller's (``order``): MLP.fit's generator, scikit-learn's shuffle.
The epoch returns the sums each caller reports its loss from (see :func:`train_epoch`).
"""
import numpy as np

from ..config import Tiles
from ..jit import cached, compile_beside
from .blocked import (backward_layer_tiled, backward_layer_tiled_serial, blocks,
                      corrections_update_tiled, corrections_update_tiled_serial,
                      forward_layer_tiled, forward_layer_tiled_serial, forward_layer_units,
                      update_forward_next, update_forward_next_serial)
from .fused import (chunks, corrections_update_fused, forward_backward_fused, fused_offsets,
                    fused_scratch, pack_weights)
from .gemm import (backward_layer_gemm, corrections_update_gemm, forward_layer_gemm, gemm_rows,
                   gemm_scratch, sum8)
from .network import load_batch
from .reference import output_error, penalty_from, sample_loss, weight_sum
from .rows import apply_f, rule_row, step_coefs, table_kernel
from .sparse import clear_rows, dense_rule, fixed_sum, sparse_corrections, sparse_forward
from .views import OPTS, RC_OPTS, kernel_types, params, params_rc, params_t, params_t_rc, \
    renamed, rows, rows_rc, targets, targets_rc

#: tiles that turn cache blocking, the GEMM path and the fused batch off
NO_TILES = Tiles(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

ONLINE, TILED, GEMM, ONLINE_WIDE, FUSED = 0, 1, 2, 3, 4
DENSE, SPARSE = 0, 1
_MODE, _FIRST = TILED, DENSE


def _train_epoch(theta, vel, sq, step, grad, shape, bufs, X, Y, S, csr, order, batch_size,
                 rule, h, loss, par_min, par_work, tile):
    """One epoch of the lecture's algorithm: for each batch (order[start:start+mb]),
    feed-forward, output error (weighted by S), then from l = L down to 1 the error recursion
    to layer l-1 (with W^(l) before its update) and the fused correction + update (rule, h:
    nnjit.rules) of layer l. step[0] counts the updates (Adam's t); a batch whose weights sum
    to 0 makes none. See train_epoch for the arguments and what it returns."""
    acts = shape.acts
    L = shape.sizes.shape[0] - 1
    n = order.shape[0]
    alpha = h.alpha
    total = pen = batch_cost = batch_pen = 0.0
    emax = 0.0
    ahead = False          # online: is z^(1) of this sample already computed (fused)?
    if _MODE == FUSED:     # (the caller may have set the weights since the last epoch)
        pack_weights(theta, shape, bufs.p)
        work = 0           # weights x samples of a batch, over the samples
        for l in range(1, L + 1):
            work += shape.sizes[l] * shape.sizes[l - 1]
        # terms a pass: kc float32 rows of a panel fit L1, as many bytes of float64 (0: all)
        kc = tile.gemm_kc * 4 // bufs.p.itemsize if tile.gemm_kc > 0 else 1 << 30
    for start in range(0, n, batch_size):
        mb = min(batch_size, n - start)
        if _MODE == FUSED:      # (region 1 loads the batch: weight_sum's sum, from S)
            serial = work * mb < par_work       # a parallel region costs more than its work
            Sb = 0.0
            for m in range(mb):
                Sb += S[order[start + m]]
            G = chunks(mb, tile.fused_chunks)
            forward_backward_fused(theta, shape, bufs, X, Y, S, order, start, mb, loss, Sb, G,
                                   tile.fused_rb, kc, serial)
        else:
            load_batch(bufs, shape, X, Y, S, order, start, mb)
            l0 = int(1)    # int(): a literal 1 passed on would compile another rows_rc
            if ahead:      # (l0 and mb are 1)
                apply_f(rows(bufs.a, shape, l0, mb)[0], rows(bufs.z, shape, l0, mb)[0], acts[0])
                l0 = 2
            if _FIRST == SPARSE:      # (l0 is 1: no sample is ahead in a sparse fit)
                WT, b1 = params_t(theta, shape)
                sparse_forward(rows(bufs.z, shape, l0, mb), rows(bufs.a, shape, l0, mb), WT, b1,
                               csr.indptr, csr.indices, csr.data, order, start, acts[0])
                l0 = 2
            for l in range(l0, L + 1):                       # feed-forward
                W, b = params(theta, shape, l)
                a_prev = rows(bufs.a, shape, l - 1, mb)
                z, a = rows(bufs.z, shape, l, mb), rows(bufs.a, shape, l, mb)
                mc, nc, _, _, _, _ = blocks(tile, W.shape[0], W.shape[1])
                small = W.size * mb < par_work   # a parallel region costs more than its work
                if _MODE == GEMM:
                    forward_layer_gemm(z, a, a_prev, W, b, acts[l - 1], bufs.p, tile.gemm_mc,
                                       tile.gemm_kc)
                elif _MODE == TILED:
                    forward_layer_tiled(z, a, a_prev, W, b, acts[l - 1], mc, nc, small)
                elif _MODE == ONLINE_WIDE and W.size * mb >= par_work:
                    forward_layer_units(z, a, a_prev, W, b, acts[l - 1])
                else:
                    forward_layer_tiled_serial(z, a, a_prev, W, b, acts[l - 1], mc, nc, small)
        aL, zL = rows(bufs.a, shape, L, mb), rows(bufs.z, shape, L, mb)
        y = targets(bufs, shape, mb)
        costs, sw = bufs.cost[:mb], bufs.s[:mb]
        if _MODE != FUSED:      # (the fused batch's region 1 needed it already)
            Sb = weight_sum(sw)
        if _MODE != FUSED or Sb <= 0.0:     # (the fused batch's second region computes them)
            emax = max(emax, sample_loss(costs, aL, zL, y, acts[L - 1], loss))
        ahead = False
        p = 0.0
        if Sb > 0.0:       # (only zero-weight samples: nothing to learn from this batch)
            if alpha > 0.0:
                if _FIRST == SPARSE:      # ||W^(1)||^2 kept row by row by dense_rule
                    p = penalty_from(theta, shape, int(2)) + fixed_sum(csr.rowsq)
                else:
                    p = penalty_from(theta, shape, int(1))
            step[0] += 1
            c = step_coefs(rule, h, step[0], alpha / Sb)
            if _MODE == FUSED:
                corrections_update_fused(theta, vel, sq, shape, bufs, mb, loss, rule, c, G,
                                         tile.fused_rb, serial)
                err = fused_offsets(shape.sizes, mb, G, L)[3]
                for m in range(mb):
                    emax = max(emax, bufs.p[err + m])
        bc = 0.0
        for m in range(mb):
            bc += sw[m] * costs[m]
        total += bc
        if Sb > 0.0:
            batch_cost += bc * mb / Sb
            pen += p
            batch_pen += p * mb / Sb
        if Sb <= 0.0 or _MODE == FUSED:
            continue
        output_error(rows(bufs.delta, shape, L, mb), aL, zL, y, sw, acts[L - 1], loss)
        for l in range(L, 0, -1):
            delta = rows(bufs.delta, shape, l, mb)
            if _FIRST == SPARSE and l == 1:
                # layer 1: corrections over the stored entries, then every row's update
                WT, b1 = params_t(theta, shape)
                VT, vb1 = params_t(vel, shape)
                QT, qb1 = params_t(sq, shape)
                _, gb1 = params_t(grad, shape)
                for j in range(gb1.shape[0]):
                    gb1[j] = 0.0
                sparse_corrections(csr.GT, gb1, csr.mark, step[0], delta, csr.indptr,
                                   csr.indices, csr.data, order, start)
                dense_rule(WT, VT, QT, csr.GT, csr.mark, step[0], csr.zero_row, csr.rowsq,
                           1.0 / mb, c.alpha_n, rule, c)
                rule_row(rule, b1, vb1, qb1, gb1, 1.0 / mb, 0.0, c)
                clear_rows(csr.GT, csr.indptr, csr.indices, order, start, mb)
                continue
            a_prev = rows(bufs.a, shape, l - 1, mb)
            W, b = params(theta, shape, l)
            vW, vb = params(vel, shape, l)
            sW, sb = params(sq, shape, l)
            dW, db = params(grad, shape, l)
            _, _, mc, nc, ju, ic = blocks(tile, W.shape[0], W.shape[1])
            small = W.size * mb < par_work
            if l > 1:       # error recursion first: it needs W^(l) before the update
                d_prev, z_prev = rows(bufs.delta, shape, l - 1, mb), rows(bufs.z, shape, l - 1, mb)
                if _MODE == GEMM:
                    backward_layer_gemm(d_prev, delta, W, z_prev, a_prev, acts[l - 2], bufs.p,
                                        tile.gemm_mc, tile.gemm_kc)
                elif _MODE == TILED:
                    backward_layer_tiled(d_prev, delta, W, z_prev, a_prev, acts[l - 2], mc, nc,
                                         small)
                else:
                    backward_layer_tiled_serial(d_prev, delta, W, z_prev, a_prev, acts[l - 2],
                                                mc, nc, small)
            if _MODE == GEMM:
                corrections_update_gemm(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c,
                                        bufs.p, tile.gemm_ju, tile.gemm_kc)
            elif _MODE == TILED:
                corrections_update_tiled(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule, c,
                                         ju, ic, small)
            else:
                ahead = _FIRST == DENSE and l == 1 and batch_size == 1 and start + 1 < n
                if ahead:   # online: fuse the next sample's z^(1) into this update
                    x_next, z_next = X[order[start + 1]], rows(bufs.z, shape, l, mb)[0]
                    if _MODE == ONLINE_WIDE and W.size >= par_work:
                        update_forward_next(W, b, vW, vb, sW, sb, delta[0], a_prev[0], x_next,
                                            z_next, rule, c)
                    else:
                        update_forward_next_serial(W, b, vW, vb, sW, sb, delta[0], a_prev[0],
                                                   x_next, z_next, rule, c)
                elif _MODE == ONLINE_WIDE and not small:   # pays for a region
                    corrections_update_tiled(W, b, vW, vb, sW, sb, dW, db, delta, a_prev, rule,
                                             c, ju, ic, small)
                else:
                    corrections_update_tiled_serial(W, b, vW, vb, sW, sb, dW, db, delta,
                                                    a_prev, rule, c, ju, ic, small)
    return total, pen, emax, batch_cost, batch_pen


# The online twins run without reference counting, their views inlined (a sample is ~4 us,
# and the counts of ~30 views a sample cost ~1 of them); the batch twins count references
# and call the counted view helpers: a view per layer per batch costs nothing there, and
# Numba's IR inlining of ~25 view calls added 3.5 s to each twin's first compile.
_COUNTED = dict(params=params_rc, params_t=params_t_rc, rows=rows_rc, targets=targets_rc)
_NAMES = {ONLINE: "online", ONLINE_WIDE: "online_wide", TILED: "batch", GEMM: "gemm",
          FUSED: "fused"}
_EPOCH = {}


def _twin(mode, first):
    key = (mode, first)
    if key not in _EPOCH:
        suffix = "_" + _NAMES[mode] + ("_sparse" if first == SPARSE else "")
        if mode in (ONLINE, ONLINE_WIDE):
            _EPOCH[key] = renamed(_train_epoch, suffix, OPTS, _MODE=mode, _FIRST=first)
        else:
            _EPOCH[key] = renamed(_train_epoch, suffix, RC_OPTS, _MODE=mode, _FIRST=first,
                                  **_COUNTED)
    return _EPOCH[key]


def _widest(sizes):
    """The most weights of any layer, N_l N_{l-1}."""
    sizes = [int(x) for x in sizes]
    return max(o * i for i, o in zip(sizes[:-1], sizes[1:]))


def gemm_from(sizes, tile, dtype):
    """The smallest batch that runs the GEMM path for a network of these sizes (0: none):
    float32 from tile.gemm_batch (0: never), or from config.GEMM_WIDE[0] if smaller and the
    widest layer has GEMM_WIDE[1] weights or more (there the packed panels pay off sooner);
    float64 from config.GEMM_FLOAT64[0], and only with a widest layer of GEMM_FLOAT64[1]."""
    from .. import config
    if tile.gemm_batch <= 0:
        return 0
    widest = _widest(sizes)
    if np.dtype(dtype) == np.float64:
        batch, weights = config.GEMM_FLOAT64
        return max(int(batch), int(tile.gemm_batch)) if widest >= weights else 0
    small, weights = config.GEMM_WIDE
    if 0 < small < tile.gemm_batch and widest >= weights:
        return int(small)
    return int(tile.gemm_batch)


def fused_for(sizes):
    """Does a dense batch fit of a network of these sizes run the fused batch (config.FUSED_*:
    every layer's weights together, and the inputs)?"""
    from .. import config
    sizes = [int(x) for x in sizes]
    weights = sum(o * i for i, o in zip(sizes[:-1], sizes[1:]))
    return 0 < weights <= config.FUSED_MAX_WEIGHTS and sizes[0] <= config.FUSED_MAX_INPUTS


def epoch_scratch(sizes, batch_size, dtype, tile):
    """Scratch elements (Batch.p) a dense fit at this batch size needs: the fused batch's,
    the GEMM path's, or none."""
    if batch_size > 1 and tile.fused_rb > 0 and fused_for(sizes):
        return fused_scratch(sizes, batch_size, tile.fused_chunks)
    if 0 < gemm_from(sizes, tile, dtype) <= batch_size:
        return gemm_scratch(sizes, batch_size)
    return 0


def epoch_mode(shape, bufs, batch_size, par_min, tile, par_work=None, dense=True):
    """Which kernels a fit runs (_MODE); par_work None: as if a layer were wide; dense: the
    first layer reads rows of X (not a CSR matrix)."""
    if batch_size == 1 or batch_size < par_min:
        return (ONLINE if par_work is not None and _widest(shape.sizes) * batch_size < par_work
                else ONLINE_WIDE)
    if (dense and tile.fused_rb > 0 and fused_for(shape.sizes)
            and bufs.p.shape[0] >= fused_scratch(shape.sizes, batch_size, tile.fused_chunks)):
        return FUSED
    g = gemm_from(shape.sizes, tile, bufs.a.dtype)
    if 0 < g <= batch_size and bufs.p.shape[0] >= gemm_scratch(shape.sizes, batch_size):
        return GEMM
    return TILED


def train_epoch(theta, vel, sq, step, grad, shape, bufs, X, Y, S, csr, order, batch_size,
                rule, h, loss, par_min, par_work, tile):
    """One epoch over the samples ``order`` in batches of ``batch_size``.

    theta, vel, sq, grad (P,): parameters, optimizer state, scratch (nnjit.layout; with a
    sparse first layer W^(1)'s block transposed); step (1,) int64: updates made. shape, bufs:
    the layout and one batch's buffers. X (n, D), Y (n, K), S (n,): inputs, targets, sample
    weights (a sparse fit passes an X of 0 columns and its CSR in ``csr``; a dense fit an
    empty one: nnjit.loops.sparse). rule, h: the update rule's code and its Hyper; loss: the
    loss code. par_min: batches of fewer samples run the per-sample kernels serially;
    par_work: there, a layer runs in parallel anyway once N_l N_{l-1} mb reaches it; tile:
    the kernels' blocks (Tiles, from nnjit.config.tiles()).

    Returns (sum_m s_m C_m, sum over updating batches of ||W||^2 before the update, max |a - y|,
    sum over batches of mb sum_m s_m C_m / sum_m s_m, the same of mb ||W||^2 / sum_m s_m):
    MLP.fit reports (first + alpha/2 second) / sum_m s_m, scikit-learn's estimators (fourth
    + alpha/2 fifth) / n (each batch's mean loss, weighted by its size)."""
    first = SPARSE if csr.indptr.shape[0] else DENSE
    mode = epoch_mode(shape, bufs, batch_size, par_min, tile, par_work, first == DENSE)
    from .. import config
    if mode == ONLINE_WIDE and first == DENSE and batch_size == 1 and config.ONLINE_TEAM:
        return _team_epoch(theta, vel, sq, step, grad, shape, bufs, X, Y, S, order, rule, h,
                           loss, par_work, tile)
    twin = _twin(mode, first)
    if not twin.overloads:      # not yet compiled or loaded in this process
        if (compile_beside("nnjit.loops.epoch:compile_plan", mode, first, bufs.a.dtype.name,
                           fill="nnjit.loops.epoch:compile_fill") and mode == FUSED):
            # the second process compiles the first region (the longer compile), this one
            # the rest, then its epoch (which waits for the first, then is finished)
            for kernel, sig in compile_plan(mode, first, bufs.a.dtype.name, own=True):
                if not cached(kernel, sig):
                    kernel.compile(tuple(sig))
    return twin(theta, vel, sq, step, grad, shape, bufs, X, Y, S, csr, order, batch_size, rule,
                h, loss, par_min, par_work, tile)


def _team_epoch(theta, vel, sq, step, grad, shape, bufs, X, Y, S, order, rule, h, loss,
                par_work, tile):
    """An online epoch with a wide layer by a team of threads meeting at each sample's
    stages (nnjit.loops.team), as many as Numba's thread count and the cores allow."""
    from numba import get_num_threads

    from ..threads import cores
    from .team import run_team, team_member
    if not team_member.overloads:       # not yet compiled or loaded in this process
        compile_beside("nnjit.loops.team:compile_plan", bufs.a.dtype.name)
    return run_team(max(1, min(get_num_threads(), cores())), theta, vel, sq, step, grad, shape,
                    bufs, X, Y, S, order, rule, h, loss, par_work, tile)


def compile_plan(mode, first, dtype, own=False):
    """What a second process compiles into the cache beside a first fit of twin (mode, first)
    in dtype (nnjit.jit.compile_beside): the parallel kernels that twin calls, each with the
    argument types the twin calls it with, in the reverse of the order the twin first calls
    them (the first process compiles them in that order while it compiles the twin; the two
    meet in the middle), then the prediction's forward. The types must be the twin's exactly,
    or the second process compiles a specialisation nobody loads:
    test_a_fit_compiles_each_kernel_once holds them to a real fit's.

    own: instead, what the fitting process compiles before its twin while the second one
    compiles the fused batch's first region (the longer compile: the twin waits for it, so
    whatever else the twin calls is compiled first): the second region and the epoch's
    serial helpers, those the twin calls after the first region included (typed after the
    wait, they were compiled on the critical path); first of all four of the first region's
    own callees, in the order the second process reaches them, which it then loads instead
    of compiling (the first region is the longer chain: ~7.5 s against ~5.7 on the 2-core
    Sapphire Rapids). Empty for the other twins."""
    from numba import types

    from .network import forward
    T = kernel_types(dtype)
    A1, A2, I1, F1, i, f, c, t = (T[k] for k in ("A1", "A2", "I1", "F1", "i", "f", "c", "t"))
    St, Bt, fwd, bwd, corr = T["St"], T["Bt"], T["fwd"], T["bwd"], T["corr"]
    ahead = (A2, A1, A2, A1, A2, A1, A1, A1, A1, A1, i, c)
    region2 = (corrections_update_fused, (A1, A1, A1, St, Bt, i, i, i, c, i, i, t))
    if own:
        if mode != FUSED:
            return []
        x = getattr(types, dtype)
        return [(gemm_rows, (A1, i, A1, i, i, A1, i, i, i, i, i, i, i)),
                (table_kernel(dtype, "softmax_row"), (A1, A1)),
                (table_kernel(dtype, "fprime"), (x, x, i)), (sum8, (A1, i, i, i)),
                region2] + _serial_helpers(T)
    calls = []
    if first == SPARSE:
        calls.append((sparse_forward, (A2, A2, A2, A1, I1, I1, A1, I1, i, i)))
    if mode == FUSED:       # (the first region first: it takes the longer compile)
        calls += [region2, (forward_backward_fused, (A1, St, Bt, A2, A2, A1, I1, i, i, i, f, i,
                                                     i, i, t))]
    elif mode == GEMM:
        calls += [(forward_layer_gemm, fwd[:6] + (A1, i, i)),
                  (backward_layer_gemm, bwd[:6] + (A1, i, i)),
                  (corrections_update_gemm, corr + (A1, i, i))]
    elif mode == TILED:
        calls += [(forward_layer_tiled, fwd), (backward_layer_tiled, bwd),
                  (corrections_update_tiled, corr + (i, i, t))]
    else:
        if mode == ONLINE_WIDE:
            calls.append((forward_layer_units, fwd[:6]))
        calls += [(forward_layer_tiled_serial, fwd), (backward_layer_tiled_serial, bwd)]
        if first == DENSE:
            if mode == ONLINE_WIDE:
                calls.append((update_forward_next, ahead))
            calls.append((update_forward_next_serial, ahead))
        if mode == ONLINE_WIDE:
            calls.append((corrections_update_tiled, corr + (i, i, t)))
        calls.append((corrections_update_tiled_serial, corr + (i, i, t)))
    if first == SPARSE:
        calls += [(sparse_corrections, (A2, A1, I1, i, A2, I1, I1, A1, I1, i)),
                  (dense_rule, (A2, A2, A2, A2, I1, i, A1, F1, f, f, i, c))]
    predict = [(forward, (A1, St, Bt, i, types.boolean, i, i))]
    if mode == FUSED:       # (the other twins compile load_batch with themselves)
        predict.append((load_batch, (Bt, St, A2, A2, A1, I1, i, i)))
    return calls[::-1] + predict


def _serial_helpers(T):
    """The fused twin's serial helpers (T: kernel_types), in the order it calls them."""
    A1, A2, St, Bt, i = T["A1"], T["A2"], T["St"], T["Bt"], T["i"]
    return [(sample_loss, (A1, A2, A2, A2, i, i)), (penalty_from, (A1, St, i)),
            (step_coefs, (i, T["Ht"], i, T["f"])), (rows_rc, (A1, St, i, i)),
            (targets_rc, (Bt, St, i)), (pack_weights, (A1, St, A1)), (chunks, (i, i))]


def compile_fill(mode, first, dtype):
    """What the second process compiles before its compile_plan while the first process is
    compiling gemm_rows (nnjit.jit.compile_beside's fill): the fused twin's serial helpers,
    which the first process would compile after its second region. The first region calls
    gemm_rows early and waits for it: on an AVX2 core gemm_rows took 3.3 s to compile, 2.5
    of them its micro-kernel's (block3, through the SLP vectoriser), and the second process
    waited 2 s (AMD Milan); an AVX-512 core's micro-kernel (block_wide) compiles in 0.2 s,
    and there the wait, and so the fill, is short or none. (gemm_rows, []) for the other
    twins."""
    return gemm_rows, (_serial_helpers(kernel_types(dtype)) if mode == FUSED else [])


def zero_inputs(dtype):
    """The X a sparse fit passes (no columns: load_batch then loads only targets)."""
    return np.zeros((0, 0), dtype)
