"""nnjit: the lecture's backpropagation as JIT-compiled loops, with NumPy and CUDA twins."""

__version__ = "0.1.0"
__all__ = ["MLP", "DivergenceError", "ModelFileError", "threading_layer", "__version__"]

# Imported on first use (PEP 562): importing numba and loading the kernels takes seconds, and
# `nnjit --help`, `nnjit info` or a Ctrl-C during start-up should not wait for it.
_LAZY = {"MLP": "model", "DivergenceError": "model", "ModelFileError": "io",
         "threading_layer": "threads"}


_SUBMODULES = ("activations", "bench", "checks", "cli", "config", "cuda", "data", "distributed",
               "engine", "forms", "io", "jit", "layout", "loops", "model", "plot", "preprocessing",
               "rules", "sklearn", "training", "vectorised")


def __getattr__(name):
    import importlib
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:     # `import nnjit; nnjit.config.X` as before the lazy imports
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'nnjit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
