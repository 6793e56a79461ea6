"""Micro-batches: slicing a batch changes neither the update nor what a step reports."""

import copy

import pytest
import torch

from batchlab.nn import microbatch, models
from batchlab.nn.placement import place
from batchlab.train.engine import make_optimizer, train_step


def test_slices_are_few_and_even():
    assert microbatch.bounds(64, 52) == [(0, 32), (32, 64)]
    assert microbatch.bounds(10, 10) == [(0, 10)]
    assert microbatch.bounds(7, 3) == [(0, 2), (2, 4), (4, 7)]
    assert sum(stop - start for start, stop in microbatch.bounds(4097, 104)) == 4097


def test_sliced_step_is_the_whole_batch_step():
    torch.manual_seed(0)
    model = place(models.build("mlp"), torch.device("cpu"))  # no dropout: the step is deterministic
    images, labels = torch.randn(96, 1, 28, 28), torch.randint(0, 10, (96,))
    results = {}
    for size in (96, 10):
        copied = copy.deepcopy(model)
        optimizer = make_optimizer("momentum", copied.parameters(), 0.1)
        for _ in range(2):
            loss, correct = train_step(copied, optimizer, images, labels, slice_size=size)
        results[size] = (loss, correct, copied.state_dict())
    (whole_loss, whole_correct, whole), (sliced_loss, sliced_correct, sliced) = results[96], results[10]
    assert sliced_loss.item() == pytest.approx(whole_loss.item(), rel=1e-5)
    assert sliced_correct.item() == whole_correct.item()
    for name, tensor in whole.items():
        assert torch.allclose(tensor, sliced[name], atol=1e-6), name
        assert not torch.allclose(tensor, model.state_dict()[name])  # the steps did change the weights


def test_automatic_slice_size():
    cpu_sample = torch.zeros(1, 1, 28, 28)
    seed_cnn = models.build("seed-cnn")
    largest = 32 * 22 * 22 * 4  # the first convolution's output on the 25×25 crop, fp32
    assert microbatch.largest_activation_bytes(seed_cnn, cpu_sample) == largest
    assert microbatch.slice_size(0, 4096, seed_cnn, cpu_sample) == microbatch.CACHE_BUDGET_BYTES // largest
    assert microbatch.slice_size(0, 16, seed_cnn, cpu_sample) == 16  # never more than the batch
    assert microbatch.slice_size(7, 4096, seed_cnn, cpu_sample) == 7  # asked for
    with_batch_norm = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                          torch.nn.Linear(4 * 26 * 26, 10))
    assert microbatch.slice_size(0, 4096, with_batch_norm, cpu_sample) == 4096  # batch statistics: whole


def test_the_probe_leaves_the_random_stream_and_mode_alone():
    model = models.build("seed-cnn").train()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    microbatch.largest_activation_bytes(model, torch.zeros(1, 1, 28, 28))
    assert torch.equal(torch.rand(3), expected)
    assert model.training
