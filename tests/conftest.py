import importlib.util
import os
import pathlib

import numba
import numpy as np
import pytest

# short fits start layer by layer on an empty cache; in the test process they
# must not also start background compiles (tests that want one set it to 1)
os.environ.setdefault("JITPROP_BACKGROUND_COMPILE", "0")

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    """Import ``examples/<name>.py`` as a module (the examples are scripts,
    not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def restore_threads():
    n = numba.get_num_threads()
    yield
    numba.set_num_threads(n)


def tol(dtype):
    """(rtol, atol) for comparing a kernel in ``dtype`` with a float64 reference."""
    return (1e-5, 1e-6) if np.dtype(dtype) == np.float32 else (1e-12, 1e-13)
