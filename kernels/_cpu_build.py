"""Compiled CPU kernels: C++ sources in ``kernels/csrc`` built at first use and loaded with ctypes.

``load_cpu_library(name)`` compiles ``csrc/<name>.cpp`` with the system C++ compiler (``$CXX``, else ``g++`` or
``c++``; Debian's ``g++``, which ``make system-deps`` installs) into a shared library under the cache directory
(``$MMSEQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmseq``, else ``~/.cache/mmseq``) and returns it. Sources include no
PyTorch header, so a build takes a second or two; the library is named after a hash of the source, the compiler's
version, the flags and the host CPU's feature flags (the build uses ``-march=native``), so an edit, another
compiler or another machine sharing the cache gets its own build. Concurrent first uses (test workers, data
loader processes) each build to a private file and move it into place atomically.

When no compiler is found or the build fails, it returns None after one ``CpuKernelWarning`` per library and
process, and the ops run their vectorized PyTorch path. ``MMSEQ_CPU_KERNELS=0`` turns compiled CPU kernels off.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math")


class CpuKernelWarning(RuntimeWarning):
    """A compiled CPU kernel could not be built; the op runs its PyTorch path."""


def cpu_kernels_enabled() -> bool:
    """False when ``MMSEQ_CPU_KERNELS`` is set to 0 (or false/no/off)."""
    return os.environ.get("MMSEQ_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


@contextlib.contextmanager
def cpu_kernels_off() -> Iterator[None]:
    """Within the block, ops run their PyTorch code (``MMSEQ_CPU_KERNELS=0``); the environment is restored after.
    An op's backward follows the choice its forward made."""
    before = os.environ.get("MMSEQ_CPU_KERNELS")
    os.environ["MMSEQ_CPU_KERNELS"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["MMSEQ_CPU_KERNELS"]
        else:
            os.environ["MMSEQ_CPU_KERNELS"] = before


def cache_dir() -> Path:
    """Where built libraries are kept (see the module docstring)."""
    if os.environ.get("MMSEQ_CACHE_DIR"):
        return Path(os.environ["MMSEQ_CACHE_DIR"]) / "cpu_kernels"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmseq" / "cpu_kernels"


def find_compiler() -> str | None:
    """``$CXX`` when set, else the first of g++, c++ on PATH; None when there is none."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"])
    return next((path for path in map(shutil.which, ("g++", "c++")) if path), None)


def _cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(name: str, compiler: str) -> Path:
    source = CSRC / f"{name}.cpp"
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([source.read_text(), version, " ".join(FLAGS), _cpu_features()]).encode())
    target = cache_dir() / f"{name}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", prefix=f".{name}-", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, str(source), "-o", tmp], capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {source.name}: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def _load(name: str) -> ctypes.CDLL | None:
    compiler = find_compiler()
    try:
        if compiler is None:
            raise RuntimeError("no C++ compiler found (set CXX, or install g++: `make system-deps`)")
        return ctypes.CDLL(str(_build(name, compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(f"mmseq: the compiled CPU kernel {name!r} is unavailable, using the PyTorch path ({err})",
                      CpuKernelWarning, stacklevel=3)
        return None


def load_cpu_library(name: str) -> ctypes.CDLL | None:
    """The built library ``csrc/<name>.cpp``, or None when compiled CPU kernels are off or cannot be built."""
    return _load(name) if cpu_kernels_enabled() else None


def status(name: str) -> str:
    """One line on ``csrc/<name>.cpp`` for ``mmseq info``, without building it."""
    if not cpu_kernels_enabled():
        return "off (MMSEQ_CPU_KERNELS=0): the PyTorch path runs"
    compiler = find_compiler()
    if compiler is None:
        return "no C++ compiler (install g++: `make system-deps`): the PyTorch path runs"
    built = sorted(cache_dir().glob(f"{name}-*.so"))
    return f"built in {cache_dir()}" if built else f"built at first use with {compiler}, into {cache_dir()}"


CPU_KERNELS = {"selective_scan": "selective_scan_cpu"}  # op -> its compiled CPU core
