"""Start-up: the serial twins, the tiered start of fit, and the compile cache
(an edited source never runs stale code; concurrent processes never corrupt
it)."""

import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import jitprop as jp
from jitprop import _fused
from jitprop.kernels import raw as K

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mlp(dtype, seed=0):
    return jp.Sequential([jp.Dense(5, 12, dtype=dtype, seed=seed), jp.ReLU(),
                          jp.Dense(12, 7, dtype=dtype, seed=seed + 1), jp.Tanh(),
                          jp.Dense(7, 3, dtype=dtype, seed=seed + 2)])


# --------------------------------------------------------------------------
# serial twins: what each parallel kernel runs below PAR_MIN, bitwise
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_serial_twins_equal_the_parallel_kernels(rng, dtype):
    x = rng.standard_normal((20, 6)).astype(dtype)
    W = rng.standard_normal((6, 9)).astype(dtype)
    b = rng.standard_normal(9).astype(dtype)
    dy = rng.standard_normal((20, 9)).astype(dtype)
    for act in (K.ACT_IDENTITY, K.ACT_RELU, K.ACT_SIGMOID, K.ACT_TANH):
        outs = [np.empty((20, 9), dtype) for _ in range(2)]
        K.dense_act_forward(x, W, b, outs[0], act)
        K.dense_act_forward_serial(x, W, b, outs[1], act)
        np.testing.assert_array_equal(outs[0], outs[1])
        if act in (K.ACT_IDENTITY, K.ACT_RELU):  # the twin of those two alone, loops and BLAS
            own = np.empty((20, 9), dtype)
            K.dense_relu_forward_serial(x, W, b, own, act == K.ACT_RELU)
            np.testing.assert_array_equal(own, outs[0])
            xb, Wb = np.tile(x, (2, 5)), np.tile(W, (5, 3))  # 40 x 30 x 27 multiply-adds > SMALL_MM
            big = [np.empty((40, 27), dtype) for _ in range(2)]
            K.dense_act_forward_serial(xb, Wb, np.tile(b, 3), big[0], act)
            K.dense_relu_forward_serial(xb, Wb, np.tile(b, 3), big[1], act == K.ACT_RELU)
            np.testing.assert_array_equal(big[0], big[1])
        a = outs[0]
        got = [np.empty_like(a) for _ in range(2)]
        K.activation_backward(a, dy, got[0], act)
        K.activation_backward_serial(a, dy, got[1], act)
        np.testing.assert_array_equal(got[0], got[1])
        if act != K.ACT_IDENTITY:  # each activation's own serial derivative, out of place and in place
            own = {K.ACT_RELU: K.relu_backward_serial, K.ACT_SIGMOID: K.sigmoid_backward_serial,
                   K.ACT_TANH: K.tanh_backward_serial}[act]
            d = np.empty_like(a)
            own(a, dy, d)
            np.testing.assert_array_equal(d, got[0])
            d = dy.copy()
            own(a, d, d)
            np.testing.assert_array_equal(d, got[0])
        z = [np.empty_like(dy) for _ in range(2)]
        K.activation_forward(dy, z[0], act)
        K.activation_forward_serial(dy, z[1], act)
        np.testing.assert_array_equal(z[0], z[1])
    grads = [(np.empty((20, 6), dtype), np.empty((6, 9), dtype), np.empty(9, dtype)) for _ in range(4)]
    K.dense_backward(x, W, dy, *grads[0])
    K.dense_backward_serial(x, W, dy, *grads[1])
    K.dense_backward_params(x, dy, *grads[2][1:])
    K.dense_backward_params_serial(x, dy, *grads[3][1:])
    for g0, g1 in zip(grads[0], grads[1]):
        np.testing.assert_array_equal(g0, g1)
    for g0, g1, g2 in zip(grads[0][1:], grads[2][1:], grads[3][1:]):
        np.testing.assert_array_equal(g0, g2)
        np.testing.assert_array_equal(g0, g1)
    labels = rng.integers(0, 9, 20)
    res = []
    for f in (K.softmax_cross_entropy, K.softmax_cross_entropy_serial, K.mse_loss, K.mse_loss_serial):
        g, row = np.empty_like(dy), np.empty(20, dtype)
        v = f(dy, labels, g, row) if "entropy" in f.__name__ else f(dy, a, g, row)
        res.append((v, g))
    for (v0, g0), (v1, g1) in (res[0:2], res[2:4]):
        assert v0 == v1
        np.testing.assert_array_equal(g0, g1)
    ps = [rng.standard_normal(50).astype(dtype) for _ in range(3)]
    runs = []
    for f in (K.sgd_step, K.sgd_step_serial):
        p, g, v = (q.copy() for q in ps)
        for _ in range(3):
            f(p, g, v, 0.1, 0.9, 1e-3, True)
        runs.append((p, v))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_small_layers_compile_no_parallel_kernel(rng):
    """A small job's per-layer steps call the serial twins only."""
    code = textwrap.dedent("""
        import numpy as np, jitprop as jp
        from jitprop.kernels import raw as K
        rng = np.random.default_rng(0)
        m = jp.Sequential([jp.Dense(5, 12, seed=0), jp.ReLU(), jp.Dense(12, 3, seed=1), jp.Sigmoid()])
        t = jp.Trainer(m, jp.SoftmaxCrossEntropy(), jp.SGD(m, lr=0.1, momentum=0.9))
        t.fit(rng.standard_normal((40, 5)), rng.integers(0, 3, 40), epochs=2, batch_size=8, progress=False,
              use_fused=False)
        t.evaluate(rng.standard_normal((40, 5)), rng.integers(0, 3, 40))
        par = [n for n in dir(K) if getattr(getattr(K, n), "targetoptions", {}).get("parallel")
               and getattr(K, n).signatures]
        print("PARALLEL", par)
    """)
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "PARALLEL []" in out.stdout, out.stdout


# --------------------------------------------------------------------------
# tiered start: layer by layer until the fused kernel is ready, bitwise
# --------------------------------------------------------------------------
@pytest.mark.parametrize("switch_after", [0, 5, 23, 10 ** 9])
def test_tiered_start_is_bitwise_one_path(rng, monkeypatch, switch_after):
    """fit(use_fused="auto") may switch from the per-layer path to the fused
    kernel at any chunk boundary; the result equals either path alone."""
    X = rng.standard_normal((150, 5))
    y = rng.integers(0, 3, 150)
    results = []
    for mode in (True, False, "auto"):
        polls = {"n": 0}
        if mode == "auto":
            monkeypatch.setattr(_fused.FusedMLP, "start", lambda self, mode, steps: False)

            def active(self):
                polls["n"] += 1
                return polls["n"] > switch_after

            monkeypatch.setattr(_fused.FusedMLP, "active", active)
        model = _mlp(np.float32)
        tr = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.05, momentum=0.9))
        hist = tr.fit(X, y, epochs=3, batch_size=16, seed=3, progress=False, use_fused=mode)
        results.append((model.get_params(), tr.optimizer.velocity.copy(), hist["loss"], tr.optimizer.steps))
        monkeypatch.undo()
    for r in results[1:]:
        np.testing.assert_array_equal(results[0][0], r[0])
        np.testing.assert_array_equal(results[0][1], r[1])
        assert results[0][2] == r[2]
        assert results[0][3] == r[3] == 3 * 10


def test_auto_runs_fused_at_once_when_parts_or_long_run(rng):
    model = jp.Sequential([jp.Dense(512, 600, seed=0), jp.ReLU(), jp.Dense(600, 10, seed=1)])
    tr = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.05))
    X = np.zeros((256, 512), np.float32)
    plan = _fused.FusedMLP.build(tr, X, np.zeros(256, np.int64), 128, parts=2)
    assert plan.start("auto", 10) and plan.active()  # two parts: the per-layer path differs
    plan = _fused.FusedMLP.build(tr, X, np.zeros(256, np.int64), 128, parts=1)
    assert plan.start("auto", _fused.SHORT_RUN_STEPS + 1)  # a long run compiles now


# --------------------------------------------------------------------------
# the on-disk cache, in fresh processes
# --------------------------------------------------------------------------
_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    import jitprop as jp
    from jitprop.kernels import raw as K
    z = np.linspace(-3, 3, 64).astype(np.float32).reshape(8, 8)
    labels = np.arange(8) % 8
    g, row = np.empty_like(z), np.empty(8, np.float32)
    v = K.softmax_cross_entropy_serial(z, labels, g, row)
    # a parallel kernel whose prange comes from an inlined body helper, past
    # PAR_MIN so its parallel loop runs (reloaded from the cache in a new process)
    big = np.linspace(-1, 1, 3 * 32768).astype(np.float32)
    out = np.empty_like(big)
    K.relu_forward(big, out)
    assert np.array_equal(out, np.maximum(big, 0)), "relu_forward"
    dy = big.reshape(-1, 192)
    db = np.empty(192, np.float32)
    K.bias_grad(dy, db)
    ref = np.zeros(192, np.float32)
    for r in dy:
        ref += r  # rows added in order, as the kernel does
    assert np.array_equal(db, ref), "bias_grad"
    d = K.softmax_cross_entropy_serial
    print("RESULT %r %r hits=%d misses=%d" % (v, float(g.sum()), sum(d.stats.cache_hits.values()),
                                              sum(d.stats.cache_misses.values())))
""")


def _copy_package(tmp_path):
    dst = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "jitprop"), dst / "jitprop",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    return dst


def _run(src, cache, script=_SCRIPT):
    env = dict(os.environ, PYTHONPATH=str(src), NUMBA_CACHE_DIR=str(cache), JITPROP_CACHE_DIR=str(cache))
    # cwd: with -c the current folder comes first on sys.path, before the copy
    return subprocess.Popen([sys.executable, "-c", script], env=env, cwd=str(src), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT")][-1]
    value, gsum, hits, misses = line.split()[1:]
    return float(value), float(gsum), int(hits.split("=")[1]), int(misses.split("=")[1])


def test_edited_source_never_runs_stale_code(tmp_path):
    """An edit to an inlined helper (compiled into its caller's cache entry)
    recompiles the caller in the next process."""
    src = _copy_package(tmp_path)
    cache = tmp_path / "cache"
    first = _result(_run(src, cache))
    again = _result(_run(src, cache))
    assert again[:2] == first[:2] and again[2] >= 1 and again[3] == 0  # loaded, not compiled
    core = src / "jitprop" / "kernels" / "_core.py"
    text = core.read_text()
    old = "    return s / count\n"
    assert text.count(old) == 1
    core.write_text(text.replace(old, "    return 2.0 * s / count\n"))
    assert "2.0 * s" in core.read_text()
    edited = _result(_run(src, cache))
    assert edited[0] == pytest.approx(2 * first[0], rel=1e-12)
    assert edited[3] >= 1  # compiled anew
    core.write_text(text)
    assert _result(_run(src, cache))[:2] == first[:2]


_FMATH_SCRIPT = textwrap.dedent("""
    import numpy as np
    from jitprop.kernels import raw as K
    z = np.linspace(-3, 3, 64).astype(np.float32)
    a = np.empty_like(z)
    K.activation_forward_serial(z, a, K.ACT_SIGMOID)
    d = K.activation_forward_serial
    print("RESULT %r 0 hits=%d misses=%d" % (float(a.sum()), sum(d.stats.cache_hits.values()),
                                           sum(d.stats.cache_misses.values())))
""")


def test_edit_to_shared_helpers_recompiles_the_kernels_that_embed_them(tmp_path):
    """The activation kernels of _core.py embed _fmath.py's sigmoid; Numba's
    own cache key sees only _core.py, so jitprop's key adds _fmath.py's hash."""
    src = _copy_package(tmp_path)
    cache = tmp_path / "cache"
    first = _result(_run(src, cache, _FMATH_SCRIPT))
    again = _result(_run(src, cache, _FMATH_SCRIPT))
    assert again[0] == first[0] and again[2] >= 1 and again[3] == 0  # loaded, not compiled
    fmath = src / "jitprop" / "kernels" / "_fmath.py"
    text = fmath.read_text()
    old = "    return (w * e + (one - w)) / (one + e)\n"
    assert text.count(old) == 1
    fmath.write_text(text.replace(old, "    return (one + one) * ((w * e + (one - w)) / (one + e))\n"))
    edited = _result(_run(src, cache, _FMATH_SCRIPT))
    assert edited[0] == pytest.approx(2 * first[0], rel=1e-6)
    assert edited[3] >= 1  # compiled anew


def test_concurrent_processes_share_one_cache(tmp_path):
    """Processes compiling the same kernels into one empty cache at the same
    time (as MPI ranks do) all compute right, and leave entries a later
    process loads without compiling."""
    src = _copy_package(tmp_path)
    cache = tmp_path / "cache"
    procs = [_run(src, cache) for _ in range(3)]
    results = [_result(p) for p in procs]
    assert len({r[:2] for r in results}) == 1
    later = _result(_run(src, cache))
    assert later[:2] == results[0][:2]
    assert later[2] >= 1 and later[3] == 0


@pytest.mark.slow
def test_background_compile_fills_the_cache(tmp_path):
    """A short fit on an empty cache runs layer by layer and, when its process
    exits, leaves a process compiling the fused kernel into the cache; the
    next process then starts on the fused kernel, with the same result."""
    src = _copy_package(tmp_path)
    cache = tmp_path / "cache"
    script = textwrap.dedent("""
        import sys, numpy as np, jitprop as jp
        from jitprop import _fused
        rng = np.random.default_rng(0)
        X, y = rng.standard_normal((96, 5)), rng.integers(0, 3, 96)
        m = jp.Sequential([jp.Dense(5, 12, seed=0), jp.ReLU(), jp.Dense(12, 3, seed=1)])
        t = jp.Trainer(m, jp.SoftmaxCrossEntropy(), jp.SGD(m, lr=0.1, momentum=0.9))
        plan = _fused.FusedMLP.build(t, X.astype(np.float32), y, 16)
        began_fused = plan.start("auto", 12)
        t.fit(X, y, epochs=2, batch_size=16, progress=False)
        print("RESULT", began_fused, repr(m.flat_params.tolist()))
    """)
    env = dict(os.environ, PYTHONPATH=str(src), NUMBA_CACHE_DIR=str(cache), JITPROP_CACHE_DIR=str(cache),
               JITPROP_BACKGROUND_COMPILE="1")
    outs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", script], env=env, cwd=str(src), capture_output=True, text=True,
                           timeout=1200)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append([ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")][-1].split(" ", 2))
        if len(outs) == 1:
            _wait_for_cache_entry(cache, "mlp_train_steps", timeout=900)
    assert outs[0][1] == "False"  # cold: layer by layer
    assert outs[1][1] == "True"   # then: fused from the cache the exiting process had compiled
    assert outs[0][2] == outs[1][2]


def _wait_for_cache_entry(cache, name, timeout):
    """Wait until Numba's cache under ``cache`` holds machine code of the
    function ``name`` (an index and a data file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = [f for _, _, fs in os.walk(cache) for f in fs if f.split("-")[0].endswith("." + name)]
        if any(f.endswith(".nbi") for f in files) and any(f.endswith(".nbc") for f in files):
            time.sleep(1.0)  # the index is written last; let a slow disk finish
            return
        time.sleep(0.5)
    raise AssertionError(f"no cache entry of {name} after {timeout} s")


def test_background_compile_waits_for_the_layer_by_layer_kernels(monkeypatch):
    """The fused kernel's background compile starts neither before nor during
    the first layer-by-layer step (its kernels compile then): it starts once
    steps have run ``BACKGROUND_AFTER`` seconds after the first, or at exit;
    once, also when each fit call runs a single step."""
    launched, at_exit = [], []
    monkeypatch.setattr(_fused, "_load_compiled", lambda dispatcher, args: False)  # as on an empty cache
    monkeypatch.setattr(_fused, "compile_in_background", lambda dtype: launched.append(dtype))
    monkeypatch.setattr(_fused, "compile_at_exit", lambda dtype: at_exit.append(dtype))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((32, 5)).astype(np.float32), rng.integers(0, 3, 32)
    m = jp.Sequential([jp.Dense(5, 8, seed=0), jp.ReLU(), jp.Dense(8, 3, seed=1)])
    t = jp.Trainer(m, jp.SoftmaxCrossEntropy(), jp.SGD(m, lr=0.1))
    monkeypatch.setattr(_fused, "BACKGROUND_AFTER", 3600.0)
    t.fit(X[:16], y[:16], epochs=1, batch_size=16, progress=False)  # one step: nothing yet
    assert launched == [] and at_exit == []
    t.fit(X, y, epochs=3, batch_size=16, progress=False)  # after it: at exit, not yet now
    assert launched == [] and at_exit == [np.dtype(np.float32)]
    monkeypatch.setattr(_fused, "BACKGROUND_AFTER", 0.0)
    t.fit(X[:16], y[:16], epochs=1, batch_size=16, progress=False)  # its time has come
    assert launched == [np.dtype(np.float32)]
    t.fit(X, y, epochs=3, batch_size=16, progress=False)
    assert len(launched) == 1 and len(at_exit) == 1
