"""Clocks for measured regions, and the device calls they depend on.

Work on a GPU is queued asynchronously: a host clock read without synchronising first would
measure how fast work was queued, not how fast it ran. Every region therefore synchronises the
device before each clock read. On the CPU synchronising is a no-op.
"""

from __future__ import annotations

import resource
import sys
import time

import torch


def synchronize(device: torch.device) -> None:
    """Wait until all queued work on `device` has finished (a sync point; never in the hot loop)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Region:
    """Times one region: `with Region(device) as r: ...; r.seconds`. Synchronises on entry and
    exit, so the region contains exactly the work issued inside it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> Region:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of the run: the device allocator's peak on a GPU, the process's peak resident
    set on the CPU (each run is its own process, so this is the run's peak)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB
