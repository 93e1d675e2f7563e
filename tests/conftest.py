"""Test-wide setup. Without a CUDA driver the CUDA kernels run in Numba's simulator; the
variable must be set before numba.cuda is first imported, so it is set here."""
import os


def _has_cuda_driver():
    for lib in ("libcuda.so.1", "libcuda.so"):
        try:
            import ctypes
            ctypes.CDLL(lib)
            return True
        except OSError:
            pass
    return False


if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _has_cuda_driver():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"


def pytest_configure(config):
    """pytest restores the warning filters after collection and around every test, so the
    filter nnjit.cuda installs when imported never reaches a test (a GPU run showed its
    small-grid warning): the same pattern as a filter of the test run."""
    from nnjit.cuda import SMALL_GRID_WARNING
    config.addinivalue_line("filterwarnings", f"ignore:{SMALL_GRID_WARNING}")
