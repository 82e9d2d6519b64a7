"""The LSTM layer in models: finite differences, PyTorch, stateful carry,
training, checkpoints."""

import numpy as np
import pytest

import jitprop as jp


# B=16 is cut into batch parts that run at the same time when Numba has 2+ threads
@pytest.mark.parametrize("B,T,n_in,H", [(1, 1, 1, 1), (2, 3, 1, 2), (1, 4, 3, 1), (3, 5, 2, 4), (16, 3, 2, 3)])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_lstm_model_gradients_by_finite_differences(rng, B, T, n_in, H, return_sequences):
    model = jp.Sequential([jp.LSTM(n_in, H, return_sequences=return_sequences, dtype=np.float64, seed=1),
                           jp.Dense(H, 2, dtype=np.float64, seed=2)])
    x = rng.standard_normal((B, T, n_in))
    target = rng.standard_normal((B, T, 2) if return_sequences else (B, 2))
    report = jp.gradcheck(model, jp.MSELoss(), x, target)
    assert set(report) == {"layer0.W_x", "layer0.W_h", "layer0.b", "layer1.W", "layer1.b", "input"}
    for k, err in report.items():
        assert err < 1e-6, (k, err)


def test_initial_state_gradients_by_finite_differences(rng):
    lstm = jp.LSTM(2, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 4, 2))
    h0, c0 = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    R = rng.standard_normal((2, 4, 3))

    def f():
        lstm.set_state(h0, c0)
        return float(np.sum(lstm.forward(x) * R))

    f()
    lstm.backward(R.copy())
    dh0, dc0 = lstm.dh0.copy(), lstm.dc0.copy()
    assert jp.relative_error(dh0, jp.numerical_gradient(f, h0)) < 1e-6
    assert jp.relative_error(dc0, jp.numerical_gradient(f, c0)) < 1e-6


def test_stateful_chunks_equal_one_long_sequence(rng):
    x = rng.standard_normal((3, 12, 2))
    full = jp.LSTM(2, 5, dtype=np.float64, seed=4)
    y_full = full.forward(x).copy()
    chunked = jp.LSTM(2, 5, stateful=True, dtype=np.float64, seed=4)
    parts = [chunked.forward(np.ascontiguousarray(x[:, s:s + 4])).copy() for s in (0, 4, 8)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), y_full, rtol=1e-14, atol=1e-15)
    chunked.reset_state()
    np.testing.assert_array_equal(chunked.forward(np.ascontiguousarray(x[:, :4])), y_full[:, :4])
    with pytest.raises(ValueError, match="reset_state"):
        chunked.forward(np.ascontiguousarray(x[:2, :4]))


def test_lstm_short_batch_reuses_buffers(rng):
    model = jp.Sequential([jp.LSTM(2, 3, seed=0), jp.Dense(3, 1, seed=1)])
    x = rng.standard_normal((8, 5, 2)).astype(np.float32)
    for n in (8, 3, 8):
        y = model.forward(x[:n])
        model.backward(np.ones_like(y))
        if n == 8 and "first" not in locals():
            first = {k: v.ctypes.data for k, v in model.layers[0]._bufs.items()}
    assert {k: v.ctypes.data for k, v in model.layers[0]._bufs.items()} == first


def test_lstm_errors():
    lstm = jp.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"\(batch, T, 3\)"):
        lstm.forward(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="float32"):
        lstm.forward(np.zeros((2, 5, 3)))
    with pytest.raises(RuntimeError, match="before forward"):
        jp.LSTM(3, 4).backward(np.zeros((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match="h0 and c0"):
        lstm.set_state(np.zeros((2, 3)), np.zeros((2, 4)))


def test_trainer_learns_a_sequence_task(rng):
    """Many-to-one regression: the sum of a random sequence, learned clearly."""
    X = rng.uniform(-1, 1, (512, 8, 1))
    y = X.sum(axis=1) / 4.0
    model = jp.Sequential([jp.LSTM(1, 16, return_sequences=False, dtype=np.float64, seed=0),
                           jp.Dense(16, 1, dtype=np.float64, seed=1)])
    tr = jp.Trainer(model, jp.MSELoss(), jp.SGD(model, lr=0.1, momentum=0.9, clip_norm=1.0))
    base = float(np.mean((y - y.mean()) ** 2))
    hist = tr.fit(X, y, epochs=30, batch_size=32, progress=False)
    assert hist["loss"][-1] < 0.05 * base


def test_lstm_checkpoint_roundtrip(tmp_path, rng):
    model = jp.Sequential([jp.LSTM(2, 3, return_sequences=False, seed=0), jp.Dense(3, 2, seed=1)])
    tr = jp.Trainer(model, jp.MSELoss(), jp.SGD(model, lr=0.05, momentum=0.5, clip_norm=2.0))
    X = rng.standard_normal((40, 6, 2)).astype(np.float32)
    y = rng.standard_normal((40, 2)).astype(np.float32)
    tr.fit(X, y, epochs=2, batch_size=8, progress=False)
    tr.save(tmp_path / "l.npz")
    tr2 = jp.load(tmp_path / "l.npz")
    assert repr(tr2.model.layers[0]) == repr(model.layers[0])
    np.testing.assert_array_equal(tr2.model.predict(X), model.predict(X))
    np.testing.assert_array_equal(tr2.optimizer.velocity, tr.optimizer.velocity)




@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("B", [3, 16])
def test_lstm_model_matches_torch(rng, return_sequences, B):
    torch = pytest.importorskip("torch")
    T, n_in, H = 6, 4, 5
    model = jp.Sequential([jp.LSTM(n_in, H, return_sequences=return_sequences, dtype=np.float64, seed=3),
                           jp.Dense(H, 2, dtype=np.float64, seed=4)])
    lstm, dense = model.layers
    x = rng.standard_normal((B, T, n_in))
    target = rng.standard_normal((B, T, 2) if return_sequences else (B, 2))
    loss = jp.MSELoss()
    value = loss.forward(model.forward(x), target)
    dx = model.backward(loss.backward()).copy()

    tl = torch.nn.LSTM(n_in, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        tl.weight_ih_l0.copy_(torch.tensor(lstm.params["W_x"].T))
        tl.weight_hh_l0.copy_(torch.tensor(lstm.params["W_h"].T))
        tl.bias_ih_l0.copy_(torch.tensor(lstm.params["b"]))
        tl.bias_hh_l0.zero_()
    W = torch.tensor(dense.params["W"], requires_grad=True)
    b = torch.tensor(dense.params["b"], requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    out, _ = tl(xt)
    if not return_sequences:
        out = out[:, -1]
    tloss = torch.nn.functional.mse_loss(out @ W + b, torch.tensor(target))
    tloss.backward()
    assert value == pytest.approx(tloss.item(), rel=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lstm.grads["W_x"], tl.weight_ih_l0.grad.numpy().T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lstm.grads["W_h"], tl.weight_hh_l0.grad.numpy().T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lstm.grads["b"], tl.bias_ih_l0.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dense.grads["W"], W.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_one_thread_blas_only_for_lstm_batches_in_parts():
    """The trainer runs a step on one-thread BLAS exactly when an LSTM cuts
    its batch into parts (BLAS is then called from inside parallel loops)."""
    import numba

    from jitprop._threads import batch_parts

    lstm_model = jp.Sequential([jp.LSTM(3, 4, seed=0), jp.Dense(4, 2, seed=1)])
    mlp = jp.Sequential([jp.Dense(3, 4, seed=0), jp.ReLU(), jp.Dense(4, 2, seed=1)])
    assert not lstm_model.one_thread_blas(15)            # 15 rows: one part
    assert lstm_model.one_thread_blas(16) == (numba.config.NUMBA_NUM_THREADS >= 2)
    assert not mlp.one_thread_blas(4096)
    assert batch_parts(16, 8) == min(numba.config.NUMBA_NUM_THREADS, 2)
    assert batch_parts(1000, 8) == min(numba.config.NUMBA_NUM_THREADS, 8)
