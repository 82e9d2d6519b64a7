"""Numba-compiled recurrent kernels, LSTM and GRU: full-sequence forward /
BPTT and a single cell of each.

LSTM (gate order i, f, g, o exactly like PyTorch, so ``torch.nn.LSTM``
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
  :func:`jitprop.kernels.lstm_workspace_shapes`.  These kernels do not check
  shapes: the checked entry points of the same names in
  :mod:`jitprop.kernels` do, in Python.
* Data are batch-major: ``x`` is ``(B, T, n_in)``, ``h_seq`` is ``(B, T, H)``.
  The caches are batch-major as well (``gates`` is ``(B, T, 4H)``,
  ``states`` is ``(3, B, T, H)``), which lets the input projection, ``dx`` and
  both weight gradients each be ONE large BLAS product over all ``B*T`` rows.
  The only per-time-step products are the ``(B, H) @ (H, 4H)`` recurrent ones;
  their operands live in contiguous ``(B, H)`` / ``(B, 4H)`` buffers
  (``h_T`` / ``dh0`` double as the running state and ``step_ws`` holds one
  step's gate block), because ``h_seq[:, t]`` is not contiguous.
* Matrix products are called through BLAS (``np.dot(a, b, out)``) at the top
  level of a kernel, except with ``parts > 1``: the batch is then cut into
  parts that each run the whole sequence, products included, inside one
  ``prange`` over parts, and the caller limits BLAS to one thread (the LSTM
  layer does).  Element-wise work runs
  over (batch row, column block) pairs, in a ``prange`` loop for large time
  steps (``B * H >= _PAR_STEP_MIN``) and serially otherwise (see the comment
  at ``_PAR_STEP_MIN``); each pair writes only its own cells and every
  reduction is done by a single iteration in a fixed order, so results are
  bitwise identical for any number of Numba threads and either path.
* float32 stays float32 throughout; sigmoid / tanh are branch-free
  polynomial versions (within 2 ulp, :mod:`._fmath`) so the gate loops vectorise.
* Kernels overwrite their outputs (except the cell backward kernels in
  accumulate mode).  Optional outputs are skipped by passing ``None``.

GRU (``torch.nn.GRU``'s gate order r, z, n, so its weights convert by
transposing: ``W_x = weight_ih_l0.T``, ``W_h = weight_hh_l0.T``,
``b_x = bias_ih_l0``, ``b_h = bias_hh_l0``)::

    a = x_t @ W_x + b_x                    u = h_{t-1} @ W_h + b_h     (B, 3H)
    r = sigmoid(a_r + u_r)                 z = sigmoid(a_z + u_z)
    n = tanh(a_n + r * u_n)
    h_t = (1 - z) * n + z * h_{t-1}

The two biases stay separate because ``b_hn`` sits inside ``r * (...)``.
Backward, with ``d = dL/dh_t`` (upstream plus recurrent)::

    dn~ = d (1 - z) (1 - n^2)        dz~ = d (h_{t-1} - n) z (1 - z)
    dr~ = dn~ u_n r (1 - r)
    x side: da = [dr~, dz~, dn~]     h side: du = [dr~, dz~, dn~ r]
    dL/dh_{t-1} = d z + du @ W_h.T
    dW_x = x^T da, db_x = sum da, dW_h = h_prev^T du, db_h = sum du, dx = da @ W_x.T

The GRU kernels keep the conventions above, with caches ``gates`` (B, T, 3H)
and ``states`` (2, B, T, H); their shapes are listed by
:func:`jitprop.kernels.gru_workspace_shapes`.

Both cells live in this one module.  The only compiled functions it takes
from another module are the vectorised sigmoid / tanh of :mod:`._fmath`, whose
source is part of every jitprop cache entry's key (:mod:`jitprop._cache`), so
an edit there recompiles the kernels that embed them.
"""

import numpy as np
from numba import njit, prange

from ._fmath import sigmoid, tanh

__all__ = [
    "lstm_forward",
    "lstm_backward",
    "lstm_cell_forward",
    "lstm_cell_backward",
    "gru_forward",
    "gru_backward",
    "gru_cell_forward",
    "gru_cell_backward",
]

# Compilation options, the convention of both kernel modules: one dict per
# kind, ``@njit(**_jit)`` for serial helpers, ``@njit(**_inline)`` for helpers
# inlined into their callers, ``@njit(**_pjit)`` for the parallel kernels.
# Division by zero follows NumPy (no per-division check), no fastmath.
_jit = dict(cache=True, error_model="numpy")
_inline = dict(_jit, inline="always")
_pjit = dict(_jit, parallel=True)

# Width of the column blocks the element-wise loops are split into.  Work is
# distributed over (batch row, block) pairs so that small batches still use
# every thread; the value does not influence the numerical result.
_BLOCK = 64

# Chunk of the flat weight gradients when the parts' shares are added.
_CHUNK = 8192

# A step's gate arithmetic runs in a ``prange`` only from this many (row, unit)
# cells: below, handing work from BLAS's threads to Numba's costs more than the
# serial loop (docs/performance.md, finding 12).  Both paths do identical work.
_PAR_STEP_MIN = 1 << 17


@njit(**_jit)
def _block_count(n):
    return (n + _BLOCK - 1) // _BLOCK


@njit(**_jit)
def _copy_rows(src, dst):
    """dst[...] = src[...] for two (B, H) arrays (may be the same array)."""
    B, H = src.shape
    for r in range(B):
        for j in range(H):
            dst[r, j] = src[r, j]


@njit(**_jit)
def _column_sums_block(a, out, accumulate, k):
    """out[j] (+)= sum_r a[r, j] for the columns of block ``k``, a (R, C),
    summed in row order.

    Serial: the kernels run it in their own ``prange`` over blocks.  (No
    parallel function here calls another one: a cached function that embeds
    another parallel function's loop was seen to be reloaded from Numba's
    cache as broken code, segfaulting.)
    """
    R, C = a.shape
    j0 = k * _BLOCK
    j1 = min(j0 + _BLOCK, C)
    n = j1 - j0
    o = out[j0:j1]  # views from 0 vectorise: docs/performance.md finding 6
    if not accumulate:
        zero = a.dtype.type(0)
        for j in range(n):
            o[j] = zero
    for r in range(R):
        row = a[r, j0:j1]
        for j in range(n):
            o[j] += row[j]


@njit(**_jit)
def _gate_offsets(H, j0, j1):
    """Unsigned length of columns j0:j1 and their offsets in gates 0-3 of a row.

    Numba wraps negative signed indices, so ``a[j0 + k]`` with a runtime j0
    keeps a check that stops LLVM vectorising; unsigned indices have none
    and need no slicing views, whose reference counts cost time on short
    rows (docs/performance.md, finding 15).
    """
    n = np.uint64(j1 - j0)
    o0 = np.uint64(j0)
    step = np.uint64(H)
    o1 = o0 + step
    o2 = o1 + step
    o3 = o2 + step
    return n, o0, o1, o2, o3


@njit(**_jit)
def _add_row(src, dst, r):
    """dst[r] += src[r] for two 2-D arrays of equal shape."""
    for j in range(src.shape[1]):
        dst[r, j] += src[r, j]


# ==========================================================================
# LSTM
# ==========================================================================
# --------------------------------------------------------------------------
# LSTM: per-row gate arithmetic
# --------------------------------------------------------------------------
#
# One (batch row, column block) of a time step.  The work is split into
# several short loops, each touching few arrays: LLVM only vectorises a loop
# when the runtime alias checks it needs between the (possibly overlapping)
# arrays stay under a small threshold, and one fused loop over ten arrays
# would stay scalar.  All arguments are 1-D contiguous rows.  The forward
# block indexes them from unsigned gate offsets (:func:`_gate_offsets`); the
# backward block, inlined into its callers, over views from index 0.

@njit(**_jit)
def _lstm_fwd_block(z, ws, b, c, h, c_prev_out, h_prev_out, tanh_c_out, h_out, H,
                    j0, j1):
    """Gate nonlinearities and state update for columns j0:j1 of one row.

    z (4H): in x@W_x part of the pre-activation, out activations [i,f,g,o].
    ws (4H): h_prev@W_h; b (4H) bias.  c, h (H): in c_{t-1}, h_{t-1}; out
    c_t, h_t.  Optional outputs (None to skip): c_prev_out, h_prev_out get
    c_{t-1}, h_{t-1}; h_out gets h_t.  tanh_c_out (H) gets tanh(c_t).
    """
    one = z.dtype.type(1)
    n, oi, of, og, oo = _gate_offsets(H, j0, j1)
    for k in range(n):
        z[oi + k] = sigmoid(z[oi + k] + ws[oi + k] + b[oi + k], one)
    for k in range(n):
        z[of + k] = sigmoid(z[of + k] + ws[of + k] + b[of + k], one)
    for k in range(n):
        z[og + k] = tanh(z[og + k] + ws[og + k] + b[og + k])
    for k in range(n):
        z[oo + k] = sigmoid(z[oo + k] + ws[oo + k] + b[oo + k], one)
    if c_prev_out is not None:
        for k in range(n):
            c_prev_out[oi + k] = c[oi + k]
    if h_prev_out is not None:
        for k in range(n):
            h_prev_out[oi + k] = h[oi + k]
    for k in range(n):
        c[oi + k] = z[of + k] * c[oi + k] + z[oi + k] * z[og + k]
    for k in range(n):
        tc = tanh(c[oi + k])
        tanh_c_out[oi + k] = tc
        h[oi + k] = z[oo + k] * tc
    if h_out is not None:
        for k in range(n):
            h_out[oi + k] = h[oi + k]


# Inlined into its callers, so that Numba prunes the row views' atomic reference
# counts, which bounce between the cores on 2 threads (docs/performance.md, finding 11).
@njit(**_inline)
def _lstm_bwd_block(gz, c_prev, tanh_c, dh_in, dh, dc, dz, dz_copy, H, j0, j1):
    """Gate gradients for columns j0:j1 of one row.

    gz (4H): activations [i,f,g,o]; c_prev, tanh_c (H): forward caches.
    dh (H): in recurrent dL/dh_t (dh_in (H), if not None, is added to it; the
    sum is left in dh).  dc (H): in dL/dc_t from later steps, out dL/dc_{t-1}.
    dz (4H): out pre-activation gate gradients; dz_copy (4H) gets a copy
    (None to skip).  Loops run over views from index 0 (see :func:`_lstm_fwd_block`).
    """
    one = gz.dtype.type(1)
    n = j1 - j0
    gi_ = gz[j0:j1]
    gf_ = gz[H + j0:H + j1]
    gg_ = gz[2 * H + j0:2 * H + j1]
    go_ = gz[3 * H + j0:3 * H + j1]
    di = dz[j0:j1]
    df = dz[H + j0:H + j1]
    dg = dz[2 * H + j0:2 * H + j1]
    do = dz[3 * H + j0:3 * H + j1]
    dhh = dh[j0:j1]
    dcc = dc[j0:j1]
    cp = c_prev[j0:j1]
    tch = tanh_c[j0:j1]
    if dh_in is not None:
        dhi = dh_in[j0:j1]
        for k in range(n):
            dhh[k] = dhh[k] + dhi[k]
    for k in range(n):
        go = go_[k]
        tc = tch[k]
        do[k] = dhh[k] * tc * go * (one - go)
        dcc[k] = dcc[k] + dhh[k] * go * (one - tc * tc)
    for k in range(n):
        gi = gi_[k]
        gf = gf_[k]
        gg = gg_[k]
        d = dcc[k]
        di[k] = d * gg * gi * (one - gi)
        df[k] = d * cp[k] * gf * (one - gf)
        dg[k] = d * gi * (one - gg * gg)
        dcc[k] = d * gf
    if dz_copy is not None:
        for q in range(4):
            src = dz[q * H + j0:q * H + j1]
            dst = dz_copy[q * H + j0:q * H + j1]
            for k in range(n):
                dst[k] = src[k]


# --------------------------------------------------------------------------
# LSTM: a part of the batch: rows r0:r1 through the whole sequence
# --------------------------------------------------------------------------
#
# Batch rows are independent through the recurrence, and the batch-major
# layout keeps each part's rows contiguous in every array, so a part can run
# its own input projection and its own per-step products (BLAS on one thread)
# and gate loops from the first step to the last.  ``prange`` over parts then
# needs one parallel region per sequence instead of one per time step, and
# BLAS and Numba threads never compete.  Each cell sees the same arithmetic
# as in the one-part path.

@njit(**_jit)
def _lstm_fwd_rows(x, W_x, W_h, b, h0, c0, h_seq, h_T, c_T, gates, states, step_ws, r0, r1):
    """All of :func:`lstm_forward` for batch rows r0:r1 (serial)."""
    T, n_in = x.shape[1], x.shape[2]
    H = W_h.shape[0]
    G = 4 * H
    nr = r1 - r0
    np.dot(x[r0:r1].reshape((nr * T, n_in)), W_x, gates[r0:r1].reshape((nr * T, G)))
    hT = h_T[r0:r1]
    cT = c_T[r0:r1]
    ws = step_ws[r0:r1]
    _copy_rows(h0[r0:r1], hT)
    _copy_rows(c0[r0:r1], cT)
    nblk = _block_count(H)
    for t in range(T):
        np.dot(hT, W_h, ws)
        for r in range(r0, r1):
            for kb in range(nblk):
                j0 = kb * _BLOCK
                j1 = min(j0 + _BLOCK, H)
                _lstm_fwd_block(gates[r, t], step_ws[r], b, c_T[r], h_T[r],
                                states[0, r, t], states[2, r, t], states[1, r, t],
                                h_seq[r, t], H, j0, j1)


@njit(**_jit)
def _lstm_bwd_rows(WhT, dh_seq, dh_T, dc_T, gates, states, dh0, dc0, dgates, step_ws, r0, r1):
    """The recurrence of :func:`lstm_backward` for batch rows r0:r1 (serial):
    leaves the gate gradients in ``dgates[r0:r1]``.  ``WhT`` is ``W_h.T`` as
    a C-contiguous (4H, H) array."""
    T = gates.shape[1]
    H = WhT.shape[1]
    _copy_rows(dh_T[r0:r1], dh0[r0:r1])
    _copy_rows(dc_T[r0:r1], dc0[r0:r1])
    nblk = _block_count(H)
    for t in range(T - 1, -1, -1):
        for r in range(r0, r1):
            for kb in range(nblk):
                j0 = kb * _BLOCK
                j1 = min(j0 + _BLOCK, H)
                _lstm_bwd_block(gates[r, t], states[0, r, t], states[1, r, t],
                                dh_seq[r, t], dh0[r], dc0[r], dgates[r, t],
                                step_ws[r], H, j0, j1)
        np.dot(step_ws[r0:r1], WhT, dh0[r0:r1])


@njit(**_jit)
def _lstm_bwd_rows_weights(x, W_x, states, dgates, dx, dW_x, dW_h, r0, r1):
    """Rows r0:r1's ``dx`` and their share of the weight gradients (serial)."""
    T, n_in = x.shape[1], x.shape[2]
    H = states.shape[3]
    G = 4 * H
    nr = r1 - r0
    dg = dgates[r0:r1].reshape((nr * T, G))
    np.dot(x[r0:r1].reshape((nr * T, n_in)).T, dg, dW_x)
    np.dot(states[2, r0:r1].reshape((nr * T, H)).T, dg, dW_h)
    if dx is not None and dx.size > 0:  # an empty dx stands for None (one compiled variant)
        np.dot(dg, W_x.T, dx[r0:r1].reshape((nr * T, n_in)))


@njit(**_jit)
def _chunk_count(n):
    return (n + _CHUNK - 1) // _CHUNK


@njit(**_jit)
def _add_shares(dst, dw_ws, n_shares, off, k):
    """``dst[c0:c1] += dw_ws[q, off + c0:off + c1]`` for q = 0, 1, ... in order,
    over chunk ``k`` (``c0 = k * _CHUNK``) of the flat gradient ``dst``."""
    c0 = k * _CHUNK
    c1 = min(c0 + _CHUNK, dst.size)
    d = dst[c0:c1]
    for q in range(n_shares):
        src = dw_ws[q, off + c0:off + c1]
        for i in range(c1 - c0):
            d[i] += src[i]


@njit(**_jit)
def _transpose_into(a, out):
    """out[j, i] = a[i, j] for a (R, C) and out (C, R), in 32 x 32 tiles."""
    R, C = a.shape
    for i0 in range(0, R, 32):
        i1 = min(i0 + 32, R)
        for j0 in range(0, C, 32):
            j1 = min(j0 + 32, C)
            for j in range(j0, j1):
                for i in range(i0, i1):
                    out[j, i] = a[i, j]


@njit(**_jit)
def _part_rows(B, parts):
    """Rows per part and the number of parts that hold rows."""
    rows = (B + parts - 1) // parts
    return rows, (B + rows - 1) // rows


# --------------------------------------------------------------------------
# LSTM: full-sequence kernels
# --------------------------------------------------------------------------

@njit(**_pjit)
def lstm_forward(x, W_x, W_h, b, h0, c0, h_seq, h_T, c_T, gates, states,
                 step_ws, parts=1):
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
    parts : int, default 1
        Cut the batch into this many parts of ``ceil(B / parts)`` rows that
        run the whole sequence at the same time (a ``prange`` over parts,
        one parallel region).  BLAS is then called from inside the parallel
        loop: limit it to one thread for the call (``threadpoolctl``, or
        :func:`jitprop._threads.single_thread_blas`) so that BLAS and Numba
        threads do not multiply.  Each cell sees the same arithmetic for any
        number of parts.

    All arrays are C-contiguous and share one dtype (float32 or float64).
    ``gates`` and ``states`` are what :func:`lstm_backward` needs (together
    with ``x`` and the weights); they must not be modified in between.
    Nothing is allocated.
    """
    B, T, n_in = x.shape
    H = W_h.shape[0]
    G = 4 * H

    if parts > 1 and B > 1:
        rows, active = _part_rows(B, parts)
        for p in prange(active):
            r0 = p * rows
            _lstm_fwd_rows(x, W_x, W_h, b, h0, c0, h_seq, h_T, c_T, gates, states, step_ws,
                           r0, min(B, r0 + rows))
        return
    if B * H < _PAR_STEP_MIN:
        _lstm_fwd_rows(x, W_x, W_h, b, h0, c0, h_seq, h_T, c_T, gates, states, step_ws, 0, B)
        return

    # Large steps: the same work, each step's gate arithmetic in a prange.
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
            _lstm_fwd_block(gates[r, t], step_ws[r], b, c_T[r], h_T[r],
                            states[0, r, t], states[2, r, t], states[1, r, t],
                            h_seq[r, t], H, j0, j1)


@njit(**_pjit)
def lstm_backward(x, W_x, W_h, dh_seq, dh_T, dc_T, gates, states, dx, dW_x,
                  dW_h, db, dh0, dc0, dgates, step_ws, parts=1, dw_ws=None):
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
        Written: gradient w.r.t. ``x``.  ``None`` or an empty array skips it
        (e.g. for a first layer); an empty array of dx's dtype and ndim runs
        the machine code compiled for a real ``dx`` (one variant for both).
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
    parts : int, default 1
        Run the backward pass in parts of the batch at the same time, as in
        :func:`lstm_forward` (limit BLAS to one thread for the call): each
        part runs its recurrence, its rows of ``dx`` and its share of the
        weight gradients, and the shares are then added in part order.  The
        sums over the batch are thus grouped by part: the gradients agree
        with ``parts=1`` to rounding, and do not depend on the thread count.
    dw_ws : ndarray, (parts - 1, n_in*4H + H*4H), or None
        Workspace for the weight-gradient shares of parts 1, 2, ...
        (required when ``parts > 1``; an array with no rows stands for None).

    All arrays are C-contiguous and share one dtype.  ``gates`` and
    ``states`` are not modified, so backward may be repeated.  Nothing is
    allocated.
    """
    B, T, n_in = x.shape
    H = W_h.shape[0]
    G = 4 * H

    # dL/dh_{t-1} = dz_t @ W_h.T runs on a C-contiguous copy of W_h.T, which OpenBLAS
    # multiplies faster (docs/performance.md, finding 10); dW_h holds it until the end.
    # dh0 / dc0 carry dL/dh_t (recurrent part) and dL/dc_t between steps.
    WhT = dW_h.reshape(G, H)
    if parts > 1 and B > 1:
        if dw_ws is None or dw_ws.shape[0] == 0:  # absent (`is None` first: Numba drops the rest for None)
            raise ValueError("lstm_backward: parts > 1 needs dw_ws")
        rows, active = _part_rows(B, parts)
        nxg = n_in * G
        _transpose_into(W_h, WhT)
        for p in prange(active):
            r0 = p * rows
            _lstm_bwd_rows(WhT, dh_seq, dh_T, dc_T, gates, states, dh0, dc0, dgates, step_ws,
                           r0, min(B, r0 + rows))
        # every part is past its recurrence: dW_h may now be overwritten
        for p in prange(active):
            r0 = p * rows
            r1 = min(B, r0 + rows)
            if p == 0:
                _lstm_bwd_rows_weights(x, W_x, states, dgates, dx, dW_x, dW_h, r0, r1)
            else:
                _lstm_bwd_rows_weights(x, W_x, states, dgates, dx,
                                       dw_ws[p - 1, :nxg].reshape((n_in, G)),
                                       dw_ws[p - 1, nxg:].reshape((H, G)), r0, r1)
        # add the parts' shares in part order, in parallel over chunks
        dWxf = dW_x.reshape(nxg)
        for k in prange(_chunk_count(nxg)):
            _add_shares(dWxf, dw_ws, active - 1, 0, k)
        dWhf = dW_h.reshape(H * G)
        for k in prange(_chunk_count(H * G)):
            _add_shares(dWhf, dw_ws, active - 1, nxg, k)
    else:
        _transpose_into(W_h, WhT)
        if B * H < _PAR_STEP_MIN:
            _lstm_bwd_rows(WhT, dh_seq, dh_T, dc_T, gates, states, dh0, dc0, dgates, step_ws, 0, B)
        else:
            # large steps: the same work, each step's gate arithmetic in a prange
            _copy_rows(dh_T, dh0)
            _copy_rows(dc_T, dc0)
            nblk = _block_count(H)
            for t in range(T - 1, -1, -1):
                for task in prange(B * nblk):
                    r = task // nblk
                    j0 = (task % nblk) * _BLOCK
                    j1 = min(j0 + _BLOCK, H)
                    _lstm_bwd_block(gates[r, t], states[0, r, t], states[1, r, t],
                                    dh_seq[r, t], dh0[r], dc0[r], dgates[r, t],
                                    step_ws[r], H, j0, j1)
                np.dot(step_ws, WhT, dh0)        # dL/dh_{t-1}, recurrent part
        _lstm_bwd_rows_weights(x, W_x, states, dgates, dx, dW_x, dW_h, 0, B)
    dg = dgates.reshape(B * T, G)
    for k in prange(_block_count(G)):
        _column_sums_block(dg, db, False, k)


# --------------------------------------------------------------------------
# LSTM: single-step kernels
# --------------------------------------------------------------------------

@njit(**_pjit)
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

    np.dot(x_t, W_x, gates)
    np.dot(h_prev, W_h, step_ws)
    nblk = _block_count(H)
    if B * H >= _PAR_STEP_MIN:
        for task in prange(B * nblk):
            r = task // nblk
            j0 = (task % nblk) * _BLOCK
            j1 = min(j0 + _BLOCK, H)
            for j in range(j0, j1):
                c[r, j] = c_prev[r, j]
            _lstm_fwd_block(gates[r], step_ws[r], b, c[r], h[r], None, None,
                            tanh_c[r], None, H, j0, j1)
    else:
        for task in range(B * nblk):
            r = task // nblk
            j0 = (task % nblk) * _BLOCK
            j1 = min(j0 + _BLOCK, H)
            for j in range(j0, j1):
                c[r, j] = c_prev[r, j]
            _lstm_fwd_block(gates[r], step_ws[r], b, c[r], h[r], None, None,
                            tanh_c[r], None, H, j0, j1)


@njit(**_pjit)
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
        Written: gradient w.r.t. ``x_t``; ``None`` or an empty array skips it.
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
        ``None`` (or an empty array) selects overwrite mode.  An array
        selects accumulate mode and is used as scratch for the
        weight-gradient products.

    All arrays are C-contiguous and share one dtype.  Nothing is allocated.
    Running this over t = T-1..0 with accumulation reproduces
    :func:`lstm_backward` (up to floating-point summation order).
    """
    B, n_in = x_t.shape
    H = W_h.shape[0]

    nblk = _block_count(H)
    if B * H >= _PAR_STEP_MIN:
        for task in prange(B * nblk):
            r = task // nblk
            j0 = (task % nblk) * _BLOCK
            j1 = min(j0 + _BLOCK, H)
            for j in range(j0, j1):
                dc_prev[r, j] = dc[r, j]
            _lstm_bwd_block(gates[r], c_prev[r], tanh_c[r], None, dh[r], dc_prev[r],
                            dgates[r], None, H, j0, j1)
    else:
        for task in range(B * nblk):
            r = task // nblk
            j0 = (task % nblk) * _BLOCK
            j1 = min(j0 + _BLOCK, H)
            for j in range(j0, j1):
                dc_prev[r, j] = dc[r, j]
            _lstm_bwd_block(gates[r], c_prev[r], tanh_c[r], None, dh[r], dc_prev[r],
                            dgates[r], None, H, j0, j1)

    np.dot(dgates, W_h.T, dh_prev)
    if dx_t is not None and dx_t.size > 0:  # empty: as None
        np.dot(dgates, W_x.T, dx_t)
    if accum_ws is None or accum_ws.size == 0:  # empty: as None
        np.dot(x_t.T, dgates, dW_x)
        np.dot(h_prev.T, dgates, dW_h)
        for k in prange(_block_count(dgates.shape[1])):
            _column_sums_block(dgates, db, False, k)
    else:
        ws_x = accum_ws[:n_in]
        ws_h = accum_ws[n_in:]
        np.dot(x_t.T, dgates, ws_x)
        np.dot(h_prev.T, dgates, ws_h)
        for r in prange(ws_x.shape[0]):
            _add_row(ws_x, dW_x, r)
        for r in prange(ws_h.shape[0]):
            _add_row(ws_h, dW_h, r)
        for k in prange(_block_count(dgates.shape[1])):
            _column_sums_block(dgates, db, True, k)


# ==========================================================================
# GRU
# ==========================================================================
# --------------------------------------------------------------------------
# GRU: per-row gate arithmetic
# --------------------------------------------------------------------------
#
# One (batch row, column block) of a time step, in short loops over few
# arrays each (LLVM vectorises a loop only while its runtime alias checks
# stay few); the forward block indexes from unsigned offsets, the backward
# block over views from 0, as the LSTM's do.

@njit(**_jit)
def _gru_fwd_block(g, ws, b_x, b_h, h, h_prev_out, hn_out, h_out, H, j0, j1):
    """Gates and state update for columns j0:j1 of one row.

    g (3H): in x@W_x, out activations [r, z, n].  ws (3H): h_{t-1}@W_h.
    b_x, b_h (3H): biases.  h (H): in h_{t-1}, out h_t.  hn_out (H) gets
    u_n = (h_{t-1}@W_h)_n + b_hn.  Optional (None to skip): h_prev_out gets
    h_{t-1}, h_out gets h_t.
    """
    one = g.dtype.type(1)
    n, o_r, o_z, o_n, _ = _gate_offsets(H, j0, j1)
    for k in range(n):
        g[o_r + k] = sigmoid((g[o_r + k] + b_x[o_r + k]) + (ws[o_r + k] + b_h[o_r + k]), one)
    for k in range(n):
        g[o_z + k] = sigmoid((g[o_z + k] + b_x[o_z + k]) + (ws[o_z + k] + b_h[o_z + k]), one)
    for k in range(n):
        hn_out[o_r + k] = ws[o_n + k] + b_h[o_n + k]
    for k in range(n):
        g[o_n + k] = tanh((g[o_n + k] + b_x[o_n + k]) + g[o_r + k] * hn_out[o_r + k])
    if h_prev_out is not None:
        for k in range(n):
            h_prev_out[o_r + k] = h[o_r + k]
    for k in range(n):
        h[o_r + k] = (one - g[o_z + k]) * g[o_n + k] + g[o_z + k] * h[o_r + k]
    if h_out is not None:
        for k in range(n):
            h_out[o_r + k] = h[o_r + k]


# Inlined into its callers so that Numba prunes the row views' reference
# counts (see _lstm_bwd_block: atomic counts bounced between cores).
@njit(**_inline)
def _gru_bwd_block(g, h_prev, un, dh_in, dh, dhw, da, du, du_copy, H, j0, j1):
    """Gate gradients for columns j0:j1 of one row.

    g (3H): activations [r, z, n]; h_prev, un (H): forward caches.
    dh (H): in the direct part of dL/dh_t carried from the later step (or
    the whole of it); dh_in (H) and dhw (H, the later step's du@W_h.T) are
    added to it when not None.  Out: dh gets ``dL/dh_t * z``, the direct
    part of dL/dh_{t-1}.  da, du (3H): out x-side and h-side pre-activation
    gradients; du_copy (3H) gets a copy of du (None to skip).
    """
    one = g.dtype.type(1)
    n = j1 - j0
    gr = g[j0:j1]
    gz = g[H + j0:H + j1]
    gn = g[2 * H + j0:2 * H + j1]
    dar = da[j0:j1]
    daz = da[H + j0:H + j1]
    dan = da[2 * H + j0:2 * H + j1]
    dur = du[j0:j1]
    duz = du[H + j0:H + j1]
    dun = du[2 * H + j0:2 * H + j1]
    dhh = dh[j0:j1]
    hp = h_prev[j0:j1]
    u = un[j0:j1]
    if dh_in is not None:
        dhi = dh_in[j0:j1]
        for k in range(n):
            dhh[k] = dhi[k] + dhh[k]
    if dhw is not None:
        dw = dhw[j0:j1]
        for k in range(n):
            dhh[k] = dhh[k] + dw[k]
    for k in range(n):
        z = gz[k]
        nn = gn[k]
        d = dhh[k]
        dan[k] = d * (one - z) * (one - nn * nn)
        dzk = d * (hp[k] - nn) * z * (one - z)
        daz[k] = dzk
        duz[k] = dzk
        dhh[k] = d * z
    for k in range(n):
        r = gr[k]
        drk = dan[k] * u[k] * r * (one - r)
        dar[k] = drk
        dur[k] = drk
        dun[k] = dan[k] * r
    if du_copy is not None:
        for q in range(3):
            src = du[q * H + j0:q * H + j1]
            dst = du_copy[q * H + j0:q * H + j1]
            for k in range(n):
                dst[k] = src[k]


# --------------------------------------------------------------------------
# GRU: a part of the batch: rows r0:r1 through the whole sequence
# --------------------------------------------------------------------------

@njit(**_jit)
def _gru_fwd_rows(x, W_x, W_h, b_x, b_h, h0, h_seq, h_T, gates, states, step_ws, r0, r1):
    """All of :func:`gru_forward` for batch rows r0:r1 (serial)."""
    T, n_in = x.shape[1], x.shape[2]
    H = W_h.shape[0]
    G = 3 * H
    nr = r1 - r0
    np.dot(x[r0:r1].reshape((nr * T, n_in)), W_x, gates[r0:r1].reshape((nr * T, G)))
    hT = h_T[r0:r1]
    ws = step_ws[r0:r1]
    _copy_rows(h0[r0:r1], hT)
    nblk = _block_count(H)
    for t in range(T):
        np.dot(hT, W_h, ws)
        for r in range(r0, r1):
            for kb in range(nblk):
                j0 = kb * _BLOCK
                j1 = min(j0 + _BLOCK, H)
                _gru_fwd_block(gates[r, t], step_ws[r], b_x, b_h, h_T[r], states[0, r, t],
                               states[1, r, t], h_seq[r, t], H, j0, j1)


@njit(**_jit)
def _zero_rows(a, r0, r1):
    zero = a.dtype.type(0)
    for r in range(r0, r1):
        for j in range(a.shape[1]):
            a[r, j] = zero


@njit(**_jit)
def _gru_bwd_rows(WhT, dh_seq, dh_T, gates, states, dh0, dh_ws, dgates, dgates_h, step_ws, r0, r1):
    """The recurrence of :func:`gru_backward` for rows r0:r1 (serial): fills
    ``dgates[r0:r1]``, ``dgates_h[r0:r1]`` and ``dh0[r0:r1]``.  ``WhT`` is
    ``W_h.T`` as a C-contiguous (3H, H) array."""
    T = gates.shape[1]
    H = WhT.shape[1]
    _copy_rows(dh_T[r0:r1], dh0[r0:r1])       # dh0: the direct part d * z
    _zero_rows(dh_ws, r0, r1)                 # dh_ws: the part du @ W_h.T
    nblk = _block_count(H)
    for t in range(T - 1, -1, -1):
        for r in range(r0, r1):
            for kb in range(nblk):
                j0 = kb * _BLOCK
                j1 = min(j0 + _BLOCK, H)
                _gru_bwd_block(gates[r, t], states[0, r, t], states[1, r, t], dh_seq[r, t], dh0[r],
                               dh_ws[r], dgates[r, t], dgates_h[r, t], step_ws[r], H, j0, j1)
        np.dot(step_ws[r0:r1], WhT, dh_ws[r0:r1])
    for r in range(r0, r1):
        _add_row(dh_ws, dh0, r)


@njit(**_jit)
def _gru_bwd_rows_weights(x, W_x, states, dgates, dgates_h, dx, dW_x, dW_h, r0, r1):
    """Rows r0:r1's ``dx`` and their share of the weight gradients (serial)."""
    T, n_in = x.shape[1], x.shape[2]
    H = states.shape[3]
    G = 3 * H
    nr = r1 - r0
    da = dgates[r0:r1].reshape((nr * T, G))
    np.dot(x[r0:r1].reshape((nr * T, n_in)).T, da, dW_x)
    np.dot(states[0, r0:r1].reshape((nr * T, H)).T, dgates_h[r0:r1].reshape((nr * T, G)), dW_h)
    if dx is not None and dx.size > 0:  # an empty dx stands for None (one compiled variant)
        np.dot(da, W_x.T, dx[r0:r1].reshape((nr * T, n_in)))


# --------------------------------------------------------------------------
# GRU: full-sequence kernels
# --------------------------------------------------------------------------

@njit(**_pjit)
def gru_forward(x, W_x, W_h, b_x, b_h, h0, h_seq, h_T, gates, states, step_ws, parts=1):
    """GRU forward pass over a whole sequence.

    Parameters
    ----------
    x : ndarray, (B, T, n_in)
        Input sequence (batch-major).  Read.
    W_x : ndarray, (n_in, 3H)
        Input weights, gate order r, z, n.  Read.
    W_h : ndarray, (H, 3H)
        Recurrent weights.  Read.
    b_x, b_h : ndarray, (3H,)
        Input-side and hidden-side biases.  Read.
    h0 : ndarray, (B, H)
        Initial state.  Read before ``h_T`` is written (``h0 is h_T`` is
        allowed, e.g. for a stateful carry).
    h_seq : ndarray, (B, T, H)
        Written: ``h_seq[:, t] = h_t``.
    h_T : ndarray, (B, H)
        Written: final state (also the running state).
    gates : ndarray, (B, T, 3H)
        Cache, written: activations ``[r, z, n]`` of every step.
    states : ndarray, (2, B, T, H)
        Cache, written: ``states[0, :, t] = h_{t-1}``,
        ``states[1, :, t] = (h_{t-1} @ W_h)_n + b_hn``.
    step_ws : ndarray, (B, 3H)
        Workspace.
    parts : int, default 1
        Cut the batch into parts of ``ceil(B / parts)`` rows that run the
        whole sequence at the same time (one ``prange``); limit BLAS to one
        thread for the call.  Each cell sees the same arithmetic.

    C-contiguous arrays of one dtype with the shapes of
    :func:`gru_workspace_shapes` (not checked here: see
    :func:`jitprop.kernels.gru_forward`).  Nothing is allocated.
    """
    B, T, n_in = x.shape
    H = W_h.shape[0]
    G = 3 * H
    if parts > 1 and B > 1:
        rows, active = _part_rows(B, parts)
        for p in prange(active):
            r0 = p * rows
            _gru_fwd_rows(x, W_x, W_h, b_x, b_h, h0, h_seq, h_T, gates, states, step_ws, r0, min(B, r0 + rows))
        return
    if B * H < _PAR_STEP_MIN:
        _gru_fwd_rows(x, W_x, W_h, b_x, b_h, h0, h_seq, h_T, gates, states, step_ws, 0, B)
        return
    # large steps: the same work, each step's gate arithmetic in a prange
    np.dot(x.reshape(B * T, n_in), W_x, gates.reshape(B * T, G))
    _copy_rows(h0, h_T)
    nblk = _block_count(H)
    for t in range(T):
        np.dot(h_T, W_h, step_ws)
        for task in prange(B * nblk):
            r = task // nblk
            j0 = (task % nblk) * _BLOCK
            j1 = min(j0 + _BLOCK, H)
            _gru_fwd_block(gates[r, t], step_ws[r], b_x, b_h, h_T[r], states[0, r, t], states[1, r, t],
                           h_seq[r, t], H, j0, j1)


@njit(**_pjit)
def gru_backward(x, W_x, W_h, dh_seq, dh_T, gates, states, dx, dW_x, dW_h, db_x, db_h, dh0,
                 dgates, dgates_h, step_ws, dh_ws, parts=1, dw_ws=None):
    """Backpropagation through time for :func:`gru_forward`.

    Parameters
    ----------
    x : ndarray, (B, T, n_in)
        The forward input.  Read.
    W_x : ndarray, (n_in, 3H)
        Read (only when ``dx`` is requested).
    W_h : ndarray, (H, 3H)
        Read.
    dh_seq : ndarray, (B, T, H)
        Upstream gradient w.r.t. every ``h_seq[:, t]``.  Read.
    dh_T : ndarray, (B, H)
        Extra gradient w.r.t. ``h_T``.  Read before ``dh0`` is written
        (``dh_T is dh0`` is allowed).
    gates, states : caches written by :func:`gru_forward`.  Read.
    dx : ndarray, (B, T, n_in) or None
        Written: gradient w.r.t. ``x``; ``None`` or an empty array skips its
        product (an empty array runs the code compiled for a real ``dx``).
    dW_x, dW_h, db_x, db_h : ndarray
        Written (overwritten): parameter gradients.
    dh0 : ndarray, (B, H)
        Written: gradient w.r.t. ``h0``.
    dgates, dgates_h : ndarray, (B, T, 3H)
        Workspaces, written: x-side and h-side pre-activation gradients.
    step_ws : ndarray, (B, 3H)
    dh_ws : ndarray, (B, H)
        Workspaces.
    parts : int, default 1
        Batch parts as in :func:`gru_forward`; the parts' shares of the
        weight gradients are added in part order (equal to ``parts=1`` to
        rounding, independent of the thread count).
    dw_ws : ndarray, (parts - 1, (n_in + H) * 3H), or None
        Weight-gradient shares of parts 1, 2, ... (required when ``parts > 1``;
        an array with no rows stands for None).

    Shapes as in :func:`gru_workspace_shapes`, not checked here.  The caches
    are not modified, so backward may be repeated.  Nothing is allocated.
    """
    B, T, n_in = x.shape
    H = W_h.shape[0]
    G = 3 * H
    # the recurrent product runs on a C-contiguous copy of W_h.T (OpenBLAS is
    # slower with a transposed operand); dW_h holds it until written at the end
    WhT = dW_h.reshape(G, H)
    if parts > 1 and B > 1:
        if dw_ws is None or dw_ws.shape[0] == 0:  # absent (`is None` first: Numba drops the rest for None)
            raise ValueError("gru_backward: parts > 1 needs dw_ws")
        rows, active = _part_rows(B, parts)
        nxg = n_in * G
        _transpose_into(W_h, WhT)
        for p in prange(active):
            r0 = p * rows
            _gru_bwd_rows(WhT, dh_seq, dh_T, gates, states, dh0, dh_ws, dgates, dgates_h, step_ws,
                          r0, min(B, r0 + rows))
        # every part is past its recurrence: dW_h may now be overwritten
        for p in prange(active):
            r0 = p * rows
            r1 = min(B, r0 + rows)
            if p == 0:
                _gru_bwd_rows_weights(x, W_x, states, dgates, dgates_h, dx, dW_x, dW_h, r0, r1)
            else:
                _gru_bwd_rows_weights(x, W_x, states, dgates, dgates_h, dx,
                                      dw_ws[p - 1, :nxg].reshape((n_in, G)),
                                      dw_ws[p - 1, nxg:].reshape((H, G)), r0, r1)
        dWxf = dW_x.reshape(nxg)
        for k in prange(_chunk_count(nxg)):
            _add_shares(dWxf, dw_ws, active - 1, 0, k)
        dWhf = dW_h.reshape(H * G)
        for k in prange(_chunk_count(H * G)):
            _add_shares(dWhf, dw_ws, active - 1, nxg, k)
    else:
        _transpose_into(W_h, WhT)
        if B * H < _PAR_STEP_MIN:
            _gru_bwd_rows(WhT, dh_seq, dh_T, gates, states, dh0, dh_ws, dgates, dgates_h, step_ws, 0, B)
        else:
            # large steps: the same work, each step's gate arithmetic in a prange
            _copy_rows(dh_T, dh0)
            _zero_rows(dh_ws, 0, B)
            nblk = _block_count(H)
            for t in range(T - 1, -1, -1):
                for task in prange(B * nblk):
                    r = task // nblk
                    j0 = (task % nblk) * _BLOCK
                    j1 = min(j0 + _BLOCK, H)
                    _gru_bwd_block(gates[r, t], states[0, r, t], states[1, r, t], dh_seq[r, t], dh0[r],
                                   dh_ws[r], dgates[r, t], dgates_h[r, t], step_ws[r], H, j0, j1)
                np.dot(step_ws, WhT, dh_ws)
            for r in prange(B):
                _add_row(dh_ws, dh0, r)
        _gru_bwd_rows_weights(x, W_x, states, dgates, dgates_h, dx, dW_x, dW_h, 0, B)
    da = dgates.reshape(B * T, G)
    du = dgates_h.reshape(B * T, G)
    for k in prange(_block_count(G)):
        _column_sums_block(da, db_x, False, k)
        _column_sums_block(du, db_h, False, k)


# --------------------------------------------------------------------------
# GRU: single-step kernels
# --------------------------------------------------------------------------

@njit(**_pjit)
def gru_cell_forward(x_t, h_prev, W_x, W_h, b_x, b_h, h, gates, hn, step_ws):
    """One GRU time step.

    Parameters
    ----------
    x_t : ndarray, (B, n_in)
        Read.
    h_prev : ndarray, (B, H)
        Read (``h is h_prev`` is allowed, but keep a copy for
        :func:`gru_cell_backward`).
    W_x, W_h, b_x, b_h : parameters as in :func:`gru_forward`.  Read.
    h : ndarray, (B, H)
        Written: the new state.
    gates : ndarray, (B, 3H)
        Cache, written: activations ``[r, z, n]``.
    hn : ndarray, (B, H)
        Cache, written: ``(h_prev @ W_h)_n + b_hn``.
    step_ws : ndarray, (B, 3H)
        Workspace.

    Stepping this over t = 0..T-1 reproduces :func:`gru_forward`.  Nothing
    is allocated; shapes are not checked here.
    """
    B = x_t.shape[0]
    H = W_h.shape[0]
    np.dot(x_t, W_x, gates)
    np.dot(h_prev, W_h, step_ws)
    nblk = _block_count(H)
    if B * H >= _PAR_STEP_MIN:
        for task in prange(B * nblk):
            r = task // nblk
            j0 = (task % nblk) * _BLOCK
            j1 = min(j0 + _BLOCK, H)
            for j in range(j0, j1):
                h[r, j] = h_prev[r, j]
            _gru_fwd_block(gates[r], step_ws[r], b_x, b_h, h[r], None, hn[r], None, H, j0, j1)
    else:
        for task in range(B * nblk):
            r = task // nblk
            j0 = (task % nblk) * _BLOCK
            j1 = min(j0 + _BLOCK, H)
            for j in range(j0, j1):
                h[r, j] = h_prev[r, j]
            _gru_fwd_block(gates[r], step_ws[r], b_x, b_h, h[r], None, hn[r], None, H, j0, j1)


@njit(**_pjit)
def gru_cell_backward(x_t, h_prev, W_x, W_h, gates, hn, dh, dx_t, dh_prev, dW_x, dW_h, db_x, db_h,
                      dgates, dgates_h, dh_ws, accum_ws):
    """Backward of one :func:`gru_cell_forward` step.

    Parameters
    ----------
    x_t, h_prev : the step's inputs.  Read.
    W_x, W_h : Read (``W_x`` only when ``dx_t`` is requested).
    gates, hn : caches of the forward step.  Read.
    dh : ndarray, (B, H)
        Total gradient w.r.t. the step's output ``h`` (upstream plus the
        ``dh_prev`` of the following step).  Read.
    dx_t : ndarray, (B, n_in) or None
        Written: gradient w.r.t. ``x_t``; ``None`` or an empty array skips it.
    dh_prev : ndarray, (B, H)
        Written: gradient w.r.t. ``h_prev`` (``dh_prev is dh`` is allowed).
    dW_x, dW_h, db_x, db_h :
        Overwritten with this step's contribution when ``accum_ws`` is None,
        otherwise the contribution is added to them.
    dgates, dgates_h : ndarray, (B, 3H)
        Written: x-side and h-side pre-activation gradients.
    dh_ws : ndarray, (B, H)
        Workspace.
    accum_ws : ndarray, (n_in + H, 3H) or None
        None or an empty array: overwrite mode; an array: accumulate mode
        (scratch).

    Over t = T-1..0 with accumulation this reproduces :func:`gru_backward`
    (up to summation order).  Nothing is allocated; shapes are not checked.
    """
    B = x_t.shape[0]
    n_in = x_t.shape[1]
    H = W_h.shape[0]
    nblk = _block_count(H)
    if B * H >= _PAR_STEP_MIN:
        for task in prange(B * nblk):
            r = task // nblk
            j0 = (task % nblk) * _BLOCK
            j1 = min(j0 + _BLOCK, H)
            for j in range(j0, j1):
                dh_ws[r, j] = dh[r, j]
            _gru_bwd_block(gates[r], h_prev[r], hn[r], None, dh_ws[r], None, dgates[r], dgates_h[r], None,
                           H, j0, j1)
    else:
        for task in range(B * nblk):
            r = task // nblk
            j0 = (task % nblk) * _BLOCK
            j1 = min(j0 + _BLOCK, H)
            for j in range(j0, j1):
                dh_ws[r, j] = dh[r, j]
            _gru_bwd_block(gates[r], h_prev[r], hn[r], None, dh_ws[r], None, dgates[r], dgates_h[r], None,
                           H, j0, j1)
    # dh is fully consumed into dh_ws: dh_prev may be dh
    np.dot(dgates_h, W_h.T, dh_prev)
    for r in prange(B):
        _add_row(dh_ws, dh_prev, r)
    if dx_t is not None and dx_t.size > 0:  # empty: as None
        np.dot(dgates, W_x.T, dx_t)
    if accum_ws is None or accum_ws.size == 0:  # empty: as None
        np.dot(x_t.T, dgates, dW_x)
        np.dot(h_prev.T, dgates_h, dW_h)
        for k in prange(_block_count(dgates.shape[1])):
            _column_sums_block(dgates, db_x, False, k)
            _column_sums_block(dgates_h, db_h, False, k)
    else:
        ws_x = accum_ws[:n_in]
        ws_h = accum_ws[n_in:]
        np.dot(x_t.T, dgates, ws_x)
        np.dot(h_prev.T, dgates_h, ws_h)
        for r in prange(ws_x.shape[0]):
            _add_row(ws_x, dW_x, r)
        for r in prange(ws_h.shape[0]):
            _add_row(ws_h, dW_h, r)
        for k in prange(_block_count(dgates.shape[1])):
            _column_sums_block(dgates, db_x, True, k)
            _column_sums_block(dgates_h, db_h, True, k)
