"""Convolutions over maps about as small as their kernel, as matrix products over views of the weight.

Over such maps (the last stages of ImageNet-style networks on 32×32 images: ResNet-18's 1×1 and 2×2
maps under 3×3 kernels, and its 4×4 map under the stride-2 one) each output position is a dense
layer over the input positions its kernel covers, whose weights are the kernel's taps. oneDNN runs
these calls at a fraction of its usual rate and multiplies the taps that see only padding too
(layers.DENSE_MAX_PRODUCTS has the figures).

In a channels-last batch an image's positions lie side by side, and so do a channels-last weight's
taps: wherever consecutive input positions meet consecutive taps (a "run"), the product is one
matrix product of a column slice of the images and a column slice of the weight, both views. No tap
that sees only padding is multiplied and nothing is copied; the backward writes the weight's
gradient run by run into one buffer. Laying the taps out with index_select instead (the first
version) copied them at every call, most of the call at small batches: 512→512 on 1×1 at 1 image
136 µs against 39 µs with views, oneDNN's convolution 230 µs (inference; forward + backward 2,834,
803 and 1,489 µs).

The backward is first-order only (batchlab trains on plain gradients): a gradient of a gradient
(`create_graph=True`) or a torch.func transform through this path raises instead of computing one.
"""

from __future__ import annotations

import functools

import torch

# (first input position, first tap, length) for each run of one output position.
Run = tuple[int, int, int]


@functools.lru_cache(maxsize=64)
def tap_runs(height: int, width: int, kernel: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int]) -> tuple[tuple[tuple[Run, ...], ...], int, int]:
    """For each output position (row-major), its runs: input positions (row-major) p..p+n-1 joined to
    kernel taps (row × kernel columns + column) t..t+n-1; and the output's rows and columns."""
    (kernel_h, kernel_w), (stride_h, stride_w), (pad_h, pad_w) = kernel, stride, padding
    out_h, out_w = (height + 2 * pad_h - kernel_h) // stride_h + 1, (width + 2 * pad_w - kernel_w) // stride_w + 1
    positions = []
    for out_row in range(out_h):
        for out_col in range(out_w):
            runs: list[list[int]] = []
            for position in range(height * width):
                tap_row = position // width - out_row * stride_h + pad_h
                tap_col = position % width - out_col * stride_w + pad_w
                if not (0 <= tap_row < kernel_h and 0 <= tap_col < kernel_w):
                    continue  # this input position meets only the padding: no product
                tap = tap_row * kernel_w + tap_col
                last = runs[-1] if runs else None
                if last and last[0] + last[2] == position and last[1] + last[2] == tap:
                    last[2] += 1
                else:
                    runs.append([position, tap, 1])
            positions.append(tuple(tuple(run) for run in runs))
    return tuple(positions), out_h, out_w


def product_count(height: int, width: int, kernel: tuple[int, int], stride: tuple[int, int],
                  padding: tuple[int, int]) -> int:
    """How many matrix products dense_convolution makes over such a map: its runs."""
    return sum(len(runs) for runs in tap_runs(height, width, kernel, stride, padding)[0])


def run_columns(run: Run, channels: int) -> tuple[slice, slice]:
    """The run's columns in the flattened images and in the weight's rows."""
    first, tap, length = run
    return slice(first * channels, (first + length) * channels), slice(tap * channels, (tap + length) * channels)


def run_products(flat: torch.Tensor, weight_rows: torch.Tensor, runs, channels: int) -> torch.Tensor:
    """(images, positions × channels) and (out channels, taps × channels) → (images, output positions,
    out channels), one matrix product per run."""
    out = flat.new_empty(len(flat), len(runs), len(weight_rows))
    for position, position_runs in enumerate(runs):
        target = out[:, position]  # a strided view the products write into
        if not position_runs:
            target.zero_()
        for index, run in enumerate(position_runs):
            columns, taps = run_columns(run, channels)
            # beta 0 ignores the empty memory's contents (even NaN) on the first run
            target.addmm_(flat[:, columns], weight_rows[:, taps].t(), beta=0 if index == 0 else 1)
    return out


class _RunProducts(torch.autograd.Function):
    """run_products with its backward, which makes both gradients by the same runs."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, weight_rows: torch.Tensor, runs, channels: int) -> torch.Tensor:
        ctx.save_for_backward(flat, weight_rows)
        ctx.runs, ctx.channels = runs, channels
        return run_products(flat, weight_rows, runs, channels)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        flat, weight_rows = ctx.saved_tensors
        grad, channels = grad.contiguous(), ctx.channels
        grad_flat = torch.zeros_like(flat) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight_rows) if ctx.needs_input_grad[1] else None
        for position, position_runs in enumerate(ctx.runs):
            grad_here = grad[:, position]
            for run in position_runs:
                columns, taps = run_columns(run, channels)
                if grad_flat is not None:
                    grad_flat[:, columns].addmm_(grad_here, weight_rows[:, taps])
                if grad_weight is not None:
                    grad_weight[:, taps].addmm_(grad_here.t(), flat[:, columns])
        return grad_flat, grad_weight, None, None


def dense_convolution(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """F.conv2d(inputs, weight, bias, stride, padding) (zero padding, no dilation, one group) by the
    runs of tap_runs. The result is channels-last if the input or the weight is, else NCHW, as
    torch's; inputs and weight not in channels-last are copied to it first (autograd carries the
    copies' gradients)."""
    batch, in_channels, height, width = inputs.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    runs, out_h, out_w = tap_runs(height, width, (kernel_h, kernel_w), stride, padding)
    flat = inputs.permute(0, 2, 3, 1).reshape(batch, height * width * in_channels)  # a view if channels-last
    weight_rows = weight.permute(0, 2, 3, 1).reshape(out_channels, kernel_h * kernel_w * in_channels)  # likewise
    if torch.is_grad_enabled() and (flat.requires_grad or weight_rows.requires_grad):
        out = _RunProducts.apply(flat, weight_rows, runs, in_channels)
    else:  # inference: no autograd node to make (~7 µs a call)
        out = run_products(flat, weight_rows, runs, in_channels)
    if bias is not None:
        out = out + bias
    out = out.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)
    # torch's convolution returns channels-last when the input or the weight is in it, and NCHW
    # otherwise: a model that views its output as (images, -1) expects that.
    return out if any(_strictly_channels_last(tensor) for tensor in (inputs, weight)) else out.contiguous()


def _strictly_channels_last(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()
