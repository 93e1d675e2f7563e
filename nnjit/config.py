"""Every tunable of nnjit in one place, read at call time.

Numba's on-disk cache freezes module globals into compiled code, so kernels never read
these values themselves: the wrappers read them and pass them to kernels as plain values.
"""

#: fastmath flags for the loop kernels. ``reassoc`` lets LLVM vectorise the sums
#: z_j = sum_i w_ij a_i; ``nnan``/``ninf`` are left out on purpose, so a diverging
#: run still produces NaN/inf that the wrapper can detect.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

#: Below this many samples in a batch the per-sample loops run serially: a parallel
#: region costs about a microsecond, more than the work of a handful of samples.
PARALLEL_MIN_SAMPLES = 8

#: Rows per chunk when predicting or scoring, so memory stays O(chunk x width).
PREDICT_CHUNK = 4096

#: Threads per block for the CUDA kernels (tests patch it small so tiny arrays span blocks).
CUDA_THREADS = 128

#: A layer's fused correction + update runs in parallel once N_l * N_{l-1} * batch reaches
#: this, even for a batch too small for the per-sample kernels.
PARALLEL_MIN_WORK = 4096

#: Out-of-core data (numpy.memmap, zarr, Dask arrays) is read this many bytes of X at a
#: time (rounded to whole mini-batches), so fit/forward hold O(chunk) memory, not O(data).
STREAM_CHUNK_BYTES = 32 * 2**20

#: Tile edge of the CUDA backend's shared-memory kernels (a block is CUDA_TILE x CUDA_TILE
#: threads); tests patch it small.
CUDA_TILE = 16

#: Which CUDA kernels compute the matrix products: "tiled" (shared-memory tiles, the fast
#: version) or "simple" (one thread per output, the loop body indexed by thread).
CUDA_KERNELS = "tiled"

#: Model files are untrusted input: the largest header (JSON bytes) and the largest network
#: (parameters, i.e. weights + biases) a file may declare before anything is allocated.
#: Raise them to load bigger models; the check is against the architecture, before reading.
MODEL_FILE_MAX_HEADER_BYTES = 64 * 2**20
MODEL_FILE_MAX_PARAMS = 2**28

#: Each epoch of the loops backend uses as many threads as cores not taken by other runnable
#: tasks (at most numba.get_num_threads()), so a busy machine slows training gracefully
#: (nnjit/_numba_setup.EpochThreads). False: always numba.get_num_threads().
ADAPTIVE_THREADS = True
