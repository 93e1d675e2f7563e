"""Tiny data (issue 26): `nnjit train` does not hold out a test or validation split too small
to mean anything (it trains on it and says so in one line), files of 1 sample or 1 class fail
in one line, and the estimators' early stopping on tiny data raises where scikit-learn's does
and trains as scikit-learn's does elsewhere."""
import warnings

import numpy as np
import pytest

from nnjit import MLP
from nnjit.cli import MIN_SPLIT, main, split_needs


def _csv(path, X, y):
    lines = [",".join(f"f{j}" for j in range(X.shape[1])) + ",target"]
    lines += [",".join(map(repr, map(float, x))) + f",{t}" for x, t in zip(X, y)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _blobs(n, k=3, seed=0):
    rng = np.random.default_rng(seed)
    c = np.arange(n) % k
    return rng.normal(scale=0.3, size=(n, 3)) + np.eye(3)[c % 3] * 2 + c[:, None] // 3, c


def _train(capsys, data, *extra):
    rc = main(["train", "--data", data, "--quiet", "--hidden", "8", "--epochs", "12", *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _warnings(out):
    return [line for line in out.splitlines() if line.startswith("warning: ")]


def test_split_needs_ten_samples_and_two_per_class():
    assert MIN_SPLIT == 10
    assert split_needs() == 10 and split_needs(3) == 10 and split_needs(10) == 20


def test_32_rows_train_on_everything_with_one_warning_and_no_test_score(tmp_path, capsys):
    X, y = _blobs(32)
    model = tmp_path / "m.npz"
    rc, out, err = _train(capsys, _csv(tmp_path / "t.csv", X, y), "--save", str(model))
    assert rc == 0 and err == ""
    assert "split: 32 train / 0 validation / 0 test samples" in out
    assert _warnings(out) == [
        "warning: test and validation splits of 8 and 5 samples are too small to score or stop "
        "early on (they need at least 10): training all 12 epochs on all 32 samples, with no "
        "test score"]
    assert "trained 12 epochs" in out and "stopped early" not in out
    assert "kept the weights" not in out and "test accuracy" not in out
    net = MLP.load(model)       # every row trained on: the scaling is fitted on all 32
    np.testing.assert_allclose(net.x_scaler.offset_, X.mean(axis=0), rtol=1e-12)


def test_a_small_validation_split_is_trained_on_and_the_test_split_still_scores(tmp_path, capsys):
    X, y = _blobs(60)        # 15 test samples (enough), 7 validation samples (too few)
    rc, out, _ = _train(capsys, _csv(tmp_path / "t.csv", X, y))
    assert rc == 0 and "split: 45 train / 0 validation / 15 test samples" in out
    assert _warnings(out) == [
        "warning: a validation split of 7 samples is too small to stop early on (it needs at "
        "least 10): training all 12 epochs on all 45 samples of the training split"]
    assert "trained 12 epochs" in out and "test accuracy: " in out
    # --patience 0 does not stop early on it: the split stays, as asked, for the loss curve
    rc, out, _ = _train(capsys, _csv(tmp_path / "t.csv", X, y), "--patience", "0")
    assert "split: 38 train / 7 validation / 15 test samples" in out and not _warnings(out)


def test_the_per_class_rule_and_large_enough_splits(tmp_path, capsys):
    X, y = _blobs(72, k=10)  # 18 test samples: under 2 per class for 10 classes
    rc, out, _ = _train(capsys, _csv(tmp_path / "k.csv", X, y), "--task", "classification",
                        "--patience", "0")
    assert rc == 0 and "a test split of 18 samples is too small to score (it needs at least " \
                      "20): training on all 72 samples, with no test score" in out
    X, y = _blobs(90)        # 22 test, 10 validation samples: held out, no warning
    rc, out, _ = _train(capsys, _csv(tmp_path / "ok.csv", X, y))
    assert "split: 58 train / 10 validation / 22 test samples" in out and not _warnings(out)


def test_tiny_regression_scores_no_single_sample(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 3))
    rc, out, _ = _train(capsys, _csv(tmp_path / "r.csv", X, X @ [1.0, -1.0, 0.5] + 0.1))
    assert rc == 0 and "; regression (" in out
    assert "test and validation splits of 5 and 3 samples are too small" in out
    assert "test R^2" not in out


@pytest.mark.parametrize("n, labels, message", [
    (1, [0], "'{path}' has 1 sample: too few to train on"),
    (12, [1] * 12, "'{path}': classification needs at least 2 classes, the training labels hold "
                   "1; for a numeric target use --task regression"),
])
def test_one_sample_or_one_class_fails_in_one_line(n, labels, message, tmp_path, capsys):
    path = _csv(tmp_path / "tiny.csv", np.arange(3.0 * n).reshape(n, 3), labels)
    rc, out, err = _train(capsys, path)
    assert rc == 2 and err == f"nnjit train: error: {message.format(path=path)}\n"
    assert "trained" not in out


def test_two_samples_train_with_the_warning(tmp_path, capsys):
    path = _csv(tmp_path / "two.csv", np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 2.5]]), [0, 1])
    rc, out, err = _train(capsys, path)
    assert rc == 0 and err == "" and "split: 2 train / 0 validation / 0 test samples" in out
    assert len(_warnings(out)) == 1 and "trained 12 epochs" in out
    rc, out, err = _train(capsys, path, "--patience", "0")     # a 1-sample validation split
    assert rc == 2 and err == (f"nnjit train: error: '{path}' has 2 samples: too few to hold out "
                               "a validation split; lower --validation-fraction\n")


# ---------------------------------------------------------------- the estimators
def _estimators():
    sk = pytest.importorskip("sklearn.neural_network")
    from nnjit import sklearn as nn
    return sk, nn


def _tiny(kind, n, k=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    if kind == "rare":
        return X, np.r_[np.zeros(n - 1, int), 1]
    return X, (np.arange(n) % k if kind == "classes" else X @ [1.0, -1.0, 0.5])


@pytest.mark.parametrize("kind, n, k, sklearns", [
    ("classes", 10, 2, "The test_size = 1 should be greater or equal to the number of classes = 2"),
    ("rare", 20, 2, "The least populated classes in y have only 1 member"),
    ("classes", 6, 3, "The validation set is too small"),
    ("values", 10, 0, "The validation set is too small"),
])
def test_early_stopping_on_tiny_data_raises_where_scikit_learn_does(kind, n, k, sklearns):
    sk, nn = _estimators()
    X, y = _tiny(kind, n, k)
    S, N = ((sk.MLPRegressor, nn.MLPRegressor) if kind == "values"
            else (sk.MLPClassifier, nn.MLPClassifier))
    p = dict(hidden_layer_sizes=(4,), max_iter=5, early_stopping=True, random_state=0)
    with pytest.raises(ValueError, match=sklearns):
        S(**p).fit(X, y)
    with pytest.raises(ValueError, match=sklearns) as e:
        N(**p).fit(X, y)
    assert f"validation_fraction=0.1 of {n} samples" in str(e.value)      # said in its terms


def test_early_stopping_on_two_validation_samples_trains_as_scikit_learn():
    """scikit-learn early-stops on 2 validation samples without a word (its own tests forbid a
    UserWarning there): the drop-in does the same, the same trajectory."""
    sk, nn = _estimators()
    from sklearn.exceptions import ConvergenceWarning
    X, y = _tiny("classes", 20, 3)
    p = dict(hidden_layer_sizes=(4,), max_iter=8, early_stopping=True, random_state=0,
             solver="sgd", learning_rate_init=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ConvergenceWarning)
        a, b = sk.MLPClassifier(**p).fit(X, y), nn.MLPClassifier(**p).fit(X, y)
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_allclose(b.validation_scores_, a.validation_scores_)
    for u, v in zip(a.coefs_, b.coefs_):
        np.testing.assert_allclose(v, u, rtol=0, atol=1e-9)
