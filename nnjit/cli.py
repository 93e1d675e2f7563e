"""The ``nnjit`` command line.

  nnjit train   --data digits|file.csv|file.npz [--save model.npz] [--plot loss.png]
  nnjit predict --model model.npz --data file.csv|file.npz [--out predictions.csv]
  nnjit info    model.npz
  nnjit bench   [options]

``nnjit train`` works on the data people have: features are standardised (fitted on the
training split, saved in the model and applied again by ``nnjit predict``), the task is
detected from the target column and said, training stops early on a validation split and
keeps the best epoch's weights. A test or validation split too small to mean anything (under
MIN_SPLIT samples, or 2 per class) is not held out but trained on, with a warning. Every
error (missing or malformed files, bad options, divergence) prints one line and exits with
status 2; Ctrl-C exits with 130.
"""
import argparse
import csv
import json
import math
import os
import sys
import threading
import time
import zipfile

import numpy as np

from . import activations as A
from . import rules as R

#: Seconds the first run spends compiling the loops kernels on the project's 2-core machine
#: (35 s for `nnjit train` with a fresh NUMBA_CACHE_DIR, see the README); quoted in the compile
#: notice.
COMPILE_SECONDS = 35

#: Integer targets are class labels when they take at most this many distinct values ...
MAX_CLASSES = 50
#: ... with at least this many samples per value on average; otherwise a regression.
MIN_PER_CLASS = 5
#: A held-out split needs at least this many samples (and, for classification, 2 per class)
#: to mean anything: below it one sample moves an accuracy by 10 points or more, an R^2 of one
#: sample is undefined, and early stopping picks the epoch that fits a handful of samples
#: best. A smaller split is not held out: its samples are trained on, and `nnjit train` says so.
MIN_SPLIT = 10

_MISSING = {"", "nan", "na", "n/a", "null", "none", "?", "-"}


class CLIError(ValueError):
    """A user error the CLI reports as one line, exit status 2."""


# ---------------------------------------------------------------- reading data
def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise CLIError("nnjit train --data digits needs scikit-learn (it ships the dataset): "
                       "pip install 'nnjit[train]'")
    d = load_digits()
    return d.data, d.target, None


def _check_file(path, what):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such {what} file: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory, not a {what} file")


def _labels(col):
    """A label column as numbers when every entry is one (integers when integral), else str."""
    try:
        y = np.array([float(v) for v in col])
    except ValueError:
        return np.array([v.strip() for v in col])
    if not np.isfinite(y).all():
        return y        # refused by the caller with the row named
    return y.astype(np.int64) if (y == np.round(y)).all() and np.abs(y).max() < 2**53 else y


def _number(cell):
    try:
        return float(cell)
    except ValueError:
        return None


def _sniff_binary(path):
    with open(path, "rb") as f:
        head = f.read(8192)
    if head.startswith(b"\x93NUMPY"):
        kind = "a NumPy .npy file"
    elif head.startswith(b"PK\x03\x04"):
        kind = "a zip archive (a .npz?)"
    elif b"\0" in head:
        kind = "a binary file"
    else:
        return
    raise CLIError(f"{path!r} is {kind}, not CSV text; a CSV holds one sample per line, "
                   "values separated by commas")


def _delimiter_hint(path, first_line, delimiter):
    for d, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
        if d != delimiter and delimiter not in first_line and d in first_line:
            flag = "'\\t'" if d == "\t" else f"'{d}'"
            raise CLIError(f"{path!r} looks {name}-separated (line 1 has no {delimiter!r} but "
                           f"{first_line.count(d)} {d!r}); pass --delimiter {flag}")


def _is_column_numbers(cells):
    """True for a row like 0,1,2,... or 1,2,3,... (3 columns or more): a header of column
    numbers, or data?"""
    v = [_number(c) for c in cells]
    if len(v) < 3 or any(x is None or x != int(x) for x in v):
        return False
    v = [int(x) for x in v]
    return v == list(range(v[0], v[0] + len(v))) and v[0] in (0, 1)


def _has_header(path, rows, feats, t, header):
    """Whether line 1 is a header: as told by --header/--no-header, else guessed from the
    feature cells of line 1 (all text: header; all numbers: data), refusing ambiguous guesses."""
    if header is not None:
        return header
    first = rows[0]
    text = [i for i in feats if _number(first[i]) is None and first[i].strip().lower() not in _MISSING]
    if len(text) == len(feats):
        return True
    if text:
        i = text[0]
        raise CLIError(f"{path!r} line 1 mixes text and numbers (column {i + 1}: {first[i]!r}): "
                       "pass --header if line 1 names the columns, else fix that cell")
    if t is not None and _number(first[t]) is None and len(rows) > 1 and \
            all(_number(r[t]) is not None for r in rows[1:100] if len(r) > t):
        return True         # numbered feature columns with a named target column
    if len(rows) > 1 and _is_column_numbers([first[i] for i in feats]):
        raise CLIError(f"{path!r} line 1 is the numbers {first[feats[0]].strip()}.."
                       f"{first[feats[-1]].strip()}: a header of column numbers or a data row? "
                       "pass --header or --no-header")
    if t is not None and len(rows) > 2 * MIN_PER_CLASS:
        # a numeric header over class labels would add a class of one sample: line 1's label
        others = {_number(r[t]) for r in rows[1:] if len(r) > t}
        if None not in others and len(others) <= MAX_CLASSES and _number(first[t]) not in others \
                and all(v == int(v) for v in others):
            raise CLIError(f"{path!r} line 1's target {first[t].strip()!r} appears on no other "
                           f"line (the others hold {len(others)} labels): a header of numbers or "
                           "a data row? pass --header or --no-header")
    return False


def _by_name(path, first, columns):
    """(feature column indices, target index or None) of a header row matched to a model's
    (feature names, target name), or None when line 1 does not hold the feature names. A
    header naming some of them but not all, or naming other columns, is refused: by position
    such a file would feed a model the wrong columns (or its label as a feature)."""
    feature_names, target_name = columns
    cells = [c.strip() for c in first]
    found = [n for n in feature_names if n in cells]
    if not found:
        return None
    missing = [n for n in feature_names if n not in cells]
    extra = [c for c in cells if c not in feature_names and c != target_name]
    if missing or extra or len(set(cells)) != len(cells):
        what = "; ".join(f"{k} {', '.join(map(repr, v[:5]))}" + (f" and {len(v) - 5} more" if len(v) > 5 else "")
                         for k, v in (("missing", missing), ("not a training column", extra)) if v)
        raise CLIError(f"{path!r}: its header does not match the model's {len(feature_names)} "
                       f"training columns ({what or 'a repeated column name'}); the model "
                       "matches columns by name")
    return [cells.index(n) for n in feature_names], (cells.index(target_name)
                                                     if target_name in cells else None)


def _read_csv(path, target_column, n_features=None, header=None, delimiter=",", columns=None):
    """(X, y, (feature names, target name) or None) from a CSV file: numeric feature
    columns, the label in target_column (negative counts from the end; None: no label
    column). With n_features given, a file of exactly n_features columns has no label.
    columns: a model's (feature names, target name): a header holding them selects the
    columns by name, in the model's order."""
    _sniff_binary(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f, delimiter=delimiter) if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise CLIError(f"{path!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                       f"{e.start}); save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise CLIError(f"{path!r} is not readable as CSV ({e})") from None
    if not rows:
        raise CLIError(f"{path!r} is empty")
    width = len(rows[0])
    if width == 1:
        with open(path, encoding="utf-8-sig") as f:
            _delimiter_hint(path, f.readline(), delimiter)
    if n_features is not None and width == n_features:
        target_column = None
    if target_column is not None and not -width <= target_column < width:
        raise CLIError(f"--target-column {target_column} is outside the {width} columns of {path!r}")
    t = None if target_column is None else target_column % width
    feats = [i for i in range(width) if i != t]
    if not feats:
        raise CLIError(f"{path!r} has one column: no features besides the target")
    named = _by_name(path, rows[0], columns) if columns and header is not False else None
    if named:
        feats, t = named
        start = 1
    else:
        start = 1 if _has_header(path, rows, feats, t, header) else 0
    names = [c.strip() for c in rows[0]] if start else None
    if len(rows) <= start:
        raise CLIError(f"{path!r} has a header but no data rows")
    X = np.empty((len(rows) - start, len(feats)))
    for n, r in enumerate(rows[start:]):
        line = n + start + 1
        if len(r) != width:
            raise CLIError(f"{path!r} line {line} has {len(r)} columns; line 1 has {width}")
        try:
            X[n] = [float(r[i]) for i in feats]
        except ValueError:
            pass
        else:
            if np.isfinite(X[n]).all():
                continue
        for j, i in enumerate(feats):       # the slow path: name the cell
            col = f"column {i + 1}" + (f" ({names[i]!r})" if names else "")
            v = _number(r[i])
            if r[i].strip().lower() in _MISSING or (v is not None and math.isnan(v)):
                raise CLIError(f"{path!r} line {line}, {col}: missing value {r[i]!r}; fill or "
                               "drop it (features must be finite numbers)")
            if v is None:
                raise CLIError(f"{path!r} line {line}, {col}: {r[i]!r} is not a number "
                               "(features must be numeric)")
            if not math.isfinite(v):
                raise CLIError(f"{path!r} line {line}, {col}: {r[i]!r} is not finite")
    y = None
    if t is not None:
        y = _labels([r[t] for r in rows[start:]])
        bad = [n for n, r in enumerate(rows[start:]) if r[t].strip().lower() in _MISSING
               or (y.dtype.kind == "f" and not np.isfinite(y[n]))]
        if bad:
            n = bad[0]
            raise CLIError(f"{path!r} line {n + start + 1}, column {t + 1} (the target): missing "
                           f"value {rows[start + n][t]!r} ({len(bad)} rows like it); fill or drop them")
    return X, y, (names and ([names[i] for i in feats], None if t is None else names[t]))


def _read_npz(path):
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise CLIError(f"{path!r} is a .npy file (one array), not a .npz archive; write the data "
                       "with np.savez(path, X=X, y=y)")
    if magic[:4] != b"PK\x03\x04":
        raise CLIError(f"{path!r} is not a readable .npz file (it is not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z.files:
                raise CLIError(f"{path!r} has no array 'X' (it has {', '.join(z.files) or 'none'}); "
                               "a data .npz holds X (samples, features) and optionally y")
            X, y = z["X"], (z["y"] if "y" in z.files else None)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise CLIError(f"{path!r} is not a readable .npz file ({e})") from None
    except ValueError as e:
        if isinstance(e, CLIError):
            raise
        raise CLIError(f"{path!r} holds an array nnjit cannot read without pickle ({e})") from None
    if X.dtype.kind not in "biuf":
        raise CLIError(f"{path!r}: X must hold numbers, got dtype {X.dtype}")
    X = X.astype(np.float64, copy=False)
    if X.ndim == 2 and not np.isfinite(X).all():
        m, j = np.argwhere(~np.isfinite(X))[0]
        raise CLIError(f"{path!r}: X[{m}, {j}] is {X[m, j]} ({int((~np.isfinite(X)).sum())} "
                       "non-finite values); fill or drop them")
    return X, y, None


def load_data(name, target_column=-1, n_features=None, header=None, delimiter=","):
    """(X, y) from "digits", a .csv file or a .npz file (arrays X and y); y may be None."""
    return _load(name, target_column, n_features, header, delimiter)[:2]


def _load(name, target_column=-1, n_features=None, header=None, delimiter=",", columns=None):
    if name == "digits":
        X, y, names = _load_digits()
    else:
        _check_file(name, "data")
        ext = os.path.splitext(name)[1].lower()
        if ext == ".csv":
            X, y, names = _read_csv(name, target_column, n_features, header, delimiter, columns)
        elif ext == ".npz":
            X, y, names = _read_npz(name)
        else:
            raise CLIError(f"unsupported data file {name!r}: use 'digits', a .csv or a .npz file")
    if X.ndim != 2 or X.shape[0] == 0:
        raise CLIError(f"{name!r}: X must be a non-empty 2-D (samples, features) array, got shape {X.shape}")
    if y is not None and len(y) != len(X):
        raise CLIError(f"{name!r}: X has {len(X)} samples but y has {len(y)}")
    return X, y, names


# ---------------------------------------------------------------- deciding
def detect_task(y, task="auto"):
    """(regression?, the reason in words) for a target column y."""
    if task != "auto":
        return task == "regression", "as asked by --task"
    if y.ndim == 2:
        return True, f"the target has {y.shape[1]} columns"
    if y.dtype.kind in "USO":
        return False, "the target holds text labels"
    if y.dtype.kind == "b":
        return False, "the target is boolean"
    if y.dtype.kind == "f" and not (y == np.round(y)).all():
        return True, "the target has non-integer values"
    k = len(np.unique(y))
    per = len(y) / k
    rule = f"classes need <= {MAX_CLASSES} values with >= {MIN_PER_CLASS} samples each on average"
    if k <= 2 or (k <= MAX_CLASSES and per >= MIN_PER_CLASS):
        return False, f"the target has {k} distinct integer values, {per:.0f} samples each on average"
    return True, f"the target has {k} distinct integer values, {per:.1f} samples each ({rule})"


def split_indices(n, fraction, rng):
    """(kept indices, held-out indices): a random `fraction` of range(n) held out."""
    idx = rng.permutation(n)
    k = int(round(n * fraction)) if fraction > 0 else 0
    if fraction > 0:
        k = min(max(1, k), n - 1)
    return np.sort(idx[k:]), np.sort(idx[:k])


def split_needs(n_classes=None):
    """The samples a held-out split needs to mean anything (see MIN_SPLIT); n_classes None:
    a regression."""
    return MIN_SPLIT if n_classes is None else max(MIN_SPLIT, 2 * n_classes)


def _small_splits(n_test, n_val, need, n_train, epochs):
    """The one warning line for test / validation splits too small to hold out (their sizes,
    0: not small), or None."""
    if n_test and n_val:
        return (f"test and validation splits of {n_test} and {n_val} samples are too small to "
                f"score or stop early on (they need at least {need}): training all {epochs} "
                f"epochs on all {n_train} samples, with no test score")
    if n_test:
        return (f"a test split of {_samples(n_test)} is too small to score (it needs at least "
                f"{need}): training on all {_samples(n_train)}, with no test score")
    if n_val:
        return (f"a validation split of {_samples(n_val)} is too small to stop early on (it "
                f"needs at least {need}): training all {epochs} epochs on all "
                f"{_samples(n_train)} of the training split")
    return None


def _samples(n):
    return f"{n} sample" + ("" if n == 1 else "s")


def _layers(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden wants sizes like 64,32, got {text!r}")
    if any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden wants positive sizes, got {text!r}")
    return sizes


def _fraction(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a number in [0, 1), got {text!r}")
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"wants a fraction in [0, 1) (0: none), got {text!r}")
    return v


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"wants a positive {kind.__name__}, got {text!r}")
        if not (v > 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"wants a positive {kind.__name__}, got {text!r}")
        return v
    parse.__name__ = kind.__name__
    return parse


def _delimiter(text):
    text = {"\\t": "\t", "tab": "\t"}.get(text, text)
    if len(text) != 1:
        raise argparse.ArgumentTypeError(f"wants one character (or 'tab'), got {text!r}")
    return text


def _check_outputs(args):
    """Fail now on paths that would only fail after training."""
    for opt, path in (("--save", args.save), ("--checkpoint", args.checkpoint)):
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise CLIError(f"{opt} {path!r} is a directory; give a file name like model.npz")
        if not os.path.isdir(folder):
            raise CLIError(f"{opt} {path!r}: the directory {os.path.dirname(path) or folder!r} "
                           "does not exist")
        if not os.access(folder, os.W_OK):
            raise CLIError(f"{opt} {path!r}: cannot write into {folder!r}")
    if args.resume and not args.checkpoint:
        raise CLIError("--resume needs --checkpoint CK.npz, the checkpoint to continue from")
    if args.plot:
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):
            raise CLIError(f"--plot {args.plot!r}: the directory does not exist")
        try:
            from matplotlib.backend_bases import FigureCanvasBase
        except ImportError:
            raise CLIError("--plot needs matplotlib: pip install 'nnjit[train]'") from None
        kinds = FigureCanvasBase.get_supported_filetypes()
        ext = os.path.splitext(args.plot)[1].lower().lstrip(".")
        if ext not in kinds:
            kind = ("." + ext) if ext else "(no extension)"
            raise CLIError(f"--plot {args.plot!r}: unknown image type {kind}; "
                           f"use one of {', '.join('.' + k for k in sorted(kinds))}")


# ---------------------------------------------------------------- compiling, progress
def _compile(make_net, X, Y, batch_size, backend, dtype, quiet):
    """Compile (or load from Numba's cache) the kernels a fit and a prediction need, on a
    tiny copy of the problem, saying so when it takes long: the first run compiles for about
    a minute, later runs load the cache in a fraction of a second. Returns seconds spent."""
    if backend == "vectorised":
        return 0.0
    done, failure = threading.Event(), []

    def work():
        try:
            net = make_net()
            # a full batch and a 1-sample remainder: the parallel and the serial variants
            n = min(len(X), batch_size + 1)
            net.fit(X[:n], Y[:n], epochs=1, batch_size=batch_size, validation_data=(X[:n], Y[:n]))
            net.predict(X[:n])
            net.predict(X[:1])
        except BaseException as e:      # noqa: BLE001 - re-raised in the main thread
            failure.append(e)
        finally:
            done.set()

    t = time.perf_counter()
    worker = threading.Thread(target=work, daemon=True, name="nnjit-compile")
    worker.start()
    said = False
    try:
        if not done.wait(1.0):
            said = True
            if not quiet:
                print(f"compiling the {backend} kernels for {dtype}, first run only — about "
                      f"{COMPILE_SECONDS} s on 2 cores (Numba caches them for later runs)", flush=True)
            while not done.wait(0.2):   # short waits: Ctrl-C is delivered between them
                pass
    except KeyboardInterrupt:
        # the compiling thread cannot be stopped, and interpreter shutdown would wait on
        # Numba's locks: leave at once (nothing is written before training starts)
        sys.stdout.flush()
        sys.stderr.write("\nnnjit train: interrupted while compiling; nothing was written\n")
        sys.stderr.flush()
        os._exit(130)
    dt = time.perf_counter() - t
    if failure:
        raise failure[0]
    if said and not quiet:
        print(f"compiled in {dt:.0f} s", flush=True)
    return dt


class _Progress:
    """The epoch bar as a fit callback: tqdm on a terminal, nothing when stderr is not one
    (logs stay clean). Created after compilation, so its ETA is the training's own."""

    def __init__(self, total, enabled):
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, desc="epochs (at most; stops early)", unit="epoch",
                            leave=False, dynamic_ncols=True)

    def __call__(self, net, epoch, history):
        if self.bar is not None:
            post = {"loss": f"{history['loss'][-1]:.4g}"}
            if history["val_loss"]:
                post["val_loss"] = f"{history['val_loss'][-1]:.4g}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- commands
def _rule_param(text):
    """NAME=VALUE of --rule-param: a number, numbers separated by commas, or a word."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if name not in R.PARAMS:
        raise argparse.ArgumentTypeError(f"unknown rule hyper-parameter {name!r}; the rules take "
                                         f"{', '.join(sorted(R.PARAMS))}")
    try:
        parts = [float(v) for v in value.split(",")]
        return name, parts[0] if len(parts) == 1 else tuple(parts)
    except ValueError:
        return name, value


def _rule(args):
    """The fit arguments of --optimizer, --momentum, --alpha and --rule-param."""
    if not 0 <= args.momentum < 1:
        raise CLIError(f"--momentum must be in [0, 1), got {args.momentum:g}")
    if not (args.alpha >= 0 and math.isfinite(args.alpha)):
        raise CLIError(f"--alpha must be 0 or more, got {args.alpha:g}")
    rule = {"optimizer": args.optimizer, "alpha": args.alpha}
    if "momentum" in R.BY_CODE[R.CODES[args.optimizer]].params:
        rule["momentum"] = args.momentum
    rule.update(dict(args.rule_param))
    R.check(**rule)         # every problem named before the data is read
    return rule


def cmd_train(args):
    from . import MLP, DivergenceError
    from . import io as nio
    from .preprocessing import make_scaler
    _check_outputs(args)
    _rule(args)
    if args.patience < 0:
        raise CLIError(f"--patience must be 0 (no early stopping) or more, got {args.patience}")
    X, y, names = _load(args.data, args.target_column, header=args.header, delimiter=args.delimiter)
    if y is None:
        raise CLIError(f"{args.data!r} has no targets: a .npz needs an array 'y'")
    regression, why = detect_task(y, args.task)
    other = "classification" if regression else "regression"
    if len(X) < 2:
        raise CLIError(f"{args.data!r} has {_samples(len(X))}: too few to train on")
    need = split_needs(None if regression else len(np.unique(y)))
    rng = np.random.default_rng(args.seed)
    train, test = split_indices(len(X), args.test_fraction, rng)
    small_test = len(test) if 0 < len(test) < need else 0
    if small_test:
        train, test = np.arange(len(X)), test[:0]
    fit_idx, val = split_indices(len(train), args.validation_fraction, rng)
    fit_idx, val = train[fit_idx], train[val]
    small_val = len(val) if args.patience and 0 < len(val) < need else 0
    if small_val:
        fit_idx, val = train, val[:0]
    warning = _small_splits(small_test, small_val, need, len(train), args.epochs)
    if len(fit_idx) < 2:
        raise CLIError(f"{args.data!r} has {_samples(len(X))}: too few to hold out a "
                       "validation split; lower --validation-fraction")
    if regression:
        if y.dtype.kind not in "biuf":
            raise CLIError(f"{args.data!r}: --task regression needs a numeric target, the target "
                           f"holds text like {str(y.flat[0])!r}")
        y = y.astype(np.float64)
        K, output = (1 if y.ndim == 1 else y.shape[1]), "identity"
    else:
        K = len(np.unique(y[train]))
        if K < 2:
            raise CLIError(f"{args.data!r}: classification needs at least 2 classes, the "
                           f"training labels hold {K}; for a numeric target use --task regression")
        unseen = np.setdiff1d(np.unique(y), np.unique(y[train]))
        if unseen.size:     # a class too rare to land in the training split
            keep = ~np.isin(y[test], unseen)
            print(f"note: {int((~keep).sum())} test samples of classes absent from the training "
                  f"split ({unseen[:5].tolist()}) are left out of the test score")
            test = test[keep]
        output = "softmax" if K > 2 else "sigmoid"
        K = K if K > 2 else 1
    layers = [X.shape[1]] + args.hidden + [K]

    def make_net():
        net = MLP(layers, activation=args.activation, output=output, backend=args.backend,
                  dtype=args.dtype, seed=args.seed)
        if not regression:      # every class, even one missing from a small warm-up subset
            net.classes_ = np.unique(y[train])
        net.x_scaler = make_scaler(args.scale)
        net.y_scaler = make_scaler("standard" if regression and args.scale != "none" else None)
        return net

    net = make_net()
    where = "digits" if args.data == "digits" else os.path.basename(args.data)
    task = "regression" if regression else f"classification into {len(np.unique(y[train]))} classes"
    print(f"{where}: {len(X)} samples, {X.shape[1]} features; {task} ({why}; "
          f"override with --task {other})")
    print(f"split: {len(fit_idx)} train / {len(val)} validation / {len(test)} test samples; "
          f"network {layers}, {args.activation}, features scaled: {args.scale}, "
          f"backend={args.backend}, dtype={args.dtype}")
    if warning:
        print(f"warning: {warning}")      # in the report, beside the split it changes
    compile_s = _compile(make_net, X[fit_idx], y[fit_idx], args.batch_size, args.backend,
                         args.dtype, args.quiet)

    early = bool(len(val) and args.patience)
    bar = _Progress(args.epochs, not args.quiet)
    t = time.perf_counter()
    try:
        net.fit(X[fit_idx], y[fit_idx], epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                **_rule(args), validation_data=(X[val], y[val]) if len(val) else None,
                tol=1e-4 if early else None, n_iter_no_change=max(1, args.patience),
                restore_best=early, callbacks=[bar], checkpoint=args.checkpoint,
                checkpoint_every=args.checkpoint_every, resume=args.resume)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted after {net.n_epochs_} epochs"
              + (f"; the checkpoint {args.checkpoint} holds them: rerun with --resume"
                 if args.checkpoint else ""), file=sys.stderr)
        return 130
    except DivergenceError as e:
        bar.close()
        raise CLIError(f"{str(e).split(';')[0]}; try a smaller --lr (now {args.lr:g})"
                       + (f" or --momentum (now {args.momentum:g})"
                          if "momentum" in _rule(args) and args.momentum else "")
                       + ("" if args.scale != "none" else " or --scale standard")) from None
    finally:
        bar.close()
    dt = time.perf_counter() - t
    if names:       # the header's names travel with the model: nnjit predict matches by them
        net.feature_names_in_, net.target_name_ = names
    stopped = net.n_epochs_ < args.epochs and not args.resume
    msg = (f"trained {net.n_epochs_} epochs in {dt:.2f} s"
           + (f" (+{compile_s:.1f} s compiling/loading kernels)" if compile_s >= 0.05 else ""))
    if stopped:
        msg += (f"; stopped early: the validation loss had not improved for {args.patience} epochs")
    print(msg)
    if early and net.best_epoch_ is not None:
        print(f"kept the weights of epoch {net.best_epoch_ + 1} (lowest validation loss "
              f"{net.best_loss_:.4g})")
    if len(test):
        print(f"test {'R^2' if regression else 'accuracy'}: {net.score(X[test], y[test]):.4f}")
    if args.save:
        nio.save(net, args.save, fit={"optimizer": args.optimizer, "lr": args.lr,
                                      "alpha": args.alpha, "momentum": args.momentum,
                                      "batch_size": args.batch_size, "epochs": args.epochs,
                                      "scale": args.scale, "patience": args.patience,
                                      "validation_fraction": args.validation_fraction,
                                      "data": args.data})
        print(f"saved the model to {args.save}")
    if args.plot:
        from .plot import save_loss_curve
        save_loss_curve(net, args.plot)
        print(f"saved the loss curve to {args.plot}")
    return 0


def cmd_predict(args):
    from .model import MLP
    net = MLP.load(args.model, backend=args.backend)
    columns = None if net.feature_names_in_ is None else (net.feature_names_in_, net.target_name_)
    X, y, _ = _load(args.data, args.target_column, n_features=net.layers[0], header=args.header,
                    delimiter=args.delimiter, columns=columns)
    if X.shape[1] != net.layers[0]:
        width = X.shape[1] + (y is not None)
        raise CLIError(f"{args.data!r} has {width} columns but the model takes {net.layers[0]} "
                       f"features: a file without a header must hold exactly those {net.layers[0]} "
                       f"columns, or {net.layers[0] + 1} with the label in --target-column")
    if args.proba:
        P = net.predict_proba(X)
        names = [f"proba_{c}" for c in (net.classes_ if net.classes_ is not None else range(P.shape[1]))]
    else:
        P = net.predict(X)
        names = ["prediction"] if P.ndim == 1 else [f"prediction_{k}" for k in range(P.shape[1])]
    P = P.reshape(len(X), -1)
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(names)
        w.writerows(P.tolist())
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"wrote {len(X)} predictions to {args.out}", file=sys.stderr)
    if y is not None:
        kind = "accuracy" if net.is_classifier else "R^2"
        try:
            print(f"{kind} against the file's targets: {net.score(X, y):.4f}", file=sys.stderr)
        except (ValueError, TypeError) as e:
            print(f"(not scored against the file's last column: {e})", file=sys.stderr)
    return 0


def _short(v, n=40):
    text = repr(v)
    return text if len(text) <= n else text[:n - 1] + "…"


def _summary(values, n=10):
    """A list as one short line: its first n items, each cut to 40 characters, and a count."""
    head = ", ".join(_short(v) for v in values[:n])
    return f"[{head}{', …' if len(values) > n else ''}] ({len(values)})"


def cmd_info(args):
    from . import io as nio
    info = nio.info(args.model)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    arch = info["architecture"]
    print(f"file:            {info['file']} (nnjit format version {info['format_version']}, "
          f"written by nnjit {info['nnjit_version']})")
    print(f"layers:          {' -> '.join(map(str, arch['layers']))}")
    print(f"activation:      {arch['activation']} (hidden), {arch['output']} (output), loss {arch['loss']}")
    print(f"init, seed:      {arch['init']}, {arch['seed']}")
    print(f"backend, dtype:  {arch['backend']}, {arch['dtype']}")
    print(f"parameters:      {info['n_params']}")
    print(f"epochs trained:  {info['n_epochs']}")
    for key, label in (("final_loss", "final loss"), ("final_val_loss", "final val loss"),
                       ("final_val_score", "final val score")):
        if info[key] is not None:
            print(f"{label + ':':<17}{info[key]:.6g}")
    if info["classes"] is not None:
        c = info["classes"]
        print(f"classes:         {_summary(c)}")
    if info.get("columns"):
        cols = info["columns"]
        print(f"columns:         {_summary(cols['features'])}"
              + (f"; target {_short(cols['target'])}" if cols.get("target") else ""))
    if info.get("scalers"):
        print("scaling:         " + ", ".join(f"{k} {v}" for k, v in sorted(info["scalers"].items())))
    if info["fit"]:
        print("training:        " + ", ".join(f"{k}={v}" for k, v in sorted(info["fit"].items())
                                             if k not in ("data_crc32",)))
    if info["checkpoint"]:
        ck = info["checkpoint"]
        print(f"checkpoint of:   fit(epochs={ck['epochs']}) started at epoch {ck['start_epoch']}"
              f"{', stopped early' if ck['stopped'] else ''}")
    return 0


# ---------------------------------------------------------------- parser, main
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring's layout kept, and every option's default shown (not for flags
    and options without a default, where "(default: None)" would say nothing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        store_false = action.nargs == 0 and action.const is False
        if (action.default in (None, False, argparse.SUPPRESS) or store_false
                or not action.option_strings or "%(default)" in text):
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `nnjit train: error: ...` and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_DATA_HELP = ("'digits' (scikit-learn's bundled 8x8 digits), a .csv file (numeric features, the "
              "label in --target-column, an optional header row) or a .npz file with arrays X "
              "(samples, features) and y")


def _csv_options(p):
    p.add_argument("--target-column", type=int, default=-1,
                   help="CSV column holding the target, 0-based; negative counts from the end")
    h = p.add_mutually_exclusive_group()
    h.add_argument("--header", dest="header", action="store_true", default=None,
                   help="line 1 of the CSV names the columns (default: guessed; an ambiguous "
                        "line 1 is refused)")
    h.add_argument("--no-header", dest="header", action="store_false",
                   help="line 1 of the CSV is data")
    p.add_argument("--delimiter", type=_delimiter, default=",",
                   help="CSV field separator, e.g. ';' or tab")


def build_parser():
    from . import __version__
    p = _Parser(prog="nnjit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-V", "--version", action="version", version=f"nnjit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p.subcommands = sub
    t = sub.add_parser("train", help="train an MLP on a dataset, report the test score, save it",
                       formatter_class=_Formatter,
                       description="Train an MLP on a dataset and report the held-out score. "
                                   "The defaults work on raw (unscaled) CSV files; see the "
                                   "README's table.")
    t.add_argument("--data", default="digits", help=_DATA_HELP)
    _csv_options(t)
    t.add_argument("--task", default="auto", choices=["auto", "classification", "regression"],
                   help="auto: regression for non-integer targets and for integer targets with "
                        f"more than {MAX_CLASSES} values or under {MIN_PER_CLASS} samples per value")
    t.add_argument("--scale", default="standard", choices=["standard", "minmax", "none"],
                   help="feature scaling, fitted on the training split and saved in the model "
                        "(regression targets are standardised too unless 'none')")
    t.add_argument("--hidden", type=_layers, default="64", help="hidden layer sizes, e.g. 64,32")
    t.add_argument("--activation", default="tanh", choices=A.HIDDEN, help="hidden f")
    t.add_argument("--epochs", type=_positive(int), default=300,
                   help="at most this many epochs (early stopping usually ends sooner)")
    t.add_argument("--optimizer", default="adam", choices=tuple(R.CODES),
                   help="update rule (README: Update rules); sgd is the lecture's, with momentum")
    t.add_argument("--rule-param", action="append", default=[], type=_rule_param,
                   metavar="NAME=VALUE",
                   help="another hyper-parameter of the update rule, e.g. rho=0.9 (RMSprop), "
                        "betas=0.9,0.99, eps=1e-6, weight_decay=0.01 (AdamW); repeatable")
    t.add_argument("--lr", type=_positive(float), default=0.001, help="learning rate eta")
    t.add_argument("--momentum", type=float, default=0.9, help="momentum mu of sgd/nesterov, in [0, 1)")
    t.add_argument("--alpha", type=float, default=1e-4,
                   help="L2 penalty on the weights (scikit-learn's alpha)")
    t.add_argument("--batch-size", type=_positive(int), default=32, help="samples per update")
    t.add_argument("--validation-fraction", type=_fraction, default=0.15,
                   help="of the training split, held out for early stopping (0: none; a "
                        f"split under {MIN_SPLIT} samples or 2 per class is trained on instead)")
    t.add_argument("--patience", type=int, default=10,
                   help="stop when the validation loss has not improved for this many epochs, "
                        "then keep the best epoch's weights (0: train all --epochs)")
    t.add_argument("--test-fraction", type=_fraction, default=0.25,
                   help="held out for the test score (0: train on everything; a split under "
                        f"{MIN_SPLIT} samples or 2 per class is trained on instead)")
    t.add_argument("--seed", type=int, default=0, help="seeds the splits, weights and shuffling")
    t.add_argument("--backend", default="loops", choices=["loops", "vectorised", "cuda"],
                   help="loops: Numba kernels; vectorised: NumPy; cuda: NVIDIA GPU")
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="precision")
    t.add_argument("--save", metavar="MODEL.npz", help="save the trained model (nnjit.io format)")
    t.add_argument("--plot", metavar="OUT.png",
                   help="save the loss curve (matplotlib; .png, .pdf, .svg, ...)")
    t.add_argument("--checkpoint", metavar="CK.npz", help="write a checkpoint while training")
    t.add_argument("--checkpoint-every", type=_positive(int), default=1, metavar="N",
                   help="epochs between checkpoints")
    t.add_argument("--resume", action="store_true",
                   help="continue the run saved in --checkpoint (rerun the same command)")
    t.add_argument("--quiet", action="store_true", help="no progress bar or compile notice")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("predict", help="predict with a saved model, writing CSV", formatter_class=_Formatter,
                       description="Predict with a saved model (its feature scaling included); "
                                   "writes one CSV row per sample.")
    r.add_argument("--model", required=True, metavar="MODEL.npz", help="a model saved by nnjit train --save")
    r.add_argument("--data", required=True,
                   help="a .csv file (the model's feature columns, optionally plus a label column "
                        "at --target-column, which is then scored) or a .npz with X (and y)")
    _csv_options(r)
    r.add_argument("--out", metavar="PREDICTIONS.csv", help="output file (default: stdout)")
    r.add_argument("--proba", action="store_true", help="write class probabilities instead of labels")
    r.add_argument("--backend", default=None, choices=["loops", "vectorised", "cuda"],
                   help="run on another backend than the one the model was trained on")
    r.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="describe a saved model file", formatter_class=_Formatter,
                       description="Print a saved model's architecture, hyperparameters, epochs "
                                   "and parameter count.")
    i.add_argument("model", metavar="MODEL.npz")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_info)
    from . import bench
    bench.build_parser(sub.add_parser(
        "bench", help="time an epoch: loops vs vectorised vs PyTorch / scikit-learn",
        description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    sub.choices["bench"].set_defaults(func=bench.cmd)
    return p


def _one_line(text):
    lines = [s for s in str(text).splitlines() if s.strip()]
    return lines[0] if lines else type(text).__name__


def _broken_pipe():
    """The reader (e.g. `head`) went away: stop quietly, as `cat | head` does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # so the interpreter's final flush cannot fail
    except (OSError, ValueError, AttributeError):
        pass
    return 141      # 128 + SIGPIPE, the status of a shell tool killed by a closed pipe


def main(argv=None):
    command = "nnjit"
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        if argv[:1] == ["bench"] and "--sklearn" in argv:     # its own options: nnjit.bench.sklearn
            from .bench import sklearn as skbench
            command = "nnjit bench --sklearn"
            return skbench.main([a for a in argv[1:] if a != "--sklearn"])
        try:
            parser = build_parser()
            args, extra = parser.parse_known_args(argv)
            if extra:       # reported by the subcommand's parser, so the line names it
                parser.subcommands.choices[args.command].error(
                    f"unrecognized arguments: {' '.join(extra)}")
        except SystemExit as e:     # argparse: --help and --version exit 0, errors 2
            if e.code in (0, None):
                raise
            return e.code
        command = f"nnjit {args.command}"
        rc = args.func(args)
        sys.stdout.flush()      # a closed pipe fails here, inside the handlers below
        return rc
    except KeyboardInterrupt:
        print(f"\n{command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _broken_pipe()
    except SystemExit as e:
        if isinstance(e.code, str):         # nnjit bench's option checks: SystemExit("message")
            msg = e.code.split(": ", 1)[1] if e.code.startswith("nnjit bench: ") else e.code
            print(f"{command}: error: {_one_line(msg)}", file=sys.stderr)
            return 2
        raise
    except (ValueError, TypeError, OSError, ImportError, ArithmeticError) as e:
        print(f"{command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:      # a bug of nnjit's own: still one line, the traceback on request
        if os.environ.get("NNJIT_TRACEBACK"):
            raise
        print(f"{command}: error: internal error {type(e).__name__}: {_one_line(e)} (please "
              "report it; NNJIT_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
