"""The GRU layer in models: finite differences, PyTorch, stateful carry, training, config."""

import numpy as np
import pytest

import jitprop as jp


# B=16 is cut into batch parts that run at the same time when Numba has 2+ threads
@pytest.mark.parametrize("B,T,n_in,H", [(1, 1, 1, 1), (2, 3, 1, 2), (1, 4, 3, 1), (16, 3, 2, 3)])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_gru_model_gradients_by_finite_differences(rng, B, T, n_in, H, return_sequences):
    model = jp.Sequential([jp.GRU(n_in, H, return_sequences=return_sequences, dtype=np.float64, seed=1),
                           jp.Dense(H, 2, dtype=np.float64, seed=2)])
    x = rng.standard_normal((B, T, n_in))
    target = rng.standard_normal((B, T, 2) if return_sequences else (B, 2))
    report = jp.gradcheck(model, jp.MSELoss(), x, target)
    assert set(report) == {"layer0.W_x", "layer0.W_h", "layer0.b_x", "layer0.b_h", "layer1.W", "layer1.b",
                           "input"}
    for k, err in report.items():
        assert err < 1e-6, (k, err)


def test_initial_state_gradient_by_finite_differences(rng):
    gru = jp.GRU(2, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 4, 2))
    h0 = rng.standard_normal((2, 3))
    R = rng.standard_normal((2, 4, 3))

    def f():
        gru.set_state(h0)
        return float(np.sum(gru.forward(x) * R))

    f()
    gru.backward(R.copy())
    assert jp.relative_error(gru.dh0, jp.numerical_gradient(f, h0)) < 1e-6


def test_stateful_chunks_equal_one_long_sequence(rng):
    x = rng.standard_normal((3, 12, 2))
    full = jp.GRU(2, 5, dtype=np.float64, seed=4)
    y_full = full.forward(x).copy()
    chunked = jp.GRU(2, 5, stateful=True, dtype=np.float64, seed=4)
    parts = [chunked.forward(np.ascontiguousarray(x[:, s:s + 4])).copy() for s in (0, 4, 8)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), y_full, rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(chunked.state, y_full[:, -1])
    chunked.reset_state()
    np.testing.assert_array_equal(chunked.forward(np.ascontiguousarray(x[:, :4])), y_full[:, :4])
    with pytest.raises(ValueError, match="reset_state"):
        chunked.forward(np.ascontiguousarray(x[:2, :4]))


def test_set_state_applies_to_one_call_when_not_stateful(rng):
    gru = jp.GRU(2, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 4, 2))
    zero = gru.forward(x).copy()
    gru.set_state(np.ones((2, 3)))
    assert not np.allclose(gru.forward(x), zero)
    np.testing.assert_array_equal(gru.forward(x), zero)


def test_gru_errors():
    gru = jp.GRU(3, 4)
    with pytest.raises(ValueError, match=r"\(batch, T, 3\)"):
        gru.forward(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="float32"):
        gru.forward(np.zeros((2, 5, 3)))
    with pytest.raises(RuntimeError, match="before forward"):
        jp.GRU(3, 4).backward(np.zeros((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match="h0"):
        gru.set_state(np.zeros((2, 3)))
    gru.forward(np.zeros((2, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"dy must be"):
        gru.backward(np.zeros((2, 5, 3), np.float32))


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("B", [3, 16])
def test_gru_model_matches_torch(rng, return_sequences, B):
    torch = pytest.importorskip("torch")
    T, n_in, H = 6, 4, 5
    model = jp.Sequential([jp.GRU(n_in, H, return_sequences=return_sequences, dtype=np.float64, seed=3),
                           jp.Dense(H, 2, dtype=np.float64, seed=4)])
    gru, dense = model.layers
    x = rng.standard_normal((B, T, n_in))
    target = rng.standard_normal((B, T, 2) if return_sequences else (B, 2))
    loss = jp.MSELoss()
    value = loss.forward(model.forward(x), target)
    dx = model.backward(loss.backward()).copy()

    tg = torch.nn.GRU(n_in, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        tg.weight_ih_l0.copy_(torch.tensor(gru.params["W_x"].T))
        tg.weight_hh_l0.copy_(torch.tensor(gru.params["W_h"].T))
        tg.bias_ih_l0.copy_(torch.tensor(gru.params["b_x"]))
        tg.bias_hh_l0.copy_(torch.tensor(gru.params["b_h"]))
    W = torch.tensor(dense.params["W"], requires_grad=True)
    b = torch.tensor(dense.params["b"], requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    out, _ = tg(xt)
    if not return_sequences:
        out = out[:, -1]
    tloss = torch.nn.functional.mse_loss(out @ W + b, torch.tensor(target))
    tloss.backward()
    assert value == pytest.approx(tloss.item(), rel=1e-12)
    kw = {"rtol": 1e-10, "atol": 1e-12}
    np.testing.assert_allclose(dx, xt.grad.numpy(), **kw)
    np.testing.assert_allclose(gru.grads["W_x"], tg.weight_ih_l0.grad.numpy().T, **kw)
    np.testing.assert_allclose(gru.grads["W_h"], tg.weight_hh_l0.grad.numpy().T, **kw)
    np.testing.assert_allclose(gru.grads["b_x"], tg.bias_ih_l0.grad.numpy(), **kw)
    np.testing.assert_allclose(gru.grads["b_h"], tg.bias_hh_l0.grad.numpy(), **kw)
    np.testing.assert_allclose(dense.grads["W"], W.grad.numpy(), **kw)


def test_trainer_learns_a_sequence_task(rng):
    """Many-to-one regression: the sum of a random sequence, learned clearly."""
    X = rng.uniform(-1, 1, (512, 8, 1))
    y = X.sum(axis=1) / 4.0
    model = jp.Sequential([jp.GRU(1, 16, return_sequences=False, dtype=np.float64, seed=0),
                           jp.Dense(16, 1, dtype=np.float64, seed=1)])
    tr = jp.Trainer(model, jp.MSELoss(), jp.SGD(model, lr=0.1, momentum=0.9, clip_norm=1.0))
    base = float(np.mean((y - y.mean()) ** 2))
    hist = tr.fit(X, y, epochs=30, batch_size=32, progress=False)
    assert hist["loss"][-1] < 0.05 * base


def test_config_roundtrip_and_init(rng):
    gru = jp.GRU(3, 7, return_sequences=False, stateful=True, dtype=np.float64, seed=5)
    clone = jp.GRU.from_config(gru.get_config())
    assert repr(clone) == repr(gru) == "GRU(3, 7, return_sequences=False, stateful=True, dtype=float64)"
    assert clone.param_shapes() == {"W_x": (3, 21), "W_h": (7, 21), "b_x": (21,), "b_h": (21,)}
    k = 1 / np.sqrt(7)
    for v in gru.params.values():
        assert np.all(np.abs(v) <= k)
    assert jp.GRU(3, 7, seed=5).params["W_x"].dtype == np.float32
