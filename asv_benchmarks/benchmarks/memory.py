"""Memory: preallocated buffers per workload and the peak RSS of an epoch."""

import numpy as np

from ._common import WORKLOAD_NAMES, WORKLOADS, batch_data, build_trainer, make_data, use_threads

#: batches in the small data set of the peakmem epoch
EPOCH_BATCHES = 4


class BufferBytes:
    """Bytes the model holds after one training step (parameters, gradients,
    every layer's forward/backward buffers: ``model.buffer_bytes()``) plus the
    optimizer's momentum buffer (``SGD.velocity``)."""

    params = [WORKLOAD_NAMES]
    param_names = ["workload"]
    unit = "bytes"
    rounds = 1
    timeout = 600

    def setup(self, workload):
        use_threads(1)
        self.trainer = build_trainer(workload, np.float32)
        xb, yb = batch_data(workload, np.float32)
        self.trainer.train_step(xb, yb)

    def track_buffer_bytes(self, workload):
        t = self.trainer
        opt = t.optimizer
        # every optimiser's state arrays (Adam has moments, not a velocity); commits before state_arrays had SGD only
        state = opt.state_arrays().values() if hasattr(opt, "state_arrays") else [opt.velocity]
        return int(t.model.buffer_bytes() + sum(a.nbytes for a in state))


class EpochPeakMemory:
    """Peak resident memory of the benchmark process while it trains one epoch
    (``Trainer.fit``, no progress bar) on a small random float32 data set of
    4 batches; the model is built and compiled in setup, so the number is the
    interpreter + Numba + model + data baseline plus what the epoch adds."""

    params = [WORKLOAD_NAMES]
    param_names = ["workload"]
    rounds = 1
    timeout = 600

    def setup(self, workload):
        use_threads(1)
        self.trainer = build_trainer(workload, np.float32)
        bs = WORKLOADS[workload]["batch"]
        self.X, self.Y = make_data(workload, EPOCH_BATCHES * bs, np.float32)
        self.trainer.fit(self.X[:bs], self.Y[:bs], epochs=1, batch_size=bs, progress=False)

    def peakmem_train_epoch(self, workload):
        self.trainer.fit(self.X, self.Y, epochs=1, batch_size=WORKLOADS[workload]["batch"],
                         shuffle=True, seed=0, progress=False)
