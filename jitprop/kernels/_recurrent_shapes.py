"""Shapes of the arrays the LSTM and GRU kernels read and write (plain Python: the
checked entry points in :mod:`jitprop.kernels` check against them, and
callers of :mod:`jitprop.kernels.raw` allocate with them)."""

import numpy as np

__all__ = ["lstm_workspace_shapes", "gru_workspace_shapes", "absent"]


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


def gru_workspace_shapes(B, T, n_in, H, parts=1):
    """Shapes of every array the GRU kernels read or write.

    Parameters
    ----------
    B, T, n_in, H : int
        Batch size, time steps, input features, hidden units.
    parts : int, default 1
        Batch parts of :func:`gru_backward` (sets ``dw_ws``).

    Returns
    -------
    dict of str -> tuple of int
        Sequence kernels: ``x, dx`` (B, T, n_in); ``W_x, dW_x`` (n_in, 3H);
        ``W_h, dW_h`` (H, 3H); ``b_x, db_x, b_h, db_h`` (3H,); ``h0, h_T,
        dh0, dh_T, dh_ws`` (B, H); ``h_seq, dh_seq`` (B, T, H); caches
        ``gates`` (B, T, 3H) and ``states`` (2, B, T, H); workspaces
        ``step_ws`` (B, 3H), ``dgates, dgates_h`` (B, T, 3H) and ``dw_ws``
        (parts - 1, (n_in + H) * 3H).

        Cell kernels, prefixed ``cell_``: ``x_t, dx_t`` (B, n_in); ``h,
        h_prev, hn, dh, dh_prev, dh_ws`` (B, H); ``gates, step_ws, dgates,
        dgates_h`` (B, 3H); ``accum_ws`` (n_in + H, 3H).
    """
    B, T, n_in, H, parts = int(B), int(T), int(n_in), int(H), int(parts)
    G = 3 * H
    bh = (B, H)
    shapes = {
        "x": (B, T, n_in), "dx": (B, T, n_in),
        "W_x": (n_in, G), "dW_x": (n_in, G),
        "W_h": (H, G), "dW_h": (H, G),
        "b_x": (G,), "db_x": (G,), "b_h": (G,), "db_h": (G,),
        "h0": bh, "h_T": bh, "dh0": bh, "dh_T": bh, "dh_ws": bh,
        "h_seq": (B, T, H), "dh_seq": (B, T, H),
        "gates": (B, T, G), "states": (2, B, T, H),
        "step_ws": (B, G), "dgates": (B, T, G), "dgates_h": (B, T, G),
        "dw_ws": (max(parts - 1, 0), (n_in + H) * G),
        "cell_x_t": (B, n_in), "cell_dx_t": (B, n_in),
        "cell_accum_ws": (n_in + H, G),
    }
    for name in ("h", "h_prev", "hn", "dh", "dh_prev", "dh_ws"):
        shapes["cell_" + name] = bh
    for name in ("gates", "step_ws", "dgates", "dgates_h"):
        shapes["cell_" + name] = (B, G)
    return shapes


def absent(ndim, dtype):
    """An empty C-contiguous array of ``ndim`` axes and ``dtype``: what the
    checked entry points and the layers pass for an input gradient that is
    not wanted (``dx``, ``dx_t``), instead of None.  Numba types it like a
    real array of that kind, so one compiled kernel serves both cases (None
    would compile a specialisation of its own).  The kernels also take it
    for ``dw_ws`` and ``accum_ws``, but there None compiles less: the code
    of the path it turns off is left out."""
    return np.zeros((0,) * ndim, dtype)
