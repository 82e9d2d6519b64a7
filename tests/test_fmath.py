"""The transcendentals shared by the compiled kernels
(:mod:`jitprop.kernels._fmath`): accuracy against a wider type, special
values, and the activation kernels that use them."""

import re

import numba
import numpy as np
import pytest

from jitprop.kernels import _fmath as F
from jitprop.kernels import raw as K


@numba.njit(error_model="numpy")
def _eval_helpers(z, t, s):
    one = z.dtype.type(1)
    for i in range(z.size):
        t[i] = F.tanh(z[i])
        s[i] = F.sigmoid(z[i], one)


def _grid(dtype):
    return np.concatenate([np.linspace(-100, 100, 400_001),
                           np.random.default_rng(0).uniform(-3, 3, 200_000),
                           np.geomspace(1e-30, 1e-1, 1000),
                           -np.geomspace(1e-30, 1e-1, 1000)]).astype(dtype)


_WIDE = np.longdouble if np.finfo(np.longdouble).nmant > 52 else None  # x86: 64-bit mantissa


def _exact(z):
    """tanh and sigmoid of z, more precise than z's dtype."""
    zd = z.astype(_WIDE or np.float64) if z.dtype == np.float64 else z.astype(np.float64)
    with np.errstate(over="ignore"):
        sig = np.where(zd >= 0, 1 / (1 + np.exp(-zd)), np.exp(zd) / (1 + np.exp(zd)))
    return np.tanh(zd), sig


def _assert_within_2_ulp(t, s, z):
    half_ulp = np.finfo(z.dtype).eps / 2
    ref_t, ref_s = _exact(z)
    nz = ref_t != 0
    assert np.max(np.abs(t - ref_t)[nz] / np.abs(ref_t[nz])) < 4 * half_ulp
    big = ref_s > 1e-30
    assert np.max(np.abs(s - ref_s)[big] / ref_s[big]) < 4 * half_ulp
    assert np.max(np.abs(s - ref_s)) < 4 * half_ulp


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scalar_helpers_accuracy(dtype):
    if dtype == np.float64 and _WIDE is None:
        pytest.skip("no long double wider than float64 to check float64 against")
    z = _grid(dtype)
    t, s = np.empty_like(z), np.empty_like(z)
    _eval_helpers(z, t, s)
    _assert_within_2_ulp(t, s, z)
    assert t.dtype == dtype and s.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scalar_helpers_special_values(dtype):
    z = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30], dtype)
    t, s = np.empty_like(z), np.empty_like(z)
    _eval_helpers(z, t, s)
    assert np.isnan(t[0]) and np.isnan(s[0])
    np.testing.assert_array_equal(t[1:], [1, -1, 0, 0, 1, -1])
    assert np.signbit(t[4])
    np.testing.assert_allclose(s[1:], [1, 0, 0.5, 0.5, 1, 0], rtol=0, atol=1e-37)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("in_place", [False, True])
def test_activation_kernels_use_the_helpers(dtype, in_place):
    """sigmoid and tanh layers compute what the helpers compute (bitwise),
    in place or not, serial or parallel, so they are as accurate."""
    z = _grid(dtype)
    t, s = np.empty_like(z), np.empty_like(z)
    _eval_helpers(z, t, s)
    for act, want in ((K.ACT_SIGMOID, s), (K.ACT_TANH, t)):
        for kernel in (K.activation_forward_serial, K.activation_forward):
            a = z.copy() if in_place else np.empty_like(z)
            kernel(a if in_place else z, a, act)
            np.testing.assert_array_equal(a, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_vectorise(dtype):
    # the reason the helpers exist: the sigmoid / tanh loops of the activation
    # kernel run on vectors (libm's exp / tanh kept them scalar)
    kern = numba.njit(K.activation_forward_serial.py_func)
    z = np.zeros(64, dtype)
    kern(z, np.empty_like(z), K.ACT_SIGMOID)     # compiles the tanh loop too
    ir = "".join(kern.inspect_llvm().values())
    ty = "float" if dtype == np.float32 else "double"
    assert re.search(rf"fdiv( \w+)* <\d+ x {ty}>", ir), "no vector division"
    libm = {c for c in re.findall(r"call [^@]*@([\w.$]+)", ir) if "exp" in c or "tanh" in c}
    assert not libm, libm
    assert dtype == np.float64 or "fpext" not in ir
