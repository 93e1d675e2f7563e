"""``nnjit bench --compare REV``: the regression gate. This tree's loop form against another
revision's, every sweep row and online (batch 1) at 784-128-10 and 784-512-512-10, timed in
alternating blocks in one session, a ratio per row and a mark on any row more than
``SLOWER`` times slower.

Why this shape: the machine is shared and noisy, and a kernel change once slowed online
training 2x unseen. Each block is a fresh Python process for one tree (its own
``NUMBA_CACHE_DIR``, so the trees' compiled kernels never mix, and no BLAS threads of the other
tree's process spinning), timing every row; the trees alternate (A B, B A, A B, ...) so that a
drift of the machine's load hits both alike; each row's figure is the median of its per-block
medians. The other revision is exported with ``git archive`` into a temporary folder (nothing
in the working tree changes) and imported from there through ``PYTHONPATH``; each block prints
which nnjit it imported, and the gate refuses to compare a tree with itself.

Only ``nnjit.MLP``'s public API is used in the blocks, so any revision since it existed can be
compared. Not a test: a speed is measured, never asserted.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

from .nets import SWEEP, train_flops

#: a row this many times slower than the other revision is marked
SLOWER = 1.25

#: the rows: the sweep's (nnjit.bench.nets.SWEEP) and online at the two MNIST-shaped nets
def rows():
    out = [(layers, bs) for layers, batches in SWEEP for bs in batches]
    for layers in ([784, 128, 10], [784, 512, 512, 10]):
        if (layers, 1) not in out:
            out.append((layers, 1))
    return out


#: one block: time every row's loops epochs in this process; JSON on the last line
_BLOCK = textwrap.dedent("""
    import json, statistics, sys, time
    import numpy as np
    import nnjit
    from nnjit import MLP
    cfg = json.loads(sys.argv[1])
    out = {"nnjit": nnjit.__file__, "rows": []}
    for layers, bs, n in cfg["rows"]:
        rng = np.random.default_rng(0)
        X = rng.random((n, layers[0]), dtype=np.float32)
        X[X < 0.5] = 0.0
        y = (X @ rng.normal(size=(layers[0], layers[-1])).astype(np.float32)).argmax(axis=1)
        kw = dict(lr=cfg["lr"], momentum=cfg["momentum"], batch_size=bs)
        def make():
            return MLP(layers, activation="sigmoid", output="softmax", backend=cfg["backend"],
                       dtype="float32", seed=0)
        make().fit(X[:64], y[:64], epochs=1, **kw)       # compile or load the kernels
        stamps = []
        make().fit(X, y, epochs=cfg["repeats"] + 1, shuffle=True,
                   callbacks=[lambda *a: stamps.append(time.perf_counter())], **kw)
        out["rows"].append(statistics.median(np.diff(stamps)) / n * 1e6)
    print(json.dumps(out))
""")


def _samples(layers, bs, flop, online):
    n = int(max(4 * bs, flop / train_flops(layers)))
    return min(n, online) if bs == 1 else n


def export_revision(rev, folder):
    """The nnjit package of git revision rev, exported into folder; returns folder."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        subprocess.run(["git", "-C", root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                       check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError):
        raise SystemExit(f"nnjit bench: --compare {rev!r}: not a revision of the git checkout at "
                         f"{root!r} (the gate compares against a revision of nnjit's own repository)")
    archive = subprocess.run(["git", "-C", root, "archive", "--format=tar", rev, "nnjit"],
                             check=True, capture_output=True).stdout
    os.makedirs(folder, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def _block(tree, cache, cfg):
    env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": tree}
    r = subprocess.run([sys.executable, "-c", _BLOCK, json.dumps(cfg)], env=env, cwd=tree,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"nnjit bench: --compare: a timing block of {tree} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def compare(rev, rounds=3, repeats=3, flop=5e9, online=3000, lr=0.01, momentum=0.9, json_path=None,
            say=print, cases=None, backend="loops"):
    """Time this tree ("new") against revision rev ("old") in `rounds` alternating blocks
    each; print and return the rows with their ratio new/old. cases: (layers, batch size)
    pairs instead of rows(); backend: "vectorised" to check the gate itself quickly."""
    cases = cases or rows()
    cfg = {"rows": [(l, bs, _samples(l, bs, flop, online)) for l, bs in cases],
           "repeats": repeats, "lr": lr, "momentum": momentum, "backend": backend}
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory(prefix="nnjit-compare-") as tmp:
        old = export_revision(rev, os.path.join(tmp, "old"))
        trees = {"new": here, "old": old}
        caches = {k: os.path.join(tmp, f"cache-{k}") for k in trees}
        times = {k: [] for k in trees}
        say(f"nnjit bench --compare {rev}: {len(cases)} rows, {rounds} alternating blocks per tree, "
            f"{repeats} timed epochs per row and block (float32 {backend}, sgd momentum {momentum})")
        for r in range(rounds):
            for k in (("new", "old") if r % 2 == 0 else ("old", "new")):
                out = _block(trees[k], caches[k], cfg)
                if os.path.dirname(os.path.abspath(out["nnjit"])) != os.path.join(trees[k], "nnjit"):
                    raise SystemExit(f"nnjit bench: --compare: the {k} block imported {out['nnjit']}, "
                                     f"not {trees[k]}'s nnjit")
                times[k].append(out["rows"])
                say(f"  block {r + 1} {k}: " + " ".join(f"{v:.1f}" for v in out["rows"]))
    result = []
    for i, (layers, bs) in enumerate(cases):
        new = statistics.median(t[i] for t in times["new"])
        old = statistics.median(t[i] for t in times["old"])
        result.append({"net": "-".join(map(str, layers)), "batch_size": bs, "samples": cfg["rows"][i][2],
                       "new_us": new, "old_us": old, "ratio": new / old,
                       "slower": new / old > SLOWER,
                       "new_blocks": [t[i] for t in times["new"]], "old_blocks": [t[i] for t in times["old"]]})
    say(f"\n| net | batch | this tree us/sample | {rev} us/sample | this / {rev} |")
    say("|---|---:|---:|---:|---:|")
    for r in result:
        mark = f" **SLOWER > {SLOWER}x**" if r["slower"] else ""
        say(f"| {r['net']} | {r['batch_size']} | {r['new_us']:.2f} | {r['old_us']:.2f} | "
            f"{r['ratio']:.2f}{mark} |")
    slow = [r for r in result if r["slower"]]
    say(f"\n{len(slow)} of {len(result)} rows more than {SLOWER}x slower than {rev}"
        + (": " + ", ".join(f"{r['net']} b{r['batch_size']}" for r in slow) if slow else ""))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"rev": rev, "rows": result}, f, indent=1)
    return result
