"""Plain NumPy reference LSTM (forward + BPTT), used only by the tests.

Written for clarity, not speed: one Python loop over time, float64
arithmetic, pre-activations kept per step and derivatives taken from them.
Gate order i, f, g, o (as in PyTorch); W_x (n_in, 4H), W_h (H, 4H), b (4H,).
"""

import numpy as np


def _sig(z):
    with np.errstate(over="ignore"):     # exp(-z) -> inf gives exactly 0
        return 1.0 / (1.0 + np.exp(-z))


def reference_forward(x, W_x, W_h, b, h0, c0):
    """Return (h_seq (B,T,H), h_T, c_T, tape) computed in float64."""
    x = np.asarray(x, np.float64)
    W_x = np.asarray(W_x, np.float64)
    W_h = np.asarray(W_h, np.float64)
    b = np.asarray(b, np.float64)
    h = np.asarray(h0, np.float64).copy()
    c = np.asarray(c0, np.float64).copy()
    B, T, _ = x.shape
    H = W_h.shape[0]
    h_seq = np.zeros((B, T, H))
    tape = []
    for t in range(T):
        z = x[:, t, :] @ W_x + h @ W_h + b
        zi, zf, zg, zo = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        i, f, g, o = _sig(zi), _sig(zf), np.tanh(zg), _sig(zo)
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        tape.append(dict(x=x[:, t, :], h_prev=h, c_prev=c, c=c_new,
                         zi=zi, zf=zf, zg=zg, zo=zo))
        h, c = h_new, c_new
        h_seq[:, t, :] = h
    return h_seq, h, c, tape


def reference_backward(W_x, W_h, tape, dh_seq, dh_T, dc_T):
    """Return dict with dx, dW_x, dW_h, db, dh0, dc0 (float64)."""
    W_x = np.asarray(W_x, np.float64)
    W_h = np.asarray(W_h, np.float64)
    dh_seq = np.asarray(dh_seq, np.float64)
    T = len(tape)
    B = dh_seq.shape[0]
    dW_x = np.zeros_like(W_x)
    dW_h = np.zeros_like(W_h)
    db = np.zeros(W_x.shape[1])
    dx = np.zeros((B, T, W_x.shape[0]))
    dh_next = np.array(dh_T, np.float64)
    dc_next = np.array(dc_T, np.float64)
    for t in reversed(range(T)):
        s = tape[t]
        i, f, o = _sig(s["zi"]), _sig(s["zf"]), _sig(s["zo"])
        g = np.tanh(s["zg"])
        tanh_c = np.tanh(s["c"])
        dh = dh_seq[:, t, :] + dh_next
        # h = o * tanh(c)
        d_o = dh * tanh_c
        dc = dc_next + dh * o * (1.0 - tanh_c ** 2)
        # c = f * c_prev + i * g
        d_f = dc * s["c_prev"]
        d_i = dc * g
        d_g = dc * i
        dc_prev = dc * f
        # through the nonlinearities
        dz = np.concatenate([d_i * i * (1.0 - i),
                             d_f * f * (1.0 - f),
                             d_g * (1.0 - g ** 2),
                             d_o * o * (1.0 - o)], axis=1)
        dW_x += s["x"].T @ dz
        dW_h += s["h_prev"].T @ dz
        db += dz.sum(axis=0)
        dx[:, t, :] = dz @ W_x.T
        dh_next = dz @ W_h.T
        dc_next = dc_prev
    return dict(dx=dx, dW_x=dW_x, dW_h=dW_h, db=db, dh0=dh_next, dc0=dc_next)
