"""Trainer: training actually learns, history, progress, reproducibility, errors."""

import io

import numpy as np
import pytest

import jitprop as jp


def make_model(dtype=np.float32, seed=0):
    return jp.Sequential([jp.Dense(4, 16, dtype=dtype, seed=seed), jp.Tanh(), jp.Dense(16, 3, dtype=dtype, seed=seed + 1)])


def blobs(rng, n=300):
    centers = np.array([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]], float)
    y = rng.integers(0, 3, n)
    X = centers[y] + 0.5 * rng.standard_normal((n, 4))
    return X, y


def test_fit_learns_and_records_history(rng):
    X, y = blobs(rng)
    model = make_model()
    trainer = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.1, momentum=0.9))
    before = trainer.evaluate(X, y)
    hist = trainer.fit(X, y, epochs=15, batch_size=32, validation_data=(X, y), progress=False)
    assert set(hist) == {"loss", "val_loss", "val_accuracy", "samples_per_s", "time"}
    assert all(len(v) == 15 for v in hist.values())
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    after = trainer.evaluate(X, y)
    assert after["accuracy"] > 0.95 > before["accuracy"]
    assert after["loss"] == pytest.approx(hist["val_loss"][-1])
    assert all(s > 0 for s in hist["samples_per_s"])


def test_fit_epoch_loss_is_mean_over_samples(rng):
    """With lr=0 the parameters never move, so the epoch loss must equal evaluate()."""
    X, y = blobs(rng, 103)  # 103 = 3 full batches of 32 + a short one of 7
    model = make_model(np.float64)
    trainer = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.0))
    hist = trainer.fit(X, y, epochs=2, batch_size=32, progress=False)
    ev = trainer.evaluate(X, y)
    assert hist["loss"][0] == pytest.approx(ev["loss"], rel=1e-12)


def test_regression_with_mse(rng):
    X = rng.uniform(-1, 1, (400, 4))
    t = np.stack([np.sin(X[:, 0]) + X[:, 1] * X[:, 2], X[:, 3] ** 2, X.sum(1)], axis=1)
    model = make_model(np.float64)
    trainer = jp.Trainer(model, jp.MSELoss(), jp.SGD(model, lr=0.05, momentum=0.9))
    hist = trainer.fit(X, t, epochs=60, batch_size=20, progress=False)
    assert hist["loss"][-1] < 0.1 * hist["loss"][0]
    assert "val_accuracy" not in hist and "accuracy" not in trainer.evaluate(X, t)


def test_same_seed_same_parameters(rng):
    X, y = blobs(rng)
    finals = []
    for _ in range(2):
        model = make_model(seed=4)
        trainer = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.05, momentum=0.9))
        trainer.fit(X, y, epochs=3, batch_size=16, seed=11, progress=False)
        finals.append(model.get_params())
    np.testing.assert_array_equal(finals[0], finals[1])


def test_train_step_equals_manual_step(rng):
    X, y = blobs(rng, 16)
    X = X.astype(np.float64)
    m1, m2 = make_model(np.float64), make_model(np.float64)
    t1 = jp.Trainer(m1, jp.SoftmaxCrossEntropy(), jp.SGD(m1, lr=0.1))
    loss2, opt2 = jp.SoftmaxCrossEntropy(), jp.SGD(m2, lr=0.1)
    v1 = t1.train_step(X, y)
    v2 = loss2.forward(m2.forward(X), y)
    m2.backward(loss2.backward())
    opt2.step()
    assert v1 == v2
    np.testing.assert_array_equal(m1.flat_params, m2.flat_params)


def test_progress_bar_writes_lines():
    buf = io.StringIO()
    bar = jp.Progress(10, desc="epoch 1/1", stream=buf)
    for k in range(10):
        bar.update(k + 1, "loss 1.0")
    bar.close("loss 0.5 123 samples/s")
    out = buf.getvalue()
    assert "epoch 1/1" in out and "100.0%" in out and "samples/s" in out


def test_fit_progress_goes_to_stderr(rng, capsys):
    X, y = blobs(rng, 40)
    model = make_model()
    jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model)).fit(X, y, epochs=2, batch_size=8)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "samples/s" in err


def test_fit_rejects_bad_input(rng):
    X, y = blobs(rng, 20)
    model = make_model()
    tr = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model))
    with pytest.raises(ValueError, match="20 samples but its targets have 19"):
        tr.fit(X, y[:-1], progress=False)
    with pytest.raises(ValueError, match="empty"):
        tr.fit(X[:0], y[:0], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        tr.fit(X, y, batch_size=0, progress=False)
    with pytest.raises(TypeError, match="integer class labels"):
        tr.fit(X, y + 0.5, progress=False)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        tr.fit(X, y + 3, epochs=1, progress=False)
    with pytest.raises(TypeError, match="unexpected keyword"):
        tr.fit(X, y, epoch=3)
    other = make_model()
    with pytest.raises(ValueError, match="different model"):
        jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(other))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_name", ["mse", "xent"])
@pytest.mark.parametrize("opt_kw", [dict(lr=0.05), dict(lr=0.05, momentum=0.9, weight_decay=1e-3),
                                    dict(lr=0.05, momentum=0.8, nesterov=True, clip_norm=0.5)])
def test_fused_path_is_bitwise_equal_to_layer_by_layer(rng, dtype, loss_name, opt_kw):
    """fit() runs MLPs through the compiled multi-step kernel; it must give
    exactly what the layer-by-layer Python path gives."""
    X, y = blobs(rng, 203)  # 203 rows: the last batch of 16 is short
    if loss_name == "mse":
        y = np.eye(3)[y] + 0.1 * rng.standard_normal((203, 3))
    results = []
    for use_fused in (True, False):
        model = jp.Sequential([jp.Dense(4, 9, dtype=dtype, seed=2), jp.Sigmoid(), jp.Dense(9, 7, dtype=dtype, seed=3),
                               jp.ReLU(), jp.Dense(7, 3, dtype=dtype, seed=4)])
        loss = jp.MSELoss() if loss_name == "mse" else jp.SoftmaxCrossEntropy()
        tr = jp.Trainer(model, loss, jp.SGD(model, **opt_kw))
        hist = tr.fit(X, y, epochs=3, batch_size=16, seed=1, progress=False, use_fused=use_fused)
        results.append((model.get_params(), tr.optimizer.velocity.copy(), hist["loss"], tr.optimizer.steps))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]
    assert results[0][3] == results[1][3] == 3 * 13


def test_fused_path_stops_on_nonfinite_like_python_path(rng):
    X, y = blobs(rng, 64)
    X[37, 2] = np.nan
    msgs = []
    for use_fused in (True, False):
        model = make_model()
        tr = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.1))
        with pytest.raises(FloatingPointError) as err:
            tr.fit(X, y, epochs=2, batch_size=8, shuffle=False, progress=False, use_fused=use_fused)
        msgs.append((str(err.value), model.get_params()))
    assert msgs[0][0] == msgs[1][0]
    np.testing.assert_array_equal(msgs[0][1], msgs[1][1])


# --------------------------------------------------------------------------
# the fused path with a batch cut into parts that run at the same time
# --------------------------------------------------------------------------
def _parts_run(X, y, parts, dtype, loss_name="xent", threads=None, bs=64, opt_kw=None, epochs=2):
    from jitprop._fused import FusedMLP

    model = jp.Sequential([jp.Dense(X.shape[1], 40, dtype=dtype, seed=2), jp.ReLU(),
                           jp.Dense(40, 24, dtype=dtype, seed=3), jp.Sigmoid(),
                           jp.Dense(24, 3, dtype=dtype, seed=4)])
    loss = jp.MSELoss() if loss_name == "mse" else jp.SoftmaxCrossEntropy()
    tr = jp.Trainer(model, loss, jp.SGD(model, **(opt_kw or dict(lr=0.05, momentum=0.9))))
    Xc = np.ascontiguousarray(X, dtype=dtype)
    yc = np.ascontiguousarray(y, dtype=dtype) if loss_name == "mse" else y
    plan = FusedMLP.build(tr, Xc, yc, bs, parts=parts)
    assert plan.parts == parts
    old = jp.get_num_threads()
    if threads is not None:
        jp.set_num_threads(threads)
    try:
        losses = []
        n_steps = -(-X.shape[0] // bs)
        for e in range(epochs):
            order = np.random.default_rng(e).permutation(X.shape[0]).astype(np.int64)
            assert plan.run(order, 0, n_steps, True) == n_steps
            losses.append(plan.losses[:n_steps].copy())
    finally:
        jp.set_num_threads(old)
    return model.get_params(), np.concatenate(losses)


@pytest.mark.parametrize("loss_name", ["xent", "mse"])
@pytest.mark.parametrize("parts", [2, 3, 8])
def test_batch_parts_give_the_batch_gradient(rng, loss_name, parts):
    """Cutting each batch into parts changes only the order of additions:
    in float64 the training run matches the one-part run to rounding.
    203 rows in batches of 64: the last batch (11 rows) has fewer rows than
    some part counts have parts."""
    X, y = blobs(rng, 203)
    if loss_name == "mse":
        y = np.eye(3)[y] + 0.1 * rng.standard_normal((203, 3))
    opt_kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, clip_norm=0.5)
    p1, l1 = _parts_run(X, y, 1, np.float64, loss_name, opt_kw=opt_kw)
    pk, lk = _parts_run(X, y, parts, np.float64, loss_name, opt_kw=opt_kw)
    np.testing.assert_allclose(pk, p1, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(lk, l1, rtol=1e-11)
    assert not np.array_equal(p1, _parts_run(X, y, 1, np.float64, loss_name, epochs=1, opt_kw=opt_kw)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_parts_one_thread_equals_two(rng, dtype):
    X, y = blobs(rng, 203)
    a = _parts_run(X, y, 2, dtype, threads=1)
    b = _parts_run(X, y, 2, dtype, threads=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_batch_parts_choice():
    from jitprop._fused import MIN_PART_ROWS, choose_parts

    assert choose_parts(1, 1) == 1                    # mlp-tiny
    assert choose_parts(64, 100) == 1                 # small products: one part
    k = choose_parts(64, 64 * 784 * 128)              # mlp-small
    assert 1 <= k <= 64 // MIN_PART_ROWS
    import numba

    assert k == min(numba.config.NUMBA_NUM_THREADS, 2)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_repeated_fit_calls_equal_fresh_trainers_and_release_the_data(opt, loss):
    """One trainer's fit calls (reusing its fused plan, its chunk size and its
    reset generator) give bitwise the parameters of a new Trainer per call on
    the same model and optimiser, also when the batch size or the data change
    between calls; fit keeps no reference to the data it was given."""
    import gc
    import weakref

    rng = np.random.default_rng(11)
    f64 = np.float64

    def model_and_opt():
        model = jp.Sequential([jp.Dense(3, 5, dtype=f64, seed=0), jp.Tanh(), jp.Dense(5, 2, dtype=f64, seed=1)])
        o = jp.SGD(model, lr=0.05, momentum=0.9) if opt == "sgd" else jp.Adam(model, lr=0.01)
        return model, o

    def make_loss():
        return jp.MSELoss() if loss == "mse" else jp.SoftmaxCrossEntropy()

    ma, oa = model_and_opt()
    mb, ob = model_and_opt()
    reused = jp.Trainer(ma, make_loss(), oa)
    for bs, n in ((8, 40), (8, 40), (5, 40), (5, 23), (8, 40)):
        X = rng.standard_normal((n, 3))
        y = rng.standard_normal((n, 2)) if loss == "mse" else rng.integers(0, 2, n)
        ref = weakref.ref(X)
        reused.fit(X, y, epochs=2, batch_size=bs, seed=7, progress=False, use_fused=True)
        jp.Trainer(mb, make_loss(), ob).fit(X.copy(), y.copy(), epochs=2, batch_size=bs, seed=7, progress=False,
                                            use_fused=True)
        assert np.array_equal(ma.flat_params, mb.flat_params)
        del X, y
        gc.collect()
        assert ref() is None
