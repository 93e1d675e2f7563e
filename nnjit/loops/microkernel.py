"""The register-tiled micro-kernel of the loop form's large products (see nnjit.loops.gemm).

One equation, the lecture's sum of products for a block of outputs:

    C[r, c] (+)= sum_k A[r, k] B[k, c]      r < 3 rows, c < 32 columns, k = 0..K-1 in order

held as 3 x 32 scalar sums for the whole k loop, so they stay in registers: each step of k
loads one row of 32 B values (a packed panel, contiguous) and 3 A values and does 96
multiply-adds with no load or store of C. LLVM's SLP vectoriser packs the 32 sums of a row
into vector registers (4 AVX2 or 2 AVX-512 registers of float32: 12 AVX2 registers of sums,
enough in flight to cover the multiply-add latency, and 4 + 1 left for the loads; measured
faster than 4 x 16, 5 x 16 or 2 x 32 here, and 6 x 16 and 4 x 24 spilled). Numba keeps that
vectoriser off (it miscompiled code in older LLVMs, numba#8852), so nnjit turns it on for this
one function's compile only (``nnjit.jit.slp_compile``); tests read the assembly.

The sums run k = 0..K-1 in order for every element (no ``reassoc``: it would let LLVM
vectorise along k instead and spill), so a result does not depend on the blocks or threads.
Offsets are unsigned (uint64): a signed index keeps Numba's negative-index check in the loop,
which stops the vectoriser. The function body below is written out by :func:`source` (96 sums
are too many to type); ``python -m nnjit.loops.microkernel`` rewrites it and a test checks it.

On a CPU with AVX-512 (32 registers of 16 floats) the GEMM path runs ``block_wide`` instead:
the same sums in the same order, 12 x 32 float32 (6 x 32 float64) written directly as 512-bit
vector operations in LLVM IR (``_vector_block``), with the function attributes that let LLVM
keep them 512 bits wide (its tuning for AVX-512 CPUs prefers 256). On the project's Sapphire
Rapids, one core: block3 66 GFLOP/s float32, block_wide 142-153 (22 and 45-49 float64); its
compile takes 0.2 s (the 3 x 32 source through SLP takes 1.8 s). ``block`` and ``rows`` are
the kernel chosen for this CPU at import and its rows; every kernel gives the same bits
(tested), so results do not depend on the CPU's vector width.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..jit import jit, slp_compile

#: columns of the register block
NR = 32

_FLAGS = {"nsz", "arcp", "contract"}     # contract: multiply-adds; no reassoc (see above)


@jit(fastmath=_FLAGS, nogil=True, error_model="numpy", _nrt=False)
def _put(C, off, nc, row):
    """C[off + c] = row[c] for c < nc: one row of a block cut by the edge of C."""
    for c in range(nc):
        C[off + np.uint64(c)] = row[c]


def source():
    """The text of block3 below."""
    return _kernel(3)


def _kernel(mr):
    """The text of block{mr}: an mr x NR block of scalar sums for the SLP vectoriser."""
    L = ["@jit(fastmath=_FLAGS, nogil=True, error_model=\"numpy\", _nrt=False)",
         f"def block{mr}(C, c0, ldc, nr, nc, A, a0, lda, ka, B, b0, K, add):",
         f'    """C[c0 + r ldc + c] (+)= sum_k A[a0 + r lda + k ka] B[b0 + NR k + c] for r < nr <= {mr},',
         f"    c < nc <= {NR}, k < K: B a packed panel (K x {NR}, zero-padded), every offset",
         "    uint64 (ka 1: A's rows; lda 1: its columns, delta^T read from delta). add: the sums",
         f"    go on from C (a later block of k; whole blocks only: nr = {mr}, nc = {NR}), else from",
         '    0 (the first)."""']
    L.append("    z = C.dtype.type(0.0)")
    # rows past nr read row 0 again (their sums are not stored)
    for r in range(1, mr):
        L.append(f"    a{r} = a0 + np.uint64({r}) * lda if nr > {r} else a0")
    # add: the sums start from C, so a sum split into blocks of k is the same sum, in the
    # same order, as one pass over all k (results do not depend on kc). Only whole blocks
    # are split (a third way into the loop's sums, for cut blocks, made SLP pack them badly)
    L.append("    if add:")
    for r in range(mr):
        L.append(f"        o = c0 + np.uint64({r}) * ldc")
        for c0 in range(0, NR, 4):
            L.append("        " + "; ".join(f"s{r}_{c} = C[o + np.uint64({c})]"
                                            for c in range(c0, c0 + 4)) + "  # noqa: E702")
    L.append("    else:")
    for r in range(mr):
        for c0 in range(0, NR, 8):
            L.append("        " + " = ".join(f"s{r}_{c}" for c in range(c0, c0 + 8)) + " = z")
    L += ["    for k in range(K):",
          "        k = np.uint64(k)",
          "        ak = k * ka",
          f"        bk = b0 + np.uint64({NR}) * k"]
    for c in range(NR):
        L.append(f"        y{c} = B[bk + np.uint64({c})]")
    for r in range(mr):
        L.append(f"        x = A[a{r} + ak]")
        for c0 in range(0, NR, 4):
            L.append("        " + "; ".join(f"s{r}_{c} += x * y{c}"
                                            for c in range(c0, c0 + 4)) + "  # noqa: E702")
    # a whole block: plain stores, which SLP packs into vector stores (they are its seeds:
    # with only the tuple path below, the sums stay scalar and are shuffled every step)
    L.append(f"    if nr == {mr} and nc == {NR}:")
    for r in range(mr):
        L.append(f"        o = c0 + np.uint64({r}) * ldc")
        for c0 in range(0, NR, 4):
            L.append("        " + "; ".join(f"C[o + np.uint64({c})] = s{r}_{c}"
                                            for c in range(c0, c0 + 4)) + "  # noqa: E702")
    L.append("        return")
    for r in range(mr):             # a block cut by the edge of C
        ind = "        " if r else "    "
        if r:
            L.append(f"    if nr > {r}:")
        L.append(f"{ind}_put(C, c0 + np.uint64({r}) * ldc, nc, (")
        for c0 in range(0, NR, 8):
            L.append(f"{ind}    " + ", ".join(f"s{r}_{c}" for c in range(c0, c0 + 8)) + ",")
        L.append(f"{ind}))")
    return "\n".join(L) + "\n"


# ---- generated by source(): do not edit by hand (python -m nnjit.loops.microkernel) ----
@jit(fastmath=_FLAGS, nogil=True, error_model="numpy", _nrt=False)
def block3(C, c0, ldc, nr, nc, A, a0, lda, ka, B, b0, K, add):
    """C[c0 + r ldc + c] (+)= sum_k A[a0 + r lda + k ka] B[b0 + NR k + c] for r < nr <= 3,
    c < nc <= 32, k < K: B a packed panel (K x 32, zero-padded), every offset
    uint64 (ka 1: A's rows; lda 1: its columns, delta^T read from delta). add: the sums
    go on from C (a later block of k; whole blocks only: nr = 3, nc = 32), else from
    0 (the first)."""
    z = C.dtype.type(0.0)
    a1 = a0 + np.uint64(1) * lda if nr > 1 else a0
    a2 = a0 + np.uint64(2) * lda if nr > 2 else a0
    if add:
        o = c0 + np.uint64(0) * ldc
        s0_0 = C[o + np.uint64(0)]; s0_1 = C[o + np.uint64(1)]; s0_2 = C[o + np.uint64(2)]; s0_3 = C[o + np.uint64(3)]  # noqa: E702
        s0_4 = C[o + np.uint64(4)]; s0_5 = C[o + np.uint64(5)]; s0_6 = C[o + np.uint64(6)]; s0_7 = C[o + np.uint64(7)]  # noqa: E702
        s0_8 = C[o + np.uint64(8)]; s0_9 = C[o + np.uint64(9)]; s0_10 = C[o + np.uint64(10)]; s0_11 = C[o + np.uint64(11)]  # noqa: E702
        s0_12 = C[o + np.uint64(12)]; s0_13 = C[o + np.uint64(13)]; s0_14 = C[o + np.uint64(14)]; s0_15 = C[o + np.uint64(15)]  # noqa: E702
        s0_16 = C[o + np.uint64(16)]; s0_17 = C[o + np.uint64(17)]; s0_18 = C[o + np.uint64(18)]; s0_19 = C[o + np.uint64(19)]  # noqa: E702
        s0_20 = C[o + np.uint64(20)]; s0_21 = C[o + np.uint64(21)]; s0_22 = C[o + np.uint64(22)]; s0_23 = C[o + np.uint64(23)]  # noqa: E702
        s0_24 = C[o + np.uint64(24)]; s0_25 = C[o + np.uint64(25)]; s0_26 = C[o + np.uint64(26)]; s0_27 = C[o + np.uint64(27)]  # noqa: E702
        s0_28 = C[o + np.uint64(28)]; s0_29 = C[o + np.uint64(29)]; s0_30 = C[o + np.uint64(30)]; s0_31 = C[o + np.uint64(31)]  # noqa: E702
        o = c0 + np.uint64(1) * ldc
        s1_0 = C[o + np.uint64(0)]; s1_1 = C[o + np.uint64(1)]; s1_2 = C[o + np.uint64(2)]; s1_3 = C[o + np.uint64(3)]  # noqa: E702
        s1_4 = C[o + np.uint64(4)]; s1_5 = C[o + np.uint64(5)]; s1_6 = C[o + np.uint64(6)]; s1_7 = C[o + np.uint64(7)]  # noqa: E702
        s1_8 = C[o + np.uint64(8)]; s1_9 = C[o + np.uint64(9)]; s1_10 = C[o + np.uint64(10)]; s1_11 = C[o + np.uint64(11)]  # noqa: E702
        s1_12 = C[o + np.uint64(12)]; s1_13 = C[o + np.uint64(13)]; s1_14 = C[o + np.uint64(14)]; s1_15 = C[o + np.uint64(15)]  # noqa: E702
        s1_16 = C[o + np.uint64(16)]; s1_17 = C[o + np.uint64(17)]; s1_18 = C[o + np.uint64(18)]; s1_19 = C[o + np.uint64(19)]  # noqa: E702
        s1_20 = C[o + np.uint64(20)]; s1_21 = C[o + np.uint64(21)]; s1_22 = C[o + np.uint64(22)]; s1_23 = C[o + np.uint64(23)]  # noqa: E702
        s1_24 = C[o + np.uint64(24)]; s1_25 = C[o + np.uint64(25)]; s1_26 = C[o + np.uint64(26)]; s1_27 = C[o + np.uint64(27)]  # noqa: E702
        s1_28 = C[o + np.uint64(28)]; s1_29 = C[o + np.uint64(29)]; s1_30 = C[o + np.uint64(30)]; s1_31 = C[o + np.uint64(31)]  # noqa: E702
        o = c0 + np.uint64(2) * ldc
        s2_0 = C[o + np.uint64(0)]; s2_1 = C[o + np.uint64(1)]; s2_2 = C[o + np.uint64(2)]; s2_3 = C[o + np.uint64(3)]  # noqa: E702
        s2_4 = C[o + np.uint64(4)]; s2_5 = C[o + np.uint64(5)]; s2_6 = C[o + np.uint64(6)]; s2_7 = C[o + np.uint64(7)]  # noqa: E702
        s2_8 = C[o + np.uint64(8)]; s2_9 = C[o + np.uint64(9)]; s2_10 = C[o + np.uint64(10)]; s2_11 = C[o + np.uint64(11)]  # noqa: E702
        s2_12 = C[o + np.uint64(12)]; s2_13 = C[o + np.uint64(13)]; s2_14 = C[o + np.uint64(14)]; s2_15 = C[o + np.uint64(15)]  # noqa: E702
        s2_16 = C[o + np.uint64(16)]; s2_17 = C[o + np.uint64(17)]; s2_18 = C[o + np.uint64(18)]; s2_19 = C[o + np.uint64(19)]  # noqa: E702
        s2_20 = C[o + np.uint64(20)]; s2_21 = C[o + np.uint64(21)]; s2_22 = C[o + np.uint64(22)]; s2_23 = C[o + np.uint64(23)]  # noqa: E702
        s2_24 = C[o + np.uint64(24)]; s2_25 = C[o + np.uint64(25)]; s2_26 = C[o + np.uint64(26)]; s2_27 = C[o + np.uint64(27)]  # noqa: E702
        s2_28 = C[o + np.uint64(28)]; s2_29 = C[o + np.uint64(29)]; s2_30 = C[o + np.uint64(30)]; s2_31 = C[o + np.uint64(31)]  # noqa: E702
    else:
        s0_0 = s0_1 = s0_2 = s0_3 = s0_4 = s0_5 = s0_6 = s0_7 = z
        s0_8 = s0_9 = s0_10 = s0_11 = s0_12 = s0_13 = s0_14 = s0_15 = z
        s0_16 = s0_17 = s0_18 = s0_19 = s0_20 = s0_21 = s0_22 = s0_23 = z
        s0_24 = s0_25 = s0_26 = s0_27 = s0_28 = s0_29 = s0_30 = s0_31 = z
        s1_0 = s1_1 = s1_2 = s1_3 = s1_4 = s1_5 = s1_6 = s1_7 = z
        s1_8 = s1_9 = s1_10 = s1_11 = s1_12 = s1_13 = s1_14 = s1_15 = z
        s1_16 = s1_17 = s1_18 = s1_19 = s1_20 = s1_21 = s1_22 = s1_23 = z
        s1_24 = s1_25 = s1_26 = s1_27 = s1_28 = s1_29 = s1_30 = s1_31 = z
        s2_0 = s2_1 = s2_2 = s2_3 = s2_4 = s2_5 = s2_6 = s2_7 = z
        s2_8 = s2_9 = s2_10 = s2_11 = s2_12 = s2_13 = s2_14 = s2_15 = z
        s2_16 = s2_17 = s2_18 = s2_19 = s2_20 = s2_21 = s2_22 = s2_23 = z
        s2_24 = s2_25 = s2_26 = s2_27 = s2_28 = s2_29 = s2_30 = s2_31 = z
    for k in range(K):
        k = np.uint64(k)
        ak = k * ka
        bk = b0 + np.uint64(32) * k
        y0 = B[bk + np.uint64(0)]
        y1 = B[bk + np.uint64(1)]
        y2 = B[bk + np.uint64(2)]
        y3 = B[bk + np.uint64(3)]
        y4 = B[bk + np.uint64(4)]
        y5 = B[bk + np.uint64(5)]
        y6 = B[bk + np.uint64(6)]
        y7 = B[bk + np.uint64(7)]
        y8 = B[bk + np.uint64(8)]
        y9 = B[bk + np.uint64(9)]
        y10 = B[bk + np.uint64(10)]
        y11 = B[bk + np.uint64(11)]
        y12 = B[bk + np.uint64(12)]
        y13 = B[bk + np.uint64(13)]
        y14 = B[bk + np.uint64(14)]
        y15 = B[bk + np.uint64(15)]
        y16 = B[bk + np.uint64(16)]
        y17 = B[bk + np.uint64(17)]
        y18 = B[bk + np.uint64(18)]
        y19 = B[bk + np.uint64(19)]
        y20 = B[bk + np.uint64(20)]
        y21 = B[bk + np.uint64(21)]
        y22 = B[bk + np.uint64(22)]
        y23 = B[bk + np.uint64(23)]
        y24 = B[bk + np.uint64(24)]
        y25 = B[bk + np.uint64(25)]
        y26 = B[bk + np.uint64(26)]
        y27 = B[bk + np.uint64(27)]
        y28 = B[bk + np.uint64(28)]
        y29 = B[bk + np.uint64(29)]
        y30 = B[bk + np.uint64(30)]
        y31 = B[bk + np.uint64(31)]
        x = A[a0 + ak]
        s0_0 += x * y0; s0_1 += x * y1; s0_2 += x * y2; s0_3 += x * y3  # noqa: E702
        s0_4 += x * y4; s0_5 += x * y5; s0_6 += x * y6; s0_7 += x * y7  # noqa: E702
        s0_8 += x * y8; s0_9 += x * y9; s0_10 += x * y10; s0_11 += x * y11  # noqa: E702
        s0_12 += x * y12; s0_13 += x * y13; s0_14 += x * y14; s0_15 += x * y15  # noqa: E702
        s0_16 += x * y16; s0_17 += x * y17; s0_18 += x * y18; s0_19 += x * y19  # noqa: E702
        s0_20 += x * y20; s0_21 += x * y21; s0_22 += x * y22; s0_23 += x * y23  # noqa: E702
        s0_24 += x * y24; s0_25 += x * y25; s0_26 += x * y26; s0_27 += x * y27  # noqa: E702
        s0_28 += x * y28; s0_29 += x * y29; s0_30 += x * y30; s0_31 += x * y31  # noqa: E702
        x = A[a1 + ak]
        s1_0 += x * y0; s1_1 += x * y1; s1_2 += x * y2; s1_3 += x * y3  # noqa: E702
        s1_4 += x * y4; s1_5 += x * y5; s1_6 += x * y6; s1_7 += x * y7  # noqa: E702
        s1_8 += x * y8; s1_9 += x * y9; s1_10 += x * y10; s1_11 += x * y11  # noqa: E702
        s1_12 += x * y12; s1_13 += x * y13; s1_14 += x * y14; s1_15 += x * y15  # noqa: E702
        s1_16 += x * y16; s1_17 += x * y17; s1_18 += x * y18; s1_19 += x * y19  # noqa: E702
        s1_20 += x * y20; s1_21 += x * y21; s1_22 += x * y22; s1_23 += x * y23  # noqa: E702
        s1_24 += x * y24; s1_25 += x * y25; s1_26 += x * y26; s1_27 += x * y27  # noqa: E702
        s1_28 += x * y28; s1_29 += x * y29; s1_30 += x * y30; s1_31 += x * y31  # noqa: E702
        x = A[a2 + ak]
        s2_0 += x * y0; s2_1 += x * y1; s2_2 += x * y2; s2_3 += x * y3  # noqa: E702
        s2_4 += x * y4; s2_5 += x * y5; s2_6 += x * y6; s2_7 += x * y7  # noqa: E702
        s2_8 += x * y8; s2_9 += x * y9; s2_10 += x * y10; s2_11 += x * y11  # noqa: E702
        s2_12 += x * y12; s2_13 += x * y13; s2_14 += x * y14; s2_15 += x * y15  # noqa: E702
        s2_16 += x * y16; s2_17 += x * y17; s2_18 += x * y18; s2_19 += x * y19  # noqa: E702
        s2_20 += x * y20; s2_21 += x * y21; s2_22 += x * y22; s2_23 += x * y23  # noqa: E702
        s2_24 += x * y24; s2_25 += x * y25; s2_26 += x * y26; s2_27 += x * y27  # noqa: E702
        s2_28 += x * y28; s2_29 += x * y29; s2_30 += x * y30; s2_31 += x * y31  # noqa: E702
    if nr == 3 and nc == 32:
        o = c0 + np.uint64(0) * ldc
        C[o + np.uint64(0)] = s0_0; C[o + np.uint64(1)] = s0_1; C[o + np.uint64(2)] = s0_2; C[o + np.uint64(3)] = s0_3  # noqa: E702
        C[o + np.uint64(4)] = s0_4; C[o + np.uint64(5)] = s0_5; C[o + np.uint64(6)] = s0_6; C[o + np.uint64(7)] = s0_7  # noqa: E702
        C[o + np.uint64(8)] = s0_8; C[o + np.uint64(9)] = s0_9; C[o + np.uint64(10)] = s0_10; C[o + np.uint64(11)] = s0_11  # noqa: E702
        C[o + np.uint64(12)] = s0_12; C[o + np.uint64(13)] = s0_13; C[o + np.uint64(14)] = s0_14; C[o + np.uint64(15)] = s0_15  # noqa: E702
        C[o + np.uint64(16)] = s0_16; C[o + np.uint64(17)] = s0_17; C[o + np.uint64(18)] = s0_18; C[o + np.uint64(19)] = s0_19  # noqa: E702
        C[o + np.uint64(20)] = s0_20; C[o + np.uint64(21)] = s0_21; C[o + np.uint64(22)] = s0_22; C[o + np.uint64(23)] = s0_23  # noqa: E702
        C[o + np.uint64(24)] = s0_24; C[o + np.uint64(25)] = s0_25; C[o + np.uint64(26)] = s0_26; C[o + np.uint64(27)] = s0_27  # noqa: E702
        C[o + np.uint64(28)] = s0_28; C[o + np.uint64(29)] = s0_29; C[o + np.uint64(30)] = s0_30; C[o + np.uint64(31)] = s0_31  # noqa: E702
        o = c0 + np.uint64(1) * ldc
        C[o + np.uint64(0)] = s1_0; C[o + np.uint64(1)] = s1_1; C[o + np.uint64(2)] = s1_2; C[o + np.uint64(3)] = s1_3  # noqa: E702
        C[o + np.uint64(4)] = s1_4; C[o + np.uint64(5)] = s1_5; C[o + np.uint64(6)] = s1_6; C[o + np.uint64(7)] = s1_7  # noqa: E702
        C[o + np.uint64(8)] = s1_8; C[o + np.uint64(9)] = s1_9; C[o + np.uint64(10)] = s1_10; C[o + np.uint64(11)] = s1_11  # noqa: E702
        C[o + np.uint64(12)] = s1_12; C[o + np.uint64(13)] = s1_13; C[o + np.uint64(14)] = s1_14; C[o + np.uint64(15)] = s1_15  # noqa: E702
        C[o + np.uint64(16)] = s1_16; C[o + np.uint64(17)] = s1_17; C[o + np.uint64(18)] = s1_18; C[o + np.uint64(19)] = s1_19  # noqa: E702
        C[o + np.uint64(20)] = s1_20; C[o + np.uint64(21)] = s1_21; C[o + np.uint64(22)] = s1_22; C[o + np.uint64(23)] = s1_23  # noqa: E702
        C[o + np.uint64(24)] = s1_24; C[o + np.uint64(25)] = s1_25; C[o + np.uint64(26)] = s1_26; C[o + np.uint64(27)] = s1_27  # noqa: E702
        C[o + np.uint64(28)] = s1_28; C[o + np.uint64(29)] = s1_29; C[o + np.uint64(30)] = s1_30; C[o + np.uint64(31)] = s1_31  # noqa: E702
        o = c0 + np.uint64(2) * ldc
        C[o + np.uint64(0)] = s2_0; C[o + np.uint64(1)] = s2_1; C[o + np.uint64(2)] = s2_2; C[o + np.uint64(3)] = s2_3  # noqa: E702
        C[o + np.uint64(4)] = s2_4; C[o + np.uint64(5)] = s2_5; C[o + np.uint64(6)] = s2_6; C[o + np.uint64(7)] = s2_7  # noqa: E702
        C[o + np.uint64(8)] = s2_8; C[o + np.uint64(9)] = s2_9; C[o + np.uint64(10)] = s2_10; C[o + np.uint64(11)] = s2_11  # noqa: E702
        C[o + np.uint64(12)] = s2_12; C[o + np.uint64(13)] = s2_13; C[o + np.uint64(14)] = s2_14; C[o + np.uint64(15)] = s2_15  # noqa: E702
        C[o + np.uint64(16)] = s2_16; C[o + np.uint64(17)] = s2_17; C[o + np.uint64(18)] = s2_18; C[o + np.uint64(19)] = s2_19  # noqa: E702
        C[o + np.uint64(20)] = s2_20; C[o + np.uint64(21)] = s2_21; C[o + np.uint64(22)] = s2_22; C[o + np.uint64(23)] = s2_23  # noqa: E702
        C[o + np.uint64(24)] = s2_24; C[o + np.uint64(25)] = s2_25; C[o + np.uint64(26)] = s2_26; C[o + np.uint64(27)] = s2_27  # noqa: E702
        C[o + np.uint64(28)] = s2_28; C[o + np.uint64(29)] = s2_29; C[o + np.uint64(30)] = s2_30; C[o + np.uint64(31)] = s2_31  # noqa: E702
        return
    _put(C, c0 + np.uint64(0) * ldc, nc, (
        s0_0, s0_1, s0_2, s0_3, s0_4, s0_5, s0_6, s0_7,
        s0_8, s0_9, s0_10, s0_11, s0_12, s0_13, s0_14, s0_15,
        s0_16, s0_17, s0_18, s0_19, s0_20, s0_21, s0_22, s0_23,
        s0_24, s0_25, s0_26, s0_27, s0_28, s0_29, s0_30, s0_31,
    ))
    if nr > 1:
        _put(C, c0 + np.uint64(1) * ldc, nc, (
            s1_0, s1_1, s1_2, s1_3, s1_4, s1_5, s1_6, s1_7,
            s1_8, s1_9, s1_10, s1_11, s1_12, s1_13, s1_14, s1_15,
            s1_16, s1_17, s1_18, s1_19, s1_20, s1_21, s1_22, s1_23,
            s1_24, s1_25, s1_26, s1_27, s1_28, s1_29, s1_30, s1_31,
        ))
    if nr > 2:
        _put(C, c0 + np.uint64(2) * ldc, nc, (
            s2_0, s2_1, s2_2, s2_3, s2_4, s2_5, s2_6, s2_7,
            s2_8, s2_9, s2_10, s2_11, s2_12, s2_13, s2_14, s2_15,
            s2_16, s2_17, s2_18, s2_19, s2_20, s2_21, s2_22, s2_23,
            s2_24, s2_25, s2_26, s2_27, s2_28, s2_29, s2_30, s2_31,
        ))
# ---- end of generated code ----


def wide_cpu():
    """Whether Numba compiles for a CPU with AVX-512 (32 vector registers of 16 floats)."""
    from numba.core import config
    if config.CPU_NAME or config.CPU_FEATURES:     # compiling for another CPU than this one
        return "+avx512f" in (config.CPU_FEATURES or "")
    try:
        from llvmlite import binding
        return bool(binding.get_host_cpu_features().get("avx512f", False))
    except RuntimeError:        # features unknown
        return False


#: rows of the AVX-512 kernel by dtype: 12 x 32 float32 sums are 24 of its 32 registers
#: (measured, one core: 8 rows 135-138 GFLOP/s, 12 rows 142-153, 16 rows 126); float64 6 x 32
#: sums are 24 too (8 rows, 32 registers of sums, spilled: inside the fused batch's and the
#: GEMM path's loops 6 rows 33-42 GMAC/s, 8 rows 23-31; with a 64-128-term panel in L1 both
#: 84-96 GFLOP/s; earlier, at a 256-term kc whose float64 panel overflowed L1: 8 rows 45-49,
#: 6 rows 42)
MR_WIDE = {types.float32: 12, types.float64: 6}


@intrinsic
def _vector_block(typingctx, C, c0, ldc, nr, nc, A, a0, lda, ka, B, b0, K, add):
    """block_wide's body in LLVM IR: the same sums as block3, in the same order (each step of k
    one multiply-add into every sum, contract as block3's flags allow), held as vectors of
    512 bits. A row past nr reads row 0 again (its sums are not stored); a block cut by
    the edge of C goes through a stack buffer."""
    return _vector_codegen(False, C, c0, ldc, nr, nc, A, a0, lda, ka, B, b0, K, add)


@intrinsic
def _vector_cut(typingctx, C, c0, ldc, nr, nc, A, a0, lda, ka, B, b0, K, add):
    """block_wide_cut's body: _vector_block's, summing only the vectors that hold the nc
    columns (one k loop for each count)."""
    return _vector_codegen(True, C, c0, ldc, nr, nc, A, a0, lda, ka, B, b0, K, add)


def _vector_codegen(cut, C, c0, ldc, nr, nc, A, a0, lda, ka, B, b0, K, add):
    """The signature and code generator of _vector_block (cut False) or _vector_cut."""
    dt = C.dtype
    mr = MR_WIDE.get(dt)

    def codegen(context, builder, sig, args):
        C_, c0_, ldc_, nr_, nc_, A_, a0_, lda_, ka_, B_, b0_, K_, add_ = args
        # the attributes clang gives AVX-512 code: keep 512-bit vectors whole (LLVM's
        # tuning for AVX-512 CPUs splits them in two 256-bit halves otherwise)
        for a in ('"prefer-vector-width"="512"', '"min-legal-vector-width"="512"'):
            set.add(builder.function.attributes, a)   # string attributes: not in its list
        fty = context.get_value_type(dt)
        size = context.get_abi_sizeof(fty)
        lanes = 64 // size
        vty = ir.VectorType(fty, lanes)
        nv = NR // lanes
        i32, i64 = ir.IntType(32), ir.IntType(64)
        flags = ("contract",)
        pc, pa, pb = (builder.ptrtoint(context.make_array(t)(context, builder, v).data, i64)
                      for t, v in ((sig.args[0], C_), (sig.args[5], A_), (sig.args[9], B_)))

        def const(v):
            return ir.Constant(i64, v)

        def ptr(base, i, ty):
            return builder.inttoptr(builder.add(base, builder.mul(i, const(size))), ty.as_pointer())

        def wide(v):
            return builder.sext(v, i64) if v.type.width < 64 else v

        nr64, nc64 = wide(nr_), wide(nc_)
        rows = [builder.add(a0_, builder.mul(builder.select(
            builder.icmp_signed(">", nr64, const(r)), const(r), const(0)), lda_))
            for r in range(mr)]
        crow = [builder.add(c0_, builder.mul(const(r), ldc_)) for r in range(mr)]
        zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * lanes)
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)]
               for _ in range(mr)]
        with builder.if_then(builder.trunc(add_, ir.IntType(1)) if add_.type.width > 1 else add_):
            for r in range(mr):
                for h in range(nv):
                    v = builder.load(ptr(pc, builder.add(crow[r], const(h * lanes)), vty), align=size)
                    builder.store(v, acc[r][h])
        need = builder.udiv(builder.add(nc64, const(lanes - 1)), const(lanes))
        # cut: loops of 1 and 2 vectors, else every vector (each loop is compile time in every
        # kernel that calls this one)
        for nvk in ([nv] + list(range(min(2, nv - 1), 0, -1)) if cut else [nv]):
            hit = (ir.Constant(ir.IntType(1), 1) if not cut     # every vector, whatever nc
                   else builder.icmp_signed(">", need, const(min(2, nv - 1))) if nvk == nv
                   else builder.icmp_signed("==", need, const(nvk)))
            with builder.if_then(hit), cgutils.for_range(builder, K_) as loop:
                k = loop.index
                ak = builder.mul(k, ka_)            # A[a0 + r lda + k ka]
                bk = builder.add(b0_, builder.mul(k, const(NR)))
                y = [builder.load(ptr(pb, builder.add(bk, const(h * lanes)), vty), align=size)
                     for h in range(nvk)]
                for r in range(mr):
                    x = builder.load(ptr(pa, builder.add(rows[r], ak), fty))
                    xv = builder.insert_element(ir.Constant(vty, ir.Undefined), x,
                                                ir.Constant(i32, 0))
                    xv = builder.shuffle_vector(xv, xv, ir.Constant(ir.VectorType(i32, lanes),
                                                                    [0] * lanes))
                    for h in range(nvk):
                        p = builder.fmul(xv, y[h], flags=flags)
                        builder.store(builder.fadd(builder.load(acc[r][h]), p, flags=flags),
                                      acc[r][h])
        whole = builder.and_(builder.icmp_signed("==", nr64, const(mr)),
                             builder.icmp_signed("==", nc64, const(NR)))
        with builder.if_else(whole) as (then, otherwise):
            with then:
                for r in range(mr):
                    for h in range(nv):
                        builder.store(builder.load(acc[r][h]),
                                      ptr(pc, builder.add(crow[r], const(h * lanes)), vty), align=size)
            with otherwise:
                buf = cgutils.alloca_once(builder, fty, size=mr * NR)
                for r in range(mr):
                    for h in range(nv):
                        slot = builder.gep(buf, [const(r * NR + h * lanes)])
                        builder.store(builder.load(acc[r][h]),
                                      builder.bitcast(slot, vty.as_pointer()), align=size)
                with cgutils.for_range(builder, nr64) as rl:
                    with cgutils.for_range(builder, nc64) as cl:
                        v = builder.load(builder.gep(buf, [builder.add(
                            builder.mul(rl.index, const(NR)), cl.index)]))
                        off = builder.add(builder.add(c0_, builder.mul(rl.index, ldc_)), cl.index)
                        builder.store(v, ptr(pc, off, fty))
        return context.get_dummy_value()

    if not (isinstance(C, types.Array) and mr and A.dtype == C.dtype and B.dtype == C.dtype):
        return None
    return types.none(C, c0, ldc, nr, nc, A, a0, lda, ka, B, b0, K, add), codegen


@jit(fastmath=_FLAGS, nogil=True, error_model="numpy", _nrt=False)
def block_wide(C, c0, ldc, nr, nc, A, a0, lda, ka, B, b0, K, add):
    """block3's sums for a block of r < nr <= MR_WIDE[dtype] rows (12 float32, 6 float64) x
    32, written as 512-bit vectors: the AVX-512 micro-kernel. (The same kernel written like
    block3, 8 x 32, compiled in 5.7 s against block3's 1.8: SLP packing 256 scalar sums.)"""
    _vector_block(C, c0, ldc, nr, nc, A, a0, lda, ka, B, b0, K, add)


@jit(fastmath=_FLAGS, nogil=True, error_model="numpy", _nrt=False)
def block_wide_cut(C, c0, ldc, nr, nc, A, a0, lda, ka, B, b0, K, add):
    """block_wide for a panel cut by the edge of C (nc < 32 columns): only the vectors that
    hold the nc columns are summed (the last panel of 100 units is 4 of 32 columns: 1 of 4
    float64 vectors, 1 of 2 float32). Its own function: the k loops for every count inside
    block_wide made the whole panels' loop 4-5 % slower (float32, one more register spill)."""
    _vector_cut(C, c0, ldc, nr, nc, A, a0, lda, ka, B, b0, K, add)


if "block3" in globals():       # absent only while the section is being rewritten
    block3 = slp_compile(globals()["block3"])
#: the GEMM path's micro-kernel: 512-bit vectors on AVX-512, 3 x 32 (AVX2) otherwise
WIDE = wide_cpu()
block = block_wide if WIDE else globals().get("block3")
#: the kernel for a panel cut by the edge of C (block3 sums the columns it stores already)
block_cut = block_wide_cut if WIDE else globals().get("block3")


@intrinsic
def rows(typingctx, C):
    """The rows of block's register block for C's dtype (a compile-time constant)."""
    n = MR_WIDE.get(C.dtype, 3) if WIDE else 3
    return types.intp(C), lambda context, builder, sig, args: context.get_constant(types.intp, n)


if __name__ == "__main__":       # rewrite the generated section
    import pathlib
    import re
    path = pathlib.Path(__file__)
    text = path.read_text()
    start = "# ---- generated by source(): do not edit by hand (python -m nnjit.loops.microkernel) ----\n"
    end = "# ---- end of generated code ----\n"
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda m: start + source() + end,
                  text, flags=re.S)
    path.write_text(text)
