"""The tables of nnjit.activations and nnjit.rules compiled for the loop form: the scalar and
row functions every loop kernel calls.

Each dispatch is generated from its table for float32 and float64 (nnjit.forms): one if/elif
chain over the codes, each branch the entry's definition written out for that dtype, the last
branch raising. The row functions put the branch outside the loop over a row, so each entry's
loop is a plain loop LLVM vectorises (error_model numpy: a division is a plain IEEE one, no
zero check in the loop to stop the vectoriser; no reassoc, so softmax sums its row in order).

======================  ==============================================================
``f(z, act)``           a = f(z), one element
``fprime(z, a, act)``   f'(z), one element
``apply_f(a, z, act)``  a_j = flush(f(z_j)) for one sample's row (softmax: the whole row)
``mul_fprime(d, z, a, act)``  d_j <- flush(f'(z_j) d_j) for one sample's row (elementwise f only)
``cost``, ``output_error``, ``max_error``  a sample's C_m, δ^L and max |a - y| (rows m of 2-D arrays)
``step_coefs(rule, h, t, alpha_n)``  the Coefs of update t (float64)
``rule_row(rule, w, v, q, g, scale, an, c)``  the rule on a row, gradient scale g_i + an w_i
``rule_row_plain(rule, w, v, q, g, scale, c)``  the same with an = 0, without its multiply-add
``online_row(rule, w, v, q, g, scale, an, c)``  rule_row_plain when an = 0, else rule_row
``rule_at(rule, w, v, q, j, d, c)``  the rule on element j with gradient d
``check_act(act)``, ``check_rule(rule)``  raise for a code not in its table
``table_kernel(dtype, name)``  one dtype's compiled dispatch, for the compile plans
``check_loss(act, loss)``  raise for a loss code, or an output act its entry does not take
======================  ==============================================================
"""
import sys

import numpy as np

from .. import activations as A
from .. import rules as R
from ..forms import by_dtype, expand, namespace, specialise, switch
from ..jit import jit
from .fastmath import ROW_FLAGS

_ROW_OPTS = dict(fastmath=ROW_FLAGS, nogil=True, error_model="numpy", _nrt=False)
# The rules are compiled without reassoc/contract: LLVM inlines them into every fused kernel,
# and flags of their own keep each update the same arithmetic in every caller, bit for bit
# (fast-math flags travel with the instructions).
_RULE_OPTS = dict(fastmath={"nsz"}, nogil=True, error_model="numpy", _nrt=False)

_HERE = sys.modules[__name__]
_UNKNOWN_ACT = ["raise ValueError('unknown activation code')"]
_UNKNOWN_RULE = ["raise ValueError('unknown update rule code')"]
_DEFS = [a.f for a in A.ELEMENTWISE] + [a.fprime for a in A.ELEMENTWISE]


def _compiled(fn, dtype, opts, **names):
    """fn specialised for the loop form and dtype, compiled (and the functions it calls)."""
    compile_ = jit(**opts)
    return compile_(specialise(fn, "loops", dtype, compile_, **names))


def _indent(lines, n=1):
    return ["    " * n + line for line in lines]


def _activations(dtype):
    """The activation table's dispatches for one dtype."""
    ns = namespace(_DEFS, "loops", dtype)
    ns["SOFTMAX_ROW"] = _compiled(A.softmax_row, dtype, _ROW_OPTS)
    sfx = f"__{dtype.name}"
    els = A.ELEMENTWISE

    def FLUSH(target, value):       # target = flush(value), the table's flush written out
        return ["_x = " + value] + expand(A.flush, ["_x"], target, "_fl")

    def make(name, params, cases, extra=()):
        return jit(**_ROW_OPTS)(switch(name + sfx, params, params[-1], list(cases) + list(extra),
                                       _UNKNOWN_ACT, ns, _HERE))
    made = {
        "f": make("f", ("z", "act"), [
            (a.code, expand(a.f, ["z"], f"_r{a.code}", f"_f{a.code}") + [f"return _r{a.code}"])
            for a in els]),
        "fprime": make("fprime", ("z", "a", "act"), [
            (a.code, expand(a.fprime, ["z", "a"], f"_r{a.code}", f"_f{a.code}")
             + [f"return _r{a.code}"]) for a in els]),
        "apply_f": make("apply_f", ("a", "z", "act"), [
            (x.code, ["for j in range(z.shape[0]):"]
             + _indent(expand(x.f, ["z[j]"], "_a", f"_f{x.code}") + FLUSH("a[j]", "_a")))
            for x in els],
            [(A.SOFTMAX, ["SOFTMAX_ROW(a, z)"])]),
        "mul_fprime": make("mul_fprime", ("d", "z", "a", "act"), [
            (x.code, ["for j in range(z.shape[0]):"]
             + _indent(expand(x.fprime, ["z[j]", "a[j]"], f"_d{x.code}", f"_f{x.code}")
                       + FLUSH("d[j]", f"d[j] * _d{x.code}"))) for x in els]),
    }
    made["softmax_row"] = ns["SOFTMAX_ROW"]
    made["cost"] = _compiled(A.cost, dtype, _ROW_OPTS)
    made["output_error"] = _compiled(A.output_error, dtype, _ROW_OPTS, fprime=made["fprime"])
    made["max_error"] = _compiled(A.max_error, dtype, _ROW_OPTS)
    return made


_ACT = {}


def _act(dtype, name):
    if dtype not in _ACT:
        _ACT[dtype] = _activations(dtype)
    return _ACT[dtype][name]


def table_kernel(dtype, name):
    """The compiled dispatch ``name`` of the activation table for dtype, as the kernels call
    it (f, fprime, apply_f, mul_fprime, softmax_row, ...): what a compile plan lists."""
    return _act(np.dtype(dtype), name)


def _per_dtype(table, name, params, dtype_param, opts):
    return by_dtype(name, params, dtype_param, lambda dt: table(dt, name), _HERE, opts)


f = _per_dtype(_act, "f", ("z", "act"), 0, _ROW_OPTS)
fprime = _per_dtype(_act, "fprime", ("z", "a", "act"), 0, _ROW_OPTS)
apply_f = _per_dtype(_act, "apply_f", ("a", "z", "act"), 0, _ROW_OPTS)
mul_fprime = _per_dtype(_act, "mul_fprime", ("d", "z", "a", "act"), 0, _ROW_OPTS)
cost = _per_dtype(_act, "cost", ("a", "z", "y", "m", "act", "loss"), 0, _ROW_OPTS)
output_error = _per_dtype(_act, "output_error", ("delta", "a", "z", "y", "m", "act", "loss", "w"),
                          0, _ROW_OPTS)
max_error = _per_dtype(_act, "max_error", ("a", "y", "m"), 0, _ROW_OPTS)

# A code is checked before a parallel region: an exception raised inside one does not reach
# the caller as itself (Numba: "SystemError: ... returned a result with an exception set").
check_act = jit(**_ROW_OPTS)(switch(
    "check_act", ("act",), "act", [(a.code, ["return"]) for a in A.ACTIVATIONS], _UNKNOWN_ACT,
    {}, _HERE))
_UNKNOWN_LOSS = ["raise ValueError('unknown loss code, or a loss with an output it does not "
                 "take')"]
check_loss = jit(**_ROW_OPTS)(switch(
    "check_loss", ("act", "loss"), "loss",
    [(x.code, ["if " + " or ".join(f"act == {A.CODES[o]}" for o in x.outputs) + ":", "    return"]
      + _UNKNOWN_LOSS) for x in A.LOSS_TABLE], _UNKNOWN_LOSS, {}, _HERE))


# ---------------------------------------------------------------- update rules
check_rule = jit(**_RULE_OPTS)(switch(
    "check_rule", ("rule",), "rule", [(r.code, ["return"]) for r in R.RULES], _UNKNOWN_RULE,
    {}, _HERE))

# the per-step scalars, computed in float64 and cast where used
step_coefs = jit(**_RULE_OPTS)(switch(
    "step_coefs", ("rule", "h", "t", "alpha_n"), "rule",
    [(r.code, expand(r.scalars, ["h", "t"], ("_A", "_B", "_decay"), f"_s{r.code}")
      + expand(R.coefs_of, ["rule", "h", "t", "alpha_n", "(_A, _B, _decay)"], "_c", "_c")
      + ["return _c"]) for r in R.RULES],
    _UNKNOWN_RULE, namespace([r.scalars for r in R.RULES] + [R.coefs_of], "loops", np.float64),
    _HERE))


def _rules(dtype):
    ns = namespace([r.step for r in R.RULES] + [R.cast], "loops", dtype)
    # the state a rule keeps: q is stored back only by rules that read it (a needless store
    # of q per element would be a third of an SGD update's memory traffic)

    def step(r, at, l2=True):
        i = "j" if at else "i"
        g = "T(d)" if at else "sc * g[i] + an_ * w[i]" if l2 else "sc * g[i]"
        return ([f"_g = {g}"]
                + expand(r.step, [f"w[{i}]", f"v[{i}]", f"q[{i}]", "_g", "cc"],
                         ("_nw", "_nv", "_nq"), f"_r{r.code}")
                + [f"w[{i}] = _nw", f"v[{i}] = _nv", f"q[{i}] = _nq" if "q" in r.state else "pass"])
    cast = expand(R.cast, ["c", "T"], "cc", "_k")
    sfx = f"__{dtype.name}"
    row = switch("rule_row" + sfx, ("rule", "w", "v", "q", "g", "scale", "an", "c"), "rule",
                 [(r.code, ["for i in range(w.shape[0]):"] + _indent(step(r, False)))
                  for r in R.RULES], _UNKNOWN_RULE, ns, _HERE,
                 ["T = w.dtype.type"] + cast + ["sc, an_ = T(scale), T(an)"])
    plain = switch("rule_row_plain" + sfx, ("rule", "w", "v", "q", "g", "scale", "c"), "rule",
                   [(r.code, ["for i in range(w.shape[0]):"] + _indent(step(r, False, False)))
                    for r in R.RULES], _UNKNOWN_RULE, ns, _HERE,
                   ["T = w.dtype.type"] + cast + ["sc = T(scale)"])
    at = switch("rule_at" + sfx, ("rule", "w", "v", "q", "j", "d", "c"), "rule",
                [(r.code, step(r, True)) for r in R.RULES], _UNKNOWN_RULE, ns, _HERE,
                ["T = w.dtype.type"] + cast)
    return {"rule_row": jit(**_RULE_OPTS)(row), "rule_row_plain": jit(**_RULE_OPTS)(plain),
            "rule_at": jit(**_RULE_OPTS)(at)}


_RULE = {}


def _rule(dtype, name):
    if dtype not in _RULE:
        _RULE[dtype] = _rules(dtype)
    return _RULE[dtype][name]


rule_row = _per_dtype(_rule, "rule_row", ("rule", "w", "v", "q", "g", "scale", "an", "c"), 1,
                      _RULE_OPTS)
# rule_row without the L2 term, for the online kernels when alpha = 0 (nnjit's default): its
# multiply and add per weight were 13-21 % of an SGD row's time (one core, 784-wide rows, AMD
# Milan). The same bits as rule_row with an = 0 for finite weights: sc g_i + 0 w_i differs
# from sc g_i only in the sign of a zero gradient when w_i >= +0, which then moves no weight
# (a state below STEP_MIN is cut to +0 either way; rmsprop without momentum gives w_i - 0 =
# +0 for w_i = +0 from both). A weight that overflowed stays inf here where rule_row makes it
# NaN: either way the epoch's check of every parameter raises DivergenceError and restores
# them. Only the online kernels call it: a second copy of the rule loops in every batch
# kernel added ~3 s to a first batch fit's compile.
rule_row_plain = _per_dtype(_rule, "rule_row_plain", ("rule", "w", "v", "q", "g", "scale", "c"),
                            1, _RULE_OPTS)
rule_at = _per_dtype(_rule, "rule_at", ("rule", "w", "v", "q", "j", "d", "c"), 1, _RULE_OPTS)


@jit(**_RULE_OPTS, inline="always")
def online_row(rule, w, v, q, g, scale, an, c):
    """rule_row for the wide online kernels (the team's first-layer stage, the parallel
    update_forward_next): rule_row_plain when an = 0, the same bits faster (see above).
    Narrow online kernels and every batch kernel call rule_row itself. Inlined into its
    callers by Numba (LLVM left it a call of its own: a call a row, with some thirty
    arguments, to a function that makes one more)."""
    if an == 0:
        rule_row_plain(rule, w, v, q, g, scale, c)
    else:
        rule_row(rule, w, v, q, g, scale, an, c)
