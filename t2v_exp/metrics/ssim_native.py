"""The compiled temporal-SSIM kernel (``ssim_kernel.c``): built on first use, called through ctypes.

Plain C with no Python or torch headers, so any C compiler builds it in about a second
(``$CC``, else ``cc`` / ``gcc`` / ``clang``). The library goes to ``$T2V_EXP_CACHE/kernels``
(else ``~/.cache/t2v_exp/kernels``) under a name that hashes the source, the compiler, the flags
and this CPU, because ``-march=native`` code must not run on another CPU that shares the home
directory. Without a compiler, or when the build fails, ``load()`` says why and temporal metrics
use the torch implementation (same numbers, slower on the CPU).

ctypes releases the GIL during a call, so the callers' threads score chunks of frames in
parallel without a second OpenMP runtime in the process (torch brings its own).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("ssim_kernel.c")
FLAG_SETS = (["-O3", "-march=native"], ["-O3"])  # the second where the compiler lacks -march=native
# ISO C modes turn off FMA contraction unless asked; fused multiply-adds are most of the work.
COMMON_FLAGS = ["-fPIC", "-shared", "-std=c99", "-ffp-contract=fast"]


class NativeKernelUnavailable(RuntimeError):
    """No C compiler, or the build failed; the message says which and how to fix it."""


def kernels_dir() -> Path:
    if os.environ.get("T2V_EXP_CACHE"):
        return Path(os.environ["T2V_EXP_CACHE"]).expanduser() / "kernels"
    return Path.home() / ".cache" / "t2v_exp" / "kernels"


def _compiler() -> str | None:
    named = os.environ.get("CC")
    if named:
        return shutil.which(named)
    return next((found for name in ("cc", "gcc", "clang") if (found := shutil.which(name))), None)


def _cpu_identity() -> str:
    """The CPU model and instruction-set flags (Linux), else what platform knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(wanted))  # one copy of each line, not one per core


def _library_path(compiler: str, flags: list[str]) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), version.encode(), " ".join(flags).encode(), _cpu_identity().encode()):
        digest.update(part)
        digest.update(b"\0")
    return kernels_dir() / f"ssim_kernel-{digest.hexdigest()[:16]}.so"


def _build(compiler: str) -> Path:
    errors = []
    for flags in FLAG_SETS:
        target = _library_path(compiler, flags)
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the target and rename: concurrent first uses never load a half-written file.
        handle, scratch = tempfile.mkstemp(prefix=".ssim_kernel-", suffix=".so", dir=target.parent)
        os.close(handle)
        command = [compiler, *flags, *COMMON_FLAGS, "-o", scratch, str(SOURCE)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode == 0:
            os.replace(scratch, target)
            log.info("Built the temporal-SSIM kernel: %s", target)
            return target
        Path(scratch).unlink(missing_ok=True)
        errors.append(f"{' '.join(command)}: {result.stderr.strip()[-500:]}")
    raise NativeKernelUnavailable("building the temporal-SSIM kernel failed:\n" + "\n".join(errors))


@functools.lru_cache(maxsize=1)
def load() -> ctypes.CDLL:
    """The kernel library, built if needed; raises NativeKernelUnavailable saying why not."""
    compiler = _compiler()
    if compiler is None:
        raise NativeKernelUnavailable(
            "no C compiler found (set CC, or install one: apt install gcc); temporal metrics use the torch "
            "implementation, which gives the same numbers more slowly"
        )
    try:
        library = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeKernelUnavailable(f"the temporal-SSIM kernel could not be built or loaded ({exc})") from exc
    double_p = ctypes.POINTER(ctypes.c_double)
    shape = [ctypes.c_int] * 4
    rest = [double_p, ctypes.c_int, ctypes.c_double, ctypes.c_double, double_p]
    library.ssim_pair_sums.argtypes = [double_p, *shape, *rest]
    library.ssim_pair_sums_u8.argtypes = [ctypes.POINTER(ctypes.c_ubyte), *shape, *rest]
    library.ssim_pair_sums.restype = library.ssim_pair_sums_u8.restype = ctypes.c_int
    return library


@functools.lru_cache(maxsize=1)
def available() -> str | None:
    """None when the kernel loads, else the reason it does not (logged once)."""
    try:
        load()
    except NativeKernelUnavailable as exc:
        log.info("%s", exc)
        return str(exc)
    return None


def pair_sums(frames: np.ndarray, kernel: np.ndarray, c1: float, c2: float) -> np.ndarray:
    """float64 [3, T - 1] (see ssim_kernel.c) for frames uint8 [T, H, W, C] as decoded, or float64
    [T, C, H, W] in levels 0..255."""
    kernel = np.ascontiguousarray(kernel, dtype=np.float64)
    double_p = ctypes.POINTER(ctypes.c_double)
    if frames.dtype == np.uint8:
        frames = np.ascontiguousarray(frames)
        count, height, width, channels = frames.shape
        function, pointer = load().ssim_pair_sums_u8, frames.ctypes.data_as(ctypes.POINTER(ctypes.c_ubyte))
    else:
        frames = np.ascontiguousarray(frames, dtype=np.float64)
        count, channels, height, width = frames.shape
        function, pointer = load().ssim_pair_sums, frames.ctypes.data_as(double_p)
    out = np.zeros((3, count - 1), dtype=np.float64)
    code = function(pointer, count, channels, height, width, kernel.ctypes.data_as(double_p), kernel.size, c1, c2,
                    out.ctypes.data_as(double_p))
    if code != 0:
        raise MemoryError(f"temporal-SSIM kernel: no memory for {count} frames of {channels}x{height}x{width}")
    return out
