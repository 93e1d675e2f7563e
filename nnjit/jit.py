"""How nnjit compiles its kernels and keeps them on disk: one decorator, :func:`jit`.

What it is for: every Numba function of nnjit is made by ``jit(...)`` (Numba's ``njit`` with
nnjit's disk cache), so that a kernel loaded from the cache behaves exactly as one compiled in
the process, whatever other processes compiled before or at the same time. Not for users.

Numba's own disk cache (``cache=True``) is not safe for a package like this one, in which
compiled callers link copies of their compiled callees and parallel kernels are called from
serial ones. Four ways it fails, each reproduced with nnjit (reliability issue, item 1) and
each closed here by construction, not by ordering:

1. **Lost thread-pool start-up.** A function compiled against a parallel callee that was
   *loaded* from the cache records no "start the thread pool" hook (Numba's
   ``_reload_init`` is not part of a loaded library), so when that caller is later loaded by
   a fresh process that has not run a parallel kernel yet, its first parallel region jumps
   through unresolved symbols: a segmentation fault. (A training script, then two
   prediction scripts: the second crashed.) Here every load from the cache starts Numba's
   threading layer first.
2. **Symbol names that collide across processes.** Numba names compiled code after a
   per-process counter; a cached caller carries copies of its callees under those names,
   and when two cache entries written by different processes hold different code under the
   same name (functions made by one factory, parallel regions), the loader resolves both to
   whichever came first: a silently wrong function, or a crash. Here each process counts from
   a random 48-bit start (again after ``fork``), so names from different processes never meet.
3. **Concurrent first runs.** Numba's index (signature -> data file) is read, changed and
   written without a lock, so two processes compiling different signatures at once can
   pair one's index with the other's code. Here the whole load-or-compile-and-save of a
   function runs under an inter-process lock of its own (callers before callees, so no
   cycle), a data file names the key it was saved for and is ignored otherwise, and a
   second process waiting on a kernel another one is compiling loads it instead of
   compiling it again.
4. **Stale callee copies.** Numba keys a function's entries by its own file only, so a
   cached caller keeps the old copy of a callee edited in another file. Here every entry
   is keyed by the whole package (its sources, nnjit's, Numba's and llvmlite's versions):
   the cache lives in a folder of its own, ``nnjit-<version>-<hash>``.

5. **Compiling beside the first process.** Not a failure of Numba's cache but its use: a
   first fit on an empty cache compiles its epoch and every kernel the epoch calls, one after
   another (seconds each). :func:`compile_beside` starts one second process that compiles
   some of those kernels into the cache at the same time, taking them from the other end of
   the list (the first process compiles the epoch's callees in the order it calls them); each
   process skips a kernel the other is compiling (1.-4. hold: the same package, the same
   locks), and the first loads what the second saved. :func:`_worker` is that process.

Where the folder is: ``$NUMBA_CACHE_DIR/nnjit-…`` if that is set, else ``__pycache__`` beside
the package if it is writable, else the user's cache folder (``~/.cache/nnjit``). Where none
is writable, :data:`CACHE` is False, kernels compile in memory in every process and one
warning says to set ``NUMBA_CACHE_DIR``.
"""
import atexit
import contextlib
import hashlib
import importlib
import itertools
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numba
from numba.core import caching
from numba.core.bytecode import FunctionIdentity
from numba.core.compiler_lock import global_compiler_lock
from numba.core.runtime import rtsys

from . import threads  # noqa: F401  (the threading layer is chosen before any kernel)

try:                            # the inter-process locks (3. and 5. below)
    import fcntl
except ImportError:             # pragma: no cover - Windows: none
    fcntl = None

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))

#: seconds a process waits for another one compiling the same kernel before it compiles it
#: itself, without saving (a stopped process must not stop every other one)
LOCK_TIMEOUT = 600.0


# ---------------------------------------------------------------- 2. names unique across processes
def _count_from_random():
    FunctionIdentity._unique_ids = itertools.count(secrets.randbits(48) + 1)


_count_from_random()
if hasattr(os, "register_at_fork"):     # a forked child would otherwise reuse its parent's names
    os.register_at_fork(after_in_child=_count_from_random)


# ---------------------------------------------------------------- 4. one folder per package build
def _package_key():
    import llvmlite

    from . import __version__
    h = hashlib.sha256(f"{__version__} {numba.__version__} {llvmlite.__version__}".encode())
    for root, dirs, files in sorted(os.walk(_PKG_DIR)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                h.update(os.path.relpath(path, _PKG_DIR).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    return f"nnjit-{__version__}-{h.hexdigest()[:16]}"


def _writable(path):
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _cache_root():
    key = _package_key()
    bases = []
    if numba.config.CACHE_DIR:
        bases.append(numba.config.CACHE_DIR)
    bases.append(os.path.join(_PKG_DIR, "__pycache__"))
    from numba.misc.appdirs import AppDirs
    bases.append(AppDirs(appname="nnjit", appauthor=False).user_cache_dir)
    for base in bases:
        path = os.path.join(base, key)
        if _writable(path):
            return path
    return None


#: the folder of this build's compiled kernels, or None where no folder is writable
CACHE_DIR = _cache_root()
#: whether kernels are cached on disk
CACHE = CACHE_DIR is not None
if not CACHE:
    warnings.warn("nnjit: no writable Numba cache location (read-only install, no writable "
                  "home); kernels are compiled in memory in every process. Set "
                  "NUMBA_CACHE_DIR to a writable folder to cache them.",
                  RuntimeWarning, stacklevel=2)


class _Locator(caching._CacheLocator):
    """A kernel's entries: CACHE_DIR/<the source file's folder inside the package>, stamped
    with the package key rather than the file's own hash (4. above)."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        folder = os.path.dirname(os.path.abspath(py_file))
        rel = os.path.relpath(folder, _PKG_DIR)
        if rel == os.curdir:
            rel = "nnjit"
        elif rel.startswith(os.pardir):     # a function outside the package (tests)
            rel = "other-" + hashlib.sha1(folder.encode()).hexdigest()[:16]
        self._path = os.path.join(CACHE_DIR, rel)

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        return os.path.basename(CACHE_DIR)

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        if not (CACHE and os.path.exists(py_file)):
            return None
        self = cls(py_func, py_file)
        try:
            self.ensure_cache_path()
        except OSError:
            return None
        return self


class _Impl(caching.CompileResultCacheImpl):
    _locator_classes = [_Locator]


def _start_threads():
    from numba.np.ufunc.parallel import _launch_threads
    _launch_threads()


class KernelCache(caching.FunctionCache):
    """Numba's per-function cache with 1. and 3. above: a data file holds (key, entry) and is
    used only for that key; a load starts the thread pool first, and of Numba's compiler only
    its runtime."""
    _impl_class = _Impl

    def load_overload(self, sig, target_context):
        # Numba's own load refreshes the target context first: it imports and installs every
        # typing and lowering registry (0.14 s, the largest part of a fresh process's first
        # call). Loaded code needs only the runtime (NRT) that refresh starts; a compile, when
        # one follows, refreshes the context itself.
        rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)

    def _load_overload(self, sig, target_context):
        if not self._enabled:
            return None
        key = self._index_key(sig, target_context.codegen())
        data = self._cache_file.load(key)
        if not (isinstance(data, tuple) and len(data) == 2 and data[0] == key):
            return None
        _start_threads()        # 1.: before any loaded code can reach a parallel region
        return self._impl.rebuild(target_context, data[1])

    def _save_overload(self, sig, data):
        if not self._enabled or not self._impl.check_cachable(data):
            return
        self._impl.locator.ensure_cache_path()
        key = self._index_key(sig, data.codegen)
        self._cache_file.save(key, (key, self._impl.reduce(data)))

    def has(self, sig, codegen):
        """Whether the index holds an entry for sig (see cached)."""
        return self._index_key(sig, codegen) in self._cache_file._load_index()

    @property
    def lock_path(self):
        return os.path.join(self._cache_path, self._impl.filename_base + ".lock")


@contextlib.contextmanager
def _file_lock(path, timeout=None):
    """Hold an exclusive lock on path (created if missing) across processes; yields whether
    it is held (False after timeout seconds, LOCK_TIMEOUT by default, or where the platform
    has no flock)."""
    if fcntl is None:           # pragma: no cover - Windows: no inter-process lock
        yield False
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield False
        return
    try:
        deadline = time.monotonic() + (LOCK_TIMEOUT if timeout is None else timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    held = False
                    break
                time.sleep(0.02)
        try:
            yield held
        finally:
            if held:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _locked_compile(dispatcher, cache):
    """Wrap dispatcher.compile so that loading or compiling-and-saving a signature runs under
    the function's inter-process lock (3. above). Numba's compiler lock is taken first: within
    a process it already serialises compiles, and taking it after the file lock could deadlock
    two threads. Callees are compiled inside their caller's compile, so locks are taken
    callers before callees, an order no two processes can cross."""
    compile_ = dispatcher.compile

    def compile(sig):
        args, _ = numba.core.sigutils.normalize_signature(sig)
        if tuple(args) in dispatcher.overloads:
            return compile_(sig)
        with global_compiler_lock, _file_lock(cache.lock_path) as held:
            if held:
                return compile_(sig)
            warnings.warn(f"nnjit: waited {LOCK_TIMEOUT:.0f} s for another process compiling "
                          f"{dispatcher.py_func.__qualname__}; compiling it here, uncached",
                          RuntimeWarning, stacklevel=2)
            cache.disable()
            try:
                return compile_(sig)
            finally:
                cache.enable()
    dispatcher.compile = compile
    return dispatcher


def jit(fn=None, *, cache=True, slp=False, **options):
    """``numba.njit(**options)`` with nnjit's disk cache (unless ``cache=False`` or no folder
    is writable). ``slp=True`` compiles the function with LLVM's SLP vectoriser on, and only
    this one (see :func:`slp_compile`)."""
    def decorate(f):
        dispatcher = numba.njit(cache=False, **options)(f)
        if slp:
            slp_compile(dispatcher)
        if cache and CACHE:
            kernel_cache = KernelCache(dispatcher.py_func)
            dispatcher._cache = kernel_cache        # Numba's dispatcher has no public setter
            dispatcher.nnjit_cache = kernel_cache   # nnjit's own handle on it
            _locked_compile(dispatcher, kernel_cache)
        return dispatcher
    return decorate if fn is None else decorate(fn)


def slp_compile(dispatcher):
    """Compile this Numba function (every signature, when first needed) with LLVM's SLP
    vectoriser on, and only this one: the switch (numba.config.SLP_VECTORIZE, off by default
    since numba#8852) is read each time a module is optimised, so it is set for the length of
    the function's own compile, under Numba's compiler lock, and restored. Callers link the
    already vectorised code. Used for nnjit.loops.microkernel.block; returns the dispatcher."""
    from numba.core import config
    compile_ = dispatcher.compile

    def compile(sig):
        with global_compiler_lock:
            old = config.SLP_VECTORIZE
            config.SLP_VECTORIZE = 1
            try:
                return compile_(sig)
            finally:
                config.SLP_VECTORIZE = old
    dispatcher.compile = compile
    return dispatcher


# ---------------------------------------------------------------- 5. compiling beside a fit
def _held_elsewhere(path):
    """Whether another process holds the lock on path now (a look, not a wait)."""
    with _file_lock(path, timeout=0) as held:
        return not held


def cached(dispatcher, sig):
    """Whether nnjit's disk cache holds dispatcher's entry for the argument types sig (a tuple
    of Numba types, as Numba's typing passes them), for this machine and package build."""
    cache = getattr(dispatcher, "nnjit_cache", None)
    return cache is not None and cache.has(tuple(sig), dispatcher.targetctx.codegen())


def _fingerprint(tasks):
    """What the tasks' compiled code depends on besides the package and the machine (both in
    the cache's key): each kernel's options (fastmath, error model, ...: a process may have
    changed nnjit.config before its kernels were made) and Numba's code generation settings.
    The second process compiles only if its fingerprint is the first one's."""
    from numba.core import config
    names = ("OPT", "CPU_NAME", "CPU_FEATURES", "LOOP_VECTORIZE", "SLP_VECTORIZE", "BOUNDSCHECK",
             "DEBUGINFO_DEFAULT")

    def plain(v):       # a set's order varies from process to process (hash randomisation)
        if isinstance(v, (set, frozenset)):
            return sorted(map(repr, v))
        if isinstance(v, dict):
            return sorted((repr(k), plain(x)) for k, x in v.items())
        return repr(v)
    return repr(([plain(d.targetoptions) for d, _ in tasks],
                 [str(getattr(config, n, None)) for n in names], CACHE_DIR))


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_BESIDE = {"asked": set(), "proc": None, "pid": None, "lock": threading.Lock()}


def compile_beside(plan, *args, fill=None):
    """Start a process that compiles the kernels ``plan(*args)`` lists (a module-level function
    given as "module:name", returning (dispatcher, argument types) pairs in the order the
    second process should take them; args plain JSON values) into the disk cache, unless
    every one is cached already. Returns whether it started one. ``fill`` (optional, the
    same form) returns (d, pairs): kernels the second process compiles first, one after
    another for as long as another process is compiling d (the plan would wait for it).

    At most one such process per process at a time, and none where it cannot help: no disk
    cache, one CPU, no inter-process locks (Windows), config.COMPILE_WORKER off, or inside
    such a process. The first process goes on compiling what it needs in its own order and
    loads what the second saved; if the second fails or never starts, the first compiles
    everything itself, as before."""
    from . import config
    if not (CACHE and config.COMPILE_WORKER and _cpus() >= 2 and sys.executable and fcntl):
        return False
    with _BESIDE["lock"]:
        key = (plan, *args)
        if key in _BESIDE["asked"]:
            return False
        _BESIDE["asked"].add(key)
        proc = _BESIDE["proc"]
        if proc is not None and _BESIDE["pid"] == os.getpid() and proc.poll() is None:
            return False            # one at a time: two would only share the same two cores
        tasks = _plan(plan, args)
        if all(cached(d, sig) for d, sig in tasks):
            return False
        filler = _plan(fill, args)[1] if fill else []
        env = dict(os.environ, NNJIT_COMPILE_WORKER="0",        # no process starts a third
                   PYTHONPATH=os.pathsep.join(                  # this very package
                       [os.path.dirname(_PKG_DIR), os.environ.get("PYTHONPATH", "")]).rstrip(
                           os.pathsep))
        job = json.dumps({"plan": plan, "fill": fill, "args": list(args),
                          "fingerprint": _fingerprint(filler + tasks)})
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from nnjit.jit import _worker; _worker()", job],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir())
        except OSError:
            return False
        _BESIDE["proc"], _BESIDE["pid"] = proc, os.getpid()
        return True


def _plan(plan, args):
    module, name = plan.split(":")
    return getattr(importlib.import_module(module), name)(*args)


@atexit.register
def _stop_beside():
    """A process that exits takes its compiling helper with it (what that one had saved stays)."""
    proc = _BESIDE["proc"]
    if proc is not None and _BESIDE["pid"] == os.getpid() and proc.poll() is None:
        proc.terminate()


def _worker():
    """The second process of compile_beside (its job, JSON, in argv[1]): compiles each kernel
    of the plan that is neither cached nor being compiled by another process, in the plan's
    order, then exits. Nothing if this process's compile options differ from the first's."""
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))   # a temporary file is cleaned up
    job = json.loads(sys.argv[1])
    tasks = _plan(job["plan"], job["args"])
    awaited, filler = _plan(job["fill"], job["args"]) if job.get("fill") else (None, [])
    if job["fingerprint"] != _fingerprint(filler + tasks):
        return
    for dispatcher, sig in filler:
        if not _held_elsewhere(awaited.nnjit_cache.lock_path):
            break
        if not (cached(dispatcher, sig) or _held_elsewhere(dispatcher.nnjit_cache.lock_path)):
            dispatcher.compile(tuple(sig))
    for dispatcher, sig in tasks:
        if cached(dispatcher, sig) or _held_elsewhere(dispatcher.nnjit_cache.lock_path):
            continue
        dispatcher.compile(tuple(sig))
