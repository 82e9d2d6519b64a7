"""Real data for the examples and benchmarks, loaded in milliseconds.

The handwritten digits (1,797 8x8 images, 10 classes) ship as a CSV file
inside scikit-learn's package.  :func:`load_digits` reads that file with
NumPy alone: importing scikit-learn to load it would cost about 0.8 s,
more than training the README's network takes.  This module imports only
NumPy and the standard library, so it can also be run on its own
(``runpy.run_path``) by processes that do not import jitprop.
"""

import importlib.util
import os

import numpy as np

__all__ = ["digits_path", "load_digits", "stratified_split", "digits_split"]


def digits_path():
    """Path of ``digits.csv.gz`` in the installed scikit-learn, found without importing it."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the digits data ship with scikit-learn: pip install scikit-learn "
                                  "(or pip install 'jitprop[examples]')")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"scikit-learn is installed but has no digits file at {path}")
    return path


def load_digits(dtype=np.float32):
    """The digits, as ``sklearn.datasets.load_digits(return_X_y=True)`` gives them.

    Returns
    -------
    X : ndarray (1797, 64), ``dtype``
        Pixel intensities divided by 16, so in [0, 1].
    y : ndarray (1797,), int64
        The digit, 0-9.
    """
    data = np.loadtxt(digits_path(), delimiter=",", dtype=np.float64)
    return (data[:, :-1] / 16.0).astype(dtype), data[:, -1].astype(np.int64)


def stratified_split(y, test_fraction=0.25, seed=0):
    """Indices ``(train, test)`` holding out ``round(test_fraction * n_c)`` of
    each class's ``n_c`` samples, drawn with ``np.random.default_rng(seed)``.

    Parameters
    ----------
    y : ndarray (n,), integer class labels
    test_fraction : float in (0, 1)
    seed : int

    Returns
    -------
    train, test : ndarray of int64, sorted, together a partition of ``range(n)``
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        held.append(rng.permutation(idx)[:int(round(test_fraction * idx.size))])
    test = np.sort(np.concatenate(held)).astype(np.int64)
    train = np.setdiff1d(np.arange(y.size, dtype=np.int64), test)
    return train, test


def digits_split(seed=0, test_fraction=0.25, dtype=np.float32):
    """``(X_train, X_test, y_train, y_test)``: :func:`load_digits` split by
    :func:`stratified_split` (the README's job uses seed 0)."""
    X, y = load_digits(dtype)
    train, test = stratified_split(y, test_fraction, seed)
    return X[train], X[test], y[train], y[test]
