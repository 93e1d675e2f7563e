"""``nnjit bench``: one side-by-side timing of an MLP training epoch, in one process.

Times the loop form against the vectorised form (float32 and float64) and, when they are
installed, PyTorch CPU (nn.Sequential + optim.SGD) and scikit-learn's MLPClassifier (solver
"sgd"), all with the same network, learning rate and heavy-ball momentum, on the same
synthetic MNIST-shaped data (a fixed random teacher labels it, so it is learnable). Prints
per-epoch medians, microseconds per sample and the ratio to ``loops``; also the machine's
SGEMM/DGEMM rate through NumPy in the same run, the loop form's GFLOP/s as a fraction of it,
which BLAS kernel NumPy used, and (separately from the timed region) compile and cache-load
time in fresh processes. ``--scaling`` shows epoch time against samples and parameters and
peak memory. Not a test: nothing here asserts a speed.

    python -m nnjit.bench                       # 784-128-10, batch sizes 1, 32, 256
    nnjit bench --contention 2                  # epoch time with 0, 1, 2 busy processes competing
    nnjit bench --batch-sizes 32 --threads 2 --json out.json --plot out.png
    nnjit bench --sweep                         # the README's table: nets x batch sizes, vs NumPy/BLAS
    nnjit bench --compare main                  # the regression gate: this tree vs a revision
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

from .nets import SWEEP, SWEEP_FLOP, train_flops  # noqa: F401  (also nnjit bench's names)


# ------------------------------------------------------------------ data and bookkeeping
def make_data(n, d, k, dtype, seed=0):
    """MNIST-shaped synthetic data: pixels in [0, 1), labels from a random linear teacher.
    Made in chunks, so making it costs no more memory than the data itself."""
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(d, k)).astype(np.float32)
    X = np.empty((n, d), dtype)
    y = np.empty(n, np.int64)
    for s in range(0, n, 4096):
        c = rng.random((min(4096, n - s), d), dtype=np.float32)
        c[c < 0.5] = 0.0                                 # sparse-ish, like handwriting
        X[s:s + len(c)] = c
        y[s:s + len(c)] = (c @ teacher).argmax(axis=1)
    return X, y


def blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (pip install threadpoolctl to see which BLAS kernel NumPy uses)"
    rows = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if not rows:
        return "no BLAS found by threadpoolctl"
    i = rows[0]
    return (f"{i.get('internal_api')} {i.get('version')}, kernel {i.get('architecture')}, "
            f"{i.get('num_threads')} threads")


def gemm_rate(dtype, threads, n=1536, repeats=5):
    """GFLOP/s of an n x n x n NumPy matrix product (the machine's BLAS peak, measured)."""
    a = np.random.default_rng(0).random((n, n)).astype(dtype)
    b = a.T.copy()
    with _blas_threads(threads):
        a @ b
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(ts) / 1e9


#: seconds to wait before each timed block: BLAS's (OpenBLAS, PyTorch's OpenMP) worker
#: threads spin for a while after a call and take cores from the next parallel region (the
#: loop form measured 60 % slower right after a NumPy epoch)
SETTLE_S = 1.0


def _settle():
    time.sleep(SETTLE_S)


class _blas_threads:
    def __init__(self, n):
        self.n, self.ctl = n, None

    def __enter__(self):
        try:
            from threadpoolctl import threadpool_limits
            self.ctl = threadpool_limits(self.n)
        except ImportError:
            pass

    def __exit__(self, *exc):
        if self.ctl is not None:
            self.ctl.restore_original_limits()


# ------------------------------------------------------------------ the contenders
#: the update rules --optimizer can time: MLP.fit keywords (lr and momentum are added)
OPTIMIZERS = {"sgd": {}, "nesterov": {"optimizer": "nesterov"},
              "adam": {"optimizer": "adam"}, "adamw": {"optimizer": "adamw", "weight_decay": 0.01}}


def time_nnjit(backend, dtype, layers, X, y, bs, lr, mu, repeats, optimizer="sgd"):
    """Per-epoch wall times of MLP.fit: the gaps between the end-of-epoch callbacks, so the
    once-per-fit input checks are outside and every per-epoch cost is inside."""
    from .. import MLP
    kw = dict(OPTIMIZERS[optimizer], lr=lr, momentum=mu if optimizer in ("sgd", "nesterov") else 0.0)

    def make():
        return MLP(layers, activation="sigmoid", output="softmax", backend=backend, dtype=dtype, seed=0)
    make().fit(X[:64], y[:64], epochs=1, batch_size=bs, **kw)   # compile / warm up
    net = make()
    stamps = []
    net.fit(X, y, epochs=repeats + 1, batch_size=bs, shuffle=True,
            callbacks=[lambda *a: stamps.append(time.perf_counter())], **kw)
    return list(np.diff(stamps)), net


def time_torch(dtype, layers, X, y, bs, lr, mu, repeats, threads, optimizer="sgd"):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tdt = torch.float32 if dtype == "float32" else torch.float64
    mods = []
    for l in range(1, len(layers)):
        mods.append(torch.nn.Linear(layers[l - 1], layers[l]))
        if l < len(layers) - 1:
            mods.append(torch.nn.Sigmoid())
    model = torch.nn.Sequential(*mods).to(tdt)
    opt = {"sgd": lambda P: torch.optim.SGD(P, lr=lr, momentum=mu),
           "nesterov": lambda P: torch.optim.SGD(P, lr=lr, momentum=mu, nesterov=True),
           "adam": lambda P: torch.optim.Adam(P, lr=lr),
           "adamw": lambda P: torch.optim.AdamW(P, lr=lr, weight_decay=0.01)}[optimizer](model.parameters())
    lossf = torch.nn.CrossEntropyLoss()                   # softmax + cross-entropy, as nnjit
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    n = len(X)

    def epoch():
        perm = torch.randperm(n)
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            opt.zero_grad(set_to_none=True)
            lossf(model(Xt[idx]), yt[idx]).backward()
            opt.step()
    epoch()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        epoch()
        ts.append(time.perf_counter() - t)
    return ts


def time_sklearn(dtype, layers, X, y, bs, lr, mu, repeats, optimizer="sgd"):
    import warnings
    from sklearn.neural_network import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=tuple(layers[1:-1]), activation="logistic",
                        solver="adam" if optimizer == "adam" else "sgd", batch_size=bs,
                        learning_rate_init=lr, momentum=mu,
                        nesterovs_momentum=optimizer == "nesterov", alpha=0.0, shuffle=True,
                        random_state=0)
    classes = np.unique(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.partial_fit(X[:64], y[:64], classes=classes)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            clf.partial_fit(X, y)                         # one pass over the data: one epoch
            ts.append(time.perf_counter() - t)
    return ts


def time_numpy(dtype, layers, X, y, bs, lr, mu, repeats):
    """Per-epoch wall times of a hand-written NumPy epoch: the lecture's algorithm in matrix
    form (sigmoid hidden layers, softmax + cross-entropy, heavy-ball momentum), every product
    an np.matmul through NumPy's BLAS. The bar the loop form has to clear. Returns (times,
    training accuracy afterwards)."""
    rng = np.random.default_rng(0)
    L = len(layers) - 1
    Ws = [(rng.normal(size=(layers[l], layers[l + 1])) / np.sqrt(layers[l])).astype(dtype)
          for l in range(L)]
    bs_ = [np.zeros(layers[l + 1], dtype) for l in range(L)]
    vW, vb = [np.zeros_like(W) for W in Ws], [np.zeros_like(b) for b in bs_]
    Y = np.eye(layers[-1], dtype=dtype)[y]
    one = np.asarray(1, dtype)
    n = len(X)

    def epoch():
        order = rng.permutation(n)
        for s in range(0, n, bs):
            idx = order[s:s + bs]
            a = [X[idx]]
            for l in range(L):
                z = a[-1] @ Ws[l] + bs_[l]
                if l < L - 1:
                    a.append(one / (one + np.exp(-z)))
                else:
                    e = np.exp(z - z.max(axis=1, keepdims=True))
                    a.append(e / e.sum(axis=1, keepdims=True))
            d = (a[-1] - Y[idx]) * np.asarray(1.0 / len(idx), dtype)
            for l in range(L - 1, -1, -1):
                gW, gb = a[l].T @ d, d.sum(axis=0)
                if l:
                    d = (d @ Ws[l].T) * a[l] * (one - a[l])
                for p, v, g in ((Ws[l], vW[l], gW), (bs_[l], vb[l], gb)):
                    v *= dtype.type(mu)
                    v -= dtype.type(lr) * g
                    p += v
    dtype = np.dtype(dtype)
    epoch()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        epoch()
        ts.append(time.perf_counter() - t)
    a = X
    for l in range(L):
        a = a @ Ws[l] + bs_[l]
        if l < L - 1:
            a = one / (one + np.exp(-a))
    return ts, float((a.argmax(axis=1) == y).mean())


def product_rates(M, n_in, n_out, dtype="float32", repeats=5):
    """GFLOP/s of the loop form's three products of one layer W (n_out, n_in) at batch M, as
    train_epoch runs them (the GEMM path or the cache-blocked kernels, as nnjit.config
    chooses), and of np.matmul on the same shapes: feed-forward a W^T, error recursion
    delta W, corrections delta^T a + the rule. The loop kernels are timed as one block, then
    np.matmul (BLAS threads spinning after a matmul would slow the next parallel region)."""
    from .. import activations as A, config, loops, rules as R
    rng = np.random.default_rng(0)
    dt = np.dtype(dtype)
    a_prev, delta = rng.random((M, n_in), dt), rng.random((M, n_out), dt)
    W, b = (rng.random((n_out, n_in), dt) * 0.01), np.zeros(n_out, dt)
    z, a, d_prev = np.empty((M, n_out), dt), np.empty((M, n_out), dt), np.empty((M, n_in), dt)
    vW, sW, dW = np.zeros_like(W), np.zeros_like(W), np.empty_like(W)
    vb, sb, db = np.zeros_like(b), np.zeros_like(b), np.empty_like(b)
    code, params = R.check("sgd", momentum=0.9)
    c = loops.step_coefs(code, R.hyper(0.01, params), 1, 0.0)
    tile = config.tiles()
    fmc, fnc, bmc, bnc, cju, cic = loops.blocks(tile, n_out, n_in)
    P = np.zeros(int(loops.gemm_need(n_out, n_in, M, True)), dt)
    gemm = 0 < loops.gemm_from([n_in, n_out], tile, dt) <= M   # as loops.epoch_mode chooses
    fl = 2.0 * M * n_in * n_out / 1e9

    def rate(f):
        f()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return fl / statistics.median(ts)
    if gemm:
        mc, kc, ju = tile.gemm_mc, tile.gemm_kc, tile.gemm_ju
        out = {"path": "gemm",
               "forward": rate(lambda: loops.forward_layer_gemm(z, a, a_prev, W, b, A.SIGMOID, P,
                                                                mc, kc)),
               "recursion": rate(lambda: loops.backward_layer_gemm(d_prev, delta, W, a_prev, a_prev,
                                                                   A.SIGMOID, P, mc, kc)),
               "corrections": rate(lambda: loops.corrections_update_gemm(
                   W, b, vW, vb, sW, sb, dW, db, delta, a_prev, R.RULE_SGD, c, P, ju, kc))}
    else:
        out = {"path": "tiled",
               "forward": rate(lambda: loops.forward_layer_tiled(z, a, a_prev, W, b, A.SIGMOID,
                                                                 fmc, fnc, False)),
               "recursion": rate(lambda: loops.backward_layer_tiled(d_prev, delta, W, a_prev,
                                                                    a_prev, A.SIGMOID, bmc, bnc,
                                                                    False)),
               "corrections": rate(lambda: loops.corrections_update_tiled(
                   W, b, vW, vb, sW, sb, dW, db, delta, a_prev, R.RULE_SGD, c, cju, cic, False))}
    _settle()
    out.update(forward_matmul=rate(lambda: a_prev @ W.T), recursion_matmul=rate(lambda: delta @ W),
               corrections_matmul=rate(lambda: delta.T @ a_prev))
    return out




def sweep(args):
    """The performance table: every network x batch size of SWEEP (or --layers/--batch-sizes
    when given), float32, each contender timed as its own block of epochs in this process,
    with the SGEMM rate of the same run and the loop form's products at the widest layer."""
    import numba
    threads = args.threads or numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(threads)
    cases = getattr(args, "sweep_cases", None) or SWEEP
    print(f"NumPy BLAS: {blas_info()}; {threads} threads")
    env_blas = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    if env_blas:
        print(f"  note: {env_blas} is set, which slows NumPy's BLAS; unset both for a full-speed comparison")
    gemm = gemm_rate("float32", threads)
    print(f"SGEMM (NumPy, same run): {gemm:.1f} GFLOP/s")
    have = [lib for lib in ("torch", "sklearn") if lib not in args.skip and _importable(lib)]
    rows = []
    for layers, batches in cases:
        fl = train_flops(layers)
        for bs in batches:
            n = int(min(args.samples, max(4 * bs, SWEEP_FLOP / fl)))
            if bs == 1:
                n = min(n, args.online_samples)
            X, y = make_data(n, layers[0], layers[-1], "float32")
            us = {}
            with _blas_threads(threads):
                for backend in ("loops", "vectorised"):
                    if backend not in args.skip:
                        _settle()
                        ts, _ = time_nnjit(backend, "float32", layers, X, y, bs, args.lr,
                                           args.momentum, args.repeats)
                        us[backend] = statistics.median(ts) / n * 1e6
                if "numpy" not in args.skip:
                    _settle()
                    us["numpy"] = statistics.median(time_numpy("float32", layers, X, y, bs, args.lr,
                                                               args.momentum, args.repeats)[0]) / n * 1e6
                if "torch" in have:
                    _settle()
                    us["torch"] = statistics.median(time_torch("float32", layers, X, y, bs, args.lr,
                                                               args.momentum, args.repeats, threads)) / n * 1e6
                if "sklearn" in have:
                    _settle()
                    us["sklearn"] = statistics.median(time_sklearn("float32", layers, X, y, bs, args.lr,
                                                                   args.momentum, args.repeats)) / n * 1e6
                wide = max(range(1, len(layers)), key=lambda l: layers[l] * layers[l - 1])
                if bs >= 32:
                    _settle()
                prod = product_rates(bs, layers[wide - 1], layers[wide]) if bs >= 32 else {}
            gfl = fl / us["loops"] / 1e3
            row = dict(net="-".join(map(str, layers)), batch_size=bs, samples=n, us_per_sample=us,
                       loops_over_numpy=us["loops"] / us["numpy"] if "numpy" in us else None,
                       loops_gflops=gfl, loops_fraction_of_sgemm=gfl / gemm,
                       products={k: v for k, v in prod.items()})
            rows.append(row)
            _print_sweep_row(row, gemm)
    out = dict(threads=threads, blas=blas_info(), sgemm_gflops=gemm, env_blas=env_blas, rows=rows)
    _print_sweep_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


def _importable(lib):
    try:
        __import__(lib)
        return True
    except ImportError:
        print(f"  {lib} not installed: skipped (pip install 'nnjit[compare]')")
        return False


def _print_sweep_row(r, gemm):
    us = "  ".join(f"{k} {v:.1f}" for k, v in r["us_per_sample"].items())
    ratio = "" if r["loops_over_numpy"] is None else f"; loops/numpy {r['loops_over_numpy']:.2f}"
    print(f"{r['net']} batch {r['batch_size']} ({r['samples']} samples), us/sample: {us}{ratio}; "
          f"loops {r['loops_gflops']:.0f} GFLOP/s = {r['loops_fraction_of_sgemm']:.0%} of SGEMM")
    p = r["products"]
    if p:
        print(f"  widest layer ({p['path']} kernels): "
              + ", ".join(f"{k} {p[k]:.0f} GFLOP/s = {p[k] / p[k + '_matmul']:.0%} of matmul"
                          for k in ("forward", "recursion", "corrections")))


def _print_sweep_table(rows):
    names = list(dict.fromkeys(k for r in rows for k in r["us_per_sample"]))
    print("\n| net | batch | " + " | ".join(names) + " | loops/numpy | loops GFLOP/s | of SGEMM |")
    print("|---|---:|" + "---:|" * (len(names) + 3))
    for r in rows:
        cells = [f"{r['us_per_sample'][k]:.1f}" if k in r["us_per_sample"] else "" for k in names]
        ratio = "" if r["loops_over_numpy"] is None else f"{r['loops_over_numpy']:.2f}"
        print(f"| {r['net']} | {r['batch_size']} | " + " | ".join(cells) +
              f" | {ratio} | {r['loops_gflops']:.0f} | {r['loops_fraction_of_sgemm']:.0%} |")


# ------------------------------------------------------------------ compile and cache time
_COLD = textwrap.dedent("""
    import time, numpy as np
    t0 = time.perf_counter()
    from nnjit import MLP
    X = np.random.default_rng(0).random((64, 8)); y = np.arange(64) % 3
    net = MLP([8, 16, 3], backend="loops", dtype="{dtype}", seed=0)
    t1 = time.perf_counter(); net.fit(X, y, epochs=1, batch_size={bs}); net.predict(X)
    t2 = time.perf_counter(); net.fit(X, y, epochs=1, batch_size={bs}); net.predict(X)
    t3 = time.perf_counter()
    print((t2 - t1) - (t3 - t2), t1 - t0)
""")


def compile_times(dtype="float32", bs=32):
    """(compile s, cache-load s, import s) of a small fit in fresh processes: the first with
    an empty Numba cache, the second reusing it. Each is the first fit's time minus a second,
    warm fit's time in the same process."""
    out = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for _ in range(2):
            r = subprocess.run([sys.executable, "-c", _COLD.format(dtype=dtype, bs=bs)], env=env,
                               capture_output=True, text=True, check=True)
            out.append([float(v) for v in r.stdout.split()])
    return out[0][0], out[1][0], out[1][1]


_RSS = textwrap.dedent("""
    import resource
    from nnjit import MLP
    from nnjit.bench.cpu import make_data
    X, y = make_data({n}, {d}, 10, "float32")
    MLP([{d}, {h}, 10], backend="{backend}", seed=0).fit(X[:64], y[:64], epochs=1, batch_size={bs})
    net = MLP([{d}, {h}, 10], backend="{backend}", seed=0)

    def status(key):                             # Linux: VmRSS now, VmHWM the peak since reset
        return float([l for l in open("/proc/self/status") if l.startswith(key)][0].split()[1])
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                         # reset the peak to the current resident set
        base = status("VmRSS")
        net.fit(X, y, epochs=1, batch_size={bs})
        peak = status("VmHWM")
    except OSError:                              # elsewhere: the process's lifetime peak
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        net.fit(X, y, epochs=1, batch_size={bs})
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(base / 1024, peak / 1024)
""")


def peak_rss(backend, n, d, h, bs):
    """(MiB resident before the fit, data loaded and kernels compiled; MiB peak during a
    one-epoch fit) in a fresh process."""
    r = subprocess.run([sys.executable, "-c", _RSS.format(n=n, d=d, h=h, bs=bs, backend=backend)],
                       capture_output=True, text=True, check=True)
    return tuple(float(v) for v in r.stdout.split())


# ------------------------------------------------------------------ the run
def run(args):
    import numba
    from .. import __version__
    layers = args.layers
    threads = args.threads or numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(threads)
    rows = []
    print(f"nnjit {__version__} bench: network {'-'.join(map(str, layers))} sigmoid/softmax, "
          f"momentum {args.momentum}, lr {args.lr}, {threads} threads, {platform.processor() or platform.machine()}")
    print(f"NumPy BLAS: {blas_info()}")
    env_blas = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    if env_blas:
        print(f"  note: {env_blas} is set, which slows NumPy's BLAS; unset both for a full-speed comparison")
    gemm = {dt: gemm_rate(dt, threads) for dt in args.dtypes}
    print("GEMM (NumPy, same run): " + ", ".join(f"{dt} {g:.1f} GFLOP/s" for dt, g in gemm.items()))
    fl = train_flops(layers)
    Xall, yall = make_data(args.samples, layers[0], layers[-1], "float32")
    have = {}
    for lib in ("torch", "sklearn"):
        if lib in args.skip:
            continue
        try:
            __import__(lib)
            have[lib] = True
        except ImportError:
            print(f"  {lib} not installed: skipped (pip install 'nnjit[compare]')")
    for bs in args.batch_sizes:
        n = min(args.samples, args.online_samples) if bs == 1 else args.samples
        for dt in args.dtypes:
            X, y = Xall[:n].astype(dt), yall[:n]
            res, opt_of = {}, {}
            for opt in args.optimizer:
                tag = "" if args.optimizer == ["sgd"] else f" {opt}"
                for backend in ("loops", "vectorised"):
                    if backend == "vectorised" and "vectorised" in args.skip:
                        continue
                    with _blas_threads(threads):
                        ts, _ = time_nnjit(backend, dt, layers, X, y, bs, args.lr, args.momentum,
                                           args.repeats, opt)
                    res[f"nnjit {backend}{tag}"] = ts
                    opt_of[f"nnjit {backend}{tag}"] = opt
                if "torch" in have:
                    res[f"pytorch{tag}"] = time_torch(dt, layers, X, y, bs, args.lr, args.momentum,
                                                      args.repeats, threads, opt)
                    opt_of[f"pytorch{tag}"] = opt
                if "sklearn" in have and dt in ("float32", "float64") and opt in ("sgd", "nesterov", "adam"):
                    with _blas_threads(threads):
                        res[f"sklearn{tag}"] = time_sklearn(dt, layers, X, y, bs, args.lr, args.momentum,
                                                            args.repeats, opt)
                    opt_of[f"sklearn{tag}"] = opt
            base = statistics.median(res[next(iter(res))])       # the first optimizer's loops
            for name, ts in res.items():
                med = statistics.median(ts)
                row = dict(batch_size=bs, dtype=dt, impl=name, optimizer=opt_of[name], samples=n, epoch_s=med,
                           us_per_sample=med / n * 1e6, ratio_to_loops=med / base,
                           runs=len(ts), gflops=fl * n / med / 1e9)
                row["fraction_of_gemm"] = row["gflops"] / gemm[dt]
                rows.append(row)
            _print_block(rows[-len(res):])
    extra = {}
    if not args.no_compile:
        c, l, imp = compile_times()
        extra["compile"] = dict(compile_s=c, cache_load_s=l, import_s=imp)
        print(f"\ncompilation (fresh process, empty cache): {c:.2f} s; cache load (second fresh "
              f"process): {l:.3f} s; import nnjit: {imp:.2f} s")
    if args.scaling:
        extra["scaling"] = scaling(args, layers, threads)
    out = dict(layers=layers, threads=threads, blas=blas_info(), gemm_gflops=gemm, rows=rows,
               env_blas=env_blas, **extra)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if args.csv:
        import csv
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if args.plot:
        plot(rows, args.plot)
    return out


# ------------------------------------------------------------------ contention
_CONTENTION_CHILD = """
import json, sys, numba, nnjit
from nnjit.bench.cpu import _contention_times
args = json.loads(sys.argv[1])
nnjit.config.ADAPTIVE_THREADS = args.pop()
print(json.dumps(_contention_times(*args)))
"""


def _busy():
    """A process that keeps one core busy (pure Python, no threads) until it is killed."""
    return subprocess.Popen([sys.executable, "-c", "while True:\n    pass"])


def _contention_times(layers, n, bs, dtype, ks, repeats, threads):
    """{k: per-epoch times of a loops fit with k busy processes competing}, in this process
    (its threading layer is fixed at its first parallel call)."""
    import numba
    if threads:
        numba.set_num_threads(threads)
    X, y = make_data(n, layers[0], layers[-1], dtype)
    time_nnjit("loops", dtype, layers, X, y, bs, 0.01, 0.9, 1)          # compile, warm up
    out = {}
    for k in ks:
        procs = [_busy() for _ in range(k)]
        try:
            time.sleep(0.3 if k else 0)                                  # let them start
            out[k] = time_nnjit("loops", dtype, layers, X, y, bs, 0.01, 0.9, repeats)[0]
        finally:
            for p in procs:
                p.kill()
                p.wait()
    from .. import threading_layer
    return {"layer": threading_layer(), "threads": numba.get_num_threads(), "times": out}


def contention(args):
    """Epoch time of the loops backend while K other processes keep cores busy, against the
    quiet machine, under each threading layer (a fresh process per layer). With k busy
    processes an epoch should cost no more than about (k + 1) times its quiet time."""
    layers = args.layers if args.layers != [784, 128, 10] else [64, 64, 10]      # digits-shaped
    n = args.samples if args.samples != 60000 else 1797
    bs = args.batch_sizes[0] if args.batch_sizes != [1, 32, 256] else 32
    ks = list(range(0, args.contention + 1))
    print(f"nnjit bench --contention {args.contention}: loops epoch, network {'-'.join(map(str, layers))}, "
          f"{n} samples, batch {bs}, {args.dtypes[0]}, median of {args.repeats} epochs, "
          f"{os.cpu_count()} CPUs; k busy processes (pure-Python loops) compete")
    print(f"load average before: {os.getloadavg()[0]:.2f} (other jobs on the machine count too)")
    results = []
    for layer in args.layers_to_compare:
        env = dict(os.environ)
        if layer != "nnjit":
            env["NUMBA_THREADING_LAYER"] = layer
        else:
            env.pop("NUMBA_THREADING_LAYER", None)
        payload = json.dumps([layers, n, bs, args.dtypes[0], ks, args.repeats, args.threads,
                              not args.fixed_threads])
        r = subprocess.run([sys.executable, "-c", _CONTENTION_CHILD, payload], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"  {layer}: failed ({r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode})")
            continue
        res = json.loads(r.stdout.strip().splitlines()[-1])
        quiet = statistics.median(res["times"]["0"])
        how = "fixed" if args.fixed_threads else "adaptive (config.ADAPTIVE_THREADS)"
        print(f"\nthreading layer {res['layer']} ({layer}), up to {res['threads']} threads, {how}: "
              f"quiet epoch {quiet * 1e3:.1f} ms")
        print(f"  {'busy':>4} {'epoch ms':>9} {'x quiet':>8} {'bound k+1':>9}")
        for k in ks:
            med = statistics.median(res["times"][str(k)])
            ok = med / quiet <= k + 1 + 0.25
            print(f"  {k:>4} {med * 1e3:>9.1f} {med / quiet:>8.2f} {k + 1:>9} {'' if ok else '  over'}")
            results.append(dict(layer=res["layer"], asked=layer, threads=res["threads"], busy=k,
                                adaptive=not args.fixed_threads,
                                epoch_s=med, ratio=med / quiet, bound=k + 1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(layers=layers, samples=n, batch_size=bs, rows=results), f, indent=1)
    return results


def _print_block(rows):
    r0 = rows[0]
    print(f"\nbatch {r0['batch_size']}, {r0['dtype']}, {r0['samples']} samples, median of {r0['runs']} epochs")
    print(f"  {'implementation':18s} {'epoch s':>9s} {'us/sample':>10s} {'x loops':>8s} {'GFLOP/s':>8s} {'of GEMM':>8s}")
    for r in rows:
        print(f"  {r['impl']:18s} {r['epoch_s']:9.3f} {r['us_per_sample']:10.2f} "
              f"{r['ratio_to_loops']:8.2f} {r['gflops']:8.1f} {r['fraction_of_gemm']:8.1%}")


def scaling(args, layers, threads):
    """Epoch time against samples (3 sizes) and hidden width (3 sizes), loops backend, and
    peak RSS of a fit against samples: memory should follow parameters + batch x width."""
    bs = 32 if 32 in args.batch_sizes else args.batch_sizes[-1]
    res = dict(samples=[], width=[], rss=[])
    base_n = max(args.samples // 4, 1000)
    X, y = make_data(4 * base_n, layers[0], layers[-1], "float32")
    print(f"\nscaling (loops, float32, batch {bs}):")
    for n in (base_n, 2 * base_n, 4 * base_n):
        ts, _ = time_nnjit("loops", "float32", layers, X[:n], y[:n], bs, args.lr, args.momentum, args.repeats)
        res["samples"].append((n, statistics.median(ts)))
    t0 = res["samples"][0][1]
    print("  samples: " + ", ".join(f"{n}: {t:.3f} s ({t / t0:.2f}x)" for n, t in res["samples"]))
    for h in (layers[1] // 2, layers[1], layers[1] * 2):
        ls = [layers[0], h] + layers[2:]
        ts, net = time_nnjit("loops", "float32", ls, X[:2 * base_n], y[:2 * base_n], bs, args.lr,
                             args.momentum, args.repeats)
        res["width"].append((net.n_params, statistics.median(ts)))
    p0, t0 = res["width"][0]
    print("  parameters: " + ", ".join(f"{p}: {t:.3f} s ({t / t0:.2f}x for {p / p0:.2f}x)" for p, t in res["width"]))
    for n in (base_n, 4 * base_n):
        before, peak = peak_rss("loops", n, layers[0], layers[1], bs)
        res["rss"].append((n, before, peak))
    print("  peak RSS of a one-epoch fit (fresh process; data already loaded): " + ", ".join(
        f"{n} samples: {b:.0f} -> {p:.0f} MiB (+{p - b:.1f})" for n, b, p in res["rss"]))
    return res


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib: pip install 'nnjit[plot]'")
        return
    dts = sorted({r["dtype"] for r in rows})
    impls = [i for i in ("nnjit loops", "nnjit vectorised", "pytorch", "sklearn") if any(r["impl"] == i for r in rows)]
    bss = sorted({r["batch_size"] for r in rows})
    fig, axes = plt.subplots(1, len(dts), figsize=(5 * len(dts), 3.6), squeeze=False)
    for ax, dt in zip(axes[0], dts):
        width = 0.8 / len(impls)
        for k, impl in enumerate(impls):
            vals = [next((r["us_per_sample"] for r in rows if r["dtype"] == dt and r["batch_size"] == b
                          and r["impl"] == impl), np.nan) for b in bss]
            ax.bar(np.arange(len(bss)) + k * width, vals, width, label=impl)
        ax.set_xticks(np.arange(len(bss)) + 0.4 - width / 2, [str(b) for b in bss])
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("µs per sample (log)")
        ax.set_title(f"one training epoch, {dt}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


def build_parser(p=None):
    from ..clihelp import HelpFormatter
    p = p or argparse.ArgumentParser(prog="nnjit bench", description=__doc__,
                                     formatter_class=HelpFormatter)
    ints = lambda s: [int(v) for v in s.split(",") if v]          # noqa: E731
    p.add_argument("--layers", type=ints, default=[784, 128, 10], help="sizes, e.g. 784,128,10")
    p.add_argument("--batch-sizes", type=ints, default=[1, 32, 256],
                   help="batch sizes to time, e.g. 1,32,256 (1: online)")
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=["float32", "float64"],
                   help="precisions to time, e.g. float32,float64")
    p.add_argument("--samples", type=int, default=60000, help="samples per epoch (MNIST-sized)")
    p.add_argument("--online-samples", type=int, default=6000,
                   help="samples per epoch at batch size 1 (the slow peers take minutes on 60000)")
    p.add_argument("--threads", type=int, default=None, help="threads for every library (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per contender (median)")
    p.add_argument("--lr", type=float, default=0.01,
                   help="learning rate (0.1 with momentum 0.9 diverges online, and velocities "
                        "sinking into denormal floats slow every implementation)")
    p.add_argument("--momentum", type=float, default=0.9, help="momentum mu of sgd")
    p.add_argument("--optimizer", type=lambda s: s.split(","), default=["sgd"],
                   help="update rules to time, e.g. sgd,adam (of: " + ",".join(OPTIMIZERS) + "); "
                        "'x loops' is relative to the first one's loops epoch")
    p.add_argument("--skip", type=lambda s: s.split(","), default=[], help="e.g. torch,sklearn")
    p.add_argument("--no-compile", action="store_true", help="skip the compile/cache-load measurement")
    p.add_argument("--sweep", action="store_true",
                   help="the README's table: nets x batch sizes, float32, loops vs vectorised vs NumPy "
                        "vs PyTorch vs scikit-learn, with SGEMM and per-product GFLOP/s (--layers and "
                        "--batch-sizes, when not the defaults, replace the nets)")
    p.add_argument("--compare", metavar="REV",
                   help="instead: the regression gate - this tree's loops epochs against git "
                        "revision REV's (e.g. main, HEAD~1), every sweep row and online at "
                        "784-128-10 and 784-512-512-10, alternating blocks, a ratio per row, rows "
                        "over 1.25x slower marked (module nnjit.bench.compare)")
    p.add_argument("--rounds", type=int, default=3,
                   help="--compare: alternating blocks per tree (each a fresh process)")
    p.add_argument("--quick", action="store_true",
                   help="--compare: a quarter of the samples per row, for a smoke run")
    p.add_argument("--scaling", action="store_true", help="also time 3 sample counts and 3 widths, and peak RSS")
    p.add_argument("--json", metavar="OUT.json", help="also write the rows as JSON")
    p.add_argument("--csv", metavar="OUT.csv", help="also write the rows as CSV")
    p.add_argument("--plot", metavar="OUT.png", help="bar chart PNG")
    p.add_argument("--sklearn", action="store_true",
                   help="instead: scikit-learn's MLP vs nnjit.sklearn fit times (its own options "
                        "follow: nnjit bench --sklearn --help; module nnjit.bench.sklearn)")
    p.add_argument("--contention", type=int, default=None, metavar="K",
                   help="instead: time a loops epoch (digits-shaped 64-64-10, 1797 samples, batch 32, "
                        "unless --layers/--samples/--batch-sizes say otherwise) with 0..K busy "
                        "processes competing, under each threading layer")
    p.add_argument("--fixed-threads", action="store_true",
                   help="--contention with nnjit.config.ADAPTIVE_THREADS off (always all threads)")
    p.add_argument("--layers-to-compare", type=lambda s: s.split(","), default=["nnjit", "omp"],
                   help="threading layers for --contention: nnjit (nnjit's choice), tbb, omp, workqueue")
    return p


def _sklearn_argv(argv):
    """argv without --sklearn when it asks for the scikit-learn table, else None."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return [a for a in argv if a != "--sklearn"] if "--sklearn" in argv else None


def main(argv=None):
    rest = _sklearn_argv(argv)
    if rest is not None:
        from . import sklearn as skbench
        return skbench.main(rest)
    return cmd(build_parser().parse_args(argv))


def cmd(args):
    if getattr(args, "sklearn", False):       # reached through a parser without its options
        from . import sklearn as skbench
        return skbench.main([])
    for name in ("samples", "online_samples", "repeats"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"nnjit bench: --{name.replace('_', '-')} must be positive")
    if len(args.layers) < 2 or min(args.layers) <= 0 or min(args.batch_sizes) <= 0:
        raise SystemExit("nnjit bench: --layers and --batch-sizes need positive sizes")
    unknown = set(args.optimizer) - set(OPTIMIZERS)
    if unknown:
        raise SystemExit(f"nnjit bench: unknown --optimizer {sorted(unknown)}; choose from {','.join(OPTIMIZERS)}")
    bad = set(args.dtypes) - {"float32", "float64"}
    if bad:
        raise SystemExit(f"nnjit bench: unknown dtype(s) {sorted(bad)}")
    if args.compare:
        from .compare import compare
        if args.rounds <= 0:
            raise SystemExit("nnjit bench: --rounds must be positive")
        compare(args.compare, rounds=args.rounds, repeats=args.repeats,
                flop=(1.25e9 if args.quick else 5e9), online=(750 if args.quick else 3000),
                lr=args.lr, momentum=args.momentum, json_path=args.json)
        return 0
    if args.sweep:
        default = build_parser().parse_args([])
        args.sweep_cases = (None if (args.layers, args.batch_sizes) == (default.layers, default.batch_sizes)
                            else [(args.layers, args.batch_sizes)])
        sweep(args)
        return 0
    if args.contention is not None:
        if args.contention < 0:
            raise SystemExit("nnjit bench: --contention must be >= 0")
        contention(args)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
