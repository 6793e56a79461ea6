"""Micro-batches: slicing a batch changes neither the update nor what a step reports."""

import copy

import pytest
import torch

from batchlab.core import cpus
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
    model = place(models.build("mlp"), torch.device("cpu"), "fp32")  # no dropout: the step is deterministic
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
    assert microbatch.slice_size(0, 4096, seed_cnn, cpu_sample) == microbatch.cache_budget_bytes() // largest
    assert microbatch.slice_size(0, 16, seed_cnn, cpu_sample) == 16  # never more than the batch
    assert microbatch.slice_size(7, 4096, seed_cnn, cpu_sample) == 7  # asked for
    with_batch_norm = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                          torch.nn.Linear(4 * 26 * 26, 10))
    assert microbatch.slice_size(0, 4096, with_batch_norm, cpu_sample) == 4096  # batch statistics: whole


def write_cache(folder, index: str, level: str, kind: str, size: str) -> None:
    entry = folder / index
    entry.mkdir(parents=True)
    for name, value in {"level": level, "type": kind, "size": size}.items():
        (entry / name).write_text(value + "\n")


def test_slice_budget_follows_the_l2_cache(tmp_path, monkeypatch):
    """The budget is 8 × one core's L2 (sysfs), the 8 MB default where it cannot be read."""
    write_cache(tmp_path, "index0", "1", "Data", "48K")
    write_cache(tmp_path, "index1", "1", "Instruction", "32K")
    write_cache(tmp_path, "index2", "2", "Unified", "2048K")
    write_cache(tmp_path, "index3", "3", "Unified", "266240K")
    assert cpus.l2_cache_bytes(str(tmp_path)) == 2 * 2**20
    assert cpus.l2_cache_bytes(str(tmp_path / "missing")) is None
    monkeypatch.setattr(microbatch, "l2_cache_bytes", lambda: 2 * 2**20)
    assert microbatch.cache_budget_bytes() == 16 * 2**20
    seed_cnn, sample = models.build("seed-cnn"), torch.zeros(1, 1, 28, 28)
    assert microbatch.slice_size(0, 4096, seed_cnn, sample) == 16 * 2**20 // (32 * 22 * 22 * 4)  # 270 images
    monkeypatch.setattr(microbatch, "l2_cache_bytes", lambda: None)
    assert microbatch.slice_size(0, 4096, seed_cnn, sample) == 8 * 2**20 // (32 * 22 * 22 * 4)  # 135 images


def test_the_probe_leaves_the_random_stream_and_mode_alone():
    model = models.build("seed-cnn").train()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    microbatch.largest_activation_bytes(model, torch.zeros(1, 1, 28, 28))
    assert torch.equal(torch.rand(3), expected)
    assert model.training


def batch_norm_model(channels: int = 3) -> torch.nn.Module:
    """Batch normalisation straight on the input, so its statistics are those of the images."""
    return torch.nn.Sequential(torch.nn.BatchNorm2d(channels), torch.nn.Flatten(),
                               torch.nn.Linear(channels * 8 * 8, 10))


def test_automatic_choice_keeps_batch_norm_models_whole():
    sample = torch.zeros(1, 3, 8, 8)
    with_batch_norm = batch_norm_model()
    without = torch.nn.Sequential(*list(with_batch_norm)[1:])
    assert microbatch.slice_size(0, 1_000_000, without, sample) < 1_000_000  # the same network without it: sliced
    assert microbatch.slice_size(0, 1_000_000, with_batch_norm, sample) == 1_000_000
    assert microbatch.slice_size(16, 1_000_000, with_batch_norm, sample) == 16  # asked for: honoured


def test_explicit_slices_of_a_batch_norm_model_are_ghost_batch_normalisation():
    """--micro-batch N on a model with batch statistics normalises over N-image slices (Hoffer et
    al. 2017): running statistics updated once per slice with that slice's mean, and a different
    update from the whole batch's."""
    torch.manual_seed(0)
    model = batch_norm_model()
    images = torch.randn(64, 3, 8, 8) + torch.arange(64.0).view(64, 1, 1, 1) / 16  # slices differ in mean
    labels = torch.randint(0, 10, (64,))
    size = microbatch.slice_size(16, 64, model, images[:1])
    results = {}
    for slices in (64, size):
        copied = copy.deepcopy(model)
        train_step(copied, make_optimizer("sgd", copied.parameters(), 0.1), images, labels, slice_size=slices)
        results[slices] = copied
    whole, ghost = results[64][0], results[size][0]
    momentum = whole.momentum
    assert torch.allclose(whole.running_mean, momentum * images.mean((0, 2, 3)), atol=1e-6)
    expected = torch.zeros(3)
    for start in range(0, 64, 16):  # one update per slice, each with its slice's mean
        expected = (1 - momentum) * expected + momentum * images[start:start + 16].mean((0, 2, 3))
    assert torch.allclose(ghost.running_mean, expected, atol=1e-6)
    assert not torch.allclose(ghost.running_mean, whole.running_mean, atol=1e-3)
    assert not torch.allclose(ghost.running_var, whole.running_var, atol=1e-3)
    assert not torch.allclose(results[size][2].weight, results[64][2].weight, atol=1e-5)  # another update
