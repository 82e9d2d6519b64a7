"""Recurrent layers stacked in Sequential and jp.Bidirectional, against
torch.nn.LSTM / torch.nn.GRU (num_layers, bidirectional) with copied weights,
and by finite differences."""

import numpy as np
import pytest

import jitprop as jp

torch = pytest.importorskip("torch")

KW = {"rtol": 1e-10, "atol": 1e-12}


def _copy_into_torch(mod, suffix, layer):
    """Copy a jitprop LSTM/GRU layer's parameters into torch's ``*_l{k}{suffix}``."""
    p = layer.params
    with torch.no_grad():
        getattr(mod, "weight_ih" + suffix).copy_(torch.tensor(p["W_x"].T))
        getattr(mod, "weight_hh" + suffix).copy_(torch.tensor(p["W_h"].T))
        if isinstance(layer, jp.LSTM):
            getattr(mod, "bias_ih" + suffix).copy_(torch.tensor(p["b"]))
            getattr(mod, "bias_hh" + suffix).zero_()
        else:
            getattr(mod, "bias_ih" + suffix).copy_(torch.tensor(p["b_x"]))
            getattr(mod, "bias_hh" + suffix).copy_(torch.tensor(p["b_h"]))


def _check_grads(mod, suffix, layer):
    g = layer.grads
    np.testing.assert_allclose(g["W_x"], getattr(mod, "weight_ih" + suffix).grad.numpy().T, **KW)
    np.testing.assert_allclose(g["W_h"], getattr(mod, "weight_hh" + suffix).grad.numpy().T, **KW)
    b_ih = getattr(mod, "bias_ih" + suffix).grad.numpy()
    b_hh = getattr(mod, "bias_hh" + suffix).grad.numpy()
    if isinstance(layer, jp.LSTM):
        np.testing.assert_allclose(g["b"], b_ih, **KW)
        np.testing.assert_allclose(g["b"], b_hh, **KW)
    else:
        np.testing.assert_allclose(g["b_x"], b_ih, **KW)
        np.testing.assert_allclose(g["b_h"], b_hh, **KW)


def _run_both(rng, model, torch_rnn, B, T, n_in, last_step, dense):
    """MSE through ``model`` and through torch's RNN + the same Dense; returns
    the jitprop loss, dx and the torch loss and input tensor (after backward)."""
    x = rng.standard_normal((B, T, n_in))
    out_shape = (B, dense.n_out) if last_step else (B, T, dense.n_out)
    target = rng.standard_normal(out_shape)
    loss = jp.MSELoss()
    value = loss.forward(model.forward(x), target)
    dx = model.backward(loss.backward()).copy()
    W = torch.tensor(dense.params["W"], requires_grad=True)
    b = torch.tensor(dense.params["b"], requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    out, h_n = torch_rnn(xt)
    if isinstance(h_n, tuple):
        h_n = h_n[0]
    if last_step == "h_n":          # bidirectional: both directions' final states
        out = torch.cat([h_n[-2], h_n[-1]], dim=1)
    elif last_step:
        out = out[:, -1]
    tloss = torch.nn.functional.mse_loss(out @ W + b, torch.tensor(target))
    tloss.backward()
    assert value == pytest.approx(tloss.item(), rel=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **KW)
    np.testing.assert_allclose(dense.grads["W"], W.grad.numpy(), **KW)
    np.testing.assert_allclose(dense.grads["b"], b.grad.numpy(), **KW)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("B", [3, 16])
def test_stack_of_two_equals_torch_num_layers_2(rng, cell, B):
    T, n_in, H = 5, 4, 6
    rnn = getattr(jp, cell)
    model = jp.Sequential([rnn(n_in, H, dtype=np.float64, seed=1), rnn(H, H, dtype=np.float64, seed=2),
                           jp.Dense(H, 1, dtype=np.float64, seed=3)])
    trnn = getattr(torch.nn, cell)(n_in, H, num_layers=2, batch_first=True, dtype=torch.float64)
    for k in range(2):
        _copy_into_torch(trnn, f"_l{k}", model.layers[k])
    _run_both(rng, model, trnn, B, T, n_in, False, model.layers[2])
    for k in range(2):
        _check_grads(trnn, f"_l{k}", model.layers[k])


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("B", [3, 16])
def test_bidirectional_equals_torch(rng, cell, return_sequences, B):
    T, n_in, H = 5, 3, 4
    rnn = getattr(jp, cell)
    bi = jp.Bidirectional(rnn(n_in, H, return_sequences=return_sequences, dtype=np.float64, seed=1), seed=2)
    model = jp.Sequential([bi, jp.Dense(2 * H, 2, dtype=np.float64, seed=3)])
    assert model.layers[0].forward_layer.params["W_x"].base is not None      # packed into the model
    trnn = getattr(torch.nn, cell)(n_in, H, bidirectional=True, batch_first=True, dtype=torch.float64)
    _copy_into_torch(trnn, "_l0", bi.forward_layer)
    _copy_into_torch(trnn, "_l0_reverse", bi.backward_layer)
    _run_both(rng, model, trnn, B, T, n_in, False if return_sequences else "h_n", model.layers[1])
    _check_grads(trnn, "_l0", bi.forward_layer)
    _check_grads(trnn, "_l0_reverse", bi.backward_layer)
    assert model.layers[0].output_shape((T, n_in)) == ((T, 2 * H) if return_sequences else (2 * H,))


def test_stacked_bidirectional_equals_torch(rng):
    """Bidirectional(LSTM) -> Bidirectional(LSTM) = torch LSTM(num_layers=2, bidirectional=True)."""
    T, n_in, H, B = 4, 3, 5, 4
    bi1 = jp.Bidirectional(jp.LSTM(n_in, H, dtype=np.float64, seed=1), seed=2)
    bi2 = jp.Bidirectional(jp.LSTM(2 * H, H, dtype=np.float64, seed=3), seed=4)
    model = jp.Sequential([bi1, bi2, jp.Dense(2 * H, 1, dtype=np.float64, seed=5)])
    trnn = torch.nn.LSTM(n_in, H, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    for k, bi in enumerate((bi1, bi2)):
        _copy_into_torch(trnn, f"_l{k}", bi.forward_layer)
        _copy_into_torch(trnn, f"_l{k}_reverse", bi.backward_layer)
    _run_both(rng, model, trnn, B, T, n_in, False, model.layers[2])
    for k, bi in enumerate((bi1, bi2)):
        _check_grads(trnn, f"_l{k}", bi.forward_layer)
        _check_grads(trnn, f"_l{k}_reverse", bi.backward_layer)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_bidirectional_finite_differences(rng, cell, return_sequences):
    bi = jp.Bidirectional(getattr(jp, cell)(2, 3, return_sequences=return_sequences, dtype=np.float64, seed=0),
                          seed=1)
    model = jp.Sequential([bi, jp.Dense(6, 2, dtype=np.float64, seed=2)])
    x = rng.standard_normal((2, 4, 2))
    target = rng.standard_normal((2, 4, 2) if return_sequences else (2, 2))
    report = jp.gradcheck(model, jp.MSELoss(), x, target)
    names = {k.split(".", 1)[1] for k in report if k.startswith("layer0.")}
    assert {n.split(".")[0] for n in names} == {"forward", "backward"}
    for k, err in report.items():
        assert err < 1e-6, (k, err)


def test_bidirectional_config_and_errors():
    bi = jp.Bidirectional(jp.GRU(3, 4, return_sequences=False, seed=0), seed=1)
    clone = jp.Bidirectional.from_config(bi.get_config())
    assert repr(clone) == repr(bi) == "Bidirectional(GRU(3, 4, return_sequences=False, dtype=float32))"
    assert clone.param_shapes() == bi.param_shapes()
    assert not np.array_equal(bi.forward_layer.params["W_x"], bi.backward_layer.params["W_x"])
    assert bi.n_hidden == 4 and bi.n_out == 8
    with pytest.raises(ValueError, match="stateful"):
        jp.Bidirectional(jp.LSTM(3, 4, stateful=True))
    with pytest.raises(TypeError, match="recurrent"):
        jp.Bidirectional(jp.Dense(3, 4))


def test_recurrent_checkpoint_roundtrip(tmp_path, rng):
    model = jp.Sequential([jp.Bidirectional(jp.GRU(2, 3, seed=0), seed=1), jp.LSTM(6, 3, return_sequences=False,
                                                                                seed=2),
                           jp.Dense(3, 2, seed=3)])
    tr = jp.Trainer(model, jp.MSELoss(), jp.SGD(model, lr=0.05, momentum=0.5, clip_norm=2.0))
    X = rng.standard_normal((40, 6, 2)).astype(np.float32)
    y = rng.standard_normal((40, 2)).astype(np.float32)
    tr.fit(X, y, epochs=2, batch_size=8, progress=False)
    tr.save(tmp_path / "r.npz")
    tr2 = jp.load(tmp_path / "r.npz")
    assert [repr(la) for la in tr2.model.layers] == [repr(la) for la in model.layers]
    np.testing.assert_array_equal(tr2.model.predict(X), model.predict(X))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("B", [3, 70])  # one batch part, and several (a weight workspace)
def test_layers_of_a_stack_run_one_compiled_backward(monkeypatch, rng, cell, B):
    """The first layer of a stack computes no dx, the second does: both call
    the backward kernel with arguments of the same Numba types (an empty
    array stands for the absent dx and weight workspace), so one compiled
    kernel serves both, and the first layer still returns no dx."""
    import numba

    from jitprop.kernels import raw

    name = f"{cell}_backward"
    kernel = getattr(raw, name)
    seen = []

    def recording(*args):
        seen.append(tuple(numba.typeof(a) for a in args))
        return kernel(*args)

    monkeypatch.setattr(raw, name, recording)
    Rnn = jp.LSTM if cell == "lstm" else jp.GRU
    model = jp.Sequential([Rnn(3, 4, seed=0), Rnn(4, 4, seed=1), jp.Dense(4, 2, seed=2)])
    x = rng.standard_normal((B, 5, 3)).astype(np.float32)
    out = model.forward(x)
    model.backward(np.ones_like(out), need_input_grad=False)
    assert len(seen) == 2 and seen[0] == seen[1]
    assert model.layers[0].backward(np.ones((B, 5, 4), np.float32), need_dx=False) is None
