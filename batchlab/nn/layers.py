"""Faster drop-in versions of the layers the built-in models use, measured on the CPU.

Each subclasses its torch.nn layer (same parameters, same state-dict names, same results up to
floating-point rounding) and changes only how the work is done. The built-in models are made of
them; torchvision's and user models get Conv2d in place of their plain nn.Conv2d layers
(with_fast_convolutions). docs/performance.md has the measurements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.cpus import cpu_vendor
from .dense import dense_convolution, product_count

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


def _differentiable_product(inputs: torch.Tensor, weight: torch.Tensor, bias: None) -> torch.Tensor:
    """_product by torch's own matrix product, which autograd can differentiate again."""
    return inputs @ weight.t()


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
        # Grad mode is on here only for a backward that builds a graph (create_graph: a gradient
        # penalty, say): oneDNN's op has no derivative of its own, so the products are made by
        # differentiable ones then; a second-order gradient through _product would be silently zero.
        product = _differentiable_product if torch.is_grad_enabled() else _product
        grad_inputs = product(grad, weight.t(), None) if ctx.needs_input_grad[0] else None
        grad_weight = product(grad.t(), inputs.t(), None) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_inputs, grad_weight, grad_bias


class Linear(nn.Linear):
    """nn.Linear whose fp32 CPU products run on oneDNN (the library of PyTorch's convolutions)
    instead of MKL on CPUs not made by Intel (ONEDNN_LINEAR): 2.2x faster for seed-cnn's 1024→500
    layer at 102 rows on an AMD CPU, where MKL takes a slower path; elsewhere (Intel CPUs, GPU,
    autocast, one row, no input features) it is nn.Linear. Not on the oneDNN path: forward-mode
    gradients (torch.func.jvp), which raise there."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if (not ONEDNN_LINEAR or inputs.device.type != "cpu" or inputs.dtype != torch.float32
                or inputs.dim() != 2 or len(inputs) < ONEDNN_MIN_ROWS or self.in_features == 0
                or torch.is_autocast_enabled("cpu")):
            return F.linear(inputs, self.weight, self.bias)
        return _OneDNNLinear.apply(inputs, self.weight, self.bias)


# PyTorch's own im2col convolution ("thnn": each image unfolded into a matrix, then one matrix
# product), which it runs when oneDNN is off; absent in builds without it.
_im2col_convolution = getattr(torch._C._nn, "thnn_conv2d", None)

# Largest convolution call, in output positions (images × output rows × output columns), that runs
# as im2col: below it oneDNN's fixed cost per call dominates. Measured forward + backward on a 2-core
# Xeon (5th generation), channels-last, oneDNN against im2col (µs): seed-cnn's conv2 at 64 positions
# (1 image) 345 vs 154, 256 (4) 479 vs 361, 512 (8) 663 vs 643, 1,024 (16) 1,033 vs 1,210; its
# conv1 at 484 (1) 160 vs 85, 968 (2) 180 vs 134, 1,936 (4) 199 vs 230; a 3×3 conv 32→64 at 576
# (1) 404 vs 399, 1,152 (2) 569 vs 783; a 4×4 conv 3→32 at 676 (1) 226 vs 146, 1,352 (2) 274 vs 192.
IM2COL_MAX_POSITIONS = 1000
# Without a backward (inference, evaluation) the gain is smaller, and the unfolded matrix (positions
# × input channels × kernel rows × columns) bounds it too: seed-cnn's conv2 at 4 images (131k
# elements) made inference 5% slower, at 2 images (65k) together with conv1 30% faster.
IM2COL_MAX_UNFOLDED_FORWARD = 2**16
# Nor does im2col gain for wide convolutions: ResNet-18's 3×3 convolutions of 64 and more channels
# (unfolded rows of 576 values and more) trained slower with it at every batch measured, 128→128 on
# 4×4 at 32 images 2.8 vs 1.8 ms; seed-cnn's conv2 (32 channels × 4×4: 512) is the widest that gained.
IM2COL_MAX_UNFOLDED_ROW = 512


# Which convolutions run on the dense path (dense.py): those of at most DENSE_MAX_PRODUCTS matrix
# products (runs), at every batch when one product does it and from DENSE_MIN_BATCH images when more
# do. Measured forward + backward on a 2-core Xeon (5th generation), channels-last, oneDNN against
# the dense path (µs): 512→512 on 1×1 (1 product) at 1 image 1,489 vs 803, at 32 6,798 vs 1,083;
# 256→512 on 2×2 at stride 2 (2) at 1 664 vs 802, at 32 5,130 vs 1,054; 256→256 on 2×2 (8) at 1
# 340 vs 698, at 2 4,132 vs 1,001, at 32 5,766 vs 2,676; 128→256 on 4×4 at stride 2 (10) at 4 1,383
# vs 1,164, at 32 3,182 vs 2,275; but 128→128 on 4×4 (40) at 32 2,844 vs 4,687 and 64→128 on 8×8 at
# stride 2 (44) 2,167 vs 3,697 (docs/performance.md).
DENSE_MAX_PRODUCTS = 10
DENSE_MIN_BATCH = 2
# The runs are worked out in Python once per shape: only for maps this small.
DENSE_MAX_MAP = 64


def output_size(height: int, width: int, conv: nn.Conv2d) -> tuple[int, int]:
    """Output rows and columns of `conv` over a height × width map (zero padding, no dilation)."""
    (kernel_h, kernel_w), (stride_h, stride_w), (pad_h, pad_w) = conv.kernel_size, conv.stride, conv.padding
    return (height + 2 * pad_h - kernel_h) // stride_h + 1, (width + 2 * pad_w - kernel_w) // stride_w + 1


def output_positions(inputs: torch.Tensor, conv: nn.Conv2d) -> int:
    """Images × output rows × output columns of `conv` on a 4-d batch (zero padding, no dilation)."""
    out_h, out_w = output_size(*inputs.shape[-2:], conv)
    return len(inputs) * out_h * out_w


class Conv2d(nn.Conv2d):
    """nn.Conv2d whose fp32 CPU calls over maps about as small as the kernel run as a few matrix
    products (dense_convolution, DENSE_MAX_PRODUCTS), and whose other small calls run as PyTorch's im2col convolution instead of
    oneDNN's, whose fixed cost per call is most of such a call (IM2COL_MAX_POSITIONS: seed-cnn's
    conv1 at 1-2 images, its conv2 at up to 15). Measured in whole steps, alternating, on a 2-core
    Xeon: seed-cnn trained 1.25x as fast at batch 1 and 2, 1.07x at 4, and inferred 1.46x at batch
    1, 1.30x at 2; keras-cnn trained 1.09x at batch 1; larger batches unchanged (docs/performance.md).
    Larger calls, other devices, autocast, and dilated, grouped, string-padded or non-zero-padded
    convolutions are nn.Conv2d. Forward-mode gradients (torch.func.jvp) raise on the im2col path
    (PyTorch's op has no forward derivative) and on the dense one."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if (inputs.device.type != "cpu" or inputs.dtype != torch.float32 or inputs.dim() != 4
                or torch.is_autocast_enabled("cpu") or not self._is_plain()):
            return super().forward(inputs)
        if self._is_dense(inputs):
            return dense_convolution(inputs, self.weight, self.bias, self.stride, self.padding)
        if _im2col_convolution is None or not self._small_enough(inputs):
            return super().forward(inputs)
        layout = memory_format_of(self.weight)
        if layout is None:
            return super().forward(inputs)
        # thnn_conv2d's backward returns a wrong weight gradient (off by more than the gradient itself)
        # when its input is not contiguous in the weight's memory format: seed-cnn's cropped input, or
        # NCHW images into a channels-last layer (PyTorch 2.13; tests/test_layers.py). torch's own
        # convolution makes its input contiguous before it calls this op; so must a direct call. The
        # copy costs a few µs at the sizes that take this path.
        inputs = inputs.contiguous(memory_format=layout)
        return _im2col_convolution(inputs, self.weight, self.kernel_size, self.bias, self.stride, self.padding)

    def _is_dense(self, inputs: torch.Tensor) -> bool:
        height, width = inputs.shape[-2:]
        out_h, out_w = output_size(height, width, self)
        if out_h < 1 or out_w < 1:
            return False  # a map smaller than the kernel: torch's convolution says so, naming the sizes
        if out_h * out_w > DENSE_MAX_PRODUCTS or height * width > DENSE_MAX_MAP:
            return False  # at least one product per output position; the runs of small maps only
        products = product_count(height, width, self.kernel_size, self.stride, self.padding)
        return products == 1 or (products <= DENSE_MAX_PRODUCTS and len(inputs) >= DENSE_MIN_BATCH)

    def _small_enough(self, inputs: torch.Tensor) -> bool:
        kernel_h, kernel_w = self.kernel_size
        if self.in_channels * kernel_h * kernel_w > IM2COL_MAX_UNFOLDED_ROW:
            return False
        positions = output_positions(inputs, self)
        if positions > IM2COL_MAX_POSITIONS:
            return False
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return True  # training, where the backward gains most
        return positions * self.in_channels * kernel_h * kernel_w <= IM2COL_MAX_UNFOLDED_FORWARD

    def _is_plain(self) -> bool:
        # Negative padding goes to torch's convolution too, which refuses it (the paths here would crop).
        return (self.groups == 1 and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and all(step == 1 for step in self.dilation) and min(self.padding) >= 0)


def with_fast_convolutions(model: nn.Module) -> nn.Module:
    """`model` with its nn.Conv2d layers made Conv2d (in place: parameters, hooks and state-dict names
    stay). Only layers of the class itself: a subclass may have its own forward."""
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = Conv2d
    return model


def memory_format_of(weight: torch.Tensor) -> torch.memory_format | None:
    """The layout a 4-d weight is contiguous in: NCHW where both fit with one input channel (its
    input then fits both too), channels-last, or None for neither, and for 1×1 kernels over several
    channels: those fit both, PyTorch's im2col reads their layout from the strides instead, and an
    input in the other layout got a wrong weight gradient (tests/test_layers.py)."""
    nchw, channels_last = weight.is_contiguous(), weight.is_contiguous(memory_format=torch.channels_last)
    if nchw and channels_last:
        return torch.contiguous_format if weight.shape[1] == 1 else None
    return torch.contiguous_format if nchw else torch.channels_last if channels_last else None


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
                or not inputs.is_floating_point() or inputs.numel() < FAST_POOL_MIN_ELEMENTS
                or min(inputs.shape[-2:]) < 2 or not self._is_plain_2x2()):
            return super().forward(inputs)  # which refuses maps smaller than the window, and bools
        height, width = inputs.shape[-2:]
        inputs = inputs[..., :height - height % 2, :width - width % 2]  # pooling floors odd sizes
        rows = torch.maximum(inputs[..., 0::2, :], inputs[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])

    def _is_plain_2x2(self) -> bool:
        return (self.kernel_size in (2, (2, 2)) and self.stride in (2, (2, 2)) and self.padding in (0, (0, 0))
                and self.dilation in (1, (1, 1)) and not self.ceil_mode and not self.return_indices)


# 16-bit draws for a dropout mask: four from each full-range 64-bit random integer.
DRAW_LEVELS = 2**16
INT16_LOWEST = -(2**15)
INT64_LOWEST = torch.iinfo(torch.int64).min
# Smallest mask drawn that way: below it the extra small ops cost more than the draws saved
# (seed-cnn training at batch 1, masks of 1,024 and 500: 5% slower; keras-cnn at 1, 9,216: equal;
# at 4, 36,864: 3% faster).
KEEP_MASK_MIN_ELEMENTS = 2**15


def keep_mask(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """A CPU mask of `shape` that keeps each element with probability 1 - p', and p' (p rounded to a
    multiple of 2^-16, at most 1 - 2^-16: p < 1 keeps some). Each element compares one 16-bit
    quarter of a 64-bit random integer, so PyTorch's serial generator makes a quarter of the draws
    torch.rand would. `random_` over the whole int64 range (from its lowest value, no upper bound)
    fills all 64 bits; without that lower bound it leaves the sign bit 0, and the top quarters
    would be biased."""
    count = shape.numel()
    dropped = min(round(p * DRAW_LEVELS), DRAW_LEVELS - 1)  # of the 65,536 equally likely values
    draws = torch.empty((count + 3) // 4, dtype=torch.int64).random_(INT64_LOWEST, None)
    keep = draws.view(torch.int16)[:count].view(shape) >= INT16_LOWEST + dropped
    return keep, dropped / DRAW_LEVELS


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper mask: each element kept with probability 1 - p, scaled by 1 / (1 - p)
    as torch's. On the CPU from KEEP_MASK_MIN_ELEMENTS on, p is resolved to 2^-16 (keep_mask: 16-bit
    draws, 3.2x faster than torch.rand for keras-cnn's 85 × 9,216 mask, which had taken 8% of its
    training step; whole steps A/B: keras-cnn 1.05-1.09x at batch 64-1,024, seed-cnn 1.02-1.03x
    at 64-1,024); p' = p exactly for p = 0.5 and 0.25, and the scale uses p', so the expected output
    equals the input. Otherwise float32 draws ≥ p (p to 2^-24; 4x faster than bernoulli_, which
    had taken 12% of a seed-cnn step)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return inputs
        if self.p == 1:
            return inputs.mul_(0.0) if self.inplace else inputs * 0.0  # all dropped (NaN stays NaN, as torch's)
        if inputs.device.type == "cpu" and inputs.numel() >= KEEP_MASK_MIN_ELEMENTS:
            keep, p = keep_mask(inputs.shape, self.p)
        else:  # float32 draws even under bf16 autocast, so p is honoured to 2^-24, not to 2^-8.
            keep, p = torch.rand(inputs.shape, device=inputs.device) >= self.p, self.p
        mask = keep.to(inputs.dtype).mul_(1 / (1 - p))
        return inputs.mul_(mask) if self.inplace else inputs * mask


# Each drop-in layer's torch.nn parent, whose forward gives the same results: what a graph
# compiler is given instead (infer/cpu_graph.py), since the faster eager paths above call ops
# it does not fuse.
TORCH_NN_PARENTS: dict[type[nn.Module], type[nn.Module]] = {
    Linear: nn.Linear, Conv2d: nn.Conv2d, MaxPool2d: nn.MaxPool2d, Dropout: nn.Dropout,
}
