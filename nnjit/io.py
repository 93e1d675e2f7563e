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
===============  ======================  ==================================================

The JSON header: ``format`` ("nnjit-mlp"), ``version`` (2), ``nnjit_version``, ``architecture``
(the ``MLP(...)`` arguments: layers, activation, output, loss, init, init_scale, backend, dtype,
seed), ``n_epochs``, ``history`` (the ``history_`` lists), ``rng`` (the shuffling generator's
``bit_generator.state``, so the next epoch's order is the one the original would have drawn),
``classes`` (null, or how the ``classes`` array is to be read back), ``fit`` (optional, the
hyperparameters of the training run, for ``nnjit info``), ``checkpoint`` (only in checkpoints:
the state of the interrupted ``fit`` call) and ``sha256``, a digest of every other array (name,
dtype, shape and bytes) that catches corruption the zip CRCs would miss. Version 2 adds the
arrays ``sW*``/``sb*`` and the header entry ``optimizer``: ``{"step": Adam's t, "t": t_,
"lr": lr_, "best_epoch", "best_loss", "best_score"}``. Version-1 files (no ``sW``/``sb``, no
``optimizer``) still load, with zero second moments and step 0.

Writes are atomic: the archive goes to a temporary file in the target's directory, is flushed
and fsync'ed, then ``os.replace``'d over the target, so a crash or Ctrl-C during a save leaves
the previous file intact. The path is used exactly as given (no ``.npz`` is appended).
"""
import hashlib
import json
import math
import numbers
import os
import stat
import tempfile
import zipfile
import zlib

import numpy as np

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


def _classes_arrays(classes):
    """(header entry, arrays) for classes_; numbers and strings only, never object arrays."""
    if classes is None:
        return None, {}
    c = np.asarray(classes)
    obj = c.dtype == object
    if obj:
        vals = c.tolist()
        if all(isinstance(v, str) for v in vals):
            c = np.array(vals, dtype=str)
        elif all(isinstance(v, (bool, int, float, np.number)) for v in vals):
            c = np.array(vals)
        else:
            raise TypeError("cannot save classes_ holding objects other than str or numbers: "
                            f"{sorted({type(v).__name__ for v in vals})}")
    if c.dtype.kind not in "biufUS" or c.ndim != 1:
        raise TypeError(f"cannot save classes_ of dtype {c.dtype} and shape {c.shape}")
    return {"object": bool(obj)}, {"classes": c}


def _plain(v):
    """A JSON-able Python scalar for numpy scalars too."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    return v


def _seed(seed):
    if seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
        return None if seed is None else int(seed)
    return None     # a Generator/SeedSequence seed: the saved rng state carries it


def _state(net, fit=None, checkpoint=None, best_theta=None):
    """(header dict, arrays dict) describing net completely."""
    L = len(net.layers) - 1
    Ws, bs = net._split(net._engine.get_params())
    opt = net._engine.get_state()
    vWs, vbs = net._split(opt["vel"])
    sWs, sbs = net._split(opt["sq"])
    arrays = {}
    for l in range(1, L + 1):
        arrays[f"W{l}"], arrays[f"b{l}"] = Ws[l - 1], bs[l - 1]
        arrays[f"vW{l}"], arrays[f"vb{l}"] = vWs[l - 1], vbs[l - 1]
        arrays[f"sW{l}"], arrays[f"sb{l}"] = sWs[l - 1], sbs[l - 1]
    if best_theta is not None:
        arrays["best_theta"] = np.asarray(best_theta)
    cls_entry, cls_arrays = _classes_arrays(net.classes_)
    arrays.update(cls_arrays)
    arch = {k: getattr(net, k) for k in _ARCH}
    arch["seed"] = _seed(arch["seed"])
    from . import __version__
    header = {"format": FORMAT, "version": VERSION, "nnjit_version": __version__,
              "architecture": arch, "n_epochs": int(net.n_epochs_),
              "history": {k: [_plain(v) for v in vs] for k, vs in net.history_.items()},
              "rng": net._rng.bit_generator.state, "classes": cls_entry,
              "fit": fit, "checkpoint": checkpoint, "sha256": _digest(arrays),
              "optimizer": {"step": int(opt["step"]), "t": int(net.t_),
                            "lr": None if net.lr_ is None else float(net.lr_),
                            "best_epoch": net.best_epoch_,
                            "best_loss": None if net.best_loss_ is None else float(net.best_loss_),
                            "best_score": None if net.best_score_ is None else float(net.best_score_)}}
    return header, arrays


def _atomic_savez(path, arrays):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
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


def save(net, path, fit=None, checkpoint=None, best_theta=None):
    """Write net to path atomically in the format above. ``fit``: optional JSON-able dict of
    training hyperparameters to record; ``checkpoint``: the fit state (used by MLP.fit)."""
    header, arrays = _state(net, fit, checkpoint, best_theta)
    text = json.dumps(header, allow_nan=False, sort_keys=True)
    arrays["header"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    _atomic_savez(path, arrays)


# ---------------------------------------------------------------- reading
def read(path):
    """(header, arrays) of an nnjit file, checked; raises ModelFileError for anything else."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path!r}")
    if os.path.isdir(path):
        raise ModelFileError(f"{path!r} is a directory, not an nnjit model file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        what = "it is empty" if not magic else "it is not a NumPy .npz archive"
        raise ModelFileError(f"{path!r} is not an nnjit model file: {what}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "header" not in z.files:
                raise ModelFileError(f"{path!r} is a .npz archive but not an nnjit model file "
                                     "(it has no 'header' array)")
            arrays = {name: z[name] for name in z.files}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as e:
        raise ModelFileError(f"{path!r} is truncated or corrupted ({type(e).__name__}: {e})") from e
    raw = arrays.pop("header")
    try:
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError("header is not a byte string")
        header = json.loads(raw.tobytes().decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except ValueError as e:
        raise ModelFileError(f"{path!r} has a corrupted header ({e})") from e
    if header.get("format") != FORMAT:
        raise ModelFileError(f"{path!r} is not an nnjit model file (format {header.get('format')!r})")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{path!r} has an invalid format version {version!r}")
    if version > VERSION:
        raise ModelFileError(f"{path!r} uses format version {version}, written by a newer nnjit "
                             f"({header.get('nnjit_version')}); this nnjit reads version {VERSION}")
    if header.get("sha256") != _digest(arrays):
        raise ModelFileError(f"{path!r} is corrupted: its arrays do not match the checksum "
                             "recorded when it was written")
    for key in ("architecture", "n_epochs", "history", "rng"):
        if key not in header:
            raise ModelFileError(f"{path!r} lacks the header entry {key!r}")
    return header, arrays


def _params_from(net, arrays, prefix, path):
    L = len(net.layers) - 1
    Ws, bs = [], []
    for l in range(1, L + 1):
        for name, want, out in ((f"{prefix}W{l}", (net.layers[l], net.layers[l - 1]), Ws),
                                (f"{prefix}b{l}", (net.layers[l],), bs)):
            if name not in arrays:
                raise ModelFileError(f"{path!r} lacks the array {name!r}")
            a = arrays[name]
            if a.shape != want or a.dtype != np.dtype(net.dtype):
                raise ModelFileError(f"{path!r}: array {name!r} is {a.dtype}{a.shape}, the "
                                     f"architecture needs {net.dtype}{want}")
            out.append(a)
    return net._join(Ws, bs)


def _apply(net, header, arrays, path):
    """Set every piece of learned and training state of net from a read file."""
    net._engine.set_params(_params_from(net, arrays, "", path))
    vel = _params_from(net, arrays, "v", path)
    if header["version"] >= 2:
        sq = _params_from(net, arrays, "s", path)
        opt = header.get("optimizer")
        if not isinstance(opt, dict):
            raise ModelFileError(f"{path!r} lacks the header entry 'optimizer'")
    else:                       # version 1: momentum only
        sq, opt = np.zeros_like(vel), {}
    try:
        net._engine.set_state({"vel": vel, "sq": sq, "step": int(opt.get("step", 0))})
        net.t_ = int(opt.get("t", 0))
        net.lr_ = None if opt.get("lr") is None else float(opt["lr"])
        net.best_epoch_ = opt.get("best_epoch")
        net.best_loss_ = opt.get("best_loss")
        net.best_score_ = opt.get("best_score")
        state = header["rng"]
        bitgen = getattr(np.random, state["bit_generator"])()
        bitgen.state = state
        net._rng = np.random.Generator(bitgen)
        net.n_epochs_ = int(header["n_epochs"])
        net.history_ = {k: list(vs) for k, vs in header["history"].items()}
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path!r} has a malformed training state ({e})") from e
    entry = header.get("classes")
    if entry is None:
        net.classes_ = None
    else:
        if "classes" not in arrays:
            raise ModelFileError(f"{path!r} lacks the array 'classes'")
        c = arrays["classes"]
        net.classes_ = np.array(c.tolist(), dtype=object) if entry.get("object") else c


def load(path, backend=None):
    """The MLP stored at path. ``backend`` overrides the stored one (e.g. load a model trained
    with "cuda" on a machine without a GPU); predictions are bit-identical on the same backend."""
    from .model import MLP
    header, arrays = read(path)
    arch = dict(header["architecture"])
    if set(arch) != set(_ARCH):
        raise ModelFileError(f"{path!r} has a malformed architecture entry: {sorted(arch)}")
    if backend is not None:
        arch["backend"] = backend
    net = MLP(**arch)
    _apply(net, header, arrays, path)
    return net


def info(path):
    """A summary dict of the file at path (header facts and parameter count), for ``nnjit info``."""
    header, arrays = read(path)
    arch = header["architecture"]
    layers = arch["layers"]
    n_params = sum(layers[l] * layers[l - 1] + layers[l] for l in range(1, len(layers)))
    hist = header["history"]
    out = {"file": os.fspath(path), "format_version": header["version"],
           "nnjit_version": header.get("nnjit_version"), "architecture": arch,
           "n_params": int(n_params), "n_epochs": header["n_epochs"],
           "final_loss": hist.get("loss", [None])[-1] if hist.get("loss") else None,
           "final_val_loss": hist.get("val_loss", [None])[-1] if hist.get("val_loss") else None,
           "final_val_score": hist.get("val_score", [None])[-1] if hist.get("val_score") else None,
           "classes": arrays["classes"].tolist() if "classes" in arrays else None,
           "fit": header.get("fit"), "checkpoint": header.get("checkpoint")}
    return out


# ---------------------------------------------------------------- checkpoints
def _data_crc(*arrays):
    crc = 0
    for a in arrays:
        if not isinstance(a, np.ndarray):
            return None         # e.g. streamed data: not fingerprinted
        crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1), crc)
    return crc


class Checkpoint:
    """The checkpoint and resume bookkeeping of one ``MLP.fit`` call.

    The checkpoint records the fit's settings, where it started (``start_epoch``), the early
    stopping counters and whether a stopping criterion ended it. Resuming requires the same data
    and settings (else the continuation could not equal an uninterrupted run) and trains until
    ``n_epochs_`` reaches ``start_epoch + epochs``, or not at all if the fit had stopped early.
    """

    def __init__(self, net, path, every, X, Y, epochs, lr, **settings):
        from .model import _check_positive_int
        if path is None:
            raise ValueError("resume=True needs checkpoint='path' to resume from")
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a file path, got {type(path).__name__}")
        self.net, self.path = net, os.fspath(path)
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):       # fail now, not after the first epoch's work
            raise FileNotFoundError(f"the checkpoint's directory {folder!r} does not exist")
        self.every = _check_positive_int("checkpoint_every", every)
        self.epochs = epochs
        self.start_epoch = net.n_epochs_
        settings["lr"] = None if callable(lr) else float(lr)
        settings = {k: (v if not isinstance(v, dict) else {a: _plain(b) for a, b in v.items()})
                    for k, v in settings.items()}
        settings["n_samples"] = int(X.shape[0])
        settings["data_crc32"] = _data_crc(X, Y)
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
        mine = {k: getattr(net, k) for k in _ARCH if k not in ("backend", "seed")}
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
        _apply(net, header, arrays, self.path)
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
