"""Numba-compiled embedding kernels: row gather and its race-free scatter-add.

``out[i] = W[indices[i]]``; backward ``dW = 0; dW[indices[i]] += dy[i]``.
Arrays are caller-provided and C-contiguous; ``indices`` (N,) is an integer
array whose values lie in ``[0, V)`` (checked in Python by the entry points
in :mod:`jitprop.kernels`, not here).  Nothing is allocated.
"""

from numba import njit, prange

__all__ = ["embedding_forward", "embedding_backward"]

# The backward pass splits the rows of dW into at most this many tasks.  Each
# task scans all the indices, so more tasks cost more scanning; a fixed count
# (not the thread count, which a cached function cannot read) keeps the code
# cacheable, and the result is the same for any count.
_TASKS = 32


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

    indices (N,) int, dy (N, D), dW (V, D), overwritten.  The rows of dW are
    partitioned by embedding index among the tasks: each task zeroes its rows
    and scans all of ``indices`` in order, adding the rows of ``dy`` whose
    index it owns.  So two threads never add into the same row, and every
    row receives its additions in index order whatever the number of tasks
    (and threads): the result does not depend on the thread count.
    """
    N = indices.shape[0]
    V, D = dW.shape
    zero = dW.dtype.type(0)
    if V == 0:
        return
    tasks = min(V, _TASKS)
    rows = (V + tasks - 1) // tasks
    for p in prange(tasks):
        v0 = p * rows
        v1 = min(V, v0 + rows)
        for v in range(v0, v1):
            for j in range(D):
                dW[v, j] = zero
        for i in range(N):
            v = indices[i]
            if v0 <= v < v1:
                row = dW[v]
                src = dy[i]
                for j in range(D):
                    row[j] += src[j]
