"""A team of worker processes for one run (hogwild workers, DDP ranks), driven epoch by epoch.

The run's own process coordinates: it sends each worker a command ("train an epoch", or None to
stop) and collects one message per worker. While waiting it watches the workers, so a worker that
raises, dies (even by SIGKILL) or stops answering ends the run as FAILED with that worker's error
within the timeout, and no worker outlives the run.
"""

from __future__ import annotations

import os
import queue
import signal
import time
from typing import Any, Callable

import torch.multiprocessing as mp

# How long a worker may take to answer one command (an epoch, or start-up) before it counts as hung.
TIMEOUT_SECONDS = float(os.environ.get("BATCHLAB_WORKER_TIMEOUT", "1800"))
STOP_GRACE_SECONDS = 10


class WorkerFailed(RuntimeError):
    """A worker process of the run failed; the message names it and says how."""


def _entry(target: Callable, rank: int, args: tuple, commands, results) -> None:
    from .worker import exit_with_parent, one_line

    exit_with_parent()
    try:
        target(rank, *args, commands=commands, results=results)
    except BaseException as error:  # reported to the coordinator, which fails the run
        results.put(("error", rank, one_line(error)))
        raise SystemExit(1) from None


class Team:
    def __init__(self, target: Callable, args: tuple, workers: int):
        # spawn, not fork: a forked child inherits the parent's OpenMP thread pool in a broken state.
        context = mp.get_context("spawn")
        self.commands = [context.SimpleQueue() for _ in range(workers)]
        self.results = context.Queue()
        self.processes = [context.Process(target=_entry, args=(target, rank, args, self.commands[rank], self.results),
                                          daemon=True, name=f"batchlab-worker-{rank}")
                          for rank in range(workers)]
        for process in self.processes:
            process.start()

    def __enter__(self) -> Team:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, command: Any) -> None:
        for channel in self.commands:
            channel.put(command)

    def collect(self, kind: str, other: Callable[[str, int, Any], None] | None = None) -> list[Any]:
        """One `kind` message from every worker, ordered by rank; WorkerFailed if any fails.
        Messages of other kinds that arrive meanwhile go to `other`."""
        payloads: dict[int, Any] = {}
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while len(payloads) < len(self.processes):
            try:
                message_kind, rank, payload = self.results.get(timeout=0.2)
            except queue.Empty:
                self._check_alive()
                if time.monotonic() > deadline:
                    waiting = sorted(set(range(len(self.processes))) - set(payloads))
                    raise WorkerFailed(f"worker(s) {waiting} gave no answer within {TIMEOUT_SECONDS:.0f} s (hung?)") from None
                continue
            if message_kind == "error":
                raise WorkerFailed(f"worker {rank} failed: {payload}")
            if message_kind != kind:
                if other:
                    other(message_kind, rank, payload)
                continue
            payloads[rank] = payload
        return [payloads[rank] for rank in range(len(self.processes))]

    def _check_alive(self) -> None:
        for rank, process in enumerate(self.processes):
            code = process.exitcode
            if code is not None and code != 0:
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                raise WorkerFailed(f"worker {rank} (pid {process.pid}) ended by {how}")
            if code == 0:
                raise WorkerFailed(f"worker {rank} (pid {process.pid}) ended before the run did")

    def close(self) -> None:
        """Ask the workers to stop, then terminate (and kill) any that do not: no orphans."""
        for channel, process in zip(self.commands, self.processes):
            if process.is_alive():
                channel.put(None)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(STOP_GRACE_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
