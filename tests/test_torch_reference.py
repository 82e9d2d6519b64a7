"""The same computations repeated in PyTorch with copied weights (skipped
when torch is not installed)."""

import numpy as np
import pytest

import jitprop as jp

torch = pytest.importorskip("torch")

TORCH_ACT = {jp.ReLU: torch.relu, jp.Sigmoid: torch.sigmoid, jp.Tanh: torch.tanh}


def torch_forward(model, x, params):
    h = x
    k = 0
    for layer in model.layers:
        if isinstance(layer, jp.Dense):
            W, b = params[k], params[k + 1]
            k += 2
            h = h @ W + b
        else:
            h = TORCH_ACT[type(layer)](h)
    return h


def copy_params(model):
    out = []
    for layer in model.layers:
        for name in layer.params:
            out.append(torch.tensor(layer.params[name].copy(), requires_grad=True))
    return out


@pytest.mark.parametrize("act", [jp.ReLU, jp.Sigmoid, jp.Tanh])
@pytest.mark.parametrize("loss_name", ["mse", "xent"])
def test_mlp_forward_backward_matches_torch(rng, act, loss_name):
    model = jp.Sequential([jp.Dense(6, 8, dtype=np.float64, seed=0), act(), jp.Dense(8, 7, dtype=np.float64, seed=1),
                           act(), jp.Dense(7, 4, dtype=np.float64, seed=2)])
    x = rng.standard_normal((9, 6))
    if loss_name == "mse":
        target = rng.standard_normal((9, 4))
        loss = jp.MSELoss()
    else:
        target = rng.integers(0, 4, 9)
        loss = jp.SoftmaxCrossEntropy()
    value = loss.forward(model.forward(x), target)
    dx = model.backward(loss.backward())

    params = copy_params(model)
    xt = torch.tensor(x, requires_grad=True)
    out = torch_forward(model, xt, params)
    if loss_name == "mse":
        tl = torch.nn.functional.mse_loss(out, torch.tensor(target))
    else:
        tl = torch.nn.functional.cross_entropy(out, torch.tensor(target))
    tl.backward()
    assert value == pytest.approx(tl.item(), rel=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-13)
    grads = [g for layer in model.layers for g in layer.grads.values()]
    for g, p in zip(grads, params):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("momentum,wd,nesterov", [(0.0, 0.0, False), (0.9, 0.0, False),
                                                   (0.9, 1e-2, False), (0.7, 1e-3, True)])
def test_sgd_matches_torch_optim(rng, dtype, rtol, momentum, wd, nesterov):
    model = jp.Sequential([jp.Dense(5, 4, dtype=dtype, seed=0), jp.Tanh(), jp.Dense(4, 3, dtype=dtype, seed=1)])
    opt = jp.SGD(model, lr=0.1, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    params = copy_params(model)
    topt = torch.optim.SGD(params, lr=0.1, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    loss = jp.MSELoss()
    for step in range(6):
        x = rng.standard_normal((8, 5)).astype(dtype)
        t = rng.standard_normal((8, 3)).astype(dtype)
        loss.forward(model.forward(x), t)
        model.backward(loss.backward(), need_input_grad=False)
        opt.step()
        topt.zero_grad()
        torch.nn.functional.mse_loss(torch_forward(model, torch.tensor(x), params), torch.tensor(t)).backward()
        topt.step()
    got = [p for layer in model.layers for p in layer.params.values()]
    for g, p in zip(got, params):
        np.testing.assert_allclose(g, p.detach().numpy(), rtol=rtol, atol=rtol)


def test_clip_matches_torch(rng):
    model = jp.Sequential([jp.Dense(5, 4, dtype=np.float64, seed=0), jp.Tanh(), jp.Dense(4, 3, dtype=np.float64, seed=1)])
    model.flat_grads[...] = rng.standard_normal(model.n_params) * 10
    tgrads = [torch.tensor(g.copy()) for layer in model.layers for g in layer.grads.values()]
    params = [torch.zeros_like(g, requires_grad=True) for g in tgrads]
    for p, g in zip(params, tgrads):
        p.grad = g
    tnorm = torch.nn.utils.clip_grad_norm_(params, 1.5)
    norm = jp.kernels.clip_grad_norm(model.flat_grads, 1.5)
    assert norm == pytest.approx(tnorm.item(), rel=1e-12)
    for g, p in zip([g for layer in model.layers for g in layer.grads.values()], params):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-12)
