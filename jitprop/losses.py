"""Loss functions with preallocated gradient buffers."""

import numpy as np

from ._registry import Registry
from .kernels import raw as K

__all__ = ["Loss", "MSELoss", "SoftmaxCrossEntropy", "LOSSES"]

#: Loss types a checkpoint can name (``@LOSSES.register`` adds one).
LOSSES = Registry("loss")


class Loss:
    """Base class.  ``forward(pred, target)`` returns the loss as a float and
    writes dL/dpred into a buffer that ``backward()`` returns (a view,
    overwritten by the next ``forward``)."""

    #: whether targets are integer class labels (enables accuracy in evaluate)
    classification = False

    def __init__(self):
        self._grad = None
        self._row = None
        self._g = None

    def _buffers(self, pred):
        n = pred.shape[0]
        g = self._grad
        if g is None or g.dtype != pred.dtype or g.shape[1:] != pred.shape[1:] or g.shape[0] < n:
            self._grad = g = np.empty(pred.shape, pred.dtype)
            self._row = np.empty(pred.shape[0], pred.dtype)
        return g[:n], self._row[:n]

    def _check_pred(self, pred):
        if not isinstance(pred, np.ndarray) or pred.dtype not in (np.float32, np.float64):
            raise TypeError(f"{type(self).__name__}: pred must be a float32/float64 ndarray")
        if pred.ndim < 1 or pred.shape[0] == 0 or pred.size == 0:
            raise ValueError(f"{type(self).__name__}: pred must be non-empty with a batch axis, got {pred.shape}")
        if not pred.flags.c_contiguous:
            raise ValueError(f"{type(self).__name__}: pred must be C-contiguous")

    def backward(self):
        """dL/dpred from the last ``forward`` (a view of an internal buffer)."""
        if self._g is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._g

    def __repr__(self):
        return f"{type(self).__name__}()"


@LOSSES.register
class MSELoss(Loss):
    """Mean squared error over all elements: ``mean((pred - target)**2)``.

    The article's ``C0 = (a - y)**2`` averaged over outputs and batch;
    gradient ``2 (pred - target) / pred.size``.  ``pred`` and ``target``:
    same shape ``(batch, ...)`` and dtype.
    """

    def forward(self, pred, target):
        self._check_pred(pred)
        if not isinstance(target, np.ndarray) or target.shape != pred.shape:
            raise ValueError(f"MSELoss: target must have shape {pred.shape}, got "
                             f"{getattr(target, 'shape', type(target).__name__)}")
        if target.dtype != pred.dtype:
            raise TypeError(f"MSELoss: target dtype must be {pred.dtype}, got {target.dtype}")
        if not target.flags.c_contiguous:
            raise ValueError("MSELoss: target must be C-contiguous")
        g, row = self._buffers(pred)
        value = (K.mse_loss_serial if pred.size < K.PAR_MIN else K.mse_loss)(pred, target, g, row)
        self._g = g
        return value


@LOSSES.register
class SoftmaxCrossEntropy(Loss):
    """Softmax followed by cross-entropy with integer labels, mean over the batch.

    ``pred`` are logits ``(batch, n_classes)``; ``target`` integer labels
    ``(batch,)`` in ``[0, n_classes)``.  Numerically stable (log-sum-exp).
    """

    classification = True

    def forward(self, pred, target):
        self._check_pred(pred)
        if pred.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy: logits must be (batch, n_classes), got {pred.shape}")
        if not isinstance(target, np.ndarray) or target.dtype.kind not in "iu":
            raise TypeError("SoftmaxCrossEntropy: target must be an ndarray of integer class labels, got "
                            f"{getattr(target, 'dtype', type(target).__name__)}")
        if target.shape != (pred.shape[0],):
            raise ValueError(f"SoftmaxCrossEntropy: target must have shape ({pred.shape[0]},), got {target.shape}")
        if not target.flags.c_contiguous:
            raise ValueError("SoftmaxCrossEntropy: target must be C-contiguous")
        g, row = self._buffers(pred)
        # the kernel checks the label range before writing anything
        value = (K.softmax_cross_entropy_serial if pred.size < K.PAR_MIN else K.softmax_cross_entropy)(
            pred, target, g, row)
        self._g = g
        return value
