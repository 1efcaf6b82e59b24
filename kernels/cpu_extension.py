"""Native CPU kernels: C++ ops registered with torch (`torch.ops.corral_cpu`), built on demand.

The sources in `csrc/` are compiled with the system C++ compiler into one shared library the
first time a process asks for it, then loaded with `torch.ops.load_library`. The library is
cached in `$CORRAL_CACHE_DIR/kernels` (else `~/.cache/corral/kernels`) under a name hashed
from the sources, the compile command, the torch version and the CPU's feature flags: a
cache shared with another CPU (the code uses `-march=native`) or torch rebuilds instead of
loading a mismatched library. Builds land in a temporary file renamed into place, so
processes building at once are safe.

Only light torch headers are used (no pybind11, no Python.h), and threads come from torch's
own intra-op pool, so no second OpenMP runtime is loaded.

`CORRAL_CPU_KERNELS=0` turns the kernels off. Without a compiler, or when the build or the
load fails, one warning is logged and `load_cpu_ops()` returns False: callers then use their
torch paths.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# -fopenmp-simd honours `#pragma omp simd` without linking an OpenMP runtime; ISO C++ mode
# would otherwise leave a * b + c unfused (no FMA), hence -ffp-contract=fast. No -ffast-math:
# the kernels rely on IEEE NaN and infinity handling. C++20, as torch's own headers expect.
CXX_FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-ffp-contract=fast", "-std=c++20",
             "-shared", "-fPIC")
_LOCK = threading.Lock()
_LOADED: bool | None = None  # None until the first load_cpu_ops() call


def source_dir() -> Path:
    """The C++ sources, shipped as package data beside this module."""
    return Path(__file__).parent / "csrc"


def cache_dir() -> Path:
    """Where built libraries go: `$CORRAL_CACHE_DIR/kernels`, else `~/.cache/corral/kernels`."""
    root = os.environ.get("CORRAL_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "corral"
    )
    return Path(root) / "kernels"


def _sources() -> list[Path]:
    """Every .cpp in `csrc/`: they are compiled together into one library."""
    return sorted(source_dir().glob("*.cpp"))


def _cpu_flags() -> str:
    """The CPU's feature flags (`-march=native` depends on them), or the machine name."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def _compile_command(compiler: str, output: Path) -> list[str]:
    torch_dir = Path(torch.__file__).parent
    lib_dir = torch_dir / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        compiler,
        *CXX_FLAGS,
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{torch_dir / 'include'}",
        *(str(path) for path in _sources()),
        f"-L{lib_dir}",
        "-ltorch_cpu",
        "-lc10",
        f"-Wl,-rpath,{lib_dir}",
        "-o",
        str(output),
    ]


def library_path(compiler: str) -> Path:
    """The cached library's path for this source text, compile command, torch and CPU."""
    digest = hashlib.sha256()
    for path in sorted(source_dir().glob("*.[ch]*")):  # sources and headers
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for part in (*_compile_command(compiler, Path("-")), torch.__version__, _cpu_flags()):
        digest.update(part.encode() + b"\0")
    return cache_dir() / f"corral_cpu_{digest.hexdigest()[:16]}.so"


def build_library(compiler: str, path: Path) -> None:
    """Compile the sources into `path` (atomically: a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    os.close(fd)
    try:
        start = time.perf_counter()
        result = subprocess.run(
            _compile_command(compiler, Path(tmp)), capture_output=True, text=True, timeout=600
        )
        if result.returncode != 0:
            raise RuntimeError(f"compiler exited with {result.returncode}: {result.stderr[-2000:]}")
        os.replace(tmp, path)
        logger.info("built CPU kernels in %.1f s: %s", time.perf_counter() - start, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> bool:
    if os.environ.get("CORRAL_CPU_KERNELS", "1").strip() == "0":
        logger.info("CPU kernels turned off (CORRAL_CPU_KERNELS=0): using torch paths")
        return False
    compiler = _compiler()
    if compiler is None:
        logger.warning("CPU kernels unavailable (no C++ compiler found): using torch paths")
        return False
    try:
        path = library_path(compiler)
        if not path.exists():
            build_library(compiler, path)
        torch.ops.load_library(str(path))
        torch.ops.corral_cpu.paged_decode_attention  # noqa: B018 - raises if not registered
        torch.ops.corral_cpu.apply_token_bitmask  # noqa: B018
    except Exception as exc:  # noqa: BLE001 - any failure means: fall back to torch
        logger.warning("CPU kernels unavailable (%s): using torch paths", exc)
        return False
    return True


def load_cpu_ops() -> bool:
    """Build (if needed) and load the native CPU ops once per process; True when loaded.

    After it returns True, the ops live under `torch.ops.corral_cpu`.
    """
    global _LOADED
    if _LOADED is None:
        with _LOCK:
            if _LOADED is None:
                _LOADED = _load()
    return _LOADED
