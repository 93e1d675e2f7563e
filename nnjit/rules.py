"""Update rules: each written once, here, and compiled for every form (nnjit.forms); their
hyper-parameters, checks and the learning-rate schedules, chosen in Python.

One table, ``RULES``. A rule is

* ``step(w, v, q, g, c)``: the update of one parameter w with gradient g, given its state v
  (velocity, first moment or momentum buffer, kept in the engine's ``vel``) and q (second
  moment or square average, ``sq``); it returns the new (w, v, q). The loop form calls it per
  element inside its fused correction kernels, the CUDA form as a device function per
  thread, and the vectorised form and the flat ``update`` on whole arrays — the same source;
* ``scalars(h, t)``: the step's per-step scalars (A, B, decay) from the hyper-parameters h
  and the update count t (1 for the first), e.g. Adam's bias corrections;
* its hyper-parameters: the ``Hyper`` fields it reads, with defaults and checks.

A new rule is a new entry: nothing else in nnjit learns its name (fit, the CLI's
``--optimizer`` and ``--rule-param``, Dask, the model file and every form take it from here).

Equations (g = the batch's mean gradient, with the L2 term alpha W / n_batch added):

=========  ===================================================================================
sgd        v <- mu v - eta g ;  w <- w + v   (the lecture's update with heavy-ball momentum)
nesterov   v <- mu v - eta g ;  w <- w + mu v - eta g   (scikit-learn's form; PyTorch's
           b <- mu b + g ; w <- w - eta (g + mu b) is the same update with v = -eta b)
adam       m <- b1 m + (1-b1) g ; s <- b2 s + (1-b2) g^2 ; w <- w - A m / (sqrt(s) B + eps),
           A = eta / (1-b1^t), B = 1/sqrt(1-b2^t) (PyTorch: eps outside sqrt(s_hat)) or
           A = eta sqrt(1-b2^t)/(1-b1^t), B = 1 (scikit-learn: eps outside sqrt(s))
adamw      w <- w (1 - eta wd), then the adam step (PyTorch's decoupled weight decay)
rmsprop    s <- rho s + (1-rho) g^2 ; with momentum mu > 0: b <- mu b + g / (sqrt(s) + eps),
           w <- w - eta b ; else w <- w - eta g / (sqrt(s) + eps)   (PyTorch, centered=False)
=========  ===================================================================================
"""
import math
import numbers
from collections import namedtuple

import numpy as np

from .forms import ONE, SQ_MIN, STEP_MIN, ZERO, sqrt, where

#: every hyper-parameter a rule may read (per epoch; float64). eps_mode: 0 PyTorch's Adam
#: epsilon placement, 1 scikit-learn's.
Hyper = namedtuple("Hyper", "eta mu beta1 beta2 eps rho alpha weight_decay eps_mode")
#: a step's scalars, in the parameters' dtype (coefs): the hyper-parameters a step reads,
#: the per-step A, B, decay, and alpha_n = alpha / n_batch, the L2 term's factor
Coefs = namedtuple("Coefs", "eta mu beta1 beta2 eps rho A B decay alpha_n")

#: one row of the table: the step, its per-step scalars, the hyper-parameters a user sets for
#: it, and the state it keeps ("v", and "q" for rules with a second moment)
Rule = namedtuple("Rule", "code name step scalars params state")


# ---------------------------------------------------------------- the steps
# A state is kept at 0 once it falls below STEP_MIN = 2**20 TINY (float32 1.2e-32, float64
# 2.3e-302; TINY is the smallest normal number): a state that decays geometrically while its
# gradient is 0 (momentum's v by mu, Adam's m by beta1 each step: an input that is mostly 0)
# becomes denormal after a few hundred steps, and every operation on a denormal, or giving
# one, costs ~100 cycles on x86 (online Adam on MNIST-like data ran ~10x slower). The margin
# over TINY is for the products the next steps form: Adam's A m and RMSprop's eta b (A ~ lr,
# down to 2**-20 ~ 1e-6) and the decays (mu v, beta1 m, beta2 s). Kept at 0 only below TINY,
# an m decaying by beta1 = 0.9 spent ~44 steps between TINY and TINY / A (A = 0.01), each
# giving a denormal A m: online Adam on sigmoid units and half-zero inputs, ~420 a sample
# (784-128-10), ran 42 us a sample against 31 for relu. A CPU's flush-to-zero mode does the
# same, but it is per thread and global; this is part of the rule, so every form and thread
# count computes the same numbers. What is dropped moves a weight by under 2**20 TINY
# (momentum) or A 2**20 TINY / eps (Adam, RMSprop) a step. For the same reason a second moment
# adds the square of a gradient only from SQ_MIN = 1024 sqrt(TINY) up (float32 1.1e-16): a
# saturated unit's gradient of 1e-20 squared is 1e-40, denormal in float32, and computing
# such squares cost online Adam a third of its time. What is dropped is under 2**20 TINY a
# step, whose square root, 1.1e-16, is far below eps (1e-8 by default): the weights move as
# before unless eps is set below ~1e-14.
def sgd(w, v, q, g, c):
    v = c.mu * v - c.eta * g
    v = where(abs(v) < STEP_MIN, ZERO, v)
    return w + v, v, q


def nesterov(w, v, q, g, c):
    v = c.mu * v - c.eta * g
    v = where(abs(v) < STEP_MIN, ZERO, v)
    return w + (c.mu * v - c.eta * g), v, q


def adam(w, m, s, g, c):
    m = c.beta1 * m + (ONE - c.beta1) * g
    m = where(abs(m) < STEP_MIN, ZERO, m)
    gs = where(abs(g) < SQ_MIN, ZERO, g)
    s = c.beta2 * s + (ONE - c.beta2) * gs * gs
    s = where(s < STEP_MIN, ZERO, s)
    return w - c.A * m / (sqrt(s) * c.B + c.eps), m, s


# AdamW's decay is a step of its own rather than Adam's with decay 1 (w * 1 is w: the same
# bits): the loop form's Adam row then holds eleven broadcast constants instead of twelve, and
# with AVX2's sixteen vector registers LLVM had kept six of them on the stack in the online
# team's row (four now), a row bound by the divider (sqrt and division, ~10 cycles a vector)
# where every extra load shortens how far the core can run ahead
def adamw(w, m, s, g, c):
    w, m, s = adam(w * c.decay, m, s, g, c)
    return w, m, s


def rmsprop(w, b, s, g, c):
    gs = where(abs(g) < SQ_MIN, ZERO, g)
    s = c.rho * s + (ONE - c.rho) * gs * gs
    s = where(s < STEP_MIN, ZERO, s)
    step = g / (sqrt(s) + c.eps)
    b = where(c.mu > ZERO, c.mu * b + step, b)      # without momentum: no buffer
    b = where(abs(b) < STEP_MIN, ZERO, b)
    return w - c.eta * where(c.mu > ZERO, b, step), b, s


# ---------------------------------------------------------------- their per-step scalars
def plain_scalars(h, t):
    """(A, B, decay) of a rule without per-step scalars."""
    return h.eta, 1.0, 1.0


def adam_scalars(h, t):
    """Adam's bias corrections at update t: (A, B) by the epsilon placement, decay 1."""
    bc1 = 1.0 - h.beta1 ** t
    bc2 = 1.0 - h.beta2 ** t
    pytorch = h.eps_mode == 0
    A = where(pytorch, h.eta / bc1, h.eta * sqrt(bc2) / bc1)
    B = where(pytorch, 1.0 / sqrt(bc2), 1.0)
    return A, B, 1.0


def adamw_scalars(h, t):
    A, B, _ = adam_scalars(h, t)
    return A, B, 1.0 - h.eta * h.weight_decay


#: name: (default, low, high, low open, high open) of every rule hyper-parameter a user sets
#: by name (eta is fit's lr, alpha its L2 penalty: common to all rules)
PARAMS = {"momentum": (0.0, 0.0, 1.0, False, True),
          "betas": ((0.9, 0.999), 0.0, 1.0, False, True),
          "eps": (1e-8, 0.0, None, True, False),
          "weight_decay": (0.0, 0.0, None, False, False),
          "rho": (0.99, 0.0, 1.0, False, True),
          "adam_eps": ("pytorch", None, None, False, False)}

RULES = (
    Rule(0, "sgd", sgd, plain_scalars, ("momentum",), "v"),
    Rule(1, "nesterov", nesterov, plain_scalars, ("momentum",), "v"),
    Rule(2, "adam", adam, adam_scalars, ("betas", "eps", "adam_eps"), "vq"),
    Rule(3, "adamw", adamw, adamw_scalars, ("betas", "eps", "adam_eps", "weight_decay"), "vq"),
    Rule(4, "rmsprop", rmsprop, plain_scalars, ("rho", "eps", "momentum"), "vq"),
)
CODES = {r.name: r.code for r in RULES}
BY_CODE = {r.code: r for r in RULES}
EPS_MODES = {"pytorch": 0, "sklearn": 1}
RULE_SGD, RULE_NESTEROV, RULE_ADAM = CODES["sgd"], CODES["nesterov"], CODES["adam"]


def coefs_of(code, h, t, alpha_n, scalars):
    """The Coefs of update t (float64) given that rule's (A, B, decay)."""
    A, B, decay = scalars
    return Coefs(h.eta, h.mu, h.beta1, h.beta2, h.eps, h.rho, A, B, decay, alpha_n)


def coefs(code, h, t, alpha_n):
    """The Coefs of update t of rule ``code`` (Python side: the vectorised and CUDA forms,
    Dask's driver, streamed full batches). The loop form compiles the same scalars functions
    into its epoch (nnjit.loops.rows.step_coefs)."""
    if code not in BY_CODE:
        raise ValueError(f"unknown update rule code {code!r}")
    return coefs_of(code, h, t, alpha_n, tuple(float(x) for x in BY_CODE[code].scalars(h, t)))


def zero_coefs(T=float):
    """Coefs of zeros in type T (a kernel that updates nothing still takes one)."""
    return Coefs(*(T(0),) * len(Coefs._fields))


def cast(c, T):
    """c with every field of type T (the parameters' dtype), so a float32 step does float32
    arithmetic (written out: compiled code cannot loop over a namedtuple's fields)."""
    return Coefs(T(c.eta), T(c.mu), T(c.beta1), T(c.beta2), T(c.eps), T(c.rho), T(c.A),
                 T(c.B), T(c.decay), T(c.alpha_n))


# ---------------------------------------------------------------- checks (Python)
def real(name, v, lo=None, hi=None, lo_open=False, hi_open=False):
    """v as a float if it is a finite real number in the range, else ValueError naming it."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {v!r}")
    return float(v)


def _param(name, v):
    default, lo, hi, lo_open, hi_open = PARAMS[name]
    if name == "betas":
        if not isinstance(v, (tuple, list)) or len(v) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {v!r}")
        return tuple(real(f"betas[{i}]", b, lo, hi, lo_open, hi_open) for i, b in enumerate(v))
    if name == "adam_eps":
        if not isinstance(v, str) or v not in EPS_MODES:
            raise ValueError(f"adam_eps must be 'pytorch' or 'sklearn', got {v!r}")
        return v
    return real(name, v, lo, hi, lo_open, hi_open)


def check(optimizer, alpha=0.0, nesterov=False, **params):
    """Validated (rule code, {hyper-parameter: value}) for fit's ``optimizer`` and its
    keyword hyper-parameters; ValueError names the problem (an unknown rule or parameter, a
    value out of range, a parameter the rule does not read set to a non-default value)."""
    if not isinstance(optimizer, str) or optimizer not in CODES:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of "
                         + ", ".join(map(repr, CODES)))
    if not isinstance(nesterov, (bool, np.bool_)):
        raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
    if nesterov:
        if optimizer not in ("sgd", "nesterov"):
            raise ValueError(f"nesterov=True applies to optimizer='sgd', not {optimizer!r}")
        optimizer = "nesterov"
    rule = BY_CODE[CODES[optimizer]]
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ValueError(f"unknown rule hyper-parameter(s) {unknown}; the rules take "
                         f"{sorted(PARAMS)}")
    out = {}
    for name in PARAMS:
        v = params.get(name)
        if v is None:
            out[name] = PARAMS[name][0]
            continue
        out[name] = _param(name, v)
        if name not in rule.params and out[name] != PARAMS[name][0]:
            hint = ("; weight_decay is AdamW's decoupled decay (optimizer='adamw'); for an L2 "
                    "penalty on any optimizer use alpha" if name == "weight_decay" else "")
            raise ValueError(f"{name}={v!r} is not a hyper-parameter of optimizer "
                             f"{optimizer!r} (it takes {', '.join(rule.params)}){hint}")
    if rule.name == "nesterov" and out["momentum"] == 0:
        raise ValueError("Nesterov momentum needs momentum > 0 (as in PyTorch and scikit-learn)")
    out["alpha"] = real("alpha", alpha, 0)
    return rule.code, out


def hyper(eta, params):
    """The float64 Hyper of an epoch with learning rate eta and check()'s parameters."""
    b1, b2 = params["betas"]
    return Hyper(float(eta), float(params["momentum"]), float(b1), float(b2),
                 float(params["eps"]), float(params["rho"]), float(params["alpha"]),
                 float(params["weight_decay"]), int(EPS_MODES[params["adam_eps"]]))


# ---------------------------------------------------------------- learning-rate schedules
SCHEDULES = ("constant", "invscaling", "adaptive", "step", "cosine")
_SCHEDULE_KEYS = {"constant": {}, "invscaling": {"power_t": 0.5},
                  "adaptive": {"factor": 5.0, "min_lr": 1e-6},
                  "step": {"step_size": None, "gamma": 0.1},
                  "cosine": {"t_max": None, "eta_min": 0.0}}


def check_schedule(schedule, params):
    """(name, params dict with defaults filled); ValueError for unknown names or keys."""
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of "
                         + ", ".join(map(repr, SCHEDULES)))
    if params is not None and not isinstance(params, dict):
        raise TypeError(f"schedule_params must be a dict or None, got {type(params).__name__}")
    out = dict(_SCHEDULE_KEYS[schedule])
    extra = set(params or {}) - set(out)
    if extra:
        raise ValueError(f"schedule {schedule!r} takes no parameter(s) {sorted(extra)}; "
                         f"it takes {sorted(out) or 'none'}")
    out.update(params or {})
    if schedule == "invscaling":
        out["power_t"] = real("power_t", out["power_t"], 0)
    elif schedule == "adaptive":
        out["factor"] = real("factor", out["factor"], 1, lo_open=True)
        out["min_lr"] = real("min_lr", out["min_lr"], 0)
    elif schedule == "step":
        s = out["step_size"]
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s <= 0:
            raise ValueError(f"schedule 'step' needs schedule_params={{'step_size': positive int}}, got {s!r}")
        out["step_size"] = int(s)
        out["gamma"] = real("gamma", out["gamma"], 0, lo_open=True)
    elif schedule == "cosine":
        t = out["t_max"]
        if t is not None and (isinstance(t, bool) or not isinstance(t, numbers.Integral) or t <= 0):
            raise ValueError(f"t_max must be a positive int or None, got {t!r}")
        out["eta_min"] = real("eta_min", out["eta_min"], 0)
    return schedule, out


def scheduled_lr(schedule, p, lr0, epoch, t, t_max):
    """The closed-form lr of epoch ``epoch`` (counted from the fit's start) after t samples:
    invscaling lr0/(t+1)^power_t (scikit-learn), step lr0 gamma^(epoch // step_size)
    (PyTorch StepLR), cosine eta_min + (lr0 - eta_min)(1 + cos(pi epoch/T))/2 (PyTorch
    CosineAnnealingLR). "constant" and "adaptive" return lr0 (adaptive is stateful: the
    training loop divides it)."""
    if schedule == "invscaling":
        return lr0 / (t + 1) ** p["power_t"]
    if schedule == "step":
        return lr0 * p["gamma"] ** (epoch // p["step_size"])
    if schedule == "cosine":
        T = p["t_max"] or t_max
        return p["eta_min"] + (lr0 - p["eta_min"]) * (1 + math.cos(math.pi * epoch / T)) / 2
    return lr0
