"""The loop form: the lecture's per-unit equations as explicit scalar loops, compiled by Numba.

The same function names, with the same signatures, exist in :mod:`nnjit.vectorised` (NumPy)
and :mod:`nnjit.cuda` (GPU), so the three forms read in three columns. Files by role:

================  =========================================================================
``reference``     the plain per-unit kernels under their public names (the readable version)
``blocked``       register- and cache-blocked variants, the fused online update
``gemm``          packing and the GEMM path for large batches (``microkernel``: its register blocks)
``fused``         a small network's batch in two parallel regions (the GEMM micro-kernel)
``sparse``        a sparse (CSR) first layer
``network``       loading a batch, feed-forward of the network, backpropagation of a batch
``epoch``         the compiled epoch every fit runs
``team``          online learning by a team of threads (one epoch, stages instead of regions)
``rows``          the activation and rule tables compiled for this form
``views``         compiled views into the flat layout, compile options
``fastmath``      e^x and erf
================  =========================================================================

The network lives in flat buffers (nnjit.layout): ``theta`` holds W^(1), b^(1), W^(2), ...;
``shape`` says where each piece starts; ``bufs`` holds one batch's activations, weighted
inputs and errors of every layer, its targets, per-sample costs and sample weights. The update
rule is a code (nnjit.rules) and its per-step Coefs; the optimizer state is ``vel`` and ``sq``
beside theta.
"""
from .blocked import (backward_layer_tiled, blocks, corrections_update_tiled, forward_layer_tiled,
                      forward_layer_units, update_forward_next)
from .epoch import NO_TILES, Tiles, epoch_mode, epoch_scratch, gemm_from, train_epoch
from .fastmath import exp_row, tanh_row
from .gemm import (backward_layer_gemm, corrections_update_gemm, forward_layer_gemm,
                   gemm_need, gemm_scratch)
from .network import backprop, forward, load_batch
from .reference import (backward_layer, corrections, corrections_update, forward_layer,
                        output_error, penalty, sample_loss, update, weight_sum)
from .rows import apply_f, mul_fprime, step_coefs
from .sparse import CSR, empty_csr, make_csr

__all__ = ["forward_layer", "backward_layer", "corrections", "corrections_update", "update",
           "output_error", "sample_loss", "weight_sum", "penalty", "load_batch", "forward",
           "backprop", "step_coefs", "train_epoch", "epoch_mode", "epoch_scratch", "gemm_from",
           "blocks", "Tiles", "NO_TILES",
           "forward_layer_tiled", "backward_layer_tiled", "corrections_update_tiled",
           "forward_layer_units", "update_forward_next", "forward_layer_gemm",
           "backward_layer_gemm", "corrections_update_gemm", "gemm_need", "gemm_scratch",
           "apply_f", "mul_fprime", "exp_row", "tanh_row", "CSR", "empty_csr", "make_csr"]
