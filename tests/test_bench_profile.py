"""bench/profile_step.py's accounting, which docs/performance.md's floors rest on: the FLOPs it
counts from the shapes layers meet, and the part of the step each profiled op is charged to."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))

import profile_step  # noqa: E402

from batchlab.nn import dense, models  # noqa: E402


def test_seed_cnn_flops_are_those_of_its_cropped_input():
    """seed-cnn meets a 25×25 crop: conv1 4×4×1 → 22×22×32, conv2 4×4×32 → 8×8×64, fc 1024 → 500 → 10.
    The first convolution's input (the images) needs no gradient, so its backward is half the others'."""
    flops = profile_step.counted_flops(models.build("seed-cnn"), torch.randn(1, 1, 28, 28))
    conv1, conv2 = 2 * 22 * 22 * 32 * 16, 2 * 8 * 8 * 64 * 512
    assert flops["convolutions"] == (conv1 + conv2, conv1 + 2 * conv2)
    linear = 2 * (1024 * 500 + 500 * 10)
    assert flops["linear layers"] == (linear, 2 * linear)


def test_cifar_peer_is_bench_images_network_and_counts_flops_of_its_shape():
    """--cifar profiles seed-cnn on 3×32×32 (a 29×29 crop) against bench/images.py's plain network."""
    plain = profile_step.plain_network("seed-cnn", cifar=True)
    assert plain(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    flops = profile_step.counted_flops(models.build("seed-cnn", input_shape=(3, 32, 32)), torch.randn(1, 3, 32, 32))
    conv1, conv2 = 2 * 26 * 26 * 32 * 48, 2 * 10 * 10 * 64 * 512
    assert flops["convolutions"][0] == conv1 + conv2


def test_flop_count_leaves_the_model_in_its_mode():
    model = models.build("keras-cnn")
    profile_step.counted_flops(model, torch.randn(1, 1, 28, 28))
    assert model.training
    profile_step.counted_flops(model.eval(), torch.randn(1, 1, 28, 28))
    assert not model.training


@pytest.mark.parametrize("grad", [True, False])
def test_dense_convolution_products_count_as_convolutions(grad, monkeypatch):
    """nn/dense.py multiplies with addmm_, which alone would count as a linear layer."""
    monkeypatch.setattr(dense, "run_products", dense.run_products)  # undone after the test
    profile_step.label_dense_products()
    inputs = torch.randn(4, 8, 2, 2, requires_grad=grad).to(memory_format=torch.channels_last)
    weight = torch.randn(16, 8, 2, 2, requires_grad=grad)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = dense.dense_convolution(inputs, weight, None, (1, 1), (0, 0))
        if grad:
            out.sum().backward()
    products = [event for event in prof.events() if event.name == "aten::addmm_"]
    assert products and {profile_step.part_of(event) for event in products} == {"convolutions"}


def test_matrix_products_outside_convolutions_count_as_linear_layers():
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.nn.functional.linear(torch.randn(4, 8), torch.randn(3, 8), torch.randn(3))
    parts = {profile_step.part_of(event) for event in prof.events() if event.name == "aten::addmm"}
    assert parts == {"linear layers"}
