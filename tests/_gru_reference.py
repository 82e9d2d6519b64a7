"""Plain NumPy reference GRU (forward + BPTT), used only by the tests.

Written for clarity: one Python loop over time, float64 arithmetic,
derivatives taken from the pre-activations.  torch.nn.GRU's equations, gate
order r, z, n; W_x (n_in, 3H), W_h (H, 3H), b_x (3H,), b_h (3H,).
"""

import numpy as np


def _sig(z):
    with np.errstate(over="ignore"):     # exp(-z) -> inf gives exactly 0
        return 1.0 / (1.0 + np.exp(-z))


def reference_forward(x, W_x, W_h, b_x, b_h, h0):
    """Return (h_seq (B,T,H), h_T, tape) computed in float64."""
    x, W_x, W_h, b_x, b_h = (np.asarray(a, np.float64) for a in (x, W_x, W_h, b_x, b_h))
    h = np.asarray(h0, np.float64).copy()
    B, T, _ = x.shape
    H = W_h.shape[0]
    h_seq = np.zeros((B, T, H))
    tape = []
    for t in range(T):
        a = x[:, t] @ W_x + b_x
        u = h @ W_h + b_h
        pr = a[:, :H] + u[:, :H]
        pz = a[:, H:2 * H] + u[:, H:2 * H]
        r, z = _sig(pr), _sig(pz)
        pn = a[:, 2 * H:] + r * u[:, 2 * H:]
        n = np.tanh(pn)
        h_new = (1.0 - z) * n + z * h
        tape.append(dict(x=x[:, t], h_prev=h, r=r, z=z, n=n, un=u[:, 2 * H:]))
        h = h_new
        h_seq[:, t] = h
    return h_seq, h, tape


def reference_backward(W_x, W_h, tape, dh_seq, dh_T):
    """Return dict with dx, dW_x, dW_h, db_x, db_h, dh0 (float64)."""
    W_x = np.asarray(W_x, np.float64)
    W_h = np.asarray(W_h, np.float64)
    dh_seq = np.asarray(dh_seq, np.float64)
    T = len(tape)
    B = dh_seq.shape[0]
    dW_x = np.zeros_like(W_x)
    dW_h = np.zeros_like(W_h)
    db_x = np.zeros(W_x.shape[1])
    db_h = np.zeros(W_x.shape[1])
    dx = np.zeros((B, T, W_x.shape[0]))
    dh_next = np.array(dh_T, np.float64)
    for t in reversed(range(T)):
        s = tape[t]
        r, z, n = s["r"], s["z"], s["n"]
        dh = dh_seq[:, t] + dh_next
        # h = (1 - z) n + z h_prev
        dn = dh * (1.0 - z)
        dz = dh * (s["h_prev"] - n)
        dh_prev = dh * z
        # n = tanh(a_n + r u_n)
        dpn = dn * (1.0 - n ** 2)
        dr = dpn * s["un"]
        dun = dpn * r
        dpr = dr * r * (1.0 - r)
        dpz = dz * z * (1.0 - z)
        da = np.concatenate([dpr, dpz, dpn], axis=1)
        du = np.concatenate([dpr, dpz, dun], axis=1)
        dW_x += s["x"].T @ da
        dW_h += s["h_prev"].T @ du
        db_x += da.sum(axis=0)
        db_h += du.sum(axis=0)
        dx[:, t] = da @ W_x.T
        dh_next = dh_prev + du @ W_h.T
    return dict(dx=dx, dW_x=dW_x, dW_h=dW_h, db_x=db_x, db_h=db_h, dh0=dh_next)
