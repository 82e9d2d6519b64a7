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


def adam(p, g, m, v, vmax, t, lr, b1, b2, eps, wd, amsgrad, decoupled):
    """torch.optim.Adam / AdamW (single-tensor path) written out in float64,
    with torch's lerp for the first moment; returns new (p, m, v, vmax)."""
    p, g, m, v = (a.astype(np.float64) for a in (p, g, m, v))
    if wd != 0:
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
    w = 1 - b1
    m = m + w * (g - m) if w < 0.5 else g + (w - 1) * (g - m)
    v = v * b2 + (1 - b2) * g * g
    vhat = v
    if amsgrad:
        vmax = vmax.astype(np.float64)
        vmax = np.where(np.isnan(vmax) | (vmax > v), vmax, v)
        vhat = vmax
    step_size = lr / (1 - b1 ** float(t))
    bc2 = (1 - b2 ** float(t)) ** 0.5
    return p - step_size * m / (np.sqrt(vhat) / bc2 + eps), m, v, vmax


def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def dropout_mask(n, p, seed, step):
    """The kept elements of dropout call ``step`` of a layer seeded ``seed``
    (splitmix64's finaliser of a Weyl sequence; numpy uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        key = _mix64(_mix64(np.uint64(seed) ^ np.uint64(0x5851F42D4C957F2D)) + np.uint64(step))
        i = np.arange(1, n + 1, dtype=np.uint64)
        h = _mix64(key + i * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(11)
    return h >= np.uint64(round(p * 2.0 ** 53))
