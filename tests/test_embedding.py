"""jp.Embedding and its kernels: NumPy references, torch.nn.Embedding, finite
differences, thread-count independence, range checks, integer input through
Sequential / Trainer / predict / checkpoints."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jitprop as jp
from jitprop import kernels as KC

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("idx_dtype", [np.int64, np.int32, np.uint8])
@pytest.mark.parametrize("shape", [(4, 7), (5,), (1, 1)])
def test_forward_backward_match_numpy(rng, dtype, idx_dtype, shape):
    emb = jp.Embedding(6, 70, dtype=dtype, seed=0)
    x = rng.integers(0, 6, shape).astype(idx_dtype)
    y = emb.forward(x)
    assert y.shape == shape + (70,) and y.dtype == dtype
    np.testing.assert_array_equal(y, emb.params["W"][x])
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert emb.backward(dy) is None
    ref = np.zeros_like(emb.params["W"])
    np.add.at(ref, x.reshape(-1), dy.reshape(-1, 70))      # adds in index order, as the kernel does
    np.testing.assert_array_equal(emb.grads["W"], ref)
    assert np.all(emb.grads["W"][np.setdiff1d(np.arange(6), x)] == 0)


def test_init_like_torch_and_config():
    emb = jp.Embedding(1000, 50, seed=3)
    W = emb.params["W"]
    assert W.shape == (1000, 50) and W.dtype == np.float32
    assert abs(W.mean()) < 0.02 and abs(W.std() - 1.0) < 0.02            # N(0, 1), 50,000 draws
    clone = jp.Embedding.from_config(emb.get_config())
    assert repr(clone) == repr(emb) == "Embedding(1000, 50, dtype=float32)"


def test_out_of_range_raises_before_anything_is_written():
    emb = jp.Embedding(5, 3, dtype=np.float64, seed=0)
    good = np.array([[0, 4]])
    y = emb.forward(good).copy()
    emb.backward(np.ones((1, 2, 3)))
    g = emb.grads["W"].copy()
    out_buf = emb._bufs["out"].copy()
    for bad in (np.array([[0, 5]]), np.array([[-1, 2]])):
        with pytest.raises(ValueError, match=r"\[0, 5\)"):
            emb.forward(bad)
        np.testing.assert_array_equal(emb._bufs["out"], out_buf)
    emb.backward(np.ones((1, 2, 3)))       # still the good indices
    np.testing.assert_array_equal(emb.grads["W"], g)
    np.testing.assert_array_equal(emb.forward(good), y)
    # the checked kernels
    W = np.arange(15.0).reshape(5, 3)
    out = np.full((2, 3), 7.0)
    with pytest.raises(ValueError, match="indices"):
        KC.embedding_forward(np.array([1, 5]), W, out)
    assert np.all(out == 7.0)
    dW = np.full((5, 3), 7.0)
    with pytest.raises(ValueError, match="indices"):
        KC.embedding_backward(np.array([-1, 0]), np.ones((2, 3)), dW)
    assert np.all(dW == 7.0)
    with pytest.raises(TypeError, match="integer"):
        emb.forward(np.zeros((1, 2)))


def test_checked_kernels_match_numpy(rng):
    W = rng.standard_normal((9, 20))
    idx = rng.integers(0, 9, 100)
    out = np.empty((100, 20))
    KC.embedding_forward(idx, W, out)
    np.testing.assert_array_equal(out, W[idx])
    dW = np.full_like(W, np.nan)
    dy = rng.standard_normal((100, 20))
    KC.embedding_backward(idx, dy, dW)
    ref = np.zeros_like(W)
    np.add.at(ref, idx, dy)
    np.testing.assert_array_equal(dW, ref)
    with pytest.raises(ValueError, match="dy"):
        KC.embedding_backward(idx, dy[:, :5], dW)
    one = np.full((1, 3), np.nan)                         # fewer rows than threads
    KC.embedding_backward(np.zeros(4, np.int64), np.arange(12.0).reshape(4, 3), one)
    np.testing.assert_array_equal(one, [[18.0, 22.0, 26.0]])


_THREADS_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from jitprop.kernels import raw
    rng = np.random.default_rng(0)
    out = {}
    for dtype in (np.float32, np.float64):
        idx = rng.integers(0, 7, 5000)            # every row repeated hundreds of times
        dy = rng.standard_normal((5000, 70)).astype(dtype)
        W = rng.standard_normal((7, 70)).astype(dtype)
        dW = np.empty_like(W)
        o = np.empty((5000, 70), dtype)
        raw.embedding_forward(idx, W, o)
        raw.embedding_backward(idx, dy, dW)
        out[np.dtype(dtype).name + "_dW"] = dW
        out[np.dtype(dtype).name + "_out"] = o
    np.savez(sys.argv[1], **out)
""")


def test_backward_bitwise_identical_for_1_and_2_threads(tmp_path):
    res = []
    for n in (1, 2):
        env = dict(os.environ, NUMBA_NUM_THREADS=str(n))
        env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        path = tmp_path / f"e{n}.npz"
        proc = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, str(path)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        res.append(dict(np.load(path)))
    assert set(res[0]) == set(res[1]) and len(res[0]) == 4
    for k in res[0]:
        assert np.array_equal(res[0][k], res[1][k]), k


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_embedding_model_finite_differences(rng, cell):
    model = jp.Sequential([jp.Embedding(5, 3, dtype=np.float64, seed=0),
                           getattr(jp, cell)(3, 4, return_sequences=False, dtype=np.float64, seed=1),
                           jp.Dense(4, 2, dtype=np.float64, seed=2)])
    x = rng.integers(0, 5, (3, 6))
    x[0, :3] = 2                                     # a repeated index
    target = rng.standard_normal((3, 2))
    report = jp.gradcheck(model, jp.MSELoss(), x, target, check_input=False)
    assert "layer0.W" in report and "input" not in report
    for k, err in report.items():
        assert err < 1e-6, (k, err)
    with pytest.raises(ValueError, match="check_input=False"):
        jp.gradcheck(model, jp.MSELoss(), x, target)


def test_embedding_gru_matches_torch(rng):
    torch = pytest.importorskip("torch")
    V, D, H, B, T = 11, 4, 5, 16, 6
    model = jp.Sequential([jp.Embedding(V, D, dtype=np.float64, seed=0), jp.GRU(D, H, dtype=np.float64, seed=1),
                           jp.Dense(H, 1, dtype=np.float64, seed=2)])
    emb, gru, dense = model.layers
    x = rng.integers(0, V, (B, T))
    target = rng.standard_normal((B, T, 1))
    loss = jp.MSELoss()
    value = loss.forward(model.forward(x), target)
    assert model.backward(loss.backward()) is None
    te = torch.nn.Embedding(V, D, dtype=torch.float64)
    tg = torch.nn.GRU(D, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        te.weight.copy_(torch.tensor(emb.params["W"]))
        tg.weight_ih_l0.copy_(torch.tensor(gru.params["W_x"].T))
        tg.weight_hh_l0.copy_(torch.tensor(gru.params["W_h"].T))
        tg.bias_ih_l0.copy_(torch.tensor(gru.params["b_x"]))
        tg.bias_hh_l0.copy_(torch.tensor(gru.params["b_h"]))
    out, _ = tg(te(torch.tensor(x)))
    tloss = torch.nn.functional.mse_loss(out @ torch.tensor(dense.params["W"]) + torch.tensor(dense.params["b"]),
                                         torch.tensor(target))
    tloss.backward()
    assert value == pytest.approx(tloss.item(), rel=1e-12)
    np.testing.assert_allclose(emb.grads["W"], te.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gru.grads["W_h"], tg.weight_hh_l0.grad.numpy().T, rtol=1e-10, atol=1e-12)


def test_integer_input_through_fit_predict_evaluate_and_checkpoint(rng, tmp_path):
    """Classify token sequences by whether token 0 occurs in the first half."""
    V, T = 6, 8
    X = rng.integers(0, V, (600, T))
    y = (X[:, :T // 2] == 0).any(axis=1).astype(np.int64)
    model = jp.Sequential([jp.Embedding(V, 4, seed=0), jp.GRU(4, 16, return_sequences=False, seed=1),
                           jp.Dense(16, 2, seed=2)])
    assert model.input_dtype == np.int64
    tr = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.2, momentum=0.9, clip_norm=1.0))
    hist = tr.fit(X.astype(np.int32), y, epochs=15, batch_size=32, progress=False)
    assert hist["loss"][-1] < 0.3 * hist["loss"][0]
    ev = tr.evaluate(X, y)
    assert ev["accuracy"] > 0.9
    pred = model.predict(X.tolist())
    assert pred.shape == (600, 2) and pred.dtype == np.float32
    tr.save(tmp_path / "e.npz")
    tr2 = jp.load(tmp_path / "e.npz")
    assert repr(tr2.model.layers[0]) == repr(model.layers[0])
    np.testing.assert_array_equal(tr2.model.predict(X), pred)
    with pytest.raises(TypeError, match="integer"):
        tr.fit(X.astype(np.float32), y, epochs=1, progress=False)
    with pytest.raises(TypeError, match="integer"):
        model.forward(X.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        model.predict(X + 1)


def test_fit_takes_one_index_per_sample(rng):
    """(n,) indices through fit: one full-batch SGD step equals the same step
    taken by hand with forward, backward and SGD."""
    V, n = 7, 20
    X = rng.integers(0, V, n)
    y = rng.integers(0, 3, n)

    def build():
        return jp.Sequential([jp.Embedding(V, 4, dtype=np.float64, seed=0), jp.Dense(4, 3, dtype=np.float64, seed=1)])

    model = build()
    tr = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.5))
    hist = tr.fit(X, y, epochs=1, batch_size=n, shuffle=False, progress=False)

    ref = build()
    loss = jp.SoftmaxCrossEntropy()
    value = loss.forward(ref.forward(X.astype(np.int64)), y.astype(np.int64))
    ref.backward(loss.backward())
    expected = ref.flat_params - 0.5 * ref.flat_grads
    assert hist["loss"][0] == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(model.flat_params, expected, rtol=1e-12, atol=1e-15)
    assert np.max(np.abs(model.flat_params - ref.flat_params)) > 1e-3   # the step moved the parameters
