"""Dropout: mask statistics, gradients with the mask fixed, modes, seeds, threads, LSTM stacks."""

import numba
import numpy as np
import pytest

import jitprop as jp
from jitprop import kernels


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kept_fraction_within_3_sigma_and_scale(p, dtype):
    n = 200_003
    x = np.ones(n, dtype)
    out = np.empty_like(x)
    for step in range(3):
        kernels.dropout_apply(x, out, p, 12345, step)
        kept = np.count_nonzero(out)
        sigma = np.sqrt(n * p * (1 - p))
        assert abs(kept - n * (1 - p)) < 3 * sigma
        assert out.dtype == dtype
        np.testing.assert_array_equal(out[out != 0], dtype(1.0 / (1.0 - p)))


def test_masks_independent_of_dtype_shape_and_threads(restore_threads):
    x = np.random.default_rng(0).standard_normal(100_000)
    masks = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        for dt in (np.float32, np.float64):
            xx = x.astype(dt).reshape(100, 1000)
            out = np.empty_like(xx)
            kernels.dropout_apply(xx, out, 0.3, 7, 11)
            masks.append((out != 0).ravel())
    for m in masks[1:]:
        np.testing.assert_array_equal(m, masks[0])
    # a different step or seed gives a different mask, with little overlap beyond chance
    out = np.empty(100_000)
    kernels.dropout_apply(x, out, 0.3, 7, 12)
    agree = np.mean((out != 0) == masks[0])
    assert abs(agree - (0.7 ** 2 + 0.3 ** 2)) < 0.01


def test_neighbouring_elements_and_steps_uncorrelated():
    n = 200_000
    out = np.empty(n)
    kernels.dropout_apply(np.ones(n), out, 0.5, 1, 0)
    k = (out != 0).astype(float)
    # lag-1 correlation of the mask within a call, and between consecutive calls
    assert abs(np.corrcoef(k[:-1], k[1:])[0, 1]) < 4 / np.sqrt(n)
    kernels.dropout_apply(np.ones(n), out, 0.5, 1, 1)
    assert abs(np.corrcoef(k, (out != 0).astype(float))[0, 1]) < 4 / np.sqrt(n)


def _dropout_model(seed=3):
    return jp.Sequential([jp.Dense(6, 9, dtype=np.float64, seed=0), jp.Tanh(), jp.Dropout(0.4, seed=seed),
                          jp.Dense(9, 3, dtype=np.float64, seed=1)])


def test_gradient_by_finite_differences_with_mask_fixed():
    rng = np.random.default_rng(1)
    model = _dropout_model()
    drop = model.layers[2]
    x = rng.standard_normal((5, 6))
    y = rng.standard_normal((5, 3))
    loss = jp.MSELoss()
    s0 = drop.step

    def f():
        drop.step = s0  # the same mask at every evaluation
        return loss.forward(model.forward(x), y)

    f()
    dx = model.backward(loss.backward()).copy()
    grads = model.flat_grads.copy()
    num = jp.numerical_gradient(f, model.flat_params)
    assert jp.relative_error(grads, num) < 1e-8
    num_x = jp.numerical_gradient(f, x)
    assert jp.relative_error(dx, num_x) < 1e-8
    # the mask did drop something: dL/dh is zero on the dropped units of layer 0's output
    assert np.count_nonzero(model.layers[2].forward(np.ones((5, 9)))) < 45


def test_identity_in_eval_mode_and_in_predict_and_evaluate():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 6))
    model = _dropout_model()
    ref = jp.Sequential([jp.Dense(6, 9, dtype=np.float64, seed=0), jp.Tanh(), jp.Dense(9, 3, dtype=np.float64, seed=1)])
    want = ref.predict(x)
    assert model.training
    np.testing.assert_array_equal(model.predict(x), want)  # predict: identity
    assert model.training  # and the mode is restored
    train_out = model.forward(x).copy()
    assert not np.allclose(train_out, want)
    model.eval()
    assert not model.training and not model.layers[2].training
    np.testing.assert_array_equal(model.forward(x), want)
    step = model.layers[2].step
    model.forward(x)
    assert model.layers[2].step == step  # eval mode does not advance the mask counter
    model.train()
    assert model.training
    y = rng.integers(0, 3, 7)
    t = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.1))
    t2 = jp.Trainer(ref, jp.SoftmaxCrossEntropy(), jp.SGD(ref, lr=0.1))
    assert t.evaluate(x, y) == t2.evaluate(x, y)
    # backward in eval mode is the identity too: same gradients as without the layer
    model.eval()
    target = rng.standard_normal((7, 3))
    loss = jp.MSELoss()
    loss.forward(model.forward(x), target)
    dx = model.backward(loss.backward()).copy()
    loss.forward(ref.forward(x), target)
    np.testing.assert_array_equal(dx, ref.backward(loss.backward()))
    np.testing.assert_array_equal(model.flat_grads, ref.flat_grads)


def test_same_seed_same_masks_different_seed_different():
    x = np.ones((50, 40))
    outs = {}
    for seed in (5, 5, 6):
        d = jp.Dropout(0.5, seed=seed)
        d.dtype = np.float64
        outs.setdefault(seed, []).append([d.forward(x).copy() for _ in range(3)])
    for a, b in zip(*outs[5]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(outs[5][0][0], outs[5][0][1])  # a new mask at every call
    assert not np.array_equal(outs[5][0][0], outs[6][0][0])
    # seed=None draws a seed and keeps it
    d = jp.Dropout(0.5)
    assert 0 <= d.seed < 2 ** 63 and d.get_config()["seed"] == d.seed


def test_training_is_reproducible_and_thread_independent(restore_threads):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((64, 6))
    y = rng.integers(0, 3, 64)
    finals = []
    for threads in (1, 2, 2):
        numba.set_num_threads(threads)
        model = _dropout_model(seed=9)
        t = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.Adam(model, lr=0.01))
        t.fit(X, y, epochs=3, batch_size=16, progress=False)
        finals.append(model.get_params())
    for f in finals[1:]:
        np.testing.assert_array_equal(f, finals[0])


def test_between_lstm_layers_gradient_and_torch_semantics():
    rng = np.random.default_rng(4)
    model = jp.Sequential([jp.LSTM(3, 5, dtype=np.float64, seed=0), jp.Dropout(0.3, seed=1),
                           jp.LSTM(5, 4, return_sequences=False, dtype=np.float64, seed=2),
                           jp.Dense(4, 2, dtype=np.float64, seed=3)])
    drop = model.layers[1]
    x = rng.standard_normal((4, 6, 3))
    y = rng.standard_normal((4, 2))
    loss = jp.MSELoss()
    s0 = drop.step

    def f():
        drop.step = s0
        return loss.forward(model.forward(x), y)

    f()
    h = model.layers[0].forward(x).copy()
    dropped = drop.forward(h)
    kept = dropped != 0
    assert 0 < np.count_nonzero(~kept) < kept.size
    np.testing.assert_allclose(dropped[kept], h[kept] / 0.7, rtol=1e-15)
    f()
    dx = model.backward(loss.backward()).copy()
    grads = model.flat_grads.copy()
    idx = rng.choice(grads.size, 60, replace=False)
    num = jp.numerical_gradient(f, model.flat_params, indices=idx)
    assert jp.relative_error(grads[idx], num[idx]) < 1e-8
    assert jp.relative_error(dx, jp.numerical_gradient(f, x)) < 1e-8


def test_bad_arguments():
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="p must"):
            jp.Dropout(p)
    with pytest.raises(ValueError, match="seed"):
        jp.Dropout(0.5, seed=-1)
    with pytest.raises(ValueError, match="step"):
        kernels.dropout_apply(np.ones(3), np.ones(3), 0.5, 1, -1)
    with pytest.raises(TypeError, match="out"):
        kernels.dropout_apply(np.ones(3), np.ones(3, np.float32), 0.5, 1, 0)


@pytest.mark.parametrize("n", [1000, 70001])
def test_serial_twin_gives_the_same_mask(n):
    from jitprop.kernels import raw

    x = np.random.default_rng(6).standard_normal(n).astype(np.float32)
    a, b = np.empty_like(x), np.empty_like(x)
    raw.dropout_apply(x, a, 0.35, 17, 4)
    raw.dropout_apply_serial(x, b, 0.35, 17, 4)
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- the fused path
def _fused_dropout_model(dtype, last_dropout=False):
    # dropout after an activation, right after a Dense, one with p = 0 (the identity), and optionally last
    layers = [jp.Dense(5, 12, dtype=dtype, seed=2), jp.ReLU(), jp.Dropout(0.3, seed=11),
              jp.Dense(12, 9, dtype=dtype, seed=3), jp.Dropout(0.5, seed=12),
              jp.Dense(9, 7, dtype=dtype, seed=4), jp.Tanh(), jp.Dropout(0.0, seed=13),
              jp.Dense(7, 3, dtype=dtype, seed=5)]
    if last_dropout:
        layers.append(jp.Dropout(0.2, seed=14))
    return jp.Sequential(layers)


def _blobs(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return np.eye(3, 5)[y] * 2 + 0.5 * rng.standard_normal((n, 5)), y


def _dropout_steps(model):
    return [layer.step for layer in model.layers if isinstance(layer, jp.Dropout)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_name,last_dropout", [("xent", False), ("mse", True)])
@pytest.mark.parametrize("opt,opt_kw", [("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=0.01))])
def test_fused_path_with_dropout_is_bitwise_layer_by_layer(dtype, loss_name, last_dropout, opt, opt_kw):
    from jitprop._fused import FusedMLP

    X, y = _blobs(203)  # the last batch of 16 is short
    if loss_name == "mse":
        y = np.eye(3)[y]
    results = []
    for use_fused in (True, False):
        model = _fused_dropout_model(dtype, last_dropout)
        loss = jp.MSELoss() if loss_name == "mse" else jp.SoftmaxCrossEntropy()
        tr = jp.Trainer(model, loss, getattr(jp, opt)(model, **opt_kw))
        if use_fused:
            assert FusedMLP.build(tr, *tr._prepare(X, y), 16) is not None  # the compiled path runs it
        tr.fit(X, y, epochs=3, batch_size=16, seed=1, progress=False, use_fused=use_fused)
        results.append((model.get_params(), tr.history["loss"], _dropout_steps(model)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]
    # one mask per step for each dropout with p > 0; the p = 0 one is the identity and counts none
    assert results[0][2] == results[1][2] == [39, 39, 0] + ([39] if last_dropout else [])


def test_fused_dropout_masks_follow_the_batch_not_its_parts(restore_threads):
    from jitprop._fused import FusedMLP

    X, y = _blobs(203)

    def run(parts, dtype, threads=None):
        model = _fused_dropout_model(dtype)
        tr = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.05, momentum=0.9))
        plan = FusedMLP.build(tr, *tr._prepare(X, y), 64, parts=parts)
        assert plan.parts == parts
        if threads is not None:
            numba.set_num_threads(threads)
        for e in range(2):
            order = np.random.default_rng(e).permutation(203).astype(np.int64)
            assert plan.run(order, 0, 4, True) == 4
        return model.get_params(), _dropout_steps(model)

    # parts change only the order of the gradient additions (float64: rounding),
    # never a mask: a mask that followed the parts would change the result by far more
    p1, s1 = run(1, np.float64)
    p3, s3 = run(3, np.float64)
    assert s1 == s3 == [8, 8, 0]
    np.testing.assert_allclose(p3, p1, rtol=1e-10, atol=1e-12)
    a, _ = run(2, np.float32, threads=1)
    b, _ = run(2, np.float32, threads=2)
    np.testing.assert_array_equal(a, b)


def test_fused_dropout_off_in_eval_mode_and_resumes_its_count():
    X, y = _blobs(64)
    model = _fused_dropout_model(np.float64)
    tr = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.05))
    tr.fit(X, y, epochs=1, batch_size=16, progress=False, use_fused=True)
    assert _dropout_steps(model) == [4, 4, 0]
    # a second fit continues the masks where the first stopped, as layer by layer
    twin = _fused_dropout_model(np.float64)
    t2 = jp.Trainer(twin, jp.SoftmaxCrossEntropy(), jp.SGD(twin, lr=0.05))
    t2.fit(X, y, epochs=1, batch_size=16, progress=False, use_fused=False)
    tr.fit(X, y, epochs=1, batch_size=16, progress=False, use_fused=True, seed=5)
    t2.fit(X, y, epochs=1, batch_size=16, progress=False, use_fused=False, seed=5)
    np.testing.assert_array_equal(model.get_params(), twin.get_params())
    assert _dropout_steps(model) == _dropout_steps(twin) == [8, 8, 0]
    # prediction draws no mask
    first = model.predict(X).copy()
    np.testing.assert_array_equal(model.predict(X), first)
    assert _dropout_steps(model) == [8, 8, 0]
