"""Benchmarks of jitprop's training throughput.

* ``python -m jitprop.bench``: jitprop against PyTorch and JAX, one subprocess
  per measurement (:mod:`.cli` the parent side, :mod:`.worker` the measuring
  side, :mod:`.peers` the PyTorch and JAX versions of the workloads).
* ``mpiexec -n 2 python -m jitprop.bench.distributed``: the data-parallel
  trainer (:mod:`.distributed`).
* :mod:`.workloads`: the workload specs and the one builder of their models,
  also used by the asv suite.
"""

from ._launch import worker_env
from .cli import build_parser, main
from .workloads import (DATA_SEED, WORKLOADS, build_model, build_trainer, make_data, make_rows,
                        step_products, train_flops_per_sample, train_step_flops)

__all__ = ["WORKLOADS", "DATA_SEED", "build_model", "build_trainer", "make_data", "make_rows",
           "step_products", "train_flops_per_sample", "train_step_flops", "build_parser", "main", "worker_env"]
