"""The README's raw-CSV table: ``nnjit train --data FILE.csv`` with no other option, against
scikit-learn on the same splits.

    python -m nnjit.bench.csv_table [--seeds 10] [--dir DIR] [--datasets iris,wine,...]

Exports scikit-learn's bundled iris, wine, breast_cancer, diabetes and digits as plain CSV
files (``np.savetxt(..., delimiter=",", header=..., comments="")``, raw unscaled features, the
target as the last column), runs ``nnjit train --data FILE --seed S`` for S = 0..seeds-1 (the
seed chooses the test split, as a user would get it), and fits scikit-learn on the same
training split (train + validation) and scores it on the same test split:
``make_pipeline(StandardScaler(), MLPClassifier(random_state=S))`` for classification and, for
regression, the same with MLPRegressor inside a TransformedTargetRegressor that standardises
the target (scikit-learn's MLPRegressor on the raw diabetes target scores about -1).
Prints a Markdown table: mean and range of the test score over the seeds, nnjit's median
epochs and median seconds per run (compilation excluded: the first run compiles).
Needs scikit-learn (the ``train`` extra).
"""
import argparse
import contextlib
import io
import os
import re
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

DATASETS = ("iris", "wine", "breast_cancer", "diabetes", "digits")


def export(name, folder):
    """scikit-learn's dataset `name` as folder/name.csv, as a user would export it."""
    from sklearn import datasets
    d = getattr(datasets, f"load_{name}")()
    path = os.path.join(folder, f"{name}.csv")
    names = [str(f).replace(" ", "_").replace(",", "_") for f in d.feature_names] + ["target"]
    np.savetxt(path, np.column_stack([d.data, d.target]), delimiter=",",
               header=",".join(names), comments="")
    return path


def run_nnjit(path, seed, options=()):
    """(test score, epochs, seconds, metric) of `nnjit train --data path --seed seed --quiet`."""
    from nnjit.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["train", "--data", path, "--seed", str(seed), "--quiet", *options])
    text = out.getvalue()
    if rc != 0:
        raise RuntimeError(f"nnjit train --data {path} --seed {seed} exited {rc}:\n{text}")
    score = float(re.search(r"test (?:accuracy|R\^2): (\S+)", text).group(1))
    m = re.search(r"trained (\d+) epochs in (\S+) s", text)
    return score, int(m.group(1)), float(m.group(2)), ("R^2" if "R^2" in text else "accuracy")


def run_sklearn(path, seed, regression):
    """scikit-learn's test score on the split nnjit train --seed seed uses."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from nnjit.cli import load_data, split_indices
    X, y = load_data(path)
    train, test = split_indices(len(X), 0.25, np.random.default_rng(seed))   # the CLI's test split
    if regression:
        model = TransformedTargetRegressor(make_pipeline(StandardScaler(), MLPRegressor(random_state=seed)),
                                           transformer=StandardScaler())
        y = y.astype(float)
    else:
        model = make_pipeline(StandardScaler(), MLPClassifier(random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # ConvergenceWarning at max_iter=200
        model.fit(X[train], y[train])
    return model.score(X[test], y[test])


def _summary(v):
    return f"{statistics.mean(v):.3f} ({min(v):.3f}–{max(v):.3f})"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nnjit.bench.csv_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=10, help="splits per dataset (default 10)")
    p.add_argument("--dir", help="where to write the CSV files (default: a temporary folder)")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset")
    p.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn column")
    args = p.parse_args(argv)
    names = [n for n in args.datasets.split(",") if n]
    bad = set(names) - set(DATASETS)
    if bad or args.seeds < 1:
        p.error(f"unknown datasets {sorted(bad)}" if bad else "--seeds must be positive")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or tmp
        os.makedirs(folder, exist_ok=True)
        t0 = time.perf_counter()
        run_nnjit(export("iris", folder), 0)        # compiles (or loads) the kernels once
        print(f"first run (compiling or loading kernels included): {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        rows = []
        for name in names:
            path = export(name, folder)
            res = [run_nnjit(path, s) for s in range(args.seeds)]
            metric = res[0][3]
            sk = [] if args.no_sklearn else [run_sklearn(path, s, metric == "R^2")
                                             for s in range(args.seeds)]
            rows.append((name, metric, [r[0] for r in res], sk,
                         statistics.median(r[1] for r in res), statistics.median(r[2] for r in res)))
            print(f"{name} done", file=sys.stderr)
    print(f"| data (raw CSV) | metric | nnjit train, defaults: mean (min–max) over {args.seeds} splits "
          "| scikit-learn, same splits | nnjit epochs (median) | nnjit s/run (median) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, metric, ours, sk, ep, sec in rows:
        print(f"| {name} | {metric} | {_summary(ours)} | {_summary(sk) if sk else '–'} | {ep:.0f} | {sec:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
