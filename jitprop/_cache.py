"""Where Numba keeps jitprop's compiled kernels.

Numba's default cache sits next to each source file, in ``__pycache__``.  For
an installed jitprop that is inside site-packages, where ``pip uninstall``
does not know the files: it leaves a ``jitprop/kernels/__pycache__`` folder
behind, and a later ``import jitprop`` takes that husk for an empty namespace
package.  So jitprop's kernels are cached outside the package, in the first
of:

1. ``$JITPROP_CACHE_DIR``, if set;
2. Numba's own ``$NUMBA_CACHE_DIR``, if set (in the subfolder Numba would use);
3. ``$XDG_CACHE_HOME/jitprop``, by default ``~/.cache/jitprop``;
4. a per-user folder in the temporary directory, if none of these is writable.

Inside it each source folder gets its own subfolder (named by a hash of its
path), so several installs never share entries.  An entry is keyed by the
SHA-256 of its source file and of ``kernels/_fmath.py`` (the one file
whose compiled functions other files embed) and by Numba's version, so an
edited file or a new Numba recompiles instead of running stale code.  Numba
writes each entry to a temporary file and renames it into place, so
concurrent processes (MPI ranks, joblib workers) never see a half-written
one.

Only functions defined in jitprop's own files use this locator; your own
``@njit(cache=True)`` code keeps Numba's defaults.
"""

import functools
import hashlib
import os
import tempfile

from numba.core import caching, config

__all__ = ["SHARED_SOURCES", "cache_dir", "install", "source_stamp"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Sources whose compiled functions are embedded in other files' cache entries:
# their hash is part of every entry's key (Numba's own key sees one file).
SHARED_SOURCES = (os.path.join(_PACKAGE_DIR, "kernels", "_fmath.py"),)


def _default_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jitprop")


def _writable(path):
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _root():
    """The cache folder for jitprop's kernels, or None for Numba's
    ``NUMBA_CACHE_DIR``."""
    explicit = os.environ.get("JITPROP_CACHE_DIR")
    if explicit:
        return os.path.abspath(explicit)
    if config.CACHE_DIR:
        return None
    default = _default_dir()
    if _writable(default):
        return default
    uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return os.path.join(tempfile.gettempdir(), f"jitprop-cache-{uid}")


def cache_dir():
    """The folder holding jitprop's compiled kernels (see :mod:`jitprop._cache`)."""
    root = _root()
    return root if root is not None else os.path.abspath(config.CACHE_DIR)


@functools.lru_cache(maxsize=None)
def _source_hash(path, mtime_ns, size):
    # mtime and size are part of the key so that an edit made while the
    # process runs is hashed again
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def source_stamp(py_file):
    """The key of ``py_file``'s cache entries: its hash and those of
    :data:`SHARED_SOURCES`."""
    hashes = []
    for path in (py_file,) + SHARED_SOURCES:
        st = os.stat(path)
        hashes.append(_source_hash(path, st.st_mtime_ns, st.st_size))
    return " ".join(hashes)


class JitpropCacheLocator(caching._CacheLocator):
    """Numba cache locator for functions defined in jitprop's source files."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(cache_dir(), self.get_suitable_cache_subpath(py_file))

    def ensure_cache_path(self):
        os.makedirs(self._cache_path, exist_ok=True)
        tempfile.TemporaryFile(dir=self._cache_path).close()

    def get_cache_path(self):
        return self._cache_path

    def get_source_stamp(self):
        return source_stamp(self._py_file)

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        path = os.path.abspath(py_file)
        if os.path.commonpath([path, _PACKAGE_DIR]) != _PACKAGE_DIR or not os.path.exists(path):
            return None
        self = cls(py_func, path)
        try:
            self.ensure_cache_path()
        except OSError:
            return None
        return self


def install():
    """Put :class:`JitpropCacheLocator` first in Numba's list of locators.

    Runs when this module is imported, which ``jitprop/__init__.py`` does
    before any kernel module: Numba picks a function's locator when its
    decorator runs.
    """
    # CacheImpl was _CacheImpl before Numba 0.61
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")
    classes = impl._locator_classes
    if JitpropCacheLocator not in classes:
        classes.insert(0, JitpropCacheLocator)


install()
