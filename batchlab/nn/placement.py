"""A model on its device: memory layout and numeric precision, shared by training and inference."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """Mixed precision for the forward pass: fp32 and tf32 run as is (no autocast context at all:
    even a disabled one costs microseconds per step; tf32 is fp32 tensors whose matmuls and
    convolutions the GPU rounds, device/fp32_math.py); bf16/fp16 through torch.autocast (weights
    and optimizer stay fp32). fp16 is used without loss scaling."""
    if precision not in AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def place(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on its device, in the memory layout fastest there. On the CPU that is
    channels-last (NHWC): oneDNN's convolutions then run without reordering every activation,
    1.2-2.6x faster for seed-cnn (docs/performance.md). Only 4-d weights change layout, so other
    models are unaffected; GPUs keep PyTorch's default layout (channels-last was not measured
    there)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model
