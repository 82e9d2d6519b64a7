"""Data-parallel training of the digits MLP over MPI (DistributedTrainer).

Every rank loads the same data (scikit-learn's bundled 8x8 digits, no
download) and trains on its share of each global batch; one Allreduce per
step averages the gradients.  Rank 0 prints the loss, the test accuracy and
the throughput (samples/s over all ranks).

    mpiexec -n 2 python examples/distributed_digits.py [--epochs 40] [--batch-size 32]
    python examples/distributed_digits.py          # one rank: same code, no mpiexec needed

``--batch-size`` is the global batch (rows per step over all ranks), so the
result does not depend on the number of ranks, up to float rounding.
Needs ``pip install "jitprop[mpi,examples]"``.
"""

import argparse
import os
import time


def _threads_per_rank_env():
    """Before NumPy/SciPy load OpenBLAS: give each rank CPUs / (ranks on this
    machine) threads unless the thread variables are set already.  Spinning
    BLAS threads of oversubscribed ranks can make every step ~10x slower."""
    local = next((int(os.environ[v]) for v in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")
                  if v in os.environ), 1)
    if local > 1:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        for var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(max(1, cpus // local)))


_threads_per_rank_env()

import jitprop as jp  # noqa: E402
from jitprop.datasets import digits_split  # noqa: E402
from jitprop.distributed import DistributedTrainer  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32, help="global batch: rows per step over all ranks")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    Xtr, Xte, ytr, yte = digits_split(args.seed)
    model = jp.Sequential([
        jp.Dense(64, args.hidden, seed=args.seed), jp.ReLU(),
        jp.Dense(args.hidden, 10, seed=args.seed + 1),
    ])
    # rank 0's initial parameters are broadcast to every rank here
    trainer = DistributedTrainer(model, jp.SoftmaxCrossEntropy(),
                                 jp.SGD(model, lr=args.lr, momentum=args.momentum))
    rank, size = trainer.rank, trainer.size

    # compile the kernels (or load them from Numba's cache) outside the timed run
    t0 = time.perf_counter()
    warm = jp.Sequential([jp.Dense(64, args.hidden), jp.ReLU(), jp.Dense(args.hidden, 10)])
    jp.Trainer(warm, jp.SoftmaxCrossEntropy(), jp.SGD(warm, lr=0.0)).train_step(Xtr[:8], ytr[:8])
    trainer.comm.Barrier()
    compile_s = time.perf_counter() - t0

    hist = trainer.fit(Xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                       validation_data=(Xte, yte), progress=not args.no_progress)
    ev = trainer.evaluate(Xte, yte)
    if rank == 0:
        print(f"{size} rank(s) x {jp.get_num_threads()} thread(s), global batch {args.batch_size}"
              f" (about {args.batch_size // size} rows per rank per step)")
        print("epoch  train_loss  test_loss  test_acc")
        for e in range(args.epochs):
            if e < 3 or e == args.epochs - 1 or (e + 1) % 5 == 0:
                print(f"{e + 1:5d}  {hist['loss'][e]:10.4f}  {hist['val_loss'][e]:9.4f}  "
                      f"{hist['val_accuracy'][e]:8.4f}")
        total_time = sum(hist["time"])
        steps = trainer.comm_steps
        print(f"test accuracy: {ev['accuracy']:.4f} on {len(Xte)} held-out images")
        print(f"training throughput: {args.epochs * len(Xtr) / total_time:,.0f} samples/s over {size} rank(s) "
              f"({args.epochs} epochs in {total_time:.2f} s; Allreduce {1e3 * trainer.comm_seconds / steps:.3f} "
              f"ms/step of {1e3 * total_time / steps:.3f}; compile/cache load {compile_s:.2f} s; "
              f"load average {os.getloadavg()[0]:.2f})")
    return ev["accuracy"]


if __name__ == "__main__":
    main()
