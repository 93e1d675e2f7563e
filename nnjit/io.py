"""Saving, loading and checkpointing MLPs: the nnjit model file format.

What it is for: keeping a trained (or half-trained) network safe on disk and bringing it back
exactly, so that a loaded model predicts bit-identically and continues training exactly as the
original would have. What it is not for: exchanging models with other frameworks (nnjit.onnx
writes ONNX graphs; this module reads and writes nnjit's own files only).

The format (version 2)
----------------------
A NumPy ``.npz`` archive (a zip of ``.npy`` files) holding only numeric and fixed-width string
arrays, so it is read with ``np.load(path, allow_pickle=False)`` and loading never executes code:

===============  ======================  ==================================================
name             dtype, shape            content
===============  ======================  ==================================================
``header``       uint8 (n,)              UTF-8 JSON, see below
``W1``..``WL``   float32/64 (N_l, N_l-1) weights W^(l)[j, i], the lecture's layout
``b1``..``bL``   float32/64 (N_l,)       biases b^(l)
``vW1``..        float32/64 (N_l, N_l-1) momentum velocities of W^(l), or Adam's first moment m
``vb1``..        float32/64 (N_l,)       the same for b^(l)
``sW1``..        float32/64 (N_l, N_l-1) Adam's second moment v of W^(l) (zeros for sgd)
``sb1``..        float32/64 (N_l,)       the same for b^(l)
``best_theta``   float32/64 (P,)         only in checkpoints of fit(restore_best=True): the best
                                         epoch's flat parameters
``classes``      numbers or ``<U``/``S`` class labels (only for a classifier fitted on labels)
``x_offset``,    float64 (N_0,)          the fitted ``x_scaler`` (nnjit.preprocessing), if any:
``x_scale``                              the input layer sees (X - x_offset) / x_scale
``y_offset``,    float64 (N_L,)          the fitted ``y_scaler`` of a regression model, if any
``y_scale``
===============  ======================  ==================================================

The JSON header: ``format`` ("nnjit-mlp"), ``version`` (2), ``nnjit_version``, ``architecture``
(the ``MLP(...)`` arguments: layers, activation, output, loss, init, init_scale, backend, dtype,
seed), ``n_epochs``, ``history`` (the ``history_`` lists), ``rng`` (the shuffling generator's
``bit_generator.state``, so the next epoch's order is the one the original would have drawn),
``classes`` (null, or ``{"object": bool}`` saying how the ``classes`` array is read back, or
``{"object": true, "values": [...]}``: labels as JSON where an array would change them, e.g.
strings ending in NUL or integers beyond int64), ``scalers`` ({"x": kind,
"y": kind} for the scalers present; absent or {} for none), ``columns`` (the training
columns' names and the target's), ``table`` (a fitted nnjit.preprocessing.Table's state(): a
kind and its fitted values per input column), ``fit`` (optional, the
hyperparameters of the training run, for ``nnjit info``), ``checkpoint`` (only in checkpoints:
the state of the interrupted ``fit`` call) and ``sha256``, a digest of every other array (name,
dtype, shape and bytes) that catches corruption the zip CRCs would miss. Version 2 adds the
arrays ``sW*``/``sb*`` and the header entry ``optimizer``: ``{"step": Adam's t, "t": t_,
"lr": lr_, "best_epoch", "best_loss", "best_score"}``. Version-1 files (no ``sW``/``sb``, no
``optimizer``) still load, with zero second moments and step 0.
Non-finite floats (an infinite validation loss in ``history``) are written as
``{"__float__": "inf"}``.

A file is untrusted input: reading (see ``_read``) checks the header and the architecture it
declares before anything of that size is allocated, reads each member in bounded pieces after
checking its declared size, and turns every failure into ModelFileError naming the file.
Every header field is declared with its type and range (``check_header``, an nnjit.schema
spec) and checked, and the fields against each other (epoch counters against the
checkpointed fit and the history, labels against the output layer), before anything uses
them; the error names the dotted field (``ModelFileError.field``). Arrays must be finite,
second moments non-negative, scalers what a fit can produce. ``save`` runs the same checks,
so nnjit never writes a file it would refuse to read.

Writes are atomic: the archive goes to a temporary file in the target's directory, is flushed
and fsync'ed, then ``os.replace``'d over the target, so a crash or Ctrl-C during a save leaves
the previous file intact. The path is used exactly as given (no ``.npz`` is appended).
"""
import hashlib
import json
import math
import numbers
import os
import re
import socket
import stat
import tempfile
import zipfile
import zlib

import numpy as np

from . import checks
from .data import chunk_rows, crc32, read as read_rows
from .schema import SchemaError

FORMAT = "nnjit-mlp"
VERSION = 2

class ModelFileError(ValueError):
    """The file is not a readable nnjit model: foreign, truncated, corrupted, too new, or a
    field out of its range; ``field`` names the header field at fault, where it is one."""

    def __init__(self, message, field=None):
        super().__init__(message)
        self.field = field


# ---------------------------------------------------------------- writing
def _digest(arrays):
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _exact_label(v):
    """A class label as a JSON value that reads back equal and of the same kind, or raise."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (numbers.Integral,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)             # repr round-trips every double; inf/NaN via _encode_floats
    if isinstance(v, str):
        return str(v)
    raise TypeError(f"cannot save classes_ holding {type(v).__name__} labels exactly; labels must "
                    "be numbers or strings")


def _classes_arrays(classes):
    """(header entry, arrays) for classes_, stored so they read back exactly or refused.

    Numeric and fixed-width string arrays go in the ``classes`` array (bit-exact). Object
    arrays (Python ints beyond int64 or above 2**53 among floats, strings with trailing NULs,
    which NumPy's fixed-width strings would drop) go in the header as JSON values, which
    Python reads back exactly; anything else is refused, never changed."""
    if classes is None:
        return None, {}
    c = np.asarray(classes)
    if c.ndim != 1:
        raise TypeError(f"cannot save classes_ of shape {c.shape}")
    if c.dtype == object:
        vals = c.tolist()
        try:                # a plain array where it reads back as the very same labels
            arr = np.array(vals, dtype=str) if all(isinstance(v, str) for v in vals) else np.array(vals)
            back = arr.tolist()
            if arr.dtype.kind in "biufU" and all(type(a) is type(b) and a == b for a, b in zip(vals, back)):
                return {"object": True}, {"classes": arr}
        except (TypeError, ValueError, OverflowError):
            pass
        return {"object": True, "values": [_exact_label(v) for v in vals]}, {}
    if c.dtype.kind not in "biufUS":
        raise TypeError(f"cannot save classes_ of dtype {c.dtype}")
    return {"object": False}, {"classes": c}


def _plain(v):
    """A JSON-able Python scalar for numpy scalars too."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    return v


def _header_and_arrays(st, fit=None, checkpoint=None, best_theta=None):
    """(header dict, arrays dict) describing a model's state_dict() completely."""
    arrays = {}
    for prefix, key in (("", "params"), ("v", "velocity"), ("s", "square")):
        Ws, bs = st[key]
        for l, (W, b) in enumerate(zip(Ws, bs), start=1):
            arrays[f"{prefix}W{l}"], arrays[f"{prefix}b{l}"] = W, b
    if best_theta is not None:
        arrays["best_theta"] = np.asarray(best_theta)
    cls_entry, cls_arrays = _classes_arrays(st["classes"])
    arrays.update(cls_arrays)
    scalers = {}
    for which in ("x", "y"):            # nnjit.preprocessing: kind in the header, arrays beside
        sc = st[f"{which}_scaler"]
        if sc is not None and sc.offset_ is not None:
            scalers[which] = sc.kind
            arrays[f"{which}_offset"], arrays[f"{which}_scale"] = sc.offset_, sc.scale_
    from . import __version__
    best_epoch, best_loss, best_score = st["best"]
    header = {"format": FORMAT, "version": VERSION, "nnjit_version": __version__,
              "architecture": dict(st["architecture"]), "n_epochs": int(st["n_epochs"]),
              "history": {k: [_plain(v) for v in vs] for k, vs in st["history"].items()},
              "rng": st["rng"], "classes": cls_entry, "scalers": scalers,
              "table": None if _fitted_table(st) is None else _fitted_table(st).state(),
              "columns": (None if st.get("feature_names") is None else
                          {"features": [str(c) for c in st["feature_names"]],
                           "target": st.get("target_name")}),
              "fit": fit, "checkpoint": checkpoint, "sha256": _digest(arrays),
              "optimizer": {"step": int(st["step"]), "t": int(st["t"]),
                            "lr": None if st["lr"] is None else float(st["lr"]),
                            "best_epoch": best_epoch,
                            "best_loss": None if best_loss is None else float(best_loss),
                            "best_score": None if best_score is None else float(best_score)}}
    return header, arrays


def _fitted_table(st):
    t = st.get("table")
    return t if t is not None and t.columns_ is not None else None


_TMP_TAG = ".nnjit-"


def _tmp_prefix(path):
    return "." + os.path.basename(path) + _TMP_TAG + socket.gethostname().replace("-", "_") + "-"


def _clean_stale_temporaries(path):
    """Delete temporaries of earlier saves to the same path that a killed process left:
    ours carry host and pid (``.NAME.nnjit-HOST-PID-XXXX.tmp``); one of this host whose
    process is gone is stale. Other files are never touched."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = _tmp_prefix(path)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue                    # alive: maybe saving right now
        except ProcessLookupError:
            pass
        except OSError:                 # e.g. another user's live process
            continue
        try:
            os.unlink(os.path.join(folder, name))
        except OSError:
            pass


def _atomic_savez(path, arrays):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save to {path!r}: the directory {folder!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save to {path!r}: it is a directory")
    _clean_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path) + f"{os.getpid()}-", suffix=".tmp",
                                   dir=folder)
    except OSError as e:
        raise type(e)(e.errno, f"cannot save to {path!r}: {e.strerror}") from e
    try:
        try:                    # mkstemp makes the file 0600; give it the mode a plain open would
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            umask = os.umask(0o022)
            os.umask(umask)
            mode = 0o666 & ~umask
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:       # Ctrl-C too: never leave a half-written temporary behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:                        # make the rename itself durable; not possible everywhere
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _encode_floats(obj):
    """obj with every non-finite float as {"__float__": "inf" | "-inf" | "nan"}: JSON has no
    inf/NaN, and history may hold them (an infinite validation loss); read back by _decode."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if isinstance(obj, dict):
        return {k: _encode_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode_floats(v) for v in obj]
    return obj


def _decode_floats(d):
    if set(d) == {"__float__"}:
        if d["__float__"] not in ("inf", "-inf", "nan"):
            raise ValueError(f"bad float {d['__float__']!r}")
        return float(d["__float__"])
    return d


def save(net, path, fit=None, checkpoint=None, best_theta=None):
    """Write net (anything with an MLP's state_dict()) to path atomically in the format
    above. ``fit``: optional JSON-able dict of training hyperparameters to record;
    ``checkpoint``: the fit state (used by MLP.fit)."""
    header, arrays = _header_and_arrays(net.state_dict(), fit, checkpoint, best_theta)
    try:
        check_header(header)
    except SchemaError as e:
        raise ValueError(f"cannot save to {os.fspath(path)!r}: {e}") from None
    c = arrays.get("classes")
    problem = c is not None and _classes_problem(c.dtype, c.shape, header["architecture"])
    if problem:
        raise ValueError(f"cannot save to {os.fspath(path)!r}: {problem}")
    text = json.dumps(_encode_floats(header), allow_nan=False, sort_keys=True)
    arrays["header"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    _atomic_savez(path, arrays)


# ---------------------------------------------------------------- reading
# A model file is untrusted input. Reading it never executes code (no pickle, no name from
# the file is looked up on a module) and never allocates or decompresses more than the
# architecture it declares needs, capped by config.MODEL_FILE_MAX_*; every way a file can be
# bad ends in ModelFileError naming it.

#: the shuffling generators a header may name, mapped to their classes (an allow-list:
#: looking a file's name up with getattr(np.random, name) would call np.random.seed etc.)
_BIT_GENERATORS = {name: getattr(np.random, name)
                   for name in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")}
_PIECE = 1 << 20                # bytes read from a zip member at a time
_NPY_HEADER_MAX = 10000         # NumPy's own limit for a .npy header


# ---------------------------------------------------------------- the header's schema
#: the most epochs a file may record (or a checkpointed fit ask for): far above any real run
MAX_EPOCHS = 10**9
#: the largest update and sample counters (Adam's step t, t_): the engines keep them in int64
MAX_COUNT = 2**62
#: no JSON string literal in a header is longer than this: labels and column names are at most
#: config.MODEL_FILE_MAX_LABEL / MAX_COLUMN_NAME characters (6 bytes each when escaped),
#: recorded settings at most 4096. A header over 1 MiB is scanned for a longer one before it is
#: parsed: a 60 MB label in a 65 KB file (its header compresses) cost 180 MB to parse
MAX_HEADER_STRING = 65536
_LONG_STRING = re.compile(rb'[\[,:{]\s*"(?:[^"\\]|\\.){%d}' % MAX_HEADER_STRING)


def _label_limit(arch):
    """How many class labels the output layer can hold: one per softmax unit, 2 for one
    sigmoid unit; other outputs predict numbers, not labels."""
    K = arch["layers"][-1]
    return K if arch["output"] == "softmax" else 2 if arch["output"] == "sigmoid" and K == 1 else 0


def _architecture_schema():
    """The MLP(...) arguments a file may declare (names from nnjit's own tables)."""
    from . import activations as A, config
    from .checks import BACKENDS, INITS
    from .schema import Int, List, Null, Num, Obj, OneOf, Str
    hidden = Str(choices=A.HIDDEN)
    return Obj({"layers": List(Int(1, int(config.MODEL_FILE_MAX_PARAMS)), 1000, min_len=2),
                "activation": OneOf(hidden, List(hidden, 1000)),
                "output": Str(choices=A.OUTPUT), "loss": Str(choices=tuple(A.LOSSES)),
                "init": Str(choices=INITS), "init_scale": Num(0, lo_open=True),
                "backend": Str(choices=BACKENDS), "dtype": Str(choices=("float32", "float64")),
                "seed": Null(Int(0))})


def _settings_schema():
    """A checkpointed fit's settings (Checkpoint.settings): compared with the resuming call's,
    so typed as fit checks them, the update rule's from nnjit.rules.PARAMS; data_crc32 is
    always a number (a null one would switch the same-data check off)."""
    from . import rules
    from .schema import Any, Bool, Int, List, Null, Num, Obj, OneOf, Str
    crc = Int(0, 2**32 - 1)
    fields = {"data_crc32": crc, "sample_weight_crc32": Null(crc), "n_samples": Int(1),
              "lr": Null(Num(0, lo_open=True)), "batch_size": Null(Int(1)),
              "shuffle": OneOf(Bool(), Int(0, 1)), "restore_best": Bool(), "nesterov": Bool(),
              "optimizer": Str(choices=tuple(rules.CODES)), "alpha": Num(0),
              "tol": Null(Num(0, finite=False)), "n_iter_no_change": Int(1),
              "error_threshold": Null(Num(0, lo_open=True, finite=False)),
              "schedule": Str(choices=rules.SCHEDULES),
              "schedule_params": Obj({"power_t": Num(0), "factor": Num(1, lo_open=True),
                                      "min_lr": Num(0), "step_size": Int(1),
                                      "gamma": Num(0, lo_open=True),
                                      "t_max": Null(Int(1)), "eta_min": Num(0)},
                                     optional=("power_t", "factor", "min_lr", "step_size", "gamma",
                                               "t_max", "eta_min"))}
    for name, (_, lo, hi, lo_open, hi_open) in rules.PARAMS.items():    # None: the default
        num = Num(lo, hi, lo_open, hi_open)
        fields[name] = Null(Str(choices=tuple(rules.EPS_MODES)) if name == "adam_eps" else
                            List(num, 2, min_len=2) if name == "betas" else num)
    required = ("data_crc32", "n_samples", "lr")
    return Obj(fields, optional=set(fields) - set(required), extra=Any())


def _header_schema(header):
    """The declared type and range of every header entry of a file whose format version,
    architecture and n_epochs are already checked: label counts, column counts and epoch
    indices are bounded by them."""
    from . import config
    from .preprocessing import KINDS
    from .schema import Any, Bool, Int, List, Null, Num, Obj, OneOf, Str
    version, arch, n = header["version"], header["architecture"], header["n_epochs"]
    epoch = Int(0, n - 1, what=f"an epoch index below n_epochs = {n}")
    metric = Null(Num(finite=False))
    real = Num(finite=False)        # history: a diverged epoch's inf or NaN loss is kept
    name = Str(MAX_COLUMN_NAME, min_len=1)
    label = OneOf(Bool(), Int(), Num(finite=False), Str(int(config.MODEL_FILE_MAX_LABEL)),
                  what=f"a number or a string of at most {int(config.MODEL_FILE_MAX_LABEL)} "
                       "characters (nnjit.config.MODEL_FILE_MAX_LABEL)")
    limit = _label_limit(arch)
    classes = Obj({"object": Bool(), "values": List(label, limit, min_len=1,
                                                    what=f"a list of 1 to {limit} labels (the "
                                                         "output layer's)")},
                  optional=("values",))
    stopper = Obj({"best": Null(Num()), "stall": Int(0, n), "adaptive_lr": Null(Num(0, lo_open=True))},
                  optional=("best", "stall", "adaptive_lr"))
    best = Obj({"loss": Null(Num()), "epoch": Null(epoch), "best_loss": metric, "score": metric},
               optional=("loss", "epoch", "best_loss", "score"))
    checkpoint = Obj({"start_epoch": Int(0, MAX_EPOCHS), "epochs": Int(1, MAX_EPOCHS),
                      "stopped": Bool(), "settings": _settings_schema(),
                      "state": Null(Obj({"stopper": stopper, "best": best}, optional=("best",))),
                      "best": Null(Num()), "stall": Int(0, n)},     # best, stall: version 1
                     optional=("state", "best", "stall"))
    optimizer = Obj({"step": Int(0, MAX_COUNT), "t": Int(0, MAX_COUNT),
                     "lr": Null(Num(0, lo_open=True)), "best_epoch": Null(epoch),
                     "best_loss": metric, "best_score": metric},
                    optional=("step", "t", "lr", "best_epoch", "best_loss", "best_score"))
    n0 = arch["layers"][0]
    from .preprocessing import state_schema
    table = state_schema(n0)        # Table.from_state checks a state with the same spec
    fields = {
        "format": Str(choices=(FORMAT,)), "version": Int(1, VERSION), "nnjit_version": Str(100),
        "architecture": _architecture_schema(), "n_epochs": Int(0, MAX_EPOCHS),
        "history": Obj({"loss": List(real, MAX_EPOCHS), "val_loss": List(real, MAX_EPOCHS),
                        "val_score": List(real, MAX_EPOCHS), "val_epoch": List(epoch, n)},
                       optional=("loss", "val_loss", "val_score", "val_epoch")),
        "rng": Obj({"bit_generator": Str(choices=tuple(_BIT_GENERATORS),
                                         what="a known bit generator (" + ", ".join(_BIT_GENERATORS) + ")")},
                   extra=Any()),        # the rest is the generator's, checked by NumPy
        "classes": Null(classes), "scalers": Null(Obj({"x": Str(choices=KINDS), "y": Str(choices=KINDS)},
                                                      optional=("x", "y"))),
        "columns": Null(Obj({"features": List(name, MAX_TABLE_COLUMNS, min_len=1),
                             "target": Null(name)})),
        "table": Null(table),
        "fit": Null(Any()),             # recorded for nnjit info, never read back
        "checkpoint": Null(checkpoint), "sha256": Str(64, min_len=64),
        "optimizer": optimizer if version >= 2 else Null(optimizer)}
    optional = {"nnjit_version", "classes", "scalers", "columns", "table", "fit", "checkpoint"}
    return Obj(fields, optional=optional if version >= 2 else optional | {"optimizer"})


def _check_consistency(header):
    """What no single field's spec can say: fields against each other and the architecture."""
    from . import activations as A, config
    arch, n = header["architecture"], header["n_epochs"]
    layers, output, loss = arch["layers"], arch["output"], arch["loss"]
    cap = int(config.MODEL_FILE_MAX_PARAMS)
    n_params = sum(layers[l] * layers[l - 1] + layers[l] for l in range(1, len(layers)))
    if n_params > cap:
        raise SchemaError("architecture.layers", f"{n_params} parameters, more than "
                          f"nnjit.config.MODEL_FILE_MAX_PARAMS = {cap} (raise it to load bigger models)")
    act = arch["activation"]
    if isinstance(act, list) and len(act) != len(layers) - 2:
        raise SchemaError("architecture.activation", f"{len(act)} names for {len(layers) - 2} "
                          "hidden layers")
    if output not in A.LOSS_BY_CODE[A.LOSSES[loss]].outputs:
        raise SchemaError("architecture.loss", f"{loss!r} does not go with output {output!r}")
    if output == "softmax" and layers[-1] < 2:
        raise SchemaError("architecture.layers", "a softmax output needs at least 2 units")
    if header.get("classes") is not None and _label_limit(arch) == 0:
        raise SchemaError("classes", f"must be null: a {output} output of {layers[-1]} units "
                          "predicts no class labels")
    columns, table = header.get("columns"), header.get("table")
    if columns is not None:
        feats = columns["features"]
        if len(set(feats)) != len(feats):
            raise SchemaError("columns.features", "lists a column name twice")
        if columns["target"] in feats:
            raise SchemaError("columns.target", "is also a feature's name")
        width = layers[0] if table is None else len(table["columns"])
        if len(feats) != width:
            raise SchemaError("columns.features", f"names {len(feats)} columns, the "
                              + ("input layer has" if table is None else "table has") + f" {width}")
    if table is not None:
        from .preprocessing import Table
        try:
            t = Table.from_state(table)
        except ValueError as e:
            raise SchemaError("table", str(e)) from None
        if t.n_features_out_ != layers[0]:
            raise SchemaError("table", f"turns a table into {t.n_features_out_} columns, the "
                              f"input layer has {layers[0]} units")
        if columns is not None and columns["features"] != [c["name"] for c in table["columns"]]:
            raise SchemaError("columns.features", "are not the table's columns")
    val_epoch = header["history"].get("val_epoch", [])
    if any(a >= b for a, b in zip(val_epoch, val_epoch[1:])):
        raise SchemaError("history.val_epoch", "must list epochs in increasing order")
    ck = header.get("checkpoint")
    if ck is None:
        return
    start, epochs = ck["start_epoch"], ck["epochs"]
    if not start <= n <= start + epochs:
        raise SchemaError("checkpoint.start_epoch", f"a fit of {epochs} epochs started at epoch "
                          f"{start} cannot have reached n_epochs = {n}")
    done = len(header["history"].get("loss", []))
    if done < n - start:
        raise SchemaError("history.loss", f"{done} losses for the {n - start} epochs the "
                          "checkpointed fit ran (each epoch records one)")
    lr = ck["settings"]["lr"]
    adaptive = (ck.get("state") or {}).get("stopper", {}).get("adaptive_lr")
    if lr is not None and adaptive is not None and adaptive > lr:
        raise SchemaError("checkpoint.state.stopper.adaptive_lr", f"{adaptive!r} is above the "
                          f"fit's lr {lr!r} (the adaptive schedule only divides it)")


def check_header(header):
    """header (a dict, as read back from JSON) checked against the format's schema and for
    consistency; raises nnjit.schema.SchemaError naming the first bad field. save() runs it
    too, so a save never writes a file that load would refuse."""
    from .schema import Int, Obj, validate
    validate(Obj({"version": Int(1, VERSION), "architecture": _architecture_schema(),
                  "n_epochs": Int(0, MAX_EPOCHS)}, extra=lambda v, field: v), header)  # the rest next
    validate(_header_schema(header), header)
    _check_consistency(header)


def _check_header(header):
    """The format and version first (a newer file is _TooNew, not malformed), then
    check_header; the architecture's layers and dtype."""
    if header.get("format") != FORMAT:
        raise _Bad(f"its header names the format {str(header.get('format'))[:40]!r}")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _Bad(f"invalid format version {str(version)[:40]!r}")
    if version > VERSION:
        raise _TooNew(f"it uses format version {version}, written by a newer nnjit "
                      f"({str(header.get('nnjit_version'))[:40]}); this nnjit reads version {VERSION}")
    check_header(header)
    return header["architecture"]["layers"], np.dtype(header["architecture"]["dtype"])


class _Bad(ValueError):
    """A problem _read found and describes itself."""


class _TooNew(_Bad):
    pass


def _expected_members(layers, dtype, version):
    """({member name: (dtype, shape)} every nnjit file of this architecture and format version
    holds, {name: (dtype, shape)} of the members it may hold): weights, biases and optimizer
    state always (second moments sW/sb from version 2 on); a checkpoint's best_theta and the
    scalers' offsets and scales only where present."""
    out = {}
    for l in range(1, len(layers)):
        for pre in ("", "v", "s") if version >= 2 else ("", "v"):
            out[f"{pre}W{l}"] = (dtype, (layers[l], layers[l - 1]))
            out[f"{pre}b{l}"] = (dtype, (layers[l],))
    n_params = sum(layers[l] * layers[l - 1] + layers[l] for l in range(1, len(layers)))
    optional = {"best_theta": (dtype, (n_params,))}
    for which, n in (("x", layers[0]), ("y", layers[-1])):
        for part in ("offset", "scale"):
            optional[f"{which}_{part}"] = (np.dtype(np.float64), (n,))
    return out, optional


def _read_member(zf, name, max_bytes, want=None, check=None):
    """The array in zip member ``name``.npy, read in bounded pieces. Its .npy header is read
    first and checked (dtype kind, ``want`` = (dtype, shape) or a size cap, ``check(dtype,
    shape)`` -> a problem or None) against what the architecture allows, and the member's
    declared size must match it exactly, before anything the size of the data is allocated
    or decompressed."""
    info = zf.getinfo(name + ".npy")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise _Bad(f"member {name!r} has .npy version {version}")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                       np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f, max_header_size=_NPY_HEADER_MAX)
        if dtype.hasobject or dtype.kind not in "biufUS" or dtype.fields is not None:
            raise _Bad(f"member {name!r} has dtype {dtype}")
        if want is not None and (dtype != want[0] or tuple(shape) != want[1]):
            raise _Bad(f"array {name!r} is {dtype}{tuple(shape)}, the architecture needs "
                             f"{want[0]}{want[1]}")
        if len(shape) > 2:
            raise _Bad(f"member {name!r} has shape {shape}")
        problem = check and check(dtype, tuple(shape))
        if problem:
            raise _Bad(problem)
        if info.file_size > max_bytes + _NPY_HEADER_MAX:
            raise _Bad(f"member {name!r} declares {info.file_size} bytes, more than its "
                       f"architecture allows ({max_bytes})")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if nbytes > max_bytes:
            raise _Bad(f"member {name!r} declares {nbytes} bytes, more than its "
                             f"architecture allows ({max_bytes})")
        if info.file_size != f.tell() + nbytes:
            raise _Bad(f"member {name!r} is {info.file_size} bytes, its .npy header "
                             f"declares {f.tell() + nbytes}")
        buf = bytearray(nbytes)
        view, pos = memoryview(buf), 0
        while pos < nbytes:
            piece = f.read(min(_PIECE, nbytes - pos))
            if not piece:
                raise EOFError(f"member {name!r} ends after {pos} of {nbytes} bytes")
            view[pos:pos + len(piece)] = piece
            pos += len(piece)
        f.read(1)       # reach the end, so zipfile checks the member's CRC
    a = np.frombuffer(buf, dtype=dtype).reshape(shape[::-1] if fortran else shape)
    return a.T if fortran else a


def _classes_problem(dtype, shape, arch):
    """What is wrong with a classes array of this dtype and shape for this architecture, or
    None: at most as many labels as the output layer takes (none for an output that predicts
    numbers), each at most config.MODEL_FILE_MAX_LABEL characters wide."""
    from . import config
    limit, longest = _label_limit(arch), int(config.MODEL_FILE_MAX_LABEL)
    output = f"a {arch['output']} output of {arch['layers'][-1]} units"
    if limit == 0:
        return f"array 'classes': {output} predicts no class labels"
    if len(shape) != 1 or not 0 < shape[0] <= limit:
        return f"array 'classes' has shape {shape}; {output} takes 1 to {limit} labels"
    width = dtype.itemsize // 4 if dtype.kind == "U" else dtype.itemsize
    if dtype.kind in "US" and width > longest:
        return (f"array 'classes' holds labels of {width} characters, more than "
                f"nnjit.config.MODEL_FILE_MAX_LABEL = {longest}")
    return None


def _read(path):
    from . import config
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        raise _Bad("it is empty" if not magic else "it is not a NumPy .npz archive")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if "header.npy" not in names:
            raise _Bad("it is a .npz archive but not an nnjit model file (it has no 'header' array)")
        raw = _read_member(zf, "header", int(config.MODEL_FILE_MAX_HEADER_BYTES))
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise _Bad("corrupted header: not a byte string")
        if raw.size > 2**20 and _LONG_STRING.search(memoryview(raw)):
            raise _Bad(f"its header holds a string longer than {MAX_HEADER_STRING} characters; "
                       f"labels and names are at most {int(config.MODEL_FILE_MAX_LABEL)}")
        try:
            header = json.loads(raw.tobytes().decode("utf-8"), object_hook=_decode_floats)
        except RecursionError:
            raise _Bad("corrupted header: JSON nested too deeply") from None
        except ValueError as e:
            raise _Bad(f"corrupted header ({e})") from e
        if not isinstance(header, dict):
            raise _Bad("corrupted header: not a JSON object")
        layers, dtype = _check_header(header)
        expected, optional = _expected_members(layers, dtype, header["version"])
        expected.update(optional)
        allowed = set(expected) | {"classes", "header"}
        arrays = {}
        for member in names:
            name = member[:-4] if member.endswith(".npy") else member
            if name not in allowed or name in arrays or member != name + ".npy":
                raise _Bad(f"it holds an unexpected member {member[:60]!r}")
            if name == "header":
                continue
            if name == "classes":       # bounded by the largest array the checks accept
                arrays[name] = _read_member(
                    zf, name, max(1, layers[-1]) * 4 * int(config.MODEL_FILE_MAX_LABEL),
                    check=lambda dt, sh: _classes_problem(dt, sh, header["architecture"]))
            else:
                dt, shape = expected[name]
                arrays[name] = _read_member(zf, name, dt.itemsize * int(np.prod(shape)), expected[name])
    return header, arrays


def read(path):
    """(header, arrays) of an nnjit file, checked; raises ModelFileError for anything else."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path!r}")
    if os.path.isdir(path):
        raise ModelFileError(f"{path!r} is a directory, not an nnjit model file")
    try:
        header, arrays = _read(path)
    except (_TooNew, SchemaError) as e:
        raise ModelFileError(f"{path!r}: {e}", getattr(e, "field", None)) from None
    except _Bad as e:
        raise ModelFileError(f"{path!r} is not an nnjit model file: {e}") from None
    except (MemoryError, KeyboardInterrupt, PermissionError):
        raise
    except Exception as e:      # zipfile, zlib, numpy and JSON raise many kinds for bad bytes
        raise ModelFileError(f"{path!r} is truncated or corrupted ({type(e).__name__}: "
                             f"{str(e)[:200]})") from None
    if header.get("sha256") != _digest(arrays):
        raise ModelFileError(f"{path!r} is corrupted: its arrays do not match the checksum "
                             "recorded when it was written")
    return header, arrays


def _layers_from(arrays, prefix, layers, dtype, path):
    """([W^(l)], [b^(l)]) of one prefix ("", "v", "s"), each of the architecture's shape,
    finite (second moments also non-negative: Adam divides by their square root)."""
    Ws, bs = [], []
    for l in range(1, len(layers)):
        for name, want, out in ((f"{prefix}W{l}", (layers[l], layers[l - 1]), Ws),
                                (f"{prefix}b{l}", (layers[l],), bs)):
            if name not in arrays:
                raise ModelFileError(f"{path!r} lacks the array {name!r}", name)
            a = arrays[name]
            if a.shape != want or a.dtype != dtype:
                raise ModelFileError(f"{path!r}: array {name!r} is {a.dtype}{a.shape}, the "
                                     f"architecture needs {dtype}{want}", name)
            if not np.isfinite(a).all():
                raise ModelFileError(f"{path!r}: array {name!r} holds NaN or inf (a model "
                                     "computing with it predicts garbage for every sample)", name)
            if prefix == "s" and (a < 0).any():
                raise ModelFileError(f"{path!r}: array {name!r} holds a negative second "
                                     "moment (Adam and RMSprop take its square root)", name)
            out.append(a)
    return Ws, bs


def _classes_from(header, arrays, path, arch):
    """classes_ as saved: exact values, sorted and unique (labels are found by binary search)."""
    entry = header.get("classes")
    if entry is None:
        if "classes" in arrays:     # predict would return unit indices, not the labels
            raise ModelFileError(f"{path!r}: header field 'classes' is null beside a classes "
                                 "array", "classes")
        return None
    if entry["object"] and "values" in entry:
        c = np.empty(len(entry["values"]), dtype=object)
        c[:] = entry["values"]
    elif "classes" not in arrays:
        raise ModelFileError(f"{path!r} lacks the array 'classes'", "classes")
    else:
        c = arrays["classes"]
        if entry["object"]:             # files written before labels moved to the header
            c = np.array(c.tolist(), dtype=object)
    try:
        ok = len(c) == 1 or bool(np.all(c[1:] > c[:-1]))
    except TypeError:
        ok = False
    if not ok:
        raise ModelFileError(f"{path!r}: header field 'classes': the labels must be sorted, "
                             "distinct and of one kind", "classes")
    return c


def _scalers_from(header, arrays, path, layers):
    """The x and y Scalers the header declares, from their arrays: exactly what Scaler.fit
    can produce (preprocessing.check_fitted), so a scale is never 0, negative or absurd."""
    from .preprocessing import Scaler, check_fitted
    scalers = header.get("scalers") or {}     # absent in files written before scalers existed
    out = {}
    for which in ("x", "y"):
        kind = scalers.get(which)
        if kind is None:
            out[which] = None
            continue
        names = (f"{which}_offset", f"{which}_scale")
        n_cols = layers[0] if which == "x" else layers[-1]
        if any(n not in arrays for n in names):
            raise ModelFileError(f"{path!r}: header field 'scalers.{which}' needs the arrays "
                                 f"{names[0]!r} and {names[1]!r}", f"scalers.{which}")
        offset, scale = (arrays[n] for n in names)
        if (offset.shape != (n_cols,) or scale.shape != (n_cols,) or offset.dtype.kind != "f"
                or scale.dtype.kind != "f" or not (np.isfinite(offset).all() and np.isfinite(scale).all())
                or (scale == 0).any()):
            raise ModelFileError(f"{path!r}: header field 'scalers.{which}': the {which} scaler's "
                                 f"arrays are not {n_cols} finite numbers with non-zero scales",
                                 f"scalers.{which}")
        wrong = check_fitted(offset, scale)     # what Scaler.fit can produce, nothing else
        if wrong:
            raise ModelFileError(f"{path!r}: header field 'scalers.{which}' (arrays "
                                 f"{which}_offset, {which}_scale): {wrong}", f"scalers.{which}")
        sc = Scaler(kind)
        sc.offset_, sc.scale_ = offset.astype(np.float64), scale.astype(np.float64)
        out[which] = sc
    return out


#: the longest column name a model file may hold (a header's names, not data)
MAX_COLUMN_NAME = 1024
#: the most columns a model's table may read (dropped ones included)
MAX_TABLE_COLUMNS = 2**16


def state_from(header, arrays, path):
    """(an MLP.state_dict(), the shuffling generator) of a read file (header checked)."""
    arch = dict(header["architecture"])
    layers, dtype = arch["layers"], np.dtype(arch["dtype"])
    params = _layers_from(arrays, "", layers, dtype, path)
    vel = _layers_from(arrays, "v", layers, dtype, path)
    if header["version"] >= 2:
        sq = _layers_from(arrays, "s", layers, dtype, path)
        opt = header["optimizer"]
    else:                       # version 1: momentum only
        sq, opt = ([np.zeros_like(W) for W in vel[0]], [np.zeros_like(b) for b in vel[1]]), {}
    from .preprocessing import Table
    scalers = _scalers_from(header, arrays, path, layers)
    columns = header.get("columns") or {}
    try:
        state = header["rng"]
        bitgen = _BIT_GENERATORS[state["bit_generator"]]()     # an allow-list, never getattr
        bitgen.state = state
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ModelFileError(f"{path!r}: header field 'rng': not a state of its bit generator "
                             f"({str(e)[:200]})", "rng") from None
    st = {"architecture": arch, "params": params, "velocity": vel, "square": sq,
          "step": opt.get("step", 0), "classes": _classes_from(header, arrays, path, arch),
          "x_scaler": scalers["x"], "y_scaler": scalers["y"],
          "table": None if header.get("table") is None else Table.from_state(header["table"]),
          "feature_names": columns.get("features"), "target_name": columns.get("target"),
          "history": {k: list(vs) for k, vs in header["history"].items()},
          "n_epochs": header["n_epochs"], "t": opt.get("t", 0),
          "lr": None if opt.get("lr") is None else float(opt["lr"]),
          "best": (opt.get("best_epoch"), opt.get("best_loss"), opt.get("best_score"))}
    return st, np.random.Generator(bitgen)


def load_state(path):
    """(state_dict, generator) of the model file at path (MLP.load builds the model)."""
    header, arrays = read(path)
    return state_from(header, arrays, os.fspath(path))


def info(path):
    """A summary dict of the file at path (header facts and parameter count), for ``nnjit info``."""
    header, arrays = read(path)
    state_from(header, arrays, os.fspath(path))     # what load would refuse, info refuses
    arch = header["architecture"]
    layers = arch["layers"]
    n_params = sum(layers[l] * layers[l - 1] + layers[l] for l in range(1, len(layers)))
    hist = header["history"]
    entry = header.get("classes") or {}
    classes = (entry.get("values") if entry.get("object") and "values" in entry else
               arrays["classes"].tolist() if "classes" in arrays else None)
    out = {"file": os.fspath(path), "format_version": header["version"],
           "nnjit_version": header.get("nnjit_version"), "architecture": arch,
           "n_params": int(n_params), "n_epochs": header["n_epochs"],
           "final_loss": hist.get("loss", [None])[-1] if hist.get("loss") else None,
           "final_val_loss": hist.get("val_loss", [None])[-1] if hist.get("val_loss") else None,
           "final_val_score": hist.get("val_score", [None])[-1] if hist.get("val_score") else None,
           "classes": classes, "fit": header.get("fit"), "checkpoint": header.get("checkpoint"),
           "scalers": header.get("scalers") or {},
           "columns": header.get("columns"), "table": header.get("table")}
    return out


# ---------------------------------------------------------------- checkpoints
def _fingerprint(X, Y):
    """CRC-32 of the training data, always a number (a resume compares it): the bytes of X
    and Y, and of data held as Python objects (labels of an object array) their reprs,
    chunk by chunk (O(chunk) memory for out-of-core data, as data.crc32)."""
    crc = crc32(X, Y)
    if crc is not None:
        return crc
    crc = 0
    for a in (X, Y):
        if a is None:
            continue
        part = crc32(a)
        if part is not None:
            crc = zlib.crc32(part.to_bytes(4, "little"), crc)
            continue
        a = a if hasattr(a, "shape") else np.asarray(a, dtype=object)
        rows = chunk_rows(a)
        for s in range(0, max(1, a.shape[0]), rows):
            block = np.asarray(read_rows(a, s, s + rows), dtype=object).ravel().tolist()
            crc = zlib.crc32("\x00".join(map(repr, block)).encode("utf-8", "backslashreplace"), crc)
    return crc


class Checkpoint:
    """The checkpoint and resume bookkeeping of one ``MLP.fit`` call.

    The checkpoint records the fit's settings, where it started (``start_epoch``), the early
    stopping counters and whether a stopping criterion ended it. Resuming requires the same data
    and settings (else the continuation could not equal an uninterrupted run) and trains until
    ``n_epochs_`` reaches ``start_epoch + epochs``, or not at all if the fit had stopped early.
    """

    def __init__(self, net, path, every, X, Y, epochs, lr, **settings):
        if path is None:
            raise ValueError("resume=True needs checkpoint='path' to resume from")
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a file path, got {type(path).__name__}")
        self.net, self.path = net, os.fspath(path)
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):       # fail now, not after the first epoch's work
            raise FileNotFoundError(f"the checkpoint's directory {folder!r} does not exist")
        self.every = checks.positive_int("checkpoint_every", every)
        self.epochs = epochs
        self.start_epoch = net.n_epochs_
        settings["lr"] = None if callable(lr) else float(lr)
        settings = {k: (v if not isinstance(v, dict) else {a: _plain(b) for a, b in v.items()})
                    for k, v in settings.items()}
        settings["n_samples"] = int(X.shape[0])
        settings["data_crc32"] = _fingerprint(X, Y)
        self.settings = {k: _plain(v) for k, v in settings.items()}
        from .schema import Int, validate       # what every save will check, checked now
        validate(Int(1, MAX_EPOCHS), epochs, "checkpoint.epochs")
        validate(_settings_schema(), self.settings, "checkpoint.settings")

    def start(self, resume):
        """(epochs left to run, the fit's saved state dict or None); loads the checkpoint
        into net when resuming (and its best epoch's weights into self.best_theta)."""
        self.best_theta = None
        if not resume or not os.path.exists(self.path):
            return self.epochs, None
        header, arrays = read(self.path)
        ck = header.get("checkpoint")
        if not ck:
            raise ValueError(f"{self.path!r} is a saved model, not a checkpoint written by "
                             "fit(checkpoint=...); load it with MLP.load and call fit instead")
        net = self.net
        arch = header["architecture"]
        mine = {k: v for k, v in net.architecture().items() if k not in ("backend", "seed")}
        theirs = {k: arch.get(k) for k in mine}
        if mine != theirs:
            diff = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
            raise ValueError(f"checkpoint {self.path!r} is of a different network: "
                             + ", ".join(f"{k} {a!r} there, {b!r} here" for k, (a, b) in diff.items()))
        old = ck.get("settings", {})
        diff = [k for k in self.settings if old.get(k) != self.settings[k]
                and not (k not in old and header["version"] < 2)]
        if diff:
            raise ValueError(f"cannot resume from {self.path!r}: it was written by a fit with other "
                             + ", ".join(f"{k} ({old.get(k)!r} there, {self.settings[k]!r} here)"
                                         for k in diff)
                             + "; resuming continues that run exactly, so these must match")
        st, rng = state_from(header, arrays, self.path)
        self.best_theta = arrays.get("best_theta")
        if self.best_theta is not None and not np.isfinite(self.best_theta).all():
            raise ModelFileError(f"{self.path!r}: array 'best_theta' holds NaN or inf "
                                 "(restore_best would put it back)", "best_theta")
        net.load_state_dict(st, rng)
        self.start_epoch = int(ck["start_epoch"])
        state = ck.get("state")
        if state is None:           # a version-1 checkpoint: the tol counters only
            state = {"stopper": {"best": ck.get("best"), "stall": ck.get("stall", 0)}}
        left = 0 if ck.get("stopped") else max(0, self.start_epoch + self.epochs - net.n_epochs_)
        return left, state

    def save(self, state, stopped=False, best_theta=None):
        ck = {"start_epoch": self.start_epoch, "epochs": self.epochs, "stopped": bool(stopped),
              "state": state, "settings": self.settings}
        save(self.net, self.path, fit=self.settings, checkpoint=ck, best_theta=best_theta)

    def after_epoch(self, state, stopped, best_theta=None):
        """Save every ``every`` epochs of this fit, at its last epoch and when it stops."""
        done = self.net.n_epochs_ - self.start_epoch
        if stopped or done % self.every == 0 or self.net.n_epochs_ >= self.start_epoch + self.epochs:
            self.save(state, stopped, best_theta)
