"""nnjit: the lecture's backpropagation as JIT-compiled loops, with NumPy and CUDA twins."""
from .io import ModelFileError
from .model import MLP, DivergenceError

__version__ = "0.1.0"
__all__ = ["MLP", "DivergenceError", "ModelFileError", "__version__"]
