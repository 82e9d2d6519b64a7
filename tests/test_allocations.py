"""No heap allocation per training step after warm-up.

Numba counts its runtime allocations when ``NUMBA_NRT_STATS=1`` is set
before it is imported, so the measurements run in a subprocess.  A call from
Python into a compiled function creates one small runtime record per array
argument it unboxes (freed on return); that cost is per call, not per step,
so the tests compare runs of different numbers of steps: the counts must be
equal.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, tracemalloc
    import numpy as np
    from numba.core.runtime import rtsys
    import jitprop as jp
    from jitprop._fused import FusedMLP

    rng = np.random.default_rng(0)
    out = {}

    # 1. the fused MLP path: steps [0, k) of an epoch in one compiled call
    X = rng.standard_normal((640, 20)).astype(np.float32)
    y = rng.integers(0, 5, 640)
    model = jp.Sequential([jp.Dense(20, 32, seed=0), jp.ReLU(), jp.Dense(32, 5, seed=1)])
    tr = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.01, momentum=0.9, clip_norm=5.0))
    order = np.arange(640, dtype=np.int64)
    for parts in (1, 2):   # one part, and the batch cut into parts run in a prange
        plan = FusedMLP.build(tr, X, y, 64, parts=parts)
        plan.run(order, 0, 10, True)          # compile / load from cache
        counts = {}
        for k in (1, 10):
            a0 = rtsys.get_allocation_stats().alloc
            plan.run(order, 0, k, True)
            counts[k] = rtsys.get_allocation_stats().alloc - a0
        out["fused_allocs_%d" % parts] = counts

    # 1b. the same with AdamW (amsgrad) in the compiled update
    model_a = jp.Sequential([jp.Dense(20, 32, seed=0), jp.ReLU(), jp.Dense(32, 5, seed=1)])
    tr_a = jp.Trainer(model_a, jp.SoftmaxCrossEntropy(), jp.AdamW(model_a, lr=0.01, amsgrad=True, clip_norm=5.0))
    for parts in (1, 2):
        plan = FusedMLP.build(tr_a, X, y, 64, parts=parts)
        plan.run(order, 0, 10, True)
        counts = {}
        for k in (1, 10):
            a0 = rtsys.get_allocation_stats().alloc
            plan.run(order, 0, k, True)
            counts[k] = rtsys.get_allocation_stats().alloc - a0
        out["fused_adam_allocs_%d" % parts] = counts

    # 2. the LSTM kernels called from compiled code (as from a user's @njit loop)
    from numba import njit
    from jitprop.kernels import raw as KL
    B, T, n_in, H = 4, 6, 3, 5
    shp = KL.lstm_workspace_shapes(B, T, n_in, H)
    a = {k: rng.standard_normal(s).astype(np.float32) for k, s in shp.items()}

    @njit
    def lstm_steps(n, x, W_x, W_h, b, h0, c0, h_seq, h_T, c_T, gates, states, step_ws,
                   dh_seq, dh_T, dc_T, dx, dW_x, dW_h, db, dh0, dc0, dgates):
        for _ in range(n):
            KL.lstm_forward(x, W_x, W_h, b, h0, c0, h_seq, h_T, c_T, gates, states, step_ws)
            KL.lstm_backward(x, W_x, W_h, dh_seq, dh_T, dc_T, gates, states, dx, dW_x, dW_h, db,
                             dh0, dc0, dgates, step_ws)

    names = ["x", "W_x", "W_h", "b", "h0", "c0", "h_seq", "h_T", "c_T", "gates", "states", "step_ws",
             "dh_seq", "dh_T", "dc_T", "dx", "dW_x", "dW_h", "db", "dh0", "dc0", "dgates"]
    args = [a[k] for k in names]
    lstm_steps(1, *args)
    counts = {}
    for k in (1, 10):
        a0 = rtsys.get_allocation_stats().alloc
        lstm_steps(k, *args)
        counts[k] = rtsys.get_allocation_stats().alloc - a0
    out["lstm_allocs"] = counts

    # 3. Python-side memory does not grow with the number of steps of fit()
    tr.fit(X, y, epochs=1, batch_size=64, progress=False)
    tracemalloc.start()
    tr.fit(X, y, epochs=2, batch_size=64, progress=False)
    m2 = tracemalloc.get_traced_memory()[0]
    tr.fit(X, y, epochs=20, batch_size=64, progress=False)
    m20 = tracemalloc.get_traced_memory()[0]
    out["py_growth_bytes"] = m20 - m2
    tracemalloc.stop()

    # 4. the Adam and dropout kernels called from compiled code
    from jitprop.kernels import raw as R

    @njit
    def adam_dropout_steps(n, p, g, m, v, vmax, x, xo):
        for k in range(n):
            R.adam_step(p, g, m, v, vmax, k + 1, 1e-3, 0.9, 0.999, 1e-8, 0.01, True, True)
            R.dropout_apply(x, xo, 0.5, 3, k)

    P = 70000   # above the size where the kernels run chunks in parallel
    vecs = [rng.standard_normal(P).astype(np.float32) for _ in range(5)]
    xs = rng.standard_normal((64, 32)).astype(np.float32)
    xo = np.empty_like(xs)
    adam_dropout_steps(1, *vecs, xs, xo)
    counts = {}
    for k in (1, 10):
        a0 = rtsys.get_allocation_stats().alloc
        adam_dropout_steps(k, *vecs, xs, xo)
        counts[k] = rtsys.get_allocation_stats().alloc - a0
    out["adam_dropout_allocs"] = counts

    # 5. fit with Adam, dropout, a schedule and early stopping: no Python-side growth
    model = jp.Sequential([jp.Dense(20, 32, seed=0), jp.ReLU(), jp.Dropout(0.3, seed=1), jp.Dense(32, 5, seed=1)])
    tr = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.Adam(model, lr=1e-3, clip_norm=5.0))

    def fit(epochs):
        sched = jp.CosineAnnealingLR(tr.optimizer, T_max=epochs)
        es = jp.EarlyStopping(patience=1000)
        tr.fit(X, y, epochs=epochs, batch_size=64, progress=False, validation_data=(X[:64], y[:64]),
               scheduler=sched, early_stopping=es)

    # this runs layer by layer, whose per-step temporaries include some that
    # only the cycle collector frees (as with SGD layer by layer): measured
    # after a collection, what stays must not grow with the steps
    import gc
    fit(1)
    tracemalloc.start()
    fit(2)
    gc.collect()
    m2 = tracemalloc.get_traced_memory()[0]
    fit(20)
    gc.collect()
    m20 = tracemalloc.get_traced_memory()[0]
    out["py_growth_bytes_adam"] = m20 - m2
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_zero_allocations_per_training_step():
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")][-1]
    out = json.loads(line[len("RESULT"):])
    lstm = out["lstm_allocs"]
    # the same count for 1 and 10 steps: nothing is allocated per step
    for parts in (1, 2):
        fused = out["fused_adam_allocs_%d" % parts]
        assert fused["1"] == fused["10"] and fused["10"] <= 30, (parts, fused)
        fused = out["fused_allocs_%d" % parts]
        assert fused["1"] == fused["10"], (parts, fused)
        # and only the per-call argument records: a small constant
        assert fused["10"] <= 30, out
    assert lstm["1"] == lstm["10"], lstm
    assert lstm["10"] <= 25, out
    # Python-side memory: 18 more epochs must not grow the traced heap (allow noise)
    assert out["py_growth_bytes"] < 64 * 1024, out
    ad = out["adam_dropout_allocs"]
    assert ad["1"] == ad["10"] and ad["10"] <= 25, out
    assert out["py_growth_bytes_adam"] < 64 * 1024, out
