"""Thin Python orchestration around the compiled kernels: epochs, minibatches,
shuffling, SGD steps, history and progress."""

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import _threads
from . import checkpoint as _checkpoint
from .kernels import raw as K
from ._fused import FusedMLP
from ._threads import single_thread_blas
from .losses import Loss
from .model import Sequential
from .optim import Optimizer
from .schedules import LRScheduler, ReduceLROnPlateau
from .stopping import EarlyStopping

__all__ = ["Trainer", "Progress", "TrainState", "load"]


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


@dataclass
class TrainState:
    """Where a training run is: enough to continue it bit-identically (a
    checkpoint stores it).  Built by the beginning-or-resuming stage of
    :meth:`Trainer.fit`."""

    n: int                      # samples
    batch_size: int
    epoch: int                  # the epoch in progress (0-based)
    step: int                   # the next step of that epoch
    total: float                # sum of loss * rows over the epoch's steps so far
    rng: np.random.Generator    # the shuffling RNG
    order: np.ndarray           # sample order of the epoch (int64; the next shuffle permutes it in place)

    def record(self):
        """The plain record a checkpoint stores."""
        return dict(n=self.n, batch_size=self.batch_size, epoch=self.epoch, step=self.step, total=self.total,
                    rng=self.rng.bit_generator.state, order=self.order)


class _GradientNorms:
    """Per-layer gradient norms (``track_gradients``): one segment of the flat
    vectors per layer that has parameters."""

    def __init__(self, model):
        self.layers = [li for li, layer in enumerate(model.layers) if layer.params]
        # each layer's parameters are packed contiguously, in layer order
        self.offsets = np.zeros(len(self.layers) + 1, np.int64)
        for j, li in enumerate(self.layers):
            sls = [sl for (l2, _, sl) in model.param_slices if l2 == li]
            self.offsets[j], self.offsets[j + 1] = sls[0].start, sls[-1].stop
        self.step_norms = np.empty(len(self.layers))   # written by each step
        self.sums = np.zeros(len(self.layers))          # summed over the epoch's applied steps


@dataclass
class _FitRun:
    """The inputs and options of one :meth:`Trainer.fit` call, checked and
    fixed for the call, with the buffers it allocates once."""

    X: np.ndarray
    y: np.ndarray
    validation: Optional[tuple]     # (X_val, y_val) prepared, or None
    epochs: int
    n: int
    bs: int
    steps: int                      # steps per epoch
    shuffle: bool
    on_nonfinite: str
    progress: bool
    callback: Optional[Callable]
    checkpoint: object
    checkpoint_every: Optional[int]
    norms: Optional[_GradientNorms]
    fused: Optional[FusedMLP]       # the compiled multi-step path, when used
    xb: np.ndarray                  # batch buffers; np.take writes into their leading rows
    yb: np.ndarray
    chunk: int = 1                  # steps per fused call, grown while calls are short
    scheduler: Optional[LRScheduler] = None          # stepped once per epoch
    early_stopping: Optional[EarlyStopping] = None   # consulted once per epoch


@dataclass
class _EpochResult:
    """What the steps of one epoch leave for the epoch-end stage."""

    seconds: float
    rows: int           # rows trained this epoch (fewer when it was resumed mid-epoch)
    first_step: int
    skipped: int        # steps dropped by on_nonfinite="skip"
    skipped_rows: int
    bar: Optional[Progress]


class Trainer:
    """Runs training: epochs of shuffled minibatches, optimiser steps, history.

    Parameters
    ----------
    model : Sequential
    loss : Loss (MSELoss or SoftmaxCrossEntropy)
    optimizer : Optimizer (SGD, Adam or AdamW)

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
        #: the position written by :meth:`save` (set by ``fit`` when it checkpoints)
        self._position = None
        #: the position ``fit(..., resume=True)`` continues from (set by :meth:`load`)
        self._resume_from = None
        #: the last fit's fused plan, reused by the next fit it fits (FusedMLP.key_of)
        self._fused_plan = None
        #: (seed, generator, its state when seeded): fit resets it instead of seeding anew
        self._rng_cache = None

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
        if not (math.isfinite(value) and model.grads_finite()):
            if policy == "skip":
                return None
            raise FloatingPointError(self._nonfinite_message(value, epoch, step))
        self.optimizer.step()
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
        outs = model.layer_outputs
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
        if X.ndim < (1 if self.model.layers[0].integer_input else 2):
            raise ValueError(f"{name} must have shape (n_samples, ...features), got {X.shape}")
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty (0 samples)")
        y = np.asarray(y)
        if y.ndim == 0 or y.shape[0] != X.shape[0]:
            raise ValueError(f"{name} has {X.shape[0]} samples but its targets have "
                             f"{y.shape[0] if y.ndim else 'none (a scalar)'}")
        if X.dtype.kind not in "fiub":
            raise TypeError(f"{name} must hold numbers, got dtype {X.dtype}")
        X = self.model.as_input(X, name)
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
            progress=True, track_gradients=False, on_nonfinite="raise", checkpoint=None,
            checkpoint_every=None, resume=False, callback=None, use_fused="auto", scheduler=None,
            early_stopping=None):
        """Train the model (in training mode: see :meth:`jitprop.Sequential.train`).

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
        use_fused : "auto", True or False, default "auto"
            For a model of Dense and activation layers, run many training
            steps per compiled call (:func:`jitprop.kernels.raw.mlp_train_steps`)
            instead of one Python call per layer: same kernels in the same
            order, so bitwise the same result, with far less Python overhead.
            Used unless ``callback``, ``track_gradients`` or
            ``on_nonfinite="skip"`` need per-step Python code (SGD, Adam and
            AdamW; Dense, activation and Dropout layers).  With
            ``"auto"``, a short run (at most 100,000 steps) whose batch is
            one part and whose fused kernel is not compiled or cached yet
            starts layer by layer while a background process compiles the
            fused kernel into the cache (``JITPROP_BACKGROUND_COMPILE=0``
            turns that off), and switches to it once it is there; ``True``
            compiles it before the first step.
        scheduler : LRScheduler, optional
            A learning-rate schedule of this trainer's optimiser (e.g.
            :class:`~jitprop.CosineAnnealingLR`), stepped once at the end of
            every epoch; :class:`~jitprop.ReduceLROnPlateau` gets ``val_loss``
            when there is validation data, else the training loss.  Its state
            goes into checkpoints; on resume, pass a schedule built the same
            way and it continues from the stored state.
        early_stopping : EarlyStopping, optional
            Stop when its monitored quantity has not improved for its
            ``patience`` epochs (and, with ``restore_best``, end with the
            parameters of the best epoch).  Its state goes into checkpoints;
            a resumed run that had stopped does not train further.

        Returns
        -------
        dict
            Per-epoch lists: ``"loss"`` (mean training loss), ``"samples_per_s"``,
            ``"time"`` (seconds), with a scheduler ``"lr"`` (the learning rate
            of the epoch's steps), and with validation data ``"val_loss"`` and,
            for classification, ``"val_accuracy"``.  With early stopping,
            ``"best_epoch"`` and ``"stopped_epoch"`` (0-based epoch indices,
            ``stopped_epoch`` None when it did not stop).
        """
        self._check_fit_args(epochs, batch_size, on_nonfinite, checkpoint, checkpoint_every)
        self._check_epoch_hooks(scheduler, early_stopping, validation_data)
        run = self._setup_run(X, y, epochs, batch_size, shuffle, validation_data, progress, track_gradients,
                              on_nonfinite, checkpoint, checkpoint_every, callback, use_fused)
        run.scheduler, run.early_stopping = scheduler, early_stopping
        try:
            state = self._begin(run, seed, resume)
            hist = self.history
            for epoch in range(state.epoch, run.epochs):
                if early_stopping is not None and early_stopping.stopped_epoch is not None:
                    break  # a resumed run that had already stopped
                state.epoch = epoch
                result = self._run_epoch(run, state)
                if self._end_epoch(run, state, result, hist):
                    break
            self._finish(run, hist)
        finally:
            if run.fused is not None:
                run.fused.chunk = max(run.fused.chunk, run.chunk)
                run.fused.release()  # the plan stays for the next call, the user's data does not
        return hist

    # -- the stages of fit ----------------------------------------------------------
    @staticmethod
    def _check_fit_args(epochs, batch_size, on_nonfinite, checkpoint, checkpoint_every):
        """Stage 1: reject bad options before anything runs."""
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

    def _check_epoch_hooks(self, scheduler, early_stopping, validation_data):
        """Stage 1 (continued): the schedule and early stopping fit this trainer and data."""
        if scheduler is not None:
            if not isinstance(scheduler, LRScheduler):
                raise TypeError(f"scheduler must be a jitprop schedule (StepLR, CosineAnnealingLR, LinearLR, "
                                f"ReduceLROnPlateau), got {type(scheduler).__name__}")
            if scheduler.optimizer is not self.optimizer:
                raise ValueError("scheduler was built for a different optimizer")
        if early_stopping is not None:
            if not isinstance(early_stopping, EarlyStopping):
                raise TypeError(f"early_stopping must be a jitprop.EarlyStopping, got {type(early_stopping).__name__}")
            if early_stopping.monitor.startswith("val_") and validation_data is None:
                raise ValueError(f"early_stopping monitors {early_stopping.monitor!r}, which needs validation_data")
            if early_stopping.monitor == "val_accuracy" and not self.loss.classification:
                raise ValueError("early_stopping monitors 'val_accuracy', which needs a classification loss")

    def _setup_run(self, X, y, epochs, batch_size, shuffle, validation_data, progress, track_gradients,
                   on_nonfinite, checkpoint, checkpoint_every, callback, use_fused):
        """Stage 1 (continued): the data checked and converted once, the
        buffers allocated once, and the step path chosen."""
        X, y = self._prepare(X, y)
        validation = None
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            validation = self._prepare(*validation_data, name="X_val")
        n = X.shape[0]
        bs = int(min(batch_size, n))
        self.model.train()  # fit trains: dropout on (evaluate switches it off for validation)
        _threads.warn_if_unsafe_layer()
        fused = None
        if use_fused and callback is None and not track_gradients and on_nonfinite != "skip" and self._fusable():
            fused = self._plan_for(X, y, bs)
            if fused is not None:
                fused.start(use_fused, math.ceil(n / bs) * int(epochs))
        return _FitRun(X=X, y=y, validation=validation, epochs=int(epochs), n=n, bs=bs, steps=math.ceil(n / bs),
                       shuffle=shuffle, on_nonfinite=on_nonfinite, progress=progress, callback=callback,
                       checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                       norms=_GradientNorms(self.model) if track_gradients else None, fused=fused,
                       xb=np.empty((bs,) + X.shape[1:], X.dtype), yb=np.empty((bs,) + y.shape[1:], y.dtype),
                       chunk=1 if fused is None else min(fused.chunk, math.ceil(n / bs)))

    def _plan_for(self, X, y, bs):
        """The fused plan for this run: the last one rebound to ``X, y`` when
        it was made for the same model, loss, optimiser, batch size and data
        shapes (building one costs more than a short fit), else a new one."""
        plan = self._fused_plan
        if plan is not None and plan.key == FusedMLP.key_of(self, X, y, bs):
            plan.bind(X, y)
            return plan
        plan = FusedMLP.build(self, X, y, bs)
        self._fused_plan = plan
        return plan

    def _seeded_rng(self, seed):
        """``np.random.default_rng(seed)``; for the int seed of the previous
        call, that call's generator reset to the seed's initial state (the
        same stream, bitwise; seeding PCG64 costs more than setting a state)."""
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            return np.random.default_rng(seed)
        c = self._rng_cache
        if c is not None and c[0] == seed:
            c[1].bit_generator.state = c[2]
            return c[1]
        rng = np.random.default_rng(seed)
        self._rng_cache = (int(seed), rng, rng.bit_generator.state)
        return rng

    def _begin(self, run, seed, resume):
        """Stage 2: the position to start from (epoch 0, or the loaded one when
        resuming) and the history to append to."""
        n, bs = run.n, run.bs
        rng = self._seeded_rng(seed)
        state = TrainState(n=n, batch_size=bs, epoch=0, step=0, total=0.0, rng=rng,
                           order=np.arange(n, dtype=np.int64))
        hist = None
        if resume:
            st = self._resume_from
            if st is None:
                raise ValueError("resume=True but this trainer has no saved training state "
                                 "(load one with jitprop.load(path))")
            if st["n"] != n or st["batch_size"] != bs:
                raise ValueError(f"cannot resume: the checkpoint was made with {st['n']} samples and batch size "
                                 f"{st['batch_size']}, got {n} and {bs}")
            rng.bit_generator.state = st["rng"]
            state.epoch, state.step, state.total = st["epoch"], st["step"], st["total"]
            state.order = np.array(st["order"], dtype=np.int64)
            if state.order.shape != (n,):
                raise ValueError("cannot resume: the checkpoint's sample order does not match the data")
            hist = self.history
            if run.scheduler is not None and st.get("scheduler") is not None:
                run.scheduler.load_state_dict(st["scheduler"])
            if run.early_stopping is not None:
                if st.get("early_stopping") is None:
                    raise ValueError("cannot resume with early_stopping: the checkpoint was made without it")
                run.early_stopping.load_state_dict(st["early_stopping"], self.model)
        elif run.early_stopping is not None:
            run.early_stopping.reset(self.model)
        if hist is None:
            hist = {"loss": [], "samples_per_s": [], "time": []}
            if run.validation is not None:
                hist["val_loss"] = []
                if self.loss.classification:
                    hist["val_accuracy"] = []
            if run.on_nonfinite == "skip":
                hist["skipped_steps"] = []
        if run.scheduler is not None:
            hist.setdefault("lr", [])
        if run.norms is not None:
            hist.setdefault("grad_norms", [])
            hist.setdefault("param_norms", [])
            hist["norm_layers"] = [f"{li}:{self.model.layers[li]!r}" for li in run.norms.layers]
        self.history = hist
        return state

    def _run_epoch(self, run, state):
        """Stage 3: the steps of epoch ``state.epoch`` from step ``state.step``,
        with mid-epoch checkpoints and the progress bar."""
        n, bs, steps, epoch = run.n, run.bs, run.steps, state.epoch
        X, y, order = run.X, run.y, state.order
        fused, policy, callback = run.fused, run.on_nonfinite, run.callback
        xb, yb = run.xb, run.yb
        checkpoint, every = run.checkpoint, run.checkpoint_every
        norms = run.norms
        step_norms = None if norms is None else (norms.offsets, norms.step_norms)
        first_step = state.step
        if run.shuffle and first_step == 0:
            state.rng.shuffle(order)
        bar = Progress(steps, desc=f"epoch {epoch + 1}/{run.epochs}") if run.progress else None
        t0 = time.perf_counter()
        skipped = 0
        skipped_rows = 0
        if norms is not None:
            norms.sums[:] = 0.0
        total = state.total
        k = first_step
        while k < steps:
            if run.fused is not None and run.fused.active():
                # many steps in one compiled call; stop at checkpoint
                # boundaries and often enough to redraw the progress bar
                k_end = min(steps, k + run.chunk)
                if every is not None:
                    k_end = min(k_end, (k // every + 1) * every)
                tc = time.perf_counter()
                done = fused.run(order, k, k_end, policy != "ignore")
                losses = fused.losses
                for j in range(done):
                    total += float(losses[j]) * min(bs, n - (k + j) * bs)
                if done < k_end - k:
                    self._raise_nonfinite(X, y, order, k + done, bs, epoch)
                k = k_end
                if time.perf_counter() - tc < 0.05:
                    run.chunk = min(run.chunk * 2, 1 << 20)
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
                value = self._checked_step(xk, yk, epoch, k, policy, step_norms)
                if value is None:
                    skipped += 1
                    skipped_rows += min(bs, n - s)
                else:
                    total += value * min(bs, n - s)  # rows of the global batch
                    if norms is not None:
                        norms.sums += norms.step_norms
                if callback is not None:
                    callback(self, epoch, k, value)
                k += 1
            if checkpoint is not None and every is not None and k % every == 0 and k < steps:
                state.step, state.total = k, total
                self._save_position(run, state)
            if bar is not None:
                el = time.perf_counter() - t0
                done_rows = min(k * bs, n) - first_step * bs
                bar.update(k, f"loss {total / min(k * bs, n):.4f} {done_rows / max(el, 1e-9):,.0f} samples/s")
        state.step, state.total = k, total
        return _EpochResult(seconds=time.perf_counter() - t0, rows=n - first_step * bs, first_step=first_step,
                            skipped=skipped, skipped_rows=skipped_rows, bar=bar)

    def _end_epoch(self, run, state, result, hist):
        """Stage 4: the epoch's history (loss, speed, skipped steps, norms),
        validation, the progress line, then the position of the next epoch
        and its checkpoint.  Returns whether training stops here."""
        dt, done = result.seconds, result.rows
        counted = run.n - result.skipped_rows
        hist["loss"].append(state.total / counted if counted else float("nan"))
        hist["samples_per_s"].append(done / dt if dt > 0 else float("inf"))
        hist["time"].append(dt)
        info = f"loss {hist['loss'][-1]:.4f} {done / max(dt, 1e-9):,.0f} samples/s"
        if "skipped_steps" in hist:
            hist["skipped_steps"].append(result.skipped)
            if result.skipped:
                info += f" skipped {result.skipped} non-finite steps"
        norms = run.norms
        if norms is not None:
            tracked = run.steps - result.first_step - result.skipped
            hist["grad_norms"].append((norms.sums / tracked).tolist() if tracked
                                      else [float("nan")] * norms.sums.size)
            pn = np.empty(len(norms.layers))
            K.segment_norms(self.model.flat_params, norms.offsets, pn)
            hist["param_norms"].append(pn.tolist())
        if run.validation is not None:
            ev = self.evaluate(*run.validation)
            hist["val_loss"].append(ev["loss"])
            info += f" val_loss {ev['loss']:.4f}"
            if "accuracy" in ev:
                hist["val_accuracy"].append(ev["accuracy"])
                info += f" val_acc {ev['accuracy']:.4f}"
        if run.scheduler is not None:
            hist["lr"].append(self.optimizer.lr)
        if result.bar is not None:
            result.bar.close(info)
        # after the epoch's history and validation, before its checkpoint (so
        # the checkpoint holds their effect)
        stop = self._schedule_and_stop(run, state.epoch, hist)
        state.epoch, state.step, state.total = state.epoch + 1, 0, 0.0
        if run.checkpoint is not None:
            # the order is kept: the next epoch's shuffle permutes it in place
            self._save_position(run, state)
        return stop

    def _schedule_and_stop(self, run, epoch, hist):
        """Stage 4 (continued): step the learning-rate schedule and ask early
        stopping; returns whether training stops after this epoch."""
        if run.scheduler is not None:
            if isinstance(run.scheduler, ReduceLROnPlateau):
                run.scheduler.step(hist["val_loss"][-1] if run.validation is not None else hist["loss"][-1])
            else:
                run.scheduler.step()
        es = run.early_stopping
        if es is None:
            return False
        return es.update(epoch, hist[es.monitor][-1], self.model)

    def _finish(self, run, hist):
        """Stage 6: early stopping's summary, and the best parameters put back."""
        es = run.early_stopping
        if es is not None:
            hist["best_epoch"], hist["stopped_epoch"] = es.best_epoch, es.stopped_epoch
            es.restore(self.model)

    def _save_position(self, run, state):
        """Stage 5: checkpoint the trainer at ``state``."""
        self._position = state.record()
        if run.scheduler is not None:
            self._position["scheduler"] = run.scheduler.state_dict()
        if run.early_stopping is not None:
            self._position["early_stopping"] = run.early_stopping.state_dict()
        self.save(run.checkpoint)

    # -- checkpoints ----------------------------------------------------------------
    def save(self, path):
        """Write model, optimizer state, history and the training position to
        ``path`` (atomic; see :mod:`jitprop.checkpoint` for the format)."""
        return _checkpoint.save(path, self.model, self.loss, self.optimizer, self.history, self._position)

    @classmethod
    def load(cls, path, **kwargs):
        """Rebuild a trainer of this class (model, loss, optimizer with its
        state, history, and the training position for ``fit(..., resume=True)``)
        from a checkpoint; ``kwargs`` go to the constructor."""
        rec = _checkpoint.load_record(path)
        trainer = cls(rec.model, rec.loss, rec.optimizer, **kwargs)
        trainer.history = rec.history
        trainer._resume_from = rec.state
        return trainer

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


def load(path):
    """Rebuild a :class:`Trainer` from a checkpoint (``Trainer.load(path)``),
    for ``fit(..., resume=True)``."""
    return Trainer.load(path)
