"""Hogwild: asynchronous SGD on parameters in shared memory, updated without locks.

The run's process holds the model and the dataset in shared memory. Each epoch it writes the
seeded permutation to a shared buffer; worker w trains on its contiguous share (so the epoch
covers the dataset once in total), with its own optimizer state and its own dropout seed, and
applies every update straight to the shared parameters — races included, as in the OpenMP study's
unprotected updates. The run's process evaluates the shared model between epochs.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..core.cpus import available_cores
from ..core.records import EpochRecord, RunResult
from ..data.device import DeviceData, hogwild_order
from ..device.timing import Region
from ..spec.run import RunSpec
from .engine import (
    EpochWork,
    StepLoop,
    input_source,
    keep,
    make_optimizer,
    make_scheduler,
    prepare,
    run_epochs,
    warm_up,
)
from .team import Team


def hogwild_worker(rank: int, spec: RunSpec, dd: DeviceData, model: torch.nn.Module, slice_size: int,
                   order: torch.Tensor, commands, results) -> None:
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed * 1009 + rank + 1)  # each worker its own dropout masks
    optimizer = make_optimizer(spec.optimizer, model.parameters(), spec.effective_lr)
    source = input_source(spec, dd, stream=rank)
    try:
        warm_up(model, spec, dd, source, slice_size)
        loop = StepLoop(model, optimizer, dd, spec.batch_size, spec.precision, slice_size, source,
                        make_scheduler(spec, optimizer, dd.train_count, rank))
        model.train()
        results.put(("ready", rank, None))
        while commands.get() is not None:
            indices = hogwild_order(order, spec.workers, rank, spec.batch_size, spec.drop_last)
            results.put(("epoch", rank, loop.train(indices)))
    finally:
        source.close()


def combine(works: list[EpochWork]) -> EpochWork:
    """All workers' epoch together; steps = updates applied to the shared model by all of them;
    data wait: the workers' mean (each waited for its own batches while the others trained)."""
    bad = [w.bad_step for w in works if w.bad_step is not None]
    return EpochWork(sum(w.loss_sum for w in works), sum(w.correct for w in works), sum(w.images for w in works),
                     sum(w.steps for w in works), min(bad) if bad else None,
                     sum(w.data_wait_seconds for w in works) / len(works))


def train_hogwild(spec: RunSpec, data_dir: str | None = None,
                  on_epoch: Callable[[EpochRecord], None] | None = None, keep_weights: bool = False) -> RunResult:
    spec = spec.validated()
    # The coordinator evaluates while the workers wait, so it may use all their threads.
    torch.set_num_threads(min(available_cores(), spec.workers * spec.threads))
    prep = prepare(spec, data_dir)
    prep.dd.share_memory_()
    prep.model.share_memory()
    order = torch.empty(prep.dd.train_count, dtype=torch.int64).share_memory_()

    def one_epoch(epoch_order: torch.Tensor) -> EpochWork:
        order.copy_(epoch_order)
        team.send("epoch")
        return combine(team.collect("epoch"))

    with Team(hogwild_worker, (spec, prep.dd, prep.model, prep.slice_size, order), spec.workers) as team:
        with Region(prep.device) as start_region:  # process start, imports, warm-up: all workers
            team.collect("ready")
        prep.result.warmup_seconds = start_region.seconds
        result = run_epochs(prep, one_epoch, on_epoch)
    return keep(result, prep, keep_weights)
