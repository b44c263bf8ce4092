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
import sys

import torch

from .errors import MedkgeError

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


def resolve_device(name: str) -> torch.device:
    """cpu, cuda, cuda:N or auto (cuda when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MedkgeError(f"train.device: unknown device {name!r} (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedkgeError(f"train.device: {name} asked for but no CUDA device is available (use cpu or auto)")
    if device.type not in ("cpu", "cuda"):
        raise MedkgeError(f"train.device: {name!r} is not supported (cpu, cuda, cuda:N or auto)")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads != 1 else ''})"
