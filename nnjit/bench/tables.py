"""The README's real-tables table: ``nnjit train --data FILE.csv --target COL`` with no other
option, against scikit-learn's usual pipeline on the same splits.

    python -m nnjit.bench.tables [--seeds 5] [--dir DIR] [--datasets penguins,cars_origin,...]

Writes tables that pip packages bundle (palmerpenguins, vega_datasets: nothing is
downloaded) as CSV files with ``DataFrame.to_csv`` as a user would, runs ``nnjit train
--data FILE --target COL --seed S --quiet`` for S = 0..seeds-1, and fits scikit-learn on the
same training split (train + validation of nnjit's, after the rows without a target are
dropped) and scores it on the same test split: a ``ColumnTransformer`` of median imputation
+ ``StandardScaler`` for the numeric columns and constant imputation + ``OneHotEncoder(
handle_unknown="ignore")`` for the others (dates as their text), then ``MLPClassifier`` /
``MLPRegressor(random_state=S)`` at their defaults, the regressor inside a
``TransformedTargetRegressor`` that standardises the target. The file is read for
scikit-learn with ``pandas.read_csv`` (the same NA spellings as nnjit's). Prints a Markdown
table: mean and range of the test score over the seeds for both, and their difference.
Needs the ``train`` extra plus palmerpenguins and vega_datasets (``pip install
palmerpenguins vega_datasets``).
"""
import argparse
import os
import statistics
import sys
import tempfile
import warnings

import numpy as np

from .csv_table import run_nnjit

#: name -> (loader returning a DataFrame, target column)
DATASETS = {
    "penguins": ("palmerpenguins:load_penguins", "species"),
    "penguins_raw": ("palmerpenguins:load_penguins_raw", "Species"),
    "cars_origin": ("vega_datasets:cars", "Origin"),
    "cars_mpg": ("vega_datasets:cars", "Miles_per_Gallon"),
    "seattle_weather": ("vega_datasets:seattle_weather", "weather"),
}


def export(name, folder):
    """(path, target) of dataset `name` written as folder/name.csv."""
    source, target = DATASETS[name]
    module, func = source.split(":")
    if module == "vega_datasets":
        from vega_datasets import data
        df = getattr(data, func)()
    else:
        import palmerpenguins
        df = getattr(palmerpenguins, func)()
    path = os.path.join(folder, f"{name}.csv")
    df.to_csv(path, index=False)
    return path, target


def run_sklearn(path, target, seed):
    """scikit-learn's usual pipeline's test score on the split nnjit train --seed seed uses."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from nnjit.cli import NA_SPELLINGS, target_values, detect_task, split_indices
    df = pd.read_csv(path, na_values=NA_SPELLINGS, skipinitialspace=True)
    y, keep, _ = target_values(df[target])
    df, y = df[keep].drop(columns=target), y[keep]
    regression, _ = detect_task(y)
    train, test = split_indices(len(df), 0.25, np.random.default_rng(seed))   # the CLI's split
    numbers = df.select_dtypes("number").columns.tolist()
    others = [c for c in df.columns if c not in numbers]
    prep = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numbers),
        ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"),
                              OneHotEncoder(handle_unknown="ignore")), others)])
    if regression:
        model = TransformedTargetRegressor(make_pipeline(prep, MLPRegressor(random_state=seed)),
                                           transformer=StandardScaler())
        y = y.astype(float)
    else:
        model = make_pipeline(prep, MLPClassifier(random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # ConvergenceWarning at max_iter=200
        model.fit(df.iloc[train], y[train])
    return model.score(df.iloc[test], y[test]), "R^2" if regression else "accuracy"


def _summary(v):
    return f"{statistics.mean(v):.3f} ({min(v):.3f}–{max(v):.3f})"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nnjit.bench.tables", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="splits per dataset (default 5)")
    p.add_argument("--dir", help="where to write the CSV files (default: a temporary folder)")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset "
                   f"(default: all of {', '.join(DATASETS)})")
    args = p.parse_args(argv)
    names = [n for n in args.datasets.split(",") if n]
    bad = set(names) - set(DATASETS)
    if bad or args.seeds < 1:
        p.error(f"unknown datasets {sorted(bad)}" if bad else "--seeds must be positive")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or tmp
        os.makedirs(folder, exist_ok=True)
        for name in names:
            path, target = export(name, folder)
            ours = [run_nnjit(path, s, ["--target", target])[0] for s in range(args.seeds)]
            sk = [run_sklearn(path, target, s) for s in range(args.seeds)]
            rows.append((name, target, sk[0][1], ours, [v for v, _ in sk]))
            print(f"{name} done", file=sys.stderr)
    print(f"| table (target) | metric | nnjit train --data F --target T: mean (min–max) over "
          f"--seed 0..{args.seeds - 1} | scikit-learn's pipeline, same splits | difference |")
    print("|---|---|---:|---:|---:|")
    for name, target, metric, ours, sk in rows:
        print(f"| {name} ({target}) | {metric} | {_summary(ours)} | {_summary(sk)} | "
              f"{statistics.mean(ours) - statistics.mean(sk):+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
