"""Run a list of RunSpecs, each in a worker process of its own, storing every run as it ends.

- Resume: runs whose key is already DONE (or DIVERGED) on this machine are skipped.
- A run that fails (error, out of memory, crash) is stored with its status and the sweep goes on.
- Ctrl-C or SIGTERM: the running worker is stopped, its run stored as KILLED, and
  SweepInterrupted raised; everything finished before stays stored.
- Runs on a device this machine lacks are not started; they are reported as skipped.
- Two sweeps on one store: each run is claimed (store.start) by one sweep, which refreshes its
  heartbeat while it runs (claims.py); the other skips it and says so. Runs whose sweep was
  killed are stored STALE when the next sweep starts, and run again.

The caller watches through SweepEvents callbacks (the CLI draws a progress bar with them).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core import heartbeat
from ..core.errors import RunAlreadyFinished, RunHeldElsewhere, SpecError, one_line
from ..core.records import FINISHED, EpochRecord, InferResult, RunResult
from ..device.machine import fingerprint, machine_id, unavailable_reason
from ..spec.kinds import KINDS, kind_of
from ..spec.run import InferSpec, RunSpec
from ..store.store import Row, Store
from . import forked_workers
from .claims import Heartbeat
from .machine_noise import NoiseWatch, other_batchlab_runs
from .worker import PREFIX, limit_memory

STOP_GRACE_SECONDS = 10


@dataclass
class Outcome:
    status: str
    result: RunResult | InferResult | None = None
    error: str | None = None
    weights: bytes | None = None  # saved weights of a training run, when asked for


@dataclass
class SweepEvents:
    run_started: Callable[[RunSpec, int, int], None] = lambda spec, index, total: None
    epoch_done: Callable[[RunSpec, EpochRecord], None] = lambda spec, record: None
    run_ended: Callable[[RunSpec, Outcome], None] = lambda spec, outcome: None
    # Asked before each run; False leaves it unstarted (advise: the budget left is too short for it).
    may_start: Callable[[RunSpec], bool] = lambda spec: True
    warning: Callable[[str], None] = lambda text: None  # one line for the user, e.g. a busy machine


@dataclass
class SweepSummary:
    planned: int = 0
    skipped_finished: int = 0
    skipped_device: dict[str, str] = field(default_factory=dict)  # device → reason
    outcomes: list[tuple[RunSpec, Outcome]] = field(default_factory=list)
    not_started: list[RunSpec] = field(default_factory=list)  # left by SweepEvents.may_start
    held_elsewhere: list[str] = field(default_factory=list)  # runs another live sweep holds: why skipped
    marked_stale: int = 0  # RUNNING runs of killed sweeps, stored STALE as this sweep started
    adopted: int = 0  # cluster jobs an earlier sweep submitted, watched (and stored) by this one
    detached: list[str] = field(default_factory=list)  # --detach: job ids left running on the cluster

    def count(self, status: str) -> int:
        return sum(1 for _, outcome in self.outcomes if outcome.status == status)


class SweepInterrupted(Exception):
    def __init__(self, summary: SweepSummary, spec: RunSpec):
        super().__init__(f"interrupted during {spec.label()}")
        self.summary = summary
        self.spec = spec


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_in_worker(spec: RunSpec | InferSpec, data_dir: str | None, on_epoch: Callable[[EpochRecord], None],
                  weights_in: bytes | None = None, save_weights: bool = False,
                  memory_limit: int | None = None) -> Outcome:
    """Run `spec` in a new Python process; KeyboardInterrupt stops the worker and propagates."""
    with tempfile.TemporaryDirectory(prefix="batchlab-") as scratch:
        job = {"kind": spec.KIND, "spec": dataclasses.asdict(spec), "data_dir": data_dir}
        if weights_in is not None:
            job["weights_in"] = str(Path(scratch) / "weights_in.pt")
            Path(job["weights_in"]).write_bytes(weights_in)
        if save_weights and kind_of(spec).saves_weights:
            job["weights_out"] = str(Path(scratch) / "weights_out.pt")
        outcome = _supervise(json.dumps(job), on_epoch, memory_limit)
        saved = job.get("weights_out")
        if outcome.result is not None and saved and Path(saved).exists():
            outcome.weights = Path(saved).read_bytes()
        return outcome


def _supervise(job: str, on_epoch: Callable[[EpochRecord], None], memory_limit: int | None = None) -> Outcome:
    """Run the job in a worker process and read its messages until it ends. Every message is a
    sign of life (the worker sends "progress" at least once a second while it works); a worker
    silent for $BATCHLAB_WORKER_TIMEOUT seconds is hung or stopped: it is stopped with all it
    started, and the run FAILED."""
    timeout = heartbeat.timeout_seconds()
    with tempfile.TemporaryFile(mode="w+") as stderr:
        worker, outcome, silence = None, None, None
        try:
            worker = start_worker(job, stderr, memory_limit)
            lines = _lines(worker.stdout)
            heard = time.monotonic()  # from its start: it says "progress" first thing
            while True:
                try:  # waits for a line or the end of the allowed silence (Ctrl-C still interrupts)
                    line = lines.get(timeout=max(0.0, heard + timeout - time.monotonic()))
                except queue.Empty:
                    silence = time.monotonic() - heard
                    stop(worker)
                    break
                if line is None:
                    break  # end of its output: the worker is ending
                if not line.startswith(PREFIX):
                    continue  # a user model's own output
                heard = time.monotonic()
                message = json.loads(line[len(PREFIX):])
                if message["event"] == "epoch":
                    on_epoch(EpochRecord(**message["record"]))
                elif message["event"] == "result":
                    result = KINDS[message["kind"]].result_from_dict(message["result"])
                    outcome = Outcome(result.status, result, result.error)
                elif message["event"] == "error":
                    outcome = Outcome(message["status"], None, message["error"])
            if silence is None:
                try:
                    worker.wait(timeout)
                except subprocess.TimeoutExpired:  # closed its output but does not end: hung on exit
                    silence = time.monotonic() - heard
                    stop(worker)
            code = worker.wait()
        except BaseException:
            if worker is not None:
                stop(worker)
            raise
        if outcome is None and silence is not None:
            return Outcome("FAILED", None, f"run worker (pid {worker.pid}) made no progress for {silence:.0f} s "
                                           "(hung or stopped?)")
        if outcome is None:
            stderr.seek(0)
            tail = [line for line in stderr.read().splitlines() if line.strip()][-1:]
            if code < 0:
                name = signal.Signals(-code).name
                hint = " (killed from outside: out of memory?)" if name == "SIGKILL" else ""
                outcome = Outcome("KILLED", None, f"worker ended by {name}{hint}")
            else:
                outcome = Outcome("FAILED", None, f"worker exited with code {code}: {tail[0] if tail else 'no message'}")
        return outcome


def start_worker(job: str, stderr, memory_limit: int | None) -> subprocess.Popen | forked_workers.ForkedWorker:
    """A worker process running `job`, writing its messages to its stdout and the rest to `stderr`:
    forked from the run-worker server (forked_workers.py) where it can be, else a fresh Python."""
    forked = forked_workers.start(job, stderr.fileno(), memory_limit)
    if forked is not None:
        return forked
    # Own session: a terminal's Ctrl-C reaches only the sweep, which then stops the worker itself
    # and records the run as KILLED.
    worker = subprocess.Popen([sys.executable, "-m", "batchlab.runner.worker"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
                              preexec_fn=functools.partial(limit_memory, memory_limit) if memory_limit else None)
    worker.stdin.write(job)
    worker.stdin.close()
    return worker


def _lines(stream) -> queue.Queue:
    """The lines of `stream` as they come, read by a thread (None at the end), so that waiting
    for the next one can time out."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            with stream:
                for line in stream:
                    lines.put(line)
        finally:
            lines.put(None)

    threading.Thread(target=read, name="batchlab-worker-output", daemon=True).start()
    return lines


def stop(worker: subprocess.Popen) -> None:
    """Terminate a worker and everything it started (its process group: hogwild workers, DDP
    ranks), then kill what does not end in time; never leave any of it running. The group is
    also continued, so that a stopped (SIGSTOP) process acts on the SIGTERM at once."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if worker.poll() is not None:
            break
        try:
            os.killpg(worker.pid, sig)  # the worker leads its own session, so its group is its pid
            if sig == signal.SIGTERM:
                os.killpg(worker.pid, signal.SIGCONT)
        except ProcessLookupError:
            break
        try:
            worker.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass  # still running: the next, harder signal


def next_repeat(store: Store, spec: RunSpec, machine: str) -> RunSpec:
    """The first repeat of `spec` neither finished on this machine nor running in another sweep
    (repeat r uses seed + r), so that running the same `batchlab train` twice, one after the other
    or at once, gives two repeats instead of a skip."""
    repeat = 0
    while True:
        candidate = dataclasses.replace(spec, repeat=repeat, seed=spec.seed + repeat)
        if store.status(candidate, machine) not in FINISHED and store.holder(candidate, machine) is None:
            return candidate
        repeat += 1


def saved_weights(result: RunResult) -> bytes | None:
    """A result's kept weights as the bytes the store holds (torch.save format)."""
    if result.weights is None:
        return None
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(result.weights, buffer)
    return buffer.getvalue()


def record_result(db: str | Path, result: RunResult, weights: bytes | None = None) -> None:
    """Store a result computed outside a sweep (e.g. by rank 0 of a torchrun job)."""
    info = fingerprint()
    machine = machine_id(info)
    with Store(db) as store:
        store.record_machine(machine, info)
        store.finish(store.start(result.spec, machine), result, weights)


def run_sweep(specs: list[RunSpec | InferSpec], db: str | Path, data_dir: str | None = None,
              experiment: str | None = None, events: SweepEvents | None = None,
              save_weights: bool = False, memory_limit: int | None = None, executor=None) -> SweepSummary:
    """Run every spec not yet finished on this machine, each in its own worker process: here, one
    after another, or with `executor` (ray_executor.RayExecutor, slurm_executor.SlurmExecutor) as
    tasks or jobs on a cluster, stored under the executor's target as their machine. Inference
    specs that name a training run get its saved weights from the store."""
    events = events or SweepEvents()
    heartbeat.timeout_seconds()  # a bad $BATCHLAB_WORKER_TIMEOUT is refused before anything is stored
    spread = next((spec for spec in specs if getattr(spec, "nodes", 1) > 1), None)
    if spread is not None and getattr(executor, "name", "local") != "slurm":
        raise SpecError(f"--nodes {spread.nodes}: a run over several nodes is one Slurm job (--executor slurm); "
                        f"{getattr(executor, 'name', 'local')} runs each run on one node")
    summary = SweepSummary(planned=len(specs))
    info = fingerprint()
    if executor is not None:  # the cluster is the machine; each run's node is in its environment
        info = {"hostname": executor.target, "executor": executor.name, "coordinator": info.get("hostname")}
    machine = executor.target if executor is not None else machine_id(info)
    # Ctrl-C and SIGTERM become KeyboardInterrupt here (whatever the CLI set): the running run is
    # stopped and stored as KILLED.
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Store(db) as store:
            store.record_machine(machine, info)
            summary.marked_stale = store.mark_stale()
            todo = []
            for spec in specs:
                reason = unavailable_reason(spec.device) if executor is None else None  # (the cluster's nodes decide)
                if reason:
                    summary.skipped_device[spec.device] = reason
                elif store.status(spec, machine) in FINISHED:
                    summary.skipped_finished += 1
                else:
                    todo.append(spec)
            if executor is not None:
                executor.check(todo)  # before anything is planned: a run no node can hold is refused
            for spec in todo:
                store.plan(spec, machine, experiment)
            sweep = Sweep(store, db, machine, data_dir, experiment, events, summary, save_weights, memory_limit)
            if executor is None:
                sweep.run_here(todo)
            else:
                sweep.run_on(executor, todo)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return summary


HELD_ELSEWHERE = object()  # Sweep.adopt's answer for a run another live sweep watches: skip it


@dataclass
class Sweep:
    """One sweep's runs, claimed and stored by this process (the store's only writer)."""

    store: Store
    db: str | Path
    machine: str
    data_dir: str | None
    experiment: str | None
    events: SweepEvents
    summary: SweepSummary
    save_weights: bool
    memory_limit: int | None

    def claim(self, spec: RunSpec | InferSpec) -> Row | None:
        """Mark the run RUNNING for this sweep; None (and the summary says why) when it must not run."""
        if not self.events.may_start(spec):
            self.summary.not_started.append(spec)
            return None
        try:
            return self.store.start(spec, self.machine, self.experiment)
        except RunAlreadyFinished:  # another sweep finished it since the plan was made
            self.summary.skipped_finished += 1
        except RunHeldElsewhere as held:  # another sweep runs it now: never twice
            self.summary.held_elsewhere.append(str(held))
        return None

    def weights_for(self, spec: RunSpec | InferSpec) -> bytes | None:
        return self.store.weights(spec.weights)[1] if kind_of(spec).loads_weights and spec.weights else None

    def store_outcome(self, spec: RunSpec | InferSpec, row: Row, outcome: Outcome) -> None:
        try:
            if outcome.result is not None:
                self.store.finish(row, outcome.result, outcome.weights)
            else:
                self.store.fail(row, outcome.status, outcome.error or "")
        except (RunAlreadyFinished, RunHeldElsewhere) as elsewhere:  # its stored end stays
            outcome = Outcome("SKIPPED", None, str(elsewhere))
        self.summary.outcomes.append((spec, outcome))
        self.events.run_ended(spec, outcome)

    def killed(self, spec: RunSpec | InferSpec, row: Row | None, error: str) -> None:
        if row is not None:
            try:
                self.store.fail(row, "KILLED", error)
            except (RunAlreadyFinished, RunHeldElsewhere):
                pass
        self.summary.outcomes.append((spec, Outcome("KILLED", None, "interrupted")))

    def run_here(self, todo: list[RunSpec | InferSpec]) -> None:
        """One run after another in worker processes of this machine, each watched for noise."""
        for index, spec in enumerate(todo):
            row = None
            try:  # an interrupt anywhere in here ends this run as KILLED, never half-stored
                weights = self.weights_for(spec)
                row = self.claim(spec)
                if row is None:
                    continue
                self.events.run_started(spec, index, len(todo))
                others = other_batchlab_runs()
                if others:  # both runs' timings suffer; machine_noise records it with the run
                    self.events.warning(f"another batchlab run is active on this machine (pid "
                                        f"{', '.join(map(str, others))}): the timings of both are not trustworthy")
                forked_workers.ready()  # before the watch: a server's start is not the run's
                with Heartbeat(self.db, {row}), NoiseWatch() as watch:
                    outcome = run_in_worker(spec, self.data_dir, lambda record: self.events.epoch_done(spec, record),
                                            weights, self.save_weights, self.memory_limit)
                if outcome.result is not None:
                    outcome.result.environment["machine_noise"] = watch.summary
                self.store_outcome(spec, row, outcome)
            except KeyboardInterrupt:
                self.killed(spec, row, "interrupted (Ctrl-C or SIGTERM) while running")
                raise SweepInterrupted(self.summary, spec) from None

    def run_on(self, executor, todo: list[RunSpec | InferSpec]) -> None:
        """Every run submitted to `executor` at once (it queues them by their resources), each
        stored as it comes back. A run whose job an earlier sweep submitted and no live sweep
        watches (it was left with --detach, or its sweep was killed) is adopted, not submitted
        again. With --detach (executor.detach), what has ended is stored and the rest left
        running, each RUNNING with its job for a later sweep to adopt. Ctrl-C cancels every run in
        flight (no orphan tasks or jobs) and stores them KILLED; any other error on the way does
        the same, FAILED, then goes up."""
        held: dict[Row, RunSpec | InferSpec] = {}  # claimed and not yet stored: their heartbeat goes on
        try:
            with Heartbeat(self.db, held.keys()):
                fresh = []  # (run, its input weights, its claim): to submit, all at once
                for spec in todo:
                    row = self.adopt(executor, spec)
                    if row is HELD_ELSEWHERE:
                        continue
                    if row is None:
                        weights = self.weights_for(spec)  # (a missing training run is refused before a claim)
                        row = self.claim(spec)
                        if row is None:
                            continue
                        fresh.append((spec, weights, row))
                    held[row] = spec
                # A job that may outlive this sweep is named in the store as soon as it is submitted.
                executor.submit_all(fresh, self.data_dir, self.save_weights, self.memory_limit, self.store.attach_job)
                for index, spec in enumerate(held.values()):
                    self.events.run_started(spec, index, len(held))
                while executor.in_flight:
                    for spec, row, outcome in executor.finished():
                        self.store_outcome(spec, row, outcome)
                        del held[row]
                    if executor.detach:
                        self.leave_running(executor, held)
        except BaseException as error:
            interrupted = isinstance(error, KeyboardInterrupt)
            if not interrupted and hasattr(executor, "forget"):
                # Not asked to stop: the jobs go on, for the next sweep to adopt (a failed squeue or
                # a full disk here must not cost hours of runs on the cluster).
                self.leave_running(executor, held)
            executor.cancel_all()
            for row, spec in held.items():
                if interrupted:
                    self.killed(spec, row, f"interrupted (Ctrl-C or SIGTERM): cancelled on {executor.name}")
                else:
                    self.ended_with_sweep(spec, row, error)
            if interrupted and held:
                raise SweepInterrupted(self.summary, next(iter(held.values()))) from None
            raise

    def adopt(self, executor, spec: RunSpec | InferSpec) -> Row | None:
        """The run's row, if its cluster job was submitted by an earlier sweep and is now watched
        by this one (executor.adopt); None if the run has no such job; HELD_ELSEWHERE if a live
        sweep watches it (and the summary says so)."""
        if not hasattr(executor, "adopt"):  # (its job runs already: whatever may_start would say)
            return None
        try:
            adopted = self.store.adopt(spec, self.machine)
        except RunHeldElsewhere as held:  # a live sweep watches its job
            self.summary.held_elsewhere.append(str(held))
            return HELD_ELSEWHERE
        if adopted is None:
            return None
        row, job = adopted
        executor.adopt(spec, row, job)
        self.summary.adopted += 1
        return row

    def leave_running(self, executor, held: dict[Row, RunSpec | InferSpec]) -> None:
        """--detach, once what had ended is stored: every job still in flight is left running,
        its run RUNNING without an owner (store.leave_running) for a later sweep to adopt. One at
        a time, each first released in the store: an interrupt part-way leaves every job either
        released or still in flight (then cancelled), never cancelled with its run released."""
        for spec, row, job_id in executor.running():
            try:
                self.store.leave_running(row)
            except Exception:  # the store takes no writes (a full disk): its owner, gone, lets the next sweep adopt it
                pass
            executor.forget(job_id)
            held.pop(row, None)
            self.summary.detached.append(job_id)

    def ended_with_sweep(self, spec: RunSpec | InferSpec, row: Row, error: BaseException) -> None:
        """A run in flight when the sweep itself failed: cancelled, and stored FAILED if the store
        still takes writes (if not, the next sweep finds it STALE)."""
        try:
            self.store.fail(row, "FAILED", f"cancelled: the sweep stopped ({one_line(error)})")
        except Exception:  # e.g. the full disk that stopped the sweep
            pass
        self.summary.outcomes.append((spec, Outcome("FAILED", None, "the sweep stopped")))


def worker_start_bytes() -> int:
    """Address space a run worker maps before its first step: Python with torch loaded, as this
    process (which has imported torch) maps it. A --memory-limit below it cannot start a run."""
    import psutil
    import torch  # noqa: F401  (loaded: its libraries are what most of the address space is)

    return psutil.Process().memory_info().vms
