"""The disk cache of compiled kernels (nnjit.jit) across processes: none of the ways Numba's
own cache fails may crash a process or run the wrong code.

Each test runs fresh Python processes on one empty cache folder. The small modules written
here reproduce each mechanism in a few seconds (the same code with Numba's ``cache=True``
crashes or computes the wrong function, see nnjit/jit.py); the nnjit sequences are the
reported ones (a training script, then two prediction scripts) and a mix of the package's
fits and predictions run one after another and at once."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(cache, *paths, **extra):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache),
               PYTHONPATH=os.pathsep.join([*map(str, paths), ROOT]))
    env.pop("NUMBA_THREADING_LAYER", None)
    env.update(extra)
    return env


def _run(code, env, timeout=600):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stderr[-3000:]}"
    return r.stdout


def _start(code, env):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _here(code):
    """What code prints when run in this process."""
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(textwrap.dedent(code), {"__name__": "nnjit_test_job"})
    return out.getvalue()


def _finish(procs, timeout=900):
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"exit {p.returncode}\n{err[-3000:]}"
        outs.append(out)
    return outs


# ---------------------------------------------------------------- each mechanism, small
PARALLEL_CALLEE = """
import numpy as np
from numba import prange
from nnjit.jit import jit

@jit(parallel=True)
def inner(x, y):
    for i in prange(x.size):
        y[i] = x[i] * 2

@jit()
def outer(x):
    y = np.zeros_like(x)
    inner(x, y)
    return y
"""


def test_a_caller_compiled_against_a_loaded_parallel_callee_loads_safely(tmp_path):
    """A compiles only the parallel callee; B compiles the serial caller against A's cached
    callee; C loads B's caller (with Numba's cache: a segmentation fault, because the loaded
    callee had lost its "start the thread pool" hook and so had the caller)."""
    (tmp_path / "pc.py").write_text(PARALLEL_CALLEE)
    env = _env(tmp_path / "cache", tmp_path)
    _run("import numpy as np, pc; y = np.zeros(5); pc.inner(np.ones(5), y); print(y.sum())", env)
    for _ in range(2):
        assert _run("import numpy as np, pc; print(pc.outer(np.ones(5)).sum())", env).split() == ["10.0"]


FACTORY = """
from nnjit.jit import jit

def make(c):
    def twin(x):                      # the same name for every function this factory makes
        s = 0.0
        for i in range(x.shape[0]):
%s
        return s + c
    return jit()(twin)

plus, minus = make(2.0), make(-3.0)

@jit()
def call_plus(x):                     # callers carry copies of their callees' code
    return plus(x) + plus(x[:1]) + plus(x[:2])

@jit()
def call_minus(x):
    return minus(x) + minus(x[:1]) + minus(x[:2])
""" % "\n".join(f"            s = s * 0.5 + x[i] * c + {k}.0" for k in range(150))


def test_code_cached_by_different_processes_never_shares_a_name(tmp_path):
    """Two processes each compile one of two functions that Numba names alike (one factory,
    one counter value); a third loads both. With Numba's cache the third ran one function's
    code for both callers: a silently wrong result."""
    (tmp_path / "fac.py").write_text(FACTORY)
    env = _env(tmp_path / "cache", tmp_path)
    plus = float(_run("import numpy as np, fac; print(fac.call_plus(np.ones(3)))", env))
    minus = float(_run("import numpy as np, fac; print(fac.call_minus(np.ones(3)))", env))
    assert plus != minus
    for order in ("plus, minus", "minus, plus"):
        out = _run(f"import numpy as np, fac; print(*(fac.call_{order.split(', ')[0]}(np.ones(3)),"
                   f" fac.call_{order.split(', ')[1]}(np.ones(3))))", env)
        got = dict(zip(order.split(", "), map(float, out.split())))
        assert got == {"plus": plus, "minus": minus}


SIGNATURES = """
import numpy as np
from nnjit.jit import jit

@jit()
def poly(x):
    s = x[0] - x[0]                   # x's dtype throughout
    for i in range(x.shape[0]):
%s
    return s

def data(dtype):
    return np.array([3, 1, 2] if dtype == "int64" else [0.7, 0.2, 0.9], dtype)
""" % "\n".join("        s = s * x[i] + x[i]" for k in range(120))


def test_concurrent_first_runs_of_one_function_keep_each_signature_its_own_code(tmp_path):
    """Four processes compile four signatures of one function at the same moment on an empty
    cache, twice over; then one process loads all four: each gives its own dtype's result (an
    unlocked index could pair one signature with another's machine code)."""
    (tmp_path / "sig.py").write_text(SIGNATURES)
    env = _env(tmp_path / "cache", tmp_path)
    dtypes = ["float32", "float64", "int64", "complex128"]
    code = "import sig; print(repr(sig.poly(sig.data('%s'))))"
    for _ in range(2):
        first = _finish([_start(code % d, env) for d in dtypes])
    both = _run("import sig\n" + "\n".join(
        f"print(repr(sig.poly(sig.data('{d}'))))" for d in dtypes), env)
    assert both.split("\n")[:4] == [f.strip() for f in first]
    assert len(set(first)) == 4


# ---------------------------------------------------------------- nnjit itself
TRAIN = """
import numpy as np
from nnjit import MLP
X = np.random.default_rng(0).normal(size=(100, 8)).astype("{dtype}")
y = np.arange(100) % 3
net = MLP([8, 7, 3], seed=0, dtype="{dtype}").fit(X, y, epochs=2, batch_size={batch})
print(repr(float(net.history_["loss"][-1])))
"""
PREDICT = """
import numpy as np
from nnjit import MLP
net = MLP([4, 5, 3], seed=0, dtype="{dtype}")
print(repr(float(net.forward(np.linspace(-1, 1, 20).reshape(5, 4)).sum())))
"""


def test_a_training_script_then_two_prediction_scripts(tmp_path):
    """The reported everyday flow: the third process crashed (exit 139), in float32 and
    float64 alike (float64's kernels are the next test's)."""
    env = _env(tmp_path / "cache")
    for dtype in ("float32",):
        _run(TRAIN.format(dtype=dtype, batch=32), env)
        outs = [_run(PREDICT.format(dtype=dtype), env) for _ in range(2)]
        assert outs[0] == outs[1]


ESTIMATOR = """
import numpy as np
from nnjit.sklearn import MLPClassifier
X = np.random.default_rng(1).normal(size=(120, 6)).astype("{dtype}")
y = np.arange(120) % 3
clf = MLPClassifier(hidden_layer_sizes=(9,), max_iter=3, random_state=0, batch_size=20).fit(X, y)
print(repr(float(clf.loss_)))
"""
SPARSE = """
import numpy as np, scipy.sparse as sp, warnings
from nnjit.sklearn import MLPRegressor
warnings.simplefilter("ignore")
X = sp.random(150, 300, density=0.02, format="csr", random_state=0)
y = np.asarray(X.sum(axis=1)).ravel()
print(repr(float(MLPRegressor(hidden_layer_sizes=(7,), max_iter=3, random_state=0).fit(X, y).loss_)))
"""


def test_a_process_that_only_loads_kernels_skips_numbas_compiler_setup(tmp_path):
    """Loading compiled code needs Numba's runtime, not the typing and lowering registries
    Numba imports before every load (0.14 s of each fresh process: a loky worker, a prediction
    script). A second process on the warm cache fits to the same loss without importing them,
    then compiles a new function and a new signature, which set them up themselves."""
    env = _env(tmp_path / "cache", tmp_path)
    (tmp_path / "pcallee.py").write_text(PARALLEL_CALLEE)
    first = _run(ESTIMATOR.format(dtype="float32"), env)
    second = _run(ESTIMATOR.format(dtype="float32") + textwrap.dedent("""
        import sys
        print(sorted(m for m in ("numba.np.linalg", "numba.typed.typeddict", "numba.np.polynomial",
                                 "numba.experimental.function_type") if m in sys.modules))
        from pcallee import outer
        print(outer(np.arange(5.0)).tolist(), outer(np.arange(3, dtype=np.int64)).tolist())
        """), env).splitlines()
    assert second[0] == first.strip()
    assert second[1] == "[]"
    assert second[2] == "[0.0, 2.0, 4.0, 6.0, 8.0] [0, 2, 4]"


def test_many_processes_one_after_another_and_at_once_on_one_fresh_cache(tmp_path):
    """Fits of several kinds (online, mini-batch, estimator, sparse), predictions first, both
    dtypes, started at once and one after another in several orders on one empty cache;
    every result equals the same run's result on its own cache (a wrong kernel loaded would
    change it), and nothing crashes. (The GEMM path and float32 estimators, each another
    compiled twin of the same epoch, are left out for CI's time: the mechanism is the same.)"""
    jobs = {"online32": TRAIN.format(dtype="float32", batch=1),
            "batch64": TRAIN.format(dtype="float64", batch=16),
            "predict64": PREDICT.format(dtype="float64"),
            "estimator64": ESTIMATOR.format(dtype="float64"),
            "sparse": SPARSE,
            "predict32": PREDICT.format(dtype="float32")}
    shared = _env(tmp_path / "shared")
    got = {}
    waves = [["predict64", "online32", "estimator64"], ["sparse", "batch64"], ["predict32"]]
    for wave in waves:                      # at once, then the next wave
        for name, out in zip(wave, _finish([_start(jobs[n], shared) for n in wave])):
            got[name] = out
    for name in ["predict32", "estimator64", "online32", "sparse"]:   # one by one, warm
        assert _run(jobs[name], shared) == got[name], name
    for name, code in jobs.items():         # the reference: this process's own kernels
        assert got[name] == _here(code), name


DASK = """
import numpy as np, dask, distributed
import nnjit.distributed as nd
from nnjit import MLP
if __name__ == "__main__":
    X = np.random.default_rng(0).normal(size=(120, 8)); y = np.arange(120) % 3
    with dask.config.set({"distributed.logging.distributed": "error"}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None, silence_logs=50) as c, \\
                distributed.Client(c) as client:
            net = nd.fit(MLP([8, 7, 3], seed=0), X, y, client=client, epochs=2, timeout="60s")
            print(repr(float(net.history_["loss"][-1])))
"""


def test_predict_first_then_a_dask_fit_on_a_cache_a_training_script_filled(tmp_path):
    """The reported Dask case: after a training script and a prediction script, both workers
    of a 2-worker LocalCluster crashed and restarted forever."""
    pytest.importorskip("distributed")
    env = _env(tmp_path / "cache", tmp_path)
    _run(TRAIN.format(dtype="float64", batch=32), env)
    _run(PREDICT.format(dtype="float64"), env)
    (tmp_path / "dask_fit.py").write_text(DASK)
    r = subprocess.run([sys.executable, str(tmp_path / "dask_fit.py")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert np.isfinite(float(r.stdout.split()[-1]))


# ---------------------------------------------------------------- the folder
def test_cache_folder_is_keyed_by_the_package_build(tmp_path):
    """Entries live in a folder of nnjit's own, named after nnjit's version and a hash of its
    sources and of Numba's and llvmlite's versions: a cached caller never keeps a stale copy
    of a callee edited in another file, and builds never mix."""
    env = _env(tmp_path / "cache")
    _run(PREDICT.format(dtype="float64"), env)
    import nnjit
    from nnjit import jit
    folders = [p.name for p in (tmp_path / "cache").iterdir()]
    assert folders == [os.path.basename(jit.CACHE_DIR)]
    assert folders[0].startswith(f"nnjit-{nnjit.__version__}-")
    assert any((tmp_path / "cache" / folders[0]).rglob("*.nbi"))


def test_a_data_file_is_used_only_for_the_key_it_was_saved_for(tmp_path):
    """A data file whose stored key is not the one asked for (an index and data from two
    different processes) is ignored: the function is compiled anew, not run as loaded."""
    (tmp_path / "sig.py").write_text(SIGNATURES)
    env = _env(tmp_path / "cache", tmp_path)
    code = "import sig; print(repr(sig.poly(sig.data('%s'))))"
    f64 = _run(code % "float64", env)
    f32 = _run(code % "float32", env)
    data = sorted((tmp_path / "cache").rglob("sig.poly-*.nbc"))
    assert len(data) == 2
    a, b = (p.read_bytes() for p in data)      # swap the two signatures' machine code
    data[0].write_bytes(b)
    data[1].write_bytes(a)
    assert _run(code % "float64", env) == f64 and _run(code % "float32", env) == f32


# ---------------------------------------------------------------- 5. compiling beside
BESIDE = """
from numba import types
from nnjit.jit import jit

@jit
def double(x):
    return x * 2.0

@jit
def inc(x):
    return x + 1.0

def plan():
    return [(inc, (types.float64,)), (double, (types.float64,))]
"""


def _two_cpus():
    from nnjit import jit
    if jit._cpus() < 2:
        pytest.skip("compile_beside needs two CPUs")


def test_a_second_process_compiles_the_plan_into_the_cache(tmp_path):
    """compile_beside starts one process (once per plan and process) that compiles the plan's
    kernels into the cache; this process then loads them (cache hits, nothing compiled). With
    every kernel cached it starts none, nor with config.COMPILE_WORKER off."""
    _two_cpus()
    (tmp_path / "beside.py").write_text(BESIDE)
    env = _env(tmp_path / "cache", tmp_path, NNJIT_COMPILE_WORKER="1")
    out = _run("""
        import beside
        from nnjit import config, jit
        print(jit.compile_beside("beside:plan"), jit.compile_beside("beside:plan"))
        print(jit._BESIDE["proc"].wait(300))
        print(all(jit.cached(d, s) for d, s in beside.plan()))
        print(beside.double(2.0), beside.inc(2.0))
        for f in (beside.double, beside.inc):
            print(sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values()))
        jit._BESIDE["asked"].clear()
        print(jit.compile_beside("beside:plan"))         # all cached
        config.COMPILE_WORKER = False
        print(jit.compile_beside("beside:other"))        # off (never looks at the plan)
    """, env)
    assert out.split() == ["True", "False", "0", "True", "4.0", "3.0", "1", "0", "1", "0",
                           "False", "False"]


def test_the_second_process_skips_a_kernel_being_compiled_and_a_different_setup(tmp_path):
    """The second process compiles nothing when its compile options differ from the first
    process's (its kernels would be linked into the first's code), and skips a kernel whose
    lock another process holds (that one is compiling it) without waiting for it."""
    (tmp_path / "beside.py").write_text(BESIDE)
    env = _env(tmp_path / "cache", tmp_path)
    out = _run("""
        import json, subprocess, sys
        import beside
        from nnjit import jit

        def worker(fingerprint):
            job = json.dumps({"plan": "beside:plan", "args": [], "fingerprint": fingerprint})
            subprocess.run([sys.executable, "-c", "from nnjit.jit import _worker; _worker()",
                            job], check=True, timeout=300)
            print(*[jit.cached(d, s) for d, s in beside.plan()])

        worker("another setup")
        tasks = beside.plan()
        with jit._file_lock(beside.double.nnjit_cache.lock_path):   # this process compiling it
            worker(jit._fingerprint(tasks))
        worker(jit._fingerprint(tasks))
    """, env)
    assert out.split() == ["False", "False", "True", "False", "True", "True"]


def test_a_first_fit_with_a_second_process_compiling_beside_it(tmp_path):
    """A first fit (batch 32, float32) on an empty cache starts the second process; its result
    equals this process's (kernels compiled here), and afterwards every kernel of the twin's
    plan is in the cache, the prediction's forward and load_batch included, which this fit
    never called: the second process compiled them (its compile options matched the
    first's)."""
    _two_cpus()
    env = _env(tmp_path / "cache", NNJIT_COMPILE_WORKER="1")
    code = TRAIN.format(dtype="float32", batch=32)
    out = _run(code + textwrap.dedent("""
        from nnjit import jit
        from nnjit.loops import epoch, network
        print(jit._BESIDE["proc"].wait(600))
        plan = epoch.compile_plan(epoch.FUSED, epoch.DENSE, "float32")    # (8-7-3: fused)
        print(all(jit.cached(d, s) for d, s in plan),
              [d for d, _ in plan[-2:]] == [network.forward, network.load_batch],
              len(network.forward.overloads))
    """), env, timeout=900).split()
    assert out == [_here(code).strip(), "0", "True", "True", "0"]


def test_a_first_online_fit_has_its_prediction_compiled_beside_it(tmp_path):
    """A first online fit with a wide layer (the team, nnjit.loops.team) on an empty cache
    starts the second process, which compiles the leader's helpers and then the prediction's
    forward: afterwards the whole team plan is in the cache, forward included, which this
    process never compiled (its first predict then loads it)."""
    _two_cpus()
    env = _env(tmp_path / "cache", NNJIT_COMPILE_WORKER="1")
    out = _run("""
        import numpy as np
        from nnjit import MLP, jit
        from nnjit.loops import network, team
        X = np.random.default_rng(0).normal(size=(6, 300)).astype("float32")
        MLP([300, 256, 3], seed=0, dtype="float32").fit(X, np.arange(6) % 3, epochs=1,
                                                        batch_size=1)
        print(jit._BESIDE["proc"].wait(600))
        plan = team.compile_plan("float32")
        print(all(jit.cached(d, s) for d, s in plan), plan[-1][0] is network.forward,
              len(network.forward.overloads), len(team.team_member.overloads))
    """, env, timeout=900)
    assert out.split() == ["0", "True", "True", "0", "1"], out


def test_the_second_process_fills_its_wait_for_gemm_rows(tmp_path):
    """compile_beside's fill (nnjit.loops.epoch.compile_fill): the second process compiles the
    fused twin's serial helpers first only while another process holds gemm_rows's lock (the
    first process compiling it, which the first region would wait for), and none of them when
    nobody does. The worker is run here on an empty plan, so only the fill can compile."""
    (tmp_path / "plans.py").write_text("def empty(*args):\n    return []\n")
    env = _env(tmp_path / "cache", tmp_path)
    out = _run("""
        import json, subprocess, sys
        from nnjit import jit
        from nnjit.loops import epoch
        args = [epoch.FUSED, epoch.DENSE, "float32"]
        awaited, fill = epoch.compile_fill(*args)
        job = json.dumps({"plan": "plans:empty", "fill": "nnjit.loops.epoch:compile_fill",
                          "args": args, "fingerprint": jit._fingerprint(fill)})
        def worker():
            subprocess.run([sys.executable, "-c", "from nnjit.jit import _worker; _worker()",
                            job], check=True, timeout=600)
        worker()
        print(len(fill), awaited is epoch.gemm_rows, any(jit.cached(d, s) for d, s in fill))
        with jit._file_lock(awaited.nnjit_cache.lock_path) as held:
            worker()
        print(held, all(jit.cached(d, s) for d, s in fill), len(awaited.overloads),
              epoch.compile_fill(epoch.GEMM, epoch.DENSE, "float32")[1])
    """, env)
    assert out.split() == ["7", "True", "False", "True", "True", "0", "[]"], out
