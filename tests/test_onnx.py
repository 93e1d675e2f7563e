"""ONNX export (nnjit.onnx): every exported graph runs in onnxruntime and is compared with
nnjit's own predictions, float32 within 1e-5 and float64 within 1e-10 (relative to the
values' size where they are not probabilities). Skipped without the onnx extra."""
import argparse
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import nnjit.onnx as nx                                         # noqa: E402
from nnjit import MLP                                           # noqa: E402
from nnjit import activations as A                              # noqa: E402
from nnjit.preprocessing import Scaler                          # noqa: E402

TOL = {"float32": 1e-5, "float64": 1e-10}
# every output nnjit has; softmax, sigmoid (one unit: binary) are classifiers, the rest regress
OUTPUTS = list(A.OUTPUT)


def _run(model_proto, feed):
    s = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return {o.name: v for o, v in zip(s.get_outputs(), s.run(None, feed))}


def _diff(got, want):
    """max |got - want| over max(1, max |want|): absolute for probabilities, relative for values."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / max(1.0, np.abs(want).max())) if want.size else 0.0


def _data(rng, M=7, D=5):
    X = rng.normal(size=(M, D)) * [1.0, 3.0, 0.5, 10.0, 1.0] + [0.0, 5.0, -1.0, 100.0, 0.0]
    X_new = rng.normal(size=(29, D)) * [2.0, 6.0, 1.0, 20.0, 2.0] + [0.0, 5.0, -1.0, 100.0, 0.0]
    return X, X_new


def _fitted(hidden, output, dtype, rng, scale=True, K=3):
    """A tiny net (5 -> 3 -> 4 -> K) fitted for two epochs on targets its output suits."""
    X, X_new = _data(rng)
    layers = [5, 3, 4, 1 if output == "sigmoid" else K]
    net = MLP(layers, activation=[hidden, "tanh" if hidden != "tanh" else "relu"], output=output,
              dtype=dtype, backend="vectorised", seed=3)
    if output == "softmax":
        y = np.array(["b", "a", "c", "a", "c", "b", "a"])
    elif output == "sigmoid":
        y = np.array([3, 7, 7, 3, 7, 3, 3])
    elif output == "exp":
        y = rng.poisson(2.0, (7, K)).astype(float)
    else:
        y = rng.normal(size=(7, K)) * 4 + 10
    if scale:
        net.x_scaler = Scaler("standard")
        if not net.is_classifier:
            net.y_scaler = Scaler("standard")
    net.fit(X, y, epochs=2, lr=0.05, batch_size=4)
    return net, X_new


def _check_mlp(net, X, input_dtype=None):
    """Export, run in onnxruntime, compare with net.predict / predict_proba; the max diff."""
    m = nx.to_onnx(net, input_dtype=input_dtype)
    out = _run(m, nx.input_feed(net, X, input_dtype))
    tol = TOL[net.dtype]
    if net.is_classifier:
        pred = net.predict(X)
        assert out["label"].shape[0] == len(X)
        np.testing.assert_array_equal(out["label"], pred)
        proba = net.predict_proba(X)
        assert out["probabilities"].dtype == np.dtype(net.dtype)
        d = _diff(out["probabilities"], proba)
    else:
        want = net.predict(X)
        want = want.reshape(len(X), -1)
        assert out["variable"].dtype == np.dtype(net.dtype)
        d = _diff(out["variable"], want)
    assert d <= tol, (d, tol)
    return d


# ---------------------------------------------------------------- the network
def test_erf_reference_is_math_erf_within_one_ulp():
    x = np.concatenate([np.linspace(-7, 7, 200_001), [0.0, -0.0, 1e-300, 0.84375, 1.25, 1 / 0.35,
                                                       6.0, -6.0, 30.0, np.inf, -np.inf]])
    want = np.array([math.erf(v) for v in x])
    got = nx.erf_reference(x)
    assert np.abs(got - want).max() <= 1.2e-16
    # the same formula as graph operators, in onnxruntime's double kernels
    from onnx import TensorProto, helper
    g = nx._Graph(taken=["x", "y"])
    y = nx.erf_reference("x", nx._graph_ops(g, np.float64))
    g.op("Identity", [y], out="y")
    m = helper.make_model(helper.make_graph(
        g.nodes, "erf", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N"])], initializer=g.inits),
        opset_imports=[helper.make_opsetid("", nx.OPSET)], ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    got = _run(m, {"x": x})["y"]
    assert np.abs(got - want).max() <= 1.2e-16


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("hidden", list(A.HIDDEN))
def test_every_activation_and_output_matches_predict(hidden, output, dtype):
    net, X_new = _fitted(hidden, output, dtype, np.random.default_rng(7))
    _check_mlp(net, X_new)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output", ["softmax", "sigmoid", "identity", "exp"])
def test_without_scalers_and_with_float64_input(output, dtype):
    net, X_new = _fitted("gelu", output, dtype, np.random.default_rng(1), scale=False)
    m = nx.to_onnx(net)
    assert not [n for n in m.graph.node if n.op_type == "Cast" and "X" in n.input]  # X: the model's dtype
    _check_mlp(net, X_new)
    net, X_new = _fitted("gelu", output, dtype, np.random.default_rng(1), scale=True)
    _check_mlp(net, X_new * [1.0, 1.0, 1.0, 1e3, 1.0], input_dtype="float64")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_preactivations_reach_every_erf_branch(dtype):
    net = MLP([5, 8, 2], activation="gelu", output="identity", dtype=dtype, backend="vectorised", seed=0)
    net.weights = [w * 4 for w in net.weights]
    X = np.random.default_rng(0).normal(size=(101, 5)) * 3
    z = X.astype(dtype) @ net.weights[0].T + net.biases[0]
    assert (np.abs(z) < 0.8).any() and (np.abs(z) > 6).any() and ((np.abs(z) > 1.3) & (np.abs(z) < 2.8)).any()
    _check_mlp(net, X)


def test_classes_none_float_and_more_units_than_classes():
    rng = np.random.default_rng(2)
    X, X_new = _data(rng)
    # softmax over 4 units, fitted on 3 classes: labels never name the 4th unit
    net = MLP([5, 3, 4], activation="relu", output="softmax", backend="vectorised", seed=0)
    net.fit(X, [2, 0, 1, 1, 0, 2, 0], epochs=2)
    net.biases = [net.biases[0], np.array([0, 0, 0, 5.0])]       # the 4th unit wins every argmax
    m = nx.to_onnx(net)
    assert m.graph.output[1].type.tensor_type.shape.dim[1].dim_value == 4
    _check_mlp(net, X_new)
    # no classes_ (fitted on a one-hot matrix): indices
    net = MLP([5, 3, 3], activation="tanh", output="softmax", backend="vectorised", dtype="float64", seed=0)
    net.fit(X, np.eye(3)[[0, 1, 2, 0, 1, 2, 0]], epochs=2)
    assert net.classes_ is None
    _check_mlp(net, X_new)
    # float classes: integral ones become int64 labels, others double labels
    for classes, kind in (([1.0, 2.0, 5.0], np.int64), ([0.5, 1.5, 2.5], np.float64)):
        net = MLP([5, 3, 3], activation="tanh", output="softmax", backend="vectorised", seed=0)
        net.fit(X, np.array(classes)[[0, 1, 2, 0, 1, 2, 0]], epochs=2)
        out = _run(nx.to_onnx(net), nx.input_feed(net, X_new))
        assert out["label"].dtype == kind
        np.testing.assert_array_equal(out["label"], net.predict(X_new))
    # several sigmoid units: a multilabel 0/1 matrix
    net = MLP([5, 3, 4], activation="sigmoid", output="sigmoid", backend="vectorised", seed=0)
    net.fit(X, rng.integers(0, 2, (7, 4)).astype(float), epochs=2)
    out = _run(nx.to_onnx(net), nx.input_feed(net, X_new))
    assert out["label"].dtype == np.int64 and out["label"].shape == (29, 4)
    _check_mlp(net, X_new)


# ---------------------------------------------------------------- tables
def _frame(pd, rng, n):
    day = np.datetime64("2021-03-01T00:00", "ns")
    dates = day + (rng.uniform(0, 800, n) * 86400e9).astype("timedelta64[ns]")
    df = pd.DataFrame({
        "age": rng.normal(40, 12, n).round(1),
        "city": rng.choice(["Oslo", "Lyon", "Porto"], n).astype(object),
        "member": rng.choice([True, False], n),
        "when": pd.Series(dates),
        "id": [f"u{i:04d}" for i in range(n)],                      # identifier-like: dropped
        "score": [f" {v:.2f}" for v in rng.normal(3, 1, n)],        # numbers as text
        "signup": [str(d)[:10] for d in dates - np.timedelta64(400, "D")],   # dates as text
    })
    df.loc[1, "age"] = np.nan
    df.loc[2, "city"] = None
    df.loc[3, "when"] = pd.NaT
    df.loc[4, "score"] = None
    df.loc[5, "signup"] = None
    return df


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output", ["softmax", "identity"])
def test_table_preprocessing_matches_predict(output, dtype):
    pd = pytest.importorskip("pandas")
    from nnjit.preprocessing import Table
    rng = np.random.default_rng(5)
    df = _frame(pd, rng, 40)
    table = Table().fit(df)
    kinds = {c["name"]: c["kind"] for c in table.state()["columns"]}
    assert kinds == {"age": "number", "city": "category", "member": "category", "when": "date",
                     "id": "drop", "score": "number", "signup": "date"}
    net = MLP([table.n_features_out_, 3, 2], activation="gelu", output=output, dtype=dtype,
              backend="vectorised", seed=0)
    net.table, net.x_scaler = table, Scaler("standard")
    y = rng.choice(["no", "yes"], 40) if output == "softmax" else rng.normal(size=(40, 2)) * 3 + 1
    if output != "softmax":
        net.y_scaler = Scaler("standard")
    net.fit(df, y, epochs=2)
    new = _frame(pd, np.random.default_rng(6), 23)
    new.loc[4, "city"] = "Quito"                                    # unseen: all zeros
    new.loc[5, "when"] = pd.NaT
    new.loc[6, "age"] = np.nan
    m = nx.to_onnx(net)
    assert [i.name for i in m.graph.input] == ["age", "city", "member", "when", "score", "signup"]
    T = onnx.TensorProto
    assert [i.type.tensor_type.elem_type for i in m.graph.input] == [
        T.DOUBLE, T.STRING, T.STRING, T.INT64, T.DOUBLE, T.INT64]
    assert {o.domain for o in m.opset_import} == {"", "ai.onnx.ml"}
    _check_mlp(net, new)
    # dates as text, or in another time zone; columns given in another order
    text = new.assign(when=new["when"].dt.strftime("%Y-%m-%d %H:%M:%S").where(new["when"].notna(), None))
    _check_mlp(net, text[["when", "id", "signup", "member", "city", "score", "age"]])
    _check_mlp(net, new.assign(when=new["when"].dt.tz_localize("UTC").dt.tz_convert("Asia/Kolkata")))


def test_table_state_by_hand_season_and_time():
    """A hand-written table state (the JSON a model file holds) against the spec's NumPy."""
    pd = pytest.importorskip("pandas")
    from nnjit.preprocessing import Table
    state = {"columns": [{"name": "t", "kind": "date", "fill": 18000.25, "season": True, "time": True,
                          "format": None},
                         {"name": "c", "kind": "category", "categories": ["x", "y"], "missing": False},
                         {"name": "skip", "kind": "drop", "why": "as asked"}]}
    table = Table.from_state(state)
    net = MLP([7, 2], output="identity", dtype="float64", backend="vectorised", seed=0)
    net.table = table
    ns = np.array(["2020-02-29T13:30", "NaT", "1969-12-31T23:59:59.5"], "datetime64[ns]")
    df = pd.DataFrame({"t": ns, "c": ["y", None, "z"], "skip": [1, 2, 3]})
    feed = nx.input_feed(net, df)
    assert feed["c"].ravel().tolist() == ["y", "", "z"]
    assert feed["t"][1, 0] == np.iinfo(np.int64).min
    d = np.where(np.isnat(ns), 18000.25, ns.view(np.int64) / 86_400e9)
    enc = np.stack([d / 365.2425, np.sin(2 * np.pi * d / 365.2425), np.cos(2 * np.pi * d / 365.2425),
                    np.sin(2 * np.pi * (d - np.floor(d))), np.cos(2 * np.pi * (d - np.floor(d))),
                    [0, 0, 0], [1, 0, 0]], axis=1)
    want = enc @ net.weights[0].T + net.biases[0]
    got = _run(nx.to_onnx(net), feed)["variable"]
    assert np.abs(got - want).max() <= 1e-10
    assert _diff(got, net.predict(df)) <= 1e-10


# ---------------------------------------------------------------- words columns
_MAKES = ["chevrolet chevelle malibu", "Ford Torino (sw)", "plymouth satellite", "AMC rebel sst",
          "ford torino", "Chevrolet Impala", "Peugeot 504", "citroën ds-21 pallas", "ford pinto",
          "Plymouth Fury iii", "chevrolet malibu", "peugeot 504 (sw)", "amc hornet", "Buick Skylark 320",
          "ford galaxie 500", "chevrolet vega (sw)", "Citroën DS", "amc gremlin", "datsun pl510",
          "toyota corona", "Toyota Corolla", "datsun 510 (sw)", "buick estate wagon (sw)", "ford mustang"]
# text that Python's ASCII-only lowering and re.findall("[a-z0-9]+") read in one way only:
# the Kelvin sign and the long s are no k and no s, "ë" and "_" split words, "504.0" (a
# float) reads "504", whitespace alone is missing
_TRICKY = ["Citroën DS", "citro\u00ebn", "\u212a", "K", "k-car", "\u017fw", "SW", "(sw)", "ford_torino",
           "fordtorino", "FORD\tTorino\n(SW)", "chevrolet\x00malibu", "\u00e9malibu\u00e9", "504", 504.0,
           504.5, "\uff15\uff10\uff14", "x504x", "\U0001F697 ford \U0001F697", "\u0130mpala", "IMPALA",
           True, "   ", "", None, np.nan, "\ud800ford", "peugeot-504/sw", "a" * 5000 + " ds"]


def _words_frame(pd, rng, n):
    names = rng.choice(_MAKES, n).astype(object)
    return pd.DataFrame({"name": names, "hp": rng.normal(100, 30, n).round(),
                         "origin": rng.choice(["usa", "europe", "japan"], n).astype(object)})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output", ["softmax", "identity"])
def test_words_column_matches_predict(output, dtype):
    pd = pytest.importorskip("pandas")
    from nnjit.preprocessing import Table
    rng = np.random.default_rng(8)
    df = _words_frame(pd, rng, 60)
    df["name"] = [f"{v} {i}" for i, v in enumerate(df["name"])]    # distinct values: identifier-like
    df.loc[3, "name"] = None
    df.loc[4, "name"] = np.nan
    df.loc[5, "name"] = "  "
    df.loc[6:8, "name"] = ["Citroën DS 6", "CITROËN DS-21 pallas", "citroën ds 8"]
    table = Table().fit(df)
    cols = {c["name"]: c for c in table.state()["columns"]}
    assert cols["name"]["kind"] == "words"
    assert {"504", "chevrolet", "citro", "ds", "n", "sw"} <= set(cols["name"]["words"])
    net = MLP([table.n_features_out_, 4, 3], activation="tanh", output=output, dtype=dtype,
              backend="vectorised", seed=0)
    net.table, net.x_scaler = table, Scaler("standard")
    y = rng.choice(["a", "b", "c"], 60) if output == "softmax" else rng.normal(size=(60, 3)) * 2 + 5
    if output != "softmax":
        net.y_scaler = Scaler("standard")
    net.fit(df, y, epochs=3)
    new = _words_frame(pd, np.random.default_rng(9), len(_TRICKY) + 6)
    new["name"] = pd.Series(_TRICKY + ["Volvo 144ea", "saab 99e", "Ford Maverick", "renault 12 (sw)",
                                       "CHEVROLET MONTE CARLO", "mazda rx2 coupe"], dtype=object)
    m = nx.to_onnx(net)
    assert {o.domain: o.version for o in m.opset_import} == {"": nx.WORDS_OPSET, "ai.onnx.ml": nx.ML_OPSET}
    assert nx.WORDS_OPSET == 20 and m.ir_version == 9
    assert [i.name for i in m.graph.input] == ["name", "hp", "origin"]
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.STRING
    regex = [n for n in m.graph.node if n.op_type == "RegexFullMatch"]
    assert len(regex) == len(cols["name"]["words"])
    assert not any("(?i)" in a.s.decode() for n in regex for a in n.attribute)
    feed = nx.input_feed(net, new)
    assert feed["name"].shape == (len(new), 1) and feed["name"][22:26, 0].tolist() == ["", "", "", ""]
    assert feed["name"][14, 0] == "504" and feed["name"][26, 0] == "?ford"
    _check_mlp(net, new)
    _check_mlp(net, new[["origin", "hp", "name"]].iloc[::-1])


def _table_graph(cols):
    """The graph of a Table's encoding alone: its inputs -> "features" [N, F] double."""
    from onnx import TensorProto, helper
    g = nx._Graph(taken=[c["name"] for c in cols] + ["features"])
    inputs, x = nx._table_inputs(g, cols)
    g.op("Identity", [x], out="features")
    opsets = [helper.make_opsetid("", nx.WORDS_OPSET if g.uses_words else nx.OPSET)]
    opsets += [helper.make_opsetid("ai.onnx.ml", nx.ML_OPSET)] if g.uses_ml else []
    m = helper.make_model(helper.make_graph(
        g.nodes, "table", inputs,
        [helper.make_tensor_value_info("features", TensorProto.DOUBLE, ["N", None])],
        initializer=g.inits), opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(m, full_check=True)
    return m


def test_word_features_are_table_transform_on_tricky_text():
    pd = pytest.importorskip("pandas")
    from nnjit.preprocessing import Table, _words
    words = sorted({"504", "a", "chevrolet", "citro", "ds", "ford", "impala", "k", "malibu", "n", "s",
                    "sw", "torino", "true", "5", "x504x", "mpala", "peugeot"})
    state = {"columns": [{"name": "id", "kind": "drop", "why": "as asked"},
                         {"name": "name", "kind": "words", "words": words, "why": "by hand"},
                         {"name": "n", "kind": "number", "fill": 1.5}]}
    table = Table.from_state(state)
    df = pd.DataFrame({"id": range(len(_TRICKY)), "name": pd.Series(_TRICKY, dtype=object),
                       "n": np.arange(len(_TRICKY), dtype=float)})
    want = table.transform(df)
    # what the Table reads, spelled out for the strings that matter
    row = {t: want[i, :len(words)] for i, t in enumerate(_TRICKY) if isinstance(t, str)}
    on = lambda t: [w for w, v in zip(words, row[t]) if v]         # noqa: E731
    assert on("Citroën DS") == ["citro", "ds", "n"] and on("\u212a") == [] and on("K") == ["k"]
    assert on("\u017fw") == [] and on("ford_torino") == ["ford", "torino"] and on("fordtorino") == []
    assert on("\u0130mpala") == ["mpala"] and on("\uff15\uff10\uff14") == [] and on("   ") == []
    assert want[14, :len(words)].nonzero()[0].tolist() == [words.index("504")]       # 504.0 -> "504"
    assert on("\ud800ford") == ["ford"] and _words("x504x") == ["x504x"]
    m = _table_graph(state["columns"])
    assert {o.domain: o.version for o in m.opset_import} == {"": 20}
    net = MLP([len(words) + 1, 1], output="identity", dtype="float64", backend="vectorised")
    net.table = table
    got = _run(m, nx.input_feed(net, df))["features"]
    np.testing.assert_array_equal(got, want)
    # every word of every text at once: the graph and the Table agree, word by word
    texts = [t for t in _TRICKY if isinstance(t, str)] + [w.upper() for w in words] + [f"{w}!" for w in words]
    df = pd.DataFrame({"id": 0, "name": pd.Series(texts, dtype=object), "n": 0.0})
    np.testing.assert_array_equal(_run(m, nx.input_feed(net, df))["features"], table.transform(df))


def test_tables_without_words_keep_opset_17_and_bad_words_are_refused():
    cols = [{"name": "c", "kind": "category", "categories": ["x"], "missing": True}]
    m = _table_graph(cols)
    assert {o.domain: o.version for o in m.opset_import} == {"": 17, "ai.onnx.ml": 3}
    g = nx._Graph(taken=["w"])
    with pytest.raises(ValueError, match="runs of"):
        nx._table_inputs(g, [{"name": "w", "kind": "words", "words": ["a.b"], "why": ""}])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_vega_cars_with_a_words_column(dtype, tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    vega = pytest.importorskip("vega_datasets")
    from nnjit.preprocessing import Table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                             # its read_json's deprecations
        df = vega.data.cars()
    X = df.drop(columns="Origin")
    table = Table().fit(X)
    kinds = {c["name"]: c["kind"] for c in table.state()["columns"]}
    assert kinds["Name"] == "words" and kinds["Year"] == "date"
    net = MLP([table.n_features_out_, 8, 3], activation="relu", output="softmax", dtype=dtype,
              backend="vectorised", seed=0)
    net.table, net.x_scaler = table, Scaler()
    net.fit(X, df["Origin"], epochs=5)
    assert net.predict(X).shape == (len(X),) and len(X) == 406
    _check_mlp(net, X)                                              # every row
    # the command line says the opset it wrote
    net.save(tmp_path / "cars.npz")
    parser = argparse.ArgumentParser(prog="nnjit")
    nx.add_export_parser(parser.add_subparsers(), argparse.HelpFormatter)
    args = parser.parse_args(["export", str(tmp_path / "cars.npz"), str(tmp_path / "cars.onnx")])
    assert args.func(args) == 0
    line = capsys.readouterr().out
    assert f"(opset {nx.WORDS_OPSET}; inputs Name string[N,1], Miles_per_Gallon double[N,1]" in line
    m = onnx.load(str(tmp_path / "cars.onnx"))
    out = _run(m, nx.input_feed(net, X))
    np.testing.assert_array_equal(out["label"], net.predict(X))


# ---------------------------------------------------------------- files, CLI, errors
def test_cli_export_of_a_saved_model(tmp_path, capsys):
    net, X_new = _fitted("leaky_relu", "softmax", "float32", np.random.default_rng(4))
    net.save(tmp_path / "m.npz")
    parser = argparse.ArgumentParser(prog="nnjit")
    nx.add_export_parser(parser.add_subparsers(), argparse.HelpFormatter)
    args = parser.parse_args(["export", str(tmp_path / "m.npz"), str(tmp_path / "m.onnx")])
    assert args.func(args) == 0
    line = capsys.readouterr().out.strip()
    assert line == (f"wrote {tmp_path / 'm.onnx'} (opset {nx.OPSET}; inputs X float[N,5]; "
                    "outputs label string[N], probabilities float[N,3])")
    m = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(m, full_check=True)
    assert _diff(_run(m, {"X": X_new.astype(np.float32)})["probabilities"], net.predict_proba(X_new)) <= 1e-5
    help_text = parser._subparsers._group_actions[0].choices["export"].format_help()
    assert "--input-dtype" in help_text and "ONNX file to write" in help_text


def test_bad_input_is_refused_in_words(monkeypatch):
    with pytest.raises(ValueError, match="takes an nnjit.MLP"):
        nx.to_onnx("model.npz")
    net = MLP([5, 3, 2], output="identity", backend="vectorised")
    net.x_scaler = Scaler()
    with pytest.raises(ValueError, match="x_scaler is not fitted"):
        nx.to_onnx(net)
    net.x_scaler = None
    with pytest.raises(ValueError, match="input_dtype"):
        nx.to_onnx(net, input_dtype="int64")
    monkeypatch.setitem(sys.modules, "onnx", None)                  # the extra not installed
    with pytest.raises(ImportError, match=r"nnjit export needs onnx: pip install 'nnjit\[onnx\]'"):
        nx.to_onnx(net)
    with pytest.raises(ImportError, match="nnjit export needs onnx"):
        nx.export("missing.npz", "out.onnx")


def test_importing_registers_only_once_skl2onnx_is_imported():
    """The CLI imports nnjit.onnx: that must not import onnx or skl2onnx (seconds each), yet
    ``import nnjit.onnx; import skl2onnx`` finds the converters registered."""
    pytest.importorskip("sklearn")
    pytest.importorskip("skl2onnx")
    code = ("import sys, nnjit.onnx\n"
            "assert not {'onnx', 'skl2onnx', 'sklearn'} & set(sys.modules), sorted(sys.modules)\n"
            "import skl2onnx\n"
            "from skl2onnx._supported_operators import sklearn_operator_name_map as m\n"
            "from nnjit.sklearn import MLPClassifier, MLPRegressor\n"
            "assert m[MLPClassifier] == 'NnjitMLPClassifier' and m[MLPRegressor] == 'NnjitMLPRegressor'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- skl2onnx pipelines
@pytest.fixture
def skl2onnx():
    pytest.importorskip("sklearn")
    return pytest.importorskip("skl2onnx")


def _sk(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                             # ConvergenceWarning: 3 epochs
        return est.fit(X, y)


def _convert(model, X, dtype, zipmap=False):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    T = FloatTensorType if dtype == "float32" else DoubleTensorType
    opts = {id(model): {"zipmap": zipmap}} if zipmap is not True and hasattr(model, "predict_proba") else None
    m = convert_sklearn(model, initial_types=[("X", T([None, X.shape[1]]))], options=opts)
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["logistic", *A.HIDDEN])     # scikit-learn's and nnjit's names
def test_skl2onnx_pipeline_classifier(activation, dtype, skl2onnx):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from nnjit.sklearn import MLPClassifier
    rng = np.random.default_rng(0)
    X, X_new = _data(rng, M=30)
    y = rng.choice(["ant", "bee", "cat"], 30)
    pipe = _sk(Pipeline([("scale", StandardScaler()),
                         ("mlp", MLPClassifier((3,), activation=activation, max_iter=3,
                                               backend="vectorised", random_state=0))]),
               X.astype(dtype), y)
    m = _convert(pipe, X, dtype)
    Xd = X_new.astype(dtype)
    out = _run(m, {"X": Xd})
    np.testing.assert_array_equal(out["label"], pipe.predict(Xd))
    assert _diff(out["probabilities"], pipe.predict_proba(Xd)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_skl2onnx_binary_multilabel_zipmap_and_regressors(dtype, skl2onnx):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from nnjit.sklearn import MLPClassifier, MLPRegressor
    rng = np.random.default_rng(1)
    X, X_new = _data(rng, M=30)
    Xd = X_new.astype(dtype)
    kw = dict(max_iter=3, backend="vectorised", random_state=0)
    # binary, integer labels, with skl2onnx's default ZipMap output (ONNX's ZipMap takes
    # float tensors only: double graphs need zipmap=False, for every skl2onnx classifier)
    clf = _sk(MLPClassifier((4,), activation="gelu", **kw), X.astype(dtype), rng.choice([2, 9], 30))
    if dtype == "float32":
        out = _run(_convert(clf, X, dtype, zipmap=True), {"X": Xd})
        np.testing.assert_array_equal(out["output_label"], clf.predict(Xd))
        got = np.array([[p[c] for c in clf.classes_] for p in out["output_probability"]])
        assert _diff(got, clf.predict_proba(Xd)) <= TOL[dtype]
    out = _run(_convert(clf, X, dtype), {"X": Xd})
    assert out["probabilities"].shape == (29, 2)
    assert _diff(out["probabilities"], clf.predict_proba(Xd)) <= TOL[dtype]
    # multilabel
    clf = _sk(MLPClassifier((4,), activation="leaky_relu", **kw), X.astype(dtype),
              rng.integers(0, 2, (30, 3)))
    out = _run(_convert(clf, X, dtype), {"X": Xd})
    np.testing.assert_array_equal(out["label"], clf.predict(Xd))
    assert _diff(out["probabilities"], clf.predict_proba(Xd)) <= TOL[dtype]
    # regressors: sigmoid hidden units in a pipeline; Poisson's exp output; two targets
    kw["hidden_layer_sizes"] = (3,)
    for reg, y in ((Pipeline([("s", StandardScaler()), ("r", MLPRegressor(activation="sigmoid", **kw))]),
                    rng.normal(size=30) * 3),
                   (MLPRegressor(activation="gelu", loss="poisson", **kw), rng.poisson(2.0, 30)),
                   (MLPRegressor(activation="tanh", **kw), rng.normal(size=(30, 2)))):
        _sk(reg, X.astype(dtype), y)
        out = _run(_convert(reg, X, dtype), {"X": Xd})["variable"]
        assert _diff(out, reg.predict(Xd).reshape(len(Xd), -1)) <= TOL[dtype]


def test_skl2onnx_float32_input_to_a_float64_estimator_and_errors(skl2onnx):
    from nnjit.sklearn import MLPClassifier
    from sklearn.exceptions import NotFittedError
    rng = np.random.default_rng(3)
    X, X_new = _data(rng, M=30)
    clf = _sk(MLPClassifier((3,), activation="gelu", max_iter=3, backend="vectorised", random_state=0),
              X, rng.choice([0, 1, 2], 30))                         # float64 coefs_
    out = _run(_convert(clf, X, "float32"), {"X": X_new.astype(np.float32)})
    assert out["probabilities"].dtype == np.float32                 # skl2onnx's declared type
    assert _diff(out["probabilities"], clf.predict_proba(X_new.astype(np.float32))) <= 1e-6
    with pytest.raises(NotFittedError):
        _convert(MLPClassifier(), X, "float32")
    with pytest.raises(ValueError, match="skl2onnx.to_onnx"):
        nx.to_onnx(clf)
    clf.out_activation_ = "swish"                                   # set by hand, unknown
    with pytest.raises(ValueError, match="'swish' has no ONNX form"):
        _convert(clf, X, "float32")


# ---------------------------------------------------------------- found by review (issues 23, 24)
def test_table_categories_spelled_otherwise_and_dates_beyond_nanoseconds():
    """Codes read as numbers (2134 for "02134"), "true" for True: input_feed feeds the
    category the Table matches, so the graph equals predict; dates outside datetime64[ns]
    (pandas 3 reads 2500-01-01 as datetime64[us]) are refused by input_feed, not wrapped."""
    pd = pytest.importorskip("pandas")
    from nnjit.preprocessing import Table
    n = 24
    df = pd.DataFrame({"zip": ["02134", "02139", "10001", "02134"] * (n // 4),
                       "flag": [True, False, True] * (n // 3),
                       "when": [f"{1990 + i}-0{1 + i % 9}-1{i % 10}" for i in range(n)],
                       "x": np.linspace(-1, 1, n)})
    table = Table().fit(df)
    assert [c["kind"] for c in table.columns_] == ["category", "category", "date", "number"]
    net = MLP([table.n_features_out_, 3, 2], activation="tanh", output="softmax", dtype="float64",
              backend="vectorised", seed=0)
    net.table, net.x_scaler = table, Scaler("standard")
    net.fit(df, np.array(["a", "b"])[np.arange(n) % 2], epochs=2)
    new = pd.DataFrame({"zip": [2134, 10001, 2139.0, 555, None], "flag": ["true", "FALSE", None, "x", True],
                        "when": ["2001-02-03", None, "1999-12-31", "2262-04-01", "1678-01-01"],
                        "x": [0.5, np.nan, 2.0, -1.0, 0.0]})
    assert (net.table.transform(new)[:3, :3].sum(axis=1) == 1).all()
    _check_mlp(net, new)
    with pytest.raises(ValueError, match="column 'when': 2500-01-01.* outside the dates the ONNX graph"):
        nx.input_feed(net, new.assign(when=["2500-01-01"] * 5))
