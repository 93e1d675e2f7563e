"""GPU benchmark of the cuda backend, in one call: ``python -m nnjit.bench.gpu [--quick]``.

1. Correctness: trains 784-128-10 and 784-512-512-10 (relu, softmax, cross-entropy) for two
   epochs with momentum from the same initial weights on the cuda backend (simple and tiled
   kernels, float32 and float64) and on PyTorch (fp32), and compares every weight with the
   float64 loops backend: max |w - w_ref| / max |w_ref| per network.
2. Timing: one training epoch of the same networks on synthetic MNIST-sized data (60,000 x 784,
   10 classes; 16,384 with --quick) at batch sizes 256, 1024 and 4096, for
   * numba-simple / numba-tiled: the cuda backend's epoch (nnjit.cuda.CUDAEngine.train_epoch:
     every batch on the device, the shuffled order copied once per epoch),
   * torch: PyTorch CUDA, fp32 with TF32 off, the same momentum SGD (v <- mu v - eta g;
     w <- w + v, as multi-tensor foreach ops) and the same per-epoch shuffle, data on the GPU,
   * loops: the loops backend (float32) on this machine's CPUs, timed on a subset of the
     samples and scaled to the full epoch (the table says so).
   GPU epochs are timed with CUDA events (numba's or torch's) after one warm-up epoch (which
   also compiles), as the median of --reps epochs. Prints a table and writes JSON (--json).

Without a GPU it says so and exits with status 2; ``--tiny`` (tiny networks, a few dozen
samples) runs the whole script in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), only to
check that it executes. Not for: tuning, or timing anything but an epoch.
"""
import argparse
import json
import math
import platform
import statistics
import sys
import time

import numpy as np

from .. import config
from ..model import MLP
from .. import rules as R

ARCHS = {"784-128-10": [784, 128, 10], "784-512-512-10": [784, 512, 512, 10]}
TINY_ARCHS = {"6-5-3": [6, 5, 3], "6-7-5-3": [6, 7, 5, 3]}
BATCHES = (256, 1024, 4096)
TINY_BATCHES = (5, 24)
LR, MU = 0.05, 0.9
ACT = "relu"
RULE_SGD, _PARAMS = R.check("sgd", momentum=MU)
_HYPER = R.hyper(LR, _PARAMS)       # heavy-ball sgd


def make_data(M, D, K, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((M, D), dtype=np.float32), rng.integers(0, K, M).astype(np.int64)


def _torch():
    """torch with CUDA, or (None, reason)."""
    try:
        import torch
    except ImportError:
        return None, "torch is not installed (pip install torch)"
    if not torch.cuda.is_available():
        return None, "torch has no CUDA device"
    torch.backends.cuda.matmul.allow_tf32 = False      # fp32 as fp32: compare like with like
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return torch, None


def _torch_model(torch, Ws, bs, device="cuda"):
    """nn.Sequential of Linear + ReLU with our weights W (N_l, N_{l-1}) = Linear.weight."""
    mods = []
    for l, (W, b) in enumerate(zip(Ws, bs)):
        lin = torch.nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.asarray(W, np.float32)))
            lin.bias.copy_(torch.from_numpy(np.asarray(b, np.float32)))
        mods.append(lin)
        if l < len(Ws) - 1:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods).to(device)


def _torch_epoch(torch, model, vel, X, y, batch, perm):
    """One epoch of momentum SGD on the mean cross-entropy, batches in perm's order."""
    params = list(model.parameters())
    F = torch.nn.functional
    for s in range(0, X.shape[0], batch):
        idx = perm[s:s + batch]
        loss = F.cross_entropy(model(X[idx]), y[idx])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            torch._foreach_mul_(vel, MU)
            torch._foreach_add_(vel, grads, alpha=-LR)
            torch._foreach_add_(params, vel)


def _net(layers, backend, dtype):
    return MLP(layers, activation=ACT, output="softmax", backend=backend, dtype=dtype, seed=0)


# ---------------------------------------------------------------- correctness
def check(layers, n, batch, torch, device="cuda"):
    """Weights after 2 epochs (unshuffled, momentum) vs the float64 loops backend."""
    X, y = make_data(n, layers[0], layers[-1], seed=1)
    fit = dict(epochs=2, lr=LR, momentum=MU, batch_size=batch, shuffle=False)
    ref = _net(layers, "loops", "float64")
    W0, b0 = ref.weights, ref.biases
    ref.fit(X, y, **fit)
    Wr = np.concatenate([w.ravel() for w in ref.weights + ref.biases])
    scale = np.abs(Wr).max()
    rows = []
    for kernels in ("simple", "tiled"):
        for dtype in ("float32", "float64"):
            config.CUDA_KERNELS = kernels
            net = _net(layers, "cuda", dtype).fit(X, y, **fit)
            w = np.concatenate([x.ravel() for x in net.weights + net.biases]).astype(np.float64)
            rows.append((f"numba-{kernels} {dtype}", float(np.abs(w - Wr).max() / scale),
                         1e-9 if dtype == "float64" else 1e-3))
    if torch is not None:
        w = torch_weights(torch, W0, b0, X, y, batch, 2, device)
        rows.append(("torch float32", float(np.abs(w - Wr).max() / scale), 1e-3))
    return [dict(impl=r[0], rel_err=r[1], tol=r[2], ok=bool(r[1] <= r[2])) for r in rows]


def torch_weights(torch, W0, b0, X, y, batch, epochs, device="cuda"):
    """PyTorch's flat [W..., b...] after training from W0, b0 on unshuffled batches."""
    model = _torch_model(torch, W0, b0, device)
    vel = [torch.zeros_like(p) for p in model.parameters()]
    Xd, yd = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
    perm = torch.arange(X.shape[0], device=device)
    for _ in range(epochs):
        _torch_epoch(torch, model, vel, Xd, yd, batch, perm)
    lin = [m for m in model if isinstance(m, torch.nn.Linear)]
    return np.concatenate([m.weight.detach().cpu().numpy().ravel() for m in lin]
                          + [m.bias.detach().cpu().numpy().ravel() for m in lin]).astype(np.float64)


# ---------------------------------------------------------------- timing
def _median(xs):
    return float(statistics.median(xs)) if xs else math.nan


def time_numba(layers, X, y, batch, kernels, reps):
    from .. import cuda as nc
    config.CUDA_KERNELS = kernels
    net = _net(layers, "cuda", "float32")
    Xc, Y = net.check_X(X), net.check_y(y, X.shape[0], fit=True)
    eng = net.engine
    t = time.perf_counter()
    eng.begin_fit(Xc, Y, batch)          # the data's one trip to the device
    h2d = time.perf_counter() - t
    rng = np.random.default_rng(0)
    dev, host = [], []
    for r in range(reps + 1):           # the first epoch warms up (and compiles)
        order = rng.permutation(X.shape[0]).astype(np.int64)
        _, ev, wall = nc.timed(lambda: eng.train_epoch(order, batch, RULE_SGD, _HYPER, net.loss_code))
        if r:
            dev.append(ev)
            host.append(wall)
    eng.end_fit()
    sim = nc.simulated()                # the simulator's events measure nothing
    return dict(ms=_median(host if sim else dev), wall_ms=_median(host), h2d_s=h2d,
                epochs=dev if not sim else host)


def time_torch(torch, layers, X, y, batch, reps):
    net = _net(layers, "loops", "float32")
    model = _torch_model(torch, net.weights, net.biases)
    vel = [torch.zeros_like(p) for p in model.parameters()]
    Xd, yd = torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda()
    dev, host = [], []
    for r in range(reps + 1):
        perm = torch.randperm(X.shape[0], device="cuda")
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t = time.perf_counter()
        e0.record()
        _torch_epoch(torch, model, vel, Xd, yd, batch, perm)
        e1.record()
        e1.synchronize()
        if r:
            dev.append(e0.elapsed_time(e1))
            host.append((time.perf_counter() - t) * 1e3)
    return dict(ms=_median(dev), wall_ms=_median(host), epochs=dev)


def time_loops(layers, X, y, batch, n):
    """One loops-backend epoch over the first n samples, scaled to X's full epoch."""
    net = _net(layers, "loops", "float32")
    n = min(n, X.shape[0])
    net.fit(X[:min(n, 2 * batch)], y[:min(n, 2 * batch)], epochs=1, batch_size=batch)  # compile
    Xc, Y = net.check_X(X[:n]), net.check_y(y[:n], n)
    eng = net.engine
    eng.begin_fit(Xc, Y, batch)
    order = np.random.default_rng(0).permutation(n).astype(np.int64)
    t = time.perf_counter()
    eng.train_epoch(order, batch, RULE_SGD, _HYPER, net.loss_code)
    dt = (time.perf_counter() - t) * 1e3
    eng.end_fit()
    return dict(ms=dt * X.shape[0] / n, wall_ms=dt * X.shape[0] / n, measured_samples=n,
                measured_ms=dt, reps=1)


# ---------------------------------------------------------------- the report
def _fmt(ms):
    return "-" if ms is None or not math.isfinite(ms) else (f"{ms:9.2f}" if ms < 1e4 else f"{ms:9.0f}")


def table(results, M):
    lines = [f"epoch times, {M} samples, median ms (CUDA events for GPU rows); vs torch, vs "
             "loops: their epoch time over this row's (above 1: this row is faster)",
             f"{'network':<16}{'batch':>6}  {'impl':<13}{'epoch ms':>10}{'wall ms':>10}"
             f"{'samples/s':>12}{'vs torch':>10}{'vs loops':>10}"]
    for r in results:
        torch_ms = r["impls"].get("torch", {}).get("ms")
        loops_ms = r["impls"].get("loops", {}).get("ms")
        for name, t in r["impls"].items():
            ms = t.get("ms")
            if ms is None:
                lines.append(f"{r['network']:<16}{r['batch']:>6}  {name:<13}  skipped: {t.get('skipped')}")
                continue
            vs_t = f"{torch_ms / ms:9.2f}x" if torch_ms and name != "torch" else ""
            vs_l = f"{loops_ms / ms:9.1f}x" if loops_ms and name != "loops" else ""
            note = f"  (scaled from {t['measured_samples']} samples)" if "measured_samples" in t else ""
            lines.append(f"{r['network']:<16}{r['batch']:>6}  {name:<13}{_fmt(ms):>10}"
                         f"{_fmt(t.get('wall_ms')):>10}{M / ms * 1e3:12.0f}{vs_t:>10}{vs_l:>10}{note}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nnjit.bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="16,384 samples, 3 timed epochs")
    p.add_argument("--tiny", action="store_true",
                   help="tiny networks and data: checks the script runs (e.g. in the simulator)")
    p.add_argument("--samples", type=int, help="samples per epoch (default 60000; quick 16384)")
    p.add_argument("--reps", type=int, help="timed epochs after the warm-up (default 5; quick 3)")
    p.add_argument("--loops-samples", type=int,
                   help="samples the loops epoch is measured on (default 8192; quick 4096)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-loops", action="store_true")
    p.add_argument("--json", default="gpu_bench.json", help="where to write the results")
    args = p.parse_args(argv)

    try:
        from .. import cuda as nc
        nc.check_available()
    except (ImportError, OSError) as e:
        print(f"gpu_bench: no CUDA GPU to measure: {e}", file=sys.stderr)
        return 2
    sim = nc.simulated()
    if sim and not args.tiny:
        print("gpu_bench: running in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), which "
              "measures nothing; only --tiny runs there, to check the script executes. Run "
              "without the simulator on a machine with an NVIDIA GPU.", file=sys.stderr)
        return 2

    archs, batches = (TINY_ARCHS, TINY_BATCHES) if args.tiny else (ARCHS, BATCHES)
    M = args.samples or (24 if args.tiny else 16384 if args.quick else 60000)
    reps = args.reps or (1 if args.tiny else 3 if args.quick else 5)
    n_loops = args.loops_samples or (M if args.tiny else 4096 if args.quick else 8192)
    if sim:                              # small blocks keep the simulator's threads few
        config.CUDA_THREADS, config.CUDA_TILE = 32, 8
    torch, why = (None, "--no-torch") if args.no_torch else _torch()
    saved_kernels = config.CUDA_KERNELS

    info = dict(device=nc.device_name(), simulated=sim, python=platform.python_version(),
                numpy=np.__version__, samples=M, reps=reps, batches=list(batches),
                lr=LR, momentum=MU, activation=ACT, cuda_threads=config.CUDA_THREADS,
                cuda_tile=config.CUDA_TILE, torch=(torch.__version__ if torch else f"skipped: {why}"))
    try:
        import numba
        info["numba"] = numba.__version__
        import numba_cuda
        info["numba_cuda"] = numba_cuda.__version__
    except (ImportError, AttributeError):
        pass
    print("gpu_bench:", ", ".join(f"{k}={v}" for k, v in info.items()))
    t_start = time.perf_counter()

    correctness, ok = {}, True
    try:
        for name, layers in archs.items():
            n = 12 if args.tiny else 1024
            rows = check(layers, n, 5 if args.tiny else 128, torch)
            correctness[name] = rows
            for r in rows:
                ok &= r["ok"]
                print(f"correctness {name:<16} {r['impl']:<22} rel err {r['rel_err']:.2e} "
                      f"(tol {r['tol']:.0e}) {'PASS' if r['ok'] else 'FAIL'}")

        results = []
        for name, layers in archs.items():
            X, y = make_data(M, layers[0], layers[-1])
            for batch in batches:
                impls = {}
                for kernels in ("simple", "tiled"):
                    impls[f"numba-{kernels}"] = time_numba(layers, X, y, batch, kernels, reps)
                impls["torch"] = (time_torch(torch, layers, X, y, batch, reps) if torch
                                  else {"skipped": why})
                impls["loops"] = ({"skipped": "--no-loops"} if args.no_loops
                                  else time_loops(layers, X, y, batch, n_loops))
                results.append(dict(network=name, batch=batch, impls=impls))
                print(f"timed {name} batch {batch}: " + ", ".join(
                    f"{k} {_fmt(v.get('ms')).strip()} ms" for k, v in impls.items()), flush=True)
    finally:
        config.CUDA_KERNELS = saved_kernels

    print()
    print(table(results, M))
    info["seconds"] = time.perf_counter() - t_start
    with open(args.json, "w") as fh:
        json.dump(dict(info=info, correctness=correctness, timing=results, correct=ok), fh, indent=1)
    print(f"\nall correctness checks {'PASS' if ok else 'FAIL'}; wrote {args.json} "
          f"({info['seconds']:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
