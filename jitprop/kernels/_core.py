"""Compiled kernels for dense layers, activations, losses and SGD.

Every function here is a Numba ``@njit`` dispatcher that works on
caller-provided, C-contiguous float32 or float64 arrays and never allocates.
They perform **no argument checking**: wrong shapes make compiled code read or
write outside the given buffers.  From Python, prefer the checked wrappers in
:mod:`jitprop.kernels`; call these directly (``jitprop.kernels.raw``) from
your own ``@njit`` code once you have validated the shapes yourself.

Design rules, kept by every kernel in this module:

* ``prange`` only runs over an axis whose iterations write disjoint elements,
  and every reduction sums in a fixed order that does not depend on the
  number of threads, so results are bitwise identical for any thread count.
* Arithmetic stays in the dtype of the arrays: constants are built with
  ``x.dtype.type(...)`` so float32 code is not promoted to float64.  Scalar
  losses and norms are accumulated in float64 and returned as Python floats.
* Matrix products call BLAS's gemm (:func:`_gemm`, through the shim Numba's
  own ``np.dot`` uses) at the top level of a function, never inside a
  ``prange`` loop of a kernel, so BLAS threads and Numba threads never multiply.
* fastmath allows reassociation and contraction only (no ``nnan``/``ninf``),
  so NaN and inf propagate and can be detected.

All kernels that call each other live in this one module so that Numba's
on-disk cache (``cache=True``) stays consistent.  The one exception is the
vectorised sigmoid / tanh of :mod:`._fmath`, shared with the recurrent kernels,
whose source is part of every jitprop cache entry's key (:mod:`jitprop._cache`).
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from ._fmath import sigmoid, tanh

__all__ = [
    "ACT_IDENTITY",
    "ACT_RELU",
    "ACT_SIGMOID",
    "ACT_TANH",
    "activation_forward",
    "activation_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "relu_forward",
    "relu_backward",
    "tanh_forward",
    "tanh_backward",
    "dense_forward",
    "dense_act_forward",
    "dense_backward",
    "dense_backward_params",
    "bias_grad",
    "mse_loss",
    "softmax_cross_entropy",
    "sgd_step",
    "sum_squares",
    "scale_inplace",
    "clip_grad_norm",
    "segment_norms",
    "PAR_MIN",
    "CLIP_EPS",
    "activation_forward_serial",
    "activation_backward_serial",
    "relu_backward_serial",
    "sigmoid_backward_serial",
    "tanh_backward_serial",
    "dense_act_forward_serial",
    "dense_relu_forward_serial",
    "dense_backward_serial",
    "dense_backward_params_serial",
    "mse_loss_serial",
    "softmax_cross_entropy_serial",
    "sgd_step_serial",
]

#: Fast-math flags: reassociation and FMA contraction, never nnan/ninf.
FASTMATH = {"reassoc", "contract"}

#: Activation codes accepted by the fused kernels.
ACT_IDENTITY = 0
ACT_RELU = 1
ACT_SIGMOID = 2
ACT_TANH = 3

#: Below this many elements a kernel runs serially (a parallel region costs a
#: few microseconds to start, more than the work itself on small arrays); the
#: ``*_serial`` twins are what the kernels run then.
PAR_MIN = 32768
#: Added to the gradient norm before clipping, as torch.nn.utils.clip_grad_norm_.
CLIP_EPS = 1e-6
# Elementwise kernels are split into chunks of this many elements.
_CHUNK = 8192
# Column block width for the deterministic bias-gradient reduction.
_COLBLK = 64

_jit = dict(cache=True, fastmath=FASTMATH, nogil=True)
# helpers inlined into their callers before typing (a prange in one becomes
# the caller's own parallel loop, never a call into another parallel kernel)
_inline = dict(cache=True, fastmath=FASTMATH, nogil=True, inline="always")
_pjit = dict(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)
# Adam's loop: NumPy's error model (its division vectorises only without
# Python's zero-divisor check) and no fastmath flags of its own
_jit_exact = dict(cache=True, nogil=True, error_model="numpy")


# --------------------------------------------------------------------------
# elementwise activations
# --------------------------------------------------------------------------
@njit(**_inline)
def _same_data(x, y):
    return x.ctypes.data == y.ctypes.data


@njit(**_inline)
def _act_inplace(a, act):
    """``a = f(a)`` over a 1-D view.  In place kernels take one array: with
    two arguments that might overlap, LLVM vectorises behind a run-time
    overlap check, and an exact in-place call fails it and runs scalar."""
    n = a.size
    one = a.dtype.type(1)
    zero = a.dtype.type(0)
    if act == ACT_RELU:
        for i in range(n):
            v = a[i]
            a[i] = zero if v < zero else v  # NaN passes through, as in torch.relu
    elif act == ACT_SIGMOID:
        for i in range(n):
            a[i] = sigmoid(a[i], one)
    elif act == ACT_TANH:
        for i in range(n):
            a[i] = tanh(a[i])


@njit(**_inline)
def _act_fwd_range(z, a, start, stop, act):
    # views from the block start: indices from 0 let the loops vectorise
    # (a runtime start index makes Numba allow for negative indices)
    z, a = z[start:stop], a[start:stop]
    if _same_data(z, a):
        _act_inplace(a, act)
        return
    n = stop - start
    one = z.dtype.type(1)
    zero = z.dtype.type(0)
    if act == ACT_RELU:
        for i in range(n):
            v = z[i]
            a[i] = zero if v < zero else v  # NaN passes through, as in torch.relu
    elif act == ACT_SIGMOID:
        for i in range(n):
            a[i] = sigmoid(z[i], one)
    elif act == ACT_TANH:
        for i in range(n):
            a[i] = tanh(z[i])
    else:
        for i in range(n):
            a[i] = z[i]


# one function per activation's derivative, so that a kernel of one activation
# compiles only its loops (the per-layer path's ReLU: 0.2 s less cold start).
# Each takes 1-D views; ``dz`` may be ``da`` (then the loop reads and writes
# one array: with two that overlap, LLVM's run-time overlap check fails and
# the loop runs scalar).
@njit(**_inline)
def _relu_bwd(a, da, dz):
    """``dz = da * relu'(a)`` from the saved output ``a``."""
    zero = a.dtype.type(0)
    if _same_data(da, dz):
        for i in range(a.size):
            # both loads before the select: a branch on the sign of a[i]
            # is mispredicted half the time on real data (5 ns per element)
            ai = a[i]
            di = dz[i]
            dz[i] = zero if ai <= zero else di
    else:
        for i in range(a.size):
            ai = a[i]
            di = da[i]
            dz[i] = zero if ai <= zero else di


@njit(**_inline)
def _sigmoid_bwd(a, da, dz):
    """``dz = da * a (1 - a)``."""
    one = a.dtype.type(1)
    if _same_data(da, dz):
        for i in range(a.size):
            ai = a[i]
            dz[i] = dz[i] * (ai * (one - ai))
    else:
        for i in range(a.size):
            ai = a[i]
            dz[i] = da[i] * (ai * (one - ai))


@njit(**_inline)
def _tanh_bwd(a, da, dz):
    """``dz = da * (1 - a**2)``."""
    one = a.dtype.type(1)
    if _same_data(da, dz):
        for i in range(a.size):
            ai = a[i]
            dz[i] = dz[i] * (one - ai * ai)
    else:
        for i in range(a.size):
            ai = a[i]
            dz[i] = da[i] * (one - ai * ai)


@njit(**_inline)
def _act_bwd_range(a, da, dz, start, stop, act):
    # views from the block start: indices from 0 let the loops vectorise
    # (a runtime start index makes Numba allow for negative indices)
    a, da, dz = a[start:stop], da[start:stop], dz[start:stop]
    if act == ACT_RELU:
        _relu_bwd(a, da, dz)
    elif act == ACT_SIGMOID:
        _sigmoid_bwd(a, da, dz)
    elif act == ACT_TANH:
        _tanh_bwd(a, da, dz)
    elif not _same_data(da, dz):
        for i in range(stop - start):
            dz[i] = da[i]


@njit(**_inline)
def _nchunks(n):
    return (n + _CHUNK - 1) // _CHUNK


@njit(**_jit)
def activation_forward_serial(z, a, act):
    """:func:`activation_forward` without a parallel loop (the same
    arithmetic; for arrays below ``PAR_MIN`` elements, where the parallel
    kernel runs this too, at a fraction of its compile time)."""
    _act_fwd_range(z.reshape(z.size), a.reshape(a.size), 0, z.size, act)


@njit(**_jit)
def activation_backward_serial(a, da, dz, act):
    """:func:`activation_backward` without a parallel loop (see
    :func:`activation_forward_serial`)."""
    _act_bwd_range(a.reshape(a.size), da.reshape(da.size), dz.reshape(dz.size), 0, a.size, act)


@njit(**_jit)
def relu_backward_serial(a, da, dz):
    """:func:`relu_backward` without a parallel loop (see :func:`activation_forward_serial`)."""
    _relu_bwd(a.reshape(a.size), da.reshape(da.size), dz.reshape(dz.size))


@njit(**_jit)
def sigmoid_backward_serial(a, da, dz):
    """:func:`sigmoid_backward` without a parallel loop (see :func:`activation_forward_serial`)."""
    _sigmoid_bwd(a.reshape(a.size), da.reshape(da.size), dz.reshape(dz.size))


@njit(**_jit)
def tanh_backward_serial(a, da, dz):
    """:func:`tanh_backward` without a parallel loop (see :func:`activation_forward_serial`)."""
    _tanh_bwd(a.reshape(a.size), da.reshape(da.size), dz.reshape(dz.size))


# inlined into each parallel kernel below (its prange becomes theirs): one
# body for the generic and the six named activation kernels
@njit(**_inline)
def _act_fwd_body(z, a, act):
    n = z.size
    if n < PAR_MIN:
        activation_forward_serial(z, a, act)
    else:
        zf = z.reshape(n)
        af = a.reshape(n)
        for c in prange(_nchunks(n)):
            s = c * _CHUNK
            _act_fwd_range(zf, af, s, min(s + _CHUNK, n), act)


@njit(**_inline)
def _act_bwd_body(a, da, dz, act):
    n = a.size
    if n < PAR_MIN:
        activation_backward_serial(a, da, dz, act)
    else:
        af = a.reshape(n)
        daf = da.reshape(n)
        dzf = dz.reshape(n)
        for c in prange(_nchunks(n)):
            s = c * _CHUNK
            _act_bwd_range(af, daf, dzf, s, min(s + _CHUNK, n), act)


@njit(**_pjit)
def activation_forward(z, a, act):
    """Apply an activation elementwise: ``a = f(z)``.

    Parameters
    ----------
    z : ndarray, any shape, float32 or float64, C-contiguous
        Pre-activations (read).
    a : ndarray, same shape and dtype as ``z``
        Output (written).  May be the same array as ``z`` (in place).
    act : int
        ``ACT_IDENTITY`` (0), ``ACT_RELU`` (1), ``ACT_SIGMOID`` (2) or
        ``ACT_TANH`` (3).
    """
    _act_fwd_body(z, a, act)


@njit(**_pjit)
def activation_backward(a, da, dz, act):
    """Backward of an activation, from its saved *output*: ``dz = da * f'(z)``.

    The derivative is written in terms of the output ``a = f(z)``:
    ReLU ``1[a > 0]``, sigmoid ``a (1 - a)``, tanh ``1 - a**2``.

    Parameters
    ----------
    a : ndarray, any shape, float32 or float64, C-contiguous
        Saved output of the forward pass (read).
    da : ndarray, same shape and dtype
        Upstream gradient dL/da (read).
    dz : ndarray, same shape and dtype
        Gradient dL/dz (written).  May be the same array as ``da``.
    act : int
        Activation code, as in :func:`activation_forward`.
    """
    _act_bwd_body(a, da, dz, act)


@njit(**_pjit)
def sigmoid_forward(z, a):
    """``a = 1 / (1 + exp(-z))``, overflow-free.  Shapes as in :func:`activation_forward`."""
    _act_fwd_body(z, a, ACT_SIGMOID)


@njit(**_pjit)
def sigmoid_backward(a, da, dz):
    """``dz = da * a * (1 - a)`` from the saved output ``a``."""
    _act_bwd_body(a, da, dz, ACT_SIGMOID)


@njit(**_pjit)
def relu_forward(z, a):
    """``a = max(z, 0)`` (NaN passes through).  Shapes as in :func:`activation_forward`."""
    _act_fwd_body(z, a, ACT_RELU)


@njit(**_pjit)
def relu_backward(a, da, dz):
    """``dz = da * (a > 0)`` from the saved output ``a`` (ReLU'(0) = 0, as in PyTorch)."""
    _act_bwd_body(a, da, dz, ACT_RELU)


@njit(**_pjit)
def tanh_forward(z, a):
    """``a = tanh(z)``.  Shapes as in :func:`activation_forward`."""
    _act_fwd_body(z, a, ACT_TANH)


@njit(**_pjit)
def tanh_backward(a, da, dz):
    """``dz = da * (1 - a**2)`` from the saved output ``a``."""
    _act_bwd_body(a, da, dz, ACT_TANH)


# --------------------------------------------------------------------------
# dense layer
# --------------------------------------------------------------------------
# Products with at most this many multiply-adds run as plain loops: a BLAS
# call costs about a microsecond of overhead, more than a tiny product.
SMALL_MM = 4096


_CHAR = ir.IntType(8)
_VOIDP = ir.IntType(8).as_pointer()


@intrinsic
def _xxgemm(typingctx, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """BLAS gemm, column-major, ``c = alpha op(a) op(b) + beta c`` (``ta``/``tb``
    the character codes of ``op``), through ``numba_xxgemm``: the function
    Numba's ``np.dot`` calls, which finds SciPy's BLAS.  Returns 0, or -1
    when there is none.  One call site serves every layout, where ``np.dot``
    compiles a specialisation per pair of layouts."""
    sig = types.int32(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        intp = context.get_value_type(types.intp)
        fnty = ir.FunctionType(ir.IntType(32), [_CHAR, _CHAR, _CHAR, intp, intp, intp, _VOIDP, _VOIDP, intp,
                                                _VOIDP, intp, _VOIDP, _VOIDP, intp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        tys = signature.args
        kind = ir.Constant(_CHAR, ord("s" if tys[11].dtype == types.float32 else "d"))

        def val(i):  # an integer argument as Py_ssize_t
            return context.cast(builder, args[i], tys[i], types.intp)

        def ptr(i):  # an array argument's data, or a scalar argument's address
            if isinstance(tys[i], types.Array):
                data = context.make_array(tys[i])(context, builder, args[i]).data
            else:
                data = cgutils.alloca_once_value(builder, args[i])
            return builder.bitcast(data, _VOIDP)

        char = [builder.trunc(val(i), _CHAR) for i in (0, 1)]
        return builder.call(fn, (kind, char[0], char[1], val(2), val(3), val(4), ptr(5), ptr(6), val(7),
                                 ptr(8), val(9), ptr(10), ptr(11), val(12)))
    return sig, codegen


@njit(**_inline)
def _gemm(a, b, out, ta, tb):
    """``out = op(a) @ op(b)`` for C-contiguous 2-D arrays, where ``op`` is the
    transpose if ``ta`` (``tb``) is true: plain loops for tiny products, BLAS
    otherwise.  Serial either way."""
    m, n = out.shape
    k = a.shape[0] if ta else a.shape[1]
    if m * k * n <= SMALL_MM:
        zero = out.dtype.type(0)
        for i in range(m):
            for j in range(n):
                out[i, j] = zero
            for p in range(k):
                aip = a[p, i] if ta else a[i, p]
                for j in range(n):
                    out[i, j] += aip * (b[j, p] if tb else b[p, j])
        return
    # row-major out = op(a) op(b) is column-major out' = op(b)' op(a)', as np.dot calls it
    st = _xxgemm(116 if tb else 110, 116 if ta else 110, n, m, k, out.dtype.type(1), b, b.shape[1], a, a.shape[1],
                 out.dtype.type(0), out, n)
    if st != 0:
        raise RuntimeError("no BLAS gemm found (jitprop needs scipy.linalg.cython_blas)")


@njit(**_inline)
def _bias_relu_row(out, b, i, relu):
    """``out[i] += b``, then ReLU if ``relu``, in one pass."""
    m = out.shape[1]
    row = out[i]
    if relu:
        zero = out.dtype.type(0)
        for j in range(m):
            v = row[j] + b[j]
            row[j] = zero if v < zero else v
    else:
        for j in range(m):
            row[j] += b[j]


@njit(**_inline)
def _bias_act_row(out, b, i, act):
    """``out[i] = f(out[i] + b)`` in place, in one pass for ReLU and identity."""
    _bias_relu_row(out, b, i, act == ACT_RELU)
    if act != ACT_RELU and act != ACT_IDENTITY:
        _act_inplace(out[i], act)


@njit(**_jit)
def dense_act_forward_serial(x, W, b, out, act):
    """:func:`dense_act_forward` without a parallel loop (the same arithmetic
    per element; what that kernel runs below ``PAR_MIN`` output elements)."""
    _gemm(x, W, out, False, False)
    for i in range(out.shape[0]):
        _bias_act_row(out, b, i, act)


@njit(**_jit)
def dense_relu_forward_serial(x, W, b, out, relu):
    """:func:`dense_act_forward_serial` for ReLU (``relu`` true) or identity
    only: without the other activations' loops it compiles in about 0.27 s
    instead of 0.41 s (a small MLP's first run).  The same arithmetic."""
    _gemm(x, W, out, False, False)
    for i in range(out.shape[0]):
        _bias_relu_row(out, b, i, relu)


@njit(**_inline)
def _dense_fwd_body(x, W, b, out, act):
    if out.size < PAR_MIN:
        dense_act_forward_serial(x, W, b, out, act)
    else:
        _gemm(x, W, out, False, False)
        for i in prange(out.shape[0]):
            _bias_act_row(out, b, i, act)


@njit(**_pjit)
def dense_act_forward(x, W, b, out, act):
    """Fused dense layer and activation: ``out = f(x @ W + b)``.

    Parameters
    ----------
    x : ndarray (n, n_in), float32 or float64, C-contiguous
        Input rows (read).
    W : ndarray (n_in, n_out), same dtype, C-contiguous
        Weights (read).
    b : ndarray (n_out,), same dtype
        Bias (read).
    out : ndarray (n, n_out), same dtype, C-contiguous
        Output (written).  Must not overlap ``x`` or ``W``.
    act : int
        Activation code (``ACT_IDENTITY`` for a plain affine layer).

    Notes
    -----
    The product runs in BLAS; the bias add and activation are one fused pass,
    parallel over rows when the output is large.
    """
    _dense_fwd_body(x, W, b, out, act)


@njit(**_pjit)
def dense_forward(x, W, b, out):
    """Dense layer forward: ``out = x @ W + b``.

    Parameters
    ----------
    x : ndarray (n, n_in), float32 or float64, C-contiguous
    W : ndarray (n_in, n_out), same dtype, C-contiguous
    b : ndarray (n_out,), same dtype
    out : ndarray (n, n_out), same dtype, C-contiguous, written
    """
    _dense_fwd_body(x, W, b, out, ACT_IDENTITY)


@njit(**_inline)
def _colsum_block(dy, db, j0, j1):
    zero = db.dtype.type(0)
    n = j1 - j0
    dbv = db[j0:j1]  # views from the block start: see _act_fwd_range
    for j in range(n):
        dbv[j] = zero
    for i in range(dy.shape[0]):
        row = dy[i, j0:j1]
        for j in range(n):
            dbv[j] += row[j]


# the one bias-gradient body (inlined: see _inline): parallel over blocks of
# columns, each column summed over all rows in row order by one thread
@njit(**_inline)
def _bias_grad_body(dy, db):
    m = dy.shape[1]
    nblk = (m + _COLBLK - 1) // _COLBLK
    if dy.size < PAR_MIN or nblk < 2:
        _colsum_block(dy, db, 0, m)
    else:
        for c in prange(nblk):
            j0 = c * _COLBLK
            _colsum_block(dy, db, j0, min(j0 + _COLBLK, m))


@njit(**_pjit)
def bias_grad(dy, db):
    """Bias gradient ``db = dy.sum(axis=0)``, summed over rows in order.

    Parameters
    ----------
    dy : ndarray (n, n_out), float32 or float64, C-contiguous (read)
    db : ndarray (n_out,), same dtype (written)

    Notes
    -----
    Parallel over blocks of columns; each column is summed over all rows in
    row order by one thread, so the result does not depend on the thread
    count.
    """
    _bias_grad_body(dy, db)


@njit(**_jit)
def dense_backward_serial(x, W, dy, dx, dW, db):
    """:func:`dense_backward` without a parallel loop (the same arithmetic)."""
    _gemm(dy, W, dx, False, True)
    _gemm(x, dy, dW, True, False)
    _colsum_block(dy, db, 0, dy.shape[1])


@njit(**_jit)
def dense_backward_params_serial(x, dy, dW, db):
    """:func:`dense_backward_params` without a parallel loop (the same arithmetic)."""
    _gemm(x, dy, dW, True, False)
    _colsum_block(dy, db, 0, dy.shape[1])


@njit(**_pjit)
def dense_backward_params(x, dy, dW, db):
    """Parameter gradients of a dense layer, without the input gradient.

    Use this for a network's first layer, whose input gradient is not needed.

    Parameters
    ----------
    x : ndarray (n, n_in), C-contiguous
        The forward input (read).
    dy : ndarray (n, n_out), C-contiguous
        Upstream gradient dL/d(out) (read).
    dW : ndarray (n_in, n_out), written: ``x.T @ dy``
    db : ndarray (n_out,), written: ``dy.sum(0)``
    """
    _gemm(x, dy, dW, True, False)
    _bias_grad_body(dy, db)


@njit(**_pjit)
def dense_backward(x, W, dy, dx, dW, db):
    """Dense layer backward.

    Parameters
    ----------
    x : ndarray (n, n_in), C-contiguous
        The forward input (read).
    W : ndarray (n_in, n_out), C-contiguous
        Weights (read).
    dy : ndarray (n, n_out), C-contiguous
        Upstream gradient dL/d(out) (read).
    dx : ndarray (n, n_in), written: ``dy @ W.T``.  Must not overlap ``dy``.
    dW : ndarray (n_in, n_out), written: ``x.T @ dy``
    db : ndarray (n_out,), written: ``dy.sum(0)``

    Gradients are overwritten, not accumulated.
    """
    _gemm(dy, W, dx, False, True)
    _gemm(x, dy, dW, True, False)
    _bias_grad_body(dy, db)


# --------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------
@njit(**_inline)
def _mse_row(p, t, g, row_loss, i, scale):
    acc = p.dtype.type(0)
    for k in range(p.shape[1]):
        d = p[i, k] - t[i, k]
        acc += d * d
        g[i, k] = scale * d
    row_loss[i] = acc


@njit(**_jit)
def mse_loss_serial(pred, target, grad, row_loss):
    """:func:`mse_loss` without a parallel loop (the same arithmetic; what
    that kernel runs below ``PAR_MIN`` elements)."""
    n = pred.shape[0]
    total = pred.size
    if total == 0:
        return np.nan
    k = total // n
    p = pred.reshape((n, k))
    t = target.reshape((n, k))
    g = grad.reshape((n, k))
    scale = pred.dtype.type(2) / pred.dtype.type(total)
    for i in range(n):
        _mse_row(p, t, g, row_loss, i, scale)
    return _mean_rows(row_loss, n, total)


@njit(**_inline)
def _mean_rows(row_loss, n, count):
    """Sum of ``row_loss[:n]`` in row order, in float64, over ``count``."""
    s = 0.0
    for i in range(n):
        s += row_loss[i]
    return s / count


@njit(**_pjit)
def mse_loss(pred, target, grad, row_loss):
    """Mean squared error and its gradient.

    ``loss = mean((pred - target)**2)`` over all elements, the article's
    ``C0 = (a - y)**2`` averaged; ``grad = 2 (pred - target) / pred.size``.

    Parameters
    ----------
    pred : ndarray (n, ...), float32 or float64, C-contiguous (read)
    target : ndarray, same shape and dtype (read)
    grad : ndarray, same shape and dtype (written)
    row_loss : ndarray (n,), same dtype
        Workspace: per-row sums of squared errors (written).

    Returns
    -------
    float
        The loss.  Rows are summed in order, in float64.
    """
    total = pred.size
    if total < PAR_MIN:
        return mse_loss_serial(pred, target, grad, row_loss)
    n = pred.shape[0]
    k = total // n
    p = pred.reshape((n, k))
    t = target.reshape((n, k))
    g = grad.reshape((n, k))
    scale = pred.dtype.type(2) / pred.dtype.type(total)
    for i in prange(n):
        _mse_row(p, t, g, row_loss, i, scale)
    return _mean_rows(row_loss, n, total)


@njit(**_inline)
def _xent_row(z, labels, g, row_loss, i, inv_n):
    c = z.shape[1]
    m = z[i, 0]
    for k in range(1, c):
        if z[i, k] > m:
            m = z[i, k]
    s = z.dtype.type(0)
    for k in range(c):
        e = np.exp(z[i, k] - m)
        g[i, k] = e
        s += e
    y = labels[i]
    # log(s) - (z_y - m) rather than (m + log(s)) - z_y: no cancellation of
    # two large numbers when the logits are large
    row_loss[i] = np.log(s) - (z[i, y] - m)
    f = inv_n / s
    for k in range(c):
        g[i, k] *= f
    g[i, y] -= inv_n


@njit(**_inline)
def _check_class_labels(labels, n, c):
    for i in range(n):
        if labels[i] < 0 or labels[i] >= c:
            raise ValueError("softmax_cross_entropy: a label is outside [0, n_classes)")


@njit(**_jit)
def softmax_cross_entropy_serial(logits, labels, grad, row_loss):
    """:func:`softmax_cross_entropy` without a parallel loop (the same
    arithmetic; what that kernel runs below ``PAR_MIN`` elements)."""
    n, c = logits.shape
    _check_class_labels(labels, n, c)
    if n == 0:
        return np.nan
    inv_n = logits.dtype.type(1) / logits.dtype.type(n)
    for i in range(n):
        _xent_row(logits, labels, grad, row_loss, i, inv_n)
    return _mean_rows(row_loss, n, n)


@njit(**_pjit)
def softmax_cross_entropy(logits, labels, grad, row_loss):
    """Softmax cross-entropy with integer class labels, mean over the batch.

    ``loss = mean_i(logsumexp(logits[i]) - logits[i, labels[i]])`` and
    ``grad = (softmax(logits) - onehot(labels)) / n``.  The max of each row is
    subtracted before exponentiating, so large logits do not overflow.

    Parameters
    ----------
    logits : ndarray (n, n_classes), float32 or float64, C-contiguous (read)
    labels : ndarray (n,), integer, values in ``[0, n_classes)`` (read)
    grad : ndarray (n, n_classes), same dtype as ``logits`` (written)
    row_loss : ndarray (n,), same dtype as ``logits``
        Workspace: per-row losses (written).

    Returns
    -------
    float
        The mean loss, rows summed in order in float64.

    Raises
    ------
    ValueError
        If a label is outside ``[0, n_classes)`` (checked before any write).
    """
    if logits.size < PAR_MIN:
        return softmax_cross_entropy_serial(logits, labels, grad, row_loss)
    n, c = logits.shape
    _check_class_labels(labels, n, c)
    inv_n = logits.dtype.type(1) / logits.dtype.type(n)
    for i in prange(n):
        _xent_row(logits, labels, grad, row_loss, i, inv_n)
    return _mean_rows(row_loss, n, n)


# --------------------------------------------------------------------------
# optimisation
# --------------------------------------------------------------------------
@njit(**_inline)
def _sgd_range(p, g, v, start, stop, lr, mom, wd, nesterov):
    # views from the block start: indices from 0 let the loops vectorise
    # (a runtime start index makes Numba allow for negative indices)
    p, g, v = p[start:stop], g[start:stop], v[start:stop]
    n = stop - start
    zero = p.dtype.type(0)
    if mom == zero:
        if wd == zero:
            for i in range(n):
                p[i] -= lr * g[i]
        else:
            for i in range(n):
                p[i] -= lr * (g[i] + wd * p[i])
    elif nesterov:
        for i in range(n):
            gi = g[i] + wd * p[i]
            vi = mom * v[i] + gi
            v[i] = vi
            p[i] -= lr * (gi + mom * vi)
    else:
        for i in range(n):
            gi = g[i] + wd * p[i]
            vi = mom * v[i] + gi
            v[i] = vi
            p[i] -= lr * vi


@njit(**_jit)
def sgd_step_serial(p, g, v, lr, momentum, weight_decay, nesterov):
    """:func:`sgd_step` without a parallel loop (the same arithmetic; what
    that kernel runs below ``PAR_MIN`` parameters)."""
    dt = p.dtype.type
    _sgd_range(p, g, v, 0, p.size, dt(lr), dt(momentum), dt(weight_decay), nesterov)


@njit(**_pjit)
def sgd_step(p, g, v, lr, momentum, weight_decay, nesterov):
    """One SGD update in place, with the semantics of ``torch.optim.SGD``
    (dampening 0)::

        g = grad + weight_decay * p
        v = momentum * v + g
        p -= lr * (g + momentum * v if nesterov else v)

    Parameters
    ----------
    p : ndarray (n,), float32 or float64, C-contiguous
        Parameters (updated in place).
    g : ndarray (n,), same dtype
        Gradients (read).
    v : ndarray (n,), same dtype
        Momentum buffer, zero before the first step (updated in place; not
        touched when ``momentum == 0``, where the update is ``p -= lr * g``,
        which is what the formula gives with ``v`` starting at zero).
    lr, momentum, weight_decay : float
        Cast to the dtype of ``p`` before use.
    nesterov : bool
    """
    n = p.size
    if n < PAR_MIN:
        sgd_step_serial(p, g, v, lr, momentum, weight_decay, nesterov)
    else:
        dt = p.dtype.type
        lr_, mom, wd = dt(lr), dt(momentum), dt(weight_decay)
        for c in prange(_nchunks(n)):
            s = c * _CHUNK
            _sgd_range(p, g, v, s, min(s + _CHUNK, n), lr_, mom, wd, nesterov)


@njit(**_jit)
def sum_squares(x):
    """Sum of squares of all elements of ``x`` (any shape, C-contiguous),
    accumulated in float64 in a fixed order.  Returns a float."""
    xf = x.reshape(x.size)
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    n = xf.size
    n4 = n - n % 4
    for i in range(0, n4, 4):
        a0 = np.float64(xf[i])
        a1 = np.float64(xf[i + 1])
        a2 = np.float64(xf[i + 2])
        a3 = np.float64(xf[i + 3])
        s0 += a0 * a0
        s1 += a1 * a1
        s2 += a2 * a2
        s3 += a3 * a3
    for i in range(n4, n):
        a = np.float64(xf[i])
        s0 += a * a
    return (s0 + s1) + (s2 + s3)


@njit(**_inline)
def _scale_range(xf, c, start, stop):
    # views from the block start: indices from 0 let the loops vectorise
    # (a runtime start index makes Numba allow for negative indices)
    xf = xf[start:stop]
    n = stop - start
    for i in range(n):
        xf[i] *= c


@njit(**_pjit)
def scale_inplace(x, c):
    """``x *= c`` for any C-contiguous array; ``c`` is cast to ``x``'s dtype."""
    xf = x.reshape(x.size)
    cc = x.dtype.type(c)
    n = xf.size
    if n < PAR_MIN:
        _scale_range(xf, cc, 0, n)
    else:
        for k in prange(_nchunks(n)):
            s = k * _CHUNK
            _scale_range(xf, cc, s, min(s + _CHUNK, n))


@njit(**_pjit)
def clip_grad_norm(g, max_norm):
    """Clip a flat gradient vector to a maximum global L2 norm, in place.

    As ``torch.nn.utils.clip_grad_norm_``: with ``norm = ||g||_2``, if
    ``max_norm / (norm + CLIP_EPS) < 1`` the gradient is multiplied by that factor.
    Keep all of a model's gradients in one flat buffer (as
    :class:`jitprop.Sequential` does) to clip them jointly in one call.

    Parameters
    ----------
    g : ndarray, any shape, float32 or float64, C-contiguous (updated)
    max_norm : float

    Returns
    -------
    float
        The norm before clipping.  If ``g`` holds a NaN the norm is NaN and
        ``g`` is left unchanged; if the norm is inf, ``g`` is scaled by 0 (as
        in PyTorch).
    """
    norm = np.sqrt(sum_squares(g))
    coef = max_norm / (norm + CLIP_EPS)
    if coef < 1.0:
        gf = g.reshape(g.size)
        cc = g.dtype.type(coef)
        n = gf.size
        if n < PAR_MIN:
            _scale_range(gf, cc, 0, n)
        else:
            for k in prange(_nchunks(n)):
                s = k * _CHUNK
                _scale_range(gf, cc, s, min(s + _CHUNK, n))
    return norm


@njit(**_jit)
def segment_norms(flat, offsets, out):
    """L2 norms of consecutive segments of a flat vector.

    Parameters
    ----------
    flat : ndarray (n,), float32 or float64 (read)
    offsets : ndarray (k + 1,), int64, increasing, ``offsets[-1] <= n``
        Segment ``j`` is ``flat[offsets[j]:offsets[j + 1]]``.
    out : ndarray (k,), float64 (written)
    """
    for j in range(out.size):
        out[j] = np.sqrt(sum_squares(flat[offsets[j]:offsets[j + 1]]))


# --------------------------------------------------------------------------
# fused training steps for multilayer perceptrons
# --------------------------------------------------------------------------
#: Loss codes of :func:`mlp_train_steps`.
LOSS_MSE = 0
LOSS_XENT = 1
#: Optimiser codes of :func:`mlp_train_steps`.
OPT_SGD = 0
OPT_ADAM = 1


@njit(**_jit)
def _mlp_part(X, Y_f, Y_i, order, s, r0, r1, m_total, table, params, g, pw, hoff, d0, d1, row_off,
              xb_off, yb_off, yb_i, loss_kind, drop, drop_p, dstep):
    """Forward, loss and backward of rows ``r0 .. r1-1`` of the batch whose
    first sample is ``order[s]``, into the gradient vector ``g``.

    ``pw`` is this part's workspace (offsets as in :func:`mlp_train_steps`);
    the row losses are left in ``pw[row_off:row_off + r1 - r0]``.  The loss is
    scaled by the whole batch, ``m_total`` rows, so the gradients of the parts
    add up to the gradient of the batch.  Layer ``l`` with ``drop_p[l] > 0``
    applies dropout mask ``(drop[l, 0], drop[l, 1] + dstep)`` to its output
    (into ``pw[drop[l, 2]:]``), indexed by the element's place in the whole
    batch, so every part draws the mask the layer-by-layer path draws.  With
    one part holding the whole batch this is, element by element and in the same order, what the
    layer-by-layer Python path computes, so the results are bitwise equal.
    It calls no parallel function: a cached function that embeds another
    module-level parallel function's loops is not reliably reloaded from
    Numba's cache."""
    F = X.shape[1]
    m = r1 - r0
    L = table.shape[0]
    nlast = table[L - 1, 1]
    xb = pw[xb_off:xb_off + m * F].reshape((m, F))
    for i in range(m):
        r = order[s + r0 + i]
        xr = X[r]
        xbr = xb[i]
        for j in range(F):
            xbr[j] = xr[j]
    h_prev = xb
    for l in range(L):
        nin, nout, act, oW, ob = table[l, 0], table[l, 1], table[l, 2], table[l, 3], table[l, 4]
        W = params[oW:oW + nin * nout].reshape((nin, nout))
        b = params[ob:ob + nout]
        h = pw[hoff[l]:hoff[l] + m * nout].reshape((m, nout))
        dense_act_forward_serial(h_prev, W, b, h, act)
        h_prev = h
        if drop_p[l] > 0.0:
            h_prev = pw[drop[l, 2]:drop[l, 2] + m * nout].reshape((m, nout))
            _dropout_layer(h, h_prev, drop, drop_p, l, dstep, r0 * nout)
    gl = pw[d0:d0 + m * nlast].reshape((m, nlast))
    row = pw[row_off:row_off + m]
    dt = params.dtype.type
    if loss_kind == LOSS_MSE:
        yb_f = pw[yb_off:yb_off + m * nlast].reshape((m, nlast))
        for i in range(m):
            r = order[s + r0 + i]
            for j in range(nlast):
                yb_f[i, j] = Y_f[r, j]
        scale = dt(2) / dt(m_total * nlast)
        for i in range(m):
            _mse_row(h_prev, yb_f, gl, row, i, scale)
    else:
        yi = yb_i[r0:r1]
        for i in range(m):
            yi[i] = Y_i[order[s + r0 + i]]
        inv_n = dt(1) / dt(m_total)
        for i in range(m):
            _xent_row(h_prev, yi, gl, row, i, inv_n)
    dcur = gl
    use0 = False  # dcur lives in buffer d0; the next dx goes to the other one
    for l in range(L - 1, -1, -1):
        nin, nout, act, oW, ob = table[l, 0], table[l, 1], table[l, 2], table[l, 3], table[l, 4]
        a = pw[hoff[l]:hoff[l] + m * nout].reshape((m, nout))
        if drop_p[l] > 0.0:
            _dropout_layer(dcur, dcur, drop, drop_p, l, dstep, r0 * nout)
        if act != ACT_IDENTITY:
            af = a.reshape(a.size)
            df = dcur.reshape(dcur.size)
            _act_bwd_range(af, df, df, 0, af.size, act)
        W = params[oW:oW + nin * nout].reshape((nin, nout))
        dW = g[oW:oW + nin * nout].reshape((nin, nout))
        db = g[ob:ob + nout]
        if l == 0:
            dense_backward_params_serial(xb, dcur, dW, db)
        else:
            pin = table[l - 1, 1]
            o_in = drop[l - 1, 2] if drop_p[l - 1] > 0.0 else hoff[l - 1]  # what layer l read
            x_in = pw[o_in:o_in + m * pin].reshape((m, pin))
            o = d0 if use0 else d1
            dprev = pw[o:o + m * nin].reshape((m, nin))
            dense_backward_serial(x_in, W, dcur, dprev, dW, db)
            dcur = dprev
            use0 = not use0


@njit(**_inline)
def _dropout_layer(x, out, drop, drop_p, l, dstep, first):
    # layer l's mask of this step on a part whose first element is element `first` of the batch
    key, th, sc = _dropout_consts(x, drop_p[l], drop[l, 0], drop[l, 1] + dstep)
    _dropout_span(x.reshape(x.size), out.reshape(out.size), key, th, sc, first)


@njit(**_inline)
def _check_labels(Y_i, order, s, m, n_classes):
    for i in range(m):
        y = Y_i[order[s + i]]
        if y < 0 or y >= n_classes:
            raise ValueError("mlp_train_steps: a label is outside [0, n_classes)")


@njit(**_inline)
def _batch_loss(ws, stride, row_off, m, rows, loss_kind, nlast):
    """The batch loss from the parts' row losses, rows summed in batch order
    in float64 (the same order whatever the number of parts)."""
    s = 0.0
    r0 = 0
    p = 0
    while r0 < m:
        r1 = min(m, r0 + rows)
        row = ws[p * stride + row_off:p * stride + row_off + r1 - r0]
        for i in range(r1 - r0):
            s += row[i]
        r0 = r1
        p += 1
    if loss_kind == LOSS_MSE:
        return s / (m * nlast)
    return s / m


@njit(**_inline)
def _add_parts_range(g, gx, nparts, start, stop):
    """``g[start:stop] += gx[0] + ... + gx[nparts - 2]`` on that range, adding
    the parts one by one in order."""
    gv = g[start:stop]
    n = stop - start
    for q in range(nparts - 1):
        xv = gx[q, start:stop]
        for i in range(n):
            gv[i] += xv[i]


@njit(**_inline)
def _all_finite(x):
    """Whether no element of the flat array ``x`` is NaN or inf."""
    # x - x is 0 for a finite x and NaN otherwise, and a NaN survives the sum
    # in any order; without fastmath's nnan flag LLVM may not fold it to 0
    s = x.dtype.type(0)
    for i in range(x.size):
        s += x[i] - x[i]
    return s == 0


@njit(**_inline)
def _clip_and_check(grads, value, check, clip_norm):
    """Returns False (and changes nothing) if ``check`` and the loss or any
    gradient is not finite; else clips the gradients if asked."""
    if check and not (np.isfinite(value) and _all_finite(grads)):
        return False
    if clip_norm >= 0.0:
        norm = np.sqrt(sum_squares(grads))
        coef = clip_norm / (norm + CLIP_EPS)
        if coef < 1.0:
            _scale_range(grads, grads.dtype.type(coef), 0, grads.size)
    return True


@njit(**_pjit)
def mlp_train_steps(X, Y_f, Y_i, order, bs, step0, step1, table, params, grads, gx, velocity, ws,
                    stride, hoff, d0, d1, row_off, xb_off, yb_off, yb_i, loss_kind, lr, momentum,
                    weight_decay, nesterov, clip_norm, check, losses, opt_kind, exp_avg, exp_avg_sq,
                    max_exp_avg_sq, adam_steps, beta1, beta2, eps, amsgrad, decoupled, drop, drop_p):
    """Run SGD or Adam steps ``step0 .. step1-1`` of an epoch of an MLP in one call.

    Step ``k`` trains on rows ``order[k*bs : (k+1)*bs]`` of ``X`` (the last
    batch may be shorter).  Each batch is cut into ``gx.shape[0] + 1`` parts
    of ``ceil(m / parts)`` consecutive rows, and the parts run forward,
    loss and backward at the same time (a ``prange`` over parts, each with
    its own workspace and gradient vector; BLAS must run on one thread while
    they do).  Their gradients are then added in part order and the optimiser
    updates the parameters, both in parallel over chunks of the parameter vector.
    The number of parts, not the number of threads, fixes the arithmetic, so
    the results are the same for any thread count; with one part they are
    bitwise those of :meth:`jitprop.Trainer.fit` layer by layer in Python.

    Parameters
    ----------
    X : ndarray (N, F), float, C-contiguous
    Y_f : ndarray (N, n_out) float targets for MSE (any (0, n_out) array for cross-entropy)
    Y_i : ndarray (N,) int64 labels for cross-entropy (any (0,) array for MSE)
    order : ndarray (N,), int64, sample order of the epoch
    bs, step0, step1 : int
    table : ndarray (L, 5), int64
        Per dense layer: ``n_in, n_out, activation code, offset of W, offset of b``
        in ``params``/``grads``.
    params, grads, velocity : ndarray (P,), the model's flat vectors
    gx : ndarray (parts - 1, P), gradient vectors of parts 1, 2, ...
        (part 0 writes ``grads``); shape (0, P) for one part
    ws : ndarray (parts * stride,), float workspace, ``stride`` per part.
        Within a part's block, for ``rows = ceil(bs / parts)``: ``hoff[l]``
        (int64 array) is the offset of layer l's output (rows, n_out);
        ``d0``/``d1`` offsets of two gradient buffers of rows*max(width);
        ``row_off`` of (rows,) loss rows; ``xb_off`` of the (rows, F) input
        batch; ``yb_off`` of (rows, n_out) float targets.
    yb_i : ndarray (bs,), int64, label batch buffer
    loss_kind : int, ``LOSS_MSE`` or ``LOSS_XENT``
    lr, momentum, weight_decay : float; nesterov : bool
    clip_norm : float, negative for no clipping
    check : bool
        Stop before applying a step whose loss or gradients are not finite.
    losses : ndarray (>= step1 - step0,), float64, written: each step's loss
    opt_kind : int, ``OPT_SGD`` or ``OPT_ADAM``
        SGD uses ``velocity``, ``momentum``, ``nesterov``; Adam (the update of
        :func:`adam_step`) uses ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``
        (as there), ``adam_steps`` (steps taken before ``step0``), ``beta1``,
        ``beta2``, ``eps``, ``amsgrad``, ``decoupled``.  Both use ``lr`` and
        ``weight_decay``; the other optimiser's arrays may have size 0.
    drop : ndarray (L, 3), int64
        Per dense layer, for the dropout that follows it: its seed, its step
        count before ``step0`` (step ``k`` uses mask ``drop[l, 1] + k - step0``,
        see :func:`dropout_apply`) and the offset of its (rows, n_out) output
        within a part's workspace.
    drop_p : ndarray (L,), float64
        The drop probability after each dense layer; 0 for none.

    Returns
    -------
    int
        The number of steps applied; less than ``step1 - step0`` when a
        non-finite step was found (that step is not applied).
    """
    N = X.shape[0]
    P = params.size
    nparts = gx.shape[0] + 1
    nlast = table[table.shape[0] - 1, 1]
    dt = params.dtype.type
    lr_, mom, wd = dt(lr), dt(momentum), dt(weight_decay)
    nch = (P + _CHUNK - 1) // _CHUNK
    par_update = P >= PAR_MIN
    adam = opt_kind == OPT_ADAM
    for k in range(step0, step1):
        s = k * bs
        m = min(bs, N - s)
        if loss_kind == LOSS_XENT:
            _check_labels(Y_i, order, s, m, nlast)
        rows = (m + nparts - 1) // nparts
        active = (m + rows - 1) // rows  # parts that hold rows (fewer for a short batch)
        if active == 1:
            # np.int64(0), not 0: a literal would compile a second _mlp_part
            _mlp_part(X, Y_f, Y_i, order, s, np.int64(0), m, m, table, params, grads, ws[0:stride],
                      hoff, d0, d1, row_off, xb_off, yb_off, yb_i, loss_kind, drop, drop_p, k - step0)
        else:
            for p in prange(active):
                r0 = p * rows
                r1 = min(m, r0 + rows)
                pw = ws[p * stride:(p + 1) * stride]
                if p == 0:
                    _mlp_part(X, Y_f, Y_i, order, s, r0, r1, m, table, params, grads, pw, hoff,
                              d0, d1, row_off, xb_off, yb_off, yb_i, loss_kind, drop, drop_p, k - step0)
                else:
                    _mlp_part(X, Y_f, Y_i, order, s, r0, r1, m, table, params, gx[p - 1], pw, hoff,
                              d0, d1, row_off, xb_off, yb_off, yb_i, loss_kind, drop, drop_p, k - step0)
        value = _batch_loss(ws, stride, row_off, m, rows, loss_kind, nlast)
        losses[k - step0] = value
        if active > 1 and (check or clip_norm >= 0.0):
            # the whole gradient is needed before the step can be checked or clipped
            if par_update:
                for c in prange(nch):
                    c0 = c * _CHUNK
                    _add_parts_range(grads, gx, active, c0, min(c0 + _CHUNK, P))
            else:
                _add_parts_range(grads, gx, active, 0, P)
            active = 1
        if not _clip_and_check(grads, value, check, clip_norm):
            return k - step0
        # Adam's scalars of this step (unused, and harmless, for SGD)
        a_ss, a_bc2, a_w1, a_b2, a_omb2, a_eps, a_wd, a_decay = _adam_consts(
            params, adam_steps + (k - step0) + 1, lr, beta1, beta2, eps, weight_decay)
        # add the parts' gradients (if not done yet) and update, chunk by chunk
        if par_update:
            for c in prange(nch):
                c0 = c * _CHUNK
                c1 = min(c0 + _CHUNK, P)
                _add_parts_range(grads, gx, active, c0, c1)
                if adam:
                    _adam_range(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, c0, c1, a_ss, a_bc2, a_w1,
                                a_b2, a_omb2, a_eps, a_wd, a_decay, decoupled, amsgrad)
                else:
                    _sgd_range(params, grads, velocity, c0, c1, lr_, mom, wd, nesterov)
        else:
            _add_parts_range(grads, gx, active, 0, P)
            if adam:
                _adam_range(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, 0, P, a_ss, a_bc2, a_w1,
                            a_b2, a_omb2, a_eps, a_wd, a_decay, decoupled, amsgrad)
            else:
                _sgd_range(params, grads, velocity, 0, P, lr_, mom, wd, nesterov)
    return step1 - step0


# --------------------------------------------------------------------------
# Adam and AdamW (appended; see jitprop.optim.Adam)
# --------------------------------------------------------------------------
@njit(**_jit)
def adam_scalars(step, lr, beta1, beta2):
    """``(step_size, sqrt(bias_correction2))`` of Adam step ``step`` (1-based),
    in float64 with the formulas of ``torch.optim.Adam``:
    ``step_size = lr / (1 - beta1**step)``, ``(1 - beta2**step) ** 0.5``."""
    t = np.float64(step)  # a float exponent: pow(), as Python computes beta**step
    bc1 = 1.0 - np.float64(beta1) ** t
    bc2 = 1.0 - np.float64(beta2) ** t
    return np.float64(lr) / bc1, bc2 ** 0.5


@njit(**_jit_exact)
def _adam_range(p, g, m, v, vmax, start, stop, step_size, bc2_sqrt, w1, beta2, omb2, eps, wd, decay,
                decoupled, amsgrad):
    # views from the block start: indices from 0 let the loops vectorise
    p, g, m, v = p[start:stop], g[start:stop], m[start:stop], v[start:stop]
    n = stop - start
    one = p.dtype.type(1)
    half = p.dtype.type(0.5)
    zero = p.dtype.type(0)
    small = w1 < half  # torch's lerp: start + w (end - start), else end - (end - start)(1 - w)
    small2 = omb2 < half
    w1m = w1 - one
    if amsgrad:
        vmax = vmax[start:stop]
    for i in range(n):
        pi = p[i]
        gi = g[i]
        if wd != zero:
            if decoupled:
                pi = pi * decay
            else:
                gi = gi + wd * pi
        mi = m[i]
        if small:
            mi = mi + w1 * (gi - mi)
        else:
            mi = gi + w1m * (gi - mi)
        m[i] = mi
        # beta2 v + (1 - beta2) g^2 as the same two-sided lerp: one possible FMA
        # (a*b + c*d contracts either way round, differently where the fused
        # kernel inlines this loop), and accurate when beta2 is near 0 and g^2 << v
        vi = v[i]
        gg = gi * gi
        if small2:
            vi = vi + omb2 * (gg - vi)
        else:
            vi = gg - (gg - vi) * beta2
        v[i] = vi
        if amsgrad:
            vm = vmax[i]
            if vm > vi or vm != vm:  # NaN from either side propagates, as torch.maximum
                vi = vm
            vmax[i] = vi
        p[i] = pi - step_size * mi / (np.sqrt(vi) / bc2_sqrt + eps)


@njit(**_jit)
def _adam_consts(p, step, lr, beta1, beta2, eps, weight_decay):
    # the scalars of one step, formed in float64 as torch does, then in p's dtype
    dt = p.dtype.type
    ss, bs2 = adam_scalars(step, lr, beta1, beta2)
    return (dt(ss), dt(bs2), dt(1.0 - beta1), dt(beta2), dt(1.0 - beta2), dt(eps), dt(weight_decay),
            dt(1.0 - lr * weight_decay))


@njit(**_jit)
def adam_step_serial(p, g, m, v, vmax, step, lr, beta1, beta2, eps, weight_decay, amsgrad, decoupled):
    """:func:`adam_step` without a parallel loop (the same arithmetic; what
    that kernel runs below ``PAR_MIN`` parameters)."""
    step_size, bc2_sqrt, w1, b2, omb2, eps_, wd, decay = _adam_consts(p, step, lr, beta1, beta2, eps,
                                                                       weight_decay)
    _adam_range(p, g, m, v, vmax, 0, p.size, step_size, bc2_sqrt, w1, b2, omb2, eps_, wd, decay,
                decoupled, amsgrad)


@njit(**_pjit)
def adam_step(p, g, m, v, vmax, step, lr, beta1, beta2, eps, weight_decay, amsgrad, decoupled):
    """One Adam (``decoupled=False``) or AdamW (``decoupled=True``) update in
    place, with the arithmetic of ``torch.optim.Adam`` / ``AdamW``
    (single-tensor path)::

        p *= 1 - lr * weight_decay            (AdamW)
        g  = grad + weight_decay * p          (Adam)
        m  = lerp(m, g, 1 - beta1)
        v  = beta2 * v + (1 - beta2) * g * g  (computed as v + (1 - beta2) (g*g - v))
        vmax = max(vmax, v)                   (amsgrad; then v := vmax)
        p -= step_size * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

    with ``step_size = lr / (1 - beta1**step)``.  The second moment differs
    from torch's in the last bits (float64 parameters agree to 1e-12 after 50
    steps, tested); its form keeps the fused and per-layer paths bitwise equal.

    Parameters
    ----------
    p : ndarray (n,), float32 or float64 (updated)
    g : ndarray (n,), same dtype (read, not modified)
    m, v : ndarray (n,), same dtype, first and second moments (zero before step 1; updated)
    vmax : ndarray (n,) when amsgrad (updated), else any 1-D array of the dtype (unused)
    step : int, the number of this step, 1 for the first
    lr, beta1, beta2, eps, weight_decay : float
        Scalars derived from them are formed in float64, then cast to the dtype of ``p``.
    amsgrad, decoupled : bool
    """
    step_size, bc2_sqrt, w1, b2, omb2, eps_, wd, decay = _adam_consts(p, step, lr, beta1, beta2, eps,
                                                                       weight_decay)
    n = p.size
    if n < PAR_MIN:
        _adam_range(p, g, m, v, vmax, 0, n, step_size, bc2_sqrt, w1, b2, omb2, eps_, wd, decay,
                    decoupled, amsgrad)
    else:
        for c in prange(_nchunks(n)):
            s = c * _CHUNK
            _adam_range(p, g, m, v, vmax, s, min(s + _CHUNK, n), step_size, bc2_sqrt, w1, b2, omb2, eps_,
                        wd, decay, decoupled, amsgrad)


# --------------------------------------------------------------------------
# dropout with a counter-based mask (appended; see jitprop.Dropout)
# --------------------------------------------------------------------------
@njit(cache=True, nogil=True, inline="always")
def _mix64(z):
    # splitmix64's finaliser: a bijection of uint64 with full avalanche
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(**_jit)
def dropout_key(seed, step):
    """The 64-bit key of the mask of call ``step`` of a dropout layer seeded
    ``seed`` (both non-negative integers below 2**63)."""
    return _mix64(_mix64(np.uint64(seed) ^ np.uint64(0x5851F42D4C957F2D)) + np.uint64(step))


@njit(**_jit)
def _dropout_span(x, out, key, threshold, scale, first):
    # element i (flat index first + i) is kept iff the top 53 bits of
    # mix64(key + (first + i + 1) * golden) are >= threshold: a function of
    # (seed, step, index) alone
    golden = np.uint64(0x9E3779B97F4A7C15)
    zero = x.dtype.type(0)
    base = key + np.uint64(first) * golden
    for i in range(x.size):
        h = _mix64(base + np.uint64(i + 1) * golden) >> np.uint64(11)
        out[i] = x[i] * scale if h >= threshold else zero


@njit(**_jit)
def _dropout_consts(x, p, seed, step):
    key = dropout_key(seed, step)
    th = np.uint64(np.rint(np.float64(p) * 9007199254740992.0))  # p * 2**53, exact
    return key, th, x.dtype.type(1.0 / (1.0 - np.float64(p)))


@njit(**_jit)
def dropout_apply_serial(x, out, p, seed, step):
    """:func:`dropout_apply` without a parallel loop (the same mask and
    arithmetic; what that kernel runs below ``PAR_MIN`` elements)."""
    key, th, sc = _dropout_consts(x, p, seed, step)
    _dropout_span(x.reshape(x.size), out.reshape(out.size), key, th, sc, 0)


@njit(**_pjit)
def dropout_apply(x, out, p, seed, step):
    """Inverted dropout: ``out = x / (1 - p)`` where the mask keeps an
    element, else 0, for C-contiguous ``x``/``out`` of one shape and dtype
    (``out`` may be ``x``).  The forward pass applies it to the input; the
    backward pass applies it, with the same ``seed`` and ``step``, to the
    output gradient.

    Element ``i`` (flat index) is kept iff the top 53 bits of
    ``mix64(dropout_key(seed, step) + (i + 1) * 0x9E3779B97F4A7C15)`` are at
    least ``round(p * 2**53)``: a function of (seed, step, i) alone, so the
    mask never depends on the thread count or the dtype, and nothing is stored.

    Parameters
    ----------
    x, out : ndarray, float32 or float64
    p : float in [0, 1), the drop probability
    seed, step : int in [0, 2**63)
        The layer's seed and the number of its call (one mask per call).
    """
    key, th, sc = _dropout_consts(x, p, seed, step)
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    n = xf.size
    if n < PAR_MIN:
        _dropout_span(xf, of, key, th, sc, 0)
    else:
        for c in prange(_nchunks(n)):
            s = c * _CHUNK
            e = min(s + _CHUNK, n)
            _dropout_span(xf[s:e], of[s:e], key, th, sc, s)
