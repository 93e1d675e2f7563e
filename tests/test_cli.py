"""The command line (nnjit train / predict / info) and nnjit.plot."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nnjit import MLP
from nnjit.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blobs(M=60, seed=0):
    """Three separable classes in 3 features, labelled by name."""
    rng = np.random.default_rng(seed)
    k = np.arange(M) % 3
    X = rng.normal(scale=0.3, size=(M, 3)) + np.eye(3)[k] * 2
    return X, np.array(["ant", "bee", "cat"])[k]


@pytest.fixture
def csv_file(tmp_path):
    X, y = _blobs()
    path = tmp_path / "blobs.csv"
    lines = ["f1,f2,f3,species"] + [",".join(f"{v:.6f}" for v in x) + f",{c}" for x, c in zip(X, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _train(csv_file, tmp_path, *extra):
    model = tmp_path / "m.npz"
    rc = main(["train", "--data", str(csv_file), "--hidden", "8", "--epochs", "15", "--quiet",
               "--dtype", "float64", "--save", str(model), *extra])
    assert rc == 0
    return model


def test_train_csv_save_plot_then_predict_and_info(csv_file, tmp_path, capsys):
    png = tmp_path / "loss.png"
    model = _train(csv_file, tmp_path, "--plot", str(png))
    out = capsys.readouterr().out
    assert "blobs.csv: 45 train / 15 test samples, 3 classes, network [3, 8, 3]" in out
    assert "test accuracy:" in out and f"saved the model to {model}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    net = MLP.load(model)
    assert list(net.classes_) == ["ant", "bee", "cat"] and net.n_epochs_ == 15

    preds = tmp_path / "p.csv"
    assert main(["predict", "--model", str(model), "--data", str(csv_file), "--out", str(preds)]) == 0
    err = capsys.readouterr().err
    assert "wrote 60 predictions" in err and "accuracy against the file's targets: 1.0000" in err
    rows = preds.read_text().splitlines()
    X, y = _blobs()
    assert rows[0] == "prediction" and rows[1:] == list(net.predict(X))

    # features only (no label column), to stdout, as probabilities
    feats = tmp_path / "feats.csv"
    np.savetxt(feats, X[:4], delimiter=",")
    assert main(["predict", "--model", str(model), "--data", str(feats), "--proba"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "proba_ant,proba_bee,proba_cat"
    np.testing.assert_allclose(np.loadtxt(lines[1:], delimiter=","), net.predict_proba(X[:4]), rtol=1e-12)

    assert main(["info", str(model)]) == 0
    out = capsys.readouterr().out
    assert "layers:          3 -> 8 -> 3" in out and "parameters:      59" in out
    assert "epochs trained:  15" in out and "lr=0.1" in out and "'ant', 'bee', 'cat'" in out
    assert main(["info", str(model), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_params"] == net.n_params == 59 and info["architecture"]["dtype"] == "float64"


def test_train_npz_regression_and_target_column(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 4))
    y = X @ [0.5, -1.0, 0.25, 0.0] + 0.1
    np.savez(tmp_path / "reg.npz", X=X, y=y)
    model = tmp_path / "reg_model.npz"
    assert main(["train", "--data", str(tmp_path / "reg.npz"), "--hidden", "8", "--epochs", "40",
                 "--lr", "0.02", "--activation", "identity", "--quiet", "--save", str(model)]) == 0
    out = capsys.readouterr().out
    assert "regression" in out and "network [4, 8, 1]" in out
    r2 = float(out.split("test R^2: ")[1].split()[0])
    assert r2 > 0.9
    assert main(["predict", "--model", str(model), "--data", str(tmp_path / "reg.npz")]) == 0
    captured = capsys.readouterr()
    assert "R^2 against the file's targets" in captured.err
    np.testing.assert_allclose(np.loadtxt(captured.out.splitlines()[1:]), MLP.load(model).predict(X),
                               rtol=1e-6)
    # the label in the first column of a header-less CSV
    path = tmp_path / "first.csv"
    Xb, yb = _blobs()
    path.write_text("".join(f"{c}," + ",".join(map(str, x)) + "\n" for x, c in zip(Xb, yb)))
    assert main(["train", "--data", str(path), "--target-column", "0", "--epochs", "2", "--quiet",
                 "--test-fraction", "0"]) == 0
    assert "60 train / 0 test samples, 3 classes, network [3, 64, 3]" in capsys.readouterr().out


def test_checkpoint_and_resume_from_the_command_line(csv_file, tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    a = _train(csv_file, tmp_path, "--checkpoint", str(ck), "--checkpoint-every", "5")
    first = MLP.load(a)
    assert main(["train", "--data", str(csv_file), "--hidden", "8", "--epochs", "15", "--quiet",
                 "--dtype", "float64", "--checkpoint", str(ck), "--resume"]) == 0
    resumed = MLP.load(ck)
    assert resumed.n_epochs_ == 15
    for u, v in zip(resumed.weights, first.weights):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "nope.csv"], "no such data file: 'nope.csv'"),
    (["train", "--data", "{tmp}/data.txt"], "unsupported data file"),
    (["train", "--data", "{tmp}/ragged.csv"], "line 3 has 2 columns; line 1 has 3"),
    (["train", "--data", "{tmp}/words.csv"], "line 2, column 2: 'x' is not a number"),
    (["train", "--data", "{tmp}/empty.csv"], "is empty"),
    (["train", "--data", "{tmp}/ragged.csv", "--target-column", "7"], "--target-column 7 is outside"),
    (["train", "--data", "{tmp}/noX.npz"], "has no array 'X'"),
    (["train", "--data", "{tmp}/broken.npz"], "not a readable .npz"),
    (["train", "--data", "{tmp}/onlyX.npz"], "has no targets"),
    (["train", "--data", "{tmp}/good.csv", "--epochs", "0"], "epochs must be a positive integer"),
    (["predict", "--model", "{tmp}/missing.npz", "--data", "{tmp}/ragged.csv"], "no such model file"),
    (["predict", "--model", "{tmp}/noX.npz", "--data", "{tmp}/ragged.csv"], "not an nnjit model file"),
    (["predict", "--model", "{tmp}/ragged.csv", "--data", "{tmp}/ragged.csv"], "not a NumPy .npz"),
    (["info", "{tmp}/broken.npz"], "truncated or corrupted"),
    (["info", "{tmp}"], "is a directory"),
])
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "data.txt").write_text("1,2\n")
    (tmp_path / "ragged.csv").write_text("1,2,a\n3,4,b\n5,6\n")
    (tmp_path / "words.csv").write_text("1,2,a\n3,x,b\n")
    (tmp_path / "good.csv").write_text("1,2,a\n3,4,b\n")
    (tmp_path / "empty.csv").write_text("")
    np.savez(tmp_path / "noX.npz", data=np.zeros((3, 2)))
    np.savez(tmp_path / "onlyX.npz", X=np.zeros((3, 2)))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nnjit {argv[0]}: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_predict_rejects_the_wrong_number_of_columns(csv_file, tmp_path, capsys):
    model = _train(csv_file, tmp_path)
    (tmp_path / "wide.csv").write_text("1,2,3,4,5\n")
    assert main(["predict", "--model", str(model), "--data", str(tmp_path / "wide.csv")]) == 2
    assert "has 4 feature columns but the model expects 3" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "predict", "info"])
def test_help_for_each_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nnjit {command}")
    assert {"train": "--save", "predict": "--out", "info": "--json"}[command] in out


def test_console_entry_point_in_a_subprocess(csv_file, tmp_path):
    model = _train(csv_file, tmp_path)
    env = {**os.environ, "PYTHONPATH": ROOT}
    ok = subprocess.run([sys.executable, "-m", "nnjit", "info", str(model)], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "epochs trained:  15" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "nnjit", "info", str(csv_file)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "not an nnjit model file" in bad.stderr


# ---------------------------------------------------------------- nnjit.plot
def test_loss_curve_draws_the_history(tmp_path):
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    from nnjit.plot import loss_curve
    X, y = _blobs()
    net = MLP([3, 5, 3], seed=0).fit(X[:40], y[:40], epochs=2)
    net.fit(X[:40], y[:40], epochs=4, validation_data=(X[40:], y[40:]))
    ax = loss_curve(net)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    np.testing.assert_array_equal(lines["training loss"].get_xdata(), np.arange(1, 7))
    np.testing.assert_array_equal(lines["training loss"].get_ydata(), net.history_["loss"])
    np.testing.assert_array_equal(lines["validation loss"].get_xdata(), np.arange(3, 7))
    assert ax.get_xlabel() == "epoch"
    plt.close("all")
    fig, ax = plt.subplots()
    assert loss_curve(net.history_, ax=ax, log=True) is ax and ax.get_yscale() == "log"
    plt.close(fig)
    with pytest.raises(ValueError, match="not been trained"):
        loss_curve(MLP([3, 2], seed=0))
    with pytest.raises(TypeError, match="needs an nnjit MLP"):
        loss_curve(object())


def test_loss_curve_of_a_sklearn_estimator():
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    pytest.importorskip("sklearn")
    from matplotlib.figure import Figure
    from nnjit.plot import loss_curve
    from nnjit.sklearn import MLPClassifier
    X, y = _blobs()
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, tol=0.0, random_state=0).fit(X, y)
    ax = loss_curve(clf, ax=Figure().add_subplot())
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), clf.loss_curve_)
