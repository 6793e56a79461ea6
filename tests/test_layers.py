"""The built-in models' faster layers compute what torch.nn's do."""

import pytest
import torch
from torch import nn

from batchlab import layers


@pytest.mark.parametrize("rows", [1, 2, 102])
def test_linear_matches_torch_linear_with_gradients(rows):
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
