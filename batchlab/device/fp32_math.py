"""What fp32 arithmetic means on an NVIDIA GPU: IEEE single precision, or TF32 on tensor cores.

From Ampere (compute capability 8.0) on, cuDNN convolutions in fp32 run as TF32 by PyTorch's
default: inputs rounded to a 10-bit mantissa, faster, but not fp32. A run's precision says which
it gets, so that an "fp32" run is fp32: `tf32` asks for TF32 in matmuls and convolutions, every
other precision for IEEE (under bf16/fp16 autocast that covers what still runs in fp32).
"""

from __future__ import annotations

import torch

from ..core.errors import SpecError

TF32_CAPABILITY = (8, 0)  # Ampere: the first GPUs whose tensor cores run TF32


def fp32_math(precision: str) -> str:
    """How a run of `precision` computes fp32 matmuls and convolutions on a CUDA GPU, in
    PyTorch's words (torch.backends' fp32_precision): "tf32" or "ieee"."""
    return "tf32" if precision == "tf32" else "ieee"


def tf32_problem(capability: tuple[int, int], device_name: str) -> str | None:
    """None if a GPU of compute `capability` runs TF32, else the one-line reason it cannot."""
    if tuple(capability) >= TF32_CAPABILITY:
        return None
    return (f"tf32 needs an NVIDIA GPU of compute capability 8.0 or newer (Ampere); {device_name} has "
            f"{capability[0]}.{capability[1]}")


def cuda_precision_problem(precision: str, device: str | torch.device) -> str | None:
    """For a run of `precision` on the CUDA device `device` (present here), the reason it cannot
    run, or None. Devices that are not CUDA are judged by the spec's own check."""
    if precision != "tf32":
        return None
    properties = torch.cuda.get_device_properties(device)
    return tf32_problem((properties.major, properties.minor), f"{device} ({properties.name})")


def set_cuda_fp32_math(precision: str, device: torch.device) -> str:
    """Make this process's fp32 matmuls (cuBLAS) and cuDNN convolutions on CUDA what `precision`
    says, before the run's first op; returns the mode set, for the run's record. The settings
    are process-wide, so every process of a run (each DDP rank) calls this for itself. Only
    PyTorch's fp32_precision settings are used: reading the older allow_tf32 flags after them
    raises in torch 2.13 once conv and RNN settings differ."""
    problem = cuda_precision_problem(precision, device)
    if problem:
        raise SpecError(problem)
    mode = fp32_math(precision)
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode
    return mode
