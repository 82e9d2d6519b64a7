"""jitprop: Numba-compiled backpropagation kernels for fast CPU training.

Layers (:class:`Dense`, :class:`ReLU`, :class:`Sigmoid`, :class:`Tanh`,
:class:`LSTM`), a :class:`Sequential` model, losses (:class:`MSELoss`,
:class:`SoftmaxCrossEntropy`), :class:`SGD` and a :class:`Trainer`; the
compiled kernels alone are in :mod:`jitprop.kernels`.
"""

import os as _os

# Numba's OpenMP threads and OpenBLAS's threads share the cores.  After each
# parallel loop libgomp's workers spin for GOMP_SPINCOUNT rounds (300,000 by
# default, about a millisecond here) before they sleep, starving the BLAS
# threads of the next matrix product (measured: an LSTM step 10-20x slower on
# 2 busy cores).  Sleeping at once (OMP_WAIT_POLICY=PASSIVE) costs a wake-up
# of tens of microseconds at every parallel loop instead.  A short spin keeps
# both costs small (see docs/performance.md), unless the user chose a policy.
# This takes effect when the OpenMP runtime starts, i.e. if jitprop is
# imported before anything else starts it.  JITPROP_OMP_DEFAULTS=0 leaves the
# OpenMP environment alone (the benchmark's PyTorch workers use it, so that
# PyTorch runs with its own defaults).  _OMP_ENV_SET records what was set.
_OMP_ENV_SET = {}
if (_os.environ.get("JITPROP_OMP_DEFAULTS", "1") != "0" and "OMP_WAIT_POLICY" not in _os.environ
        and "GOMP_SPINCOUNT" not in _os.environ):
    _os.environ["GOMP_SPINCOUNT"] = _OMP_ENV_SET["GOMP_SPINCOUNT"] = "2000"

from ._threads import get_num_threads, set_num_threads, threading_layer
from .checkpoint import CheckpointError, load
from .gradcheck import gradcheck, numerical_gradient, relative_error
from .layers import Activation, Dense, Layer, ReLU, Sigmoid, Tanh
from .lstm import LSTM
from .gru import GRU
from .losses import Loss, MSELoss, SoftmaxCrossEntropy
from .model import Sequential
from .optim import SGD
from .trainer import Progress, Trainer
from . import kernels

__version__ = "0.1.0"

__all__ = [
    "Activation", "Dense", "Layer", "ReLU", "Sigmoid", "Tanh", "LSTM",
    "GRU",
    "Loss", "MSELoss", "SoftmaxCrossEntropy",
    "Sequential", "SGD", "Trainer", "Progress",
    "gradcheck", "numerical_gradient", "relative_error",
    "set_num_threads", "get_num_threads", "threading_layer",
    "kernels", "load", "CheckpointError",
]
