"""Real tables (issue 24): nnjit.preprocessing.Table (kinds guessed from the values, fitted on
the training rows, saved in the model as JSON) in the API, the model file and `nnjit train /
predict` on CSV files read by pandas."""
import json
import math

import numpy as np
import pytest

from nnjit import MLP
from nnjit.cli import main

pd = pytest.importorskip("pandas")
from nnjit.preprocessing import Scaler, Table  # noqa: E402


def _table(n=40, seed=0):
    """Every kind of column: numbers with gaps, text categories with gaps, booleans, ISO
    dates with times, car-like names (identifier-like, recurring words), IDs and a row number."""
    rng = np.random.default_rng(seed)
    makes = ["chevrolet", "ford", "toyota", "datsun"]
    return pd.DataFrame({
        "row": np.arange(1, n + 1),
        "size": np.where(np.arange(n) % 7 == 3, np.nan, rng.normal(10, 2, n).round(3)),
        "colour": [None if i % 9 == 4 else ["red", "green", "blue"][i % 3] for i in range(n)],
        "flag": [bool(i % 2) for i in range(n)],
        "when": [f"2020-{1 + i % 12:02d}-{1 + i % 27:02d} {i % 24:02d}:30" for i in range(n)],
        "name": [f"{makes[i % 4]} model{i} {'sw' if i % 5 == 0 else 'coupe'}" for i in range(n)],
        "id": [f"N{i}A{i * 7}" for i in range(n)],
    })


def test_kinds_are_guessed_from_the_values():
    t = Table().fit(_table())
    kinds = {c["name"]: c["kind"] for c in t.columns_}
    assert kinds == {"row": "drop", "size": "number", "colour": "category", "flag": "category",
                     "when": "date", "name": "words", "id": "drop"}
    cols = {c["name"]: c for c in t.columns_}
    assert cols["colour"] == {"name": "colour", "kind": "category",
                              "categories": ["blue", "green", "red"], "missing": True}
    assert cols["flag"]["categories"] == ["False", "True"] and not cols["flag"]["missing"]
    assert cols["when"]["season"] and cols["when"]["time"] and cols["when"]["format"] == "ISO8601"
    # words in 3 rows or more, not in every row: the makes and "sw"/"coupe", not "model<i>"
    assert cols["name"]["words"] == ["chevrolet", "coupe", "datsun", "ford", "sw", "toyota"]
    assert "a row number" in cols["row"]["why"] and "identifier-like" in cols["id"]["why"]
    size = _table()["size"]
    assert cols["size"]["fill"] == float(np.median(size.dropna()))
    # 1 + (3 + missing) + 2 + (1 + season 2 + time 2) + 6 words
    assert t.n_features_out_ == 1 + 4 + 2 + 5 + 6 == len(t.feature_names_out())
    assert t.onehot_mask_.sum() == 4 + 2 + 6
    lines = t.describe()
    assert lines[0].startswith("numbers (1): size; 6 missing values filled with the column's median")
    assert any(l.startswith("dropped (2): row (a row number), id (identifier-like") for l in lines)


def test_transform_encodes_each_kind_exactly():
    df = _table()
    t = Table().fit(df)
    new = pd.DataFrame({"row": [1, 2], "size": [np.nan, 3.5], "colour": ["green", "purple"],
                        "flag": [True, None], "when": ["1970-01-02 06:00", None],
                        "name": ["FORD pinto (SW)", None], "id": ["x", "y"]})
    X = t.transform(new)
    names = t.feature_names_out()
    row = dict(zip(names, X[0]))
    assert row["size"] == t.columns_[1]["fill"]
    assert [row[f"colour={c}"] for c in ("blue", "green", "red")] + [row["colour=(missing)"]] == [0, 1, 0, 0]
    assert row["flag=True"] == 1 and row["flag=False"] == 0
    d = 1.25        # 1970-01-02 06:00: 1.25 days after the epoch
    assert row["when:years"] == pytest.approx(d / 365.2425, rel=1e-15)
    assert row["when:season_sin"] == pytest.approx(math.sin(2 * math.pi * d / 365.2425))
    assert row["when:time_cos"] == pytest.approx(math.cos(2 * math.pi * 0.25), abs=1e-15)
    assert row["name~ford"] == 1 and row["name~sw"] == 1 and row["name~toyota"] == 0
    second = dict(zip(names, X[1]))
    assert second["size"] == 3.5
    assert [second[f"colour={c}"] for c in ("blue", "green", "red")] == [0, 0, 0]   # unseen
    assert second["colour=(missing)"] == 0
    assert second["flag=True"] == second["flag=False"] == 0     # missing, unseen in training
    assert second["when:years"] == pytest.approx(t.columns_[4]["fill"] / 365.2425)
    assert sum(v for k, v in second.items() if k.startswith("name~")) == 0


def test_dates_in_other_spellings_and_datetime64():
    us = pd.DataFrame({"d": ["03/01/2024", "12/31/2023", "07/04/2024"]})
    eu = pd.DataFrame({"d": ["13/01/2024", "31/12/2023", "04/07/2024"]})
    dt = pd.DataFrame({"d": pd.to_datetime(["2024-03-01", "2023-12-31", "2024-07-04"])})
    a, b, c = (Table().fit(x) for x in (us, eu, dt))
    assert (a.columns_[0]["format"], b.columns_[0]["format"], c.columns_[0]["format"]) == \
        ("%m/%d/%Y", "%d/%m/%Y", None)
    np.testing.assert_array_equal(a.transform(us), c.transform(dt))
    assert not a.columns_[0]["time"]
    jan1 = Table().fit(pd.DataFrame({"y": ["1970-01-01", "1971-01-01", "1982-01-01"]}))
    assert jan1.columns_[0]["season"] is False and jan1.n_features_out_ == 1    # years only
    np.testing.assert_allclose(jan1.transform(pd.DataFrame({"y": ["1982-01-01"]})),
                               [[(365 * 12 + 3) / 365.2425]])
    with pytest.raises(ValueError, match=r"row 1, column 'd': '2024-13-45' is not a date"):
        a.transform(pd.DataFrame({"d": ["01/02/2024", "2024-13-45"]}))


def test_refusals_name_the_column_and_the_row():
    t = Table().fit(_table())
    df = _table()
    with pytest.raises(ValueError, match="missing size; never seen in training extra"):
        t.transform(df.drop(columns="size").assign(extra=1))
    dropped_absent = t.transform(df.drop(columns=["id", "row"]))    # dropped columns may be absent
    np.testing.assert_array_equal(dropped_absent, t.transform(df))
    bad = df.assign(size=df["size"].astype(object))
    bad.loc[5, "size"] = "ten"
    with pytest.raises(ValueError, match=r"row 5, column 'size': 'ten' is not a number"):
        t.transform(bad)
    typo = pd.DataFrame({"x": ["1.5"] * 20 + ["3.5x"], "y": range(21)})
    with pytest.raises(ValueError, match=r"row 20, column 'x': '3.5x' is not a number, while 20 "):
        Table().fit(typo)
    assert Table(categorical=["x"]).fit(typo).columns_[0]["kind"] == "category"
    with pytest.raises(ValueError, match="column 'nope' \\(named in an override\\) is not in the table"):
        Table(drop=["nope"]).fit(typo)
    with pytest.raises(ValueError, match="given two kinds"):
        Table(drop=["x"], numeric=["x"])
    with pytest.raises(TypeError, match="fitted on a pandas DataFrame"):
        Table().fit(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="not fitted"):
        Table().transform(typo)


def test_overrides_and_category_spelling():
    df = pd.DataFrame({"cyl": [4, 6, 8, 4, np.nan, 6], "note": ["a", "b", "a", "b", "a", "b"]})
    t = Table(categorical=["cyl"], drop=["note"]).fit(df)
    assert t.columns_[0]["categories"] == ["4", "6", "8"] and t.columns_[0]["missing"]
    assert t.columns_[1] == {"name": "note", "kind": "drop", "why": "as asked"}
    np.testing.assert_array_equal(t.transform(pd.DataFrame({"cyl": [6.0], "note": ["z"]})),
                                  [[0, 1, 0, 0]])
    n = Table(numeric=["note"]).fit(pd.DataFrame({"note": ["1", "2", " 3 "]}))
    np.testing.assert_array_equal(n.transform(pd.DataFrame({"note": ["4"]})), [[4.0]])
    capped = Table(max_categories=2).fit(pd.DataFrame({"c": list("aaabbc")}))
    assert capped.columns_[0]["categories"] == ["a", "b"]


def test_state_round_trips_through_json_and_bad_states_are_refused():
    t = Table().fit(_table())
    df = _table(25, seed=3)
    back = Table.from_state(json.loads(json.dumps(t.state())))
    np.testing.assert_array_equal(back.transform(df), t.transform(df))
    st = t.state()
    st["columns"][2]["categories"] = ["red", "blue"]
    with pytest.raises(ValueError, match="distinct, sorted"):
        Table.from_state(st)
    st = t.state()
    st["columns"][5]["words"] = ["two words"]
    with pytest.raises(ValueError, match="each a word"):
        Table.from_state(st)


def test_mlp_fits_and_predicts_dataframes_and_saves_the_table(tmp_path):
    df = _table(60)
    y = np.array(["low", "high"])[(df["size"].fillna(10) > 10).to_numpy().astype(int)]
    t = Table().fit(df)
    net = MLP([t.n_features_out_, 8, 2], activation="tanh", dtype="float64", seed=0,
              backend="vectorised")
    net.table, net.x_scaler = t, Scaler()
    net.fit(df, y, epochs=200, lr=0.05, optimizer="adam", batch_size=16)
    assert net.score(df, y) >= 0.9
    mask = t.onehot_mask_
    assert (net.x_scaler.offset_[mask] == 0).all() and (net.x_scaler.scale_[mask] == 1).all()
    assert (net.x_scaler.scale_[~mask] != 1).any()      # numbers and dates standardised
    net.save(tmp_path / "m.npz")
    back = MLP.load(tmp_path / "m.npz")
    assert back.table is not None and back.table.state() == t.state()
    shuffled = df[list(reversed(df.columns))]
    np.testing.assert_array_equal(back.predict_proba(shuffled), net.predict_proba(df))
    with pytest.raises(ValueError, match="unexpected 'extra'"):
        back.predict(df.assign(extra=0))
    small = MLP([3, 2], seed=0, backend="vectorised")
    small.table = Table()
    with pytest.raises(ValueError, match="the table turns X into 18 columns but the input layer "
                                         "has 3 units"):
        small.fit(df, y)


def test_model_files_with_a_bad_table_are_refused(tmp_path):
    from nnjit import io as nio
    df = _table(30)
    t = Table().fit(df)
    net = MLP([t.n_features_out_, 1], output="identity", seed=0, backend="vectorised")
    net.table = t
    net.fit(df, np.zeros(30), epochs=1)
    header = json.loads(bytes(np.load(nio_path := _saved(net, tmp_path))["header"]).decode())
    nio.check_header(header)
    for change, field in ((lambda h: h["table"]["columns"][1].update(fill=float("nan")), "table"),
                          (lambda h: h["table"]["columns"][1].update(kind="magic"), "table"),
                          (lambda h: h["table"]["columns"].pop(1), "table"),
                          (lambda h: h["table"]["columns"][2].update(categories=["b", "a"]), "table"),
                          (lambda h: h["columns"]["features"].reverse(), "columns.features")):
        bad = json.loads(json.dumps(header))
        change(bad)
        with pytest.raises(ValueError, match=field):
            nio.check_header(bad)
    assert nio_path.exists()


def _saved(net, tmp_path):
    path = tmp_path / "t.npz"
    net.save(path)
    return path


# ---------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def penguins(tmp_path_factory):
    """palmerpenguins' table as a user's CSV (or, without the package, a generated one of the
    same kinds: species from two measurements, island and sex as text, gaps)."""
    path = tmp_path_factory.mktemp("tables") / "penguins.csv"
    try:
        from palmerpenguins import load_penguins
        df = load_penguins()
    except ImportError:
        rng = np.random.default_rng(0)
        k = np.arange(300) % 3
        df = pd.DataFrame({"species": np.array(["Adelie", "Chinstrap", "Gentoo"])[k],
                           "island": np.array(["Biscoe", "Dream", "Torgersen"])[(k + np.arange(300) % 2) % 3],
                           "bill_length_mm": rng.normal(40 + 5 * k, 2),
                           "body_mass_g": rng.normal(3500 + 700 * (k == 2), 300),
                           "sex": np.array(["male", "female"])[np.arange(300) % 2]})
        df.loc[[3, 50], "bill_length_mm"] = np.nan
        df.loc[[7], "sex"] = None
    df.to_csv(path, index=False)
    return path


def test_train_and_predict_a_table_with_text_and_gaps(penguins, tmp_path, capsys):
    model = tmp_path / "p.npz"
    assert main(["train", "--data", str(penguins), "--target", "species", "--quiet",
                 "--save", str(model)]) == 0
    out = capsys.readouterr().out
    assert "classification into 3 classes" in out
    assert "  numbers (" in out and "missing values filled with the column's median" in out
    assert "  categories (2), one-hot: island 3, sex 2 + missing" in out
    assert "--categorical COL, --numeric COL, --date COL, --drop COL" in out
    score = float(out.split("test accuracy: ")[1].split()[0])
    assert score >= 0.95
    df = pd.read_csv(penguins)
    features = df.drop(columns="species")
    net = MLP.load(model)
    assert net.target_name_ == "species" and net.feature_names_in_ == list(features.columns)
    # nnjit predict on the columns in another order, without the target, equals the API's
    other = tmp_path / "other.csv"
    features[list(reversed(features.columns))].to_csv(other, index=False)
    assert main(["predict", "--model", str(model), "--data", str(other)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "prediction" and lines[1:] == list(net.predict(features))
    # with the target: scored, rows without a target dropped and said
    assert main(["predict", "--model", str(model), "--data", str(penguins)]) == 0
    err = capsys.readouterr().err
    assert "accuracy against the file's targets: " in err
    # an unseen column, a value the table cannot take: one line, exit 2
    features.assign(extra=1).to_csv(other, index=False)
    assert main(["predict", "--model", str(model), "--data", str(other)]) == 2
    assert "not a training column 'extra'" in capsys.readouterr().err
    bad = features.copy()
    bad["body_mass_g"] = bad["body_mass_g"].astype(object)
    bad.loc[2, "body_mass_g"] = "heavy"
    bad.to_csv(other, index=False)
    assert main(["predict", "--model", str(model), "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert "line 4, column 'body_mass_g': 'heavy' is not a number" in err and err.count("\n") == 1


def test_target_by_name_or_index_rows_without_target_and_overrides(tmp_path, capsys):
    rng = np.random.default_rng(1)
    n = 80
    x = rng.normal(size=n)
    df = pd.DataFrame({"Name": [f"{['amc', 'fiat'][i % 2]} car{i}" for i in range(n)],
                       "x": x, "cyl": np.where(x > 0, 8, 4),
                       "Year": [f"{1970 + i % 12}-01-01" for i in range(n)],
                       "mpg": np.where(np.arange(n) % 10 == 0, np.nan, 20 - 3 * x)})
    path = tmp_path / "cars.csv"
    df.to_csv(path, index=False)
    for target in (["--target", "mpg"], ["--target", "4"], ["--target-column", "-1"]):
        assert main(["train", "--data", str(path), "--quiet", "--epochs", "3", *target]) == 0
        out = capsys.readouterr().out
        assert "72 samples, " in out and "regression" in out
        assert "target mpg: dropped 8 rows without a target (line 2 and more)" in out
        assert "  dates (1): Year as years since 1970" in out
        assert "  words (1): Name 2 words (identifier-like: 54 distinct values in 54 rows)" in out
    assert main(["train", "--data", str(path), "--quiet", "--epochs", "3", "--target", "mpg",
                 "--categorical", "cyl", "--drop", "Name"]) == 0
    out = capsys.readouterr().out
    assert "categories (1), one-hot: cyl 2" in out and "dropped (1): Name (as asked)" in out
    assert main(["train", "--data", str(path), "--target", "nope"]) == 2
    assert "--target 'nope': " in capsys.readouterr().err
    assert main(["train", "--data", str(path), "--target", "mpg", "--drop", "Nome"]) == 2
    assert "--drop 'Nome': no such feature column" in capsys.readouterr().err


def test_csv_spellings_quoting_bom_and_missing_cells(tmp_path, capsys):
    rows = ['"name, with comma",size,kind,label']
    for i in range(40):
        size = ["NA", "?", "", "n/a"][i % 4] if i % 5 == 0 else f"{i % 7 + 0.5}"
        rows.append(f'"x{i}, y",{size},"{["a", "b"][i % 2]}",{i % 2}')
    path = tmp_path / "spell.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(rows).encode() + b"\n")
    assert main(["train", "--data", str(path), "--quiet", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "40 samples" in out and "classification into 2 classes" in out
    assert "numbers (1): size; 8 missing values filled" in out    # of the 30 training rows
    assert "categories (1), one-hot: kind 2" in out
    assert "dropped (1): name, with comma (identifier-like" in out


def test_missing_feature_cells_are_filled_not_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    lines = ["a,b,c,t"] + [",".join(f"{v:.4f}" for v in x) + f",{i % 3}" for i, x in enumerate(X)]
    lines[5] = "1.0,nan,2.0,1"
    lines[9] = "1.0,,2.0,1"
    path = tmp_path / "gaps.csv"
    path.write_text("\n".join(lines) + "\n")
    assert main(["train", "--data", str(path), "--quiet", "--epochs", "2", "--test-fraction", "0"]) == 0
    assert "numbers (3): a, b, c; 2 missing values filled with the column's median" in \
        capsys.readouterr().out


# ---------------------------------------------------------------- found by review (issue 24)
def test_codes_and_numbers_spelled_otherwise_match_their_category(tmp_path, capsys):
    # zip codes with leading zeros are codes (category), not numbers, and a value read as a
    # number elsewhere (2134, "2134.0"), or a boolean spelled "true", is still its category
    df = pd.DataFrame({"zip": ["02134", "02139", "10001", "02134"] * 6, "x": np.arange(24.0)})
    t = Table().fit(df)
    assert t.columns_[0] == {"name": "zip", "kind": "category",
                             "categories": ["02134", "02139", "10001"], "missing": False}
    new = pd.DataFrame({"zip": [2134, 2139.0, "10001.0", 99999, None], "x": [1.0] * 5})
    np.testing.assert_array_equal(t.transform(new)[:, :3],
                                  [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    b = Table(categorical=["c"]).fit(pd.DataFrame({"c": [True, False, True, np.nan]}))
    np.testing.assert_array_equal(b.transform(pd.DataFrame({"c": ["true", "FALSE", "yes"]})),
                                  [[0, 1, 0], [1, 0, 0], [0, 0, 0]])
    # two categories of one value ("1", "01") match only as spelled
    amb = Table(categorical=["c"]).fit(pd.DataFrame({"c": ["1", "01", "2"]}))
    np.testing.assert_array_equal(amb.transform(pd.DataFrame({"c": ["1.0", "01", 2.0]})),
                                  [[0, 0, 0], [1, 0, 0], [0, 0, 1]])
    # nnjit train keeps the zeros; the model predicts alike on the file read by pandas as ints
    path, model = tmp_path / "zip.csv", tmp_path / "zip.npz"
    df.assign(label=np.arange(24) % 2).to_csv(path, index=False)
    assert main(["train", "--data", str(path), "--target", "label", "--quiet", "--epochs", "1",
                 "--backend", "vectorised", "--save", str(model)]) == 0
    assert "categories (1), one-hot: zip 3" in capsys.readouterr().out
    net = MLP.load(model)
    as_ints = pd.read_csv(path).drop(columns="label")
    assert as_ints["zip"].dtype.kind == "i"
    np.testing.assert_array_equal(net.predict_proba(as_ints), net.predict_proba(df))


def test_dates_beyond_the_nanosecond_range_are_not_wrapped():
    # pandas 3 reads dates as datetime64[us]: 2500 and 9999 (an "open end" sentinel) exist
    df = pd.DataFrame({"d": ["1600-03-01", "1960-06-01", "2500-01-01", "9999-12-31"]})
    t = Table().fit(df)
    days = [(np.datetime64(v) - np.datetime64("1970-01-01")).astype(int) for v in df["d"]]
    np.testing.assert_allclose(t.transform(df)[:, 0], np.array(days) / 365.2425, rtol=1e-15)
    assert t.columns_[0]["fill"] == np.median(days) and not t.columns_[0]["time"]
    dt = Table().fit(pd.DataFrame({"d": pd.to_datetime(df["d"])}))
    np.testing.assert_array_equal(dt.transform(pd.DataFrame({"d": pd.to_datetime(df["d"])})),
                                  t.transform(df))


def test_column_names_a_table_cannot_read_back_are_refused_before_training():
    t = Table().fit(pd.DataFrame({"n": [1.0, 2.0, 3.0]}))
    with pytest.raises(ValueError, match="names the column 'n' twice"):
        t.transform(pd.DataFrame([[1.0, 2.0]], columns=["n", "n"]))     # was: the last one
    for cols, match in (([1, "1"], "two columns are named '1'"), (["a", " "], "column 2 has no name"),
                        (["a", "b" * 1025], "1025 characters long")):
        with pytest.raises(ValueError, match=match):
            Table().fit(pd.DataFrame([[1.0, 2.0]] * 3, columns=cols))
    # what a model file cannot hold is left out at fit, not refused by save after training
    long = "x" * 1100
    df = pd.DataFrame({"c": [long, long, "a", "a", "b"] * 4,
                       "w": [f"{'k' * 250} z{i} {'sw' if i % 2 else 'coupe'}" for i in range(20)]})
    t = Table().fit(df)
    assert t.columns_[0]["categories"] == ["a", "b"] and t.columns_[1]["words"] == ["coupe", "sw"]
    from nnjit.preprocessing import state_schema
    state_schema(t.n_features_out_)(t.state(), "table")
    with pytest.raises(ValueError, match=r"row 1, column 'x': 1e\+300 is beyond the 1e\+250"):
        Table().fit(pd.DataFrame({"x": [1.0, 1e300, 2.0]}))


def test_from_state_checks_the_fields_itself():
    st = Table().fit(pd.DataFrame({"x": [1.0, 2.0], "c": ["a", "b"]})).state()
    for change in (lambda s: s["columns"][0].update(kind="date"),       # was a KeyError
                   lambda s: s["columns"][0].update(fill=float("nan")),   # was NaN out
                   lambda s: s["columns"][1].update(categories=["a", 3]),
                   lambda s: s["columns"][0].update(name=5)):
        bad = json.loads(json.dumps(st))
        change(bad)
        with pytest.raises(ValueError, match="header field 'table"):
            Table.from_state(bad)


def test_index_column_and_row_numbers_in_nnjit_train(tmp_path, capsys):
    # DataFrame.to_csv's index: an empty header cell over 0..n-1; the training split's rows
    # of it (in file order) are still a row number, and the model saves and predicts
    rng = np.random.default_rng(0)
    n = 90
    df = pd.DataFrame({"k": np.sort(rng.integers(0, 3, n)), "x": rng.normal(size=n)})
    df["colour"] = np.array(["red", "blue", "green"])[df["k"]]
    path, model = tmp_path / "indexed.csv", tmp_path / "m.npz"
    df.drop(columns="k").assign(y=df["k"]).to_csv(path)          # index=True
    assert main(["train", "--data", str(path), "--target", "y", "--quiet", "--epochs", "1",
                 "--backend", "vectorised", "--save", str(model)]) == 0
    assert "dropped (1): Unnamed: 0 (a row number)" in capsys.readouterr().out
    net = MLP.load(model)
    back = pd.read_csv(path).drop(columns="y")
    assert net.feature_names_in_ == list(back.columns)
    assert main(["predict", "--model", str(model), "--data", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == [str(v) for v in net.predict(back)]


def test_csv_cells_lines_and_headers_as_pandas_reads_them(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ["a,b,label"] + [f'{rng.normal():.3f}, "x{i % 3}, y",{i % 2}' for i in range(40)]
    rows[9] = ",,"                  # a line of gaps: pandas keeps it, as a row without a target
    rows[12] = f"-,{rows[12].split(',', 1)[1]}"     # "-": a missing number
    path = tmp_path / "spaced.csv"
    path.write_text("\n".join(rows) + "\n")
    assert main(["train", "--data", str(path), "--quiet", "--epochs", "1",
                 "--backend", "vectorised"]) == 0
    out = capsys.readouterr().out
    assert "target label: dropped 1 row without a target (line 10)" in out     # was "line 8"
    assert "categories (1), one-hot: b 3" in out and "numbers (1): a" in out
    # numbers named "1" and "0" over numeric columns, names over text ones: refused, not
    # read as a row of data
    n = 40
    lines = ["colour,1,label,0"] + [f"{['red', 'blue'][i % 2]},{rng.normal():.3f},{['y', 'n'][i % 3 > 0]},"
                                    f"{rng.normal():.3f}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    assert main(["train", "--data", str(path), "--target-column", "0", "--quiet"]) == 2
    assert "a header or a data row? pass --header or --no-header" in capsys.readouterr().err
    assert main(["train", "--data", str(path), "--target-column", "0", "--header", "--quiet",
                 "--epochs", "1", "--backend", "vectorised"]) == 0
    assert f"{n} samples" in capsys.readouterr().out


def test_predict_finds_the_target_of_a_headerless_training_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    lines = [f"{['red', 'blue'][i % 2]},{x[i]:.3f},{'yes' if x[i] > 0 else 'no'},{rng.normal():.3f}"
             for i in range(60)]
    path, model = tmp_path / "nohdr.csv", tmp_path / "m.npz"
    path.write_text("\n".join(lines) + "\n")
    assert main(["train", "--data", str(path), "--target", "2", "--quiet", "--epochs", "1",
                 "--backend", "vectorised", "--save", str(model)]) == 0
    capsys.readouterr()
    assert MLP.load(model).target_name_ == "column 3"
    assert main(["predict", "--model", str(model), "--data", str(path)]) == 0     # was: exit 2
    assert "accuracy against the file's targets" in capsys.readouterr().err
    feats = tmp_path / "feats.csv"
    feats.write_text("\n".join(",".join(r.split(",")[:2] + r.split(",")[3:]) for r in lines) + "\n")
    assert main(["predict", "--model", str(model), "--data", str(feats)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 61
