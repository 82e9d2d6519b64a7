"""jitprop: Numba-compiled backpropagation kernels for fast CPU training.

Layers (:class:`Dense`, :class:`ReLU`, :class:`Sigmoid`, :class:`Tanh`,
:class:`LSTM`), a :class:`Sequential` model, losses (:class:`MSELoss`,
:class:`SoftmaxCrossEntropy`), :class:`SGD` and a :class:`Trainer`; the
compiled kernels alone are in :mod:`jitprop.kernels`.
"""

from . import _openmp  # noqa: F401  (first: sets OpenMP defaults before any runtime starts)
from ._cache import cache_dir  # (second: places the kernels' compile cache before any kernel is defined)
from ._threads import get_num_threads, set_num_threads, threading_layer
from .checkpoint import CheckpointError
from .gradcheck import gradcheck, numerical_gradient, relative_error
from .layers import Activation, Dense, Dropout, Layer, ReLU, Sigmoid, Tanh
from .lstm import LSTM
from .gru import GRU
from .bidirectional import Bidirectional
from .embedding import Embedding
from .losses import Loss, MSELoss, SoftmaxCrossEntropy
from .model import Sequential
from .optim import SGD, Adam, AdamW, Optimizer
from .schedules import CosineAnnealingLR, LinearLR, LRScheduler, ReduceLROnPlateau, StepLR
from .stopping import EarlyStopping
from .trainer import Progress, Trainer, load
from . import kernels

__version__ = "0.1.0"

__all__ = [
    "Activation", "Dense", "Layer", "ReLU", "Sigmoid", "Tanh", "LSTM",
    "GRU", "Bidirectional", "Embedding",
    "Loss", "MSELoss", "SoftmaxCrossEntropy",
    "Sequential", "SGD", "Trainer", "Progress",
    "gradcheck", "numerical_gradient", "relative_error",
    "set_num_threads", "get_num_threads", "threading_layer",
    "kernels", "load", "CheckpointError", "cache_dir",
    "Optimizer", "Adam", "AdamW",
    "Dropout", "EarlyStopping",
    "LRScheduler", "StepLR", "CosineAnnealingLR", "LinearLR", "ReduceLROnPlateau",
]
