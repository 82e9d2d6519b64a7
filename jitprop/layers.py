"""Layers: objects that own parameters, gradients and preallocated buffers.

A layer's buffers are allocated on first use for a batch of ``n`` rows and
reused for every later batch of at most that many rows (a shorter batch uses
the leading rows of the same buffers), so the short last batch of an epoch
allocates nothing.

Arrays returned by ``forward`` and ``backward`` are views of these internal
buffers: they are overwritten by the next call.  Copy them if you need to
keep them.
"""

import numpy as np

from ._checks import as_float_dtype, check_dropout_p, check_int, check_layer_input, check_output_grad
from ._registry import Registry
from .init import check_init, init_weight
from .kernels import raw as K

__all__ = ["Layer", "Dense", "Activation", "ReLU", "Sigmoid", "Tanh", "Dropout", "LAYERS"]

#: Layer types a checkpoint can name (``@LAYERS.register`` adds one).
LAYERS = Registry("layer")


class Layer:
    """Base class of jitprop layers.

    Attributes
    ----------
    params : dict of str -> ndarray
        Live parameter arrays.  Writing into them (``params["W"][...] = ...``)
        changes the layer.  Inside a :class:`~jitprop.Sequential` they are
        views into the model's single flat parameter vector.
    grads : dict of str -> ndarray
        Gradients with the same keys and shapes, overwritten by ``backward``.
    dtype : numpy dtype or None
        float32 or float64; None for a parameter-free layer not yet used.
    training : bool
        Training mode (True) or evaluation mode; only layers such as
        :class:`Dropout` behave differently.  Set for all layers by
        :meth:`jitprop.Sequential.train` / :meth:`~jitprop.Sequential.eval`.
    """

    #: True for a layer that takes integer input (indices) instead of floats
    #: of the model's dtype; as a model's first layer it makes the model take
    #: integer input (see :attr:`jitprop.Sequential.input_dtype`).
    integer_input = False

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.dtype = None
        self.training = True
        self._bufs = {}

    # -- parameters ---------------------------------------------------------
    def param_shapes(self):
        """Ordered dict of parameter name -> shape."""
        return {k: v.shape for k, v in self.params.items()}

    def bind(self, params, grads):
        """Replace parameter and gradient arrays by the given views (used by
        :class:`~jitprop.Sequential` to pack everything into flat buffers)."""
        for k in self.params:
            params[k][...] = self.params[k]
        self.params = params
        self.grads = grads

    # -- shapes ---------------------------------------------------------------
    def output_shape(self, input_shape):
        """Shape of one sample's output for one sample's input shape."""
        return tuple(input_shape)

    # -- buffers --------------------------------------------------------------
    def _buffer(self, name, shape, dtype, zero=False):
        """A C-contiguous array of ``shape`` backed by a flat buffer that is
        reused across calls and grown only when a call needs more elements
        than any before (a smaller batch uses a prefix of it, whatever axis
        the batch is on).  With ``zero=True`` the buffer is zero-filled when
        allocated and must never be written (a constant zero input)."""
        shape = tuple(int(d) for d in shape)
        size = 1
        for d in shape:
            size *= d
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dtype or buf.size < size:
            buf = (np.zeros if zero else np.empty)(size, dtype=dtype)
            self._bufs[name] = buf
        view = buf[:size] if buf.size != size else buf
        return view.reshape(shape)

    def buffer_bytes(self):
        """Bytes held in this layer's preallocated buffers."""
        return sum(b.nbytes for b in self._bufs.values())

    # -- computation ------------------------------------------------------------
    def forward(self, x):
        """Forward pass; caches what ``backward`` needs.  Returns a view of an
        internal buffer."""
        raise NotImplementedError

    def backward(self, dy, need_dx=True):
        """Backward pass: fills ``grads`` and returns dL/dx (a view of an
        internal buffer), or None when ``need_dx`` is False."""
        raise NotImplementedError

    def one_thread_blas(self, batch):
        """Whether this layer's kernels call BLAS from inside parallel loops
        for a batch of this size (then the training step runs on one-thread
        BLAS; see :meth:`jitprop.Sequential.one_thread_blas`)."""
        return False

    def get_config(self):
        """Constructor arguments as a JSON-able dict (for checkpoints)."""
        return {}

    def state_dict(self):
        """State other than parameters that training changes (JSON-able;
        for checkpoints), e.g. a :class:`Dropout` layer's call counter."""
        return {}

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got {sorted(state)}")

    @classmethod
    def from_config(cls, config):
        """Build a layer from :meth:`get_config`'s output."""
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}()"


@LAYERS.register
class Dense(Layer):
    """Fully connected layer ``y = x @ W + b``.

    Parameters
    ----------
    n_in, n_out : int
        Input and output features.
    dtype : float32 or float64
    seed : int or None
        Seed of the initialisation.
    init : {"torch", "xavier_uniform", "he_uniform", "orthogonal"}
        "torch" (default): ``W`` and ``b`` drawn from
        ``U(-1/sqrt(n_in), 1/sqrt(n_in))``, PyTorch's default for ``nn.Linear``.
        The others draw ``W`` with the formula of ``torch.nn.init`` of that
        name (see :func:`jitprop.init.init_weight`) and set ``b`` to zero.

    Notes
    -----
    Input ``(batch, n_in)`` gives output ``(batch, n_out)``.  An input with
    more axes, ``(batch, ..., n_in)``, is treated as ``batch * ...`` rows, so a
    Dense after an LSTM that returns sequences applies to every time step.

    Parameters: ``W`` ``(n_in, n_out)``, ``b`` ``(n_out,)``.
    """

    def __init__(self, n_in, n_out, dtype=np.float32, seed=None, init="torch"):
        super().__init__()
        self.n_in = check_int("n_in", n_in, 1)
        self.n_out = check_int("n_out", n_out, 1)
        self.dtype = as_float_dtype(dtype)
        self.init = check_init(init)
        rng = np.random.default_rng(seed)
        if self.init == "torch":
            bound = 1.0 / np.sqrt(self.n_in)
            self.params = {
                "W": rng.uniform(-bound, bound, (self.n_in, self.n_out)).astype(self.dtype),
                "b": rng.uniform(-bound, bound, (self.n_out,)).astype(self.dtype),
            }
        else:
            self.params = {"W": init_weight(rng, self.init, self.n_in, self.n_out, self.dtype),
                           "b": np.zeros(self.n_out, self.dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        # A following activation may be fused into the forward kernel
        # (set by Sequential); ``act_layer`` then caches the output.
        self._act = K.ACT_IDENTITY
        self._x = None
        self._lead = None

    def output_shape(self, input_shape):
        if not input_shape or input_shape[-1] != self.n_in:
            raise ValueError(f"Dense({self.n_in}, {self.n_out}) cannot take samples of shape {tuple(input_shape)}")
        return tuple(input_shape[:-1]) + (self.n_out,)

    def forward(self, x):
        """x: (batch, ..., n_in) -> (batch, ..., n_out)."""
        check_layer_input(self, x, self.n_in, "(batch, ..., {})")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.n_in)
        out = self._buffer("out", (x2.shape[0], self.n_out), self.dtype)
        # small arrays take the serial twin: same arithmetic, no parallel kernel
        # to compile; for ReLU or no activation, the twin of those two alone
        W, b = self.params["W"], self.params["b"]
        if out.size >= K.PAR_MIN:
            K.dense_act_forward(x2, W, b, out, self._act)
        elif self._act == K.ACT_RELU or self._act == K.ACT_IDENTITY:
            K.dense_relu_forward_serial(x2, W, b, out, self._act == K.ACT_RELU)
        else:
            K.dense_act_forward_serial(x2, W, b, out, self._act)
        self._x = x2
        self._lead = lead
        return out.reshape(lead + (self.n_out,))

    def backward(self, dy, need_dx=True):
        """dy: (batch, ..., n_out) -> dx (batch, ..., n_in) or None."""
        if self._x is None:
            raise RuntimeError("Dense.backward called before forward")
        x2 = self._x
        n = x2.shape[0]
        check_output_grad(self, dy, self.dtype, self._lead + (self.n_out,))
        dy2 = dy.reshape(n, self.n_out)
        small = dy2.size < K.PAR_MIN
        if not need_dx and not small:
            K.dense_backward_params(x2, dy2, self.grads["W"], self.grads["b"])
            return None
        # a small first layer also computes the dx it does not need (one tiny
        # product per step) rather than compile a second serial kernel (0.6 s)
        dx = self._buffer("dx", (n, self.n_in), self.dtype)
        bwd = K.dense_backward_serial if small else K.dense_backward
        bwd(x2, self.params["W"], dy2, dx, self.grads["W"], self.grads["b"])
        return dx.reshape(self._lead + (self.n_in,)) if need_dx else None

    def fuse_activation(self, code):
        """Apply activation ``code`` (``jitprop.kernels.ACT_*``) in the forward
        kernel; ``ACT_IDENTITY`` undoes it.  Set by :class:`~jitprop.Sequential`."""
        self._act = code

    def get_config(self):
        config = {"n_in": self.n_in, "n_out": self.n_out, "dtype": self.dtype.name}
        if self.init != "torch":
            config["init"] = self.init
        return config

    def __repr__(self):
        return f"Dense({self.n_in}, {self.n_out}, dtype={self.dtype.name})"


class Activation(Layer):
    """Elementwise activation layer; the derivative is taken from the saved
    output, so ``backward`` needs no copy of the input.

    Subclasses set ``code`` to one of the ``jitprop.kernels.ACT_*`` codes.
    Input and output have the same shape, any number of axes.
    """

    code = K.ACT_IDENTITY
    #: The derivative's serial kernel, ``(a, da, dz)``: a kernel of this
    #: activation alone compiles in half the time of the generic one.
    backward_serial = None

    def __init__(self):
        super().__init__()
        self._a = None
        self._fused = False

    def forward(self, x):
        if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
            raise TypeError(f"{type(self).__name__}: input must be a C-contiguous float32/float64 ndarray")
        self.dtype = x.dtype
        if self._fused:
            # the preceding Dense already applied this activation in its kernel
            self._a = x
            return x
        a = self._buffer("a", x.shape, x.dtype)
        (K.activation_forward_serial if a.size < K.PAR_MIN else K.activation_forward)(x, a, self.code)
        self._a = a
        return a

    def set_fused(self, fused):
        """Whether the preceding Dense applies this activation in its kernel
        (then ``forward`` passes its input through).  Set by
        :class:`~jitprop.Sequential`."""
        self._fused = bool(fused)

    def backward(self, dy, need_dx=True):
        a = self._a
        if a is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        check_output_grad(self, dy, a.dtype, a.shape)
        if not need_dx:
            return None
        dz = self._buffer("dz", a.shape, a.dtype)
        if a.size >= K.PAR_MIN:
            K.activation_backward(a, dy, dz, self.code)
        elif self.backward_serial is not None:
            self.backward_serial(a, dy, dz)
        else:
            K.activation_backward_serial(a, dy, dz, self.code)
        return dz


@LAYERS.register
class ReLU(Activation):
    """``max(x, 0)``; derivative 0 at 0 (as PyTorch)."""

    code = K.ACT_RELU
    backward_serial = staticmethod(K.relu_backward_serial)


@LAYERS.register
class Sigmoid(Activation):
    """``1 / (1 + exp(-x))``; derivative ``a (1 - a)`` from the output."""

    code = K.ACT_SIGMOID
    backward_serial = staticmethod(K.sigmoid_backward_serial)


@LAYERS.register
class Tanh(Activation):
    """``tanh(x)``; derivative ``1 - a**2`` from the output."""

    code = K.ACT_TANH
    backward_serial = staticmethod(K.tanh_backward_serial)


@LAYERS.register
class Dropout(Layer):
    """Inverted dropout: in training mode each element is zeroed with
    probability ``p`` and the kept ones are scaled by ``1 / (1 - p)``; in
    evaluation mode (:meth:`jitprop.Sequential.eval`, and always inside
    :meth:`~jitprop.Sequential.predict` and :meth:`jitprop.Trainer.evaluate`)
    it is the identity.

    The mask of a call is a function of ``(seed, step, element index)`` (see
    :func:`jitprop.kernels.dropout_apply`): it does not depend on the thread
    count, is never stored (backward recomputes it), and a checkpoint that
    records :attr:`step` resumes bit-exactly.

    Parameters
    ----------
    p : float in [0, 1), default 0.5
        Drop probability.
    seed : int in [0, 2**63) or None
        None draws a seed from the operating system's entropy (kept in
        :attr:`seed`, so checkpoints reproduce it).

    Attributes
    ----------
    step : int
        Number of training-mode forward calls so far; call ``k`` uses mask
        ``(seed, k)``.  Assign it to replay a mask.

    Notes
    -----
    Works on inputs of any shape: after a Dense layer, or between LSTM layers
    (``(batch, T, H)``, a separate mask element per step and unit).
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        self.p = check_dropout_p(p)
        if seed is None:
            seed = int(np.random.SeedSequence().entropy) % (1 << 63)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < (1 << 63):
            raise ValueError(f"seed must be None or an integer in [0, 2**63), got {seed!r}")
        self.seed = int(seed)
        self.step = 0
        self._mask_step = None  # the step whose mask backward applies; None: identity

    def forward(self, x):
        if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
            raise TypeError("Dropout: input must be a C-contiguous float32/float64 ndarray")
        self.dtype = x.dtype
        if self.active_p == 0.0:
            self._mask_step = None
            return x
        out = self._buffer("out", x.shape, x.dtype)
        self._apply(x, out, self.step)
        self._mask_step = self.step
        self.step += 1
        return out

    @property
    def active_p(self):
        """The drop probability a forward call applies now: ``p`` in training
        mode, 0 (the identity, no mask drawn, :attr:`step` unchanged) in
        evaluation mode."""
        return self.p if self.training else 0.0

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        if self._mask_step is None:
            return dy
        if not isinstance(dy, np.ndarray) or dy.dtype != self.dtype or not dy.flags.c_contiguous:
            raise ValueError(f"Dropout.backward: dy must be a C-contiguous {self.dtype} array")
        dx = self._buffer("dx", dy.shape, dy.dtype)
        self._apply(dy, dx, self._mask_step)
        return dx

    def _apply(self, x, out, step):
        # small arrays take the serial twin: the same mask, no parallel kernel to compile
        kernel = K.dropout_apply_serial if x.size < K.PAR_MIN else K.dropout_apply
        kernel(x, out, self.p, self.seed, step)

    def get_config(self):
        return {"p": self.p, "seed": self.seed}

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = check_int("step", state["step"], 0)

    def __repr__(self):
        return f"Dropout(p={self.p})"
