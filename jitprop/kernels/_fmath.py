"""Vectorisable transcendentals shared by the compiled kernels.

``sigmoid``, ``tanh`` and ``exp_nonpos`` are callable from ``@njit`` code.
For float32 and float64 they are plain arithmetic within 2 ulp of the exact
functions (tested in ``tests/test_fmath.py``), so that LLVM vectorises the
loops that call them; Numba has no vector libm without SVML, and a scalar
``expf`` / ``tanh`` call per element cost 7-15 ns (docs/performance.md,
findings 13 and 16).  Other float types use libm.

They are the one place where jitprop's compiled code calls compiled code of
another file.  Numba's cache keys an entry by its own file only, so
:mod:`jitprop._cache` adds this file's hash to the key of every jitprop
entry: an edit here recompiles every kernel that embeds these functions.
"""

import math

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.extending import intrinsic, overload

__all__ = ["exp_nonpos", "sigmoid", "tanh"]

# Cody-Waite exp and Taylor polynomials, one set of constants per precision.
# They compile as functions of their own (LLVM still inlines them)
# with one fastmath flag, contract, so their multiply-adds become FMAs; the
# callers' own operations carry no such flag, so no FMA spans a helper and its
# caller and every compilation of a kernel (serial, parallel, cell) rounds alike.
_helper = dict(cache=True, error_model="numpy", fastmath={"contract"})

_F = np.float32
_F_ONE = _F(1.0)
_F_HALF = _F(0.5)
_F_EXP_MIN = _F(-87.0)            # exp(-87) ~ 1.6e-38, still a normal float32
_F_LOG2E = _F(1.4426950408889634)
_F_LN2_HI = _F(0.693359375)       # 355/512: n * _F_LN2_HI is exact, |n| <= 126
_F_LN2_LO = _F(-2.1219444005469057e-04)
# Taylor coefficients of exp on |r| <= ln2/2 (truncation error < 1e-8)
_F_E2, _F_E3, _F_E4 = _F(1.0 / 2.0), _F(1.0 / 6.0), _F(1.0 / 24.0)
_F_E5, _F_E6, _F_E7 = _F(1.0 / 120.0), _F(1.0 / 720.0), _F(1.0 / 5040.0)
# Taylor coefficients of tanh, used for |z| < 0.4 (truncation error < 1e-8)
_F_T3, _F_T5 = _F(-1.0 / 3.0), _F(2.0 / 15.0)
_F_T7, _F_T9 = _F(-17.0 / 315.0), _F(62.0 / 2835.0)
_F_T11, _F_T13 = _F(-1382.0 / 155925.0), _F(21844.0 / 6081075.0)
_F_TANH_SMALL = _F(0.4)

_D_EXP_MIN = -708.0                # exp(-708) ~ 3.3e-308, still a normal float64
_D_LOG2E = 1.4426950408889634
_D_LN2_HI = 6.93147180369123816490e-01   # 32 trailing zero bits: n * _D_LN2_HI is exact
_D_LN2_LO = 1.90821492927058770002e-10
# Taylor coefficients of exp on |r| <= ln2/2, 1/2! to 1/13! (truncation error < 1e-17)
(_D_E2, _D_E3, _D_E4, _D_E5, _D_E6, _D_E7, _D_E8, _D_E9, _D_E10, _D_E11, _D_E12,
 _D_E13) = [1.0 / math.factorial(k) for k in range(2, 14)]
# Taylor coefficients of tanh to z^27, used for |z| < 0.4 (truncation error < 1e-17)
_D_T3, _D_T5, _D_T7, _D_T9 = -1 / 3, 2 / 15, -17 / 315, 62 / 2835
_D_T11, _D_T13, _D_T15 = -1382 / 155925, 21844 / 6081075, -929569 / 638512875
_D_T17, _D_T19 = 6404582 / 10854718875, -443861162 / 1856156927625
_D_T21, _D_T23 = 18888466084 / 194896477400625, -113927491862 / 2900518163668125
_D_T25 = 58870668456604 / 3698160658676859375
_D_T27 = -8374643517010684 / 1298054391195577640625
_D_TANH_SMALL = 0.4


@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, llvm_ir.IntType(32))
        elif v.type.width < 32:
            v = builder.zext(v, llvm_ir.IntType(32))
        return builder.bitcast(v, llvm_ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _f64_from_bits(typingctx, bits):
    """Reinterpret a 64-bit integer as a float64."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 64):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.DoubleType())

    return types.float64(bits), codegen


@njit(**_helper)
def _d_exp_parts(x):
    """(2^n, q) with exp(x) = 2^n (1 + q) for float64 x <= 0 (Cody-Waite,
    |r| <= ln2/2); q carries no leading 1, so expm1 loses nothing to it."""
    x = max(x, _D_EXP_MIN)
    n = np.floor(x * _D_LOG2E + 0.5)
    r = (x - n * _D_LN2_HI) - n * _D_LN2_LO
    p = _D_E13 * r + _D_E12
    p = p * r + _D_E11
    p = p * r + _D_E10
    p = p * r + _D_E9
    p = p * r + _D_E8
    p = p * r + _D_E7
    p = p * r + _D_E6
    p = p * r + _D_E5
    p = p * r + _D_E4
    p = p * r + _D_E3
    p = p * r + _D_E2
    p = p * r + 1.0
    return _f64_from_bits((np.int64(n) + 1023) << 52), p * r


def exp_nonpos(x):
    """exp(x) for x <= 0 (typed dispatch below)."""
    raise NotImplementedError


@overload(exp_nonpos, jit_options=_helper)
def _ov_exp_nonpos(x):
    if x == types.float32:
        def impl(x):
            # Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2; 2^n by bits.
            x = max(x, _F_EXP_MIN)
            n = np.floor(x * _F_LOG2E + _F_HALF)
            r = (x - n * _F_LN2_HI) - n * _F_LN2_LO
            p = _F_E7 * r + _F_E6
            p = p * r + _F_E5
            p = p * r + _F_E4
            p = p * r + _F_E3
            p = p * r + _F_E2
            p = p * r + _F_ONE
            p = p * r + _F_ONE
            return p * _f32_from_bits((np.int64(n) + 127) << 23)
        return impl
    if x == types.float64:
        def impl(x):
            scale, q = _d_exp_parts(x)
            return scale + scale * q
        return impl
    if isinstance(x, types.Float):
        return lambda x: np.exp(x)
    return None


def tanh(z):
    """tanh(z) (typed dispatch below)."""
    raise NotImplementedError


@overload(tanh, jit_options=_helper)
def _ov_tanh(z):
    if z == types.float32:
        def impl(z):
            # Branch-free so that it vectorises once inlined: odd Taylor
            # polynomial for |z| < 0.4, (1 - e^{-2|z|}) / (1 + e^{-2|z|})
            # above; the 0/1 weights select one of them exactly.  NaN
            # propagates through both branches.
            a = abs(z)
            a_s = min(a, _F_TANH_SMALL)
            a2 = a_s * a_s
            p = _F_T13 * a2 + _F_T11
            p = p * a2 + _F_T9
            p = p * a2 + _F_T7
            p = p * a2 + _F_T5
            p = p * a2 + _F_T3
            small = a_s + a_s * (a2 * p)
            e2 = exp_nonpos(-(a + a))
            big = (_F_ONE - e2) / (_F_ONE + e2)
            w = _F(a < _F_TANH_SMALL)
            return math.copysign(w * small + (_F_ONE - w) * big, z)
        return impl
    if z == types.float64:
        def impl(z):
            # as float32, to z^27; above 0.4, tanh(a) = -m / (2 + m) with
            # m = expm1(-2a), which has no 1 - e^{-2a} cancellation to amplify
            a = abs(z)
            a_s = min(a, _D_TANH_SMALL)
            a2 = a_s * a_s
            p = _D_T27 * a2 + _D_T25
            p = p * a2 + _D_T23
            p = p * a2 + _D_T21
            p = p * a2 + _D_T19
            p = p * a2 + _D_T17
            p = p * a2 + _D_T15
            p = p * a2 + _D_T13
            p = p * a2 + _D_T11
            p = p * a2 + _D_T9
            p = p * a2 + _D_T7
            p = p * a2 + _D_T5
            p = p * a2 + _D_T3
            small = a_s + a_s * (a2 * p)
            scale, q = _d_exp_parts(-(a + a))
            m = (scale - 1.0) + scale * q
            big = -m / (2.0 + m)
            w = np.float64(a < _D_TANH_SMALL)
            return math.copysign(w * small + (1.0 - w) * big, z)
        return impl
    if isinstance(z, types.Float):
        return lambda z: np.tanh(z)
    return None


@njit(**_helper)
def sigmoid(z, one):
    """Overflow-free logistic function; ``one`` carries the dtype.

    sigmoid(z) = num / (1 + e) with e = exp(-|z|) in (0, 1] and num = 1 for
    z >= 0, num = e for z < 0 (selected exactly by 0/1 weights, branch-free
    so that the gate loops vectorise).  NaN propagates through e.
    """
    e = exp_nonpos(-abs(z))
    w = one * (z < 0)
    return (w * e + (one - w)) / (one + e)
