"""Benchmark of :class:`~jitprop.distributed.DistributedTrainer` on the bench
workloads: ``mpiexec -n N python -m jitprop.bench.distributed [--workloads ...]``
(``--plain``: the single-process :class:`~jitprop.Trainer` instead)."""

import argparse
import json
import math
import os
import time

import numpy as np

from .._threads import get_num_threads
from ..distributed import DistributedTrainer, import_mpi
from .workloads import WORKLOADS, build_trainer, make_rows


def main(argv=None):
    p = argparse.ArgumentParser(description="samples/s of DistributedTrainer.fit on the bench workloads")
    p.add_argument("--workloads", default="mlp-mid,lstm-mid")
    p.add_argument("--seconds", type=float, default=6.0, help="approximate timed seconds per workload")
    p.add_argument("--batches", type=int, default=16, help="global batches per epoch")
    p.add_argument("--json", action="store_true", help="print one JSON line per workload")
    p.add_argument("--plain", action="store_true",
                   help="time the single-process Trainer instead (1 rank; its compiled multi-step path for MLPs)")
    args = p.parse_args(argv)
    MPI = import_mpi()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    for name in args.workloads.split(","):
        spec = WORKLOADS[name]
        gb = spec["batch"]
        n = gb * args.batches
        X, Y = make_rows(spec, n)
        if args.plain:
            if size != 1:
                raise SystemExit("--plain runs one process: start it without mpiexec")
            tr = build_trainer(spec)
        else:
            tr = build_trainer(spec, trainer_cls=DistributedTrainer, comm=comm)
        model = tr.model
        common = dict(batch_size=gb, progress=False, on_nonfinite="ignore", shuffle=True)
        tr.fit(X, Y, epochs=1, seed=0, **common)  # compile / load the cache, warm up
        h = tr.fit(X, Y, epochs=1, seed=1, **common)
        epochs = max(2, int(math.ceil(args.seconds / max(h["time"][0], 1e-3))))
        epochs = comm.bcast(epochs, root=0)
        if not args.plain:
            tr.reset_comm_stats()
        cpu0 = time.process_time()
        h = tr.fit(X, Y, epochs=epochs, seed=2, **common)
        cpu = time.process_time() - cpu0
        steps = epochs * args.batches
        wall = sum(h["time"])
        comm_ms = 0.0 if args.plain else 1e3 * tr.comm_seconds / max(steps, 1)
        # the message alone: all ranks in step, then time Allreduces of a buffer of the
        # trainer's message size ([grads, loss, rows])
        msg = np.zeros(model.n_params + 2, model.dtype)
        mpi_type = MPI.DOUBLE if model.dtype == np.float64 else MPI.FLOAT
        reps = 200
        comm.Barrier()
        t = time.perf_counter()
        for _ in range(reps):
            comm.Allreduce(MPI.IN_PLACE, [msg, mpi_type], op=MPI.SUM)
        pure_ms = 1e3 * (time.perf_counter() - t) / reps
        stats = comm.gather((comm_ms, pure_ms, cpu / wall), root=0)
        if rank == 0:
            row = dict(workload=name, trainer="Trainer" if args.plain else "DistributedTrainer", ranks=size,
                       global_batch=gb, n_params=model.n_params,
                       samples_per_s=n * epochs / wall, best_epoch_samples_per_s=max(h["samples_per_s"]),
                       step_ms=1e3 * wall / steps, allreduce_ms_per_step=[round(s[0], 3) for s in stats],
                       allreduce_alone_ms=[round(s[1], 3) for s in stats],
                       cpu_per_wall=[round(s[2], 2) for s in stats],
                       message_bytes=msg.nbytes, epochs=epochs,
                       loadavg=os.getloadavg()[0], numba_threads=get_num_threads())
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"{name:9s} {row['trainer']:18s} ranks={size} {row['samples_per_s']:10,.0f} samples/s  "
                      f"step {row['step_ms']:.2f} ms  allreduce/step {row['allreduce_ms_per_step']} ms  "
                      f"allreduce alone {row['allreduce_alone_ms']} ms  ({row['message_bytes'] / 1e6:.2f} MB)  "
                      f"cpu/wall {row['cpu_per_wall']}  load {row['loadavg']:.2f}", flush=True)


if __name__ == "__main__":
    main()
