"""Numba-compiled LSTM kernels: full-sequence forward / BPTT and a single cell.

Math (gate order i, f, g, o exactly like PyTorch, so ``torch.nn.LSTM``
weights convert by transposing: ``W_x = weight_ih_l0.T``,
``W_h = weight_hh_l0.T``, ``b = bias_ih_l0 + bias_hh_l0``)::

    z_t = x_t @ W_x + h_{t-1} @ W_h + b                 (B, 4H)
    i = sigmoid(z[:, 0:H])     f = sigmoid(z[:, H:2H])
    g = tanh(z[:, 2H:3H])      o = sigmoid(z[:, 3H:4H])
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

Conventions shared by every kernel in this module
-------------------------------------------------
* All arrays are supplied by the caller, C-contiguous, and of one floating
  dtype (float32 or float64) throughout a call.  The kernels never allocate;
  the shapes of every output / cache / workspace array are listed by
  :func:`lstm_workspace_shapes`.
* Data are batch-major: ``x`` is ``(B, T, n_in)``, ``h_seq`` is ``(B, T, H)``.
  The caches are batch-major as well (``gates`` is ``(B, T, 4H)``,
  ``states`` is ``(3, B, T, H)``), which lets the input projection, ``dx`` and
  both weight gradients each be ONE large BLAS product over all ``B*T`` rows.
  The only per-time-step products are the ``(B, H) @ (H, 4H)`` recurrent ones;
  their operands live in contiguous ``(B, H)`` / ``(B, 4H)`` buffers
  (``h_T`` / ``dh0`` double as the running state and ``step_ws`` holds one
  step's gate block), because ``h_seq[:, t]`` is not contiguous.
* Matrix products are called through BLAS (``np.dot(a, b, out)``) at the top
  level of a kernel, never inside a ``prange`` loop.  Element-wise work runs in
  ``prange`` loops over (batch row, column block) pairs; each iteration writes
  only its own cells and every reduction is done by a single iteration in a
  fixed order, so results are bitwise identical for any number of Numba
  threads.
* Kernels overwrite their outputs (except :func:`lstm_cell_backward` in
  accumulate mode).  Optional outputs are skipped by passing ``None``.

The module is deliberately self-contained (it imports no compiled function
from other jitprop modules) so that Numba's on-disk cache stays valid.
"""

import numpy as np
from numba import njit, prange

__all__ = [
    "lstm_forward",
    "lstm_backward",
    "lstm_cell_forward",
    "lstm_cell_backward",
    "lstm_workspace_shapes",
]

# Width of the column blocks the element-wise loops are split into.  Work is
# distributed over (batch row, block) pairs so that small batches still use
# every thread; the value does not influence the numerical result.
_BLOCK = 64


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


# --------------------------------------------------------------------------
# scalar helpers
# --------------------------------------------------------------------------

@njit(cache=True)
def _sigmoid(z, one):
    """Overflow-free logistic function; ``one`` carries the dtype."""
    e = np.exp(-abs(z))          # in (0, 1], never overflows
    s = one / (one + e)
    return s if z >= 0 else e * s


@njit(cache=True)
def _block_count(n):
    return (n + _BLOCK - 1) // _BLOCK


@njit(cache=True, parallel=True)
def _copy_rows(src, dst):
    """dst[...] = src[...] for two (B, H) arrays (may be the same array)."""
    B, H = src.shape
    for r in prange(B):
        for j in range(H):
            dst[r, j] = src[r, j]


@njit(cache=True, parallel=True)
def _column_sums(a, out, accumulate):
    """out[j] (+)= sum_r a[r, j], a (R, C).

    Parallel over column blocks; each column is summed by one iteration in
    row order, so the result does not depend on the thread count.
    """
    R, C = a.shape
    nblk = _block_count(C)
    zero = a.dtype.type(0)
    for k in prange(nblk):
        j0 = k * _BLOCK
        j1 = min(j0 + _BLOCK, C)
        if not accumulate:
            for j in range(j0, j1):
                out[j] = zero
        for r in range(R):
            for j in range(j0, j1):
                out[j] += a[r, j]


@njit(cache=True, parallel=True)
def _add_into(src, dst):
    """dst += src for two 2-D arrays of equal shape (parallel over rows)."""
    R, C = src.shape
    for r in prange(R):
        for j in range(C):
            dst[r, j] += src[r, j]


# --------------------------------------------------------------------------
# full-sequence kernels
# --------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def lstm_forward(x, W_x, W_h, b, h0, c0, h_seq, h_T, c_T, gates, states,
                 step_ws):
    """LSTM forward pass over a whole sequence.

    Parameters
    ----------
    x : ndarray, (B, T, n_in)
        Input sequence (batch-major).  Read.
    W_x : ndarray, (n_in, 4H)
        Input-to-gates weights, gate order i, f, g, o.  Read.
    W_h : ndarray, (H, 4H)
        Hidden-to-gates weights.  Read.
    b : ndarray, (4H,)
        Gate bias.  Read.
    h0, c0 : ndarray, (B, H)
        Initial hidden and cell state.  Read (before ``h_T`` / ``c_T`` are
        written, so ``h0 is h_T`` and ``c0 is c_T`` are allowed, e.g. for a
        stateful carry across chunks).
    h_seq : ndarray, (B, T, H)
        Written: ``h_seq[:, t] = h_t`` for every step.
    h_T, c_T : ndarray, (B, H)
        Written: final hidden / cell state.  Also used as the running state
        during the recurrence.
    gates : ndarray, (B, T, 4H)
        Cache, written: gate activations ``[i, f, g, o]`` (after the
        nonlinearities) of every step.
    states : ndarray, (3, B, T, H)
        Cache, written: ``states[0, :, t] = c_{t-1}``,
        ``states[1, :, t] = tanh(c_t)``, ``states[2, :, t] = h_{t-1}``.
    step_ws : ndarray, (B, 4H)
        Workspace (contents on entry/exit are irrelevant).

    All arrays are C-contiguous and share one dtype (float32 or float64).
    ``gates`` and ``states`` are what :func:`lstm_backward` needs (together
    with ``x`` and the weights); they must not be modified in between.
    Nothing is allocated.
    """
    B, T, n_in = x.shape
    H = W_h.shape[0]
    G = 4 * H
    if (W_x.shape[0] != n_in or W_x.shape[1] != G or W_h.shape[1] != G
            or b.shape[0] != G):
        raise ValueError("lstm_forward: inconsistent weight shapes")
    if (h0.shape[0] != B or h0.shape[1] != H or c0.shape[0] != B
            or c0.shape[1] != H or h_T.shape[0] != B or h_T.shape[1] != H
            or c_T.shape[0] != B or c_T.shape[1] != H):
        raise ValueError("lstm_forward: state arrays must be (B, H)")
    if (h_seq.shape[0] != B or h_seq.shape[1] != T or h_seq.shape[2] != H
            or gates.shape[0] != B or gates.shape[1] != T
            or gates.shape[2] != G or states.shape[0] != 3
            or states.shape[1] != B or states.shape[2] != T
            or states.shape[3] != H or step_ws.shape[0] != B
            or step_ws.shape[1] != G):
        raise ValueError("lstm_forward: output/cache/workspace shape mismatch")

    one = x.dtype.type(1)
    # Input projection of every time step in one product; ``gates`` holds the
    # pre-activations x_t @ W_x until step t overwrites them with activations.
    np.dot(x.reshape(B * T, n_in), W_x, gates.reshape(B * T, G))
    _copy_rows(h0, h_T)
    _copy_rows(c0, c_T)

    nblk = _block_count(H)
    for t in range(T):
        np.dot(h_T, W_h, step_ws)                # h_{t-1} @ W_h
        for task in prange(B * nblk):
            r = task // nblk
            j0 = (task % nblk) * _BLOCK
            j1 = min(j0 + _BLOCK, H)
            for j in range(j0, j1):
                zi = gates[r, t, j] + step_ws[r, j] + b[j]
                zf = gates[r, t, H + j] + step_ws[r, H + j] + b[H + j]
                zg = gates[r, t, 2 * H + j] + step_ws[r, 2 * H + j] + b[2 * H + j]
                zo = gates[r, t, 3 * H + j] + step_ws[r, 3 * H + j] + b[3 * H + j]
                gi = _sigmoid(zi, one)
                gf = _sigmoid(zf, one)
                gg = np.tanh(zg)
                go = _sigmoid(zo, one)
                c_prev = c_T[r, j]
                c_new = gf * c_prev + gi * gg
                tc = np.tanh(c_new)
                h_new = go * tc
                gates[r, t, j] = gi
                gates[r, t, H + j] = gf
                gates[r, t, 2 * H + j] = gg
                gates[r, t, 3 * H + j] = go
                states[0, r, t, j] = c_prev
                states[1, r, t, j] = tc
                states[2, r, t, j] = h_T[r, j]
                c_T[r, j] = c_new
                h_T[r, j] = h_new
                h_seq[r, t, j] = h_new


@njit(cache=True, parallel=True)
def lstm_backward(x, W_x, W_h, dh_seq, dh_T, dc_T, gates, states, dx, dW_x,
                  dW_h, db, dh0, dc0, dgates, step_ws):
    """Backpropagation through time for :func:`lstm_forward`.

    Parameters
    ----------
    x : ndarray, (B, T, n_in)
        The forward input.  Read.
    W_x : ndarray, (n_in, 4H)
        Read (only when ``dx`` is requested).
    W_h : ndarray, (H, 4H)
        Read.
    dh_seq : ndarray, (B, T, H)
        Upstream gradient w.r.t. every ``h_seq[:, t]`` (zeros where unused,
        e.g. all but the last step for a many-to-one model).  Read.
    dh_T, dc_T : ndarray, (B, H)
        Extra gradient w.r.t. the final states ``h_T`` / ``c_T`` (may be
        zeros).  Read before ``dh0`` / ``dc0`` are first written, so
        ``dh_T is dh0`` / ``dc_T is dc0`` are allowed.
    gates : ndarray, (B, T, 4H)
        Cache written by :func:`lstm_forward`.  Read.
    states : ndarray, (3, B, T, H)
        Cache written by :func:`lstm_forward`.  Read.
    dx : ndarray, (B, T, n_in) or None
        Written: gradient w.r.t. ``x``.  Pass ``None`` to skip (e.g. for a
        first layer); that compiles a specialisation without the product.
    dW_x : ndarray, (n_in, 4H)
        Written (overwritten): gradient w.r.t. ``W_x``.
    dW_h : ndarray, (H, 4H)
        Written (overwritten): gradient w.r.t. ``W_h``.
    db : ndarray, (4H,)
        Written (overwritten): gradient w.r.t. ``b``.
    dh0, dc0 : ndarray, (B, H)
        Written: gradient w.r.t. the initial states ``h0`` / ``c0``.  Also
        used as the running ``dh`` / ``dc`` during the recurrence.
    dgates : ndarray, (B, T, 4H)
        Workspace: receives the pre-activation gate gradients of every step
        (valid on exit, may be inspected).
    step_ws : ndarray, (B, 4H)
        Workspace (contents on entry/exit are irrelevant).

    All arrays are C-contiguous and share one dtype.  ``gates`` and
    ``states`` are not modified, so backward may be repeated.  Nothing is
    allocated.
    """
    B, T, n_in = x.shape
    H = W_h.shape[0]
    G = 4 * H
    if (W_x.shape[0] != n_in or W_x.shape[1] != G or W_h.shape[1] != G
            or dW_x.shape[0] != n_in or dW_x.shape[1] != G
            or dW_h.shape[0] != H or dW_h.shape[1] != G or db.shape[0] != G):
        raise ValueError("lstm_backward: inconsistent weight/gradient shapes")
    if (dh_T.shape[0] != B or dh_T.shape[1] != H or dc_T.shape[0] != B
            or dc_T.shape[1] != H or dh0.shape[0] != B or dh0.shape[1] != H
            or dc0.shape[0] != B or dc0.shape[1] != H):
        raise ValueError("lstm_backward: state gradients must be (B, H)")
    if (dh_seq.shape[0] != B or dh_seq.shape[1] != T or dh_seq.shape[2] != H
            or gates.shape[0] != B or gates.shape[1] != T
            or gates.shape[2] != G or states.shape[0] != 3
            or states.shape[1] != B or states.shape[2] != T
            or states.shape[3] != H or dgates.shape[0] != B
            or dgates.shape[1] != T or dgates.shape[2] != G
            or step_ws.shape[0] != B or step_ws.shape[1] != G):
        raise ValueError("lstm_backward: cache/workspace shape mismatch")
    if dx is not None:
        if dx.shape[0] != B or dx.shape[1] != T or dx.shape[2] != n_in:
            raise ValueError("lstm_backward: dx must be (B, T, n_in)")

    one = x.dtype.type(1)
    # dh0 / dc0 carry dL/dh_t (recurrent part) and dL/dc_t between steps.
    _copy_rows(dh_T, dh0)
    _copy_rows(dc_T, dc0)

    nblk = _block_count(H)
    for t in range(T - 1, -1, -1):
        for task in prange(B * nblk):
            r = task // nblk
            j0 = (task % nblk) * _BLOCK
            j1 = min(j0 + _BLOCK, H)
            for j in range(j0, j1):
                dh = dh0[r, j] + dh_seq[r, t, j]
                gi = gates[r, t, j]
                gf = gates[r, t, H + j]
                gg = gates[r, t, 2 * H + j]
                go = gates[r, t, 3 * H + j]
                c_prev = states[0, r, t, j]
                tc = states[1, r, t, j]
                dc = dc0[r, j] + dh * go * (one - tc * tc)
                d_i = dc * gg * gi * (one - gi)
                d_f = dc * c_prev * gf * (one - gf)
                d_g = dc * gi * (one - gg * gg)
                d_o = dh * tc * go * (one - go)
                dgates[r, t, j] = d_i
                dgates[r, t, H + j] = d_f
                dgates[r, t, 2 * H + j] = d_g
                dgates[r, t, 3 * H + j] = d_o
                step_ws[r, j] = d_i
                step_ws[r, H + j] = d_f
                step_ws[r, 2 * H + j] = d_g
                step_ws[r, 3 * H + j] = d_o
                dc0[r, j] = dc * gf
        np.dot(step_ws, W_h.T, dh0)              # dL/dh_{t-1}, recurrent part

    dg = dgates.reshape(B * T, G)
    np.dot(x.reshape(B * T, n_in).T, dg, dW_x)
    np.dot(states[2].reshape(B * T, H).T, dg, dW_h)
    if dx is not None:
        np.dot(dg, W_x.T, dx.reshape(B * T, n_in))
    _column_sums(dg, db, False)


# --------------------------------------------------------------------------
# single-step kernels
# --------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def lstm_cell_forward(x_t, h_prev, c_prev, W_x, W_h, b, h, c, gates, tanh_c,
                      step_ws):
    """One LSTM time step.

    Parameters
    ----------
    x_t : ndarray, (B, n_in)
        Input of this step.  Read.
    h_prev, c_prev : ndarray, (B, H)
        Previous hidden / cell state.  Read.  ``h is h_prev`` and
        ``c is c_prev`` are allowed, but the backward step needs the old
        values, so keep copies if you intend to call
        :func:`lstm_cell_backward`.
    W_x : ndarray, (n_in, 4H)
        Read.
    W_h : ndarray, (H, 4H)
        Read.
    b : ndarray, (4H,)
        Read.
    h, c : ndarray, (B, H)
        Written: new hidden / cell state.
    gates : ndarray, (B, 4H)
        Cache, written: activations ``[i, f, g, o]``.
    tanh_c : ndarray, (B, H)
        Cache, written: ``tanh(c)``.
    step_ws : ndarray, (B, 4H)
        Workspace.

    All arrays are C-contiguous and share one dtype.  Nothing is allocated.
    Stepping this cell over t = 0..T-1 reproduces :func:`lstm_forward`.
    """
    B, n_in = x_t.shape
    H = W_h.shape[0]
    G = 4 * H
    if (W_x.shape[0] != n_in or W_x.shape[1] != G or W_h.shape[1] != G
            or b.shape[0] != G):
        raise ValueError("lstm_cell_forward: inconsistent weight shapes")
    if (h_prev.shape[0] != B or h_prev.shape[1] != H or c_prev.shape[0] != B
            or c_prev.shape[1] != H or h.shape[0] != B or h.shape[1] != H
            or c.shape[0] != B or c.shape[1] != H or tanh_c.shape[0] != B
            or tanh_c.shape[1] != H or gates.shape[0] != B
            or gates.shape[1] != G or step_ws.shape[0] != B
            or step_ws.shape[1] != G):
        raise ValueError("lstm_cell_forward: state/cache shape mismatch")

    one = x_t.dtype.type(1)
    np.dot(x_t, W_x, gates)
    np.dot(h_prev, W_h, step_ws)
    nblk = _block_count(H)
    for task in prange(B * nblk):
        r = task // nblk
        j0 = (task % nblk) * _BLOCK
        j1 = min(j0 + _BLOCK, H)
        for j in range(j0, j1):
            gi = _sigmoid(gates[r, j] + step_ws[r, j] + b[j], one)
            gf = _sigmoid(gates[r, H + j] + step_ws[r, H + j] + b[H + j], one)
            gg = np.tanh(gates[r, 2 * H + j] + step_ws[r, 2 * H + j]
                         + b[2 * H + j])
            go = _sigmoid(gates[r, 3 * H + j] + step_ws[r, 3 * H + j]
                          + b[3 * H + j], one)
            c_new = gf * c_prev[r, j] + gi * gg
            tc = np.tanh(c_new)
            gates[r, j] = gi
            gates[r, H + j] = gf
            gates[r, 2 * H + j] = gg
            gates[r, 3 * H + j] = go
            tanh_c[r, j] = tc
            c[r, j] = c_new
            h[r, j] = go * tc


@njit(cache=True, parallel=True)
def lstm_cell_backward(x_t, h_prev, c_prev, W_x, W_h, gates, tanh_c, dh, dc,
                       dx_t, dh_prev, dc_prev, dW_x, dW_h, db, dgates,
                       accum_ws):
    """Backward of one :func:`lstm_cell_forward` step.

    Parameters
    ----------
    x_t : ndarray, (B, n_in)
        Input of the step.  Read.
    h_prev, c_prev : ndarray, (B, H)
        States the forward step started from.  Read.
    W_x : ndarray, (n_in, 4H)
        Read (only when ``dx_t`` is requested).
    W_h : ndarray, (H, 4H)
        Read.
    gates : ndarray, (B, 4H)
        Cache from the forward step.  Read.
    tanh_c : ndarray, (B, H)
        Cache from the forward step.  Read.
    dh : ndarray, (B, H)
        Total gradient w.r.t. this step's output ``h`` (upstream gradient
        plus the ``dh_prev`` returned by the following step).  Read.
    dc : ndarray, (B, H)
        Gradient w.r.t. this step's ``c`` arriving from the following step
        (its ``dc_prev``; zeros, or dL/dc_T, for the last step).  Read.
    dx_t : ndarray, (B, n_in) or None
        Written: gradient w.r.t. ``x_t``; ``None`` skips it.
    dh_prev, dc_prev : ndarray, (B, H)
        Written: gradients w.r.t. ``h_prev`` / ``c_prev``.  ``dh_prev is dh``
        and ``dc_prev is dc`` are allowed (in-place carry).
    dW_x : ndarray, (n_in, 4H)
    dW_h : ndarray, (H, 4H)
    db : ndarray, (4H,)
        Parameter gradients: overwritten with this step's contribution when
        ``accum_ws`` is None, otherwise the contribution is added to them.
    dgates : ndarray, (B, 4H)
        Written: pre-activation gate gradients of this step.
    accum_ws : ndarray, (n_in + H, 4H) or None
        ``None`` selects overwrite mode.  An array selects accumulate mode
        and is used as scratch for the weight-gradient products.

    All arrays are C-contiguous and share one dtype.  Nothing is allocated.
    Running this over t = T-1..0 with accumulation reproduces
    :func:`lstm_backward` (up to floating-point summation order).
    """
    B, n_in = x_t.shape
    H = W_h.shape[0]
    G = 4 * H
    if (W_x.shape[0] != n_in or W_x.shape[1] != G or W_h.shape[1] != G
            or dW_x.shape[0] != n_in or dW_x.shape[1] != G
            or dW_h.shape[0] != H or dW_h.shape[1] != G or db.shape[0] != G):
        raise ValueError("lstm_cell_backward: inconsistent weight shapes")
    if (h_prev.shape[0] != B or h_prev.shape[1] != H or c_prev.shape[0] != B
            or c_prev.shape[1] != H or tanh_c.shape[0] != B
            or tanh_c.shape[1] != H or dh.shape[0] != B or dh.shape[1] != H
            or dc.shape[0] != B or dc.shape[1] != H or dh_prev.shape[0] != B
            or dh_prev.shape[1] != H or dc_prev.shape[0] != B
            or dc_prev.shape[1] != H or gates.shape[0] != B
            or gates.shape[1] != G or dgates.shape[0] != B
            or dgates.shape[1] != G):
        raise ValueError("lstm_cell_backward: state/cache shape mismatch")
    if dx_t is not None:
        if dx_t.shape[0] != B or dx_t.shape[1] != n_in:
            raise ValueError("lstm_cell_backward: dx_t must be (B, n_in)")
    if accum_ws is not None:
        if accum_ws.shape[0] != n_in + H or accum_ws.shape[1] != G:
            raise ValueError("lstm_cell_backward: accum_ws must be "
                             "(n_in + H, 4H)")

    one = x_t.dtype.type(1)
    nblk = _block_count(H)
    for task in prange(B * nblk):
        r = task // nblk
        j0 = (task % nblk) * _BLOCK
        j1 = min(j0 + _BLOCK, H)
        for j in range(j0, j1):
            gi = gates[r, j]
            gf = gates[r, H + j]
            gg = gates[r, 2 * H + j]
            go = gates[r, 3 * H + j]
            tc = tanh_c[r, j]
            dh_rj = dh[r, j]
            dc_rj = dc[r, j] + dh_rj * go * (one - tc * tc)
            dgates[r, j] = dc_rj * gg * gi * (one - gi)
            dgates[r, H + j] = dc_rj * c_prev[r, j] * gf * (one - gf)
            dgates[r, 2 * H + j] = dc_rj * gi * (one - gg * gg)
            dgates[r, 3 * H + j] = dh_rj * tc * go * (one - go)
            dc_prev[r, j] = dc_rj * gf

    np.dot(dgates, W_h.T, dh_prev)
    if dx_t is not None:
        np.dot(dgates, W_x.T, dx_t)
    if accum_ws is None:
        np.dot(x_t.T, dgates, dW_x)
        np.dot(h_prev.T, dgates, dW_h)
        _column_sums(dgates, db, False)
    else:
        ws_x = accum_ws[:n_in]
        ws_h = accum_ws[n_in:]
        np.dot(x_t.T, dgates, ws_x)
        np.dot(h_prev.T, dgates, ws_h)
        _add_into(ws_x, dW_x)
        _add_into(ws_h, dW_h)
        _column_sums(dgates, db, True)
