"""Parent side of every measurement: one new Python process per measurement,
with its thread variables set before anything is imported and pinned to as
many CPUs as it has threads; it answers with one JSON line after a marker."""

import json
import os
import subprocess
import sys

_BOOT = ("import json, os, sys\n"
         "p = json.loads(sys.argv[1])\n"
         "if p.get('cpus'): os.sched_setaffinity(0, p['cpus'])\n"
         "from {module} import {function}\n"
         "{function}(p)\n")


def worker_env(threads, framework="jitprop"):
    """The environment of a worker running ``framework`` on ``threads`` threads."""
    env = dict(os.environ)
    if framework != "jitprop":
        # importing jitprop (this module's package) set OpenMP wait defaults
        # for jitprop's threads; a peer must run with its own defaults
        from .. import _openmp

        for var, value in _openmp.ENV_SET.items():
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
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def cpus_for(threads, pin):
    """The CPUs a worker of ``threads`` threads is pinned to (None: not pinned)."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None
    avail = sorted(os.sched_getaffinity(0))
    return avail[:threads] if threads <= len(avail) else avail


def launch(module, function, mark, payload, threads, pin, timeout, framework="jitprop"):
    """Run ``module.function(payload)`` in a new process; returns ``(result, None)``
    with the JSON it printed after ``mark``, or ``(None, why)``."""
    payload = dict(payload, threads=threads, cpus=cpus_for(threads, pin))
    try:
        proc = subprocess.run([sys.executable, "-c", _BOOT.format(module=module, function=function),
                               json.dumps(payload)],
                              env=worker_env(threads, framework), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timed out after %.0f s" % timeout
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(mark):
            return json.loads(line[len(mark):]), None
    return None, "worker exited with code %s without a result; stderr tail: %s" % (proc.returncode,
                                                                                   proc.stderr[-1500:])
