"""Plain NumPy references for the kernels, written independently of them
(float64 arithmetic, no fusion, the textbook formulas)."""

import numpy as np


def sigmoid(z):
    z = np.asarray(z, dtype=np.float64)
    return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))


def act(z, name):
    z = np.asarray(z, dtype=np.float64)
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "sigmoid":
        return sigmoid(z)
    if name == "tanh":
        return np.tanh(z)
    return z.copy()


def act_grad_from_input(z, name):
    """f'(z) computed from the input (a different route from the kernels,
    which use the saved output)."""
    z = np.asarray(z, dtype=np.float64)
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "sigmoid":
        s = sigmoid(z)
        return s * (1 - s)
    if name == "tanh":
        return 1.0 / np.cosh(z) ** 2
    return np.ones_like(z)


def dense_forward(x, W, b):
    return x.astype(np.float64) @ W.astype(np.float64) + b.astype(np.float64)


def dense_backward(x, W, dy):
    x, W, dy = (a.astype(np.float64) for a in (x, W, dy))
    return dy @ W.T, x.T @ dy, dy.sum(axis=0)


def mse(pred, target):
    d = pred.astype(np.float64) - target.astype(np.float64)
    return float(np.mean(d * d)), 2.0 * d / d.size


def softmax_xent(logits, labels):
    z = logits.astype(np.float64)
    n = z.shape[0]
    zmax = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - zmax).sum(axis=1, keepdims=True)) + zmax
    logp = z - lse
    loss = -logp[np.arange(n), labels].mean()
    p = np.exp(logp)
    p[np.arange(n), labels] -= 1.0
    return float(loss), p / n


def sgd(p, g, v, lr, momentum, wd, nesterov):
    """torch.optim.SGD (dampening 0) written out; returns new (p, v)."""
    p = p.astype(np.float64)
    g = g.astype(np.float64) + wd * p
    v = momentum * v.astype(np.float64) + g
    step = g + momentum * v if nesterov else v
    return p - lr * step, v


def clip(grads, max_norm):
    norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    coef = max_norm / (norm + 1e-6)
    if coef < 1:
        return [g * coef for g in grads], norm
    return [g.astype(np.float64) for g in grads], norm
