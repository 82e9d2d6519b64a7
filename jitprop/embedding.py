"""Embedding layer: integer ids -> rows of a learned table."""

import numpy as np

from ._checks import as_float_dtype, check_int
from .kernels import raw as K
from .layers import LAYERS, Layer

__all__ = ["Embedding"]


@LAYERS.register
class Embedding(Layer):
    """Look up rows of a table ``W`` by integer index, like ``torch.nn.Embedding``.

    Parameters
    ----------
    num_embeddings : int
        Number of rows V (valid indices ``0 .. V-1``).
    dim : int
        Row width D.
    dtype : float32 or float64
    seed : int or None
        ``W`` is drawn from N(0, 1), PyTorch's default.

    Notes
    -----
    Input: an integer array ``(batch, T)`` or ``(batch,)`` (any integer dtype);
    output ``(batch, T, D)`` or ``(batch, D)``.  Indices outside ``[0, V)``
    raise ``ValueError`` before anything is written.  ``backward`` adds the
    rows of ``dy`` into ``grads["W"]`` (repeated indices add up), each row of
    ``W`` owned by one thread and added to in index order: race-free and
    independent of the thread count, and returns None: the input is not
    differentiable.  As the first layer of a :class:`~jitprop.Sequential`,
    the model takes integer input (``integer_input``).
    """

    #: Sequential and Trainer pass integer input through unconverted.
    integer_input = True

    def __init__(self, num_embeddings, dim, dtype=np.float32, seed=None):
        super().__init__()
        self.num_embeddings = check_int("num_embeddings", num_embeddings, 1)
        self.dim = check_int("dim", dim, 1)
        self.dtype = as_float_dtype(dtype)
        rng = np.random.default_rng(seed)
        self.params = {"W": rng.standard_normal((self.num_embeddings, self.dim)).astype(self.dtype)}
        self.grads = {"W": np.zeros_like(self.params["W"])}
        self._idx = None
        self._lead = None

    def output_shape(self, input_shape):
        return tuple(input_shape) + (self.dim,)

    def forward(self, x):
        """x: integer (batch, ...) -> (batch, ..., dim)."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"Embedding: input must be a numpy.ndarray of integers, got {type(x).__name__}")
        if x.dtype.kind not in "iu":
            raise TypeError(f"Embedding: input must hold integer indices, got dtype {x.dtype}")
        if x.ndim < 1 or x.size == 0:
            raise ValueError(f"Embedding: input must be a non-empty (batch,) or (batch, T) array, got {x.shape}")
        V = self.num_embeddings
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= V:
            raise ValueError(f"Embedding({V}, {self.dim}): indices must lie in [0, {V}), "
                             f"got values in [{lo}, {hi}]")
        n = x.size
        # a private copy: backward scatters by these indices, so they must not change in between
        idx = self._buffer("idx", (n,), np.dtype(np.intp))
        np.copyto(idx, x.reshape(n), casting="unsafe")
        out = self._buffer("out", (n, self.dim), self.dtype)
        K.embedding_forward(idx, self.params["W"], out)
        self._idx = idx
        self._lead = x.shape
        return out.reshape(x.shape + (self.dim,))

    def backward(self, dy, need_dx=True):
        """dy: (batch, ..., dim) -> None (fills ``grads["W"]``)."""
        if self._idx is None:
            raise RuntimeError("Embedding.backward called before forward")
        expected = self._lead + (self.dim,)
        if not isinstance(dy, np.ndarray) or dy.shape != expected or dy.dtype != self.dtype \
                or not dy.flags.c_contiguous:
            raise ValueError(f"Embedding.backward: dy must be C-contiguous {self.dtype} of shape {expected}, "
                             f"got {getattr(dy, 'dtype', None)} {getattr(dy, 'shape', None)}")
        K.embedding_backward(self._idx, dy.reshape(self._idx.shape[0], self.dim), self.grads["W"])
        return None

    def get_config(self):
        return {"num_embeddings": self.num_embeddings, "dim": self.dim, "dtype": self.dtype.name}

    def __repr__(self):
        return f"Embedding({self.num_embeddings}, {self.dim}, dtype={self.dtype.name})"
