"""How a run's compute threads treat denormal floats."""

from __future__ import annotations

import torch


def flush_denormals() -> None:
    """Flush denormal floats (below ~1.2e-38) to zero in this process's compute threads.

    Why: each operation on a denormal costs Intel CPUs a micro-code assist. At small batches many
    weights get no gradient for hundreds of steps (a dead ReLU, a dropped unit), and their momentum
    buffers shrink by 0.9 per step into that range: on a Xeon the SGD step over seed-cnn's 551k
    parameters went from ~0.2 ms to ~2.9 ms once they got there (docs/performance.md). Flushed, they
    become 0; test accuracies were the same with and without. TensorFlow's threads flush them too.

    Only for processes batchlab owns (a run's worker process, its DDP ranks and hogwild workers):
    it changes the floating-point state of the whole process, which a program calling batchlab as
    a library keeps as it set it. torch.set_flush_denormal sets the calling thread's mode; the
    intra-op (OpenMP) threads take it from the thread that creates them, at the process's first
    parallel op, so this runs before any tensor work."""
    torch.set_flush_denormal(True)


def denormals_flushed() -> bool:
    """Whether this thread flushes denormals to zero (recorded with every run)."""
    return (torch.tensor(1e-30) * 1e-10).item() == 0.0
