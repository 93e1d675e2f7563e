"""nnjit: the lecture's backpropagation as JIT-compiled loops, with NumPy and CUDA twins."""
from . import _numba_setup      # first: the threading layer and disk cache (see its docstring)
from ._numba_setup import threading_layer
from .io import ModelFileError
from .model import MLP, DivergenceError

__version__ = "0.1.0"
__all__ = ["MLP", "DivergenceError", "ModelFileError", "threading_layer", "__version__"]
