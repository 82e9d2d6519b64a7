"""Tests of the LSTM kernels: raw (jitprop.kernels.raw) and checked (jitprop.kernels)."""

import json
import os
import subprocess
import sys
import textwrap
import types

import numba
import numpy as np
import pytest

import jitprop.kernels as K
from jitprop.kernels import _recurrent as R
from jitprop.kernels import raw as L

try:  # tests/ may or may not be a package
    from ._lstm_reference import reference_backward, reference_forward
except ImportError:
    from _lstm_reference import reference_backward, reference_forward

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (B, T, n_in, H): every axis of size 1 appears, and H > 64 / 4H not a
# multiple of 64 exercise the column blocking of the element-wise loops.
SHAPES = [
    (1, 1, 1, 1),
    (2, 3, 4, 5),
    (1, 4, 3, 2),
    (3, 1, 2, 3),
    (4, 5, 1, 1),
    (2, 3, 3, 70),
]
FD_SHAPES = [(1, 1, 1, 1), (2, 3, 2, 3), (3, 2, 1, 2)]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def make_problem(B, T, n_in, H, dtype, seed=0, scale=0.5):
    """Random inputs/weights plus upstream gradients R (h_seq), R2, R3."""
    rng = np.random.default_rng(seed)

    def rnd(*shape, s=1.0):
        return np.ascontiguousarray((s * rng.standard_normal(shape)).astype(dtype))

    return dict(
        x=rnd(B, T, n_in),
        W_x=rnd(n_in, 4 * H, s=scale),
        W_h=rnd(H, 4 * H, s=scale),
        b=rnd(4 * H, s=scale),
        h0=rnd(B, H, s=0.5),
        c0=rnd(B, H, s=0.5),
        dh_seq=rnd(B, T, H),
        dh_T=rnd(B, H),
        dc_T=rnd(B, H),
    )


def alloc(B, T, n_in, H, dtype):
    """All output/cache/workspace arrays, filled with NaN so that a kernel
    relying on initial contents (or failing to write an output) shows up."""
    return {k: np.full(s, np.nan, dtype)
            for k, s in L.lstm_workspace_shapes(B, T, n_in, H).items()}


def run_forward(p, ws, fwd=None, parts=1):
    fwd = L.lstm_forward if fwd is None else fwd
    args = (p["x"], p["W_x"], p["W_h"], p["b"], p["h0"], p["c0"], ws["h_seq"],
            ws["h_T"], ws["c_T"], ws["gates"], ws["states"], ws["step_ws"])
    if parts == 1:
        fwd(*args)
    else:
        fwd(*args, parts)


def run_backward(p, ws, with_dx=True, bwd=None, parts=1):
    bwd = L.lstm_backward if bwd is None else bwd
    args = (p["x"], p["W_x"], p["W_h"], p["dh_seq"], p["dh_T"], p["dc_T"],
            ws["gates"], ws["states"], ws["dx"] if with_dx else None, ws["dW_x"],
            ws["dW_h"], ws["db"], ws["dh0"], ws["dc0"], ws["dgates"],
            ws["step_ws"])
    if parts == 1:
        bwd(*args)
    else:
        n_in, H = p["W_x"].shape[0], p["W_h"].shape[0]
        dw_ws = np.full((parts - 1, (n_in + H) * 4 * H), np.nan, p["x"].dtype)
        bwd(*args, parts, dw_ws)


def run_all(p, fwd=None, bwd=None, with_dx=True, parts=1):
    B, T, n_in = p["x"].shape
    H = p["W_h"].shape[0]
    ws = alloc(B, T, n_in, H, p["x"].dtype)
    run_forward(p, ws, fwd, parts)
    run_backward(p, ws, with_dx, bwd, parts)
    return ws


OUTPUTS = ("h_seq", "h_T", "c_T")
GRADS = ("dx", "dW_x", "dW_h", "db", "dh0", "dc0")


def reference(p):
    h_seq, h_T, c_T, tape = reference_forward(p["x"], p["W_x"], p["W_h"],
                                              p["b"], p["h0"], p["c0"])
    out = dict(h_seq=h_seq, h_T=h_T, c_T=c_T)
    out.update(reference_backward(p["W_x"], p["W_h"], tape, p["dh_seq"],
                                  p["dh_T"], p["dc_T"]))
    return out


def rel_err(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    den = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if den == 0 else np.linalg.norm(a - b) / den


# --------------------------------------------------------------------------
# against the NumPy reference
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B%dT%dN%dH%d" % s)
def test_matches_reference_float64(shape):
    p = make_problem(*shape, np.float64, seed=1)
    ws = run_all(p)
    ref = reference(p)
    for k in OUTPUTS + GRADS:
        assert ws[k].dtype == np.float64
        np.testing.assert_allclose(ws[k], ref[k], rtol=1e-12, atol=1e-12,
                                   err_msg=k)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B%dT%dN%dH%d" % s)
def test_matches_reference_float32(shape):
    p = make_problem(*shape, np.float32, seed=2)
    ws = run_all(p)
    ref = reference(p)   # float64 arithmetic on the same float32 inputs
    for k in OUTPUTS + GRADS:
        assert ws[k].dtype == np.float32
        assert np.all(np.isfinite(ws[k])), k
        scale = max(1.0, float(np.max(np.abs(ref[k]))))
        np.testing.assert_allclose(ws[k], ref[k], rtol=1e-4,
                                   atol=1e-4 * scale, err_msg=k)
        assert rel_err(ws[k], ref[k]) < 1e-5, k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_skip_dx_gives_same_other_grads(dtype):
    p = make_problem(2, 3, 4, 5, dtype, seed=3)
    full = run_all(p, with_dx=True)
    part = run_all(p, with_dx=False)
    assert np.all(np.isnan(part["dx"]))          # untouched
    for k in GRADS[1:]:
        assert np.array_equal(full[k], part[k]), k


def test_backward_is_repeatable_and_overwrites():
    p = make_problem(3, 4, 2, 5, np.float64, seed=4)
    ws = run_all(p)
    first = {k: ws[k].copy() for k in GRADS}
    for k in GRADS:           # garbage in the outputs must not leak through
        ws[k][...] = 123.0
    run_backward(p, ws)
    for k in GRADS:
        assert np.array_equal(first[k], ws[k]), k


def test_saturated_gates_are_finite():
    # Very large pre-activations: the stable sigmoid must not overflow.
    for dtype in (np.float32, np.float64):
        p = make_problem(2, 3, 3, 4, dtype, seed=5, scale=200.0)
        ws = run_all(p)
        ref = reference(p) if dtype == np.float64 else None
        for k in OUTPUTS + GRADS:
            assert np.all(np.isfinite(ws[k])), (dtype, k)
        if ref is not None:
            for k in OUTPUTS:
                np.testing.assert_allclose(ws[k], ref[k], atol=1e-12)


# --------------------------------------------------------------------------
# central finite differences (float64)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape,parts", [(s, 1) for s in FD_SHAPES] + [((5, 3, 2, 3), 2), ((4, 2, 1, 2), 3)],
                         ids=lambda v: "B%dT%dN%dH%d" % v if isinstance(v, tuple) else "parts%d" % v)
def test_finite_differences(shape, parts):
    """Central differences in float64; with parts > 1 the batch is cut into
    parts that run at the same time (B=5 in 2 parts of 3 and 2 rows; B=4 in
    3 parts, of which only 2 hold rows)."""
    B, T, n_in, H = shape
    p = make_problem(*shape, np.float64, seed=6)
    R, R2, R3 = p["dh_seq"], p["dh_T"], p["dc_T"]
    ws = alloc(B, T, n_in, H, np.float64)

    def loss():
        run_forward(p, ws, parts=parts)
        return (np.sum(ws["h_seq"] * R) + np.sum(ws["h_T"] * R2)
                + np.sum(ws["c_T"] * R3))

    run_forward(p, ws, parts=parts)
    run_backward(p, ws, parts=parts)
    analytic = {"x": ws["dx"].copy(), "W_x": ws["dW_x"].copy(),
                "W_h": ws["dW_h"].copy(), "b": ws["db"].copy(),
                "h0": ws["dh0"].copy(), "c0": ws["dc0"].copy()}
    eps = 1e-6
    for name, ana in analytic.items():
        arr = p[name]
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            lp = loss()
            arr[idx] = old - eps
            lm = loss()
            arr[idx] = old
            num[idx] = (lp - lm) / (2 * eps)
        err = rel_err(num, ana)
        assert err < 1e-6, (name, err)


# --------------------------------------------------------------------------
# against torch.nn.LSTM
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 4, 5, 6), (2, 5, 3, 70)],
                         ids=lambda s: "B%dT%dN%dH%d" % s)
def test_matches_torch(shape):
    torch = pytest.importorskip("torch")
    B, T, n_in, H = shape
    p = make_problem(*shape, np.float64, seed=7)
    ws = run_all(p)

    lstm = torch.nn.LSTM(n_in, H, batch_first=True).double()
    rng = np.random.default_rng(8)
    b_hh = rng.standard_normal(4 * H) * 0.3      # split the bias
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(p["W_x"].T.copy()))
        lstm.weight_hh_l0.copy_(torch.from_numpy(p["W_h"].T.copy()))
        lstm.bias_ih_l0.copy_(torch.from_numpy(p["b"] - b_hh))
        lstm.bias_hh_l0.copy_(torch.from_numpy(b_hh))
    x = torch.from_numpy(p["x"].copy()).requires_grad_(True)
    h0 = torch.from_numpy(p["h0"][None].copy()).requires_grad_(True)
    c0 = torch.from_numpy(p["c0"][None].copy()).requires_grad_(True)
    out, (hT, cT) = lstm(x, (h0, c0))
    loss = ((out * torch.from_numpy(p["dh_seq"])).sum()
            + (hT[0] * torch.from_numpy(p["dh_T"])).sum()
            + (cT[0] * torch.from_numpy(p["dc_T"])).sum())
    loss.backward()

    def close(a, b, name):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=name)

    close(ws["h_seq"], out.detach().numpy(), "h_seq")
    close(ws["h_T"], hT[0].detach().numpy(), "h_T")
    close(ws["c_T"], cT[0].detach().numpy(), "c_T")
    close(ws["dx"], x.grad.numpy(), "dx")
    close(ws["dh0"], h0.grad[0].numpy(), "dh0")
    close(ws["dc0"], c0.grad[0].numpy(), "dc0")
    close(ws["dW_x"], lstm.weight_ih_l0.grad.numpy().T, "dW_x")
    close(ws["dW_h"], lstm.weight_hh_l0.grad.numpy().T, "dW_h")
    close(ws["db"], lstm.bias_ih_l0.grad.numpy(), "db (ih)")
    close(ws["db"], lstm.bias_hh_l0.grad.numpy(), "db (hh)")


# --------------------------------------------------------------------------
# determinism: thread count and serial compilation
# --------------------------------------------------------------------------

def _recompiled(kernel, parallel, **global_overrides):
    """Uncached compilation of a kernel's Python source, optionally with some
    module globals replaced (e.g. to force the parallel per-step path)."""
    f = kernel.py_func
    g = dict(f.__globals__)
    g.update(global_overrides)
    clone = types.FunctionType(f.__code__, g, f.__name__, f.__defaults__,
                               f.__closure__)
    return numba.njit(parallel=parallel, error_model="numpy")(clone)


@pytest.fixture(scope="module")
def forced_parallel_kernels():
    # _PAR_STEP_MIN = 0: the gate arithmetic of every step runs in prange.
    return (_recompiled(L.lstm_forward, True, _PAR_STEP_MIN=0),
            _recompiled(L.lstm_backward, True, _PAR_STEP_MIN=0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bitwise_identical_for_1_and_2_threads(dtype, forced_parallel_kernels):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2")
    pfwd, pbwd = forced_parallel_kernels
    p = make_problem(5, 4, 3, 130, dtype, seed=9)
    p2 = make_problem(16, 4, 3, 70, dtype, seed=13)
    old = numba.get_num_threads()
    runs, part_runs = [], []
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            runs.append(run_all(p))                       # shipped kernels
            runs.append(run_all(p, fwd=pfwd, bwd=pbwd))   # prange every step
            part_runs.append(run_all(p2, parts=2))        # the batch in 2 parts
    finally:
        numba.set_num_threads(old)
    for k in OUTPUTS + GRADS + ("gates", "states", "dgates"):
        for other in runs[1:]:
            assert np.array_equal(runs[0][k], other[k]), k
        assert np.array_equal(part_runs[0][k], part_runs[1][k]), k


PART_SHAPES = [(5, 3, 2, 70), (16, 4, 3, 5), (3, 2, 4, 6)]


@pytest.mark.parametrize("shape", PART_SHAPES, ids=lambda s: "B%dT%dN%dH%d" % s)
@pytest.mark.parametrize("parts", [2, 3, 8])
@pytest.mark.parametrize("with_dx", [True, False])
def test_batch_parts_match_reference_and_one_part(shape, parts, with_dx):
    """The batch cut into parts (a prange over parts, each running the whole
    sequence): the NumPy reference to rounding, and one part to rounding
    (the weight gradients are summed part by part)."""
    p = make_problem(*shape, np.float64, seed=12)
    ref = reference(p)
    one = run_all(p, with_dx=with_dx)
    many = run_all(p, with_dx=with_dx, parts=parts)
    for k in OUTPUTS + GRADS:
        if k == "dx" and not with_dx:
            continue
        assert rel_err(many[k], ref[k]) < 1e-12, k
        np.testing.assert_allclose(many[k], one[k], rtol=1e-12, atol=1e-14, err_msg=k)
    for k in ("gates", "states", "dgates"):
        np.testing.assert_allclose(many[k], one[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_batch_parts_need_a_weight_workspace():
    p = make_problem(4, 2, 3, 5, np.float64)
    ws = alloc(4, 2, 3, 5, np.float64)
    run_forward(p, ws, parts=2)
    args = (p["x"], p["W_x"], p["W_h"], p["dh_seq"], p["dh_T"], p["dc_T"], ws["gates"], ws["states"],
            ws["dx"], ws["dW_x"], ws["dW_h"], ws["db"], ws["dh0"], ws["dc0"], ws["dgates"], ws["step_ws"])
    with pytest.raises(ValueError, match="dw_ws"):
        L.lstm_backward(*args, 2)
    with pytest.raises(ValueError, match="dw_ws"):
        K.lstm_backward(*args, 2)
    with pytest.raises(ValueError, match="dw_ws"):
        K.lstm_backward(*args, 2, np.zeros((1, 7)))


@pytest.fixture(scope="module")
def serial_kernels():
    return (_recompiled(L.lstm_forward, False),
            _recompiled(L.lstm_backward, False))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (5, 4, 3, 130)],
                         ids=lambda s: "B%dT%dN%dH%d" % s)
def test_serial_compilation_matches(serial_kernels, shape):
    fwd, bwd = serial_kernels
    p = make_problem(*shape, np.float64, seed=10)
    par = run_all(p)
    ser = run_all(p, fwd=fwd, bwd=bwd)
    for k in OUTPUTS + GRADS:
        assert np.array_equal(par[k], ser[k]), k


# --------------------------------------------------------------------------
# single-step cell kernels
# --------------------------------------------------------------------------

def cell_run(p, accumulate_grads=True):
    """Drive lstm_cell_forward / lstm_cell_backward over the sequence."""
    B, T, n_in = p["x"].shape
    H = p["W_h"].shape[0]
    dt = p["x"].dtype
    s = L.lstm_workspace_shapes(B, T, n_in, H)
    G = 4 * H
    gates = np.full((T, B, G), np.nan, dt)
    tanh_c = np.full((T, B, H), np.nan, dt)
    hs = np.zeros((T + 1, B, H), dt)     # hs[t] = h_{t-1}
    cs = np.zeros((T + 1, B, H), dt)
    hs[0], cs[0] = p["h0"], p["c0"]
    step_ws = np.full(s["cell_step_ws"], np.nan, dt)
    xs = [np.ascontiguousarray(p["x"][:, t]) for t in range(T)]
    for t in range(T):
        L.lstm_cell_forward(xs[t], hs[t], cs[t], p["W_x"], p["W_h"], p["b"],
                            hs[t + 1], cs[t + 1], gates[t], tanh_c[t], step_ws)
    out = dict(h_seq=np.ascontiguousarray(hs[1:].transpose(1, 0, 2)),
               h_T=hs[T].copy(), c_T=cs[T].copy())

    dh = p["dh_T"].copy()                # carried in place (dh_prev is dh)
    dc = p["dc_T"].copy()
    dx = np.full((B, T, n_in), np.nan, dt)
    dx_t = np.full((B, n_in), np.nan, dt)
    dW_x = np.full((n_in, G), np.nan, dt)
    dW_h = np.full((H, G), np.nan, dt)
    db = np.full(G, np.nan, dt)
    dgates = np.full((B, G), np.nan, dt)
    acc = np.full(s["cell_accum_ws"], np.nan, dt)
    parts = []
    for t in range(T - 1, -1, -1):
        dh += p["dh_seq"][:, t]
        first = t == T - 1
        if accumulate_grads:
            ws = None if first else acc
            L.lstm_cell_backward(xs[t], hs[t], cs[t], p["W_x"], p["W_h"],
                                 gates[t], tanh_c[t], dh, dc, dx_t, dh, dc,
                                 dW_x, dW_h, db, dgates, ws)
        else:
            g = (np.empty_like(dW_x), np.empty_like(dW_h), np.empty_like(db))
            L.lstm_cell_backward(xs[t], hs[t], cs[t], p["W_x"], p["W_h"],
                                 gates[t], tanh_c[t], dh, dc, dx_t, dh, dc,
                                 g[0], g[1], g[2], dgates, None)
            parts.append(g)
        dx[:, t] = dx_t
    if not accumulate_grads:
        dW_x = sum(g[0] for g in parts)
        dW_h = sum(g[1] for g in parts)
        db = sum(g[2] for g in parts)
    out.update(dx=dx, dW_x=dW_x, dW_h=dW_h, db=db, dh0=dh, dc0=dc)
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B%dT%dN%dH%d" % s)
@pytest.mark.parametrize("accumulate", [True, False])
def test_cell_composition_matches_sequence_float64(shape, accumulate):
    p = make_problem(*shape, np.float64, seed=11)
    seq = run_all(p)
    cell = cell_run(p, accumulate)
    for k in OUTPUTS + GRADS:
        np.testing.assert_allclose(cell[k], seq[k], rtol=1e-12, atol=1e-13,
                                   err_msg=k)


def test_cell_composition_matches_sequence_float32():
    p = make_problem(3, 4, 5, 70, np.float32, seed=12)
    seq = run_all(p)
    cell = cell_run(p, True)
    for k in OUTPUTS + GRADS:
        assert cell[k].dtype == np.float32
        assert rel_err(cell[k], seq[k]) < 1e-6, k


def test_cell_skip_dx():
    p = make_problem(2, 1, 3, 4, np.float64, seed=13)
    B, _, n_in = p["x"].shape
    H = 4
    x_t = np.ascontiguousarray(p["x"][:, 0])
    h, c, tc = (np.empty((B, H)) for _ in range(3))
    gates, ws = np.empty((B, 4 * H)), np.empty((B, 4 * H))
    L.lstm_cell_forward(x_t, p["h0"], p["c0"], p["W_x"], p["W_h"], p["b"],
                        h, c, gates, tc, ws)
    res = []
    for dx_t in (np.empty((B, n_in)), None):
        g = [np.empty((B, H)), np.empty((B, H)), np.empty((n_in, 4 * H)),
             np.empty((H, 4 * H)), np.empty(4 * H), np.empty((B, 4 * H))]
        L.lstm_cell_backward(x_t, p["h0"], p["c0"], p["W_x"], p["W_h"], gates,
                             tc, p["dh_T"], p["dc_T"], dx_t, *g, None)
        res.append(g)
    for a, b in zip(*res):
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------
# aliasing, argument checking
# --------------------------------------------------------------------------

def test_stateful_aliasing_h0_is_hT():
    p = make_problem(2, 3, 2, 4, np.float64, seed=14)
    ref = run_all(p)
    B, T, n_in = p["x"].shape
    ws = alloc(B, T, n_in, 4, np.float64)
    ws["h_T"][...] = p["h0"]
    ws["c_T"][...] = p["c0"]
    L.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"], ws["h_T"], ws["c_T"],
                   ws["h_seq"], ws["h_T"], ws["c_T"], ws["gates"],
                   ws["states"], ws["step_ws"])
    ws["dh0"][...] = p["dh_T"]
    ws["dc0"][...] = p["dc_T"]
    L.lstm_backward(p["x"], p["W_x"], p["W_h"], p["dh_seq"], ws["dh0"],
                    ws["dc0"], ws["gates"], ws["states"], ws["dx"],
                    ws["dW_x"], ws["dW_h"], ws["db"], ws["dh0"], ws["dc0"],
                    ws["dgates"], ws["step_ws"])
    for k in OUTPUTS + GRADS:
        assert np.array_equal(ws[k], ref[k]), k


def test_shape_mismatch_raises():
    p = make_problem(2, 3, 2, 4, np.float64, seed=15)
    ws = alloc(2, 3, 2, 4, np.float64)
    with pytest.raises(ValueError, match="gates must have shape"):
        K.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"], p["h0"], p["c0"],
                       ws["h_seq"], ws["h_T"], ws["c_T"],
                       np.zeros((2, 2, 16)),           # T axis too short
                       ws["states"], ws["step_ws"])
    run_forward(p, ws)
    with pytest.raises(ValueError, match="db must have shape"):
        K.lstm_backward(p["x"], p["W_x"], p["W_h"], p["dh_seq"], p["dh_T"],
                        p["dc_T"], ws["gates"], ws["states"], ws["dx"],
                        ws["dW_x"], ws["dW_h"], ws["db"][:-1], ws["dh0"],
                        ws["dc0"], ws["dgates"], ws["step_ws"])


def test_workspace_shapes():
    s = L.lstm_workspace_shapes(2, 3, 4, 5)
    assert s["gates"] == (2, 3, 20)
    assert s["states"] == (3, 2, 3, 5)
    assert s["step_ws"] == (2, 20)
    assert s["dgates"] == (2, 3, 20)
    assert s["cell_accum_ws"] == (9, 20)
    assert all(isinstance(v, tuple) for v in s.values())


# --------------------------------------------------------------------------
# no allocation inside the kernels (NRT statistics, separate process)
# --------------------------------------------------------------------------

_NRT_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    from numba import njit
    from numba.core.runtime import rtsys
    from jitprop.kernels import raw as L

    @njit
    def drive(n, x, W_x, W_h, b, h0, c0, h_seq, h_T, c_T, gates, states,
              step_ws, dh_seq, dh_T, dc_T, dx, dW_x, dW_h, db, dh0, dc0,
              dgates, cx, ch, cc, cg, ctc, cws, cdx, cdg, cacc):
        for _ in range(n):
            L.lstm_forward(x, W_x, W_h, b, h0, c0, h_seq, h_T, c_T, gates,
                           states, step_ws)
            L.lstm_backward(x, W_x, W_h, dh_seq, dh_T, dc_T, gates, states,
                            dx, dW_x, dW_h, db, dh0, dc0, dgates, step_ws)
            L.lstm_backward(x, W_x, W_h, dh_seq, dh_T, dc_T, gates, states,
                            None, dW_x, dW_h, db, dh0, dc0, dgates, step_ws)
            L.lstm_cell_forward(cx, h0, c0, W_x, W_h, b, ch, cc, cg, ctc, cws)
            L.lstm_cell_backward(cx, h0, c0, W_x, W_h, cg, ctc, dh_T, dc_T,
                                 cdx, dh0, dc0, dW_x, dW_h, db, cdg, None)
            L.lstm_cell_backward(cx, h0, c0, W_x, W_h, cg, ctc, dh_T, dc_T,
                                 None, dh0, dc0, dW_x, dW_h, db, cdg, cacc)

    result = {}
    for dtype in (np.float32, np.float64):
        B, T, n_in, H = 3, 4, 5, 70
        rng = np.random.default_rng(0)
        s = L.lstm_workspace_shapes(B, T, n_in, H)
        a = {k: (0.3 * rng.standard_normal(v)).astype(dtype)
             for k, v in s.items()}
        args = [a[k] for k in ("x", "W_x", "W_h", "b", "h0", "c0", "h_seq",
                               "h_T", "c_T", "gates", "states", "step_ws",
                               "dh_seq", "dh_T", "dc_T", "dx", "dW_x", "dW_h",
                               "db", "dh0", "dc0", "dgates", "cell_x_t",
                               "cell_h", "cell_c", "cell_gates",
                               "cell_tanh_c", "cell_step_ws", "cell_dx_t",
                               "cell_dgates", "cell_accum_ws")]
        drive(1, *args)                     # compile + warm up
        counts = []
        for n in (1, 10):
            s0 = rtsys.get_allocation_stats()
            drive(n, *args)
            s1 = rtsys.get_allocation_stats()
            counts.append([s1.alloc - s0.alloc, s1.free - s0.free])
        result[np.dtype(dtype).name] = counts
    print(json.dumps(result))
""")


def test_kernels_do_not_allocate():
    env = dict(os.environ)
    env["NUMBA_NRT_STATS"] = "1"
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _NRT_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for dtype, ((a1, f1), (a10, f10)) in result.items():
        # Unboxing the driver's arguments allocates a fixed number of NRT
        # objects per call; the 10-iteration call must allocate no more.
        assert a1 > 0, dtype            # stats really are enabled
        assert a10 == a1, (dtype, a1, a10)
        assert f10 == f1, (dtype, f1, f10)


def test_float32_kernels_stay_float32_and_vectorise(serial_kernels):
    # Cached code cannot be inspected, so inspect uncached copies: the serial
    # kernels must not promote float32 to float64 anywhere, and the per-row
    # gate loops must be vectorised (and free of exception branches).
    fwd, bwd = serial_kernels
    p = make_problem(2, 3, 4, 5, np.float32, seed=16)
    run_all(p, fwd=fwd, bwd=bwd)
    for kern in (fwd, bwd):
        for sig, ir in kern.inspect_llvm().items():
            if all(a.dtype == numba.float32 for a in sig
                   if isinstance(a, numba.types.Array)):
                assert "fpext" not in ir, kern
    fb = numba.njit(error_model="numpy")(R._lstm_fwd_block.py_func)
    bb = numba.njit(error_model="numpy")(R._lstm_bwd_block.py_func)
    H = 64
    z, ws, b = (np.zeros(4 * H, np.float32) for _ in range(3))
    c, h, o1, o2, o3, o4 = (np.zeros(H, np.float32) for _ in range(6))
    fb(z, ws, b, c, h, o1, o2, o3, o4, H, 0, H)
    bb(z, c, h, o1, o2, o3, ws, b, H, 0, H)
    for kern in (fb, bb):
        ir = "".join(kern.inspect_llvm().values())
        assert "x float>" in ir, kern
        assert "fpext" not in ir, kern
        assert "numba_do_raise" not in ir, kern


# --------------------------------------------------------------------------
# checked entry points (jitprop.kernels) around the raw dispatchers
# --------------------------------------------------------------------------

def test_checked_entry_points_give_the_raw_results_bitwise():
    B, T, n_in, H = 3, 4, 2, 5
    p = make_problem(B, T, n_in, H, np.float32, seed=21)
    raw_ws, chk_ws = alloc(B, T, n_in, H, np.float32), alloc(B, T, n_in, H, np.float32)
    run_forward(p, raw_ws)
    run_backward(p, raw_ws)
    run_forward(p, chk_ws, fwd=K.lstm_forward)
    run_backward(p, chk_ws, bwd=K.lstm_backward)
    for k in OUTPUTS + GRADS + ("gates", "states", "dgates"):
        assert np.array_equal(raw_ws[k], chk_ws[k]), k
    # the cell kernels, with the documented in-place aliases
    s = L.lstm_workspace_shapes(B, T, n_in, H)
    rng = np.random.default_rng(4)
    a = {k: (0.5 * rng.standard_normal(v)).astype(np.float32) for k, v in s.items()}
    b = {k: v.copy() for k, v in a.items()}
    for m, cell_fwd, cell_bwd in ((a, L.lstm_cell_forward, L.lstm_cell_backward),
                                  (b, K.lstm_cell_forward, K.lstm_cell_backward)):
        cell_fwd(m["cell_x_t"], m["cell_h_prev"], m["cell_c_prev"], m["W_x"], m["W_h"], m["b"],
                 m["cell_h"], m["cell_c"], m["cell_gates"], m["cell_tanh_c"], m["cell_step_ws"])
        cell_bwd(m["cell_x_t"], m["cell_h_prev"], m["cell_c_prev"], m["W_x"], m["W_h"], m["cell_gates"],
                 m["cell_tanh_c"], m["cell_dh"], m["cell_dc"], m["cell_dx_t"], m["cell_dh"], m["cell_dc"],
                 m["dW_x"], m["dW_h"], m["db"], m["cell_dgates"], m["cell_accum_ws"])
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_checked_entry_points_name_the_bad_argument():
    B, T, n_in, H = 2, 3, 2, 4
    p = make_problem(B, T, n_in, H, np.float64, seed=22)
    ws = alloc(B, T, n_in, H, np.float64)
    fwd = [p["x"], p["W_x"], p["W_h"], p["b"], p["h0"], p["c0"], ws["h_seq"], ws["h_T"], ws["c_T"],
           ws["gates"], ws["states"], ws["step_ws"]]
    with pytest.raises(ValueError, match=r"W_h must have shape \(H, 4H\)"):
        K.lstm_forward(*fwd[:2], np.zeros((4, 15)), *fwd[3:])
    with pytest.raises(TypeError, match="h0 must have dtype float64"):
        K.lstm_forward(*fwd[:4], p["h0"].astype(np.float32), *fwd[5:])
    with pytest.raises(ValueError, match="states must be C-contiguous"):
        K.lstm_forward(*fwd[:10], np.asfortranarray(ws["states"]), fwd[11])
    with pytest.raises(ValueError, match="h_seq and gates must not overlap"):
        K.lstm_forward(*fwd[:6], ws["gates"].reshape(-1)[:B * T * H].reshape(B, T, H), *fwd[7:])
    with pytest.raises(ValueError, match="parts must be >= 1"):
        K.lstm_forward(*fwd, 0)
    K.lstm_forward(*fwd[:7], p["h0"], p["c0"], *fwd[9:])     # h_T is h0, c_T is c0: allowed
    run_forward(p, ws)
    bwd = [p["x"], p["W_x"], p["W_h"], p["dh_seq"], p["dh_T"], p["dc_T"], ws["gates"], ws["states"], None,
           ws["dW_x"], ws["dW_h"], ws["db"], ws["dh0"], ws["dc0"], ws["dgates"], ws["step_ws"]]
    K.lstm_backward(*bwd)                                     # dx None: skipped, allowed
    with pytest.raises(TypeError, match="dW_x must be a numpy.ndarray, got NoneType"):
        K.lstm_backward(*bwd[:9], None, *bwd[10:])            # only dx may be None
    cell = L.lstm_workspace_shapes(B, 1, n_in, H)
    c = {k: np.zeros(v) for k, v in cell.items()}
    with pytest.raises(ValueError, match=r"tanh_c must have shape \(2, 4\)"):
        K.lstm_cell_forward(c["cell_x_t"], c["cell_h_prev"], c["cell_c_prev"], p["W_x"], p["W_h"], p["b"],
                            c["cell_h"], c["cell_c"], c["cell_gates"], np.zeros((2, 5)), c["cell_step_ws"])
    with pytest.raises(ValueError, match=r"accum_ws must have shape \(6, 16\)"):
        K.lstm_cell_backward(c["cell_x_t"], c["cell_h_prev"], c["cell_c_prev"], p["W_x"], p["W_h"],
                             c["cell_gates"], c["cell_tanh_c"], c["cell_dh"], c["cell_dc"], None,
                             c["cell_dh_prev"], c["cell_dc_prev"], c["dW_x"], c["dW_h"], c["db"],
                             c["cell_dgates"], np.zeros((5, 16)))


def test_no_cached_dispatcher_calls_compiled_code_of_another_module():
    """Numba's cache of a function does not notice a change in a compiled
    function it calls from another file: kernels that call each other live in
    one module.  Every cached dispatcher in jitprop may only reference
    dispatchers defined in its own module, or in a shared source whose hash
    is part of every cache entry's key (jitprop._cache.SHARED_SOURCES)."""
    import importlib
    import pkgutil

    import jitprop
    from jitprop import _cache as jp_cache
    from numba.core.dispatcher import Dispatcher

    def _shared(disp):
        path = os.path.abspath(disp.py_func.__code__.co_filename)
        return path in [os.path.abspath(p) for p in jp_cache.SHARED_SOURCES]

    def referenced(code, globs):
        out = []
        for name in code.co_names:
            obj = globs.get(name)
            if isinstance(obj, Dispatcher):
                out.append((name, obj))
            elif isinstance(obj, types.ModuleType):   # module.kernel
                out += [(f"{name}.{attr}", getattr(obj, attr)) for attr in code.co_names
                        if isinstance(getattr(obj, attr, None), Dispatcher)]
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                out += referenced(const, globs)
        return out

    modules = [importlib.import_module(m.name)
               for m in pkgutil.walk_packages(jitprop.__path__, "jitprop.") if ".bench" not in m.name]
    checked, bad = 0, []
    for mod in modules:
        for name, obj in vars(mod).items():
            if not isinstance(obj, Dispatcher) or obj.py_func.__module__ != mod.__name__:
                continue
            if type(obj._cache).__name__ == "NullCache":
                continue
            checked += 1
            for ref_name, ref in referenced(obj.py_func.__code__, obj.py_func.__globals__):
                if ref.py_func.__module__ != mod.__name__ and not _shared(ref):
                    bad.append(f"{mod.__name__}.{name} calls {ref_name} from {ref.py_func.__module__}")
    assert checked > 20       # the kernel modules were found
    assert not bad, bad
