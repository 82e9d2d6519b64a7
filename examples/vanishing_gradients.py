"""Vanishing and exploding gradients, measured with jitprop's diagnostics.

Three experiments, each printed as a table (and the first also plotted):

1. Depth.  A 10-layer sigmoid MLP and a 10-layer ReLU MLP (width 32, the
   same He-uniform initial weights) are trained on scikit-learn's handwritten
   digits with ``Trainer.fit(..., track_gradients=True)``.  The sigmoid
   network's gradient norm shrinks by orders of magnitude from the last layer
   to the first (sigmoid'(z) <= 1/4 at every layer) and it stays at chance
   accuracy; the ReLU network's gradients reach the first layer intact.
2. Time.  An LSTM reads a sequence of T = 100 steps whose label is the sign
   of the value at the first step (marked by a flag; noise everywhere else).
   ``model.backward`` returns dL/dx of shape (batch, T, features); its norm at
   step t shows how much of the loss's gradient reaches t.  With the default
   initialisation it decays geometrically with the distance from the loss;
   raising the forget-gate bias keeps it alive.
3. Explosion.  An LSTM trained with too large a learning rate (SGD with
   momentum on a target of scale 20): the global gradient norm before
   clipping grows by many orders of magnitude within the first epoch, and the
   loss often overflows to a non-finite value a few epochs later (jitprop then
   raises FloatingPointError naming the epoch, step and layer).  The same run
   with ``SGD(..., clip_norm=1.0)`` keeps its gradient norm bounded and trains.

    python examples/vanishing_gradients.py [--quick] [--plot PATH | --no-plot]
"""

import argparse
import math
import time

import numpy as np

import jitprop as jp


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------

def load_data(seed=0, test_fraction=0.25, synthetic=False):
    """Digits scaled to [0, 1] and split (train, test); a synthetic stand-in
    without scikit-learn (or with ``synthetic=True``).

    Returns (Xtr, Xte, ytr, yte, name)."""
    load_digits = None
    if not synthetic:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            pass
    rng = np.random.default_rng(seed)
    if load_digits is not None:
        X, y = load_digits(return_X_y=True)
        X = X / 16.0
        name = "scikit-learn digits (1797 images, 8x8, 10 classes)"
    else:
        # 10 Gaussian clusters in [0, 1]^64, as many samples as digits has
        centres = rng.uniform(0.0, 1.0, (10, 64))
        y = rng.integers(0, 10, 1797)
        X = np.clip(centres[y] + rng.normal(0.0, 0.25, (1797, 64)), 0.0, 1.0)
        name = "SYNTHETIC 10-class data" + ("" if synthetic else
                                            " (scikit-learn is not installed: pip install scikit-learn)")
    order = rng.permutation(len(X))
    X, y = X[order].astype(np.float32), y[order].astype(np.int64)
    n_test = int(round(test_fraction * len(X)))
    return X[n_test:], X[:n_test], y[n_test:], y[:n_test], name


# --------------------------------------------------------------------------
# 1. vanishing gradients with depth
# --------------------------------------------------------------------------

def build_mlp(activation, depth, width, n_in, n_out, seed=0):
    """``depth`` Dense layers with ``activation`` between them.

    Weights are He-uniform, ``U(-sqrt(6/n_in), sqrt(6/n_in))``, biases zero,
    drawn from ``seed`` so that two calls with different activations start
    from the same weights.  (jitprop's default, PyTorch's ``U(+-1/sqrt(n_in))``,
    shrinks activations by ~sqrt(6) per ReLU layer: at depth 10 it makes even
    the ReLU network's gradients vanish.)"""
    layers = []
    rng = np.random.default_rng(seed)
    n = n_in
    for i in range(depth):
        m = n_out if i == depth - 1 else width
        dense = jp.Dense(n, m)
        bound = math.sqrt(6.0 / n)
        dense.params["W"][...] = rng.uniform(-bound, bound, (n, m))
        dense.params["b"][...] = 0.0
        layers.append(dense)
        if i < depth - 1:
            layers.append(activation())
        n = m
    return jp.Sequential(layers)


def mlp_gradients(depth=10, width=32, epochs=30, lr=0.01, momentum=0.9, batch_size=32, seed=0, data=None):
    """Train a sigmoid and a ReLU MLP of the same shape; record gradient norms.

    Returns
    -------
    dict
        ``"data"`` (description), ``"layers"`` (names of the Dense layers) and,
        for ``"sigmoid"`` and ``"relu"``: ``"grad_norms"`` (epochs x layers,
        mean over each epoch's steps), ``"ratio"`` (first layer / last layer,
        per epoch), ``"accuracy"`` (test accuracy per epoch), ``"time"``.
    """
    Xtr, Xte, ytr, yte, name = data if data is not None else load_data(seed)
    out = {"data": name}
    for key, act in (("sigmoid", jp.Sigmoid), ("relu", jp.ReLU)):
        model = build_mlp(act, depth, width, Xtr.shape[1], 10, seed=seed)
        trainer = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=lr, momentum=momentum))
        t0 = time.perf_counter()
        hist = trainer.fit(Xtr, ytr, epochs=epochs, batch_size=batch_size, seed=seed,
                           validation_data=(Xte, yte), progress=False, track_gradients=True)
        g = np.array(hist["grad_norms"])
        out[key] = {"grad_norms": g, "ratio": g[:, 0] / g[:, -1],
                    "accuracy": list(hist["val_accuracy"]), "time": time.perf_counter() - t0}
        out["layers"] = hist["norm_layers"]
    return out


def print_mlp(res):
    sig, relu = res["sigmoid"], res["relu"]
    n_ep = len(sig["accuracy"])
    print(f"data: {res['data']}")
    print(f"mean gradient norm per Dense layer (first epoch / epoch {n_ep}):")
    print(f"{'layer':>5}  {'sigmoid ep1':>11}  {'sigmoid last':>12}  {'relu ep1':>9}  {'relu last':>9}")
    for j in range(sig["grad_norms"].shape[1]):
        print(f"{j + 1:5d}  {sig['grad_norms'][0, j]:11.2e}  {sig['grad_norms'][-1, j]:12.2e}  "
              f"{relu['grad_norms'][0, j]:9.2e}  {relu['grad_norms'][-1, j]:9.2e}")
    for key, r in (("sigmoid", sig), ("relu", relu)):
        print(f"{key:>7}: first/last layer gradient ratio {r['ratio'][0]:.1e} (epoch 1), "
              f"{r['ratio'][-1]:.1e} (epoch {n_ep}); test accuracy after {n_ep} epochs "
              f"{r['accuracy'][-1]:.3f}  [{r['time']:.1f} s]")


# --------------------------------------------------------------------------
# 2. vanishing gradients through time (LSTM)
# --------------------------------------------------------------------------

def lag_data(n, T, seed):
    """Sequences (n, T, 2): feature 0 is N(0, 1) noise, feature 1 flags step 0.
    The label is 1 when the value at step 0 is positive."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, T, 2), np.float32)
    X[:, :, 0] = rng.standard_normal((n, T))
    X[:, 0, 1] = 1.0
    return X, (X[:, 0, 0] > 0).astype(np.int64)


def lstm_model(hidden, forget_bias=None, seed=0):
    """LSTM(2, hidden) -> Dense(hidden, 2); ``forget_bias`` overwrites the
    forget-gate biases (gates are ordered i, f, g, o)."""
    lstm = jp.LSTM(2, hidden, return_sequences=False, seed=seed)
    if forget_bias is not None:
        lstm.params["b"][hidden:2 * hidden] = forget_bias
    return jp.Sequential([lstm, jp.Dense(hidden, 2, seed=seed + 1)])


def input_gradient_profile(model, X, y):
    """||dL/dx_t|| over the batch and features, for every step t (float64)."""
    loss = jp.SoftmaxCrossEntropy()
    loss.forward(model.forward(X), y)
    dx = model.backward(loss.backward())           # (batch, T, features)
    return np.sqrt(np.sum(dx.astype(np.float64) ** 2, axis=(0, 2)))


LAG_SETTINGS = (("rnn-like", -3.0), ("default", None), ("forget+3", 3.0))


def lstm_time_lag(T=100, hidden=16, n_val=256, train_T=20, n_train=1000, epochs=10, lr=0.1, seed=0,
                  train=("default", "forget+3")):
    """Gradient reaching each input step of an LSTM, at initialisation, and
    what training makes of it.

    Three initialisations: ``"rnn-like"`` (forget-gate bias -3: the cell
    forgets at every step and memory only flows through h, as in a plain tanh
    RNN), ``"default"`` (PyTorch's uniform init) and ``"forget+3"`` (forget-gate
    bias +3: f ~ 0.95).  Their profiles are measured on sequences of length
    ``T``.  The settings named in ``train`` are then trained on the same task
    with the shorter lag ``train_T`` (at T = 100 neither learns within a
    budget of seconds) for ``epochs`` epochs (SGD, momentum 0.9, clip_norm 1).

    Returns
    -------
    dict
        ``"T"``; ``"init"``: {setting: profile (T,)} where ``profile[t] =
        ||dL/dx_t||``; ``"train_T"``; ``"trained"``: {setting: {"before":
        profile (train_T,), "after": profile, "accuracy": validation accuracy
        per epoch (chance ~0.5)}}; ``"time"``.
    """
    Xv, yv = lag_data(n_val, T, seed + 1)
    res = {"T": T, "init": {}, "train_T": train_T, "trained": {}, "epochs": epochs}
    t0 = time.perf_counter()
    for name, bias in LAG_SETTINGS:
        res["init"][name] = input_gradient_profile(lstm_model(hidden, bias, seed), Xv, yv)
    if epochs > 0:
        Xtr, ytr = lag_data(n_train, train_T, seed + 2)
        Xv2, yv2 = lag_data(n_val, train_T, seed + 3)
        for name, bias in LAG_SETTINGS:
            if name not in train:
                continue
            model = lstm_model(hidden, bias, seed)
            before = input_gradient_profile(model, Xv2, yv2).copy()
            trainer = jp.Trainer(model, jp.SoftmaxCrossEntropy(),
                                 jp.SGD(model, lr=lr, momentum=0.9, clip_norm=1.0))
            hist = trainer.fit(Xtr, ytr, epochs=epochs, batch_size=50, seed=seed,
                               validation_data=(Xv2, yv2), progress=False)
            res["trained"][name] = {"before": before, "after": input_gradient_profile(model, Xv2, yv2),
                                    "accuracy": list(hist["val_accuracy"])}
    res["time"] = time.perf_counter() - t0
    return res


def print_lag(res):
    T = res["T"]
    dists = [d for d in (0, 1, 2, 5, 10, 20, 50, 75, T - 1) if d < T]
    names = list(res["init"])
    print(f"||dL/dx_t|| at initialisation, by distance T-1-t from the loss (T = {T}; the label is set at t = 0):")
    print(f"{'dist':>5}  " + "  ".join(f"{n:>10}" for n in names))
    for d in dists:
        print(f"{d:5d}  " + "  ".join(f"{res['init'][n][T - 1 - d]:10.2e}" for n in names))
    print(f"{'ratio':>5}  " + "  ".join(f"{res['init'][n][0] / res['init'][n][-1]:10.1e}" for n in names)
          + "   (||dL/dx_0|| / ||dL/dx_T-1||)")
    if res["trained"]:
        print(f"trained on the same task with T = {res['train_T']} for {res['epochs']} epochs "
              f"(SGD lr 0.1, momentum 0.9, clip_norm 1):")
        print(f"  {'init':>10}  {'ratio before':>12}  {'ratio after':>11}  {'val accuracy by epoch':<}")
        for n, r in res["trained"].items():
            accs = " ".join(f"{a:.2f}" for a in r["accuracy"])
            print(f"  {n:>10}  {r['before'][0] / r['before'][-1]:12.1e}  {r['after'][0] / r['after'][-1]:11.1e}  "
                  f"{accs}")
    print(f"  [{res['time']:.1f} s]")


# --------------------------------------------------------------------------
# 3. exploding gradients and clipping
# --------------------------------------------------------------------------

def clipping(T=20, hidden=16, n_train=500, epochs=10, lr=1.5, momentum=0.9, scale=20.0, clip_norm=1.0,
             seed=0):
    """The same LSTM regression (target ``scale * x_{T-1}``) with and without
    gradient clipping, at a learning rate too large for plain SGD.

    What the unclipped run shows is the growth of its gradient norm: the
    largest pre-clip norm is many orders of magnitude above the first step's
    (1e9 and more, for every BLAS kernel set and thread count we tried).
    Whether and when its loss then overflows float32 is chaotic: it depends
    on rounding, so it differs between BLAS kernels and thread counts, and a
    run may end with a finite but huge loss instead.  The clipped run's norm
    stays near the first step's and its loss falls.

    Returns
    -------
    dict
        ``"variance"`` (the loss of predicting 0), and for ``"unclipped"`` and
        ``"clipped"``: ``"loss"`` (per finished epoch), ``"grad_norms"``
        (history["grad_norms"], per epoch and layer: recorded after the
        update, so for the clipped run these are the clipped gradients),
        ``"global_norm"`` (per epoch, mean and max over the steps of the
        global gradient norm before clipping), ``"first_norm"`` (that norm at
        the first step), ``"growth"`` (the largest of them over the first),
        ``"error"`` (the FloatingPointError message, or None), ``"layers"``,
        ``"time"``.
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_train, T, 1)).astype(np.float32)
    y = scale * X[:, -1, :]
    out = {"variance": float(np.var(y))}
    for key, clip in (("unclipped", None), ("clipped", clip_norm)):
        model = jp.Sequential([jp.LSTM(1, hidden, return_sequences=False, seed=seed),
                               jp.Dense(hidden, 1, seed=seed + 1)])
        opt = jp.SGD(model, lr=lr, momentum=momentum, clip_norm=clip)
        trainer = jp.Trainer(model, jp.MSELoss(), opt)
        step_norms = {}

        def record(tr, epoch, step, loss, step_norms=step_norms, opt=opt, model=model):
            # the gradient norm before clipping (the update may have clipped flat_grads in place)
            norm = opt.last_grad_norm if opt.clip_norm is not None else float(np.linalg.norm(model.flat_grads.astype(np.float64)))
            step_norms.setdefault(epoch, []).append(norm)

        t0 = time.perf_counter()
        error = None
        try:
            trainer.fit(X, y, epochs=epochs, batch_size=25, seed=seed, progress=False,
                        track_gradients=True, callback=record)
        except FloatingPointError as e:
            error = str(e)
        hist = trainer.history
        first = step_norms[0][0]
        largest = max(max(v) for v in step_norms.values())
        out[key] = {"loss": list(hist["loss"]), "grad_norms": np.array(hist["grad_norms"]),
                    "global_norm": [(float(np.mean(step_norms[e])), float(np.max(step_norms[e])))
                                    for e in sorted(step_norms)],
                    "first_norm": float(first), "growth": float(largest / first),
                    "error": error, "layers": hist["norm_layers"], "time": time.perf_counter() - t0}
    return out


def print_clipping(res):
    print(f"target variance {res['variance']:.1f} (the loss of predicting 0)")
    for key in ("unclipped", "clipped"):
        r = res[key]
        print(f"{key} [{r['time']:.1f} s]:")
        print(f"  {'epoch':>5}  {'train loss':>10}  {'grad LSTM':>10}  {'grad Dense':>10}  "
              f"{'pre-clip mean':>13}  {'pre-clip max':>12}")
        for e, (mean, mx) in enumerate(r["global_norm"]):
            if e < len(r["loss"]):
                loss, g = f"{r['loss'][e]:10.3g}", r["grad_norms"][e]
                gl, gd = f"{g[0]:10.3g}", f"{g[1]:10.3g}"
            else:
                loss, gl, gd = f"{'-':>10}", f"{'-':>10}", f"{'-':>10}"
            print(f"  {e + 1:5d}  {loss}  {gl}  {gd}  {mean:13.3g}  {mx:12.3g}")
        print(f"  largest pre-clip norm / first step's: {r['growth']:.3g}")
        if r["error"]:
            print(f"  FloatingPointError: {r['error'].split(';')[0]}")
    print("  (grad LSTM/Dense: history['grad_norms'], mean per epoch, recorded after the update, i.e. after "
          "clipping; pre-clip: the global norm of each step before clipping)")


# --------------------------------------------------------------------------
# plot and main
# --------------------------------------------------------------------------

def plot(mlp, lag, path):
    """Gradient norm per layer against epoch for both MLPs (log scale), and
    the LSTM's ||dL/dx_t|| against t.  Returns False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot")
        return False
    n_panels = 3 if lag is not None else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(5.2 * n_panels, 4.4))
    for ax, key, title in ((axes[0], "sigmoid", "10-layer sigmoid MLP"), (axes[1], "relu", "10-layer ReLU MLP")):
        g = mlp[key]["grad_norms"]
        epochs = np.arange(1, g.shape[0] + 1)
        colors = plt.cm.viridis(np.linspace(0.0, 0.9, g.shape[1]))
        for j in range(g.shape[1]):
            ax.plot(epochs, g[:, j], color=colors[j], label=f"layer {j + 1}")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean gradient norm of the layer")
        ax.set_title(f"{title}: test acc {mlp[key]['accuracy'][-1]:.2f}")
        ax.grid(True, which="major", alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2, loc="lower right")
    lo = min(axes[0].get_ylim()[0], axes[1].get_ylim()[0])
    hi = max(axes[0].get_ylim()[1], axes[1].get_ylim()[1])
    axes[0].set_ylim(lo, hi)
    axes[1].set_ylim(lo, hi)
    if lag is not None:
        ax = axes[2]
        t = np.arange(lag["T"])
        for name, prof in lag["init"].items():
            label = name + (" (0.0 in float32 further back)" if np.any(prof == 0) else "")
            ax.plot(t, np.where(prof > 0, prof, np.nan), label=label)
        ax.set_yscale("log")
        ax.set_xlabel("time step t (loss after the last step)")
        ax.set_ylabel("||dL/dx_t||")
        ax.set_title(f"LSTM at initialisation, T = {lag['T']}")
        ax.legend(fontsize=7)
        ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot saved to {path}")
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller runs (for tests, ~20 s)")
    p.add_argument("--plot", default="vanishing_gradients.png", metavar="PATH")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    q = args.quick
    t0 = time.perf_counter()

    print("== 1. vanishing gradients with depth: sigmoid vs ReLU (10 Dense layers of width 32) ==")
    mlp = mlp_gradients(epochs=15 if q else 30, seed=args.seed)
    print_mlp(mlp)

    print("\n== 2. vanishing gradients through time: LSTM, label = sign of the first of 100 steps ==")
    lag = lstm_time_lag(n_train=300 if q else 1000, epochs=2 if q else 10, seed=args.seed)
    print_lag(lag)

    print("\n== 3. exploding gradients: LSTM, SGD lr 1.5 momentum 0.9, with and without clip_norm=1.0 ==")
    clip = clipping(epochs=4 if q else 10, seed=args.seed)
    print_clipping(clip)

    if not args.no_plot:
        print()
        plot(mlp, lag, args.plot)
    print(f"total {time.perf_counter() - t0:.1f} s")
    return {"mlp": mlp, "lag": lag, "clipping": clip}


if __name__ == "__main__":
    main()
