"""nnjit.preprocessing.Scaler and the scalers an MLP carries (x_scaler, y_scaler)."""
import numpy as np
import pytest

from nnjit import MLP
from nnjit.preprocessing import Scaler


def _raw(M=41, D=5, seed=0):
    """Features with offsets and scales far from 0 and 1, one constant column."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(M, D)) * [1e-3, 1.0, 50.0, 1e3, 0.0] + [7.0, -3.0, 1e4, 0.0, 42.0]
    return X


def test_scaler_matches_scikit_learn():
    sk = pytest.importorskip("sklearn.preprocessing")
    X = _raw()
    Z = Scaler("standard").fit_transform(X)
    np.testing.assert_allclose(Z, sk.StandardScaler().fit_transform(X), rtol=1e-12, atol=1e-12)
    Z = Scaler("minmax").fit(X).transform(X)
    np.testing.assert_allclose(Z, sk.MinMaxScaler().fit_transform(X), rtol=1e-12, atol=1e-12)
    assert (Z[:, 4] == 0).all()         # the constant column maps to 0, no division by zero


def test_scaler_round_trip_and_errors():
    X = _raw()
    s = Scaler().fit(X)
    np.testing.assert_allclose(s.inverse_transform(s.transform(X)), X, rtol=1e-12)
    assert s.transform(X.astype(np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="unknown scaling 'log'"):
        Scaler("log")
    with pytest.raises(ValueError, match="not fitted"):
        Scaler().transform(X)
    with pytest.raises(ValueError, match="fitted on 5 columns, got 3"):
        s.transform(X[:, :3])
    with pytest.raises(ValueError, match="NaN or inf"):
        Scaler().fit(np.array([[1.0], [np.nan]]))


@pytest.mark.parametrize("backend", ["loops", "vectorised"])
def test_x_scaler_equals_training_on_scaled_data(backend):
    X = _raw()
    y = (X[:, 2] > 1e4).astype(int) + (X[:, 1] > -3)
    a = MLP([5, 4, 3], activation="tanh", backend=backend, dtype="float64", seed=1)
    a.x_scaler = Scaler()
    a.fit(X, y, epochs=3, lr=0.1, validation_data=(X[:7], y[:7]))
    s = Scaler().fit(X)
    b = MLP([5, 4, 3], activation="tanh", backend=backend, dtype="float64", seed=1)
    b.fit(s.transform(X), y, epochs=3, lr=0.1, validation_data=(s.transform(X[:7]), y[:7]))
    for u, v in zip(a.weights, b.weights):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(a.x_scaler.offset_, s.offset_)
    np.testing.assert_array_equal(a.forward(X), b.forward(s.transform(X)))
    np.testing.assert_array_equal(a.predict(X), b.predict(s.transform(X)))
    assert a.history_ == b.history_
    assert a.score(X, y) == b.score(s.transform(X), y)
    # a second fit keeps the scaler fitted on the first one's data
    a.fit(X[:10] * 2, y[:10], epochs=1)
    np.testing.assert_array_equal(a.x_scaler.offset_, s.offset_)


def test_y_scaler_predicts_in_the_target_units_and_survives_save(tmp_path):
    X = _raw(60)
    y = 1000.0 + 3.0 * (X[:, 2] - 1e4) / 50.0 - 2.0 * X[:, 1]
    net = MLP([5, 6, 1], activation="tanh", output="identity", dtype="float64", seed=0)
    net.x_scaler, net.y_scaler = Scaler(), Scaler()
    net.fit(X, y, epochs=200, lr=0.05, momentum=0.9)
    assert net.score(X, y) > 0.95
    np.testing.assert_allclose(net.y_scaler.offset_, [y.mean()])
    pred = net.predict(X)
    np.testing.assert_allclose(pred, net.forward(X)[:, 0] * y.std() + y.mean(), rtol=1e-12)
    assert abs(pred.mean() - y.mean()) < 1.0
    path = tmp_path / "m.npz"
    net.save(path)
    back = MLP.load(path)
    assert back.x_scaler.kind == "standard" and back.y_scaler.kind == "standard"
    np.testing.assert_array_equal(back.predict(X), pred)
    assert back.score(X, y) == net.score(X, y)
    from nnjit import io
    assert io.info(path)["scalers"] == {"x": "standard", "y": "standard"}
    plain = MLP([5, 6, 1], output="identity", seed=0)
    plain.save(tmp_path / "plain.npz")
    assert MLP.load(tmp_path / "plain.npz").x_scaler is None


def test_a_corrupted_scaler_in_a_file_is_refused(tmp_path):
    import json
    from nnjit.io import ModelFileError, _digest
    net = MLP([5, 3, 2], seed=0)
    net.x_scaler = Scaler().fit(_raw())
    net.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays.pop("header").tobytes())
    arrays["x_scale"] = np.zeros(5)
    header["sha256"] = _digest(arrays)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ModelFileError, match="scaler's arrays are not 5 finite numbers"):
        MLP.load(tmp_path / "bad.npz")


def test_scalers_refuse_out_of_core_data(tmp_path):
    X = _raw()
    np.save(tmp_path / "X.npy", X)
    mm = np.load(tmp_path / "X.npy", mmap_mode="r")
    net = MLP([5, 3, 2], seed=0)
    net.x_scaler = Scaler().fit(X)
    with pytest.raises(ValueError, match="not applied to out-of-core data"):
        net.forward(mm)


@pytest.mark.parametrize("kind", ["standard", "minmax"])
def test_huge_features_are_scaled_not_zeroed(kind):
    """A column of magnitude 1e200: its squares overflow, so a naive std is inf and every
    scaled value 0 (issue 26.5). The scaler works on the column divided by a power of two.
    A column of magnitude 1e-200 is not "constant" either (the test is relative)."""
    sk = pytest.importorskip("sklearn.preprocessing")
    X = _raw()
    Xb = X * [1.0, 1e200, 1.0, 1e-200, 1.0]
    Z = Scaler(kind).fit_transform(Xb)
    ref = (sk.StandardScaler() if kind == "standard" else sk.MinMaxScaler()).fit_transform(X)
    np.testing.assert_allclose(Z, ref, rtol=1e-10, atol=1e-12)
    assert Z[:, 1].std() > 0.1


def test_scaler_fit_equals_numpy_bit_for_bit_on_ordinary_data():
    X = _raw()
    s = Scaler().fit(X)
    scale = X.std(axis=0)
    scale[4] = 1.0
    np.testing.assert_array_equal(s.offset_, X.mean(axis=0))
    np.testing.assert_array_equal(s.scale_, scale)


def test_scaler_refuses_what_it_cannot_hold_and_load_accepts_what_fit_makes(tmp_path):
    from nnjit.preprocessing import MAX_MAGNITUDE, check_fitted
    with pytest.raises(ValueError, match="column 0 holds 1e\\+300"):
        Scaler().fit(np.array([[1e300], [-1e300]]))
    for X in (_raw() * 1e200, _raw() * 1e-200, np.array([[MAX_MAGNITUDE], [-MAX_MAGNITUDE]])):
        for kind in ("standard", "minmax"):
            s = Scaler(kind).fit(X)
            assert check_fitted(s.offset_, s.scale_) is None
    assert "finite" in check_fitted([0.0], [np.inf])
    assert "above" in check_fitted([0.0], [1e300])
    assert "no fit produces" in check_fitted([0.0], [-2.0])
    assert "no fit produces" in check_fitted([5.0], [1e-300])
    assert check_fitted([0.0], [1e-300]) is None       # a column of 1e-300s scales
    # a model fitted on 1e200 features saves, loads and predicts as before
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 3)) * [1e200, 1.0, 1e-200]
    y = (X[:, 0] > 0).astype(int)
    net = MLP([3, 4, 2], dtype="float64", seed=0)
    net.x_scaler = Scaler()
    net.fit(X, y, epochs=30, lr=0.5)
    assert net.score(X, y) > 0.9
    net.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(MLP.load(tmp_path / "m.npz").predict_proba(X), net.predict_proba(X))


def test_float32_features_beyond_its_range_are_named_not_called_nan():
    X = _raw() * [1.0, 1e200, 1.0, 1.0, 1.0]
    net = MLP([5, 3, 2], dtype="float32", seed=0)
    with pytest.raises(ValueError, match="beyond float32's range"):
        net.fit(X, np.arange(41) % 2, epochs=1)
    net.x_scaler = Scaler()
    net.fit(X, np.arange(41) % 2, epochs=1)       # scaled first: fine
    assert np.isfinite(net.predict_proba(X)).all()
