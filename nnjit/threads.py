"""The threads of nnjit's parallel kernels: Numba's threading layer, chosen before any kernel
is compiled, and the number of threads each training epoch uses.

What it is for: making training work where Numba's defaults fail, with other processes and
threads around. Imported by :mod:`nnjit.jit` before any kernel is made; not for users.

Threading layer. Numba's parallel kernels run on one of three layers; only TBB is both
fork-safe and thread-safe:

* GNU OpenMP (Numba's usual pick on Linux) hangs a child process that uses it after a
  ``fork()`` (a ``multiprocessing`` Pool with the default start method after one fit), and
  its spinning threads wait for descheduled peers, so a busy CPU slows training 10-200x;
* ``workqueue`` aborts the process when two threads run parallel kernels at once;
* TBB does neither (work stealing, no spinning). Numba chooses it first when it can load
  ``libtbb``, but the ``tbb`` wheel (a core dependency of nnjit) puts ``libtbb.so.12`` in
  ``<prefix>/lib``, where the dynamic loader does not look; loading it here with
  ``RTLD_GLOBAL`` lets Numba's ``tbbpool`` find it.

Policy: nnjit loads TBB (when the ``tbb`` package is installed) whatever the user chose, so
that any layer Numba could pick works: ``NUMBA_THREADING_LAYER=tbb``, ``safe``, ``threadsafe``,
``forksafe`` or ``default`` find it as they would with a system-wide TBB. If the user set
``NUMBA_THREADING_LAYER`` (or ``numba.config.THREADING_LAYER``), that choice stands;
otherwise nnjit selects TBB, and where TBB cannot be loaded it warns once and leaves Numba's
default (OpenMP if present, else workqueue). ``nnjit.threading_layer()`` says which layer
parallel kernels use (once one has run).

The disk cache of compiled kernels is :mod:`nnjit.jit`'s.
"""
import ctypes
import os
import site
import sys
import warnings

import numba

#: the layer nnjit selected ("tbb"), "user" when NUMBA_THREADING_LAYER was set, or "default"
SELECTED = None


def _tbb_candidates():
    names = {"linux": ["libtbb.so.12"], "darwin": ["libtbb.12.dylib"],
             "win32": ["tbb12.dll"]}.get(sys.platform, ["libtbb.so.12"])
    dirs = []
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix, getattr(site, "USER_BASE", None) or ""]):
        if prefix:
            dirs += [os.path.join(prefix, "lib"), os.path.join(prefix, "Library", "bin"), prefix]
    for name in names:
        for d in dirs:
            path = os.path.join(d, name)
            if os.path.exists(path):
                yield path
        yield name                      # wherever the dynamic loader finds it


def _load_tbb(quiet=False):
    mode = getattr(ctypes, "RTLD_GLOBAL", 0)
    for path in _tbb_candidates():
        try:
            ctypes.CDLL(path, mode=mode)
        except OSError:
            continue
        try:                            # Numba's own check: the library and its version
            from numba.np.ufunc import tbbpool  # noqa: F401
            from numba.np.ufunc.parallel import _check_tbb_version_compatible
            _check_tbb_version_compatible()
            return True
        except (ImportError, OSError, ValueError) as e:
            if not quiet:
                warnings.warn(f"nnjit: TBB found at {path} but Numba cannot use it ({e})",
                              RuntimeWarning, stacklevel=3)
            return False
    return False


def choose_threading_layer():
    global SELECTED
    if os.environ.get("NUMBA_THREADING_LAYER") or str(numba.config.THREADING_LAYER).lower() != "default":
        # the user's choice stands; TBB is loaded so that a choice Numba resolves to it works
        # (the tbb wheel's library is not where the dynamic loader looks)
        _load_tbb(quiet=True)
        SELECTED = "user"
        return SELECTED
    if _load_tbb():
        numba.config.THREADING_LAYER = "tbb"
        SELECTED = "tbb"
    else:
        SELECTED = "default"
        warnings.warn("nnjit: the TBB threading layer could not be loaded (pip install tbb); "
                      "using Numba's default layer, with which a fork()ed process (a "
                      "multiprocessing Pool with the 'fork' start method) can hang after a fit, "
                      "threads fitting at once can abort (workqueue), and a busy CPU slows "
                      "training much more. Set NUMBA_THREADING_LAYER to choose one and silence this.",
                      RuntimeWarning, stacklevel=3)
    return SELECTED


def threading_layer():
    """The threading layer Numba's parallel kernels use; None before any has run."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def _run_queue():
    """Tasks runnable on the machine now (Linux /proc/loadavg)."""
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[0])


def _mine_running():
    """This process's threads that are runnable now."""
    mine = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                stat = f.read()
        except FileNotFoundError:       # a thread that ended meanwhile
            continue
        mine += stat[stat.rindex(")") + 2] == "R"
    return mine


def _others_running(samples=3):
    """Tasks runnable on the machine right now, other than this process's own threads
    (Linux /proc); None where that cannot be read.

    The run queue and this process's threads cannot be read at one instant. Right after an
    epoch the parallel layer's worker threads still spin, then sleep: one counted in the run
    queue and asleep when this process's threads were read looked like another task, and
    every other epoch ran on one thread (784-512-512-10 at batch 256, 2 cores: 25 against 16
    µs a sample, alternating). So this process's threads are read before and after the run
    queue (the larger count is taken), and a task seen is confirmed by up to ``samples``
    readings (the fewest is taken): a short-lived task does not cost an epoch its threads."""
    try:
        fewest = None
        for _ in range(samples):
            before = _mine_running()
            running = _run_queue()
            mine = max(before, _mine_running())
            others = max(0, running - mine)
            fewest = others if fewest is None else min(fewest, others)
            if fewest == 0:
                break
        return fewest
    except (OSError, ValueError, IndexError):
        return None


def cores():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # pragma: no cover - not Linux
        return os.cpu_count() or 1


class EpochThreads:
    """Numba threads for each training epoch of the loops backend: as many as there are cores
    not taken by other runnable tasks, at least 1 and at most what the caller had set.

    A parallel region ends when its slowest thread does: a thread whose core another process
    holds stalls the epoch for a scheduler time slice per region, so on a busy machine fewer
    threads finish sooner (measured by ``nnjit bench --contention K``). Results do not depend
    on the thread count (every sum runs in a fixed order). Off with config.ADAPTIVE_THREADS."""

    def __init__(self):
        self.user = numba.get_num_threads()

    def adjust(self):
        from . import config
        if not config.ADAPTIVE_THREADS:
            return
        others = _others_running()
        if others is not None:
            numba.set_num_threads(max(1, min(self.user, cores() - others)))

    def restore(self):
        numba.set_num_threads(self.user)


choose_threading_layer()
