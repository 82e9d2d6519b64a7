"""Side-by-side training-throughput benchmark: ``python -m jitprop.bench``.

Usage::

    python -m jitprop.bench [--workloads a,b,...] [--threads 1,2] [--vs torch,jax]
                            [--rounds R] [--seconds S] [--quick] [--json PATH_OR_-] [--no-pin]

Every (workload, framework, thread count) measurement runs in its own
subprocess whose environment is fixed before anything is imported:
OMP/OPENBLAS/MKL/NUMBA thread variables and XLA_FLAGS are set to the thread
count, and the process is pinned (``sched_setaffinity``) to that many CPUs.
The pinning is what makes the count real for JAX: its CPU client sizes its
thread pool from the CPUs it may run on and (in recent jaxlib) ignores the
XLA_FLAGS thread options. Each worker prints one JSON line that the parent
collects; the measured process CPU-time / wall-time ratio is reported as a
check that the thread count held.

Timing (first step alone, warm-up in doubling chunks, best of timed repeats):
see :mod:`jitprop.bench.worker`.

Peers are compared at their best: at N threads, a peer's figure is the
faster of its 1-thread and N-thread configurations and of its formulations
(:func:`jitprop.bench.peers.variants`: the JAX LSTM both with ``x_t @ W_x``
inside the scan and with the projection hoisted), as a user would configure
it; the report names the configuration. The sweep runs ``--rounds`` times
(default 3), interleaved (each round starts with another framework), and
every configuration keeps its best round on each side of a ratio, so one
slow run cannot make a ratio; a ratio is "settled" when on both sides the
second-best round is within 5% of the best. The configurations of a ratio
not settled after the rounds are measured again (``--extra-rounds``, at
most 2 more times by default).

Every round first measures numpy's SGEMM rate (GEMM_N^3 float32, best of a
few) in a worker at each thread count, so that each workload's efficiency is
taken against the machine's products rate in the same run. Every worker
reports the BLAS/OpenMP libraries its process loaded (threadpoolctl's
``internal_api``, ``version`` and ``architecture``: the kernel set OpenBLAS
picked) and the framework's own kernels (jitprop: Numba's LLVM target CPU;
PyTorch: its BLAS and CPU capability; JAX: the XLA backend); the report
lists them per framework.

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
import sys

import numpy as np

from . import peers as _peers
from ._launch import launch
from .worker import GEMM_N, MARK, blas_info
from .workloads import FIT_COST_BATCHES, TARGETS, WORKLOADS, train_flops_per_sample

FRAMEWORKS = ("jitprop", "torch", "jax")
GFLOPS_WORKLOADS = ("mlp-wide",)   # workloads whose training-step GFLOP/s is printed


# --------------------------------------------------------------------------- #
# Parent side
# --------------------------------------------------------------------------- #
def run_worker(payload, threads, pin, timeout):
    """One measurement of :func:`jitprop.bench.worker.main` in its own process."""
    result, why = launch("jitprop.bench.worker", "main", MARK, payload, threads, pin, timeout,
                         framework=payload["job"])
    return result if result is not None else {"ok": False, "error": why}


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
    rounds = args.rounds or 1
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": _version("numba"),
        "jitprop": getattr(sys.modules.get("jitprop"), "__version__", None) or _version("jitprop"),
        "torch": _peers.framework_version("torch"),
        "jax": _peers.framework_version("jax"),
        "peers_compared": list(peers),
        "peers_missing": list(missing),
        "seconds_per_repeat": args.seconds,
        "repeats": args.repeats,
        "rounds": rounds,
        "extra_rounds_max": getattr(args, "extra_rounds", None),
        "statistic": "best of %d repeats (median also given)%s" % (
            args.repeats, ", best of %d interleaved rounds" % rounds if rounds > 1 else ""),
        "pinned_to_cpus": not args.no_pin,
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                "XLA_FLAGS") if os.environ.get(k)},
        "blas": blas_info(),
        "dtype": "float32",
        "optimizer": "plain SGD, lr=0.01 (the -adam workloads: Adam, lr=1e-3)",
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
    head = ["workload", "thr", "jitprop/s"] + ["%s/s (config)" % f for f in frameworks[1:]]
    if len(frameworks) > 1:
        head += ["jitprop/best", "target", "settled"]
    head.append("efficiency (%s)" % "/".join(frameworks))
    head.append("eff. target")
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
            elif f == "jitprop":
                cells.append(_fmt_rate(r["samples_per_s"]))
            else:
                cells.append("%s (%s)" % (_fmt_rate(r["samples_per_s"]), config_label(r)))
        if len(frameworks) > 1:
            j = by.get((wl, th, "jitprop"), {})
            if j.get("ratio_vs_best_peer") is not None:
                cells.append("%.2fx (%s)" % (j["ratio_vs_best_peer"], j["best_peer"]))
                t = j.get("target_ratio")
                cells.append("-" if t is None else "%.3gx %s" % (t, "met" if j["target_met"] else "NOT met"))
                cells.append("yes" if j.get("settled") else "no")
            else:
                cells += ["-", "-", "-"]
        cells.append("/".join(format_efficiency((by.get((wl, th, f)) or {}).get("efficiency"))
                              for f in frameworks))
        t = TARGETS.get(wl, {}).get("efficiency")
        cells.append(format_efficiency(t) if t else "-")
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
    out.append("(samples/s = batch*steps/time, best of repeats and of rounds; a recurrent (LSTM/GRU) "
               "sample is one sequence; a peer at N threads is at its best: the faster of its 1-thread and N-thread "
               "configurations and of its formulations (config = threads it ran with, formulation); "
               "settled = on both sides of the ratio the second-best round is within %d%% of the "
               "best; "
               "efficiency = training FLOP/s (products only: forward, weight gradients, input "
               "gradients of every layer but the first) / numpy SGEMM FLOP/s at the same thread count; "
               "own cpu/wall = cores the worker used while timed; other load = cores busy with "
               "other processes meanwhile, where > 0.2 the row is disturbed)" % round(100 * SETTLED_TOL))

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


#: A configuration's best round counts as reproduced when its second-best
#: round is within this fraction of it.
SETTLED_TOL = 0.05


def record_round(best, key, row):
    """Keep in ``best[key]`` the fastest row of a configuration over rounds,
    with every round's samples/s in ``samples_per_s_rounds``."""
    old = best.get(key)
    rates = (old or {}).get("samples_per_s_rounds", []) + [row.get("samples_per_s")]
    if old is None or (row.get("samples_per_s") or 0) > (old.get("samples_per_s") or 0):
        best[key] = row
    best[key]["samples_per_s_rounds"] = rates
    return best[key]


def is_settled(rates, tol=SETTLED_TOL):
    """Whether a best-of over rounds is reproduced: at least two rounds ran
    and the second fastest is within ``tol`` of the fastest, so the best is
    not one lucky run (and one slow run changes nothing)."""
    r = sorted((x for x in rates if x), reverse=True)
    return len(r) >= 2 and r[1] >= (1 - tol) * r[0]


def config_label(row):
    """How a row's framework was configured: '1t', or '2t,einsum-hoisted'."""
    label = "%dt" % row["config_threads"]
    return label + ("," + row["variant"] if row.get("variant") else "")


def peer_at_best(config_rows, framework, threads):
    """A peer at its best at ``threads`` cores: the fastest of its measured
    configurations at 1 thread and at ``threads`` threads, any formulation
    (a user would configure it so).  None if none ran."""
    cands = [r for r in config_rows if r["framework"] == framework and r.get("samples_per_s")
             and r["config_threads"] in (1, threads)]
    return max(cands, key=lambda r: r["samples_per_s"]) if cands else None


def compare(config_rows, workload, threads, frameworks):
    """The result rows of one (workload, thread count): jitprop measured at
    ``threads``, then each peer at its best (a copy of its best
    configuration's row with ``threads`` set to the comparison's and
    ``config_threads``/``variant`` naming the configuration); jitprop's row
    gets the ratio to the best peer, the target and whether both sides' best
    rounds were reproduced."""
    rows = [r for r in config_rows if r["workload"] == workload]
    out = []
    for fw in frameworks:
        if fw == "jitprop":
            found = [r for r in rows if r["framework"] == fw and r["config_threads"] == threads]
            row = dict(found[0]) if found else None
        else:
            best = peer_at_best(rows, fw, threads)
            row = dict(best, threads=threads) if best else None
        if row is not None:
            out.append(row)
    jp = out[0] if out and out[0]["framework"] == "jitprop" else None
    peers = [r for r in out if r["framework"] != "jitprop" and r.get("samples_per_s")]
    if jp is not None and jp.get("samples_per_s") and peers:
        best = max(peers, key=lambda r: r["samples_per_s"])
        jp["best_peer"] = best["framework"]
        jp["best_peer_config"] = config_label(best)
        jp["ratio_vs_best_peer"] = jp["samples_per_s"] / best["samples_per_s"]
        target = TARGETS.get(workload, {}).get("ratio")
        if target is not None:
            jp["target_ratio"] = target
            jp["target_met"] = jp["ratio_vs_best_peer"] >= target
        jp["settled"] = (is_settled(jp.get("samples_per_s_rounds", []))
                         and is_settled(best.get("samples_per_s_rounds", [])))
    return out


def extra_round_configs(results, frameworks, threads, variants):
    """The configurations to measure once more because a ratio is not settled:
    for every (workload, N) whose jitprop row has ``settled`` False, jitprop
    at N and every peer formulation at 1 and at N threads (each configuration
    once, in the order found).  ``variants(fw, workload)`` lists a framework's
    formulations."""
    todo = []
    for r in results:
        if r.get("framework") != "jitprop" or r.get("settled") is not False:
            continue
        wl, th = r["workload"], r["threads"]
        keys = [(wl, th, "jitprop", None)]
        for fw in frameworks:
            if fw == "jitprop":
                continue
            for t in sorted({1, th}):
                keys += [(wl, t, fw, v) for v in variants(fw, wl)]
        for k in keys:
            if k not in todo and (k[2] != "jitprop" or k[1] in threads):
                todo.append(k)
    return todo


def add_efficiency(row, flops_per_sample, sgemm_gflops):
    """Set ``row["gflops"]`` (training FLOP/s / 1e9 from its samples/s) and,
    given the run's SGEMM rate at the row's thread count, ``row["efficiency"]``
    = that over the SGEMM rate (also kept as ``fraction_of_sgemm``)."""
    if not row.get("samples_per_s"):
        return row
    row["flops_per_sample"] = flops_per_sample
    row["gflops"] = flops_per_sample * row["samples_per_s"] / 1e9
    if sgemm_gflops:
        row["numpy_sgemm_gflops"] = sgemm_gflops
        row["efficiency"] = row["fraction_of_sgemm"] = row["gflops"] / sgemm_gflops
    return row


def format_efficiency(e):
    """An efficiency as a percentage with 3 significant digits ('-' if absent)."""
    if e is None:
        return "-"
    return "%.3g%%" % (100 * e)


def _vs_value(argv):
    """The peers named by ``--vs`` in ``argv`` (a list of names)."""
    for i, a in enumerate(argv):
        if a == "--vs" and i + 1 < len(argv):
            return argv[i + 1].split(",")
        if a.startswith("--vs="):
            return a[5:].split(",")
    return []


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
    p.add_argument("--vs", default="", help="peers to compare against: torch,jax; or sklearn "
                   "(jitprop.sklearn against scikit-learn, see jitprop.bench.vs_sklearn)")
    p.add_argument("--seconds", type=float, default=None,
                   help="timed seconds per repeat (default 2, --quick 0.3)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    p.add_argument("--rounds", type=int, default=None,
                   help="repeat the whole sweep this many times, interleaved, keeping each "
                        "configuration's best round, so that one slow run cannot make a ratio "
                        "(default 3, --quick 1)")
    p.add_argument("--extra-rounds", type=int, default=None,
                   help="after the rounds, measure the configurations of every ratio not settled "
                        "yet (second-best round more than 5%% below the best on either side) again, "
                        "up to this many times (default 2, --quick 0)")
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
                   help="instead of throughput: time whole processes running the README's job (digits "
                        "64-64-10, 40 epochs): jitprop with an empty and with a warm compile cache, and "
                        "scikit-learn, PyTorch and JAX when installed")
    return p


def measure_gemm(threads, repeats, pin, timeout, say):
    """numpy's SGEMM rate (GEMM_N^3, best of ``repeats``) in a worker with
    ``threads`` threads: the machine's products rate in this run, the
    denominator of every efficiency.  Returns a result row or None."""
    g = run_worker({"job": "gemm", "gemm_repeats": repeats}, threads, pin, timeout)
    if not g.get("ok"):
        say("numpy sgemm %d thread%s failed: %s" % (threads, "" if threads == 1 else "s",
                                                     g.get("error")))
        return None
    say("numpy sgemm %d^3 %d thread%s: %.1f GFLOP/s (best of %d)" % (
        GEMM_N, threads, "" if threads == 1 else "s", g["gflops"], repeats))
    return {"workload": "sgemm-%d" % GEMM_N, "framework": "numpy-sgemm", "threads": threads,
            "gflops": g["gflops"], "best_s": g["best_s"], "cpu_per_wall": g["cpu_per_wall"],
            "blas": g.get("blas")}


def format_fit_cost(rows):
    """Lines of ``Trainer.fit``'s cost per call, for the jitprop rows that have it."""
    out = []
    for r in rows:
        if r.get("framework") != "jitprop" or r.get("fit_call_s") is None:
            continue
        step_s = (r["fit_call_s"] - r["fit_fixed_s"]) / r["fit_call_steps"]
        out.append("  %-10s %d thread%s: %.1f us per call = %d steps x %.2f us + %.1f us fixed" % (
            r["workload"], r["threads"], " " if r["threads"] == 1 else "s", r["fit_call_s"] * 1e6,
            r["fit_call_steps"], step_s * 1e6, r["fit_fixed_s"] * 1e6))
    if out:
        out.insert(0, "Trainer.fit per call (fit(epochs=1) on %d batches, fit's defaults without the "
                      "progress bar, best block; step time from the long run):" % FIT_COST_BATCHES)
    return out


def format_configs(config_rows):
    """Every measured configuration with its samples/s in each round."""
    out = ["Every configuration measured (samples/s per round, in order):"]
    for r in config_rows:
        name = r["framework"] + ("[%s]" % r["variant"] if r.get("variant") else "")
        rates = ", ".join("ERR" if x is None else _fmt_rate(x) for x in r.get("samples_per_s_rounds", []))
        out.append("  %-10s %-26s %d thread%s: %s" % (r["workload"], name, r["config_threads"],
                                                     " " if r["config_threads"] == 1 else "s", rates))
    return out


def _blas_text(libs):
    """One line per process: each BLAS/OpenMP library threadpoolctl sees."""
    if not isinstance(libs, list):
        return str(libs)
    parts = []
    for d in libs:
        if d.get("user_api") == "blas":
            parts.append("%s %s %s%s" % (d.get("internal_api"), d.get("version"),
                                         d.get("architecture") or "?",
                                         " (%s)" % d["owner"] if d.get("owner") else ""))
        else:
            parts.append("%s %s" % (d.get("internal_api"), os.path.basename(d.get("filepath") or "")))
    return ", ".join(sorted(parts)) if parts else "none loaded"


def _kernels_text(k):
    if not k:
        return ""
    return ", ".join("%s %s" % (key, val) for key, val in k.items() if val is not None)


def format_runtime(rows, gemm_rows=()):
    """Lines naming, per framework (and the SGEMM worker), the BLAS library and
    kernel set its processes ran (threadpoolctl's internal_api, version and
    architecture, plus the framework's own kernels); a framework whose
    processes differ gets one line per distinct set."""
    seen = {}
    for r in list(gemm_rows) + list(rows):
        if r.get("blas") is None and r.get("kernels") is None:
            continue
        text = "blas: %s" % _blas_text(r.get("blas"))
        k = _kernels_text(r.get("kernels"))
        if k:
            text += "; kernels: " + k
        seen.setdefault(r["framework"], [])
        if text not in seen[r["framework"]]:
            seen[r["framework"]].append(text)
    out = ["Libraries and kernel sets per process:"]
    for fw, texts in seen.items():
        for t in texts:
            out.append("  %-12s %s" % (fw, t))
    return out


def _measure_one(wl, fw, th, args, pin, say, variant=None):
    """Run one (workload, framework, threads, variant) worker and turn its
    report into a result row."""
    spec = WORKLOADS[wl]
    payload = {"job": fw, "workload": wl, "seconds": args.seconds, "repeats": args.repeats,
               "variant": variant}
    r = run_worker(payload, th, pin, args.timeout)
    row = {"workload": wl, "framework": fw, "threads": th, "batch": spec["batch"],
           "config_threads": th, "variant": variant}
    name = fw if variant is None else "%s[%s]" % (fw, variant)
    if not r.get("ok"):
        row.update({"samples_per_s": None, "error": r.get("error"),
                    "traceback": r.get("traceback")})
        say("%-10s %-22s %d thread%s: FAILED: %s" % (wl, name, th, " " if th == 1 else "s",
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
        "blas": r.get("blas"),
        "kernels": r.get("kernels"),
    })
    for key in ("fit_call_s", "fit_call_steps", "fit_fixed_s"):
        if key in r:
            row[key] = r[key]
    if r["final_loss"] is not None and not math.isfinite(r["final_loss"]):
        say("warning: %s %s %d threads: loss is not finite" % (wl, fw, th))
    other = r.get("other_load")
    say("%-10s %-22s %d thread%s: %10s samples/s  (first step %.3g s, cpu/wall %.2f%s)" % (
        wl, name, th, " " if th == 1 else "s", _fmt_rate(row["samples_per_s"]),
        r["first_step_s"], r["cpu_per_wall"],
        "" if other is None else ", other load %.2f cores" % other))
    return row


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


def _run_options(args):
    """Fill the sweep's defaults into ``args`` and return ``(workloads,
    threads)``; unknown names or bad counts exit with a message."""
    if args.seconds is None:
        args.seconds = 0.3 if args.quick else 2.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    if args.extra_rounds is None:
        args.extra_rounds = 0 if args.quick else 2
    workloads = _parse_list(args.workloads, WORKLOADS, "workload")
    if args.threads:
        threads = [int(t) for t in _parse_list(args.threads)]
    else:
        ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        threads = sorted({1, ncpu or 1})
    if any(t < 1 for t in threads):
        raise SystemExit("thread counts must be >= 1")
    return workloads, threads


def _record_gemm(gemm_rows, threads, g):
    """Keep the fastest SGEMM row per thread count, with every round's rate."""
    old = gemm_rows.get(threads)
    rates = (old or {}).get("gflops_rounds", []) + [g["gflops"]]
    if old is None or g["gflops"] > old["gflops"]:
        gemm_rows[threads] = g
    gemm_rows[threads]["gflops_rounds"] = rates


def _sweep(args, workloads, threads, frameworks, say):
    """``args.rounds`` interleaved rounds: each measures numpy's SGEMM at every
    thread count, then every configuration (jitprop at each of ``threads``;
    each peer formulation at those and at 1 thread), a different framework
    first in each round.  Returns the best row of each over the rounds:
    ``(best_rows, gemm_rows)``, keyed by ``(workload, threads, framework,
    variant)`` and by thread count."""
    gemm_repeats = 3 if args.quick else 5
    pin = not args.no_pin
    # peers also run at 1 thread: at N threads each is compared at its best
    all_threads = sorted(set(threads) | ({1} if len(frameworks) > 1 else set()))
    best_rows, gemm_rows = {}, {}
    for rnd in range(args.rounds):
        if args.rounds > 1:
            say("-- round %d/%d --" % (rnd + 1, args.rounds))
        for th in threads:
            g = measure_gemm(th, gemm_repeats, pin, args.timeout, say)
            if g is not None:
                _record_gemm(gemm_rows, th, g)
        for wl in workloads:
            for th in all_threads:
                configs = [(fw, v) for fw in frameworks if fw != "jitprop" or th in threads
                           for v in _peers.variants(fw, WORKLOADS[wl])]
                k = rnd % len(configs) if configs else 0
                for fw, v in configs[k:] + configs[:k]:
                    row = _measure_one(wl, fw, th, args, pin, say, variant=v)
                    record_round(best_rows, (wl, th, fw, v), row)
    return best_rows, gemm_rows


def _results(workloads, threads, frameworks, best_rows, gemm_rows):
    """The result rows in report order: per workload and thread count the
    SGEMM row, jitprop and every peer at its best (:func:`compare`), with
    GFLOP/s and efficiency against the same run's SGEMM rate.  Returns
    ``(config_rows, results)``."""
    config_rows = list(best_rows.values())
    gemm = {th: r["gflops"] for th, r in gemm_rows.items()}
    results = []
    for wl in workloads:
        flops = train_flops_per_sample(WORKLOADS[wl])
        for th in threads:
            if th in gemm_rows and gemm_rows[th] not in results:
                results.append(gemm_rows[th])
            group = compare(config_rows, wl, th, frameworks)
            for row in group:
                add_efficiency(row, flops, gemm.get(th))
            results.extend(group)
    return config_rows, results


def _extra_rounds(args, workloads, threads, frameworks, best_rows, gemm_rows, say):
    """Measure the configurations of every ratio not settled again, up to
    ``args.extra_rounds`` times; returns the final ``(config_rows, results)``."""
    config_rows, results = _results(workloads, threads, frameworks, best_rows, gemm_rows)
    pin = not args.no_pin
    for extra in range(args.extra_rounds if len(frameworks) > 1 else 0):
        todo = extra_round_configs(results, frameworks, threads,
                                   lambda fw, wl: _peers.variants(fw, WORKLOADS[wl]))
        if not todo:
            break
        say("-- extra round %d/%d for the ratios not settled yet (%d configurations) --"
            % (extra + 1, args.extra_rounds, len(todo)))
        for wl, th, fw, v in todo:
            record_round(best_rows, (wl, th, fw, v), _measure_one(wl, fw, th, args, pin, say, variant=v))
        config_rows, results = _results(workloads, threads, frameworks, best_rows, gemm_rows)
    return config_rows, results


def _report(results, config_rows, frameworks, gemm_rows, missing, say):
    """Print the configurations, the table, SGEMM per round, fit's cost per
    call and the libraries each process ran."""
    gemm = {th: r["gflops"] for th, r in gemm_rows.items()}
    say("")
    if len(frameworks) > 1:
        for line in format_configs(config_rows):
            say(line)
    say(format_table(results, frameworks, gemm))
    if any(len(g.get("gflops_rounds", [])) > 1 for g in gemm_rows.values()):
        say("numpy sgemm GFLOP/s per round (the best is the efficiencies' denominator): " + "; ".join(
            "%d thread%s %s" % (th, "" if th == 1 else "s", ", ".join("%.1f" % x for x in g["gflops_rounds"]))
            for th, g in sorted(gemm_rows.items())))
    for line in format_fit_cost(results):
        say(line)
    for line in format_runtime([r for r in results if r["framework"] in FRAMEWORKS],
                               gemm_rows.values()):
        say(line)
    if missing:
        say("peers not available (not importable): %s" % ", ".join(missing))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "sklearn" in _vs_value(argv):  # a comparison of its own: jitprop.bench.vs_sklearn
        from .vs_sklearn import main as vs_sklearn_main

        return vs_sklearn_main(argv)
    args = build_parser().parse_args(argv)
    if args.floor:
        workloads = _parse_list(args.workloads, WORKLOADS, "workload")
        fl = floor_report(workloads, not args.no_pin, args.timeout, lambda m: print(m, flush=True))
        if args.json:
            _write_json(args.json, {"floor": fl, "meta": collect_metadata(args, [], [])})
        return 0
    if args.startup:
        from .startup import startup

        res = startup(lambda m: print(m, flush=True))
        if args.json:
            _write_json(args.json, {"startup": res, "meta": collect_metadata(args, [], [])}, indent=2)
        return 0
    workloads, threads = _run_options(args)
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

    best_rows, gemm_rows = _sweep(args, workloads, threads, frameworks, say)
    config_rows, results = _extra_rounds(args, workloads, threads, frameworks, best_rows, gemm_rows, say)
    _report(results, config_rows, frameworks, gemm_rows, missing, say)

    if args.json:
        doc = {"metadata": collect_metadata(args, peers, missing), "results": results,
               "configurations": config_rows}
        if args.json == "-":
            sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        else:
            _write_json(args.json, doc)
            say("results written to %s" % args.json)
    ok = all(r.get("samples_per_s") or r.get("gflops") for r in results)
    return 0 if ok else 1
