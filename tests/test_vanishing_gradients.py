"""examples/vanishing_gradients.py: the printed numbers show what they claim,
and the gradient norms recorded by Trainer.fit(track_gradients=True) are the
norms of the layers' gradients."""

import contextlib
import io
import math
import sys

import numpy as np
import pytest

import jitprop as jp

from _helpers import load_example


def load():
    return load_example("vanishing_gradients")


@pytest.fixture(scope="module")
def vg():
    return load()


@pytest.fixture(scope="module")
def quick(vg, tmp_path_factory):
    """One ``--quick`` run of the whole example, shared by the tests below."""
    path = tmp_path_factory.mktemp("vanishing") / "grads.png"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        res = vg.main(["--quick", "--plot", str(path)])
    return res, buf.getvalue(), path


# -- the diagnostics themselves (fast) ------------------------------------------------

def test_recorded_grad_norms_equal_numpy_recomputation(vg):
    rng = np.random.default_rng(3)
    X = rng.uniform(0.0, 1.0, (40, 64)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    # one full-batch step per epoch, so the epoch's mean is that step's norm
    model = vg.build_mlp(jp.Sigmoid, depth=3, width=8, n_in=64, n_out=10, seed=5)
    trainer = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.5))
    hist = trainer.fit(X, y, epochs=1, batch_size=40, shuffle=False, progress=False, track_gradients=True)

    ref = vg.build_mlp(jp.Sigmoid, depth=3, width=8, n_in=64, n_out=10, seed=5)
    start = ref.get_params()
    loss = jp.SoftmaxCrossEntropy()
    loss.forward(ref.forward(X), y)
    ref.backward(loss.backward())
    dense = [layer for layer in ref.layers if layer.params]
    expected = [math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in layer.grads.values()))
                for layer in dense]

    assert len(hist["norm_layers"]) == len(dense) == 3
    assert all("Dense" in name for name in hist["norm_layers"])
    np.testing.assert_allclose(hist["grad_norms"][0], expected, rtol=1e-5)
    # the layers' norms differ, so a misassigned layer would show
    assert all(abs(a - b) > 0.1 * max(a, b) for i, a in enumerate(expected) for b in expected[i + 1:])
    # parameter norms: after the one update p - lr * g
    after = start - 0.5 * ref.flat_grads.astype(np.float64)
    offs = np.cumsum([0] + [sum(p.size for p in layer.params.values()) for layer in dense])
    np.testing.assert_allclose(hist["param_norms"][0],
                               [np.linalg.norm(after[a:b]) for a, b in zip(offs[:-1], offs[1:])], rtol=1e-5)


def test_synthetic_fallback_without_sklearn(vg, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)          # import sklearn raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    Xtr, Xte, ytr, yte, name = vg.load_data(0)
    assert "SYNTHETIC" in name and "not installed" in name
    assert Xtr.shape[1] == 64 and Xtr.dtype == np.float32 and len(Xtr) + len(Xte) == 1797
    assert Xtr.min() >= 0.0 and Xtr.max() <= 1.0 and set(np.unique(ytr)) == set(range(10))


# -- the example's claims (one shared --quick run) -----------------------------------

@pytest.mark.slow
def test_sigmoid_gradients_vanish_with_depth_relu_do_not(quick):
    pytest.importorskip("sklearn")      # the accuracy bounds are for the digits
    mlp = quick[0]["mlp"]
    sig, relu = mlp["sigmoid"], mlp["relu"]
    assert sig["grad_norms"].shape[1] == relu["grad_norms"].shape[1] == 10
    for epoch in (0, -1):
        assert sig["ratio"][epoch] < 1e-2
        assert relu["ratio"][epoch] > 0.1
        assert relu["ratio"][epoch] > 100 * sig["ratio"][epoch]
        # the sigmoid network's norm grows at every layer towards the loss
        assert np.all(np.diff(sig["grad_norms"][epoch]) > 0)
    assert relu["accuracy"][-1] > 0.85
    assert sig["accuracy"][-1] < 0.2          # chance: the first layers barely move


@pytest.mark.slow
def test_lstm_input_gradient_decays_with_distance(quick):
    lag = quick[0]["lag"]
    T = lag["T"]
    default, rnn, forget = lag["init"]["default"], lag["init"]["rnn-like"], lag["init"]["forget+3"]
    assert default.shape == (T,) and np.all(np.isfinite(default))
    # default init: geometric decay with the distance from the loss
    at = [default[T - 1 - d] for d in (0, 10, 20, 50, T - 1)]
    assert all(a > b for a, b in zip(at, at[1:]))
    assert default[0] / default[-1] < 1e-10
    # without the cell's memory it is faster still; with f ~ 0.95 the gradient survives
    assert rnn[T - 1 - 10] < 1e-3 * default[T - 1 - 10]
    assert rnn[0] <= default[0]
    assert forget[0] / forget[-1] > 1e-2
    # training (short lag) keeps the pattern: the default model's far steps stay starved
    tr = lag["trained"]
    assert tr["default"]["after"][0] / tr["default"]["after"][-1] < 1e-3
    assert tr["forget+3"]["after"][0] / tr["forget+3"]["after"][-1] > 1e-1


@pytest.mark.slow
def test_large_lr_gradients_explode_unless_clipped(quick):
    # Whether the unclipped float32 loss overflows within the quick run's
    # epochs depends on rounding (BLAS kernel set, thread count, batch parts);
    # the growth of the gradient norm does not: we measured 1e16 to 1e28 for
    # the unclipped run and 13 to 23 for the clipped one, over OpenBLAS's
    # Haswell and SkylakeX kernels, 1 and 2 threads and seeds 0-2.
    clip = quick[0]["clipping"]
    un, cl = clip["unclipped"], clip["clipped"]
    assert un["first_norm"] == pytest.approx(cl["first_norm"], rel=1e-6)   # same model, same first batch
    assert un["growth"] > 1e9
    assert un["error"] is None or "non-finite loss at epoch" in un["error"]
    assert cl["error"] is None
    assert cl["growth"] < 1e3
    assert len(cl["loss"]) == len(cl["global_norm"]) and np.all(np.isfinite(cl["loss"]))
    assert cl["loss"][-1] < 0.5 * cl["loss"][0]
    assert cl["loss"][-1] < 0.25 * clip["variance"]      # far better than predicting 0
    # clipping was active: gradient norms before clipping well above clip_norm = 1
    assert cl["global_norm"][0][0] > 3.0


@pytest.mark.slow
def test_quick_run_prints_tables_and_plot(quick):
    res, out, path = quick
    assert "first/last layer gradient ratio" in out
    assert "||dL/dx_t||" in out
    assert "largest pre-clip norm / first step's" in out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no plot" in out
    else:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
