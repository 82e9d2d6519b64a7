"""Kernels against NumPy references, finite differences, PyTorch, and
themselves across thread counts."""

import numba
import numpy as np
import pytest

import jitprop as jp
from jitprop import kernels as K
from jitprop.kernels import raw as R
from jitprop.kernels._core import FASTMATH

import _reference as ref
from _helpers import tol

DTYPES = [np.float32, np.float64]
ACTS = {"identity": K.ACT_IDENTITY, "relu": K.ACT_RELU, "sigmoid": K.ACT_SIGMOID, "tanh": K.ACT_TANH}
# empty products, both sides of SMALL_MM (16*16*16 runs as loops, one more column in BLAS), and larger
DENSE_SHAPES = [(0, 4, 3), (4, 0, 3), (1, 1, 1), (1, 5, 3), (7, 1, 4), (6, 3, 1), (16, 16, 16), (16, 16, 17),
                (33, 17, 9), (64, 20, 130)]


def randn(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


# ----------------------------------------------------------------------------- references
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DENSE_SHAPES)
@pytest.mark.parametrize("act", list(ACTS))
def test_dense_act_forward_matches_numpy(rng, dtype, shape, act):
    n, n_in, n_out = shape
    x, W, b = randn(rng, (n, n_in), dtype), randn(rng, (n_in, n_out), dtype), randn(rng, n_out, dtype)
    out = np.full((n, n_out), np.nan, dtype)
    K.dense_act_forward(x, W, b, out, ACTS[act])
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(out, ref.act(ref.dense_forward(x, W, b), act), rtol=rtol, atol=atol * 10)
    if act == "identity":
        out2 = np.empty_like(out)
        K.dense_forward(x, W, b, out2)
        np.testing.assert_array_equal(out, out2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DENSE_SHAPES)
def test_dense_backward_matches_numpy(rng, dtype, shape):
    n, n_in, n_out = shape
    x, W, dy = randn(rng, (n, n_in), dtype), randn(rng, (n_in, n_out), dtype), randn(rng, (n, n_out), dtype)
    dx, dW, db = np.empty((n, n_in), dtype), np.empty((n_in, n_out), dtype), np.empty(n_out, dtype)
    K.dense_backward(x, W, dy, dx, dW, db)
    rdx, rdW, rdb = ref.dense_backward(x, W, dy)
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(dx, rdx, rtol=rtol, atol=atol * 10)
    np.testing.assert_allclose(dW, rdW, rtol=rtol, atol=atol * 10)
    np.testing.assert_allclose(db, rdb, rtol=rtol, atol=atol * 10)
    dW2, db2 = np.empty_like(dW), np.empty_like(db)
    K.dense_backward_params(x, dy, dW2, db2)
    np.testing.assert_array_equal(dW2, dW)
    np.testing.assert_array_equal(db2, db)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("shape", [(1,), (1, 1), (5, 7), (3, 4, 5), (300, 200)])
def test_activation_matches_numpy(rng, dtype, act, shape):
    z = randn(rng, shape, dtype, 3.0)
    a = np.empty_like(z)
    getattr(K, f"{act}_forward")(z, a)
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(a, ref.act(z, act), rtol=rtol, atol=atol)
    da = randn(rng, shape, dtype)
    dz = np.empty_like(z)
    getattr(K, f"{act}_backward")(a, da, dz)
    # the kernel differentiates from the output; the reference from the input
    np.testing.assert_allclose(dz, da * ref.act_grad_from_input(z, act), rtol=10 * rtol, atol=10 * atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_extreme_inputs(dtype):
    z = np.array([-1e4, -800.0, -100.0, -30.0, 0.0, 30.0, 100.0, 800.0, 1e4, np.inf, -np.inf, np.nan], dtype)
    with np.errstate(all="ignore"):
        for act in ("sigmoid", "tanh", "relu"):
            a = np.empty_like(z)
            getattr(K, f"{act}_forward")(z, a)
            assert np.isnan(a[-1]), f"{act} must propagate NaN (no nnan fastmath)"
            assert np.all(np.isfinite(a[:-1])) or act == "relu"
            np.testing.assert_allclose(a[:-1], ref.act(z[:-1], act), rtol=1e-6, atol=1e-30)


def test_activation_in_place(rng):
    z = randn(rng, (50, 40), np.float64)
    expected = ref.act(z, "tanh")
    K.tanh_forward(z, z)
    np.testing.assert_allclose(z, expected, rtol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (8, 1), (16, 10), (4, 3, 2), (300, 130)])
def test_mse_matches_numpy(rng, dtype, shape):
    p, t = randn(rng, shape, dtype), randn(rng, shape, dtype)
    g, row = np.empty_like(p), np.empty(shape[0], dtype)
    value = K.mse_loss(p, t, g, row)
    rl, rg = ref.mse(p, t)
    rtol, atol = tol(dtype)
    assert value == pytest.approx(rl, rel=rtol)
    np.testing.assert_allclose(g, rg, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (6, 1), (16, 10), (400, 100)])
def test_softmax_xent_matches_numpy(rng, dtype, shape):
    n, c = shape
    z = randn(rng, shape, dtype, 4.0)
    y = rng.integers(0, c, n)
    g, row = np.empty_like(z), np.empty(n, dtype)
    value = K.softmax_cross_entropy(z, y, g, row)
    rl, rg = ref.softmax_xent(z, y)
    rtol, atol = tol(dtype)
    assert value == pytest.approx(rl, rel=rtol, abs=atol)
    np.testing.assert_allclose(g, rg, rtol=rtol, atol=atol)
    # int32 labels are accepted too
    value32 = K.softmax_cross_entropy(z, y.astype(np.int32), g, row)
    assert value32 == value


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_is_stable_for_huge_logits(dtype):
    z = np.array([[1000.0, 0.0, -1000.0], [5e3, 5e3, 5e3]], dtype)
    y = np.array([0, 2])
    g, row = np.empty_like(z), np.empty(2, dtype)
    value = K.softmax_cross_entropy(z, y, g, row)
    assert np.isfinite(value) and np.all(np.isfinite(g))
    assert value == pytest.approx(np.log(3.0) / 2, rel=1e-6)


def test_softmax_xent_rejects_bad_labels():
    z = np.zeros((2, 3))
    g, row = np.empty_like(z), np.empty(2)
    with pytest.raises(ValueError, match="labels"):
        K.softmax_cross_entropy(z, np.array([0, 3]), g, row)
    with pytest.raises(ValueError, match="outside"):
        R.softmax_cross_entropy(z, np.array([0, -1]), g, row)
    with pytest.raises(TypeError, match="integer"):
        K.softmax_cross_entropy(z, np.array([0.0, 1.0]), g, row)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,wd,nesterov", [(0.0, 0.0, False), (0.0, 1e-2, False),
                                                   (0.9, 0.0, False), (0.9, 5e-3, False),
                                                   (0.8, 1e-3, True)])
@pytest.mark.parametrize("n", [1, 7, 40000])
def test_sgd_matches_formula_over_steps(rng, dtype, momentum, wd, nesterov, n):
    p = randn(rng, n, dtype)
    v = np.zeros(n, dtype)
    rp, rv = p.astype(np.float64), np.zeros(n)
    for step in range(5):
        g = randn(rng, n, dtype)
        K.sgd_step(p, g, v, 0.05, momentum, wd, nesterov)
        rp, rv = ref.sgd(rp, g, rv, 0.05, momentum, wd, nesterov)
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(p, rp, rtol=10 * rtol, atol=10 * atol)
    if momentum:
        np.testing.assert_allclose(v, rv, rtol=10 * rtol, atol=10 * atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_norm", [0.1, 1e6])
def test_clip_grad_norm(rng, dtype, max_norm):
    grads = [randn(rng, s, dtype) for s in [(3, 4), (7,), (50000,)]]
    expected, enorm = ref.clip(grads, max_norm)
    flat = np.concatenate([g.ravel() for g in grads])
    norm = K.clip_grad_norm(flat, max_norm)
    assert norm == pytest.approx(enorm, rel=1e-12)
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(flat, np.concatenate([e.ravel() for e in expected]), rtol=rtol, atol=atol)
    norm2 = K.clip_grad_norm_list(grads, max_norm)
    assert norm2 == pytest.approx(enorm, rel=1e-12)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    if max_norm < enorm:
        assert np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads)) == pytest.approx(max_norm, rel=1e-5)


def test_segment_norms(rng):
    flat = rng.standard_normal(100)
    offsets = np.array([0, 10, 10, 60, 100])
    out = np.empty(4)
    R.segment_norms(flat, offsets, out)
    np.testing.assert_allclose(out, [np.linalg.norm(flat[a:b]) for a, b in zip(offsets[:-1], offsets[1:])],
                               rtol=1e-14)


# ------------------------------------------------------------------ finite differences (float64)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 4, 2), (5, 2, 6)])
def test_dense_act_gradients_by_finite_differences(rng, act, shape):
    n, n_in, n_out = shape
    x, W, b = randn(rng, (n, n_in), np.float64), randn(rng, (n_in, n_out), np.float64), randn(rng, n_out, np.float64)
    if act == "relu":  # keep pre-activations away from the kink
        b += np.sign(b) * 0.5
    Rw = randn(rng, (n, n_out), np.float64)
    out = np.empty((n, n_out))

    def loss():
        K.dense_act_forward(x, W, b, out, ACTS[act])
        return float(np.sum(out * Rw))

    loss()
    dz = np.empty_like(out)
    K.activation_backward(out, Rw, dz, ACTS[act])
    dx, dW, db = np.empty_like(x), np.empty_like(W), np.empty_like(b)
    K.dense_backward(x, W, dz, dx, dW, db)
    for name, arr, ana in [("x", x, dx), ("W", W, dW), ("b", b, db)]:
        num = jp.numerical_gradient(loss, arr)
        assert jp.relative_error(ana, num) < 1e-6, name


@pytest.mark.parametrize("shape", [(1, 1), (4, 3), (2, 3, 2)])
def test_mse_gradient_by_finite_differences(rng, shape):
    p, t = randn(rng, shape, np.float64), randn(rng, shape, np.float64)
    g, row = np.empty_like(p), np.empty(shape[0])
    K.mse_loss(p, t, g, row)
    ana = g.copy()
    num = jp.numerical_gradient(lambda: K.mse_loss(p, t, g, row), p)
    assert jp.relative_error(ana, num) < 1e-6


@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (5, 4)])
def test_xent_gradient_by_finite_differences(rng, shape):
    z = randn(rng, shape, np.float64, 2.0)
    y = rng.integers(0, shape[1], shape[0])
    g, row = np.empty_like(z), np.empty(shape[0])
    K.softmax_cross_entropy(z, y, g, row)
    ana = g.copy()
    num = jp.numerical_gradient(lambda: K.softmax_cross_entropy(z, y, g, row), z)
    if shape[1] == 1:  # a single class: the loss is identically 0
        assert np.all(ana == 0) and np.all(num == 0)
    else:
        assert jp.relative_error(ana, num) < 1e-6


# ------------------------------------------------------------- threads: 1 == 2 == serial
def _run_all_kernels(rng_seed, dtype):
    """Run every kernel on arrays large enough to take the parallel paths;
    return every output."""
    rng = np.random.default_rng(rng_seed)
    n, n_in, n_out = 257, 129, 300
    x, W, b = randn(rng, (n, n_in), dtype), randn(rng, (n_in, n_out), dtype), randn(rng, n_out, dtype)
    outs = {}
    for name, code in ACTS.items():
        out = np.empty((n, n_out), dtype)
        R.dense_act_forward(x, W, b, out, code)
        outs[f"dense_{name}"] = out
        dz = np.empty_like(out)
        R.activation_backward(out, x[:, :1] * out, dz, code)
        outs[f"act_bwd_{name}"] = dz
    dy = randn(rng, (n, n_out), dtype)
    dx, dW, db = np.empty((n, n_in), dtype), np.empty((n_in, n_out), dtype), np.empty(n_out, dtype)
    R.dense_backward(x, W, dy, dx, dW, db)
    outs.update(dx=dx, dW=dW, db=db)
    g, row = np.empty_like(dy), np.empty(n, dtype)
    outs["mse"] = np.array(R.mse_loss(dy, outs["dense_identity"], g, row))
    outs["mse_grad"] = g.copy()
    y = rng.integers(0, n_out, n)
    outs["xent"] = np.array(R.softmax_cross_entropy(dy, y, g, row))
    outs["xent_grad"] = g.copy()
    p = randn(rng, 100000, dtype)
    gr = randn(rng, 100000, dtype)
    v = np.zeros_like(p)
    for _ in range(3):
        R.sgd_step(p, gr, v, 0.1, 0.9, 1e-3, True)
    outs.update(p=p, v=v)
    outs["norm"] = np.array(R.clip_grad_norm(gr, 1.0))
    outs["clipped"] = gr
    return outs


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_thread_equals_two_threads(restore_threads, dtype):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    numba.set_num_threads(1)
    one = _run_all_kernels(7, dtype)
    numba.set_num_threads(2)
    two = _run_all_kernels(7, dtype)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k], err_msg=k)


@pytest.mark.parametrize("kernel,args", [
    ("activation_forward", lambda r: (randn(r, (300, 200), np.float64), np.empty((300, 200)), K.ACT_SIGMOID)),
    ("activation_backward", lambda r: (r.random((300, 200)), randn(r, (300, 200), np.float64),
                                       np.empty((300, 200)), K.ACT_TANH)),
    ("bias_grad", lambda r: (randn(r, (300, 500), np.float64), np.empty(500))),
    ("sgd_step", lambda r: (randn(r, 70000, np.float64), randn(r, 70000, np.float64), np.zeros(70000),
                            0.1, 0.9, 0.01, False)),
])
def test_parallel_equals_serial_compilation(rng, kernel, args):
    """The same kernel source compiled without parallel=True gives identical
    results (the parallel loops only split race-free work)."""
    par = getattr(R, kernel)
    ser = numba.njit(fastmath=FASTMATH)(par.py_func)
    a1 = args(np.random.default_rng(3))
    a2 = args(np.random.default_rng(3))
    par(*a1)
    ser(*a2)
    for u, w in zip(a1, a2):
        if isinstance(u, np.ndarray):
            np.testing.assert_array_equal(u, w)


def test_raw_kernels_compose_in_user_njit_code(rng):
    """Users call the raw kernels from their own compiled functions."""

    @numba.njit
    def two_layer_loss(x, W1, b1, h, W2, b2, out, target, grad, row):
        R.dense_act_forward(x, W1, b1, h, R.ACT_TANH)
        R.dense_forward(h, W2, b2, out)
        return R.mse_loss(out, target, grad, row)

    x, W1, b1 = randn(rng, (5, 3), np.float64), randn(rng, (3, 4), np.float64), randn(rng, 4, np.float64)
    W2, b2, t = randn(rng, (4, 2), np.float64), randn(rng, 2, np.float64), randn(rng, (5, 2), np.float64)
    h, out, grad, row = np.empty((5, 4)), np.empty((5, 2)), np.empty((5, 2)), np.empty(5)
    value = two_layer_loss(x, W1, b1, h, W2, b2, out, t, grad, row)
    expected, _ = ref.mse(ref.dense_forward(ref.act(ref.dense_forward(x, W1, b1), "tanh"), W2, b2), t)
    assert value == pytest.approx(expected, rel=1e-12)


def test_float32_stays_float32(rng):
    """No silent float64 promotion: float32 kernels produce float32 results that
    differ from a float64 computation by float32 rounding only."""
    x = randn(rng, (40, 30), np.float32)
    a = np.empty_like(x)
    R.activation_forward(x, a, R.ACT_SIGMOID)
    for sig in R.activation_forward.signatures:
        if sig[0].dtype == numba.float32:
            assert all(getattr(t, "dtype", numba.float32) == numba.float32 for t in sig[:2])
    # the compiled float32 code computes in float32: its result equals NumPy's float32 sigmoid
    expected = (np.float32(1) / (np.float32(1) + np.exp(-np.abs(x)))).astype(np.float32)
    expected = np.where(x >= 0, expected, np.float32(1) - expected)
    np.testing.assert_allclose(a, expected, rtol=2e-7, atol=1e-7)
    p = randn(rng, 10, np.float32)
    v = np.zeros_like(p)
    R.sgd_step(p, np.ones_like(p), v, 0.1, 0.0, 0.0, False)
    assert p.dtype == np.float32


# ----------------------------------------------------------------------------- checked API
def test_checked_wrappers_raise_clear_errors():
    x, W, b = np.zeros((4, 3), np.float32), np.zeros((3, 2), np.float32), np.zeros(2, np.float32)
    out = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"W must have shape \(3, n_out\)"):
        K.dense_forward(x, np.zeros((2, 2), np.float32), b, out)
    with pytest.raises(TypeError, match="b must have dtype float32"):
        K.dense_forward(x, W, b.astype(np.float64), out)
    with pytest.raises(ValueError, match=r"out must have shape \(4, 2\)"):
        K.dense_forward(x, W, b, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        K.dense_forward(np.zeros((3, 4), np.float32).T, W, b, out)
    with pytest.raises(ValueError, match="overlap"):
        K.dense_backward(x, W, out, x, np.zeros((3, 2), np.float32), b.copy())  # dx aliases x
    with pytest.raises(TypeError, match="float32 or float64"):
        K.relu_forward(np.zeros(3, np.int64), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="nesterov"):
        K.sgd_step(np.zeros(3), np.zeros(3), np.zeros(3), 0.1, 0.0, 0.0, True)
    with pytest.raises(ValueError, match="act must be one of"):
        K.activation_forward(np.zeros(3), np.zeros(3), 7)


def test_no_compiled_function_calls_a_parallel_kernel():
    """Every parallel loop lives in the public kernel that runs it; helpers
    are serial.  A cached function embedding another parallel function's loop
    was reloaded from Numba's cache as broken code (a segfault) in a new
    process, so this structure is kept on purpose."""
    from numba.core.registry import CPUDispatcher

    from jitprop.kernels import _core, _embedding, _recurrent

    for mod in (_core, _recurrent, _embedding):
        dispatchers = {k: v for k, v in vars(mod).items() if isinstance(v, CPUDispatcher)}
        parallel = {k for k, v in dispatchers.items() if v.targetoptions.get("parallel")}
        for name, disp in dispatchers.items():
            called = set(disp.py_func.__code__.co_names) & parallel
            assert not called, f"{mod.__name__}.{name} calls parallel kernel(s) {sorted(called)}"


def test_read_only_inputs_compile_one_variant_whichever_they_are():
    # Numba types a read-only array apart from a writable one; the checked entry
    # points pass all inputs read-only when any is, so callers with read-only data
    # (np.load(mmap_mode="r"), np.frombuffer) compile one more variant, not one per combination
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((5, 4)), rng.standard_normal((4, 3)), rng.standard_normal(3)
    want = x @ W + b
    out = np.empty((5, 3))
    for read_only in ([], ["x"], ["W"], ["b"], ["x", "W"], ["x", "W", "b"]):
        args = {"x": x.copy(), "W": W.copy(), "b": b.copy()}
        for name in read_only:
            args[name].flags.writeable = False
        out[...] = np.nan
        K.dense_forward(args["x"], args["W"], args["b"], out)
        np.testing.assert_allclose(out, want, rtol=1e-12)
    # the write flags of (x, W, b) in every float64 variant compiled so far in
    # this process (other tests may have compiled some): all writable or all read-only
    flags = {tuple(t.mutable for t in sig[:3]) for sig in R.dense_forward.signatures
             if all(getattr(t, "dtype", None) == numba.float64 for t in sig[:3])}
    assert flags == {(True, True, True), (False, False, False)}


def test_elementwise_entry_points_compile_one_variant_for_any_number_of_axes(monkeypatch):
    # the checked elementwise kernels pass flat views (MSE: (rows, rest)), so a
    # caller's 0-D to 3-D arrays all run the one 1-D (2-D) compiled kernel; the
    # raw dispatchers are wrapped to record the arrays they are given
    seen = {}
    expected = {"activation_forward": 1, "activation_backward": 1, "dropout_apply": 1, "clip_grad_norm": 1,
                "mse_loss": 2}
    for name in expected:
        def spy(*args, _name=name, _kernel=getattr(R, name)):
            seen.setdefault(_name, set()).update(a.ndim for a in args if isinstance(a, np.ndarray))
            return _kernel(*args)
        monkeypatch.setattr(R, name, spy)
    rng = np.random.default_rng(1)
    for shape in [(7,), (3, 5), (2, 3, 4), ()]:
        z = rng.standard_normal(shape)
        a = np.empty_like(z)
        np.testing.assert_allclose(K.activation_forward(z, a, K.ACT_TANH), np.tanh(z), rtol=1e-12)
        dz = K.activation_backward(a, np.ones_like(z), np.empty_like(z), K.ACT_TANH)
        np.testing.assert_allclose(dz, 1 - np.tanh(z) ** 2, rtol=1e-12)
        K.dropout_apply(z, np.empty_like(z), 0.5, 3, 4)
        K.clip_grad_norm(z.copy(), 1.0)
        if z.ndim:
            K.mse_loss(z, np.zeros_like(z), np.empty_like(z), np.empty(shape[0]))
    # mse_loss's row_loss is 1-D by its nature; the others pass only the flat views
    assert seen == {name: {ndim} if name != "mse_loss" else {1, 2} for name, ndim in expected.items()}
