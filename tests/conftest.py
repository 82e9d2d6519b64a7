import os

import numba
import numpy as np
import pytest

# short fits start layer by layer on an empty cache; in the test process they
# must not also start background compiles (tests that want one set it to 1)
os.environ.setdefault("JITPROP_BACKGROUND_COMPILE", "0")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def restore_threads():
    n = numba.get_num_threads()
    yield
    numba.set_num_threads(n)
