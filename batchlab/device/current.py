"""The CUDA device a run's process works on."""

from __future__ import annotations

import torch


def make_current(device: torch.device) -> None:
    """Make a CUDA `device` this process's current one, as streams, pinned-memory copies and
    NCCL expect. "cuda" without an index already names the current device, and
    torch.cuda.set_device refuses it (ValueError: no index), so only cuda:N is set."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
