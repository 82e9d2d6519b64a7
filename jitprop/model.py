"""Sequential model: a stack of layers with all parameters in one flat vector."""

import contextlib

import numpy as np

from ._checks import as_float_dtype
from .kernels import ACT_IDENTITY
from .layers import Activation, Dense, Layer

__all__ = ["Sequential"]


class Sequential:
    """A stack of layers applied in order.

    Parameters
    ----------
    layers : list of Layer
        For example ``[Dense(784, 128), ReLU(), Dense(128, 10)]``.  All layers
        with parameters must share one dtype (float32 or float64).
    fuse : bool, default True
        Fuse a Dense followed by an activation into one compiled kernel
        (same results, one pass less over memory).

    Attributes
    ----------
    layers : list of Layer
    dtype : numpy dtype
    flat_params : ndarray (n_params,)
        Every parameter of every layer, packed contiguously.  Each layer's
        ``params[name]`` is a view into it, so an optimizer updates the whole
        model with one kernel call and distributed training can sum gradients
        in one message.
    flat_grads : ndarray (n_params,)
        The gradients, packed the same way (``layer.grads[name]`` are views).
    param_slices : list of (layer_index, name, slice)
        Where each parameter lives in the flat vectors.

    Notes
    -----
    ``forward`` and ``backward`` return views of internal buffers, overwritten
    by the next call; ``predict`` returns a new array.
    """

    def __init__(self, layers, fuse=True):
        layers = list(layers)
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}] must be a jitprop Layer, got {type(layer).__name__}")
        if len(set(map(id, layers))) != len(layers):
            raise ValueError("the same layer object appears twice in Sequential")
        self.layers = layers
        dtypes = {layer.dtype for layer in layers if layer.params}
        if len(dtypes) > 1:
            raise TypeError(f"all layers with parameters must share one dtype, got {sorted(d.name for d in dtypes)}")
        self.dtype = as_float_dtype(dtypes.pop()) if dtypes else np.dtype(np.float32)
        for layer in layers:
            if not layer.params:
                layer.dtype = self.dtype
        self._outputs = [None] * len(layers)
        self._pack()
        self._fuse = bool(fuse)
        self._set_fusion(self._fuse)

    # -- parameters -------------------------------------------------------------
    def _pack(self):
        total = sum(int(np.prod(s)) for layer in self.layers for s in layer.param_shapes().values())
        self.flat_params = np.zeros(total, dtype=self.dtype)
        self.flat_grads = np.zeros(total, dtype=self.dtype)
        self._finite = np.empty(total, dtype=bool)  # grads_finite's scratch, so the check allocates nothing
        self.param_slices = []
        off = 0
        for li, layer in enumerate(self.layers):
            params, grads = {}, {}
            for name, shape in layer.param_shapes().items():
                size = int(np.prod(shape))
                sl = slice(off, off + size)
                params[name] = self.flat_params[sl].reshape(shape)
                grads[name] = self.flat_grads[sl].reshape(shape)
                self.param_slices.append((li, name, sl))
                off += size
            layer.bind(params, grads)

    def _set_fusion(self, on):
        for layer in self.layers:
            if isinstance(layer, Dense):
                layer.fuse_activation(ACT_IDENTITY)
            if isinstance(layer, Activation):
                layer.set_fused(False)
        if not on:
            return
        for prev, layer in zip(self.layers, self.layers[1:]):
            if isinstance(prev, Dense) and isinstance(layer, Activation):
                prev.fuse_activation(layer.code)
                layer.set_fused(True)

    @property
    def fuse(self):
        """Whether a Dense followed by an activation runs as one kernel."""
        return self._fuse

    def grads_finite(self):
        """Whether every element of :attr:`flat_grads` is finite (no NaN or inf)."""
        return bool(np.isfinite(self.flat_grads, out=self._finite).all())

    @property
    def layer_outputs(self):
        """Each layer's output at the last :meth:`forward` (None before it):
        views of the layers' buffers, for diagnostics."""
        return self._outputs

    @property
    def n_params(self):
        """Total number of scalar parameters."""
        return self.flat_params.size

    def get_params(self):
        """A copy of the flat parameter vector."""
        return self.flat_params.copy()

    def set_params(self, flat):
        """Load a flat parameter vector (as returned by :meth:`get_params`)."""
        flat = np.asarray(flat)
        if flat.shape != self.flat_params.shape:
            raise ValueError(f"flat parameters must have shape {self.flat_params.shape}, got {flat.shape}")
        self.flat_params[...] = flat

    # -- training / evaluation mode ----------------------------------------------------
    @property
    def training(self):
        """True in training mode (the default), False after :meth:`eval`."""
        return all(layer.training for layer in self.layers)

    def train(self, mode=True):
        """Put every layer in training mode (``mode=False``: evaluation mode),
        as ``torch.nn.Module.train``; returns the model."""
        for layer in self.layers:
            layer.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode: :class:`~jitprop.Dropout` is the identity."""
        return self.train(False)

    @contextlib.contextmanager
    def eval_mode(self):
        """Context in which the model is in evaluation mode; each layer's mode
        is restored afterwards."""
        modes = [layer.training for layer in self.layers]
        self.eval()
        try:
            yield self
        finally:
            for layer, mode in zip(self.layers, modes):
                layer.training = mode

    # -- input ----------------------------------------------------------------------
    @property
    def input_dtype(self):
        """dtype of the model's input: int64 indices when the first layer takes
        integer input (an :class:`~jitprop.Embedding`), else :attr:`dtype`."""
        return np.dtype(np.int64) if self.layers[0].integer_input else self.dtype

    def as_input(self, x, name="x"):
        """``x`` as a C-contiguous array of :attr:`input_dtype`; raises
        TypeError when the model takes indices and ``x`` holds no integers
        (a float array would be truncated silently)."""
        x = np.asarray(x)
        if self.layers[0].integer_input and x.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer indices (the first layer is {self.layers[0]!r}), "
                            f"got dtype {x.dtype}")
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    # -- computation ----------------------------------------------------------------
    def forward(self, x):
        """Training forward pass.

        Parameters
        ----------
        x : ndarray (batch, *input_shape), the model's dtype (any integer
            dtype when the model takes indices), C-contiguous

        Returns
        -------
        ndarray (batch, *output_shape)
            A view of the last layer's output buffer.
        """
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
        integer = self.layers[0].integer_input
        if integer and x.dtype.kind not in "iu":
            raise TypeError(f"x must hold integer indices (the first layer is {self.layers[0]!r}), got {x.dtype}")
        if not integer and x.dtype != self.dtype:
            raise TypeError(f"x must have dtype {self.dtype} (the model's dtype), got {x.dtype}; "
                            f"convert once with x.astype(np.{self.dtype})")
        if x.ndim < (1 if integer else 2) or x.shape[0] == 0:
            raise ValueError(f"x must have a non-empty leading batch axis, got shape {x.shape}")
        if not x.flags.c_contiguous:
            raise ValueError("x must be C-contiguous (use numpy.ascontiguousarray)")
        outs = self._outputs
        for i, layer in enumerate(self.layers):
            x = layer.forward(x)
            outs[i] = x  # kept for diagnostics (which layer first went non-finite)
        return x

    def backward(self, dy, need_input_grad=True):
        """Backward pass after :meth:`forward`.

        Parameters
        ----------
        dy : ndarray, shape of the last forward output
            dL/d(output), for example ``loss.backward()``.
        need_input_grad : bool, default True
            If False, the first layer skips computing dL/dx (saves a matrix
            product) and None is returned.

        Returns
        -------
        ndarray (batch, *input_shape) or None
            dL/dx, a view of an internal buffer.  Every layer's ``grads`` (and
            so :attr:`flat_grads`) are overwritten.
        """
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            layer = self.layers[i]
            if i == 0:
                return layer.backward(dy, need_dx=need_input_grad)
            # (a fused activation still applies its derivative here: only the
            # forward pass is fused into the Dense kernel)
            dy = layer.backward(dy, need_dx=True)
        return dy

    def predict(self, x, batch_size=1024):
        """Inference on any number of rows, in chunks of ``batch_size``, in
        evaluation mode (dropout off).

        Parameters
        ----------
        x : array_like (n, *input_shape)
            Converted to the model's :attr:`input_dtype` if needed.

        Returns
        -------
        ndarray (n, *output_shape), a new array.
        """
        x = self.as_input(x)
        if x.ndim < (1 if self.layers[0].integer_input else 2):
            raise ValueError(f"x must have a leading batch axis, got shape {x.shape}")
        n = x.shape[0]
        out = None
        with self.eval_mode():
            for s in range(0, n, batch_size):
                y = self.forward(x[s:s + batch_size])
                if out is None:
                    out = np.empty((n,) + y.shape[1:], dtype=self.dtype)
                out[s:s + y.shape[0]] = y
        if out is None:
            raise ValueError("x has no rows")
        return out

    def one_thread_blas(self, batch):
        """Whether a training step on ``batch`` rows should run with one BLAS
        thread: True when a layer calls BLAS from inside parallel loops
        (an :class:`~jitprop.LSTM` whose batch is cut into parts).  The
        trainer then keeps OpenBLAS's own threads idle for the whole step, so
        that they do not compete with Numba's threads for the cores."""
        return any(layer.one_thread_blas(batch) for layer in self.layers)

    def buffer_bytes(self):
        """Bytes held by parameters, gradients and every layer's buffers."""
        return self.flat_params.nbytes + self.flat_grads.nbytes + self._finite.nbytes + sum(layer.buffer_bytes() for layer in self.layers)

    def __repr__(self):
        inner = ",\n    ".join(repr(layer) for layer in self.layers)
        return f"Sequential([\n    {inner}\n])  # {self.n_params} parameters, {self.dtype.name}"
