"""Scaling of nnjit.distributed.fit on one machine: 1 vs N Dask workers, epoch time and the
share of it that is not the workers' compute (communication, scheduling, the driver's update).

    flock /tmp/nnjit-bench.lock python -m nnjit.distributed_bench            # 1 and 2 workers
    python -m nnjit.distributed_bench --workers 1 2 4 --samples 200000 --epochs 7

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

    from . import distributed as nd
    from .model import MLP
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


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nnjit.distributed_bench", description=__doc__,
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
    a = p.parse_args(argv)
    rows = run(a.samples, a.features, a.hidden, a.classes, a.epochs, a.workers, a.modes,
               a.dtype, a.batch_size)
    print(f"# {a.samples} samples x {a.features} features, layers [{a.features}, {a.hidden}, "
          f"{a.classes}] = {rows[0]['params']} parameters, {a.dtype}, cpu count {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(table(rows))


if __name__ == "__main__":
    main()
