"""Argument checks shared by the public Python entry points.

Compiled kernels do not check bounds, so every array that crosses from Python
into a kernel is checked here first: type, dtype, contiguity and shape.  The
messages name the argument, what was expected and what was given.
"""

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_dtype(dtype):
    """Return ``dtype`` as a NumPy dtype, raising unless float32/float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def check_array(name, a, *, dtype=None, ndim=None, shape=None, writable=False):
    """Check one float array argument of a kernel.

    Parameters
    ----------
    name : str
        Argument name used in error messages.
    a : object
        The argument.
    dtype : numpy dtype, optional
        Required dtype; if None, float32 or float64 is required.
    ndim : int, optional
        Required number of dimensions.
    shape : tuple, optional
        Required shape.
    writable : bool
        Whether the kernel writes into ``a``.

    Returns
    -------
    ndarray
        ``a`` itself (never a copy).
    """
    if not isinstance(a, np.ndarray) or isinstance(a, np.ma.MaskedArray):
        # masked arrays: the compiled code rejects them (and would ignore the mask)
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if dtype is None:
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    elif a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)} (like the other arrays), got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {a.shape}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} is written by the kernel but is read-only")
    return a


def check_layer_input(layer, x, n_in, expected, ndim=None, convert_hint=True):
    """Check the input of ``layer``'s forward pass: an ndarray with ``n_in``
    features on its last axis and at least 2 axes (exactly ``ndim``, each of
    length >= 1, when given), of the layer's dtype, C-contiguous.  Messages
    name the layer's class; ``expected`` (formatted with ``n_in``) says the
    shape in them."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{type(layer).__name__}: input must be a numpy.ndarray, got {type(x).__name__}")
    shape = x.shape
    if (x.ndim < 2 if ndim is None else (x.ndim != ndim or 0 in shape)) or shape[-1] != n_in:
        raise ValueError(f"{type(layer).__name__}: input must have shape {expected.format(n_in)}, got {shape}")
    if x.dtype != layer.dtype:
        dt = layer.dtype
        hint = f"; convert once with x.astype(np.{dt})" if convert_hint else ""
        raise TypeError(f"{type(layer).__name__}: input dtype must be {dt} (the layer's dtype), got {x.dtype}{hint}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{type(layer).__name__}: input must be C-contiguous")
    return x


def check_output_grad(layer, dy, dtype, shape):
    """Check dL/d(output) given to ``layer``'s backward pass: a C-contiguous
    ndarray of ``dtype`` and ``shape`` (messages name the layer's class)."""
    try:  # (no isinstance call: this runs at every backward step)
        ok = dy.shape == shape and dy.dtype == dtype and dy.flags.c_contiguous
    except AttributeError:
        ok = False
    if not ok:
        raise ValueError(f"{type(layer).__name__}.backward: dy must be C-contiguous {dtype} of shape {shape}, "
                         f"got {getattr(dy, 'dtype', None)} {getattr(dy, 'shape', None)}")
    return dy


def check_labels(name, labels, n, n_classes=None):
    """Check integer class labels of shape (n,) and, optionally, their range."""
    if not isinstance(labels, np.ndarray) or isinstance(labels, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a numpy.ndarray of integers, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu" or not labels.dtype.isnative:
        # non-native byte order: the compiled code cannot be typed for it
        raise TypeError(f"{name} must have a native-byte-order integer dtype (class indices), got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {labels.shape}")
    if not labels.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if n_classes is not None and n:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(f"{name} must lie in [0, {n_classes}), got values in [{lo}, {hi}]")
    return labels


def no_overlap(**arrays):
    """Raise if two of the named output/input arrays share memory."""
    items = list(arrays.items())
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            (na, a), (nb, b) = items[i], items[j]
            if np.shares_memory(a, b):
                raise ValueError(f"{na} and {nb} must not overlap in memory")


def check_int(name, value, minimum=None):
    """Check an integer argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_float(name, value, minimum=None, finite=True):
    """Check a real scalar argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range
        raise ValueError(f"{name} must be finite, got an integer too large for a float") from None
    if finite and not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_betas(betas):
    """``betas`` as a pair of floats in ``[0, 1)``, or a ValueError naming it."""
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    b1 = check_float("betas[0]", b1, minimum=0.0)
    b2 = check_float("betas[1]", b2, minimum=0.0)
    for name, b in (("betas[0]", b1), ("betas[1]", b2)):
        if b >= 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {b}")
    return b1, b2


def check_dropout_p(p):
    """A drop probability in ``[0, 1)``, or an error naming ``p``."""
    p = check_float("p", p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must lie in [0, 1), got {p}")
    return p


def as_inputs(*arrays):
    """A kernel's read-only arguments as Numba should type them: as given when
    all are writable, else all as read-only views (``None`` stays ``None``).

    Numba compiles one specialisation per combination of the arrays' write
    flags; this keeps it to two per kernel and dtype (about 1-10 s of
    compiling saved for each other combination a caller would hit)."""
    if all(a is None or a.flags.writeable for a in arrays):
        return arrays
    return tuple(a if a is None or not a.flags.writeable else _read_only_view(a) for a in arrays)


def _read_only_view(a):
    view = a.view()
    view.flags.writeable = False
    return view
