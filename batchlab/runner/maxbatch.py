"""The largest batch that fits (`batchlab maxbatch`), found on the real training step.

Each probe is a real training run at one batch size, in its own process, as a sweep runs it: the
model, the optimizer with its state, the warm-up and one measured step on the batch's own images
(limit-train = one batch per worker), under the memory the user allows (--memory-limit, an
address-space cap on the CPU, else the RAM available) — so the step measured is the step a sweep
runs. A probe holds only those images of the dataset, where a run holds its whole training and
validation sets: on the device path add the dataset's size, which the command prints. A probe
that runs out of memory (a CUDA out-of-memory error on a GPU, an allocation error under the cap on
a CPU, or killed from outside, as the kernel's OOM killer does) means "does not fit"; any other
failure stops the search with its error.

The search doubles the batch from 2 (batch norm and --gns cannot train on 1) until a probe fails or the training set is reached (no batch
is larger than the training set), then bisects between the largest batch that fitted and the
smallest that did not, to within RESOLUTION. The result is that largest batch and, for use, that
batch less a safety margin (default 10%): a batch at the very edge leaves no room for the
allocator's fragmentation or a longer run's growth, a complaint users of OOM-probing batch
finders make. With automatic micro-batches (the CPU default), memory hardly grows with the batch:
the training set is then usually the limit, and the result says so.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import psutil

from ..core.errors import SpecError
from ..spec.run import RunSpec
from .sweep import run_in_worker

MARGIN = 0.10
RESOLUTION = 0.02  # bisect until the bounds are within 2% (or adjacent)


@dataclass
class Probe:
    batch_size: int
    fits: bool
    status: str  # the probe run's: DONE or OOM
    seconds: float | None = None  # wall seconds of the probe run
    # What advise plans with (runner/advise.py): the one measured step, the evaluation of the test
    # set after it, and the probe's whole cost seen from here (process start to result).
    step_seconds: float | None = None
    eval_seconds: float | None = None
    elapsed_seconds: float | None = None


@dataclass
class MaxBatch:
    max_batch: int  # the largest batch size that fitted
    usable_batch: int  # max_batch less the margin
    margin: float
    limited_by: str  # "memory" or "training set"
    memory_limit: int | None  # bytes of address space per probe process (None: a GPU's own memory)
    probes: list[Probe] = field(default_factory=list)
    smallest_failing: int | None = None  # the smallest batch size that did not fit


def default_memory_limit(spec: RunSpec) -> int | None:
    """On the CPU: the RAM available now (a probe beyond it would swap, not fail). On a GPU the
    device's own memory is the limit, and its out-of-memory error says so."""
    return psutil.virtual_memory().available if spec.device == "cpu" else None


def probe_spec(spec: RunSpec, batch: int) -> RunSpec:
    """A run whose warm-up and single measured step are the training step at `batch` (per worker)."""
    return dataclasses.replace(spec, batch_size=batch, epochs=1, limit_train=batch * spec.workers, val_split=0.0,
                               target_accuracy=0.0, eval_every=0, warmup_epochs=0.0, repeat=0,
                               stop_at_target=False)


def find_max_batch(spec: RunSpec, training_images: int, data_dir: str | None = None, memory_limit: int | None = None,
                   margin: float = MARGIN, on_probe: Callable[[Probe], None] = lambda probe: None,
                   start: int = 2) -> MaxBatch:
    """Search as described above; `training_images`: the training set's size (a worker's share of it
    bounds the batch); `start`: the first batch probed (advise starts at its smallest batch)."""
    if not 0 <= margin < 1:
        raise SpecError(f"--margin is a fraction in [0, 1), got {margin}")
    bound = training_images // spec.workers
    if bound < 1:
        raise SpecError(f"maxbatch: {training_images} training images leave no batch for {spec.workers} worker(s)")
    probes: list[Probe] = []

    def fits(batch: int) -> bool:
        began = time.perf_counter()
        outcome = run_in_worker(probe_spec(spec, batch), data_dir, lambda record: None, memory_limit=memory_limit)
        if outcome.status not in ("DONE", "OOM", "KILLED"):
            raise SpecError(f"maxbatch: the probe at batch {batch} {outcome.status}: {outcome.error}")
        result = outcome.result
        probe = Probe(batch, outcome.status == "DONE", outcome.status, result.wall_seconds if result else None,
                      result.train_seconds if result else None,
                      sum(e.eval_seconds for e in result.epochs) if result else None, time.perf_counter() - began)
        probes.append(probe)
        on_probe(probe)
        return probe.fits

    largest, smallest_failing, batch = 0, None, min(start, bound)
    while True:
        batch = min(batch, bound)
        if not fits(batch):
            smallest_failing = batch
            break
        largest = batch
        if batch == bound:
            break
        batch *= 2
    if largest == 0:
        limit = f"{memory_limit / 2**30:.2f} GiB" if memory_limit else "the device's memory"
        raise SpecError(f"maxbatch: not even batch {batch} of {spec.model} on {spec.dataset} fits within {limit}")
    while smallest_failing is not None and smallest_failing - largest > max(1, largest * RESOLUTION):
        middle = (largest + smallest_failing) // 2
        if fits(middle):
            largest = middle
        else:
            smallest_failing = middle
    return MaxBatch(largest, max(1, math.floor(largest * (1 - margin))), margin,
                    "memory" if smallest_failing is not None else "training set", memory_limit, probes,
                    smallest_failing)
