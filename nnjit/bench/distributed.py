"""Scaling of nnjit.distributed.fit on one machine: 1 vs N Dask workers, epoch time and the
share of it that is not the workers' compute (communication, scheduling, the driver's update);
and, with ``--memory``, the peak memory of out-of-core fitting (nnjit.data).

    flock /tmp/nnjit-bench.lock python -m nnjit.bench.distributed            # 1 and 2 workers
    python -m nnjit.bench.distributed --workers 1 2 4 --samples 200000 --epochs 7
    flock /tmp/nnjit-bench.lock python -m nnjit.bench.distributed --memory   # peak RSS table

Each configuration starts a LocalCluster of single-threaded worker processes (worker_threads=1,
so N workers use N cores), builds the shards, runs one warm-up epoch (compilation, first
transfers) and then ``--epochs`` timed ones; the table gives medians. "compute" is the slowest
worker's time inside the kernels, summed over the epoch's steps; "other" = 1 - compute / epoch
is the communication and coordination share. The reference row is MLP.fit(batch_size=None)
in this process on one thread, no Dask. Not a test: numbers depend on the machine and its load.
"""
import argparse
import os
import statistics
import time

import numpy as np


def _cluster(n):
    import dask
    import distributed
    dask.config.set({"distributed.logging.distributed": "error"})
    cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=50)
    return cluster, distributed.Client(cluster, set_as_default=False)


def run(samples, features, hidden, classes, epochs, workers, modes, dtype, batch_size, seed=0):
    """Rows of the scaling table as dicts."""
    import numba

    from .. import distributed as nd
    from ..model import MLP
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(samples, features)).astype(dtype)
    y = (X[:, :classes] @ rng.normal(size=classes)).argsort().argsort() * classes // samples
    layers = [features, hidden, classes]
    rows = []

    numba.set_num_threads(1)
    net = MLP(layers, seed=seed, dtype=dtype)
    net.fit(X, y, epochs=1, batch_size=None)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        net.fit(X, y, epochs=1, batch_size=None, lr=0.1)
        times.append(time.perf_counter() - t0)
    rows.append(dict(mode="MLP.fit, full batch, 1 thread", workers=1,
                     epoch_s=statistics.median(times), compute_s=statistics.median(times), bytes=0))

    P = MLP(layers, dtype=dtype).n_params
    for n in workers:
        cluster, client = _cluster(n)
        try:
            for mode in modes:
                bs = None if mode == "sync" else batch_size
                net = MLP(layers, seed=seed, dtype=dtype)
                timings = []
                nd.fit(net, X, y, client=client, mode=mode, epochs=epochs + 1, lr=0.1,
                       batch_size=bs, worker_threads=1, timings=timings)
                t = timings[1:]             # the first epoch compiles and warms up
                rows.append(dict(mode=f"{mode}" + ("" if bs is None else f", local batch {bs}"),
                                 workers=n, epoch_s=statistics.median(x["wall_s"] for x in t),
                                 compute_s=statistics.median(x["compute_s"] for x in t),
                                 bytes=t[0]["bytes"]))
        finally:
            client.close()
            cluster.close()
    for r in rows:
        r["params"] = P
    return rows


def table(rows):
    base = {}
    for r in rows:
        base.setdefault(r["mode"], r["epoch_s"])
    out = ["| mode | workers | epoch (s) | speed-up vs 1 worker | workers' compute (s) | "
           "other share | bytes moved / epoch |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        other = max(0.0, 1 - r["compute_s"] / r["epoch_s"])
        out.append(f"| {r['mode']} | {r['workers']} | {r['epoch_s']:.3f} | "
                   f"{base[r['mode']] / r['epoch_s']:.2f} | {r['compute_s']:.3f} | "
                   f"{100 * other:.0f} % | {r['bytes']:,} |")
    return "\n".join(out)


_CHILD = r"""
import json, resource, sys, time
import numpy as np
from nnjit import MLP, config


def rss():
    # (current, peak) resident set in KiB; clear_refs "5" resets the peak (Linux >= 4.0)
    with open("/proc/self/status") as f:
        v = dict(l.split(":", 1) for l in f if l.startswith(("VmRSS", "VmHWM")))
    return int(v["VmRSS"].split()[0]), int(v["VmHWM"].split()[0])


path, how, chunk, D = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
config.STREAM_CHUNK_BYTES = chunk
net = MLP([D, 8, 2], seed=0)
Xw = np.zeros((64, D), np.float32)
net.fit(Xw, np.arange(64) % 2, epochs=1)              # compile, also for read-only arrays
Xw.flags.writeable = False
net.fit(Xw, np.arange(64) % 2, epochs=1)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = rss()[0]
X = np.load(path + "X.npy", mmap_mode="r" if how == "memmap" else None)
y = np.load(path + "y.npy", mmap_mode="r" if how == "memmap" else None)
t0 = time.perf_counter()
net.fit(X, y, epochs=1, batch_size=256)
fit = rss()[1], time.perf_counter() - t0
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
t0 = time.perf_counter()
acc = net.score(X, y)
print(json.dumps(dict(base_kib=base, fit_kib=fit[0], fit_s=fit[1], score_kib=rss()[1],
                      score_s=time.perf_counter() - t0, accuracy=acc)))
"""

def memory(sizes, features, chunk_bytes, directory):
    """Peak RSS of a fresh process that fits one epoch (and scores) on X of each size,
    streamed from a memmap and loaded in memory: rows of the memory table as dicts."""
    import json
    import subprocess
    import sys
    rows = []
    for n in sizes:
        path = os.path.join(directory, f"nnjit-oocore-{n}-")
        rng = np.random.default_rng(0)
        X = np.lib.format.open_memmap(path + "X.npy", mode="w+", dtype=np.float32, shape=(n, features))
        w = rng.normal(size=features).astype(np.float32)
        y = np.lib.format.open_memmap(path + "y.npy", mode="w+", dtype=np.int8, shape=(n,))
        for s in range(0, n, 2**18):            # written in slices: the parent stays small too
            block = rng.normal(size=(min(2**18, n - s), features)).astype(np.float32)
            X[s:s + block.shape[0]] = block
            y[s:s + block.shape[0]] = block @ w > 0
        X.flush()
        y.flush()
        data = X.nbytes + y.nbytes
        del X, y
        try:
            for how in ("memmap", "in memory"):
                out = subprocess.run([sys.executable, "-c", _CHILD, path, how, str(chunk_bytes),
                                      str(features)], capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(dict(how=how, data_mib=data / 2**20, chunk_mib=chunk_bytes / 2**20,
                                 base_mib=r["base_kib"] / 1024, fit_mib=r["fit_kib"] / 1024,
                                 score_mib=r["score_kib"] / 1024, fit_s=r["fit_s"],
                                 score_s=r["score_s"], accuracy=r["accuracy"]))
        finally:
            for f in ("X.npy", "y.npy"):
                os.remove(path + f)
    return rows


def memory_table(rows):
    out = ["| X, y | data (MiB) | chunk budget (MiB) | RSS before (MiB) | fit: peak - before (MiB) | "
           "score: peak - before (MiB) | fit (s) | score (s) | accuracy |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['how']} | {r['data_mib']:.0f} | {r['chunk_mib']:.0f} | {r['base_mib']:.0f} | "
                   f"{r['fit_mib'] - r['base_mib']:.0f} | {r['score_mib'] - r['base_mib']:.0f} | "
                   f"{r['fit_s']:.1f} | {r['score_s']:.1f} | {r['accuracy']:.3f} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nnjit.bench.distributed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--epochs", type=int, default=5, help="timed epochs (after one warm-up)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--modes", nargs="+", default=["sync", "average"], choices=["sync", "average"])
    p.add_argument("--batch-size", type=int, default=256, help="local mini-batch of average mode")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--memory", action="store_true", help="measure out-of-core peak RSS instead")
    p.add_argument("--memory-rows", type=int, nargs="+", default=[2_000_000, 8_000_000])
    p.add_argument("--chunk-mib", type=float, default=32)
    p.add_argument("--dir", default="/tmp", help="where --memory writes its data files")
    a = p.parse_args(argv)
    if a.memory:
        rows = memory(a.memory_rows, 32, int(a.chunk_mib * 2**20), a.dir)
        print(f"# [32, 8, 2] MLP, float32 X with 32 features, int8 y, one epoch of batch 256 "
              f"then score; cpu count {os.cpu_count()}")
        print(memory_table(rows))
        return
    rows = run(a.samples, a.features, a.hidden, a.classes, a.epochs, a.workers, a.modes,
               a.dtype, a.batch_size)
    print(f"# {a.samples} samples x {a.features} features, layers [{a.features}, {a.hidden}, "
          f"{a.classes}] = {rows[0]['params']} parameters, {a.dtype}, cpu count {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(table(rows))


if __name__ == "__main__":
    main()
