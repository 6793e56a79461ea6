"""How fast a precision's matrix products run on this CPU against fp32's, measured beside each
bf16/fp16 run. CPU instructions alone do not say it: a 5th-generation Xeon whose VM shows
AVX512-BF16 but hides AMX ran oneDNN's bf16 GEMM at 0.54-0.59x its fp32 rate, so bf16 trained
slower than fp32 there (docs/performance.md). The report reads this figure to say so
(report/precision.py)."""

from __future__ import annotations

import functools
import time

import torch

from .machine import precision_units

LOW_PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# A 1,024² product: 2.1 GFLOP, ~7 ms in fp32 at 300 GFLOP/s; with warm-up and best of 3 in both
# precisions the check takes ~0.1 s once per process, after the run's timed work.
SIDE = 1024
REPEATS = 3


def product_seconds(dtype: torch.dtype) -> float:
    """The fastest of REPEATS SIDE² matrix products in `dtype` on the CPU (after one warm-up call,
    in which oneDNN builds its kernel). Its own generator: the run's seeded stream is untouched."""
    generator = torch.Generator().manual_seed(0)
    left, right = (torch.rand(SIDE, SIDE, generator=generator).to(dtype) for _ in range(2))
    torch.mm(left, right)
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        torch.mm(left, right)
        times.append(time.perf_counter() - start)
    return min(times)


@functools.lru_cache(maxsize=None)
def _measured_speed(precision: str, threads: int) -> float:
    return round(product_seconds(torch.float32) / product_seconds(LOW_PRECISION_DTYPES[precision]), 2)


def product_speed(precision: str, device: torch.device) -> float | None:
    """For a bf16/fp16 run on a CPU with instructions for its precision: that precision's
    matrix-product rate ÷ fp32's on this CPU at the process's thread count (above 1: faster),
    measured once per process. None where it does not apply (fp32, tf32, GPUs) and where the CPU
    has no such instructions or cannot tell: emulated products can take seconds there, and the
    report already says such runs were emulated (machine.precision_units)."""
    if precision not in LOW_PRECISION_DTYPES or not precision_units(precision, device):
        return None
    return _measured_speed(precision, torch.get_num_threads())
