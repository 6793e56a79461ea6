"""Micro-batches: a batch goes through the network in slices that fit the CPU's caches.

PyTorch runs a network layer by layer over the whole batch. At large batches on a CPU the
activations of one layer no longer fit in cache, and the element-wise passes (ReLU, pooling,
their backward) become memory-bound: seed-cnn at batch 4,096 trained 1.6x and inferred 3.3x
slower per image than at batch 64 (docs/performance.md). Running the batch in slices and
accumulating the gradients before the single optimizer step keeps the activations in cache and
leaves the update that of the whole batch: the same images, one step, the mean loss over the
batch (up to floating-point summation order; dropout draws its masks per slice).

That holds for models whose output for an image does not depend on the other images of the
batch. Batch normalisation breaks it: in training it normalises with the mean and variance of the
images it is given, so a slice is normalised with its own statistics (different outputs,
gradients and update) and updates the running statistics once per slice. The automatic choice
therefore runs such models (any torch.nn batch-norm layer, e.g. torchvision's ResNets and
MobileNets) in whole batches, as plain PyTorch does. An explicit `--micro-batch N` on such a model
is honoured and is then "ghost batch normalisation" (Hoffer, Hubara and Soudry 2017, "Train
longer, generalize better"): statistics over N-image slices, while the optimizer still takes one
step per batch; the run records N (`micro_batch`), so such runs stay apart in reports. On GPUs,
which want large batches, batches run whole too. tests/test_microbatch.py checks both.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.cpus import l2_cache_bytes
from .placement import autocast

# Largest activation of one slice, in bytes, that the automatic choice aims for: 8 times one
# core's L2 cache. Measured on two 2-core AVX-512 CPUs (docs/performance.md): an AMD EPYC with 1 MB
# of L2 per core trained and inferred fastest with 5-10 MB slices of seed-cnn (64-128 images at 80
# KB per image; 1.5x and 2.5x the whole batch at 1,024-4,096), an Intel Xeon with 2 MB of L2 with
# 10-16 MB (160-256 images at 62 KB; 3-10% faster than at 8 MB). Where the cache size cannot be
# read, the EPYC's 8 MB. Other CPUs may prefer other sizes: --micro-batch sets it.
L2_MULTIPLE = 8
DEFAULT_BUDGET_BYTES = 8 * 2**20


def cache_budget_bytes() -> int:
    """Bytes of the largest activation of one slice that the automatic choice aims for on this CPU."""
    l2 = l2_cache_bytes()
    return L2_MULTIPLE * l2 if l2 else DEFAULT_BUDGET_BYTES


AUTOMATIC = 0  # the spec value that asks for the automatic choice


def has_batch_statistics(model: nn.Module) -> bool:
    """Whether the model normalises with statistics over the batch (so slicing would change it)."""
    return any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())


def largest_activation_bytes(model: nn.Module, sample: torch.Tensor, precision: str = "fp32") -> int:
    """Bytes of the largest output of any leaf module for the one-image `sample`, at the run's
    precision (under bf16/fp16 autocast the activations take half the bytes, so twice the images
    fit the budget: training at batch 256-1,024 in bf16 went from 1.38x to 1.52x fp32 with it,
    docs/performance.md). The probe runs in eval mode, so dropout draws no random numbers and
    the run's seeded stream is untouched."""
    largest = sample.numel() * sample.element_size()

    def record(_module, _inputs, output) -> None:
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel() * output.element_size())

    leaves = [module for module in model.modules() if not list(module.children())]
    handles = [module.register_forward_hook(record) for module in leaves]
    training = model.training
    try:
        with torch.no_grad(), autocast(sample.device, precision):
            model.eval()(sample)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return largest


def slice_size(requested: int, batch_size: int, model: nn.Module, sample: torch.Tensor,
               precision: str = "fp32") -> int:
    """Images per slice for this run: `requested` if given (≥ 1), else the automatic choice for
    its `precision`. The result is at most the batch size; equal to it means the batch runs whole."""
    if requested != AUTOMATIC:
        return min(requested, batch_size)
    if sample.device.type != "cpu" or has_batch_statistics(model):
        return batch_size
    per_image = largest_activation_bytes(model, sample, precision)
    return max(1, min(batch_size, cache_budget_bytes() // per_image))


def bounds(count: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) of the fewest slices of at most `size` images covering range(count), of equal
    sizes (±1): batch 64 with size 52 runs as 32 + 32, not as 52 + a slow-to-run 12."""
    pieces = -(-count // size)
    edges = [count * piece // pieces for piece in range(pieces + 1)]
    return list(zip(edges[:-1], edges[1:]))
