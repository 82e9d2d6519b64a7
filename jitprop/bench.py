"""Side-by-side training-throughput benchmark: ``python -m jitprop.bench``.

Usage::

    python -m jitprop.bench [--workloads a,b,...] [--threads 1,2] [--vs torch,jax]
                            [--seconds S] [--quick] [--json PATH_OR_-] [--no-pin]

Every (workload, framework, thread count) measurement runs in its own
subprocess whose environment is fixed before anything is imported:
OMP/OPENBLAS/MKL/NUMBA thread variables and XLA_FLAGS are set to the thread
count, and the process is pinned (``sched_setaffinity``) to that many CPUs.
The pinning is what makes the count real for JAX: its CPU client sizes its
thread pool from the CPUs it may run on and (in recent jaxlib) ignores the
XLA_FLAGS thread options. Each worker prints one JSON line that the parent
collects; the measured process CPU-time / wall-time ratio is reported as a
check that the thread count held.

Timing: the first step (which includes JIT compilation) is timed alone and
reported as ``first_step_s``; then warm-up steps in doubling chunks estimate the
step time; then a fixed number of steps lasting about ``--seconds`` is timed
with ``time.perf_counter`` (synchronising at the end of the region), repeated
3 times, and the BEST repeat gives ``samples_per_s = batch * steps / time``
(the median is reported too).

The data is synthetic, generated once per workload from a fixed seed (a few
batches, cycled) by the same code in every worker, so all frameworks train on
identical arrays.
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

# --------------------------------------------------------------------------- #
# Workloads
# --------------------------------------------------------------------------- #
WORKLOADS = {
    "mlp-tiny": dict(kind="mlp", sizes=[1, 1, 1, 1], act="sigmoid", final_act=True,
                     loss="mse", batch=1, n_batches=64),
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
}
for _name, _spec in WORKLOADS.items():
    _spec["name"] = _name
    _spec["lr"] = 0.01

FRAMEWORKS = ("jitprop", "torch", "jax")
GFLOPS_WORKLOADS = ("mlp-wide",)   # workloads whose training-step GFLOP/s is printed
DATA_SEED = 20240611
GEMM_N = 2048
_MARK = "@@JITPROP_BENCH@@ "


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
    """Matmul FLOPs of one MLP training step (None for non-MLP workloads).

    2*m*n*k per matmul: forward x@W, backward dW and dx for every Dense except
    dx of the first layer (3 matmuls per layer, 2 for the first).
    """
    if spec["kind"] != "mlp":
        return None
    b, sizes = spec["batch"], spec["sizes"]
    total = 0
    for j in range(len(sizes) - 1):
        per = 2 * b * sizes[j] * sizes[j + 1]
        total += per * (2 if j == 0 else 3)
    return total


# --------------------------------------------------------------------------- #
# jitprop runner (kept in one place so a faster fused path can be swapped in)
# --------------------------------------------------------------------------- #
def make_jitprop_step(spec, data, threads):
    """Build the jitprop model/trainer for ``spec`` through the public API.

    Returns ``(step, sync)`` like the peers in ``_bench_peers``.
    """
    import jitprop as jp

    jp.set_num_threads(threads)
    f32 = np.float32
    if spec["kind"] == "mlp":
        act_cls = {"relu": jp.ReLU, "sigmoid": jp.Sigmoid, "tanh": jp.Tanh}[spec["act"]]
        sizes = spec["sizes"]
        layers = []
        for j in range(len(sizes) - 1):
            layers.append(jp.Dense(sizes[j], sizes[j + 1], dtype=f32, seed=j))
            if j < len(sizes) - 2 or spec["final_act"]:
                layers.append(act_cls())
    elif spec["kind"] == "lstm":
        layers = [jp.LSTM(spec["n_in"], spec["hidden"], return_sequences=True, dtype=f32, seed=0),
                  jp.Dense(spec["hidden"], spec["n_out"], dtype=f32, seed=1)]
    else:
        raise ValueError("unknown workload kind %r" % spec["kind"])
    model = jp.Sequential(layers)
    loss = jp.MSELoss() if spec["loss"] == "mse" else jp.SoftmaxCrossEntropy()
    opt = jp.SGD(model, lr=spec["lr"])
    trainer = jp.Trainer(model, loss, opt)
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
        hist = trainer.fit(X_all, Y_all, epochs=epochs, batch_size=bs, shuffle=False, progress=False,
                           on_nonfinite="ignore")
        return epochs * n, hist["loss"][-1]

    step.block = block

    def sync():
        pass

    return step, sync


def _make_step(framework, spec, data, threads):
    if framework == "jitprop":
        return make_jitprop_step(spec, data, threads)
    from . import _bench_peers
    return _bench_peers.MAKERS[framework](spec, data, threads)


# --------------------------------------------------------------------------- #
# Timing (runs inside a worker)
# --------------------------------------------------------------------------- #
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
        G = 4 * H
        out += [("lstm x@W_x (all steps)", B * T, n_in, G, 1, False, False),
                ("lstm h@W_h (per step)", B, H, G, T, False, False),
                ("lstm dz@W_h.T (per step)", B, G, H, T, False, False),
                ("lstm x.T@dz", n_in, B * T, G, 1, True, False),
                ("lstm h.T@dz", H, B * T, G, 1, True, False),
                ("dense h@W", B * T, H, n_out, 1, False, False),
                ("dense h.T@dy", H, B * T, n_out, 1, True, False),
                ("dense dy@W.T", B * T, n_out, H, 1, False, True)]
    return out


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


def _blas_info():
    try:
        import threadpoolctl
        import scipy.linalg  # noqa: F401  (load scipy's BLAS too, to report it)
    except Exception as e:  # pragma: no cover - depends on the environment
        return "threadpoolctl/scipy unavailable: %s" % e
    out = []
    for d in threadpoolctl.threadpool_info():
        path = d.get("filepath", "")
        owner = "scipy" if "scipy.libs" in path else "numpy" if "numpy.libs" in path else ""
        out.append({"owner": owner, "user_api": d.get("user_api"),
                    "internal_api": d.get("internal_api"), "version": d.get("version"),
                    "architecture": d.get("architecture"), "num_threads": d.get("num_threads"),
                    "threading_layer": d.get("threading_layer"), "filepath": path})
    return out


def _worker_main(payload):
    """Entry point of a measurement subprocess: run one job, print one JSON line."""
    job = payload["job"]
    res = {"job": job, "ok": True}
    try:
        res["affinity"] = sorted(os.sched_getaffinity(0))
        if job == "gemm":
            res.update(_numpy_gemm(payload["gemm_repeats"]))
            res["blas"] = _blas_info()
        elif job == "floor":
            res["floor"] = _products_floor(payload["workloads"])
        else:
            spec = WORKLOADS[payload["workload"]]
            data = make_data(spec)
            t0 = time.perf_counter()
            step, sync = _make_step(job, spec, data, payload["threads"])
            res["setup_s"] = time.perf_counter() - t0
            res.update(time_steps(step, sync, payload["seconds"], payload["repeats"]))
    except BaseException as e:  # report, never hang the parent
        import traceback
        res["ok"] = False
        res["error"] = "%s: %s" % (type(e).__name__, e)
        res["traceback"] = traceback.format_exc()[-3000:]
    sys.stdout.write(_MARK + json.dumps(res) + "\n")
    sys.stdout.flush()


_BOOT = ("import json, os, sys\n"
         "p = json.loads(sys.argv[1])\n"
         "if p.get('cpus'): os.sched_setaffinity(0, p['cpus'])\n"
         "from jitprop.bench import _worker_main\n"
         "_worker_main(p)\n")


# --------------------------------------------------------------------------- #
# Parent side
# --------------------------------------------------------------------------- #
def _worker_env(threads, framework="jitprop"):
    env = dict(os.environ)
    if framework != "jitprop":
        # importing jitprop (this module's package) set OpenMP wait defaults
        # for jitprop's threads; a peer must run with its own defaults
        import jitprop

        for var, value in jitprop._OMP_ENV_SET.items():
            if env.get(var) == value:
                del env[var]
        env["JITPROP_OMP_DEFAULTS"] = "0"
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    xla = env.get("XLA_FLAGS", "")
    if threads == 1:
        xla = (xla + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    if xla:
        env["XLA_FLAGS"] = xla
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _cpus_for(threads, pin):
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None
    avail = sorted(os.sched_getaffinity(0))
    return avail[:threads] if threads <= len(avail) else avail


def run_worker(payload, threads, pin, timeout):
    payload = dict(payload, threads=threads, cpus=_cpus_for(threads, pin))
    try:
        proc = subprocess.run([sys.executable, "-c", _BOOT, json.dumps(payload)],
                              env=_worker_env(threads, payload["job"]), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "timed out after %.0f s" % timeout}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    return {"ok": False, "error": "worker exited with code %s without a result; stderr tail: %s"
            % (proc.returncode, proc.stderr[-1500:])}


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(mod):
    try:
        from importlib import metadata
        return metadata.version(mod)
    except Exception:
        return None


def _peer_available(name):
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except Exception:
        return False


def collect_metadata(args, peers, missing):
    from . import _bench_peers
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": _version("numba"),
        "jitprop": getattr(sys.modules.get("jitprop"), "__version__", None) or _version("jitprop"),
        "torch": _bench_peers.framework_version("torch"),
        "jax": _bench_peers.framework_version("jax"),
        "peers_compared": list(peers),
        "peers_missing": list(missing),
        "seconds_per_repeat": args.seconds,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "statistic": "best of %d repeats (median also given)%s" % (
            args.repeats, ", best of %d interleaved rounds" % args.rounds if args.rounds > 1 else ""),
        "pinned_to_cpus": not args.no_pin,
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                "XLA_FLAGS") if os.environ.get(k)},
        "blas": _blas_info(),
        "dtype": "float32",
        "optimizer": "plain SGD, lr=0.01",
    }


def _fmt_rate(x):
    if x is None:
        return "-"
    if x >= 1e6:
        return "%.2fM" % (x / 1e6)
    if x >= 1e3:
        return "%.1fk" % (x / 1e3)
    return "%.0f" % x


def format_table(results, frameworks, gemm):
    rows = [r for r in results if r["framework"] in FRAMEWORKS]
    keys = []
    for r in rows:
        k = (r["workload"], r["threads"])
        if k not in keys:
            keys.append(k)
    by = {(r["workload"], r["threads"], r["framework"]): r for r in rows}
    head = ["workload", "thr"] + ["%s/s" % f for f in frameworks]
    if len(frameworks) > 1:
        head.append("jitprop/best")
    head.append("first step s (%s)" % "/".join(frameworks))
    head.append("own cpu/wall")
    head.append("other load")
    lines = []
    for wl, th in keys:
        cells = [wl, str(th)]
        for f in frameworks:
            r = by.get((wl, th, f))
            if r is None or r.get("samples_per_s") is None:
                cells.append("n/a" if r is None else "ERR")
            else:
                cells.append(_fmt_rate(r["samples_per_s"]))
        if len(frameworks) > 1:
            j = by.get((wl, th, "jitprop"), {})
            if j.get("ratio_vs_best_peer") is not None:
                cells.append("%.2fx (%s)" % (j["ratio_vs_best_peer"], j["best_peer"]))
            else:
                cells.append("-")
        fs, cw, ol = [], [], []
        for f in frameworks:
            r = by.get((wl, th, f)) or {}
            fs.append("%.3g" % r["first_step_s"] if r.get("first_step_s") is not None else "-")
            cw.append("%.1f" % r["cpu_per_wall"] if r.get("cpu_per_wall") is not None else "-")
            ol.append("%.1f" % r["other_load"] if r.get("other_load") is not None else "-")
        cells.append("/".join(fs))
        cells.append("/".join(cw))
        cells.append("/".join(ol))
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths))]
    out.append("  ".join("-" * w for w in widths))
    for cells in lines:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)))
    out.append("(samples/s = batch*steps/time, best of repeats; an LSTM sample is one sequence; "
               "own cpu/wall = cores the worker used while timed; other load = cores busy with "
               "other processes meanwhile, where > 0.2 the row is disturbed)")

    gf_rows = [r for r in rows if r.get("gflops") is not None and r["workload"] in GFLOPS_WORKLOADS]
    if gf_rows or gemm:
        out.append("")
        for th in sorted({r["threads"] for r in gf_rows} | set(gemm)):
            g = gemm.get(th)
            line = "GFLOP/s at %d thread%s:" % (th, "" if th == 1 else "s")
            parts = []
            for r in gf_rows:
                if r["threads"] != th:
                    continue
                s = "%s %s %.1f" % (r["workload"], r["framework"], r["gflops"])
                if r.get("fraction_of_sgemm") is not None:
                    s += " (%.0f%% of sgemm)" % (100 * r["fraction_of_sgemm"])
                parts.append(s)
            if g is not None:
                parts.append("numpy sgemm %dx%d %.1f" % (GEMM_N, GEMM_N, g))
            out.append(line + " " + "; ".join(parts))
    return "\n".join(out)


def _parse_list(s, allowed=None, what="item"):
    items = [x.strip() for x in s.split(",") if x.strip()]
    if allowed is not None:
        bad = [x for x in items if x not in allowed]
        if bad:
            raise SystemExit("unknown %s %s; choose from %s" % (what, ", ".join(bad),
                                                                ", ".join(allowed)))
    return items


def build_parser():
    p = argparse.ArgumentParser(prog="python -m jitprop.bench", description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma-separated subset of: %s" % ", ".join(WORKLOADS))
    p.add_argument("--threads", default=None,
                   help="comma-separated thread counts (default: 1 and all available CPUs)")
    p.add_argument("--vs", default="", help="peers to compare against: torch,jax")
    p.add_argument("--seconds", type=float, default=None,
                   help="timed seconds per repeat (default 2, --quick 0.3)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the whole sweep this many times, interleaved, keeping each "
                        "measurement's best round (helps on a shared, noisy machine)")
    p.add_argument("--quick", action="store_true", help="short timings (0.3 s per repeat)")
    p.add_argument("--json", default=None, metavar="PATH_OR_-",
                   help="write machine-readable results to PATH ('-' = stdout; the table then "
                        "goes to stderr)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin each worker to as many CPUs as it has threads")
    p.add_argument("--timeout", type=float, default=900.0, help="per-worker timeout in seconds")
    p.add_argument("--floor", action="store_true",
                   help="instead of throughput: time each matrix product of every workload's "
                        "training step alone with numpy's BLAS on 1 thread; their sum bounds the "
                        "samples/s any framework can reach on 1 thread with that BLAS")
    p.add_argument("--startup", action="store_true",
                   help="instead of throughput: time a new process that imports jitprop and runs its "
                        "first mlp-small training step, with an empty and with a warm compile cache")
    return p


def _measure_one(wl, fw, th, args, pin, say):
    """Run one (workload, framework, threads) worker and turn its report into a result row."""
    spec = WORKLOADS[wl]
    payload = {"job": fw, "workload": wl, "seconds": args.seconds, "repeats": args.repeats}
    r = run_worker(payload, th, pin, args.timeout)
    row = {"workload": wl, "framework": fw, "threads": th, "batch": spec["batch"]}
    if not r.get("ok"):
        row.update({"samples_per_s": None, "error": r.get("error"),
                    "traceback": r.get("traceback")})
        say("%-10s %-8s %d thread%s: FAILED: %s" % (wl, fw, th, " " if th == 1 else "s",
                                                    r.get("error")))
        return row
    steps = r["steps"]
    row.update({
        "samples_per_s": spec["batch"] * steps / r["best_s"],
        "samples_per_s_median": spec["batch"] * steps / r["median_s"],
        "first_step_s": r["first_step_s"],
        "setup_s": r["setup_s"],
        "steps_per_repeat": steps,
        "times_s": r["times_s"],
        "cpu_per_wall": r["cpu_per_wall"],
        "other_load": r.get("other_load"),
        "final_loss": r["final_loss"],
        "affinity": r.get("affinity"),
    })
    if r["final_loss"] is not None and not math.isfinite(r["final_loss"]):
        say("warning: %s %s %d threads: loss is not finite" % (wl, fw, th))
    other = r.get("other_load")
    say("%-10s %-8s %d thread%s: %10s samples/s  (first step %.3g s, cpu/wall %.2f%s)" % (
        wl, fw, th, " " if th == 1 else "s", _fmt_rate(row["samples_per_s"]),
        r["first_step_s"], r["cpu_per_wall"],
        "" if other is None else ", other load %.2f cores" % other))
    return row


_STARTUP_CODE = """
import time
t0 = time.perf_counter()
import numpy as np
import jitprop as jp
t1 = time.perf_counter()
rng = np.random.default_rng(0)
X = rng.standard_normal((64, 784)).astype(np.float32)
y = rng.integers(0, 10, 64)
model = jp.Sequential([jp.Dense(784, 128, seed=0), jp.ReLU(), jp.Dense(128, 10, seed=1)])
trainer = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.01))
trainer.fit(X, y, epochs=1, batch_size=64, progress=False)
t2 = time.perf_counter()
print("STARTUP %.4f %.4f" % (t1 - t0, t2 - t0))
"""


def startup(say, repeats=3):
    """Time new processes: import jitprop, then the first mlp-small training
    step through ``Trainer.fit``; with an empty Numba cache (cold: everything
    compiles) and with the cache that run filled (warm).  Returns a dict."""
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ["cold"] + ["warm"] * repeats:
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", _STARTUP_CODE], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                raise SystemExit(r.stderr[-2000:])
            imp, first = (float(v) for v in r.stdout.split("STARTUP")[1].split())
            best = out.get(label)
            if best is None or wall < best["process_s"]:
                out[label] = {"process_s": wall, "import_s": imp, "import_and_first_step_s": first}
    for label in ("cold", "warm"):
        o = out[label]
        say("%-4s cache: whole process %.2f s (import jitprop %.2f s, import + first mlp-small step %.2f s)"
            % (label, o["process_s"], o["import_s"], o["import_and_first_step_s"]))
    return out


def floor_report(workloads, pin, timeout, say):
    """Run the products-floor worker and print its table; returns its dict."""
    r = run_worker({"job": "floor", "workloads": workloads}, 1, pin, timeout)
    if not r.get("ok"):
        raise SystemExit("floor worker failed: %s" % r.get("error"))
    fl = r["floor"]
    say("Matrix products of one training step, each timed alone with numpy's BLAS on 1 thread:")
    for wl in workloads:
        f = fl[wl]
        say("%-10s %6.2f ms per step in %d products (%.2f GFLOP, %.1f GFLOP/s): at most %s samples/s "
            "on 1 thread" % (wl, f["seconds_per_step"] * 1e3, sum(p["count"] for p in f["products"]),
                             f["gflop_per_step"], f["gflop_per_step"] / f["seconds_per_step"],
                             _fmt_rate(f["max_samples_per_s"])))
        if all(p["m"] * p["k"] * p["n"] <= 4096 for p in f["products"]):
            say("    (every product is tiny: jitprop runs these as compiled loops, not BLAS calls, so "
                "this bound, mostly call overhead, does not apply to it)")
        for p in f["products"]:
            say("    %-26s (%d x %d) @ (%d x %d) x%-3d %9.1f us  %6.1f GFLOP/s"
                % (p["product"], p["m"], p["k"], p["k"], p["n"], p["count"], p["seconds"] * 1e6,
                   p["gflops"]))
    return fl


def _write_json(path, doc, indent=1):
    """Write ``doc`` as JSON to ``path`` ('-' for standard output)."""
    text = json.dumps(doc, indent=indent)
    if path == "-":
        print(text)
    else:
        with open(path, "w") as f:
            f.write(text)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.floor:
        workloads = _parse_list(args.workloads, WORKLOADS, "workload")
        fl = floor_report(workloads, not args.no_pin, args.timeout, lambda m: print(m, flush=True))
        if args.json:
            _write_json(args.json, {"floor": fl, "meta": collect_metadata(args, [], [])})
        return 0
    if args.startup:
        res = startup(lambda m: print(m, flush=True))
        if args.json:
            _write_json(args.json, {"startup": res, "meta": collect_metadata(args, [], [])}, indent=2)
        return 0
    if args.seconds is None:
        args.seconds = 0.3 if args.quick else 2.0
    workloads = _parse_list(args.workloads, WORKLOADS, "workload")
    if args.threads:
        threads = [int(t) for t in _parse_list(args.threads)]
    else:
        ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        threads = sorted({1, ncpu or 1})
    if any(t < 1 for t in threads):
        raise SystemExit("thread counts must be >= 1")
    ncpu_avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    requested = _parse_list(args.vs, ("torch", "jax"), "peer") if args.vs else []
    peers = [f for f in requested if _peer_available(f)]
    missing = [f for f in requested if f not in peers]
    frameworks = ["jitprop"] + peers

    report = sys.stderr if args.json == "-" else sys.stdout

    def say(msg):
        print(msg, file=report, flush=True)

    for f in missing:
        say("note: %s is not importable; reporting without it" % f)
    for th in threads:
        if ncpu_avail and th > ncpu_avail:
            say("note: %d threads > %d available CPUs: that run is oversubscribed" % (th, ncpu_avail))

    gemm_repeats = 3 if args.quick else 5
    need_gemm = any(w in GFLOPS_WORKLOADS for w in workloads)
    pin = not args.no_pin
    best_rows, gemm_rows = {}, {}   # key -> best row over rounds
    for rnd in range(args.rounds):
        if args.rounds > 1:
            say("-- round %d/%d --" % (rnd + 1, args.rounds))
        for wl in workloads:
            for th in threads:
                if need_gemm and wl in GFLOPS_WORKLOADS:
                    g = run_worker({"job": "gemm", "gemm_repeats": gemm_repeats}, th, pin,
                                   args.timeout)
                    if g.get("ok"):
                        say("numpy sgemm %d thread%s: %.1f GFLOP/s" % (
                            th, "" if th == 1 else "s", g["gflops"]))
                        old = gemm_rows.get(th)
                        if old is None or g["gflops"] > old["gflops"]:
                            gemm_rows[th] = {
                                "workload": "sgemm-%d" % GEMM_N, "framework": "numpy-sgemm",
                                "threads": th, "gflops": g["gflops"], "best_s": g["best_s"],
                                "cpu_per_wall": g["cpu_per_wall"], "blas": g.get("blas")}
                    else:
                        say("numpy sgemm %d threads failed: %s" % (th, g.get("error")))
                for fw in frameworks:
                    row = _measure_one(wl, fw, th, args, pin, say)
                    key = (wl, th, fw)
                    old = best_rows.get(key)
                    rates = (old or {}).get("samples_per_s_rounds", []) + [row.get("samples_per_s")]
                    if old is None or (row.get("samples_per_s") or 0) > (old.get("samples_per_s") or 0):
                        best_rows[key] = row
                    best_rows[key]["samples_per_s_rounds"] = rates

    gemm = {th: r["gflops"] for th, r in gemm_rows.items()}
    results = []
    for wl in workloads:
        flops = train_step_flops(WORKLOADS[wl])
        for th in threads:
            if th in gemm_rows and wl in GFLOPS_WORKLOADS and gemm_rows[th] not in results:
                results.append(gemm_rows[th])
            group = [best_rows[(wl, th, fw)] for fw in frameworks]
            for row in group:
                if flops is not None and row.get("samples_per_s"):
                    row["gflops"] = flops * row["samples_per_s"] / row["batch"] / 1e9
                    if th in gemm and wl in GFLOPS_WORKLOADS:
                        row["numpy_sgemm_gflops"] = gemm[th]
                        row["fraction_of_sgemm"] = row["gflops"] / gemm[th]
            jp_row = group[0]
            peer_rows = [r for r in group[1:] if r.get("samples_per_s")]
            if peer_rows and jp_row.get("samples_per_s"):
                best = max(peer_rows, key=lambda r: r["samples_per_s"])
                jp_row["best_peer"] = best["framework"]
                jp_row["ratio_vs_best_peer"] = jp_row["samples_per_s"] / best["samples_per_s"]
            results.extend(group)

    say("")
    say(format_table(results, frameworks, gemm))
    if missing:
        say("peers not available (not importable): %s" % ", ".join(missing))

    if args.json:
        doc = {"metadata": collect_metadata(args, peers, missing), "results": results}
        text = json.dumps(doc, indent=1)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
            say("results written to %s" % args.json)
    ok = all(r.get("samples_per_s") or r.get("gflops") for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
