"""The benchmark workloads: one spec per name and the one builder of their
model, loss, optimiser (SGD, or Adam for the ``-adam`` variants) and trainer, shared by ``python -m jitprop.bench``,
the MPI benchmark (``jitprop.bench.distributed``) and the asv suite."""

import numpy as np

WORKLOADS = {
    # trained as a user would: Trainer.fit over epochs of 1,024 samples at batch 1
    "mlp-tiny": dict(kind="mlp", sizes=[1, 1, 1, 1], act="sigmoid", final_act=True,
                     loss="mse", batch=1, n_batches=1024),
    "mlp-small": dict(kind="mlp", sizes=[784, 128, 10], act="relu", final_act=False,
                      loss="xent", batch=64, n_batches=32),
    "mlp-mid": dict(kind="mlp", sizes=[784, 512, 512, 10], act="relu", final_act=False,
                    loss="xent", batch=128, n_batches=16),
    "mlp-wide": dict(kind="mlp", sizes=[1024, 2048, 2048, 10], act="relu", final_act=False,
                     loss="xent", batch=512, n_batches=16),
    "lstm-small": dict(kind="lstm", n_in=16, hidden=64, T=50, n_out=16,
                       loss="mse", batch=16, n_batches=16),
    "lstm-mid": dict(kind="lstm", n_in=64, hidden=256, T=50, n_out=64,
                     loss="mse", batch=64, n_batches=16),
    "gru-small": dict(kind="gru", n_in=16, hidden=64, T=50, n_out=16,
                      loss="mse", batch=16, n_batches=16),
    "gru-mid": dict(kind="gru", n_in=64, hidden=256, T=50, n_out=64,
                    loss="mse", batch=64, n_batches=16),
}
#: Recurrent workload kinds: their samples are sequences ``(T, n_in)``.
RECURRENT_KINDS = ("lstm", "gru")
for _name, _spec in WORKLOADS.items():
    _spec["name"] = _name
    _spec["lr"] = 0.01
# Adam variants (peers: torch.optim.Adam, optax.adam); the others train with plain SGD
for _name in ("mlp-mid", "lstm-mid"):
    WORKLOADS[_name + "-adam"] = dict(WORKLOADS[_name], name=_name + "-adam", opt="adam", lr=1e-3)

#: Targets of issue 17 (and of issue 18 for the GRU rows), each measured in one run at every thread count:
#: jitprop's samples/s over the best peer's at its best ("ratio"), and
#: training FLOP/s over numpy's SGEMM rate ("efficiency").
TARGETS = {
    "mlp-tiny": {"ratio": 5.0},
    "mlp-small": {"ratio": 1.3},
    "mlp-mid": {"ratio": 1.1, "efficiency": 0.90},
    "mlp-wide": {"ratio": 1.05, "efficiency": 0.92},
    "lstm-small": {"ratio": 2.0},
    "lstm-mid": {"ratio": 1.5},
    "gru-small": {"ratio": 2.0},   # issue 18: the targets of the matching LSTM workloads
    "gru-mid": {"ratio": 1.5},
}

#: ``Trainer.fit``'s fixed cost per call is measured on this many batches
#: per call (for workloads whose step takes at most FIT_COST_MAX_STEP_S).
FIT_COST_BATCHES = 16
FIT_COST_MAX_STEP_S = 1e-3

DATA_SEED = 20240611
ACTIVATIONS = ("relu", "sigmoid", "tanh")


def build_model(spec, dtype=np.float32):
    """``(model, loss)`` of a workload: seeded layers, so every build is the same."""
    from ..layers import Dense, ReLU, Sigmoid, Tanh
    from ..losses import MSELoss, SoftmaxCrossEntropy
    from ..gru import GRU
    from ..lstm import LSTM
    from ..model import Sequential

    if spec["kind"] == "mlp":
        act_cls = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}[spec["act"]]
        sizes = spec["sizes"]
        layers = []
        for j in range(len(sizes) - 1):
            layers.append(Dense(sizes[j], sizes[j + 1], dtype=dtype, seed=j))
            if j < len(sizes) - 2 or spec["final_act"]:
                layers.append(act_cls())
    elif spec["kind"] in RECURRENT_KINDS:
        rnn = LSTM if spec["kind"] == "lstm" else GRU
        layers = [rnn(spec["n_in"], spec["hidden"], return_sequences=True, dtype=dtype, seed=0),
                  Dense(spec["hidden"], spec["n_out"], dtype=dtype, seed=1)]
    else:
        raise ValueError("unknown workload kind %r" % spec["kind"])
    loss = MSELoss() if spec["loss"] == "mse" else SoftmaxCrossEntropy()
    return Sequential(layers), loss


def build_trainer(spec, dtype=np.float32, trainer_cls=None, **trainer_kw):
    """A ``trainer_cls`` (default :class:`~jitprop.Trainer`) over the workload's
    model and loss with ``SGD(lr=spec["lr"])``, or ``Adam(lr=spec["lr"])``
    when ``spec["opt"] == "adam"``."""
    from ..optim import SGD, Adam
    from ..trainer import Trainer

    model, loss = build_model(spec, dtype)
    opt = (Adam if spec.get("opt") == "adam" else SGD)(model, lr=spec["lr"])
    return (trainer_cls or Trainer)(model, loss, opt, **trainer_kw)


def make_data(spec):
    """Synthetic float32 data for one workload: {"X": [n_batches arrays], "Y": [...]}.

    Deterministic (fixed seed), so every framework's worker builds identical
    arrays. Each batch is C-contiguous; labels are int64 in [0, 10).
    """
    rng = np.random.default_rng(DATA_SEED)
    nb, b = spec["n_batches"], spec["batch"]
    if spec["kind"] == "mlp":
        n_in, n_out = spec["sizes"][0], spec["sizes"][-1]
        X = rng.standard_normal((nb, b, n_in), dtype=np.float32)
        if spec["loss"] == "xent":
            Y = rng.integers(0, n_out, size=(nb, b), dtype=np.int64)
        else:
            Y = rng.random((nb, b, n_out), dtype=np.float32)
    else:
        X = rng.standard_normal((nb, b, spec["T"], spec["n_in"]), dtype=np.float32)
        Y = (0.5 * rng.standard_normal((nb, b, spec["T"], spec["n_out"]),
                                       dtype=np.float32)).astype(np.float32)
    return {"X": [np.ascontiguousarray(X[k]) for k in range(nb)],
            "Y": [np.ascontiguousarray(Y[k]) for k in range(nb)]}


def train_step_flops(spec):
    """Training FLOPs of one step of a workload: 2*m*k*n summed over the
    matrix products of :func:`step_products` (forward, weight gradients, and
    input gradients of every layer but the first).  Elementwise work
    (activations, LSTM gates, loss, update) is not counted."""
    return sum(2 * m * k * n * count for _, m, k, n, count, _, _ in step_products(spec))


def train_flops_per_sample(spec):
    """Training FLOPs per sample (an LSTM sample is one sequence): what a
    framework's FLOP/s is computed from, against numpy's SGEMM rate.

    MLP: forward + weight gradients + input gradients of every Dense but the
    first (mlp-mid 3.21 MFLOP, mlp-wide 33.7).  LSTM, by the same rule: per
    time step the input projection ``x_t @ W_x``, the recurrent product
    ``h_{t-1} @ W_h`` and the head ``h_t @ W_o`` forward, the same three for
    the weight gradients, and as input gradients the recurrent one
    ``dz_t @ W_h.T`` and the head's ``dy_t @ W_o.T`` (not ``dz_t @ W_x.T``:
    the LSTM is the first layer).  All T recurrent products are counted,
    though at t = 0 the state is zero: the count is nominal, the same for
    every framework.
    """
    return train_step_flops(spec) / spec["batch"]


def step_products(spec):
    """The matrix products of one training step of a workload, as
    ``(label, m, k, n, count, a_transposed, b_transposed)``: ``count`` products
    ``(m, k) @ (k, n)``, an operand marked transposed being a transposed view
    (as the kernels pass it to BLAS)."""
    out = []
    if spec["kind"] == "mlp":
        b, sizes = spec["batch"], spec["sizes"]
        for j in range(len(sizes) - 1):
            i, o = sizes[j], sizes[j + 1]
            out.append(("layer %d x@W" % j, b, i, o, 1, False, False))
            out.append(("layer %d x.T@dy" % j, i, b, o, 1, True, False))
            if j > 0:
                out.append(("layer %d dy@W.T" % j, b, o, i, 1, False, True))
    else:
        B, T, n_in, H, n_out = spec["batch"], spec["T"], spec["n_in"], spec["hidden"], spec["n_out"]
        k = spec["kind"]
        G = (4 if k == "lstm" else 3) * H
        out += [(k + " x@W_x (all steps)", B * T, n_in, G, 1, False, False),
                (k + " h@W_h (per step)", B, H, G, T, False, False),
                (k + " dz@W_h.T (per step)", B, G, H, T, False, False),
                (k + " x.T@dz", n_in, B * T, G, 1, True, False),
                (k + " h.T@dz", H, B * T, G, 1, True, False),
                ("dense h@W", B * T, H, n_out, 1, False, False),
                ("dense h.T@dy", H, B * T, n_out, 1, True, False),
                ("dense dy@W.T", B * T, n_out, H, 1, False, True)]
    return out


def make_rows(spec, n, seed=DATA_SEED):
    """``n`` rows of synthetic float32 data ``(X, Y)`` in one array each (for
    ``Trainer.fit``); labels are int64 for the cross-entropy workloads."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    if spec["kind"] == "mlp":
        sizes = spec["sizes"]
        X = rng.standard_normal((n, sizes[0]), dtype=f32)
        if spec["loss"] == "xent":
            Y = rng.integers(0, sizes[-1], size=n)
        else:
            Y = rng.random((n, sizes[-1]), dtype=f32)
    else:
        X = rng.standard_normal((n, spec["T"], spec["n_in"]), dtype=f32)
        Y = (0.5 * rng.standard_normal((n, spec["T"], spec["n_out"]), dtype=f32)).astype(f32)
    return X, Y
