"""The benchmark tool runs end to end on a tiny problem and writes what it promises.
(No speed is asserted: performance lives in benchmarks, not tests.)"""
import json
import os
import subprocess
import sys

import pytest

from nnjit import bench


def test_train_flops_counts_the_lecture_steps():
    # 784-128-10: feed-forward and corrections of both layers, error recursion into layer 1 only
    w1, w2 = 784 * 128, 128 * 10
    assert bench.train_flops([784, 128, 10]) == 2 * (2 * w1 + 3 * w2)


def test_bench_runs_and_writes_json_csv(tmp_path):
    out, csv = tmp_path / "b.json", tmp_path / "b.csv"
    rc = bench.main(["--layers", "8,5,3", "--samples", "64", "--online-samples", "16", "--repeats", "1",
                     "--batch-sizes", "1,8", "--dtypes", "float64", "--skip", "torch,sklearn",
                     "--no-compile", "--json", str(out), "--csv", str(csv)])
    assert rc == 0
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert {(r["batch_size"], r["impl"]) for r in rows} == {
        (b, i) for b in (1, 8) for i in ("nnjit loops", "nnjit vectorised")}
    assert all(r["ratio_to_loops"] == 1.0 for r in rows if r["impl"] == "nnjit loops")
    assert [r["samples"] for r in rows if r["batch_size"] == 1] == [16, 16]
    assert res["gemm_gflops"]["float64"] > 0
    assert csv.read_text().splitlines()[0].startswith("batch_size,dtype,impl")


def test_sklearn_bench_runs_through_the_cli_and_writes_json(tmp_path):
    """nnjit bench --sklearn: both libraries fit the same case from the same random_state and
    end with the same weights (the table's last column)."""
    import pytest
    pytest.importorskip("sklearn")
    from nnjit.cli import main
    out = tmp_path / "s.json"
    assert main(["bench", "--sklearn", "--cases", "b", "--max-iter", "2", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["case"].startswith("(b)") and row["epochs_sklearn"] == row["epochs_nnjit"] == 2
    assert row["max_weight_diff"] < 1e-9 and row["sklearn_s"] > 0 and row["nnjit_s"] > 0


def test_bench_times_each_optimizer(tmp_path):
    out = tmp_path / "b.json"
    rc = bench.main(["--layers", "8,5,3", "--samples", "32", "--repeats", "1", "--batch-sizes", "8",
                     "--dtypes", "float32", "--skip", "torch,sklearn", "--no-compile",
                     "--optimizer", "sgd,adam", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["impl"], r["optimizer"]) for r in rows] == [
        ("nnjit loops sgd", "sgd"), ("nnjit vectorised sgd", "sgd"),
        ("nnjit loops adam", "adam"), ("nnjit vectorised adam", "adam")]
    assert rows[0]["ratio_to_loops"] == 1.0 and all(r["epoch_s"] > 0 for r in rows)


def test_bench_contention_runs_each_layer_and_writes_json(tmp_path):
    out = tmp_path / "c.json"
    rc = bench.main(["--contention", "1", "--layers", "8,5,3", "--samples", "64", "--batch-sizes", "8",
                     "--dtypes", "float32", "--repeats", "1", "--layers-to-compare", "nnjit,workqueue",
                     "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["asked"], r["busy"]) for r in rows] == [(a, k) for a in ("nnjit", "workqueue") for k in (0, 1)]
    assert {r["layer"] for r in rows if r["asked"] == "workqueue"} == {"workqueue"}
    assert all(r["epoch_s"] > 0 and r["bound"] == r["busy"] + 1 for r in rows)
    assert [r["ratio"] for r in rows if r["busy"] == 0] == [1.0, 1.0]


def test_bench_sweep_times_every_contender_and_the_products(tmp_path):
    out = tmp_path / "s.json"
    rc = bench.main(["--sweep", "--layers", "12,9,3", "--batch-sizes", "1,32", "--samples", "64",
                     "--online-samples", "16", "--repeats", "1", "--skip", "torch,sklearn",
                     "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["sgemm_gflops"] > 0
    assert [(r["net"], r["batch_size"], r["samples"]) for r in res["rows"]] == [
        ("12-9-3", 1, 16), ("12-9-3", 32, 64)]
    for r in res["rows"]:
        assert set(r["us_per_sample"]) == {"loops", "vectorised", "numpy"}
        assert r["loops_over_numpy"] == r["us_per_sample"]["loops"] / r["us_per_sample"]["numpy"]
    assert res["rows"][0]["products"] == {}                 # online: no batch products
    prod = res["rows"][1]["products"]
    assert set(prod) == {"path"} | {f"{p}{m}" for p in ("forward", "recursion", "corrections")
                                    for m in ("", "_matmul")}
    assert prod["path"] == "tiled"                           # batch 32 < config.GEMM_MIN_BATCH
    assert all(prod[k] > 0 for k in prod if k != "path")


def test_numpy_epoch_learns():
    """The hand-written NumPy contender trains (its loss would not fall if a sign were wrong)."""
    import numpy as np
    from nnjit.bench.cpu import time_numpy, make_data
    X, y = make_data(2048, 12, 3, "float32")
    ts, acc = time_numpy("float32", [12, 9, 3], X, y, 16, 0.1, 0.9, 5)
    assert len(ts) == 5 and all(t > 0 for t in ts)
    assert acc > 0.8 > np.bincount(y).max() / len(y)      # far above the majority class


def test_compare_gate_times_both_trees_in_alternating_blocks(capsys):
    """nnjit bench --compare's plumbing (the vectorised form, two tiny rows, so no compile):
    HEAD exported by git archive and imported from there, blocks alternating, a ratio per row."""
    import shutil
    import subprocess
    from nnjit.bench import compare as C
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if shutil.which("git") is None or subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    said = []
    rows = C.compare("HEAD", rounds=2, repeats=1, flop=1e6, online=50, cases=[([6, 5, 3], 1), ([6, 5, 3], 8)],
                     backend="vectorised", say=said.append)
    assert [r["batch_size"] for r in rows] == [1, 8]
    for r in rows:
        assert len(r["new_blocks"]) == len(r["old_blocks"]) == 2
        assert r["ratio"] == pytest.approx(r["new_us"] / r["old_us"]) and r["new_us"] > 0
    blocks = [line.split(":")[0].strip() for line in said if line.strip().startswith("block")]
    assert blocks == ["block 1 new", "block 1 old", "block 2 old", "block 2 new"]
    assert said[-1].strip().startswith(("0 of 2 rows more than 1.25x slower", "1 of 2", "2 of 2"))
    with pytest.raises(SystemExit, match="not a revision"):
        C.compare("no-such-revision-xyz", cases=[([6, 5, 3], 8)], backend="vectorised", say=said.append)


def test_search_bench_runs_whole_processes_and_both_libraries_agree(tmp_path, monkeypatch):
    """nnjit bench --sklearn --search: each setting a fresh process; the same grid, folds and
    random_state give both libraries the same best score under every n_jobs and backend."""
    import pytest
    pytest.importorskip("sklearn")
    from nnjit.bench import search
    monkeypatch.setitem(search.GRIDS, "small", ({"hidden_layer_sizes": [(8,), (5,)]}, 2, 3))
    from nnjit.cli import main
    out = tmp_path / "g.json"
    assert main(["bench", "--sklearn", "--search", "--repeats", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["library"], r["n_jobs"], r["backend"]) for r in rows] == [
        ("nnjit", 1, "-"), ("nnjit", 2, "loky"), ("nnjit", 2, "threading"),
        ("sklearn", 1, "-"), ("sklearn", 2, "loky"), ("sklearn", 2, "threading")]
    assert len({round(r["score"], 12) for r in rows}) == 1
    assert all(r["wall_s"] > r["search_s"] > 0 for r in rows) and rows[0]["vs_nnjit_1"] == 1.0


# ---------------------------------------------------------------- nnjit.bench.profile
def _x86_objdump():
    import platform
    import shutil
    return platform.machine() == "x86_64" and shutil.which("objdump") is not None


def test_profile_groups_samples_into_ranges_of_jit_code_and_symbols():
    """Samples inside the dumped code are JIT code, grouped into ranges (a gap over 64 bytes
    starts another) and disassembled with each instruction's count; the rest by symbol."""
    from nnjit.bench import profile as prof
    text = ("     1000 [unknown] (/tmp/perf-1.map)\n"
            "     1003 [unknown] (/tmp/perf-1.map)\n"
            "     1003 [unknown] (/tmp/perf-1.map)\n"
            "     10c0 [unknown] (/tmp/perf-1.map)\n"
            " ffffffff82252cd7 clear_page_erms ([kernel.kallsyms])\n"
            "     7f00 _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so.1.0)\n"
            "garbage line\n")
    samples = prof.parse_samples(text)
    assert len(samples) == 6
    assert samples[4] == (0xffffffff82252cd7, "clear_page_erms", "[kernel.kallsyms]")
    # add %rcx,%rax ; inc %rax ; nop padding ; at 0x10c0: ret
    code = b"\x48\x01\xc8\x48\xff\xc0" + b"\x90" * (0xc0 - 6) + b"\xc3"
    regions = [(0x1000, code)]
    ips, other = prof.attribute(samples, regions)
    assert ips == {0x1000: 1, 0x1003: 2, 0x10c0: 1}
    assert other == {"clear_page_erms ([kernel.kallsyms])": 1,
                     "_PyEval_EvalFrameDefault (libpython3.11.so.1.0)": 1}
    assert prof.hot_ranges(ips) == [(0x1000, 0x1003, 3), (0x10c0, 0x10c0, 1)]
    assert prof.hot_ranges(ips, gap=0x100) == [(0x1000, 0x10c0, 4)]
    out = prof.report(samples, regions)
    assert out.startswith("6 samples: 66.7 % in compiled (JIT) code, 33.3 % elsewhere")
    assert "JIT code 1000..1003: 3 samples, 50.0 % of all (75.0 % of JIT)" in out
    if _x86_objdump():
        lines = out.splitlines()
        assert any(line.split()[:3] == ["2", "1003", "inc"] for line in lines), out
        assert any(line.split()[:3] == ["1", "10c0", "ret"] for line in lines), out
    assert prof.report([], regions).startswith("no samples")


def _perf_samples_here():
    import shutil
    import tempfile
    perf = shutil.which("perf")
    if perf is None:
        return False
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([perf, "record", "-q", "-e", "cpu-clock", "-o", f"{d}/p", "true"],
                           capture_output=True)
        return r.returncode == 0


def test_profile_finds_a_compiled_loop_under_perf(tmp_path):
    """End to end: a script whose time is one Numba loop of divisions; the profile puts most
    samples in JIT code, most of those in one range, and that range holds the division. The
    loop runs until it has 1.5x the CPU time of the imports and the compile before it (at
    least 2 s): a fixed 2 s left the loop 43 % of the samples on a slower host."""
    if not _perf_samples_here():
        pytest.skip("perf cannot sample here")
    script = tmp_path / "work.py"
    script.write_text(
        "import time, numpy as np\nfrom numba import njit\n"
        "@njit\ndef f(x, y):\n    s = 0.0\n    for i in range(x.shape[0]):\n"
        "        s += x[i] / y[i]\n    return s\n"
        "x, y = np.random.rand(4096) + 1, np.random.rand(4096) + 1\nf(x, y)\n"
        "c = time.process_time()\nt = time.perf_counter()\n"
        "while time.perf_counter() - t < 2.0 or time.process_time() < 2.5 * c:\n"
        "    f(x, y)\n")
    r = subprocess.run([sys.executable, "-m", "nnjit.bench.profile", "--top", "2", "--",
                        str(script)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    first = r.stdout.splitlines()[0]
    share = float(first.split(":")[1].split("%")[0])
    assert share > 50, r.stdout[:3000]
    hottest = r.stdout.split("\n-- ")[1]        # the first range: the loop
    n = int(hottest.split(": ")[1].split()[0])
    assert n > 0.8 * share / 100 * int(first.split()[0]), r.stdout[:3000]
    if _x86_objdump():      # (its samples land on the instruction after the division)
        assert "div" in hottest, r.stdout[:3000]


def test_profile_says_what_is_missing(monkeypatch):
    from nnjit.bench import profile as prof
    for args in ([], ["--"], ["--top", "0", "--", "x.py"]):
        r = subprocess.run([sys.executable, "-m", "nnjit.bench.profile", *args],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (args, r.stderr)
        assert ("name a script" in r.stderr) or ("must be positive" in r.stderr), r.stderr
    monkeypatch.setattr(prof.shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(prof.ProfileError, match="perf is not installed"):
        prof.profile(["x.py"])
    assert prof.main(["--", "x.py"]) == 2
