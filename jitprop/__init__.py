"""jitprop: Numba-compiled backpropagation kernels for fast CPU training.

Layers (:class:`Dense`, :class:`ReLU`, :class:`Sigmoid`, :class:`Tanh`,
:class:`LSTM`), a :class:`Sequential` model, losses (:class:`MSELoss`,
:class:`SoftmaxCrossEntropy`), :class:`SGD` and a :class:`Trainer`; the
compiled kernels alone are in :mod:`jitprop.kernels`.
"""

import os as _os

# Numba's OpenMP threads and OpenBLAS's threads share the cores: after each
# parallel loop libgomp's workers spin by default, starving the BLAS threads
# of the next matrix product (measured: an LSTM step 10-20x slower on 2 busy
# cores).  Ask them to sleep instead, unless the user chose a policy.  This
# takes effect when the OpenMP runtime starts, i.e. if jitprop is imported
# before anything else starts it.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._threads import get_num_threads, set_num_threads, threading_layer
from .checkpoint import CheckpointError, load
from .gradcheck import gradcheck, numerical_gradient, relative_error
from .layers import Activation, Dense, Layer, ReLU, Sigmoid, Tanh
from .lstm import LSTM
from .losses import Loss, MSELoss, SoftmaxCrossEntropy
from .model import Sequential
from .optim import SGD
from .trainer import Progress, Trainer
from . import kernels

__version__ = "0.1.0"

__all__ = [
    "Activation", "Dense", "Layer", "ReLU", "Sigmoid", "Tanh", "LSTM",
    "Loss", "MSELoss", "SoftmaxCrossEntropy",
    "Sequential", "SGD", "Trainer", "Progress",
    "gradcheck", "numerical_gradient", "relative_error",
    "set_num_threads", "get_num_threads", "threading_layer",
    "kernels", "load", "CheckpointError",
]
