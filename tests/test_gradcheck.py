"""Backpropagation is gradient descent: the gradients the backends return equal central
finite differences of the mean cost, in float64, for every hidden activation and every
output/loss pair the engine accepts."""
import numpy as np
import pytest

from nnjit import MLP
from nnjit.layout import join
from helpers import HIDDEN, OUTPUT_LOSS, targets

BACKENDS = ["loops", "vectorised"]


def numeric_gradient(net, X, Y, h=1e-6):
    theta = net.engine.get_params()
    g = np.zeros_like(theta)
    for p in range(theta.size):
        for sign in (+1, -1):
            t = theta.copy()
            t[p] += sign * h
            net.engine.set_params(t)
            g[p] += sign * net.loss_value(X, Y) / (2 * h)
    net.engine.set_params(theta)
    return g


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("output,loss", OUTPUT_LOSS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_gradients_match_finite_differences(backend, hidden, output, loss):
    rng = np.random.default_rng(7)
    net = MLP([4, 5, 3], activation=hidden, output=output, loss=loss, init="normal",
              init_scale=0.5, backend=backend, dtype="float64", seed=3)
    X = rng.normal(size=(7, 4))
    Y = targets(output, loss, 7, 3, rng)
    dW, db = net.gradients(X, Y)
    analytic = join(dW, db)
    numeric = numeric_gradient(net, X, Y)
    # atol scaled to the gradient: an exp output makes costs of thousands, whose central
    # differences carry absolute errors around 1e-7 in small entries
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8 * max(1.0, np.abs(numeric).max()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_two_hidden_layers_mixed_activations(backend):
    rng = np.random.default_rng(8)
    net = MLP([3, 4, 5, 2], activation=["gelu", "tanh"], output="softmax",
              backend=backend, dtype="float64", seed=1)
    X = rng.normal(size=(7, 3))
    Y = targets("softmax", "cross_entropy", 7, 2, rng)
    analytic = join(*net.gradients(X, Y))
    np.testing.assert_allclose(analytic, numeric_gradient(net, X, Y), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lecture_two_layer_one_neuron_example(backend):
    """The lecture's derivation: x -> (w1, b1) -> a1 -> (w2, b2) -> a2, sigmoid units,
    C = 1/2 (a2 - y)^2, worked by hand for x = 1, y = 1, w1 = 0.5, b1 = 0.1, w2 = -0.3, b2 = 0.2:
        z1 = 0.5*1 + 0.1 = 0.6                  a1 = s(0.6)        = 0.6456563062
        z2 = -0.3*0.6456563062 + 0.2 = 0.0063031081   a2 = s(z2)   = 0.5015757718
        delta_out = a2 - y                                           = -0.4984242282
        delta2 = a2 (1 - a2) delta_out                               = -0.1246048194
        delta1 = a1 (1 - a1) w2 delta2                               =  0.0085522857
        dw2 = a1 delta2 = -0.0804518875   db2 = delta2
        dw1 = x delta1  =  0.0085522857   db1 = delta1
    and one online step with eta = 0.5: w <- w - eta dw
        w1 = 0.4957238572  b1 = 0.0957238572  w2 = -0.2597740563  b2 = 0.2623024097
    """
    net = MLP([1, 1, 1], activation="sigmoid", output="sigmoid", loss="squared_error",
              backend=backend, dtype="float64")
    net.weights = [np.array([[0.5]]), np.array([[-0.3]])]
    net.biases = [np.array([0.1]), np.array([0.2])]
    X, Y = np.array([[1.0]]), np.array([[1.0]])
    np.testing.assert_allclose(net.forward(X), [[0.5015757718160597]], rtol=1e-12)
    (dw1, dw2), (db1, db2) = net.gradients(X, Y)
    np.testing.assert_allclose([dw1[0, 0], db1[0], dw2[0, 0], db2[0]],
                               [0.008552285691180576, 0.008552285691180576,
                                -0.0804518874513048, -0.12460481943030786], rtol=1e-12)
    net.fit(X, Y, epochs=1, lr=0.5, batch_size=1)
    (w1, w2), (b1, b2) = net.weights, net.biases
    np.testing.assert_allclose([w1[0, 0], b1[0], w2[0, 0], b2[0]],
                               [0.4957238571544097, 0.09572385715440972,
                                -0.2597740562743476, 0.26230240971515395], rtol=1e-12)
