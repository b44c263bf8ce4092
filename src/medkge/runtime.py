"""Process-level settings: device choice, CPU threads and glibc's allocator.

glibc returns every freed block above its mmap threshold (at most 32 MiB) to the kernel, so each large
per-batch tensor is paid for again in page faults; PyTorch's CPU allocator does not cache. Telling glibc
to keep freed memory (``mallopt``) made a RotatE training step 2-3x faster on the 2-core machines this
project is measured on (benchmarks/README.md). The cost: the process keeps its peak memory until it exits.
Training turns it on unless ``train.tune_malloc`` is false.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import warnings
from pathlib import Path

import torch

from .errors import MedkgeError, MedkgeWarning

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_tuned = False


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of unmapping it; False where that is not glibc."""
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # -1 is SIZE_MAX once glibc casts it: never give the top of the heap back
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1
    except (OSError, AttributeError):
        return False
    _tuned = ok
    return ok


def flush_denormals() -> bool:
    """Flush subnormal floats to zero (FTZ/DAZ) on the CPU, on this thread and on torch's OpenMP workers.

    Scores of some sub-models saturate in training (a distance of ~90 past the margin), and their
    sigmoid, softplus and softmax weights then fall below float32's normal range; arithmetic on such
    subnormal numbers is many times slower on x86 (MED's objective at scores near -90 took 480 ms
    against 80 ms; benchmarks/scale.py measures it). Values that small (below 1.2e-38) change nothing in
    training. The setting is per thread and OpenMP's workers do not inherit it, so it is set on each of
    them inside one parallel region (libgomp's GOMP_parallel, the entry point of ``#pragma omp parallel``).
    Call it after the thread count is set: threads made later start without it.
    Returns whether the workers were reached (False: only this thread, or no FTZ on this CPU).
    """
    if not torch.set_flush_denormal(True):
        return False
    global _denormal_callback
    libgomp = _loaded_library("libgomp")
    if libgomp is None or torch.get_num_threads() == 1:
        return torch.get_num_threads() == 1
    try:
        gomp = ctypes.CDLL(libgomp)
        callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
        _denormal_callback = callback(lambda _: torch.set_flush_denormal(True))  # kept alive
        gomp.GOMP_parallel.argtypes = [callback, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        gomp.GOMP_parallel(_denormal_callback, None, torch.get_num_threads(), 0)
    except (OSError, AttributeError):
        return False
    return True


_denormal_callback = None


def _loaded_library(stem: str) -> str | None:
    """The path of a shared library this process has loaded whose name starts with ``stem`` (Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split()[-1] if line.split() else ""
        if "/" in path and Path(path).name.startswith(stem) and ".so" in path:
            return path
    return None


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """cpu, cuda, cuda:N or auto (cuda when available); ``option`` names the setting in error messages."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MedkgeError(f"{option}: unknown device {name[:80]!r} (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedkgeError(f"{option}: {name} asked for but no CUDA device is available (use cpu or auto)")
    if device.type not in ("cpu", "cuda"):
        raise MedkgeError(f"{option}: {name!r} is not supported (cpu, cuda, cuda:N or auto)")
    return device


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int) -> int:
    """Set torch's CPU threads, at most one per core present (OpenMP crashed asked for 100,000); returns
    the number set."""
    present = cores()
    if threads > present:
        warnings.warn(
            f"train.threads {threads:,} is more than the {present} CPU cores here: using {present}",
            MedkgeWarning,
            stacklevel=2,
        )
        threads = present
    torch.set_num_threads(threads)
    return threads


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads != 1 else ''})"
