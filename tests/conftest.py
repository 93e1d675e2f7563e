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
