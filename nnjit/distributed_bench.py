"""Kept for old commands: ``python -m nnjit.distributed_bench`` runs :mod:`nnjit.bench.distributed`."""
from .bench.distributed import *      # noqa: F401,F403
from .bench.distributed import main

if __name__ == "__main__":
    main()
