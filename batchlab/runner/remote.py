"""What the cluster executors (ray_executor.py, slurm_executor.py) share: the function a node runs
for one run, what a run asks of a node, and their error.

On its node a run goes exactly as in a local sweep: run_in_worker starts a worker process of its own
(forked_workers.py) and watches it, inside a NoiseWatch. The Outcome goes back to the coordinating sweep, which stores it.
"""

from __future__ import annotations

import socket
import time
from typing import Callable

from ..core.errors import UserError
from ..spec.run import InferSpec, RunSpec
from .sweep import Outcome


class ExecutorError(UserError, RuntimeError):
    """The executor cannot be used as asked (not installed, unreachable, too small for a run)."""


def needs(spec: RunSpec | InferSpec) -> dict[str, float]:
    """What one run takes of each of its nodes: a CPU per thread of each worker there, a GPU per
    worker there on cuda (a ddp run over several nodes has workers / nodes on each)."""
    workers = getattr(spec, "workers", 1) // getattr(spec, "nodes", 1)
    return {"CPU": float(max(1, spec.threads or 1) * workers),
            "GPU": float(workers if spec.device.startswith("cuda") else 0)}


def run_on_node(spec: RunSpec | InferSpec, data_dir: str | None, weights_in: bytes | None, save_weights: bool,
                memory_limit: int | None, submitted_at: float, placement: Callable[[], dict]) -> Outcome:
    """One run on the node this executes on, as a local sweep runs it. Its environment gets
    `executor`: the node (its hostname, or the name `placement()` gives it), `placement()` (the
    executor's name and job id), and the wait in the queue (submission on the coordinator's clock
    to start on the node's)."""
    from . import forked_workers
    from .machine_noise import NoiseWatch
    from .sweep import run_in_worker

    started_at = time.time()
    forked_workers.ready()  # before the watch: a server's start is not the run's
    with NoiseWatch() as watch:
        outcome = run_in_worker(spec, data_dir, lambda record: None, weights_in, save_weights, memory_limit)
    if outcome.result is not None:
        outcome.result.environment["machine_noise"] = watch.summary
        outcome.result.environment["executor"] = {"node": socket.gethostname(), **placement(),
                                                  "queue_wait_seconds": max(0.0, started_at - submitted_at)}
    return outcome
