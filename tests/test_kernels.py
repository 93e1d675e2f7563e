"""Every loop kernel equals its vectorised twin on small odd shapes (7 samples, 5 -> 3 units),
so a transposed index fails loudly. Outputs are poisoned with NaN first: an element a kernel
forgets to write fails the comparison. Activations, rules and losses are read from nnjit's
tables, so a new entry is tested in every kernel without a new test."""
import numpy as np
import pytest

from nnjit import activations as A, config, forms as F, loops, rules as R, vectorised
from nnjit.layout import make_batch, make_shape
from nnjit.loops import blocked, epoch as E
from helpers import OUTPUT_LOSS, assert_close

M, N_IN, N_OUT = 7, 5, 3
DTYPES = ["float64", "float32"]
RULES = [r.code for r in R.RULES]
CODES = [a.code for a in A.ELEMENTWISE]
TANH, GELU = A.CODES["tanh"], A.CODES["gelu"]
NO_CSR = {dt: loops.empty_csr(dt) for dt in DTYPES}


def hyper(rule, eta=0.3, alpha=0.0, eps_mode="pytorch", mu=0.9):
    """The Hyper of rule with every hyper-parameter it reads set off its default."""
    name = R.BY_CODE[rule].name
    takes = R.BY_CODE[rule].params
    kw = {"momentum": mu if "momentum" in takes else None,
          "betas": (0.8, 0.95) if "betas" in takes else None,
          "eps": 1e-3 if "eps" in takes else None,
          "adam_eps": eps_mode if "adam_eps" in takes else None,
          "weight_decay": 0.02 if "weight_decay" in takes else None,
          "rho": 0.9 if "rho" in takes else None}
    return R.hyper(eta, R.check(name, alpha, **{k: v for k, v in kw.items() if v is not None})[1])


def coefs(rule, t=3, an=0.05, eps_mode="pytorch"):
    """Per-step Coefs of update t with every hyper-parameter on (L2 term an too); the loop
    form's compiled scalars equal the Python ones."""
    h = hyper(rule, eps_mode=eps_mode)
    c = loops.step_coefs(rule, h, t, an)
    assert np.allclose(c, R.coefs(rule, h, t, an), rtol=1e-15)
    return c


def data(dtype, *shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(dtype) for s in shapes]


def poisoned(*shapes, dtype):
    return [np.full(s, np.nan, dtype) for s in shapes]


def both(name, make_args, n_out):
    """Run loops.name and vectorised.name on copies of the same arguments; return outputs."""
    results = []
    for mod in (loops, vectorised):
        args = make_args()
        ret = getattr(mod, name)(*args)
        results.append(([np.array(a, copy=True) for a in args[:n_out]], ret))
    return results


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["exp", "tanh"])
def test_loop_form_exp_and_tanh(name, dtype):
    """The loop form's own e^x and tanh x (vectorisable polynomials, loops/fastmath.py): within
    1.5 ulp of the correctly rounded value over the whole range (long double as the reference;
    subnormal results aside), and the IEEE special cases: overflow to inf, underflow to 0,
    tanh saturating to +-1, NaN stays NaN."""
    fn, ref = {"exp": (loops.exp_row, np.exp), "tanh": (loops.tanh_row, np.tanh)}[name]
    top = {("exp", np.float32): (-110, 95), ("exp", np.float64): (-750, 712)}.get(
        (name, dtype), (-30, 30))
    x = np.concatenate([np.linspace(*top, 400_003), np.linspace(-1, 1, 20_001),
                        np.geomspace(1e-30, 1e-3, 101), -np.geomspace(1e-30, 1e-3, 101),
                        np.linspace(0.6, 0.65, 1001), -np.linspace(0.6, 0.65, 1001)])
    x = x.astype(dtype)
    out = np.empty_like(x)
    fn(out, x)
    with np.errstate(over="ignore", under="ignore"):
        exact = ref(x.astype(np.longdouble))
        rounded = exact.astype(dtype)
    normal = np.isfinite(rounded) & (np.abs(rounded) >= np.finfo(dtype).tiny)
    ulp = np.abs(out[normal] - exact[normal]) / np.spacing(np.abs(rounded[normal]))
    assert ulp.max() <= 1.5, (x[normal][np.argmax(ulp)], ulp.max())
    if name == "exp":
        special = [np.nan, np.inf, -np.inf, 0.0, 1000.0, -1000.0, 20.0, -20.0]
        want = [np.nan, np.inf, 0.0, 1.0, np.inf, 0.0, np.exp(20.0), np.exp(-20.0)]
    else:
        special = [np.nan, np.inf, -np.inf, 0.0, 1000.0, -1000.0, 20.0, -20.0]
        want = [np.nan, 1.0, -1.0, 0.0, 1.0, -1.0, 1.0, -1.0]
    special = np.array(special, dtype)
    got = np.empty_like(special)
    fn(got, special)
    np.testing.assert_allclose(got, np.array(want, dtype), rtol=2 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", CODES + [A.SOFTMAX])
def test_forward_layer(dtype, act):
    a_prev, W, b = data(dtype, (M, N_IN), (N_OUT, N_IN), (N_OUT,))
    (lo, _), (ve, _) = both("forward_layer", lambda: poisoned((M, N_OUT), (M, N_OUT), dtype=dtype)
                            + [a_prev, W, b, act], 2)
    for x, y in zip(lo, ve):
        assert np.isfinite(x).all()
        assert_close(x, y, dtype)
    # the lecture's sum, written out once, as the oracle for the oracle
    z = np.array([[sum(W[j, i] * a_prev[m, i] for i in range(N_IN)) + b[j] for j in range(N_OUT)]
                  for m in range(M)])
    assert_close(lo[0], z, dtype)


def _f_oracle(name, z):
    """Each activation written out once more, in float64, by hand."""
    z = z.astype(float)
    return {"identity": z, "sigmoid": 1 / (1 + np.exp(-z)), "tanh": np.tanh(z),
            "relu": np.where(z > 0, z, 0.0), "leaky_relu": np.where(z > 0, z, 0.01 * z),
            "gelu": 0.5 * z * (1 + np.vectorize(__import__("math").erf)(z / np.sqrt(2))),
            "exp": np.exp(z)}[name]


@pytest.mark.parametrize("act", CODES)
def test_every_activation_equals_its_oracle_and_fprime_is_its_derivative(act):
    """f against a hand-written oracle, and f' against central differences of f, in float64,
    in the loop form, the vectorised form and (simulated) CUDA's device twin."""
    z = np.linspace(-3.1, 2.9, 17)          # no point at 0 (relu's kink)
    name = A.NAMES[act]
    a = vectorised.f(z, act)
    np.testing.assert_allclose(a, _f_oracle(name, z), rtol=1e-14, atol=1e-14)
    out = np.empty_like(z)
    loops.apply_f(out, z, act)
    np.testing.assert_allclose(out, a, rtol=1e-14, atol=1e-15)
    h = 1e-6
    num = (vectorised.f(z + h, act) - vectorised.f(z - h, act)) / (2 * h)
    d = np.ones_like(z)
    loops.mul_fprime(d, z, a, act)
    np.testing.assert_allclose(d, num, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(vectorised.fprime(z, a, act) * np.ones_like(z), num, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", CODES)
def test_fprime_gives_no_denormal_far_out(dtype, act):
    """f' over |z| up to past exp's range computes no denormal (NumPy raises on underflow
    here; every form computes the one table): GELU's z phi(z) underflowed beyond |z| ~ 13.2 in
    float32, on 66 % of a dead GELU layer's units a sample (online Adam: 39-41 us a sample
    against relu's 31). There f' is exactly 1 (z > 0) or 0, and the loop form agrees."""
    top = {np.float32: 120.0, np.float64: 800.0}[np.dtype(dtype).type]
    z = np.concatenate([np.linspace(-top, top, 20_001), np.linspace(-40, 40, 20_001)]).astype(dtype)
    with np.errstate(over="ignore"):            # the exp activation's own e^800
        a = vectorised.f(z, act).astype(dtype)
        with np.errstate(under="raise"):
            want = (vectorised.fprime(z, a, act) * np.ones_like(z)).astype(dtype)
    d = np.ones_like(z)
    loops.mul_fprime(d, z, a, act)                # (which flushes below sqrt(TINY))
    want = np.where(np.abs(want) < np.sqrt(np.finfo(dtype).tiny), 0, want)
    np.testing.assert_allclose(d, want, rtol=1e-5, atol=8 * np.finfo(dtype).eps)   # (1 - a^2 cancels)
    if act == GELU:
        far = np.abs(z) > {np.float32: 14.0, np.float64: 38.0}[np.dtype(dtype).type]
        for got in (want, d):
            np.testing.assert_array_equal(got[far], (z[far] > 0).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", CODES)
def test_backward_layer(dtype, act):
    delta, W, z_prev = data(dtype, (M, N_OUT), (N_OUT, N_IN), (M, N_IN))
    a_prev = vectorised.f(z_prev, act).astype(dtype)
    (lo, _), (ve, _) = both("backward_layer", lambda: poisoned((M, N_IN), dtype=dtype)
                            + [delta, W, z_prev, a_prev, act], 1)
    assert np.isfinite(lo[0]).all()
    assert_close(lo[0], ve[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_corrections(dtype):
    delta, a_prev, W = data(dtype, (M, N_OUT), (M, N_IN), (N_OUT, N_IN))
    (lo, _), (ve, _) = both("corrections", lambda: poisoned((N_OUT, N_IN), (N_OUT,), dtype=dtype)
                            + [delta, a_prev, 1.0 / M, W, 0.25], 2)
    for x, y in zip(lo, ve):
        assert_close(x, y, dtype)
    dw = sum(np.outer(delta[m], a_prev[m]) for m in range(M)) / M + 0.25 * W   # mean + L2 term
    assert_close(lo[0], dw, dtype)
    assert_close(lo[1], delta.mean(axis=0), dtype)                           # biases: no L2


def _rule_oracle(rule, w, v, q, g, c):
    """The rules written out once more, in float64, as the oracle's oracle."""
    w, v, q = w.astype(float), v.astype(float), q.astype(float)
    name = R.BY_CODE[rule].name
    if name == "sgd":
        v = c.mu * v - c.eta * g
        return w + v, v, q
    if name == "nesterov":
        v = c.mu * v - c.eta * g
        return w + c.mu * v - c.eta * g, v, q
    if name == "rmsprop":
        q = c.rho * q + (1 - c.rho) * g * g
        if c.mu > 0:
            v = c.mu * v + g / (np.sqrt(q) + c.eps)
            return w - c.eta * v, v, q
        return w - c.eta * g / (np.sqrt(q) + c.eps), v, q
    v = c.beta1 * v + (1 - c.beta1) * g
    q = c.beta2 * q + (1 - c.beta2) * g * g
    return w * c.decay - c.A * v / (np.sqrt(q) * c.B + c.eps), v, q


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
def test_corrections_update(dtype, rule):
    W, b, vW, vb, delta, a_prev = data(dtype, (N_OUT, N_IN), (N_OUT,), (N_OUT, N_IN), (N_OUT,),
                                       (M, N_OUT), (M, N_IN))
    sW, sb = [np.abs(x) for x in data(dtype, (N_OUT, N_IN), (N_OUT,), seed=5)]
    c = coefs(rule)

    def args():
        return [W.copy(), b.copy(), vW.copy(), vb.copy(), sW.copy(), sb.copy()] + poisoned(
            (N_OUT, N_IN), (N_OUT,), dtype=dtype) + [delta, a_prev, rule, c]
    (lo, _), (ve, _) = both("corrections_update", args, 6)
    for x, y in zip(lo, ve):
        assert_close(x, y, dtype)
    g = delta.T @ a_prev / M + c.alpha_n * W
    w2, v2, q2 = _rule_oracle(rule, W, vW, sW, g, c)
    assert_close(lo[0], w2, dtype)
    assert_close(lo[2], v2, dtype)
    assert_close(lo[4], q2, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
def test_update(dtype, rule):
    theta, vel, grad = data(dtype, (11,), (11,), (11,))
    sq = np.abs(data(dtype, (11,), seed=2)[0])
    c = coefs(rule)
    (lo, _), (ve, _) = both("update", lambda: [theta.copy(), vel.copy(), sq.copy(), grad, rule, c], 3)
    for x, y in zip(lo, ve):
        assert_close(x, y, dtype)
    for x, y in zip(lo, _rule_oracle(rule, theta, vel, sq, grad.astype(float), c)):
        assert_close(x, y, dtype)


def step_min(dtype):
    """The rules' state cut 2^20 TINY in dtype (nnjit.forms.STEP_MIN)."""
    return F.DTYPE_CONSTANTS["STEP_MIN"](np.dtype(dtype))


def denormal_state_case(dtype, rule):
    """A state around the dtype's smallest normal number (TINY) and the rules' cut 2^20 TINY,
    a zero gradient, and what each rule must leave: every state 0 or at least 2^20 TINY."""
    T = np.dtype(dtype).type
    v = np.array([0.5, -0.25, 3.0, -3.0, 0.0, 2.0**20, 1e8], T) * T(np.finfo(T).tiny)
    q = np.abs(v)
    theta = np.linspace(-1, 1, v.size).astype(dtype)
    grad = np.zeros_like(theta)
    c = R.Coefs(*(float(x) for x in (0.01, 0.5, 0.5, 0.5, 1e-8, 0.5, 0.01, 1.0, 1.0, 0.0)))
    return [theta, v, q, grad, rule, c]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
def test_rule_state_never_denormal(dtype, rule):
    """A state that decays while its gradient is 0 (v by mu, Adam's m by beta1) is kept at 0
    once below 2^20 TINY (the smallest normal number), in every form alike: arithmetic on
    denormals costs ~100 cycles an operation (online Adam on mostly-zero inputs ran 3x
    slower), and the next step multiplies the state by mu, beta or the learning rate."""
    tiny = step_min(dtype)
    outs = both("update", lambda: [np.array(a, copy=True) if isinstance(a, np.ndarray) else a
                                   for a in denormal_state_case(dtype, rule)], 3)
    (lo, _), (ve, _) = outs
    for x, y in zip(lo, ve):
        np.testing.assert_array_equal(x, y)
    w, v, q = lo
    kept = [v, q] if "q" in R.BY_CODE[rule].state else [v]
    for state in kept:
        assert not ((state != 0) & (np.abs(state) < tiny)).any(), state
        assert (state[:6] == 0).all() and state[6] != 0   # 2^20 tiny x 0.5 flushed, 1e8 kept


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule,lr,mu", [(r.code, lr, mu) for r in R.RULES for lr in (0.01, 1e-5)
                                        for mu in ((0.9, 0.0) if r.name in ("sgd", "rmsprop")
                                                   else (0.9,))])
def test_a_decaying_state_gives_no_denormal(dtype, rule, lr, mu):
    """States decaying to 0 (gradient 0 for 300 steps, from random normal values) never make a
    step compute a denormal (NumPy raises on underflow here): not in the decays mu v, beta1 m,
    beta2 s, nor in Adam's A m or RMSprop's eta b (A ~ lr). Found on online Adam with sigmoid
    units, where m was kept only above TINY: A m was denormal ~420 times a sample (42 us a
    sample against 31 for relu). All three forms compute the rules from one table."""
    rng = np.random.default_rng(rule)
    tiny = np.finfo(dtype).tiny
    start = (tiny * 2.0**30 * rng.uniform(1, 2, 64) * rng.choice([-1, 1], 64)).astype(dtype)
    theta = rng.normal(size=64).astype(dtype)
    vel, sq = start.copy(), np.abs(start)
    h = hyper(rule, eta=lr, mu=mu)
    with np.errstate(under="raise"):
        for t in range(1, 301):
            vectorised.update(theta, vel, sq, np.zeros(64, dtype), rule, R.coefs(rule, h, t, 0.0))
    for state in (vel, sq):
        assert ((state == 0) | (np.abs(state) >= step_min(dtype))).all()
    if not (R.BY_CODE[rule].name == "rmsprop" and mu == 0):  # (then it keeps no buffer)
        assert (vel == 0).all()                  # the first moment decayed all the way


def tiny_gradient_case(dtype, rule):
    """Gradients around SQ_MIN = 1024 sqrt(TINY) for a rule with a second moment, its state
    at 0, and beta2 = rho = 0.5: 0.5 g^2 is below the state's cut 2^20 TINY = SQ_MIN^2 up to
    g = sqrt(2) SQ_MIN."""
    T = np.dtype(dtype).type
    cut = T(1024 * np.sqrt(np.finfo(dtype).tiny))
    grad = np.array([0.5, -0.99, 1.01, -2.0, 0.0, 3e8, 1.4], T) * cut
    theta = np.linspace(-1, 1, grad.size).astype(dtype)
    c = R.Coefs(*(float(x) for x in (0.01, 0.0, 0.5, 0.5, 1e-8, 0.5, 0.01, 1.0, 1.0, 0.0)))
    return [theta, np.zeros_like(theta), np.zeros_like(theta), grad, rule, c]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", [R.CODES["adam"], R.CODES["rmsprop"]])
def test_second_moment_skips_denormal_squares(dtype, rule):
    """A gradient below SQ_MIN adds nothing to the second moment (its square, times 1 - beta2,
    would be denormal: ~100 cycles an operation); from SQ_MIN up the moment is the rule's,
    kept at 0 below 2^20 TINY like every state, and every form computes the same bits."""
    outs = both("update", lambda: [np.array(a, copy=True) if isinstance(a, np.ndarray) else a
                                   for a in tiny_gradient_case(dtype, rule)], 3)
    (lo, _), (ve, _) = outs
    for x, y in zip(lo, ve):
        np.testing.assert_array_equal(x, y)
    g = tiny_gradient_case(dtype, rule)[3].astype(np.float64)
    q = lo[2]
    assert (q[[0, 1, 2, 4, 6]] == 0).all()
    np.testing.assert_allclose(q[[3, 5]], 0.5 * g[[3, 5]] ** 2, rtol=1e-6)
    assert not ((q != 0) & (q < step_min(dtype))).any()


def flush_cases(dtype):
    """Arguments of forward_layer, backward_layer and output_error whose results fall on both
    sides of the flush threshold sqrt(TINY) (nnjit.activations.flush): sigmoid units with z_mj
    = t_m + c_j around log sqrt(TINY) (exact sums: a_prev's first column holds t, W's first
    column ones, the rest zeros), the recursion's sum 1 into them, and squared-error sigmoid
    outputs, where y = 0 gives delta = a^2 (1 - a). Returns a dict of argument lists (the
    outputs NaN-poisoned) and the threshold."""
    T = np.dtype(dtype).type
    root = T(np.sqrt(np.finfo(dtype).tiny))
    edge = np.floor(np.log(float(root)))                     # float32 -44, float64 -355
    t = (edge + np.array([-40.0, -3.0, -1.0, 0.0, 1.0, 2.0, 45.0])).astype(dtype)   # M = 7
    c = np.array([0.0, -0.5, 0.5], dtype)                                           # 3 units
    a_prev = np.zeros((M, N_IN), dtype)
    a_prev[:, 0] = t
    W = np.zeros((N_OUT, N_IN), dtype)
    W[:, 0] = 1
    z = (t[:, None] + c[None, :]).astype(dtype)
    sig = A.SIGMOID
    a = vectorised.f(z, sig).astype(dtype)
    half = (edge / 2 + np.array([-20.0, -1.0, -0.25, 0.0, 0.25, 1.0, 30.0])).astype(dtype)
    zo = (half[:, None] + c[None, :]).astype(dtype)          # a^2 (1 - a) around sqrt(TINY)
    ao = vectorised.f(zo, sig).astype(dtype)
    y = np.zeros((M, N_OUT), dtype)
    y[-1] = 1
    return {"forward_layer": (poisoned((M, N_OUT), (M, N_OUT), dtype=dtype) + [a_prev, W, c, sig], 2),
            "backward_layer": (poisoned((M, N_OUT), dtype=dtype)
                               + [np.ones((M, N_OUT), dtype), np.eye(N_OUT, dtype=dtype), z, a, sig], 1),
            "output_error": (poisoned((M, N_OUT), dtype=dtype)
                             + [ao, zo, y, np.ones(M, dtype), sig, A.LOSSES["squared_error"]], 1)}, root


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["forward_layer", "backward_layer", "output_error"])
def test_tiny_activations_and_errors_are_flushed(dtype, kernel):
    """Every activation and error the kernels store is 0 or at least sqrt(TINY) in magnitude,
    so no product a_i delta_j, w_jk delta_k or w_ij a_i is ever denormal (~100 cycles an
    operation: online Adam on saturated sigmoids ran 70 instead of 40 us a sample); values
    above the threshold are the equations' own. The same zeros in every form."""
    cases, root = flush_cases(dtype)
    args, n = cases[kernel]
    (lo, _), (ve, _) = both(kernel, lambda: [np.array(x, copy=True) if isinstance(x, np.ndarray)
                                             else x for x in args], n)
    for x, y in zip(lo, ve):
        assert np.isfinite(x).all()
        assert not ((x != 0) & (np.abs(x) < root)).any(), x
        np.testing.assert_array_equal(x == 0, y == 0)
        assert_close(x, y, dtype)
    out = lo[-1].astype(np.float64)                          # a, delta_prev or delta
    if kernel == "forward_layer":
        exact = 1 / (1 + np.exp(-lo[0].astype(np.float64)))
    elif kernel == "backward_layer":
        a = args[-2].astype(np.float64)
        exact = a * (1 - a)
    else:
        a = args[-6].astype(np.float64)
        exact = a * (1 - a) * (a - args[-4])
    below, above = np.abs(exact) < 0.9 * root, np.abs(exact) > 1.1 * root
    assert below.sum() >= 3 and above.sum() >= 3                  # both sides are tested
    assert (out[below] == 0).all()
    np.testing.assert_allclose(out[above], exact[above], rtol=1e-4 if dtype == "float32" else 1e-10)


def test_rmsprop_without_momentum_keeps_no_buffer():
    """RMSprop with momentum 0 is w - eta g / (sqrt(s) + eps): its buffer v is not touched."""
    theta, grad = data("float64", (11,), (11,))
    vel, sq = np.full(11, 7.0), np.abs(data("float64", (11,), seed=2)[0])
    code = R.CODES["rmsprop"]
    c = loops.step_coefs(code, R.hyper(0.1, R.check("rmsprop")[1]), 1, 0.0)
    w = theta.copy()
    loops.update(w, vel, sq, grad, code, c)
    s = 0.99 * np.abs(data("float64", (11,), seed=2)[0]) + 0.01 * grad ** 2
    np.testing.assert_allclose(w, theta - 0.1 * grad / (np.sqrt(s) + 1e-8), rtol=1e-14)
    assert (vel == 7.0).all()


def test_step_coefs_both_eps_placements():
    """PyTorch divides by sqrt(v/(1-b2^t)) + eps with lr/(1-b1^t); scikit-learn uses
    lr_t = lr sqrt(1-b2^t)/(1-b1^t) and divides by sqrt(v) + eps."""
    adam, adamw = R.CODES["adam"], R.CODES["adamw"]
    h = R.hyper(0.01, R.check("adam")[1])
    c = loops.step_coefs(adam, h, 4, 0.0)
    assert c.A == pytest.approx(0.01 / (1 - 0.9 ** 4)) and c.B == pytest.approx((1 - 0.999 ** 4) ** -0.5)
    c = loops.step_coefs(adam, h._replace(eps_mode=R.EPS_MODES["sklearn"]), 4, 0.0)
    assert c.A == pytest.approx(0.01 * np.sqrt(1 - 0.999 ** 4) / (1 - 0.9 ** 4)) and c.B == 1.0
    assert loops.step_coefs(adamw, h._replace(weight_decay=0.5), 1, 0.0).decay == pytest.approx(1 - 0.01 * 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out,loss", OUTPUT_LOSS)
def test_output_error_and_loss(dtype, out, loss):
    act, loss = A.CODES[out], A.LOSSES[loss]
    z, y = data(dtype, (M, N_OUT), (M, N_OUT), seed=3)
    if loss == A.LOSSES["cross_entropy"]:
        y = (y > 0).astype(dtype)
    if loss == A.LOSSES["poisson"]:
        y = np.abs(np.round(y * 2)).astype(dtype)
    a = vectorised.f(z, act).astype(dtype)
    (lo, _), (ve, _) = both("output_error", lambda: poisoned((M, N_OUT), dtype=dtype)
                            + [a, z, y, np.ones(M, dtype), act, loss], 1)
    assert_close(lo[0], ve[0], dtype)
    sw = np.linspace(0.0, 2.0, M).astype(dtype)          # weights, one of them zero
    (lw, _), (vw, _) = both("output_error", lambda: poisoned((M, N_OUT), dtype=dtype)
                            + [a, z, y, sw, act, loss], 1)
    assert_close(lw[0], vw[0], dtype)
    assert_close(lw[0], lo[0] * (sw * M / sw.astype(float).sum())[:, None], dtype)
    (lo, e1), (ve, e2) = both("sample_loss", lambda: poisoned((M,), dtype=dtype)
                              + [a, z, y, act, loss], 1)
    assert_close(lo[0], ve[0], dtype)
    assert_close(e1, e2, dtype)
    assert_close(e1, np.abs(a - y).max(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_loss_is_finite_where_a_saturates(dtype):
    # z = +-200: a rounds to exactly 0 or 1, yet the cost from z stays finite and exact
    z = np.array([[200.0, -200.0], [-200.0, 200.0]], dtype)
    y = np.array([[0.0, 1.0], [0.0, 1.0]], dtype)
    out = np.zeros(2, dtype)
    ce, sig = A.CROSS_ENTROPY, A.SIGMOID
    for mod in (loops, vectorised):
        mod.sample_loss(out, vectorised.f(z, A.SOFTMAX), z, y, A.SOFTMAX, ce)
        assert_close(out, [400.0, 0.0], dtype)
        mod.sample_loss(out, vectorised.f(z, sig), z, y, sig, ce)
        assert_close(out, [400.0, 0.0], dtype)   # 200 + 200: each unit is wrong by z = 200


def test_unknown_codes_raise_in_every_form():
    """A code missing from a table is an error, never another entry's branch."""
    z = np.linspace(-1, 1, 6)
    a = np.empty_like(z)
    w, v, q, g = (np.ones(4) for _ in range(4))
    c = R.coefs(0, R.hyper(0.1, R.check("sgd")[1]), 1, 0.0)
    for call in (lambda: loops.apply_f(a, z, 99), lambda: loops.mul_fprime(a, z, z, 99),
                 lambda: vectorised.f(z, 99), lambda: vectorised.fprime(z, z, 99),
                 lambda: loops.update(w, v, q, g, 99, c), lambda: vectorised.update(w, v, q, g, 99, c),
                 lambda: loops.step_coefs(99, R.hyper(0.1, R.check("sgd")[1]), 1, 0.0),
                 lambda: R.coefs(99, R.hyper(0.1, R.check("sgd")[1]), 1, 0.0)):
        with pytest.raises(ValueError, match="unknown"):
            call()
    Z = np.zeros((2, 3))
    for mod in (loops, vectorised):
        with pytest.raises(ValueError, match="unknown|does not take"):
            mod.sample_loss(np.zeros(2), Z, Z, Z, A.CODES["tanh"], 99)
        with pytest.raises(ValueError, match="unknown|does not take"):     # cross-entropy of tanh
            mod.sample_loss(np.zeros(2), Z, Z, Z, A.CODES["tanh"], A.CROSS_ENTROPY)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_size", [1, 3, 7])
@pytest.mark.parametrize("par_min,par_work", [(2, 10**9), (1, 1)])   # serial and parallel paths
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("tile", [loops.NO_TILES, config.Tiles(4, 4, 2, 2, 4, 2, 1, 0, 0, 0, 0)])  # tiny blocks: remainders
def test_train_epoch(dtype, batch_size, par_min, par_work, rule, tile):
    """The whole compiled epoch equals the vectorised one, batch by batch (7 = 3 + 3 + 1),
    for every rule with momentum, L2 penalty and sample weights (one of them zero) on, with
    and without cache blocking; all five of its sums too."""
    shape, P = make_shape([5, 4, 3], [TANH, A.SOFTMAX])
    rng = np.random.default_rng(1)
    theta = (rng.normal(size=P) * 0.5).astype(dtype)
    X = rng.normal(size=(M, 5)).astype(dtype)
    Y = np.eye(3, dtype=dtype)[rng.integers(0, 3, M)]
    S = rng.uniform(0.2, 2.0, M).astype(dtype)
    S[2] = 0.0
    order = rng.permutation(M).astype(np.int64)
    h = hyper(rule, eta=0.05, alpha=0.1)
    outs = []
    for mod in (loops, vectorised):
        th, vel, sq, grad = theta.copy(), np.zeros(P, dtype), np.zeros(P, dtype), np.zeros(P, dtype)
        step = np.zeros(1, np.int64)
        bufs = make_batch(shape, batch_size, dtype)
        for _ in range(2):
            sums = mod.train_epoch(th, vel, sq, step, grad, shape, bufs, X, Y, S, NO_CSR[dtype],
                                   order, batch_size, rule, h, A.CROSS_ENTROPY, par_min,
                                   par_work, tile)
        outs.append((th, vel, sq, step) + tuple(sums))
    for x, y in zip(*outs):
        assert_close(x, y, dtype)
    n_batches = -(-M // batch_size) - (1 if batch_size == 1 else 0)   # the zero-weight sample
    assert outs[0][3][0] == 2 * n_batches                             # makes no update


def test_epoch_mode():
    """Online fits compile the twin with parallel layers only when a layer is wide enough
    for one (N_l N_{l-1} batch_size >= par_work); batches of par_min or more the tiled one."""
    shape, _ = make_shape([5, 4, 3], [TANH, A.SOFTMAX])
    bufs = make_batch(shape, 4, "float32")
    # widest layer 4 x 5 = 20 weights
    assert loops.epoch_mode(shape, bufs, 1, 2, loops.NO_TILES, 21) == E.ONLINE
    assert loops.epoch_mode(shape, bufs, 1, 2, loops.NO_TILES, 20) == E.ONLINE_WIDE
    assert loops.epoch_mode(shape, bufs, 3, 4, loops.NO_TILES, 61) == E.ONLINE
    assert loops.epoch_mode(shape, bufs, 3, 4, loops.NO_TILES, 60) == E.ONLINE_WIDE
    assert loops.epoch_mode(shape, bufs, 4, 4, loops.NO_TILES, 1) == E.TILED


def test_gemm_from_a_smaller_batch_for_wide_networks(monkeypatch):
    """float32: the GEMM path from tile.gemm_batch samples, and from GEMM_WIDE[0] for a
    network whose widest layer has GEMM_WIDE[1] weights or more; float64 only from
    GEMM_FLOAT64[0] samples and with a widest layer of GEMM_FLOAT64[1]; never where
    tile.gemm_batch is 0; the engine gives such a fit its scratch, and no other."""
    monkeypatch.setattr(config, "GEMM_WIDE", (8, 20))
    monkeypatch.setattr(config, "GEMM_FLOAT64", (100, 20))
    monkeypatch.setattr(config, "FUSED_MAX_WEIGHTS", 0)     # (these would run the fused batch)
    tile = config.tiles()._replace(gemm_batch=64)
    wide, _ = make_shape([5, 4, 3], [TANH, A.SOFTMAX])           # 4 x 5 = 20 weights
    narrow, _ = make_shape([5, 3, 3], [TANH, A.SOFTMAX])         # 15
    f32, f64 = "float32", "float64"
    assert loops.gemm_from(wide.sizes, tile, f32) == 8
    assert loops.gemm_from(narrow.sizes, tile, f32) == 64
    assert loops.gemm_from(wide.sizes, loops.NO_TILES, f32) == 0
    assert loops.gemm_from(wide.sizes, loops.NO_TILES, f64) == 0
    assert loops.gemm_from(wide.sizes, tile._replace(gemm_batch=4), f32) == 4
    assert loops.gemm_from(wide.sizes, tile, f64) == 100
    assert loops.gemm_from(wide.sizes, tile._replace(gemm_batch=200), f64) == 200
    assert loops.gemm_from(narrow.sizes, tile, f64) == 0
    for shape, dt, M, want in ((wide, f32, 8, E.GEMM), (narrow, f32, 8, E.TILED),
                               (wide, f64, 99, E.TILED), (wide, f64, 100, E.GEMM),
                               (narrow, f64, 1000, E.TILED)):
        bufs = make_batch(shape, M, dt, loops.gemm_scratch(shape.sizes, M))
        assert loops.epoch_mode(shape, bufs, M, 4, tile, 1) == want, (shape.sizes, dt, M)
    from nnjit import MLP
    monkeypatch.setattr(config, "GEMM_MIN_BATCH", 64)
    for dt, M, used in ((f32, 8, True), (f32, 7, False), (f64, 64, False), (f64, 100, True)):
        net = MLP([5, 4, 3], seed=0, dtype=dt)
        n = net.engine._buffers(M, train=True).p.shape[0]
        assert n == (loops.gemm_scratch(wide.sizes, M) if used else 0), (dt, M)


# ---------------------------------------------------------------- the fast kernels
# train_epoch runs these; shapes cover full 4 x 4 blocks and every remainder (9 = 4+4+1
# samples, 7 = 4+3 units, 6 = 4+2 units).
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M_,n_in,n_out", [(9, 5, 7), (7, 6, 3), (1, 5, 6), (4, 3, 4)])
@pytest.mark.parametrize("kernel", ["forward_layer_units", "forward_layer_tiled_serial"])
def test_blocked_forward(dtype, M_, n_in, n_out, kernel):
    a_prev, W, b = data(dtype, (M_, n_in), (n_out, n_in), (n_out,))
    z, a = poisoned((M_, n_out), (M_, n_out), dtype=dtype)
    extra = (4, n_out, True) if kernel.endswith("serial") else ()
    getattr(blocked, kernel)(z, a, a_prev, W, b, TANH, *extra)
    z2, a2 = np.empty_like(z), np.empty_like(a)
    vectorised.forward_layer(z2, a2, a_prev, W, b, TANH)
    assert_close(z, z2, dtype)
    assert_close(a, a2, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["update_forward_next", "update_forward_next_serial"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("an", [0.05, 0.0])
def test_update_forward_next(dtype, kernel, rule, an):
    """The online step fused with the next sample's z equals update, then feed-forward
    (an = 0: the rows run rule_row_plain)."""
    W, b, vW, vb, delta, x, x_next = data(dtype, (N_OUT, N_IN), (N_OUT,), (N_OUT, N_IN), (N_OUT,),
                                          (N_OUT,), (N_IN,), (N_IN,))
    sW, sb = [np.abs(x) for x in data(dtype, (N_OUT, N_IN), (N_OUT,), seed=4)]
    c = coefs(rule, an=an)
    got = [W.copy(), b.copy(), vW.copy(), vb.copy(), sW.copy(), sb.copy()]
    z_next, = poisoned((N_OUT,), dtype=dtype)
    getattr(blocked, kernel)(*got, delta, x, x_next, z_next, rule, c)
    want = [W.copy(), b.copy(), vW.copy(), vb.copy(), sW.copy(), sb.copy()]
    vectorised.corrections_update(*want, np.empty_like(W), np.empty_like(b), delta[None], x[None], rule, c)
    z2, a2 = np.empty((1, N_OUT), dtype), np.empty((1, N_OUT), dtype)
    vectorised.forward_layer(z2, a2, x_next[None], want[0], want[1], A.IDENTITY)
    for g, w in zip(got + [z_next], want + [z2[0]]):
        assert_close(g, w, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mu", [0.9, 0.0])
def test_rule_row_plain_is_rule_row_without_l2_bit_for_bit(dtype, rule, mu):
    """The online kernels update a row with rule_row_plain when alpha_n = 0 (no L2
    multiply-add) and with rule_row otherwise (a streamed chunk's last sample, the other
    kernels): the two must give the same bits at alpha_n = 0, signed zeros included (a zero
    gradient times -0 or +0 weights, states at and around the cut, w = +0 and -0)."""
    from numba import njit
    from nnjit.loops.rows import rule_row, rule_row_plain

    @njit
    def both(rule, w, v, q, g, scale, c, w2, v2, q2):
        for j in range(w.shape[0]):
            rule_row(rule, w[j], v[j], q[j], g[j], scale, 0.0, c)
            rule_row_plain(rule, w2[j], v2[j], q2[j], g[j], scale, c)

    T = np.dtype(dtype).type
    rng = np.random.default_rng(3)
    n = 97                  # odd: the vector body and the scalar tail
    cut = step_min(dtype)
    special = np.array([0.0, -0.0, cut, -cut, cut / 2, -cut / 2, 1e-30, -1e-30], T)
    w = rng.normal(size=(6, n)).astype(dtype)
    v = (rng.normal(size=(6, n)) * 1e-3).astype(dtype)
    g = rng.normal(size=(6, n)).astype(dtype)
    for a in (w, v, g):     # every special value in every array, at different places
        a[:, rng.choice(n, 40, replace=False)] = np.resize(special, 40)
    g[4:] = np.where(rng.random((2, n)) < 0.5, T(0.0), T(-0.0))   # rows of zero gradients
    q = np.abs(v)
    c = coefs(rule, an=0.0)._replace(mu=T(mu), rho=T(0.9))
    for scale in (0.5, -0.0, 0.0):
        got = [w.copy(), v.copy(), q.copy()]
        want = [w.copy(), v.copy(), q.copy()]
        both(rule, *want, g, scale, c, *got)
        for x, y in zip(got, want):
            assert np.array_equal(x.view(np.uint8), y.view(np.uint8))
        assert scale == 0 or not np.array_equal(want[0], w)      # (the rows did move)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps_mode", ["pytorch", "sklearn"])
def test_adam_is_adamw_with_decay_one_bit_for_bit(dtype, eps_mode):
    """Adam's step has no decay factor (AdamW's w (1 - eta wd) is a step of its own: one
    broadcast constant less in the loop form's row, which spilled on AVX2). Adam must still be
    AdamW at decay 1 bit for bit, in the loop form and the vectorised form: w * 1 is w for
    every float (signed zeros, infinities, NaNs)."""
    from numba import njit
    from nnjit.forms import specialise
    from nnjit.loops.rows import rule_row, rule_row_plain

    @njit
    def rows(rule, w, v, q, g, c, plain):
        for j in range(w.shape[0]):
            if plain:
                rule_row_plain(rule, w[j], v[j], q[j], g[j], 0.5, c)
            else:
                rule_row(rule, w[j], v[j], q[j], g[j], 0.5, 0.05, c)

    T = np.dtype(dtype).type
    rng = np.random.default_rng(5)
    n = 97
    cut = step_min(dtype)
    special = np.array([0.0, -0.0, cut, -cut, 1e-30, np.inf, -np.inf, np.nan], T)
    w, g = (rng.normal(size=(4, n)).astype(dtype) for _ in range(2))
    v = (rng.normal(size=(4, n)) * 1e-3).astype(dtype)
    for a in (w, v, g):
        a[:, rng.choice(n, 40, replace=False)] = np.resize(special, 40)
    zeros = np.where(rng.random((2, n)) < 0.5, T(0.0), T(-0.0))
    g[2:], v[2:] = zeros, zeros[::-1]           # m = 0: the new w keeps the old one's zero sign
    w[2] = np.resize(special, n)
    w[3] = zeros[0]
    q = np.abs(v)
    adam, adamw = R.CODES["adam"], R.CODES["adamw"]
    c = coefs(adam, eps_mode=eps_mode)
    assert c.decay == 1.0
    for plain in (True, False):
        want = [w.copy(), v.copy(), q.copy()]
        got = [w.copy(), v.copy(), q.copy()]
        rows(adamw, *want, g, c, plain)
        rows(adam, *got, g, c, plain)
        for x, y in zip(got, want):
            assert np.array_equal(x.view(np.uint8), y.view(np.uint8))
        assert not np.array_equal(want[0], w, equal_nan=True)
    cv = R.Coefs(*(T(x) for x in c))
    with np.errstate(invalid="ignore"):         # inf - inf in the rows of specials
        want = specialise(R.BY_CODE[adamw].step, "vectorised", np.dtype(dtype))(w, v, q, g, cv)
        got = specialise(R.BY_CODE[adam].step, "vectorised", np.dtype(dtype))(w, v, q, g, cv)
    for x, y in zip(got, want):
        assert x.dtype == dtype and np.array_equal(x.view(np.uint8), y.view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_in", [1, 7, 8, 13, 33, 64, 129])
@pytest.mark.parametrize("n_out", [1, 5, 9])
def test_fused_and_unfused_forward_are_bit_identical(dtype, n_in, n_out):
    """Online learning computes the next sample's z^(1) inside the update (fused) or, at a
    streamed chunk's start, by feed-forward; both must sum in one fixed order, whatever
    vector width LLVM picks, so streamed training equals in-memory training bit for bit."""
    W, b, vW, vb, delta, x, x_next = data(dtype, (n_out, n_in), (n_out,), (n_out, n_in), (n_out,),
                                          (n_out,), (n_in,), (n_in,), seed=n_in)
    sW, sb = np.zeros_like(W), np.zeros_like(b)
    sgd = R.CODES["sgd"]
    c = coefs(sgd)
    for kernel in (blocked.update_forward_next, blocked.update_forward_next_serial):
        p = [W.copy(), b.copy(), vW.copy(), vb.copy(), sW.copy(), sb.copy()]
        z_fused = np.full(n_out, np.nan, dtype)
        kernel(*p, delta, x, x_next, z_fused, sgd, c)
        for fwd, extra in ((blocked.forward_layer_units, ()),
                           (blocked.forward_layer_tiled_serial, (4, n_out, True))):
            z, a = np.full((1, n_out), np.nan, dtype), np.empty((1, n_out), dtype)
            fwd(z, a, x_next[None], p[0], p[1], A.IDENTITY, *extra)
            np.testing.assert_array_equal(z[0], z_fused)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 7, 15, 16, 17, 63, 64, 65, 129, 200, 784])
def test_simd_dot_is_its_documented_order(dtype, n):
    """nnjit.loops.simd.dot sums in the order its docstring states (dot_model, NumPy), bit
    for bit, for lengths around every block edge, contiguous or strided (a strided row is
    gathered into the same vectors), and x longer than w."""
    from numba import njit
    from nnjit.loops.simd import dot, dot_model

    @njit
    def call(w, x):
        return dot(w, x)
    rng = np.random.default_rng(n)
    w, x = (rng.normal(size=n).astype(dtype) for _ in range(2))
    want = dot_model(w, x)
    assert want.dtype == dtype
    assert call(w, x) == want
    wide = np.repeat(x, 3)[::3]                           # strided view, same values
    assert call(w, wide) == want and call(w[::-1].copy()[::-1], wide) == want
    assert call(w, np.concatenate([x, [np.nan]]).astype(dtype)) == want
    if n:
        tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
        np.testing.assert_allclose(want, w.astype(np.float64) @ x, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_simd_dot_keeps_its_order_inside_fast_math_callers(dtype):
    """The kernels that call dot are compiled with nnjit.config.FASTMATH (reassoc, contract):
    the dot's order must hold there too (its sums were contracted into fused multiply-adds
    inside them: 143 of 200 float32 dots off dot_model)."""
    from numba import njit
    from nnjit.config import FASTMATH
    from nnjit.loops.simd import dot, dot_model

    @njit(fastmath=FASTMATH, error_model="numpy")
    def call(w, x):
        return dot(w, x)
    rng = np.random.default_rng(5)
    for n in (0, 1, 17, 64, 65, 129, 200, 784):
        for _ in range(20):
            w, x = (rng.normal(size=n).astype(dtype) for _ in range(2))
            d = call(w, x)
            assert d == dot_model(w, x), n
            assert call(w, np.repeat(x, 3)[::3]) == d         # a strided x: the same sums


def test_fixed_sum_sums_in_order():
    """nnjit.loops.sparse.fixed_sum (a sparse fit's ||W^(1)||^2 from its rows' squares) adds
    in the order i = 0..n-1, as it says: compiled with reassoc it was summed in vectors."""
    from nnjit.loops.sparse import fixed_sum
    rng = np.random.default_rng(3)
    for n in (0, 1, 7, 64, 1001):
        v = rng.random(n) * 10.0 ** rng.integers(-8, 8, n)
        s = 0.0
        for x in v:
            s += x
        assert fixed_sum(v) == s, n


def test_simd_dot_is_packed_arithmetic():
    """The dot's products and sums compile to packed float32 instructions (the reason it is
    written in LLVM IR): a scalar dot was most of an online step."""
    import re
    from numba import njit
    from nnjit.loops.simd import dot

    @njit(nogil=True, error_model="numpy")
    def call(w, x):
        return dot(w, x)
    call(np.zeros(100, np.float32), np.zeros(100, np.float32))
    asm = "\n".join(call.inspect_asm().values())
    assert re.search(r"\bv?mulps\b", asm) and re.search(r"\bv?addps\b", asm)
    assert not re.search(r"\bv?fmadd\w*ps\b", asm), "a contracted product changes the sum's bits"


# ---------------------------------------------------------------- the cache-blocked kernels
# Blocks smaller than the shapes leave a remainder in every blocked dimension: 13 samples in
# chunks of 8 (8 + 5, whose 4-groups leave 1), 11 inputs in column blocks of 4 (4 + 4 + 3),
# 10 units in blocks of 4 or 8 (a 4-group + 2 left over). Block sizes as wide as the layer
# (and mc = 4, or 1 for the error recursion) are the register-blocked loops.
TILED_SHAPES = [(13, 11, 10), (9, 5, 7), (1, 6, 9), (8, 12, 8)]
TILES = [(8, 4), (4, 8), (12, 1000), (4, 1000)]


# serial: the parallel kernel without its region (a small layer's), and the serial twin
PAR_SERIAL = [("{}", False), ("{}", True), ("{}_serial", True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M_,n_in,n_out", TILED_SHAPES)
@pytest.mark.parametrize("mc,nc", TILES)
@pytest.mark.parametrize("kernel,serial", [(k.format("forward_layer_tiled"), s)
                                           for k, s in PAR_SERIAL])
def test_tiled_forward(dtype, M_, n_in, n_out, mc, nc, kernel, serial):
    a_prev, W, b = data(dtype, (M_, n_in), (n_out, n_in), (n_out,))
    z, a = poisoned((M_, n_out), (M_, n_out), dtype=dtype)
    getattr(blocked, kernel)(z, a, a_prev, W, b, TANH, mc, nc, serial)
    z2, a2 = np.empty_like(z), np.empty_like(a)
    vectorised.forward_layer(z2, a2, a_prev, W, b, TANH)
    assert_close(z, z2, dtype)
    assert_close(a, a2, dtype)
    z3, a3 = poisoned((M_, n_out), (M_, n_out), dtype=dtype)   # same sums, same order
    blocked.forward_layer_tiled(z3, a3, a_prev, W, b, TANH, 4, n_out, False)
    np.testing.assert_array_equal(z, z3)
    np.testing.assert_array_equal(a, a3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M_,n_in,n_out", TILED_SHAPES)
@pytest.mark.parametrize("mc,nc", [(3, 4), (8, 5), (1, 1000), (5, 1)])
@pytest.mark.parametrize("kernel,serial", [(k.format("backward_layer_tiled"), s)
                                           for k, s in PAR_SERIAL])
def test_tiled_backward(dtype, M_, n_in, n_out, mc, nc, kernel, serial):
    delta, W, z_prev = data(dtype, (M_, n_out), (n_out, n_in), (M_, n_in))
    a_prev = vectorised.f(z_prev, GELU).astype(dtype)
    d, = poisoned((M_, n_in), dtype=dtype)
    getattr(blocked, kernel)(d, delta, W, z_prev, a_prev, GELU, mc, nc, serial)
    d2 = np.empty_like(d)
    vectorised.backward_layer(d2, delta, W, z_prev, a_prev, GELU)
    assert_close(d, d2, dtype)
    d3, = poisoned((M_, n_in), dtype=dtype)
    blocked.backward_layer_tiled(d3, delta, W, z_prev, a_prev, GELU, 4, n_in, False)
    np.testing.assert_array_equal(d, d3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M_,n_in,n_out", TILED_SHAPES)
@pytest.mark.parametrize("ju,ic", [(4, 4), (8, 3), (4, 1000)])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("kernel,serial", [(k.format("corrections_update_tiled"), s)
                                           for k, s in PAR_SERIAL])
def test_tiled_corrections_update(dtype, M_, n_in, n_out, ju, ic, rule, kernel, serial):
    W, b, vW, vb, delta, a_prev = data(dtype, (n_out, n_in), (n_out,), (n_out, n_in), (n_out,),
                                       (M_, n_out), (M_, n_in))
    sW, sb = [np.abs(x) for x in data(dtype, (n_out, n_in), (n_out,), seed=4)]
    c = coefs(rule)
    outs = []
    for fn, extra in ((getattr(blocked, kernel), (ju, ic, serial)),
                      (blocked.corrections_update_tiled, (4, n_in, False)),
                      (vectorised.corrections_update, ())):
        args = [W.copy(), b.copy(), vW.copy(), vb.copy(), sW.copy(), sb.copy()] + poisoned(
            (n_out, n_in), (n_out,), dtype=dtype)
        fn(*args, delta, a_prev, rule, c, *extra)
        outs.append([args[0], args[1], args[2], args[3], args[4], args[5], args[7]])  # dW is scratch
    for x, y, ref in zip(*outs):
        assert np.isfinite(x).all()
        np.testing.assert_array_equal(x, y)
        assert_close(x, ref, dtype)


@pytest.mark.parametrize("name,args", [
    ("backward_rows4_range", lambda z: (z((8, 40)), z((8, 12)), z((12, 40)), 0, 3, 37)),
    ("corr_rows_range", lambda z: (z((12, 40)), z((12,)), z((8, 12)), z((8, 40)), 0, 4, 3, 37, True)),
    ("dot_rows_range", lambda z: (z((8, 12)), z((8, 40)), z((12, 40)), z((12,)), 0, 4, 0, 12)),
])
def test_hot_loops_are_vectorised(name, args):
    """The fast kernels' inner loops compile to packed float32 arithmetic (SIMD): a scalar
    loop (a wraparound check or a dependency that blocks LLVM) would still pass the value
    tests but run several times slower. Compiled afresh (no cache) to read the assembly."""
    import re
    from numba import njit
    from nnjit.loops.views import OPTS
    fn = njit(**OPTS)(getattr(blocked, name).py_func)
    a = args(lambda s: np.zeros(s, np.float32))
    fn(*a)
    asm = "\n".join(fn.inspect_asm().values())
    assert re.search(r"\bv?(fmadd\d*|mul|add)ps\b", asm), f"{name}: no packed float32 instruction"


# ---------------------------------------------------------------- GEMM path
# Shapes with a remainder in every blocked dimension: samples not a multiple of the micro-kernel's rows (3; 12 or 8 on AVX-512) or of
# mc, widths not a multiple of NR = 32 (37, 35) or below one panel (5), k not a multiple of kc.
# (50, 37, 10): an output layer narrower than a panel (tiled loops inside the GEMM kernels,
# 10 = 4 + 4 + 2 units); (50, 10, 37): a recursion to a layer narrower than a panel.
GEMM_SHAPES = [(7, 37, 35), (50, 70, 33), (4, 5, 3), (64, 64, 96), (50, 37, 10), (50, 10, 37)]
GEMM_BLOCKS = [(3, 5, 3), (6, 256, 48), (48, 16, 6)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M_,n_in,n_out", GEMM_SHAPES)
@pytest.mark.parametrize("mc,kc,ju", GEMM_BLOCKS)
@pytest.mark.parametrize("act", [TANH, A.SOFTMAX])
def test_gemm_forward(dtype, M_, n_in, n_out, mc, kc, ju, act):
    """Against the vectorised form; and the same bits with other blocks, which cut a batch
    into other chunks of samples and groups of panels (panel_groups: few chunks, more groups;
    softmax rows are never cut)."""
    a_prev, W, b = data(dtype, (M_, n_in), (n_out, n_in), (n_out,))
    z, a = poisoned((M_, n_out), (M_, n_out), dtype=dtype)
    P, = poisoned((loops.gemm_need(n_out, n_in, M_, False),), dtype=dtype)  # exactly enough
    loops.forward_layer_gemm(z, a, a_prev, W, b, act, P, mc, kc)
    z2, a2 = np.empty_like(z), np.empty_like(a)
    vectorised.forward_layer(z2, a2, a_prev, W, b, act)
    assert_close(z, z2, dtype)
    assert_close(a, a2, dtype)
    z3, a3 = poisoned((M_, n_out), (M_, n_out), dtype=dtype)   # blocks do not change a sum
    loops.forward_layer_gemm(z3, a3, a_prev, W, b, act, P, 3, 1000)
    np.testing.assert_array_equal(z, z3)
    np.testing.assert_array_equal(a, a3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M_,n_in,n_out", GEMM_SHAPES)
@pytest.mark.parametrize("mc,kc,ju", GEMM_BLOCKS)
def test_gemm_backward(dtype, M_, n_in, n_out, mc, kc, ju):
    delta, W, z_prev = data(dtype, (M_, n_out), (n_out, n_in), (M_, n_in))
    a_prev = vectorised.f(z_prev, A.CODES['gelu']).astype(dtype)
    d, P = poisoned((M_, n_in), (loops.gemm_need(n_out, n_in, M_, True),), dtype=dtype)
    loops.backward_layer_gemm(d, delta, W, z_prev, a_prev, GELU, P, mc, kc)
    d2 = np.empty_like(d)
    vectorised.backward_layer(d2, delta, W, z_prev, a_prev, GELU)
    assert_close(d, d2, dtype)
    d3, = poisoned((M_, n_in), dtype=dtype)
    loops.backward_layer_gemm(d3, delta, W, z_prev, a_prev, GELU, P, 3, 1000)
    np.testing.assert_array_equal(d, d3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M_,n_in,n_out", GEMM_SHAPES)
@pytest.mark.parametrize("mc,kc,ju", GEMM_BLOCKS)
@pytest.mark.parametrize("rule", RULES)
def test_gemm_corrections_update(dtype, M_, n_in, n_out, mc, kc, ju, rule):
    W, b, vW, vb, delta, a_prev = data(dtype, (n_out, n_in), (n_out,), (n_out, n_in), (n_out,),
                                       (M_, n_out), (M_, n_in))
    sW, sb = [np.abs(x) for x in data(dtype, (n_out, n_in), (n_out,), seed=4)]
    c = coefs(rule)
    outs = []
    for fn, extra in ((loops.corrections_update_gemm, "gemm"), (loops.corrections_update_gemm, "one"),
                      (vectorised.corrections_update, ())):
        args = [W.copy(), b.copy(), vW.copy(), vb.copy(), sW.copy(), sb.copy()] + poisoned(
            (n_out, n_in), (n_out,), dtype=dtype)
        if extra:
            P, = poisoned((loops.gemm_need(n_out, n_in, M_, True),), dtype=dtype)
            fn(*args, delta, a_prev, rule, c, P, *((ju, kc) if extra == "gemm" else (3, 1000)))
        else:
            fn(*args, delta, a_prev, rule, c)
        outs.append([args[0], args[1], args[2], args[3], args[4], args[5], args[7]])
    for x, y, ref in zip(*outs):
        assert np.isfinite(x).all()
        np.testing.assert_array_equal(x, y)        # blocks and threads do not change a sum
        assert_close(x, ref, dtype)


@pytest.mark.parametrize("n,size,mr", [(256, 48, 3), (1024, 48, 3), (50, 6, 3), (7, 3, 3),
                                        (5, 48, 3), (1000, 24, 12), (3, 1, 3), (40, 9, 4)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_gemm_balanced_pieces(n, size, mr, threads):
    """The parallel steps of the GEMM kernels cover 0..n-1 once, in order, in whole groups of
    mr (but the last), no piece more than one group larger than another; more than one piece
    is a multiple of the thread count, so Numba's equal runs of steps give every thread the
    same work (256 samples in pieces of exactly 48 left one of two threads 3 x 48, the other
    2 x 48 + 16). The thread count comes from Numba in the kernel: set_num_threads(k) below."""
    import numba
    from nnjit.loops import gemm
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        t = numba.get_num_threads()
        k = gemm.balanced(n, size, mr)
    finally:
        numba.set_num_threads(before)
    cuts = [gemm.piece(p, k, n, mr) for p in range(k)]
    assert cuts[0][0] == 0 and cuts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
    sizes = [hi - lo for lo, hi in cuts]
    assert min(sizes) > 0 and all(lo % mr == 0 for lo, _ in cuts)
    assert max(sizes) - min(sizes) <= mr
    groups = -(-n // mr)
    assert k == 1 or k % t == 0 or k == groups
    assert k >= min(-(-n // size), groups)


@pytest.mark.parametrize("M_,n_in,n_out", [(50, 37, 35), (256, 70, 40), (7, 37, 35)])
def test_gemm_kernels_equal_across_thread_counts(M_, n_in, n_out):
    """The GEMM kernels cut a batch (feed-forward, recursion) or a layer's units
    (corrections) into as many pieces as the threads need: the results are the same bits
    with 1, 2 or 3 threads (every sum still runs k = 0..K-1 in one call)."""
    import numba
    dtype = "float32"
    a_prev, W, b, delta, z_prev, vW, vb = data(dtype, (M_, n_in), (n_out, n_in), (n_out,),
                                               (M_, n_out), (M_, n_in), (n_out, n_in), (n_out,))
    rule, c = R.CODES["adam"], coefs(R.CODES["adam"])
    P, = poisoned((loops.gemm_need(n_out, n_in, M_, True),), dtype=dtype)

    def run():
        z, a, d = poisoned((M_, n_out), (M_, n_out), (M_, n_in), dtype=dtype)
        loops.forward_layer_gemm(z, a, a_prev, W, b, TANH, P, 6, 16)
        loops.backward_layer_gemm(d, delta, W, z_prev, np.tanh(z_prev), TANH, P, 6, 16)
        args = [W.copy(), b.copy(), vW.copy(), vb.copy(), np.zeros_like(W), np.zeros_like(b)
                ] + poisoned((n_out, n_in), (n_out,), dtype=dtype)
        loops.corrections_update_gemm(*args, delta, a_prev, rule, c, P, 6, 16)
        return [z, a, d] + args[:6] + args[7:]     # (dW is the kernel's scratch)
    before = numba.get_num_threads()
    outs = []
    try:
        for t in sorted({1, 2, min(3, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(min(t, numba.config.NUMBA_NUM_THREADS))
            outs.append(run())
    finally:
        numba.set_num_threads(before)
    for other in outs[1:]:
        for x, y in zip(outs[0], other):
            assert np.isfinite(x).all()
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("M_,n_in,n_out", [(50, 37, 10), (9, 31, 31), (6, 3, 2), (4, 40, 1)])
def test_gemm_narrow_layers_equal_the_tiled_kernels(M_, n_in, n_out):
    """A layer narrower than a panel (NR = 32 units) runs the tiled kernels' loops inside
    the GEMM kernels (feed-forward, corrections): the same bits as the tiled kernels,
    whatever the GEMM blocks."""
    dtype = "float32"
    a_prev, W, b, delta = data(dtype, (M_, n_in), (n_out, n_in), (n_out,), (M_, n_out))
    P, = poisoned((loops.gemm_need(n_out, n_in, M_, True),), dtype=dtype)
    outs = []
    for run in (lambda z, a: loops.forward_layer_gemm(z, a, a_prev, W, b, TANH, P, 6, 16),
                lambda z, a: loops.forward_layer_gemm(z, a, a_prev, W, b, TANH, P, 3, 5),
                lambda z, a: loops.forward_layer_tiled(z, a, a_prev, W, b, TANH, 4, n_out,
                                                       False)):
        z, a = poisoned((M_, n_out), (M_, n_out), dtype=dtype)
        run(z, a)
        outs.append((z, a))
    for x in outs[1:]:
        np.testing.assert_array_equal(x[0], outs[0][0])
        np.testing.assert_array_equal(x[1], outs[0][1])
    rule, c = R.CODES['nesterov'], coefs(R.CODES['nesterov'])
    vW, vb = data(dtype, (n_out, n_in), (n_out,), seed=3)
    res = []
    for gemm in (True, False):
        args = [W.copy(), b.copy(), vW.copy(), vb.copy(), np.zeros_like(W), np.zeros_like(b)
                ] + poisoned((n_out, n_in), (n_out,), dtype=dtype)
        if gemm:
            loops.corrections_update_gemm(*args, delta, a_prev, rule, c, P, 24, 16)
        else:
            loops.corrections_update_tiled(*args, delta, a_prev, rule, c, 4, n_in, False)
        res.append(args[:4] + args[7:])
    for x, y in zip(*res):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_size", [7, 25])
@pytest.mark.parametrize("rule", [R.CODES["sgd"], R.CODES["adam"], R.CODES["rmsprop"]])
def test_train_epoch_gemm(dtype, batch_size, rule, monkeypatch):
    """The compiled epoch's GEMM twin (every layer by packed panels: two wider than a panel,
    an output layer of 3 units, a last batch of 50 - 49 or 50 - 25 samples) equals the
    vectorised one (float64 too: the GEMM path from 3 samples whatever the width)."""
    monkeypatch.setattr(config, "GEMM_FLOAT64", (3, 0))
    shape, P = make_shape([37, 35, 33, 3], [TANH, A.SIGMOID, A.SOFTMAX])
    rng = np.random.default_rng(1)
    n = 50
    theta = (rng.normal(size=P) * 0.3).astype(dtype)
    X = rng.normal(size=(n, 37)).astype(dtype)
    Y = np.eye(3, dtype=dtype)[rng.integers(0, 3, n)]
    S = rng.uniform(0.2, 2.0, n).astype(dtype)
    order = rng.permutation(n).astype(np.int64)
    h = hyper(rule, eta=0.05, alpha=0.1)
    tile = config.Tiles(4, 0, 4, 0, 4, 0, 0, 3, 6, 16, 6)       # GEMM from 3 samples, small blocks
    outs = []
    for mod in (loops, vectorised):
        th, vel, sq, grad = theta.copy(), np.zeros(P, dtype), np.zeros(P, dtype), np.zeros(P, dtype)
        step = np.zeros(1, np.int64)
        bufs = make_batch(shape, batch_size, dtype)
        if mod is loops:
            bufs = bufs._replace(p=np.full(loops.gemm_scratch(shape.sizes, batch_size), np.nan,
                                           dtype))
            assert loops.epoch_mode(shape, bufs, batch_size, 2, tile) == E.GEMM
        for _ in range(2):
            sums = mod.train_epoch(th, vel, sq, step, grad, shape, bufs, X, Y, S, NO_CSR[dtype],
                                   order, batch_size, rule, h, A.CROSS_ENTROPY, 2, 10**9, tile)
        outs.append((th, vel, sq, step) + tuple(sums))
    for x, y in zip(*outs):
        if dtype == "float32" and rule != R.CODES["sgd"]:   # g / sqrt(v) magnifies the
            np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-3)   # last bits of tiny g
        else:
            assert_close(x, y, dtype)


#: the fused batch's nets: layers wider than a panel (35, 33: cut panels) and a narrow output
#: layer; a narrow hidden layer (3) between the input and a wide one, one sigmoid output
FUSED_NETS = [([37, 35, 33, 3], [TANH, A.SIGMOID, A.SOFTMAX], A.CROSS_ENTROPY),
              ([5, 3, 40, 1], [A.CODES["relu"], TANH, A.SIGMOID], A.CROSS_ENTROPY),
              ([9, 34, 2], [GELU, A.CODES["identity"]], A.SQUARED_ERROR)]


def _fused_epochs(net, dtype, batch_size, rule, mod, tile, par_work=0, epochs=2, idle=False):
    """Two epochs of mod's compiled epoch on 50 weighted samples in a fixed order (the loop
    form's scratch NaN where no one writes, so padding that leaked into a result shows);
    idle: the first batch's samples weigh 0 (no update from it, its costs still counted)."""
    sizes, acts, loss = net
    shape, P = make_shape(sizes, acts)
    rng = np.random.default_rng(2)
    n = 50
    theta = (rng.normal(size=P) * 0.3).astype(dtype)
    X = rng.normal(size=(n, sizes[0])).astype(dtype)
    K = sizes[-1]
    Y = (np.eye(K, dtype=dtype)[rng.integers(0, K, n)] if K > 1 and loss == A.CROSS_ENTROPY
         else rng.integers(0, 2, (n, K)).astype(dtype) if loss == A.CROSS_ENTROPY
         else rng.normal(size=(n, K)).astype(dtype))
    S = rng.uniform(0.2, 2.0, n).astype(dtype)
    order = rng.permutation(n).astype(np.int64)
    if idle:
        S[order[:batch_size]] = 0.0
    h = hyper(rule, eta=0.05, alpha=0.1)
    th, vel, sq, grad = theta.copy(), np.zeros(P, dtype), np.zeros(P, dtype), np.zeros(P, dtype)
    step = np.zeros(1, np.int64)
    bufs = make_batch(shape, batch_size, dtype)
    if mod is loops:
        bufs = bufs._replace(p=np.full(loops.epoch_scratch(shape.sizes, batch_size, dtype, tile),
                                       np.nan, dtype))
        assert loops.epoch_mode(shape, bufs, batch_size, 2, tile) == E.FUSED
    for _ in range(epochs):
        sums = mod.train_epoch(th, vel, sq, step, grad, shape, bufs, X, Y, S, NO_CSR[dtype],
                               order, batch_size, rule, h, loss, 2, par_work, tile)
    return (th, vel, sq, step) + tuple(sums)


#: the fused batch with one register block a step, 16 terms a pass (K = 33..40 in passes)
#: and up to 3 chunks of samples (a batch of 48: 16, 16, 16)
FUSED_TILE = config.Tiles(4, 0, 4, 0, 4, 0, 0, 0, 0, 16, 0, 1, 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_size", [7, 25, 48])
@pytest.mark.parametrize("rule", [R.CODES["sgd"], R.CODES["adam"], R.CODES["rmsprop"]])
@pytest.mark.parametrize("net", range(len(FUSED_NETS)))
def test_train_epoch_fused(dtype, batch_size, rule, net):
    """The compiled epoch's fused twin (nnjit.loops.fused: every layer of a batch in two
    parallel regions, by packed panels) equals the vectorised epoch: parameters, optimizer
    state, update count and every loss sum, after two epochs with a last batch of 50 - 49,
    50 - 25 or 50 - 48 samples (one chunk of samples, or three), sample weights and the L2
    penalty."""
    outs = [_fused_epochs(FUSED_NETS[net], dtype, batch_size, rule, mod, FUSED_TILE)
            for mod in (loops, vectorised)]
    for x, y in zip(*outs):
        if dtype == "float32" and rule != R.CODES["sgd"]:   # g / sqrt(v) magnifies the
            np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-3)   # last bits of tiny g
        else:
            assert_close(x, y, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_batch_bits_do_not_depend_on_threads_or_passes(dtype):
    """The fused batch gives the same bits on 1 or 2 threads, with or without its parallel
    regions, and whatever the terms a pass of the micro-kernel (kc); batches of 48 (3
    chunks of samples: the chunk count, not the threads, orders the sums) and 2."""
    import numba
    net, rule = FUSED_NETS[0], R.CODES["adam"]
    ref = _fused_epochs(net, dtype, 48, rule, loops, FUSED_TILE)
    runs = [_fused_epochs(net, dtype, 48, rule, loops, FUSED_TILE, par_work=10**9),
            _fused_epochs(net, dtype, 48, rule, loops, FUSED_TILE._replace(gemm_kc=1000))]
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        runs.append(_fused_epochs(net, dtype, 48, rule, loops, FUSED_TILE))
    finally:
        numba.set_num_threads(before)
    for run in runs:
        for x, y in zip(ref, run):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_batch_with_a_batch_of_zero_weights(dtype):
    """A batch whose samples all weigh 0 makes no update in the fused batch either (its costs
    are still summed, its max |a - y| still counted): as the vectorised epoch."""
    outs = [_fused_epochs(FUSED_NETS[1], dtype, 7, R.CODES["adam"], mod, FUSED_TILE, idle=True)
            for mod in (loops, vectorised)]
    assert outs[0][3][0] == 2 * 7       # updates: 8 batches an epoch, the idle one skipped
    for x, y in zip(*outs):
        if dtype == "float32":
            np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-3)
        else:
            assert_close(x, y, dtype)


def test_fused_batch_rejects_a_bad_loss_before_its_region():
    """A loss code the output does not take raises ValueError from the fused batch (checked
    before the parallel region, where an exception would not reach the caller as itself)."""
    with pytest.raises(ValueError, match="loss"):
        _fused_epochs((FUSED_NETS[0][0], FUSED_NETS[0][1], A.POISSON), "float64", 7,
                      R.CODES["sgd"], loops, FUSED_TILE, epochs=1)


def test_epoch_modes_of_small_and_wide_networks():
    """Which batch a fit runs: the fused one for a small dense network at batch 8 or more
    (scikit-learn's defaults on digits), not online, not for a sparse first layer, not for
    784 inputs (config.FUSED_MAX_INPUTS), nor with FUSED_STEP's tile field 0 (NO_TILES)."""
    tile = config.tiles()
    shape, _ = make_shape([64, 100, 10], [A.CODES["relu"], A.SOFTMAX])
    bufs = make_batch(shape, 200, "float64",
                      loops.epoch_scratch(shape.sizes, 200, "float64", tile))
    assert loops.epoch_mode(shape, bufs, 200, 8, tile, 2**16) == E.FUSED
    assert loops.epoch_mode(shape, bufs, 200, 8, tile, 2**16, dense=False) != E.FUSED
    assert loops.epoch_mode(shape, bufs, 1, 8, tile, 2**16) in (E.ONLINE, E.ONLINE_WIDE)
    assert loops.epoch_mode(shape, bufs, 200, 8, E.NO_TILES, 2**16) == E.TILED
    small = make_batch(shape, 200, "float64", 10)       # no room for its scratch
    assert loops.epoch_mode(shape, small, 200, 8, tile, 2**16) == E.TILED
    wide, _ = make_shape([784, 128, 10], [A.CODES["relu"], A.SOFTMAX])
    assert loops.epoch_scratch(wide.sizes, 32, "float32", tile) == 0


def test_fused_chunks_setting(monkeypatch):
    """config.FUSED_CHUNKS: a positive count or a clear error; the scratch grows with it (each
    chunk's corrections apart); an MLP fit with 1, 2 or 4 chunks agrees to rounding (the
    count orders the sums), at batch 64 (4 chunks of 16; 64-100-10 float64 takes the fused
    batch, test_epoch_modes_of_small_and_wide_networks)."""
    from nnjit import MLP
    for bad in (0, -1, 1.5):
        monkeypatch.setattr(config, "FUSED_CHUNKS", bad)
        with pytest.raises(ValueError, match="FUSED_CHUNKS"):
            config.tiles()
    monkeypatch.setattr(config, "FUSED_CHUNKS", 2)
    sizes = [64, 100, 10]
    scratch = [loops.epoch_scratch(sizes, 64, "float64", config.tiles()._replace(fused_chunks=k))
               for k in (1, 2, 4)]
    n_par = 100 * 65 + 10 * 101
    assert scratch[1] - scratch[0] == n_par and scratch[2] - scratch[1] == 2 * n_par
    rng = np.random.default_rng(5)
    X, y = rng.random((192, 64)), rng.integers(0, 10, 192)
    fits = []
    for k in (1, 2, 4):
        monkeypatch.setattr(config, "FUSED_CHUNKS", k)
        net = MLP(sizes, activation="relu", dtype="float64", seed=0)
        net.fit(X, y, epochs=2, batch_size=64, optimizer="adam", lr=1e-2)
        fits.append(np.concatenate([w.ravel() for w in net.weights + net.biases]))
    for other in fits[1:]:
        np.testing.assert_allclose(other, fits[0], rtol=1e-9, atol=1e-12)
    assert any((f != fits[0]).any() for f in fits[1:])     # the setting reaches the kernels


@pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"),
                    reason="reads x86 assembly")
@pytest.mark.parametrize("name", ["block3", "block_wide"])
def test_gemm_micro_kernel_vectorised(name):
    """nnjit.loops.microkernel's blocks compile to a loop of packed float32 multiply-adds
    with their mr x 32 sums in registers: vector FMAs and no scalar ones (block3: SLP on for
    it alone); block_wide in 512-bit registers on a CPU with AVX-512 (LLVM's default there
    is 256)."""
    import re
    from numba import njit
    from nnjit.loops import microkernel as mk
    from nnjit.jit import slp_compile
    from numba.core import config as nconfig
    fn = slp_compile(njit(fastmath=mk._FLAGS, cache=False, nogil=True,
                          error_model="numpy")(getattr(mk, name).py_func))
    mr = 3 if name == "block3" else 12
    u = np.uint64
    C, A_, B = np.zeros(mr * 40, np.float32), np.ones(mr * 64, np.float32), np.ones(64 * 32, np.float32)
    fn(C, u(0), u(40), mr, 32, A_, u(0), u(64), u(1), B, u(0), u(64), False)
    np.testing.assert_array_equal(C.reshape(mr, 40)[:, :32], 64.0)
    assert nconfig.SLP_VECTORIZE == 0                  # switched on for that compile only
    asm = "\n".join(fn.inspect_asm().values())
    assert not re.search(r"vfmadd\w*ss", asm), "scalar multiply-adds in the micro-kernel"
    assert re.search(r"vfmadd\w*ps\s+.*%[yz]mm", asm), "no vector multiply-adds"
    if name == "block_wide" and mk.wide_cpu():
        assert re.search(r"vfmadd\w*ps\s+.*%zmm", asm), "block_wide not in 512-bit registers"


@pytest.mark.parametrize("dtype", DTYPES)
def test_micro_kernels_give_the_same_bits(dtype):
    """block3, block_wide and block_wide_cut (the AVX2 and AVX-512 micro-kernels, the last
    for panels cut by the edge of C: 1 to 4 vectors of sums) sum every element in the same
    order: equal bit for bit on whole and cut blocks, from 0 and going on from C (add), so a
    result does not depend on the CPU's vector width. Each also reads A transposed in place
    (row stride 1, k stride R: delta^T from delta, the fused batch's corrections) to the
    same bits."""
    import numba
    from nnjit.loops import microkernel as mk
    u = np.uint64
    rng = np.random.default_rng(3)
    K, ld, R = 37, 45, 24         # add: whole blocks only (as gemm_rows): 24 = 3, 8, 12 x k
    A_ = rng.normal(size=R * K).astype(dtype)
    AT = np.ascontiguousarray(A_.reshape(R, K).T).ravel()     # (K, R): A's transpose
    B = rng.normal(size=K * 32).astype(dtype)
    C0 = rng.normal(size=R * ld).astype(dtype)
    for nr, nc, add in [(24, 32, False), (24, 32, True), (13, 32, False), (3, 7, False),
                        (1, 32, False), (8, 31, False), (12, 5, False), (7, 8, False),
                        (6, 9, False), (5, 16, False), (13, 17, False), (6, 24, False),
                        (11, 25, False)]:     # block_wide: 1, 2, 3 or 4 vectors of sums
        out = {}
        wide = mk.MR_WIDE[numba.from_dtype(np.dtype(dtype))]
        for name, mr, fn in (("3", 3, mk.block3), ("wide", wide, mk.block_wide),
                             ("cut", wide, mk.block_wide_cut)):
            if name == "cut" and nc == 32:
                continue
            C, CT = C0.copy(), C0.copy()
            for r0 in range(0, nr, mr):     # as gemm_rows calls them: mr rows at a time
                fn(C, u(r0 * ld), u(ld), min(mr, nr - r0), nc, A_, u(r0 * K), u(K), u(1), B, u(0),
                   u(K), add)
                fn(CT, u(r0 * ld), u(ld), min(mr, nr - r0), nc, AT, u(r0), u(1), u(R), B, u(0),
                   u(K), add)
            np.testing.assert_array_equal(CT, C)
            out[name] = C
        np.testing.assert_array_equal(out["3"], out["wide"])
        if nc < 32:
            np.testing.assert_array_equal(out["cut"], out["wide"])
        want = (C0.reshape(R, ld)[:nr, :nc] if add else 0) + (
            A_.reshape(R, K)[:nr].astype(np.float64) @ B.reshape(K, 32)[:, :nc])
        assert_close(out["wide"].reshape(R, ld)[:nr, :nc], want.astype(dtype), dtype)
        np.testing.assert_array_equal(out["wide"].reshape(R, ld)[nr:], C0.reshape(R, ld)[nr:])


def test_micro_kernel_source_is_generated():
    """The written-out kernels of nnjit.loops.microkernel are exactly what source() generates."""
    import inspect
    from nnjit.loops import microkernel as mk
    text = inspect.getsource(mk)
    start = text.index("# ---- generated by source()")
    body = text[text.index("\n", start) + 1:text.index("# ---- end of generated code ----")]
    assert body == mk.source()


def test_a_fit_compiles_each_kernel_once(tmp_path):
    """A first fit (batch 32, the fused batch), a prediction, a fit by the GEMM path (batch
    64), one by the tiled kernels, an online fit with a wide layer (the team: nnjit.loops.team)
    and one at batch 2 (the parallel per-sample kernels) and a sparse fit, float32,
    in a fresh process with an empty Numba cache and no second process compiling beside it:
    every nnjit kernel has one signature. A
    literal argument (a constant 4 or 1 passed on) or an unsigned prange index where a
    signed one is passed elsewhere makes Numba compile a second specialisation: seconds more
    on a first fit. (With a warm cache the callers' machine code is loaded and such a
    duplicate does not show: hence the empty one.)

    And each twin's compile plans (nnjit.loops.epoch.compile_plan: what a second process
    compiles beside a first fit, and what the fitting process compiles before the fused twin;
    compile_fill, what the second one compiles while it would wait; nnjit.loops.team.compile_plan
    for the team)
    name the argument types that fit compiled its kernels with: a wrong type there would
    make a process compile a specialisation nobody loads."""
    import os
    import subprocess
    import sys
    code = """if True:
        import gc
        import numpy as np
        from numba.core.registry import CPUDispatcher
        from nnjit.model import MLP
        rng = np.random.default_rng(0)
        X = rng.normal(size=(40, 6)).astype(np.float32)
        y = rng.integers(0, 3, 40)
        MLP([6, 5, 3], dtype="float32").fit(X, y, epochs=1, batch_size=32).predict(X)
        X, y = np.tile(X, (2, 1)), np.tile(y, 2)      # the fused batch
        MLP([6, 40, 3], dtype="float32").fit(X, y, epochs=1, batch_size=64)
        Xg = rng.normal(size=(80, 600)).astype(np.float32)   # the GEMM path (600 inputs:
        MLP([600, 40, 3], dtype="float32").fit(Xg, y, epochs=1, batch_size=64)  # not fused)
        MLP([600, 5, 3], dtype="float32").fit(Xg, y, epochs=1, batch_size=32)   # tiled
        Xw = rng.normal(size=(4, 300)).astype(np.float32)    # online, 300 x 256 in parallel:
        MLP([300, 256, 3], dtype="float32").fit(Xw, y[:4], epochs=1, batch_size=1)   # a team
        MLP([300, 256, 3], dtype="float32").fit(Xw, y[:4], epochs=1, batch_size=2)   # regions
        import scipy.sparse as sp, warnings
        from nnjit.sklearn import MLPClassifier
        warnings.simplefilter("ignore")
        Xs = sp.random(80, 30, density=0.2, format="csr", random_state=0, dtype=np.float32)
        MLPClassifier((5,), batch_size=32, max_iter=1, dtype="float32").fit(Xs, y)
        from nnjit.loops import epoch
        for mode, first in epoch._EPOCH:
            for d, sig in (epoch.compile_plan(mode, first, "float32")
                           + epoch.compile_plan(mode, first, "float32", own=True)
                           + epoch.compile_fill(mode, first, "float32")[1]):
                assert tuple(sig) in d.overloads, (mode, first, d.py_func.__qualname__, sig,
                                                   list(d.overloads))
        assert len(epoch._EPOCH) == 5, list(epoch._EPOCH)
        from nnjit.loops import team
        assert len(team.team_member.overloads) == 1
        for d, sig in team.compile_plan("float32"):
            assert tuple(sig) in d.overloads, ("team", d.py_func.__qualname__, sig,
                                               list(d.overloads))
        twice = {d.py_func.__qualname__: [str(s) for s in d.signatures] for d in gc.get_objects()
                 if isinstance(d, CPUDispatcher) and (d.py_func.__module__ or "").startswith("nnjit")
                 and len(d.signatures) > 1}
        print(twice)
        """
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NNJIT_COMPILE_WORKER="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "{}", out.stdout
