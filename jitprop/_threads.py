"""Thread control for Numba's parallel kernels and the BLAS they call."""

import contextlib
import warnings

import numba

__all__ = ["set_num_threads", "get_num_threads", "threading_layer"]


def _blas_limit(n):
    """Limit BLAS threads (SciPy's and NumPy's OpenBLAS) to ``n`` if
    threadpoolctl is installed; returns True when it was applied."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return False
    # Numba's np.dot calls SciPy's OpenBLAS, which is loaded lazily: load it
    # now so that the limit reaches it even before the first kernel compiles
    import scipy.linalg.cython_blas  # noqa: F401

    threadpool_limits(limits=n, user_api="blas")
    return True


def set_num_threads(n):
    """Use ``n`` threads in the compiled kernels and in BLAS.

    Sets Numba's thread count (``numba.set_num_threads``, at most
    ``numba.config.NUMBA_NUM_THREADS``) and, when threadpoolctl is
    installed, the BLAS thread count too.  Kernels that call BLAS from inside
    a parallel loop (the fused MLP path with a batch cut into parts) run it on
    one thread there, so the two pools never multiply; elsewhere they take
    turns.  jitprop sets ``GOMP_SPINCOUNT=2000`` (unless ``OMP_WAIT_POLICY``
    or ``GOMP_SPINCOUNT`` is set) so that Numba's idle OpenMP workers spin
    only briefly before they sleep: long enough to catch the next parallel
    loop without a wake-up (about 60 microseconds each here), short enough
    not to starve the BLAS threads of the next product.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    if n > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"at most {numba.config.NUMBA_NUM_THREADS} threads are available "
                         f"(NUMBA_NUM_THREADS), got {n}")
    numba.set_num_threads(n)
    _blas_limit(n)


#: At most this many parts of a batch run at the same time.
MAX_PARTS = 8


def batch_parts(n_rows, min_rows):
    """Into how many parts of at least ``min_rows`` rows a batch of
    ``n_rows`` is cut, for kernels that run the parts at the same time (each
    with one-thread BLAS).

    The count depends on the batch and on the machine's number of cores
    (``numba.config.NUMBA_NUM_THREADS``, fixed when Numba starts), never on
    :func:`set_num_threads`, so changing the thread count at run time does
    not change the results.  With ``NUMBA_NUM_THREADS=1`` every batch is one
    part.
    """
    return int(max(1, min(numba.config.NUMBA_NUM_THREADS, MAX_PARTS, n_rows // max(1, min_rows))))


def get_num_threads():
    """Numba's current thread count."""
    return numba.get_num_threads()


def threading_layer():
    """Name of Numba's threading layer (after the first parallel call)."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


_warned = False


def warn_if_unsafe_layer():
    """Warn once if Numba runs on its ``workqueue`` threading layer, which is
    not thread-safe: calling parallel kernels from several Python threads at
    once, or nesting parallel regions, can abort the process there.  Install
    ``tbb`` (``pip install tbb``) or have an OpenMP runtime (libgomp) to get a
    thread-safe layer."""
    global _warned
    if _warned:
        return
    layer = threading_layer()
    if layer == "workqueue":
        _warned = True
        warnings.warn("Numba is using its 'workqueue' threading layer, which is not thread-safe: do not "
                      "call jitprop kernels from several Python threads at once (install tbb, or an "
                      "OpenMP runtime, for a thread-safe layer)", RuntimeWarning, stacklevel=3)


_controller = None


def _blas_controller():
    """A cached threadpoolctl controller of the BLAS libraries (None without
    threadpoolctl).  Creating one scans the loaded libraries, so it is done once."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _controller = False
        else:
            import scipy.linalg.cython_blas  # noqa: F401  (load Numba's BLAS first)

            _controller = ThreadpoolController().select(user_api="blas")
    return _controller or None


@contextlib.contextmanager
def single_thread_blas(active=True):
    """Run the block with one BLAS thread (if ``active`` and threadpoolctl is
    installed).

    For loops of small matrix products (waking OpenBLAS's threads for each
    small product costs more than it saves; docs/performance.md, finding 14),
    and for kernels that call BLAS from
    inside a parallel loop (one BLAS thread per Numba thread).  Switching
    costs a few microseconds: the thread count is set through threadpoolctl's
    per-library controllers directly, and only where it is not 1 already.
    """
    ctl = _blas_controller() if active else None
    if ctl is None:
        yield
        return
    libs = ctl.lib_controllers
    old = [lib.get_num_threads() for lib in libs]
    for lib, n in zip(libs, old):
        if n != 1:
            lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libs, old):
            if n != 1:
                lib.set_num_threads(n)
