"""`--executor ray`: each run as one Ray task, on the Ray cluster at `--ray-address` or on a Ray
started for the sweep on this machine.

On its node the task runs the run exactly as a local sweep does (remote.run_on_node) and returns
the Outcome; Ray carries it back to the coordinating sweep, the store's only writer. What a run
needs (CPUs: its threads × workers; GPUs: one per worker on a cuda device) is asked of Ray, so
Ray never starts more runs on a node than it has cores for. Tasks are never retried by Ray
(max_retries=0): a run whose worker or node dies is stored FAILED with Ray's reason, not run twice.

Timing: everything a run measures is measured on its node, inside the run's worker, as locally.
The wait in Ray's queue (submission to the task's start on its node, across two clocks) is
recorded apart, as `queue_wait_seconds` in the run's environment, and enters no timing.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from ..spec.run import InferSpec, RunSpec
from .remote import ExecutorError, needs, run_on_node
from .sweep import Outcome

POLL_SECONDS = 1.0


def ray_placement() -> dict:
    """Where on Ray this task runs (called on the node)."""
    import ray

    context = ray.get_runtime_context()
    return {"name": "ray", "node_id": context.get_node_id(), "job_id": context.get_task_id()}


@dataclass
class RayExecutor:
    address: str | None = None  # None: a Ray started here for the sweep, stopped after it
    started_here: bool = False
    in_flight: dict = field(default_factory=dict)  # ObjectRef → what was submitted

    name = "ray"
    # A Ray task ends with the driver that submitted it: there is no leaving runs behind
    # (--detach) nor adopting them later; a restarted sweep runs them again (their runs are STALE).
    detach = False

    @property
    def target(self) -> str:
        """The machine id runs on this executor are stored under (their node is in their environment)."""
        return f"ray@{self.address or 'local'}"

    def open(self) -> None:
        try:
            import ray
        except ImportError:
            raise ExecutorError("--executor ray needs Ray: pip install \"batchlab[cluster]\"") from None
        if ray.is_initialized():
            return
        if self.address:
            refuse_unreachable(self.address)
        try:
            if self.address:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False, logging_level="error")
            else:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="error")
                self.started_here = True
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
            raise ExecutorError(f"--executor ray: cannot connect to {where} ({str(error).splitlines()[0]})") from None

    def check(self, specs: list[RunSpec | InferSpec]) -> None:
        """Refuse, before anything is submitted, a run no node of the cluster can hold (Ray would
        keep it queued forever)."""
        import ray

        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        for spec in specs:
            wanted = needs(spec)
            if not any(all(node.get(name, 0.0) >= amount for name, amount in wanted.items()) for node in nodes):
                largest = max(nodes, key=lambda node: node.get("CPU", 0.0), default={})
                gpus = f" and {wanted['GPU']:g} GPUs" if wanted["GPU"] else ""
                raise ExecutorError(
                    f"--executor ray: no node of {self.target} has {wanted['CPU']:g} CPUs{gpus} for {spec.label()} "
                    f"(the largest has {largest.get('CPU', 0):g} CPUs, {largest.get('GPU', 0):g} GPUs)")

    def submit(self, spec: RunSpec | InferSpec, data_dir: str | None, weights_in: bytes | None, save_weights: bool,
               memory_limit: int | None, claim) -> None:
        """Submit the run as a task (nothing to name in the store: see `detach`)."""
        wanted = needs(spec)
        ref = self.task(run_on_node, f"batchlab {spec.label()}", wanted["CPU"], wanted["GPU"]).remote(
            spec, data_dir, weights_in, save_weights, memory_limit, time.time(), ray_placement)
        self.in_flight[ref] = (spec, claim)

    def submit_all(self, runs: list[tuple[RunSpec | InferSpec, bytes | None, object]], data_dir: str | None,
                   save_weights: bool, memory_limit: int | None, submitted=None) -> None:
        """Submit (run, its input weights, its claim) each as a task. Nothing names a task in the
        store (`submitted` is not called): it cannot outlive this sweep."""
        for spec, weights, claim in runs:
            self.submit(spec, data_dir, weights, save_weights, memory_limit, claim)

    @staticmethod
    def task(function, name: str, cpus: float, gpus: float):
        import ray

        return ray.remote(function).options(num_cpus=cpus, num_gpus=gpus, max_retries=0, name=name)

    def call(self, function, *args, cpus: float, gpus: float = 0):
        """Run `function(*args)` as one task and return its value (advise's probes on a node):
        ExecutorError with Ray's reason if it fails; Ctrl-C cancels it."""
        import ray

        ref = self.task(function, f"batchlab {getattr(function, '__name__', 'call')}", cpus, gpus).remote(*args)
        try:
            return ray.get(ref)
        except KeyboardInterrupt:
            ray.cancel(ref, force=True)
            raise
        except exceptions_of_ray() as error:
            raise ExecutorError(f"--executor ray: {failure(error)[1]}") from None

    def finished(self) -> list[tuple[RunSpec | InferSpec, object, Outcome]]:
        """Runs that ended since the last call (waits up to POLL_SECONDS for one)."""
        import ray

        if not self.in_flight:
            return []
        done, _ = ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=POLL_SECONDS)
        ended = []
        for ref in done:
            spec, claim = self.in_flight.pop(ref)
            ended.append((spec, claim, self.outcome(ref)))
        return ended

    @staticmethod
    def outcome(ref) -> Outcome:
        import ray

        try:
            return ray.get(ref)
        except exceptions_of_ray() as error:
            status, why = failure(error)
            return Outcome(status, None, why)

    def cancel_all(self) -> list[tuple[RunSpec | InferSpec, object]]:
        """Cancel every run in flight (Ctrl-C on the sweep: no orphan tasks); returns them."""
        import ray

        cancelled = []
        for ref, (spec, claim) in list(self.in_flight.items()):
            ray.cancel(ref, force=True)
            cancelled.append((spec, claim))
        self.in_flight.clear()
        return cancelled

    def close(self) -> None:
        import ray

        if self.started_here and ray.is_initialized():
            ray.shutdown()


CONNECT_SECONDS = 10.0


def refuse_unreachable(address: str) -> None:
    """One line, at once, for a Ray address nothing answers at: ray.init itself retries for
    minutes, logging every attempt. ("auto" and addresses without a port are left to Ray.)"""
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ExecutorError(f"--ray-address {address!r}: not host:port or ray://host:port") from None
    if not host or port is None:
        return
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise ExecutorError(f"--executor ray: nothing answers at {address} ({error.strerror or error}); "
                            "is the Ray cluster up (ray start --head)?") from None


def exceptions_of_ray() -> type:
    from ray import exceptions

    return exceptions.RayError


def failure(error: BaseException) -> tuple[str, str]:
    """How a Ray task that ended in `error` is stored: its status and why, in Ray's words."""
    from ray import exceptions

    if isinstance(error, exceptions.TaskCancelledError):
        return "KILLED", "cancelled on Ray"
    if isinstance(error, exceptions.WorkerCrashedError):
        return "FAILED", f"its Ray worker died ({first_line(error)})"
    if isinstance(error, exceptions.NodeDiedError):
        return "FAILED", f"its Ray node died ({first_line(error)})"
    if isinstance(error, exceptions.RayTaskError):  # the function raised: its traceback ends with what
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return "FAILED", lines[-1][:300] if lines else type(error).__name__
    return "FAILED", f"Ray: {first_line(error)}"


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__
