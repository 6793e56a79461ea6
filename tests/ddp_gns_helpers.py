"""A DDP rank for tests/test_gns.py: linear regression at fixed weights, B_simple from the ranks' own
gradients against the all-reduced one (imported by spawned processes, hence its own module)."""

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from batchlab.train.gns import RankNoiseScale


def linear_regression_rank(rank: int, world: int, port: int, d: int, sigma: float, per_rank: int, steps: int,
                           results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same problem and weights on every rank
        w_star = torch.randn(d)
        delta = torch.randn(d) * 0.3
        model = nn.Linear(d, 1, bias=False)
        with torch.no_grad():
            model.weight.copy_((w_star + delta).view(1, d))
        ddp = DistributedDataParallel(model)
        noise = RankNoiseScale(ddp, world, decay=0.998) if rank == 0 else None
        ddp.register_comm_hook(None, noise.comm_hook if noise else default_hooks.allreduce_hook)
        torch.manual_seed(1 + rank)  # each rank its own examples
        for _ in range(steps):
            x = torch.randn(per_rank, d)
            y = x @ w_star + sigma * torch.randn(per_rank)
            ddp.zero_grad(set_to_none=True)
            ((ddp(x).squeeze(1) - y).square().sum() / per_rank).backward()
            if noise:
                noise.after_slice(0, per_rank, per_rank)
        if noise:
            expected = ((d + 1) * delta.square().sum() + d * sigma ** 2) / delta.square().sum()
            results.put((noise.value(), float(expected)))
        # Leave together, as train/ddp.py does: a rank tearing down gloo while its peer still
        # talks to it can abort the peer ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()
