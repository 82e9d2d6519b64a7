"""Sequential models: finite differences, buffers, fusion, predict."""

import numpy as np
import pytest

import jitprop as jp

import _reference as ref

ACT_LAYERS = {"relu": jp.ReLU, "sigmoid": jp.Sigmoid, "tanh": jp.Tanh}


def mlp(sizes, act, dtype=np.float64, seed=0, fuse=True):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(jp.Dense(a, b, dtype=dtype, seed=seed + i))
        if i < len(sizes) - 2:
            layers.append(ACT_LAYERS[act]())
    return jp.Sequential(layers, fuse=fuse)


def numpy_mlp_forward(model, x):
    """Independent NumPy forward of an MLP built by ``mlp``."""
    h = x.astype(np.float64)
    for layer in model.layers:
        if isinstance(layer, jp.Dense):
            h = ref.dense_forward(h, layer.params["W"], layer.params["b"])
        else:
            h = ref.act(h, {jp.ReLU: "relu", jp.Sigmoid: "sigmoid", jp.Tanh: "tanh"}[type(layer)])
    return h


@pytest.mark.parametrize("act", list(ACT_LAYERS))
@pytest.mark.parametrize("loss_name", ["mse", "xent"])
@pytest.mark.parametrize("fuse", [True, False])
def test_whole_model_gradients_by_finite_differences(rng, act, loss_name, fuse):
    model = mlp([5, 7, 6, 3], act, fuse=fuse, seed=3)
    x = rng.standard_normal((4, 5))
    if loss_name == "mse":
        loss, target = jp.MSELoss(), rng.standard_normal((4, 3))
    else:
        loss, target = jp.SoftmaxCrossEntropy(), rng.integers(0, 3, 4)
    report = jp.gradcheck(model, loss, x, target)
    assert set(report) == {"layer0.W", "layer0.b", "layer2.W", "layer2.b", "layer4.W", "layer4.b", "input"}
    for k, err in report.items():
        assert err < 1e-6, (k, err)


def test_gradcheck_detects_a_wrong_gradient(rng):
    """The checker itself can fail: corrupt one backward kernel's output."""
    model = mlp([3, 4, 2], "tanh", seed=1)
    layer = model.layers[0]
    orig = layer.backward

    def broken(dy, need_dx=True):
        out = orig(dy, need_dx)
        layer.grads["W"][0, 0] += 0.1
        return out

    layer.backward = broken
    report = jp.gradcheck(model, jp.MSELoss(), rng.standard_normal((3, 3)), rng.standard_normal((3, 2)))
    assert report["layer0.W"] > 1e-3
    assert report["layer2.W"] < 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", list(ACT_LAYERS))
def test_forward_matches_numpy_and_fusion_is_exact(rng, dtype, act):
    fused = mlp([6, 9, 5, 4], act, dtype=dtype, seed=5, fuse=True)
    plain = mlp([6, 9, 5, 4], act, dtype=dtype, seed=5, fuse=False)
    x = rng.standard_normal((11, 6)).astype(dtype)
    yf = fused.forward(x).copy()
    yp = plain.forward(x).copy()
    np.testing.assert_array_equal(yf, yp)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(yf, numpy_mlp_forward(fused, x), rtol=rtol, atol=rtol)
    dy = rng.standard_normal(yf.shape).astype(dtype)
    dxf = fused.backward(dy).copy()
    dxp = plain.backward(dy).copy()
    np.testing.assert_array_equal(dxf, dxp)
    np.testing.assert_array_equal(fused.flat_grads, plain.flat_grads)


def test_params_are_views_of_flat_buffer(rng):
    model = mlp([3, 4, 2], "relu", dtype=np.float32)
    assert model.n_params == 3 * 4 + 4 + 4 * 2 + 2
    W = model.layers[0].params["W"]
    assert np.shares_memory(W, model.flat_params)
    assert np.shares_memory(model.layers[2].grads["b"], model.flat_grads)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    before = model.forward(x).copy()
    model.layers[2].params["b"][...] += 1.0  # writing into params changes the model
    np.testing.assert_allclose(model.forward(x), before + 1.0, rtol=1e-6)


def test_short_batch_reuses_buffers(rng):
    model = mlp([4, 8, 3], "tanh", dtype=np.float32)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    model.forward(x)
    model.backward(np.ones((10, 3), np.float32))
    bufs = {id(layer): {k: v.ctypes.data for k, v in layer._bufs.items()} for layer in model.layers}
    for n in (7, 1, 10):
        y = model.forward(x[:n])
        assert y.shape == (n, 3)
        model.backward(np.ones((n, 3), np.float32))
    after = {id(layer): {k: v.ctypes.data for k, v in layer._bufs.items()} for layer in model.layers}
    assert bufs == after


def test_dense_applies_to_last_axis(rng):
    model = jp.Sequential([jp.Dense(4, 3, dtype=np.float64, seed=0), jp.Tanh(), jp.Dense(3, 2, dtype=np.float64, seed=1)])
    x = rng.standard_normal((5, 6, 4))
    y = model.forward(x)
    assert y.shape == (5, 6, 2)
    flat = model.forward(x.reshape(30, 4)).copy()
    np.testing.assert_array_equal(model.forward(x).reshape(30, 2), flat)
    report = jp.gradcheck(model, jp.MSELoss(), x, rng.standard_normal((5, 6, 2)))
    assert max(report.values()) < 1e-6


def test_predict_any_number_of_rows(rng):
    model = mlp([3, 5, 2], "sigmoid", dtype=np.float32)
    x = rng.standard_normal((2500, 3))
    y = model.predict(x, batch_size=1000)
    assert y.shape == (2500, 2) and y.dtype == np.float32
    np.testing.assert_allclose(y, numpy_mlp_forward(model, x.astype(np.float32)), rtol=1e-5, atol=1e-6)


def test_model_input_errors():
    model = mlp([3, 5, 2], "relu", dtype=np.float32)
    with pytest.raises(TypeError, match="dtype float32"):
        model.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\(batch, \.\.\., 3\)"):
        model.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        model.forward(np.zeros((3, 2), np.float32).T)
    with pytest.raises(TypeError, match="share one dtype"):
        jp.Sequential([jp.Dense(2, 2, dtype=np.float32), jp.Dense(2, 2, dtype=np.float64)])
    with pytest.raises(TypeError, match="Layer"):
        jp.Sequential([jp.Dense(2, 2), "relu"])
    with pytest.raises(TypeError, match="float32 or float64"):
        jp.Dense(2, 2, dtype=np.int32)
