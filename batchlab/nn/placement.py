"""A model on its device: memory layout and numeric precision, shared by training and inference."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str, cache: bool = True):
    """Mixed precision for the forward pass: fp32 and tf32 run as is (no autocast context at all:
    even a disabled one costs microseconds per step; tf32 is fp32 tensors whose matmuls and
    convolutions the GPU rounds, device/fp32_math.py); bf16/fp16 through torch.autocast (weights
    and optimizer stay fp32). fp16 is used without loss scaling. `cache=False` for a CUDA graph's
    capture: autocast's cache of low-precision weight copies lives only as long as the context,
    so a graph must capture the casts themselves (torch.cuda.make_graphed_callables refuses
    otherwise)."""
    if precision not in AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision], cache_enabled=cache)


# Precisions whose convolutions run on a CUDA GPU's tensor cores, which cuDNN implements natively
# in NHWC: in the default NCHW layout each convolution adds transposes around its kernels.
TENSOR_CORE_PRECISIONS = ("bf16", "fp16", "tf32")


def memory_format_for(device_type: str, precision: str) -> torch.memory_format:
    """The memory layout a run's model takes on its device. On the CPU channels-last (NHWC):
    oneDNN's convolutions then run without reordering every activation, 1.2-2.6x faster for
    seed-cnn (docs/performance.md). On a CUDA GPU channels-last for the tensor-core precisions,
    whose cuDNN convolutions work in NHWC (not measured here: no GPU); fp32 keeps PyTorch's
    default layout there (unmeasured too), as does any other device."""
    if device_type == "cpu" or (device_type == "cuda" and precision in TENSOR_CORE_PRECISIONS):
        return torch.channels_last
    return torch.contiguous_format


def place(model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """The model on its device, in the memory layout chosen for the device and the run's
    precision (memory_format_for). Only 4-d weights change layout, so other models are
    unaffected."""
    model = model.to(device)
    layout = memory_format_for(device.type, precision)
    return model if layout == torch.contiguous_format else model.to(memory_format=layout)
