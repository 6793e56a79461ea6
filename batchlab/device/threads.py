"""The compute threads of a run: how many, and how they treat denormal numbers."""

from __future__ import annotations

import torch


def use_compute_threads(count: int) -> None:
    """Run this process's PyTorch ops on `count` threads, with denormal floats flushed to zero.

    Why flush: values below ~1.2e-38 (denormals) cost Intel CPUs a micro-code assist per operation.
    At small batches many weights get no gradient for hundreds of steps (a dead ReLU, a dropped
    unit), and their momentum buffers shrink by 0.9 per step into that range: on a Xeon the SGD
    step over seed-cnn's 551k parameters went from ~0.2 ms to ~2.9 ms once they got there. Flushed,
    they become 0, which changes no trained result that fp32 can tell apart. TensorFlow runs its
    ops with denormals flushed too, and so do GPUs' fast paths.

    torch.set_flush_denormal sets the calling thread's mode only; PyTorch's intra-op threads
    (OpenMP) take it from the thread that creates them, at the process's first parallel op. So
    this runs before any tensor work of the process (each run's own process calls it first)."""
    torch.set_flush_denormal(True)
    torch.set_num_threads(count)
