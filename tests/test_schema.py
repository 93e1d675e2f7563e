"""Model files and checkpoints are untrusted input (issue 26 items 3, 4, 6): every header field
is checked against its schema (nnjit.schema, declared in nnjit.io) and against the others
before use, arrays are finite, labels capped; each failure is a ModelFileError naming the file
and the field. Files are crafted from real ones with their digest recomputed, so only these
checks can catch them."""
import json
import tracemalloc

import numpy as np
import pytest

from nnjit import MLP
from nnjit import io as nio
from nnjit.schema import Any, Bool, Int, List, Null, Num, Obj, OneOf, SchemaError, Str, validate

FIT = {"lr": 0.2, "momentum": 0.9, "batch_size": 4}
ADAPTIVE = dict(FIT, schedule="adaptive")


def _data(M=23, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(M, 4))
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)


def _net(**kw):
    return MLP([4, 5, 3], activation="tanh", dtype="float64", seed=3, **kw)


def _header(path):
    with np.load(path) as z:
        return json.loads(z["header"].tobytes())


def craft(src, dst, edit=None, compress=False, **arrays):
    """A copy of nnjit file src with edit(header) applied and arrays replaced (None: removed),
    its digest recomputed the way nnjit.io computes it, so that the file is intact and only
    the checks of its contents can refuse it."""
    with np.load(src, allow_pickle=False) as z:
        out = {n: z[n] for n in z.files}
    h = json.loads(out.pop("header").tobytes().decode())
    out.update(arrays)
    out = {k: v for k, v in out.items() if v is not None}
    if edit is not None:
        edit(h)
    h["sha256"] = nio._digest(out)
    out["header"] = np.frombuffer(json.dumps(h).encode(), np.uint8)
    (np.savez_compressed if compress else np.savez)(dst, **out)
    return dst


def _set(path, value):
    """edit(header) setting the field at path (a tuple of keys) to value."""
    def edit(h):
        node = h
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return edit


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    X, y = _data()
    _net().fit(X, y, epochs=3, checkpoint=d / "ck.npz", **FIT)
    _net().fit(X, y, epochs=3, optimizer="adam", lr=0.01, batch_size=4).save(d / "adam.npz")
    _net().fit(X, y, epochs=3, checkpoint=d / "ad.npz", **ADAPTIVE)
    return d


def _refused(src, dst, edit=None, field=None, resume=False, fit=FIT, **arrays):
    """The message of the ModelFileError loading (or resuming, with the settings ``fit`` of
    the run that wrote src) a crafted copy of src; it names the file and, where given, the
    field."""
    craft(src, dst, edit, **arrays)
    with pytest.raises(nio.ModelFileError) as e:
        if resume:
            X, y = _data()
            _net().fit(X, y, epochs=3, checkpoint=dst, resume=True, **fit)
        else:
            MLP.load(dst)
    assert str(dst) in str(e.value)
    if field:
        assert f"'{field}'" in str(e.value), str(e.value)
    return str(e.value)


def test_a_crafted_copy_of_a_good_file_loads_and_resumes(files, tmp_path):
    craft(files / "ck.npz", tmp_path / "same.npz")
    X, y = _data()
    net = _net().fit(X, y, epochs=4, checkpoint=tmp_path / "same.npz", resume=True, **FIT)
    assert net.n_epochs_ == 4


@pytest.mark.parametrize("path, value, field", [
    # epoch counters: 10**12 made resume train practically forever, -100 trained 0 epochs
    (("checkpoint", "start_epoch"), 10**12, "checkpoint.start_epoch"),
    (("checkpoint", "start_epoch"), -100, "checkpoint.start_epoch"),
    (("checkpoint", "start_epoch"), 2.0, "checkpoint.start_epoch"),
    (("checkpoint", "start_epoch"), 4, "checkpoint.start_epoch"),      # after n_epochs = 3
    (("checkpoint", "epochs"), -100, "checkpoint.epochs"),
    (("checkpoint", "epochs"), 0, "checkpoint.epochs"),
    (("checkpoint", "epochs"), 2, "checkpoint.start_epoch"),           # 3 epochs of a 2-epoch fit
    (("n_epochs",), 10**12, "n_epochs"),
    (("n_epochs",), -1, "n_epochs"),
    (("n_epochs",), 7, "checkpoint.start_epoch"),                      # beyond the fit's end
    (("n_epochs",), True, "n_epochs"),
    (("history", "loss"), [0.5], "history.loss"),                      # 1 loss for 3 epochs
    (("history", "loss"), ["x", 1, 2], "history.loss[0]"),
    (("history", "val_epoch"), [5], "history.val_epoch[0]"),
    (("history", "gradient"), [], "history.gradient"),
    # a real bool: "no" and 0 were read as "stopped" / "not stopped" by truthiness
    (("checkpoint", "stopped"), "no", "checkpoint.stopped"),
    (("checkpoint", "stopped"), 0, "checkpoint.stopped"),
    # the same-data check: a null, negative or textual fingerprint switched it off
    (("checkpoint", "settings", "data_crc32"), None, "checkpoint.settings.data_crc32"),
    (("checkpoint", "settings", "data_crc32"), "abc", "checkpoint.settings.data_crc32"),
    (("checkpoint", "settings", "data_crc32"), -1, "checkpoint.settings.data_crc32"),
    (("checkpoint", "settings", "data_crc32"), 2**32, "checkpoint.settings.data_crc32"),
    # the fit's hyper-parameters, typed as fit checks them (nnjit.rules.PARAMS)
    (("checkpoint", "settings", "lr"), -0.5, "checkpoint.settings.lr"),
    (("checkpoint", "settings", "lr"), "0.2", "checkpoint.settings.lr"),
    (("checkpoint", "settings", "momentum"), 1.0, "checkpoint.settings.momentum"),
    (("checkpoint", "settings", "betas"), [0.9, 1.0], "checkpoint.settings.betas[1]"),
    (("checkpoint", "settings", "betas"), [0.9], "checkpoint.settings.betas"),
    (("checkpoint", "settings", "eps"), 0.0, "checkpoint.settings.eps"),
    (("checkpoint", "settings", "alpha"), -1e-3, "checkpoint.settings.alpha"),
    (("checkpoint", "settings", "optimizer"), "evil", "checkpoint.settings.optimizer"),
    (("checkpoint", "settings", "batch_size"), 0, "checkpoint.settings.batch_size"),
    (("checkpoint", "settings"), {}, "checkpoint.settings.data_crc32"),
    # strings, lists or objects where numbers or objects belong; keys no nnjit writes
    (("checkpoint", "state"), [], "checkpoint.state"),
    (("checkpoint", "state", "stopper", "stall"), "3", "checkpoint.state.stopper.stall"),
    (("checkpoint", "state", "stopper", "best"), [1], "checkpoint.state.stopper.best"),
    (("checkpoint", "state", "stopper", "best"), float("nan"), "checkpoint.state.stopper.best"),
    (("checkpoint", "state", "best", "epoch"), 3, "checkpoint.state.best.epoch"),
    (("checkpoint", "state", "evil"), 1, "checkpoint.state.evil"),
    (("checkpoint",), "yes", "checkpoint"),
    (("optimizer", "lr"), -0.5, "optimizer.lr"),
    (("optimizer", "step"), -5, "optimizer.step"),
    (("optimizer", "t"), -1000, "optimizer.t"),
    (("optimizer", "best_epoch"), 99, "optimizer.best_epoch"),
    (("optimizer",), None, "optimizer"),
    (("rng",), [1, 2], "rng"),
])
def test_crafted_checkpoint_fields_are_refused(files, tmp_path, path, value, field):
    """Each once made resume train forever or not at all, skip the same-data check, or fail
    with a bare KeyError/TypeError; now a ModelFileError naming the file and the field."""
    _refused(files / "ck.npz", tmp_path / "bad.npz", _set(path, value), field, resume=True)


def test_the_error_carries_the_field(files, tmp_path):
    craft(files / "ck.npz", tmp_path / "bad.npz", _set(("checkpoint", "start_epoch"), 10**12))
    with pytest.raises(nio.ModelFileError) as e:
        nio.info(tmp_path / "bad.npz")
    assert e.value.field == "checkpoint.start_epoch"
    assert "must be an integer in [0, 1000000000], got 1000000000000" in str(e.value)


def test_a_negative_or_raised_adaptive_learning_rate_is_refused(files, tmp_path):
    """The adaptive schedule only divides the fit's lr: -0.5 resumed as gradient ascent."""
    assert _header(files / "ad.npz")["checkpoint"]["state"]["stopper"]["adaptive_lr"] == 0.2
    field = "checkpoint.state.stopper.adaptive_lr"
    for value in (-0.5, 0.0, 5.0, "0.1", [0.1]):
        _refused(files / "ad.npz", tmp_path / "bad.npz",
                 _set(("checkpoint", "state", "stopper", "adaptive_lr"), value), field, resume=True,
                 fit=ADAPTIVE)


def test_a_checkpoint_of_data_held_as_objects_has_a_fingerprint(tmp_path):
    """Labels in an object array have no bytes to checksum: the checkpoint used to record
    data_crc32 null, which turned the same-data check off. Now their reprs are checksummed."""
    X, y = _data()
    labels = np.array(["a", "b", "c\x00"], dtype=object)
    Xm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float64, shape=X.shape)
    Xm[:] = X
    _net().fit(Xm, labels[y], epochs=2, checkpoint=tmp_path / "ck.npz", **FIT)
    crc = _header(tmp_path / "ck.npz")["checkpoint"]["settings"]["data_crc32"]
    assert isinstance(crc, int)
    other = labels[y].copy()
    other[0] = "b" if other[0] != "b" else "a"
    with pytest.raises(ValueError, match="data_crc32"):
        _net().fit(Xm, other, epochs=3, checkpoint=tmp_path / "ck.npz", resume=True, **FIT)
    net = _net().fit(Xm, labels[y], epochs=3, checkpoint=tmp_path / "ck.npz", resume=True, **FIT)
    assert net.n_epochs_ == 3


def test_resume_without_the_sample_weights_of_the_checkpoint_is_refused(tmp_path):
    """A missing fingerprint (no weights now) no longer matches the checkpoint's."""
    X, y = _data()
    w = np.linspace(0.5, 2.0, len(y))
    _net().fit(X, y, epochs=2, checkpoint=tmp_path / "ck.npz", sample_weight=w, **FIT)
    with pytest.raises(ValueError, match="sample_weight_crc32"):
        _net().fit(X, y, epochs=3, checkpoint=tmp_path / "ck.npz", resume=True, **FIT)


@pytest.mark.parametrize("name", ["W1", "b2", "vW1", "sb1"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_arrays_are_refused(files, tmp_path, name, bad):
    with np.load(files / "adam.npz") as z:
        a = z[name].copy()
    a.flat[0] = bad
    assert "NaN or inf" in _refused(files / "adam.npz", tmp_path / "bad.npz", **{name: a})


def test_a_negative_second_moment_is_refused(files, tmp_path):
    with np.load(files / "adam.npz") as z:
        a = z["sW1"].copy()
    a.flat[0] = -1.0
    assert "negative" in _refused(files / "adam.npz", tmp_path / "bad.npz", sW1=a)


def test_non_finite_best_weights_are_refused_before_loading(tmp_path):
    X, y = _data()
    Xv, yv = _data(seed=1)
    kw = dict(FIT, validation_data=(Xv, yv), restore_best=True)
    _net().fit(X, y, epochs=2, checkpoint=tmp_path / "ck.npz", **kw)
    with np.load(tmp_path / "ck.npz") as z:
        theta = z["best_theta"].copy()
    theta[3] = np.nan
    craft(tmp_path / "ck.npz", tmp_path / "bad.npz", best_theta=theta)
    net = _net()
    before = net.weights[0].copy()
    with pytest.raises(nio.ModelFileError, match="best_theta"):
        net.fit(X, y, epochs=3, checkpoint=tmp_path / "bad.npz", resume=True, **kw)
    np.testing.assert_array_equal(net.weights[0], before)       # nothing was loaded


@pytest.mark.parametrize("edit, field", [
    (_set(("classes",), None), "classes"),                         # beside a classes array
    (_set(("classes", "object"), "no"), "classes.object"),
    (_set(("classes", "values"), [0, 1, 2, 3]), "classes.values"), # 4 labels, 3 units
    (_set(("architecture", "output"), "identity"), "architecture.loss"),
])
def test_crafted_classes_are_refused(files, tmp_path, edit, field):
    _refused(files / "adam.npz", tmp_path / "bad.npz", edit, field)


def test_classes_must_fit_the_output_layer(tmp_path):
    X, y = _data()
    net = MLP([4, 3, 1], output="identity", loss="squared_error", seed=0).fit(X, X[:, 0], epochs=1)
    net.save(tmp_path / "r.npz")
    _refused(tmp_path / "r.npz", tmp_path / "bad.npz", _set(("classes",), {"object": False}),
             "classes", classes=np.arange(2))
    _refused(tmp_path / "r.npz", tmp_path / "bad2.npz", None, None, classes=np.arange(2))
    clf = _net().fit(X, y, epochs=1)
    clf.save(tmp_path / "c.npz")
    assert "takes 1 to 3 labels" in _refused(tmp_path / "c.npz", tmp_path / "bad3.npz",
                                             classes=np.arange(4))
    wide = np.array(["a", "b", "c" * 2000])
    assert "MODEL_FILE_MAX_LABEL" in _refused(tmp_path / "c.npz", tmp_path / "bad4.npz", classes=wide)


def test_crafted_scalers_are_refused(tmp_path):
    from nnjit.preprocessing import Scaler
    X, y = _data()
    net = MLP([4, 3, 1], output="identity", dtype="float64", seed=0)
    net.x_scaler, net.y_scaler = Scaler(), Scaler()
    net.fit(X, X[:, 0] * 3.0, epochs=2).save(tmp_path / "r.npz")
    for name, value, field in (("y_scale", [1e300], "scalers.y"), ("y_scale", [0.0], "scalers.y"),
                               ("x_scale", [-1.0, 1, 1, 1], "scalers.x"),
                               ("x_scale", [np.inf, 1, 1, 1], "scalers.x"),
                               ("x_scale", [1e-300, 1, 1, 1], "scalers.x"),
                               ("x_scale", None, "scalers.x")):
        kw = {name: None if value is None else np.array(value, np.float64)}
        if name == "x_scale" and value is not None:
            kw["x_offset"] = np.full(4, 5.0)
        _refused(tmp_path / "r.npz", tmp_path / "bad.npz", field=field, **kw)
    _refused(tmp_path / "r.npz", tmp_path / "bad.npz", _set(("scalers", "x"), "robust"), "scalers.x")


def test_a_huge_label_is_refused_before_the_header_is_parsed(tmp_path):
    """A 60 MB label compresses to a file of tens of KB; it is refused from the raw header
    bytes, before JSON turns them into Python strings (180 MB before)."""
    X, y = _data()
    _net().fit(X, np.array(["a", "b", "c\x00"], dtype=object)[y], epochs=1).save(tmp_path / "m.npz")
    assert "values" in _header(tmp_path / "m.npz")["classes"]      # labels in the header
    craft(tmp_path / "m.npz", tmp_path / "big.npz",
          _set(("classes", "values"), ["a", "b", "x" * 60_000_000]), compress=True)
    assert (tmp_path / "big.npz").stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(nio.ModelFileError, match="longer than 65536") as e:
            MLP.load(tmp_path / "big.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "big.npz" in str(e.value) and peak < 70 * 2**20       # the header's bytes, once


@pytest.mark.parametrize("values, field, words", [
    ([f"l{i}" for i in range(50)], "classes.values", "1 to 3 labels"),
    (["a", "b", "y" * 5000], "classes.values[2]", "MODEL_FILE_MAX_LABEL"),
    (["a", "b", ["c"]], "classes.values[2]", "a number or a string"),
    ([], "classes.values", "1 to 3 labels"),
])
def test_labels_are_capped_against_the_architecture(tmp_path, values, field, words):
    X, y = _data()
    _net().fit(X, np.array(["a", "b", "c\x00"], dtype=object)[y], epochs=1).save(tmp_path / "m.npz")
    msg = _refused(tmp_path / "m.npz", tmp_path / "bad.npz", _set(("classes", "values"), values), field)
    assert words in msg


def test_a_checkpointed_fit_beyond_the_epoch_cap_is_refused_before_training(tmp_path):
    X, y = _data()
    net = _net()
    with pytest.raises(ValueError, match="checkpoint.epochs"):
        net.fit(X, y, epochs=nio.MAX_EPOCHS + 1, checkpoint=tmp_path / "ck.npz", **FIT)
    assert net.n_epochs_ == 0 and not (tmp_path / "ck.npz").exists()


def test_save_refuses_what_load_would_refuse(tmp_path):
    X, y = _data()
    long = np.array(["a", "b", "z" * 1025])
    with pytest.raises(ValueError, match="MODEL_FILE_MAX_LABEL"):
        _net().fit(X, long[y], epochs=1).save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_info_summarises_labels(tmp_path, capsys):
    """Legitimate long labels: nnjit info prints the first few, cut, and the count."""
    from nnjit.cli import main
    labels = [f"label-{i:03d}-" + "z" * 1000 for i in range(30)]
    X = np.random.default_rng(0).normal(size=(60, 4))
    MLP([4, 3, 30], seed=0).fit(X, np.array(labels)[np.arange(60) % 30], epochs=1).save(tmp_path / "w.npz")
    assert main(["info", str(tmp_path / "w.npz")]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("classes:")][0]
    assert len(line) < 600 and line.endswith("(30)") and "…" in line


def test_schema_specs():
    spec = Obj({"a": Int(0, 5), "b": Null(Num(0, lo_open=True)), "c": Bool(),
                "d": List(Str(3), 2), "e": OneOf(Bool(), Str(choices=("x",))), "f": Any(5, 3)},
               optional=("d", "e", "f"))
    good = {"a": 1, "b": None, "c": True, "d": ["ab"], "e": "x", "f": [1, {"k": "abc"}]}
    assert validate(spec, good) == good
    for change, field in (({"a": 6}, "a"), ({"a": True}, "a"), ({"a": 1.0}, "a"),
                          ({"b": 0.0}, "b"), ({"b": float("nan")}, "b"), ({"b": float("inf")}, "b"),
                          ({"c": 1}, "c"), ({"c": "no"}, "c"), ({"g": 0}, "g"),
                          ({"d": ["abcd"]}, "d[0]"), ({"d": ["a", "b", "c"]}, "d"),
                          ({"e": "y"}, "e"), ({"f": [1, 2, 3, 4, 5, 6]}, "f"),
                          ({"f": {"k": "abcd"}}, "f.k")):
        with pytest.raises(SchemaError) as e:
            validate(spec, {**good, **change})
        assert e.value.field == field
    with pytest.raises(SchemaError) as e:
        validate(spec, {"a": 1, "b": 1.0})
    assert e.value.field == "c" and "missing" in str(e.value)
    assert np.isnan(validate(Num(finite=False), float("nan")))    # history keeps a NaN loss
    with pytest.raises(SchemaError, match="got 'xxxx"):            # values shown cut
        validate(Int(), "x" * 10**6, "f")
    assert len(str(pytest.raises(SchemaError, validate, Int(), "x" * 10**6, "f").value)) < 200
