"""Checked entry points of the LSTM kernels, and the shapes of their arrays.

Each function checks its arguments in Python (types, one float dtype,
C-contiguity, shapes from :func:`lstm_workspace_shapes`, overlaps) and raises
``TypeError``/``ValueError`` naming the argument, then calls the compiled
kernel of the same name in :mod:`jitprop.kernels.raw`, which checks nothing.
"""

from .._checks import check_array, check_int, no_overlap
from ._lstm import lstm_backward as _raw_backward
from ._lstm import lstm_cell_backward as _raw_cell_backward
from ._lstm import lstm_cell_forward as _raw_cell_forward
from ._lstm import lstm_forward as _raw_forward

__all__ = ["lstm_forward", "lstm_backward", "lstm_cell_forward", "lstm_cell_backward", "lstm_workspace_shapes"]


def lstm_workspace_shapes(B, T, n_in, H):
    """Shapes of every array the LSTM kernels read or write.

    Parameters
    ----------
    B, T, n_in, H : int
        Batch size, number of time steps, input features and hidden units.

    Returns
    -------
    dict of str -> tuple of int
        Keys are the kernel parameter names.  Sequence kernels
        (:func:`lstm_forward`, :func:`lstm_backward`):

        ``x, dx`` (B, T, n_in); ``W_x, dW_x`` (n_in, 4H); ``W_h, dW_h``
        (H, 4H); ``b, db`` (4H,); ``h0, c0, h_T, c_T, dh0, dc0, dh_T, dc_T``
        (B, H); ``h_seq, dh_seq`` (B, T, H); caches ``gates`` (B, T, 4H) and
        ``states`` (3, B, T, H); workspaces ``step_ws`` (B, 4H) and
        ``dgates`` (B, T, 4H).

        Cell kernels (:func:`lstm_cell_forward`, :func:`lstm_cell_backward`),
        prefixed ``cell_``: ``cell_x_t, cell_dx_t`` (B, n_in); ``cell_h,
        cell_c, cell_tanh_c, cell_h_prev, cell_c_prev, cell_dh, cell_dc,
        cell_dh_prev, cell_dc_prev`` (B, H); ``cell_gates, cell_step_ws,
        cell_dgates`` (B, 4H); ``cell_accum_ws`` (n_in + H, 4H).
    """
    B, T, n_in, H = int(B), int(T), int(n_in), int(H)
    G = 4 * H
    bh = (B, H)
    shapes = {
        "x": (B, T, n_in), "dx": (B, T, n_in),
        "W_x": (n_in, G), "dW_x": (n_in, G),
        "W_h": (H, G), "dW_h": (H, G),
        "b": (G,), "db": (G,),
        "h0": bh, "c0": bh, "h_T": bh, "c_T": bh,
        "dh0": bh, "dc0": bh, "dh_T": bh, "dc_T": bh,
        "h_seq": (B, T, H), "dh_seq": (B, T, H),
        "gates": (B, T, G), "states": (3, B, T, H),
        "step_ws": (B, G), "dgates": (B, T, G),
        "cell_x_t": (B, n_in), "cell_dx_t": (B, n_in),
        "cell_gates": (B, G), "cell_step_ws": (B, G), "cell_dgates": (B, G),
        "cell_accum_ws": (n_in + H, G),
    }
    for name in ("h", "c", "tanh_c", "h_prev", "c_prev", "dh", "dc",
                 "dh_prev", "dc_prev"):
        shapes["cell_" + name] = bh
    return shapes


def _dims(x_name, x, ndim, W_h):
    """dtype and hidden size H from the input and ``W_h`` (H, 4H)."""
    check_array(x_name, x, ndim=ndim)
    dt = x.dtype
    check_array("W_h", W_h, dtype=dt, ndim=2)
    H = W_h.shape[0]
    if W_h.shape[1] != 4 * H:
        raise ValueError(f"W_h must have shape (H, 4H), got {W_h.shape}")
    return dt, H


def _check_all(shapes, dt, reads, writes, prefix=""):
    """Check every named array against ``shapes[prefix + name]``; outputs
    (``writes``, None entries skipped) must be writable."""
    for name, a in reads.items():
        check_array(name, a, dtype=dt, shape=shapes[prefix + name])
    for name, a in writes.items():
        if a is not None:
            check_array(name, a, dtype=dt, shape=shapes[prefix + name], writable=True)


def _check_overlaps(reads, writes, aliases=()):
    """No output overlaps another output or an input, except the pairs in
    ``aliases`` (output, input) when they are the very same array."""
    outs = [(k, a) for k, a in writes.items() if a is not None]
    for i, (na, a) in enumerate(outs):
        for nb, b in outs[i + 1:]:
            no_overlap(**{na: a, nb: b})
        for nb, b in reads.items():
            if (na, nb) in aliases and a is b:
                continue
            no_overlap(**{na: a, nb: b})


def lstm_forward(x, W_x, W_h, b, h0, c0, h_seq, h_T, c_T, gates, states, step_ws, parts=1):
    """Checked :func:`jitprop.kernels.raw.lstm_forward` (same arguments; see
    its documentation).  ``h0 is h_T`` and ``c0 is c_T`` are allowed."""
    dt, H = _dims("x", x, 3, W_h)
    B, T, n_in = x.shape
    shapes = lstm_workspace_shapes(B, T, n_in, H)
    reads = dict(x=x, W_x=W_x, W_h=W_h, b=b, h0=h0, c0=c0)
    writes = dict(h_seq=h_seq, h_T=h_T, c_T=c_T, gates=gates, states=states, step_ws=step_ws)
    _check_all(shapes, dt, reads, writes)
    _check_overlaps(reads, writes, aliases={("h_T", "h0"), ("c_T", "c0")})
    _raw_forward(x, W_x, W_h, b, h0, c0, h_seq, h_T, c_T, gates, states, step_ws, check_int("parts", parts, 1))


def lstm_backward(x, W_x, W_h, dh_seq, dh_T, dc_T, gates, states, dx, dW_x, dW_h, db, dh0, dc0, dgates, step_ws,
                  parts=1, dw_ws=None):
    """Checked :func:`jitprop.kernels.raw.lstm_backward` (same arguments; see
    its documentation).  ``dh_T is dh0`` and ``dc_T is dc0`` are allowed;
    ``dw_ws`` is required when ``parts > 1`` and the batch has several rows."""
    dt, H = _dims("x", x, 3, W_h)
    B, T, n_in = x.shape
    shapes = lstm_workspace_shapes(B, T, n_in, H)
    reads = dict(x=x, W_x=W_x, W_h=W_h, dh_seq=dh_seq, dh_T=dh_T, dc_T=dc_T, gates=gates, states=states)
    writes = dict(dx=dx, dW_x=dW_x, dW_h=dW_h, db=db, dh0=dh0, dc0=dc0, dgates=dgates, step_ws=step_ws)
    _check_all(shapes, dt, reads, writes)
    parts = check_int("parts", parts, 1)
    if parts > 1 and B > 1:
        if dw_ws is None:
            raise ValueError("lstm_backward: parts > 1 needs dw_ws")
        rows = -(-B // parts)
        active = -(-B // rows)   # parts that hold rows
        width = (n_in + H) * 4 * H
        check_array("dw_ws", dw_ws, dtype=dt, ndim=2, writable=True)
        if dw_ws.shape[0] < active - 1 or dw_ws.shape[1] != width:
            raise ValueError(f"dw_ws must have shape ({parts - 1}, {width}) (parts - 1, n_in*4H + H*4H), "
                             f"got {dw_ws.shape}")
        writes["dw_ws"] = dw_ws
    _check_overlaps(reads, writes, aliases={("dh0", "dh_T"), ("dc0", "dc_T")})
    _raw_backward(x, W_x, W_h, dh_seq, dh_T, dc_T, gates, states, dx, dW_x, dW_h, db, dh0, dc0, dgates, step_ws,
                  parts, dw_ws)


def lstm_cell_forward(x_t, h_prev, c_prev, W_x, W_h, b, h, c, gates, tanh_c, step_ws):
    """Checked :func:`jitprop.kernels.raw.lstm_cell_forward` (same arguments;
    see its documentation).  ``h is h_prev`` and ``c is c_prev`` are allowed."""
    dt, H = _dims("x_t", x_t, 2, W_h)
    B, n_in = x_t.shape
    shapes = lstm_workspace_shapes(B, 1, n_in, H)
    reads = dict(x_t=x_t, h_prev=h_prev, c_prev=c_prev)
    writes = dict(h=h, c=c, gates=gates, tanh_c=tanh_c, step_ws=step_ws)
    _check_all(shapes, dt, reads, writes, prefix="cell_")
    _check_all(shapes, dt, dict(W_x=W_x, W_h=W_h, b=b), {})
    _check_overlaps(dict(reads, W_x=W_x, W_h=W_h, b=b), writes, aliases={("h", "h_prev"), ("c", "c_prev")})
    _raw_cell_forward(x_t, h_prev, c_prev, W_x, W_h, b, h, c, gates, tanh_c, step_ws)


def lstm_cell_backward(x_t, h_prev, c_prev, W_x, W_h, gates, tanh_c, dh, dc, dx_t, dh_prev, dc_prev, dW_x, dW_h,
                       db, dgates, accum_ws):
    """Checked :func:`jitprop.kernels.raw.lstm_cell_backward` (same arguments;
    see its documentation).  ``dh_prev is dh`` and ``dc_prev is dc`` are
    allowed; ``accum_ws`` None selects overwrite mode."""
    dt, H = _dims("x_t", x_t, 2, W_h)
    B, n_in = x_t.shape
    shapes = lstm_workspace_shapes(B, 1, n_in, H)
    reads = dict(x_t=x_t, h_prev=h_prev, c_prev=c_prev, gates=gates, tanh_c=tanh_c, dh=dh, dc=dc)
    writes = dict(dx_t=dx_t, dh_prev=dh_prev, dc_prev=dc_prev, dgates=dgates, accum_ws=accum_ws)
    _check_all(shapes, dt, reads, writes, prefix="cell_")
    weights = dict(W_x=W_x, W_h=W_h)
    grads = dict(dW_x=dW_x, dW_h=dW_h, db=db)
    _check_all(shapes, dt, weights, grads)
    _check_overlaps(dict(reads, **weights), dict(writes, **grads), aliases={("dh_prev", "dh"), ("dc_prev", "dc")})
    _raw_cell_backward(x_t, h_prev, c_prev, W_x, W_h, gates, tanh_c, dh, dc, dx_t, dh_prev, dc_prev, dW_x, dW_h,
                       db, dgates, accum_ws)
