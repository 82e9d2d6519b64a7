"""Numba-compiled GRU kernels: full-sequence forward / BPTT and a single cell.

Math (``torch.nn.GRU``'s, gate order r, z, n, so its weights convert by
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

Conventions (the same as :mod:`jitprop.kernels._lstm`)
------------------------------------------------------
* Every array is supplied by the caller, C-contiguous, of one float dtype.
  The kernels never allocate and do not check shapes: the checked entry
  points in :mod:`jitprop.kernels` do, against :func:`gru_workspace_shapes`.
* Batch-major data and caches (``gates`` (B, T, 3H), ``states``
  (2, B, T, H)), so the input projection, ``dx`` and both weight gradients
  are each one BLAS product over all ``B*T`` rows; per step there is one
  ``(B, H) @ (H, 3H)`` product on contiguous ``(B, .)`` buffers.
* ``parts > 1`` cuts the batch into parts that run the whole sequence at the
  same time in one ``prange`` (the caller limits BLAS to one thread);
  element-wise work runs over (row, column block) pairs, in a ``prange`` for
  large steps only.  Every element is written by one iteration and every
  reduction runs in a fixed order: results do not depend on the thread count.
* float32 stays float32; the float32 sigmoid / tanh are branch-free
  polynomials (a few ulp) so the gate loops vectorise.

The module is self-contained (it imports no compiled function from other
modules, and so keeps its own copy of the scalar helpers of ``_lstm.py``):
Numba's on-disk cache does not see changes in other files.
"""

import math

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

__all__ = [
    "gru_backward",
    "gru_cell_backward",
    "gru_cell_forward",
    "gru_forward",
    "gru_workspace_shapes",
]

# Width of the column blocks of the element-wise loops (no numerical effect).
_BLOCK = 64

# Chunk of the flat weight gradients when the parts' shares are added.
_CHUNK = 8192

# A step's gate arithmetic runs in a prange only from this many (row, unit)
# cells on (handing work between the BLAS and Numba pools costs more below;
# see _lstm.py).  Both paths do identical work per cell.
_PAR_STEP_MIN = 1 << 17


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


# --------------------------------------------------------------------------
# scalar helpers
# --------------------------------------------------------------------------
#
# float64 uses libm (np.exp / np.tanh).  For float32 the transcendental
# functions are written out with plain arithmetic so that LLVM can vectorise
# the gate loops (Numba has no vector libm without SVML, and a scalar call per
# element was about half of the forward time).  Accuracy of the float32
# versions: a few ulp (exp <= 2 ulp measured on a dense grid of [-87, 0]).

_F = np.float32
_F_ONE = _F(1.0)
_F_HALF = _F(0.5)
_F_EXP_MIN = _F(-87.0)            # exp(-87) ~ 1.6e-38, still a normal float32
_F_LOG2E = _F(1.4426950408889634)
_F_LN2_HI = _F(0.693359375)       # 355/512: n * _F_LN2_HI is exact, |n| <= 126
_F_LN2_LO = _F(-2.1219444005469057e-04)
# Taylor coefficients of exp on |r| <= ln2/2 (truncation error < 1e-8)
_F_E2, _F_E3, _F_E4 = _F(1.0 / 2.0), _F(1.0 / 6.0), _F(1.0 / 24.0)
_F_E5, _F_E6, _F_E7 = _F(1.0 / 120.0), _F(1.0 / 720.0), _F(1.0 / 5040.0)
# Taylor coefficients of tanh, used for |z| < 0.4 (truncation error < 1e-8)
_F_T3, _F_T5 = _F(-1.0 / 3.0), _F(2.0 / 15.0)
_F_T7, _F_T9 = _F(-17.0 / 315.0), _F(62.0 / 2835.0)
_F_T11, _F_T13 = _F(-1382.0 / 155925.0), _F(21844.0 / 6081075.0)
_F_TANH_SMALL = _F(0.4)


@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, llvm_ir.IntType(32))
        elif v.type.width < 32:
            v = builder.zext(v, llvm_ir.IntType(32))
        return builder.bitcast(v, llvm_ir.FloatType())

    return types.float32(bits), codegen


def _exp_nonpos(x):
    """exp(x) for x <= 0 (typed dispatch below)."""
    raise NotImplementedError


@overload(_exp_nonpos, inline="always", jit_options={"cache": True})
def _ov_exp_nonpos(x):
    if x == types.float32:
        def impl(x):
            # Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2; 2^n by bits.
            x = max(x, _F_EXP_MIN)
            n = np.floor(x * _F_LOG2E + _F_HALF)
            r = (x - n * _F_LN2_HI) - n * _F_LN2_LO
            p = _F_E7 * r + _F_E6
            p = p * r + _F_E5
            p = p * r + _F_E4
            p = p * r + _F_E3
            p = p * r + _F_E2
            p = p * r + _F_ONE
            p = p * r + _F_ONE
            return p * _f32_from_bits((np.int64(n) + 127) << 23)
        return impl
    if isinstance(x, types.Float):
        return lambda x: np.exp(x)
    return None


def _tanh(z):
    """tanh(z) (typed dispatch below)."""
    raise NotImplementedError


@overload(_tanh, inline="always", jit_options={"cache": True})
def _ov_tanh(z):
    if z == types.float32:
        def impl(z):
            # Branch-free so that it inlines and vectorises: odd Taylor
            # polynomial for |z| < 0.4, (1 - e^{-2|z|}) / (1 + e^{-2|z|})
            # above; the 0/1 weights select one of them exactly.  NaN
            # propagates through both branches.
            a = abs(z)
            a_s = min(a, _F_TANH_SMALL)
            a2 = a_s * a_s
            p = _F_T13 * a2 + _F_T11
            p = p * a2 + _F_T9
            p = p * a2 + _F_T7
            p = p * a2 + _F_T5
            p = p * a2 + _F_T3
            small = a_s + a_s * (a2 * p)
            e2 = _exp_nonpos(-(a + a))
            big = (_F_ONE - e2) / (_F_ONE + e2)
            w = _F(a < _F_TANH_SMALL)
            return math.copysign(w * small + (_F_ONE - w) * big, z)
        return impl
    if isinstance(z, types.Float):
        return lambda z: np.tanh(z)
    return None


@njit(cache=True, inline="always")
def _sigmoid(z, one):
    """Overflow-free logistic function; ``one`` carries the dtype.

    sigmoid(z) = num / (1 + e) with e = exp(-|z|) in (0, 1] and num = 1 for
    z >= 0, num = e for z < 0 (selected exactly by 0/1 weights, branch-free
    so that the gate loops vectorise).  NaN propagates through e.
    """
    e = _exp_nonpos(-abs(z))
    w = one * (z < 0)
    return (w * e + (one - w)) / (one + e)


@njit(cache=True)
def _block_count(n):
    return (n + _BLOCK - 1) // _BLOCK


@njit(cache=True, error_model="numpy")
def _copy_rows(src, dst):
    """dst[...] = src[...] for two (B, H) arrays (may be the same array)."""
    B, H = src.shape
    for r in range(B):
        for j in range(H):
            dst[r, j] = src[r, j]


@njit(cache=True, error_model="numpy")
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


@njit(cache=True, error_model="numpy")
def _add_row(src, dst, r):
    """dst[r] += src[r] for two 2-D arrays of equal shape."""
    for j in range(src.shape[1]):
        dst[r, j] += src[r, j]


# --------------------------------------------------------------------------
# per-row gate arithmetic
# --------------------------------------------------------------------------
#
# One (batch row, column block) of a time step, in short loops over few
# arrays each (LLVM vectorises a loop only while its runtime alias checks
# stay few), over views that start at the block so indices run from 0 (a
# runtime start index kept the LSTM's loops from vectorising).

@njit(cache=True, error_model="numpy")
def _fwd_block(g, ws, b_x, b_h, h, h_prev_out, hn_out, h_out, H, j0, j1):
    """Gates and state update for columns j0:j1 of one row.

    g (3H): in x@W_x, out activations [r, z, n].  ws (3H): h_{t-1}@W_h.
    b_x, b_h (3H): biases.  h (H): in h_{t-1}, out h_t.  hn_out (H) gets
    u_n = (h_{t-1}@W_h)_n + b_hn.  Optional (None to skip): h_prev_out gets
    h_{t-1}, h_out gets h_t.
    """
    one = g.dtype.type(1)
    n = j1 - j0
    gr = g[j0:j1]
    gz = g[H + j0:H + j1]
    gn = g[2 * H + j0:2 * H + j1]
    wr = ws[j0:j1]
    wz = ws[H + j0:H + j1]
    wn = ws[2 * H + j0:2 * H + j1]
    bxr = b_x[j0:j1]
    bxz = b_x[H + j0:H + j1]
    bxn = b_x[2 * H + j0:2 * H + j1]
    bhr = b_h[j0:j1]
    bhz = b_h[H + j0:H + j1]
    bhn = b_h[2 * H + j0:2 * H + j1]
    hh = h[j0:j1]
    un = hn_out[j0:j1]
    for k in range(n):
        gr[k] = _sigmoid((gr[k] + bxr[k]) + (wr[k] + bhr[k]), one)
    for k in range(n):
        gz[k] = _sigmoid((gz[k] + bxz[k]) + (wz[k] + bhz[k]), one)
    for k in range(n):
        un[k] = wn[k] + bhn[k]
    for k in range(n):
        gn[k] = _tanh((gn[k] + bxn[k]) + gr[k] * un[k])
    if h_prev_out is not None:
        hpo = h_prev_out[j0:j1]
        for k in range(n):
            hpo[k] = hh[k]
    for k in range(n):
        hh[k] = (one - gz[k]) * gn[k] + gz[k] * hh[k]
    if h_out is not None:
        ho = h_out[j0:j1]
        for k in range(n):
            ho[k] = hh[k]


# Inlined into its callers so that Numba prunes the row views' reference
# counts (see the LSTM's _bwd_block: atomic counts bounced between cores).
@njit(cache=True, error_model="numpy", inline="always")
def _bwd_block(g, h_prev, un, dh_in, dh, dhw, da, du, du_copy, H, j0, j1):
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
# a part of the batch: rows r0:r1 through the whole sequence
# --------------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def _fwd_rows(x, W_x, W_h, b_x, b_h, h0, h_seq, h_T, gates, states, step_ws, r0, r1):
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
                _fwd_block(gates[r, t], step_ws[r], b_x, b_h, h_T[r], states[0, r, t],
                           states[1, r, t], h_seq[r, t], H, j0, j1)


@njit(cache=True, error_model="numpy")
def _zero_rows(a, r0, r1):
    zero = a.dtype.type(0)
    for r in range(r0, r1):
        for j in range(a.shape[1]):
            a[r, j] = zero


@njit(cache=True, error_model="numpy")
def _bwd_rows(WhT, dh_seq, dh_T, gates, states, dh0, dh_ws, dgates, dgates_h, step_ws, r0, r1):
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
                _bwd_block(gates[r, t], states[0, r, t], states[1, r, t], dh_seq[r, t], dh0[r],
                           dh_ws[r], dgates[r, t], dgates_h[r, t], step_ws[r], H, j0, j1)
        np.dot(step_ws[r0:r1], WhT, dh_ws[r0:r1])
    for r in range(r0, r1):
        _add_row(dh_ws, dh0, r)


@njit(cache=True, error_model="numpy")
def _bwd_rows_weights(x, W_x, states, dgates, dgates_h, dx, dW_x, dW_h, r0, r1):
    """Rows r0:r1's ``dx`` and their share of the weight gradients (serial)."""
    T, n_in = x.shape[1], x.shape[2]
    H = states.shape[3]
    G = 3 * H
    nr = r1 - r0
    da = dgates[r0:r1].reshape((nr * T, G))
    np.dot(x[r0:r1].reshape((nr * T, n_in)).T, da, dW_x)
    np.dot(states[0, r0:r1].reshape((nr * T, H)).T, dgates_h[r0:r1].reshape((nr * T, G)), dW_h)
    if dx is not None:
        np.dot(da, W_x.T, dx[r0:r1].reshape((nr * T, n_in)))


@njit(cache=True, error_model="numpy")
def _chunk_count(n):
    return (n + _CHUNK - 1) // _CHUNK


@njit(cache=True, error_model="numpy")
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


@njit(cache=True, error_model="numpy")
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


@njit(cache=True, error_model="numpy")
def _part_rows(B, parts):
    """Rows per part and the number of parts that hold rows."""
    rows = (B + parts - 1) // parts
    return rows, (B + rows - 1) // rows


# --------------------------------------------------------------------------
# full-sequence kernels
# --------------------------------------------------------------------------

@njit(cache=True, parallel=True, error_model="numpy")
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
            _fwd_rows(x, W_x, W_h, b_x, b_h, h0, h_seq, h_T, gates, states, step_ws, r0, min(B, r0 + rows))
        return
    if B * H < _PAR_STEP_MIN:
        _fwd_rows(x, W_x, W_h, b_x, b_h, h0, h_seq, h_T, gates, states, step_ws, 0, B)
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
            _fwd_block(gates[r, t], step_ws[r], b_x, b_h, h_T[r], states[0, r, t], states[1, r, t],
                       h_seq[r, t], H, j0, j1)


@njit(cache=True, parallel=True, error_model="numpy")
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
        Written: gradient w.r.t. ``x``; ``None`` skips its product.
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
        Weight-gradient shares of parts 1, 2, ... (required when ``parts > 1``).

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
        if dw_ws is None:  # (a test of the argument itself lets Numba drop this path for None)
            raise ValueError("gru_backward: parts > 1 needs dw_ws")
        rows, active = _part_rows(B, parts)
        nxg = n_in * G
        _transpose_into(W_h, WhT)
        for p in prange(active):
            r0 = p * rows
            _bwd_rows(WhT, dh_seq, dh_T, gates, states, dh0, dh_ws, dgates, dgates_h, step_ws,
                      r0, min(B, r0 + rows))
        # every part is past its recurrence: dW_h may now be overwritten
        for p in prange(active):
            r0 = p * rows
            r1 = min(B, r0 + rows)
            if p == 0:
                _bwd_rows_weights(x, W_x, states, dgates, dgates_h, dx, dW_x, dW_h, r0, r1)
            else:
                _bwd_rows_weights(x, W_x, states, dgates, dgates_h, dx,
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
            _bwd_rows(WhT, dh_seq, dh_T, gates, states, dh0, dh_ws, dgates, dgates_h, step_ws, 0, B)
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
                    _bwd_block(gates[r, t], states[0, r, t], states[1, r, t], dh_seq[r, t], dh0[r],
                               dh_ws[r], dgates[r, t], dgates_h[r, t], step_ws[r], H, j0, j1)
                np.dot(step_ws, WhT, dh_ws)
            for r in prange(B):
                _add_row(dh_ws, dh0, r)
        _bwd_rows_weights(x, W_x, states, dgates, dgates_h, dx, dW_x, dW_h, 0, B)
    da = dgates.reshape(B * T, G)
    du = dgates_h.reshape(B * T, G)
    for k in prange(_block_count(G)):
        _column_sums_block(da, db_x, False, k)
        _column_sums_block(du, db_h, False, k)


# --------------------------------------------------------------------------
# single-step kernels
# --------------------------------------------------------------------------

@njit(cache=True, parallel=True, error_model="numpy")
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
            _fwd_block(gates[r], step_ws[r], b_x, b_h, h[r], None, hn[r], None, H, j0, j1)
    else:
        for task in range(B * nblk):
            r = task // nblk
            j0 = (task % nblk) * _BLOCK
            j1 = min(j0 + _BLOCK, H)
            for j in range(j0, j1):
                h[r, j] = h_prev[r, j]
            _fwd_block(gates[r], step_ws[r], b_x, b_h, h[r], None, hn[r], None, H, j0, j1)


@njit(cache=True, parallel=True, error_model="numpy")
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
        Written: gradient w.r.t. ``x_t``; ``None`` skips it.
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
        None: overwrite mode; an array: accumulate mode (scratch).

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
            _bwd_block(gates[r], h_prev[r], hn[r], None, dh_ws[r], None, dgates[r], dgates_h[r], None,
                       H, j0, j1)
    else:
        for task in range(B * nblk):
            r = task // nblk
            j0 = (task % nblk) * _BLOCK
            j1 = min(j0 + _BLOCK, H)
            for j in range(j0, j1):
                dh_ws[r, j] = dh[r, j]
            _bwd_block(gates[r], h_prev[r], hn[r], None, dh_ws[r], None, dgates[r], dgates_h[r], None,
                       H, j0, j1)
    # dh is fully consumed into dh_ws: dh_prev may be dh
    np.dot(dgates_h, W_h.T, dh_prev)
    for r in prange(B):
        _add_row(dh_ws, dh_prev, r)
    if dx_t is not None:
        np.dot(dgates, W_x.T, dx_t)
    if accum_ws is None:
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
