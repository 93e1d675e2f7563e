"""The ``nnjit`` command line.

  nnjit train   --data digits|file.csv|file.npz [--save model.npz] [--plot loss.png]
  nnjit predict --model model.npz --data file.csv|file.npz [--out predictions.csv]
  nnjit info    model.npz

Errors (missing or malformed files, bad options) print one line and exit with status 2.
"""
import argparse
import csv
import json
import os
import sys
import time
import zipfile

import numpy as np


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("nnjit train --data digits needs scikit-learn (it ships the dataset): "
                         "pip install 'nnjit[train]'")
    d = load_digits()
    return d.data / 16.0, d.target


def _split(X, y, test_fraction, seed):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(X))
    n_test = max(1, int(round(len(X) * test_fraction)))
    return X[idx[n_test:]], y[idx[n_test:]], X[idx[:n_test]], y[idx[:n_test]]


def _layers(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden wants sizes like 64,32, got {text!r}")
    return sizes


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
    return y.astype(np.int64) if np.isfinite(y).all() and (y == np.round(y)).all() else y


def _number(cell):
    try:
        return float(cell)
    except ValueError:
        return None


def _read_csv(path, target_column, n_features=None):
    """(X, y) from a CSV file: numeric feature columns, the label in target_column (negative
    counts from the end; None: no label column). A first row with a non-numeric feature cell
    is a header. With n_features given, a file of exactly n_features columns has no label."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path!r} is empty")
    width = len(rows[0])
    if n_features is not None and width == n_features:
        target_column = None
    if target_column is not None and not -width <= target_column < width:
        raise ValueError(f"--target-column {target_column} is outside the {width} columns of {path!r}")
    t = None if target_column is None else target_column % width
    feats = [i for i in range(width) if i != t]
    start = 1 if any(_number(rows[0][i]) is None for i in feats) else 0
    if len(rows) <= start:
        raise ValueError(f"{path!r} has a header but no data rows")
    X = np.empty((len(rows) - start, len(feats)))
    for n, r in enumerate(rows[start:]):
        if len(r) != width:
            raise ValueError(f"{path!r} line {n + start + 1} has {len(r)} columns; line 1 has {width}")
        for j, i in enumerate(feats):
            v = _number(r[i])
            if v is None:
                raise ValueError(f"{path!r} line {n + start + 1}, column {i + 1}: {r[i]!r} is not "
                                 "a number (features must be numeric)")
            X[n, j] = v
    y = None if t is None else _labels([r[t] for r in rows[start:]])
    return X, y


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z.files:
                raise ValueError(f"{path!r} has no array 'X' (it has {', '.join(z.files) or 'none'}); "
                                 "a data .npz holds X (samples, features) and optionally y")
            return z["X"], (z["y"] if "y" in z.files else None)
    except (zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path!r} is not a readable .npz file ({e})") from e


def load_data(name, target_column=-1, n_features=None):
    """(X, y) from "digits", a .csv file or a .npz file (arrays X and y); y may be None."""
    if name == "digits":
        return _load_digits()
    _check_file(name, "data")
    ext = os.path.splitext(name)[1].lower()
    if ext == ".csv":
        X, y = _read_csv(name, target_column, n_features)
    elif ext == ".npz":
        X, y = _read_npz(name)
    else:
        raise ValueError(f"unsupported data file {name!r}: use 'digits', a .csv or a .npz file")
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{name!r}: X must be a non-empty 2-D (samples, features) array, got shape {X.shape}")
    if y is not None and len(y) != len(X):
        raise ValueError(f"{name!r}: X has {len(X)} samples but y has {len(y)}")
    return X, y


def _is_regression(task, y):
    if task != "auto":
        return task == "regression"
    return y.dtype.kind == "f" and not (y == np.round(y)).all() or (y.ndim == 2)


def cmd_train(args):
    from . import MLP
    from . import io as nio
    X, y = load_data(args.data, args.target_column)
    if y is None:
        raise ValueError(f"{args.data!r} has no targets: a .npz needs an array 'y'")
    regression = _is_regression(args.task, y)
    if args.test_fraction > 0:
        Xtr, ytr, Xte, yte = _split(X, y, args.test_fraction, args.seed)
    else:
        Xtr, ytr, Xte, yte = X, y, None, None
    if regression:
        K = 1 if y.ndim == 1 else y.shape[1]
        output = "identity"
    else:
        K = len(np.unique(y))
        if K < 2:
            raise ValueError(f"{args.data!r}: classification needs at least 2 classes, the labels "
                             f"hold {K}; for a numeric target use --task regression")
        output = "softmax" if K > 2 else "sigmoid"
        K = K if K > 2 else 1
    layers = [X.shape[1]] + args.hidden + [K]
    net = MLP(layers, activation=args.activation, output=output, backend=args.backend,
              dtype=args.dtype, seed=args.seed)
    where = "digits" if args.data == "digits" else os.path.basename(args.data)
    print(f"{where}: {len(Xtr)} train / {0 if Xte is None else len(Xte)} test samples, "
          f"{'regression' if regression else f'{len(np.unique(y))} classes'}, network {layers}, "
          f"backend={args.backend}, dtype={args.dtype}")
    t = time.perf_counter()
    try:
        net.fit(Xtr, ytr, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
                batch_size=args.batch_size, validation_data=None if Xte is None else (Xte, yte),
                progress=not args.quiet, checkpoint=args.checkpoint,
                checkpoint_every=args.checkpoint_every, resume=args.resume)
    except KeyboardInterrupt:
        print(f"\ninterrupted after {net.n_epochs_} epochs"
              + (f"; the checkpoint {args.checkpoint} holds them: rerun with --resume"
                 if args.checkpoint else ""), file=sys.stderr)
        return 130
    dt = time.perf_counter() - t
    print(f"trained {net.n_epochs_} epochs in {dt:.2f} s (compilation included); "
          f"final loss {net.history_['loss'][-1]:.4f}")
    if Xte is not None:
        print(f"test {'R^2' if regression else 'accuracy'}: {net.score(Xte, yte):.4f}")
    if args.save:
        nio.save(net, args.save, fit={"lr": args.lr, "momentum": args.momentum,
                                      "batch_size": args.batch_size, "epochs": args.epochs,
                                      "data": args.data})
        print(f"saved the model to {args.save}")
    if args.plot:
        from .plot import save_loss_curve
        save_loss_curve(net, args.plot)
        print(f"saved the loss curve to {args.plot}")
    return 0


def cmd_predict(args):
    from . import io as nio
    net = nio.load(args.model, backend=args.backend)
    X, y = load_data(args.data, args.target_column, n_features=net.layers[0])
    if X.shape[1] != net.layers[0]:
        raise ValueError(f"{args.data!r} has {X.shape[1]} feature columns but the model expects "
                         f"{net.layers[0]} (a CSV may add one label column)")
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
        kind = "accuracy" if net._is_classifier else "R^2"
        print(f"{kind} against the file's targets: {net.score(X, y):.4f}", file=sys.stderr)
    return 0


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
        print(f"classes:         {c[:20]}{' ...' if len(c) > 20 else ''} ({len(c)})")
    if info["fit"]:
        print("training:        " + ", ".join(f"{k}={v}" for k, v in sorted(info["fit"].items())
                                             if k not in ("data_crc32",)))
    if info["checkpoint"]:
        ck = info["checkpoint"]
        print(f"checkpoint of:   fit(epochs={ck['epochs']}) started at epoch {ck['start_epoch']}"
              f"{', stopped early' if ck['stopped'] else ''}")
    return 0


_DATA_HELP = ("'digits' (scikit-learn's bundled 8x8 digits), a .csv file (numeric features; the "
              "label in --target-column, default the last; an optional header row) or a .npz file "
              "with arrays X (samples, features) and y")


def build_parser():
    p = argparse.ArgumentParser(prog="nnjit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an MLP on a dataset, report test accuracy, save it",
                       description="Train an MLP on a dataset and report the held-out score.")
    t.add_argument("--data", default="digits", help=_DATA_HELP + " (default digits)")
    t.add_argument("--target-column", type=int, default=-1,
                   help="CSV column holding the label, 0-based; negative counts from the end (default -1)")
    t.add_argument("--task", default="auto", choices=["auto", "classification", "regression"],
                   help="auto: regression for non-integral numeric targets, else classification")
    t.add_argument("--hidden", type=_layers, default=[64], help="hidden sizes, e.g. 64,32")
    t.add_argument("--activation", default="tanh")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--backend", default="loops", choices=["loops", "vectorised", "cuda"])
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--test-fraction", type=float, default=0.25,
                   help="held out for the test score (0: train on everything)")
    t.add_argument("--save", metavar="MODEL.npz", help="save the trained model (nnjit.io format)")
    t.add_argument("--plot", metavar="OUT.png", help="save the loss curve (needs matplotlib)")
    t.add_argument("--checkpoint", metavar="CK.npz", help="write a checkpoint while training")
    t.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                   help="epochs between checkpoints (default 1)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run saved in --checkpoint (rerun the same command)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("predict", help="predict with a saved model, writing CSV",
                       description="Predict with a saved model; writes one CSV row per sample.")
    r.add_argument("--model", required=True, metavar="MODEL.npz")
    r.add_argument("--data", required=True,
                   help="a .csv file (the model's feature columns, optionally plus a label column "
                        "at --target-column, which is then scored) or a .npz with X (and y)")
    r.add_argument("--target-column", type=int, default=-1)
    r.add_argument("--out", metavar="PREDICTIONS.csv", help="output file (default: stdout)")
    r.add_argument("--proba", action="store_true", help="write class probabilities instead of labels")
    r.add_argument("--backend", default=None, choices=["loops", "vectorised", "cuda"],
                   help="run on another backend than the one the model was trained on")
    r.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="describe a saved model file",
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


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and "--sklearn" in argv:     # its own options: nnjit.bench.sklearn
        from .bench import sklearn as skbench
        return skbench.main([a for a in argv[1:] if a != "--sklearn"])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, ImportError) as e:
        print(f"nnjit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
