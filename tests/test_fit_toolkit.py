"""Trainer.fit with Adam, schedules, early stopping and dropout: history,
checkpoints with bit-exact resume, and argument errors."""

import numpy as np
import pytest

import jitprop as jp


def blobs(n=240, seed=0, noise=0.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = np.eye(3, 5)[y] * 2 + noise * rng.standard_normal((n, 5))
    return X, y


def make_model(seed=0, dropout=None, dtype=np.float32):
    layers = [jp.Dense(5, 16, dtype=dtype, seed=seed), jp.ReLU()]
    if dropout is not None:
        layers.append(jp.Dropout(dropout, seed=seed + 7))
    layers.append(jp.Dense(16, 3, dtype=dtype, seed=seed + 1))
    return jp.Sequential(layers)


def make(opt="Adam", seed=0, dropout=0.2, lr=0.01, dtype=np.float32, **kw):
    model = make_model(seed, dropout, dtype)
    return jp.Trainer(model, jp.SoftmaxCrossEntropy(), getattr(jp, opt)(model, lr=lr, **kw))


@pytest.mark.parametrize("name,kwargs", [("StepLR", dict(step_size=2, gamma=0.5)),
                                         ("CosineAnnealingLR", dict(T_max=5, eta_min=1e-4)),
                                         ("LinearLR", dict(start_factor=0.2, total_iters=4)),
                                         ("ReduceLROnPlateau", dict(patience=0, factor=0.5))])
def test_schedule_steps_once_per_epoch_and_lr_is_recorded(name, kwargs):
    X, y = blobs()
    t = make(lr=0.05)
    sched = getattr(jp, name)(t.optimizer, **kwargs)
    hist = t.fit(X, y, epochs=8, batch_size=32, validation_data=blobs(90, seed=1), progress=False,
                 scheduler=sched)
    # replay: the same schedule on a fresh optimiser, stepped once per epoch
    # (the plateau schedule with the recorded val_loss)
    opt = jp.SGD(make_model(), lr=0.05)
    replay = getattr(jp, name)(opt, **kwargs)
    want = []
    for e in range(8):
        want.append(opt.lr)
        replay.step(*([hist["val_loss"][e]] if name == "ReduceLROnPlateau" else []))
    assert hist["lr"] == want
    assert len(set(want)) > 1 and t.optimizer.lr == opt.lr


def test_plateau_without_validation_uses_training_loss():
    X, y = blobs()
    t = make(lr=0.05)
    sched = jp.ReduceLROnPlateau(t.optimizer, patience=0, factor=0.5, threshold=0.5)
    hist = t.fit(X, y, epochs=5, batch_size=32, progress=False, scheduler=sched)
    opt = jp.SGD(make_model(), lr=0.05)
    replay = jp.ReduceLROnPlateau(opt, patience=0, factor=0.5, threshold=0.5)
    want = []
    for e in range(5):
        want.append(opt.lr)
        replay.step(hist["loss"][e])
    assert hist["lr"] == want and len(set(want)) > 1


def test_schedule_in_the_fused_path_equals_layer_by_layer():
    X, y = blobs()
    out = []
    for fused in (True, False):
        t = make("SGD", dropout=None, lr=0.1, momentum=0.9)
        sched = jp.CosineAnnealingLR(t.optimizer, T_max=4)
        out.append((t.fit(X, y, epochs=4, batch_size=32, progress=False, scheduler=sched, use_fused=fused),
                    t.model.get_params()))
    np.testing.assert_array_equal(out[0][1], out[1][1])
    assert out[0][0]["lr"] == out[1][0]["lr"]


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    X, y = blobs()
    # lr 0 and no dropout: the loss never changes, so epoch 0 is the best and no later one improves
    t = make(lr=0.0, dropout=None)
    hist = t.fit(X, y, epochs=20, batch_size=32, progress=False, early_stopping=jp.EarlyStopping("loss", patience=3))
    assert len(hist["loss"]) == 4
    assert hist["best_epoch"] == 0 and hist["stopped_epoch"] == 3
    # min_delta: improvements smaller than it do not count
    t = make(lr=1e-4, dropout=None)
    hist = t.fit(X, y, epochs=20, batch_size=32, progress=False,
                 early_stopping=jp.EarlyStopping("loss", patience=2, min_delta=1.0))
    assert len(hist["loss"]) == 3 and hist["best_epoch"] == 0 and hist["stopped_epoch"] == 2
    assert hist["loss"][2] < hist["loss"][0]  # it did improve, by less than min_delta


@pytest.mark.parametrize("monitor", ["val_loss", "val_accuracy"])
def test_restore_best_puts_back_the_best_epochs_parameters(monitor):
    X, y = blobs(noise=1.5)
    Xv, yv = blobs(150, seed=5, noise=1.5)
    t = make(lr=0.3)  # large steps: the validation loss goes up and down
    snapshots = []
    steps = int(np.ceil(len(X) / 16))

    def snap(tr, e, k, v):
        if k == steps - 1:
            snapshots.append(tr.model.get_params())

    es = jp.EarlyStopping(monitor=monitor, patience=3)
    hist = t.fit(X, y, epochs=30, batch_size=16, validation_data=(Xv, yv), progress=False, early_stopping=es,
                 callback=snap)
    vals = np.array(hist[monitor])
    best = int(np.argmax(vals) if monitor == "val_accuracy" else np.argmin(vals))
    assert hist["best_epoch"] == best
    assert hist["stopped_epoch"] is not None and len(vals) == hist["stopped_epoch"] + 1 < 30
    assert hist["stopped_epoch"] - best == 3
    np.testing.assert_array_equal(t.model.get_params(), snapshots[best])
    assert not np.array_equal(snapshots[-1], snapshots[best])
    assert t.evaluate(Xv, yv)["loss" if monitor == "val_loss" else "accuracy"] == vals[best]
    # without restore_best the last parameters stay
    t = make(lr=0.3)
    t.fit(X, y, epochs=30, batch_size=16, validation_data=(Xv, yv), progress=False,
          early_stopping=jp.EarlyStopping(monitor=monitor, patience=3, restore_best=False))
    np.testing.assert_array_equal(t.model.get_params(), snapshots[-1])


@pytest.mark.parametrize("opt,kw", [("Adam", dict(amsgrad=True)), ("AdamW", dict()),
                                    ("SGD", dict(momentum=0.9))])
def test_checkpoint_resume_bit_exact_with_adam_schedule_early_stopping_dropout(tmp_path, opt, kw):
    X, y = blobs(250)
    val = blobs(90, seed=2)

    def run(trainer, **fit_kw):
        sched = jp.StepLR(trainer.optimizer, step_size=2, gamma=0.5)
        es = jp.EarlyStopping(patience=50)
        return trainer.fit(X, y, epochs=5, batch_size=16, seed=9, validation_data=val, progress=False,
                           scheduler=sched, early_stopping=es, **fit_kw)

    ref = make(opt, seed=3, lr=0.02, **kw)
    ref_hist = run(ref)

    path = tmp_path / "ck.npz"

    def interrupt(t, e, k, v):
        if e == 2 and k == 9:
            raise KeyboardInterrupt

    tr = make(opt, seed=3, lr=0.02, **kw)
    with pytest.raises(KeyboardInterrupt):
        run(tr, checkpoint=path, checkpoint_every=4, callback=interrupt)
    resumed = jp.load(path)
    assert type(resumed.optimizer) is type(ref.optimizer)
    assert resumed.model.layers[2].step == 2 * 16 + 8  # the dropout layer's calls up to the checkpoint
    hist = run(resumed, checkpoint=path, checkpoint_every=4, resume=True)
    np.testing.assert_array_equal(resumed.model.get_params(), ref.model.get_params())
    for name, a in ref.optimizer.state_arrays().items():
        np.testing.assert_array_equal(resumed.optimizer.state_arrays()[name], a)
    assert resumed.optimizer.steps == ref.optimizer.steps
    for key in ("loss", "val_loss", "lr", "best_epoch", "stopped_epoch"):
        assert hist[key] == ref_hist[key]
    assert resumed.optimizer.lr == ref.optimizer.lr


def test_resume_of_a_stopped_run_does_not_train_further(tmp_path):
    X, y = blobs()
    path = tmp_path / "ck.npz"
    t = make(lr=0.0, dropout=None)
    t.fit(X, y, epochs=20, batch_size=32, progress=False, checkpoint=path,
          early_stopping=jp.EarlyStopping("loss", patience=2))
    resumed = jp.load(path)
    before = resumed.model.get_params()
    hist = resumed.fit(X, y, epochs=20, batch_size=32, progress=False, resume=True,
                       early_stopping=jp.EarlyStopping("loss", patience=2))
    assert len(hist["loss"]) == 3 and hist["stopped_epoch"] == 2
    np.testing.assert_array_equal(resumed.model.get_params(), before)


def test_adam_checkpoint_round_trip(tmp_path):
    X, y = blobs()
    t = make("Adam", amsgrad=True, betas=(0.8, 0.95), weight_decay=0.01)
    t.fit(X, y, epochs=2, batch_size=32, progress=False)
    t.save(tmp_path / "a.npz")
    u = jp.load(tmp_path / "a.npz")
    assert isinstance(u.optimizer, jp.Adam) and u.optimizer.amsgrad and u.optimizer.betas == (0.8, 0.95)
    assert u.optimizer.weight_decay == 0.01 and u.optimizer.steps == t.optimizer.steps
    for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        np.testing.assert_array_equal(getattr(u.optimizer, name), getattr(t.optimizer, name))
    assert isinstance(u.model.layers[2], jp.Dropout) and u.model.layers[2].seed == t.model.layers[2].seed
    assert u.model.layers[2].step == t.model.layers[2].step


def test_bad_arguments():
    X, y = blobs()
    t = make()
    with pytest.raises(ValueError, match="monitor"):
        jp.EarlyStopping(monitor="accuracy")
    with pytest.raises(ValueError, match="patience"):
        jp.EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="min_delta"):
        jp.EarlyStopping(min_delta=-1)
    with pytest.raises(ValueError, match="validation_data"):
        t.fit(X, y, epochs=1, progress=False, early_stopping=jp.EarlyStopping("val_loss"))
    with pytest.raises(ValueError, match="different optimizer"):
        t.fit(X, y, epochs=1, progress=False, scheduler=jp.StepLR(make().optimizer, 2))
    with pytest.raises(TypeError, match="scheduler"):
        t.fit(X, y, epochs=1, progress=False, scheduler="cosine")
    m = jp.Sequential([jp.Dense(5, 1, dtype=np.float64)])
    tr = jp.Trainer(m, jp.MSELoss(), jp.Adam(m))
    with pytest.raises(ValueError, match="classification"):
        tr.fit(X, y[:, None].astype(float), epochs=1, progress=False, validation_data=(X, y[:, None]),
               early_stopping=jp.EarlyStopping("val_accuracy"))


# --------------------------------------------------------------------------
# Adam and AdamW in the compiled multi-step path
# --------------------------------------------------------------------------
ADAM_CASES = [("Adam", dict(lr=0.01)),
              ("Adam", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=1e-3, amsgrad=True)),
              ("AdamW", dict(lr=0.01, weight_decay=0.1, clip_norm=0.5)),
              ("AdamW", dict(lr=0.01, amsgrad=True, clip_norm=0.5))]


def _mlp(dtype, n_in=5):
    return jp.Sequential([jp.Dense(n_in, 9, dtype=dtype, seed=2), jp.Sigmoid(), jp.Dense(9, 7, dtype=dtype, seed=3),
                          jp.ReLU(), jp.Dense(7, 3, dtype=dtype, seed=4)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_name", ["mse", "xent"])
@pytest.mark.parametrize("opt,opt_kw", ADAM_CASES)
def test_fused_adam_is_bitwise_equal_to_layer_by_layer(dtype, loss_name, opt, opt_kw):
    rng = np.random.default_rng(0)
    X, y = blobs(203)  # 203 rows: the last batch of 16 is short
    if loss_name == "mse":
        y = np.eye(3)[y] + 0.1 * rng.standard_normal((203, 3))
    results = []
    for use_fused in (True, False):
        model = _mlp(dtype)
        loss = jp.MSELoss() if loss_name == "mse" else jp.SoftmaxCrossEntropy()
        tr = jp.Trainer(model, loss, getattr(jp, opt)(model, **opt_kw))
        sched = jp.CosineAnnealingLR(tr.optimizer, T_max=3)
        tr.fit(X, y, epochs=3, batch_size=16, seed=1, progress=False, use_fused=use_fused, scheduler=sched)
        results.append((model.get_params(), {k: v.copy() for k, v in tr.optimizer.state_arrays().items()},
                        tr.optimizer.steps, tr.history["loss"]))
    from jitprop._fused import FusedMLP
    assert FusedMLP.build(tr, *tr._prepare(X, y), 16) is not None  # the fused run did use the compiled path
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for k in results[0][1]:
        np.testing.assert_array_equal(results[0][1][k], results[1][1][k])
    assert results[0][2] == results[1][2] == 3 * 13
    assert results[0][3] == results[1][3]


def _adam_parts_run(parts, dtype, opt, opt_kw, threads=None):
    from jitprop._fused import FusedMLP

    X, y = blobs(203)
    model = _mlp(dtype)
    tr = jp.Trainer(model, jp.SoftmaxCrossEntropy(), getattr(jp, opt)(model, **opt_kw))
    Xc, yc = tr._prepare(X, y)
    plan = FusedMLP.build(tr, Xc, yc, 64, parts=parts)
    assert plan.parts == parts
    old = jp.get_num_threads()
    if threads is not None:
        jp.set_num_threads(threads)
    try:
        for e in range(2):
            order = np.random.default_rng(e).permutation(203).astype(np.int64)
            assert plan.run(order, 0, 2, True) == 2   # two calls per epoch: the step count carries over
            assert plan.run(order, 2, 4, True) == 2
    finally:
        jp.set_num_threads(old)
    return model.get_params(), tr.optimizer.state_arrays(), tr.optimizer.steps


@pytest.mark.parametrize("opt,opt_kw", ADAM_CASES)
def test_fused_adam_with_batch_parts(opt, opt_kw):
    # parts change only the order of the gradient additions: float64 agrees to rounding
    p1, s1, n1 = _adam_parts_run(1, np.float64, opt, opt_kw)
    p3, s3, n3 = _adam_parts_run(3, np.float64, opt, opt_kw)
    assert n1 == n3 == 8
    np.testing.assert_allclose(p3, p1, rtol=1e-10, atol=1e-12)
    # and the thread count changes nothing
    a = _adam_parts_run(2, np.float32, opt, opt_kw, threads=1)
    b = _adam_parts_run(2, np.float32, opt, opt_kw, threads=2)
    np.testing.assert_array_equal(a[0], b[0])
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k])


def test_fused_adam_matches_torch():
    torch = pytest.importorskip("torch")
    X, y = blobs(96)
    model = _mlp(np.float64)
    params = [torch.tensor(layer.params[k].copy(), requires_grad=True) for layer in model.layers for k in layer.params]
    tr = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.AdamW(model, lr=0.02, amsgrad=True, weight_decay=0.05))
    tr.fit(X, y, epochs=2, batch_size=16, shuffle=False, progress=False)
    topt = torch.optim.AdamW(params, lr=0.02, amsgrad=True, weight_decay=0.05)
    acts = [torch.sigmoid, torch.relu, None]
    for _ in range(2):
        for k in range(6):
            xb = torch.tensor(X[16 * k:16 * (k + 1)])
            h = xb
            for j in range(3):
                h = h @ params[2 * j] + params[2 * j + 1]
                if acts[j] is not None:
                    h = acts[j](h)
            topt.zero_grad()
            torch.nn.functional.cross_entropy(h, torch.tensor(y[16 * k:16 * (k + 1)])).backward()
            topt.step()
    ref = np.concatenate([p.detach().numpy().ravel() for p in params])
    np.testing.assert_allclose(model.flat_params, ref, rtol=1e-12, atol=0)


_CACHED_FUSED_SCRIPT = """
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
import jitprop as jp
from test_fit_toolkit import ADAM_CASES, _mlp, blobs
X, y = blobs(203)
if sys.argv[2] == "fill":   # another process's fused SGD run fills the cache (mlp_train_steps and what it inlines)
    m = _mlp(np.float32)
    jp.Trainer(m, jp.SoftmaxCrossEntropy(), jp.SGD(m, lr=0.01)).fit(X, y, epochs=1, batch_size=16, progress=False,
                                                                     use_fused=True)
else:                       # then fused (loaded from that cache) against layer by layer, every Adam case
    for opt, kw in ADAM_CASES:
        out = []
        for use_fused in (True, False):
            m = _mlp(np.float32)
            tr = jp.Trainer(m, jp.SoftmaxCrossEntropy(), getattr(jp, opt)(m, **kw))
            tr.fit(X, y, epochs=2, batch_size=16, seed=1, progress=False, use_fused=use_fused)
            out.append(m.get_params())
        print(opt, kw, np.array_equal(out[0], out[1]))
"""


@pytest.mark.slow
def test_fused_adam_from_another_processs_cache_equals_layer_by_layer(tmp_path):
    # Adam's update is compiled into the fused kernel and on its own; LLVM may
    # contract a*b + c*d into an FMA either way round, so the update is written
    # with one contraction only: which process compiled which copy must not matter
    import os
    import subprocess
    import sys

    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, JITPROP_CACHE_DIR=str(tmp_path), JITPROP_BACKGROUND_COMPILE="0")
    for stage in ("fill", "compare"):
        r = subprocess.run([sys.executable, "-c", _CACHED_FUSED_SCRIPT, tests, stage], env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == len(ADAM_CASES) and all(line.endswith("True") for line in lines), r.stdout
