"""Saving, loading and checkpointing MLPs: the nnjit model file format.

What it is for: keeping a trained (or half-trained) network safe on disk and bringing it back
exactly, so that a loaded model predicts bit-identically and continues training exactly as the
original would have. What it is not for: exchanging models with other frameworks (the arrays are
plain NumPy, so that is easy, but nothing here converts).

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
"y": kind} for the scalers present; absent or {} for none), ``fit`` (optional, the
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

Writes are atomic: the archive goes to a temporary file in the target's directory, is flushed
and fsync'ed, then ``os.replace``'d over the target, so a crash or Ctrl-C during a save leaves
the previous file intact. The path is used exactly as given (no ``.npz`` is appended).
"""
import hashlib
import json
import math
import numbers
import os
import socket
import stat
import tempfile
import zipfile
import zlib

import numpy as np

from . import checks
from .data import crc32

FORMAT = "nnjit-mlp"
VERSION = 2

_ARCH = ("layers", "activation", "output", "loss", "init", "init_scale", "backend", "dtype", "seed")


class ModelFileError(ValueError):
    """The file is not a readable nnjit model: foreign, truncated, corrupted or too new."""


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


def _int(v, what, lo=0, hi=None):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        raise _Bad(f"{what} must be an integer in [{lo}, {hi if hi is not None else 'inf'}], "
                         f"got {str(v)[:40]!r}")
    return v


def _check_header(header):
    """Types and sizes of every header entry nnjit reads, before anything is allocated."""
    from . import config
    if header.get("format") != FORMAT:
        raise _Bad(f"its header names the format {str(header.get('format'))[:40]!r}")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _Bad(f"invalid format version {str(version)[:40]!r}")
    if version > VERSION:
        raise _TooNew(f"it uses format version {version}, written by a newer nnjit "
                      f"({str(header.get('nnjit_version'))[:40]}); this nnjit reads version {VERSION}")
    for key in ("architecture", "n_epochs", "history", "rng"):
        if key not in header:
            raise _Bad(f"it lacks the header entry {key!r}")
    arch = header["architecture"]
    if not isinstance(arch, dict) or set(arch) != set(_ARCH):
        raise _Bad(f"malformed architecture entry: "
                         f"{sorted(arch)[:20] if isinstance(arch, dict) else type(arch).__name__}")
    layers = arch["layers"]
    if not isinstance(layers, list) or not 2 <= len(layers) <= 1000:
        raise _Bad("architecture.layers must list 2 to 1000 layer sizes")
    cap = int(config.MODEL_FILE_MAX_PARAMS)
    for n in layers:
        _int(n, "a layer size", 1, cap)
    n_params = sum(layers[l] * layers[l - 1] + layers[l] for l in range(1, len(layers)))
    if n_params > cap:
        raise _Bad(f"it declares {n_params} parameters, more than "
                         f"nnjit.config.MODEL_FILE_MAX_PARAMS = {cap} (raise it to load bigger models)")
    if arch["dtype"] not in ("float32", "float64"):
        raise _Bad(f"unknown dtype {str(arch['dtype'])[:40]!r}")
    if arch["backend"] not in ("loops", "vectorised", "cuda"):
        raise _Bad(f"unknown backend {str(arch['backend'])[:40]!r}")
    _check_names(arch, len(layers) - 2)
    _int(header["n_epochs"], "n_epochs")
    hist = header["history"]
    if not isinstance(hist, dict) or not all(
            isinstance(k, str) and isinstance(v, list)
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            for k, v in hist.items()):
        raise _Bad("history must map names to lists of numbers")
    rng = header["rng"]
    if not isinstance(rng, dict) or rng.get("bit_generator") not in _BIT_GENERATORS:
        raise _Bad("rng names no known bit generator "
                         f"({str(rng.get('bit_generator') if isinstance(rng, dict) else rng)[:40]!r}; "
                         f"known: {', '.join(_BIT_GENERATORS)})")
    for key in ("classes", "fit", "checkpoint", "optimizer", "scalers", "columns"):
        if header.get(key) is not None and not isinstance(header[key], dict):
            raise _Bad(f"header entry {key!r} must be an object or null")
    entry = header.get("classes")
    if entry is not None and entry.get("object") and "values" in entry:
        vals = entry["values"]
        if not isinstance(vals, list) or not all(
                isinstance(v, (int, float, str, bool)) for v in vals):
            raise _Bad("classes.values must list numbers or strings")
    return layers, np.dtype(arch["dtype"])


def _check_names(arch, n_hidden):
    """The architecture's names against nnjit's tables (what MLP(...) would refuse)."""
    from . import activations as A
    act = arch["activation"]
    hidden = [act] * n_hidden if isinstance(act, str) else act
    if not isinstance(hidden, list) or len(hidden) != n_hidden or any(h not in A.HIDDEN for h in hidden):
        raise _Bad(f"architecture.activation {str(act)[:60]!r} is not {n_hidden} hidden "
                   f"activation name(s) of {A.HIDDEN}")
    if arch["output"] not in A.OUTPUT:
        raise _Bad(f"unknown output activation {str(arch['output'])[:40]!r}")
    if arch["loss"] not in A.LOSSES or arch["output"] not in A.LOSS_BY_CODE[A.LOSSES[arch["loss"]]].outputs:
        raise _Bad(f"loss {str(arch['loss'])[:40]!r} with output {arch['output']!r}")
    if arch["init"] not in ("normal", "xavier", "he"):
        raise _Bad(f"unknown init {str(arch['init'])[:40]!r}")
    scale = arch["init_scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale < math.inf):
        raise _Bad(f"architecture.init_scale must be a positive number, got {str(scale)[:40]!r}")
    seed = arch["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise _Bad(f"architecture.seed must be a non-negative integer or null, got {str(seed)[:40]!r}")


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


def _read_member(zf, name, max_bytes, want=None):
    """The array in zip member ``name``.npy, read in bounded pieces. Its .npy header is read
    first and checked (dtype kind, ``want`` = (dtype, shape) or a size cap) against what the
    architecture allows, and the member's declared size must match it exactly, before
    anything the size of the data is allocated or decompressed."""
    info = zf.getinfo(name + ".npy")
    if info.file_size > max_bytes + _NPY_HEADER_MAX:
        raise _Bad(f"member {name!r} declares {info.file_size} bytes, more than its "
                         f"architecture allows ({max_bytes})")
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
            if name == "classes":
                arrays[name] = _read_member(zf, name, 8 * 1024 * max(2, layers[-1]))
                if arrays[name].ndim != 1 or arrays[name].shape[0] > max(2, layers[-1]):
                    raise _Bad(f"classes has shape {arrays[name].shape}")
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
    except _TooNew as e:
        raise ModelFileError(f"{path!r}: {e}") from None
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
    """([W^(l)], [b^(l)]) of one prefix ("", "v", "s"), each of the architecture's shape."""
    Ws, bs = [], []
    for l in range(1, len(layers)):
        for name, want, out in ((f"{prefix}W{l}", (layers[l], layers[l - 1]), Ws),
                                (f"{prefix}b{l}", (layers[l],), bs)):
            if name not in arrays:
                raise ModelFileError(f"{path!r} lacks the array {name!r}")
            a = arrays[name]
            if a.shape != want or a.dtype != dtype:
                raise ModelFileError(f"{path!r}: array {name!r} is {a.dtype}{a.shape}, the "
                                     f"architecture needs {dtype}{want}")
            out.append(a)
    return Ws, bs


def _classes_from(header, arrays, path, arch):
    """classes_ as saved: exact values, sorted and unique (labels are found by binary search)."""
    entry = header.get("classes")
    if entry is None:
        return None
    if entry.get("object") and "values" in entry:
        c = np.empty(len(entry["values"]), dtype=object)
        c[:] = entry["values"]
    elif "classes" not in arrays:
        raise ModelFileError(f"{path!r} lacks the array 'classes'")
    else:
        c = arrays["classes"]
        if entry.get("object"):         # files written before labels moved to the header
            c = np.array(c.tolist(), dtype=object)
    limit = arch["layers"][-1] if arch["output"] == "softmax" else 2
    try:
        ok = 0 < len(c) <= limit and (len(c) == 1 or bool(np.all(c[1:] > c[:-1])))
    except TypeError:
        ok = False
    if not ok:
        raise ModelFileError(f"{path!r} has malformed classes (they must be 1 to {limit} sorted, "
                             "distinct labels of one kind)")
    return c


def _scalers_from(header, arrays, path, layers):
    from .preprocessing import KINDS, Scaler, check_fitted
    scalers = header.get("scalers") or {}     # absent in files written before scalers existed
    if not isinstance(scalers, dict):
        raise ModelFileError(f"{path!r} has a malformed 'scalers' entry")
    out = {}
    for which in ("x", "y"):
        kind = scalers.get(which)
        if kind is None:
            out[which] = None
            continue
        names = (f"{which}_offset", f"{which}_scale")
        if kind not in KINDS or any(n not in arrays for n in names):
            raise ModelFileError(f"{path!r} has a malformed {which} scaler ({kind!r})")
        offset, scale = (arrays[n] for n in names)
        n_cols = layers[0] if which == "x" else layers[-1]
        if (offset.shape != (n_cols,) or scale.shape != (n_cols,) or offset.dtype.kind != "f"
                or scale.dtype.kind != "f" or not (np.isfinite(offset).all() and np.isfinite(scale).all())
                or (scale == 0).any()):
            raise ModelFileError(f"{path!r}: the {which} scaler's arrays are not {n_cols} finite "
                                 "numbers with non-zero scales")
        wrong = check_fitted(offset, scale)     # what Scaler.fit can produce, nothing else
        if wrong:
            raise ModelFileError(f"{path!r}: header field 'scalers.{which}' (arrays "
                                 f"{which}_offset, {which}_scale): {wrong}")
        sc = Scaler(kind)
        sc.offset_, sc.scale_ = offset.astype(np.float64), scale.astype(np.float64)
        out[which] = sc
    return out


#: the longest column name a model file may hold (a header's names, not data)
MAX_COLUMN_NAME = 1024


def _columns_from(header, path, n_features):
    """(feature names, target name) of the header's "columns" entry, checked: a list of
    exactly n_features distinct strings, a target name that is none of them (or null)."""
    entry = header.get("columns")
    if entry is None:
        return None, None
    feats = entry.get("features") if isinstance(entry, dict) else None
    target = entry.get("target") if isinstance(entry, dict) else None

    def name(v):
        return isinstance(v, str) and 0 < len(v) <= MAX_COLUMN_NAME
    if (not isinstance(feats, list) or len(feats) != n_features or not all(map(name, feats))
            or len(set(feats)) != len(feats)):
        raise ModelFileError(f"{path!r}: header field 'columns.features' must list the "
                             f"{n_features} distinct input column names (strings of at most "
                             f"{MAX_COLUMN_NAME} characters)")
    if target is not None and (not name(target) or target in feats):
        raise ModelFileError(f"{path!r}: header field 'columns.target' must be null or a column "
                             "name that is not a feature's")
    return feats, target


def state_from(header, arrays, path):
    """(an MLP.state_dict(), the shuffling generator) of a read file."""
    arch = dict(header["architecture"])
    layers, dtype = arch["layers"], np.dtype(arch["dtype"])
    params = _layers_from(arrays, "", layers, dtype, path)
    vel = _layers_from(arrays, "v", layers, dtype, path)
    if header["version"] >= 2:
        sq = _layers_from(arrays, "s", layers, dtype, path)
        opt = header.get("optimizer")
        if not isinstance(opt, dict):
            raise ModelFileError(f"{path!r} lacks the header entry 'optimizer'")
    else:                       # version 1: momentum only
        sq, opt = ([np.zeros_like(W) for W in vel[0]], [np.zeros_like(b) for b in vel[1]]), {}
    scalers = _scalers_from(header, arrays, path, layers)
    feature_names, target_name = _columns_from(header, path, layers[0])
    try:
        state = header["rng"]
        bitgen = _BIT_GENERATORS[state["bit_generator"]]()     # an allow-list, never getattr
        bitgen.state = state
        st = {"architecture": arch, "params": params, "velocity": vel, "square": sq,
              "step": int(opt.get("step", 0)), "classes": _classes_from(header, arrays, path, arch),
              "x_scaler": scalers["x"], "y_scaler": scalers["y"],
              "feature_names": feature_names, "target_name": target_name,
              "history": {k: list(vs) for k, vs in header["history"].items()},
              "n_epochs": int(header["n_epochs"]), "t": int(opt.get("t", 0)),
              "lr": None if opt.get("lr") is None else float(opt["lr"]),
              "best": (opt.get("best_epoch"), opt.get("best_loss"), opt.get("best_score"))}
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as e:
        raise ModelFileError(f"{path!r} has a malformed training state ({e})") from e
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
           "columns": header.get("columns")}
    return out


# ---------------------------------------------------------------- checkpoints
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
        settings["data_crc32"] = crc32(X, Y)
        self.settings = {k: _plain(v) for k, v in settings.items()}

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
                and not (k.endswith("crc32") and None in (old.get(k), self.settings[k]))
                and not (k not in old and header["version"] < 2)]
        if diff:
            raise ValueError(f"cannot resume from {self.path!r}: it was written by a fit with other "
                             + ", ".join(f"{k} ({old.get(k)!r} there, {self.settings[k]!r} here)"
                                         for k in diff)
                             + "; resuming continues that run exactly, so these must match")
        st, rng = state_from(header, arrays, self.path)
        net.load_state_dict(st, rng)
        self.best_theta = arrays.get("best_theta")
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
