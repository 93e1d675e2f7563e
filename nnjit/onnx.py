"""ONNX export: a trained :class:`nnjit.MLP`, with everything it carries, as one ONNX graph that
any ONNX runtime runs without nnjit; and converters that let skl2onnx convert scikit-learn
pipelines holding :mod:`nnjit.sklearn`'s estimators.

What it is for: serving a model where Python and Numba are not (onnxruntime in C++, C#, Java,
JavaScript; a model server). What it is not for: training, or reading a graph back into nnjit
(the model file, :mod:`nnjit.io`, stays the one format nnjit reads). Needs the ``onnx`` extra
(``pip install 'nnjit[onnx]'``: onnx, onnxruntime, skl2onnx); importing this module imports none
of them, so that ``nnjit --help`` stays fast.

:func:`to_onnx` writes, with the ``onnx`` package's helper API, a graph of opset ``OPSET``
(``WORDS_OPSET`` where a Table has words columns, for RegexFullMatch; and ``ai.onnx.ml``
``ML_OPSET`` only where category columns are one-hot encoded), checked by ``onnx.checker``:

==========  ==================================================================================
part        ONNX
==========  ==================================================================================
inputs      ``"X"`` [N, D] in the model's dtype (``input_dtype`` may say float64 for a float32
            model, as ``MLP.scale_X`` reads X); or, for a model with a Table, one input per
            kept column, named by it: number -> double [N, 1] (NaN: missing), category and
            words -> string [N, 1] (the text, "" missing), date -> int64 [N, 1] nanoseconds
            since 1970-01-01 UTC (``datetime64[ns].view("int64")``; NaT, int64 min: missing)
table       Table.transform's encoding in double: missing numbers and dates -> the fill,
            OneHotEncoder (unseen -> zeros; "" -> the missing column where the Table has one),
            days / 365.2425, sin/cos of 2 pi (days / 365.2425) and of 2 pi (days - floor days);
            words: a RegexFullMatch per word, true where the text holds it as a whole run of
            ASCII letters and digits, matched per letter as [wW][oO]..., not with RE2's (?i),
            which would also fold non-ASCII letters (the Kelvin sign) as Python's ASCII-only
            lowering does not
x_scaler    (x - offset_) / scale_ in double, then Cast to the model's dtype (MLP.scale_X)
layers      z = a W^T + b (MatMul by W^(l) transposed, scikit-learn's coefs_[l]), a = f(z):
            Sigmoid, Tanh, Relu, Exp, Softmax(axis=1); leaky_relu as where(z > 0, z, 0.01 z)
            (LeakyRelu's alpha is a float32 attribute, 7e-11 off in double); gelu as 0.5 z (1 +
            erf(z / sqrt 2)) (erf: Erf in float32; in float64 fdlibm's erf from elementary
            operators, since onnxruntime has no double Erf kernel)
outputs     classifiers (softmax, sigmoid outputs): "label" [N] (int64 for integer, boolean
            and integral float classes, string for text, double for other float classes;
            class indices when the model has no classes_; [N, K] 0/1 for several sigmoid
            units) and "probabilities" [N, C] as predict_proba; other outputs: "variable"
            [N, K], predict's values (y_scaler undone in double), never raveled
==========  ==================================================================================

skl2onnx's conventions throughout (its classifiers' "label" and "probabilities", its
regressors' "variable"), so a graph from :func:`to_onnx` and one from ``skl2onnx.to_onnx`` of
an :mod:`nnjit.sklearn` estimator read alike. Importing this module registers those
converters with skl2onnx (:func:`register`; at once if skl2onnx is imported already, else the
moment it is). They accept every activation nnjit has (skl2onnx's own MLP converter knows only
scikit-learn's four) and compute in the dtype ``predict`` does: that of X @ coefs_, or the
estimator's ``dtype``. skl2onnx's ZipMap (its default classifier output) takes float only, so
double inputs need ``options={MLPClassifier: {"zipmap": False}}``, as for any skl2onnx
classifier.
"""
import importlib.abc
import importlib.util
import json
import math
import os
import re
import stat
import sys
import tempfile

import numpy as np

from . import activations as A

__all__ = ["OPSET", "WORDS_OPSET", "ML_OPSET", "to_onnx", "export", "input_feed", "register", "cmd_export",
           "add_export_parser"]

#: the ai.onnx opset of the graphs to_onnx writes (onnxruntime >= 1.13 runs it; IR version 8)
OPSET = 17
#: the ai.onnx opset of a graph whose Table has words columns: RegexFullMatch is opset 20's
#: (onnxruntime >= 1.17 runs it; IR version 9)
WORDS_OPSET = 20
#: the ai.onnx.ml opset, imported only by graphs that one-hot encode text (OneHotEncoder)
ML_OPSET = 3
#: the lowest target_opset the skl2onnx converters accept (Slice's inputs form, opset 10)
MIN_SKL2ONNX_OPSET = 10

_MISSING_ONNX = "nnjit export needs onnx: pip install 'nnjit[onnx]'"
_INT64_MIN = np.iinfo(np.int64).min
from .preprocessing import NS_PER_DAY as _NS_PER_DAY, WORD as _WORD, YEAR_DAYS as _YEAR_DAYS  # noqa: E402
_NOT_WORD = "[^A-Za-z0-9]"      # any other character (any code point) separates words


def _onnx():
    """The onnx package, or the ImportError that names the extra."""
    try:
        import onnx
    except ImportError:
        raise ImportError(_MISSING_ONNX) from None
    return onnx


# ---------------------------------------------------------------- graph building
class _Graph:
    """The nodes and constants of one graph under construction, through ``onnx.helper``.
    Every name is fresh (never one of ``taken``: the graph's inputs and outputs), and each
    constant is stored once however often it is used."""

    def __init__(self, taken=()):
        self.nodes, self.inits = [], []
        self.uses_ml = False
        self.uses_words = False         # RegexFullMatch: opset WORDS_OPSET
        self._taken = set(taken)
        self._consts = {}

    def fresh(self, hint):
        name, i = hint, 0
        while name in self._taken:
            i += 1
            name = f"{hint}_{i}"
        self._taken.add(name)
        return name

    def const(self, value, dtype, hint="c"):
        """A constant tensor of ``value`` as ``dtype`` ("str" for text); its name."""
        if dtype == "str":
            value = np.asarray([str(v) for v in np.ravel(value)], dtype=object).reshape(np.shape(value))
            key = ("str", value.shape, tuple(value.ravel()))
        else:
            value = np.asarray(value, dtype=dtype)
            key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self._consts:
            self._consts[key] = self._store(self.fresh(hint), value)
        return self._consts[key]

    def _store(self, name, value):
        from onnx import numpy_helper
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type, inputs, out=None, domain="", **attrs):
        """One node ``op_type(inputs, **attrs)``; the name of its output (``out`` if given)."""
        from onnx import helper
        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self.fresh("node_" + out),
                                           domain=domain, **attrs))
        self.uses_ml |= domain == "ai.onnx.ml"
        return out

    def cast(self, x, dtype, out=None):
        from onnx import helper
        return self.op("Cast", [x], out=out, to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


class _SklGraph(_Graph):
    """The same methods over skl2onnx's scope and container, for the registered converters:
    skl2onnx names the values, stores the constants and picks each operator's version for
    the conversion's target_opset."""

    def __init__(self, scope, container):
        super().__init__()
        self.scope, self.container = scope, container

    def fresh(self, hint):
        return self.scope.get_unique_variable_name(hint)

    def _store(self, name, value):
        from onnx import TensorProto, numpy_helper
        if value.dtype == object:           # text: skl2onnx wants the bytes of each string
            self.container.add_initializer(name, TensorProto.STRING, list(value.shape),
                                           [s.encode("utf-8") for s in value.ravel()])
        else:                               # numbers: a TensorProto, whose raw bytes it copies
            tensor = numpy_helper.from_array(value, name)
            self.container.add_initializer(name, tensor.data_type, list(value.shape), tensor)
        return name

    def op(self, op_type, inputs, out=None, domain="", **attrs):
        out = out or self.fresh(op_type.lower())
        self.container.add_node(op_type, list(inputs), [out], op_domain=domain,
                                name=self.scope.get_unique_operator_name(op_type), **attrs)
        return out


# ---------------------------------------------------------------- the network
# fdlibm's erf (s_erf.c, Sun Microsystems 1993: "Permission to use, copy, modify, and
# distribute this software is freely granted, provided that this notice is preserved."),
# the algorithm of glibc's and so of math.erf: within one ulp of math.erf (3e6 points in
# [-7, 7] checked, 98.6% bit for bit; tests/test_onnx.py checks 2e5 and the branch edges).
# Coefficients lowest power first.
_ERX = 8.45062911510467529297e-01
_ERF_PP = (1.28379167095512558561e-01, -3.25042107247001499370e-01, -2.84817495755985104766e-02,
           -5.77027029648944159157e-03, -2.37630166566501626084e-05)
_ERF_QQ = (1.0, 3.97917223959155352819e-01, 6.50222499887672944485e-02, 5.08130628187576562776e-03,
           1.32494738004321644526e-04, -3.96022827877536812320e-06)
_ERF_PA = (-2.36211856075265944077e-03, 4.14856118683748331666e-01, -3.72207876035701323847e-01,
           3.18346619901161753674e-01, -1.10894694282396677476e-01, 3.54783043256182359371e-02,
           -2.16637559486879084300e-03)
_ERF_QA = (1.0, 1.06420880400844228286e-01, 5.40397917702171048937e-01, 7.18286544141962662868e-02,
           1.26171219808761642112e-01, 1.36370839120290507362e-02, 1.19844998467991074170e-02)
_ERF_RA = (-9.86494403484714822705e-03, -6.93858572707181764372e-01, -1.05586262253232909814e+01,
           -6.23753324503260060396e+01, -1.62396669462573470355e+02, -1.84605092906711035994e+02,
           -8.12874355063065934246e+01, -9.81432934416914548592e+00)
_ERF_SA = (1.0, 1.96512716674392571292e+01, 1.37657754143519042600e+02, 4.34565877475229228821e+02,
           6.45387271733267880336e+02, 4.29008140027567833386e+02, 1.08635005541779435134e+02,
           6.57024977031928170135e+00, -6.04244152148580987438e-02)
_ERF_RB = (-9.86494292470009928597e-03, -7.99283237680523006574e-01, -1.77579549177547519889e+01,
           -1.60636384855821916062e+02, -6.37566443368389627722e+02, -1.02509513161107724954e+03,
           -4.83519191608651397019e+02)
_ERF_SB = (1.0, 3.03380607434824582924e+01, 3.25792512996573918826e+02, 1.53672958608443695994e+03,
           3.19985821950859553908e+03, 2.55305040643316442583e+03, 4.74528541206955367215e+02,
           -2.24409524465858183362e+01)


def erf_reference(x, ops=None):
    """fdlibm's erf of a float64 array as the graph computes it, written once for NumPy
    (``ops=None``) and for a graph (``ops``: NumPy-named wrappers around graph operators,
    :func:`_graph_ops`). Every branch is computed everywhere and ``where`` picks one:
    |x| < 0.84375: x + x P(x^2)/Q(x^2); < 1.25: sign(x) (erx + P(s)/Q(s)), s = |x| - 1;
    < 6: sign(x) (1 - e^(-z^2 - 0.5625) e^((z - |x|)(z + |x|) + R(s)/S(s)) / |x|), s = 1/x^2,
    z = |x| to 20 bits (so z^2 is exact; fdlibm clears the low word instead); else sign(x)."""
    if ops is None:                     # unselected branches overflow or divide by zero
        with np.errstate(all="ignore"):
            return erf_reference(np.asarray(x, np.float64), _NumpyOps())
    np_ = ops

    def poly(c, s):                     # Horner, c[0] + s (c[1] + s (c[2] + ...))
        acc = np_.const(c[-1])
        for a in c[-2::-1]:
            acc = np_.add(np_.const(a), np_.mul(s, acc))
        return acc

    ax = np_.abs(x)
    z2 = np_.mul(x, x)
    small = np_.add(x, np_.mul(x, np_.div(poly(_ERF_PP, z2), poly(_ERF_QQ, z2))))
    s = np_.sub(ax, np_.const(1.0))
    mid = np_.add(np_.const(_ERX), np_.div(poly(_ERF_PA, s), poly(_ERF_QA, s)))
    s = np_.div(np_.const(1.0), np_.mul(ax, ax))
    rs = np_.where(np_.less(ax, np_.const(1 / 0.35)), np_.div(poly(_ERF_RA, s), poly(_ERF_SA, s)),
                   np_.div(poly(_ERF_RB, s), poly(_ERF_SB, s)))
    z = np_.div(np_.floor(np_.mul(ax, np_.const(2.0 ** 20))), np_.const(2.0 ** 20))
    r = np_.mul(np_.exp(np_.sub(np_.neg(np_.mul(z, z)), np_.const(0.5625))),
                np_.exp(np_.add(np_.mul(np_.sub(z, ax), np_.add(z, ax)), rs)))
    tail = np_.sub(np_.const(1.0), np_.div(r, ax))
    big = np_.where(np_.less(ax, np_.const(1.25)), mid,
                    np_.where(np_.less(ax, np_.const(6.0)), tail, np_.const(1.0)))
    return np_.where(np_.less(ax, np_.const(0.84375)), small, np_.mul(np_.sign(x), big))


class _NumpyOps:
    """erf_reference's operations on NumPy float64 arrays."""
    const = staticmethod(np.float64)
    add, sub, mul, div = (staticmethod(f) for f in (np.add, np.subtract, np.multiply, np.divide))
    neg, abs, floor, sign, exp = (staticmethod(f) for f in (np.negative, np.abs, np.floor, np.sign, np.exp))
    less, where = staticmethod(np.less), staticmethod(np.where)


def _graph_ops(g, dtype):
    """erf_reference's operations as graph operators on values of ``dtype``."""
    class Ops:
        def const(self, v):
            return g.const(v, dtype, "erf_c")

    ops = Ops()
    for name, op in (("add", "Add"), ("sub", "Sub"), ("mul", "Mul"), ("div", "Div"), ("less", "Less")):
        setattr(ops, name, lambda a, b, op=op: g.op(op, [a, b]))
    for name, op in (("neg", "Neg"), ("abs", "Abs"), ("floor", "Floor"), ("sign", "Sign"), ("exp", "Exp")):
        setattr(ops, name, lambda a, op=op: g.op(op, [a]))
    ops.where = lambda c, a, b: g.op("Where", [c, a, b])
    return ops


def _activation(g, name, z, dtype):
    """a = f(z) of the nnjit activation ``name`` (nnjit.activations' f) as graph operators."""
    if name == "identity":
        return z
    if name == "gelu":                  # HALF * z * (ONE + erf(z * SQRT1_2)), as nnjit writes it
        u = g.op("Mul", [z, g.const(math.sqrt(0.5), dtype)])
        e = g.op("Erf", [u]) if np.dtype(dtype) == np.float32 else erf_reference(u, _graph_ops(g, dtype))
        return g.op("Mul", [g.op("Mul", [g.const(0.5, dtype), z]), g.op("Add", [g.const(1.0, dtype), e])])
    if name == "leaky_relu":            # where(z > 0, z, 0.01 z): LeakyRelu's alpha is a
        return g.op("Where", [g.op("Greater", [z, g.const(0.0, dtype)]), z,   # float32 attribute
                              g.op("Mul", [g.const(A.LEAKY_SLOPE, dtype), z])])
    simple = {"sigmoid": ("Sigmoid", {}), "tanh": ("Tanh", {}), "relu": ("Relu", {}),
              "exp": ("Exp", {}), "softmax": ("Softmax", {"axis": 1})}
    if name not in simple:
        raise ValueError(f"activation {name!r} has no ONNX form; nnjit's are {', '.join(A.OUTPUT)}")
    op, attrs = simple[name]
    return g.op(op, [z], **attrs)


def _forward(g, x, coefs, intercepts, names, dtype):
    """a^(L) of x (a graph value of ``dtype``): z = a W + b, a = f(z) per layer, W (n_in, n_out)."""
    a = x
    for l, (W, b, f) in enumerate(zip(coefs, intercepts, names), start=1):
        z = g.op("Add", [g.op("MatMul", [a, g.const(W, dtype, f"W{l}")]),
                         g.const(np.ravel(b), dtype, f"b{l}")])
        a = _activation(g, f, z, dtype)
    return a


# ---------------------------------------------------------------- outputs
def _labels(classes, strict):
    """classes as the constant of a label output: (array, dtype for _Graph.const). Integer and
    boolean classes -> int64, text -> str, floats -> int64 where all are integers, else
    float64 (``strict``: a ValueError instead, skl2onnx's labels being int64 or text)."""
    c = np.asarray(classes)
    if c.ndim != 1:
        raise ValueError(f"classes_ must be 1-D to become ONNX labels, got shape {c.shape}")
    if c.dtype.kind in "biu":
        return c.astype(np.int64), np.int64
    if c.dtype.kind == "f":
        if np.all(np.isfinite(c)) and np.all(c == np.round(c)):
            return c.astype(np.int64), np.int64
        if strict:
            raise ValueError(f"float class labels {c[:5].tolist()} are not integers; skl2onnx's "
                             "classifier outputs hold int64 or text labels")
        return c.astype(np.float64), np.float64
    if c.dtype.kind in "US" or all(isinstance(v, (str, bytes)) for v in c.tolist()):
        return np.asarray([v.decode("utf-8") if isinstance(v, bytes) else str(v)
                           for v in c.tolist()], dtype=object), "str"
    if all(isinstance(v, (int, np.integer)) for v in c.tolist()):
        return c.astype(np.int64), np.int64
    raise ValueError(f"classes_ of {c.dtype} ({c[:3].tolist()}) cannot be ONNX labels: "
                     "use integers or text")


def _classify(g, a, kind, classes, n_known, label, proba, dtype):
    """The classifier outputs ``label`` and ``proba`` (names) from output activations a:
    kind "softmax" (label: classes[argmax over the first n_known units]), "binary" (one
    sigmoid unit: probabilities [1 - a, a], label classes[a > 0.5]) or "multilabel"
    (label: a > 0.5 as int64 0/1). classes: (array, dtype) of _labels, or None (indices)."""
    if kind == "multilabel":
        g.op("Identity", [a], out=proba)
        return g.cast(g.op("Greater", [a, g.const(0.5, dtype)]), np.int64, out=label)
    if kind == "binary":
        g.op("Concat", [g.op("Sub", [g.const(1.0, dtype), a]), a], out=proba, axis=1)
        idx = g.op("Reshape", [g.cast(g.op("Greater", [a, g.const(0.5, dtype)]), np.int64),
                               g.const([-1], np.int64)])
    else:
        known = a
        if n_known is not None:         # units beyond the classes fit saw are never predicted
            known = g.op("Slice", [a, g.const([0], np.int64), g.const([n_known], np.int64),
                                   g.const([1], np.int64)])
        g.op("Identity", [a], out=proba)
        idx = g.op("ArgMax", [known], axis=1, keepdims=0)
    if classes is None:
        return g.op("Identity", [idx], out=label)
    values, ldtype = classes
    return g.op("Gather", [g.const(values, ldtype, "classes"), idx], out=label, axis=0)


# ---------------------------------------------------------------- the table
def _table_state(table):
    state = table.state() if hasattr(table, "state") else table
    cols = state.get("columns") if isinstance(state, dict) else None
    if not cols:
        raise ValueError("the model's table is not fitted (no columns); fit the model on a DataFrame first")
    return cols


def _word_pattern(word):
    """The RE2 pattern that RegexFullMatch matches against a whole text holding ``word`` (a
    run of [a-z0-9]) as one of its words, as nnjit.preprocessing._words finds them: the text
    lowered in ASCII only, its words the maximal runs of [a-z0-9]. Letters are matched by
    classes ([cC]), since RE2's (?i) folds more than ASCII (U+212A, the Kelvin sign, to k;
    U+017F, the long s, to s); (?s): "." matches newlines too."""
    body = "".join(f"[{ch}{ch.upper()}]" if ch.isalpha() else ch for ch in word)
    return f"(?s)(?:.*{_NOT_WORD})?{body}(?:{_NOT_WORD}.*)?"


def _table_inputs(g, cols):
    """The graph inputs of a Table's kept columns (``cols``: its state's), and the name of
    the double [N, F] value of Table.transform's encoding of them."""
    from onnx import TensorProto, helper
    inputs, blocks = [], []
    for c in cols:
        kind, name = c["kind"], c["name"]
        if kind == "drop":
            continue
        if kind == "number":
            inputs.append(helper.make_tensor_value_info(
                name, TensorProto.DOUBLE, ["N", 1],
                doc_string=f"number; NaN: missing, read as {c['fill']!r}"))
            blocks.append(g.op("Where", [g.op("IsNaN", [name]), g.const([[c["fill"]]], np.float64, "fill"),
                                         name]))
        elif kind == "category":
            cats = [str(v) for v in c["categories"]]
            if "" in cats:
                raise ValueError(f"column {name!r} lists the empty string as a category; the ONNX "
                                 "graph reads \"\" as a missing value")
            listed = cats + ([""] if c["missing"] else [])     # "" last: the missing column
            inputs.append(helper.make_tensor_value_info(
                name, TensorProto.STRING, ["N", 1],
                doc_string=f"category, one of {len(cats)} texts; \"\": missing; others: all zeros"))
            hot = g.op("OneHotEncoder", [name], domain="ai.onnx.ml", cats_strings=listed, zeros=1)
            blocks.append(g.cast(g.op("Reshape", [hot, g.const([-1, len(listed)], np.int64)]), np.float64))
        elif kind == "date":
            inputs.append(helper.make_tensor_value_info(
                name, TensorProto.INT64, ["N", 1],
                doc_string="date: nanoseconds since 1970-01-01 UTC (datetime64[ns] as int64); "
                           f"int64 min (NaT): missing, read as {c['fill']!r} days"))
            # days = ns / 86400e9 in double, as Table._days divides
            days = g.op("Div", [g.cast(name, np.float64), g.const(float(_NS_PER_DAY), np.float64)])
            nat = g.op("Equal", [name, g.const(_INT64_MIN, np.int64)])
            d = g.op("Where", [nat, g.const(c["fill"], np.float64, "fill"), days])
            years = g.op("Div", [d, g.const(_YEAR_DAYS, np.float64)])
            cols_ = [years]
            if c.get("season") or c.get("time"):        # an unused initializer: a warning
                two_pi = g.const(2 * np.pi, np.float64, "two_pi")
            if c.get("season"):
                phase = g.op("Mul", [two_pi, years])
                cols_ += [g.op("Sin", [phase]), g.op("Cos", [phase])]
            if c.get("time"):
                phase = g.op("Mul", [two_pi, g.op("Sub", [d, g.op("Floor", [d])])])
                cols_ += [g.op("Sin", [phase]), g.op("Cos", [phase])]
            blocks.append(g.op("Concat", cols_, axis=1) if len(cols_) > 1 else cols_[0])
        elif kind == "words":
            words = [str(w) for w in c["words"]]
            if not words or any(not re.fullmatch(_WORD, w) for w in words):
                raise ValueError(f"column {name!r}: its words must be runs of {_WORD}, got {words[:5]}")
            inputs.append(helper.make_tensor_value_info(
                name, TensorProto.STRING, ["N", 1],
                doc_string=f"words: text whose {len(words)} listed words (runs of ASCII letters "
                           "and digits, case-blind) become 0/1 columns; \"\": missing, all zeros"))
            hits = [g.op("RegexFullMatch", [name], pattern=_word_pattern(w)) for w in words]
            hit = g.op("Concat", hits, axis=1) if len(hits) > 1 else hits[0]
            blocks.append(g.cast(hit, np.float64))
            g.uses_words = True
        else:
            raise ValueError(f"column {name!r} has kind {kind!r}, which the ONNX export does not know")
    if not blocks:
        raise ValueError("the model's table keeps no column")
    return inputs, (g.op("Concat", blocks, axis=1) if len(blocks) > 1 else blocks[0])


# ---------------------------------------------------------------- MLP export
_OUTPUT_NAMES = ("label", "probabilities", "variable")


def _check_model(model):
    from .model import MLP
    if isinstance(model, MLP):
        return
    if type(model).__module__ == "nnjit.sklearn":
        raise ValueError(f"to_onnx takes an nnjit.MLP; for a fitted {type(model).__name__}, "
                         "import nnjit.onnx and call skl2onnx.to_onnx(estimator, X[:1]) "
                         "(or export its net_)")
    raise ValueError(f"to_onnx takes an nnjit.MLP, got {type(model).__name__}")


def to_onnx(model, path=None, *, input_dtype=None):
    """The ONNX graph of ``model`` (an :class:`nnjit.MLP`) and what it carries: Table,
    x_scaler, y_scaler, classes_ (the module docstring says how each is written).

    Parameters
    ----------
    model : nnjit.MLP
        Any layer sizes, activations, output and dtype.
    path : str or path-like, optional
        Also write the graph there (atomically: a finished file or none).
    input_dtype : {"float32", "float64"}, optional
        The type of the input "X" (default: the model's dtype). "float64" for a float32 model
        scales raw X in double before the cast, as ``MLP.predict`` does with float64 X. Not
        for models with a Table, whose inputs are typed per column.

    Returns
    -------
    onnx.ModelProto
        Checked by ``onnx.checker.check_model(full_check=True)``.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper
    _check_model(model)
    dtype = np.dtype(model.dtype)
    for s, what, n in ((model.x_scaler, "x_scaler", model.layers[0]),
                       (model.y_scaler, "y_scaler", model.layers[-1])):
        if s is not None and s.offset_ is None:
            raise ValueError(f"the model's {what} is not fitted; fit the model first")
        if s is not None and len(s.offset_) != n:
            raise ValueError(f"the model's {what} was fitted on {len(s.offset_)} columns, the "
                             f"network's layer has {n} units")
    table = getattr(model, "table", None)
    cols = _table_state(table) if table is not None else None
    if cols is not None:
        clash = sorted({c["name"] for c in cols if c["kind"] != "drop"} & set(_OUTPUT_NAMES))
        if clash:
            raise ValueError(f"column {clash[0]!r} has the name of an ONNX output; rename it")
        if input_dtype is not None:
            raise ValueError("input_dtype sets the type of X; a model with a table takes one "
                             "input per column, typed by its kind")
    g = _Graph(taken=[c["name"] for c in cols or ()] + ["X", *_OUTPUT_NAMES])

    # inputs -> the float64 features, or X as given
    if cols is not None:
        inputs, x = _table_inputs(g, cols)
        x_dtype = np.dtype(np.float64)
    else:
        x_dtype = np.dtype(input_dtype) if input_dtype is not None else dtype
        if x_dtype not in (np.float32, np.float64):
            raise ValueError(f"input_dtype must be 'float32' or 'float64', got {input_dtype!r}")
        inputs = [helper.make_tensor_value_info(
            "X", helper.np_dtype_to_tensor_dtype(x_dtype), ["N", model.layers[0]],
            doc_string="features" + (f": {', '.join(model.feature_names_in_)}"
                                     if model.feature_names_in_ else ""))]
        x = "X"
    if model.x_scaler is not None:      # MLP.scale_X: in float64, then the model's dtype
        x = g.cast(x, np.float64) if x_dtype != np.float64 else x
        x = g.op("Div", [g.op("Sub", [x, g.const(model.x_scaler.offset_, np.float64, "x_offset")]),
                         g.const(model.x_scaler.scale_, np.float64, "x_scale")])
        x_dtype = np.dtype(np.float64)
    if x_dtype != dtype:
        x = g.cast(x, dtype)

    names = [A.NAMES[int(c)] for c in model.acts]
    a = _forward(g, x, [W.T for W in model.weights], model.biases, names, dtype)

    K = model.layers[-1]
    T = helper.np_dtype_to_tensor_dtype(dtype)
    if model.is_classifier:
        kind = "softmax" if model.output == "softmax" else ("binary" if K == 1 else "multilabel")
        classes = None
        if model.classes_ is not None and kind != "multilabel":
            classes = _labels(model.classes_, strict=False)
        n_known = None
        if kind == "softmax" and model.classes_ is not None and len(model.classes_) < K:
            n_known = len(model.classes_)
        _classify(g, a, kind, classes, n_known, "label", "probabilities", dtype)
        ldtype = classes[1] if classes else np.int64
        ltype = TensorProto.STRING if ldtype == "str" else helper.np_dtype_to_tensor_dtype(np.dtype(ldtype))
        outputs = [helper.make_tensor_value_info("label", ltype, ["N", K] if kind == "multilabel" else ["N"]),
                   helper.make_tensor_value_info("probabilities", T, ["N", 2 if kind == "binary" else K])]
    else:
        if model.y_scaler is not None:  # MLP._unscale_Y: a * scale_ + offset_ in float64
            v = g.op("Add", [g.op("Mul", [g.cast(a, np.float64),
                                          g.const(model.y_scaler.scale_, np.float64, "y_scale")]),
                             g.const(model.y_scaler.offset_, np.float64, "y_offset")])
            a = g.cast(v, dtype) if dtype != np.float64 else v
        g.op("Identity", [a], out="variable")
        outputs = [helper.make_tensor_value_info("variable", T, ["N", K])]

    graph = helper.make_graph(g.nodes, "nnjit_mlp", inputs, outputs, initializer=g.inits,
                              doc_string=f"nnjit {model!r}")
    opsets = [helper.make_opsetid("", WORDS_OPSET if g.uses_words else OPSET)]
    opsets += [helper.make_opsetid("ai.onnx.ml", ML_OPSET)] if g.uses_ml else []
    from . import __version__
    m = helper.make_model(graph, opset_imports=opsets, producer_name="nnjit",
                          producer_version=__version__,
                          ir_version=helper.find_min_ir_version_for(opsets))
    props = {"nnjit_architecture": json.dumps(model.architecture())}
    if model.classes_ is not None:
        props["classes"] = json.dumps(np.asarray(model.classes_).tolist(), default=str)
    if model.feature_names_in_ is not None:
        props["feature_names"] = json.dumps(list(model.feature_names_in_))
    if getattr(model, "target_name_", None) is not None:
        props["target_name"] = str(model.target_name_)
    helper.set_model_props(m, props)
    onnx.checker.check_model(m, full_check=True)
    if path is not None:
        _save(m, path)
    return m


def _save(m, path):
    """Write m to path as nnjit.io writes model files: into a temporary file beside it, with
    the mode a plain open would give, fsync'ed, then renamed over path, so that a failed or
    interrupted write leaves the old file or none, never half of one."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".nnjit-onnx-", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            umask = os.umask(0o022)
            os.umask(umask)
            mode = 0o666 & ~umask
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(m.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def export(model_path, out_path, input_dtype=None):
    """Load the model file ``model_path`` (MLP.save, nnjit train --save) and write its graph
    to ``out_path``; returns the onnx.ModelProto."""
    _onnx()                                     # the extra's message before loading anything
    from .model import MLP
    return to_onnx(MLP.load(model_path), out_path, input_dtype=input_dtype)


def input_feed(model, X, input_dtype=None):
    """The onnxruntime feed ({input name: array}) of what ``model.predict(X)`` takes: X as
    the "X" array (a DataFrame matched by column name first), or for a model with a Table,
    each kept column of the DataFrame X as the graph's inputs want it: numbers float64 (NaN
    missing), categories and words spelled as the Table matches them ("" missing), dates
    int64 ns."""
    table = getattr(model, "table", None)
    if table is None:
        dt = np.dtype(input_dtype) if input_dtype is not None else np.dtype(model.dtype)
        return {"X": np.ascontiguousarray(np.asarray(model.columns_of(X), dtype=dt))}
    import pandas as pd
    from .preprocessing import category_strings, match_categories, text_values
    df = X if isinstance(X, pd.DataFrame) else pd.DataFrame(X)
    by_name = {str(c): df.iloc[:, j] for j, c in enumerate(df.columns)}

    text = text_values                  # stripped strings, None where missing or empty

    feed = {}
    for c in _table_state(table):
        if c["kind"] == "drop":
            continue
        if c["name"] not in by_name:
            raise ValueError(f"X has no column {c['name']!r}, which the model's table reads")
        s = by_name[c["name"]]
        if c["kind"] == "number":
            if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
                v = s.to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                v = pd.to_numeric(text(s), errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
        elif c["kind"] == "category":   # each value as the category it matches (Table's rules:
            # 2134 or "2134.0" is "02134" where that is the one category of that value)
            listed = list(c["categories"]) + [""]
            k = match_categories(c, s.tolist())
            v = np.array([listed[i] if i >= 0 else (u if u is not None else "")
                          for i, u in zip(k, category_strings(s.tolist()))], dtype=object)
        elif c["kind"] == "words":      # a lone surrogate (no UTF-8) -> "?": both separate words
            v = np.array([u.encode("utf-8", "replace").decode("utf-8") if u is not None else ""
                          for u in category_strings(s.tolist())], dtype=object)
        else:
            if pd.api.types.is_datetime64_any_dtype(s):
                ts = s.dt.tz_convert("UTC").dt.tz_localize(None) if getattr(s.dt, "tz", None) else s
            else:
                fmt = c.get("format")
                ts = pd.to_datetime(text(s), utc=True, **({"format": fmt} if fmt else {}))
                ts = ts.dt.tz_localize(None)
            t = ts.to_numpy()
            lo, hi = np.datetime64("1677-09-22", "D"), np.datetime64("2262-04-10", "D")
            out = ~np.isnat(t) & ((t < lo) | (t > hi))
            if out.any():       # a cast to ns would wrap around, silently
                raise ValueError(f"column {c['name']!r}: {t[out][0]} is outside the dates the ONNX "
                                 "graph takes (int64 nanoseconds since 1970: 1677-09-22 to 2262-04-10)")
            v = t.astype("datetime64[ns]").view(np.int64)      # NaT: int64 min
        feed[c["name"]] = v.reshape(-1, 1)
    return feed


# ---------------------------------------------------------------- skl2onnx converters
def _sk_dtypes(est, in_type):
    """(the dtype nnjit.sklearn's predict computes in for this input type, the dtype of the
    outputs skl2onnx declared): X @ coefs_'s, or the estimator's forced dtype."""
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    x = {DoubleTensorType: np.float64, FloatTensorType: np.float32}.get(type(in_type), np.int64)
    out = np.result_type(x, est.coefs_[0].dtype)
    out = out if out in (np.float32, np.float64) else np.dtype(np.float64)
    work = out if getattr(est, "dtype", None) is None else np.dtype(est.dtype)
    declared = np.float64 if isinstance(in_type, DoubleTensorType) else np.float32
    return work, np.dtype(declared)


def _sk_forward(g, est, x, work):
    from .sklearn import ACTIVATION_NAMES
    if est.activation not in ACTIVATION_NAMES:
        raise ValueError(f"activation {est.activation!r} has no ONNX form")
    out = getattr(est, "out_activation_", "identity")
    outs = {"softmax": "softmax", "logistic": "sigmoid", "identity": "identity", "exp": "exp"}
    if out not in outs:
        raise ValueError(f"out_activation_ {out!r} has no ONNX form")
    names = [ACTIVATION_NAMES[est.activation]] * (len(est.coefs_) - 1) + [outs[out]]
    return _forward(g, g.cast(x, work), est.coefs_, est.intercepts_, names, work)


def _check_opset(container):
    if container.target_opset is not None and container.target_opset < MIN_SKL2ONNX_OPSET:
        raise RuntimeError(f"nnjit's converters need target_opset >= {MIN_SKL2ONNX_OPSET}, "
                           f"got {container.target_opset}")


def _sk_kind(est):
    multilabel = getattr(getattr(est, "_label_binarizer", None), "y_type_", "") == "multilabel-indicator"
    if multilabel:
        return "multilabel"
    return "softmax" if est.coefs_[-1].shape[1] > 1 else "binary"


def _classifier_shapes(operator):
    from skl2onnx.common.data_types import Int64TensorType, StringTensorType
    from skl2onnx.common.utils_classifier import get_label_classes
    from sklearn.utils.validation import check_is_fitted
    est = operator.raw_operator
    check_is_fitted(est, "coefs_")
    N = operator.inputs[0].get_first_dimension()
    kind = _sk_kind(est)
    K = est.coefs_[-1].shape[1]
    _, ldtype = _labels(get_label_classes(operator.scope_inst, est), strict=True)
    ltype = StringTensorType if ldtype == "str" and kind != "multilabel" else Int64TensorType
    operator.outputs[0].set_type(ltype(shape=[N, K] if kind == "multilabel" else [N]))
    operator.outputs[1].type.shape = [N, 2 if kind == "binary" else K]


def _convert_classifier(scope, operator, container):
    from skl2onnx.common.utils_classifier import get_label_classes
    _check_opset(container)
    est = operator.raw_operator
    work, declared = _sk_dtypes(est, operator.inputs[0].type)
    g = _SklGraph(scope, container)
    a = _sk_forward(g, est, operator.inputs[0].full_name, work)
    a = g.cast(a, declared) if work != declared else a
    kind = _sk_kind(est)
    classes = None if kind == "multilabel" else _labels(get_label_classes(scope, est), strict=True)
    _classify(g, a, kind, classes, None, operator.outputs[0].full_name,
              operator.outputs[1].full_name, declared)


def _regressor_shapes(operator):
    from sklearn.utils.validation import check_is_fitted
    est = operator.raw_operator
    check_is_fitted(est, "coefs_")
    operator.outputs[0].type.shape = [operator.inputs[0].get_first_dimension(), est.coefs_[-1].shape[1]]


def _convert_regressor(scope, operator, container):
    _check_opset(container)
    est = operator.raw_operator
    work, declared = _sk_dtypes(est, operator.inputs[0].type)
    g = _SklGraph(scope, container)
    a = _sk_forward(g, est, operator.inputs[0].full_name, work)
    a = g.cast(a, declared) if work != declared else a
    g.op("Identity", [a], out=operator.outputs[0].full_name)


_registered = False


def register():
    """Register the converters of nnjit.sklearn's MLPClassifier ("NnjitMLPClassifier", with
    skl2onnx's classifier options zipmap, nocl, output_class_labels) and MLPRegressor
    ("NnjitMLPRegressor") with skl2onnx. Idempotent; importing this module calls it when
    skl2onnx is imported."""
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter
    from .sklearn import MLPClassifier, MLPRegressor
    update_registered_converter(MLPClassifier, "NnjitMLPClassifier", _classifier_shapes,
                                _convert_classifier,
                                options={"zipmap": [True, False, "columns"],
                                         "nocl": [True, False],
                                         "output_class_labels": [False, True]})
    update_registered_converter(MLPRegressor, "NnjitMLPRegressor", _regressor_shapes,
                                _convert_regressor)
    _registered = True


def _register_quietly():
    """register(), turning a failure into a warning: a converter that cannot register (no
    scikit-learn, an skl2onnx whose API moved) must not make ``import skl2onnx`` fail."""
    try:
        register()
    except Exception as e:              # noqa: BLE001 - any failure: say it, import on
        import warnings
        warnings.warn(f"nnjit.onnx could not register its skl2onnx converters ({type(e).__name__}: "
                      f"{e}); skl2onnx.to_onnx will not know nnjit.sklearn's estimators",
                      RuntimeWarning, stacklevel=2)


class _WhenSkl2onnxImported(importlib.abc.MetaPathFinder):
    """Registers the converters right after skl2onnx is first imported. Importing skl2onnx
    here would cost seconds (it imports scikit-learn) in every process that imports this
    module, the CLI's included; waiting for it costs nothing, and ``import nnjit.onnx;
    import skl2onnx`` still finds the converters registered."""

    def find_spec(self, name, path=None, target=None):
        if name != "skl2onnx":
            return None
        sys.meta_path.remove(self)      # the real spec, from the finders after this one
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_quietly()
        spec.loader.exec_module = exec_then_register
        return spec


def _skl2onnx_installed():
    try:
        return importlib.util.find_spec("skl2onnx") is not None
    except (ImportError, ValueError):   # ValueError: sys.modules holds a module without a spec
        return False


if sys.modules.get("skl2onnx") is not None:
    _register_quietly()
elif "skl2onnx" not in sys.modules and _skl2onnx_installed():
    sys.meta_path.insert(0, _WhenSkl2onnxImported())


# ---------------------------------------------------------------- command line
def _describe(values):
    from onnx import TensorProto
    names = {TensorProto.FLOAT: "float", TensorProto.DOUBLE: "double", TensorProto.INT64: "int64",
             TensorProto.STRING: "string"}
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = ",".join(d.dim_param or str(d.dim_value) for d in t.shape.dim)
        out.append(f"{v.name} {names.get(t.elem_type, t.elem_type)}[{dims}]")
    return ", ".join(out[:6]) + (f" and {len(out) - 6} more" if len(out) > 6 else "")


def cmd_export(args):
    """``nnjit export MODEL OUT``: write the ONNX graph of a saved model; one line says what."""
    m = export(args.model, args.out, input_dtype=getattr(args, "input_dtype", None))
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    print(f"wrote {args.out} (opset {opset}; inputs {_describe(m.graph.input)}; "
          f"outputs {_describe(m.graph.output)})")
    return 0


def add_export_parser(subparsers, formatter_class):
    """Add the ``export`` subcommand to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "export", formatter_class=formatter_class,
        help="write a saved model as an ONNX graph (needs the onnx extra)",
        description="Write a saved model, with its table preprocessing, scalers and class "
                    f"labels, as one ONNX graph (opset {OPSET}; {WORDS_OPSET} where the table has "
                    "words columns) for onnxruntime or any ONNX "
                    "runtime. Classifiers give the outputs 'label' and 'probabilities', other "
                    "models 'variable'. Needs: pip install 'nnjit[onnx]'.")
    p.add_argument("model", help="the model file to export (nnjit train --save, MLP.save)")
    p.add_argument("out", help="the ONNX file to write, e.g. model.onnx (replaced if it exists)")
    p.add_argument("--input-dtype", choices=("float32", "float64"), default=None,
                   help="the type of the input X (default: the model's dtype); float64 lets a "
                        "float32 model scale raw features in double, as nnjit predict does. "
                        "Not for models with a table, whose inputs are typed per column")
    p.set_defaults(func=cmd_export)
    return p
