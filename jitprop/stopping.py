"""Early stopping for :meth:`jitprop.Trainer.fit`."""

import math

import numpy as np

from ._checks import check_float, check_int

__all__ = ["EarlyStopping"]

#: Monitored quantities and whether larger is better.
MONITORS = {"val_loss": False, "val_accuracy": True, "loss": False}


class EarlyStopping:
    """Stop training when a monitored quantity stops improving.

    Pass it to ``Trainer.fit(..., early_stopping=...)``.  After every epoch
    the monitored value counts as an improvement if it beats the best so far
    by more than ``min_delta``; training stops after ``patience`` epochs in a
    row without one.

    Parameters
    ----------
    monitor : {"val_loss", "val_accuracy", "loss"}, default "val_loss"
        ``"val_accuracy"`` is maximised, the losses minimised.  The ``val_``
        quantities need ``validation_data``.
    patience : int >= 1, default 5
    min_delta : float >= 0, default 0
    restore_best : bool, default True
        At the end of ``fit`` (stopped or not), put back the parameters of
        the best epoch (a copy is kept in a buffer allocated once).

    Attributes
    ----------
    best : float
        The best monitored value so far.
    best_epoch, stopped_epoch : int or None
        0-based epoch indices (positions in the history lists); None until set.
    wait : int
        Epochs since the last improvement.
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, restore_best=True):
        if monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {tuple(MONITORS)}, got {monitor!r}")
        self.monitor = monitor
        self.patience = check_int("patience", patience, 1)
        self.min_delta = check_float("min_delta", min_delta, minimum=0.0)
        if not isinstance(restore_best, (bool, np.bool_)):
            raise TypeError(f"restore_best must be a bool, got {restore_best!r}")
        self.restore_best = bool(restore_best)
        self.best_params = None
        self.reset()

    @property
    def maximize(self):
        """Whether larger values of the monitored quantity are better."""
        return MONITORS[self.monitor]

    def reset(self, model=None):
        """Forget the run so far (``fit`` calls it when a run begins); with a
        model and ``restore_best``, allocate the buffer of the best parameters."""
        self.best = -math.inf if self.maximize else math.inf
        self.best_epoch = None
        self.stopped_epoch = None
        self.wait = 0
        if model is not None and self.restore_best:
            if self.best_params is None or self.best_params.shape != model.flat_params.shape \
                    or self.best_params.dtype != model.flat_params.dtype:
                self.best_params = np.empty_like(model.flat_params)

    def _improved(self, value):
        if self.maximize:
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, epoch, value, model):
        """Record epoch ``epoch``'s monitored ``value``; returns True when
        training should stop."""
        value = float(value)
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, int(epoch), 0
            if self.best_params is not None:
                np.copyto(self.best_params, model.flat_params)
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = int(epoch)
            return True
        return False

    def restore(self, model):
        """Put the best epoch's parameters back into ``model`` (with
        ``restore_best`` and once an epoch was recorded); returns whether it did."""
        if not self.restore_best or self.best_epoch is None or self.best_params is None:
            return False
        model.set_params(self.best_params)
        return True

    def state_dict(self):
        """The state (plain values and the best parameters' array) for checkpoints."""
        return {"monitor": self.monitor, "patience": self.patience, "min_delta": self.min_delta,
                "restore_best": self.restore_best, "best": self.best, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch, "wait": self.wait,
                "best_params": None if self.best_epoch is None else self.best_params}

    def load_state_dict(self, state, model=None):
        """Restore what :meth:`state_dict` returned."""
        if state["monitor"] != self.monitor:
            raise ValueError(f"the state monitors {state['monitor']!r}, this EarlyStopping {self.monitor!r}")
        self.reset(model)
        self.patience, self.min_delta = int(state["patience"]), float(state["min_delta"])
        self.best, self.best_epoch = float(state["best"]), state["best_epoch"]
        self.stopped_epoch, self.wait = state["stopped_epoch"], int(state["wait"])
        if state.get("best_params") is not None and self.best_params is not None:
            np.copyto(self.best_params, np.asarray(state["best_params"]))

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, min_delta={self.min_delta}, "
                f"restore_best={self.restore_best})")
