"""``nnjit bench --sklearn --search``: ``GridSearchCV`` over nnjit's MLPClassifier and
scikit-learn's, as a user runs it: each search a whole fresh Python process (imports, worker
start-up, the refit and the exit all counted), with n_jobs 1 and k under joblib's loky
processes and under threads.

The issue's row: n_jobs=k never slower than n_jobs=1, and nnjit faster than scikit-learn at
the same n_jobs. Kernels come from the warm cache (a warm-up process first), so this times
start-up and training, not compiling. The settings run in alternating rounds (each round runs
every setting once, in a rotated order), and the table gives the median wall time of each and
its ratio to nnjit's n_jobs=1.
"""
import json
import os
import statistics
import subprocess
import sys
import time

#: the two searches: small (start-up dominates) and larger (training dominates)
GRIDS = {
    "small": ({"hidden_layer_sizes": [(64,), (100,)]}, 3, 50),
    "larger": ({"hidden_layer_sizes": [(64,), (100,), (128,), (200,)]}, 5, 200),
}

_SCRIPT = r"""
import json, sys, time, warnings
t0 = time.perf_counter()
lib, n_jobs, backend, grid, cv, max_iter = json.loads(sys.argv[1])
import joblib
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
if lib == "nnjit":
    from nnjit.sklearn import MLPClassifier
else:
    from sklearn.neural_network import MLPClassifier
warnings.simplefilter("ignore")
X, y = load_digits(return_X_y=True)
X = X / 16.0
grid = {k: [tuple(v) for v in vs] for k, vs in grid.items()}
t1 = time.perf_counter()
gs = GridSearchCV(MLPClassifier(max_iter=max_iter, random_state=0), grid, cv=cv, n_jobs=n_jobs)
with joblib.parallel_backend(backend):
    gs.fit(X, y)
t2 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "search": t2 - t1, "score": gs.best_score_}))
"""


def _one(lib, n_jobs, backend, grid, cv, max_iter):
    arg = json.dumps([lib, n_jobs, backend, grid, cv, max_iter])
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _SCRIPT, arg], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONWARNINGS="ignore"))
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"the {lib} n_jobs={n_jobs} {backend} search failed:\n{r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["wall"] = wall
    return out


def settings(n_jobs):
    """(library, n_jobs, joblib backend) of each timed search."""
    return [(lib, k, backend) for lib in ("nnjit", "sklearn")
            for k, backend in ((1, "loky"), (n_jobs, "loky"), (n_jobs, "threading"))]


def search(grid="small", n_jobs=2, rounds=3, json_path=None):
    params, cv, max_iter = GRIDS[grid]
    runs = settings(n_jobs)
    _one("nnjit", 1, "loky", {"hidden_layer_sizes": [(8,)]}, 2, 2)   # the kernels into the cache
    times = {s: [] for s in runs}
    for r in range(rounds):
        for s in runs[r % len(runs):] + runs[:r % len(runs)]:
            out = _one(*s, params, cv, max_iter)
            times[s].append(out)
            print(f"round {r + 1}: {s[0]} n_jobs={s[1]} {s[2]}: {out['wall']:.2f} s wall "
                  f"(search {out['search']:.2f}, score {out['score']:.4f})", flush=True)
    base = statistics.median(o["wall"] for o in times[("nnjit", 1, "loky")])
    rows = []
    for s in runs:
        wall = [o["wall"] for o in times[s]]
        rows.append(dict(library=s[0], n_jobs=s[1], backend=s[2] if s[1] > 1 else "-",
                         wall_s=statistics.median(wall), wall_min=min(wall), wall_max=max(wall),
                         search_s=statistics.median(o["search"] for o in times[s]),
                         score=times[s][0]["score"],
                         vs_nnjit_1=statistics.median(wall) / base))
    print(f"\nGridSearchCV({params}, cv={cv}), MLPClassifier(max_iter={max_iter}, random_state=0) "
          f"on digits; whole processes, median of {rounds}, warm kernel cache, {os.cpu_count()} cores\n")
    print("| library | n_jobs | backend | wall (min-max) | search alone | vs nnjit n_jobs=1 | best score |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for w in rows:
        print(f"| {w['library']} | {w['n_jobs']} | {w['backend']} | {w['wall_s']:.2f} s "
              f"({w['wall_min']:.2f}-{w['wall_max']:.2f}) | {w['search_s']:.2f} s | "
              f"{w['vs_nnjit_1']:.2f}x | {w['score']:.4f} |")
    by = {(w["library"], w["n_jobs"], w["backend"]): w["wall_s"] for w in rows}
    for backend in ("loky", "threading"):
        ours, one, theirs = (by[("nnjit", n_jobs, backend)], by[("nnjit", 1, "-")],
                             by[("sklearn", n_jobs, backend)])
        print(f"{backend}: nnjit n_jobs={n_jobs} {'<=' if ours <= one else '>'} n_jobs=1 "
              f"({ours / one:.2f}x); {'faster' if ours < theirs else 'not faster'} than "
              f"scikit-learn's n_jobs={n_jobs} ({theirs / ours:.2f}x)")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)
    return rows
