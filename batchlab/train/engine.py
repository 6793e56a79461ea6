"""Train and evaluate one model on one device: the hot loop and its measured regions.

What is timed (the README's definitions, kept here):
- train seconds of an epoch: the optimizer steps only (get the batch, forward, loss, backward,
  step), device synchronised before each clock read; evaluation and batch-order drawing excluded.
  Of these, data wait: the time the loop waited for its batches (gathered on the device, or from
  the DataLoader and copied to the device: data/batches.py).
- eval seconds: evaluation on the validation and test sets after each epoch.
- overheads, apart: dataset load (read + checksum), host→device copy, model build, warm-up
  (a few steps on a throw-away copy of the model, so the measured epochs start warm but from the
  same seeded weights).
- wall seconds: from the start of the run (of the process, when run by a sweep) to its end.

The hot loop never reads a value back to the host: per-step losses and correct counts stay on
the device and are read once per epoch, where a non-finite loss is also detected (with its step).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from array import array
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from ..core import heartbeat
from ..core.cpus import available_cores
from ..core.errors import ModelError, SpecError
from ..core.records import EpochRecord, RunResult
from ..data import registry as data
from ..data.batches import DeviceBatches, LoaderBatches, batch_source
from ..data.device import DeviceData, ddp_order, hogwild_order, single_order, to_device
from ..data.input_path import choose_input, dataset_bytes
from ..device.current import make_current
from ..device.fp32_math import set_cuda_fp32_math
from ..device.machine import THREAD_ENV, precision_units, resolve_device
from ..device.product_speed import product_speed
from ..device.threads import denormals_flushed
from ..device.timing import Region, peak_memory_bytes, reset_peak_memory
from ..nn import microbatch, models
from ..nn.placement import autocast, place
from ..nn.texts import shape_text
from ..spec.run import RunSpec
from .evaluation import Evaluations, evaluate
from .gns import NoiseScale
from .schedule import lr_scheduler

WARMUP_STEPS = 2
SPREAD_MIN_STEPS = 10  # fewer timed steps than this give no meaningful p90: no step-time spread recorded
SKIPPED_EXAMPLES = 5  # undecodable images listed by name in the run record (all are counted)


# The fused kernels update contiguous tensors only: a channels-last weight (every 4-d weight on the
# CPU, nn/placement.py) is copied to a contiguous tensor and back, with its gradient and state, at
# every step. For large weights that costs more than the foreach form's extra passes: ResNet-18's
# update took 9.5 ms all fused against 5.8-7.0 with its channels-last weights of 65,536 values and
# more on foreach. seed-cnn's and keras-cnn's largest (32,768 and 18,432 values) stay fused, where
# keras-cnn's update was 20 µs faster than with them on foreach.
FOREACH_MIN_ELEMENTS = 2**16


def parameter_groups(parameters) -> list:
    """The optimizer's parameter groups: large channels-last weights on the CPU on the foreach form,
    the rest fused (FOREACH_MIN_ELEMENTS); a plain list where there is nothing to split. GPUs keep
    one fused group: their kernels were not measured here."""
    fused, strided = [], []
    for p in parameters:
        large_strided = p.device.type == "cpu" and not p.is_contiguous() and p.numel() >= FOREACH_MIN_ELEMENTS
        (strided if large_strided else fused).append(p)
    if not strided:
        return fused
    return ([{"params": fused}] if fused else []) + [{"params": strided, "fused": False, "foreach": True}]


def make_optimizer(name: str, parameters, lr: float) -> torch.optim.Optimizer:
    """The run's optimizer, in its fused form on every device: one kernel updates each parameter
    in one pass over its weights, gradient and state, where the default (foreach) form makes
    three passes for SGD with momentum (large channels-last weights excepted: parameter_groups).
    The same update up to rounding (tests/test_engine.py). On a 2-core Xeon the update of
    seed-cnn's 551k parameters took 235 µs fused against 313-338 foreach, and whole training steps
    ran 2-3% faster at batch 1-16 and within the noise at 64-256 (docs/performance.md); on a GPU it
    saves kernel launches too."""
    groups = parameter_groups(parameters)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, fused=True)
    if name == "momentum":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, fused=True)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, fused=True)
    raise ValueError(f"unknown optimizer {name!r}")


def loss_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 training's loss scaling: fp16 gradients of small losses underflow to zero, so the loss
    is scaled up before backward and the gradients down before the step (a step whose gradients
    overflowed is skipped and the scale lowered: torch.amp.GradScaler). bf16 has fp32's range and
    fp32 needs none."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def train_step(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
               images: torch.Tensor, labels: torch.Tensor, precision: str = "fp32", slice_size: int | None = None,
               on_slice: Callable[[int, int, int], None] | None = None,
               scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the batch, run through the network in slices of `slice_size` images
    (default: whole) whose gradients accumulate (see microbatch.py); returns (mean loss, number
    correct) as device tensors (no host sync). `on_slice(start, stop, count)` runs after each
    slice's backward (--gns reads the gradients there: scaled by `scaler` in fp16, which B_simple,
    a ratio of squared gradient norms, does not see). `scaler`: fp16's loss scaling (loss_scaler).
    `model` may be the run's graphed forward (graphs.GraphedModel), which the backward follows."""
    count = len(labels)
    optimizer.zero_grad(set_to_none=True)
    loss_sum = correct = None  # set by the first slice: a whole batch costs no accumulator ops
    slices = microbatch.bounds(count, slice_size or count)
    for number, (start, stop) in enumerate(slices):
        # Under DDP, gradients are all-reduced once, with the last slice's backward.
        last = number == len(slices) - 1
        with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with autocast(images.device, precision):
                logits = model(images[start:stop])
            loss = F.cross_entropy(logits.float(), labels[start:stop], reduction="sum") / count
            (loss if scaler is None else scaler.scale(loss)).backward()
        if on_slice is not None:
            on_slice(start, stop, count)
        hits = (logits.argmax(1) == labels[start:stop]).sum()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        correct = hits if correct is None else correct + hits
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return loss_sum, correct


def warm_up(model: nn.Module, spec: RunSpec, dd: DeviceData, source: DeviceBatches | LoaderBatches,
            slice_size: int | None = None, wrap: Callable[[nn.Module], nn.Module] = lambda module: module) -> None:
    """A few steps on a copy of the model, so first-call costs (allocator, kernel selection,
    for DDP the first all-reduces, the loader's worker processes) fall outside the measured epochs
    while the real model keeps its seeded initial weights. `wrap` wraps the copy as the strategy
    wraps the model; the batches come from `source`, the run's input path."""
    heartbeat.beat()
    scratch = wrap(copy.deepcopy(model))
    optimizer = make_optimizer(spec.optimizer, scratch.parameters(), spec.effective_lr)
    scaler = loss_scaler(spec.precision, dd.device)
    batch = min(spec.batch_size, dd.train_count)
    # WARMUP_STEPS whole batches (a partial one could be 1 image, which batch norm refuses)
    batches = source.epoch(torch.arange(batch, device=dd.device).repeat(WARMUP_STEPS), warm_up=True)
    for images, labels in batches:
        heartbeat.beat()
        train_step(scratch, optimizer, dd.normalize(images), labels, spec.precision, slice_size, scaler=scaler)


@dataclass
class EpochWork:
    """What one process (or, combined, all of them) trained in one epoch."""

    loss_sum: float  # sum over steps of (mean loss of the step × images in the step)
    correct: int
    images: int
    steps: int
    bad_step: int | None = None  # first step (1-based, in the epoch) whose loss was not finite
    data_wait_seconds: float = 0.0  # of the epoch's train seconds, waiting for batches


class StepLoop:
    """The hot loop of one process: trains on a sequence of image indices in consecutive batches,
    taken from `source` (the run's input path; default: gathered on the device, no augmentation).
    Each step's loss and correct count stay on the device, kept in plain lists (appending costs no
    device op, where writing into a buffer cost 2 ops per step, 3% at batch 1) and read once per call.
    Each step reports progress (heartbeat.beat: a clock read, at most one message a second), and the
    wait for its batch is timed by two host clock reads (~0.1 µs). The first of them also times the
    steps: it is kept (one append to an array of doubles, ~30 ns, no further clock read) and a step's
    seconds are from its read to the next one's, taken apart only when the run ends (step_spread);
    steps that paused for a mid-epoch evaluation are left out. On a GPU these are the host's seconds
    per step (the loop never synchronises), not the device's. With `graphed` set (graphs.py: CUDA
    only), the steps run the model through it. `scheduler`, if any, steps the LR
    after every update. With `every` > 0, `checkpoint(steps, images)` is called after every `every`-th step of the run
    (counted across epochs) but an epoch's last, with this epoch's steps and images so far (the
    epoch loop evaluates there)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, dd: DeviceData, batch_size: int,
                 precision: str = "fp32", slice_size: int | None = None,
                 source: DeviceBatches | LoaderBatches | None = None, scheduler: LRScheduler | None = None):
        self.model, self.optimizer, self.dd, self.batch_size = model, optimizer, dd, batch_size
        self.precision, self.slice_size, self.scheduler = precision, slice_size, scheduler
        self.scaler = loss_scaler(precision, dd.device)
        self.source = source or batch_source(dd, batch_size, loader_workers=0, augment=False, seed=0)
        self.every, self.checkpoint, self.steps_done = 0, None, 0
        self.noise: NoiseScale | None = None  # --gns: fed every slice's gradient
        self.graphed: Callable[[torch.Tensor], torch.Tensor] | None = None  # CUDA graphs: graphs.py
        # The clock at every step's start and every epoch's end, over the run (8 bytes a step), and
        # the positions in it after which comes no step: an epoch's end, a mid-epoch evaluation.
        self.step_clock, self.not_steps = array("d"), set()

    def train(self, indices: torch.Tensor) -> EpochWork:
        model = self.model if self.graphed is None else self.graphed
        optimizer, normalize = self.optimizer, self.dd.normalize
        precision, slice_size, scheduler, scaler = self.precision, self.slice_size, self.scheduler, self.scaler
        on_slice = self.noise.after_slice if self.noise is not None else None
        step_losses, step_correct = [], []
        beat, clock = heartbeat.beat, time.perf_counter
        stamp, first = self.step_clock.append, len(self.step_clock)
        batches = self.source.epoch(indices)
        waited = 0.0
        every, steps, images, total = self.every, 0, 0, len(indices)
        while True:
            beat()
            asked = clock()
            stamp(asked)
            batch = next(batches, None)
            waited += clock() - asked
            if batch is None:
                break
            loss, correct = train_step(model, optimizer, normalize(batch[0]), batch[1], precision, slice_size, on_slice,
                                       scaler)
            if scheduler is not None:
                scheduler.step()
            step_losses.append(loss)
            step_correct.append(correct)
            if every:
                steps += 1
                images += len(batch[1])
                if (self.steps_done + steps) % every == 0 and images < total:
                    self.checkpoint(steps, images)
                    self.not_steps.add(first + steps - 1)  # this step's time includes the evaluation
        self.steps_done += len(step_losses)
        self.not_steps.add(len(self.step_clock) - 1)  # the epoch's end: evaluation comes next
        work = self.totals(step_losses, step_correct, len(indices))
        work.data_wait_seconds = waited
        return work

    def step_spread(self) -> dict:
        """The spread of the run's step times: p90 / p50 over all its timed steps (pooled over the
        epochs: an epoch of a large batch has too few steps for a percentile of its own, and a
        slowdown in one epoch shows in the pooled p90 too). Single runs on a quiet 2-CPU machine
        gave 1.1-1.3 (the last, smaller batch of each epoch and the occasional garbage collection
        stay under p90), a DDP run 2.2; with two busy loops on the 2 CPUs, 1.0 to 5.4 (a uniform
        slowdown leaves it at 1). So it is recorded, not part of the noisy flag
        (runner/machine_noise.py)."""
        if len(self.step_clock) < 2:
            return {}
        clock = torch.frombuffer(self.step_clock, dtype=torch.float64).clone()  # a copy: the array stays free
        steps = torch.ones(len(clock) - 1, dtype=torch.bool)
        steps[sorted(i for i in self.not_steps if i < len(steps))] = False
        ordered = clock.diff()[steps].sort().values
        count = len(ordered)
        if count < SPREAD_MIN_STEPS:
            return {}
        p50, p90 = float(ordered[(count - 1) // 2]), float(ordered[int(0.9 * (count - 1))])
        return {"step_seconds_p50": p50, "step_seconds_p90": p90, "timed_steps": count,
                "step_seconds_spread": p90 / p50 if p50 > 0 else None}

    def totals(self, step_losses: list[torch.Tensor], step_correct: list[torch.Tensor], images: int) -> EpochWork:
        """Read the steps' results back (the one sync point of the epoch)."""
        steps = len(step_losses)
        if steps == 0:
            return EpochWork(0.0, 0, 0, 0)
        losses = torch.stack(step_losses)
        weights = torch.full((steps,), float(self.batch_size), device=losses.device)
        weights[-1] = images - (steps - 1) * self.batch_size  # the last batch may be smaller
        finite = torch.isfinite(losses)
        bad_step = None if bool(finite.all()) else int((~finite).nonzero()[0].item()) + 1
        return EpochWork(float((losses * weights).sum().item()), int(torch.stack(step_correct).sum().item()),
                         images, steps, bad_step)


@dataclass
class Prepared:
    """A run ready to train: its data on the device, its seeded model, overheads measured so far."""

    spec: RunSpec
    device: torch.device
    dd: DeviceData
    model: nn.Module
    slice_size: int  # images per micro-batch (microbatch.py); the batch size means whole batches
    result: RunResult
    started: float


def prepare(spec: RunSpec, data_dir: str | None = None, device: str | None = None) -> Prepared:
    """Validate, load and verify the data, copy it to the device (default: the spec's), build
    the seeded model."""
    started = time.perf_counter()
    spec = spec.validated()
    device = resolve_device(device or spec.device)
    result = RunResult(spec=spec)
    if device.type == "cuda":  # the current device of this process: its pinned-memory thread, DDP's NCCL
        make_current(device)
        # A run's shapes are fixed (its batch, its slices): let cuDNN time its convolution
        # algorithms once, in the warm-up steps before anything is timed, and keep the fastest.
        torch.backends.cudnn.benchmark = True
        # Before the run's first op: fp32 is IEEE unless the run asks for tf32.
        result.environment["cuda_fp32_math"] = set_cuda_fp32_math(spec.precision, device)

    load_start = time.perf_counter()
    dataset = data.load(spec.dataset, data_dir, spec.image_size, spec.strict_images)
    result.load_seconds = time.perf_counter() - load_start
    result.dataset_checksum, result.dataset_source = dataset.checksum, dataset.source
    result.input_shape, result.skipped_images = shape_text(dataset.input_shape), len(dataset.skipped)
    result.effective_lr = spec.effective_lr
    result.input_used, input_note = choose_input(spec.input, dataset_bytes(dataset), device, spec.loader_workers)
    result.environment.update(data_notes(dataset, input_note))

    with Region(device) as copy_region:
        dd = to_device(dataset, spec.val_split, spec.limit_train, device, result.input_used)
    result.to_device_seconds = copy_region.seconds
    result.train_images, result.val_images, result.test_images = dd.train_count, len(dd.val_labels), len(dd.test_labels)
    if spec.batch_size * spec.workers > dd.train_count:  # not an error, but not the batch asked for
        asked = (f"{spec.workers} workers x batch size {spec.batch_size:,}" if spec.workers > 1
                 else f"batch size {spec.batch_size:,}")
        result.environment["data_notes"].append(f"{asked} is more than the {dd.train_count:,} training images: "
                                                "each step trains on all there are")

    torch.manual_seed(spec.seed)
    with Region(device) as build_region:
        model = build_model(spec, dd, device)
    result.model_build_seconds = build_region.seconds
    result.parameters = models.parameter_count(model)
    models.check_output(model, dd.normalize(dd.head(2)), dd.classes, spec.model, spec.dataset)
    slices = slice_size_for(spec, model, dd)
    if spec.gns:
        slices = gns_slices(spec, model, slices)
        result.environment["gns_slice"] = slices
        result.environment["gns_method"] = "ranks" if spec.strategy == "ddp" else "slices"
    refuse_one_image_slices(spec, model, dd.train_count, slices)
    reset_peak_memory(device)
    return Prepared(spec, device, dd, model, slices, result, started)


def input_source(spec: RunSpec, dd: DeviceData, stream: int = 0) -> DeviceBatches | LoaderBatches:
    """The batches of one training process (`stream`: its hogwild worker or DDP rank) on the run's
    input path; close() it when the run ends (it may hold loader worker processes)."""
    return batch_source(dd, spec.batch_size, spec.loader_workers, spec.augment, spec.seed, stream)


def process_shares(spec: RunSpec, count: int) -> list[torch.Tensor]:
    """Each process's sequence of images in an epoch of `count` training images (by position)."""
    order = torch.arange(count)
    if spec.strategy == "single":
        return [single_order(order, spec.batch_size, spec.drop_last)]
    split = ddp_order if spec.strategy == "ddp" else hogwild_order
    return [split(order, spec.workers, rank, spec.batch_size, spec.drop_last) for rank in range(spec.workers)]


def make_scheduler(spec: RunSpec, optimizer: torch.optim.Optimizer, count: int, rank: int = 0) -> LRScheduler | None:
    """The LR schedule of process `rank` (schedule.py), timed in its own optimizer steps."""
    share = process_shares(spec, count)[rank]
    return lr_scheduler(optimizer, spec, math.ceil(len(share) / spec.batch_size))


def smallest_slice(spec: RunSpec, count: int, slice_size: int) -> int:
    """The fewest images any step of any process runs through the network at once: the last,
    partial batch of a process's share of the epoch, cut into micro-batch slices."""
    shares = process_shares(spec, count)
    batches = {size for share in shares if len(share)
               for size in (min(spec.batch_size, len(share)), len(share) % spec.batch_size) if size}
    return min((stop - start for batch in batches for start, stop in microbatch.bounds(batch, slice_size)),
               default=spec.batch_size)


def refuse_one_image_slices(spec: RunSpec, model: nn.Module, count: int, slice_size: int) -> None:
    """A model with batch normalisation cannot train on one image (its statistics over one value
    per channel are undefined; PyTorch raises mid-epoch): refuse the run before it starts."""
    if microbatch.has_batch_statistics(model) and smallest_slice(spec, count, slice_size) == 1:
        raise ModelError(f"model {spec.model} uses batch normalisation, which cannot train on a single image, but "
                         f"batch size {spec.batch_size}, micro-batch {slice_size} and {count:,} training images give "
                         "steps of 1 image; use a batch size and micro-batch of at least 2, or --drop-last")


def gns_slices(spec: RunSpec, model: nn.Module, slices: int) -> int:
    """--gns needs each batch in slices smaller than the batch: the micro-batch size if it is
    (as the automatic size is on CPUs for batches above it), else half the batch. Under DDP the
    ranks' own batches are the smaller size (gns.RankNoiseScale): the slices stay as they are."""
    if microbatch.has_batch_statistics(model):
        raise ModelError(f"--gns: model {spec.model} uses batch normalisation, whose statistics are taken per "
                         "slice, so a slice's gradient is not the mean of its images' own gradients that the "
                         "noise-scale estimate needs; run without --gns")
    if spec.strategy == "ddp":
        return slices
    return slices if slices < spec.batch_size else spec.batch_size // 2


def data_notes(dataset, input_note: str | None = None) -> dict:
    """What the data loader (and the input path choice) decided or skipped, for the run record
    (and said to the user)."""
    notes = [*dataset.notes, *([input_note] if input_note else [])]
    # Preloaded: its read and checks are in the run's start-up (the server's, before the fork), not its load.
    return {"data_notes": notes, "skipped_image_examples": list(dataset.skipped[:SKIPPED_EXAMPLES]),
            "dataset_preloaded": dataset.preloaded}


def build_model(spec: RunSpec, dd: DeviceData, device: torch.device) -> nn.Module:
    """The run's model (seeded by the caller) on its device, in the device's layout."""
    return place(models.build(spec.model, input_shape=dd.input_shape, classes=dd.classes), device, spec.precision)


def slice_size_for(spec: RunSpec, model: nn.Module, dd: DeviceData) -> int:
    """Images per micro-batch for this run (microbatch.slice_size, probed with one image)."""
    return microbatch.slice_size(spec.micro_batch, spec.batch_size, model, dd.normalize(dd.head(1)), spec.precision)


def run_epochs(prep: Prepared, train_one_epoch: Callable[[torch.Tensor], EpochWork],
               on_epoch: Callable[[EpochRecord], None] | None = None, evaluating: bool = True,
               loop: StepLoop | None = None, image_scale: int = 1) -> RunResult:
    """The epoch loop shared by every strategy: draw the epoch's seeded permutation, let the
    strategy train on it (timed), stop on divergence, evaluate (timed), record. A process that
    is not `evaluating` (a DDP rank other than 0) records NaN for validation and test. With
    --eval-every, this process's `loop` pauses every N steps for an evaluation (evaluation.py;
    `image_scale`: images of all processes per image of this one)."""
    spec, dd, result = prep.spec, prep.dd, prep.result
    generator = torch.Generator(device=prep.device)
    generator.manual_seed(spec.seed)
    has_val = len(dd.val_labels) > 0
    evaluations = Evaluations(prep.model, dd, result, spec.precision, spec.target_accuracy, prep.device, image_scale,
                              noise=loop.noise if loop is not None else None)
    if spec.eval_every and loop is not None:
        loop.every = spec.eval_every
        # Every rank pauses at the same steps (DDP: the others wait in the next all-reduce).
        loop.checkpoint = evaluations.mid_epoch if evaluating else (lambda steps, images: None)
    steps_before = 0
    for epoch in range(1, spec.epochs + 1):
        order = torch.randperm(dd.train_count, generator=generator, device=prep.device)
        with Region(prep.device) as train_region:
            evaluations.start_epoch(epoch)
            work = train_one_epoch(order)
        train_seconds = train_region.seconds - evaluations.inside
        if work.images == 0:
            raise SpecError(f"batch size {spec.batch_size} leaves nothing to train on in {dd.train_count} "
                            "training images (with --drop-last, or fewer images than workers)")
        if work.bad_step is not None:
            result.status = "DIVERGED"
            result.diverged_step = steps_before + work.bad_step
            result.error = f"loss became non-finite at step {result.diverged_step} (epoch {epoch})"
            evaluations.forget_from(result.diverged_step)
            break
        steps_before += work.steps
        val_loss = val_accuracy = test_loss = test_accuracy = float("nan")
        with Region(prep.device) as eval_region:
            if evaluating:
                val_loss, val_accuracy = evaluate(prep.model, dd, dd.val_images, dd.val_labels, spec.precision)
                test_loss, test_accuracy = evaluate(prep.model, dd, dd.test_images, dd.test_labels, spec.precision)
        record = EpochRecord(
            epoch=epoch, train_loss=work.loss_sum / work.images, train_accuracy=work.correct / work.images,
            val_loss=val_loss if has_val else None, val_accuracy=val_accuracy if has_val else None,
            test_loss=test_loss, test_accuracy=test_accuracy,
            train_seconds=train_seconds, eval_seconds=eval_region.seconds + evaluations.inside,
            images=work.images, steps=work.steps, data_wait_seconds=work.data_wait_seconds)
        result.epochs.append(record)
        if evaluating:
            evaluations.end_epoch(train_seconds, work.steps, work.images, val_accuracy if has_val else test_accuracy,
                                  val_loss if has_val else test_loss, eval_region.seconds)
        if on_epoch:
            on_epoch(record)
        if spec.stop_at_target and result.time_to_target_seconds is not None:
            break  # the epochs left would measure nothing the run reports
    return finish(prep, loop)


def finish(prep: Prepared, loop: StepLoop | None = None) -> RunResult:
    """Close the run's record: peak memory, wall time, the environment the numbers depend on, and
    the spread of this process's step times (`loop`; none for hogwild, whose steps run in its
    worker processes)."""
    result = prep.result
    result.cores = available_cores()
    result.peak_memory_bytes = peak_memory_bytes(prep.device)
    result.wall_seconds = time.perf_counter() - prep.started
    result.environment |= {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "thread_env": {name: os.environ.get(name) for name in THREAD_ENV},
        "torch": torch.__version__,
        "device_name": str(prep.device),
        "micro_batch": prep.slice_size,
        "class_names": list(prep.dd.class_names),  # label i is class_names[i]
        "precision_units": precision_units(prep.spec.precision, prep.device),
        "precision_product_speed": product_speed(prep.spec.precision, prep.device),
        "denormals_flushed": denormals_flushed(),
    }
    if loop is not None:
        result.environment |= loop.step_spread()
    return result


def keep(result: RunResult, prep: Prepared, keep_weights: bool) -> RunResult:
    """Attach the trained weights, with the input normalisation they were trained with, so that
    inference can use them as they are."""
    if keep_weights:
        state = {name: tensor.detach().cpu().clone() for name, tensor in prep.model.state_dict().items()}
        result.weights = {"state_dict": state, "mean": prep.dd.normalize.mean, "std": prep.dd.normalize.std,
                          "classes": prep.dd.classes, "model": prep.spec.model, "dataset": prep.spec.dataset}
    return result
