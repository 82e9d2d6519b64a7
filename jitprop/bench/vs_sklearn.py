"""``python -m jitprop.bench --vs sklearn``: jitprop.sklearn against scikit-learn.

Usage::

    python -m jitprop.bench --vs sklearn [--threads 1,2] [--rounds R] [--quick] [--dtype float32]
        [--datasets digits,breast_cancer,wine,synth100k] [--solvers sgd,adam] [--json PATH_OR_-]

For every (dataset, solver, thread count) one subprocess, started with the
thread variables (OMP/OPENBLAS/MKL/NUMBA) set to the count and pinned to that
many CPUs, fits ``sklearn.neural_network.MLPClassifier`` and
``jitprop.sklearn.MLPClassifier`` with the same parameters and
``random_state`` on the same standardised training split, alternately, and
reports the best fit time of each over ``--rounds`` (interleaved, so both see
the same machine load), the fit-time ratio (``speed-up``), the ratio to
scikit-learn's fastest thread count in the run (``vs sk best``), the
``ceiling`` (scikit-learn's fit time over the time numpy's BLAS takes for the
matrix products of jitprop's epochs alone: no fit that runs its products in
BLAS can be faster by more), the number of epochs each ran and each one's
test accuracy.  Before timing, jitprop fits a few rows once: that
first call (Numba compiling, or loading from its cache) is reported as
``first_call_s`` and excluded from the fit times.
"""

import argparse
import json
import sys
import time
import warnings

from ._launch import launch

DATASETS = ("digits", "breast_cancer", "wine", "synth100k")
SOLVERS = ("sgd", "adam")
#: Estimator parameters: scikit-learn's defaults, except fewer epochs on the
#: 100k-row data set so that scikit-learn's side finishes in minutes.
MAX_ITER = {"synth100k": 10}
MARK = "@@JITPROP_SKL@@ "


def load(name):
    """``(X_train, X_test, y_train, y_test)``: standardised on the training split."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if name == "synth100k":
        X, y = datasets.make_classification(n_samples=100_000, n_features=100, n_informative=20,
                                            n_classes=4, random_state=0)
    else:
        X, y = getattr(datasets, "load_" + name)(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    sc = StandardScaler().fit(Xtr)
    return sc.transform(Xtr), sc.transform(Xte), ytr, yte


def params(dataset, solver):
    return dict(solver=solver, random_state=0, max_iter=MAX_ITER.get(dataset, 200))


def products_time(sizes, n, bs, dtype, repeats=3):
    """Seconds numpy's BLAS takes for the matrix products of one training
    epoch of an MLP with layer widths ``sizes`` on ``n`` rows in batches of
    ``bs``: per batch, every layer's forward product and weight gradient, and
    the input gradient of every layer but the first (what both libraries
    compute).  The best of ``repeats``.  No implementation that runs these
    products in BLAS can fit an epoch faster."""
    import numpy as np

    rng = np.random.default_rng(0)
    # values of order 1 throughout: no overflow, and no subnormals (which slow BLAS down)
    Ws = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(dtype) for a, b in zip(sizes[:-1], sizes[1:])]
    batches = [bs] * (n // bs) + ([n % bs] if n % bs else [])
    bufs = {}
    for m in set(batches):
        acts = [rng.standard_normal((m, w)).astype(dtype) for w in sizes]
        deltas = [rng.standard_normal((m, w)).astype(dtype) for w in sizes]
        bufs[m] = (acts, deltas, [np.empty_like(W) for W in Ws])

    def epoch():
        for m in batches:
            acts, deltas, grads = bufs[m]
            for i, W in enumerate(Ws):
                np.dot(acts[i], W, acts[i + 1])
            for i in range(len(Ws) - 1, -1, -1):
                np.dot(acts[i].T, deltas[i + 1], grads[i])
                if i > 0:
                    np.dot(deltas[i + 1], Ws[i].T, deltas[i])

    epoch()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        epoch()
        best = min(best, time.perf_counter() - t)
    return best


def worker(p):
    """Measuring side (one subprocess): prints one JSON line after ``MARK``."""
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as SkMLP

    import jitprop
    from jitprop.sklearn import MLPClassifier as JpMLP

    jitprop.set_num_threads(p["threads"])
    warnings.simplefilter("ignore", ConvergenceWarning)
    Xtr, Xte, ytr, yte = load(p["dataset"])
    kw = params(p["dataset"], p["solver"])
    jkw = dict(kw, dtype=p.get("dtype"))
    t = time.perf_counter()
    JpMLP(**dict(jkw, max_iter=1)).fit(Xtr[:64], ytr[:64]).predict(Xte[:64])
    first = time.perf_counter() - t
    best = {"jitprop": np.inf, "sklearn": np.inf}
    fitted = {}
    for _ in range(p["rounds"]):
        for name, est in (("jitprop", JpMLP(**jkw)), ("sklearn", SkMLP(**kw))):
            t = time.perf_counter()
            est.fit(Xtr, ytr)
            best[name] = min(best[name], time.perf_counter() - t)
            fitted[name] = est
    out = dict(p, ok=True, first_call_s=first, params=kw, numba_threads=jitprop.get_num_threads())
    for name, est in fitted.items():
        out[name] = {"fit_s": best[name], "n_iter": int(est.n_iter_), "test_score": float(est.score(Xte, yte))}
    out["ratio"] = best["sklearn"] / best["jitprop"]
    # the speed-up no BLAS-based fit of as many epochs can pass on this machine
    sk = fitted["sklearn"]
    sizes = [sk.coefs_[0].shape[0]] + [c.shape[1] for c in sk.coefs_]
    bs = min(200, Xtr.shape[0])  # batch_size="auto": params() keeps scikit-learn's default
    epoch_s = products_time(sizes, Xtr.shape[0], bs, fitted["jitprop"].coefs_[0].dtype)
    out["products_s"] = epoch_s * out["jitprop"]["n_iter"]
    out["ceiling"] = best["sklearn"] / out["products_s"]
    out["score_diff_points"] = 100 * (out["jitprop"]["test_score"] - out["sklearn"]["test_score"])
    print(MARK + json.dumps(out), flush=True)


def _run(payload, threads, pin, timeout):
    result, why = launch("jitprop.bench.vs_sklearn", "worker", MARK, payload, threads, pin, timeout)
    return result if result is not None else dict(payload, threads=threads, ok=False, error=why)


def format_table(rows):
    head = ("dataset", "solver", "thr", "sklearn fit s", "jitprop fit s", "speed-up", "vs sk best",
            "ceiling", "epochs sk/jp", "test acc sk", "test acc jp", "diff pts", "jp first call s")
    lines = [head]
    # scikit-learn's fastest thread count for the same data set and solver:
    # on a busy machine its 2-thread BLAS can be slower than its 1-thread run
    sk_best = {}
    for r in rows:
        if r.get("ok"):
            k = (r["dataset"], r["solver"])
            sk_best[k] = min(sk_best.get(k, float("inf")), r["sklearn"]["fit_s"])
    for r in rows:
        if not r.get("ok"):
            lines.append((r["dataset"], r["solver"], str(r["threads"]), "ERR: " + r.get("error", "")[:60]))
            continue
        sk, jp = r["sklearn"], r["jitprop"]
        lines.append((r["dataset"], r["solver"], str(r["threads"]), "%.3f" % sk["fit_s"], "%.3f" % jp["fit_s"],
                      "%.1fx" % r["ratio"], "%.1fx" % (sk_best[(r["dataset"], r["solver"])] / jp["fit_s"]),
                      "%.1fx" % r["ceiling"],
                      "%d/%d" % (sk["n_iter"], jp["n_iter"]),
                      "%.4f" % sk["test_score"], "%.4f" % jp["test_score"],
                      "%+.2f" % r["score_diff_points"], "%.2f" % r["first_call_s"]))
    widths = [max(len(line[i]) for line in lines if i < len(line)) for i in range(len(head))]
    out = ["| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(line)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m jitprop.bench --vs sklearn",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--vs", default="sklearn")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--solvers", default=",".join(SOLVERS))
    p.add_argument("--threads", default="1,2")
    p.add_argument("--dtype", default=None, choices=("float32", "float64"),
                   help="jitprop's dtype parameter (default: None, scikit-learn's rule: float64 here)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved fits of each; the best time counts")
    p.add_argument("--quick", action="store_true", help="one round, small data sets only")
    p.add_argument("--json", default=None, metavar="PATH_OR_-")
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--table", default=None, metavar="JSON", help="print the table of a saved --json run and exit")
    args, _ = p.parse_known_args(argv)
    if args.table:
        with open(args.table) as f:
            print(format_table(json.load(f)["rows"]))
        return 0
    datasets = [d for d in args.datasets.split(",") if d]
    if args.quick:
        args.rounds = 1
        if args.datasets == ",".join(DATASETS):
            datasets = [d for d in datasets if d != "synth100k"]
    bad = [d for d in datasets if d not in DATASETS]
    if bad:
        raise SystemExit("unknown dataset(s) %s; choose from %s" % (bad, ",".join(DATASETS)))
    solvers = [s for s in args.solvers.split(",") if s]
    threads = [int(t) for t in args.threads.split(",") if t]
    report = sys.stderr if args.json == "-" else sys.stdout
    rows = []
    for ds in datasets:
        for solver in solvers:
            for th in threads:
                r = _run({"dataset": ds, "solver": solver, "rounds": args.rounds, "dtype": args.dtype}, th, not args.no_pin,
                         args.timeout)
                rows.append(r)
                print("%s %s %d thr: %s" % (ds, solver, th, "ok" if r.get("ok") else r.get("error")),
                      file=report, flush=True)
    print(format_table(rows), file=report, flush=True)
    if args.json:
        doc = json.dumps({"rows": rows, "command": " ".join(sys.argv)}, indent=1)
        if args.json == "-":
            print(doc)
        else:
            with open(args.json, "w") as f:
                f.write(doc + "\n")
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
