"""Where compiled kernels are cached, and what an install leaves behind.

Numba's default cache sits beside the source, in ``__pycache__``.  In
site-packages that left ``jitprop/kernels/__pycache__`` behind after ``pip
uninstall``, and the husk shadowed a later editable install as an empty
namespace package.  jitprop caches its kernels in a user folder instead
(``jitprop/_cache.py``)."""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

import jitprop

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = pathlib.Path(jitprop.__file__).resolve().parent

# compiles one small kernel, so that Numba writes a cache entry
COMPILE = ("import numpy as np, jitprop as jp; from jitprop.kernels import raw as K; "
           "a = np.ones(8, np.float32); K.relu_forward(a, a); print(jp.cache_dir())")


def clean_env(**overrides):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "JITPROP_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")}
    env.update(overrides)
    return env


def numba_files(folder):
    return sorted(p for p in pathlib.Path(folder).rglob("*") if p.suffix in (".nbi", ".nbc"))


def run(cmd, env, cwd):
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("setting", ["JITPROP_CACHE_DIR", "XDG_CACHE_HOME", "NUMBA_CACHE_DIR"])
def test_kernels_are_cached_outside_the_package(tmp_path, setting):
    before = numba_files(PACKAGE)
    env = clean_env(**{setting: str(tmp_path / "c")}, PYTHONPATH=str(PACKAGE.parent))
    r = run([sys.executable, "-c", COMPILE], env, tmp_path)
    assert r.returncode == 0, r.stderr
    expected = tmp_path / "c" / ("jitprop" if setting == "XDG_CACHE_HOME" else "")
    assert pathlib.Path(r.stdout.strip()) == expected.resolve()
    assert numba_files(expected), "no cache entry was written"
    assert numba_files(PACKAGE) == before, "a cache entry was written inside the package"


def test_edited_source_is_recompiled_not_loaded_stale(tmp_path):
    """The cache key is the source's content: a cached function whose file
    is edited runs the edited code, even when the edit keeps the file's size
    and modification time."""
    pkg = tmp_path / "src" / "jitprop"
    shutil.copytree(PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    probe_file = pkg / "_probe.py"
    template = "from numba import njit\n\n@njit(cache=True)\ndef answer():\n    return {}\n"
    probe_file.write_text(template.format(41))
    # no .pyc: Python's own bytecode cache is also keyed by mtime and size,
    # and would hand Numba the old function before its cache is consulted
    env = clean_env(JITPROP_CACHE_DIR=str(tmp_path / "c"), PYTHONPATH=str(pkg.parent), PYTHONDONTWRITEBYTECODE="1")
    probe = "import jitprop._probe as p; print(p.answer())"
    first = run([sys.executable, "-c", probe], env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "41"
    assert any("_probe" in p.name for p in numba_files(tmp_path / "c"))
    stat = probe_file.stat()
    probe_file.write_text(template.format(42))
    os.utime(probe_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert probe_file.stat().st_size == stat.st_size
    second = run([sys.executable, "-c", probe], env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "42"


def _venv_with_our_dependencies(path):
    """A virtual environment whose site-packages links to this one's
    packages (numba, numpy, scipy, pip, setuptools ...) but not to jitprop."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    py = path / "bin" / "python"
    site = pathlib.Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                       check=True, capture_output=True, text=True).stdout.strip())
    ours = pathlib.Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        name = entry.name.lower()
        if name.endswith(".pth") or "jitprop" in name or name.startswith("__editable__"):
            continue
        (site / entry.name).symlink_to(entry)
    return py, site


@pytest.mark.slow
def test_uninstall_leaves_no_husk(tmp_path):
    """pip install, run a kernel (the cache is written), pip uninstall: then
    ``import jitprop`` fails cleanly instead of finding an empty package."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "jitprop", src / "jitprop", ignore=shutil.ignore_patterns("__pycache__"))
    py, site = _venv_with_our_dependencies(tmp_path / "venv")
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    r = run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(src)], env, away)
    assert r.returncode == 0, r.stderr
    r = run([str(py), "-c", COMPILE], env, away)
    assert r.returncode == 0, r.stderr
    assert numba_files(tmp_path / "cache" / "jitprop")
    assert not numba_files(site / "jitprop")
    r = run([str(py), "-m", "pip", "uninstall", "--yes", "jitprop"], env, away)
    assert r.returncode == 0, r.stderr
    assert not (site / "jitprop").exists(), sorted(str(p) for p in (site / "jitprop").rglob("*"))
    r = run([str(py), "-c", "import jitprop"], env, away)
    assert r.returncode != 0 and "ModuleNotFoundError: No module named 'jitprop'" in r.stderr
