"""Weight initialisers with the formulas of ``torch.nn.init``.

jitprop stores a weight as ``(fan_in, fan_out)`` (``y = x @ W``), the
transpose of torch's ``(fan_out, fan_in)``; fans are counted as torch counts
them for the transposed tensor.
"""

import numpy as np

__all__ = ["INITS", "check_init", "init_weight"]

#: Names accepted by ``Dense(init=...)`` and ``LSTM(init=...)``; "torch" is
#: each layer's own default (PyTorch's default for nn.Linear / nn.LSTM).
INITS = ("torch", "xavier_uniform", "he_uniform", "orthogonal")


def check_init(init):
    """``init`` if it is one of :data:`INITS`, else a ValueError naming it."""
    if not isinstance(init, str) or init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return init


def init_weight(rng, kind, fan_in, fan_out, dtype):
    """A ``(fan_in, fan_out)`` weight drawn from ``rng`` (a numpy Generator).

    - ``"xavier_uniform"``: ``U(-b, b)``, ``b = sqrt(6 / (fan_in + fan_out))``
      (``torch.nn.init.xavier_uniform_``, gain 1);
    - ``"he_uniform"``: ``U(-b, b)``, ``b = sqrt(6 / fan_in)``
      (``torch.nn.init.kaiming_uniform_(nonlinearity="relu")``, mode fan_in);
    - ``"orthogonal"``: torch's ``orthogonal_`` of the ``(fan_out, fan_in)``
      tensor, transposed: QR of a standard normal matrix with the signs of R's
      diagonal folded into Q, so orthonormal rows or columns, whichever are fewer.
    """
    if kind == "xavier_uniform":
        b = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-b, b, (fan_in, fan_out)).astype(dtype)
    if kind == "he_uniform":
        b = np.sqrt(6.0 / fan_in)
        return rng.uniform(-b, b, (fan_in, fan_out)).astype(dtype)
    if kind == "orthogonal":
        rows, cols = fan_out, fan_in  # torch's layout
        a = rng.standard_normal((rows, cols))
        if rows < cols:
            a = a.T
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return np.ascontiguousarray(q.T).astype(dtype)  # back to (fan_in, fan_out)
    raise ValueError(f"unknown initialiser {kind!r}")
