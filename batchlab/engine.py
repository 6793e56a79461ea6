"""Train and evaluate one model on one device: the hot loop and its measured regions.

What is timed (the README's definitions, kept here):
- train seconds of an epoch: the optimizer steps only (gather batch, forward, loss, backward,
  step), device synchronised before each clock read; evaluation and batch-order drawing excluded.
- eval seconds: evaluation on the validation and test sets after each epoch.
- overheads, apart: dataset load (read + checksum), host→device copy, model build, warm-up
  (a few steps on a throw-away copy of the model, so the measured epochs start warm but from the
  same seeded weights).
- wall seconds: from the start of the run (of the process, when run by a sweep) to its end.

The hot loop never reads a value back to the host: per-step losses and correct counts stay on
the device and are read once per epoch, where a non-finite loss is also detected (with its step).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import data, models
from .devicedata import DeviceData, images_per_epoch, steps_per_epoch, to_device
from .machine import THREAD_ENV, resolve_device
from .spec import RunSpec, SpecError
from .timing import Region, peak_memory_bytes, reset_peak_memory

WARMUP_STEPS = 2
EVAL_BATCH_SIZE = 128  # fixed, so eval seconds are comparable across training batch sizes


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    test_loss: float
    test_accuracy: float
    train_seconds: float
    eval_seconds: float
    images: int  # images trained on in this epoch
    steps: int


@dataclass
class RunResult:
    spec: RunSpec
    status: str = "DONE"  # DONE or DIVERGED (failures are raised, not returned)
    epochs: list[EpochRecord] = field(default_factory=list)
    parameters: int = 0
    train_images: int = 0  # size of the training set used (after split and limit)
    val_images: int = 0
    test_images: int = 0
    dataset_checksum: str = ""
    dataset_source: str = ""
    load_seconds: float = 0.0
    to_device_seconds: float = 0.0
    model_build_seconds: float = 0.0
    warmup_seconds: float = 0.0
    startup_seconds: float | None = None  # process start → run start, when run in its own process
    wall_seconds: float = 0.0
    peak_memory_bytes: int = 0
    time_to_target_seconds: float | None = None
    diverged_step: int | None = None
    error: str | None = None
    environment: dict = field(default_factory=dict)

    @property
    def images_processed(self) -> int:
        return sum(e.images for e in self.epochs)

    @property
    def train_seconds(self) -> float:
        return sum(e.train_seconds for e in self.epochs)


def make_optimizer(name: str, parameters, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step; returns (loss, number correct) as device tensors (no host sync)."""
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.argmax(1) == labels).sum()


def evaluate(model: nn.Module, dd: DeviceData, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean loss, accuracy) over a whole split, in fixed-size batches."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    model.eval()
    loss_sum = torch.zeros((), device=labels.device)
    correct = torch.zeros((), dtype=torch.int64, device=labels.device)
    with torch.inference_mode():
        for start in range(0, len(labels), EVAL_BATCH_SIZE):
            logits = model(dd.normalize(images[start:start + EVAL_BATCH_SIZE]))
            target = labels[start:start + EVAL_BATCH_SIZE]
            loss_sum += F.cross_entropy(logits, target, reduction="sum")
            correct += (logits.argmax(1) == target).sum()
    model.train()
    return loss_sum.item() / len(labels), correct.item() / len(labels)


def warm_up(model: nn.Module, spec: RunSpec, dd: DeviceData) -> None:
    """A few steps on a copy of the model, so first-call costs (allocator, kernel selection)
    fall outside the measured epochs while the real model keeps its seeded initial weights."""
    scratch = copy.deepcopy(model)
    optimizer = make_optimizer(spec.optimizer, scratch.parameters(), spec.lr)
    batch = min(spec.batch_size, dd.train_count)
    for _ in range(WARMUP_STEPS):
        train_step(scratch, optimizer, dd.normalize(dd.train_images[:batch]), dd.train_labels[:batch])


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, dd: DeviceData, spec: RunSpec,
                order: torch.Tensor, step_losses: torch.Tensor, step_correct: torch.Tensor) -> None:
    """The hot loop: one pass over `order` in batches, results written into device buffers."""
    batch_size = spec.batch_size
    for step in range(len(step_losses)):
        index = order[step * batch_size:(step + 1) * batch_size]
        loss, correct = train_step(model, optimizer, dd.normalize(dd.train_images[index]), dd.train_labels[index])
        step_losses[step] = loss
        step_correct[step] = correct


def run(spec: RunSpec, data_dir: str | None = None,
        on_epoch: Callable[[EpochRecord], None] | None = None) -> RunResult:
    """Run one training run in this process and return its measured result."""
    started = time.perf_counter()
    spec = spec.validated()
    device = resolve_device(spec.device)
    torch.set_num_threads(spec.threads)
    result = RunResult(spec=spec)

    load_start = time.perf_counter()
    dataset = data.load(spec.dataset, data_dir)
    result.load_seconds = time.perf_counter() - load_start
    result.dataset_checksum, result.dataset_source = dataset.checksum, dataset.source

    with Region(device) as copy_region:
        dd = to_device(dataset, spec.val_split, spec.limit_train, device)
    result.to_device_seconds = copy_region.seconds
    result.train_images, result.val_images, result.test_images = dd.train_count, len(dd.val_labels), len(dd.test_labels)

    torch.manual_seed(spec.seed)
    with Region(device) as build_region:
        model = models.build(spec.model, dd.classes).to(device)
        optimizer = make_optimizer(spec.optimizer, model.parameters(), spec.lr)
    result.model_build_seconds = build_region.seconds
    result.parameters = models.parameter_count(model)

    reset_peak_memory(device)
    with Region(device) as warmup_region:
        warm_up(model, spec, dd)
    result.warmup_seconds = warmup_region.seconds

    generator = torch.Generator(device=device)
    generator.manual_seed(spec.seed)
    steps = steps_per_epoch(dd.train_count, spec.batch_size, spec.drop_last)
    if steps == 0:
        raise SpecError(f"batch size {spec.batch_size} exceeds the {dd.train_count} training images and "
                        "--drop-last skips that only batch: nothing to train on")
    epoch_images = images_per_epoch(dd.train_count, spec.batch_size, spec.drop_last)
    step_losses = torch.empty(steps, device=device)
    step_correct = torch.empty(steps, dtype=torch.int64, device=device)
    # Images per step, to weight the epoch's mean loss: the last batch may be smaller.
    step_images = torch.full((steps,), float(spec.batch_size), device=device)
    step_images[-1] = epoch_images - (steps - 1) * spec.batch_size
    cumulative_train = 0.0
    model.train()

    for epoch in range(1, spec.epochs + 1):
        order = torch.randperm(dd.train_count, generator=generator, device=device)
        with Region(device) as train_region:
            train_epoch(model, optimizer, dd, spec, order, step_losses, step_correct)
        finite = torch.isfinite(step_losses)
        if not bool(finite.all()):
            first_bad = int((~finite).nonzero()[0].item())
            result.status = "DIVERGED"
            result.diverged_step = (epoch - 1) * steps + first_bad + 1
            result.error = f"loss became non-finite at step {result.diverged_step} (epoch {epoch})"
            break
        with Region(device) as eval_region:
            val_loss, val_accuracy = evaluate(model, dd, dd.val_images, dd.val_labels)
            test_loss, test_accuracy = evaluate(model, dd, dd.test_images, dd.test_labels)
        has_val = len(dd.val_labels) > 0
        record = EpochRecord(
            epoch=epoch,
            train_loss=float((step_losses * step_images).sum().item()) / epoch_images,
            train_accuracy=float(step_correct.sum().item()) / epoch_images,
            val_loss=val_loss if has_val else None, val_accuracy=val_accuracy if has_val else None,
            test_loss=test_loss, test_accuracy=test_accuracy,
            train_seconds=train_region.seconds, eval_seconds=eval_region.seconds,
            images=epoch_images, steps=steps)
        result.epochs.append(record)
        cumulative_train += record.train_seconds
        watched = record.val_accuracy if has_val else record.test_accuracy
        if spec.target_accuracy and result.time_to_target_seconds is None and watched >= spec.target_accuracy:
            result.time_to_target_seconds = cumulative_train
        if on_epoch:
            on_epoch(record)

    result.peak_memory_bytes = peak_memory_bytes(device)
    result.wall_seconds = time.perf_counter() - started
    result.environment = {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "thread_env": {name: os.environ.get(name) for name in THREAD_ENV},
        "torch": torch.__version__,
        "device_name": str(device),
    }
    return result
