"""A small declarative validator for the JSON headers of model files and checkpoints.

What it is for: a model file or checkpoint is untrusted input. Every header field nnjit reads
is declared once (nnjit.io builds the declarations) with its type, range and nullability, and
checked before anything uses it, so a crafted value fails with the field's dotted name
instead of a ``KeyError`` deep in training, or a silently wrong run (an epoch counter of
10**12, a negative learning rate, ``"stopped": "no"``). Consistency between fields (epochs
against the history, a learning rate against the fit's) is the caller's, on validated values.
Not for: the arrays (nnjit.io checks those against the architecture) or general JSON Schema.

Specs, each a callable ``spec(value, field) -> value`` raising :class:`SchemaError`:

* ``Int(lo, hi)``: an int in [lo, hi] (None: unbounded); never a bool or a float;
* ``Num(lo, hi, lo_open, hi_open, finite=True)``: an int or float in the range (open ends
  excluded); ``finite=False`` lets inf through and NaN too where there are no bounds;
* ``Bool()``: true or false only (0, 1 and "no" are refused, not read as truth values);
* ``Str(max_len, min_len, choices)``: a string of bounded length, or one of ``choices``;
* ``Null(spec)``: null or the spec; ``OneOf(*specs)``: the first spec that accepts it;
* ``List(spec, max_len, min_len)``: a list of bounded length, each item the spec;
* ``Obj({key: spec}, optional=(), extra=None)``: an object whose named keys are required
  unless optional; keys not named are checked by ``extra``, or refused where it is None;
* ``Any(max_items, max_str)``: any JSON value of bounded size (free-form, never computed with).

Every spec takes ``what=``, the phrase its error messages use ("must be {what}, got ...").
"""
import math


class SchemaError(ValueError):
    """A header field that is not what its spec declares; ``field`` is its dotted path."""

    def __init__(self, field, message):
        self.field = field
        super().__init__(f"header field {_cut(field, 200)!r}: {message}")


def _show(v):
    """v for an error message, never long: a crafted field may be megabytes."""
    if isinstance(v, (list, dict)):
        return f"{type(v).__name__} of {len(v)} items" if len(v) > 3 else _cut(repr(v))
    return _cut(repr(v))


def _cut(text, n=60):
    return text if len(text) <= n else text[:n - 1] + "…"


def _bound(x):
    return "inf" if x is None else repr(x)


class Spec:
    what = "valid"

    def __init__(self, what=None):
        if what is not None:
            self.what = what

    def fail(self, v, field):
        raise SchemaError(field, f"must be {self.what}, got {_show(v)}")


class Int(Spec):
    def __init__(self, lo=None, hi=None, what=None):
        self.lo, self.hi = lo, hi
        self.what = f"an integer in [{'-inf' if lo is None else lo}, {_bound(hi)}]"
        super().__init__(what)

    def __call__(self, v, field):
        if (isinstance(v, bool) or not isinstance(v, int) or (self.lo is not None and v < self.lo)
                or (self.hi is not None and v > self.hi)):
            self.fail(v, field)
        return v


class Num(Spec):
    def __init__(self, lo=None, hi=None, lo_open=False, hi_open=False, finite=True, what=None):
        self.lo, self.hi, self.lo_open, self.hi_open, self.finite = lo, hi, lo_open, hi_open, finite
        parts = [f"{'>' if lo_open else '>='} {lo!r}"] if lo is not None else []
        parts += [f"{'<' if hi_open else '<='} {hi!r}"] if hi is not None else []
        self.what = ("a finite number" if finite else "a number") + (" " if parts else "") + \
            " and ".join(parts)
        super().__init__(what)

    def __call__(self, v, field):
        ok = not isinstance(v, bool) and isinstance(v, (int, float))
        if ok and self.finite:
            ok = math.isfinite(v)
        if ok and self.lo is not None:
            ok = v > self.lo if self.lo_open else v >= self.lo
        if ok and self.hi is not None:
            ok = v < self.hi if self.hi_open else v <= self.hi
        if not ok:
            self.fail(v, field)
        return v


class Bool(Spec):
    what = "true or false"

    def __call__(self, v, field):
        if not isinstance(v, bool):
            self.fail(v, field)
        return v


class Str(Spec):
    def __init__(self, max_len=1024, min_len=0, choices=None, what=None):
        self.max_len, self.min_len, self.choices = max_len, min_len, choices
        self.what = (f"one of {', '.join(map(repr, choices))}" if choices is not None else
                     f"a string of {min_len} to {max_len} characters")
        super().__init__(what)

    def __call__(self, v, field):
        if not isinstance(v, str) or not self.min_len <= len(v) <= self.max_len or (
                self.choices is not None and v not in self.choices):
            self.fail(v, field)
        return v


class Null(Spec):
    def __init__(self, spec):
        self.spec = spec
        super().__init__(f"null or {spec.what}")

    def __call__(self, v, field):
        return None if v is None else self.spec(v, field)


class OneOf(Spec):
    def __init__(self, *specs, what=None):
        self.specs = specs
        self.what = " or ".join(s.what for s in specs)
        super().__init__(what)

    def __call__(self, v, field):
        for spec in self.specs:
            try:
                return spec(v, field)
            except SchemaError:
                pass
        self.fail(v, field)


class List(Spec):
    def __init__(self, spec, max_len, min_len=0, what=None):
        self.spec, self.max_len, self.min_len = spec, max_len, min_len
        count = f"{min_len} to {max_len}" if min_len != max_len else f"{max_len}"
        self.what = f"a list of {count} items"
        super().__init__(what)

    def __call__(self, v, field):
        if not isinstance(v, list) or not self.min_len <= len(v) <= self.max_len:
            self.fail(v, field)
        return [self.spec(x, f"{field}[{i}]") for i, x in enumerate(v)]


class Obj(Spec):
    what = "an object"

    def __init__(self, fields, optional=(), extra=None, what=None):
        self.fields, self.optional, self.extra = fields, set(optional), extra
        super().__init__(what)

    def __call__(self, v, field):
        if not isinstance(v, dict):
            self.fail(v, field)
        for k in self.fields:
            if k not in v and k not in self.optional:
                raise SchemaError(f"{field}.{k}" if field else k, "is missing")
        out = {}
        for k, x in v.items():
            sub = f"{field}.{k}" if field else str(k)
            spec = self.fields.get(k, self.extra)
            if spec is None:
                raise SchemaError(_cut(sub), "is not a field of this entry")
            out[k] = spec(x, sub)
        return out


class Any(Spec):
    """Any JSON value of at most max_items values in all, strings of at most max_str
    characters: a record kept for people (the fit's settings) that nothing computes with."""

    def __init__(self, max_items=10_000, max_str=4096, what=None):
        self.max_items, self.max_str = max_items, max_str
        self.what = f"a JSON value of at most {max_items} items"
        super().__init__(what)

    def __call__(self, v, field):
        count, stack = 1, [(v, field)]
        while stack:
            x, where = stack.pop()
            count += len(x) if isinstance(x, (dict, list)) else 0
            if count > self.max_items:
                raise SchemaError(field, f"holds more than {self.max_items} values")
            if isinstance(x, dict):
                stack.extend((y, f"{where}.{k}") for k, y in x.items())
            elif isinstance(x, list):
                stack.extend((y, f"{where}[{i}]") for i, y in enumerate(x))
            elif isinstance(x, str) and len(x) > self.max_str:
                raise SchemaError(_cut(where), f"is a string longer than {self.max_str} characters")
        return v


def validate(spec, value, field=""):
    """value checked against spec; a SchemaError names the first bad field."""
    return spec(value, field)
