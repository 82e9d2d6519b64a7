"""Vectorisable float32 transcendentals shared by the compiled kernels.

``sigmoid``, ``tanh`` and ``exp_nonpos`` are callable from ``@njit`` code.
For float32 they are plain arithmetic within 4 ulp of the exact functions
(tested in ``tests/test_fmath.py``), so that LLVM vectorises the loops that
call them; Numba has no vector libm without SVML, and a scalar ``expf`` /
``tanhf`` call per element cost 7-15 ns (docs/performance.md, findings 13
and 16).  float64 uses libm.

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

# float64 uses libm; the float32 versions are Cody-Waite exp and Taylor
# polynomials.  They compile as functions of their own (LLVM still inlines them)
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
