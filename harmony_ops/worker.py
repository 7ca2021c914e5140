"""Per-process settings for the CPU stages' workers, which handle one large image after another.

Memory: glibc returns a freed block of more than 128 KiB-32 MiB to the OS (mmap/munmap, heap trimming), so
the next image's buffers of the same size are faulted in again page by page: on a 12 MP row that
is ~90k page faults, about a quarter of the row's CPU time (BENCHMARKS.md). Keeping freed memory in
the heap for the next image removes most of them; the price is that a worker's resident memory
stays at its peak (about 0.7 GB for 12 MP rows) instead of shrinking between images.
`HARMONY_KEEP_FREED_MEMORY=0` in a worker's environment leaves glibc's defaults.

Threads: OpenCV's pool is sized to the worker's CPU share (`limit_threads`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap, not from their own mmap: every buffer of a 64 MP image.
MMAP_THRESHOLD = 512 << 20
# glibc refuses thresholds above its heap size limit on some builds: then this, its documented maximum.
MMAP_THRESHOLD_FALLBACK = 32 << 20
# Free memory at the top of the heap kept before it is returned to the OS.
TRIM_THRESHOLD = 1 << 30

_applied: dict[str, int] | None = None


def keep_freed_memory() -> dict[str, int] | None:
    """Tune glibc malloc for this process (once; later calls return the first result).

    Returns the thresholds set, or None where the C library has no mallopt (musl, macOS, Windows)
    or HARMONY_KEEP_FREED_MEMORY=0: then it changes nothing.
    """
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get("HARMONY_KEEP_FREED_MEMORY", "1").strip() == "0":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mmap = MMAP_THRESHOLD if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) else MMAP_THRESHOLD_FALLBACK
    if mmap == MMAP_THRESHOLD_FALLBACK and not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_FALLBACK):
        return None
    # Setting the trim threshold alone would switch off glibc's adaptive mmap threshold and make
    # things worse; it comes after the mmap threshold on purpose.
    if not mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        return None
    _applied = {"mmap_threshold": mmap, "trim_threshold": TRIM_THRESHOLD}
    return _applied


def limit_threads(num_cpus: float) -> int:
    """OpenCV's thread pool sized to the worker's CPU share (at least one), as the model stage sizes
    torch's: a task given a quarter of a CPU must not run a thread per core of the node."""
    import cv2

    n = max(1, math.ceil(num_cpus))
    cv2.setNumThreads(n)
    return n


def setup_cpu_worker(num_cpus: float) -> None:
    """What a CPU stage's `setup()` does once per worker process."""
    keep_freed_memory()
    limit_threads(num_cpus)
