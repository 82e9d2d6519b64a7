"""Per-kernel timings of the raw compiled kernels (``jitprop.kernels.raw``).

Every benchmark is parametrised over dtype (float32, float64), a small and a
large shape, and the thread count (1, 2).  Buffers are allocated and the kernel
is compiled (or loaded from Numba's cache) for exactly the timed dtype and
shapes in ``setup``; the timed call is one raw kernel call on those buffers, so
the numbers include Numba's dispatch overhead (about a microsecond) but none of
the Python-side argument checks of ``jitprop.kernels``.
"""

import numpy as np

from jitprop.kernels import raw as K

from ._common import THREADS, lstm_kernels, rng, use_threads

DTYPES = ["float32", "float64"]
SHAPES = ["small", "large"]

# (rows, n_in, n_out): a mlp-small layer and a mlp-wide layer
DENSE = {"small": (64, 784, 128), "large": (512, 1024, 2048)}
# elementwise activations: one hidden activation of mlp-small / mlp-wide
ELEMWISE = {"small": (64, 128), "large": (512, 2048)}
# MSE: (rows, features) of the lstm-small / lstm-mid outputs (batch * T rows)
MSE = {"small": (16 * 50, 16), "large": (64 * 50, 64)}
# softmax cross-entropy: (batch, classes)
XENT = {"small": (64, 10), "large": (512, 1000)}
# flat parameter vectors of mlp-small and mlp-wide
FLAT = {"small": 784 * 128 + 128 + 128 * 10 + 10,
        "large": 1024 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 10 + 10}
# LSTM (B, T, n_in, H) of lstm-small / lstm-mid
LSTM = {"small": (16, 50, 16, 64), "large": (64, 50, 64, 256)}

# process-wide memo: (benchmark class, dtype, shape) -> state dict
_STATE = {}


class _Kernel:
    """Base: memoised buffers, warm-up in setup, explicit thread count."""

    params = [DTYPES, SHAPES, THREADS]
    param_names = ["dtype", "shape", "threads"]
    # a sample is one kernel call; take more samples than the default (setup
    # re-runs between samples but is cheap after the first call)
    repeat = (3, 30, 1.0)
    warmup_time = 0.05
    rounds = 2
    timeout = 300

    def make(self, dtype, shape):
        """Allocate buffers; return a dict whose entry "call" runs the kernel."""
        raise NotImplementedError

    def refresh(self, st):
        """Restore inputs the timed call mutates (untimed; default: nothing)."""

    def setup(self, dtype, shape, threads):
        use_threads(threads)
        key = (type(self).__name__, dtype, shape)
        st = _STATE.get(key)
        if st is None:
            st = self.make(np.dtype(dtype), shape)
            st["call"]()          # compile / load from cache for these types
            _STATE[key] = st
        self.refresh(st)
        self.call = st["call"]


def _rand(r, shape, dtype, scale=1.0):
    return np.ascontiguousarray((scale * r.standard_normal(shape)).astype(dtype))


# --------------------------------------------------------------------------- #
# dense layers
# --------------------------------------------------------------------------- #
def _dense_arrays(dtype, shape):
    n, n_in, n_out = DENSE[shape]
    r = rng("dense", n, n_in, n_out)
    x = _rand(r, (n, n_in), dtype)
    W = _rand(r, (n_in, n_out), dtype, 1.0 / np.sqrt(n_in))
    b = _rand(r, (n_out,), dtype, 0.1)
    out = np.empty((n, n_out), dtype)
    dy = _rand(r, (n, n_out), dtype, 0.01)
    dx = np.empty((n, n_in), dtype)
    dW = np.empty((n_in, n_out), dtype)
    db = np.empty((n_out,), dtype)
    return x, W, b, out, dy, dx, dW, db


class DenseForward(_Kernel):
    def make(self, dtype, shape):
        x, W, b, out, *_ = _dense_arrays(dtype, shape)
        return {"call": lambda: K.dense_forward(x, W, b, out)}

    def time_dense_forward(self, dtype, shape, threads):
        self.call()


class DenseActForward(_Kernel):
    """Fused ``relu(x @ W + b)``."""

    def make(self, dtype, shape):
        x, W, b, out, *_ = _dense_arrays(dtype, shape)
        act = K.ACT_RELU
        return {"call": lambda: K.dense_act_forward(x, W, b, out, act)}

    def time_dense_act_forward(self, dtype, shape, threads):
        self.call()


class DenseBackward(_Kernel):
    def make(self, dtype, shape):
        x, W, b, out, dy, dx, dW, db = _dense_arrays(dtype, shape)
        return {"call": lambda: K.dense_backward(x, W, dy, dx, dW, db)}

    def time_dense_backward(self, dtype, shape, threads):
        self.call()


class DenseBackwardParams(_Kernel):
    """First-layer backward: dW and db only."""

    def make(self, dtype, shape):
        x, W, b, out, dy, dx, dW, db = _dense_arrays(dtype, shape)
        return {"call": lambda: K.dense_backward_params(x, dy, dW, db)}

    def time_dense_backward_params(self, dtype, shape, threads):
        self.call()


# --------------------------------------------------------------------------- #
# activations
# --------------------------------------------------------------------------- #
def _act_arrays(dtype, shape, positive=False):
    r = rng("act", *ELEMWISE[shape])
    z = _rand(r, ELEMWISE[shape], dtype)
    a = np.empty_like(z)
    da = _rand(r, ELEMWISE[shape], dtype)
    dz = np.empty_like(z)
    return z, a, da, dz


class _ActForward(_Kernel):
    kernel = None

    def make(self, dtype, shape):
        z, a, _, _ = _act_arrays(dtype, shape)
        f = getattr(K, self.kernel)
        return {"call": lambda: f(z, a)}


class _ActBackward(_Kernel):
    kernel = None
    forward = None

    def make(self, dtype, shape):
        z, a, da, dz = _act_arrays(dtype, shape)
        getattr(K, self.forward)(z, a)          # a realistic saved output
        f = getattr(K, self.kernel)
        return {"call": lambda: f(a, da, dz)}


class SigmoidForward(_ActForward):
    kernel = "sigmoid_forward"

    def time_sigmoid_forward(self, dtype, shape, threads):
        self.call()


class SigmoidBackward(_ActBackward):
    kernel, forward = "sigmoid_backward", "sigmoid_forward"

    def time_sigmoid_backward(self, dtype, shape, threads):
        self.call()


class ReluForward(_ActForward):
    kernel = "relu_forward"

    def time_relu_forward(self, dtype, shape, threads):
        self.call()


class ReluBackward(_ActBackward):
    kernel, forward = "relu_backward", "relu_forward"

    def time_relu_backward(self, dtype, shape, threads):
        self.call()


class TanhForward(_ActForward):
    kernel = "tanh_forward"

    def time_tanh_forward(self, dtype, shape, threads):
        self.call()


class TanhBackward(_ActBackward):
    kernel, forward = "tanh_backward", "tanh_forward"

    def time_tanh_backward(self, dtype, shape, threads):
        self.call()


# --------------------------------------------------------------------------- #
# losses
# --------------------------------------------------------------------------- #
class MSELoss(_Kernel):
    def make(self, dtype, shape):
        n, m = MSE[shape]
        r = rng("mse", n, m)
        pred = _rand(r, (n, m), dtype)
        target = _rand(r, (n, m), dtype)
        grad = np.empty_like(pred)
        row = np.empty(n, dtype)
        return {"call": lambda: K.mse_loss(pred, target, grad, row)}

    def time_mse_loss(self, dtype, shape, threads):
        self.call()


class SoftmaxCrossEntropy(_Kernel):
    def make(self, dtype, shape):
        n, c = XENT[shape]
        r = rng("xent", n, c)
        logits = _rand(r, (n, c), dtype, 3.0)
        labels = r.integers(0, c, size=n).astype(np.int64)
        grad = np.empty_like(logits)
        row = np.empty(n, dtype)
        return {"call": lambda: K.softmax_cross_entropy(logits, labels, grad, row)}

    def time_softmax_cross_entropy(self, dtype, shape, threads):
        self.call()


# --------------------------------------------------------------------------- #
# optimizer
# --------------------------------------------------------------------------- #
class SGDStep(_Kernel):
    """Momentum 0.9, weight decay 1e-4 over a whole flat parameter vector."""

    def make(self, dtype, shape):
        m = FLAT[shape]
        r = rng("sgd", m)
        p = _rand(r, m, dtype, 0.05)
        g = _rand(r, m, dtype, 0.01)
        v = np.zeros(m, dtype)
        return {"call": lambda: K.sgd_step(p, g, v, 0.01, 0.9, 1e-4, False)}

    def time_sgd_step(self, dtype, shape, threads):
        self.call()


class ClipGradNorm(_Kernel):
    """Clipping active (norm pass + scaling pass): the gradient is restored
    from a saved copy in setup (untimed) before every sample, with
    ``max_norm`` half its norm."""

    def make(self, dtype, shape):
        m = FLAT[shape]
        r = rng("clip", m)
        g0 = _rand(r, m, dtype, 0.01)
        g = g0.copy()
        max_norm = 0.5 * float(np.linalg.norm(g0.astype(np.float64)))
        return {"call": lambda: K.clip_grad_norm(g, max_norm), "g": g, "g0": g0}

    def refresh(self, st):
        np.copyto(st["g"], st["g0"])

    def time_clip_grad_norm(self, dtype, shape, threads):
        self.call()


# --------------------------------------------------------------------------- #
# LSTM sequence kernels (skipped while they are not exposed)
# --------------------------------------------------------------------------- #
def _lstm_arrays(dtype, shape):
    fwd, bwd, shapes_of = lstm_kernels()
    if fwd is None or bwd is None:
        raise NotImplementedError("lstm_forward / lstm_backward are not available in this version")
    B, T, n_in, H = LSTM[shape]
    G = 4 * H
    if shapes_of is not None:
        shapes = shapes_of(B, T, n_in, H)
    else:                                   # as documented in jitprop.kernels._recurrent
        bh = (B, H)
        shapes = {"x": (B, T, n_in), "dx": (B, T, n_in), "W_x": (n_in, G), "dW_x": (n_in, G),
                  "W_h": (H, G), "dW_h": (H, G), "b": (G,), "db": (G,),
                  "h0": bh, "c0": bh, "h_T": bh, "c_T": bh, "dh0": bh, "dc0": bh,
                  "dh_T": bh, "dc_T": bh, "h_seq": (B, T, H), "dh_seq": (B, T, H),
                  "gates": (B, T, G), "states": (3, B, T, H), "step_ws": (B, G),
                  "dgates": (B, T, G)}
    r = rng("lstm", B, T, n_in, H)
    a = {k: np.zeros(s, dtype) for k, s in shapes.items() if not k.startswith("cell_")}
    a["x"][...] = r.standard_normal(a["x"].shape)
    bound = 1.0 / np.sqrt(H)
    for k in ("W_x", "W_h", "b"):
        a[k][...] = r.uniform(-bound, bound, a[k].shape)
    a["dh_seq"][...] = 0.01 * r.standard_normal(a["dh_seq"].shape)
    return fwd, bwd, a


def _lstm_fwd_call(fwd, a):
    return lambda: fwd(a["x"], a["W_x"], a["W_h"], a["b"], a["h0"], a["c0"], a["h_seq"],
                       a["h_T"], a["c_T"], a["gates"], a["states"], a["step_ws"])


class LSTMForward(_Kernel):
    """Whole-sequence forward, shapes of lstm-small / lstm-mid (T = 50)."""

    rounds = 1

    def make(self, dtype, shape):
        fwd, _, a = _lstm_arrays(dtype, shape)
        return {"call": _lstm_fwd_call(fwd, a)}

    def time_lstm_forward(self, dtype, shape, threads):
        self.call()


class LSTMBackward(_Kernel):
    """Backpropagation through time (with dx), caches from one forward."""

    rounds = 1

    def make(self, dtype, shape):
        fwd, bwd, a = _lstm_arrays(dtype, shape)
        _lstm_fwd_call(fwd, a)()
        return {"call": lambda: bwd(a["x"], a["W_x"], a["W_h"], a["dh_seq"], a["dh_T"], a["dc_T"],
                                    a["gates"], a["states"], a["dx"], a["dW_x"], a["dW_h"], a["db"],
                                    a["dh0"], a["dc0"], a["dgates"], a["step_ws"])}

    def time_lstm_backward(self, dtype, shape, threads):
        self.call()


# --------------------------------------------------------------------------- #
# GRU sequence kernels (skipped while they are not exposed)
# --------------------------------------------------------------------------- #
GRU = {"small": (16, 50, 16, 64), "large": (64, 50, 64, 256)}


def _gru_arrays(dtype, shape):
    from jitprop.kernels import raw

    if not hasattr(raw, "gru_forward"):
        raise NotImplementedError("gru_forward / gru_backward are not available in this version")
    B, T, n_in, H = GRU[shape]
    r = rng("gru", B, T, n_in, H)
    a = {k: np.zeros(s, dtype) for k, s in raw.gru_workspace_shapes(B, T, n_in, H).items()
         if not k.startswith("cell_")}
    a["x"][...] = r.standard_normal(a["x"].shape)
    bound = 1.0 / np.sqrt(H)
    for k in ("W_x", "W_h", "b_x", "b_h"):
        a[k][...] = r.uniform(-bound, bound, a[k].shape)
    a["dh_seq"][...] = 0.01 * r.standard_normal(a["dh_seq"].shape)
    return raw, a


def _gru_fwd_call(raw, a):
    return lambda: raw.gru_forward(a["x"], a["W_x"], a["W_h"], a["b_x"], a["b_h"], a["h0"], a["h_seq"],
                                   a["h_T"], a["gates"], a["states"], a["step_ws"])


class GRUForward(_Kernel):
    """Whole-sequence forward, shapes of gru-small / gru-mid (T = 50)."""

    rounds = 1

    def make(self, dtype, shape):
        raw, a = _gru_arrays(dtype, shape)
        return {"call": _gru_fwd_call(raw, a)}

    def time_gru_forward(self, dtype, shape, threads):
        self.call()


class GRUBackward(_Kernel):
    """Backpropagation through time (with dx), caches from one forward."""

    rounds = 1

    def make(self, dtype, shape):
        raw, a = _gru_arrays(dtype, shape)
        _gru_fwd_call(raw, a)()
        return {"call": lambda: raw.gru_backward(a["x"], a["W_x"], a["W_h"], a["dh_seq"], a["dh_T"], a["gates"],
                                                 a["states"], a["dx"], a["dW_x"], a["dW_h"], a["db_x"],
                                                 a["db_h"], a["dh0"], a["dgates"], a["dgates_h"],
                                                 a["step_ws"], a["dh_ws"])}

    def time_gru_backward(self, dtype, shape, threads):
        self.call()
