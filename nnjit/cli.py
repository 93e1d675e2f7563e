"""The ``nnjit`` command line: ``nnjit train`` trains on a built-in dataset and prints
test accuracy. Subcommands are registered in ``COMMANDS``."""
import argparse
import sys
import time

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


def cmd_train(args):
    from . import MLP
    X, y = _load_digits()
    Xtr, ytr, Xte, yte = _split(X, y, args.test_fraction, args.seed)
    layers = [X.shape[1]] + args.hidden + [len(np.unique(y))]
    net = MLP(layers, activation=args.activation, output="softmax", backend=args.backend,
              dtype=args.dtype, seed=args.seed)
    print(f"digits: {len(Xtr)} train / {len(Xte)} test samples, network {layers}, "
          f"backend={args.backend}, dtype={args.dtype}")
    t = time.perf_counter()
    net.fit(Xtr, ytr, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
            batch_size=args.batch_size, validation_data=(Xte, yte), progress=not args.quiet)
    dt = time.perf_counter() - t
    print(f"trained {net.n_epochs_} epochs in {dt:.2f} s (compilation included); "
          f"final loss {net.history_['loss'][-1]:.4f}")
    print(f"test accuracy: {net.score(Xte, yte):.4f}")
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="nnjit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an MLP on a built-in dataset and print test accuracy")
    t.add_argument("--data", default="digits", choices=["digits"], help="dataset (default digits)")
    t.add_argument("--hidden", type=_layers, default=[64], help="hidden sizes, e.g. 64,32")
    t.add_argument("--activation", default="tanh")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--backend", default="loops", choices=["loops", "vectorised", "cuda"])
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--test-fraction", type=float, default=0.25)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as e:
        print(f"nnjit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
