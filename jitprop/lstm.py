"""The LSTM layer, on the compiled sequence kernels (:func:`jitprop.kernels.raw.lstm_forward`, ``lstm_backward``)."""

import numpy as np

from ._checks import as_float_dtype, check_float, check_int, check_layer_input, check_output_grad
from ._threads import batch_parts, single_thread_blas
from .init import check_init, init_weight
from .kernels import raw as K
from .layers import LAYERS, Layer

__all__ = ["LSTM"]

#: The batch is cut into parts of at least this many rows that run the whole
#: sequence at the same time (see :func:`jitprop.kernels.raw.lstm_forward`).
MIN_PART_ROWS = 8


@LAYERS.register
class LSTM(Layer):
    """Long short-term memory layer over whole sequences.

    Gates in the order i, f, g, o, as in PyTorch::

        gates = x_t @ W_x + h_{t-1} @ W_h + b
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(c_t)

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
        Carry the final ``h`` and ``c`` of one call over as the initial state
        of the next (truncated backpropagation through time over long
        sequences); gradients do not flow across calls.  The batch size must
        stay the same; :meth:`reset_state` zeroes the carried state.  When
        False, every call starts from zero states.
    dtype : float32 or float64
    seed : int or None
        Initialisation seed.
    init : {"torch", "xavier_uniform", "he_uniform", "orthogonal"}
        "torch" (default): every parameter drawn from ``U(-1/sqrt(H), 1/sqrt(H))``,
        PyTorch's default for ``nn.LSTM``.  "xavier_uniform" and "he_uniform"
        draw ``W_x`` and ``W_h`` with that ``torch.nn.init`` formula (fans of
        torch's ``weight_ih``/``weight_hh``); "orthogonal" draws ``W_h`` with
        ``torch.nn.init.orthogonal_`` (orthonormal rows) and ``W_x`` with
        xavier_uniform.  These three set ``b`` to zero.
    forget_bias : float or None
        If set, the forget gate's bias ``b[H:2H]`` starts at this value
        (1.0 is a common choice); None leaves it as ``init`` draws it.

    Notes
    -----
    Input ``(batch, T, n_in)``.  Parameters: ``W_x`` ``(n_in, 4H)``, ``W_h``
    ``(H, 4H)``, ``b`` ``(4H,)``; PyTorch's weights convert as
    ``W_x = weight_ih_l0.T``, ``W_h = weight_hh_l0.T``,
    ``b = bias_ih_l0 + bias_hh_l0``.

    After ``backward``, ``dh0`` and ``dc0`` hold the gradients with respect
    to the initial states.  Set ``h0``/``c0`` with :meth:`set_state`.
    """

    def __init__(self, n_in, n_hidden, return_sequences=True, stateful=False, dtype=np.float32, seed=None,
                 init="torch", forget_bias=None):
        super().__init__()
        self.n_in = check_int("n_in", n_in, 1)
        self.n_hidden = H = check_int("n_hidden", n_hidden, 1)
        self.return_sequences = bool(return_sequences)
        self.stateful = bool(stateful)
        self.dtype = as_float_dtype(dtype)
        self.init = check_init(init)
        self.forget_bias = None if forget_bias is None else check_float("forget_bias", forget_bias)
        rng = np.random.default_rng(seed)
        if self.init == "torch":
            k = 1.0 / np.sqrt(H)
            self.params = {
                "W_x": rng.uniform(-k, k, (self.n_in, 4 * H)).astype(self.dtype),
                "W_h": rng.uniform(-k, k, (H, 4 * H)).astype(self.dtype),
                "b": rng.uniform(-k, k, (4 * H,)).astype(self.dtype),
            }
        else:
            kind_x = "xavier_uniform" if self.init == "orthogonal" else self.init
            self.params = {
                "W_x": init_weight(rng, kind_x, self.n_in, 4 * H, self.dtype),
                "W_h": init_weight(rng, self.init, H, 4 * H, self.dtype),
                "b": np.zeros(4 * H, self.dtype),
            }
        if self.forget_bias is not None:
            self.params["b"][H:2 * H] = self.forget_bias
        self.grads = {name: np.zeros_like(v) for name, v in self.params.items()}
        self._x = None
        self._B = None
        self._state = None   # carried (h, c) for stateful use or set_state
        self.dh0 = None
        self.dc0 = None

    # -- state ------------------------------------------------------------------
    def reset_state(self):
        """Forget the carried state: the next call starts from zeros."""
        self._state = None

    def set_state(self, h0, c0):
        """Use ``h0``, ``c0`` (each ``(batch, H)``) as the initial states of the
        next forward call (and, when stateful, carry on from there)."""
        shape = (np.shape(h0)[0], self.n_hidden) if np.ndim(h0) == 2 else None
        h0 = np.array(h0, dtype=self.dtype, order="C")
        c0 = np.array(c0, dtype=self.dtype, order="C")
        if shape is None or h0.shape != shape or c0.shape != shape:
            raise ValueError(f"h0 and c0 must both have shape (batch, {self.n_hidden}), "
                             f"got {h0.shape} and {c0.shape}")
        self._state = (h0, c0)

    @property
    def state(self):
        """The carried ``(h, c)`` (copies), or None."""
        if self._state is None:
            return None
        return self._state[0].copy(), self._state[1].copy()

    # -- shapes ---------------------------------------------------------------------
    def output_shape(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] != self.n_in:
            raise ValueError(f"LSTM({self.n_in}, {self.n_hidden}) takes samples of shape (T, {self.n_in}), "
                             f"got {tuple(input_shape)}")
        T = input_shape[0]
        return (T, self.n_hidden) if self.return_sequences else (self.n_hidden,)

    # -- computation ------------------------------------------------------------------
    def forward(self, x):
        """x: (batch, T, n_in) -> (batch, T, H) or (batch, H)."""
        check_layer_input(self, x, self.n_in, "(batch, T, {}) with batch, T >= 1", ndim=3, convert_hint=False)
        B, T, _ = x.shape
        H = self.n_hidden
        dt = self.dtype
        h_seq = self._buffer("h_seq", (B, T, H), dt)
        h_T = self._buffer("h_T", (B, H), dt)
        c_T = self._buffer("c_T", (B, H), dt)
        gates = self._buffer("gates", (B, T, 4 * H), dt)
        states = self._buffer("states", (3, B, T, H), dt)
        step_ws = self._buffer("step_ws", (B, 4 * H), dt)
        if self._state is not None:
            h0, c0 = self._state
            if h0.shape[0] != B:
                raise ValueError(f"LSTM: the carried state has batch size {h0.shape[0]}, this input {B}; "
                                 f"call reset_state() before changing the batch size")
        else:
            h0 = c0 = self._buffer("zeros_state", (B, H), dt, zero=True)
        parts = batch_parts(B, MIN_PART_ROWS)
        with single_thread_blas(parts > 1):
            K.lstm_forward(x, self.params["W_x"], self.params["W_h"], self.params["b"], h0, c0,
                            h_seq, h_T, c_T, gates, states, step_ws, parts)
        if self.stateful:
            # h0/c0 are not needed by backward, so the carry buffers may be
            # overwritten now, even when they were this call's h0/c0
            carry_h = self._buffer("carry_h", (B, H), dt)
            carry_c = self._buffer("carry_c", (B, H), dt)
            np.copyto(carry_h, h_T)
            np.copyto(carry_c, c_T)
            self._state = (carry_h, carry_c)
        elif self._state is not None:
            self._state = None  # set_state applies to one call when not stateful
        self._x = x
        self._B, self._T = B, T
        return h_seq if self.return_sequences else h_T

    def backward(self, dy, need_dx=True):
        """dy: (batch, T, H) or (batch, H) -> dx (batch, T, n_in) or None."""
        if self._x is None:
            raise RuntimeError("LSTM.backward called before forward")
        B, T, H = self._B, self._T, self.n_hidden
        dt = self.dtype
        expected = (B, T, H) if self.return_sequences else (B, H)
        check_output_grad(self, dy, dt, expected)
        zeros_state = self._buffer("zeros_state", (B, H), dt, zero=True)
        if self.return_sequences:
            dh_seq, dh_T = dy, zeros_state
        else:
            dh_seq, dh_T = self._buffer("zeros_seq", (B, T, H), dt, zero=True), dy
        dh0 = self._buffer("dh0", (B, H), dt)
        dc0 = self._buffer("dc0", (B, H), dt)
        gates = self._buffer("gates", (B, T, 4 * H), dt)
        states = self._buffer("states", (3, B, T, H), dt)
        dgates = self._buffer("dgates", (B, T, 4 * H), dt)
        step_ws = self._buffer("step_ws", (B, 4 * H), dt)
        # an empty dx stands for an absent one: the first and the later layers
        # of a stack run one compiled kernel (dw_ws None still compiles the
        # one-part kernel without the parts' parallel loops: much cheaper)
        dx = self._buffer("dx", (B, T, self.n_in) if need_dx else (0, 0, 0), dt)
        g = self.grads
        parts = batch_parts(B, MIN_PART_ROWS)
        dw_ws = self._buffer("dw_ws", (parts - 1, (self.n_in + H) * 4 * H), dt) if parts > 1 else None
        with single_thread_blas(parts > 1):
            K.lstm_backward(self._x, self.params["W_x"], self.params["W_h"], dh_seq, dh_T, zeros_state,
                             gates, states, dx, g["W_x"], g["W_h"], g["b"], dh0, dc0, dgates, step_ws,
                             parts, dw_ws)
        self.dh0, self.dc0 = dh0, dc0
        return dx if need_dx else None

    def one_thread_blas(self, batch):
        return batch_parts(batch, MIN_PART_ROWS) > 1

    def get_config(self):
        config = {"n_in": self.n_in, "n_hidden": self.n_hidden, "return_sequences": self.return_sequences,
                  "stateful": self.stateful, "dtype": self.dtype.name}
        if self.init != "torch":
            config["init"] = self.init
        if self.forget_bias is not None:
            config["forget_bias"] = self.forget_bias
        return config

    def __repr__(self):
        extra = "" if self.return_sequences else ", return_sequences=False"
        extra += ", stateful=True" if self.stateful else ""
        return f"LSTM({self.n_in}, {self.n_hidden}{extra}, dtype={self.dtype.name})"
