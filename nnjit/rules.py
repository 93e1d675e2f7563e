"""Update rules: the codes, the hyper-parameter vector and the schedules, chosen in Python.

A rule is an int code plus a float64 vector ``hyper`` (layout ``H_*`` below) that the
compiled epoch reads; the per-step scalars (Adam's bias corrections, AdamW's decay) are
derived from it and the step count t inside the compiled epoch (``step_coefs`` in each form).
The optimizer state the engine keeps beside theta: ``vel`` (momentum velocity v, or Adam's
first moment m), ``sq`` (Adam's second moment v) and ``step`` (updates made, Adam's t).

Equations (g = the batch's mean gradient, with the L2 term alpha W / n_batch added):

* sgd (the lecture's heavy-ball momentum):  v <- mu v - eta g ;  w <- w + v
* nesterov (scikit-learn's form):           v <- mu v - eta g ;  w <- w + mu v - eta g
  PyTorch's form b <- mu b + g ; w <- w - eta (g + mu b) is the same update with v = -eta b
  (for constant eta).
* adam:  m <- b1 m + (1-b1) g ; v <- b2 v + (1-b2) g^2 ;  w <- w - A m / (sqrt(v) B + eps)
  with A = eta / (1-b1^t), B = 1/sqrt(1-b2^t) (PyTorch: eps outside sqrt(v_hat)) or
  A = eta sqrt(1-b2^t)/(1-b1^t), B = 1 (scikit-learn: eps outside sqrt(v)).
* adamw: w <- w (1 - eta wd), then the adam step (PyTorch's decoupled weight decay).
"""
import math
import numbers

import numpy as np

RULE_SGD, RULE_NESTEROV, RULE_ADAM, RULE_ADAMW = 0, 1, 2, 3
RULES = {"sgd": RULE_SGD, "nesterov": RULE_NESTEROV, "adam": RULE_ADAM, "adamw": RULE_ADAMW}

#: positions in the hyper vector
H_ETA, H_MU, H_BETA1, H_BETA2, H_EPS, H_ALPHA, H_WD, H_EPS_MODE = range(8)
N_HYPER = 8
EPS_MODES = {"pytorch": 0, "sklearn": 1}

SCHEDULES = ("constant", "invscaling", "adaptive", "step", "cosine")
_SCHEDULE_KEYS = {"constant": {}, "invscaling": {"power_t": 0.5},
                  "adaptive": {"factor": 5.0, "min_lr": 1e-6},
                  "step": {"step_size": None, "gamma": 0.1},
                  "cosine": {"t_max": None, "eta_min": 0.0}}


def hyper(eta, mu, betas, eps, alpha, weight_decay, eps_mode):
    """The float64 hyper-parameter vector the kernels read (layout H_*)."""
    h = np.zeros(N_HYPER)
    h[H_ETA], h[H_MU] = eta, mu
    h[H_BETA1], h[H_BETA2] = betas
    h[H_EPS], h[H_ALPHA], h[H_WD] = eps, alpha, weight_decay
    h[H_EPS_MODE] = EPS_MODES[eps_mode]
    return h


def _real(name, v, lo=None, hi=None, lo_open=False, hi_open=False):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {v!r}")
    return float(v)


def check(optimizer, nesterov, momentum, betas, eps, adam_eps, alpha, weight_decay):
    """Validated (rule code, betas, eps, alpha, weight_decay); ValueError names the problem."""
    if not isinstance(optimizer, str) or optimizer not in RULES:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of "
                         + ", ".join(map(repr, RULES)))
    rule = RULES[optimizer]
    if not isinstance(nesterov, (bool, np.bool_)):
        raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
    if rule == RULE_SGD and nesterov:
        rule = RULE_NESTEROV
    if nesterov and rule in (RULE_ADAM, RULE_ADAMW):
        raise ValueError(f"nesterov=True applies to optimizer='sgd', not {optimizer!r}")
    if rule == RULE_NESTEROV and momentum == 0:
        raise ValueError("Nesterov momentum needs momentum > 0 (as in PyTorch and scikit-learn)")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    b1 = _real("betas[0]", betas[0], 0, 1, hi_open=True)
    b2 = _real("betas[1]", betas[1], 0, 1, hi_open=True)
    eps = _real("eps", eps, 0, lo_open=True)
    if not isinstance(adam_eps, str) or adam_eps not in EPS_MODES:
        raise ValueError(f"adam_eps must be 'pytorch' or 'sklearn', got {adam_eps!r}")
    alpha = _real("alpha", alpha, 0)
    weight_decay = _real("weight_decay", weight_decay, 0)
    if weight_decay and rule != RULE_ADAMW:
        raise ValueError("weight_decay is AdamW's decoupled decay (optimizer='adamw'); "
                         "for an L2 penalty on any optimizer use alpha")
    return rule, (b1, b2), eps, alpha, weight_decay


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
        out["power_t"] = _real("power_t", out["power_t"], 0)
    elif schedule == "adaptive":
        out["factor"] = _real("factor", out["factor"], 1, lo_open=True)
        out["min_lr"] = _real("min_lr", out["min_lr"], 0)
    elif schedule == "step":
        s = out["step_size"]
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s <= 0:
            raise ValueError(f"schedule 'step' needs schedule_params={{'step_size': positive int}}, got {s!r}")
        out["step_size"] = int(s)
        out["gamma"] = _real("gamma", out["gamma"], 0, lo_open=True)
    elif schedule == "cosine":
        t = out["t_max"]
        if t is not None and (isinstance(t, bool) or not isinstance(t, numbers.Integral) or t <= 0):
            raise ValueError(f"t_max must be a positive int or None, got {t!r}")
        out["eta_min"] = _real("eta_min", out["eta_min"], 0)
    return schedule, out


def scheduled_lr(schedule, p, lr0, epoch, t, t_max):
    """The closed-form lr of epoch ``epoch`` (counted from the fit's start) after t samples:
    invscaling lr0/(t+1)^power_t (scikit-learn), step lr0 gamma^(epoch // step_size)
    (PyTorch StepLR), cosine eta_min + (lr0 - eta_min)(1 + cos(pi epoch/T))/2 (PyTorch
    CosineAnnealingLR). "constant" and "adaptive" return lr0 (adaptive is stateful: the
    wrapper divides it)."""
    if schedule == "invscaling":
        return lr0 / (t + 1) ** p["power_t"]
    if schedule == "step":
        return lr0 * p["gamma"] ** (epoch // p["step_size"])
    if schedule == "cosine":
        T = p["t_max"] or t_max
        return p["eta_min"] + (lr0 - p["eta_min"]) * (1 + math.cos(math.pi * epoch / T)) / 2
    return lr0


def weight_mask(shape, n_params):
    """1.0 at the flat positions of weights, 0.0 at biases: the L2 term penalises weights only."""
    mask = np.zeros(n_params)
    for l in range(1, len(shape.sizes)):
        n = int(shape.sizes[l] * shape.sizes[l - 1])
        mask[shape.w_off[l - 1]:shape.w_off[l - 1] + n] = 1.0
    return mask
