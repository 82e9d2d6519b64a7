"""Numba-compiled embedding kernels: row gather and its race-free scatter-add.

``out[i] = W[indices[i]]``; backward ``dW = 0; dW[indices[i]] += dy[i]``.
Arrays are caller-provided and C-contiguous; ``indices`` (N,) is an integer
array whose values lie in ``[0, V)`` (checked in Python by the entry points
in :mod:`jitprop.kernels`, not here).  Nothing is allocated.
"""

from numba import njit, prange

__all__ = ["embedding_forward", "embedding_backward"]

# Columns per task of the backward scatter: each task owns a column block of
# dW, so no two threads ever add into the same element.
_COLS = 16


@njit(cache=True, parallel=True, error_model="numpy")
def embedding_forward(indices, W, out):
    """``out[i, :] = W[indices[i], :]``: indices (N,) int, W (V, D), out (N, D)."""
    N = indices.shape[0]
    D = W.shape[1]
    for i in prange(N):
        src = W[indices[i]]
        dst = out[i]
        for j in range(D):
            dst[j] = src[j]


@njit(cache=True, parallel=True, error_model="numpy")
def embedding_backward(indices, dy, dW):
    """``dW = 0``, then ``dW[indices[i], :] += dy[i, :]`` for i = 0, 1, ... in order.

    indices (N,) int, dy (N, D), dW (V, D), overwritten.  The work is split
    over column blocks of dW: every element of dW is added to by one thread,
    in the order of ``indices``, so repeated indices never race and the
    result does not depend on the number of threads.
    """
    N = indices.shape[0]
    V, D = dW.shape
    zero = dW.dtype.type(0)
    for r in prange(V):
        for j in range(D):
            dW[r, j] = zero
    for k in prange((D + _COLS - 1) // _COLS):
        j0 = k * _COLS
        j1 = min(j0 + _COLS, D)
        for i in range(N):
            row = dW[indices[i]]
            src = dy[i]
            for j in range(j0, j1):
                row[j] += src[j]
