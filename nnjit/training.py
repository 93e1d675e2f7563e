"""The training loop: epochs, learning-rate schedules, stopping, best weights, divergence and
Ctrl-C, progress and checkpoints, once, for every way nnjit trains.

``MLP.fit`` (in memory or streamed), the scikit-learn estimators' stochastic solvers and
``nnjit.distributed.fit`` all build a :class:`Trainer` and call :meth:`Trainer.run`; what
differs between them is what they plug in:

=================  =====================================  =====================================
piece              MLP.fit / Dask                         scikit-learn estimators
=================  =====================================  =====================================
epoch              the engine's train_epoch (or a         the engine's, in scikit-learn's
                   stream's, or Dask's shards)            batch order
reported loss      sum_m s_m C_m / sum_m s_m + L2 term    each batch's mean loss, weighted by
                                                          its size (scikit-learn's loss_)
stopping           tol over n_iter_no_change epochs       the same, counted scikit-learn's way
                   (>=), error threshold, callbacks       (>), on the validation score
best weights       restore_best: lowest (val) loss        early_stopping: best val score
divergence         restore the epoch's start, raise       go on (the estimator refuses NaN at
                   DivergenceError                        the end, as scikit-learn)
Ctrl-C             restore the epoch's start, save the    warn "Training interrupted by user."
                   checkpoint, re-raise                   and stop
=================  =====================================  =====================================

A record object holds the loop's counters under the names MLP uses (``n_epochs_``, ``t_``,
``lr_``, ``history_``, ``best_epoch_``, ``best_loss_``, ``best_score_``); the MLP is its own
record, the estimators mirror theirs. Not for: building batches or kernels (the engines').
"""
import math
import numbers
import warnings

import numpy as np

from . import rules


class DivergenceError(FloatingPointError):
    """Training produced a NaN/inf loss or weight; the model keeps its last finite weights."""


# ---------------------------------------------------------------- learning rate
class Schedule:
    """The learning rate of each epoch: a float with one of nnjit.rules.SCHEDULES, or a
    callable lr(epoch). "adaptive" is stateful: :meth:`shrink` divides it."""

    def __init__(self, lr, name="constant", params=None, epochs=None):
        self.fn = lr if callable(lr) else None
        self.lr0 = None if callable(lr) else float(lr)
        self.name, self.params, self.epochs = name, params or {}, epochs
        self.adaptive_lr = self.lr0

    def lr(self, epoch, e, t):
        """The lr of global epoch ``epoch``, the e-th of this fit, after t samples."""
        if self.fn is not None:
            eta = self.fn(epoch)
            if not (isinstance(eta, numbers.Real) and eta > 0 and math.isfinite(eta)):
                raise ValueError(f"lr({epoch}) returned {eta!r}; it must be a positive number")
            return float(eta)
        if self.name == "adaptive":
            return self.adaptive_lr
        return rules.scheduled_lr(self.name, self.params, self.lr0, e, t, self.epochs)

    def shrink(self):
        """Adaptive: divide the lr by its factor; False once it is at its minimum (stop)."""
        if self.adaptive_lr <= self.params["min_lr"]:
            return False
        self.adaptive_lr /= self.params["factor"]
        return True

    def get_state(self):
        return {"adaptive_lr": self.adaptive_lr}

    def set_state(self, st):
        if self.name == "adaptive" and st.get("adaptive_lr") is not None:
            self.adaptive_lr = float(st["adaptive_lr"])


# ---------------------------------------------------------------- stopping
class Stopper:
    """When to stop: the monitored metric has not improved by ``tol`` for ``patience`` epochs
    (``strict``: for more than patience, scikit-learn's count), the lecture's error threshold
    (every |a - y| of an epoch below it). ``mode`` "min" monitors a loss, "max" a score. With
    an adaptive schedule a stall shrinks the lr instead, and stops once it cannot (``say``
    receives scikit-learn's messages)."""

    def __init__(self, tol=None, patience=10, mode="min", strict=False, threshold=None,
                 schedule=None, say=None, what="Training loss"):
        self.tol, self.patience, self.mode, self.strict = tol, patience, mode, strict
        self.threshold, self.schedule, self.say, self.what = threshold, schedule, say, what
        self.best = math.inf if mode == "min" else -math.inf
        self.stall = 0

    def after_epoch(self, metric, emax):
        """Whether to stop after an epoch with this metric and max |a - y|."""
        stop = self.threshold is not None and emax < self.threshold
        if self.tol is None:
            return stop
        if self.mode == "min":      # NaN compares False: a NaN metric resets the count
            self.stall = self.stall + 1 if metric > self.best - self.tol else 0
            self.best = min(self.best, metric) if not math.isnan(metric) else self.best
        else:
            self.stall = self.stall + 1 if metric < self.best + self.tol else 0
            self.best = max(self.best, metric) if not math.isnan(metric) else self.best
        stalled = self.stall > self.patience if self.strict else self.stall >= self.patience
        adaptive = self.schedule is not None and self.schedule.name == "adaptive"
        if adaptive and self.stall > self.patience:
            msg = (f"{self.what} did not improve more than tol={self.tol:f} for "
                   f"{self.patience} consecutive epochs.")
            if self.schedule.shrink():
                self._say(msg + " Setting learning rate to %f" % self.schedule.adaptive_lr)
                self.stall = 0
            else:
                self._say(msg + " Learning rate too small. Stopping.")
                stop = True
        elif stalled and not adaptive:
            self._say(f"{self.what} did not improve more than tol={self.tol:f} for "
                      f"{self.patience} consecutive epochs. Stopping.")
            stop = True
        return stop

    def _say(self, msg):
        if self.say is not None:
            self.say(msg)

    def get_state(self):
        return {"best": float(self.best) if math.isfinite(self.best) else None,
                "stall": int(self.stall)}

    def set_state(self, st):
        b = st.get("best")
        self.best = (math.inf if self.mode == "min" else -math.inf) if b is None else float(b)
        self.stall = int(st.get("stall", 0))


class Best:
    """The weights of the best epoch (lowest metric, or highest in "max" mode), put back at
    the end when ``keep``; the record's best_epoch_/best_loss_/best_score_ say which."""

    def __init__(self, record, state, keep, mode="min"):
        self.record, self.state, self.keep, self.mode = record, state, keep, mode
        self.metric = math.inf if mode == "min" else -math.inf
        self.theta = None

    def after_epoch(self, epoch, metric, score):
        better = metric < self.metric if self.mode == "min" else metric > self.metric
        if better:
            self.metric = metric
            r = self.record
            r.best_epoch_, r.best_loss_, r.best_score_ = epoch, float(metric), score
            if self.keep:
                self.theta = self.state.get_params()

    def restore(self):
        if self.keep and self.theta is not None:
            self.state.set_params(self.theta)

    def get_state(self):
        r = self.record
        return {"loss": float(self.metric) if math.isfinite(self.metric) else None,
                "epoch": r.best_epoch_, "best_loss": r.best_loss_, "score": r.best_score_}

    def set_state(self, st, theta):
        m = st.get("loss")
        self.metric = (math.inf if self.mode == "min" else -math.inf) if m is None else float(m)
        self.theta = theta if self.keep else None


class Snapshot:
    """Everything an epoch changes, taken at its start: weights, optimizer state, the
    shuffling generator's state, the record's counters and history lengths. restore() puts
    it back (after a divergence, a bad chunk of streamed data or Ctrl-C mid-epoch), so the
    next epoch is the one a run that never failed would have."""

    def __init__(self, record, state, rng):
        self.record, self.state, self.rng = record, state, rng
        self.theta = state.get_params()
        self.opt = state.get_state()
        self.rng_state = None if rng is None else rng.bit_generator.state
        self.n_epochs, self.t = record.n_epochs_, record.t_
        self.hist = {k: len(v) for k, v in record.history_.items()}

    def restore(self):
        r = self.record
        self.state.set_params(self.theta)
        self.state.set_state(self.opt)
        if self.rng is not None:
            self.rng.bit_generator.state = self.rng_state
        r.n_epochs_, r.t_ = self.n_epochs, self.t
        for k, n in self.hist.items():
            del r.history_[k][n:]


class Progress:
    """The tqdm bar of progress=True."""

    def __init__(self, epochs, desc="fit"):
        try:
            from tqdm.auto import tqdm
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("progress=True needs tqdm: pip install 'nnjit[progress]'") from e
        self.bar = tqdm(total=epochs, desc=desc, unit="epoch", leave=False)

    def update(self, loss, vloss=None, vscore=None):
        post = {"loss": f"{loss:.4g}"}
        if vloss is not None:
            post["val_loss"] = f"{vloss:.4g}"
        if vscore is not None:
            post["val_score"] = f"{vscore:.4g}"
        self.bar.set_postfix(post)
        self.bar.update(1)

    def close(self):
        self.bar.close()


# ---------------------------------------------------------------- the loop
def nnjit_loss(stats, w_total, alpha):
    """MLP.fit's loss of an epoch: sum_m s_m C_m / sum_m s_m plus the L2 terms."""
    return (stats[0] + 0.5 * alpha * stats[1]) / w_total


class Trainer:
    """One training loop.

    epoch(rule, h, loss) -> the five sums of nnjit.loops.train_epoch: runs one epoch of the
    data (it draws its own batch order). state: get/set_params and get/set_state (the engine).
    record: the counters (see the module docstring). rule, params: a rule code and its
    hyper-parameters (nnjit.rules.check); loss: the loss code; n: samples an epoch (t_ grows
    by it); report(stats) -> the epoch's loss. schedule, stopper: a Schedule and a Stopper.
    validate() -> (val loss or None, val score) after an epoch, or None. monitor: "loss" (the
    training loss, or the validation loss when there is one) or "score" (the validation
    score). best: a Best. callbacks: callables cb(epoch) -> True to stop. progress: a
    Progress. checkpoint: an nnjit.io.Checkpoint. threads: nnjit's EpochThreads. snapshot:
    a callable making a Snapshot at each epoch's start (None: no restore). on_divergence:
    "raise" or "continue"; on_interrupt: "raise" or "warn". say: verbose printing."""

    def __init__(self, epoch, state, record, rule, params, loss, n, report, schedule, stopper,
                 validate=None, monitor="loss", best=None, callbacks=(), progress=None,
                 checkpoint=None, threads=None, snapshot=None, on_divergence="raise",
                 on_interrupt="raise", say=None):
        self.epoch_fn, self.state, self.record = epoch, state, record
        self.rule, self.params, self.loss = rule, params, loss
        self.n, self.report = n, report
        self.schedule, self.stopper, self.validate, self.monitor = schedule, stopper, validate, monitor
        self.best, self.callbacks, self.progress = best, list(callbacks), progress
        self.checkpoint, self.threads, self.snapshot = checkpoint, threads, snapshot
        self.on_divergence, self.on_interrupt, self.say = on_divergence, on_interrupt, say
        self.start_epoch = record.n_epochs_
        self.stopped = False

    def fit_state(self):
        """What a checkpoint keeps of the loop (the stopping counters, the schedule, the best
        epoch)."""
        st = {"stopper": dict(self.stopper.get_state(), **self.schedule.get_state())}
        if self.best is not None:
            st["best"] = self.best.get_state()
        return st

    def set_fit_state(self, st, best_theta=None):
        self.stopper.set_state(st.get("stopper", {}))
        self.schedule.set_state(st.get("stopper", {}))
        if self.best is not None:
            self.best.set_state(st.get("best", {}), best_theta)

    def run(self, epochs):
        """Train up to ``epochs`` epochs; returns whether a stopping criterion ended it."""
        rec = self.record
        saved = None
        try:
            for _ in range(epochs):
                if self.threads is not None:
                    self.threads.adjust()
                epoch = rec.n_epochs_
                eta = self.schedule.lr(epoch, epoch - self.start_epoch, rec.t_)
                rec.lr_ = eta
                h = rules.hyper(eta, self.params)
                saved = self.snapshot() if self.snapshot is not None else None
                try:
                    stats = self.epoch_fn(self.rule, h, self.loss)
                    loss = self.report(stats)
                    if self.on_divergence == "raise" and not (
                            math.isfinite(loss) and np.isfinite(self.state.get_params()).all()):
                        raise DivergenceError(
                            f"training diverged in epoch {epoch} (loss {loss}); the weights and "
                            "optimizer state were restored to the last finite values; try a "
                            "smaller lr or momentum")
                except Exception:       # divergence, a bad streamed chunk, an I/O error
                    if saved is not None:
                        saved.restore()
                    raise
                rec.t_ += self.n
                rec.history_["loss"].append(loss)
                if self.say is not None:
                    self.say("Iteration %d, loss = %.8f" % (epoch - self.start_epoch + 1, loss))
                metric, vloss, vscore = loss, None, None
                if self.validate is not None:
                    vloss, vscore = self.validate()
                    if vloss is not None:
                        rec.history_["val_loss"].append(vloss)
                        metric = vloss
                    rec.history_["val_score"].append(vscore)
                    rec.history_["val_epoch"].append(epoch)
                    if self.monitor == "score":
                        metric = vscore
                    if self.say is not None:
                        self.say("Validation score: %f" % vscore)
                rec.n_epochs_ += 1      # the commit point: from here on the epoch is complete
                if self.best is not None:
                    self.best.after_epoch(epoch, metric, vscore)
                if self.progress is not None:
                    self.progress.update(loss, vloss, vscore)
                stop = self.stopper.after_epoch(metric, stats[2])
                if any([bool(cb(epoch)) for cb in self.callbacks]):
                    stop = True
                if self.checkpoint is not None:
                    self.checkpoint.after_epoch(self.fit_state(), stop,
                                                None if self.best is None else self.best.theta)
                if stop:
                    self.stopped = True
                    break
        except KeyboardInterrupt:
            if self.on_interrupt == "warn":
                warnings.warn("Training interrupted by user.")
            else:
                if saved is not None and rec.n_epochs_ == saved.n_epochs:   # mid-epoch
                    saved.restore()
                    if self.checkpoint is not None:
                        self.checkpoint.save(self.fit_state(),
                                             best_theta=None if self.best is None else self.best.theta)
                raise
        finally:
            if self.threads is not None:
                self.threads.restore()
            if self.progress is not None:
                self.progress.close()
        if self.best is not None:
            self.best.restore()
        return self.stopped
