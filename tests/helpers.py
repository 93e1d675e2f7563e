"""Shared test fixtures: the valid (hidden, output, loss) combinations and small data, read
from nnjit's tables, so a new activation or loss is tested everywhere these are used."""
import numpy as np

from nnjit import activations as A

HIDDEN = list(A.HIDDEN)
# (output activation, loss): every pair the engine accepts
OUTPUT_LOSS = [(out, x.name) for x in A.LOSS_TABLE for out in x.outputs]


def targets(output, loss, M, K, rng):
    """A target matrix of the kind each output/loss pair is meant for."""
    if output == "softmax":
        return np.eye(K)[rng.integers(0, K, M)]
    if output == "sigmoid":
        return rng.integers(0, 2, (M, K)).astype(float)
    if loss == "poisson":
        return rng.poisson(1.5, (M, K)).astype(float)
    return rng.normal(size=(M, K))


def assert_close(a, b, dtype, what=""):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.dtype(dtype) == np.float64:
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=what)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=what)
