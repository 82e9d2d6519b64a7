"""Compile time, measured in fresh interpreters (``timeraw_`` benchmarks).

Each sample runs the returned code in a new Python process of the benchmarked
environment; the time covers importing jitprop (and with it NumPy, SciPy and
Numba) plus compiling or loading every kernel a training step needs: one
float32 ``train_step`` of a small classifier (Dense-Sigmoid-Dense-Tanh-Dense-
ReLU-Dense, softmax cross-entropy, SGD with momentum and gradient clipping)
and one of a small regressor (Dense-Tanh-Dense, MSE).

(Both cache variables are set: ``JITPROP_CACHE_DIR`` is where jitprop keeps
its kernels since it stopped caching inside the package, ``NUMBA_CACHE_DIR``
where older commits kept them.)

* ``timeraw_cold_compile``: the cache points at a new empty
  temporary directory, so every kernel is compiled from scratch (the cost of
  the very first run after installing or changing jitprop).
* ``timeraw_cached_load``: the cache points at a directory warmed by
  another process in ``setup``, so every kernel is loaded from Numba's on-disk
  cache (the cost of every later start).
* ``timeraw_import``: ``import jitprop`` alone, the baseline of both.
* ``timeraw_readme_job_cold``: the README's first job (digits 64-64-10, 40
  epochs, as ``python -m jitprop.bench --startup`` runs it) from an empty
  cache, with no background compile (it would outlive the sample); skipped
  for commits before the job existed in ``jitprop.bench.startup``.
"""

import os
import shutil
import subprocess
import sys
import tempfile

# One float32 training step per loss; uses no backslashes or triple quotes
# (asv embeds the code in a triple-quoted string).
_STEP = """
import numpy as np
import jitprop as jp
jp.set_num_threads(1)
rng = np.random.default_rng(0)
clf = jp.Sequential([jp.Dense(8, 16, seed=0), jp.Sigmoid(), jp.Dense(16, 16, seed=1), jp.Tanh(),
                     jp.Dense(16, 16, seed=2), jp.ReLU(), jp.Dense(16, 4, seed=3)])
t = jp.Trainer(clf, jp.SoftmaxCrossEntropy(), jp.SGD(clf, lr=0.01, momentum=0.9, clip_norm=1.0))
t.train_step(rng.standard_normal((32, 8)).astype(np.float32), rng.integers(0, 4, 32))
reg = jp.Sequential([jp.Dense(8, 16, seed=0), jp.Tanh(), jp.Dense(16, 4, seed=1)])
t = jp.Trainer(reg, jp.MSELoss(), jp.SGD(reg, lr=0.01))
t.train_step(rng.standard_normal((32, 8)).astype(np.float32),
             rng.standard_normal((32, 4)).astype(np.float32))
"""


def _indent(code, n=4):
    pad = " " * n
    return "\n".join(pad + line if line.strip() else line for line in code.strip().splitlines())


_COLD = f"""
import os, shutil, tempfile
_d = tempfile.mkdtemp(prefix="jitprop-asv-cold-")
os.environ.update(NUMBA_CACHE_DIR=_d, JITPROP_CACHE_DIR=_d)
try:
{_indent(_STEP)}
finally:
    shutil.rmtree(_d, ignore_errors=True)
"""


class _Raw:
    number = 1
    warmup_time = 0.0
    rounds = 1
    min_run_count = 1
    timeout = 900


class ColdCompile(_Raw):
    repeat = 2

    def timeraw_cold_compile(self):
        return _COLD


class CachedLoad(_Raw):
    repeat = 3

    def setup(self):
        self.cache_dir = tempfile.mkdtemp(prefix="jitprop-asv-warm-")
        env = dict(os.environ, NUMBA_CACHE_DIR=self.cache_dir, JITPROP_CACHE_DIR=self.cache_dir)
        subprocess.run([sys.executable, "-c", _STEP], env=env, check=True, timeout=self.timeout)

    def teardown(self):
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def timeraw_cached_load(self):
        return f"""
import os
os.environ.update(NUMBA_CACHE_DIR={self.cache_dir!r}, JITPROP_CACHE_DIR={self.cache_dir!r})
{_STEP}
"""


class Import(_Raw):
    repeat = 3

    def timeraw_import(self):
        return "import jitprop"


class ReadmeJobCold(_Raw):
    repeat = 2

    def setup(self):
        try:
            from jitprop.bench.startup import job_code
        except ImportError:
            raise NotImplementedError("no jitprop.bench.startup at this commit") from None
        self.code = job_code("jitprop")

    def timeraw_readme_job_cold(self):
        return f"""
import os, shutil, tempfile
_d = tempfile.mkdtemp(prefix="jitprop-asv-readme-")
os.environ.update(NUMBA_CACHE_DIR=_d, JITPROP_CACHE_DIR=_d, JITPROP_BACKGROUND_COMPILE="0")
try:
{_indent(self.code)}
finally:
    shutil.rmtree(_d, ignore_errors=True)
"""
