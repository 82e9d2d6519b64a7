"""Helpers shared by the jitprop asv benchmarks (nothing here is a benchmark).

Nothing in this module compiles anything at import time: models are built and
kernels are compiled (or loaded from Numba's on-disk cache) in the benchmarks'
``setup`` methods.  State is memoised per process, because this asv version
re-runs ``setup`` before every timed sample: the first call builds and warms
up, later calls only restore what the timed call mutates.
"""

import time
import zlib

import numpy as np

import jitprop as jp

#: Thread counts every kernel / workload benchmark is parametrised over.
THREADS = [1, 2]

try:  # the one home of the workloads and their builder (jitprop.bench.workloads)
    from jitprop.bench.workloads import WORKLOADS
    from jitprop.bench.workloads import build_trainer as _build_trainer
except ImportError:  # commits that predate it: the same specs and builder, kept here
    WORKLOADS = {
        "mlp-tiny": dict(kind="mlp", sizes=[1, 1, 1, 1], act="sigmoid", final_act=True,
                         loss="mse", batch=1),
        "mlp-small": dict(kind="mlp", sizes=[784, 128, 10], act="relu", final_act=False,
                          loss="xent", batch=64),
        "mlp-mid": dict(kind="mlp", sizes=[784, 512, 512, 10], act="relu", final_act=False,
                        loss="xent", batch=128),
        "mlp-wide": dict(kind="mlp", sizes=[1024, 2048, 2048, 10], act="relu", final_act=False,
                         loss="xent", batch=512),
        "lstm-small": dict(kind="lstm", n_in=16, hidden=64, T=50, n_out=16, loss="mse", batch=16),
        "lstm-mid": dict(kind="lstm", n_in=64, hidden=256, T=50, n_out=64, loss="mse", batch=64),
    }
    for _spec in WORKLOADS.values():
        _spec["lr"] = 0.01

    def _build_trainer(spec, dtype):
        if spec["kind"] == "mlp":
            act_cls = {"relu": jp.ReLU, "sigmoid": jp.Sigmoid, "tanh": jp.Tanh}[spec["act"]]
            sizes = spec["sizes"]
            layers = []
            for j in range(len(sizes) - 1):
                layers.append(jp.Dense(sizes[j], sizes[j + 1], dtype=dtype, seed=j))
                if j < len(sizes) - 2 or spec["final_act"]:
                    layers.append(act_cls())
        else:
            layers = [jp.LSTM(spec["n_in"], spec["hidden"], return_sequences=True, dtype=dtype, seed=0),
                      jp.Dense(spec["hidden"], spec["n_out"], dtype=dtype, seed=1)]
        model = jp.Sequential(layers)
        loss = jp.MSELoss() if spec["loss"] == "mse" else jp.SoftmaxCrossEntropy()
        return jp.Trainer(model, loss, jp.SGD(model, lr=spec["lr"]))

WORKLOAD_NAMES = list(WORKLOADS)

DATA_SEED = 20240611

_threads_now = None


def use_threads(n):
    """``jp.set_num_threads(n)`` (Numba and, with threadpoolctl, BLAS), or
    skip the benchmark (NotImplementedError) when fewer threads exist."""
    global _threads_now
    import numba

    if n > numba.config.NUMBA_NUM_THREADS:
        raise NotImplementedError(f"{n} threads requested, NUMBA_NUM_THREADS is "
                                  f"{numba.config.NUMBA_NUM_THREADS}")
    if _threads_now != n or numba.get_num_threads() != n:
        jp.set_num_threads(n)
        _threads_now = n


def rng(*key):
    """A deterministic generator for one benchmark's data."""
    return np.random.default_rng([DATA_SEED] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k)
                                                for k in key])


def lstm_kernels():
    """``(lstm_forward, lstm_backward, lstm_workspace_shapes)`` wherever they are
    exposed (``jitprop.kernels.raw`` first, then ``jitprop.kernels._recurrent``);
    any missing piece is None."""
    from jitprop.kernels import raw

    mods = [raw]
    try:
        from jitprop.kernels import _recurrent
        mods.append(_recurrent)
    except ImportError:
        pass

    def find(name):
        for m in mods:
            f = getattr(m, name, None)
            if f is not None:
                return f
        return None

    return find("lstm_forward"), find("lstm_backward"), find("lstm_workspace_shapes")


#: The layer class each recurrent workload kind needs.
_RECURRENT_LAYERS = {"lstm": "LSTM", "gru": "GRU"}


def require_workload(name):
    """Skip recurrent workloads while their layer (``jp.LSTM``, ``jp.GRU``) does not exist."""
    cls = _RECURRENT_LAYERS.get(WORKLOADS[name]["kind"])
    if cls is not None and not hasattr(jp, cls):
        raise NotImplementedError(f"jitprop.{cls} is not available in this version")


def build_trainer(name, dtype=np.float32):
    """Model, loss, SGD(lr=0.01) and Trainer of a workload (as in jitprop.bench)."""
    require_workload(name)
    return _build_trainer(WORKLOADS[name], dtype)


def make_data(name, n_samples, dtype=np.float32):
    """Random float32 inputs and targets for ``n_samples`` samples of a workload."""
    spec = WORKLOADS[name]
    r = rng(name, n_samples)
    if spec["kind"] == "mlp":
        n_in, n_out = spec["sizes"][0], spec["sizes"][-1]
        X = r.standard_normal((n_samples, n_in)).astype(dtype)
        if spec["loss"] == "xent":
            Y = r.integers(0, n_out, size=n_samples).astype(np.int64)
        else:
            Y = r.random((n_samples, n_out)).astype(dtype)
    else:
        X = r.standard_normal((n_samples, spec["T"], spec["n_in"])).astype(dtype)
        Y = (0.5 * r.standard_normal((n_samples, spec["T"], spec["n_out"]))).astype(dtype)
    return np.ascontiguousarray(X), np.ascontiguousarray(Y)


def batch_data(name, dtype=np.float32):
    """One batch ``(xb, yb)`` of the workload's batch size."""
    return make_data(name, WORKLOADS[name]["batch"], dtype)


def steps_per_second(step, min_time=0.25, min_steps=3, rounds=3):
    """Best-of-``rounds`` training-step rate: each round runs ``step()`` at
    least ``min_steps`` times and at least ``min_time`` seconds."""
    best = 0.0
    for _ in range(rounds):
        n = 0
        t0 = time.perf_counter()
        while True:
            step()
            n += 1
            dt = time.perf_counter() - t0
            if n >= min_steps and dt >= min_time:
                break
        best = max(best, n / dt)
    return best
