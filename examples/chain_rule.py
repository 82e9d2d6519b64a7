"""Backpropagation by the chain rule on a chain of single-neuron sigmoid layers.

The article jitprop started from works the chain a(0) -> a(L-2) -> a(L-1) -> a(L)
with one sigmoid neuron per layer (L = 3 here) and the loss C0 = (a(L) - y)^2.
This example evaluates its formulas with fixed numbers, next to jitprop's
backward pass and central finite differences; shows that its printed formula
for dC0/dw(L-1) is wrong and the corrected one is right; checks the matrix form
for full layers; and trains the chain with plain SGD.

    python examples/chain_rule.py [--steps 200] [--lr 0.5] [--every 20]
"""

import argparse
import math

import numpy as np

import jitprop as jp

# The stated numbers.  Layers are numbered 1..3 = L-2, L-1, L.
A0 = 1.5                      # input a(0)
Y = 0.9                       # target y
WEIGHTS = (0.8, 2.5, -1.5)    # w(L-2), w(L-1), w(L)
BIASES = (-0.3, 0.5, 0.4)     # b(L-2), b(L-1), b(L)


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def sigmoid_prime(z):
    s = sigmoid(z)
    return s * (1.0 - s)


def build_chain(weights=WEIGHTS, biases=BIASES):
    """The 1-1-1-1 chain: Dense(1,1), Sigmoid three times, float64.

    ``fuse=False`` keeps the Dense output z(l) in its own buffer (with fusion
    the Dense kernel would already apply the sigmoid); results are identical.
    """
    layers = []
    for _ in weights:
        layers += [jp.Dense(1, 1, dtype=np.float64), jp.Sigmoid()]
    model = jp.Sequential(layers, fuse=False)
    for i, (w, b) in enumerate(zip(weights, biases)):
        model.layers[2 * i].params["W"][...] = w
        model.layers[2 * i].params["b"][...] = b
    return model


def compute(a0=A0, y=Y, weights=WEIGHTS, biases=BIASES):
    """Every quantity of the article for the chain, by hand and from jitprop.

    Returns a dict of floats; keys are explained by :func:`main`'s output.
    """
    r = {"a0": a0, "y": y, "w": tuple(weights), "b": tuple(biases)}

    # by hand, with the article's formulas
    a = [a0]
    z = [None]
    for w, b in zip(weights, biases):
        z.append(w * a[-1] + b)
        a.append(sigmoid(z[-1]))
    for l in (1, 2, 3):
        r[f"z{l}"], r[f"a{l}"] = z[l], a[l]
    wL = weights[2]
    r["C0"] = (a[3] - y) ** 2
    r["dC0_daL"] = 2.0 * (a[3] - y)
    r["sp_zL"] = sigmoid_prime(z[3])          # da(L)/dz(L)
    r["dzL_dwL"] = a[2]                       # a(L-1)
    r["dC0_dwL"] = r["dC0_daL"] * r["sp_zL"] * r["dzL_dwL"]
    r["sp_zLm1"] = sigmoid_prime(z[2])        # da(L-1)/dz(L-1)
    r["dzL_daLm1"] = wL                       # w(L)
    r["dzLm1_dwLm1"] = a[1]                   # a(L-2)
    g, spL, spLm1, aLm1, aLm2 = r["dC0_daL"], r["sp_zL"], r["sp_zLm1"], a[2], a[1]
    # the correct chain rule
    r["dC0_dwLm1"] = g * spL * wL * spLm1 * aLm2
    # the article's printed steps chained: sigma'(z(L)) for sigma'(z(L-1)), a(L-1) for w(L)
    r["dC0_dwLm1_printed"] = g * spL * aLm1 * spL * aLm2
    # one error fixed at a time
    r["dC0_dwLm1_fix_sigma_only"] = g * spL * aLm1 * spLm1 * aLm2   # a(L-1) for w(L) remains
    r["dC0_dwLm1_fix_w_only"] = g * spL * wL * spL * aLm2           # sigma'(z(L)) for sigma'(z(L-1)) remains

    # jitprop: forward layer by layer (what model.forward does), keeping each output
    model = build_chain(weights, biases)
    loss = jp.MSELoss()
    x = np.array([[a0]])
    t = np.array([[y]])
    h = x
    outs = []
    for layer in model.layers:
        h = layer.forward(h)
        outs.append(float(h[0, 0]))
    for l in (1, 2, 3):
        r[f"jp_z{l}"], r[f"jp_a{l}"] = outs[2 * l - 2], outs[2 * l - 1]
    r["jp_C0"] = loss.forward(h, t)              # mean over one element = (a(L)-y)^2
    r["jp_dC0_daL"] = float(loss.backward()[0, 0])
    model.backward(loss.backward())
    r["jp_dC0_dwL"] = float(model.layers[4].grads["W"][0, 0])
    r["jp_dC0_dwLm1"] = float(model.layers[2].grads["W"][0, 0])

    # central finite differences of C0 with respect to w(L) and w(L-1)
    def c0():
        return loss.forward(model.forward(x), t)

    r["fd_dC0_dwL"] = float(jp.numerical_gradient(c0, model.layers[4].params["W"])[0, 0])
    r["fd_dC0_dwLm1"] = float(jp.numerical_gradient(c0, model.layers[2].params["W"])[0, 0])
    return r


def matrix_form(batch=4, seed=0):
    """A 3-4-2 sigmoid network: jitprop's gradients vs the matrix chain rule in NumPy.

    Loss: C = sum over the rows and output neurons of (a - y)^2.  MSELoss is
    the mean of the same terms, so its gradient is scaled by ``pred.size``.
    Returns the hand and jitprop arrays and the largest absolute difference.
    """
    rng = np.random.default_rng(seed)
    model = jp.Sequential([jp.Dense(3, 4, dtype=np.float64, seed=seed + 1), jp.Sigmoid(),
                           jp.Dense(4, 2, dtype=np.float64, seed=seed + 2), jp.Sigmoid()])
    X = rng.uniform(-1.0, 1.0, (batch, 3))
    T = rng.uniform(0.0, 1.0, (batch, 2))
    W1, b1 = model.layers[0].params["W"].copy(), model.layers[0].params["b"].copy()
    W2, b2 = model.layers[2].params["W"].copy(), model.layers[2].params["b"].copy()

    # by hand
    a1 = 1.0 / (1.0 + np.exp(-(X @ W1 + b1)))
    a2 = 1.0 / (1.0 + np.exp(-(a1 @ W2 + b2)))
    C = float(np.sum((a2 - T) ** 2))
    delta2 = 2.0 * (a2 - T) * a2 * (1.0 - a2)
    dW2, db2 = a1.T @ delta2, delta2.sum(axis=0)
    delta1 = (delta2 @ W2.T) * a1 * (1.0 - a1)
    dW1, db1 = X.T @ delta1, delta1.sum(axis=0)
    hand = {"C": C, "dW1": dW1, "db1": db1, "dW2": dW2, "db2": db2}

    # jitprop
    loss = jp.MSELoss()
    pred = model.forward(X)
    mse = loss.forward(pred, T)
    model.backward(loss.backward() * pred.size)
    jit = {"C": mse * pred.size,
           "dW1": model.layers[0].grads["W"].copy(), "db1": model.layers[0].grads["b"].copy(),
           "dW2": model.layers[2].grads["W"].copy(), "db2": model.layers[2].grads["b"].copy()}
    diff = max(float(np.max(np.abs(np.asarray(hand[k]) - np.asarray(jit[k])))) for k in hand)
    return {"hand": hand, "jitprop": jit, "max_abs_diff": diff}


def train(steps=200, lr=0.5, a0=A0, y=Y, weights=WEIGHTS, biases=BIASES):
    """Train the chain on the one target with plain SGD; the loss before each step."""
    model = build_chain(weights, biases)
    trainer = jp.Trainer(model, jp.MSELoss(), jp.SGD(model, lr=lr))
    x, t = np.array([[a0]]), np.array([[y]])
    return [trainer.train_step(x, t) for _ in range(steps)]


def sgd_update_check(steps=3, lr=0.5):
    """Largest |p_new - (p_old - lr * grad)| over a few SGD steps on the chain."""
    model = build_chain()
    trainer = jp.Trainer(model, jp.MSELoss(), jp.SGD(model, lr=lr))
    x, t = np.array([[A0]]), np.array([[Y]])
    worst = 0.0
    for _ in range(steps):
        before = model.get_params()
        trainer.train_step(x, t)          # leaves this step's gradient in flat_grads
        expected = before - lr * model.flat_grads
        worst = max(worst, float(np.max(np.abs(model.flat_params - expected))))
    return worst


def _rel(a, b):
    return abs(a - b) / abs(b)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="SGD steps on the chain")
    p.add_argument("--lr", type=float, default=0.5, help="SGD learning rate")
    p.add_argument("--every", type=int, default=20, help="print the loss every N steps")
    args = p.parse_args(argv)

    r = compute()
    f = "{:+.12f}".format
    print("Chain a(0) -> a(L-2) -> a(L-1) -> a(L), one sigmoid neuron per layer, C0 = (a(L) - y)^2")
    print(f"a(0) = {A0}, y = {Y}, w = {WEIGHTS} and b = {BIASES} for layers L-2, L-1, L")
    print()
    print("Last layer                      by hand           jitprop")
    print(f"  z(L) = w(L) a(L-1) + b(L)   {f(r['z3'])}   {f(r['jp_z3'])}")
    print(f"  a(L) = sigma(z(L))          {f(r['a3'])}   {f(r['jp_a3'])}")
    print(f"  C0 = (a(L) - y)^2           {f(r['C0'])}   {f(r['jp_C0'])}")
    print(f"  dC0/da(L) = 2 (a(L) - y)    {f(r['dC0_daL'])}   {f(r['jp_dC0_daL'])}")
    print(f"  sigma'(z(L))                {f(r['sp_zL'])}")
    print(f"  dz(L)/dw(L) = a(L-1)        {f(r['dzL_dwL'])}   {f(r['jp_a2'])}")
    print(f"  dC0/dw(L) = product         {f(r['dC0_dwL'])}   {f(r['jp_dC0_dwL'])}"
          f"   finite diff {f(r['fd_dC0_dwL'])}")
    print()
    print("One layer back, dC0/dw(L-1)")
    print(f"  sigma'(z(L-1)) = {f(r['sp_zLm1'])}  (the article prints sigma'(z(L)) = {f(r['sp_zL'])})")
    print(f"  dz(L)/da(L-1) = w(L) = {f(r['dzL_daLm1'])}  (the article uses a(L-1) = {f(r['dzL_dwL'])})")
    ref = r["jp_dC0_dwLm1"]
    rows = [
        ("as printed: sigma'(z(L)) and a(L-1)", r["dC0_dwLm1_printed"]),
        ("only sigma'(z(L-1)) fixed", r["dC0_dwLm1_fix_sigma_only"]),
        ("only w(L) fixed", r["dC0_dwLm1_fix_w_only"]),
        ("corrected: 2(a(L)-y) s'(z(L)) w(L) s'(z(L-1)) a(L-2)", r["dC0_dwLm1"]),
    ]
    for name, v in rows:
        print(f"  {name:<53} {f(v)}   rel. diff to jitprop {_rel(v, ref):.1e}")
    label = 'jitprop backward, model.layers[2].grads["W"]'
    print(f"  {label:<53} {f(ref)}")
    print(f"  {'central finite difference':<53} {f(r['fd_dC0_dwLm1'])}")
    print("  Only the corrected formula agrees with jitprop and finite differences; each error alone")
    print("  already gives a wrong gradient. (The article's own last line has sigma'(z(L-1)) right but")
    print("  still a(L-1) for w(L): the 'only sigma'(z(L-1)) fixed' row.)")
    print()
    m = matrix_form()
    print("Full layers (3-4-2 sigmoid network, 4 rows, C = sum of (a - y)^2 over rows and outputs):")
    print("  delta = 2(a-y) a(1-a); dW = a_prev.T @ delta; delta_prev = (delta @ W.T) a_prev(1-a_prev)")
    print(f"  max |hand - jitprop| over C, dW and db of both layers: {m['max_abs_diff']:.1e}")
    print()
    print(f"Training the chain with plain SGD, lr = {args.lr}, on the one target y = {Y}:")
    losses = train(args.steps, args.lr)
    for k, v in enumerate(losses):
        if k % args.every == 0 or k == len(losses) - 1:
            print(f"  step {k:4d}  C0 = {v:.6e}")
    print(f"  final/initial loss = {losses[-1] / losses[0]:.1e}")
    print(f"  SGD update equals p - lr*grad: max deviation {sgd_update_check(lr=args.lr):.1e}")
    print()
    print("The article's next topic, vanishing and exploding gradients, is shown by "
          "examples/vanishing_gradients.py.")
    return r


if __name__ == "__main__":
    main()
