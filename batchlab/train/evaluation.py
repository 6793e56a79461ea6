"""Evaluation during training: the model on a whole split (`evaluate`), and the run's evaluation
record (`Evaluations`): after every epoch and, with --eval-every N, every N optimizer steps inside
an epoch, each one timed and kept outside the train seconds, and the first evaluation whose accuracy
reaches the target (time, steps and images to target).

The watched split is the validation set when one is held out, else the test set (said in the run's
environment as `evaluated_on`). Inside an epoch only the watched split is evaluated; after an
epoch both validation and test are (the epoch record).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..core import heartbeat
from ..core.records import EvalRecord, RunResult
from ..data.device import DeviceData
from ..device.timing import synchronize
from ..nn.placement import autocast
from .gns import NoiseScale

EVAL_BATCH_SIZE = 128  # fixed, so eval seconds are comparable across training batch sizes


def evaluate(model: nn.Module, dd: DeviceData, images: torch.Tensor, labels: torch.Tensor,
             precision: str = "fp32") -> tuple[float, float]:
    """(mean loss, accuracy) over a whole split, in fixed-size batches (copied to the device
    batch by batch when the split is in host memory: the loader path)."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    model.eval()
    device = dd.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.inference_mode():
        for start in range(0, len(labels), EVAL_BATCH_SIZE):
            heartbeat.beat()
            batch = images[start:start + EVAL_BATCH_SIZE].to(device, non_blocking=True)
            with autocast(device, precision):
                logits = model(dd.normalize(batch)).float()
            target = labels[start:start + EVAL_BATCH_SIZE].to(device, non_blocking=True)
            loss_sum += F.cross_entropy(logits, target, reduction="sum")
            correct += (logits.argmax(1) == target).sum()
    model.train()
    return loss_sum.item() / len(labels), correct.item() / len(labels)


class Evaluations:
    """The evaluations of one run as it trains. `image_scale`: images of all processes per image of
    this one (DDP ranks: the world size; each rank trains an equal part of every global batch)."""

    def __init__(self, model: nn.Module, dd: DeviceData, result: RunResult, precision: str, target: float,
                 device: torch.device, image_scale: int = 1, noise: NoiseScale | None = None):
        self.model, self.dd, self.result, self.precision, self.target = model, dd, result, precision, target
        self.device, self.image_scale, self.noise = device, image_scale, noise
        self.on_validation = len(dd.val_labels) > 0
        result.environment["evaluated_on"] = "validation" if self.on_validation else "test"
        self.train_seconds = 0.0  # before the current epoch
        self.steps = self.images = 0  # before the current epoch
        self.epoch, self.epoch_start, self.inside = 0, 0.0, 0.0

    def start_epoch(self, epoch: int) -> None:
        """Call right after the epoch's train clock started."""
        self.epoch, self.epoch_start, self.inside = epoch, time.perf_counter(), 0.0

    def mid_epoch(self, steps: int, images: int) -> None:
        """Evaluate inside the epoch, after `steps` steps and `images` images of this process; its time
        is taken out of the epoch's train seconds (`inside`)."""
        synchronize(self.device)
        paused = time.perf_counter()
        trained = self.train_seconds + paused - self.epoch_start - self.inside
        loss, accuracy = self.watched()
        synchronize(self.device)
        seconds = time.perf_counter() - paused
        self.inside += seconds
        self.record(EvalRecord(self.steps + steps, self.epoch, self.images + images * self.image_scale, trained,
                               accuracy, loss, seconds))

    def end_epoch(self, train_seconds: float, steps: int, images: int, accuracy: float, loss: float,
                  eval_seconds: float) -> None:
        """The epoch's own evaluation (train_seconds: the epoch's, evaluations inside it excluded)."""
        self.train_seconds += train_seconds
        self.steps += steps
        self.images += images
        self.record(EvalRecord(self.steps, self.epoch, self.images, self.train_seconds, accuracy, loss, eval_seconds))

    def forget_from(self, step: int) -> None:
        """A divergence found at `step` (at the epoch's end) makes the evaluations at or after it
        evaluations of broken weights: drop them, and a target they reached."""
        result = self.result
        result.evaluations = [e for e in result.evaluations if e.step < step]
        if result.steps_to_target is not None and result.steps_to_target >= step:
            result.time_to_target_seconds = result.steps_to_target = result.images_to_target = None
        if self.noise is not None:
            result.gradient_noise_scale = result.evaluations[-1].gradient_noise_scale if result.evaluations else None

    def watched(self) -> tuple[float, float]:
        dd = self.dd
        images, labels = (dd.val_images, dd.val_labels) if self.on_validation else (dd.test_images, dd.test_labels)
        return evaluate(self.model, dd, images, labels, self.precision)

    def record(self, evaluation: EvalRecord) -> None:
        result = self.result
        if self.noise is not None:
            evaluation.gradient_noise_scale = result.gradient_noise_scale = self.noise.value()
        result.evaluations.append(evaluation)
        if self.target and result.time_to_target_seconds is None and evaluation.accuracy >= self.target:
            result.time_to_target_seconds = evaluation.train_seconds
            result.steps_to_target, result.images_to_target = evaluation.step, evaluation.images
