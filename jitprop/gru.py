"""The GRU layer, on the compiled sequence kernels of :mod:`jitprop.kernels._recurrent`."""

import numpy as np

from ._checks import as_float_dtype, check_int
from ._threads import batch_parts, single_thread_blas
from .kernels import raw as K
from .layers import LAYERS, Layer

__all__ = ["GRU"]

#: The batch is cut into parts of at least this many rows that run the whole
#: sequence at the same time (see :func:`jitprop.kernels.raw.gru_forward`).
MIN_PART_ROWS = 8


@LAYERS.register
class GRU(Layer):
    """Gated recurrent unit layer over whole sequences, ``torch.nn.GRU``'s equations::

        r = sigmoid(x_t W_xr + b_xr + h W_hr + b_hr)
        z = sigmoid(x_t W_xz + b_xz + h W_hz + b_hz)
        n = tanh(x_t W_xn + b_xn + r * (h W_hn + b_hn))
        h_t = (1 - z) * n + z * h_{t-1}

    The forward pass over all T steps and backpropagation through time are
    one compiled call each; the input projection of every step and the weight
    gradients are each one large matrix product.

    Parameters
    ----------
    n_in : int
        Input features.
    n_hidden : int
        Hidden units H.
    return_sequences : bool, default True
        Output ``(batch, T, H)`` (every step) or ``(batch, H)`` (last step).
    stateful : bool, default False
        Carry the final ``h`` of one call over as the initial state of the
        next (truncated BPTT; gradients do not cross calls).  The batch size
        must stay the same; :meth:`reset_state` zeroes the carried state.
    dtype : float32 or float64
    seed : int or None
        Initialisation seed: every parameter is drawn from
        ``U(-1/sqrt(H), 1/sqrt(H))``, PyTorch's default for ``nn.GRU``.

    Notes
    -----
    Input ``(batch, T, n_in)``.  Parameters: ``W_x`` ``(n_in, 3H)``, ``W_h``
    ``(H, 3H)``, ``b_x`` ``(3H,)``, ``b_h`` ``(3H,)`` in gate order r, z, n
    (two biases, because ``b_hn`` sits inside ``r * (...)``).  From PyTorch:
    ``W_x = weight_ih_l0.T``, ``W_h = weight_hh_l0.T``, ``b_x = bias_ih_l0``,
    ``b_h = bias_hh_l0``.

    After ``backward``, ``dh0`` holds the gradient with respect to the
    initial state.  Set ``h0`` with :meth:`set_state`.
    """

    def __init__(self, n_in, n_hidden, return_sequences=True, stateful=False, dtype=np.float32, seed=None):
        super().__init__()
        self.n_in = check_int("n_in", n_in, 1)
        self.n_hidden = H = check_int("n_hidden", n_hidden, 1)
        self.return_sequences = bool(return_sequences)
        self.stateful = bool(stateful)
        self.dtype = as_float_dtype(dtype)
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(H)
        self.params = {
            "W_x": rng.uniform(-k, k, (self.n_in, 3 * H)).astype(self.dtype),
            "W_h": rng.uniform(-k, k, (H, 3 * H)).astype(self.dtype),
            "b_x": rng.uniform(-k, k, (3 * H,)).astype(self.dtype),
            "b_h": rng.uniform(-k, k, (3 * H,)).astype(self.dtype),
        }
        self.grads = {name: np.zeros_like(v) for name, v in self.params.items()}
        self._x = None
        self._state = None   # carried h for stateful use or set_state
        self.dh0 = None

    # -- state ------------------------------------------------------------------
    def reset_state(self):
        """Forget the carried state: the next call starts from zeros."""
        self._state = None

    def set_state(self, h0):
        """Use ``h0`` ``(batch, H)`` as the initial state of the next forward
        call (and, when stateful, carry on from there)."""
        shape = (np.shape(h0)[0], self.n_hidden) if np.ndim(h0) == 2 else None
        h0 = np.array(h0, dtype=self.dtype, order="C")
        if shape is None or h0.shape != shape:
            raise ValueError(f"h0 must have shape (batch, {self.n_hidden}), got {h0.shape}")
        self._state = h0

    @property
    def state(self):
        """The carried ``h`` (a copy), or None."""
        return None if self._state is None else self._state.copy()

    # -- shapes ---------------------------------------------------------------------
    def output_shape(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] != self.n_in:
            raise ValueError(f"GRU({self.n_in}, {self.n_hidden}) takes samples of shape (T, {self.n_in}), "
                             f"got {tuple(input_shape)}")
        return (input_shape[0], self.n_hidden) if self.return_sequences else (self.n_hidden,)

    # -- computation ------------------------------------------------------------------
    def forward(self, x):
        """x: (batch, T, n_in) -> (batch, T, H) or (batch, H)."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"GRU: input must be a numpy.ndarray, got {type(x).__name__}")
        if x.ndim != 3 or x.shape[2] != self.n_in or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"GRU: input must have shape (batch, T, {self.n_in}) with batch, T >= 1, got {x.shape}")
        if x.dtype != self.dtype:
            raise TypeError(f"GRU: input dtype must be {self.dtype} (the layer's dtype), got {x.dtype}")
        if not x.flags.c_contiguous:
            raise ValueError("GRU: input must be C-contiguous")
        B, T, _ = x.shape
        H = self.n_hidden
        dt = self.dtype
        h_seq = self._buffer("h_seq", (B, T, H), dt)
        h_T = self._buffer("h_T", (B, H), dt)
        gates = self._buffer("gates", (B, T, 3 * H), dt)
        states = self._buffer("states", (2, B, T, H), dt)
        step_ws = self._buffer("step_ws", (B, 3 * H), dt)
        if self._state is not None:
            h0 = self._state
            if h0.shape[0] != B:
                raise ValueError(f"GRU: the carried state has batch size {h0.shape[0]}, this input {B}; "
                                 f"call reset_state() before changing the batch size")
        else:
            h0 = self._buffer("zeros_state", (B, H), dt, zero=True)
        p = self.params
        parts = batch_parts(B, MIN_PART_ROWS)
        with single_thread_blas(parts > 1):
            K.gru_forward(x, p["W_x"], p["W_h"], p["b_x"], p["b_h"], h0, h_seq, h_T, gates, states, step_ws, parts)
        if self.stateful:
            # backward does not read h0 (states holds every h_{t-1}): the carry may be overwritten
            carry = self._buffer("carry_h", (B, H), dt)
            np.copyto(carry, h_T)
            self._state = carry
        elif self._state is not None:
            self._state = None  # set_state applies to one call when not stateful
        self._x = x
        self._T = T
        return h_seq if self.return_sequences else h_T

    def backward(self, dy, need_dx=True):
        """dy: (batch, T, H) or (batch, H) -> dx (batch, T, n_in) or None."""
        if self._x is None:
            raise RuntimeError("GRU.backward called before forward")
        B, T, H = self._x.shape[0], self._T, self.n_hidden
        dt = self.dtype
        expected = (B, T, H) if self.return_sequences else (B, H)
        if not isinstance(dy, np.ndarray) or dy.shape != expected or dy.dtype != dt or not dy.flags.c_contiguous:
            raise ValueError(f"GRU.backward: dy must be C-contiguous {dt} of shape {expected}, "
                             f"got {getattr(dy, 'dtype', None)} {getattr(dy, 'shape', None)}")
        if self.return_sequences:
            dh_seq, dh_T = dy, self._buffer("zeros_state", (B, H), dt, zero=True)
        else:
            dh_seq, dh_T = self._buffer("zeros_seq", (B, T, H), dt, zero=True), dy
        dh0 = self._buffer("dh0", (B, H), dt)
        # an empty dx for an absent one: one compiled kernel for every layer of
        # a stack (dw_ws stays None for one part: see LSTM.backward)
        dx = self._buffer("dx", (B, T, self.n_in) if need_dx else (0, 0, 0), dt)
        g = self.grads
        parts = batch_parts(B, MIN_PART_ROWS)
        dw_ws = self._buffer("dw_ws", (parts - 1, (self.n_in + H) * 3 * H), dt) if parts > 1 else None
        with single_thread_blas(parts > 1):
            K.gru_backward(self._x, self.params["W_x"], self.params["W_h"], dh_seq, dh_T,
                           self._buffer("gates", (B, T, 3 * H), dt), self._buffer("states", (2, B, T, H), dt),
                           dx, g["W_x"], g["W_h"], g["b_x"], g["b_h"], dh0,
                           self._buffer("dgates", (B, T, 3 * H), dt), self._buffer("dgates_h", (B, T, 3 * H), dt),
                           self._buffer("step_ws", (B, 3 * H), dt), self._buffer("dh_ws", (B, H), dt),
                           parts, dw_ws)
        self.dh0 = dh0
        return dx if need_dx else None

    def one_thread_blas(self, batch):
        return batch_parts(batch, MIN_PART_ROWS) > 1

    def get_config(self):
        return {"n_in": self.n_in, "n_hidden": self.n_hidden, "return_sequences": self.return_sequences,
                "stateful": self.stateful, "dtype": self.dtype.name}

    def __repr__(self):
        extra = "" if self.return_sequences else ", return_sequences=False"
        extra += ", stateful=True" if self.stateful else ""
        return f"GRU({self.n_in}, {self.n_hidden}{extra}, dtype={self.dtype.name})"
