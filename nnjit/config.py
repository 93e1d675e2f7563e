"""Every tunable of nnjit in one place, read at call time.

Numba's on-disk cache freezes module globals into compiled code, so kernels never read
these values themselves: the wrappers read them and pass them to kernels as plain values.
"""
import os as _os
from collections import namedtuple

#: fastmath flags for the loop kernels. ``reassoc`` lets LLVM vectorise the sums
#: z_j = sum_i w_ij a_i; ``nnan``/``ninf`` are left out on purpose, so a diverging
#: run still produces NaN/inf that the wrapper can detect.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

#: Below this many samples in a batch the per-sample loops run serially: a parallel
#: region costs about a microsecond, more than the work of a handful of samples.
PARALLEL_MIN_SAMPLES = 8

#: Cache blocking of the loop kernels (loops.*_tiled) for layers whose W^(l) has at least
#: TILE_MIN_WEIGHTS elements; smaller layers run the register-blocked loop order
#: (loops._blocks). Sizes are in samples / units (0: the whole layer):
#: feed-forward, chunks of TILE_FORWARD[0] samples x blocks of TILE_FORWARD[1] units j;
#: error recursion, chunks of TILE_BACKWARD[0] samples x blocks of TILE_BACKWARD[1] units j;
#: corrections, blocks of TILE_CORRECTIONS[0] units j x blocks of TILE_CORRECTIONS[1] inputs i.
#: Results do not depend on them (every element is summed in the same order) as long as the
#: forward sizes and the corrections' first size are multiples of 4.
#: Chosen by measurement (float32, 2-core AMD EPYC, 512 KiB L2 a core, AVX2; shapes
#: 1024x1024x1024, 1024x784x1024, 256x784x128): blocking the units or inputs of a pass made
#: every product slower or no faster (the shorter vector loops cost more than L3 traffic
#: does here), so the defaults keep whole rows; the error recursion's 4-sample pass (each
#: load of w_jk serves 4 samples) runs at 1.5-2.5x the one-sample pass and is always on.
TILE_MIN_WEIGHTS = 2**17
TILE_FORWARD = (4, 0)
TILE_BACKWARD = (4, 0)
TILE_CORRECTIONS = (4, 0)


#: The GEMM path (loops.*_gemm: packed panels and a register block of 32 columns, see
#: nnjit.loops.microkernel): every layer uses it for batches of at least GEMM_MIN_BATCH samples
#: (0: never); the feed-forward and corrections of a layer of fewer than 32 units run the
#: tiled kernels' loops inside it. GEMM_BLOCKS = (mc, kc, ju): samples per
#: parallel step of feed-forward and error recursion (a multiple of 3), terms k summed per
#: pass over a panel (kc x 32 stays in L1), units per parallel step of the corrections.
#: Chosen by measurement (float32, 2-core AMD EPYC, AVX2; `nnjit bench --sweep`); the
#: results do not depend on them (every sum runs k = 0..K-1 in order).
GEMM_MIN_BATCH = 64
GEMM_BLOCKS = (48, 256, 24)
#: ... and from GEMM_WIDE[0] samples for a network whose widest layer has at least GEMM_WIDE[1]
#: weights (batch 32, 2-core Sapphire Rapids, µs a sample tiled / GEMM: 784-1024-1024-10
#: 110 / 71-76, 784-512-512-10 38 / 32; below the line 784-256-10 9.3 / 9.9, 784-128-10
#: 5.4 / 5.6-6.3, 784-256-256-10 15.3 / 14.9).
GEMM_WIDE = (32, 2**18)
#: float64: the GEMM path only from GEMM_FLOAT64[0] samples and a widest layer of
#: GEMM_FLOAT64[1] weights. With the 6 x 32 float64 block (8 x 32 spilled), µs a sample
#: tiled / GEMM, 2-core Sapphire Rapids, two runs: 784-512-512-10 batch 32 74-81 / 75-80,
#: batch 64 58-61 / 45-46, batch 128 56-57 / 33-37, batch 256 51 / 34-36; 784-1024-1024-10
#: batch 64 175-188 / 126-136, batch 256 188-193 / 95-116. (With 8 x 32 the tiled kernels
#: had won up to batch 512: 784-512-512-10 batch 256 44 / 54.) Smaller networks take the
#: fused batch or the tiled kernels.
GEMM_FLOAT64 = (64, 2**18)
#: The fused batch (nnjit.loops.fused: every layer of a batch in two parallel regions, the
#: GEMM micro-kernel on panels packed on the way) for dense fits of a network of at most
#: FUSED_MAX_WEIGHTS weights (all layers; 0: never) and FUSED_MAX_INPUTS inputs, at every
#: batch size that is not online (PARALLEL_MIN_SAMPLES). Measured (2-core Sapphire Rapids,
#: Adam, µs a sample, tiled or GEMM / fused, float64 | float32): 64-100-10 b200 1.21-1.25 /
#: 0.95-0.96 | 0.82-1.02 / 0.62-0.64; 100-100-1 b200 1.15-1.20 / 0.95-1.01 | 0.88-0.92 /
#: 0.60-0.64; 64-32-10 b32 1.29-1.32 / 1.18-1.26 | 1.16-1.26 / 0.87-0.90; 20-64-64-3 b64
#: 1.77-1.89 / 1.15-1.17 | 1.91-1.92 / 0.88-0.92; 300-200-10 b128 4.96-5.06 / 4.33-4.65 |
#: 2.81-2.91 / 2.16-2.23; 512-100-10 b200 3.99-4.27 / 4.21-4.27 | 2.53-2.66 / 2.26-2.50.
#: Below the line, 784 inputs: 784-128-10 b32 10.8 / 14-15 | 5.3-5.8 / 9.1-9.8, 784-32-10
#: b32 4.2 / 6.6 | 3.1-3.5 / 4.1 (a wide input at a small batch: packing a^(0) and 32-term
#: corrections cost more than the tiled loops; 784-64-10 b256 about even).
FUSED_MAX_WEIGHTS = 2**17
FUSED_MAX_INPUTS = 512
#: ... with FUSED_STEP register blocks of the micro-kernel (nnjit.loops.microkernel.rows) a
#: parallel step: samples in the first region, units in the second (each panel of the
#: weights or activations then serves that many blocks while it is in L1).
FUSED_STEP = 2
#: ... and the batch cut into at most FUSED_CHUNKS chunks of samples (of 16 or more): the
#: first region runs a chunk a step, forward, backward and the chunk's corrections, so a
#: core reads only the activations and errors it wrote (on 2 cores, 64-100-10 and
#: 100-100-1 at batch 200 ~10 % faster than one region of samples and one of units; 4
#: chunks cost 300-200-10 at batch 128 30 %: each chunk's corrections are written and
#: added up). The count, not the threads, sets the order of the sums: results depend on it
#: and never on the threads; the first region uses at most this many cores.
FUSED_CHUNKS = 2


#: The blocks of every kernel the loop form's epoch can run, as it takes them: forward
#: (fwd_mc samples, fwd_nc units), error recursion (bwd_mc, bwd_nc), corrections (corr_ju
#: units, corr_ic inputs), cache-blocked from min_weights elements of W; the GEMM path from
#: gemm_batch samples, with gemm_mc samples a step, gemm_kc terms a pass, gemm_ju units a step;
#: the fused batch with fused_rb register blocks a step (0: no fused batch) and at most
#: fused_chunks chunks of samples.
Tiles = namedtuple("Tiles", "fwd_mc fwd_nc bwd_mc bwd_nc corr_ju corr_ic min_weights "
                            "gemm_batch gemm_mc gemm_kc gemm_ju fused_rb fused_chunks",
                   defaults=(FUSED_STEP, FUSED_CHUNKS))


def tiles():
    """The Tiles nnjit.loops.train_epoch takes, from the values above."""
    for name, v in (("TILE_FORWARD", TILE_FORWARD), ("TILE_BACKWARD", TILE_BACKWARD),
                    ("TILE_CORRECTIONS", TILE_CORRECTIONS)):
        if len(v) != 2 or v[0] < 1 or v[1] < 0 or (name != "TILE_BACKWARD" and v[0] % 4):
            raise ValueError(f"nnjit.config.{name} must be (a positive size, a size or 0), the "
                             f"first a multiple of 4 except for TILE_BACKWARD; got {v!r}")
    if len(GEMM_BLOCKS) != 3 or min(GEMM_BLOCKS) < 1 or GEMM_BLOCKS[0] % 3:
        raise ValueError("nnjit.config.GEMM_BLOCKS must be 3 positive sizes, the first a "
                         f"multiple of 3; got {GEMM_BLOCKS!r}")
    for name, v in (("FUSED_STEP", FUSED_STEP), ("FUSED_CHUNKS", FUSED_CHUNKS)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"nnjit.config.{name} must be a positive count; got {v!r}")
    sizes = (*TILE_FORWARD, *TILE_BACKWARD, *TILE_CORRECTIONS, TILE_MIN_WEIGHTS,
             max(GEMM_MIN_BATCH, 0), *GEMM_BLOCKS, FUSED_STEP, FUSED_CHUNKS)
    return Tiles(*(int(x) for x in sizes))


#: Rows per chunk when predicting or scoring, so memory stays O(chunk x width).
PREDICT_CHUNK = 4096

#: Threads per block for the CUDA kernels (tests patch it small so tiny arrays span blocks).
CUDA_THREADS = 128

#: A layer's fused correction + update runs in parallel once N_l * N_{l-1} * batch reaches
#: this, even for a batch too small for the per-sample kernels.
PARALLEL_MIN_WORK = 2**16     # online, µs a sample, 4096 / 65536 (a region costs ~5 µs with
# work in it): 784-512-512-10 272-289 / 243-266 (its 512 x 10 output layer had been parallel),
# 784-1024-1024-10 508-534 / 499-515, 784-128-10 and 784-256-10 the same within the noise

#: Online learning (batch 1) of a network with such a layer runs each epoch as one parallel
#: region whose threads meet at barriers (nnjit.loops.team) rather than one region a sample.
#: Off: the per-sample kernels (the same numbers, bit for bit).
ONLINE_TEAM = True

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
#: The longest class label (characters, or bytes for byte-string labels) a model may save
#: and a file may hold: labels are names, not data. A file's labels are also at most as many
#: as its output layer has units (2 for one sigmoid unit).
MODEL_FILE_MAX_LABEL = 1024

#: Each epoch of the loops backend uses as many threads as cores not taken by other runnable
#: tasks (at most numba.get_num_threads()), so a busy machine slows training gracefully
#: (nnjit/threads.EpochThreads). False: always numba.get_num_threads().
ADAPTIVE_THREADS = True
#: A first fit on an empty kernel cache starts one second process that compiles part of its
#: kernels into the cache beside it (nnjit.jit.compile_beside): on 2 cores a first fit's
#: compile in about half the time. Off (False, or NNJIT_COMPILE_WORKER=0 in the environment):
#: every kernel compiles in the process that needs it. Never used without a disk cache or
#: with one CPU.
COMPILE_WORKER = _os.environ.get("NNJIT_COMPILE_WORKER", "1") != "0"
