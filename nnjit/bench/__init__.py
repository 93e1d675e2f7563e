"""nnjit's benchmarks, one module each: ``cpu`` (``nnjit bench``: loops vs vectorised vs peers),
``gpu`` (``python -m nnjit.bench.gpu``: the cuda backend on a real GPU) and ``distributed``
(``python -m nnjit.bench.distributed``: Dask workers). ``nnjit.bench`` itself is the CPU bench."""
from .cpu import *          # noqa: F401,F403  (nnjit bench's names: main, cmd, build_parser, ...)
from .cpu import build_parser, cmd, main, make_data, train_flops  # noqa: F401
