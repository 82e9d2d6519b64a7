"""OpenMP wait defaults for jitprop's threads, set when jitprop is imported.

Numba's OpenMP threads and OpenBLAS's threads share the cores.  After each
parallel loop libgomp's workers spin for GOMP_SPINCOUNT rounds (300,000 by
default, about a millisecond here) before they sleep, starving the BLAS
threads of the next matrix product (an LSTM step 10-20x slower on 2 busy
cores; see docs/performance.md).  Sleeping at once (OMP_WAIT_POLICY=PASSIVE)
costs a wake-up of tens of microseconds at every parallel loop instead.  A
short spin keeps both costs small, unless the user chose a policy.  This
takes effect when the OpenMP runtime starts, i.e. if jitprop is imported
before anything else starts it.  JITPROP_OMP_DEFAULTS=0 leaves the OpenMP
environment alone (the benchmark's PyTorch workers use it, so that PyTorch
runs with its own defaults).
"""

import os

#: The variables this module set, with their values (empty when it set none).
ENV_SET = {}
if (os.environ.get("JITPROP_OMP_DEFAULTS", "1") != "0" and "OMP_WAIT_POLICY" not in os.environ
        and "GOMP_SPINCOUNT" not in os.environ):
    os.environ["GOMP_SPINCOUNT"] = ENV_SET["GOMP_SPINCOUNT"] = "2000"
