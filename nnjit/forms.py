"""One equation, three forms: how a definition written once becomes the loop form's, the CUDA
form's and the vectorised form's function.

A definition (an activation's f and f', an update rule's step, a loss) is a plain Python
function of scalars, written with the names of this module: the constants ``ZERO``, ``HALF``,
``ONE``, ... (``TINY``: the dtype's smallest normal number) and the primitives ``exp``,
``tanh``, ``erf``, ``sqrt``, ``log``, ``log1p``, ``where``. :func:`specialise` rebinds those names for one form and one dtype:

* constants become scalars of the arrays' dtype, so float32 arithmetic stays float32 in every
  form (Numba types a bare ``1.0`` as float64);
* primitives become the form's own: ``math`` functions (and the loop form's vectorisable
  float32 e^x) for the compiled forms, NumPy's ufuncs for the vectorised form, where the very
  same definition then runs on whole arrays (``where`` is the one primitive written for that:
  ``where(c, x, y)`` is ``x if c else y`` on scalars, ``np.where`` on arrays).

A table (``nnjit.activations.ACTIVATIONS``, ``nnjit.rules.RULES``) lists the definitions by
code, and :func:`switch` turns it into each form's dispatch: one function with one branch per
code, generated from the table, whose last branch raises (no code silently runs another's
branch). Generated, not hand-written, so that a new table entry reaches every form; a Python
closure chain would do the same at ~0.15 s more first compile per entry and dispatch. The
short definitions (assignments and a return) are written into the dispatch's branches by
:func:`expand` rather than called: one function for Numba to compile instead of one per
entry, which kept a first fit's compile at its old length with more entries in the tables.
``nnjit.forms.SOURCES`` holds the text of every generated function (after the form that makes
it is imported).

What it is not for: anything but the small scalar pieces the kernels call; the kernels
themselves are written by hand in each form.
"""
import ast
import inspect
import math
import textwrap
import types

import numpy as np

#: the constants a definition may use, by name (rebound to the arrays' dtype)
CONSTANTS = {"ZERO": 0.0, "HALF": 0.5, "ONE": 1.0, "TWO": 2.0,
             "SQRT1_2": 1.0 / math.sqrt(2.0), "INV_SQRT_2PI": 1.0 / math.sqrt(2.0 * math.pi),
             "NAN": float("nan")}
ZERO, HALF, ONE, TWO = 0.0, 0.5, 1.0, 2.0
SQRT1_2, INV_SQRT_2PI, NAN = CONSTANTS["SQRT1_2"], CONSTANTS["INV_SQRT_2PI"], CONSTANTS["NAN"]

#: constants whose value depends on the dtype: TINY, the smallest normal number (below it a
#: float is denormal, and arithmetic on denormals costs ~100 cycles an operation on x86);
#: SQ_MIN = 1024 sqrt(TINY), below which a gradient's square times a decay's complement
#: (1 - beta2 >= 1e-6) would be denormal (float32 1.1e-16, float64 1.5e-151); STEP_MIN =
#: 2^20 TINY = SQ_MIN^2, below which a state the step multiplies by its learning rate (Adam's
#: A m, RMSprop's eta b: 2^-20 ~ 1e-6 <= A) would give a denormal (float32 1.2e-32, float64
#: 2.3e-302); ROOT_TINY = sqrt(TINY); EXP_LO = ln(TINY) + 1, from which exp is normal
DTYPE_CONSTANTS = {"TINY": lambda dtype: dtype.type(np.finfo(dtype).tiny),
                   "SQ_MIN": lambda dtype: dtype.type(1024 * np.sqrt(np.finfo(dtype).tiny)),
                   "STEP_MIN": lambda dtype: dtype.type(2.0**20 * np.finfo(dtype).tiny),
                   "ROOT_TINY": lambda dtype: dtype.type(np.sqrt(np.finfo(dtype).tiny)),
                   "EXP_LO": lambda dtype: dtype.type(np.log(np.finfo(dtype).tiny) + 1.0)}
TINY = np.float64(np.finfo(np.float64).tiny)
SQ_MIN = np.float64(1024 * np.sqrt(TINY))
STEP_MIN = np.float64(2.0**20 * TINY)
ROOT_TINY = np.sqrt(TINY)
#: EXP_LO = ln(TINY) + 1 (float32 -86.3, float64 -707.4): exp of anything from EXP_LO up is a
#: normal number (e TINY and more)
EXP_LO = np.log(TINY) + 1.0


def _dtype_constants(dtype):
    return {k: make(dtype) for k, make in DTYPE_CONSTANTS.items()}

#: the forms, as named everywhere in nnjit
FORMS = ("loops", "cuda", "vectorised")


# Plain-Python defaults (the vectorised form's), so a definition also runs as written.
def exp(x):
    return np.exp(x)


def tanh(x):
    return np.tanh(x)


def sqrt(x):
    return np.sqrt(x)


def log(x):
    return np.log(x)


def log1p(x):
    return np.log1p(x)


def where(c, x, y):
    return np.where(c, x, y)


def erf(x):
    """Elementwise erf of an array (NumPy has none; SciPy is not a dependency)."""
    from .loops.fastmath import erf_flat
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    erf_flat(out.reshape(-1), x.reshape(-1))
    return out


def _scalar_where(c, x, y):
    return x if c else y


_PRIMITIVES = {}


def primitives(form):
    """The primitive functions a definition calls, for one form."""
    if form not in _PRIMITIVES:
        if form == "vectorised":
            p = dict(exp=exp, tanh=tanh, sqrt=sqrt, log=log, log1p=log1p, where=where, erf=erf)
        elif form == "loops":
            from numba.extending import register_jitable
            from .loops.fastmath import exp as fast_exp, tanh as fast_tanh
            # typed at each call site, not a dispatcher of its own: one per dtype would be a
            # second compile in a float32 fit (its coefficients are float64)
            p = dict(exp=fast_exp, tanh=fast_tanh, sqrt=math.sqrt, log=math.log,
                     log1p=math.log1p, erf=math.erf, where=register_jitable(_scalar_where))
        elif form == "cuda":
            from numba import cuda
            p = dict(exp=math.exp, tanh=math.tanh, sqrt=math.sqrt, log=math.log,
                     log1p=math.log1p, erf=math.erf,
                     where=cuda.jit(device=True)(_scalar_where))
        else:
            raise ValueError(f"unknown form {form!r}; the forms are {', '.join(FORMS)}")
        _PRIMITIVES[form] = p
    return _PRIMITIVES[form]


_SPECIALISED = {}


def specialise(fn, form, dtype, compile=None, **names):
    """fn with its constants of dtype and its primitives of form, as a new plain function
    named ``<name>__<form>_<dtype>`` (compiled code is cached by name, so one name per form
    and dtype). Every module-level float the definition reads counts as a constant (a table's
    own, such as leaky ReLU's slope, too), and every function of its own module it calls is
    specialised likewise and passed through ``compile`` (the form's compiler; None: left
    plain). ``names`` rebinds further globals (a dispatch the definition calls); one fn, form
    and dtype always get the same ones."""
    dtype = np.dtype(dtype)
    key = (fn, form, dtype)
    if key in _SPECIALISED:
        out, bound = _SPECIALISED[key]
        if bound != names:
            raise ValueError(f"{fn.__qualname__} is already specialised for {form}, {dtype} "
                             "with other names")
        return out
    g = dict(fn.__globals__)
    g.update(primitives(form))
    g.update({k: dtype.type(v) for k, v in CONSTANTS.items()})
    for k in fn.__code__.co_names:
        v = g.get(k)
        if type(v) is float:
            g[k] = dtype.type(v)
        elif (isinstance(v, types.FunctionType) and v.__module__ == fn.__module__
              and k not in names and v is not fn):
            callee = specialise(v, form, dtype, compile)
            g[k] = callee if compile is None else compile(callee)
    g.update(_dtype_constants(dtype))
    g.update(names)
    out = types.FunctionType(fn.__code__, g, f"{fn.__name__}__{form}_{dtype.name}",
                             fn.__defaults__, fn.__closure__)
    out.__qualname__ = f"{fn.__qualname__}__{form}_{dtype.name}"
    out.__doc__ = fn.__doc__
    _SPECIALISED[key] = (out, names)
    return out


def _source(fn):
    return ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]


class _Rename(ast.NodeTransformer):
    def __init__(self, names):
        self.names = names

    def visit_Name(self, node):
        new = self.names.get(node.id)
        return ast.copy_location(new, node) if new is not None else node


def expand(fn, args, result, prefix, depth=0):
    """Source lines computing ``fn(*args)`` into ``result`` (a target's text, or a tuple of
    them for a tuple-returning fn): fn's body written out with its parameters replaced by the
    argument expressions and its local names prefixed, so it needs no call. fn must be a
    sequence of assignments ending in a return; an assignment from a call of another function
    of fn's module is expanded in turn."""
    f = _source(fn)
    params = [a.arg for a in f.args.args]
    if len(params) != len(args):
        raise TypeError(f"{fn.__qualname__} takes {len(params)} arguments, not {len(args)}")
    names = {p: ast.parse(f"({a})", mode="eval").body for p, a in zip(params, args)}
    lines = []
    for i, st in enumerate(f.body):
        if isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant):
            continue            # the docstring
        last = i == len(f.body) - 1
        if last != isinstance(st, ast.Return) or not isinstance(st, (ast.Assign, ast.Return)):
            raise TypeError(f"{fn.__qualname__}: a definition is assignments and a final return")
        value = _Rename(names).visit(st.value)
        if isinstance(st, ast.Return):
            lines.append(f"{result if isinstance(result, str) else ', '.join(result)} = "
                         f"{ast.unparse(value)}")
            continue
        targets = st.targets[0]
        outs = [t.id for t in (targets.elts if isinstance(targets, ast.Tuple) else [targets])]
        local = {o: f"{prefix}{o}" for o in outs}
        callee = fn.__globals__.get(value.func.id) if (isinstance(value, ast.Call) and
                                                       isinstance(value.func, ast.Name)) else None
        if isinstance(callee, types.FunctionType) and callee.__module__ == fn.__module__:
            lines += expand(callee, [ast.unparse(a) for a in value.args],
                            tuple(local[o] for o in outs), f"{prefix}{depth}_", depth + 1)
        else:
            lines.append(f"{', '.join(local[o] for o in outs)} = {ast.unparse(value)}")
        names.update({o: ast.Name(id=v, ctx=ast.Load()) for o, v in local.items()})
    return lines


def namespace(fns, form, dtype):
    """The globals the expanded bodies of fns read, for one form and dtype: their module's
    names, the form's primitives and the dtype's constants (as specialise binds them)."""
    dtype = np.dtype(dtype)
    ns = {}
    for fn in fns:
        ns.update(fn.__globals__)
        ns.update({k: dtype.type(v) for k, v in fn.__globals__.items() if type(v) is float})
    ns.update(primitives(form))
    ns.update({k: dtype.type(v) for k, v in CONSTANTS.items()})
    ns.update(_dtype_constants(dtype))
    return ns


#: the source of every function switch() generated, by qualified name
SOURCES = {}


def switch(name, params, on, cases, default, namespace, origin, prologue=()):
    """A function ``name(*params)`` that runs ``cases[i][1]`` (source lines, in terms of
    ``params`` and ``namespace``) when the parameter ``on`` equals ``cases[i][0]``, and
    ``default`` (source lines) for any other value: one if/elif chain, generated, after the
    ``prologue`` lines.

    ``origin`` is the module whose file the code is attributed to (for tracebacks and for the
    kernel cache, which keys entries by file and name; the package key covers the table)."""
    lines = [f"def {name}({', '.join(params)}):"] + ["    " + line for line in prologue]
    for i, (code, body) in enumerate(cases):
        lines.append(f"    {'if' if i == 0 else 'elif'} {on} == {int(code)}:")
        lines += ["        " + line for line in body]
    lines.append("    else:" if cases else "    if True:")
    lines += ["        " + line for line in default]
    src = "\n".join(lines) + "\n"
    ns = dict(namespace)
    exec(compile(src, origin.__file__, "exec"), ns)      # noqa: S102 - our own generated text
    fn = ns[name]
    fn.__module__ = origin.__name__
    SOURCES[f"{origin.__name__}.{name}"] = src
    return fn


def by_dtype(name, params, dtype_param, build, origin, options):
    """A function ``name(*params)`` callable from compiled code (and from Python) for float32
    and float64 alike: it runs ``build(dtype)``, the version made for the dtype of
    ``params[dtype_param]`` (an array or a scalar), chosen when the caller is compiled: a
    Numba overload whose implementation is that version's own source (compiled with the
    jit ``options``), so each dtype's constants stay of that dtype and no call is added."""
    from numba import types as nt
    from numba.extending import overload
    made = {}

    def get(dtype):
        dtype = np.dtype(dtype)
        if dtype not in made:
            made[dtype] = build(dtype)
        return made[dtype]

    def dtype_of(t):
        return np.dtype((t.dtype if isinstance(t, nt.Array) else t).name)

    args = ", ".join(params)
    ns = {"_get": get, "_dtype": lambda x: np.asarray(x).dtype, "_dtype_of": dtype_of}
    src = (f"def {name}({args}):\n"
           f"    return _get(_dtype({params[dtype_param]}))({args})\n"
           f"def typer({args}):\n"
           f"    return _get(_dtype_of({params[dtype_param]})).py_func\n")
    exec(compile(src, origin.__file__, "exec"), ns)      # noqa: S102 - our own generated text
    stub = ns[name]
    stub.__module__ = origin.__name__
    stub.versions = get
    overload(stub, jit_options=dict(options))(ns["typer"])
    return stub
