"""Odd inputs, hostile model files and other processes (issue 14): nothing lost, nothing
wrong, nothing hung. Each test names what it guards."""
import warnings

import numpy as np
import pytest

from nnjit import MLP
from nnjit.model import DataConversionWarning


def _binary(n=200, seed=0, labels=(0, 2)):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = np.where(X[:, 0] + 0.5 * X[:, 1] > 0, labels[1], labels[0])
    return X, y


# ---------------------------------------------------------------- labels and targets
def test_label_column_is_ravelled_with_warning():
    X, y = _binary()
    flat = MLP([4, 8, 1], output="sigmoid", backend="vectorised", dtype="float64", seed=0)
    flat.fit(X, y, epochs=20, lr=0.5)
    col = MLP([4, 8, 1], output="sigmoid", backend="vectorised", dtype="float64", seed=0)
    with pytest.warns(DataConversionWarning, match="ravel"):
        col.fit(X, y[:, None], epochs=20, lr=0.5)
    assert col.classes_.tolist() == [0, 2]
    assert col.history_["loss"] == flat.history_["loss"]
    assert 0 < col.history_["loss"][-1] < 0.3
    assert col.score(X, y) == flat.score(X, y) > 0.95
    soft = MLP([4, 3], backend="vectorised", seed=0)       # softmax: a column is labels too
    with pytest.warns(DataConversionWarning):
        soft.fit(X, y[:, None], epochs=1)
    assert soft.classes_.tolist() == [0, 2]


def test_soft_probability_column_stays_a_target_for_one_sigmoid_unit():
    X, _ = _binary()
    p = 1 / (1 + np.exp(-X[:, :1]))                        # probabilities, not labels
    net = MLP([4, 1], output="sigmoid", backend="vectorised", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.fit(X, p, epochs=2)
    assert net.classes_ is None


@pytest.mark.parametrize("output,Y,match", [
    ("softmax", lambda y: np.eye(3)[y % 3] * 5 - 1, r"\[0, 1\].*-1 to 4"),
    ("softmax", lambda y: np.eye(3)[y % 3] * 0.5, "sum to 1"),
    ("sigmoid", lambda y: np.stack([y, -y], 1).astype(float), r"\[0, 1\]"),
])
def test_cross_entropy_refuses_targets_that_are_not_probabilities(output, Y, match):
    X, y = _binary()
    net = MLP([4, 3 if output == "softmax" else 2], output=output, backend="vectorised", seed=0)
    with pytest.raises(ValueError, match=match):
        net.fit(X, Y(y), epochs=1)
    with pytest.raises(ValueError, match=match):
        net.loss_value(X, Y(y))
    smooth = np.full((len(y), 3), 0.1) + 0.7 * np.eye(3)[y % 3]      # label smoothing is fine
    MLP([4, 3], backend="vectorised", seed=0).fit(X, smooth, epochs=1)


def test_score_of_label_column_equals_score_of_labels():
    X, y = _binary(labels=(1, 2))
    net = MLP([4, 8, 1], output="sigmoid", backend="vectorised", dtype="float64", seed=0)
    net.fit(X, y, epochs=30, lr=0.5)
    with pytest.warns(DataConversionWarning):
        col = net.score(X, y[:, None])
    assert col == net.score(X, y) > 0.95
    soft = MLP([4, 3], backend="vectorised", seed=0).fit(X, y, epochs=5)
    with pytest.warns(DataConversionWarning):
        assert soft.score(X, y[:, None]) == soft.score(X, y)


def test_softmax_never_predicts_a_unit_without_a_class():
    X, y = _binary(labels=(0, 2))
    net = MLP([4, 5], backend="vectorised", seed=0).fit(X, y, epochs=1)
    W = net.weights
    W[0][4] += 100 * X.std(0)            # make the unused fifth unit win everywhere
    net.weights = W
    assert set(net.predict(X).tolist()) <= {0, 2}


@pytest.mark.parametrize("call", ["loss_value", "gradients"])
def test_loss_and_gradients_leave_unfitted_classes_unset(call):
    X, y = _binary()
    net = MLP([4, 3], backend="vectorised", seed=0)
    getattr(net, call)(X, y)
    assert net.classes_ is None
    net.fit(X, np.where(y == 2, "b", "a"), epochs=1)       # other labels: still accepted
    assert net.classes_.tolist() == ["a", "b"]


# ---------------------------------------------------------------- complex and odd dtypes
def test_complex_inputs_are_refused_everywhere():
    X, y = _binary()
    net = MLP([4, 3], backend="vectorised", seed=0)
    for bad in (X + 1j, X.astype(np.complex64)):
        with pytest.raises(TypeError, match="complex"):
            net.fit(bad, y, epochs=1)
        with pytest.raises(TypeError, match="complex"):
            net.predict(bad)
    with pytest.raises(TypeError, match="complex"):
        net.fit(X, y, epochs=1, validation_data=(X + 1j, y))
    with pytest.raises(TypeError, match="complex"):
        net.fit(X, y + 0j, epochs=1)
    with pytest.raises(TypeError, match="complex"):
        MLP([4, 1], output="identity").fit(X, y + 1j, epochs=1)
    with pytest.raises(TypeError, match="complex"):
        net.weights = [w + 1j for w in net.weights]
    with pytest.raises(TypeError, match="complex"):
        net.biases = [b + 0j for b in net.biases]


@pytest.mark.parametrize("y,err,match", [
    (np.array([1, None] * 100, dtype=object), ValueError, "missing"),
    (np.array([1, "a"] * 100, dtype=object), TypeError, "mixes label types"),
    (np.array([1.0, np.nan] * 100), ValueError, "NaN"),
])
def test_unorderable_or_missing_labels_get_our_message(y, err, match):
    X, _ = _binary()
    with pytest.raises(err, match=match):
        MLP([4, 3], backend="vectorised").fit(X, y, epochs=1)


def test_dataframe_with_bool_and_nullable_columns_is_accepted():
    pd = pytest.importorskip("pandas")
    X, y = _binary()
    df = pd.DataFrame({"a": X[:, 0], "b": X[:, 1] > 0,
                       "c": pd.array(X[:, 2], dtype="Float64"),
                       "d": pd.array(np.round(X[:, 3] * 3).astype(int), dtype="Int64")})
    plain = np.column_stack([X[:, 0], X[:, 1] > 0, X[:, 2], np.round(X[:, 3] * 3)])
    a = MLP([4, 3], backend="vectorised", dtype="float64", seed=0).fit(df, pd.Series(y), epochs=3)
    b = MLP([4, 3], backend="vectorised", dtype="float64", seed=0).fit(plain, y, epochs=3)
    np.testing.assert_array_equal(a.weights[0], b.weights[0])
    assert a.score(df, y) == b.score(plain, y)
    df.iloc[3, 2] = pd.NA
    with pytest.raises(ValueError, match="NaN"):
        a.predict(df)
    with pytest.raises(ValueError, match="missing|NaN"):
        a.fit(X, pd.Series(pd.array([0, None] * 100, dtype="Int64")), epochs=1)
    with pytest.raises(TypeError, match="numbers"):
        a.predict(df.assign(c=["x"] * len(df)))
