"""Faster drop-in versions of the layers the built-in models use, measured on the CPU.

Each subclasses its torch.nn layer (same parameters, same state-dict names, same results up to
floating-point rounding) and changes only how the work is done. User models are not touched.
docs/performance.md has the measurements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.cpus import cpu_vendor

# oneDNN's matrix product, as PyTorch's own compiler (inductor) calls it on CPUs; absent in
# builds without oneDNN, where Linear falls back to torch.nn.Linear.
_onednn_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def uses_onednn_linear(vendor: str | None) -> bool:
    """Whether the fp32 linear layers multiply on oneDNN on a CPU of this `vendor`. MKL, PyTorch's
    default for these products, is Intel's library and was the slower one on an AMD EPYC, where
    oneDNN ran seed-cnn's 1024→500 layer 2.2x faster at 102 rows. On an Intel Xeon (5th generation,
    AVX-512) MKL was as fast or faster at every batch, measured side by side: training at batch 2
    805 vs 672 img/s, 4: 1,690 vs 1,462, 8: 2,854 vs 2,485, 16-1,024: 1.00-1.09x; inference at
    batch 4 1.38x, 16-4,096 0.96-1.03x (docs/performance.md)."""
    return _onednn_linear is not None and vendor != "GenuineIntel"


ONEDNN_LINEAR = uses_onednn_linear(cpu_vendor())

# With a single row (batch 1) MKL's matrix-vector products made the training step faster than
# oneDNN's (1.01 vs 1.07 ms); from 2 rows on oneDNN's did (batch 4: 1.74 vs 2.09 ms).
ONEDNN_MIN_ROWS = 2


def _product(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """inputs @ weight.T (+ bias) by oneDNN."""
    return _onednn_linear(inputs, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """A linear layer whose forward and both backward products run on oneDNN."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(inputs, weight)
        ctx.has_bias = bias is not None
        return _product(inputs, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inputs, weight = ctx.saved_tensors
        grad_inputs = _product(grad, weight.t(), None) if ctx.needs_input_grad[0] else None
        grad_weight = _product(grad.t(), inputs.t(), None) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_inputs, grad_weight, grad_bias


class Linear(nn.Linear):
    """nn.Linear whose fp32 CPU products run on oneDNN (the library of PyTorch's convolutions)
    instead of MKL on CPUs not made by Intel (ONEDNN_LINEAR): 2.2x faster for seed-cnn's 1024→500
    layer at 102 rows on an AMD CPU, where MKL takes a slower path; elsewhere (Intel CPUs, GPU,
    autocast, one row) it is nn.Linear."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if (not ONEDNN_LINEAR or inputs.device.type != "cpu" or inputs.dtype != torch.float32
                or inputs.dim() != 2 or len(inputs) < ONEDNN_MIN_ROWS or torch.is_autocast_enabled("cpu")):
            return F.linear(inputs, self.weight, self.bias)
        return _OneDNNLinear.apply(inputs, self.weight, self.bias)


# Smallest input for MaxPool2d's two-maxima path: 8.5 images of seed-cnn's first activation (32×22×22)
# (at 4 images it was 3% slower, at 16 4% faster).
FAST_POOL_MIN_ELEMENTS = 2**17


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d that, for 2×2 windows at stride 2 when no gradient is needed (inference,
    evaluation), takes two element-wise maxima over strided views instead: the same values, 2.5x
    faster on the CPU for 104 images of 32×25×25, because PyTorch's pooling also
    writes an int64 index per output (inference 7-15% faster at batch 64 and 4,096). Training
    keeps nn.MaxPool2d, whose backward routes each gradient to one index (torch.maximum would
    split it between tied elements, and background pixels tie); so do small inputs, where the
    extra ops cost more than they save (batch 1: 3-8% slower), and GPUs, where it was not measured."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if ((torch.is_grad_enabled() and inputs.requires_grad) or inputs.device.type != "cpu" or inputs.dim() != 4
                or inputs.numel() < FAST_POOL_MIN_ELEMENTS or not self._is_plain_2x2()):
            return super().forward(inputs)
        height, width = inputs.shape[-2:]
        inputs = inputs[..., :height - height % 2, :width - width % 2]  # pooling floors odd sizes
        rows = torch.maximum(inputs[..., 0::2, :], inputs[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])

    def _is_plain_2x2(self) -> bool:
        return (self.kernel_size in (2, (2, 2)) and self.stride in (2, (2, 2)) and self.padding in (0, (0, 0))
                and self.dilation in (1, (1, 1)) and not self.ceil_mode and not self.return_indices)


class Dropout(nn.Dropout):
    """nn.Dropout with its mask drawn as uniform floats ≥ p instead of by bernoulli_: the same
    distribution (each element kept with probability 1 - p, scaled by 1 / (1 - p)), 4x faster on
    the CPU, where bernoulli_ took 12% of a seed-cnn training step."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return inputs
        if self.p == 1:
            return inputs * 0.0  # everything dropped (and no division by zero)
        # float32 draws even under bf16 autocast, so p is honoured to 2^-24, not to 2^-8.
        keep = torch.rand(inputs.shape, device=inputs.device) >= self.p
        return inputs * keep.to(inputs.dtype).mul_(1 / (1 - self.p))
