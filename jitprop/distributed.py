"""Data-parallel SGD over MPI: :class:`DistributedTrainer`.

Every process (MPI rank) holds a full copy of the model.  Each global batch of
``batch_size`` rows is split between the ranks; every rank runs forward and
backward on its share, then one ``MPI_Allreduce`` sums the gradients (and the
loss and row counts) so that every rank applies the same update, the update a
single process would make on the whole global batch::

    mpiexec -n 2 python train.py

    # train.py
    import jitprop as jp
    from jitprop.distributed import DistributedTrainer

    model = jp.Sequential([...])
    trainer = DistributedTrainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=0.05))
    trainer.fit(X, y, epochs=10, batch_size=128, seed=0)   # same X, y, seed on every rank

Needs ``mpi4py`` and an MPI library (``pip install "jitprop[mpi]"`` installs
both: mpi4py and the ``mpich`` wheel, which brings ``mpiexec``).  mpi4py is
imported only when a :class:`DistributedTrainer` is built, so importing this
module never needs it.  See ``docs/distributed.md`` for launching on one or
several machines and for measured throughput.

The benchmark of the data-parallel trainer is :mod:`jitprop.bench.distributed`
(``mpiexec -n 2 python -m jitprop.bench.distributed --workloads mlp-mid,lstm-mid``;
``python -m jitprop.distributed`` runs it too).
"""

import hashlib
import os
import time
import warnings

import numpy as np

from .trainer import Trainer

__all__ = ["DistributedTrainer", "load", "shard_bounds", "local_ranks", "threads_per_rank"]


def import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "jitprop.distributed needs mpi4py and an MPI library; install them with "
            "`pip install \"jitprop[mpi]\"` (mpi4py plus the mpich wheel, which provides mpiexec) "
            f"[{e}]") from e
    return MPI


def shard_bounds(m, size, rank):
    """The ``[start, stop)`` slice of a batch of ``m`` rows that ``rank`` of
    ``size`` ranks takes: contiguous, in rank order, sizes differing by at
    most one row (the first ``m % size`` ranks get one more).  Ranks beyond
    ``m`` get an empty slice."""
    base, extra = divmod(int(m), int(size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def local_ranks(comm=None):
    """Number of ranks of ``comm`` (default ``COMM_WORLD``) on this machine
    (collective)."""
    MPI = import_mpi()
    comm = MPI.COMM_WORLD if comm is None else comm
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_size()
    finally:
        node.Free()


def threads_per_rank(comm=None):
    """CPUs available to this process divided by the ranks on this machine
    (at least 1): a thread count that does not oversubscribe the machine.
    Collective.  ``jp.set_num_threads(threads_per_rank())`` applies it to
    Numba (and to BLAS when threadpoolctl is installed); without
    threadpoolctl, set ``OPENBLAS_NUM_THREADS`` before NumPy is imported."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // local_ranks(comm))


def _blas_threads(cpus):
    """Best guess of the BLAS thread count: threadpoolctl's answer when it is
    installed, else the environment variables OpenBLAS reads, else all CPUs."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            try:
                return int(os.environ[var].split(",")[0])
            except (KeyError, ValueError):
                pass
        return cpus
    counts = [i.get("num_threads", 1) for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(counts) if counts else 1


def _warn_if_oversubscribed(local_size):
    import numba

    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover
        cpus = os.cpu_count() or 1
    threads = max(numba.get_num_threads(), _blas_threads(cpus))
    if local_size > 1 and local_size * threads > cpus:
        warnings.warn(f"{local_size} ranks on this machine x {threads} threads each (Numba {numba.get_num_threads()}, "
                      f"BLAS {_blas_threads(cpus)}) > {cpus} CPUs: oversubscribed ranks wait for each other at "
                      "every Allreduce and can run many times slower (idle BLAS threads spin). Launch with "
                      "NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS and OMP_NUM_THREADS set to CPUs / ranks.",
                      RuntimeWarning, stacklevel=3)


class DistributedTrainer(Trainer):
    """Synchronous data-parallel :class:`~jitprop.Trainer` over MPI.

    Parameters
    ----------
    model : Sequential
    loss : Loss
    optimizer : SGD
    comm : mpi4py communicator, optional
        Defaults to ``MPI.COMM_WORLD``.

    At construction every rank takes rank 0's parameters and momentum buffer
    (two broadcasts), so the ranks may build their models with any seeds.

    :meth:`fit` is called on every rank with the same data, ``batch_size``,
    ``seed``, ``epochs`` and ``shuffle``: every rank then draws the same
    sample order, and each global batch of ``batch_size`` rows is split into
    contiguous slices, one per rank (:func:`shard_bounds`).  After each
    backward pass one in-place ``Allreduce`` over a preallocated vector
    ``[n * grads, n * loss, n]`` (``n`` the rank's row count) gives every rank
    the mean gradient and mean loss over the global batch, so the parameters
    follow the single-process run with the same global batch up to float
    rounding, and stay identical on all ranks.  Gradient clipping, weight
    decay, momentum and the non-finite checks act on the reduced gradient, as
    in the single-process trainer (every rank sees the same values, so every
    rank takes the same decision).  A rank whose share of a short last batch
    is empty still joins the Allreduce, with zeros.

    Only rank 0 draws the progress bar and writes checkpoints; the history
    (losses are global means, ``samples_per_s`` counts the rows of all ranks)
    is the same on every rank.  To resume, every rank loads the same file
    with :func:`load` (on several machines the file must be on a shared file
    system, or copied to each).  ``callback`` runs on every rank;
    ``validation_data`` is evaluated by every rank on the whole set.

    Attributes
    ----------
    comm, rank, size
        The communicator, this process's rank and the number of ranks.
    comm_seconds : float
        Wall time spent in the gradient Allreduce since construction (or the
        last :meth:`reset_comm_stats`), including any wait for slower ranks.
    comm_steps : int
        Number of those Allreduce calls.
    """

    def __init__(self, model, loss, optimizer, comm=None):
        super().__init__(model, loss, optimizer)
        MPI = import_mpi()
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        n_params = model.n_params
        dtype = model.dtype
        mine = (n_params, dtype.name)
        everyone = self.comm.allgather(mine)
        if any(other != mine for other in everyone):
            raise ValueError("DistributedTrainer: the ranks built different models "
                             f"(n_params, dtype) per rank: {everyone}")
        mpi_type = MPI.DOUBLE if dtype == np.float64 else MPI.FLOAT
        self.comm.Bcast([model.flat_params, mpi_type], root=0)
        for buf in optimizer.state_arrays().values():
            self.comm.Bcast([buf, mpi_type], root=0)
        # [n * grads (n_params), n * loss, n]: the one message of every step
        self._buf = np.zeros(n_params + 2, dtype=dtype)
        self._gsum = self._buf[:n_params]
        self._msg = [self._buf, mpi_type]
        self._n_params = n_params
        self._empty_share = False
        self.comm_seconds = 0.0
        self.comm_steps = 0
        self.local_size = local_ranks(self.comm)
        if self.rank == 0:
            _warn_if_oversubscribed(self.local_size)

    def reset_comm_stats(self):
        """Zero :attr:`comm_seconds` and :attr:`comm_steps`."""
        self.comm_seconds = 0.0
        self.comm_steps = 0

    # -- hooks of Trainer ---------------------------------------------------------------
    def _shard(self, idx):
        start, stop = shard_bounds(idx.shape[0], self.size, self.rank)
        if start == stop:
            # An empty share (a short last batch, fewer rows than ranks): the
            # model cannot run on 0 rows, so this rank computes one row of
            # the batch and contributes it with weight 0 in _reduce_gradients.
            self._empty_share = True
            return idx[:1]
        return idx[start:stop]

    def _reduce_gradients(self, value, n):
        buf, gsum, p = self._buf, self._gsum, self._n_params
        grads = self.model.flat_grads
        if self._empty_share:
            self._empty_share = False
            n = 0
        if n:
            np.multiply(grads, n, out=gsum)
            buf[p] = value * n
        else:  # contribute nothing (not even a NaN from the stand-in row)
            gsum.fill(0)
            buf[p] = 0
        buf[p + 1] = n
        t = time.perf_counter()
        self.comm.Allreduce(self._MPI.IN_PLACE, self._msg, op=self._MPI.SUM)
        self.comm_seconds += time.perf_counter() - t
        self.comm_steps += 1
        total = buf[p + 1]
        np.divide(gsum, total, out=grads)
        return float(buf[p]) / float(total)

    def _fusable(self):
        return False  # every step needs the Allreduce between backward and update

    def train_step(self, x, y):
        """One step on this rank's rows ``x``, ``y``: forward, backward,
        Allreduce, update.  Collective: every rank must call it; a rank with
        no rows (``x.shape[0] == 0``) still joins, contributing nothing.
        Returns the mean loss over the rows of all ranks."""
        if x.shape[0] == 0:
            value = self._reduce_gradients(0.0, 0)
            self.optimizer.step()
            return value
        return super().train_step(x, y)

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, path):
        """Write a checkpoint from rank 0 (collective: every rank calls it, the
        others only learn whether the write succeeded and raise if not)."""
        error = None
        if self.rank == 0:
            try:
                super().save(path)
            except BaseException as e:
                error = e
        message = self.comm.bcast(None if error is None else f"{type(error).__name__}: {error}", root=0)
        if error is not None:
            raise error
        if message is not None:
            raise OSError(f"rank 0 failed to write the checkpoint {path!r}: {message}")
        return path

    # -- training -------------------------------------------------------------------------
    def fit(self, X, y, epochs=10, batch_size=64, shuffle=True, seed=0, validation_data=None,
            progress=True, **kwargs):
        """:meth:`Trainer.fit <jitprop.Trainer.fit>`, collectively on every rank.

        Every rank passes the same ``X``, ``y``, ``epochs``, ``batch_size``
        (the global batch: rows per step summed over the ranks), ``shuffle``
        and ``seed`` (checked: a mismatch raises ``ValueError`` on every rank
        instead of deadlocking).  ``progress`` is honoured on rank 0 only.
        ``use_fused`` has no effect (each step needs an Allreduce).
        """
        X = np.asarray(X)
        shape = tuple(X.shape)
        probe = hashlib.sha256(np.ascontiguousarray(X[:4]).tobytes()).hexdigest()[:16]
        signature = (shape, int(epochs) if isinstance(epochs, (int, np.integer)) else repr(epochs),
                     int(batch_size) if isinstance(batch_size, (int, np.integer)) else repr(batch_size),
                     bool(shuffle), repr(seed), bool(kwargs.get("resume", False)),
                     str(X.dtype), probe)
        everyone = self.comm.allgather(signature)
        if any(s != signature for s in everyone):
            raise ValueError("DistributedTrainer.fit: every rank must pass the same data, epochs, "
                             "batch_size, shuffle, seed and resume; got per rank (data shape, epochs, "
                             f"batch_size, shuffle, seed, resume, dtype, hash of the first rows): {everyone}")
        return super().fit(X, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle, seed=seed,
                           validation_data=validation_data, progress=progress and self.rank == 0,
                           **kwargs)

    def __repr__(self):
        return f"DistributedTrainer(rank={self.rank}, size={self.size}, n_params={self._n_params})"


def load(path, comm=None):
    """Rebuild a :class:`DistributedTrainer` from a checkpoint, for
    ``fit(..., resume=True)`` (``DistributedTrainer.load(path, comm=comm)``).
    Collective: every rank calls it with the same file (written by rank 0 of an
    earlier run)."""
    return DistributedTrainer.load(path, comm=comm)


if __name__ == "__main__":  # the benchmark's old command line (run by name: no import back up)
    import runpy

    runpy.run_module("jitprop.bench.distributed", run_name="__main__", alter_sys=True)
