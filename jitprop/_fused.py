"""The compiled multi-step training path for multilayer perceptrons.

:class:`FusedMLP` describes a Sequential of Dense and activation layers to
:func:`jitprop.kernels.raw.mlp_train_steps` (a table of layer sizes,
activation codes and parameter offsets, plus one workspace vector) so that
many SGD steps run inside one compiled call.  It uses the model's own flat
parameter, gradient and momentum vectors, so the model, the optimizer and
checkpoints see every update.
"""

import numpy as np

from ._threads import single_thread_blas
from .kernels import raw as K
from .layers import Activation, Dense
from .losses import MSELoss, SoftmaxCrossEntropy


#: Below this many multiply-adds in the largest product of a step, the fused
#: path runs BLAS on one thread (mlp-small: 6.4M, mlp-mid: 51M).
SMALL_PRODUCT = 1 << 24


class FusedMLP:
    """A ready-to-run plan of the fused path for one (trainer, data, batch size)."""

    @classmethod
    def build(cls, trainer, X, y, bs):
        """Return a plan, or None if the model/loss/data do not fit the fused path."""
        model, loss = trainer.model, trainer.loss
        if X.ndim != 2 or not isinstance(loss, (MSELoss, SoftmaxCrossEntropy)):
            return None
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
        return cls(trainer, X, y, bs, np.array(units, dtype=np.int64))

    def __init__(self, trainer, X, y, bs, table):
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
        off = 0
        hoff = []
        for w in table[:, 1]:
            hoff.append(off)
            off += bs * int(w)
        self.hoff = np.array(hoff, dtype=np.int64)
        dmax = bs * max(widths)
        self.d0, off = off, off + dmax
        self.d1, off = off, off + dmax
        self.row_off, off = off, off + bs
        self.xb_off, off = off, off + bs * X.shape[1]
        self.yb_off, off = off, off + bs * n_out
        self.ws = np.zeros(off, dt)
        self.yb_i = np.zeros(bs, np.int64)
        self.losses = np.zeros(0, np.float64)
        # small products run faster on one BLAS thread (see single_thread_blas)
        largest = max(bs * int(r[0]) * int(r[1]) for r in table)
        self.small = largest < SMALL_PRODUCT

    def run(self, order, step0, step1, check):
        """Run steps ``[step0, step1)`` of the epoch with sample ``order``;
        returns how many were applied (fewer if a step was not finite)."""
        if self.losses.size < step1 - step0:
            self.losses = np.zeros(max(step1 - step0, 2 * self.losses.size), np.float64)
        m, opt = self.model, self.opt
        with single_thread_blas(self.small):
            done = self._run(order, step0, step1, check, m, opt)
        opt.steps += done
        return done

    def _run(self, order, step0, step1, check, m, opt):
        return K.mlp_train_steps(
            self.X, self.Yf, self.Yi, order, self.bs, step0, step1, self.table,
            m.flat_params, m.flat_grads, opt.velocity, self.ws, self.hoff, self.d0, self.d1,
            self.row_off, self.xb_off, self.yb_off, self.yb_i, self.kind, opt.lr, opt.momentum,
            opt.weight_decay, opt.nesterov, -1.0 if opt.clip_norm is None else opt.clip_norm,
            bool(check), self.losses)
