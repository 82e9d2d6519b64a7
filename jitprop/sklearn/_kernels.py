"""Compiled training and prediction kernels with scikit-learn's MLP arithmetic.

scikit-learn's ``MLPClassifier`` / ``MLPRegressor`` differ from jitprop's
layer path in ways that change every step, so they get kernels of their own:
the flat parameter vector is packed as scikit-learn packs it (all weight
matrices, then all intercepts), the L2 penalty ``alpha`` applies to weights
only and is divided by the batch's sample-weight sum, losses are
scikit-learn's (half squared error, log loss with clipped probabilities,
binary log loss, Poisson deviance), the output delta is ``(p - y) * w`` for
every loss/link pair, and the updates are scikit-learn's SGD (velocity
carries the learning rate) and Adam (epsilon added to ``sqrt(v)`` before the
bias correction, which sits in the step size).

One call of :func:`train_epoch` runs every minibatch of an epoch.  Each batch
is cut into parts of consecutive rows that run forward, loss and backward at
the same time (``prange`` over parts, each with its own workspace and
gradient vector, BLAS on one thread); their gradients are added in part order
and the update runs in parallel over chunks of the parameter vector.  The
number of parts is chosen by the caller from the batch size and the machine
(never from the current thread count), so results do not depend on
``jitprop.set_num_threads``.  Inputs may be dense rows or CSR arrays; sparse
rows are scattered into a dense row block first.

All compiled functions calling each other are in this module (Numba's cache),
but for the vectorised sigmoid / tanh / exp of :mod:`jitprop.kernels._fmath`,
whose source is part of every jitprop cache key; no cached function here
calls a parallel function of another module.
"""

import numpy as np
from numba import njit, prange, types
from numba.core.extending import intrinsic

from ..kernels._fmath import exp_nonpos, sigmoid, tanh

#: Activation codes (hidden layers and output layer).
ACT_IDENTITY = 0
ACT_RELU = 1
ACT_LOGISTIC = 2
ACT_TANH = 3
ACT_SOFTMAX = 4
ACT_EXP = 5

#: Loss codes.
LOSS_SQUARED = 0
LOSS_LOG = 1
LOSS_BINARY_LOG = 2
LOSS_POISSON = 3

#: Update codes of :func:`train_epoch`; ``UPDATE_NONE`` leaves the scaled
#: gradient in ``grads`` (the L-BFGS objective).
UPDATE_NONE = -1
UPDATE_SGD = 0
UPDATE_ADAM = 1

#: A part processes its rows in blocks of at most this many rows.
BLOCK_ROWS = 1024
#: Workspace offsets (index into the ``offs`` array).
OFF_XB, OFF_D0, OFF_D1, OFF_RL, OFF_YB, OFF_WB, OFF_TG = range(7)

_CHUNK = 8192  # parameter-update chunk of the parallel loop
_PAR_MIN = 32768

# error_model="numpy": a division by zero gives inf/nan as in NumPy (and so
# in scikit-learn) instead of a per-element check that keeps loops scalar
_jit = dict(cache=True, nogil=True, fastmath={"reassoc", "contract"}, error_model="numpy")
_pjit = dict(_jit, parallel=True)


@intrinsic
def _sqrt(typingctx, x):
    """IEEE square root as LLVM's intrinsic (vectorisable; Numba calls libm's
    ``sqrt``, which must set errno and so stays scalar).  Same results."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        fn = builder.module.declare_intrinsic("llvm.sqrt", [context.get_value_type(sig.args[0])])
        return builder.call(fn, args)

    return x(x), codegen


@njit(**_jit)
def _gather(X, xdata, xind, xptr, sparse, order, s, m, xb):
    """``xb[i] = X[order[s + i]]`` for ``i < m`` (dense or CSR input; CSR
    duplicates add up, as in scipy)."""
    F = xb.shape[1]
    zero = xb.dtype.type(0)
    for i in range(m):
        r = order[s + i]
        row = xb[i]
        if sparse:
            for j in range(F):
                row[j] = zero
            for k in range(xptr[r], xptr[r + 1]):
                row[xind[k]] += xdata[k]
        else:
            xr = X[r]
            for j in range(F):
                row[j] = xr[j]


@njit(**_jit)
def _bias_act(row, b, act):
    """``row = f(row + b)`` in place."""
    n = row.size
    dt = row.dtype.type
    one = dt(1)
    zero = dt(0)
    if act == ACT_RELU:
        for j in range(n):
            v = row[j] + b[j]
            row[j] = zero if v < zero else v
    elif act == ACT_LOGISTIC:
        for j in range(n):
            row[j] = sigmoid(row[j] + b[j], one)
    elif act == ACT_TANH:
        for j in range(n):
            row[j] = tanh(row[j] + b[j])
    elif act == ACT_EXP:
        for j in range(n):
            row[j] = np.exp(row[j] + b[j])
    elif act == ACT_SOFTMAX:
        mx = row[0] + b[0]
        for j in range(n):
            v = row[j] + b[j]
            row[j] = v
            if v > mx:
                mx = v
        s = zero
        for j in range(n):
            e = exp_nonpos(row[j] - mx)
            row[j] = e
            s += e
        for j in range(n):
            row[j] /= s
    else:
        for j in range(n):
            row[j] += b[j]


@njit(**_jit)
def _act_deriv(a, d, act):
    """``d *= f'(z)`` written with the saved output ``a = f(z)`` (flat views)."""
    n = a.size
    dt = a.dtype.type
    one = dt(1)
    zero = dt(0)
    if act == ACT_RELU:
        for i in range(n):
            ai = a[i]
            di = d[i]
            d[i] = zero if ai == zero else di
    elif act == ACT_LOGISTIC:
        for i in range(n):
            ai = a[i]
            d[i] = d[i] * ai * (one - ai)
    elif act == ACT_TANH:
        for i in range(n):
            ai = a[i]
            d[i] = d[i] * (one - ai * ai)


@njit(**_jit)
def _forward(xb, m, table, params, pw, hoff, hact, oact):
    """Forward pass of ``m`` rows in ``xb``; returns the output block view."""
    L = table.shape[0]
    h_prev = xb
    for l in range(L):
        nin, nout, oW, ob = table[l, 0], table[l, 1], table[l, 2], table[l, 3]
        W = params[oW:oW + nin * nout].reshape((nin, nout))
        b = params[ob:ob + nout]
        h = pw[hoff[l]:hoff[l] + m * nout].reshape((m, nout))
        np.dot(h_prev, W, h)
        act = hact if l < L - 1 else oact
        for i in range(m):
            _bias_act(h[i], b, act)
        h_prev = h
    return h_prev


@njit(**_jit)
def _loss_delta(p, yb, wb, use_sw, m, loss_kind, eps, delta):
    """Row losses (weighted, float64, summed) and ``delta = (p - y) * w``."""
    K = p.shape[1]
    dt = p.dtype.type
    one = dt(1)
    zero = dt(0)
    lo = dt(eps)
    hi = one - lo
    total = 0.0
    for i in range(m):
        acc = 0.0
        for k in range(K):
            pk = p[i, k]
            yk = yb[i, k]
            delta[i, k] = pk - yk
            if loss_kind == LOSS_SQUARED:
                d = np.float64(yk - pk)
                acc += d * d
            elif loss_kind == LOSS_LOG:
                if yk != zero:
                    q = min(max(pk, lo), hi)
                    acc -= np.float64(yk * np.log(q))
            elif loss_kind == LOSS_BINARY_LOG:
                q = min(max(pk, lo), hi)
                if yk != zero:
                    acc -= np.float64(yk * np.log(q))
                if yk != one:
                    acc -= np.float64((one - yk) * np.log(one - q))
            else:
                if yk != zero:
                    acc += np.float64(yk * np.log(yk / pk))
                acc += np.float64(pk - yk)
        if use_sw:
            w = wb[i]
            acc *= np.float64(w)
            for k in range(K):
                delta[i, k] *= w
        total += acc
    return total


@njit(**_jit)
def _backward(xb, m, table, params, g, pw, hoff, d0, d1, hact):
    """Backward pass from the output delta (in ``pw`` at ``d0``): raw sums
    ``x.T @ delta`` and ``delta.sum(0)`` into ``g`` (no penalty, no scaling)."""
    L = table.shape[0]
    K = table[L - 1, 1]
    dcur = pw[d0:d0 + m * K].reshape((m, K))
    use0 = False
    for l in range(L - 1, -1, -1):
        nin, nout, oW, ob = table[l, 0], table[l, 1], table[l, 2], table[l, 3]
        W = params[oW:oW + nin * nout].reshape((nin, nout))
        dW = g[oW:oW + nin * nout].reshape((nin, nout))
        db = g[ob:ob + nout]
        if l == 0:
            x_in = xb
        else:
            x_in = pw[hoff[l - 1]:hoff[l - 1] + m * nin].reshape((m, nin))
        np.dot(x_in.T, dcur, dW)
        zero = db.dtype.type(0)
        for j in range(nout):
            db[j] = zero
        for i in range(m):
            row = dcur[i]
            for j in range(nout):
                db[j] += row[j]
        if l > 0:
            o = d0 if use0 else d1
            dprev = pw[o:o + m * nin].reshape((m, nin))
            np.dot(dcur, W.T, dprev)
            _act_deriv(x_in.reshape(m * nin), dprev.reshape(m * nin), hact)
            dcur = dprev
            use0 = not use0


@njit(**_jit)
def _part(X, xdata, xind, xptr, sparse, Y, sw, use_sw, order, s, r0, r1, table, params, g, pw,
          offs, hoff, rows_ws, hact, oact, loss_kind, eps):
    """Loss sum and raw gradient sums of batch rows ``r0 .. r1-1`` (the
    batch's first sample is ``order[s]``), in blocks of ``rows_ws`` rows;
    the gradient goes to ``g`` (the first block writes, later ones add)."""
    F = X.shape[1]
    L = table.shape[0]
    K = table[L - 1, 1]
    P = params.size
    tg = pw[offs[OFF_TG]:offs[OFF_TG] + P]
    total = 0.0
    c0 = r0
    first = True
    while c0 < r1:
        m = min(rows_ws, r1 - c0)
        xb = pw[offs[OFF_XB]:offs[OFF_XB] + m * F].reshape((m, F))
        _gather(X, xdata, xind, xptr, sparse, order, s + c0, m, xb)
        yb = pw[offs[OFF_YB]:offs[OFF_YB] + m * K].reshape((m, K))
        wb = pw[offs[OFF_WB]:offs[OFF_WB] + m]
        for i in range(m):
            r = order[s + c0 + i]
            for k in range(K):
                yb[i, k] = Y[r, k]
            if use_sw:
                wb[i] = sw[r]
        out = _forward(xb, m, table, params, pw, hoff, hact, oact)
        delta = pw[offs[OFF_D0]:offs[OFF_D0] + m * K].reshape((m, K))
        total += _loss_delta(out, yb, wb, use_sw, m, loss_kind, eps, delta)
        if first:
            _backward(xb, m, table, params, g, pw, hoff, offs[OFF_D0], offs[OFF_D1], hact)
            first = False
        else:
            _backward(xb, m, table, params, tg, pw, hoff, offs[OFF_D0], offs[OFF_D1], hact)
            for i in range(P):
                g[i] += tg[i]
        c0 += m
    return total


@njit(**_jit)
def _update_range(params, grads, gx, active, c0, c1, ncoef, alpha, sw_sum, update, lr, mom,
                  nesterov, b1, b2, eps, lr_t, vel, m1, m2):
    """Add the parts' gradients, scale (penalty on weights), and update
    ``params[c0:c1]``; with ``UPDATE_NONE`` the scaled gradient stays in ``grads``."""
    # views from c0: loops from index 0 vectorise (a runtime start index
    # makes Numba allow for negative indices)
    n = c1 - c0
    p = params[c0:c1]
    g = grads[c0:c1]
    dt = params.dtype.type
    a = dt(alpha)
    sws = dt(sw_sum)
    one = dt(1)
    for q in range(active - 1):
        xq = gx[q, c0:c1]
        for i in range(n):
            g[i] += xq[i]
    nw = min(max(ncoef - c0, 0), n)  # the first nw entries are weights
    for i in range(nw):
        g[i] = (g[i] + a * p[i]) / sws
    gb = g[nw:]
    for i in range(n - nw):
        gb[i] = gb[i] / sws
    if update == UPDATE_SGD:
        v = vel[c0:c1]
        if nesterov:
            for i in range(n):
                gi = g[i]
                vi = mom * v[i] - lr * gi
                v[i] = vi
                p[i] += mom * vi - lr * gi
        else:
            for i in range(n):
                vi = mom * v[i] - lr * g[i]
                v[i] = vi
                p[i] += vi
    elif update == UPDATE_ADAM:
        mv = m1[c0:c1]
        vv = m2[c0:c1]
        c1b = one - b1
        c2b = one - b2
        for i in range(n):
            gi = g[i]
            mv[i] = b1 * mv[i] + c1b * gi
            vv[i] = b2 * vv[i] + c2b * (gi * gi)
        for i in range(n):
            p[i] += -lr_t * mv[i] / (_sqrt(vv[i]) + eps)


@njit(**_jit)
def _sum_squares(x):
    s = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        s += v * v
    return s


@njit(**_pjit)
def train_epoch(X, xdata, xind, xptr, sparse, Y, sw, use_sw, order, bs, table, ncoef, hact, oact,
                loss_kind, alpha, eps_clip, params, grads, gx, ws, stride, offs, hoff, rows_ws,
                part_loss, update, lr, momentum, nesterov, beta_1, beta_2, epsilon, t0, vel, m1, m2):
    """Run every minibatch of ``order`` (batches of ``bs`` rows) with
    scikit-learn's loss, penalty and update; returns ``(sum over batches of
    batch loss * batch rows, Adam step count after the epoch)``.

    Parameters
    ----------
    X : ndarray (N, F) dense rows, or (0, F) when ``sparse``
    xdata, xind, xptr : CSR arrays (data in X's dtype, int64 indices and
        indptr) when ``sparse``, else empty
    Y : ndarray (N, K) float targets (one-hot / label indicators for classifiers)
    sw : ndarray (N,) sample weights, read when ``use_sw``
    order : ndarray (n,) int64, the samples of the epoch in order
    table : ndarray (L, 4) int64: n_in, n_out, offset of W, offset of b
    ncoef : int, number of weights (they come first in ``params``)
    hact, oact, loss_kind : int codes
    alpha : float, L2 penalty; eps_clip : float, probability clip of the log losses
    params, grads : ndarray (P,) flat vectors (``grads`` written)
    gx : ndarray (parts - 1, P), gradients of parts 1, 2, ...
    ws : ndarray (parts * stride,), per-part workspace; ``offs`` (7,) int64
        offsets within a part (see ``OFF_*``), ``hoff`` (L,) layer outputs,
        each block ``rows_ws`` rows
    part_loss : ndarray (parts,), float64 scratch
    update : ``UPDATE_SGD``, ``UPDATE_ADAM`` or ``UPDATE_NONE``
    lr, momentum, nesterov : SGD; beta_1, beta_2, epsilon, t0 : Adam (``lr``
        is then the initial learning rate and ``t0`` the steps done so far)
    vel, m1, m2 : ndarray (P,) optimizer state (updated)
    """
    N = order.size
    P = params.size
    nparts = gx.shape[0] + 1
    L = table.shape[0]
    K = table[L - 1, 1]
    dt = params.dtype.type
    lr_, mom, b1, b2, eps = dt(lr), dt(momentum), dt(beta_1), dt(beta_2), dt(epsilon)
    nch = (P + _CHUNK - 1) // _CHUNK
    par_update = P >= _PAR_MIN
    acc = 0.0
    t = t0
    s = 0
    while s < N:
        m = min(bs, N - s)
        rows = (m + nparts - 1) // nparts
        active = (m + rows - 1) // rows
        if active == 1:
            part_loss[0] = _part(X, xdata, xind, xptr, sparse, Y, sw, use_sw, order, s, np.int64(0), m,
                                 table, params, grads, ws[0:stride], offs, hoff, rows_ws, hact, oact,
                                 loss_kind, eps_clip)
        else:
            for p in prange(active):
                r0 = p * rows
                r1 = min(m, r0 + rows)
                pw = ws[p * stride:(p + 1) * stride]
                if p == 0:
                    part_loss[p] = _part(X, xdata, xind, xptr, sparse, Y, sw, use_sw, order, s, r0, r1,
                                         table, params, grads, pw, offs, hoff, rows_ws, hact, oact,
                                         loss_kind, eps_clip)
                else:
                    part_loss[p] = _part(X, xdata, xind, xptr, sparse, Y, sw, use_sw, order, s, r0, r1,
                                         table, params, gx[p - 1], pw, offs, hoff, rows_ws, hact, oact,
                                         loss_kind, eps_clip)
        total = 0.0
        for p in range(active):
            total += part_loss[p]
        if use_sw:
            sw_sum = 0.0
            for i in range(m):
                sw_sum += np.float64(sw[order[s + i]])
        else:
            sw_sum = np.float64(m)
        value = total / sw_sum
        if loss_kind == LOSS_SQUARED:
            value = 0.5 * value / K
        if alpha != 0.0:
            value += 0.5 * alpha * _sum_squares(params[:ncoef]) / sw_sum
        acc += value * m
        lr_t = lr_
        if update == UPDATE_ADAM:
            t += 1
            lr_t = dt(lr * np.sqrt(1.0 - beta_2 ** t) / (1.0 - beta_1 ** t))
        if par_update:
            for c in prange(nch):
                c0 = c * _CHUNK
                _update_range(params, grads, gx, active, c0, min(c0 + _CHUNK, P), ncoef, alpha, sw_sum,
                              update, lr_, mom, nesterov, b1, b2, eps, lr_t, vel, m1, m2)
        else:
            _update_range(params, grads, gx, active, 0, P, ncoef, alpha, sw_sum, update, lr_, mom,
                          nesterov, b1, b2, eps, lr_t, vel, m1, m2)
        s += m
    return acc, t


@njit(**_pjit)
def predict(X, xdata, xind, xptr, sparse, order, table, params, hact, oact, ws, stride, offs, hoff,
            rows_ws, nparts, out):
    """Network output of the rows ``order`` into ``out`` (n, K), in
    ``nparts`` parts of consecutive rows running at the same time."""
    N = order.size
    F = table[0, 0]
    rows = (N + nparts - 1) // nparts
    active = (N + rows - 1) // rows
    for p in prange(active):
        pw = ws[p * stride:(p + 1) * stride]
        c0 = p * rows
        r1 = min(N, c0 + rows)
        while c0 < r1:
            m = min(rows_ws, r1 - c0)
            xb = pw[offs[OFF_XB]:offs[OFF_XB] + m * F].reshape((m, F))
            _gather(X, xdata, xind, xptr, sparse, order, c0, m, xb)
            o = _forward(xb, m, table, params, pw, hoff, hact, oact)
            for i in range(m):
                dst = out[c0 + i]
                src = o[i]
                for k in range(dst.size):
                    dst[k] = src[k]
            c0 += m
