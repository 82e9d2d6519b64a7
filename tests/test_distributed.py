"""DistributedTrainer over MPI against the single-process Trainer.

The test launches this same file under ``mpiexec -n 2`` (see ``_worker``):
both ranks train with per-rank batch B, and rank 0 compares the result with a
single-process Trainer run on batch 2B with the same seed and data.
Skipped when mpi4py or mpiexec are missing (install the ``mpi`` extra).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tolerances on the largest absolute parameter difference after training
TOL = {"float64": 1e-12, "float32": 1e-5}
# The two runs sum a batch's rows in a different order (per rank, then across
# ranks), so they differ by rounding only: observed ~3e-16 in float64 and
# ~2e-7 in float32 (parameters of size ~1, 24-78 steps); float32 gets a 40x margin.


def _mpiexec():
    """Path of mpiexec (next to this Python first: the mpich wheel puts it
    there), or None."""
    here = os.path.dirname(sys.executable)
    return shutil.which("mpiexec", path=here) or shutil.which("mpiexec")


# --------------------------------------------------------------------------- #
# Worker: runs on every rank under mpiexec
# --------------------------------------------------------------------------- #
def _mlp(dtype, seed):
    import jitprop as jp

    return jp.Sequential([jp.Dense(12, 24, dtype=dtype, seed=seed), jp.Tanh(),
                          jp.Dense(24, 16, dtype=dtype, seed=seed + 1), jp.ReLU(),
                          jp.Dense(16, 5, dtype=dtype, seed=seed + 2)])


def _lstm(dtype, seed):
    import jitprop as jp

    return jp.Sequential([jp.LSTM(3, 8, return_sequences=True, dtype=dtype, seed=seed),
                          jp.Dense(8, 2, dtype=dtype, seed=seed + 1)])


def _data(kind, n, dtype):
    rng = np.random.default_rng(7)
    if kind == "mlp":
        X = rng.standard_normal((n, 12)).astype(dtype)
        y = (np.abs(X[:, :5]).argmax(axis=1)).astype(np.int64)
    else:
        X = rng.standard_normal((n, 6, 3)).astype(dtype)
        y = (0.5 * np.cumsum(X[:, :, :2], axis=1)).astype(dtype)
    return X, y


# name, kind, rows, per-rank batch, epochs, SGD options, fit options
CASES = [
    # 193 = 12 * 16 + 1: the last global batch has 1 row, rank 1 gets none
    ("mlp", "mlp", 193, 8, 6, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, clip_norm=0.5),
     dict()),
    ("mlp-ignore", "mlp", 203, 8, 4, dict(lr=0.05, momentum=0.5), dict(on_nonfinite="ignore")),
    ("lstm", "lstm", 45, 4, 4, dict(lr=0.1, momentum=0.9, clip_norm=1.0), dict(track_gradients=True)),
]


def _worker(outdir):
    from mpi4py import MPI

    import jitprop as jp
    from jitprop.distributed import DistributedTrainer, load

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if comm.Get_size() != 2:
        raise SystemExit(f"expected 2 ranks, got {comm.Get_size()}: mpiexec and mpi4py use different MPIs?")
    results = []
    for dtype in ("float64", "float32"):
        for name, kind, n, B, epochs, sgd, fitkw in CASES:
            X, y = _data(kind, n, dtype)
            loss = jp.MSELoss() if kind == "lstm" else jp.SoftmaxCrossEntropy()
            build = _lstm if kind == "lstm" else _mlp
            # rank 1 builds different initial weights: the broadcast must replace them
            model = build(dtype, 10 + 100 * rank)
            tr = DistributedTrainer(model, loss, jp.SGD(model, **sgd))
            hist = tr.fit(X, y, epochs=epochs, batch_size=2 * B, seed=3, **fitkw)
            params = comm.gather(model.get_params(), root=0)
            res = None
            if rank == 0:
                ref_model = build(dtype, 10)
                ref = jp.Trainer(ref_model, loss, jp.SGD(ref_model, **sgd))
                ref_hist = ref.fit(X, y, epochs=epochs, batch_size=2 * B, seed=3, progress=False, **fitkw)
                res = dict(dtype=dtype, case=name,
                           max_abs_diff=float(np.max(np.abs(params[0] - ref_model.flat_params))),
                           max_param=float(np.max(np.abs(ref_model.flat_params))),
                           ranks_identical=bool(np.array_equal(params[0], params[1])),
                           loss_diff=float(np.max(np.abs(np.subtract(hist["loss"], ref_hist["loss"])))),
                           comm_steps=tr.comm_steps, steps=epochs * -(-n // (2 * B)))
            # checkpoint on rank 0, resume on every rank: bitwise the uninterrupted run
            if name == "lstm" or (name == "mlp" and dtype == "float64"):
                path = os.path.join(outdir, f"ckpt-{name}-{dtype}.npz")
                model2 = build(dtype, 10)
                tr2 = DistributedTrainer(model2, loss, jp.SGD(model2, **sgd))
                tr2.fit(X, y, epochs=epochs // 2, batch_size=2 * B, seed=3, checkpoint=path,
                        checkpoint_every=3, **fitkw)
                comm.Barrier()
                tr3 = load(path)
                tr3.fit(X, y, epochs=epochs, batch_size=2 * B, seed=3, resume=True, **fitkw)
                resumed = comm.gather(tr3.model.get_params(), root=0)
                if rank == 0:
                    res["resume_identical"] = bool(np.array_equal(resumed[0], params[0])
                                                   and np.array_equal(resumed[1], params[0]))
                    res["resume_history_equal"] = tr3.history["loss"] == hist["loss"]
            if rank == 0:
                results.append(res)
    # train_step called directly, rank 1 with no rows: rank 0's 5 rows decide the step
    X, y = _data("mlp", 5, "float64")
    model = _mlp("float64", 10)
    tr = DistributedTrainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.1, momentum=0.9))
    for _ in range(3):
        value = tr.train_step(X if rank == 0 else X[:0], y if rank == 0 else y[:0])
    params = comm.gather(model.get_params(), root=0)
    if rank == 0:
        ref_model = _mlp("float64", 10)
        ref = jp.Trainer(ref_model, jp.SoftmaxCrossEntropy(), jp.SGD(ref_model, lr=0.1, momentum=0.9))
        for _ in range(3):
            ref_value = ref.train_step(X, y)
        results.append(dict(dtype="float64", case="train_step-empty-rank",
                            max_abs_diff=float(np.max(np.abs(params[0] - ref_model.flat_params))),
                            ranks_identical=bool(np.array_equal(params[0], params[1])),
                            loss_diff=abs(value - ref_value), comm_steps=3, steps=3))
    if rank == 0:
        print("@@RESULTS@@ " + json.dumps(results), flush=True)


# --------------------------------------------------------------------------- #
# The test
# --------------------------------------------------------------------------- #
@pytest.mark.slow
def test_distributed_matches_single_process(tmp_path):
    pytest.importorskip("mpi4py", reason="mpi4py not installed (pip install \"jitprop[mpi]\")")
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec found next to the Python executable or on PATH "
                    "(pip install \"jitprop[mpi]\" installs the mpich wheel, which provides it)")
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"  # two ranks on a small machine: no oversubscription
    cmd = [mpiexec, "-n", "2", sys.executable, os.path.abspath(__file__), str(tmp_path)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mpiexec run timed out (deadlock?):\n{e.stdout}\n{e.stderr}")
    assert proc.returncode == 0, f"mpiexec failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULTS@@ ")]
    assert lines, f"no results from rank 0:\n{proc.stdout}\n{proc.stderr}"
    results = json.loads(lines[0][len("@@RESULTS@@ "):])
    assert len(results) == 2 * len(CASES) + 1
    for r in results:
        what = f"{r['case']} {r['dtype']}: {r}"
        assert r["ranks_identical"], what
        assert r["max_abs_diff"] < TOL[r["dtype"]], what
        assert r["loss_diff"] < (1e-12 if r["dtype"] == "float64" else 1e-6), what
        assert r["comm_steps"] == r["steps"], what   # one Allreduce per step
        if "resume_identical" in r:
            assert r["resume_identical"] and r["resume_history_equal"], what
    # only rank 0 draws progress: the "mlp" case (6 epochs, both dtypes) shows it once per dtype
    first = [ln for ln in proc.stderr.splitlines() if ln.lstrip("\r").startswith("epoch 1/6 ")]
    assert len(first) == 2, proc.stderr


if __name__ == "__main__":
    try:
        _worker(sys.argv[1])
    except BaseException:
        import traceback

        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(1)   # do not leave the other rank waiting in a collective
