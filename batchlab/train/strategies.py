"""Training strategies, one signature, one lookup table:

    strategy(spec, data_dir, on_epoch, keep_weights) -> RunResult

- single:  one process, `threads` torch intra-op threads.
- hogwild: `workers` processes update parameters in shared memory without locks (asynchronous
           SGD); each takes its own share of every epoch.
- ddp:     `workers` processes average gradients by all-reduce every step (synchronous SGD,
           torch.distributed: gloo on CPU, nccl on GPU); global batch = workers x batch_size.

Images actually processed are counted over all workers; `batch_size` is per worker.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..core.records import EpochRecord, RunResult
from ..data.device import single_order
from ..device.timing import Region
from ..spec.run import RunSpec
from .engine import StepLoop, input_source, keep, make_optimizer, make_scheduler, prepare, run_epochs, warm_up
from .gns import NoiseScale
from .graphs import graphed_steps

Strategy = Callable[..., RunResult]


def train_single(spec: RunSpec, data_dir: str | None = None,
                 on_epoch: Callable[[EpochRecord], None] | None = None, keep_weights: bool = False) -> RunResult:
    spec = spec.validated()
    torch.set_num_threads(spec.threads)
    prep = prepare(spec, data_dir)
    optimizer = make_optimizer(spec.optimizer, prep.model.parameters(), spec.effective_lr)
    source = input_source(spec, prep.dd)
    try:
        with Region(prep.device) as warmup_region:
            warm_up(prep.model, spec, prep.dd, source, prep.slice_size)
            # On the real model, warm (its capture is an overhead of the warm-up, not timed steps).
            graphed = graphed_steps(prep.model, spec, prep.dd, prep.slice_size, prep.result.environment)
        prep.result.warmup_seconds = warmup_region.seconds
        loop = StepLoop(prep.model, optimizer, prep.dd, spec.batch_size, spec.precision, prep.slice_size, source,
                        make_scheduler(spec, optimizer, prep.dd.train_count))
        loop.noise = NoiseScale(prep.model) if spec.gns else None
        loop.graphed = graphed
        prep.model.train()
        result = run_epochs(prep, lambda order: loop.train(single_order(order, spec.batch_size, spec.drop_last)),
                            on_epoch, loop=loop)
    finally:
        source.close()
    return keep(result, prep, keep_weights)


def strategies() -> dict[str, Strategy]:
    from .ddp import train_ddp
    from .hogwild import train_hogwild

    return {"single": train_single, "hogwild": train_hogwild, "ddp": train_ddp}


def run(spec: RunSpec, data_dir: str | None = None, on_epoch: Callable[[EpochRecord], None] | None = None,
        keep_weights: bool = False) -> RunResult:
    """Run one training run (in this process, plus its workers) and return its measured result."""
    spec = spec.validated()
    return strategies()[spec.strategy](spec, data_dir, on_epoch, keep_weights)
