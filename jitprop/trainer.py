"""Thin Python orchestration around the compiled kernels: epochs, minibatches,
shuffling, SGD steps, history and progress."""

import math
import sys
import time

import numpy as np

from . import _threads
from .kernels import raw as K
from ._fused import FusedMLP
from ._threads import single_thread_blas
from .losses import Loss
from .model import Sequential
from .optim import SGD, Optimizer

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
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a jitprop optimiser (SGD, Adam, AdamW), got {type(optimizer).__name__}")
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
            The loss before the update.  No finiteness check is made here;
            :meth:`fit` checks (see its ``on_nonfinite``).
        """
        return self._checked_step(x, y, 0, 0, "ignore")

    # -- hooks for data-parallel training (see jitprop.distributed) -------------
    def _reduce_gradients(self, value, n):
        """Called between backward and the update with this process's batch
        loss and row count; returns the loss to report.  A data-parallel
        trainer combines ``model.flat_grads`` across processes here."""
        return value

    def _shard(self, idx):
        """The rows of a global batch (sample indices ``idx``) that this
        process trains on; all of them by default."""
        return idx

    def _fusable(self):
        """Whether the compiled multi-step path may replace per-step Python."""
        return type(self)._reduce_gradients is Trainer._reduce_gradients and type(self)._shard is Trainer._shard

    def _checked_step(self, x, y, epoch, step, policy, norms=None):
        """train_step that refuses to apply a non-finite update (unless
        ``policy == "ignore"``), and records per-layer gradient norms into
        ``norms`` (before clipping) when given.

        Returns the loss, or None when the step was skipped."""
        model = self.model
        value = self._reduce_gradients(self._forward_backward(x, y), x.shape[0])
        if norms is not None:
            K.segment_norms(model.flat_grads, norms[0], norms[1])
        if policy == "ignore":
            self.optimizer.step()
            return value
        gsq = K.sum_squares(model.flat_grads)
        if not (math.isfinite(value) and math.isfinite(gsq)):
            if policy == "skip":
                return None
            raise FloatingPointError(self._nonfinite_message(value, epoch, step))
        self.optimizer.step(grad_norm=math.sqrt(gsq))
        return value

    def _forward_backward(self, x, y):
        """Forward, loss and backward (no update); returns the loss."""
        # a model whose kernels run BLAS inside parallel loops (an LSTM cut
        # into batch parts) runs the whole step on one-thread BLAS: OpenBLAS's
        # own threads, spinning between the other layers' products, would
        # compete with Numba's for the cores
        with single_thread_blas(self.model.one_thread_blas(x.shape[0])):
            value = self.loss.forward(self.model.forward(x), y)
            self.model.backward(self.loss.backward(), need_input_grad=False)
        return value

    def _raise_nonfinite(self, X, y, order, k, bs, epoch):
        """Re-run step ``k`` layer by layer (without updating) to find where
        the non-finite values appear, then raise."""
        idx = order[k * bs:(k + 1) * bs]
        value = self._forward_backward(np.take(X, idx, axis=0), np.take(y, idx, axis=0))
        raise FloatingPointError(self._nonfinite_message(value, epoch, k))

    def _nonfinite_message(self, value, epoch, step):
        model = self.model
        where = []
        outs = getattr(model, "_outputs", [None] * len(model.layers))
        bad_out = None
        for li, layer in enumerate(model.layers):
            out = outs[li]
            if out is not None and not np.all(np.isfinite(out)):
                bad_out = li
                where.append(f"the output of layer {li} ({layer!r})")
                break
        if bad_out is None and not math.isfinite(value):
            last = outs[-1]
            size = f"; largest |output| {float(np.max(np.abs(last))):.3g}" if last is not None else ""
            where.append(f"the loss itself (every layer's output is finite{size})")
        else:
            for li, layer in enumerate(model.layers):
                bad = [k for k, g in layer.grads.items() if not np.all(np.isfinite(g))]
                if bad:
                    where.append(f"the gradient of layer {li} ({layer!r}) {', '.join(bad)}")
                    break
        return (f"non-finite {'loss' if not math.isfinite(value) else 'gradient'} at epoch {epoch + 1}, "
                f"step {step + 1} (loss = {value}); first non-finite values in "
                f"{' and '.join(where) if where else 'the loss'}. The update was not applied: the model "
                f"holds the parameters of the last finite step. Lower the learning rate, clip gradients "
                f"(SGD(clip_norm=...)), or pass on_nonfinite='skip' to skip such steps.")

    # -- data checks ----------------------------------------------------------------
    def _prepare(self, X, y, name="X"):
        X = np.asarray(X)
        if X.ndim < 2:
            raise ValueError(f"{name} must have shape (n_samples, ...features), got {X.shape}")
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty (0 samples)")
        y = np.asarray(y)
        if y.ndim == 0 or y.shape[0] != X.shape[0]:
            raise ValueError(f"{name} has {X.shape[0]} samples but its targets have "
                             f"{y.shape[0] if y.ndim else 'none (a scalar)'}")
        if X.dtype.kind not in "fiub":
            raise TypeError(f"{name} must hold numbers, got dtype {X.dtype}")
        X = np.ascontiguousarray(X, dtype=self.model.dtype)
        y = _as_targets(self.loss, y, self.model.dtype)
        if self.loss.classification:
            n_classes = _n_outputs(self.model)
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or (n_classes is not None and hi >= n_classes):
                raise ValueError(f"class labels of {name} must lie in [0, {n_classes}) "
                                 f"(the model's outputs), got values in [{lo}, {hi}]")
        return X, y

    # -- checkpoints ----------------------------------------------------------------
    def save(self, path):
        """Write model, optimizer state, history and the training position to
        ``path`` (atomic; see :mod:`jitprop.checkpoint` for the format)."""
        from . import checkpoint

        return checkpoint.save(self, path, getattr(self, "_state", None))

    # -- training -------------------------------------------------------------------
    def fit(self, X, y, epochs=10, batch_size=64, shuffle=True, seed=0, validation_data=None,
            progress=True, track_gradients=False, on_nonfinite="raise", checkpoint=None,
            checkpoint_every=None, resume=False, callback=None, use_fused=True):
        """Train the model.

        Parameters
        ----------
        X : array_like (n_samples, *input_shape)
            Converted once to the model's dtype and C order.
        y : array_like
            Targets: integer labels ``(n_samples,)`` for SoftmaxCrossEntropy,
            arrays shaped like the model output for MSELoss.
        epochs : int
            Total number of epochs (when resuming, including those done).
        batch_size : int
            Rows per step; the last batch of an epoch may be shorter.
        shuffle : bool
            Reshuffle the samples every epoch.
        seed : int or None
            Seed of the shuffling RNG.  Same seed, same data, same thread
            count: bit-identical parameters.
        validation_data : (X_val, y_val) or None
            Evaluated after every epoch.
        progress : bool
            Show a progress bar with loss and samples/s on stderr.
        track_gradients : bool
            Record per-layer gradient norms (before clipping, mean over the
            epoch's applied steps) and parameter norms (at the end of each
            epoch), computed by a compiled kernel, in ``history["grad_norms"]`` and ``history["param_norms"]``
            (lists of per-layer lists; layers without parameters are left out,
            ``history["norm_layers"]`` names the layers).
        on_nonfinite : {"raise", "skip", "ignore"}
            A NaN or inf in the loss or gradients: "raise" stops with
            ``FloatingPointError`` naming the epoch, step and first layer where
            it appeared, leaving the last finite parameters; "skip" drops that
            step's update (counted in ``history["skipped_steps"]``; the epoch
            loss is then the mean over the rows of the applied steps); "ignore"
            does no check (slightly faster).
        checkpoint : str or path, optional
            File to save the training state to (atomically): at the end of
            every epoch, and every ``checkpoint_every`` steps if given.
        checkpoint_every : int, optional
            Steps between checkpoints within an epoch.
        resume : bool
            Continue from the training position stored in this trainer (as
            loaded by :func:`jitprop.load`): same epoch, step, sample order
            and RNG state, so the result is bit-identical to an uninterrupted
            run.
        callback : callable, optional
            ``callback(trainer, epoch, step, loss)`` after every step.
        use_fused : bool, default True
            For a model of Dense and activation layers, run many training
            steps per compiled call (:func:`jitprop.kernels.raw.mlp_train_steps`)
            instead of one Python call per layer: same kernels in the same
            order, so bitwise the same result, with far less Python overhead.
            Used unless ``callback``, ``track_gradients`` or
            ``on_nonfinite="skip"`` need per-step Python code.

        Returns
        -------
        dict
            Per-epoch lists: ``"loss"`` (mean training loss), ``"samples_per_s"``,
            ``"time"`` (seconds), and with validation data ``"val_loss"`` and,
            for classification, ``"val_accuracy"``.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if on_nonfinite not in ("raise", "skip", "ignore"):
            raise ValueError(f"on_nonfinite must be 'raise', 'skip' or 'ignore', got {on_nonfinite!r}")
        if checkpoint_every is not None and (int(checkpoint_every) != checkpoint_every or checkpoint_every < 1):
            raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
        if checkpoint_every is not None and checkpoint is None:
            raise ValueError("checkpoint_every needs checkpoint=path")
        X, y = self._prepare(X, y)
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            Xv, yv = self._prepare(*validation_data, name="X_val")
        n = X.shape[0]
        bs = int(min(batch_size, n))
        self.model.train()  # fit trains: dropout on (evaluate switches it off for validation)
        _threads.warn_if_unsafe_layer()
        steps = math.ceil(n / bs)
        rng = np.random.default_rng(seed)
        order = np.arange(n, dtype=np.int64)
        start_epoch, start_step, total = 0, 0, 0.0
        hist = None
        if resume:
            st = getattr(self, "_resume_state", None)
            if st is None:
                raise ValueError("resume=True but this trainer has no saved training state "
                                 "(load one with jitprop.load(path))")
            if st["n"] != n or st["batch_size"] != bs:
                raise ValueError(f"cannot resume: the checkpoint was made with {st['n']} samples and batch size "
                                 f"{st['batch_size']}, got {n} and {bs}")
            rng.bit_generator.state = st["rng"]
            start_epoch, start_step, total = st["epoch"], st["step"], st["total"]
            order = np.array(st["order"], dtype=np.int64)
            if order.shape != (n,):
                raise ValueError("cannot resume: the checkpoint's sample order does not match the data")
            hist = self.history
        if hist is None:
            hist = {"loss": [], "samples_per_s": [], "time": []}
            if validation_data is not None:
                hist["val_loss"] = []
                if self.loss.classification:
                    hist["val_accuracy"] = []
            if on_nonfinite == "skip":
                hist["skipped_steps"] = []
        self.history = hist
        # gradient-norm tracking: one segment per layer that has parameters
        if track_gradients:
            seg_layers = [li for li, layer in enumerate(self.model.layers) if layer.params]
            # each layer's parameters are packed contiguously, in layer order
            offsets = np.zeros(len(seg_layers) + 1, np.int64)
            for j, li in enumerate(seg_layers):
                sls = [sl for (l2, _, sl) in self.model.param_slices if l2 == li]
                offsets[j], offsets[j + 1] = sls[0].start, sls[-1].stop
            gnorm = np.empty(len(seg_layers))
            gsum = np.zeros(len(seg_layers))
            hist.setdefault("grad_norms", [])
            hist.setdefault("param_norms", [])
            hist["norm_layers"] = [f"{li}:{self.model.layers[li]!r}" for li in seg_layers]
        norms = (offsets, gnorm) if track_gradients else None
        # batch buffers, allocated once; np.take writes into their leading rows
        xb = np.empty((bs,) + X.shape[1:], X.dtype)
        yb = np.empty((bs,) + y.shape[1:], y.dtype)
        # the compiled multi-step path, when the model and options allow it
        fused = None
        # (the compiled multi-step path runs SGD only; other optimisers go layer by layer)
        if use_fused and callback is None and not track_gradients and on_nonfinite != "skip" and self._fusable() \
                and type(self.optimizer) is SGD:
            fused = FusedMLP.build(self, X, y, bs)
        chunk = 1
        for epoch in range(start_epoch, int(epochs)):
            if shuffle and start_step == 0:
                rng.shuffle(order)
            bar = Progress(steps, desc=f"epoch {epoch + 1}/{epochs}") if progress else None
            t0 = time.perf_counter()
            skipped = 0
            skipped_rows = 0
            first_step = start_step
            if track_gradients:
                gsum[:] = 0.0
            k = start_step
            while k < steps:
                if fused is not None:
                    # many steps in one compiled call; stop at checkpoint
                    # boundaries and often enough to redraw the progress bar
                    k_end = min(steps, k + chunk)
                    if checkpoint_every is not None:
                        k_end = min(k_end, (k // checkpoint_every + 1) * checkpoint_every)
                    tc = time.perf_counter()
                    done = fused.run(order, k, k_end, on_nonfinite != "ignore")
                    losses = fused.losses
                    for j in range(done):
                        total += float(losses[j]) * min(bs, n - (k + j) * bs)
                    if done < k_end - k:
                        self._raise_nonfinite(X, y, order, k + done, bs, epoch)
                    k = k_end
                    if time.perf_counter() - tc < 0.05:
                        chunk = min(chunk * 2, 1 << 20)
                else:
                    s = k * bs
                    idx = self._shard(order[s:s + bs])
                    m = idx.shape[0]
                    if m == bs:
                        xk, yk = xb, yb
                    else:
                        xk, yk = xb[:m], yb[:m]
                    np.take(X, idx, axis=0, out=xk)
                    np.take(y, idx, axis=0, out=yk)
                    value = self._checked_step(xk, yk, epoch, k, on_nonfinite, norms)
                    if value is None:
                        skipped += 1
                        skipped_rows += min(bs, n - s)
                    else:
                        total += value * min(bs, n - s)  # rows of the global batch
                        if track_gradients:
                            gsum += gnorm
                    if callback is not None:
                        callback(self, epoch, k, value)
                    k += 1
                if checkpoint is not None and checkpoint_every is not None and k % checkpoint_every == 0 \
                        and k < steps:
                    self._state = dict(n=n, batch_size=bs, epoch=epoch, step=k, total=total,
                                       rng=rng.bit_generator.state, order=order)
                    self.save(checkpoint)
                if bar is not None:
                    el = time.perf_counter() - t0
                    done_rows = min(k * bs, n) - start_step * bs
                    bar.update(k, f"loss {total / min(k * bs, n):.4f} {done_rows / max(el, 1e-9):,.0f} samples/s")
            dt = time.perf_counter() - t0
            done = n - start_step * bs
            start_step = 0
            counted = n - skipped_rows
            hist["loss"].append(total / counted if counted else float("nan"))
            hist["samples_per_s"].append(done / dt if dt > 0 else float("inf"))
            hist["time"].append(dt)
            total = 0.0
            info = f"loss {hist['loss'][-1]:.4f} {done / max(dt, 1e-9):,.0f} samples/s"
            if "skipped_steps" in hist:
                hist["skipped_steps"].append(skipped)
                if skipped:
                    info += f" skipped {skipped} non-finite steps"
            if track_gradients:
                tracked = steps - first_step - skipped
                hist["grad_norms"].append((gsum / tracked).tolist() if tracked else [float("nan")] * gsum.size)
                pn = np.empty(len(seg_layers))
                K.segment_norms(self.model.flat_params, offsets, pn)
                hist["param_norms"].append(pn.tolist())
            if validation_data is not None:
                ev = self.evaluate(Xv, yv)
                hist["val_loss"].append(ev["loss"])
                info += f" val_loss {ev['loss']:.4f}"
                if "accuracy" in ev:
                    hist["val_accuracy"].append(ev["accuracy"])
                    info += f" val_acc {ev['accuracy']:.4f}"
            if bar is not None:
                bar.close(info)
            if checkpoint is not None:
                # the order is kept: the next epoch's shuffle permutes it in place
                self._state = dict(n=n, batch_size=bs, epoch=epoch + 1, step=0, total=0.0,
                                   rng=rng.bit_generator.state, order=order)
                self.save(checkpoint)
        return hist

    def evaluate(self, X, y, batch_size=1024):
        """Loss (and accuracy for classification) on a data set, in
        evaluation mode (dropout off).

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
        with self.model.eval_mode():  # dropout off
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
