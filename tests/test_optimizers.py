"""Update rules inside the compiled epoch (nnjit.rules): every rule on every form, the peers'
trajectories (PyTorch, scikit-learn) from the same initial weights, the penalised weighted
objective's gradient, schedules, sample weights, restore_best and the optimizer state's
persistence (save/load, checkpoints, pickles, backend switches)."""
import copy
import json
import math
import pickle

import numpy as np
import pytest

from nnjit import MLP, DivergenceError, config
from nnjit import io as nio
from helpers import assert_close

M = 7
RULE_KW = {
    "sgd": dict(optimizer="sgd", momentum=0.9),
    "nesterov": dict(optimizer="nesterov", momentum=0.9),
    "adam": dict(optimizer="adam", betas=(0.8, 0.95), eps=1e-6),
    "adam-sklearn": dict(optimizer="adam", adam_eps="sklearn", betas=(0.8, 0.95), eps=1e-6),
    "adamw": dict(optimizer="adamw", weight_decay=0.05),
    "rmsprop": dict(optimizer="rmsprop", rho=0.95, eps=1e-6),
    "rmsprop-momentum": dict(optimizer="rmsprop", rho=0.9, momentum=0.8),
}


def problem(seed=0, n=M, d=5, k=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.arange(n) % k
    rng.shuffle(y)
    return X, y


def net(backend="loops", dtype="float64", layers=(5, 4, 3), seed=3, **kw):
    return MLP(list(layers), activation="tanh", output="softmax", backend=backend, dtype=dtype,
               init="normal", init_scale=0.25, seed=seed, **kw)


def params(n):
    return np.concatenate([x.ravel() for x in n.weights + n.biases])


def assert_same_model(a, b):
    np.testing.assert_array_equal(params(a), params(b))
    sa, sb = a.optimizer_state(), b.optimizer_state()
    np.testing.assert_array_equal(sa["velocity"], sb["velocity"])
    np.testing.assert_array_equal(sa["square"], sb["square"])
    assert sa["step"] == sb["step"]
    assert a.history_ == b.history_ and a.n_epochs_ == b.n_epochs_ and a.t_ == b.t_


# ---------------------------------------------------------------- every rule, every form
def _cuda_or_skip():
    nc = pytest.importorskip("nnjit.cuda", reason="numba-cuda is not installed")
    from numba import cuda
    if not cuda.is_available():
        pytest.skip("neither a CUDA GPU nor the simulator is usable")
    return nc


@pytest.mark.parametrize("rule", list(RULE_KW))
@pytest.mark.parametrize("batch_size", [1, 3, None])
def test_every_rule_agrees_across_forms(monkeypatch, rule, batch_size):
    """loops == vectorised == cuda (simple kernels; tiled for one batch size), float64 to
    1e-10, with momentum/moments, the L2 penalty and sample weights (one zero) all on."""
    X, y = problem()
    sw = np.linspace(0.0, 2.0, M)
    kw = dict(RULE_KW[rule], alpha=0.3, sample_weight=sw, lr=0.05, batch_size=batch_size, epochs=2)
    backends = ["loops", "vectorised"]
    try:
        _cuda_or_skip()
        backends.append("cuda")
    except pytest.skip.Exception:
        pass
    monkeypatch.setattr(config, "CUDA_KERNELS", "tiled" if batch_size == 3 else "simple")
    monkeypatch.setattr(config, "CUDA_TILE", 4)
    nets = [net(b).fit(X, y, **kw) for b in backends]
    ref = nets[0]
    assert ref.optimizer_state()["step"] > 0
    assert np.abs(params(ref) - params(net())).max() > 1e-3        # it did train
    for other in nets[1:]:
        assert_close(params(other), params(ref), "float64", other.backend)
        for k in ("velocity", "square"):
            assert_close(other.optimizer_state()[k], ref.optimizer_state()[k], "float64", k)
        assert other.optimizer_state()["step"] == ref.optimizer_state()["step"]
        assert_close(other.history_["loss"], ref.history_["loss"], "float64", "loss")


# ---------------------------------------------------------------- the peers
def _torch_twin(torch, n, hidden=None):
    lin1, lin2 = torch.nn.Linear(5, 4).double(), torch.nn.Linear(4, 3).double()
    with torch.no_grad():
        for lin, W, b in zip((lin1, lin2), n.weights, n.biases):
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b))
    return torch.nn.Sequential(lin1, hidden or torch.nn.Tanh(), lin2)


def _torch_run(torch, model, opt, X, y, epochs, bs, sched=None):
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        for s in range(0, X.shape[0], bs):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(Xt[s:s + bs]), yt[s:s + bs]).backward()
            opt.step()
        if sched is not None:
            sched.step()
    return np.concatenate([p.detach().numpy().ravel() for p in
                           (model[0].weight, model[2].weight, model[0].bias, model[2].bias)]), lrs


FORMS = ["loops", "vectorised", "cuda"]


def _form(backend, monkeypatch):
    if backend == "cuda":
        _cuda_or_skip()
        monkeypatch.setattr(config, "CUDA_TILE", 4)     # partial tiles in every dimension


def _torch_opt(torch, rule, P, lr):
    return {"nesterov": lambda: torch.optim.SGD(P, lr=lr, momentum=0.9, nesterov=True),
            "sgd": lambda: torch.optim.SGD(P, lr=lr, momentum=0.9),
            "adam": lambda: torch.optim.Adam(P, lr=lr, betas=(0.8, 0.95), eps=1e-6),
            "adamw": lambda: torch.optim.AdamW(P, lr=lr, weight_decay=0.05),
            "rmsprop": lambda: torch.optim.RMSprop(P, lr=lr, alpha=0.95, eps=1e-6),
            "rmsprop-momentum": lambda: torch.optim.RMSprop(P, lr=lr, alpha=0.9, momentum=0.8),
            }[rule]()


@pytest.mark.parametrize("backend", FORMS)
@pytest.mark.parametrize("rule", ["nesterov", "sgd", "adam", "adamw", "rmsprop", "rmsprop-momentum"])
def test_pytorch_trajectory(backend, rule, monkeypatch):
    """Three epochs of mini-batches (3 + 3 + 1), shuffle=False, from the same weights: the
    same parameters as torch.optim.SGD(nesterov=True) / SGD / Adam / AdamW / RMSprop (with and
    without momentum) to 1e-9, in every form."""
    torch = pytest.importorskip("torch")
    _form(backend, monkeypatch)
    X, y = problem(1)
    ours = net(backend)
    model = _torch_twin(torch, ours)
    lr = 0.1 if rule in ("sgd", "nesterov") else 0.01
    want, _ = _torch_run(torch, model, _torch_opt(torch, rule, model.parameters(), lr), X, y, 3, 3)
    ours.fit(X, y, epochs=3, lr=lr, batch_size=3, shuffle=False, **RULE_KW[rule])
    got = np.concatenate([w.ravel() for w in ours.weights] + [b.ravel() for b in ours.biases])
    assert np.abs(got - np.concatenate([w.ravel() for w in net().weights] +
                                       [b.ravel() for b in net().biases])).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", FORMS)
@pytest.mark.parametrize("rule", ["sgd", "rmsprop"])
def test_pytorch_trajectory_leaky_relu(backend, rule, monkeypatch):
    """Leaky ReLU hidden units (slope 0.01, PyTorch's LeakyReLU): the same trajectory as
    PyTorch, in every form; the initial weights put units on both sides of 0."""
    torch = pytest.importorskip("torch")
    _form(backend, monkeypatch)
    X, y = problem(4)
    ours = MLP([5, 4, 3], activation="leaky_relu", output="softmax", backend=backend,
               dtype="float64", init="normal", init_scale=0.25, seed=3)
    z = X @ ours.weights[0].T + ours.biases[0]
    assert (z < 0).mean() > 0.2 and (z > 0).mean() > 0.2
    model = _torch_twin(torch, ours, torch.nn.LeakyReLU(0.01))
    lr = 0.1 if rule == "sgd" else 0.01
    want, _ = _torch_run(torch, model, _torch_opt(torch, rule, model.parameters(), lr), X, y, 3, 3)
    ours.fit(X, y, epochs=3, lr=lr, batch_size=3, shuffle=False, **RULE_KW[rule])
    got = np.concatenate([w.ravel() for w in ours.weights] + [b.ravel() for b in ours.biases])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("schedule,params,torch_sched", [
    ("step", {"step_size": 2, "gamma": 0.5}, lambda t, o: t.optim.lr_scheduler.StepLR(o, 2, 0.5)),
    ("cosine", {"eta_min": 0.001}, lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, 5, 0.001)),
    ("cosine", {"t_max": 3}, lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, 3)),
])
def test_pytorch_schedules(schedule, params, torch_sched):
    """The per-epoch lr of "step" and "cosine" equals PyTorch's StepLR / CosineAnnealingLR
    (t_max defaults to the fit's epochs), and so do the weights trained with it."""
    torch = pytest.importorskip("torch")
    X, y = problem(2)
    ours = net()
    model = _torch_twin(torch, ours)
    # plain SGD: heavy-ball written as v <- mu v - eta g equals PyTorch's b <- mu b + g only
    # for a constant lr
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    want, want_lrs = _torch_run(torch, model, opt, X, y, 5, 4, torch_sched(torch, opt))
    lrs = []
    ours.fit(X, y, epochs=5, lr=0.2, batch_size=4, shuffle=False, schedule=schedule,
             schedule_params=params, callbacks=[lambda n, e, h: lrs.append(n.lr_)])
    np.testing.assert_allclose(lrs, want_lrs, rtol=1e-12)
    assert len(set(np.round(lrs, 12))) > 1
    got = np.concatenate([w.ravel() for w in ours.weights] + [b.ravel() for b in ours.biases])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sk_grads(coefs, ints, Xb, Yb, sw, alpha):
    """scikit-learn's _backprop for tanh -> softmax, log-loss: (a^T delta + alpha W) / n with
    delta weighted by the samples' weights and n = sum of the batch's weights."""
    a1 = np.tanh(Xb @ coefs[0] + ints[0])
    d2 = _softmax(a1 @ coefs[1] + ints[1]) - Yb
    d2 = d2 * sw[:, None]
    n = sw.sum()
    d1 = (d2 @ coefs[1].T) * (1 - a1 ** 2)
    return [(Xb.T @ d1 + alpha * coefs[0]) / n, (a1.T @ d2 + alpha * coefs[1]) / n,
            d1.sum(axis=0) / n, d2.sum(axis=0) / n]


@pytest.mark.parametrize("backend", ["loops", "vectorised"])
@pytest.mark.parametrize("case", ["nesterov", "momentum-invscaling", "adam"])
def test_sklearn_trajectory(backend, case):
    """The same parameters as scikit-learn's own optimizer classes driven by its _backprop
    gradient with the L2 penalty and sample weights, 3 epochs of mini-batches, to 1e-9."""
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer
    X, y = problem(3)
    Y = np.eye(3)[y]
    sw = np.linspace(0.5, 1.5, M)
    alpha = 0.2
    ours = net(backend)
    coefs = [W.T.copy() for W in ours.weights]
    ints = [b.copy() for b in ours.biases]
    P = coefs + ints
    if case == "adam":
        opt = AdamOptimizer(P, learning_rate_init=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-6)
        kw = dict(optimizer="adam", adam_eps="sklearn", betas=(0.8, 0.95), eps=1e-6, lr=0.01)
    else:
        nesterov = case == "nesterov"
        opt = SGDOptimizer(P, learning_rate_init=0.1, momentum=0.9, nesterov=nesterov,
                           lr_schedule="constant" if nesterov else "invscaling", power_t=0.5)
        kw = dict(optimizer="nesterov" if nesterov else "sgd", momentum=0.9, lr=0.1,
                  schedule="constant" if nesterov else "invscaling")
    t = 0
    for _ in range(3):
        for s in range(0, M, 3):
            opt.update_params(P, _sk_grads(P[:2], P[2:], X[s:s + 3], Y[s:s + 3], sw[s:s + 3], alpha))
        t += M
        opt.iteration_ends(t)
    ours.fit(X, y, epochs=3, batch_size=3, shuffle=False, alpha=alpha, sample_weight=sw, **kw)
    for W, c in zip(ours.weights, P[:2]):
        np.testing.assert_allclose(W, c.T, rtol=1e-9, atol=1e-12)
    for b, c in zip(ours.biases, P[2:]):
        np.testing.assert_allclose(b, c, rtol=1e-9, atol=1e-12)
    assert ours.t_ == 3 * M


def test_nesterov_two_formulations_are_one_update():
    """PyTorch's b <- mu b + g ; w <- w - eta (g + mu b) and scikit-learn's
    v <- mu v - eta g ; w <- w + mu v - eta g give the same iterates for constant eta
    (v = -eta b), on any gradient sequence."""
    rng = np.random.default_rng(0)
    eta, mu = 0.07, 0.9
    w1 = w2 = rng.normal(size=5)
    b = v = np.zeros(5)
    for _ in range(20):
        g1, g2 = np.sin(w1) + w1 ** 2, np.sin(w2) + w2 ** 2      # a gradient of the iterate
        b = mu * b + g1
        w1 = w1 - eta * (g1 + mu * b)
        v = mu * v - eta * g2
        w2 = w2 + mu * v - eta * g2
        np.testing.assert_allclose(v, -eta * b, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(w1, w2, rtol=1e-12)


def test_adaptive_schedule_is_sklearns_rule():
    """"adaptive": the lr of every epoch and the stopping epoch equal scikit-learn's
    SGDOptimizer(lr_schedule="adaptive") driven by the same losses through its
    _fit_stochastic bookkeeping (count > n_iter_no_change -> trigger_stopping)."""
    from sklearn.neural_network._stochastic_optimizers import SGDOptimizer
    X, y = problem(4, n=40)
    ours = net()
    lrs = []
    ours.fit(X, y, epochs=400, lr=0.3, momentum=0.9, batch_size=8, shuffle=False, tol=1e-2,
             n_iter_no_change=2, schedule="adaptive", callbacks=[lambda n, e, h: lrs.append(n.lr_)])
    opt = SGDOptimizer([np.zeros(1)], learning_rate_init=0.3, lr_schedule="adaptive", momentum=0.9)
    best, count, want, stop_at = np.inf, 0, [], None
    for e, loss in enumerate(ours.history_["loss"]):
        want.append(opt.learning_rate)
        count = count + 1 if loss > best - 1e-2 else 0
        best = min(best, loss)
        if count > 2:
            if opt.trigger_stopping("", False):
                stop_at = e
                break
            count = 0
    assert lrs == pytest.approx(want, rel=1e-15)
    assert len(set(lrs)) >= 3                    # the lr was divided at least twice
    assert stop_at is None or stop_at == len(lrs) - 1


def test_invscaling_closed_form():
    X, y = problem(5)
    lrs = []
    net().fit(X, y, epochs=4, lr=0.5, batch_size=2, schedule="invscaling",
              schedule_params={"power_t": 0.25}, callbacks=[lambda n, e, h: lrs.append(n.lr_)])
    assert lrs == pytest.approx([0.5 / (e * M + 1) ** 0.25 for e in range(4)], rel=1e-15)


# ---------------------------------------------------------------- objective and gradient
@pytest.mark.parametrize("backend", ["loops", "vectorised"])
def test_gradient_check_of_the_penalised_weighted_objective(backend):
    """gradients(sample_weight, alpha) is the derivative of loss_value(sample_weight, alpha)
    = sum_m s_m C_m / sum_m s_m + alpha/(2 sum_m s_m) sum ||W||^2, by central differences."""
    X, y = problem(6)
    sw = np.linspace(0.0, 3.0, M)
    alpha = 0.7
    n = net(backend)
    dW, db = n.gradients(X, y, sample_weight=sw, alpha=alpha)
    h = 1e-6
    for l in range(2):
        for idx in [(0, 0), (1, 2), (2, 3)] if l == 0 else [(0, 1), (2, 3)]:
            W0 = n.weights
            for sgn, store in ((1, []), (-1, [])):
                Ws = [w.copy() for w in W0]
                Ws[l][idx] += sgn * h
                n.weights = Ws
                store.append(n.loss_value(X, y, sample_weight=sw, alpha=alpha))
                if sgn == 1:
                    up = store[0]
                else:
                    down = store[0]
            n.weights = W0
            assert dW[l][idx] == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-9)
    b0 = n.biases
    for j in range(3):
        bs = [b.copy() for b in b0]
        bs[1][j] += h
        n.biases = bs
        up = n.loss_value(X, y, sample_weight=sw, alpha=alpha)
        bs[1][j] -= 2 * h
        n.biases = bs
        down = n.loss_value(X, y, sample_weight=sw, alpha=alpha)
        n.biases = b0
        assert db[1][j] == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-9)


def test_penalty_value_and_weights_as_repetitions():
    """alpha adds alpha/(2 n) sum ||W||^2 to the mean loss (biases not penalised); an integer
    weight counts a sample that many times (scikit-learn >= 1.7 semantics)."""
    X, y = problem(7)
    n = net()
    sq = sum((W.astype(float) ** 2).sum() for W in n.weights)
    assert n.loss_value(X, y, alpha=0.4) == pytest.approx(n.loss_value(X, y) + 0.2 * sq / M, rel=1e-12)
    w = np.array([1, 2, 0, 1, 3, 1, 1])
    Xr, yr = np.repeat(X, w, axis=0), np.repeat(y, w)
    assert n.loss_value(X, y, sample_weight=w) == pytest.approx(n.loss_value(Xr, yr), rel=1e-12)
    for a, b in zip(sum(n.gradients(X, y, sample_weight=w), []), sum(n.gradients(Xr, yr), [])):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    # full batch training: the same model as training on the repeated data
    a = net().fit(X, y, epochs=3, batch_size=None, sample_weight=w, momentum=0.5)
    b = net().fit(Xr, yr, epochs=3, batch_size=None, momentum=0.5)
    np.testing.assert_allclose(params(a), params(b), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(a.history_["loss"], b.history_["loss"], rtol=1e-10)


def test_reported_loss_includes_the_penalty():
    """Full batch: the epoch's loss is the objective at the weights before the epoch's step."""
    X, y = problem(8)
    n = net()
    before = n.loss_value(X, y, alpha=0.5)
    n.fit(X, y, epochs=1, batch_size=None, alpha=0.5)
    assert n.history_["loss"][0] == pytest.approx(before, rel=1e-12)


@pytest.mark.parametrize("bad,err,match", [
    (np.ones((M, 1)), ValueError, "1-D"), (np.ones(M + 1), ValueError, "entries"),
    (np.r_[np.ones(M - 1), np.nan], ValueError, "NaN"), (np.r_[np.ones(M - 1), -1.0], ValueError, ">= 0"),
    (np.zeros(M), ValueError, "all zero"), (np.array(["a"] * M), TypeError, "numbers"),
])
def test_bad_sample_weight(bad, err, match):
    X, y = problem()
    with pytest.raises(err, match=match):
        net().fit(X, y, epochs=1, sample_weight=bad)
    with pytest.raises(err, match=match):
        net().gradients(X, y, sample_weight=bad)


@pytest.mark.parametrize("kw,match", [
    (dict(optimizer="rmsprob"), "unknown optimizer"), (dict(optimizer="adam", nesterov=True), "nesterov"),
    (dict(optimizer="adam", rho=0.9), "not a hyper-parameter of optimizer 'adam'"),
    (dict(optimizer="rmsprop", rho=1.0), "rho"), (dict(optimizer="sgd", gamma=0.9), "unknown rule hyper"),
    (dict(optimizer="nesterov"), "momentum > 0"), (dict(betas=(1.0, 0.9)), "betas"),
    (dict(eps=0.0), "eps"), (dict(adam_eps="keras"), "adam_eps"), (dict(alpha=-1.0), "alpha"),
    (dict(weight_decay=0.1), "AdamW"), (dict(schedule="warmup"), "unknown schedule"),
    (dict(schedule="step"), "step_size"), (dict(schedule="cosine", schedule_params={"gamma": 2}), "no parameter"),
    (dict(lr=lambda e: 0.1, schedule="cosine"), "callable"),
])
def test_bad_optimizer_settings(kw, match):
    X, y = problem()
    with pytest.raises(ValueError, match=match):
        net().fit(X, y, epochs=1, **kw)


def test_zero_weight_online_samples_make_no_step():
    X, y = problem(9)
    sw = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    n = net().fit(X, y, epochs=2, batch_size=1, optimizer="adam", sample_weight=sw, shuffle=False)
    assert n.optimizer_state()["step"] == 2 * 4
    ref = net().fit(X[sw > 0], y[sw > 0], epochs=2, batch_size=1, optimizer="adam", shuffle=False)
    np.testing.assert_allclose(params(n), params(ref), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- restore_best
@pytest.mark.parametrize("with_val", [True, False])
def test_restore_best_puts_back_the_best_epoch(with_val):
    X, y = problem(10, n=30)
    Xv, yv = problem(11, n=20)
    seen = {}

    def record(n, e, h):
        seen[e] = params(n)
    kw = dict(validation_data=(Xv, yv)) if with_val else {}
    n = net().fit(X, y, epochs=12, lr=1.5, momentum=0.9, batch_size=5, restore_best=True,
                  callbacks=[record], **kw)
    curve = n.history_["val_loss" if with_val else "loss"]
    best = int(np.argmin(curve))
    assert best != len(curve) - 1, "the test needs a run whose last epoch is not its best"
    assert n.best_epoch_ == best and n.best_loss_ == curve[best]
    assert n.best_score_ == (n.history_["val_score"][best] if with_val else None)
    np.testing.assert_array_equal(params(n), seen[best])


# ---------------------------------------------------------------- state: persistence
def test_reset_and_optimizer_state():
    X, y = problem()
    n = net().fit(X, y, epochs=2, batch_size=3, optimizer="adam")
    st = n.optimizer_state()
    assert set(st) == {"velocity", "square", "step"} and st["step"] == 6
    assert st["velocity"].shape == st["square"].shape == (n.n_params,) and (st["square"] > 0).all()
    assert n.t_ == 2 * M and n.lr_ == 0.1
    n.reset_optimizer()
    st = n.optimizer_state()
    assert st["step"] == 0 and not st["velocity"].any() and not st["square"].any() and n.t_ == 0


@pytest.mark.parametrize("backend", ["loops", "vectorised"])
def test_save_load_continue_with_adam_state(tmp_path, backend):
    X, y = problem(12)
    kw = dict(batch_size=3, optimizer="adamw", weight_decay=0.01, alpha=0.1, schedule="invscaling")
    straight = net(backend).fit(X, y, epochs=4, **kw)
    a = net(backend).fit(X, y, epochs=2, **kw)
    a.save(tmp_path / "m.npz")
    b = MLP.load(tmp_path / "m.npz")
    assert_same_model(a, b)
    assert b.lr_ == a.lr_
    b.fit(X, y, epochs=2, **kw)
    assert_same_model(b, straight)
    # pickles and deep copies carry the state too
    for c in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a)):
        assert_same_model(c, a)
        assert_same_model(c.fit(X, y, epochs=2, **kw), straight)


def test_backend_switch_keeps_the_optimizer_state(tmp_path):
    X, y = problem(13)
    a = net("loops").fit(X, y, epochs=2, batch_size=3, optimizer="adam")
    a.save(tmp_path / "m.npz")
    b = MLP.load(tmp_path / "m.npz", backend="vectorised")
    assert b.backend == "vectorised"
    assert_same_model(a, b)
    a.fit(X, y, epochs=1, batch_size=3, optimizer="adam")
    b.fit(X, y, epochs=1, batch_size=3, optimizer="adam")
    assert_close(params(a), params(b), "float64")


def _as_version_1(src, dst):
    """Rewrite a version-2 file the way version 1 wrote it: no sW/sb arrays, no 'optimizer'."""
    header, arrays = nio.read(src)
    arrays = {k: v for k, v in arrays.items() if not k.startswith(("sW", "sb"))}
    header["version"] = 1
    header.pop("optimizer")
    header["sha256"] = nio._digest(arrays)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(dst, **arrays)
    return dst


def test_version_1_files_still_load(tmp_path):
    X, y = problem(14)
    a = net().fit(X, y, epochs=2, batch_size=3, momentum=0.9)
    a.save(tmp_path / "v2.npz")
    b = MLP.load(_as_version_1(tmp_path / "v2.npz", tmp_path / "v1.npz"))
    assert nio.info(tmp_path / "v1.npz")["format_version"] == 1
    np.testing.assert_array_equal(params(a), params(b))
    np.testing.assert_array_equal(b.optimizer_state()["velocity"], a.optimizer_state()["velocity"])
    assert b.optimizer_state()["step"] == 0 and not b.optimizer_state()["square"].any()
    # sgd's state is its velocity only: training continues exactly
    a.fit(X, y, epochs=1, batch_size=3, momentum=0.9)
    b.fit(X, y, epochs=1, batch_size=3, momentum=0.9)
    np.testing.assert_array_equal(params(a), params(b))


@pytest.mark.parametrize("restore_best", [False, True])
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, restore_best):
    """Checkpoint mid-run, 'kill' (Ctrl-C in epoch 3), then a new object resumes from the file:
    the same weights, Adam state, schedule state and history as a run never interrupted."""
    X, y = problem(15, n=20)
    Xv, yv = problem(16, n=9)
    kw = dict(epochs=6, batch_size=4, optimizer="adam", alpha=0.05, schedule="cosine",
              validation_data=(Xv, yv), restore_best=restore_best, checkpoint=tmp_path / "ck.npz")
    straight = net().fit(X, y, **dict(kw, checkpoint=tmp_path / "other.npz"))

    def kill(n, epoch, hist):
        if epoch == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        net().fit(X, y, callbacks=[kill], **kw)
    resumed = net(seed=99).fit(X, y, resume=True, **kw)
    assert_same_model(resumed, straight)
    assert resumed.best_epoch_ == straight.best_epoch_ and resumed.lr_ == straight.lr_


# ---------------------------------------------------------------- failures restore everything
def test_refit_after_divergence_equals_a_model_that_never_failed():
    X, y = problem(17, n=20)
    failed = net(layers=(5, 4, 3)).fit(X, y, epochs=2, lr=0.05, optimizer="adam", batch_size=4)
    with pytest.raises(DivergenceError):
        failed.fit(X, y, epochs=3, lr=1e308, momentum=0.9, batch_size=4)
    clean = net(layers=(5, 4, 3)).fit(X, y, epochs=2, lr=0.05, optimizer="adam", batch_size=4)
    assert_same_model(failed, clean)
    failed.fit(X, y, epochs=2, lr=0.05, optimizer="adam", batch_size=4)
    clean.fit(X, y, epochs=2, lr=0.05, optimizer="adam", batch_size=4)
    assert_same_model(failed, clean)


def test_refit_after_a_bad_streamed_chunk_equals_a_model_that_never_failed(tmp_path, monkeypatch):
    X, y = problem(18, n=40)
    bad = X.copy()
    bad[33, 1] = np.nan
    monkeypatch.setattr(config, "STREAM_CHUNK_BYTES", 10 * 5 * 8)       # chunks of 10 rows
    paths = {}
    for name, A in (("good", X), ("bad", bad)):
        mm = np.lib.format.open_memmap(tmp_path / f"{name}.npy", "w+", np.float64, A.shape)
        mm[:] = A
        mm.flush()
        paths[name] = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
    kw = dict(batch_size=5, optimizer="adam", shuffle=True)
    failed = net().fit(paths["good"], y, epochs=1, **kw)
    with pytest.raises(ValueError, match="NaN"):
        failed.fit(paths["bad"], y, epochs=1, **kw)
    clean = net().fit(paths["good"], y, epochs=1, **kw)
    assert_same_model(failed, clean)
    failed.fit(paths["good"], y, epochs=2, **kw)
    clean.fit(paths["good"], y, epochs=2, **kw)
    assert_same_model(failed, clean)


@pytest.mark.parametrize("batch_size", [3, 20])
def test_streamed_weighted_training_equals_in_memory(tmp_path, monkeypatch, batch_size):
    """memmap chunks with sample weights and the L2 term: minibatches inside chunks (3) and
    batches larger than a chunk (20, summed piecewise, then one flat update)."""
    X, y = problem(19, n=40)
    sw = np.random.default_rng(0).uniform(0, 2, 40)
    monkeypatch.setattr(config, "STREAM_CHUNK_BYTES", 9 * 5 * 8)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float64, X.shape)
    mm[:] = X
    mm.flush()
    Xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    kw = dict(epochs=2, batch_size=batch_size, optimizer="adam", alpha=0.2, sample_weight=sw, shuffle=False)
    a, b = net().fit(Xm, y, **kw), net().fit(X, y, **kw)
    np.testing.assert_allclose(params(a), params(b), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(a.history_["loss"], b.history_["loss"], rtol=1e-10)
    assert a.optimizer_state()["step"] == b.optimizer_state()["step"]
