"""DDP: synchronous data parallelism with torch.distributed (gloo on CPU, nccl on GPU).

Every rank holds the whole dataset and the same seeded model; each step rank r trains on its part
of a global batch of workers x batch_size images (see data/device.ddp_order) and DDP averages the
gradients by all-reduce, so all ranks apply the same update — the same update one process makes
with the whole global batch. Rank 0 evaluates and reports.

Launched two ways, one code path (`run_rank`):
- by batchlab: the run's process starts `workers` ranks on this machine (a rendezvous on a free
  local port) and supervises them;
- by torchrun, across machines: each process torchrun starts is one rank, e.g. on each of 2 nodes
      torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
          -m batchlab train --strategy ddp --workers 8 --batch-size 32
  (rank 0 stores the result in its --db; the other ranks store nothing).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Callable

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from ..core.errors import SpecError
from ..core.launch import launched_externally
from ..core.records import EpochRecord, RunResult
from ..data.device import ddp_order
from ..device.heap import keep_freed_memory
from ..device.threads import flush_denormals
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
from .gns import RankNoiseScale
from .graphs import graphed_steps
from .team import Team

NO_BAD_STEP = 2**62  # stands for "every loss finite" in the MIN all-reduce of first bad steps


def all_reduced(work: EpochWork, device: torch.device) -> EpochWork:
    """Sum the ranks' epoch figures; the data wait is the longest rank's, since every rank waits
    in the all-reduce for the slowest one (a few small all-reduces per epoch, a sync point)."""
    bad = work.bad_step if work.bad_step is not None else NO_BAD_STEP
    totals = torch.tensor([work.loss_sum, work.correct, work.images], dtype=torch.float64, device=device)
    first_bad = torch.tensor([bad], dtype=torch.int64, device=device)
    longest_wait = torch.tensor([work.data_wait_seconds], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
    dist.all_reduce(longest_wait, op=dist.ReduceOp.MAX)
    bad_step = int(first_bad.item())
    # steps: synchronised updates of the model, the same on every rank.
    return EpochWork(float(totals[0]), int(totals[1]), int(totals[2]), work.steps,
                     None if bad_step == NO_BAD_STEP else bad_step, float(longest_wait.item()))


def run_rank(spec: RunSpec, data_dir: str | None, keep_weights: bool = False,
             on_epoch: Callable[[EpochRecord], None] | None = None) -> RunResult:
    """This process as one rank (RANK, WORLD_SIZE, MASTER_ADDR/PORT, LOCAL_RANK in the env)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world != spec.workers:
        raise SpecError(f"ddp: the launcher started {world} ranks but the run asks for --workers {spec.workers}")
    torch.set_num_threads(spec.threads)
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = f"cuda:{local_rank}" if spec.device.startswith("cuda") else spec.device
    backend = "nccl" if device.startswith("cuda") else "gloo"
    prep = prepare(spec, data_dir, device)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    try:
        wrap = (lambda module: DistributedDataParallel(module, device_ids=[local_rank])) if backend == "nccl" \
            else DistributedDataParallel
        source = input_source(spec, prep.dd, stream=rank)
        with Region(prep.device) as warmup_region:
            warm_up(prep.model, spec, prep.dd, source, prep.slice_size, wrap)
        prep.result.warmup_seconds = warmup_region.seconds
        graphed_steps(prep.model, spec, prep.dd, prep.slice_size, prep.result.environment)  # records why not
        model = wrap(prep.model)  # broadcasts rank 0's initial weights (identical anyway: same seed)
        optimizer = make_optimizer(spec.optimizer, model.parameters(), spec.effective_lr)
        torch.manual_seed(spec.seed * 1009 + rank + 1)  # each rank its own dropout masks
        loop = StepLoop(model, optimizer, prep.dd, spec.batch_size, spec.precision, prep.slice_size, source,
                        make_scheduler(spec, optimizer, prep.dd.train_count, rank))
        if spec.gns:  # every rank reduces through the same hook; rank 0, which evaluates, measures
            loop.noise = RankNoiseScale(model, world) if rank == 0 else None
            model.register_comm_hook(None, loop.noise.comm_hook if rank == 0 else default_hooks.allreduce_hook)
        model.train()

        def one_epoch(order: torch.Tensor) -> EpochWork:
            indices = ddp_order(order, world, rank, spec.batch_size, spec.drop_last)
            return all_reduced(loop.train(indices), prep.device)

        try:
            result = run_epochs(prep, one_epoch, on_epoch, evaluating=rank == 0, loop=loop, image_scale=world)
        finally:
            source.close()
        # Leave together: a rank that tears down its process group while a peer still talks to
        # it can abort the peer.
        dist.barrier()
        return keep(result, prep, keep_weights)
    finally:
        dist.destroy_process_group()


def spawned_rank(rank: int, spec: RunSpec, data_dir: str | None, port: int, keep_weights: bool,
                 commands, results) -> None:
    """Entry of a rank started by batchlab: set the launcher's environment, run, report to the team."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(spec.workers),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    report = (lambda record: results.put(("epoch", rank, record))) if rank == 0 else None
    result = run_rank(spec, data_dir, keep_weights, report)
    results.put(("done", rank, result if rank == 0 else None))
    # Tensors (kept weights) travel as shared-memory handles owned by this process: stay alive
    # until the coordinator has read the result and says stop.
    commands.get()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_ddp(spec: RunSpec, data_dir: str | None = None,
              on_epoch: Callable[[EpochRecord], None] | None = None, keep_weights: bool = False) -> RunResult:
    spec = spec.validated()
    if launched_externally():  # this process is one rank that `batchlab` was started as
        flush_denormals()
        keep_freed_memory()
        return run_rank(spec, data_dir, keep_weights, on_epoch)
    started = time.perf_counter()

    def forward(kind: str, rank: int, payload) -> None:
        if kind == "epoch" and on_epoch:
            on_epoch(payload)

    # coupled: a rank waiting in a collective for a hung peer is silent too (team.Team).
    with Team(spawned_rank, (spec, data_dir, free_port(), keep_weights), spec.workers, coupled=True) as team:
        result = team.collect("done", forward)[0]
    result.wall_seconds = time.perf_counter() - started  # rank start-up included
    return result
