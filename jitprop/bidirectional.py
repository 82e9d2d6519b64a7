"""Bidirectional wrapper: a recurrent layer and a copy of it over the reversed sequence."""

import numpy as np

from .layers import LAYERS, Layer

__all__ = ["Bidirectional"]


@LAYERS.register
class Bidirectional(Layer):
    """Run a recurrent layer forward in time and a copy of it backward in
    time, and concatenate their outputs on the last axis, forward first (as
    PyTorch's ``bidirectional=True``).

    Parameters
    ----------
    layer : LSTM or GRU (not stateful)
        The forward-time layer; ``return_sequences`` comes from it.
    seed : int or None
        Initialisation seed of the backward-time copy (a new layer built from
        ``layer.get_config()``, initialised independently, as in PyTorch).

    Attributes
    ----------
    forward_layer, backward_layer : Layer
        Ordinary layers with the usual parameters; ``backward_layer`` reads
        the sequence reversed in time.

    Notes
    -----
    Input ``(batch, T, n_in)``; output ``(batch, T, 2H)`` with
    ``out[:, t] = [h_fwd_t, h_bwd_t]`` where ``h_bwd_t`` is the backward
    layer's state after it has read steps ``T-1 .. t``; with
    ``return_sequences=False``, ``(batch, 2H)``: the last step of each
    direction (``h_fwd_{T-1}`` and ``h_bwd_0``), which is PyTorch's ``h_n``.
    Parameters are named ``forward.<name>`` and ``backward.<name>``.
    """

    def __init__(self, layer, seed=None):
        super().__init__()
        if not isinstance(layer, Layer) or not hasattr(layer, "n_hidden") or not hasattr(layer, "return_sequences"):
            raise TypeError(f"Bidirectional wraps a recurrent layer (LSTM, GRU), got {type(layer).__name__}")
        if getattr(layer, "stateful", False):
            raise ValueError("Bidirectional cannot wrap a stateful layer (the backward direction has no carry)")
        self.forward_layer = layer
        self.backward_layer = type(layer)(**layer.get_config(), seed=seed)
        self.dtype = layer.dtype
        self.n_in = layer.n_in
        self.n_hidden = layer.n_hidden
        self.return_sequences = layer.return_sequences
        self.params, self.grads = {}, {}
        for prefix, sub in self._subs():
            self.params.update({prefix + k: v for k, v in sub.params.items()})
            self.grads.update({prefix + k: v for k, v in sub.grads.items()})
        self._T = None

    def _subs(self):
        return (("forward.", self.forward_layer), ("backward.", self.backward_layer))

    def bind(self, params, grads):
        for prefix, sub in self._subs():
            n = len(prefix)
            sub.bind({k[n:]: v for k, v in params.items() if k.startswith(prefix)},
                     {k[n:]: v for k, v in grads.items() if k.startswith(prefix)})
        self.params = params
        self.grads = grads

    def output_shape(self, input_shape):
        shape = self.forward_layer.output_shape(input_shape)
        return tuple(shape[:-1]) + (2 * self.n_hidden,)

    def forward(self, x):
        """x: (batch, T, n_in) -> (batch, T, 2H) or (batch, 2H)."""
        if not isinstance(x, np.ndarray) or x.ndim != 3:
            raise ValueError(f"Bidirectional: input must be a numpy.ndarray of shape (batch, T, {self.n_in}), "
                             f"got {getattr(x, 'shape', type(x).__name__)}")
        y_f = self.forward_layer.forward(x)           # checks dtype, shape and contiguity
        B, T, n_in = x.shape
        H = self.n_hidden
        x_rev = self._buffer("x_rev", (B, T, n_in), self.dtype)
        np.copyto(x_rev, x[:, ::-1])
        y_b = self.backward_layer.forward(x_rev)
        self._T = T
        if self.return_sequences:
            out = self._buffer("out", (B, T, 2 * H), self.dtype)
            np.copyto(out[:, :, :H], y_f)
            np.copyto(out[:, :, H:], y_b[:, ::-1])
        else:
            out = self._buffer("out", (B, 2 * H), self.dtype)
            np.copyto(out[:, :H], y_f)
            np.copyto(out[:, H:], y_b)
        return out

    def backward(self, dy, need_dx=True):
        """dy: (batch, T, 2H) or (batch, 2H) -> dx (batch, T, n_in) or None."""
        if self._T is None:
            raise RuntimeError("Bidirectional.backward called before forward")
        H = self.n_hidden
        B, T = dy.shape[0], self._T
        expected = (B, T, 2 * H) if self.return_sequences else (B, 2 * H)
        if not isinstance(dy, np.ndarray) or dy.shape != expected or dy.dtype != self.dtype:
            raise ValueError(f"Bidirectional.backward: dy must be {self.dtype} of shape {expected}, "
                             f"got {getattr(dy, 'dtype', None)} {getattr(dy, 'shape', None)}")
        dy_f = self._buffer("dy_f", expected[:-1] + (H,), self.dtype)
        dy_b = self._buffer("dy_b", expected[:-1] + (H,), self.dtype)
        if self.return_sequences:
            np.copyto(dy_f, dy[:, :, :H])
            np.copyto(dy_b, dy[:, ::-1, H:])
        else:
            np.copyto(dy_f, dy[:, :H])
            np.copyto(dy_b, dy[:, H:])
        dx_f = self.forward_layer.backward(dy_f, need_dx)
        dx_b = self.backward_layer.backward(dy_b, need_dx)
        if not need_dx:
            return None
        dx = self._buffer("dx", dx_f.shape, self.dtype)
        np.add(dx_f, dx_b[:, ::-1], out=dx)
        return dx

    def one_thread_blas(self, batch):
        return self.forward_layer.one_thread_blas(batch) or self.backward_layer.one_thread_blas(batch)

    def get_config(self):
        return {"layer": {"type": type(self.forward_layer).__name__, "config": self.forward_layer.get_config()}}

    @classmethod
    def from_config(cls, config):
        spec = config["layer"]
        layer_cls = LAYERS.get(spec["type"])
        if layer_cls is None:
            raise ValueError(f"Bidirectional: unknown layer type {spec['type']!r}")
        return cls(layer_cls.from_config(spec["config"]))

    def __repr__(self):
        return f"Bidirectional({self.forward_layer!r})"
