"""Kept for old commands: ``python -m nnjit.gpu_bench`` runs :mod:`nnjit.bench.gpu`."""
import sys

from .bench.gpu import *      # noqa: F401,F403
from .bench.gpu import main

if __name__ == "__main__":
    sys.exit(main())
