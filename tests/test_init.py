"""Initialisers: torch.nn.init formulas, orthogonality, forget bias, unchanged default."""

import numpy as np
import pytest
from scipy import stats

import jitprop as jp

torch = pytest.importorskip("torch")


def test_torch_default_bitwise_unchanged():
    # the draws of the default initialisation, in their original order
    for dtype in (np.float32, np.float64):
        d = jp.Dense(13, 7, dtype=dtype, seed=5)
        rng = np.random.default_rng(5)
        b = 1.0 / np.sqrt(13)
        np.testing.assert_array_equal(d.params["W"], rng.uniform(-b, b, (13, 7)).astype(dtype))
        np.testing.assert_array_equal(d.params["b"], rng.uniform(-b, b, (7,)).astype(dtype))
        assert d.get_config() == {"n_in": 13, "n_out": 7, "dtype": np.dtype(dtype).name}
        lstm = jp.LSTM(3, 6, dtype=dtype, seed=8)
        rng = np.random.default_rng(8)
        k = 1.0 / np.sqrt(6)
        for name, shape in (("W_x", (3, 24)), ("W_h", (6, 24)), ("b", (24,))):
            np.testing.assert_array_equal(lstm.params[name], rng.uniform(-k, k, shape).astype(dtype))
        np.testing.assert_array_equal(jp.Dense(13, 7, dtype=dtype, seed=5, init="torch").params["W"],
                                      d.params["W"])


def _torch_bound(kind, fan_in, fan_out):
    """The bound torch.nn.init uses, read from torch's own samples of a large tensor."""
    t = torch.empty(fan_out, fan_in, dtype=torch.float64)
    torch.manual_seed(0)
    if kind == "xavier_uniform":
        torch.nn.init.xavier_uniform_(t)
        formula = np.sqrt(6.0 / (fan_in + fan_out))
    else:
        torch.nn.init.kaiming_uniform_(t, nonlinearity="relu")
        formula = np.sqrt(6.0 / fan_in)
    m = float(t.abs().max())
    assert formula * 0.999 < m <= formula  # the formula is torch's
    return formula


@pytest.mark.parametrize("kind", ["xavier_uniform", "he_uniform"])
@pytest.mark.parametrize("shape", [(300, 200), (64, 512)])
def test_uniform_initialisers_follow_torch(kind, shape):
    fan_in, fan_out = shape
    bound = _torch_bound(kind, fan_in, fan_out)
    d = jp.Dense(fan_in, fan_out, dtype=np.float64, seed=1, init=kind)
    W = d.params["W"]
    assert np.all(np.abs(W) <= bound) and np.abs(W).max() > 0.999 * bound
    assert stats.kstest(W.ravel(), stats.uniform(-bound, 2 * bound).cdf).pvalue > 1e-3
    np.testing.assert_array_equal(d.params["b"], 0.0)
    # the LSTM's weights use the fans of torch's weight_ih (4H, n_in) and weight_hh (4H, H)
    lstm = jp.LSTM(fan_in, 50, dtype=np.float64, seed=2, init=kind)
    for name, fi in (("W_x", fan_in), ("W_h", 50)):
        b = _torch_bound(kind, fi, 200)
        w = lstm.params[name]
        assert np.all(np.abs(w) <= b) and np.abs(w).max() > 0.99 * b
        assert stats.kstest(w.ravel(), stats.uniform(-b, 2 * b).cdf).pvalue > 1e-3


@pytest.mark.parametrize("shape", [(40, 10), (10, 40), (16, 16)])
def test_orthogonal(shape):
    n_in, n_out = shape
    W = jp.Dense(n_in, n_out, dtype=np.float64, seed=3, init="orthogonal").params["W"]
    small = min(shape)
    gram = W.T @ W if n_in >= n_out else W @ W.T
    np.testing.assert_allclose(gram, np.eye(small), atol=1e-12)
    # torch's orthogonal_ on the (n_out, n_in) tensor has the same property and sign convention
    t = torch.empty(n_out, n_in, dtype=torch.float64)
    torch.nn.init.orthogonal_(t)
    tg = t @ t.T if n_out <= n_in else t.T @ t
    np.testing.assert_allclose(tg.numpy(), np.eye(small), atol=1e-12)
    W32 = jp.Dense(n_in, n_out, dtype=np.float32, seed=3, init="orthogonal").params["W"]
    assert W32.dtype == np.float32
    np.testing.assert_allclose(W32, W, rtol=1e-6, atol=1e-7)


def test_lstm_orthogonal_recurrent_and_forget_bias():
    H = 12
    lstm = jp.LSTM(5, H, dtype=np.float64, seed=4, init="orthogonal", forget_bias=1.0)
    Wh = lstm.params["W_h"]
    np.testing.assert_allclose(Wh @ Wh.T, np.eye(H), atol=1e-12)  # orthonormal rows, as torch's weight_hh columns
    b = lstm.params["b"]
    np.testing.assert_array_equal(b[H:2 * H], 1.0)
    np.testing.assert_array_equal(np.delete(b, np.s_[H:2 * H]), 0.0)
    bound = np.sqrt(6.0 / (5 + 4 * H))
    assert np.all(np.abs(lstm.params["W_x"]) <= bound)
    # forget_bias with the default init keeps the other draws as before
    a = jp.LSTM(5, H, dtype=np.float64, seed=4)
    c = jp.LSTM(5, H, dtype=np.float64, seed=4, forget_bias=2.5)
    np.testing.assert_array_equal(c.params["W_h"], a.params["W_h"])
    np.testing.assert_array_equal(c.params["b"][H:2 * H], 2.5)
    np.testing.assert_array_equal(c.params["b"][:H], a.params["b"][:H])
    assert c.get_config()["forget_bias"] == 2.5
    rebuilt = jp.LSTM.from_config(lstm.get_config())
    assert rebuilt.init == "orthogonal" and rebuilt.forget_bias == 1.0


def test_bad_init():
    with pytest.raises(ValueError, match="init"):
        jp.Dense(3, 4, init="glorot")
    with pytest.raises(ValueError, match="init"):
        jp.LSTM(3, 4, init=None)
    with pytest.raises(TypeError, match="forget_bias"):
        jp.LSTM(3, 4, forget_bias="1")
