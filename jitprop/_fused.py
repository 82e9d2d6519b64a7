"""The compiled multi-step training path for multilayer perceptrons.

:class:`FusedMLP` describes a Sequential of Dense and activation layers to
:func:`jitprop.kernels.raw.mlp_train_steps` (a table of layer sizes,
activation codes and parameter offsets, plus one workspace vector) so that
many SGD or Adam/AdamW steps run inside one compiled call.  It uses the
model's own flat parameter and gradient vectors and the optimizer's own state
arrays, so the model, the optimizer and checkpoints see every update.
"""

import numpy as np

from ._threads import batch_parts, single_thread_blas
from .kernels import raw as K
from .layers import Activation, Dense
from .losses import MSELoss, SoftmaxCrossEntropy
from .optim import SGD, Adam, AdamW


#: Below this many multiply-adds in the largest product of a step, the fused
#: path runs BLAS on one thread (mlp-small: 6.4M, mlp-mid: 51M).
SMALL_PRODUCT = 1 << 24
#: A batch is cut into parts of at least this many rows ...
MIN_PART_ROWS = 32
#: ... when its largest product has at least this many multiply-adds.
MIN_PART_PRODUCT = 1 << 20


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

    @classmethod
    def build(cls, trainer, X, y, bs, parts=None):
        """Return a plan, or None if the model/loss/data do not fit the fused path."""
        model, loss = trainer.model, trainer.loss
        if X.ndim != 2 or not isinstance(loss, (MSELoss, SoftmaxCrossEntropy)):
            return None
        if type(trainer.optimizer) not in (SGD, Adam, AdamW):
            return None  # an optimiser the compiled update does not know
        units = []  # [n_in, n_out, act, offW, offb]
        slices = {(li, name): sl for li, name, sl in model.param_slices}
        prev_dense = False
        for li, layer in enumerate(model.layers):
            if type(layer) is Dense:
                units.append([layer.n_in, layer.n_out, K.ACT_IDENTITY,
                              slices[(li, "W")].start, slices[(li, "b")].start])
                prev_dense = True
            elif isinstance(layer, Activation) and prev_dense and units[-1][2] == K.ACT_IDENTITY:
                units[-1][2] = layer.code
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
        return cls(trainer, X, y, bs, np.array(units, dtype=np.int64), parts)

    def __init__(self, trainer, X, y, bs, table, parts=None):
        self.trainer = trainer
        self.model = trainer.model
        self.opt = trainer.optimizer
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
        self.stride = off
        self.ws = np.zeros(self.parts * off, dt)
        n_params = self.model.flat_params.size
        self.gx = np.zeros((self.parts - 1, n_params), dt)
        self.yb_i = np.zeros(bs, np.int64)
        self.losses = np.zeros(0, np.float64)
        # BLAS runs on one thread while the parts run in parallel (threads
        # must not multiply), and for small products, where waking OpenBLAS's
        # threads costs more than it saves (see single_thread_blas)
        self.single_blas = self.parts > 1 or largest < SMALL_PRODUCT
        self.empty = np.zeros(0, dt)  # stands for the other optimiser's arrays

    def run(self, order, step0, step1, check):
        """Run steps ``[step0, step1)`` of the epoch with sample ``order``;
        returns how many were applied (fewer if a step was not finite)."""
        if self.losses.size < step1 - step0:
            self.losses = np.zeros(max(step1 - step0, 2 * self.losses.size), np.float64)
        m, opt = self.model, self.opt
        with single_thread_blas(self.single_blas):
            done = self._run(order, step0, step1, check, m, opt)
        opt.steps += done
        return done

    def _run(self, order, step0, step1, check, m, opt):
        e = self.empty
        if isinstance(opt, Adam):
            kind, velocity, momentum, nesterov = K.OPT_ADAM, e, 0.0, False
            mom1, mom2, vmax = opt.exp_avg, opt.exp_avg_sq, opt.max_exp_avg_sq
            (beta1, beta2), eps, amsgrad, decoupled = opt.betas, opt.eps, opt.amsgrad, opt.decoupled
        else:
            kind, velocity, momentum, nesterov = K.OPT_SGD, opt.velocity, opt.momentum, opt.nesterov
            mom1 = mom2 = vmax = e
            beta1, beta2, eps, amsgrad, decoupled = 0.0, 0.0, 0.0, False, False
        return K.mlp_train_steps(
            self.X, self.Yf, self.Yi, order, self.bs, step0, step1, self.table,
            m.flat_params, m.flat_grads, self.gx, velocity, self.ws, self.stride, self.hoff,
            self.d0, self.d1, self.row_off, self.xb_off, self.yb_off, self.yb_i, self.kind, opt.lr,
            momentum, opt.weight_decay, nesterov,
            -1.0 if opt.clip_norm is None else opt.clip_norm, bool(check), self.losses,
            kind, mom1, mom2, vmax, opt.steps, beta1, beta2, eps, amsgrad, decoupled)
