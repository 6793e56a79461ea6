"""The built-in models' faster layers compute what torch.nn's do."""

import pytest
import torch
from torch import nn

from batchlab.nn import layers


@pytest.mark.parametrize("rows", [1, 2, 102])
def test_linear_matches_torch_linear_with_gradients(rows, monkeypatch):
    monkeypatch.setattr(layers, "ONEDNN_LINEAR", layers._onednn_linear is not None)  # the oneDNN path on any CPU
    torch.manual_seed(0)
    ours = layers.Linear(1024, 500)
    reference = nn.Linear(1024, 500)
    reference.load_state_dict(ours.state_dict())
    inputs = torch.randn(rows, 1024, requires_grad=True)
    grad_out = torch.randn(rows, 500)
    results = []
    for layer in (ours, reference):
        inputs.grad = None
        out = layer(inputs)
        out.backward(grad_out)
        results.append((out.detach(), inputs.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone()))
    for mine, theirs in zip(*results):
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-4)
    assert results[0][2].abs().sum() > 0


def test_linear_layers_multiply_on_mkl_on_intel_cpus_and_on_onednn_elsewhere():
    assert not layers.uses_onednn_linear("GenuineIntel")
    assert layers.uses_onednn_linear("AuthenticAMD") == (layers._onednn_linear is not None)


def test_dropout_keeps_the_fraction_and_scales():
    torch.manual_seed(0)
    dropout = layers.Dropout(0.3)
    out = dropout(torch.ones(1000, 1000))
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.005)
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.7))
    assert torch.equal(dropout.eval()(torch.ones(3, 3)), torch.ones(3, 3))
    inputs = torch.ones(100, 100, requires_grad=True)
    out = dropout.train()(inputs)
    out.sum().backward()
    assert torch.equal(inputs.grad, out.detach())  # gradient flows exactly where kept, scaled


@pytest.mark.parametrize("size", [25, 24, 9])
def test_max_pool_without_gradients_matches_torch(size):
    torch.manual_seed(0)
    ours, reference = layers.MaxPool2d(2), nn.MaxPool2d(2)
    images = torch.randn(200, 32, size, size)
    images[:, :, :4, :4] = 0.0  # ties, as on a background
    for batch in (images, images.contiguous(memory_format=torch.channels_last)):
        with torch.inference_mode():
            assert torch.equal(ours(batch), reference(batch))


def test_max_pool_with_gradients_routes_ties_like_torch():
    images = torch.zeros(200, 32, 25, 25, requires_grad=True)  # every window a tie
    layers.MaxPool2d(2)(images).sum().backward()
    ours = images.grad.clone()
    images.grad = None
    nn.MaxPool2d(2)(images).sum().backward()
    assert torch.equal(ours, images.grad)
    assert ours.sum() == 200 * 32 * 12 * 12  # one element of each window gets the gradient


def test_dropout_of_everything_gives_zeros():
    inputs = torch.ones(4, 4, requires_grad=True)
    out = layers.Dropout(1.0)(inputs)
    assert torch.equal(out, torch.zeros(4, 4))
    out.sum().backward()
    assert torch.equal(inputs.grad, torch.zeros(4, 4))
