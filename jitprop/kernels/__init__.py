"""Checked kernel entry points.

Each function here checks its arguments (types, one float dtype, C-contiguity,
shapes, overlaps where they matter) and raises ``TypeError``/``ValueError``
with a message naming the argument, then calls the compiled kernel of the
same name in :mod:`jitprop.kernels.raw`.  Outputs are written into the arrays
you pass; nothing is allocated.  Use the raw kernels from your own ``@njit``
code, where these Python-level checks cannot run.
"""

import numpy as np

from .._checks import as_inputs, check_array, check_dropout_p, check_float, check_int, check_labels, no_overlap
from . import raw
from ._core import ACT_IDENTITY, ACT_RELU, ACT_SIGMOID, ACT_TANH, CLIP_EPS
from ._recurrent_shapes import absent, gru_workspace_shapes, lstm_workspace_shapes

__all__ = [
    "raw",
    "ACT_IDENTITY",
    "ACT_RELU",
    "ACT_SIGMOID",
    "ACT_TANH",
    "dense_forward",
    "dense_act_forward",
    "dense_backward",
    "dense_backward_params",
    "sigmoid_forward",
    "sigmoid_backward",
    "relu_forward",
    "relu_backward",
    "tanh_forward",
    "tanh_backward",
    "activation_forward",
    "activation_backward",
    "mse_loss",
    "softmax_cross_entropy",
    "sgd_step",
    "adam_step",
    "dropout_apply",
    "clip_grad_norm",
    "clip_grad_norm_list",
    "lstm_forward",
    "lstm_backward",
    "lstm_cell_forward",
    "lstm_cell_backward",
    "lstm_workspace_shapes",
    "gru_forward",
    "gru_backward",
    "gru_cell_forward",
    "gru_cell_backward",
    "gru_workspace_shapes",
    "embedding_forward",
    "embedding_backward",
]

_ACTS = (ACT_IDENTITY, ACT_RELU, ACT_SIGMOID, ACT_TANH)


def _check_act(act):
    if isinstance(act, (bool, np.bool_)) or not isinstance(act, (int, np.integer)):
        raise TypeError(f"act must be an integer activation code {_ACTS}, got {act!r}")
    if act not in _ACTS:
        raise ValueError(f"act must be one of {_ACTS} (identity, relu, sigmoid, tanh), got {act!r}")
    return int(act)


def _check_dense_fwd(x, W, b, out):
    check_array("x", x, ndim=2)
    dt = x.dtype
    n, n_in = x.shape
    check_array("W", W, dtype=dt, ndim=2)
    if W.shape[0] != n_in:
        raise ValueError(f"W must have shape ({n_in}, n_out) to match x {x.shape}, got {W.shape}")
    n_out = W.shape[1]
    check_array("b", b, dtype=dt, shape=(n_out,))
    check_array("out", out, dtype=dt, shape=(n, n_out), writable=True)
    no_overlap(out=out, x=x)
    no_overlap(out=out, W=W)
    no_overlap(out=out, b=b)  # the bias is read after the product is written


def dense_forward(x, W, b, out):
    """Dense forward ``out = x @ W + b``.

    Parameters
    ----------
    x : ndarray (n, n_in), float32 or float64, C-contiguous
    W : ndarray (n_in, n_out), same dtype
    b : ndarray (n_out,), same dtype
    out : ndarray (n, n_out), same dtype, written

    Returns
    -------
    out
    """
    _check_dense_fwd(x, W, b, out)
    x, W, b = as_inputs(x, W, b)
    raw.dense_forward(x, W, b, out)
    return out


def dense_act_forward(x, W, b, out, act):
    """Fused ``out = f(x @ W + b)`` with ``f`` chosen by ``act`` (an ``ACT_*`` code).
    Shapes as in :func:`dense_forward`."""
    _check_dense_fwd(x, W, b, out)
    x, W, b = as_inputs(x, W, b)
    raw.dense_act_forward(x, W, b, out, _check_act(act))
    return out


def _check_dense_bwd(x, dy, dW, db):
    check_array("x", x, ndim=2)
    dt = x.dtype
    n, n_in = x.shape
    check_array("dy", dy, dtype=dt, ndim=2)
    if dy.shape[0] != n:
        raise ValueError(f"dy must have {n} rows like x {x.shape}, got {dy.shape}")
    n_out = dy.shape[1]
    check_array("dW", dW, dtype=dt, shape=(n_in, n_out), writable=True)
    check_array("db", db, dtype=dt, shape=(n_out,), writable=True)
    no_overlap(dW=dW, x=x, dy=dy, db=db)
    return n, n_in, n_out


def dense_backward(x, W, dy, dx, dW, db):
    """Dense backward: ``dx = dy @ W.T``, ``dW = x.T @ dy``, ``db = dy.sum(0)``.

    Parameters
    ----------
    x : ndarray (n, n_in), the forward input
    W : ndarray (n_in, n_out)
    dy : ndarray (n, n_out), upstream gradient
    dx : ndarray (n, n_in), written
    dW : ndarray (n_in, n_out), written
    db : ndarray (n_out,), written

    Returns
    -------
    (dx, dW, db)
    """
    n, n_in, n_out = _check_dense_bwd(x, dy, dW, db)
    check_array("W", W, dtype=x.dtype, shape=(n_in, n_out))
    check_array("dx", dx, dtype=x.dtype, shape=(n, n_in), writable=True)
    no_overlap(dx=dx, x=x, dy=dy, W=W, dW=dW, db=db)
    x, W, dy = as_inputs(x, W, dy)
    raw.dense_backward(x, W, dy, dx, dW, db)
    return dx, dW, db


def dense_backward_params(x, dy, dW, db):
    """Dense backward without the input gradient (for a first layer):
    ``dW = x.T @ dy``, ``db = dy.sum(0)``.  Shapes as in :func:`dense_backward`."""
    _check_dense_bwd(x, dy, dW, db)
    x, dy = as_inputs(x, dy)
    raw.dense_backward_params(x, dy, dW, db)
    return dW, db


def _flat(x):
    """A C-contiguous array as a 1-D view: an elementwise kernel then compiles
    once per dtype, not once more for every number of axes a caller uses."""
    return x.reshape(x.size)


def _rows(x):
    """A C-contiguous array with a leading batch axis as a 2-D view (same
    reason as :func:`_flat`)."""
    return x.reshape(x.shape[0], x.size // x.shape[0])


def activation_forward(z, a, act):
    """``a = f(z)`` elementwise, ``f`` chosen by ``act``; ``z`` and ``a`` of one
    shape and dtype (``a`` may be ``z``)."""
    check_array("z", z)
    check_array("a", a, dtype=z.dtype, shape=z.shape, writable=True)
    if a is not z and np.shares_memory(a, z):
        raise ValueError("a must be z itself or not overlap it")
    raw.activation_forward(_flat(z), _flat(a), _check_act(act))
    return a


def activation_backward(a, da, dz, act):
    """``dz = da * f'(z)`` from the saved output ``a``; all of one shape and
    dtype (``dz`` may be ``da``)."""
    check_array("a", a)
    check_array("da", da, dtype=a.dtype, shape=a.shape)
    check_array("dz", dz, dtype=a.dtype, shape=a.shape, writable=True)
    if dz is not da and np.shares_memory(dz, da):
        raise ValueError("dz must be da itself or not overlap it")
    if np.shares_memory(dz, a) and dz is not a:
        raise ValueError("dz must not overlap a")
    a, da = as_inputs(_flat(a), _flat(da))
    raw.activation_backward(a, da, _flat(dz), _check_act(act))
    return dz


def _fwd(act, doc):
    def f(z, a):
        return activation_forward(z, a, act)

    f.__doc__ = doc
    return f


def _bwd(act, doc):
    def f(a, da, dz):
        return activation_backward(a, da, dz, act)

    f.__doc__ = doc
    return f


sigmoid_forward = _fwd(ACT_SIGMOID, "``a = sigmoid(z)``; z, a: same shape and dtype. Returns a.")
relu_forward = _fwd(ACT_RELU, "``a = max(z, 0)``; z, a: same shape and dtype. Returns a.")
tanh_forward = _fwd(ACT_TANH, "``a = tanh(z)``; z, a: same shape and dtype. Returns a.")
sigmoid_backward = _bwd(ACT_SIGMOID, "``dz = da * a * (1 - a)`` from the saved output a. Returns dz.")
relu_backward = _bwd(ACT_RELU, "``dz = da * (a > 0)`` from the saved output a. Returns dz.")
tanh_backward = _bwd(ACT_TANH, "``dz = da * (1 - a**2)`` from the saved output a. Returns dz.")
for _f, _n in [(sigmoid_forward, "sigmoid_forward"), (relu_forward, "relu_forward"),
               (tanh_forward, "tanh_forward"), (sigmoid_backward, "sigmoid_backward"),
               (relu_backward, "relu_backward"), (tanh_backward, "tanh_backward")]:
    _f.__name__ = _f.__qualname__ = _n
del _f, _n


def mse_loss(pred, target, grad, row_loss):
    """Mean squared error; writes ``grad = 2 (pred - target) / pred.size``.

    Parameters
    ----------
    pred : ndarray (n, ...), float32 or float64
    target : ndarray, same shape and dtype
    grad : ndarray, same shape and dtype, written
    row_loss : ndarray (n,), same dtype, workspace

    Returns
    -------
    float
        ``mean((pred - target)**2)``.
    """
    check_array("pred", pred)
    if pred.ndim < 1 or pred.shape[0] == 0 or pred.size == 0:
        raise ValueError(f"pred must be non-empty with a leading batch axis, got shape {pred.shape}")
    check_array("target", target, dtype=pred.dtype, shape=pred.shape)
    check_array("grad", grad, dtype=pred.dtype, shape=pred.shape, writable=True)
    check_array("row_loss", row_loss, dtype=pred.dtype, shape=(pred.shape[0],), writable=True)
    no_overlap(grad=grad, pred=pred, target=target, row_loss=row_loss)
    pred, target = as_inputs(_rows(pred), _rows(target))
    return raw.mse_loss(pred, target, _rows(grad), row_loss)


def softmax_cross_entropy(logits, labels, grad, row_loss):
    """Softmax cross-entropy with integer labels, mean over the batch.

    Parameters
    ----------
    logits : ndarray (n, n_classes), float32 or float64
    labels : ndarray (n,), integer in ``[0, n_classes)``
    grad : ndarray (n, n_classes), same dtype as logits, written
    row_loss : ndarray (n,), same dtype as logits, workspace

    Returns
    -------
    float
    """
    check_array("logits", logits, ndim=2)
    n, c = logits.shape
    if n == 0 or c == 0:
        raise ValueError(f"logits must be non-empty, got shape {logits.shape}")
    check_labels("labels", labels, n, c)
    check_array("grad", grad, dtype=logits.dtype, shape=logits.shape, writable=True)
    check_array("row_loss", row_loss, dtype=logits.dtype, shape=(n,), writable=True)
    no_overlap(grad=grad, logits=logits, row_loss=row_loss)
    # labels are read row by row while grad/row_loss are written: a label
    # overwritten by an earlier row would index outside grad
    no_overlap(labels=labels, grad=grad)
    no_overlap(labels=labels, row_loss=row_loss)
    logits, labels = as_inputs(logits, labels)
    return raw.softmax_cross_entropy(logits, labels, grad, row_loss)


def sgd_step(p, g, v, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """In-place SGD update with ``torch.optim.SGD`` semantics (dampening 0).

    Parameters
    ----------
    p : ndarray (n,), float32 or float64, updated
    g : ndarray (n,), same dtype, read
    v : ndarray (n,), same dtype, momentum buffer (zeros before the first step), updated
    lr, momentum, weight_decay : float, >= 0
    nesterov : bool (requires momentum > 0)
    """
    check_array("p", p, ndim=1, writable=True)
    check_array("g", g, dtype=p.dtype, shape=p.shape)
    check_array("v", v, dtype=p.dtype, shape=p.shape, writable=True)
    no_overlap(p=p, g=g, v=v)
    lr = check_float("lr", lr, minimum=0.0)
    momentum = check_float("momentum", momentum, minimum=0.0)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    if not isinstance(nesterov, (bool, np.bool_, int, np.integer)):
        raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
    if nesterov and momentum <= 0:
        raise ValueError("nesterov=True requires momentum > 0")
    raw.sgd_step(p, g, v, lr, momentum, weight_decay, bool(nesterov))
    return p


def adam_step(p, g, m, v, vmax, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
              amsgrad=False, decoupled=False):
    """In-place Adam (or, with ``decoupled=True``, AdamW) update with the
    arithmetic of ``torch.optim.Adam`` / ``torch.optim.AdamW``.

    Parameters
    ----------
    p : ndarray (n,), float32 or float64, updated
    g : ndarray (n,), same dtype, read
    m, v : ndarray (n,), same dtype, first and second moments (zeros before step 1), updated
    vmax : ndarray (n,), same dtype, running maximum of ``v`` (zeros before step 1), updated;
        not used (and may be None) when ``amsgrad`` is False
    step : int >= 1, the number of this step (1 for the first)
    lr, eps, weight_decay : float >= 0
    beta1, beta2 : float in [0, 1)
    amsgrad, decoupled : bool

    Returns
    -------
    p
    """
    check_array("p", p, ndim=1, writable=True)
    check_array("g", g, dtype=p.dtype, shape=p.shape)
    check_array("m", m, dtype=p.dtype, shape=p.shape, writable=True)
    check_array("v", v, dtype=p.dtype, shape=p.shape, writable=True)
    amsgrad = _check_bool("amsgrad", amsgrad)
    decoupled = _check_bool("decoupled", decoupled)
    if amsgrad:
        check_array("vmax", vmax, dtype=p.dtype, shape=p.shape, writable=True)
        no_overlap(p=p, g=g, m=m, v=v, vmax=vmax)
    else:
        no_overlap(p=p, g=g, m=m, v=v)
        vmax = _EMPTY[p.dtype.name]
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or not 1 <= step < 2 ** 63:
        raise ValueError(f"step must be an integer >= 1, got {step!r}")
    lr = check_float("lr", lr, minimum=0.0)
    beta1 = _check_beta("beta1", beta1)
    beta2 = _check_beta("beta2", beta2)
    eps = check_float("eps", eps, minimum=0.0)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    raw.adam_step(p, g, m, v, vmax, int(step), lr, beta1, beta2, eps, weight_decay, amsgrad, decoupled)
    return p


#: the array passed for ``vmax`` when amsgrad is off (never read)
_EMPTY = {"float32": np.zeros(0, np.float32), "float64": np.zeros(0, np.float64)}


def _check_beta(name, value):
    value = check_float(name, value, minimum=0.0)
    if value >= 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value}")
    return value


def dropout_apply(x, out, p, seed, step):
    """Inverted dropout with a counter-based mask: ``out = x / (1 - p)`` on
    kept elements, 0 on dropped ones; the same (``p``, ``seed``, ``step``)
    give the same mask, so the backward pass is ``dropout_apply(dy, dx, p,
    seed, step)``.

    Parameters
    ----------
    x : ndarray, float32 or float64, C-contiguous
    out : ndarray, same shape and dtype, written (may be ``x`` itself)
    p : float in [0, 1)
    seed, step : int in [0, 2**63)

    Returns
    -------
    out
    """
    check_array("x", x)
    check_array("out", out, dtype=x.dtype, shape=x.shape, writable=True)
    if out is not x and np.shares_memory(out, x):
        raise ValueError("out must be x itself or not overlap it")
    p = check_dropout_p(p)
    for name, v in (("seed", seed), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < 2 ** 63:
            raise ValueError(f"{name} must be an integer in [0, 2**63), got {v!r}")
    raw.dropout_apply(_flat(x), _flat(out), p, int(seed), int(step))
    return out


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def clip_grad_norm(g, max_norm):
    """Clip one (flat) gradient array to global L2 norm ``max_norm`` in place;
    returns the norm before clipping."""
    check_array("g", g, writable=True)
    max_norm = check_float("max_norm", max_norm, minimum=0.0)
    return raw.clip_grad_norm(_flat(g), max_norm)


def clip_grad_norm_list(grads, max_norm):
    """Clip a list of gradient arrays jointly to global L2 norm ``max_norm``.

    Same rule as ``torch.nn.utils.clip_grad_norm_``: the norm is taken over
    all arrays together; if ``max_norm / (norm + CLIP_EPS) < 1`` (1e-6) every array is
    scaled by that factor.  Returns the norm before clipping.
    """
    max_norm = check_float("max_norm", max_norm, minimum=0.0)
    try:
        grads = list(grads)
    except TypeError:
        raise TypeError(f"grads must be a list of arrays, got {type(grads).__name__}") from None
    for k, g in enumerate(grads):
        check_array(f"grads[{k}]", g, writable=True)
    # an array listed twice (or overlapping another) would be counted and scaled twice
    no_overlap(**{f"grads[{k}]": g for k, g in enumerate(grads)})
    total = 0.0
    for g in grads:
        total += raw.sum_squares(_flat(g))
    norm = float(np.sqrt(total))
    coef = max_norm / (norm + CLIP_EPS)
    if coef < 1.0:
        for g in grads:
            raw.scale_inplace(_flat(g), coef)
    return norm


# --------------------------------------------------------------------------
# LSTM and GRU kernels: the compiled ones are in _recurrent.py, their shapes in _recurrent_shapes.py
# --------------------------------------------------------------------------
def _recurrent_dims(x_name, x, ndim, W_h, n_gates):
    """dtype and hidden size H from the input and ``W_h`` (H, n_gates*H)."""
    check_array(x_name, x, ndim=ndim)
    dt = x.dtype
    check_array("W_h", W_h, dtype=dt, ndim=2)
    H = W_h.shape[0]
    if W_h.shape[1] != n_gates * H:
        raise ValueError(f"W_h must have shape (H, {n_gates}H), got {W_h.shape}")
    return dt, H


def _or_absent(a, ndim, dtype):
    """``a``, or for None an empty array of its kind (see :func:`absent`)."""
    return absent(ndim, dtype) if a is None else a


def _check_recurrent_arrays(shapes, dt, reads, writes, prefix="", optional=()):
    """Check every named array against ``shapes[prefix + name]`` (or
    ``shapes[name]``, for the parameters of the cell kernels); outputs
    (``writes``) must be writable; those named in ``optional`` may be None."""
    for names, writable in ((reads, False), (writes, True)):
        for name, a in names.items():
            if a is None and writable and name in optional:
                continue
            shape = shapes[prefix + name] if prefix + name in shapes else shapes[name]
            check_array(name, a, dtype=dt, shape=shape, writable=writable)


def _check_recurrent_overlaps(reads, writes, aliases=()):
    """No output overlaps another output or an input, except the pairs in
    ``aliases`` when they are the very same array."""
    allowed = {frozenset(pair) for pair in aliases}
    outs = [(k, a) for k, a in writes.items() if a is not None]
    for i, (na, a) in enumerate(outs):
        for nb, b in outs[i + 1:] + list(reads.items()):
            if a is b and frozenset((na, nb)) in allowed:
                continue
            no_overlap(**{na: a, nb: b})


def _check_dw_ws(dw_ws, dt, B, parts, width, formula):
    """The weight-gradient shares of batch parts: rows 0 .. active-2 of
    ``dw_ws`` (one per part that holds rows, but the first) are written."""
    active = -(-B // -(-B // parts))
    if dw_ws is None:
        raise ValueError(f"dw_ws must be an array of shape ({parts - 1}, {width}) (parts - 1, {formula}) "
                         "when parts > 1, got None")
    check_array("dw_ws", dw_ws, dtype=dt, ndim=2, writable=True)
    if dw_ws.shape[0] < active - 1 or dw_ws.shape[1] != width:
        raise ValueError(f"dw_ws must have shape ({parts - 1}, {width}) (parts - 1, {formula}), got {dw_ws.shape}")


def lstm_forward(x, W_x, W_h, b, h0, c0, h_seq, h_T, c_T, gates, states, step_ws, parts=1):
    """Checked :func:`jitprop.kernels.raw.lstm_forward` (same arguments; see
    its documentation).  ``h0 is h_T`` and ``c0 is c_T`` are allowed."""
    dt, H = _recurrent_dims("x", x, 3, W_h, 4)
    B, T, n_in = x.shape
    shapes = lstm_workspace_shapes(B, T, n_in, H)
    reads = dict(x=x, W_x=W_x, W_h=W_h, b=b, h0=h0, c0=c0)
    writes = dict(h_seq=h_seq, h_T=h_T, c_T=c_T, gates=gates, states=states, step_ws=step_ws)
    _check_recurrent_arrays(shapes, dt, reads, writes)
    _check_recurrent_overlaps(reads, writes, aliases={("h_T", "h0"), ("c_T", "c0")})
    x, W_x, W_h, b, h0, c0 = as_inputs(x, W_x, W_h, b, h0, c0)
    raw.lstm_forward(x, W_x, W_h, b, h0, c0, h_seq, h_T, c_T, gates, states, step_ws, check_int("parts", parts, 1))


def lstm_backward(x, W_x, W_h, dh_seq, dh_T, dc_T, gates, states, dx, dW_x, dW_h, db, dh0, dc0, dgates, step_ws,
                  parts=1, dw_ws=None):
    """Checked :func:`jitprop.kernels.raw.lstm_backward` (same arguments; see
    its documentation).  ``dh_T is dh0`` and ``dc_T is dc0`` are allowed;
    ``dw_ws`` is required when ``parts > 1`` and the batch has several rows."""
    dt, H = _recurrent_dims("x", x, 3, W_h, 4)
    B, T, n_in = x.shape
    shapes = lstm_workspace_shapes(B, T, n_in, H)
    reads = dict(x=x, W_x=W_x, W_h=W_h, dh_seq=dh_seq, dh_T=dh_T, dc_T=dc_T, gates=gates, states=states)
    writes = dict(dx=dx, dW_x=dW_x, dW_h=dW_h, db=db, dh0=dh0, dc0=dc0, dgates=dgates, step_ws=step_ws)
    _check_recurrent_arrays(shapes, dt, reads, writes, optional=("dx",))
    parts = check_int("parts", parts, 1)
    if parts > 1 and B > 1:
        _check_dw_ws(dw_ws, dt, B, parts, (n_in + H) * 4 * H, "n_in*4H + H*4H")
        writes["dw_ws"] = dw_ws
    _check_recurrent_overlaps(reads, writes, aliases={("dh0", "dh_T"), ("dc0", "dc_T")})
    x, W_x, W_h, dh_seq, dh_T, dc_T, gates, states = as_inputs(x, W_x, W_h, dh_seq, dh_T, dc_T, gates, states)
    # an empty dx for an absent one: one compiled variant for both
    raw.lstm_backward(x, W_x, W_h, dh_seq, dh_T, dc_T, gates, states, _or_absent(dx, 3, dt), dW_x, dW_h, db, dh0,
                      dc0, dgates, step_ws, parts, writes.get("dw_ws"))


def lstm_cell_forward(x_t, h_prev, c_prev, W_x, W_h, b, h, c, gates, tanh_c, step_ws):
    """Checked :func:`jitprop.kernels.raw.lstm_cell_forward` (same arguments;
    see its documentation).  ``h is h_prev`` and ``c is c_prev`` are allowed."""
    dt, H = _recurrent_dims("x_t", x_t, 2, W_h, 4)
    B, n_in = x_t.shape
    shapes = lstm_workspace_shapes(B, 1, n_in, H)
    reads = dict(x_t=x_t, h_prev=h_prev, c_prev=c_prev)
    writes = dict(h=h, c=c, gates=gates, tanh_c=tanh_c, step_ws=step_ws)
    _check_recurrent_arrays(shapes, dt, reads, writes, prefix="cell_")
    _check_recurrent_arrays(shapes, dt, dict(W_x=W_x, W_h=W_h, b=b), {})
    _check_recurrent_overlaps(dict(reads, W_x=W_x, W_h=W_h, b=b), writes, aliases={("h", "h_prev"), ("c", "c_prev")})
    x_t, h_prev, c_prev, W_x, W_h, b = as_inputs(x_t, h_prev, c_prev, W_x, W_h, b)
    raw.lstm_cell_forward(x_t, h_prev, c_prev, W_x, W_h, b, h, c, gates, tanh_c, step_ws)


def lstm_cell_backward(x_t, h_prev, c_prev, W_x, W_h, gates, tanh_c, dh, dc, dx_t, dh_prev, dc_prev, dW_x, dW_h,
                       db, dgates, accum_ws):
    """Checked :func:`jitprop.kernels.raw.lstm_cell_backward` (same arguments;
    see its documentation).  ``dh_prev is dh`` and ``dc_prev is dc`` are
    allowed; ``accum_ws`` None selects overwrite mode."""
    dt, H = _recurrent_dims("x_t", x_t, 2, W_h, 4)
    B, n_in = x_t.shape
    shapes = lstm_workspace_shapes(B, 1, n_in, H)
    reads = dict(x_t=x_t, h_prev=h_prev, c_prev=c_prev, gates=gates, tanh_c=tanh_c, dh=dh, dc=dc)
    writes = dict(dx_t=dx_t, dh_prev=dh_prev, dc_prev=dc_prev, dgates=dgates, accum_ws=accum_ws)
    _check_recurrent_arrays(shapes, dt, reads, writes, prefix="cell_", optional=("dx_t", "accum_ws"))
    weights = dict(W_x=W_x, W_h=W_h)
    grads = dict(dW_x=dW_x, dW_h=dW_h, db=db)
    _check_recurrent_arrays(shapes, dt, weights, grads)
    _check_recurrent_overlaps(dict(reads, **weights), dict(writes, **grads), aliases={("dh_prev", "dh"), ("dc_prev", "dc")})
    x_t, h_prev, c_prev, W_x, W_h, gates, tanh_c, dh, dc = as_inputs(x_t, h_prev, c_prev, W_x, W_h, gates, tanh_c, dh, dc)
    raw.lstm_cell_backward(x_t, h_prev, c_prev, W_x, W_h, gates, tanh_c, dh, dc, _or_absent(dx_t, 2, dt), dh_prev,
                           dc_prev, dW_x, dW_h, db, dgates, accum_ws)


# -- GRU ------------------------------------------------------------------------

def gru_forward(x, W_x, W_h, b_x, b_h, h0, h_seq, h_T, gates, states, step_ws, parts=1):
    """GRU forward over a whole sequence (see :func:`jitprop.kernels.raw.gru_forward`).

    Shapes (:func:`gru_workspace_shapes`): x (B, T, n_in), W_x (n_in, 3H),
    W_h (H, 3H), b_x, b_h (3H,), h0, h_T (B, H), h_seq (B, T, H), gates
    (B, T, 3H), states (2, B, T, H), step_ws (B, 3H); one float dtype,
    C-contiguous.  ``h0 is h_T`` is allowed.  With ``parts > 1`` limit BLAS
    to one thread around the call.  Returns ``(h_seq, h_T)``.
    """
    dt, H = _recurrent_dims("x", x, 3, W_h, 3)
    B, T, n_in = x.shape
    parts = check_int("parts", parts, 1)
    shapes = gru_workspace_shapes(B, T, n_in, H)
    reads = dict(x=x, W_x=W_x, W_h=W_h, b_x=b_x, b_h=b_h, h0=h0)
    writes = dict(h_seq=h_seq, h_T=h_T, gates=gates, states=states, step_ws=step_ws)
    _check_recurrent_arrays(shapes, dt, reads, writes)
    _check_recurrent_overlaps(reads, writes, aliases={("h_T", "h0")})
    x, W_x, W_h, b_x, b_h, h0 = as_inputs(x, W_x, W_h, b_x, b_h, h0)
    raw.gru_forward(x, W_x, W_h, b_x, b_h, h0, h_seq, h_T, gates, states, step_ws, parts)
    return h_seq, h_T


def gru_backward(x, W_x, W_h, dh_seq, dh_T, gates, states, dx, dW_x, dW_h, db_x, db_h, dh0,
                 dgates, dgates_h, step_ws, dh_ws, parts=1, dw_ws=None):
    """GRU backpropagation through time (see :func:`jitprop.kernels.raw.gru_backward`).

    Shapes as in :func:`gru_forward` plus dh_seq (B, T, H), dh_T, dh0, dh_ws
    (B, H), dx (B, T, n_in) or None, gradients shaped like their parameters,
    dgates, dgates_h (B, T, 3H), and with ``parts > 1`` dw_ws
    (parts - 1, (n_in + H) * 3H).  ``dh_T is dh0`` is allowed.
    Returns ``(dx, dW_x, dW_h, db_x, db_h, dh0)``.
    """
    dt, H = _recurrent_dims("x", x, 3, W_h, 3)
    B, T, n_in = x.shape
    parts = check_int("parts", parts, 1)
    shapes = gru_workspace_shapes(B, T, n_in, H, parts)
    reads = dict(x=x, W_x=W_x, W_h=W_h, dh_seq=dh_seq, dh_T=dh_T, gates=gates, states=states)
    writes = dict(dx=dx, dW_x=dW_x, dW_h=dW_h, db_x=db_x, db_h=db_h, dh0=dh0, dgates=dgates,
                  dgates_h=dgates_h, step_ws=step_ws, dh_ws=dh_ws)
    _check_recurrent_arrays(shapes, dt, reads, writes, optional=("dx",))
    if parts > 1 and B > 1:
        _check_dw_ws(dw_ws, dt, B, parts, (n_in + H) * 3 * H, "(n_in + H) * 3H")
        writes["dw_ws"] = dw_ws
    _check_recurrent_overlaps(reads, writes, aliases={("dh0", "dh_T")})
    x, W_x, W_h, dh_seq, dh_T, gates, states = as_inputs(x, W_x, W_h, dh_seq, dh_T, gates, states)
    raw.gru_backward(x, W_x, W_h, dh_seq, dh_T, gates, states, _or_absent(dx, 3, dt), dW_x, dW_h, db_x, db_h, dh0,
                     dgates, dgates_h, step_ws, dh_ws, parts, writes.get("dw_ws"))
    return dx, dW_x, dW_h, db_x, db_h, dh0


def gru_cell_forward(x_t, h_prev, W_x, W_h, b_x, b_h, h, gates, hn, step_ws):
    """One GRU step (see :func:`jitprop.kernels.raw.gru_cell_forward`).

    Shapes: x_t (B, n_in), h_prev, h, hn (B, H), gates, step_ws (B, 3H),
    parameters as in :func:`gru_forward`.  ``h is h_prev`` is allowed.
    Returns ``h``.
    """
    dt, H = _recurrent_dims("x_t", x_t, 2, W_h, 3)
    B, n_in = x_t.shape
    shapes = gru_workspace_shapes(B, 1, n_in, H)
    reads = dict(x_t=x_t, h_prev=h_prev, W_x=W_x, W_h=W_h, b_x=b_x, b_h=b_h)
    writes = dict(h=h, gates=gates, hn=hn, step_ws=step_ws)
    _check_recurrent_arrays(shapes, dt, reads, writes, prefix="cell_")
    _check_recurrent_overlaps(reads, writes, aliases={("h", "h_prev")})
    x_t, h_prev, W_x, W_h, b_x, b_h = as_inputs(x_t, h_prev, W_x, W_h, b_x, b_h)
    raw.gru_cell_forward(x_t, h_prev, W_x, W_h, b_x, b_h, h, gates, hn, step_ws)
    return h


def gru_cell_backward(x_t, h_prev, W_x, W_h, gates, hn, dh, dx_t, dh_prev, dW_x, dW_h, db_x, db_h,
                      dgates, dgates_h, dh_ws, accum_ws=None):
    """Backward of one GRU step (see :func:`jitprop.kernels.raw.gru_cell_backward`).

    Shapes: as in :func:`gru_cell_forward`, dh, dh_prev, dh_ws (B, H), dx_t
    (B, n_in) or None, dgates, dgates_h (B, 3H), gradients shaped like their
    parameters, accum_ws (n_in + H, 3H) or None (None overwrites the
    gradients, an array selects accumulation).  ``dh_prev is dh`` is allowed.
    Returns ``dh_prev``.
    """
    dt, H = _recurrent_dims("x_t", x_t, 2, W_h, 3)
    B, n_in = x_t.shape
    shapes = gru_workspace_shapes(B, 1, n_in, H)
    reads = dict(x_t=x_t, h_prev=h_prev, W_x=W_x, W_h=W_h, hn=hn, gates=gates, dh=dh)
    writes = dict(dx_t=dx_t, dh_prev=dh_prev, dW_x=dW_x, dW_h=dW_h, db_x=db_x, db_h=db_h,
                  dgates=dgates, dgates_h=dgates_h, dh_ws=dh_ws, accum_ws=accum_ws)
    _check_recurrent_arrays(shapes, dt, reads, writes, prefix="cell_", optional=("dx_t", "accum_ws"))
    _check_recurrent_overlaps(reads, writes, aliases={("dh_prev", "dh")})
    x_t, h_prev, W_x, W_h, gates, hn, dh = as_inputs(x_t, h_prev, W_x, W_h, gates, hn, dh)
    raw.gru_cell_backward(x_t, h_prev, W_x, W_h, gates, hn, dh, _or_absent(dx_t, 2, dt), dh_prev, dW_x, dW_h, db_x,
                          db_h, dgates, dgates_h, dh_ws, accum_ws)
    return dh_prev


# -- embedding ------------------------------------------------------------------

def _check_embedding(indices, W_or_dW, name, rows, writable):
    check_array(name, W_or_dW, ndim=2, writable=writable)
    V = W_or_dW.shape[0]
    if not isinstance(indices, np.ndarray) or indices.ndim != 1:
        raise ValueError(f"indices must be a 1-D integer numpy.ndarray, got {getattr(indices, 'shape', indices)}")
    # every index is checked against [0, V) before anything is written
    check_labels("indices", indices, indices.shape[0], V)
    check_array(rows[0], rows[1], dtype=W_or_dW.dtype, shape=(indices.shape[0], W_or_dW.shape[1]),
                writable=rows[0] == "out")


def embedding_forward(indices, W, out):
    """Row gather ``out[i] = W[indices[i]]``.

    indices (N,) integer in ``[0, V)``, W (V, D) float32/float64, out (N, D)
    same dtype, written.  Returns ``out``.
    """
    _check_embedding(indices, W, "W", ("out", out), False)
    no_overlap(out=out, W=W)
    no_overlap(out=out, indices=indices)
    indices, W = as_inputs(indices, W)
    raw.embedding_forward(indices, W, out)
    return out


def embedding_backward(indices, dy, dW):
    """``dW = 0; dW[indices[i]] += dy[i]`` (repeated indices add up).

    indices (N,) integer in ``[0, V)``, dy (N, D), dW (V, D) written.  Race-free
    and independent of the thread count.  Returns ``dW``.
    """
    _check_embedding(indices, dW, "dW", ("dy", dy), True)
    no_overlap(dW=dW, dy=dy)
    no_overlap(dW=dW, indices=indices)
    indices, dy = as_inputs(indices, dy)
    raw.embedding_backward(indices, dy, dW)
    return dW
