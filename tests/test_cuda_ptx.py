"""Every CUDA kernel compiles to PTX for compute capability 9.0 (H100/H200), on the CPU.

The simulator runs kernels as Python and so checks no types: a shared-array shape that is not
a compile-time constant, or a float64 constant that silently turns a float32 kernel into
double arithmetic, passes there. This test compiles each kernel with NVVM, without a GPU and
without the simulator, in a subprocess (the simulator is chosen at import), and asserts on the
PTX text:

* every kernel compiles, for float32 and float64;
* a float32 kernel contains no ``.f64`` at all: no double register, load, store, arithmetic
  or conversion (so not even the "unavoidable" cvt of a double scalar: the launchers pass
  eta, mu and 1/M in the array's dtype and the factory makes every constant of that dtype);
* float32 kernels do their arithmetic in ``.f32`` and float64 kernels in ``.f64`` (so the
  check above can tell the two apart);
* the tiled kernels synchronise (``bar.sync``) and read shared memory (``ld.shared``); the
  simple ones do neither;
* ``nnjit.cuda.check_compiler``, the check a GPU fit makes first, passes, and with
  ``np.row_stack`` gone (NumPy 2.5, which numba-cuda 0.30.4 cannot build kernels under)
  raises CUDAUnavailableError naming the fix instead of numba-cuda's AttributeError.

It needs NVVM and libdevice from a CUDA toolkit (``CUDA_HOME``, default /usr/local/cuda, or
the NVIDIA wheels); without them it skips, saying so. NVRTC is not needed: the target
architecture is forced with NUMBA_FORCE_CUDA_CC.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

PRELUDE = textwrap.dedent(r'''
    import json, sys, types, traceback
    out = sys.argv[1]
    if len(sys.argv) > 2:              # the NumPy 2.5 case: np.row_stack gone before any compile
        import numpy
        del numpy.row_stack
    try:
        from numba import cuda
        import numba.cuda.cuda_paths as cp
        import numba.cuda.dispatcher as disp
    except Exception as e:
        print("SKIP numba-cuda is not importable:", e); sys.exit(3)
    # Without a driver, numba-cuda asks the current device for its compute capability when
    # it compiles a device function, and looks NVRTC up while finding libdevice; neither is
    # needed to make PTX for a given cc, so both lookups are stood in for.
    # (Private names: if a numba-cuda release renames them, the stand-ins are left out and
    # the probe below decides between compiling and skipping.)
    if hasattr(disp, "get_current_device"):
        disp.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))
    _nvrtc = getattr(cp, "_get_nvrtc_path", None)
    if _nvrtc is not None and hasattr(cp, "_env_path_tuple"):
        def _nvrtc_optional():
            try:
                return _nvrtc()
            except Exception:
                return cp._env_path_tuple("absent", None)
        cp._get_nvrtc_path = _nvrtc_optional
    try:
        def probe(x):
            x[0] = 1.0
        if len(sys.argv) == 2:
            cuda.compile_ptx(probe, "void(float32[::1])", cc=(9, 0))
    except Exception as e:
        print("SKIP no usable CUDA toolkit (NVVM + libdevice) for compile_ptx:",
              type(e).__name__, str(e).splitlines()[0] if str(e) else ""); sys.exit(3)
''')

SCRIPT = PRELUDE + textwrap.dedent(r'''
    from nnjit import cuda as nc
    nc.check_compiler((9, 0))          # the check every GPU fit makes first passes here
    ptx = {}
    for dtype in ("float32", "float64"):
        for name, fn, sig in nc.kernel_signatures(dtype, 16):
            ptx[f"{dtype} {name}"] = cuda.compile_ptx(fn, sig, cc=(9, 0))[0]
    json.dump(ptx, open(out, "w"))
''')


def _env():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["NUMBA_ENABLE_CUDASIM"] = "0"
    env["NUMBA_FORCE_CUDA_CC"] = "9.0"
    if "CUDA_HOME" not in env and "CUDA_PATH" not in env and os.path.isdir("/usr/local/cuda"):
        env["CUDA_HOME"] = "/usr/local/cuda"
    return env


@pytest.fixture(scope="module")
def ptx(tmp_path_factory):
    out = tmp_path_factory.mktemp("ptx") / "ptx.json"
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=_env(), capture_output=True,
                       text=True, timeout=600)
    if r.returncode == 3:
        pytest.skip(r.stdout.strip() or "no CUDA toolkit")
    assert r.returncode == 0, f"compiling the kernels to PTX failed:\n{r.stdout}\n{r.stderr[-6000:]}"
    return json.loads(out.read_text())


def _body(text):
    """PTX instructions only: comments, directives and the .version/.target header dropped."""
    lines = []
    for line in text.splitlines():
        line = line.split("//")[0].strip()
        if line and not line.startswith("."):
            lines.append(line)
    return "\n".join(lines)


ARITH = r"\b(?:add|sub|mul|fma|div|max|min|neg|abs)(?:\.\w+)*\.{}\b"


def test_every_kernel_compiles_for_both_dtypes(ptx):
    from nnjit import cuda as nc
    names = [n for n, _, _ in nc.kernel_signatures("float32", 16)]
    assert len(names) >= 11
    for dtype in ("float32", "float64"):
        for name in names:
            assert ".entry" in ptx[f"{dtype} {name}"], f"{dtype} {name}: no kernel entry in PTX"


def test_float32_kernels_do_no_float64_work(ptx):
    for key, text in ptx.items():
        if key.startswith("float32"):
            hits = [l for l in _body(text).splitlines() if ".f64" in l]
            assert not hits, f"{key} uses float64: {hits[:5]}"
            if not key.endswith("load_batch"):          # a pure copy has no arithmetic
                assert re.search(ARITH.format("f32"), text), f"{key}: no float32 arithmetic"


def test_float64_kernels_do_float64_work(ptx):
    for key, text in ptx.items():
        if key.startswith("float64") and not key.endswith("load_batch"):
            assert re.search(ARITH.format("f64"), text), f"{key}: no float64 arithmetic"


def test_tiled_kernels_use_shared_memory_and_the_simple_ones_do_not(ptx):
    for key, text in ptx.items():
        body = _body(text)
        if key.endswith("_tiled"):
            assert "bar.sync" in body and "ld.shared" in body, key
        else:
            assert "bar.sync" not in body and "ld.shared" not in body, key


NUMPY_25 = PRELUDE + textwrap.dedent(r'''
    from nnjit import cuda as nc
    try:
        nc.check_compiler((9, 0))
    except nc.CUDAUnavailableError as e:
        print(e); sys.exit(0)
    print("no error"); sys.exit(1)
''')


def test_numba_cuda_that_cannot_compile_under_this_numpy_gets_a_clear_error(ptx, tmp_path):
    """numba-cuda 0.30.4 on NumPy 2.5 (found on the first GPU lent, an image with NumPy 2.5.2):
    every kernel build died in numba-cuda with "module 'numpy' has no attribute 'row_stack'".
    Here np.row_stack is deleted before the first compile; the check every GPU fit makes first
    must raise CUDAUnavailableError naming the fix. (Needs the toolkit: depends on ``ptx``.)"""
    r = subprocess.run([sys.executable, "-c", NUMPY_25, str(tmp_path / "x"), "no-row-stack"],
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert "numpy<2.5" in r.stdout and "compute capability 9.0" in r.stdout, r.stdout
    assert "row_stack" in r.stdout, r.stdout
