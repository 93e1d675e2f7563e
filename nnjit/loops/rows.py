"""The tables of nnjit.activations and nnjit.rules compiled for the loop form: the scalar and
row functions every loop kernel calls.

Each table entry's definition is specialised for float32 and float64 (nnjit.forms) and
dispatched on its code by a generated if/elif chain whose last branch raises. The row
functions put the branch outside the loop over a row, so each entry's loop is a plain loop
LLVM vectorises (error_model numpy: a division is a plain IEEE one, no zero check in the
loop to stop the vectoriser; no reassoc, so softmax sums its row in order).

======================  ==============================================================
``f(z, act)``           a = f(z), one element
``fprime(z, a, act)``   f'(z), one element
``apply_f(a, z, act)``  a_j = f(z_j) for one sample's row (softmax: the whole row)
``mul_fprime(d, z, a, act)``  d_j <- f'(z_j) d_j for one sample's row (elementwise f only)
``cost``, ``output_error``, ``max_error``  a sample's C_m, δ^L and max |a - y| (rows m of 2-D arrays)
``step_coefs(rule, h, t, alpha_n)``  the Coefs of update t (float64)
``rule_row(rule, w, v, q, g, scale, an, c)``  the rule on a row, gradient scale g_i + an w_i
``rule_at(rule, w, v, q, j, d, c)``  the rule on element j with gradient d
======================  ==============================================================
"""
import sys

from .. import activations as A
from .. import rules as R
from ..forms import by_dtype, specialise, switch
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


def _compiled(fn, dtype, opts, **names):
    """fn specialised for the loop form and dtype, compiled (and the functions it calls)."""
    compile_ = jit(**opts)
    return compile_(specialise(fn, "loops", dtype, compile_, **names))


def _activations(dtype):
    """The activation table's dispatches for one dtype."""
    ns = {}
    for a in A.ELEMENTWISE:
        ns[f"F_{a.name}"] = _compiled(a.f, dtype, _ROW_OPTS)
        ns[f"FP_{a.name}"] = _compiled(a.fprime, dtype, _ROW_OPTS)
    ns["SOFTMAX_ROW"] = _compiled(A.softmax_row, dtype, _ROW_OPTS)
    sfx = f"__{dtype.name}"
    made = {}
    made["f"] = jit(**_ROW_OPTS)(switch(
        "f" + sfx, ("z", "act"), "act",
        [(a.code, [f"return F_{a.name}(z)"]) for a in A.ELEMENTWISE], _UNKNOWN_ACT, ns, _HERE))
    made["fprime"] = jit(**_ROW_OPTS)(switch(
        "fprime" + sfx, ("z", "a", "act"), "act",
        [(a.code, [f"return FP_{a.name}(z, a)"]) for a in A.ELEMENTWISE], _UNKNOWN_ACT, ns, _HERE))
    made["apply_f"] = jit(**_ROW_OPTS)(switch(
        "apply_f" + sfx, ("a", "z", "act"), "act",
        [(x.code, ["for j in range(z.shape[0]):", f"    a[j] = F_{x.name}(z[j])"])
         for x in A.ELEMENTWISE] + [(A.SOFTMAX, ["SOFTMAX_ROW(a, z)"])], _UNKNOWN_ACT, ns, _HERE))
    made["mul_fprime"] = jit(**_ROW_OPTS)(switch(
        "mul_fprime" + sfx, ("d", "z", "a", "act"), "act",
        [(x.code, ["for j in range(z.shape[0]):", f"    d[j] *= FP_{x.name}(z[j], a[j])"])
         for x in A.ELEMENTWISE], _UNKNOWN_ACT, ns, _HERE))
    made["cost"] = _compiled(A.cost, dtype, _ROW_OPTS)
    made["output_error"] = _compiled(A.output_error, dtype, _ROW_OPTS, fprime=made["fprime"])
    made["max_error"] = _compiled(A.max_error, dtype, _ROW_OPTS)
    return made


_ACT = {}


def _act(dtype, name):
    if dtype not in _ACT:
        _ACT[dtype] = _activations(dtype)
    return _ACT[dtype][name]


f = by_dtype("f", ("z", "act"), 0, lambda dt: _act(dt, "f"), _HERE)
fprime = by_dtype("fprime", ("z", "a", "act"), 0, lambda dt: _act(dt, "fprime"), _HERE)
apply_f = by_dtype("apply_f", ("a", "z", "act"), 0, lambda dt: _act(dt, "apply_f"), _HERE)
mul_fprime = by_dtype("mul_fprime", ("d", "z", "a", "act"), 0,
                      lambda dt: _act(dt, "mul_fprime"), _HERE)
cost = by_dtype("cost", ("a", "z", "y", "m", "act", "loss"), 0, lambda dt: _act(dt, "cost"), _HERE)
output_error = by_dtype("output_error", ("delta", "a", "z", "y", "m", "act", "loss", "w"), 0,
                        lambda dt: _act(dt, "output_error"), _HERE)
max_error = by_dtype("max_error", ("a", "y", "m"), 0, lambda dt: _act(dt, "max_error"), _HERE)


# A code is checked before a parallel region: an exception raised inside one does not reach
# the caller as itself (Numba: "SystemError: ... returned a result with an exception set").
check_act = jit(**_ROW_OPTS)(switch(
    "check_act", ("act",), "act", [(a.code, ["return"]) for a in A.ACTIVATIONS], _UNKNOWN_ACT,
    {}, _HERE))


# ---------------------------------------------------------------- update rules
def _rule_ns():
    f64 = "float64"     # the per-step scalars are computed in float64, cast where used
    ns = {"coefs_of": _compiled(R.coefs_of, f64, _RULE_OPTS)}
    for r in R.RULES:
        ns[f"SCALARS_{r.code}"] = _compiled(r.scalars, f64, _RULE_OPTS)
    return ns


step_coefs = jit(**_RULE_OPTS)(switch(
    "step_coefs", ("rule", "h", "t", "alpha_n"), "rule",
    [(r.code, [f"return coefs_of(rule, h, t, alpha_n, SCALARS_{r.code}(h, t))"]) for r in R.RULES],
    _UNKNOWN_RULE, _rule_ns(), _HERE))


check_rule = jit(**_RULE_OPTS)(switch(
    "check_rule", ("rule",), "rule", [(r.code, ["return"]) for r in R.RULES], _UNKNOWN_RULE,
    {}, _HERE))


def _rules(dtype):
    ns = {"cast": _compiled(R.cast, "float64", _RULE_OPTS)}
    for r in R.RULES:
        ns[f"STEP_{r.code}"] = _compiled(r.step, dtype, _RULE_OPTS)
    # the state a rule keeps: q is stored back only by rules that read it (a needless store
    # of q per element would be a third of an SGD update's memory traffic)
    def row(r):
        q = "q[i] = nq" if "q" in r.state else "pass"
        return ["for i in range(w.shape[0]):",
                f"    nw, nv, nq = STEP_{r.code}(w[i], v[i], q[i], sc * g[i] + an_ * w[i], cc)",
                "    w[i] = nw", "    v[i] = nv", f"    {q}"]

    def at(r):
        q = "q[j] = nq" if "q" in r.state else "pass"
        return [f"nw, nv, nq = STEP_{r.code}(w[j], v[j], q[j], T(d), cc)",
                "w[j] = nw", "v[j] = nv", q]
    sfx = f"__{dtype.name}"
    prologue = ["T = w.dtype.type", "cc = cast(c, T)", "sc, an_ = T(scale), T(an)"]
    return {"rule_row": jit(**_RULE_OPTS)(switch(
                "rule_row" + sfx, ("rule", "w", "v", "q", "g", "scale", "an", "c"), "rule",
                [(r.code, row(r)) for r in R.RULES], _UNKNOWN_RULE, ns, _HERE, prologue)),
            "rule_at": jit(**_RULE_OPTS)(switch(
                "rule_at" + sfx, ("rule", "w", "v", "q", "j", "d", "c"), "rule",
                [(r.code, at(r)) for r in R.RULES], _UNKNOWN_RULE, ns, _HERE, prologue[:2]))}


_RULE = {}


def _rule(dtype, name):
    if dtype not in _RULE:
        _RULE[dtype] = _rules(dtype)
    return _RULE[dtype][name]


rule_row = by_dtype("rule_row", ("rule", "w", "v", "q", "g", "scale", "an", "c"), 1,
                    lambda dt: _rule(dt, "rule_row"), _HERE)
rule_at = by_dtype("rule_at", ("rule", "w", "v", "q", "j", "d", "c"), 1,
                   lambda dt: _rule(dt, "rule_at"), _HERE)
