"""Training-step time and throughput of the jitprop workloads.

A step is ``jp.Trainer(model, loss, jp.SGD(model, lr=0.01)).train_step(xb, yb)``
on one float32 batch of random data (forward, loss, backward, SGD update), the
same workloads as ``python -m jitprop.bench``:

=========== ================================================ =====
workload    model                                            batch
=========== ================================================ =====
mlp-tiny    1-1-1-1, sigmoid after every layer, MSE          1
mlp-small   784-128-10, ReLU, softmax cross-entropy          64
mlp-mid     784-512-512-10, ReLU, softmax cross-entropy      128
mlp-wide    1024-2048-2048-10, ReLU, softmax cross-entropy   512
lstm-small  LSTM 16->64 (T=50, sequences), Dense 64->16, MSE 16
lstm-mid    LSTM 64->256 (T=50, sequences), Dense 256->64,   64
            MSE
gru-small   GRU 16->64 (T=50, sequences), Dense 64->16, MSE  16
gru-mid     GRU 64->256 (T=50, sequences), Dense 256->64,    64
            MSE
=========== ================================================ =====

LSTM / GRU workloads are skipped while ``jitprop.LSTM`` / ``jitprop.GRU`` do not exist.
"""

import numpy as np

from ._common import THREADS, WORKLOAD_NAMES, WORKLOADS, batch_data, build_trainer, steps_per_second, use_threads

# process-wide memo: workload -> (trainer, xb, yb); built and warmed up once
_STATE = {}


def _prepare(workload, threads):
    use_threads(threads)
    st = _STATE.get(workload)
    if st is None:
        trainer = build_trainer(workload, np.float32)
        xb, yb = batch_data(workload, np.float32)
        trainer.train_step(xb, yb)          # compile / load every kernel of the step
        st = _STATE[workload] = (trainer, xb, yb)
    return st


class TrainStep:
    """Wall time of one training step."""

    params = [WORKLOAD_NAMES, THREADS]
    param_names = ["workload", "threads"]
    repeat = (3, 20, 3.0)
    warmup_time = 0.1
    rounds = 2
    timeout = 600

    def setup(self, workload, threads):
        self.trainer, self.xb, self.yb = _prepare(workload, threads)

    def time_train_step(self, workload, threads):
        self.trainer.train_step(self.xb, self.yb)


class Throughput:
    """Training samples per second (batch * steps / time, best of 3 rounds of
    at least 0.25 s each)."""

    params = [WORKLOAD_NAMES, THREADS]
    param_names = ["workload", "threads"]
    unit = "samples/s"
    rounds = 1
    timeout = 600

    def setup(self, workload, threads):
        self.trainer, self.xb, self.yb = _prepare(workload, threads)

    def track_samples_per_second(self, workload, threads):
        trainer, xb, yb = self.trainer, self.xb, self.yb
        rate = steps_per_second(lambda: trainer.train_step(xb, yb))
        return rate * WORKLOADS[workload]["batch"]
