"""Predictions never silently use the wrong columns (issue 26.7): the training columns' names
travel with the model; X given by name is matched by name, in the API and in `nnjit predict`."""
import subprocess
import sys

import numpy as np
import pytest

from nnjit import MLP

pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def wine():
    from sklearn.datasets import load_wine
    X, y = load_wine(return_X_y=True, as_frame=True)
    return X, y.to_numpy()


def _fitted(X, y):
    from nnjit.preprocessing import Scaler
    net = MLP([X.shape[1], 8, 3], dtype="float64", seed=0)
    net.x_scaler = Scaler()
    return net.fit(X, y, epochs=60, lr=0.05, momentum=0.9, batch_size=16)


def test_dataframe_columns_are_matched_by_name_and_saved(wine, tmp_path):
    X, y = wine
    net = _fitted(X, y)
    assert net.feature_names_in_ == list(X.columns)
    base = net.predict_proba(X)
    assert net.score(X, y) > 0.9
    shuffled = X[list(X.columns[::-1])]
    np.testing.assert_array_equal(net.predict_proba(shuffled), base)      # reordered by name
    with pytest.raises(ValueError, match="missing 'proline'"):
        net.predict(X.drop(columns="proline"))
    with pytest.raises(ValueError, match="unexpected 'label'"):
        net.predict(X.drop(columns="proline").assign(label=y))
    np.testing.assert_array_equal(net.predict_proba(X.to_numpy()), base)   # arrays: by position
    net.save(tmp_path / "m.npz")
    back = MLP.load(tmp_path / "m.npz")
    assert back.feature_names_in_ == list(X.columns)
    np.testing.assert_array_equal(back.predict_proba(shuffled), base)
    with pytest.raises(ValueError, match="missing"):
        back.predict(X.iloc[:, 1:])
    arr = MLP([X.shape[1], 8, 3], seed=0).fit(X.to_numpy(), y, epochs=1)
    assert arr.feature_names_in_ is None


def _csv(path, X, y=None, order=None, header=True):
    df = X.copy()
    if y is not None:
        df["target"] = y
    if order is not None:
        df = df[order]
    df.to_csv(path, index=False, header=header)


def _nnjit(*args):
    return subprocess.run([sys.executable, "-m", "nnjit", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def test_cli_predict_matches_columns_by_name(wine, tmp_path):
    X, y = wine
    train = tmp_path / "wine.csv"
    _csv(train, X, y)
    r = _nnjit("train", "--data", train, "--save", tmp_path / "m.npz", "--epochs", 60,
               "--quiet", "--seed", 0)
    assert r.returncode == 0, r.stderr
    good = _nnjit("predict", "--model", tmp_path / "m.npz", "--data", train)
    assert good.returncode == 0, good.stderr
    acc = float(good.stderr.split("accuracy against the file's targets: ")[1].split()[0])
    assert acc > 0.9
    # the same table with its columns in another order: the same predictions
    cols = ["target"] + list(X.columns[::-1])
    _csv(tmp_path / "shuffled.csv", X, y, order=cols)
    r = _nnjit("predict", "--model", tmp_path / "m.npz", "--data", tmp_path / "shuffled.csv")
    assert r.returncode == 0, r.stderr
    assert r.stdout == good.stdout
    # a feature missing, the label present: refused in one line, the label never a feature
    _csv(tmp_path / "missing.csv", X.drop(columns="proline"), y)
    r = _nnjit("predict", "--model", tmp_path / "m.npz", "--data", tmp_path / "missing.csv")
    assert r.returncode == 2 and "proline" in r.stderr and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1
    # an unknown extra column is refused too
    _csv(tmp_path / "extra.csv", X.assign(extra=1.0), y)
    r = _nnjit("predict", "--model", tmp_path / "m.npz", "--data", tmp_path / "extra.csv")
    assert r.returncode == 2 and "extra" in r.stderr
    # without a header the column count must be the feature count exactly
    _csv(tmp_path / "nohead.csv", X, header=False)
    r = _nnjit("predict", "--model", tmp_path / "m.npz", "--data", tmp_path / "nohead.csv",
               "--no-header")
    assert r.returncode == 0, r.stderr
    assert r.stdout == good.stdout
    _csv(tmp_path / "nohead_short.csv", X.drop(columns="proline"), header=False)
    r = _nnjit("predict", "--model", tmp_path / "m.npz", "--data", tmp_path / "nohead_short.csv",
               "--no-header")
    assert r.returncode == 2 and "13" in r.stderr and "12" in r.stderr
