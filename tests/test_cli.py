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
               "--lr", "0.1", "--patience", "0", "--dtype", "float64", "--save", str(model), *extra])
    assert rc == 0
    return model


def test_train_csv_save_plot_then_predict_and_info(csv_file, tmp_path, capsys):
    png = tmp_path / "loss.png"
    model = _train(csv_file, tmp_path, "--plot", str(png))
    out = capsys.readouterr().out
    assert "blobs.csv: 60 samples, 3 features; classification into 3 classes (the target holds " \
           "text labels; override with --task regression)" in out
    assert "split: 38 train / 7 validation / 15 test samples; network [3, 8, 3]" in out
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
    assert "scaling:         x standard" in out
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
    out = capsys.readouterr().out
    assert "classification into 3 classes" in out and "60 train / 0 validation / 0 test" in out
    assert "network [3, 64, 3]" in out


def test_checkpoint_and_resume_from_the_command_line(csv_file, tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    a = _train(csv_file, tmp_path, "--checkpoint", str(ck), "--checkpoint-every", "5")
    first = MLP.load(a)
    assert main(["train", "--data", str(csv_file), "--hidden", "8", "--epochs", "15", "--quiet",
                 "--lr", "0.1", "--patience", "0", "--dtype", "float64", "--checkpoint", str(ck),
                 "--resume"]) == 0
    resumed = MLP.load(ck)
    assert resumed.n_epochs_ == 15
    for u, v in zip(resumed.weights, first.weights):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "nope.csv"], "no such data file: 'nope.csv'"),
    (["train", "--data", "{tmp}/data.txt"], "unsupported data file"),
    (["train", "--data", "{tmp}/ragged.csv"], "line 3 has 2 columns; line 1 has 3"),
    (["train", "--data", "{tmp}/words.csv"], "line 2, column 'column 2': 'x' is not a number, "
                                             "while 11 of the column's 12 values are"),
    (["train", "--data", "{tmp}/empty.csv"], "is empty"),
    (["train", "--data", "{tmp}/ragged.csv", "--target-column", "7"], "--target-column 7 is outside"),
    (["train", "--data", "{tmp}/noX.npz"], "has no array 'X'"),
    (["train", "--data", "{tmp}/broken.npz"], "not a readable .npz"),
    (["train", "--data", "{tmp}/onlyX.npz"], "has no targets"),
    (["train", "--data", "{tmp}/good.csv", "--epochs", "0"], "--epochs: wants a positive int, got '0'"),
    (["predict", "--model", "{tmp}/missing.npz", "--data", "{tmp}/ragged.csv"], "no such model file"),
    (["predict", "--model", "{tmp}/noX.npz", "--data", "{tmp}/ragged.csv"], "not an nnjit model file"),
    (["predict", "--model", "{tmp}/ragged.csv", "--data", "{tmp}/ragged.csv"], "not a NumPy .npz"),
    (["info", "{tmp}/broken.npz"], "truncated or corrupted"),
    (["info", "{tmp}"], "is a directory"),
])
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "data.txt").write_text("1,2\n")
    (tmp_path / "ragged.csv").write_text("1,2,a\n3,4,b\n5,6\n")
    (tmp_path / "words.csv").write_text("1,2,a\n3,x,b\n" + "5,6,a\n" * 10)
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
    assert "has 5 columns but the model takes 3 columns (its table's)" in capsys.readouterr().err


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


# ---------------------------------------------------------------- issue 12: raw CSVs, failures
def _write_csv(path, X, y, header="auto"):
    names = [f"f{j}" for j in range(X.shape[1])] + ["target"]
    lines = ([",".join(names)] if header else []) + [",".join(map(repr, map(float, x))) + f",{t}"
                                                     for x, t in zip(X, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _raw_blobs(M=90, seed=3):
    """Three classes in features with offsets 1000 and scales 1e-3..1e2 (as users have them)."""
    rng = np.random.default_rng(seed)
    k = np.arange(M) % 3
    Z = rng.normal(scale=0.4, size=(M, 3)) + np.eye(3)[k] * 2
    return Z * [1e-3, 1.0, 1e2] + [1000.0, -5.0, 0.0], k


def _err_line(capsys, command="train"):
    err = capsys.readouterr().err
    assert err.startswith(f"nnjit {command}: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_unscaled_csv_is_standardised_and_predict_applies_the_scaling(tmp_path, capsys):
    X, y = _raw_blobs()
    data = _write_csv(tmp_path / "raw.csv", X, y)
    model = tmp_path / "m.npz"
    assert main(["train", "--data", str(data), "--quiet", "--save", str(model)]) == 0
    out = capsys.readouterr().out
    assert "features scaled: standard" in out
    assert float(out.split("test accuracy: ")[1].split()[0]) >= 0.9
    net = MLP.load(model)
    assert net.x_scaler.kind == "standard" and net.y_scaler is None
    from nnjit.cli import split_indices as _split
    rng = np.random.default_rng(0)                  # --seed 0: the CLI's splits, redrawn
    train, test = _split(len(X), 0.25, rng)
    fit, val = _split(len(train), 0.15, rng)
    fit = train[fit]
    assert len(fit) == 58 and len(test) == 22
    # fitted on the rows trained on only, not on the validation and test rows
    np.testing.assert_allclose(net.x_scaler.offset_, X[fit].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(net.x_scaler.scale_, X[fit].std(axis=0), rtol=1e-12)
    assert not np.allclose(net.x_scaler.offset_, X.mean(axis=0), rtol=1e-9, atol=0)
    assert main(["predict", "--model", str(model), "--data", str(data)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1:] == [str(v) for v in net.predict(X)]
    acc = float(captured.err.split("accuracy against the file's targets: ")[1])
    assert acc >= 0.9
    # the same data unscaled does much worse: the scaling is what makes it work
    assert main(["train", "--data", str(data), "--quiet", "--scale", "none", "--epochs", "20",
                 "--patience", "0"]) == 0
    assert float(capsys.readouterr().out.split("test accuracy: ")[1].split()[0]) < acc


def test_integer_target_with_many_values_is_a_regression(tmp_path, capsys):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(200, 3)) * [1, 10, 100]
    y = np.round(150 + 40 * (X[:, 0] - X[:, 1] / 10)).astype(int)     # ~100 distinct integers
    data = _write_csv(tmp_path / "reg.csv", X, y)
    model = tmp_path / "m.npz"
    assert main(["train", "--data", str(data), "--quiet", "--save", str(model)]) == 0
    out = capsys.readouterr().out
    assert "; regression (the target has" in out and "override with --task classification" in out
    assert float(out.split("test R^2: ")[1].split()[0]) > 0.8
    net = MLP.load(model)
    assert net.y_scaler is not None and net.output == "identity"
    pred = net.predict(X)
    assert abs(pred.mean() - y.mean()) < 10        # in the target's units, not standardised
    assert main(["train", "--data", str(data), "--quiet", "--task", "classification",
                 "--epochs", "1"]) == 0
    assert "classification into" in capsys.readouterr().out


@pytest.mark.parametrize("y, regression, words", [
    (np.repeat([0, 1, 2], 20), False, "3 distinct integer values, 20 samples each"),
    (np.array(["a", "b"] * 5), False, "text labels"),
    (np.arange(60) % 2 == 0, False, "boolean"),
    (np.linspace(0, 1, 30), True, "non-integer values"),
    (np.arange(100) % 40, True, "40 distinct integer values, 2.5 samples each"),
    (np.arange(600) % 60, True, "60 distinct integer values"),
    (np.array([0, 1, 1, 0]), False, "2 distinct integer values"),
])
def test_detect_task_rule(y, regression, words):
    from nnjit.cli import detect_task
    got, why = detect_task(y)
    assert got is regression and words in why
    assert detect_task(y, "regression") == (True, "as asked by --task")


@pytest.fixture
def bad_files(tmp_path):
    X, y = _raw_blobs(30)
    f = {}
    rows = [",".join(map(str, x)) + f",{t}" for x, t in zip(X, y)]
    f["colnums"] = tmp_path / "colnums.csv"
    f["colnums"].write_text("\n".join(["0,1,2,3"] + rows) + "\n")
    f["colnames"] = tmp_path / "colnames.csv"
    f["colnames"].write_text("\n".join(["0,1,2,label"] + rows) + "\n")
    f["numhead"] = tmp_path / "numhead.csv"
    f["numhead"].write_text("\n".join(["400,410,420,999"] + rows) + "\n")
    f["typo"] = tmp_path / "typo.csv"
    f["typo"].write_text("\n".join(["5.1,3.5x,0.2,0"] + rows) + "\n")
    f["nan"] = tmp_path / "nan.csv"
    f["nan"].write_text("\n".join(["a,b,c,t"] + rows[:3] + ["1.0,nan,2.0,1"] + rows[3:]) + "\n")
    f["empty_cell"] = tmp_path / "empty_cell.csv"
    f["empty_cell"].write_text("\n".join(rows[:5] + ["1.0,2.0,,1"] + rows[5:]) + "\n")
    f["semicolon"] = tmp_path / "semi.csv"
    f["semicolon"].write_text("\n".join(r.replace(",", ";") for r in rows) + "\n")
    f["npy"] = tmp_path / "array.npz"
    np.save(tmp_path / "array.npy", X)
    os.replace(tmp_path / "array.npy", f["npy"])
    f["binary"] = tmp_path / "image.csv"
    f["binary"].write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))
    f["good"] = tmp_path / "good.csv"
    f["good"].write_text("\n".join(["a,b,c,t"] + rows) + "\n")
    return f


@pytest.mark.parametrize("args, message", [
    (["--data", "{colnums}"], "line 1 is the numbers 0..2: a header of column numbers or a data "
                              "row? pass --header or --no-header"),
    (["--data", "{numhead}"], "numhead.csv' line 1's target '999' appears on no other line (the "
                              "others hold 3 labels): a header of numbers or a data row? pass "
                              "--header or --no-header"),
    (["--data", "{typo}"], "typo.csv' line 1 mixes text and numbers (column 2: '3.5x'): pass "
                           "--header if line 1 names the columns, else fix that cell"),
    (["--data", "{typo}", "--no-header"], "typo.csv': line 1, column 'column 2': '3.5x' is not a "
                                          "number, while 30 of the column's 31 values are"),
    (["--data", "{semicolon}"], "semi.csv' looks semicolon-separated (line 1 has no ',' but 3 ';'); "
                                "pass --delimiter ';'"),
    (["--data", "{npy}"], "array.npz' is a .npy file (one array), not a .npz archive"),
    (["--data", "{binary}"], "image.csv' is a binary file, not CSV text"),
    (["--data", "{good}", "--test-fraction", "1.5"], "argument --test-fraction: wants a fraction "
                                                     "in [0, 1) (0: none), got '1.5'"),
    (["--data", "{good}", "--test-fraction", "-0.1"], "argument --test-fraction: wants a fraction"),
    (["--data", "{good}", "--resume"], "--resume needs --checkpoint CK.npz"),
    (["--data", "{good}", "--save", "{tmp}/no/such/dir/m.npz"], "--save '{tmp}/no/such/dir/m.npz': "
                                                                "the directory"),
    (["--data", "{good}", "--plot", "{tmp}/loss.xyz"], "--plot '{tmp}/loss.xyz': unknown image "
                                                       "type .xyz; use one of"),
    (["--data", "{good}", "--task", "regression", "--optimizer", "sgd", "--lr", "100"],
     "nnjit train: error: training diverged in epoch "),
    (["--data", "{good}", "--task", "regression", "--optimizer", "sgd", "--lr", "100"],
     "; try a smaller --lr (now 100) or --momentum (now 0.9)"),
    (["--data", "{good}", "--momentum", "1"], "--momentum must be in [0, 1), got 1"),
    (["--data", "{good}", "--alpha", "-1"], "--alpha must be 0 or more, got -1"),
    (["--data", "{good}", "--lr", "-1"], "argument --lr: wants a positive float, got '-1'"),
    (["--data", "{good}", "--hidden", "8,x"], "--hidden wants sizes like 64,32, got '8,x'"),
    (["--data", "{good}", "--frobnicate"], "unrecognized arguments: --frobnicate (see nnjit train --help)"),
    (["--data", "{good}", "--scale", "log"], "argument --scale: invalid choice: 'log'"),
    (["--data", "{good}", "--patience", "-1"], "--patience must be 0"),
])
def test_train_failures_are_one_line_and_exit_2(args, message, bad_files, tmp_path, capsys):
    if "--plot" in args:
        pytest.importorskip("matplotlib")
    fmt = {k: str(v) for k, v in bad_files.items()} | {"tmp": str(tmp_path)}
    args = [a.format(**fmt) for a in args]
    assert main(["train", "--quiet", *args]) == 2
    err = _err_line(capsys)
    assert message.format(**fmt) in err
    assert "trained" not in capsys.readouterr().out      # checked before any training


def test_header_options_and_named_target_over_numbered_columns(bad_files, capsys):
    for argv in (["--data", str(bad_files["colnums"]), "--header"],
                 ["--data", str(bad_files["numhead"]), "--header"],
                 ["--data", str(bad_files["colnames"])],
                 ["--data", str(bad_files["semicolon"]), "--delimiter", ";"]):
        assert main(["train", "--quiet", "--epochs", "2", *argv]) == 0
        assert "30 samples, 3 features; classification into 3 classes" in capsys.readouterr().out
    assert main(["train", "--quiet", "--epochs", "2", "--data", str(bad_files["colnums"]),
                 "--no-header"]) == 0      # line 1 as data: a fourth class "3" with one sample
    assert "31 samples" in capsys.readouterr().out


def test_other_commands_fail_in_one_line(tmp_path, capsys):
    assert main(["bench", "--samples", "0"]) == 2
    assert "--samples must be positive" in _err_line(capsys, "bench")
    assert main(["bench", "--layers", "x"]) == 2
    assert "argument --layers" in _err_line(capsys, "bench")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err == "nnjit: error: the following arguments are required: command (see nnjit --help)\n"
    assert main(["predict", "--data", "x.csv"]) == 2
    assert "the following arguments are required: --model" in _err_line(capsys, "predict")


def test_version_and_every_default_in_help(capsys):
    from nnjit import __version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"nnjit {__version__}\n"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for default in ("(default: standard)", "(default: 64)", "(default: tanh)", "(default: 300)",
                    "(default: adam)", "(default: 0.001)", "(default: 0.0001)", "(default: 0.9)", "(default: 32)", "(default: 0.15)",
                    "(default: 10)", "(default: 0.25)", "(default: loops)", "(default: float32)",
                    "(default: auto)", "(default: -1)"):
        assert default in out, default


def test_core_install_without_tqdm_or_matplotlib(bad_files, tmp_path, monkeypatch, capsys):
    """The CLI on `pip install nnjit` alone: no bar without tqdm, a one-line --plot error."""
    for name in ("tqdm", "tqdm.auto", "matplotlib", "matplotlib.backend_bases"):
        monkeypatch.setitem(sys.modules, name, None)        # import fails as if not installed
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(["train", "--data", str(bad_files["good"]), "--epochs", "3"]) == 0
    assert "trained 3 epochs" in capsys.readouterr().out
    assert main(["train", "--data", str(bad_files["good"]), "--plot", str(tmp_path / "l.png")]) == 2
    assert "--plot needs matplotlib: pip install 'nnjit[train]'" in _err_line(capsys)


def _env():
    return {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}


def test_ctrl_c_while_compiling_is_one_line(tmp_path, bad_files):
    import signal
    env = {**_env(), "NUMBA_CACHE_DIR": str(tmp_path / "empty_cache")}
    # SIGINT back to its default in the child: a test run started as a background job of a
    # non-interactive shell inherits it ignored, and Python then installs no Ctrl-C handler
    p = subprocess.Popen([sys.executable, "-m", "nnjit", "train", "--data", str(bad_files["good"])],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in p.stdout:
            if line.startswith("compiling the loops kernels for float32, first run only"):
                break
        else:
            pytest.fail("no compile notice with an empty NUMBA_CACHE_DIR")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130
    assert err == "\nnnjit train: interrupted while compiling; nothing was written\n"


def test_broken_pipe_into_head_is_silent(tmp_path, csv_file):
    model = _train(csv_file, tmp_path)
    X = np.random.default_rng(0).normal(size=(3000, 3))
    feats = tmp_path / "many.csv"
    np.savetxt(feats, X, delimiter=",")
    p = subprocess.Popen([sys.executable, "-m", "nnjit", "predict", "--model", str(model), "--data",
                          str(feats), "--proba"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=_env())
    assert p.stdout.readline() == b"proba_ant,proba_bee,proba_cat\n"
    p.stdout.close()                # what `| head -1` does
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141 and err == b""


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


def test_digits_are_scikit_learns_read_without_importing_it(tmp_path, monkeypatch):
    """nnjit train's built-in dataset reads the file scikit-learn ships (importing scikit-learn
    was most of a warm run): the same arrays as load_digits, no sklearn module imported, and
    scikit-learn's own loader where the file is missing or unreadable."""
    from sklearn.datasets import load_digits

    from nnjit import cli
    code = ("import sys; from nnjit.cli import _load_digits; X, y, _ = _load_digits(); "
            "print(X.shape, X.dtype, y.dtype, float(X.sum()), int(y.sum()), "
            "any(m == 'sklearn' or m.startswith('sklearn.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    X2, y2 = load_digits(return_X_y=True)
    assert out.split() == ["(1797,", "64)", "float64", str(y2.dtype), repr(float(X2.sum())),
                           str(int(y2.sum())), "False"]
    X, y, _ = cli._load_digits()
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert y.dtype == y2.dtype
    for broken in (None, str(tmp_path / "digits.csv.gz")):
        if broken:
            (tmp_path / "digits.csv.gz").write_bytes(b"not gzip")
        monkeypatch.setattr(cli, "_digits_file", lambda b=broken: b)
        X, y, _ = cli._load_digits()
        np.testing.assert_array_equal(X, X2)
        np.testing.assert_array_equal(y, y2)
