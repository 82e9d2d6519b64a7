"""The measuring side of ``python -m jitprop.bench``: one subprocess per
(workload, framework, thread count), whose environment the parent fixed
before anything was imported.  It prints one JSON line after ``MARK``.

Timing: the first step (which includes JIT compilation) is timed alone and
reported as ``first_step_s``; then warm-up steps in doubling chunks estimate the
step time; then a fixed number of steps lasting about ``--seconds`` is timed
with ``time.perf_counter`` (synchronising at the end of the region), repeated
3 times, and the BEST repeat gives ``samples_per_s = batch * steps / time``
(the median is reported too).
"""

import json
import math
import os
import statistics
import sys
import time

import numpy as np

from .workloads import (
    FIT_COST_BATCHES,
    FIT_COST_MAX_STEP_S,
    WORKLOADS,
    build_trainer,
    make_data,
    step_products,
)

GEMM_N = 2048
MARK = "@@JITPROP_BENCH@@ "


def make_jitprop_step(spec, data, threads):
    """Build the jitprop model/trainer for ``spec`` through the public API.

    Returns ``(step, sync)`` like the peers in :mod:`jitprop.bench.peers`.
    """
    from .._threads import set_num_threads

    set_num_threads(threads)
    trainer = build_trainer(spec, np.float32)
    train_step = trainer.train_step
    xs, ys = data["X"], data["Y"]
    n = len(xs)
    bs = xs[0].shape[0]
    X_all = np.concatenate(xs)
    Y_all = np.concatenate(ys)

    def step(i):
        k = i % n
        return train_step(xs[k], ys[k])

    def block(i, count):
        """Run at least ``count`` steps the way users train: ``Trainer.fit``
        over the same batches in the same order (no shuffling), whole
        epochs of ``n`` steps at a time.  Returns (steps run, last loss)."""
        epochs = max(1, -(-count // n))
        # use_fused=True: the timed steps must all run the fused kernel (never a tiered start)
        hist = trainer.fit(X_all, Y_all, epochs=epochs, batch_size=bs, shuffle=False, progress=False,
                           on_nonfinite="ignore", use_fused=True)
        return epochs * n, hist["loss"][-1]

    step.block = block
    X_few = X_all[:FIT_COST_BATCHES * bs]
    Y_few = Y_all[:FIT_COST_BATCHES * bs]

    def fit_call():
        """One user's call: ``fit(epochs=1)`` over FIT_COST_BATCHES batches
        with fit's defaults but the progress bar."""
        trainer.fit(X_few, Y_few, epochs=1, batch_size=bs, progress=False)

    step.fit_call = fit_call
    step.fit_call_steps = len(X_few) // bs

    def sync():
        pass

    return step, sync


def time_fit_calls(fit_call, steps_per_call, step_s, seconds, repeats=5):
    """``Trainer.fit``'s cost per call: ``fit_call()`` timed in ``repeats``
    blocks of about ``seconds / repeats`` each, best block; the fixed part is
    that minus ``steps_per_call`` steps at ``step_s`` (from the long run)."""
    fit_call()
    fit_call()
    t0 = time.perf_counter()
    fit_call()
    once = max(time.perf_counter() - t0, 1e-7)
    calls = max(3, int(seconds / repeats / once))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fit_call()
        best = min(best, (time.perf_counter() - t0) / calls)
    return {"fit_call_s": best, "fit_call_steps": steps_per_call,
            "fit_fixed_s": best - steps_per_call * step_s, "fit_calls_per_block": calls}


def _make_step(framework, spec, data, threads, variant=None):
    if framework == "jitprop":
        return make_jitprop_step(spec, data, threads)
    from . import peers
    return peers.MAKERS[framework](spec, data, threads, variant=variant)



def _system_busy_seconds():
    """Busy CPU seconds of the whole machine so far (from /proc/stat; None if unavailable)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    vals = [int(v) for v in fields[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    busy = sum(vals[:8]) - idle                           # exclude guest (already in user)
    return busy / float(os.sysconf("SC_CLK_TCK"))


def time_steps(step, sync, seconds, repeats=3):
    """Time a training loop; see the module docstring for the protocol."""
    t0 = time.perf_counter()
    last = step(0)
    sync()
    first = time.perf_counter() - t0

    block = getattr(step, "block", None)

    def run(i, count):
        """Run at least ``count`` steps from step ``i``; returns (steps, last)."""
        if block is not None:
            return block(i, count)
        last = None
        for j in range(count):
            last = step(i + j)
        return count, last

    # warm-up in doubling chunks (sync per chunk, so async runtimes are honest)
    i, chunk = 1, 1
    warm_target = max(0.05, 0.25 * seconds)
    warm_time, warm_steps = 0.0, 0
    while True:
        t0 = time.perf_counter()
        done, last = run(i, chunk)
        i += done
        sync()
        dt = time.perf_counter() - t0
        warm_time += dt
        warm_steps += done
        if warm_time >= warm_target and warm_steps >= 3:
            break
        chunk = 2 * done
    per_step = max(dt / done, 1e-9)
    n_steps = max(1, int(math.ceil(seconds / per_step)))

    times = []
    sys0 = _system_busy_seconds()
    cpu0, w0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        done, last = run(i, n_steps)
        i += done
        sync()
        times.append((time.perf_counter() - t0) * n_steps / done)
    wall = time.perf_counter() - w0
    own = time.process_time() - cpu0
    sys1 = _system_busy_seconds()
    cpu_per_wall = own / wall
    # CPU used by other processes on the machine while we were timing, in cores
    other_load = None if sys0 is None or sys1 is None else max(0.0, (sys1 - sys0 - own) / wall)
    try:
        final_loss = float(last)
    except Exception:
        final_loss = None
    return {"first_step_s": first, "steps": n_steps, "times_s": times,
            "best_s": min(times), "median_s": statistics.median(times),
            "cpu_per_wall": cpu_per_wall, "other_load": other_load, "final_loss": final_loss,
            "warmup_steps": warm_steps}



def _products_floor(workloads, min_seconds=0.05):
    """Time every matrix product of each workload's training step alone with
    numpy's BLAS (in a one-thread worker): the step can run no faster than
    their sum."""
    rng = np.random.default_rng(3)
    res = {}
    for wl in workloads:
        spec = WORKLOADS[wl]
        rows, total, flops = [], 0.0, 0
        for label, m, k, n, count, ta, tb in step_products(spec):
            a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
            b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
            a, b = (a.T if ta else a), (b.T if tb else b)
            c = np.empty((m, n), np.float32)
            np.matmul(a, b, out=c)
            # about min_seconds per repeat at 50 GFLOP/s plus a microsecond of overhead per call
            reps = int(min(1e5, max(3, min_seconds / (2 * m * k * n / 5e10 + 1e-6))))
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(reps):
                    np.matmul(a, b, out=c)
                best = min(best, (time.perf_counter() - t0) / reps)
            rows.append({"product": label, "m": m, "k": k, "n": n, "count": count,
                         "seconds": best, "gflops": 2 * m * k * n / best / 1e9})
            total += count * best
            flops += count * 2 * m * k * n
        res[wl] = {"products": rows, "seconds_per_step": total, "gflop_per_step": flops / 1e9,
                   "max_samples_per_s": spec["batch"] / total}
    return res


def _numpy_gemm(repeats):
    a = np.random.default_rng(1).standard_normal((GEMM_N, GEMM_N), dtype=np.float32)
    b = np.random.default_rng(2).standard_normal((GEMM_N, GEMM_N), dtype=np.float32)
    c = np.dot(a, b)  # warm-up
    times = []
    cpu0, w0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.dot(a, b, out=c)
        times.append(time.perf_counter() - t0)
    cpu_per_wall = (time.process_time() - cpu0) / (time.perf_counter() - w0)
    flops = 2.0 * GEMM_N ** 3
    return {"gflops": flops / min(times) / 1e9, "best_s": min(times),
            "cpu_per_wall": cpu_per_wall}


def blas_info(load_scipy=True):
    """The BLAS/OpenMP libraries loaded in this process, as threadpoolctl sees
    them (``internal_api``, ``version``, ``architecture`` = the kernel set
    OpenBLAS chose for this CPU).  ``load_scipy`` loads SciPy's OpenBLAS first
    (the one Numba's ``np.dot`` calls); a peer's process reports only what it
    loaded itself."""
    try:
        import threadpoolctl
        if load_scipy:
            import scipy.linalg  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the environment
        return "threadpoolctl/scipy unavailable: %s" % e
    out = []
    for d in threadpoolctl.threadpool_info():
        path = d.get("filepath", "")
        owner = ("scipy" if "scipy.libs" in path else "numpy" if "numpy.libs" in path
                 else "torch" if "torch" in path else "jax" if "jax" in path else "")
        out.append({"owner": owner, "user_api": d.get("user_api"),
                    "internal_api": d.get("internal_api"), "version": d.get("version"),
                    "architecture": d.get("architecture"), "num_threads": d.get("num_threads"),
                    "threading_layer": d.get("threading_layer"), "filepath": path})
    return out


def kernel_info(framework):
    """What computes a framework's products and loops besides what threadpoolctl
    sees: jitprop's LLVM target and Numba threading layer, PyTorch's BLAS
    (statically linked MKL, invisible to threadpoolctl) and CPU capability,
    JAX's XLA CPU backend."""
    info = {}
    try:
        if framework == "jitprop":
            import llvmlite.binding as ll
            import numba

            info["numba"] = numba.__version__
            info["llvm_cpu"] = ll.get_host_cpu_name()
            try:
                info["threading_layer"] = numba.threading_layer()
            except ValueError:
                info["threading_layer"] = None
        elif framework == "torch":
            import torch

            info["torch"] = torch.__version__
            cfg = torch.__config__.show().splitlines()
            for line in cfg:
                if "BLAS_INFO=" in line:
                    info["blas"] = line.split("BLAS_INFO=")[1].split(",")[0]
                elif "Math Kernel Library Version" in line:
                    info["mkl"] = line.split("Version", 1)[1].split("for")[0].strip()
                elif "oneDNN" in line and "onednn" not in info:
                    info["onednn"] = line.strip(" -")[:60]
            info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        elif framework == "jax":
            import jax

            info["jax"] = jax.__version__
            info["backend"] = "XLA:%s" % jax.default_backend()
    except Exception as e:  # pragma: no cover - depends on the environment
        info["error"] = "%s: %s" % (type(e).__name__, e)
    return info


def main(payload):
    """Entry point of a measurement subprocess: run one job, print one JSON line."""
    job = payload["job"]
    res = {"job": job, "ok": True}
    try:
        res["affinity"] = sorted(os.sched_getaffinity(0))
        if job == "gemm":
            res.update(_numpy_gemm(payload["gemm_repeats"]))
            res["blas"] = blas_info(load_scipy=False)
        elif job == "floor":
            res["floor"] = _products_floor(payload["workloads"])
        else:
            spec = WORKLOADS[payload["workload"]]
            data = make_data(spec)
            t0 = time.perf_counter()
            step, sync = _make_step(job, spec, data, payload["threads"], payload.get("variant"))
            res["setup_s"] = time.perf_counter() - t0
            res.update(time_steps(step, sync, payload["seconds"], payload["repeats"]))
            fit_call = getattr(step, "fit_call", None)
            step_s = res["best_s"] / res["steps"]
            if fit_call is not None and step_s <= FIT_COST_MAX_STEP_S:
                res.update(time_fit_calls(fit_call, step.fit_call_steps, step_s, payload["seconds"]))
            # after the run, so the libraries the framework loaded lazily are there
            res["blas"] = blas_info(load_scipy=job == "jitprop")
            res["kernels"] = kernel_info(job)
    except BaseException as e:  # report, never hang the parent
        import traceback
        res["ok"] = False
        res["error"] = "%s: %s" % (type(e).__name__, e)
        res["traceback"] = traceback.format_exc()[-3000:]
    sys.stdout.write(MARK + json.dumps(res) + "\n")
    sys.stdout.flush()

