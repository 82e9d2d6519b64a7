"""``python -m jitprop.bench --startup``: the README's first job, whole
processes timed from start to exit.

The job: scikit-learn's digits (1,797 8x8 images scaled to [0, 1], read by
:mod:`jitprop.datasets`, a stratified 75/25 split with seed 0), a 64-64-10
ReLU network, 40 epochs of batches of 32 with SGD (lr 0.05, momentum 0.9), then the test accuracy.
jitprop runs it cold (empty compile cache) and warm (the cache the cold run
and its background compile filled); scikit-learn's ``MLPClassifier``,
PyTorch (eager) and JAX (one ``jax.jit`` step) run the same job when they are
installed (they keep no compile cache between processes, so they have one
figure).  Each figure is the median of ``repeats`` processes.
"""

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

# every job loads the data as the example does: jitprop/datasets.py, run as a
# file so that the peers' processes do not import jitprop (or scikit-learn)
_DATA = """
import runpy
import numpy as np
Xtr, Xte, ytr, yte = runpy.run_path({datasets!r})["digits_split"](0)
EPOCHS, BS, LR, MOM = 40, 32, 0.05, 0.9
"""

JOBS = {
    "jitprop": """
import jitprop as jp
model = jp.Sequential([jp.Dense(64, 64, seed=0), jp.ReLU(), jp.Dense(64, 10, seed=1)])
trainer = jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=LR, momentum=MOM))
trainer.fit(Xtr, ytr, epochs=EPOCHS, batch_size=BS, seed=0, validation_data=(Xte, yte), progress=False)
acc = trainer.evaluate(Xte, yte)["accuracy"]
""",
    "sklearn": """
import warnings
from sklearn.neural_network import MLPClassifier
clf = MLPClassifier(hidden_layer_sizes=(64,), solver="sgd", learning_rate_init=LR, momentum=MOM,
                    nesterovs_momentum=False, batch_size=BS, max_iter=EPOCHS, alpha=0.0, tol=0.0,
                    n_iter_no_change=EPOCHS + 1, random_state=0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "max_iter reached": 40 epochs is the job
    clf.fit(Xtr, ytr)
acc = clf.score(Xte, yte)
""",
    "torch": """
import torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOM)
lossf = torch.nn.CrossEntropyLoss()
Xt, yt = torch.from_numpy(Xtr), torch.from_numpy(ytr)
g = torch.Generator().manual_seed(0)
for epoch in range(EPOCHS):
    perm = torch.randperm(len(yt), generator=g)
    for s in range(0, len(yt), BS):
        idx = perm[s:s + BS]
        opt.zero_grad()
        lossf(net(Xt[idx]), yt[idx]).backward()
        opt.step()
with torch.no_grad():
    acc = float((net(torch.from_numpy(Xte)).argmax(1) == torch.from_numpy(yte)).float().mean())
""",
    "jax": """
import jax, jax.numpy as jnp
k1, k2 = jax.random.split(jax.random.PRNGKey(0))
def init(k, n_in, n_out):
    b = 1.0 / n_in ** 0.5
    kw, kb = jax.random.split(k)
    return [jax.random.uniform(kw, (n_in, n_out), minval=-b, maxval=b),
            jax.random.uniform(kb, (n_out,), minval=-b, maxval=b)]
params = init(k1, 64, 64) + init(k2, 64, 10)
def loss(p, x, y):
    h = jax.nn.relu(x @ p[0] + p[1])
    z = h @ p[2] + p[3]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=1))
@jax.jit
def step(p, v, x, y):
    g = jax.grad(loss)(p, x, y)
    v = [MOM * vi + gi for vi, gi in zip(v, g)]
    return [pi - LR * vi for pi, vi in zip(p, v)], v
vel = [jnp.zeros_like(q) for q in params]
rng = np.random.default_rng(0)
for epoch in range(EPOCHS):
    perm = rng.permutation(len(ytr))
    for s in range(0, len(ytr), BS):
        idx = perm[s:s + BS]
        params, vel = step(params, vel, Xtr[idx], ytr[idx])
z = jax.nn.relu(Xte @ params[0] + params[1]) @ params[2] + params[3]
acc = float(jnp.mean(jnp.argmax(z, 1) == yte))
""",
}

_MODULES = {"jitprop": "numba", "sklearn": "sklearn", "torch": "torch", "jax": "jax"}


def job_code(name):
    """The job as Python source for ``python -c`` (``name`` a key of :data:`JOBS`);
    prints ``ACCURACY <test accuracy>``."""
    first = "import jitprop as jp\n" if name == "jitprop" else ""  # as the example: jitprop first
    data = _DATA.format(datasets=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                              "datasets.py"))
    return first + data + JOBS[name] + '\nprint("ACCURACY %.4f" % acc)\n'


def _run(name, env):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", job_code(name)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{name} job failed: {r.stderr[-2000:]}")
    return wall, float(r.stdout.split("ACCURACY")[1].split()[0])


def _wait_for_precompiles(timeout=600.0):
    """Wait until no ``jitprop._precompile`` process runs (Linux's /proc;
    elsewhere, no wait)."""
    deadline = time.monotonic() + timeout
    while os.path.isdir("/proc") and time.monotonic() < deadline:
        running = False
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    running = b"jitprop._precompile" in f.read()
            except (OSError, ValueError):
                continue
            if running:
                break
        if not running:
            return
        time.sleep(0.1)


def _summary(times, acc):
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": len(times),
            "accuracy": acc}


def startup(say, repeats=3, peers=("sklearn", "torch", "jax")):
    """Time the job in new processes; returns ``{label: summary}``."""
    if importlib.util.find_spec("sklearn") is None:
        raise SystemExit("--startup needs scikit-learn (the digits data): pip install scikit-learn")
    out = {}
    base = dict(os.environ, JITPROP_OMP_DEFAULTS=os.environ.get("JITPROP_OMP_DEFAULTS", "1"))
    with tempfile.TemporaryDirectory() as root:
        cold = []
        for i in range(repeats):
            cache = os.path.join(root, f"cold{i}")  # an empty compile cache for every cold run
            env = dict(base, NUMBA_CACHE_DIR=cache, JITPROP_CACHE_DIR=cache)
            wall, acc = _run("jitprop", env)
            cold.append(wall)
            # the run's background compile (started as it exited) finishes
            # before anything else is timed: this precompile waits for it on
            # the same lock, or compiles first and leaves it only loading
            subprocess.run([sys.executable, "-m", "jitprop._precompile", "float32"], env=env, check=True)
            _wait_for_precompiles()
        out["jitprop cold"] = _summary(cold, acc)
        # warm: the last cold run's cache, filled by the run and its background compile
        _run("jitprop", env)
        out["jitprop warm"] = _summary([_run("jitprop", env)[0] for _ in range(repeats)], acc)
    for name in peers:
        if importlib.util.find_spec(_MODULES[name]) is None:
            say(f"note: {name} is not installed; skipped")
            continue
        env = dict(base, JITPROP_OMP_DEFAULTS="0")
        _run(name, env)  # first run not counted (disk caches)
        runs = [_run(name, env) for _ in range(repeats)]
        out[name] = _summary([w for w, _ in runs], runs[-1][1])
    say("The README's job (digits 64-64-10, 40 epochs, batch 32, SGD momentum), whole process from start "
        "to exit, median of %d:" % repeats)
    for label, o in out.items():
        say("  %-14s %6.2f s  (min %.2f, max %.2f)  test accuracy %.4f"
            % (label, o["median_s"], o["min_s"], o["max_s"], o["accuracy"]))
    return out
