"""Thin Python orchestration around the compiled kernels: epochs, minibatches,
shuffling, SGD steps, history and progress."""

import math
import sys
import time

import numpy as np

from .losses import Loss
from .model import Sequential
from .optim import SGD

__all__ = ["Trainer", "Progress"]


class Progress:
    """A minimal progress bar on stderr (no dependency).

    On a terminal it redraws one line at most ~10 times a second; elsewhere
    (CI logs, files) it prints only the closing line of each epoch.
    """

    def __init__(self, total, desc="", stream=None, width=24):
        self.total = max(int(total), 1)
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0

    def _line(self, done, info):
        frac = min(done / self.total, 1.0)
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        return f"{self.desc} [{bar}] {100 * frac:5.1f}% {info}"

    def update(self, done, info=""):
        if not self.tty:
            return
        now = time.perf_counter()
        if now - self._last < 0.1 and done < self.total:
            return
        self._last = now
        self.stream.write("\r" + self._line(done, info))
        self.stream.flush()

    def close(self, info=""):
        line = self._line(self.total, info)
        self.stream.write(("\r" if self.tty else "") + line + "\n")
        self.stream.flush()


def _as_targets(loss, y, dtype):
    if loss.classification:
        y = np.asarray(y)
        if y.dtype.kind not in "iu":
            if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
                y = y.astype(np.int64)
            else:
                raise TypeError(f"classification targets must be integer class labels, got dtype {y.dtype}")
        return np.ascontiguousarray(y, dtype=np.int64)
    return np.ascontiguousarray(y, dtype=dtype)


def _n_outputs(model):
    """Number of output features of the last layer that has a width, or None."""
    for layer in reversed(model.layers):
        for attr in ("n_out", "n_hidden"):
            if hasattr(layer, attr):
                return getattr(layer, attr)
    return None


class Trainer:
    """Runs training: epochs of shuffled minibatches, SGD steps, history.

    Parameters
    ----------
    model : Sequential
    loss : Loss (MSELoss or SoftmaxCrossEntropy)
    optimizer : SGD

    Examples
    --------
    >>> trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model, lr=0.1))   # doctest: +SKIP
    >>> history = trainer.fit(X, y, epochs=10, batch_size=64)                 # doctest: +SKIP
    """

    def __init__(self, model, loss, optimizer):
        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a jitprop.Sequential, got {type(model).__name__}")
        if not isinstance(loss, Loss):
            raise TypeError(f"loss must be a jitprop loss (MSELoss, SoftmaxCrossEntropy), got {type(loss).__name__}")
        if not isinstance(optimizer, SGD):
            raise TypeError(f"optimizer must be a jitprop.SGD, got {type(optimizer).__name__}")
        if optimizer.model is not model:
            raise ValueError("optimizer was built for a different model")
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.history = None

    # -- one step ---------------------------------------------------------------
    def train_step(self, x, y):
        """One forward, loss, backward and SGD update on a batch.

        Parameters
        ----------
        x : ndarray (batch, *input_shape), model dtype, C-contiguous
        y : ndarray, targets for the loss (see the loss's docs)

        Returns
        -------
        float
            The loss before the update.
        """
        model = self.model
        pred = model.forward(x)
        value = self.loss.forward(pred, y)
        model.backward(self.loss.backward(), need_input_grad=False)
        self.optimizer.step()
        return value

    # -- data checks ----------------------------------------------------------------
    def _prepare(self, X, y, name="X"):
        X = np.asarray(X)
        if X.ndim < 2:
            raise ValueError(f"{name} must have shape (n_samples, ...features), got {X.shape}")
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty (0 samples)")
        y = np.asarray(y)
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"{name} has {X.shape[0]} samples but its targets have {y.shape[0]}")
        X = np.ascontiguousarray(X, dtype=self.model.dtype)
        y = _as_targets(self.loss, y, self.model.dtype)
        if self.loss.classification:
            n_classes = _n_outputs(self.model)
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or (n_classes is not None and hi >= n_classes):
                raise ValueError(f"class labels of {name} must lie in [0, {n_classes}) "
                                 f"(the model's outputs), got values in [{lo}, {hi}]")
        return X, y

    # -- training -------------------------------------------------------------------
    def fit(self, X, y, epochs=10, batch_size=64, shuffle=True, seed=0, validation_data=None,
            progress=True):
        """Train the model.

        Parameters
        ----------
        X : array_like (n_samples, *input_shape)
            Converted once to the model's dtype and C order.
        y : array_like
            Targets: integer labels ``(n_samples,)`` for SoftmaxCrossEntropy,
            arrays shaped like the model output for MSELoss.
        epochs : int
        batch_size : int
            Rows per step; the last batch of an epoch may be shorter.
        shuffle : bool
            Reshuffle the samples every epoch.
        seed : int or None
            Seed of the shuffling RNG.
        validation_data : (X_val, y_val) or None
            Evaluated after every epoch.
        progress : bool
            Show a progress bar with loss and samples/s on stderr.

        Returns
        -------
        dict
            Per-epoch lists: ``"loss"`` (mean training loss), ``"samples_per_s"``,
            ``"time"`` (seconds), and with validation data ``"val_loss"`` and,
            for classification, ``"val_accuracy"``.
        """
        if epochs is None or int(epochs) != epochs or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        if batch_size is None or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        X, y = self._prepare(X, y)
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            Xv, yv = self._prepare(*validation_data, name="X_val")
        n = X.shape[0]
        bs = int(min(batch_size, n))
        rng = np.random.default_rng(seed)
        order = np.arange(n)
        # batch buffers, allocated once; np.take writes into their leading rows
        xb = np.empty((bs,) + X.shape[1:], X.dtype)
        yb = np.empty((bs,) + y.shape[1:], y.dtype)
        steps = math.ceil(n / bs)
        hist = {"loss": [], "samples_per_s": [], "time": []}
        if validation_data is not None:
            hist["val_loss"] = []
            if self.loss.classification:
                hist["val_accuracy"] = []
        self.history = hist
        for epoch in range(int(epochs)):
            if shuffle:
                rng.shuffle(order)
            bar = Progress(steps, desc=f"epoch {epoch + 1}/{epochs}") if progress else None
            t0 = time.perf_counter()
            total = 0.0
            for k in range(steps):
                s = k * bs
                idx = order[s:s + bs]
                m = idx.shape[0]
                if m == bs:
                    xk, yk = xb, yb
                else:
                    xk, yk = xb[:m], yb[:m]
                np.take(X, idx, axis=0, out=xk)
                np.take(y, idx, axis=0, out=yk)
                total += self.train_step(xk, yk) * m
                if bar is not None:
                    el = time.perf_counter() - t0
                    bar.update(k + 1, f"loss {total / (s + m):.4f} {(s + m) / max(el, 1e-9):,.0f} samples/s")
            dt = time.perf_counter() - t0
            hist["loss"].append(total / n)
            hist["samples_per_s"].append(n / dt if dt > 0 else float("inf"))
            hist["time"].append(dt)
            info = f"loss {total / n:.4f} {n / max(dt, 1e-9):,.0f} samples/s"
            if validation_data is not None:
                ev = self.evaluate(Xv, yv)
                hist["val_loss"].append(ev["loss"])
                info += f" val_loss {ev['loss']:.4f}"
                if "accuracy" in ev:
                    hist["val_accuracy"].append(ev["accuracy"])
                    info += f" val_acc {ev['accuracy']:.4f}"
            if bar is not None:
                bar.close(info)
        return hist

    def evaluate(self, X, y, batch_size=1024):
        """Loss (and accuracy for classification) on a data set.

        Returns
        -------
        dict
            ``{"loss": float}`` plus ``"accuracy"`` for SoftmaxCrossEntropy.
            The loss is the mean over all samples.
        """
        X, y = self._prepare(X, y)
        n = X.shape[0]
        total = 0.0
        correct = 0
        for s in range(0, n, batch_size):
            xb = X[s:s + batch_size]
            yb = y[s:s + batch_size]
            pred = self.model.forward(xb)
            total += self.loss.forward(pred, yb) * xb.shape[0]
            if self.loss.classification:
                correct += int(np.count_nonzero(pred.argmax(axis=1) == yb))
        out = {"loss": total / n}
        if self.loss.classification:
            out["accuracy"] = correct / n
        return out
