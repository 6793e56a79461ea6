"""Batch norm folded into the convolution before it, for inference (nn/folding.py)."""

import json

import pandas as pd
import torch
from torch import nn

from batchlab.nn import layers
from batchlab.nn.folding import fold_batch_norms
from batchlab.report.inference import folding_lines


class Block(nn.Module):
    """conv → bn → relu, a shortcut that reads a convolution's output twice, and a batch norm
    without running statistics."""

    def __init__(self):
        super().__init__()
        self.conv = layers.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.shared = nn.Conv2d(8, 8, 1)
        self.shared_norm = nn.BatchNorm2d(8)
        self.batch_only = nn.Conv2d(8, 8, 1)
        self.batch_norm = nn.BatchNorm2d(8, track_running_stats=False)

    def forward(self, images):
        features = torch.relu(self.norm(self.conv(images)))
        shared = self.shared(features)
        return self.batch_norm(self.batch_only(self.shared_norm(shared) + shared))


def trained_statistics(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_()
    return model.eval()


def test_folds_each_batch_norm_whose_convolution_feeds_only_it_and_keeps_the_results():
    model = trained_statistics(Block())
    images = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        before = model(images)
        folded, count, why = fold_batch_norms(model)
        assert (count, why) == (1, None)  # not the shared convolution's, not the one without statistics
        assert torch.allclose(folded(images), before, atol=1e-5)
        assert torch.equal(model(images), before)  # the model itself is left as it was
    assert isinstance(folded.conv, layers.Conv2d) and not hasattr(folded, "norm")
    assert isinstance(model.norm, nn.BatchNorm2d)


class Reused(nn.Module):
    """One convolution called twice (normalised once, read raw once), one normalised by two batch
    norms, one whose weight the graph reads as well: folding any of them would change its other use."""

    def __init__(self):
        super().__init__()
        self.twice, self.twice_norm = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.shared, self.first_norm, self.second_norm = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.read, self.read_norm = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, images):
        features = self.twice_norm(self.twice(images)) + self.twice(images)
        features = self.first_norm(self.shared(features)) + self.second_norm(self.shared(features))
        return self.read_norm(self.read(features)) + self.read.weight.sum()


def test_a_convolution_used_more_than_once_is_not_folded():
    model = trained_statistics(Reused())
    images = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        before = model(images)
        folded, count, why = fold_batch_norms(model)
        assert (count, why) == (0, None) and folded is model
        assert torch.equal(folded(images), before)


def test_a_model_in_training_mode_is_not_folded_and_says_why():
    model = Block().train()
    assert fold_batch_norms(model) == (model, 0, "the model is in training mode")


def test_an_untraceable_model_runs_as_it_is_and_says_why():
    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, images):
            return self.norm(self.conv(images)) if images.sum() > 0 else images

    model = Branching().eval()
    same, count, why = fold_batch_norms(model)
    assert same is model and count == 0 and why.startswith("not traceable by torch.fx (TraceError")
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval()
    assert fold_batch_norms(plain) == (plain, 0, None)  # nothing to fold: not even traced


def test_the_report_says_what_was_folded():
    rows = pd.DataFrame({"model": ["torchvision:resnet18", "torchvision:resnet18", "mine:net", "seed-cnn"],
                         "environment": [json.dumps({"batch_norms_folded": 20})] * 2
                         + [json.dumps({"batch_norms_folded": 0, "batch_norm_unfolded": "not traceable by torch.fx"}),
                            json.dumps({"batch_norms_folded": 0})]})
    lines = folding_lines(rows)
    assert len(lines) == 2
    assert lines[0].startswith("torchvision:resnet18: inference ran with 20 batch-norm layer(s) folded")
    assert lines[1] == "mine:net: inference ran its batch norm as it is, not traceable by torch.fx."
