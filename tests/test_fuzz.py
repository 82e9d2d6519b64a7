"""Property-based fuzzing of every checked kernel entry point in jitprop.kernels.

Each example builds arguments that may be wrong in any way a caller can get
them wrong (type, dtype, shape, layout, write permission, aliasing of inputs
and outputs) and that may hold NaN/inf, calls the *checked* entry point and
requires exactly one of two outcomes:

* a clean ``TypeError``/``ValueError`` whose message starts with the name of
  an argument, with every buffer left byte-for-byte untouched (the checks run
  before any compiled code writes anything);
* a result matching the NumPy references in ``tests/_reference.py``, with no
  byte outside the output views changed.

Whether a call must succeed, must fail, or may do either (overlapping *read*
arguments, which some kernels conservatively refuse) is decided here from the
arguments' actual properties, independently of ``jitprop/_checks.py``.

Every array, input or output, is a view into the middle of a flat buffer whose
margins hold a sentinel, so a write outside the given buffers by compiled code
is caught after every call.  The raw kernels in ``jitprop.kernels.raw`` skip
all checks by design and are not fuzzed (see the first test).

Run with ``-s`` to see the summary printed at the end of the module; set
``JITPROP_FUZZ_EXAMPLES`` to change the number of examples per test (400).
"""

import collections
import os
import pathlib
import re
import time

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitprop import kernels as K
from jitprop.kernels import raw

import _reference as ref

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
BAD_DTYPES = [np.dtype(d) for d in (np.int64, np.float16, np.complex64, np.bool_)] + [
    np.dtype(np.float64).newbyteorder()]  # float64, but not in the machine's byte order
INT_DTYPES = [np.dtype(d) for d in (np.int8, np.int16, np.int32, np.int64,
                                    np.uint8, np.uint16, np.uint32, np.uint64)]
ACT_NAMES = {K.ACT_IDENTITY: "identity", K.ACT_RELU: "relu", K.ACT_SIGMOID: "sigmoid", K.ACT_TANH: "tanh"}

#: every public checked kernel, each fuzzed by a test below
KERNELS = ["dense_forward", "dense_act_forward", "dense_backward", "dense_backward_params",
           "sigmoid_forward", "relu_forward", "tanh_forward", "activation_forward",
           "sigmoid_backward", "relu_backward", "tanh_backward", "activation_backward",
           "mse_loss", "softmax_cross_entropy", "sgd_step", "clip_grad_norm", "clip_grad_norm_list",
           "lstm_forward", "lstm_backward", "lstm_cell_forward", "lstm_cell_backward",
           "adam_step", "dropout_apply",
           "gru_forward", "gru_backward", "gru_cell_forward", "gru_cell_backward",
           "embedding_forward", "embedding_backward"]

SENTINEL = 1234.5   # fill of float/complex buffer margins
INT_SENTINEL = 77   # fill of integer/bool buffer margins
MARGIN = 8          # sentinel elements on each side of every array

STATS = collections.Counter()
PER_KERNEL = collections.defaultdict(collections.Counter)

#: examples per test; JITPROP_FUZZ_EXAMPLES=5000 for a longer soak
EXAMPLES = int(os.environ.get("JITPROP_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def _fuzz_summary():
    t0 = time.perf_counter()
    yield
    print(f"\nfuzz: {STATS['cases']} cases, {STATS['error']} clean errors, {STATS['ok']} correct results "
          f"({STATS['either_error']} of the errors and {STATS['either_ok']} of the results on read-only "
          f"overlaps, which may go either way) in {time.perf_counter() - t0:.1f} s")
    for name in KERNELS:
        c = PER_KERNEL[name]
        print(f"  {name:24s} {c['cases']:5d} cases {c['error']:5d} errors {c['ok']:5d} results")


# ----------------------------------------------------------------------------- guarded buffers
def prod(shape):
    return int(np.prod(shape, dtype=np.int64))


class Arena:
    """Flat buffers with sentinel margins, from which every argument is cut."""

    def __init__(self):
        self.bufs = []
        self.snap = None

    def alloc(self, n, dtype):
        dtype = np.dtype(dtype)
        buf = np.empty(n + 2 * MARGIN, dtype)
        buf[...] = SENTINEL if dtype.kind in "fc" else INT_SENTINEL
        self.bufs.append(buf)
        return buf[MARGIN:MARGIN + n]

    def array(self, shape, dtype, values, layout="C", readonly=False):
        """An array of ``shape`` holding ``values``: C-contiguous, or a transpose
        ("T"), a stride-2 slice ("S") or a reversed slice ("R") of a guarded buffer."""
        shape = tuple(shape)
        if layout == "T" and len(shape) >= 2:
            base = self.alloc(prod(shape), dtype).reshape(shape[::-1])
            view = base.T
        elif layout in ("S", "R") and len(shape) >= 1:
            k = 2 if layout == "S" else 1
            base = self.alloc(prod(shape) * k, dtype).reshape(shape[:-1] + (shape[-1] * k,))
            view = base[..., ::2] if layout == "S" else base[..., ::-1]
        else:
            view = self.alloc(prod(shape), dtype).reshape(shape)
        assert view.shape == shape
        fill(view, values)
        if readonly:
            view.flags.writeable = False
        return view

    def overlapping(self, shape_a, shape_b, dtype, offset):
        """Two C-contiguous arrays in one buffer, the second starting ``offset`` elements in."""
        sa, sb = prod(shape_a), prod(shape_b)
        flat = self.alloc(max(sa, offset + sb), dtype)
        return flat[:sa].reshape(shape_a), flat[offset:offset + sb].reshape(shape_b)

    def snapshot(self):
        self.snap = [b.tobytes() for b in self.bufs]

    def assert_margins(self):
        for buf, snap in zip(self.bufs, self.snap):
            m = MARGIN * buf.itemsize
            now = buf.tobytes()
            assert now[:m] == snap[:m] and now[-m:] == snap[-m:], "write outside the given buffers"

    def assert_unchanged(self, keep=()):
        """Every buffer unchanged, except those sharing memory with an array in ``keep``."""
        for buf, snap in zip(self.bufs, self.snap):
            if any(np.shares_memory(buf, k) for k in keep):
                continue
            assert buf.tobytes() == snap, "a buffer changed that the call must not write"


def fill(view, values):
    values = np.asarray(values, dtype=np.float64)
    if view.dtype.kind in "fc":
        view[...] = values
    else:
        view[...] = np.nan_to_num(values, nan=0.0, posinf=7.0, neginf=-7.0).astype(view.dtype)


# ----------------------------------------------------------------------------- strategies
DIM = st.sampled_from([0, 1, 1, 2, 3, 4, 5])
POS_DIM = st.integers(1, 5)
SHAPE = st.lists(DIM, min_size=0, max_size=3).map(tuple)
DATA = st.tuples(st.sampled_from([1.0, 1e-3, 30.0]),
                 st.sampled_from(["finite", "finite", "finite", "nan", "inf", "mixed"]))
BIG = st.sampled_from([False] * 15 + [True])  # sizes that take the parallel code paths

GOOD_REALS = [0.0, 0.01, 0.1, 0.9, 1.0, 2, np.float32(0.5), np.float64(1.5), np.int64(3)]
BAD_REALS = [-0.1, -1, float("nan"), float("inf"), -np.inf, "0.1", None, True, 1 + 0j,
             np.array(0.5), [0.1], 10 ** 400]
GOOD_ACTS = [0, 1, 2, 3, np.int32(2), np.int64(3), np.uint8(1)]
BAD_ACTS = [4, -1, 1.0, True, None, "relu", np.array([1, 2]), np.float64(2.0)]


def real_st(good=GOOD_REALS):
    return st.sampled_from(good * 4 + BAD_REALS)


def real_ok(v):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return False
    try:
        f = float(v)
    except OverflowError:
        return False
    return np.isfinite(f) and f >= 0


def act_ok(a):
    return isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_)) and a in ACT_NAMES


def mutate_shape(draw, shape):
    """A shape different from ``shape`` (another size or number of axes)."""
    shape = list(shape)
    kind = draw(st.sampled_from(["grow", "shrink", "add_axis", "drop_axis"]))
    if kind == "shrink" and any(shape):
        i = draw(st.sampled_from([i for i, s in enumerate(shape) if s]))
        shape[i] -= 1
    elif kind == "drop_axis" and shape:
        del shape[draw(st.integers(0, len(shape) - 1))]
    elif kind == "grow" and shape:
        shape[draw(st.integers(0, len(shape) - 1))] += draw(st.integers(1, 2))
    else:
        shape.insert(draw(st.integers(0, len(shape))), draw(st.integers(1, 2)))
    return tuple(shape)


def same_memory(a, b):
    return (a.shape == b.shape and a.strides == b.strides
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def worst(*verdicts):
    """Combine verdicts: any "err" wins, then "either", else "ok"."""
    for v in ("err", "either"):
        if v in verdicts:
            return v
    return "ok"


class Case:
    """Arguments of one fuzz example, with the expected outcome."""

    def __init__(self, draw):
        self.draw = draw
        self.arena = Arena()
        self.rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
        self.scale, self.special = draw(DATA)
        self.vals, self.roles, self.specs = {}, {}, []

    def values(self, shape, role):
        """Data for an input (with NaN/inf as drawn), junk for an output
        (NaN included, so an element the kernel fails to write is noticed)."""
        rng = self.rng
        if role == "out":
            v = 1e3 * rng.standard_normal(shape)
            return np.where(rng.random(shape) < 0.2, np.nan, v)
        v = self.scale * rng.standard_normal(shape)
        if self.special != "finite":
            pool = {"nan": [np.nan], "inf": [np.inf, -np.inf], "mixed": [np.nan, np.inf, -np.inf]}[self.special]
            v = np.where(rng.random(shape) < 0.3, rng.choice(pool, size=shape), v)
        return v

    def arrays(self, specs, dtype, alias_pairs=(), any_shape=()):
        """Draw the arrays ``specs`` = [(name, shape, role)], role "in"/"out"/"inout",
        with up to two arguments spoilt and possibly two of them aliased."""
        draw = self.draw
        self.specs += specs
        spec = {name: (shape, role) for name, shape, role in specs}
        alias = None
        if alias_pairs and draw(st.integers(0, 4)) == 0:
            p, q = draw(st.sampled_from(alias_pairs))
            alias = (p, q, draw(st.sampled_from(["same", "view", "offset"])))
        free = [n for n, _, _ in specs if alias is None or n not in alias[:2]]
        targets = draw(st.permutations(free))[:draw(st.sampled_from([0, 0, 0, 0, 1, 1, 1, 2]))]
        muts, shape_spoilt = {}, False
        for t in targets:
            m = draw(st.sampled_from(["dtype", "shape", "type", "layout", "readonly"]))
            if m == "shape" and (shape_spoilt or t in any_shape):
                m = "readonly"  # one wrong shape at a time: two could agree with each other
            shape_spoilt |= m == "shape"
            muts[t] = m
        for name, shape, role in specs:
            self.roles[name] = role
        if alias:
            p, q, mode = alias
            (sp, rp), (sq, rq) = spec[p], spec[q]
            if mode != "offset" and sp != sq:
                mode = "offset"
            if mode == "same":
                self.vals[p] = self.vals[q] = self.arena.array(sq, dtype, self.values(sq, rq))
            else:
                off = 0 if mode == "view" else draw(st.integers(0, max(prod(sp) - 1, 0)))
                a, b = self.arena.overlapping(sp, sq, dtype, off)
                # outputs first, so that the input holds its drawn data where they overlap
                for arr, role in sorted([(a, rp), (b, rq)], key=lambda t: t[1] != "out"):
                    fill(arr, self.values(arr.shape, role))
                self.vals[p], self.vals[q] = a, b
        for name, shape, role in specs:
            if name in self.vals:
                continue
            m = muts.get(name)
            dt, layout, ro, shp = dtype, "C", False, shape
            if m == "dtype":
                other = FLOATS[1] if np.dtype(dtype) == FLOATS[0] else FLOATS[0]
                dt = draw(st.sampled_from([other] + BAD_DTYPES))
            elif m == "shape":
                shp = mutate_shape(draw, shape)
            elif m == "layout":
                layout = draw(st.sampled_from("TSR"))
            elif m == "readonly":
                ro = True
            arr = self.arena.array(shp, dt, self.values(shp, role), layout, ro)
            if m == "type":
                kind = draw(st.sampled_from(["list", "scalar", "none", "masked"]))
                arr = {"list": arr.tolist(), "scalar": 1.0, "none": None,
                       "masked": np.ma.masked_array(arr, mask=np.zeros(arr.shape, bool))}[kind]
            self.vals[name] = arr

    def verdict(self, float_names=None, identity_ok=(), any_shape=()):
        """"ok", "err" or "either" for the arrays drawn so far."""
        specs = self.specs
        for name, shape, role in specs:
            a = self.vals[name]
            if not isinstance(a, np.ndarray) or isinstance(a, np.ma.MaskedArray):
                return "err"
            if name not in any_shape and a.shape != tuple(shape):
                return "err"
            if not a.flags.c_contiguous or (role != "in" and not a.flags.writeable):
                return "err"
        names = [n for n, _, _ in specs if float_names is None or n in float_names]
        dts = {self.vals[n].dtype for n in names}
        if len(dts) != 1 or dts.pop() not in FLOATS:
            return "err"
        v = "ok"
        for i, (p, _, rp) in enumerate(specs):
            for q, _, rq in specs[i + 1:]:
                a, b = self.vals[p], self.vals[q]
                if not np.shares_memory(a, b):
                    continue
                if rp == "in" and rq == "in":
                    v = "either"
                elif {p, q} in [set(pair) for pair in identity_ok] and (a is b or same_memory(a, b)):
                    v = v if a is b else "either"
                else:
                    return "err"
        return v

    def copies(self):
        return {n: np.array(v, copy=True) for n, v in self.vals.items() if isinstance(v, np.ndarray)}

    def outputs(self):
        return [v for n, v in self.vals.items() if self.roles.get(n) in ("out", "inout")
                and isinstance(v, np.ndarray)]


def run(kernel, fn, args, names, arena, expect, check, outputs):
    """Call ``fn(*args)`` and check the outcome against ``expect``."""
    STATS["cases"] += 1
    PER_KERNEL[kernel]["cases"] += 1
    arena.snapshot()
    try:
        result = fn(*args)
    except (TypeError, ValueError) as e:
        msg = str(e)
        assert expect != "ok", f"{kernel}: a valid call raised {type(e).__name__}: {msg}"
        first = re.match(r"[A-Za-z_]\w*", msg)
        assert first and first.group(0) in names, f"{kernel}: message does not name an argument: {msg!r}"
        arena.assert_unchanged()
        STATS["error"] += 1
        STATS["either_error"] += expect == "either"
        PER_KERNEL[kernel]["error"] += 1
        return
    assert expect != "err", f"{kernel}: an invalid call was accepted"
    arena.assert_margins()
    arena.assert_unchanged(keep=outputs)
    with np.errstate(all="ignore"):  # the references meet NaN/inf too
        check(result)
    STATS["ok"] += 1
    STATS["either_ok"] += expect == "either"
    PER_KERNEL[kernel]["ok"] += 1


# ----------------------------------------------------------------------------- comparisons
def assert_close(actual, expected, dtype, mag=None, what=""):
    """``actual`` (computed in ``dtype``) against a float64 reference: same NaN
    positions, same infinities, finite values within a tolerance scaled by
    ``mag`` (a bound on the magnitude of the terms that were summed)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    rtol, atol = (1e-4, 1e-5) if np.dtype(dtype) == FLOATS[0] else (1e-10, 1e-12)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(actual), nan), f"{what}: NaN pattern differs\n{actual}\n{expected}"
    inf = np.isinf(expected)
    assert np.array_equal(actual[inf], expected[inf]), f"{what}: infinities differ\n{actual}\n{expected}"
    fin = ~(nan | inf)
    m = np.abs(expected) if mag is None else np.broadcast_to(np.asarray(mag, dtype=np.float64), expected.shape)
    err = np.abs(actual[fin] - expected[fin])
    bound = rtol * np.abs(expected[fin]) + atol * (1.0 + m[fin])
    assert np.all(err <= bound), f"{what}: max error {np.max(err - bound)} over the bound\n{actual}\n{expected}"


def absf(a):
    """|a| in float64 with non-finite entries as 0 (for error bounds of finite results)."""
    return np.nan_to_num(np.abs(np.asarray(a, dtype=np.float64)), nan=0.0, posinf=0.0, neginf=0.0)


# ----------------------------------------------------------------------------- the raw kernels
def test_fuzzed_functions_are_the_checked_wrappers():
    """The functions fuzzed here are the checked Python wrappers, not the raw
    Numba dispatchers, which skip all checks by design (README: "raw holds the
    same kernels as Numba dispatchers without checks")."""
    public = [n for n in K.__all__ if n not in ("raw", "lstm_workspace_shapes", "gru_workspace_shapes")
              and not n.startswith("ACT_")]
    assert sorted(public) == sorted(KERNELS)
    for name in KERNELS:
        f = getattr(K, name)
        assert not isinstance(f, numba.core.dispatcher.Dispatcher), name
        assert f is not getattr(raw, name, None), name
        assert f.__module__ == "jitprop.kernels", name
    for name in set(KERNELS) - {"clip_grad_norm_list"}:
        assert isinstance(getattr(raw, name), numba.core.dispatcher.Dispatcher), name
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "without checks" in readme and "jitprop.kernels.raw" in readme


# ----------------------------------------------------------------------------- dense layer
@st.composite
def dense_forward_case(draw, fused):
    c = Case(draw)
    n, n_in, n_out = (180, 3, 200) if draw(BIG) else (draw(DIM), draw(DIM), draw(DIM))
    dtype = draw(st.sampled_from(FLOATS))
    specs = [("x", (n, n_in), "in"), ("W", (n_in, n_out), "in"), ("b", (n_out,), "in"),
             ("out", (n, n_out), "out")]
    c.arrays(specs, dtype, alias_pairs=[("out", "x"), ("out", "W"), ("out", "b"), ("x", "W"), ("W", "b")])
    expect = c.verdict()
    args = [c.vals[n] for n, _, _ in specs]
    act = None
    if fused:
        act = draw(st.sampled_from(GOOD_ACTS * 3 + BAD_ACTS))
        args.append(act)
        expect = worst(expect, "ok" if act_ok(act) else "err")
    return c, args, expect, act


def _check_dense_forward(c, act, dtype_of):
    cp, out = c.copies(), c.vals["out"]

    def check(result):
        assert result is out
        want = ref.dense_forward(cp["x"], cp["W"], cp["b"])
        mag = absf(cp["x"]) @ absf(cp["W"]) + absf(cp["b"])
        if act is not None:
            want = ref.act(want, ACT_NAMES[int(act)])
        assert_close(out, want, dtype_of, mag, "out")
    return check


@FUZZ
@given(case=dense_forward_case(fused=False))
def test_fuzz_dense_forward(case):
    c, args, expect, _ = case
    run("dense_forward", K.dense_forward, args, ["x", "W", "b", "out"], c.arena, expect,
        _check_dense_forward(c, None, getattr(c.vals["x"], "dtype", None)), c.outputs())


@FUZZ
@given(case=dense_forward_case(fused=True))
def test_fuzz_dense_act_forward(case):
    c, args, expect, act = case
    run("dense_act_forward", K.dense_act_forward, args, ["x", "W", "b", "out", "act"], c.arena, expect,
        _check_dense_forward(c, act, getattr(c.vals["x"], "dtype", None)), c.outputs())


@st.composite
def dense_backward_case(draw, params_only):
    c = Case(draw)
    n, n_in, n_out = (300, 2, 128) if draw(BIG) else (draw(DIM), draw(DIM), draw(DIM))
    dtype = draw(st.sampled_from(FLOATS))
    if params_only:
        specs = [("x", (n, n_in), "in"), ("dy", (n, n_out), "in"),
                 ("dW", (n_in, n_out), "out"), ("db", (n_out,), "out")]
    else:
        specs = [("x", (n, n_in), "in"), ("W", (n_in, n_out), "in"), ("dy", (n, n_out), "in"),
                 ("dx", (n, n_in), "out"), ("dW", (n_in, n_out), "out"), ("db", (n_out,), "out")]
    names = [s[0] for s in specs]
    pairs = [(p, q) for i, p in enumerate(names) for q in names[i + 1:]]
    c.arrays(specs, dtype, alias_pairs=pairs)
    return c, [c.vals[n] for n in names], c.verdict(), names


def _check_dense_backward(c, params_only):
    cp = c.copies()
    dt = c.vals["x"].dtype if isinstance(c.vals["x"], np.ndarray) else None

    def check(result):
        x, dy = cp["x"], cp["dy"]
        W = cp.get("W", np.zeros((x.shape[1], dy.shape[1])))
        want_dx, want_dW, want_db = ref.dense_backward(x, W, dy)
        if params_only:
            assert result[0] is c.vals["dW"] and result[1] is c.vals["db"]
        else:
            assert result[0] is c.vals["dx"] and result[1] is c.vals["dW"] and result[2] is c.vals["db"]
            assert_close(c.vals["dx"], want_dx, dt, absf(dy) @ absf(W).T, "dx")
        assert_close(c.vals["dW"], want_dW, dt, absf(x).T @ absf(dy), "dW")
        assert_close(c.vals["db"], want_db, dt, absf(dy).sum(0), "db")
    return check


@FUZZ
@given(case=dense_backward_case(params_only=False))
def test_fuzz_dense_backward(case):
    c, args, expect, names = case
    run("dense_backward", K.dense_backward, args, names, c.arena, expect,
        _check_dense_backward(c, False), c.outputs())


@FUZZ
@given(case=dense_backward_case(params_only=True))
def test_fuzz_dense_backward_params(case):
    c, args, expect, names = case
    run("dense_backward_params", K.dense_backward_params, args, names, c.arena, expect,
        _check_dense_backward(c, True), c.outputs())


# ----------------------------------------------------------------------------- activations
FORWARD = {"activation_forward": None, "relu_forward": K.ACT_RELU,
           "sigmoid_forward": K.ACT_SIGMOID, "tanh_forward": K.ACT_TANH}
BACKWARD = {"activation_backward": None, "relu_backward": K.ACT_RELU,
            "sigmoid_backward": K.ACT_SIGMOID, "tanh_backward": K.ACT_TANH}


def act_grad_from_output(a, da, name):
    """dz from the saved output, the textbook formulas (ReLU'(0) = 0; a NaN
    output passes da through, as torch's threshold_backward does)."""
    a, da = a.astype(np.float64), da.astype(np.float64)
    if name == "relu":
        return np.where(a <= 0, 0.0, da)
    if name == "sigmoid":
        return da * (a * (1 - a))
    if name == "tanh":
        return da * (1 - a * a)
    return da.copy()


@st.composite
def activation_case(draw, kernel, backward):
    c = Case(draw)
    shape = (33000,) if draw(BIG) else draw(SHAPE)
    dtype = draw(st.sampled_from(FLOATS))
    if backward:
        specs = [("a", shape, "in"), ("da", shape, "in"), ("dz", shape, "out")]
        ident = [("dz", "da"), ("dz", "a")]
    else:
        specs = [("z", shape, "in"), ("a", shape, "out")]
        ident = [("a", "z")]
    names = [s[0] for s in specs]
    c.arrays(specs, dtype, alias_pairs=ident + ([("a", "da")] if backward else []))
    expect = c.verdict(identity_ok=ident)
    args = [c.vals[n] for n in names]
    act = (BACKWARD if backward else FORWARD)[kernel]
    if act is None:
        act = draw(st.sampled_from(GOOD_ACTS * 3 + BAD_ACTS))
        args.append(act)
        names.append("act")
        expect = worst(expect, "ok" if act_ok(act) else "err")
    return c, args, expect, names, act


@pytest.mark.parametrize("kernel", list(FORWARD))
@FUZZ
@given(data=st.data())
def test_fuzz_activation_forward(kernel, data):
    c, args, expect, names, act = data.draw(activation_case(kernel, backward=False))
    cp, a = c.copies(), c.vals["a"]

    def check(result):
        assert result is a
        assert_close(a, ref.act(cp["z"], ACT_NAMES[int(act)]), a.dtype, 1.0 + absf(cp["z"]), "a")

    run(kernel, getattr(K, kernel), args, names, c.arena, expect, check, c.outputs())


@pytest.mark.parametrize("kernel", list(BACKWARD))
@FUZZ
@given(data=st.data())
def test_fuzz_activation_backward(kernel, data):
    c, args, expect, names, act = data.draw(activation_case(kernel, backward=True))
    cp, dz = c.copies(), c.vals["dz"]

    def check(result):
        assert result is dz
        want = act_grad_from_output(cp["a"], cp["da"], ACT_NAMES[int(act)])
        assert_close(dz, want, dz.dtype, absf(cp["da"]) * (1 + absf(cp["a"]) ** 2), "dz")

    run(kernel, getattr(K, kernel), args, names, c.arena, expect, check, c.outputs())


# ----------------------------------------------------------------------------- losses
@FUZZ
@given(data=st.data())
def test_fuzz_mse_loss(data):
    draw = data.draw
    c = Case(draw)
    shape = (4, 8500) if draw(BIG) else (draw(DIM | POS_DIM),) + draw(st.lists(POS_DIM | DIM, max_size=2).map(tuple))
    dtype = draw(st.sampled_from(FLOATS))
    specs = [("pred", shape, "in"), ("target", shape, "in"), ("grad", shape, "out"),
             ("row_loss", shape[:1], "out")]
    names = [s[0] for s in specs]
    c.arrays(specs, dtype, alias_pairs=[(p, q) for i, p in enumerate(names) for q in names[i + 1:]])
    expect = worst(c.verdict(), "err" if prod(shape) == 0 else "ok")  # the mean of nothing is refused
    cp = c.copies()

    def check(result):
        assert isinstance(result, float)
        want_loss, want_grad = ref.mse(cp["pred"], cp["target"])
        d = cp["pred"].astype(np.float64) - cp["target"].astype(np.float64)
        want_rows = (d * d).reshape(shape[0], -1).sum(1)
        dt = c.vals["pred"].dtype
        assert_close(result, want_loss, dt, what="loss")
        assert_close(c.vals["grad"], want_grad, dt, what="grad")
        assert_close(c.vals["row_loss"], want_rows, dt, what="row_loss")

    run("mse_loss", K.mse_loss, [c.vals[n] for n in names], names, c.arena, expect, check, c.outputs())


LABEL_MODES = ["ok"] * 16 + ["range", "float", "bool", "len", "nonnative", "layout", "list", "2d",
                            "readonly", "alias_row", "alias_grad", "alias_logits"]


@FUZZ
@given(data=st.data())
def test_fuzz_softmax_cross_entropy(data):
    draw = data.draw
    c = Case(draw)
    n, k = (3, 11000) if draw(BIG) else (draw(DIM | POS_DIM), draw(DIM | POS_DIM))
    dtype = np.dtype(draw(st.sampled_from(FLOATS)))
    if draw(st.booleans()):
        c.scale = draw(st.sampled_from([c.scale, 1e3]))  # large logits: the max must be subtracted
    specs = [("logits", (n, k), "in"), ("grad", (n, k), "out"), ("row_loss", (n,), "out")]
    c.arrays(specs, dtype, alias_pairs=[("grad", "logits"), ("row_loss", "logits"), ("grad", "row_loss")])
    expect = worst(c.verdict(), "err" if n == 0 or k == 0 else "ok")

    # labels: drawn apart, since they are integers
    mode = draw(st.sampled_from(LABEL_MODES))
    ldt = draw(st.sampled_from(INT_DTYPES))
    values = c.rng.integers(0, max(k, 1), n).astype(np.float64)
    shape, layout, readonly = (n,), "C", False
    if mode == "range" and n:
        values[draw(st.integers(0, n - 1))] = -1 if ldt.kind == "i" and draw(st.booleans()) else k + draw(
            st.integers(0, 2))
    elif mode == "float":
        ldt = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    elif mode == "bool":
        ldt = np.dtype(np.bool_)
    elif mode == "len":
        shape = (n + 1,) if n == 0 or draw(st.booleans()) else (n - 1,)
        values = c.rng.integers(0, max(k, 1), shape[0]).astype(np.float64)
    elif mode == "nonnative":
        ldt = ldt.newbyteorder()  # for 1-byte integers this is still native, and valid
    elif mode == "layout":
        layout = draw(st.sampled_from("SR"))
    elif mode == "2d":
        shape, values = (n, 1), values.reshape(n, 1)
    elif mode == "readonly":
        readonly = True
    if mode in ("alias_row", "alias_grad", "alias_logits"):
        # integer labels reinterpreting the bytes of a float array: zeros are
        # label 0, valid, but the kernel writes grad/row_loss while reading them
        target = {"alias_row": "row_loss", "alias_grad": "grad", "alias_logits": "logits"}[mode]
        ldt = np.dtype(np.int64 if dtype == FLOATS[1] else np.int32)
        tshape = specs[[s[0] for s in specs].index(target)][1]
        size = prod(tshape)
        off_t, off_l = draw(st.sampled_from([(0, 0), (0, 1), (1, 0), (0, max(size - n, 0))]))
        flat = c.arena.alloc(max(off_t + size, off_l + n), dtype)
        flat[...] = 0.0
        c.vals[target] = flat[off_t:off_t + size].reshape(tshape)
        labels = flat.view(ldt)[off_l:off_l + n]
        expect = worst(c.verdict(), "err" if n == 0 or k == 0 else "ok")
    else:
        labels = c.arena.array(shape, ldt, values, layout, readonly)
        if mode == "list":
            labels = labels.tolist()
    # the expected verdict for the labels
    lv = "ok"
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu" or not labels.dtype.isnative:
        lv = "err"
    elif labels.shape != (n,) or not labels.flags.c_contiguous:
        lv = "err"
    elif n and k and (int(labels.min()) < 0 or int(labels.max()) >= k):
        lv = "err"
    else:
        for name in ("grad", "row_loss"):
            if isinstance(c.vals[name], np.ndarray) and np.shares_memory(labels, c.vals[name]):
                lv = "err"
        if lv == "ok" and isinstance(c.vals["logits"], np.ndarray) and np.shares_memory(labels, c.vals["logits"]):
            lv = "either"
    expect = worst(expect, lv)
    c.vals["labels"] = labels
    cp = c.copies()

    def check(result):
        assert isinstance(result, float)
        z, y = cp["logits"], cp["labels"].astype(np.int64)
        want_loss, want_grad = ref.softmax_xent(z, y)
        want_rows = np.array([ref.softmax_xent(z[i:i + 1], y[i:i + 1])[0] for i in range(n)])
        zmag = 1.0 + absf(z).max(axis=1)
        assert_close(result, want_loss, dtype, zmag.max(), "loss")
        assert_close(c.vals["grad"], want_grad, dtype, what="grad")
        assert_close(c.vals["row_loss"], want_rows, dtype, zmag, "row_loss")

    args = [c.vals["logits"], labels, c.vals["grad"], c.vals["row_loss"]]
    run("softmax_cross_entropy", K.softmax_cross_entropy, args, ["logits", "labels", "grad", "row_loss"],
        c.arena, expect, check, c.outputs())


# ----------------------------------------------------------------------------- optimisation
@FUZZ
@given(data=st.data())
def test_fuzz_sgd_step(data):
    draw = data.draw
    c = Case(draw)
    m = 33000 if draw(BIG) else draw(st.integers(0, 9))
    dtype = draw(st.sampled_from(FLOATS))
    specs = [("p", (m,), "inout"), ("g", (m,), "in"), ("v", (m,), "inout")]
    c.arrays(specs, dtype, alias_pairs=[("p", "g"), ("p", "v"), ("g", "v")])
    spoil = draw(st.sampled_from([None] * 8 + ["lr", "momentum", "weight_decay", "nesterov"]))
    lr, mom, wd = (draw(st.sampled_from(BAD_REALS if spoil == s else GOOD_REALS))
                   for s in ("lr", "momentum", "weight_decay"))
    nesterov = draw(st.sampled_from([None, "yes", np.array([1, 1]), 0.5] if spoil == "nesterov" else
                                    [False, True, False, True, 0, 1, np.bool_(True), np.bool_(False)]))
    expect = c.verdict()
    scalars_ok = real_ok(lr) and real_ok(mom) and real_ok(wd)
    if not scalars_ok or not isinstance(nesterov, (bool, np.bool_, int, np.integer)):
        expect = "err"
    elif nesterov and float(mom) <= 0:
        expect = "err"
    kwargs = draw(st.booleans())
    cp = c.copies()
    p, v = c.vals["p"], c.vals["v"]

    def check(result):
        assert result is p
        want_p, want_v = ref.sgd(cp["p"], cp["g"], cp["v"], float(lr), float(mom), float(wd), bool(nesterov))
        # torch skips the weight-decay and momentum terms when they are zero, so
        # 0 * inf does not arise there: compare the elements with finite inputs
        fin = np.isfinite(cp["p"]) & np.isfinite(cp["g"]) & np.isfinite(cp["v"])
        mag = (1 + absf(cp["p"]) + float(lr) * (absf(cp["g"]) + float(wd) * absf(cp["p"]) + absf(cp["v"]))) \
            * (1 + float(mom)) ** 2
        assert_close(p[fin], want_p[fin], dtype, mag[fin], "p")
        if float(mom) == 0:
            assert v.tobytes() == cp["v"].tobytes(), "v written with momentum 0"
        else:
            assert_close(v[fin], want_v[fin], dtype, mag[fin], "v")

    args = [p, c.vals["g"], v, lr]
    if kwargs:
        fn = lambda *a: K.sgd_step(*a, momentum=mom, weight_decay=wd, nesterov=nesterov)  # noqa: E731
    else:
        fn, args = K.sgd_step, args + [mom, wd, nesterov]
    run("sgd_step", fn, args, ["p", "g", "v", "lr", "momentum", "weight_decay", "nesterov"],
        c.arena, expect, check, c.outputs())


MAX_NORMS = [0.0, 1e-3, 0.5, 1.0, 10.0, 1e6, np.float32(2.0), 3]


@FUZZ
@given(data=st.data())
def test_fuzz_clip_grad_norm(data):
    draw = data.draw
    c = Case(draw)
    shape = (33000,) if draw(BIG) else draw(SHAPE)
    dtype = draw(st.sampled_from(FLOATS))
    c.arrays([("g", shape, "inout")], dtype, any_shape=("g",))
    max_norm = draw(real_st(MAX_NORMS))
    expect = worst(c.verdict(any_shape=("g",)), "ok" if real_ok(max_norm) else "err")
    cp = c.copies()
    g = c.vals["g"]

    def check(result):
        assert isinstance(result, float)
        (want,), norm = ref.clip([cp["g"]], float(max_norm))
        assert_close(result, norm, np.float64, what="norm")
        assert_close(g, want, g.dtype, what="g")

    run("clip_grad_norm", K.clip_grad_norm, [g, max_norm], ["g", "max_norm"], c.arena, expect, check,
        c.outputs())


@FUZZ
@given(data=st.data())
def test_fuzz_clip_grad_norm_list(data):
    draw = data.draw
    c = Case(draw)
    items, verdict = [], "ok"
    for _ in range(draw(st.integers(0, 4))):
        shape = (33000,) if draw(BIG) else draw(SHAPE)
        dt = draw(st.sampled_from(FLOATS))  # each array has its own dtype
        m = draw(st.sampled_from([None] * 6 + ["dtype", "layout", "readonly", "type"]))
        if m == "dtype":
            dt = draw(st.sampled_from(BAD_DTYPES))
        g = c.arena.array(shape, dt, c.values(shape, "inout"),
                          draw(st.sampled_from("TSR")) if m == "layout" else "C", m == "readonly")
        items.append(g.tolist() if m == "type" else g)
    if items and draw(st.integers(0, 3)) == 0:
        j = draw(st.integers(0, len(items) - 1))
        mode = draw(st.sampled_from(["same", "view", "offset"]))
        if mode == "same":
            items.insert(draw(st.integers(0, len(items))), items[j])
        else:
            s1, s2 = draw(SHAPE), draw(SHAPE)
            off = 0 if mode == "view" else draw(st.integers(0, max(prod(s1) - 1, 0)))
            a, b = c.arena.overlapping(s1, s2, draw(st.sampled_from(FLOATS)), off)
            fill(b, c.values(s2, "inout"))
            fill(a, c.values(s1, "inout"))
            items[j] = a
            items.insert(draw(st.integers(0, len(items))), b)
    for g in items:
        if not (isinstance(g, np.ndarray) and g.dtype in FLOATS and g.flags.c_contiguous and g.flags.writeable):
            verdict = "err"
    arrays = [g for g in items if isinstance(g, np.ndarray)]
    if any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1:]):
        verdict = "err"
    container = draw(st.sampled_from(["list"] * 3 + ["tuple", "generator", "none", "scalar"]))
    grads = {"list": items, "tuple": tuple(items), "generator": (g for g in items),
             "none": None, "scalar": 1.0}[container]
    if container in ("none", "scalar"):
        verdict = "err"
    max_norm = draw(real_st(MAX_NORMS))
    expect = worst(verdict, "ok" if real_ok(max_norm) else "err")
    copies = [np.array(g, copy=True) for g in arrays]

    def check(result):
        assert isinstance(result, float)
        want, norm = ref.clip(copies, float(max_norm))
        assert_close(result, norm, np.float64, what="norm")
        for k, (g, w) in enumerate(zip(items, want)):
            assert_close(g, w, g.dtype, what=f"grads[{k}]")

    run("clip_grad_norm_list", K.clip_grad_norm_list, [grads, max_norm], ["grads", "max_norm"], c.arena,
        expect, check, arrays)


# ----------------------------------------------------------------------------- the tally
# ----------------------------------------------------------------------------- LSTM kernels
# A call the checks accept must give bitwise what the raw kernel gives on clean
# copies of the same arguments.  float32 recurrences amplify rounding without a
# bound that holds everywhere, so only float64 calls on data of scale <= 1 are
# also compared with the float64 reference here (with a margin far above
# rounding); test_lstm_kernels.py compares both dtypes with references.
GOOD_PARTS = [1, 1, 2, 3, np.int64(2)]
BAD_PARTS = [0, -1, 1.5, True, None, "2"]


def parts_ok(p):
    return isinstance(p, (int, np.integer)) and not isinstance(p, (bool, np.bool_)) and p >= 1


def _sig(z):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def _lstm_step_ref(x_t, h, c, W_x, W_h, b):
    """One step in float64: gate activations [i, f, g, o], tanh(c_t), h_t, c_t."""
    H = W_h.shape[0]
    z = x_t @ W_x + h @ W_h + b
    i, f, g, o = _sig(z[:, :H]), _sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), _sig(z[:, 3 * H:])
    c_new = f * c + i * g
    tc = np.tanh(c_new)
    return np.concatenate([i, f, g, o], axis=1), tc, o * tc, c_new


def _lstm_step_grad_ref(gates, c_prev, tanh_c, dh, dc):
    """Pre-activation gate gradients of one step and dL/dc_{t-1}, from the caches."""
    H = tanh_c.shape[1]
    i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    dc = dc + dh * o * (1.0 - tanh_c ** 2)
    dz = np.concatenate([dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f),
                         dc * i * (1.0 - g ** 2), dh * tanh_c * o * (1.0 - o)], axis=1)
    return dz, dc * f


def _near(actual, expected, what):
    big = 1.0 + float(np.max(np.abs(expected), initial=0.0))
    assert np.all(np.abs(np.asarray(actual, np.float64) - expected) <= 1e-7 * big), what


def _lstm_case(draw, cell):
    c = Case(draw)
    c.special = "finite"  # NaN/inf through the float32 gate polynomials: test_lstm_kernels.py
    B, T, n_in, H = (draw(DIM), 1 if cell else draw(DIM), draw(DIM), draw(DIM))
    return c, B, T, n_in, H, draw(st.sampled_from(FLOATS))


def _copied(args):
    """``args`` with every array copied; an array passed twice gets one copy."""
    copies = {}
    for a in args:
        if isinstance(a, np.ndarray) and id(a) not in copies:
            copies[id(a)] = np.array(a, copy=True)
    return [copies[id(a)] if isinstance(a, np.ndarray) else a for a in args]


def _same_as_raw(raw_fn, args, raw_args, out_positions, dx_at=None):
    """The checked call's outputs equal the raw kernel's on copies of the
    arguments.  An input gradient at ``dx_at`` left out as None goes to the
    raw kernel as the checked entry point sends it, an empty array (None is
    the raw kernels' own option, tested in test_{lstm,gru}_kernels.py; here
    it would only compile a second specialisation of each kernel)."""
    if dx_at is not None and raw_args[dx_at] is None:
        raw_args = list(raw_args)
        raw_args[dx_at] = raw.absent(args[0].ndim, args[0].dtype)
    raw_fn(*raw_args)
    for k in out_positions:
        if args[k] is not None:
            assert args[k].tobytes() == raw_args[k].tobytes(), f"argument {k} differs from the raw kernel's"


def _drop_none(c, optional):
    """An optional array argument drawn as None (a "type" spoiling) is valid:
    it skips that output, so it leaves the verdict."""
    c.specs = [sp for sp in c.specs if not (sp[0] in optional and c.vals.get(sp[0]) is None)]


def _reference_wanted(c, dtype):
    return np.dtype(dtype) == FLOATS[1] and c.scale <= 1.0


@FUZZ
@given(data=st.data())
def test_fuzz_lstm_forward(data):
    draw = data.draw
    c, B, T, n_in, H, dtype = _lstm_case(draw, cell=False)
    specs = [("x", (B, T, n_in), "in"), ("W_x", (n_in, 4 * H), "in"), ("W_h", (H, 4 * H), "in"),
             ("b", (4 * H,), "in"), ("h0", (B, H), "in"), ("c0", (B, H), "in"), ("h_seq", (B, T, H), "out"),
             ("h_T", (B, H), "out"), ("c_T", (B, H), "out"), ("gates", (B, T, 4 * H), "out"),
             ("states", (3, B, T, H), "out"), ("step_ws", (B, 4 * H), "out")]
    names = [n for n, _, _ in specs]
    c.arrays(specs, dtype, alias_pairs=[("h_T", "h0"), ("c_T", "c0"), ("h_seq", "x"), ("gates", "step_ws"),
                                        ("h_T", "c_T"), ("W_x", "W_h")])
    parts = draw(st.sampled_from(GOOD_PARTS * 3 + BAD_PARTS))
    expect = worst(c.verdict(identity_ok=[("h_T", "h0"), ("c_T", "c0")]), "ok" if parts_ok(parts) else "err")
    v = c.vals
    args = [v[n] for n in names] + [parts]
    raw_args, cp = _copied(args), c.copies()

    def check(result):
        assert result is None
        _same_as_raw(raw.lstm_forward, args, raw_args, range(6, 12))
        if not _reference_wanted(c, dtype):
            return
        h, cc = cp["h0"], cp["c0"]
        for t in range(T):
            gates, tc, h_new, c_new = _lstm_step_ref(cp["x"][:, t], h, cc, cp["W_x"], cp["W_h"], cp["b"])
            for name, got, want in (("gates", v["gates"][:, t], gates), ("c_prev", v["states"][0, :, t], cc),
                                    ("tanh_c", v["states"][1, :, t], tc), ("h_prev", v["states"][2, :, t], h),
                                    ("h_seq", v["h_seq"][:, t], h_new)):
                _near(got, want, name)
            h, cc = h_new, c_new
        _near(v["h_T"], h, "h_T")
        _near(v["c_T"], cc, "c_T")
    run("lstm_forward", K.lstm_forward, args, names + ["parts"], c.arena, expect, check, c.outputs())


@FUZZ
@given(data=st.data())
def test_fuzz_lstm_backward(data):
    draw = data.draw
    c, B, T, n_in, H, dtype = _lstm_case(draw, cell=False)
    with_dx = draw(st.booleans())
    parts = draw(st.sampled_from(GOOD_PARTS * 3 + BAD_PARTS))
    specs = [("x", (B, T, n_in), "in"), ("W_x", (n_in, 4 * H), "in"), ("W_h", (H, 4 * H), "in"),
             ("dh_seq", (B, T, H), "in"), ("dh_T", (B, H), "in"), ("dc_T", (B, H), "in"),
             ("gates", (B, T, 4 * H), "in"), ("states", (3, B, T, H), "in"), ("dx", (B, T, n_in), "out"),
             ("dW_x", (n_in, 4 * H), "out"), ("dW_h", (H, 4 * H), "out"), ("db", (4 * H,), "out"),
             ("dh0", (B, H), "out"), ("dc0", (B, H), "out"), ("dgates", (B, T, 4 * H), "out"),
             ("step_ws", (B, 4 * H), "out")]
    uses_ws = parts_ok(parts) and parts > 1 and B > 1
    if uses_ws:
        active = -(-B // -(-B // int(parts)))   # parts that hold rows
        specs.append(("dw_ws", (active - 1 + draw(st.sampled_from([0, 0, 1])), (n_in + H) * 4 * H), "out"))
    if not with_dx:
        specs = [s for s in specs if s[0] != "dx"]
    names = [n for n, _, _ in specs]
    c.arrays(specs, dtype, alias_pairs=[p for p in [("dh0", "dh_T"), ("dc0", "dc_T"), ("dW_h", "W_h"),
                                                    ("dgates", "gates"), ("dx", "x"), ("gates", "states"),
                                                    ("dw_ws", "dW_x")] if p[0] in names],
             any_shape=("dw_ws",))
    v = c.vals
    _drop_none(c, ("dx",))
    with_dx = v.get("dx") is not None
    expect = worst(c.verdict(identity_ok=[("dh0", "dh_T"), ("dc0", "dc_T")], any_shape=("dw_ws",)),
                   "ok" if parts_ok(parts) else "err")
    ws = v.get("dw_ws")
    if isinstance(ws, np.ndarray) and (ws.ndim != 2 or ws.shape[0] < active - 1
                                       or ws.shape[1] != (n_in + H) * 4 * H):
        expect = "err"
    order = ["x", "W_x", "W_h", "dh_seq", "dh_T", "dc_T", "gates", "states", "dx", "dW_x", "dW_h", "db", "dh0",
             "dc0", "dgates", "step_ws"]
    args = [v.get(n) for n in order] + [parts, ws]
    raw_args, cp = _copied(args), c.copies()

    def check(result):
        assert result is None
        _same_as_raw(raw.lstm_backward, args, raw_args, list(range(8, 16)) + [17], dx_at=8)
        if not _reference_wanted(c, dtype):
            return
        dh_next, dc_next = cp["dh_T"], cp["dc_T"]
        dW_x, dW_h, db = np.zeros((n_in, 4 * H)), np.zeros((H, 4 * H)), np.zeros(4 * H)
        for t in range(T - 1, -1, -1):
            dz, dc_next = _lstm_step_grad_ref(cp["gates"][:, t], cp["states"][0, :, t], cp["states"][1, :, t],
                                              cp["dh_seq"][:, t] + dh_next, dc_next)
            _near(v["dgates"][:, t], dz, "dgates")
            if with_dx:
                _near(v["dx"][:, t], dz @ cp["W_x"].T, "dx")
            dW_x += cp["x"][:, t].T @ dz
            dW_h += cp["states"][2, :, t].T @ dz
            db += dz.sum(axis=0)
            dh_next = dz @ cp["W_h"].T
        for name, want in (("dW_x", dW_x), ("dW_h", dW_h), ("db", db), ("dh0", dh_next), ("dc0", dc_next)):
            _near(v[name], want, name)
    run("lstm_backward", K.lstm_backward, args, names + ["parts"], c.arena, expect, check, c.outputs())


@FUZZ
@given(data=st.data())
def test_fuzz_lstm_cell_forward(data):
    draw = data.draw
    c, B, _, n_in, H, dtype = _lstm_case(draw, cell=True)
    specs = [("x_t", (B, n_in), "in"), ("h_prev", (B, H), "in"), ("c_prev", (B, H), "in"),
             ("W_x", (n_in, 4 * H), "in"), ("W_h", (H, 4 * H), "in"), ("b", (4 * H,), "in"),
             ("h", (B, H), "out"), ("c", (B, H), "out"), ("gates", (B, 4 * H), "out"),
             ("tanh_c", (B, H), "out"), ("step_ws", (B, 4 * H), "out")]
    names = [n for n, _, _ in specs]
    c.arrays(specs, dtype, alias_pairs=[("h", "h_prev"), ("c", "c_prev"), ("gates", "step_ws"), ("h", "c")])
    expect = c.verdict(identity_ok=[("h", "h_prev"), ("c", "c_prev")])
    v = c.vals
    args = [v[n] for n in names]
    raw_args, cp = _copied(args), c.copies()

    def check(result):
        assert result is None
        _same_as_raw(raw.lstm_cell_forward, args, raw_args, range(6, 11))
        if _reference_wanted(c, dtype):
            gates, tc, h, cc = _lstm_step_ref(cp["x_t"], cp["h_prev"], cp["c_prev"], cp["W_x"], cp["W_h"], cp["b"])
            for name, want in (("gates", gates), ("tanh_c", tc), ("h", h), ("c", cc)):
                _near(v[name], want, name)
    run("lstm_cell_forward", K.lstm_cell_forward, args, names, c.arena, expect, check, c.outputs())


@FUZZ
@given(data=st.data())
def test_fuzz_lstm_cell_backward(data):
    draw = data.draw
    c, B, _, n_in, H, dtype = _lstm_case(draw, cell=True)
    accumulate, with_dx = draw(st.booleans()), draw(st.booleans())
    grad_role = "inout" if accumulate else "out"
    specs = [("x_t", (B, n_in), "in"), ("h_prev", (B, H), "in"), ("c_prev", (B, H), "in"),
             ("W_x", (n_in, 4 * H), "in"), ("W_h", (H, 4 * H), "in"), ("gates", (B, 4 * H), "in"),
             ("tanh_c", (B, H), "in"), ("dh", (B, H), "in"), ("dc", (B, H), "in"), ("dx_t", (B, n_in), "out"),
             ("dh_prev", (B, H), "out"), ("dc_prev", (B, H), "out"), ("dW_x", (n_in, 4 * H), grad_role),
             ("dW_h", (H, 4 * H), grad_role), ("db", (4 * H,), grad_role), ("dgates", (B, 4 * H), "out"),
             ("accum_ws", (n_in + H, 4 * H), "out")]
    specs = [s for s in specs if (with_dx or s[0] != "dx_t") and (accumulate or s[0] != "accum_ws")]
    names = [n for n, _, _ in specs]
    c.arrays(specs, dtype, alias_pairs=[p for p in [("dh_prev", "dh"), ("dc_prev", "dc"), ("dW_h", "W_h"),
                                                    ("dgates", "gates"), ("accum_ws", "dW_x")] if p[0] in names])
    v = c.vals
    _drop_none(c, ("dx_t", "accum_ws"))
    with_dx, accumulate = v.get("dx_t") is not None, v.get("accum_ws") is not None
    expect = c.verdict(identity_ok=[("dh_prev", "dh"), ("dc_prev", "dc")])
    order = ["x_t", "h_prev", "c_prev", "W_x", "W_h", "gates", "tanh_c", "dh", "dc", "dx_t", "dh_prev", "dc_prev",
             "dW_x", "dW_h", "db", "dgates", "accum_ws"]
    args = [v.get(n) for n in order]
    raw_args, cp = _copied(args), c.copies()

    def check(result):
        assert result is None
        _same_as_raw(raw.lstm_cell_backward, args, raw_args, range(9, 17), dx_at=9)
        if not _reference_wanted(c, dtype):
            return
        dz, dc_prev = _lstm_step_grad_ref(cp["gates"], cp["c_prev"], cp["tanh_c"], cp["dh"], cp["dc"])
        base = {k: (cp[k] if accumulate else 0.0) for k in ("dW_x", "dW_h", "db")}
        wants = [("dgates", dz), ("dc_prev", dc_prev), ("dh_prev", dz @ cp["W_h"].T),
                 ("dW_x", base["dW_x"] + cp["x_t"].T @ dz), ("dW_h", base["dW_h"] + cp["h_prev"].T @ dz),
                 ("db", base["db"] + dz.sum(axis=0))]
        if with_dx:
            wants.append(("dx_t", dz @ cp["W_x"].T))
        for name, want in wants:
            _near(v[name], want, name)
    run("lstm_cell_backward", K.lstm_cell_backward, args, names, c.arena, expect, check, c.outputs())


# ----------------------------------------------------------------------------- GRU
def _gru_step_ref(x_t, h, W_x, W_h, b_x, b_h):
    """One step in float64: activations [r, z, n], u_n, h_t."""
    H = W_h.shape[0]
    a = x_t @ W_x + b_x
    u = h @ W_h + b_h
    r, z = _sig(a[:, :H] + u[:, :H]), _sig(a[:, H:2 * H] + u[:, H:2 * H])
    n = np.tanh(a[:, 2 * H:] + r * u[:, 2 * H:])
    return np.concatenate([r, z, n], axis=1), u[:, 2 * H:], (1.0 - z) * n + z * h


def _gru_step_grad_ref(gates, h_prev, un, dh):
    """x-side and h-side pre-activation gradients of one step, and the direct part d * z."""
    H = un.shape[1]
    r, z, n = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
    dan = dh * (1.0 - z) * (1.0 - n * n)
    dz = dh * (h_prev - n) * z * (1.0 - z)
    dr = dan * un * r * (1.0 - r)
    return np.concatenate([dr, dz, dan], axis=1), np.concatenate([dr, dz, dan * r], axis=1), dh * z


@FUZZ
@given(data=st.data())
def test_fuzz_gru_forward(data):
    draw = data.draw
    c, B, T, n_in, H, dtype = _lstm_case(draw, cell=False)
    specs = [("x", (B, T, n_in), "in"), ("W_x", (n_in, 3 * H), "in"), ("W_h", (H, 3 * H), "in"),
             ("b_x", (3 * H,), "in"), ("b_h", (3 * H,), "in"), ("h0", (B, H), "in"), ("h_seq", (B, T, H), "out"),
             ("h_T", (B, H), "out"), ("gates", (B, T, 3 * H), "out"), ("states", (2, B, T, H), "out"),
             ("step_ws", (B, 3 * H), "out")]
    names = [n for n, _, _ in specs]
    c.arrays(specs, dtype, alias_pairs=[("h_T", "h0"), ("h_seq", "x"), ("gates", "step_ws"), ("W_x", "W_h"),
                                        ("b_x", "b_h"), ("states", "h_seq")])
    parts = draw(st.sampled_from(GOOD_PARTS * 3 + BAD_PARTS))
    expect = worst(c.verdict(identity_ok=[("h_T", "h0")]), "ok" if parts_ok(parts) else "err")
    v = c.vals
    args = [v[n] for n in names] + [parts]
    raw_args, cp = _copied(args), c.copies()

    def check(result):
        assert result[0] is v["h_seq"] and result[1] is v["h_T"]
        _same_as_raw(raw.gru_forward, args, raw_args, range(6, 11))
        if not _reference_wanted(c, dtype):
            return
        h = cp["h0"]
        for t in range(T):
            gates, un, h_new = _gru_step_ref(cp["x"][:, t], h, cp["W_x"], cp["W_h"], cp["b_x"], cp["b_h"])
            for name, got, want in (("gates", v["gates"][:, t], gates), ("h_prev", v["states"][0, :, t], h),
                                    ("u_n", v["states"][1, :, t], un), ("h_seq", v["h_seq"][:, t], h_new)):
                _near(got, want, name)
            h = h_new
        _near(v["h_T"], h, "h_T")
    run("gru_forward", K.gru_forward, args, names + ["parts"], c.arena, expect, check, c.outputs())


@FUZZ
@given(data=st.data())
def test_fuzz_gru_backward(data):
    draw = data.draw
    c, B, T, n_in, H, dtype = _lstm_case(draw, cell=False)
    with_dx = draw(st.booleans())
    parts = draw(st.sampled_from(GOOD_PARTS * 3 + BAD_PARTS))
    G = 3 * H
    specs = [("x", (B, T, n_in), "in"), ("W_x", (n_in, G), "in"), ("W_h", (H, G), "in"),
             ("dh_seq", (B, T, H), "in"), ("dh_T", (B, H), "in"), ("gates", (B, T, G), "in"),
             ("states", (2, B, T, H), "in"), ("dx", (B, T, n_in), "out"), ("dW_x", (n_in, G), "out"),
             ("dW_h", (H, G), "out"), ("db_x", (G,), "out"), ("db_h", (G,), "out"), ("dh0", (B, H), "out"),
             ("dgates", (B, T, G), "out"), ("dgates_h", (B, T, G), "out"), ("step_ws", (B, G), "out"),
             ("dh_ws", (B, H), "out")]
    uses_ws = parts_ok(parts) and parts > 1 and B > 1
    if uses_ws:
        active = -(-B // -(-B // int(parts)))   # parts that hold rows
        specs.append(("dw_ws", (active - 1 + draw(st.sampled_from([0, 0, 1])), (n_in + H) * G), "out"))
    if not with_dx:
        specs = [s for s in specs if s[0] != "dx"]
    names = [n for n, _, _ in specs]
    c.arrays(specs, dtype, alias_pairs=[p for p in [("dh0", "dh_T"), ("dW_h", "W_h"), ("dgates", "gates"),
                                                    ("dx", "x"), ("gates", "states"), ("dw_ws", "dW_x"),
                                                    ("dgates_h", "dgates"), ("dh_ws", "dh0")] if p[0] in names],
             any_shape=("dw_ws",))
    v = c.vals
    _drop_none(c, ("dx",))
    with_dx = v.get("dx") is not None
    expect = worst(c.verdict(identity_ok=[("dh0", "dh_T")], any_shape=("dw_ws",)),
                   "ok" if parts_ok(parts) else "err")
    ws = v.get("dw_ws")
    if isinstance(ws, np.ndarray) and (ws.ndim != 2 or ws.shape[0] < active - 1 or ws.shape[1] != (n_in + H) * G):
        expect = "err"
    order = ["x", "W_x", "W_h", "dh_seq", "dh_T", "gates", "states", "dx", "dW_x", "dW_h", "db_x", "db_h", "dh0",
             "dgates", "dgates_h", "step_ws", "dh_ws"]
    args = [v.get(n) for n in order] + [parts, ws]
    raw_args, cp = _copied(args), c.copies()

    def check(result):
        assert result[5] is v["dh0"]
        _same_as_raw(raw.gru_backward, args, raw_args, list(range(7, 17)) + [18], dx_at=7)
        if not _reference_wanted(c, dtype):
            return
        dh_next = cp["dh_T"]
        dW_x, dW_h, db_x, db_h = np.zeros((n_in, G)), np.zeros((H, G)), np.zeros(G), np.zeros(G)
        for t in range(T - 1, -1, -1):
            hp = cp["states"][0, :, t]
            da, du, direct = _gru_step_grad_ref(cp["gates"][:, t], hp, cp["states"][1, :, t],
                                                cp["dh_seq"][:, t] + dh_next)
            _near(v["dgates"][:, t], da, "dgates")
            _near(v["dgates_h"][:, t], du, "dgates_h")
            if with_dx:
                _near(v["dx"][:, t], da @ cp["W_x"].T, "dx")
            dW_x += cp["x"][:, t].T @ da
            dW_h += hp.T @ du
            db_x += da.sum(axis=0)
            db_h += du.sum(axis=0)
            dh_next = direct + du @ cp["W_h"].T
        for name, want in (("dW_x", dW_x), ("dW_h", dW_h), ("db_x", db_x), ("db_h", db_h), ("dh0", dh_next)):
            _near(v[name], want, name)
    run("gru_backward", K.gru_backward, args, names + ["parts"], c.arena, expect, check, c.outputs())


@FUZZ
@given(data=st.data())
def test_fuzz_gru_cell_forward(data):
    draw = data.draw
    c, B, _, n_in, H, dtype = _lstm_case(draw, cell=True)
    specs = [("x_t", (B, n_in), "in"), ("h_prev", (B, H), "in"), ("W_x", (n_in, 3 * H), "in"),
             ("W_h", (H, 3 * H), "in"), ("b_x", (3 * H,), "in"), ("b_h", (3 * H,), "in"), ("h", (B, H), "out"),
             ("gates", (B, 3 * H), "out"), ("hn", (B, H), "out"), ("step_ws", (B, 3 * H), "out")]
    names = [n for n, _, _ in specs]
    c.arrays(specs, dtype, alias_pairs=[("h", "h_prev"), ("gates", "step_ws"), ("h", "hn"), ("hn", "W_h")])
    expect = c.verdict(identity_ok=[("h", "h_prev")])
    v = c.vals
    args = [v[n] for n in names]
    raw_args, cp = _copied(args), c.copies()

    def check(result):
        assert result is v["h"]
        _same_as_raw(raw.gru_cell_forward, args, raw_args, range(6, 10))
        if _reference_wanted(c, dtype):
            gates, un, h = _gru_step_ref(cp["x_t"], cp["h_prev"], cp["W_x"], cp["W_h"], cp["b_x"], cp["b_h"])
            for name, want in (("gates", gates), ("hn", un), ("h", h)):
                _near(v[name], want, name)
    run("gru_cell_forward", K.gru_cell_forward, args, names, c.arena, expect, check, c.outputs())


@FUZZ
@given(data=st.data())
def test_fuzz_gru_cell_backward(data):
    draw = data.draw
    c, B, _, n_in, H, dtype = _lstm_case(draw, cell=True)
    accumulate, with_dx = draw(st.booleans()), draw(st.booleans())
    grad_role = "inout" if accumulate else "out"
    G = 3 * H
    specs = [("x_t", (B, n_in), "in"), ("h_prev", (B, H), "in"), ("W_x", (n_in, G), "in"), ("W_h", (H, G), "in"),
             ("gates", (B, G), "in"), ("hn", (B, H), "in"), ("dh", (B, H), "in"), ("dx_t", (B, n_in), "out"),
             ("dh_prev", (B, H), "out"), ("dW_x", (n_in, G), grad_role), ("dW_h", (H, G), grad_role),
             ("db_x", (G,), grad_role), ("db_h", (G,), grad_role), ("dgates", (B, G), "out"),
             ("dgates_h", (B, G), "out"), ("dh_ws", (B, H), "out"), ("accum_ws", (n_in + H, G), "out")]
    specs = [s for s in specs if (with_dx or s[0] != "dx_t") and (accumulate or s[0] != "accum_ws")]
    names = [n for n, _, _ in specs]
    c.arrays(specs, dtype, alias_pairs=[p for p in [("dh_prev", "dh"), ("dW_h", "W_h"), ("dgates", "gates"),
                                                    ("accum_ws", "dW_x"), ("dh_ws", "dh")] if p[0] in names])
    v = c.vals
    _drop_none(c, ("dx_t", "accum_ws"))
    with_dx, accumulate = v.get("dx_t") is not None, v.get("accum_ws") is not None
    expect = c.verdict(identity_ok=[("dh_prev", "dh")])
    order = ["x_t", "h_prev", "W_x", "W_h", "gates", "hn", "dh", "dx_t", "dh_prev", "dW_x", "dW_h", "db_x", "db_h",
             "dgates", "dgates_h", "dh_ws", "accum_ws"]
    args = [v.get(n) for n in order]
    raw_args, cp = _copied(args), c.copies()

    def check(result):
        assert result is v["dh_prev"]
        _same_as_raw(raw.gru_cell_backward, args, raw_args, range(7, 17), dx_at=7)
        if not _reference_wanted(c, dtype):
            return
        da, du, direct = _gru_step_grad_ref(cp["gates"], cp["h_prev"], cp["hn"], cp["dh"])
        base = {k: (cp[k] if accumulate else 0.0) for k in ("dW_x", "dW_h", "db_x", "db_h")}
        wants = [("dgates", da), ("dgates_h", du), ("dh_prev", direct + du @ cp["W_h"].T),
                 ("dW_x", base["dW_x"] + cp["x_t"].T @ da), ("dW_h", base["dW_h"] + cp["h_prev"].T @ du),
                 ("db_x", base["db_x"] + da.sum(axis=0)), ("db_h", base["db_h"] + du.sum(axis=0))]
        if with_dx:
            wants.append(("dx_t", da @ cp["W_x"].T))
        for name, want in wants:
            _near(v[name], want, name)
    run("gru_cell_backward", K.gru_cell_backward, args, names, c.arena, expect, check, c.outputs())


# ----------------------------------------------------------------------------- embedding
INDEX_MODES = ["ok"] * 12 + ["range", "float", "bool", "nonnative", "layout", "list", "2d", "alias_out"]


def _fuzz_embedding(draw, backward):
    c = Case(draw)
    N, V, D = draw(DIM), draw(DIM), draw(DIM)
    dtype = np.dtype(draw(st.sampled_from(FLOATS)))
    if backward:
        specs = [("dy", (N, D), "in"), ("dW", (V, D), "out")]
        alias_pairs = [("dW", "dy")]
    else:
        specs = [("W", (V, D), "in"), ("out", (N, D), "out")]
        alias_pairs = [("out", "W")]
    # the table's shape defines V and D (any shape of it is valid): only the other arrays get wrong shapes
    table = ("dW",) if backward else ("W",)
    c.arrays(specs, dtype, alias_pairs=alias_pairs, any_shape=table)
    expect = c.verdict(any_shape=table)
    out_name = specs[1][0]
    mode = draw(st.sampled_from(INDEX_MODES))
    idt = draw(st.sampled_from(INT_DTYPES))
    values = c.rng.integers(0, max(V, 1), N).astype(np.float64)
    shape, layout = (N,), "C"
    if mode == "range" and N:
        values[draw(st.integers(0, N - 1))] = -1 if idt.kind == "i" and draw(st.booleans()) else V + draw(
            st.integers(0, 2))
    elif mode == "float":
        idt = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    elif mode == "bool":
        idt = np.dtype(np.bool_)
    elif mode == "nonnative":
        idt = idt.newbyteorder()
    elif mode == "layout":
        layout = draw(st.sampled_from("SR"))
    elif mode == "2d":
        shape, values = (N, 1), values.reshape(N, 1)
    if mode == "alias_out":
        # indices reinterpreting the bytes of the output (zeros: index 0)
        idt = np.dtype(np.int64 if dtype == FLOATS[1] else np.int32)
        tshape = specs[1][1]
        flat = c.arena.alloc(max(prod(tshape), N), dtype)
        flat[...] = 0.0
        c.vals[out_name] = flat[:prod(tshape)].reshape(tshape)
        indices = flat.view(idt)[:N]
        expect = c.verdict(any_shape=table)
    else:
        indices = c.arena.array(shape, idt, values, layout)
        if mode == "list":
            indices = indices.tolist()
    iv = "ok"
    if not isinstance(indices, np.ndarray) or indices.dtype.kind not in "iu" or not indices.dtype.isnative:
        iv = "err"
    elif indices.shape != (N,) or not indices.flags.c_contiguous:
        iv = "err"
    elif N and (int(indices.min()) < 0 or int(indices.max()) >= V):
        iv = "err"
    elif isinstance(c.vals[out_name], np.ndarray) and np.shares_memory(indices, c.vals[out_name]):
        iv = "err"
    elif isinstance(c.vals[specs[0][0]], np.ndarray) and np.shares_memory(indices, c.vals[specs[0][0]]):
        iv = "either"
    c.vals["indices"] = indices
    return c, worst(expect, iv), indices, specs, N, V, D, dtype


@FUZZ
@given(data=st.data())
def test_fuzz_embedding_forward(data):
    c, expect, indices, specs, N, V, D, dtype = _fuzz_embedding(data.draw, backward=False)
    v = c.vals
    args = [indices, v["W"], v["out"]]
    cp = c.copies()

    def check(result):
        assert result is v["out"]
        assert np.array_equal(v["out"], cp["W"][cp["indices"].astype(np.int64)], equal_nan=True)
    run("embedding_forward", K.embedding_forward, args, ["indices", "W", "out"], c.arena, expect, check,
        c.outputs())


@FUZZ
@given(data=st.data())
def test_fuzz_embedding_backward(data):
    c, expect, indices, specs, N, V, D, dtype = _fuzz_embedding(data.draw, backward=True)
    v = c.vals
    args = [indices, v["dy"], v["dW"]]
    cp = c.copies()

    def check(result):
        assert result is v["dW"]
        want = np.zeros(v["dW"].shape, v["dW"].dtype)     # (both arrays may have been drawn in the other dtype)
        np.add.at(want, cp["indices"].astype(np.int64), cp["dy"])     # in index order, as the kernel adds
        assert np.array_equal(v["dW"], want, equal_nan=True)
    run("embedding_backward", K.embedding_backward, args, ["indices", "dy", "dW"], c.arena, expect, check,
        c.outputs())


def test_zz_both_outcomes_seen():
    """Every kernel fuzzed in this run gave both clean errors and correct results
    (runs last, by file order; kernels not run in this session are skipped)."""
    for name in KERNELS:
        c = PER_KERNEL[name]
        if c["cases"] >= 50:
            assert c["error"] > 0 and c["ok"] > 0, (name, dict(c))


# ----------------------------------------------------------------------------- Adam and dropout
GOOD_BETAS = [0.0, 0.3, 0.9, 0.999, np.float32(0.5), np.float64(0.8)]
BAD_BETAS = [1.0, 1.5, 2, -0.1, float("nan"), float("inf"), "0.9", None, True, np.array(0.9)]
GOOD_STEPS = [1, 2, 10, np.int64(3), np.uint8(7), 2 ** 40]
BAD_STEPS = [0, -1, 1.0, True, None, "1", np.array([1]), 2 ** 63]


@FUZZ
@given(data=st.data())
def test_fuzz_adam_step(data):
    draw = data.draw
    c = Case(draw)
    n = 33000 if draw(BIG) else draw(st.integers(0, 9))
    dtype = draw(st.sampled_from(FLOATS))
    amsgrad = draw(st.sampled_from([False, True] * 4 + [None, 1, "yes"]))
    ams = amsgrad is True
    specs = [("p", (n,), "inout"), ("g", (n,), "in"), ("m", (n,), "inout"), ("v", (n,), "inout")]
    if ams:
        specs.append(("vmax", (n,), "inout"))
    names = [s[0] for s in specs]
    c.arrays(specs, dtype, alias_pairs=[(a, b) for i, a in enumerate(names) for b in names[i + 1:]])
    for name in ("v", "vmax"):  # second moments are >= 0 (a state Adam can reach)
        a = c.vals.get(name)
        if isinstance(a, np.ndarray) and a.flags.writeable and a.dtype in FLOATS:
            a[...] = np.abs(a)
    vmax = c.vals["vmax"] if ams else draw(st.sampled_from([None, np.zeros(0, dtype), np.zeros(3)]))
    spoil = draw(st.sampled_from([None] * 20 + ["step", "lr", "beta1", "beta2", "eps", "weight_decay",
                                                "decoupled"]))
    step = draw(st.sampled_from(BAD_STEPS if spoil == "step" else GOOD_STEPS))
    lr, eps, wd = (draw(st.sampled_from(BAD_REALS if spoil == s else [0.0, 1e-3, 0.1, np.float32(0.01), 1]))
                   for s in ("lr", "eps", "weight_decay"))
    b1, b2 = (draw(st.sampled_from(BAD_BETAS if spoil == s else GOOD_BETAS)) for s in ("beta1", "beta2"))
    decoupled = draw(st.sampled_from([None, 0, "no"] if spoil == "decoupled" else [False, True, np.bool_(True)]))
    expect = c.verdict()
    beta_ok = all(real_ok(b) and float(b) < 1 for b in (b1, b2))
    step_ok = isinstance(step, (int, np.integer)) and not isinstance(step, (bool, np.bool_)) and 1 <= step < 2 ** 63
    if not (real_ok(lr) and real_ok(eps) and real_ok(wd) and beta_ok and step_ok) \
            or not isinstance(amsgrad, (bool, np.bool_)) or not isinstance(decoupled, (bool, np.bool_)):
        expect = "err"
    cp = c.copies()
    p, m, v = c.vals["p"], c.vals["m"], c.vals["v"]

    def check(result):
        assert result is p
        want = ref.adam(cp["p"], cp["g"], cp["m"], cp["v"], cp.get("vmax", np.zeros(0)), int(step), float(lr),
                        float(b1), float(b2), float(eps), float(wd), ams, bool(decoupled))
        fin = np.isfinite(cp["p"]) & np.isfinite(cp["g"]) & np.isfinite(cp["m"]) & np.isfinite(cp["v"])
        if ams:
            fin &= np.isfinite(cp["vmax"])
        step_size = float(lr) / (1 - float(b1) ** int(step))
        bc2 = (1 - float(b2) ** int(step)) ** 0.5
        vhat = want[3] if ams else want[2]
        den = np.sqrt(np.abs(vhat)) / bc2 + float(eps)
        with np.errstate(divide="ignore", invalid="ignore"):
            upd = step_size * (absf(cp["m"]) + absf(cp["g"]) + float(wd) * absf(cp["p"])) / den
        mag = 1 + absf(cp["p"]) + np.nan_to_num(upd, nan=0.0, posinf=0.0)
        assert_close(p[fin], want[0][fin], p.dtype, mag[fin], "p")
        mmag = 1 + absf(cp["m"]) + absf(cp["g"]) + float(wd) * absf(cp["p"])
        assert_close(m[fin], want[1][fin], p.dtype, mmag[fin], "m")
        assert_close(v[fin], want[2][fin], p.dtype, (mmag ** 2 + absf(cp["v"]))[fin], "v")
        if ams:
            assert_close(c.vals["vmax"][fin], want[3][fin], p.dtype, (mmag ** 2 + absf(cp["vmax"]))[fin], "vmax")
        elif isinstance(vmax, np.ndarray):
            assert vmax.tobytes() == np.zeros_like(vmax).tobytes(), "vmax written without amsgrad"

    args = [p, c.vals["g"], m, v, vmax, step, lr, b1, b2, eps, wd, amsgrad, decoupled]
    run("adam_step", K.adam_step, args, ["p", "g", "m", "v", "vmax", "step", "lr", "beta1", "beta2", "eps",
                                         "weight_decay", "amsgrad", "decoupled"],
        c.arena, expect, check, c.outputs())


GOOD_P = [0.0, 0.1, 0.5, 0.9, np.float32(0.25), 0]
BAD_P = [1.0, 1, -0.1, 1.5, float("nan"), float("inf"), "0.1", None, True, np.array(0.5)]
GOOD_SEEDS = [0, 1, 12345, 2 ** 62, np.int64(5), np.uint32(9)]
BAD_SEEDS = [-1, 2 ** 63, 1.5, None, True, "1", np.array([1])]


@FUZZ
@given(data=st.data())
def test_fuzz_dropout_apply(data):
    draw = data.draw
    c = Case(draw)
    shape = (33000,) if draw(BIG) else draw(SHAPE)
    dtype = draw(st.sampled_from(FLOATS))
    c.arrays([("x", shape, "in"), ("out", shape, "out")], dtype, alias_pairs=[("x", "out")])
    spoil = draw(st.sampled_from([None] * 6 + ["p", "seed", "step"]))
    p = draw(st.sampled_from(BAD_P if spoil == "p" else GOOD_P))
    seed, step = (draw(st.sampled_from(BAD_SEEDS if spoil == s else GOOD_SEEDS)) for s in ("seed", "step"))
    expect = c.verdict(identity_ok=[("x", "out")])
    ints_ok = all(isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)) and 0 <= k < 2 ** 63
                  for k in (seed, step))
    if not (real_ok(p) and float(p) < 1 and ints_ok):
        expect = "err"
    cp = c.copies()
    out = c.vals["out"]

    def check(result):
        assert result is out
        x = cp["x"]
        keep = ref.dropout_mask(x.size, float(p), int(seed), int(step)).reshape(x.shape)
        dt = x.dtype  # the arrays' dtype (both may differ from the drawn one)
        scale = dt.type(1.0 / (1.0 - float(p)))
        want = np.where(keep, x * scale, np.zeros((), dt))  # the product in the dtype: exact match
        assert out.tobytes() == want.astype(dt).tobytes(), "dropout output differs from the reference"

    run("dropout_apply", K.dropout_apply, [c.vals["x"], out, p, seed, step], ["x", "out", "p", "seed", "step"],
        c.arena, expect, check, c.outputs())
