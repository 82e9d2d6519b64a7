"""The compiled multi-step training path for multilayer perceptrons.

:class:`FusedMLP` describes a Sequential of Dense and activation layers to
:func:`jitprop.kernels.raw.mlp_train_steps` (a table of layer sizes,
activation codes and parameter offsets, plus one workspace vector) so that
many SGD or Adam/AdamW steps run inside one compiled call.  A Dropout after
a dense unit draws, in the kernel, the masks its own forward would draw.  It
uses the model's own flat parameter and gradient vectors and the optimizer's
own state arrays, so the model, the optimizer and checkpoints see every update.
"""

import atexit
import os
import subprocess
import sys
import time

import numpy as np

from ._threads import batch_parts, single_thread_blas
from .kernels import raw as K
from .layers import Activation, Dense, Dropout
from .losses import MSELoss, SoftmaxCrossEntropy
from .optim import SGD, Adam, AdamW

#: Below this many multiply-adds in the largest product of a step, the fused
#: path runs BLAS on one thread (mlp-small: 6.4M, mlp-mid: 51M).
SMALL_PRODUCT = 1 << 24
#: A batch is cut into parts of at least this many rows ...
MIN_PART_ROWS = 32
#: ... when its largest product has at least this many multiply-adds.
MIN_PART_PRODUCT = 1 << 20


#: A run of at most this many steps whose fused kernel is not compiled yet
#: starts layer by layer (``use_fused="auto"``): compiling the fused kernel
#: takes about 10 s, the per-layer path about 50 us per step more.
SHORT_RUN_STEPS = 100_000
#: Seconds of layer-by-layer steps after the first before the background
#: compile starts (see :meth:`FusedMLP.active`).
BACKGROUND_AFTER = 1.0


def _load_compiled(dispatcher, args):
    """Whether ``dispatcher`` has machine code for ``args`` in this process or
    in Numba's on-disk cache (loading it then); never compiles."""
    # the first steps of Dispatcher.compile, without its fallback to compiling
    from numba.core.compiler_lock import global_compiler_lock

    sig = tuple(dispatcher.typeof_pyval(a) for a in args)
    if sig in dispatcher.overloads:
        return True
    with global_compiler_lock:
        try:
            cres = dispatcher._cache.load_overload(sig, dispatcher.targetctx)
        except Exception:  # noqa: BLE001  (an unreadable entry is a miss: the kernel compiles as usual)
            cres = None
        if cres is None:
            return False
        dispatcher.targetctx.insert_user_function(cres.entry_point, cres.fndesc, [cres.library])
        dispatcher.add_overload(cres)
    return True


_background = {}  # dtype name -> Popen of this process's background compile


def compile_in_background(dtype):
    """Start, once per process and dtype, a low-priority process that
    compiles the fused kernel for ``dtype`` into Numba's on-disk cache
    (``python -m jitprop._precompile``); returns its Popen, or None when
    ``JITPROP_BACKGROUND_COMPILE=0``."""
    name = np.dtype(dtype).name
    if os.environ.get("JITPROP_BACKGROUND_COMPILE", "1") == "0":
        return None
    proc = _background.get(name)
    if proc is None:
        # its own session: it finishes filling the cache for the next run even
        # after this process exits
        # the child imports this same jitprop, whatever its own sys.path
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        proc = subprocess.Popen([sys.executable, "-m", "jitprop._precompile", name], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _background[name] = proc
    return proc


def compile_at_exit(dtype):
    """Start :func:`compile_in_background` for ``dtype`` when this process
    exits, unless it has started by then."""
    if not _at_exit:
        atexit.register(_compile_pending)
    _at_exit.add(np.dtype(dtype).name)


_at_exit = set()  # dtype names for _compile_pending


def _compile_pending():
    for name in sorted(_at_exit):
        compile_in_background(name)  # a no-op for a dtype already started


def choose_parts(bs, largest):
    """How many parts of a batch of ``bs`` rows run at the same time.

    Each part runs forward and backward with one-thread BLAS on its rows;
    on 2 cores that beats splitting every product over 2 BLAS threads
    (mlp-small: one 64-row product on 2 BLAS threads runs barely faster than
    on one).  The count does not depend on :func:`jitprop.set_num_threads`
    (see :func:`jitprop._threads.batch_parts`).
    """
    if largest < MIN_PART_PRODUCT:
        return 1
    return batch_parts(bs, MIN_PART_ROWS)


class FusedMLP:
    """A ready-to-run plan of the fused path for one (trainer, data, batch size)."""

    @staticmethod
    def key_of(trainer, X, y, bs):
        """What a plan was sized and typed for: the model, its layers and flat
        vectors, the loss, the optimiser, the batch size, and the data's row
        shapes, dtypes and the array flags Numba types them by.  A plan whose
        :attr:`key` equals this can run on ``X, y`` after :meth:`bind`."""
        m = trainer.model
        return (id(m), tuple(id(layer) for layer in m.layers), id(m.flat_params), id(m.flat_grads),
                id(trainer.loss), id(trainer.optimizer), bs,
                X.shape[1:], X.dtype, X.flags.c_contiguous, X.flags.writeable, X.flags.aligned,
                y.shape[1:], y.dtype, y.flags.c_contiguous, y.flags.writeable, y.flags.aligned)

    @classmethod
    def build(cls, trainer, X, y, bs, parts=None):
        """Return a plan, or None if the model/loss/data do not fit the fused path."""
        model, loss = trainer.model, trainer.loss
        if X.ndim != 2 or not isinstance(loss, (MSELoss, SoftmaxCrossEntropy)):
            return None
        if type(trainer.optimizer) not in (SGD, Adam, AdamW):
            return None  # an optimiser the compiled update does not know
        units = []  # [n_in, n_out, act, offW, offb]
        dropouts = []  # (unit index, Dropout layer) of the dropout after that unit
        slices = {(li, name): sl for li, name, sl in model.param_slices}
        for li, layer in enumerate(model.layers):
            open_unit = bool(units) and (not dropouts or dropouts[-1][0] != len(units) - 1)
            if type(layer) is Dense:
                units.append([layer.n_in, layer.n_out, K.ACT_IDENTITY,
                              slices[(li, "W")].start, slices[(li, "b")].start])
            elif isinstance(layer, Activation) and open_unit and units[-1][2] == K.ACT_IDENTITY:
                units[-1][2] = layer.code
            elif type(layer) is Dropout and open_unit:
                dropouts.append((len(units) - 1, layer))
            else:
                return None
        if not units or units[0][0] != X.shape[1]:
            return None
        n_out = units[-1][1]
        if isinstance(loss, MSELoss):
            if y.shape != (X.shape[0], n_out):
                return None
        elif y.ndim != 1:
            return None
        return cls(trainer, X, y, bs, np.array(units, dtype=np.int64), parts, dropouts)

    def __init__(self, trainer, X, y, bs, table, parts=None, dropouts=()):
        self.trainer = trainer
        self.model = trainer.model
        self.opt = trainer.optimizer
        # the objects the key names by id stay alive with the plan, so no
        # other object can take one of their ids
        self._keyed = (self.model, tuple(self.model.layers), self.model.flat_params, self.model.flat_grads,
                       trainer.loss, self.opt)
        self.key = self.key_of(trainer, X, y, bs)
        self.X = X
        self.bs = bs
        self.table = table
        dt = self.model.dtype
        n_out = int(table[-1, 1])
        if isinstance(trainer.loss, MSELoss):
            self.kind = K.LOSS_MSE
            self.Yf, self.Yi = y, np.zeros(0, np.int64)
        else:
            self.kind = K.LOSS_XENT
            self.Yf, self.Yi = np.zeros((0, n_out), dt), y
        widths = [int(table[0, 0])] + [int(w) for w in table[:, 1]]
        largest = max(bs * int(r[0]) * int(r[1]) for r in table)
        self.parts = choose_parts(bs, largest) if parts is None else max(1, min(int(parts), bs))
        rows = -(-bs // self.parts)
        off = 0
        hoff = []
        for w in table[:, 1]:
            hoff.append(off)
            off += rows * int(w)
        self.hoff = np.array(hoff, dtype=np.int64)
        dmax = rows * max(widths)
        self.d0, off = off, off + dmax
        self.d1, off = off, off + dmax
        self.row_off, off = off, off + rows
        self.xb_off, off = off, off + rows * X.shape[1]
        self.yb_off, off = off, off + rows * n_out
        # dropout: its seed, its step (refreshed per run) and its output's offset
        self.dropouts = list(dropouts)
        self.drop = np.zeros((table.shape[0], 3), np.int64)
        self.drop_p = np.zeros(table.shape[0], np.float64)
        for unit, layer in self.dropouts:
            self.drop[unit, 2], off = off, off + rows * int(table[unit, 1])
        self.stride = off
        self.ws = np.zeros(self.parts * off, dt)
        n_params = self.model.flat_params.size
        self.gx = np.zeros((self.parts - 1, n_params), dt)
        self.yb_i = np.zeros(bs, np.int64)
        self.losses = np.zeros(0, np.float64)
        # BLAS runs on one thread while the parts run in parallel (threads
        # must not multiply), and for small products, where waking OpenBLAS's
        # threads costs more than it saves (see single_thread_blas); no switch
        # when every product runs as compiled loops
        self.single_blas = (self.parts > 1 or largest < SMALL_PRODUCT) and largest > K.SMALL_MM
        self.chunk = 1  # steps per compiled call: Trainer.fit grows it and keeps it across calls
        self.empty = np.zeros(0, dt)  # stands for the other optimiser's arrays
        self._ready = False
        self._background = None
        self._asked = False  # active() asked while not ready (across fit calls)
        self._since = None  # when it asked after a layer-by-layer step (perf_counter)
        self._launched = False  # the background compile was started

    def bind(self, X, y):
        """Run on new data of the same :attr:`key`."""
        self.X = X
        if self.kind == K.LOSS_MSE:
            self.Yf = y
        else:
            self.Yi = y

    def release(self):
        """Drop the references to the data (the plan outlives the fit call)."""
        self.X = None
        if self.kind == K.LOSS_MSE:
            self.Yf = None
        else:
            self.Yi = None

    def start(self, mode, steps):
        """Choose how a run of ``steps`` steps begins: True to run fused from
        its first step, False to begin layer by layer while a background
        process compiles the fused kernel (tiered start, ``mode="auto"``:
        only for short runs whose batch is one part, where both paths do the
        same arithmetic, so switching keeps the results bitwise those of
        either path).  :meth:`active` then tells when to switch."""
        self._ready = (self._ready or mode is True or self.parts > 1 or steps > SHORT_RUN_STEPS
                       or _load_compiled(K.mlp_train_steps, self._args(np.zeros(1, np.int64), 0, 0, True)))
        return self._ready

    def active(self):
        """Whether the fused path runs now (asked before every step): the
        kernel was ready at the start, or the background compile has put it
        into the cache since.

        The background compile waits for the layer-by-layer kernels: it
        starts once layer-by-layer steps have run for ``BACKGROUND_AFTER``
        seconds after the first (which compiles them), or when the process
        exits, whichever comes first.  On two cores it slowed a short run
        beside it by a tenth, and a run shorter than the compile would not
        switch anyway."""
        if self._ready:
            return True
        if not self._launched:
            if not self._asked:  # before the first step, whose kernels compile now
                self._asked = True
            elif self._since is None:  # one step has run layer by layer
                self._since = time.perf_counter()
                compile_at_exit(self.model.dtype)
            elif time.perf_counter() - self._since >= BACKGROUND_AFTER:
                self._launched = True
                self._background = compile_in_background(self.model.dtype)
        elif self._background is not None and self._background.poll() is not None:
            self._background = None
            self._ready = _load_compiled(K.mlp_train_steps, self._args(np.zeros(1, np.int64), 0, 0, True))
        return self._ready

    def run(self, order, step0, step1, check):
        """Run steps ``[step0, step1)`` of the epoch with sample ``order``;
        returns how many were applied (fewer if a step was not finite)."""
        if self.losses.size < step1 - step0:
            self.losses = np.zeros(max(step1 - step0, 2 * self.losses.size), np.float64)
        m, opt = self.model, self.opt
        self._read_dropouts()
        with single_thread_blas(self.single_blas):
            done = self._run(order, step0, step1, check, m, opt)
        opt.steps += done
        for unit, layer in self.dropouts:
            if self.drop_p[unit] > 0.0:
                layer.step += done  # one mask per applied step, as Dropout.forward counts
        return done

    def _read_dropouts(self):
        for unit, layer in self.dropouts:
            self.drop_p[unit] = layer.active_p
            self.drop[unit, 0], self.drop[unit, 1] = layer.seed, layer.step

    def _run(self, order, step0, step1, check, m, opt):
        return K.mlp_train_steps(*self._args(order, step0, step1, check))

    def _args(self, order, step0, step1, check):
        m, opt, e = self.model, self.opt, self.empty
        if isinstance(opt, Adam):
            kind, velocity, momentum, nesterov = K.OPT_ADAM, e, 0.0, False
            mom1, mom2, vmax = opt.exp_avg, opt.exp_avg_sq, opt.max_exp_avg_sq
            (beta1, beta2), eps, amsgrad, decoupled = opt.betas, opt.eps, opt.amsgrad, opt.decoupled
        else:
            kind, velocity, momentum, nesterov = K.OPT_SGD, opt.velocity, opt.momentum, opt.nesterov
            mom1 = mom2 = vmax = e
            beta1, beta2, eps, amsgrad, decoupled = 0.0, 0.0, 0.0, False, False
        return (self.X, self.Yf, self.Yi, order, self.bs, step0, step1, self.table,
                m.flat_params, m.flat_grads, self.gx, velocity, self.ws, self.stride, self.hoff,
                self.d0, self.d1, self.row_off, self.xb_off, self.yb_off, self.yb_i, self.kind, float(opt.lr),
                float(momentum), float(opt.weight_decay), bool(nesterov),
                -1.0 if opt.clip_norm is None else float(opt.clip_norm), bool(check), self.losses,
                kind, mom1, mom2, vmax, int(opt.steps), float(beta1), float(beta2), float(eps), bool(amsgrad),
                bool(decoupled), self.drop, self.drop_p)
