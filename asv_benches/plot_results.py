"""Loop form vs vectorised form, from one asv results file: a Markdown table (printed) and
a small plot (docs/loop_vs_vectorised.png). Reads asv's JSON directly; needs matplotlib
only for the plot.

    python asv_benches/plot_results.py                       # newest results file
    python asv_benches/plot_results.py RESULTS.json --png docs/loop_vs_vectorised.png
"""
import argparse
import ast
import glob
import itertools
import json
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHES = [("bench_mlp.Speed.time_epoch", "epoch (2048 samples)"),
           ("bench_mlp.Speed.time_forward", "forward, one batch"),
           ("bench_mlp.Speed.time_gradients", "gradients, one batch")]


def newest_results():
    files = [f for f in glob.glob(os.path.join(HERE, "results", "*", "*.json"))
             if os.path.basename(f) != "machine.json"]
    if not files:
        raise SystemExit("no asv results yet: run `asv run` first")
    return max(files, key=os.path.getmtime)


def load(path, name):
    """{param tuple: (median, q25, q75)} of one benchmark in an asv results file."""
    d = json.load(open(path))
    cols = d["result_columns"]
    if name not in d["results"]:
        raise SystemExit(f"{path} has no results for {name}")
    row = dict(zip(cols, d["results"][name]))
    params = [[ast.literal_eval(v) for v in p] for p in row["params"]]
    q25 = row.get("stats_q_25") or [None] * len(row["result"])
    q75 = row.get("stats_q_75") or [None] * len(row["result"])
    out = {}
    for combo, med, lo, hi in zip(itertools.product(*params), row["result"], q25, q75):
        if med is not None and not (isinstance(med, float) and math.isnan(med)):
            out[combo] = (med, lo, hi)
    return d, out


def fmt(t):
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} µs"


def table(path):
    d, _ = load(path, BENCHES[0][0])
    lines = [f"asv results {os.path.relpath(path)} (commit {d['commit_hash'][:8]}, "
             f"{d['env_name']}); medians, ratio = loops / vectorised (< 1: loops faster)", "",
             "| benchmark | network | batch | loops | vectorised | loops/vectorised |",
             "|---|---|---:|---:|---:|---:|"]
    for name, label in BENCHES:
        _, res = load(path, name)
        combos = sorted({(c[0], c[1], c[3]) for c in res}, key=lambda c: (c[1], c[2]))
        for threads, network, batch in combos:
            lo = res.get((threads, network, "loops", batch))
            ve = res.get((threads, network, "vectorised", batch))
            if not (lo and ve):
                continue
            lines.append(f"| {label} | {network} | {batch} | {fmt(lo[0])} | {fmt(ve[0])} | "
                         f"{lo[0] / ve[0]:.2f} |")
    threads = sorted({c[0] for c in load(path, BENCHES[0][0])[1]})
    lines.append("")
    lines.append(f"threads (Numba and BLAS): {', '.join(map(str, threads))}")
    return "\n".join(lines)


def plot(path, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    d, res = load(path, BENCHES[0][0])
    networks = sorted({c[1] for c in res}, key=lambda n: int(n.split("-")[0]))
    fig, axes = plt.subplots(1, len(networks), figsize=(3.4 * len(networks), 2.8), dpi=100,
                             squeeze=False)
    styles = {"loops": ("C0", "o"), "vectorised": ("C1", "s"), "cuda": ("C2", "^")}
    for ax, network in zip(axes[0], networks):
        for backend, (color, marker) in styles.items():
            pts = sorted((c[3], v) for c, v in res.items() if c[1] == network and c[2] == backend)
            if not pts:
                continue
            x = [p[0] for p in pts]
            med = [p[1][0] for p in pts]
            ax.plot(x, med, marker=marker, color=color, label=backend)
            if all(p[1][1] is not None and p[1][2] is not None for p in pts):
                ax.fill_between(x, [p[1][1] for p in pts], [p[1][2] for p in pts],
                                color=color, alpha=0.2, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([1, 32, 256], ["1", "32", "256"])
        ax.set_xlabel("batch size")
        ax.set_title(f"MLP {network}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("one epoch, 2048 samples (s)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"nnjit loop form vs vectorised form (asv, {d['commit_hash'][:8]})",
                 fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, dpi=100)
    print(f"wrote {png} ({os.path.getsize(png) // 1024} KB)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", help="asv results JSON (default: the newest)")
    ap.add_argument("--png", help="also write the plot here, e.g. docs/loop_vs_vectorised.png")
    args = ap.parse_args(argv)
    path = args.results or newest_results()
    print(table(path))
    if args.png:
        plot(path, args.png)


if __name__ == "__main__":
    main()
