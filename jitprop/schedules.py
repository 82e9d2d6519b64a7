"""Learning-rate schedules with the signatures and arithmetic of
``torch.optim.lr_scheduler``: :class:`StepLR`, :class:`CosineAnnealingLR`,
:class:`LinearLR` and :class:`ReduceLROnPlateau`.

A schedule changes ``optimizer.lr``.  Call :meth:`~LRScheduler.step` once per
epoch after that epoch's optimiser steps (``ReduceLROnPlateau.step(metric)``
with the monitored value), or pass the schedule to
``Trainer.fit(..., scheduler=...)``.  Each schedule updates the learning rate
with torch's recursive formulas, so the sequence of learning rates is the one
torch gives, bit for bit.
"""

import math

from ._checks import check_float, check_int
from .optim import Optimizer

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR", "LinearLR", "ReduceLROnPlateau"]


def _check_optimizer(optimizer):
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a jitprop optimiser (SGD, Adam, AdamW), got {type(optimizer).__name__}")
    return optimizer


class LRScheduler:
    """Base class of the epoch schedules (as ``torch.optim.lr_scheduler.LRScheduler``).

    Construction records ``base_lr = optimizer.lr`` and applies the schedule's
    value for epoch 0.  Subclasses implement :meth:`_next_lr` (torch's
    ``get_lr`` for one parameter group) and list their constructor arguments
    in ``_config``.

    Attributes
    ----------
    optimizer : Optimizer
    base_lr : float
    last_epoch : int
        Number of :meth:`step` calls so far.
    last_lr : float
        The learning rate the schedule set last.
    """

    _config = ()

    def __init__(self, optimizer):
        self.optimizer = _check_optimizer(optimizer)
        self.base_lr = optimizer.lr
        self.last_epoch = -1
        self._step_count = 0
        self._initial = True
        self.step()
        self._initial = False

    def _next_lr(self):
        raise NotImplementedError

    def step(self):
        """Advance one epoch and set the optimiser's learning rate."""
        self._step_count += 1
        self.last_epoch += 1
        self.optimizer.lr = self._next_lr()
        self.last_lr = self.optimizer.lr

    def get_last_lr(self):
        """The learning rate set by the last :meth:`step` (a float)."""
        return self.last_lr

    def get_config(self):
        """The constructor's arguments other than the optimiser."""
        return {k: getattr(self, k) for k in self._config}

    def state_dict(self):
        """The schedule's state as plain Python values (JSON-able)."""
        out = {"type": type(self).__name__, "config": self.get_config()}
        out.update({k: getattr(self, k) for k in self._state_keys()})
        return out

    def _state_keys(self):
        return ("base_lr", "last_epoch", "_step_count", "last_lr")

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned, and set the optimiser's
        learning rate to the last one the schedule set."""
        if state.get("type", type(self).__name__) != type(self).__name__:
            raise ValueError(f"the state is of a {state['type']}, not a {type(self).__name__}")
        for k, v in state.get("config", {}).items():
            setattr(self, k, v)
        for k in self._state_keys():
            setattr(self, k, state[k])
        self.optimizer.lr = self.last_lr

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs.

    Parameters
    ----------
    optimizer : Optimizer
    step_size : int >= 1
    gamma : float >= 0, default 0.1
    """

    _config = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = check_int("step_size", step_size, 1)
        self.gamma = check_float("gamma", gamma, minimum=0.0)
        super().__init__(optimizer)

    def _next_lr(self):
        lr = self.optimizer.lr
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return lr
        return lr * self.gamma


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from ``base_lr`` to ``eta_min`` over ``T_max`` epochs
    (and back up over the next ``T_max``, as torch's).

    Parameters
    ----------
    optimizer : Optimizer
    T_max : int >= 1
    eta_min : float >= 0, default 0
    """

    _config = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = check_int("T_max", T_max, 1)
        self.eta_min = check_float("eta_min", eta_min, minimum=0.0)
        super().__init__(optimizer)

    def _next_lr(self):
        lr, e, T, lo = self.optimizer.lr, self.last_epoch, self.T_max, self.eta_min
        if self._initial:
            return lr
        if self._step_count == 1 and e > 0:
            return lo + (self.base_lr - lo) * (1 + math.cos(e * math.pi / T)) / 2
        if (e - 1 - T) % (2 * T) == 0:
            return lr + (self.base_lr - lo) * (1 - math.cos(math.pi / T)) / 2
        return (1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T)) * (lr - lo) + lo


class LinearLR(LRScheduler):
    """Scale the learning rate linearly from ``start_factor * base_lr`` to
    ``end_factor * base_lr`` over ``total_iters`` epochs (a warm-up), then keep it.

    Parameters
    ----------
    optimizer : Optimizer
    start_factor : float in (0, 1], default 1/3
    end_factor : float in [0, 1], default 1
    total_iters : int >= 1, default 5
    """

    _config = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        self.start_factor = check_float("start_factor", start_factor)
        if not 0.0 < self.start_factor <= 1.0:
            raise ValueError(f"start_factor must lie in (0, 1], got {self.start_factor}")
        self.end_factor = check_float("end_factor", end_factor)
        if not 0.0 <= self.end_factor <= 1.0:
            raise ValueError(f"end_factor must lie in [0, 1], got {self.end_factor}")
        self.total_iters = check_int("total_iters", total_iters, 1)
        super().__init__(optimizer)

    def _next_lr(self):
        lr, e = self.optimizer.lr, self.last_epoch
        s, f, n = self.start_factor, self.end_factor, self.total_iters
        if e == 0:
            return lr * s
        if self._initial or e > n:
            return lr
        return lr * (1.0 + (f - s) / (n * s + (e - 1) * (f - s)))


class ReduceLROnPlateau(LRScheduler):
    """Multiply the learning rate by ``factor`` when a metric has not improved
    for more than ``patience`` epochs (as ``torch.optim.lr_scheduler.ReduceLROnPlateau``).

    Parameters
    ----------
    optimizer : Optimizer
    mode : {"min", "max"}, default "min"
    factor : float in [0, 1), default 0.1
    patience : int >= 0, default 10
    threshold : float >= 0, default 1e-4
    threshold_mode : {"rel", "abs"}, default "rel"
    cooldown : int >= 0, default 0
    min_lr : float >= 0, default 0
    eps : float >= 0, default 1e-8
        Changes smaller than this are not applied.

    Call ``step(metric)`` once per epoch.
    """

    _config = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps")

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0.0, eps=1e-8):
        self.optimizer = _check_optimizer(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.mode, self.threshold_mode = mode, threshold_mode
        self.factor = check_float("factor", factor, minimum=0.0)
        if self.factor >= 1.0:
            raise ValueError(f"factor must be < 1, got {self.factor}")
        self.patience = check_int("patience", patience, 0)
        self.threshold = check_float("threshold", threshold, minimum=0.0)
        self.cooldown = check_int("cooldown", cooldown, 0)
        self.min_lr = check_float("min_lr", min_lr, minimum=0.0)
        self.eps = check_float("eps", eps, minimum=0.0)
        self.base_lr = optimizer.lr
        self.last_epoch = 0
        self._step_count = 0
        self.last_lr = optimizer.lr
        self.best = math.inf if mode == "min" else -math.inf
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def _is_better(self, a, best):
        if self.mode == "min":
            return a < best * (1.0 - self.threshold) if self.threshold_mode == "rel" else a < best - self.threshold
        return a > best * (self.threshold + 1.0) if self.threshold_mode == "rel" else a > best + self.threshold

    def step(self, metric):
        """Record one epoch's ``metric`` and reduce the learning rate if it has
        not improved for more than ``patience`` epochs."""
        current = float(metric)
        self._step_count += 1
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown do not count
        if self.num_bad_epochs > self.patience:
            old = self.optimizer.lr
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self.last_lr = self.optimizer.lr

    def _state_keys(self):
        return super()._state_keys() + ("best", "cooldown_counter", "num_bad_epochs")


#: Schedules by class name (checkpoints rebuild them from their state).
SCHEDULES = {c.__name__: c for c in (StepLR, CosineAnnealingLR, LinearLR, ReduceLROnPlateau)}
