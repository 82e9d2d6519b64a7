"""jitprop.datasets: the digits as scikit-learn gives them, a stratified split, no heavy imports."""

import subprocess
import sys

import numpy as np
import pytest

from jitprop import datasets


def test_digits_equal_scikit_learns():
    sk = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits()
    Xs, ys = sk.load_digits(return_X_y=True)
    assert X.shape == (1797, 64) and X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(X, (Xs / 16.0).astype(np.float32))
    np.testing.assert_array_equal(y, ys)
    X64, _ = datasets.load_digits(np.float64)
    np.testing.assert_array_equal(X64, Xs / 16.0)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_stratified_split_is_a_partition_with_each_class_held_out_in_proportion(seed):
    y = np.repeat(np.arange(5), [10, 20, 31, 4, 1])
    train, test = datasets.stratified_split(y, 0.25, seed)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(y.size))
    for c, n in zip(range(5), [10, 20, 31, 4, 1]):
        assert np.count_nonzero(y[test] == c) == int(round(0.25 * n))
    # the same seed, the same split; another seed, another split
    np.testing.assert_array_equal(datasets.stratified_split(y, 0.25, seed)[1], test)
    assert not np.array_equal(datasets.stratified_split(y, 0.25, seed + 100)[1], test)


def test_digits_split_shapes_and_bad_fraction():
    pytest.importorskip("sklearn")
    Xtr, Xte, ytr, yte = datasets.digits_split(0)
    assert Xtr.shape[0] + Xte.shape[0] == 1797 and Xte.shape[0] == 450 and Xtr.shape[1] == 64
    assert set(np.unique(yte)) == set(range(10))
    with pytest.raises(ValueError, match="test_fraction"):
        datasets.stratified_split(ytr, 1.0)


def test_loading_imports_neither_scikit_learn_nor_numba():
    pytest.importorskip("sklearn")
    code = ("import runpy, sys; d = runpy.run_path(sys.argv[1]); d['digits_split'](0); "
            "print(sorted(m for m in ('sklearn', 'numba', 'jitprop') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, datasets.__file__], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
