"""Finite-difference gradient checks, the way jitprop's own tests verify it.

Use them on float64 models.  The default is the fourth-order central
difference ``(f(x-2h) - 8 f(x-h) + 8 f(x+h) - f(x+2h)) / (12 h)`` with
``h = 1e-3``: truncation error of order ``h**4 ~ 1e-12`` and rounding error
of order ``1e-16 * |L| / h ~ 1e-13``, so even gradient entries far smaller
than the loss come out with 6 or more correct digits (the plain two-point
central difference, ``order=2``, loses them to rounding).  In float32 no
step gives enough digits.
"""

import numpy as np

__all__ = ["numerical_gradient", "relative_error", "gradcheck"]


def relative_error(a, b):
    """Norm-wise relative error ``||a - b|| / (||a|| + ||b||)`` (0 if both are 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    den = np.linalg.norm(a) + np.linalg.norm(b)
    if den == 0.0:
        return 0.0
    return float(np.linalg.norm(a - b) / den)


def numerical_gradient(f, x, eps=1e-3, indices=None, order=4):
    """Central-difference gradient of a scalar function with respect to an array.

    Parameters
    ----------
    f : callable () -> float
        Recomputes the scalar from the current contents of ``x``.
    x : ndarray
        Perturbed in place, one element at a time, and restored exactly.
    eps : float
        Step h.
    indices : iterable of flat indices, optional
        Only these elements (others are left 0 in the result); all by default.
    order : {4, 2}
        4: ``(f(x-2h) - 8 f(x-h) + 8 f(x+h) - f(x+2h)) / (12 h)``;
        2: ``(f(x+h) - f(x-h)) / (2 h)``.

    Returns
    -------
    ndarray, shape and dtype of ``x``
    """
    if order not in (2, 4):
        raise ValueError(f"order must be 2 or 4, got {order!r}")
    flat = x.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("x must be contiguous so it can be perturbed in place")
    grad = np.zeros(x.size, dtype=np.float64)

    def at(i, old, k):
        flat[i] = old + k * eps
        return f()

    for i in (range(x.size) if indices is None else indices):
        old = flat[i]
        if order == 2:
            grad[i] = (at(i, old, 1) - at(i, old, -1)) / (2.0 * eps)
        else:
            # differences first: exactly 0 when f does not depend on x[i]
            d1 = at(i, old, 1) - at(i, old, -1)
            d2 = at(i, old, 2) - at(i, old, -2)
            grad[i] = (8.0 * d1 - d2) / (12.0 * eps)
        flat[i] = old
    return grad.reshape(x.shape).astype(x.dtype)


def gradcheck(model, loss, x, target, eps=1e-3, check_input=True, max_entries=None, seed=0, order=4):
    """Compare a model's backward pass with central finite differences.

    Parameters
    ----------
    model : Sequential (use dtype float64)
    loss : Loss
    x : ndarray (batch, *input_shape), the model's dtype
    target : targets for ``loss``
    eps : float
        Finite-difference step (see :func:`numerical_gradient`).
    check_input : bool
        Also check dL/dx.
    max_entries : int or None
        Check at most this many randomly chosen entries per array (all when None).
    seed : int
        Seed for choosing the entries.
    order : {4, 2}
        Order of the central difference.

    Returns
    -------
    dict
        ``"layer{i}.{name}" -> relative error`` for every parameter (and
        ``"input"``), computed over the checked entries.
    """
    rng = np.random.default_rng(seed)
    x = np.array(x, dtype=model.input_dtype, order="C")
    if check_input and x.dtype.kind in "iu":
        raise ValueError("the model takes integer input, which has no gradient: pass check_input=False")

    def f():
        return loss.forward(model.forward(x), target)

    f()
    dx = model.backward(loss.backward(), need_input_grad=check_input)
    analytic = {}
    for li, layer in enumerate(model.layers):
        for name, g in layer.grads.items():
            analytic[(li, name)] = g.copy()
    if check_input:
        analytic["input"] = dx.copy()

    def pick(a):
        if max_entries is None or a.size <= max_entries:
            return None
        return rng.choice(a.size, size=max_entries, replace=False)

    report = {}
    for li, layer in enumerate(model.layers):
        for name, p in layer.params.items():
            idx = pick(p)
            num = numerical_gradient(f, p, eps, idx, order)
            ana = analytic[(li, name)]
            if idx is not None:
                num, ana = num.reshape(-1)[idx], ana.reshape(-1)[idx]
            report[f"layer{li}.{name}"] = relative_error(ana, num)
    if check_input:
        idx = pick(x)
        num = numerical_gradient(f, x, eps, idx, order)
        ana = analytic["input"]
        if idx is not None:
            num, ana = num.reshape(-1)[idx], ana.reshape(-1)[idx]
        report["input"] = relative_error(ana, num)
    return report
