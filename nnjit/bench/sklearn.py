"""``nnjit bench --sklearn``: fit time of scikit-learn's MLP vs nnjit.sklearn's, same data, same
parameters, same random_state, one process.

Cases (the issue's): (a) scikit-learn's defaults -- adam, relu, (100,), batch "auto" (200),
max_iter 200 -- on digits and on a 50,000 x 100 synthetic classification problem; (b) sgd at
batch 32 on digits; (c) lbfgs on a 5,000-sample regression; (d) adam on a sparse 20,000 x
50,000 matrix at 0.1 % density (a TF-IDF-like classification problem). For each: median fit
time of each library, the ratio, epochs run (both stop by the same tol rule, so they run the
same number unless their trajectories part), held-out score of each, and the largest
difference between the two fitted weight sets. Compile time is excluded (one small warm-up fit
first). ``--max-iter`` caps every case, ``--big-max-iter`` the two large ones (scikit-learn
needs minutes for their 200 iterations).
"""
import argparse
import json
import statistics
import sys
import time
import warnings

import numpy as np


def _cases(args):
    from sklearn.datasets import load_digits, make_classification, make_regression
    import scipy.sparse as sp
    rng = np.random.default_rng(0)
    out = []
    big = {} if args.big_max_iter is None else {"max_iter": args.big_max_iter}
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    if "a" in args.cases:
        out.append(("(a) defaults, digits 1797x64", "clf", X, y, {}))
        Xs, ys = make_classification(n_samples=args.big_samples, n_features=100, n_informative=40,
                                     n_classes=2, random_state=0)
        out.append((f"(a) defaults, synthetic {args.big_samples}x100", "clf", Xs, ys, big))
    if "b" in args.cases:
        out.append(("(b) sgd, batch 32, digits", "clf", X, y, {"solver": "sgd", "batch_size": 32,
                                                               "learning_rate_init": 0.01}))
    if "c" in args.cases:
        Xr, yr = make_regression(n_samples=5000, n_features=20, n_informative=10, noise=5.0,
                                 random_state=0)
        yr = (yr - yr.mean()) / yr.std()
        out.append(("(c) lbfgs, regression 5000x20", "reg", Xr, yr, {"solver": "lbfgs"}))
    if "d" in args.cases:
        n, d = args.sparse_samples, 50000
        k = max(1, round(0.001 * d))         # stored entries per row (scipy's sp.random would
        indices = np.sort(rng.integers(0, d, (n, k)), axis=1).ravel()    # permute n*d indices)
        Xsp = sp.csr_matrix((rng.random(n * k), indices, np.arange(0, n * k + 1, k)), shape=(n, d))
        Xsp.sum_duplicates()
        w = rng.normal(size=d)
        ysp = (Xsp @ w > 0).astype(int)
        out.append((f"(d) adam, sparse {n}x{d} at 0.1%", "clf", Xsp, ysp, big))
    return out


def _fit(cls, X, y, params, repeats):
    times, est = [], None
    for _ in range(repeats):
        est = cls(**params)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X, y)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), est


def run(args):
    from sklearn import neural_network as sk
    from sklearn.model_selection import train_test_split

    from .. import sklearn as nn
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(args.threads)
        except ImportError:
            pass
    rows = []
    for name, kind, X, y, extra in _cases(args):
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0)
        params = dict(dict(random_state=0, max_iter=args.max_iter), **extra)
        S, N = (sk.MLPClassifier, nn.MLPClassifier) if kind == "clf" else (sk.MLPRegressor, nn.MLPRegressor)
        with warnings.catch_warnings():       # compile (or load the cache) outside the timing
            warnings.simplefilter("ignore")
            N(**dict(params, max_iter=2)).fit(Xtr[:300], ytr[:300])
        t_sk, a = _fit(S, Xtr, ytr, params, args.repeats)
        t_nn, b = _fit(N, Xtr, ytr, params, args.repeats)
        diff = max(float(np.abs(u - v).max()) for u, v in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_))
        row = dict(case=name, sklearn_s=t_sk, nnjit_s=t_nn, ratio=t_sk / t_nn,
                   epochs_sklearn=int(a.n_iter_), epochs_nnjit=int(b.n_iter_),
                   score_sklearn=float(a.score(Xte, yte)), score_nnjit=float(b.score(Xte, yte)),
                   max_weight_diff=diff)
        rows.append(row)
        print(f"{name}: scikit-learn {t_sk:.3g} s, nnjit {t_nn:.3g} s ({row['ratio']:.1f}x), "
              f"epochs {row['epochs_sklearn']}/{row['epochs_nnjit']}, score "
              f"{row['score_sklearn']:.4f}/{row['score_nnjit']:.4f}, max |dw| {diff:.1e}", flush=True)
    print()
    print("| case | scikit-learn | nnjit | speed-up | iterations (sk / nnjit) | held-out score (sk / nnjit) | max abs weight diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['sklearn_s']:.3g} s | {r['nnjit_s']:.3g} s | **{r['ratio']:.1f}x** | "
              f"{r['epochs_sklearn']} / {r['epochs_nnjit']} | {r['score_sklearn']:.4f} / "
              f"{r['score_nnjit']:.4f} | {r['max_weight_diff']:.1e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


def build_parser(p=None):
    from ..clihelp import HelpFormatter
    p = p or argparse.ArgumentParser(prog="nnjit bench --sklearn", description=__doc__,
                                     formatter_class=HelpFormatter)
    p.add_argument("--cases", default="abcd", help="which of a, b, c, d to run")
    p.add_argument("--max-iter", type=int, default=200, help="max_iter of every fit")
    p.add_argument("--big-max-iter", type=int, default=None,
                   help="max_iter of the two large cases, (a) synthetic and (d) (default --max-iter)")
    p.add_argument("--big-samples", type=int, default=50000, help="samples of case (a)'s synthetic problem")
    p.add_argument("--sparse-samples", type=int, default=20000, help="rows of case (d)")
    p.add_argument("--repeats", type=int, default=1, help="fits per library and case (median)")
    p.add_argument("--threads", type=int, default=None, help="Numba and BLAS threads (default: all)")
    p.add_argument("--json", help="write the rows as JSON")
    p.add_argument("--search", nargs="?", const="small", choices=["small", "larger"], default=None,
                   help="instead: GridSearchCV of both libraries as whole processes, n_jobs 1 and "
                        "--n-jobs, loky and threads, --repeats rounds (module nnjit.bench.search)")
    p.add_argument("--n-jobs", type=int, default=2, help="--search: the parallel searches' n_jobs")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.max_iter < 1 or args.repeats < 1:
        raise SystemExit("nnjit bench --sklearn: --max-iter and --repeats must be positive")
    if args.search:
        if args.n_jobs < 2:
            raise SystemExit("nnjit bench --sklearn --search: --n-jobs must be at least 2")
        from .search import search
        search(args.search, args.n_jobs, args.repeats, args.json)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
