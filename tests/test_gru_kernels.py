"""Tests of the compiled GRU kernels (jitprop.kernels._recurrent and the checked
entry points in jitprop.kernels)."""

import json
import os
import subprocess
import sys
import textwrap
import types

import numba
import numpy as np
import pytest

from jitprop import kernels as KC
from jitprop.kernels import _recurrent as G
from jitprop.kernels import _recurrent_shapes

try:  # tests/ may or may not be a package
    from ._gru_reference import reference_backward, reference_forward
except ImportError:
    from _gru_reference import reference_backward, reference_forward

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (B, T, n_in, H): every axis of size 1 appears; H = 70 exercises the column blocks
SHAPES = [(1, 1, 1, 1), (2, 3, 4, 5), (1, 4, 3, 2), (3, 1, 2, 3), (4, 5, 1, 1), (2, 3, 3, 70)]
FD_SHAPES = [(1, 1, 1, 1), (1, 3, 2, 3), (2, 1, 3, 2), (3, 2, 1, 2), (2, 3, 2, 1)]
OUTPUTS = ("h_seq", "h_T")
GRADS = ("dx", "dW_x", "dW_h", "db_x", "db_h", "dh0")
PARAMS = ("x", "W_x", "W_h", "b_x", "b_h", "h0")


def make_problem(B, T, n_in, H, dtype, seed=0, scale=0.5):
    """Random inputs/weights plus upstream gradients dh_seq, dh_T."""
    rng = np.random.default_rng(seed)

    def rnd(*shape, s=1.0):
        return np.ascontiguousarray((s * rng.standard_normal(shape)).astype(dtype))

    return dict(x=rnd(B, T, n_in), W_x=rnd(n_in, 3 * H, s=scale), W_h=rnd(H, 3 * H, s=scale),
                b_x=rnd(3 * H, s=scale), b_h=rnd(3 * H, s=scale), h0=rnd(B, H, s=0.5),
                dh_seq=rnd(B, T, H), dh_T=rnd(B, H))


def alloc(B, T, n_in, H, dtype, parts=1):
    """Every output/cache/workspace, NaN-filled so that relying on initial
    contents or leaving an output unwritten shows up."""
    return {k: np.full(s, np.nan, dtype) for k, s in _recurrent_shapes.gru_workspace_shapes(B, T, n_in, H, parts).items()}


def run_forward(p, ws, fwd=None, parts=1):
    fwd = G.gru_forward if fwd is None else fwd
    fwd(p["x"], p["W_x"], p["W_h"], p["b_x"], p["b_h"], p["h0"], ws["h_seq"], ws["h_T"], ws["gates"],
        ws["states"], ws["step_ws"], parts)


def run_backward(p, ws, with_dx=True, bwd=None, parts=1):
    bwd = G.gru_backward if bwd is None else bwd
    bwd(p["x"], p["W_x"], p["W_h"], p["dh_seq"], p["dh_T"], ws["gates"], ws["states"],
        ws["dx"] if with_dx else None, ws["dW_x"], ws["dW_h"], ws["db_x"], ws["db_h"], ws["dh0"],
        ws["dgates"], ws["dgates_h"], ws["step_ws"], ws["dh_ws"], parts, ws["dw_ws"] if parts > 1 else None)


def run_all(p, fwd=None, bwd=None, with_dx=True, parts=1):
    B, T, n_in = p["x"].shape
    ws = alloc(B, T, n_in, p["W_h"].shape[0], p["x"].dtype, parts)
    run_forward(p, ws, fwd, parts)
    run_backward(p, ws, with_dx, bwd, parts)
    return ws


def reference(p):
    h_seq, h_T, tape = reference_forward(*(p[k] for k in PARAMS))
    out = dict(h_seq=h_seq, h_T=h_T)
    out.update(reference_backward(p["W_x"], p["W_h"], tape, p["dh_seq"], p["dh_T"]))
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
        np.testing.assert_allclose(ws[k], ref[k], rtol=1e-12, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B%dT%dN%dH%d" % s)
def test_matches_reference_float32(shape):
    p = make_problem(*shape, np.float32, seed=2)
    ws = run_all(p)
    ref = reference(p)   # float64 arithmetic on the same float32 inputs
    for k in OUTPUTS + GRADS:
        assert ws[k].dtype == np.float32
        assert np.all(np.isfinite(ws[k])), k
        scale = max(1.0, float(np.max(np.abs(ref[k]))))
        np.testing.assert_allclose(ws[k], ref[k], rtol=1e-4, atol=1e-4 * scale, err_msg=k)
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
    for k in GRADS + ("dh_ws", "dgates", "dgates_h", "step_ws"):   # garbage must not leak through
        ws[k][...] = 123.0
    run_backward(p, ws)
    for k in GRADS:
        assert np.array_equal(first[k], ws[k]), k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saturated_gates_are_finite(dtype):
    p = make_problem(2, 3, 3, 4, dtype, seed=5, scale=200.0)
    ws = run_all(p)
    for k in OUTPUTS + GRADS:
        assert np.all(np.isfinite(ws[k])), k
    if dtype == np.float64:
        ref = reference(p)
        for k in OUTPUTS:
            np.testing.assert_allclose(ws[k], ref[k], atol=1e-12)


# --------------------------------------------------------------------------
# central finite differences (float64)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape,parts", [(s, 1) for s in FD_SHAPES] + [((5, 3, 2, 3), 2), ((4, 2, 1, 2), 3)],
                         ids=lambda v: "B%dT%dN%dH%d" % v if isinstance(v, tuple) else "parts%d" % v)
def test_finite_differences(shape, parts):
    """Every parameter, the input and h0; with parts > 1 the batch runs in
    parts (B=5 in 2 parts of 3 and 2 rows; B=4 in 3 parts of which 2 hold rows)."""
    p = make_problem(*shape, np.float64, seed=6)
    ws = alloc(*shape, np.float64, parts)

    def loss():
        run_forward(p, ws, parts=parts)
        return np.sum(ws["h_seq"] * p["dh_seq"]) + np.sum(ws["h_T"] * p["dh_T"])

    run_forward(p, ws, parts=parts)
    run_backward(p, ws, parts=parts)
    analytic = {k: ws["d" + k].copy() for k in PARAMS}
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
        assert np.any(ana != 0), name                 # the check is not vacuous


# --------------------------------------------------------------------------
# against torch.nn.GRU
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 4, 5, 6), (2, 5, 3, 70), (16, 4, 3, 5)],
                         ids=lambda s: "B%dT%dN%dH%d" % s)
def test_matches_torch(shape):
    torch = pytest.importorskip("torch")
    B, T, n_in, H = shape
    p = make_problem(*shape, np.float64, seed=7)
    ws = run_all(p)
    gru = torch.nn.GRU(n_in, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        gru.weight_ih_l0.copy_(torch.from_numpy(p["W_x"].T.copy()))
        gru.weight_hh_l0.copy_(torch.from_numpy(p["W_h"].T.copy()))
        gru.bias_ih_l0.copy_(torch.from_numpy(p["b_x"]))
        gru.bias_hh_l0.copy_(torch.from_numpy(p["b_h"]))
    x = torch.from_numpy(p["x"].copy()).requires_grad_(True)
    h0 = torch.from_numpy(p["h0"][None].copy()).requires_grad_(True)
    out, hT = gru(x, h0)
    loss = (out * torch.from_numpy(p["dh_seq"])).sum() + (hT[0] * torch.from_numpy(p["dh_T"])).sum()
    loss.backward()

    def close(a, b, name):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=name)

    close(ws["h_seq"], out.detach().numpy(), "h_seq")
    close(ws["h_T"], hT[0].detach().numpy(), "h_T")
    close(ws["dx"], x.grad.numpy(), "dx")
    close(ws["dh0"], h0.grad[0].numpy(), "dh0")
    close(ws["dW_x"], gru.weight_ih_l0.grad.numpy().T, "dW_x")
    close(ws["dW_h"], gru.weight_hh_l0.grad.numpy().T, "dW_h")
    close(ws["db_x"], gru.bias_ih_l0.grad.numpy(), "db_x")
    close(ws["db_h"], gru.bias_hh_l0.grad.numpy(), "db_h")


# --------------------------------------------------------------------------
# batch parts, thread count, serial compilation
# --------------------------------------------------------------------------

PART_SHAPES = [(5, 3, 2, 70), (16, 4, 3, 5), (3, 2, 4, 6)]


@pytest.mark.parametrize("shape", PART_SHAPES, ids=lambda s: "B%dT%dN%dH%d" % s)
@pytest.mark.parametrize("parts", [2, 3, 8])
@pytest.mark.parametrize("with_dx", [True, False])
def test_batch_parts_match_reference_and_one_part(shape, parts, with_dx):
    p = make_problem(*shape, np.float64, seed=12)
    ref = reference(p)
    one = run_all(p, with_dx=with_dx)
    many = run_all(p, with_dx=with_dx, parts=parts)
    for k in OUTPUTS + GRADS:
        if k == "dx" and not with_dx:
            continue
        assert rel_err(many[k], ref[k]) < 1e-12, k
        np.testing.assert_allclose(many[k], one[k], rtol=1e-12, atol=1e-14, err_msg=k)
    for k in ("gates", "states", "dgates", "dgates_h"):
        np.testing.assert_allclose(many[k], one[k], rtol=1e-12, atol=1e-14, err_msg=k)


def _recompiled(kernel, parallel, **global_overrides):
    """Uncached compilation of a kernel's source, optionally with module
    globals replaced (e.g. to force the parallel per-step path)."""
    f = kernel.py_func
    g = dict(f.__globals__)
    g.update(global_overrides)
    clone = types.FunctionType(f.__code__, g, f.__name__, f.__defaults__, f.__closure__)
    return numba.njit(parallel=parallel, error_model="numpy")(clone)


@pytest.fixture(scope="module")
def forced_parallel_kernels():
    # _PAR_STEP_MIN = 0: the gate arithmetic of every step runs in a prange
    return (_recompiled(G.gru_forward, True, _PAR_STEP_MIN=0),
            _recompiled(G.gru_backward, True, _PAR_STEP_MIN=0))


_THREADS_SCRIPT = textwrap.dedent("""
    import sys, numba, numpy as np
    sys.path.insert(0, sys.argv[1])
    import test_gru_kernels as t
    pfwd = t._recompiled(t.G.gru_forward, True, _PAR_STEP_MIN=0)
    pbwd = t._recompiled(t.G.gru_backward, True, _PAR_STEP_MIN=0)
    out = {}
    for dtype in (np.float32, np.float64):
        p = t.make_problem(5, 4, 3, 130, dtype, seed=9)
        p2 = t.make_problem(16, 4, 3, 70, dtype, seed=13)
        for name, ws in (("one", t.run_all(p)), ("prange", t.run_all(p, fwd=pfwd, bwd=pbwd)),
                         ("parts", t.run_all(p2, parts=2)), ("parts8", t.run_all(p2, parts=8))):
            for k, v in ws.items():
                out[f"{np.dtype(dtype).name}/{name}/{k}"] = v
    np.savez(sys.argv[2], **out)
""")


def test_bitwise_identical_for_1_and_2_threads(tmp_path):
    """Separate processes with NUMBA_NUM_THREADS=1 and 2: every output,
    cache and workspace result bitwise equal, on the one-part path, the
    per-step prange path and the batch in 2 and 8 parts."""
    results = []
    for n in (1, 2):
        env = dict(os.environ, NUMBA_NUM_THREADS=str(n))
        env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        path = tmp_path / f"t{n}.npz"
        proc = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, os.path.dirname(__file__), str(path)],
                              env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr
        results.append(dict(np.load(path)))
    one, two = results
    assert set(one) == set(two) and len(one) > 0
    skip = ("dw_ws",)   # workspace of the part shares: rows beyond the used parts stay NaN in both
    for k in one:
        if k.rsplit("/", 1)[1] in skip:
            continue
        assert np.array_equal(one[k], two[k], equal_nan=True), k
        if k.rsplit("/", 1)[1] in OUTPUTS + GRADS:
            assert np.all(np.isfinite(one[k])), k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forced_parallel_steps_match(dtype, forced_parallel_kernels):
    pfwd, pbwd = forced_parallel_kernels
    p = make_problem(5, 4, 3, 130, dtype, seed=9)
    ser = run_all(p)
    par = run_all(p, fwd=pfwd, bwd=pbwd)
    for k in OUTPUTS + GRADS + ("gates", "states", "dgates", "dgates_h"):
        assert np.array_equal(ser[k], par[k]), k


@pytest.fixture(scope="module")
def serial_kernels():
    return _recompiled(G.gru_forward, False), _recompiled(G.gru_backward, False)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (5, 4, 3, 130)], ids=lambda s: "B%dT%dN%dH%d" % s)
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

def cell_run(p, accumulate_grads=True, checked=False):
    """Drive the cell kernels over the sequence."""
    K = KC if checked else G
    B, T, n_in = p["x"].shape
    H = p["W_h"].shape[0]
    dt = p["x"].dtype
    s = _recurrent_shapes.gru_workspace_shapes(B, T, n_in, H)
    gates = np.full((T, B, 3 * H), np.nan, dt)
    hn = np.full((T, B, H), np.nan, dt)
    hs = np.zeros((T + 1, B, H), dt)     # hs[t] = h_{t-1}
    hs[0] = p["h0"]
    step_ws = np.full(s["cell_step_ws"], np.nan, dt)
    xs = [np.ascontiguousarray(p["x"][:, t]) for t in range(T)]
    for t in range(T):
        K.gru_cell_forward(xs[t], hs[t], p["W_x"], p["W_h"], p["b_x"], p["b_h"], hs[t + 1], gates[t], hn[t],
                           step_ws)
    out = dict(h_seq=np.ascontiguousarray(hs[1:].transpose(1, 0, 2)), h_T=hs[T].copy())
    dh = p["dh_T"].copy()                # carried in place (dh_prev is dh)
    dx = np.full((B, T, n_in), np.nan, dt)
    dx_t = np.full((B, n_in), np.nan, dt)
    grads = {k: np.full(s[k], np.nan, dt) for k in ("dW_x", "dW_h", "db_x", "db_h")}
    dg, dgh, dh_ws = (np.full(s["cell_" + k], np.nan, dt) for k in ("dgates", "dgates_h", "dh_ws"))
    acc = np.full(s["cell_accum_ws"], np.nan, dt)
    shares = []
    for t in range(T - 1, -1, -1):
        dh += p["dh_seq"][:, t]
        if accumulate_grads:
            g = grads
            ws = None if t == T - 1 else acc
        else:
            g = {k: np.empty_like(v) for k, v in grads.items()}
            shares.append(g)
            ws = None
        K.gru_cell_backward(xs[t], hs[t], p["W_x"], p["W_h"], gates[t], hn[t], dh, dx_t, dh, g["dW_x"],
                            g["dW_h"], g["db_x"], g["db_h"], dg, dgh, dh_ws, ws)
        dx[:, t] = dx_t
    if not accumulate_grads:
        grads = {k: sum(g[k] for g in shares) for k in grads}
    out.update(dx=dx, dh0=dh, **grads)
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B%dT%dN%dH%d" % s)
@pytest.mark.parametrize("accumulate", [True, False])
def test_cell_composition_matches_sequence_float64(shape, accumulate):
    p = make_problem(*shape, np.float64, seed=11)
    seq = run_all(p)
    cell = cell_run(p, accumulate)
    for k in OUTPUTS + GRADS:
        np.testing.assert_allclose(cell[k], seq[k], rtol=1e-12, atol=1e-13, err_msg=k)


def test_cell_checked_entry_points_and_float32():
    p = make_problem(3, 4, 5, 70, np.float32, seed=12)
    seq = run_all(p)
    cell = cell_run(p, True, checked=True)
    for k in OUTPUTS + GRADS:
        assert cell[k].dtype == np.float32
        assert rel_err(cell[k], seq[k]) < 1e-6, k


def test_cell_skip_dx():
    p = make_problem(2, 1, 3, 4, np.float64, seed=13)
    B, _, n_in = p["x"].shape
    H = 4
    x_t = np.ascontiguousarray(p["x"][:, 0])
    h, hn = np.empty((B, H)), np.empty((B, H))
    gates, ws = np.empty((B, 3 * H)), np.empty((B, 3 * H))
    G.gru_cell_forward(x_t, p["h0"], p["W_x"], p["W_h"], p["b_x"], p["b_h"], h, gates, hn, ws)
    res = []
    for dx_t in (np.empty((B, n_in)), None):
        g = [np.empty((B, H)), np.empty((n_in, 3 * H)), np.empty((H, 3 * H)), np.empty(3 * H),
             np.empty(3 * H), np.empty((B, 3 * H)), np.empty((B, 3 * H)), np.empty((B, H))]
        G.gru_cell_backward(x_t, p["h0"], p["W_x"], p["W_h"], gates, hn, p["dh_T"], dx_t, *g, None)
        res.append(g)
    for a, b in zip(*res, strict=True):
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------
# aliasing, checked entry points
# --------------------------------------------------------------------------

def test_stateful_aliasing_h0_is_hT():
    p = make_problem(2, 3, 2, 4, np.float64, seed=14)
    ref = run_all(p)
    ws = alloc(2, 3, 2, 4, np.float64)
    ws["h_T"][...] = p["h0"]
    KC.gru_forward(p["x"], p["W_x"], p["W_h"], p["b_x"], p["b_h"], ws["h_T"], ws["h_seq"], ws["h_T"],
                   ws["gates"], ws["states"], ws["step_ws"])
    ws["dh0"][...] = p["dh_T"]
    KC.gru_backward(p["x"], p["W_x"], p["W_h"], p["dh_seq"], ws["dh0"], ws["gates"], ws["states"], ws["dx"],
                    ws["dW_x"], ws["dW_h"], ws["db_x"], ws["db_h"], ws["dh0"], ws["dgates"], ws["dgates_h"],
                    ws["step_ws"], ws["dh_ws"])
    for k in OUTPUTS + GRADS:
        assert np.array_equal(ws[k], ref[k]), k


def _checked_args(p, ws):
    fwd = [p["x"], p["W_x"], p["W_h"], p["b_x"], p["b_h"], p["h0"], ws["h_seq"], ws["h_T"], ws["gates"],
           ws["states"], ws["step_ws"]]
    bwd = [p["x"], p["W_x"], p["W_h"], p["dh_seq"], p["dh_T"], ws["gates"], ws["states"], ws["dx"], ws["dW_x"],
           ws["dW_h"], ws["db_x"], ws["db_h"], ws["dh0"], ws["dgates"], ws["dgates_h"], ws["step_ws"],
           ws["dh_ws"]]
    return fwd, bwd


def test_checked_entry_points_match_raw_and_name_bad_arguments():
    p = make_problem(4, 3, 2, 5, np.float64, seed=15)
    ws = alloc(4, 3, 2, 5, np.float64, parts=2)
    fwd, bwd = _checked_args(p, ws)
    KC.gru_forward(*fwd)
    KC.gru_backward(*bwd, 2, ws["dw_ws"])
    ref = run_all(p, parts=2)
    for k in OUTPUTS + GRADS:
        assert np.array_equal(ws[k], ref[k]), k
    bad = list(fwd)
    bad[8] = np.zeros((4, 2, 15))                      # gates: T axis too short
    with pytest.raises(ValueError, match="gates"):
        KC.gru_forward(*bad)
    bad = list(fwd)
    bad[3] = p["b_x"].astype(np.float32)
    with pytest.raises(TypeError, match="b_x"):
        KC.gru_forward(*bad)
    bad = list(bwd)
    bad[10] = ws["db_x"][:-1]
    with pytest.raises(ValueError, match="db_x"):
        KC.gru_backward(*bad)
    bad = list(bwd)
    bad[10] = ws["db_h"]                                # the same array twice
    with pytest.raises(ValueError, match="overlap"):
        KC.gru_backward(*bad)
    with pytest.raises(ValueError, match="dw_ws"):
        KC.gru_backward(*bwd, 2)
    with pytest.raises(ValueError, match="dw_ws"):
        KC.gru_backward(*bwd, 2, ws["dw_ws"][:0])       # no row for the second part
    with pytest.raises(ValueError, match=r"W_h must have shape \(H, 3H\)"):
        KC.gru_forward(p["x"], p["W_x"], np.zeros((5, 20)), *fwd[3:])


def test_workspace_shapes():
    s = _recurrent_shapes.gru_workspace_shapes(2, 3, 4, 5, parts=3)
    assert s["gates"] == (2, 3, 15) and s["states"] == (2, 2, 3, 5)
    assert s["step_ws"] == (2, 15) and s["dgates_h"] == (2, 3, 15)
    assert s["dw_ws"] == (2, 9 * 15) and s["cell_accum_ws"] == (9, 15)
    assert KC.gru_workspace_shapes is _recurrent_shapes.gru_workspace_shapes
    assert all(isinstance(v, tuple) for v in s.values())


# --------------------------------------------------------------------------
# no allocation inside the kernels (NRT statistics, separate process)
# --------------------------------------------------------------------------

_NRT_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    from numba import njit
    from numba.core.runtime import rtsys
    from jitprop.kernels import raw as R

    @njit
    def drive(n, a):
        (x, W_x, W_h, b_x, b_h, h0, h_seq, h_T, gates, states, step_ws, dh_seq, dh_T, dx, dW_x, dW_h, db_x,
         db_h, dh0, dgates, dgates_h, dh_ws, dw_ws, cx, ch, cg, chn, cws, cdx, cdg, cdgh, cdhws, cacc) = a
        for _ in range(n):
            R.gru_forward(x, W_x, W_h, b_x, b_h, h0, h_seq, h_T, gates, states, step_ws)
            R.gru_forward(x, W_x, W_h, b_x, b_h, h0, h_seq, h_T, gates, states, step_ws, 2)
            R.gru_backward(x, W_x, W_h, dh_seq, dh_T, gates, states, dx, dW_x, dW_h, db_x, db_h, dh0,
                           dgates, dgates_h, step_ws, dh_ws)
            R.gru_backward(x, W_x, W_h, dh_seq, dh_T, gates, states, None, dW_x, dW_h, db_x, db_h, dh0,
                           dgates, dgates_h, step_ws, dh_ws, 2, dw_ws)
            R.gru_cell_forward(cx, h0, W_x, W_h, b_x, b_h, ch, cg, chn, cws)
            R.gru_cell_backward(cx, h0, W_x, W_h, cg, chn, dh_T, cdx, dh0, dW_x, dW_h, db_x, db_h, cdg, cdgh,
                                cdhws, None)
            R.gru_cell_backward(cx, h0, W_x, W_h, cg, chn, dh_T, None, dh0, dW_x, dW_h, db_x, db_h, cdg, cdgh,
                                cdhws, cacc)

    result = {}
    for dtype in (np.float32, np.float64):
        s = R.gru_workspace_shapes(4, 4, 5, 70, parts=2)
        rng = np.random.default_rng(0)
        a = {k: (0.3 * rng.standard_normal(v)).astype(dtype) for k, v in s.items()}
        args = tuple(a[k] for k in (
            "x", "W_x", "W_h", "b_x", "b_h", "h0", "h_seq", "h_T", "gates", "states", "step_ws", "dh_seq",
            "dh_T", "dx", "dW_x", "dW_h", "db_x", "db_h", "dh0", "dgates", "dgates_h", "dh_ws", "dw_ws",
            "cell_x_t", "cell_h", "cell_gates", "cell_hn", "cell_step_ws", "cell_dx_t", "cell_dgates",
            "cell_dgates_h", "cell_dh_ws", "cell_accum_ws"))
        drive(1, args)
        counts = []
        for n in (1, 10):
            s0 = rtsys.get_allocation_stats()
            drive(n, args)
            s1 = rtsys.get_allocation_stats()
            counts.append([s1.alloc - s0.alloc, s1.free - s0.free])
        result[np.dtype(dtype).name] = counts
    print(json.dumps(result))
""")


def test_kernels_do_not_allocate():
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _NRT_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for dtype, ((a1, f1), (a10, f10)) in result.items():
        # unboxing the arguments allocates a fixed number of objects per call
        assert a1 > 0, dtype
        assert a10 == a1, (dtype, a1, a10)
        assert f10 == f1, (dtype, f1, f10)


def test_float32_gate_loops_stay_float32_and_vectorise():
    fb = numba.njit(error_model="numpy")(G._gru_fwd_block.py_func)
    bb = numba.njit(error_model="numpy")(G._gru_bwd_block.py_func)
    H = 64
    g, ws, bx, bh, da, du, dc = (np.zeros(3 * H, np.float32) for _ in range(7))
    h, o1, o2, o3, hp, un, dh, dhw = (np.zeros(H, np.float32) for _ in range(8))
    fb(g, ws, bx, bh, h, o1, o2, o3, H, 0, H)
    bb(g, hp, un, dh, dhw, o1, da, du, dc, H, 0, H)
    for kern in (fb, bb):
        ir = "".join(kern.inspect_llvm().values())
        assert "x float>" in ir, kern
        assert "fpext" not in ir, kern
        assert "numba_do_raise" not in ir, kern
