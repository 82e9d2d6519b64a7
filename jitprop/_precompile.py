"""Compile the fused MLP kernel for one dtype into Numba's on-disk cache.

Run as ``python -m jitprop._precompile float32`` by
:func:`jitprop._fused.compile_in_background` while a short training run
starts layer by layer.  The kernel's argument types depend on the dtype
only, so a two-unit network compiles the same machine code any MLP of that
dtype loads.  One process at a time compiles per cache folder and dtype (an
advisory lock; a process that waited finds the entry and only loads it), and
Numba writes each cache entry to a temporary file renamed into place, so
concurrent processes (MPI ranks) never see a half-written entry.
"""

import contextlib
import os
import sys
import tempfile

import numpy as np


@contextlib.contextmanager
def _lock(name):
    try:
        import fcntl
    except ImportError:  # no flock (Windows): duplicate work, still correct
        yield
        return
    with open(os.path.join(tempfile.gettempdir(), name), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes or the process dies
        yield


def compile_fused(dtype):
    """Compile (or load) ``mlp_train_steps`` for ``dtype``; returns the plan."""
    import hashlib

    import jitprop as jp
    from jitprop._fused import FusedMLP
    from jitprop.kernels import raw as K

    dtype = np.dtype(dtype)
    cache = getattr(getattr(K.mlp_train_steps, "_cache", None), "_cache_path", "") or ""
    key = hashlib.sha256(f"{cache}|{dtype.name}|{os.getuid() if hasattr(os, 'getuid') else ''}".encode()).hexdigest()
    model = jp.Sequential([jp.Dense(2, 2, dtype=dtype, seed=0), jp.ReLU(), jp.Dense(2, 2, dtype=dtype, seed=1)])
    trainer = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.0))
    plan = FusedMLP.build(trainer, np.zeros((2, 2), dtype), np.zeros(2, np.int64), 2)
    with _lock(f"jitprop-precompile-{key[:16]}.lock"):
        plan.run(np.zeros(2, np.int64), 0, 0, True)  # no step runs: compiling is the point
    return plan


if __name__ == "__main__":
    if hasattr(os, "nice"):
        os.nice(19)  # a background job: the training run that started it goes first
    compile_fused(sys.argv[1] if len(sys.argv) > 1 else "float32")
