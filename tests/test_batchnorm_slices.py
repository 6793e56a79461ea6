"""A batch-norm model cannot train on one image: a run whose steps would ever hold a single image
(batch size 1, micro-batch 1, or a last partial batch of 1 in any process's share) is refused
before training, naming how to avoid it; others run."""

import pytest
import torch
from torch import nn

from batchlab.core.errors import ModelError
from batchlab.spec.run import RunSpec
from batchlab.train.engine import refuse_one_image_slices, smallest_slice


def batch_norm_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(25, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


@pytest.mark.parametrize("spec, count, slices, smallest", [
    (RunSpec(batch_size=8), 17, 8, 1),  # 8 + 8 + 1
    (RunSpec(batch_size=8, drop_last=True), 17, 8, 8),
    (RunSpec(batch_size=8), 18, 8, 2),
    (RunSpec(batch_size=8), 16, 3, 2),  # slices of 8 as 3 + 3 + 2
    (RunSpec(batch_size=1), 16, 1, 1),
    (RunSpec(batch_size=4, strategy="ddp", workers=2), 18, 4, 1),  # global batches 8 + 8, the rest 2 split 1 + 1
    (RunSpec(batch_size=4, strategy="ddp", workers=2), 20, 4, 2),
    (RunSpec(batch_size=4, strategy="hogwild", workers=2), 18, 4, 1),  # shares of 9: 4 + 4 + 1
])
def test_smallest_slice_follows_each_strategys_batches(spec, count, slices, smallest):
    assert smallest_slice(spec, count, slices) == smallest


def test_batch_norm_with_a_one_image_step_is_refused_and_without_batch_norm_allowed():
    with pytest.raises(ModelError, match="batch normalisation.*single image.*--drop-last"):
        refuse_one_image_slices(RunSpec(batch_size=8), batch_norm_model(), 17, 8)
    refuse_one_image_slices(RunSpec(batch_size=8), batch_norm_model(), 18, 8)
    no_batch_norm = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    refuse_one_image_slices(RunSpec(batch_size=8), no_batch_norm, 17, 8)
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # what the check spares the user
        batch_norm_model().train()(torch.zeros(1, 1, 5, 5))
