"""How a run's process keeps the memory its steps free, so that the next step reuses it."""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h). Blocks up to MMAP_BYTES come from the heap, not from mmap
# (32 MiB: the largest value older glibc versions accept on 64-bit systems); the heap's free top is
# handed back to the kernel only beyond TRIM_BYTES.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_BYTES, TRIM_BYTES = 32 * 2**20, 256 * 2**20


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the blocks a step frees in the process instead of handing them back
    to the kernel; returns whether it could (False off glibc: musl, macOS, Windows).

    Why: every training step frees tensors of a few MB (seed-cnn's first weight gradient is 2 MB)
    and allocates them again. glibc serves such blocks from mmap or trims them off the heap's top
    as it goes, so some processes took ~200 fresh page faults per step, each a zeroed 4 KiB page
    from the kernel: on a 2-core Xeon those ran a batch-1 training step 15-20% slower (545-554
    against 654-704 img/s), in a pattern that changed from one process to the next. With both
    thresholds raised, 10 processes took 3-7 faults over 300 steps, one 504 (a 2 MB block's pages,
    once), against 14,524-68,957 in half of 10 without (docs/performance.md). The cost: up to TRIM_BYTES of freed
    memory stay with the process until it exits.

    Only for processes batchlab owns (a run's worker, its DDP ranks and hogwild workers), like
    threads.flush_denormals: it changes how the whole process allocates."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_BYTES)) and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_BYTES))
