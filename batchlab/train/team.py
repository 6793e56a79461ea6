"""A team of worker processes for one run (hogwild workers, DDP ranks), driven epoch by epoch.

The run's own process coordinates: it sends each worker a command ("train an epoch", or None to
stop) and collects one message per worker. While waiting it watches the workers, so a worker that
raises, dies (even by SIGKILL) or hangs ends the run as FAILED with that worker's error, and no
worker outlives the run.

Hung means silent, not slow: workers report progress as they train (heartbeat.beat() puts
("progress", rank, None) on the results queue, at most once a second), and a worker that owes an
answer and has sent nothing for $BATCHLAB_WORKER_TIMEOUT seconds counts as hung (or stopped). So
an epoch, or a whole DDP run, may take any time as long as its workers keep training.
"""

from __future__ import annotations

import os
import queue
import signal
import time
from typing import Any, Callable

import torch.multiprocessing as mp

from ..core import heartbeat
from ..core.errors import WorkerFailed, one_line
from ..core.parent import exit_with_parent
from ..device.heap import keep_freed_memory
from ..device.threads import flush_denormals

STOP_GRACE_SECONDS = 10
POLL_SECONDS = 0.2  # how often the coordinator looks at its workers while none speaks
# A killed DDP rank's peer reports its broken connection first; the death is seen a moment later.
DEATH_GRACE_SECONDS = 1.0


def _entry(target: Callable, rank: int, args: tuple, commands, results) -> None:
    exit_with_parent()
    try:
        heartbeat.install(lambda: results.put(("progress", rank, None)))
        # Heard from at once: until now (interpreter, torch import, unpickling the shared tensors)
        # the coordinator went by this process's CPU time (Team._count_start_up). From here on the
        # silent stretches are short (a DDP rank's data load, ~1 s) or waiting in a collective
        # for a peer (DDP), which Team.collect allows for.
        heartbeat.beat()
        flush_denormals()  # a worker process of batchlab's own: before its first tensor work
        keep_freed_memory()
        target(rank, *args, commands=commands, results=results)
    except BaseException as error:  # reported to the coordinator, which fails the run
        results.put(("error", rank, one_line(error)))
        raise SystemExit(1) from None


def ended_by(exit_code: int) -> str:
    """How a process ended, from its (non-zero) exit code: "killed by signal 9 (SIGKILL)"."""
    if exit_code < 0:
        return f"killed by signal {-exit_code} ({signal.Signals(-exit_code).name})"
    return f"ended with exit code {exit_code}"

class Team:
    """`workers` processes running `target(rank, *args, commands=..., results=...)`.

    `coupled`: the workers wait for each other (DDP ranks in collectives), so one that hangs
    silences the others, and one may be silent while it legitimately waits for a peer that is
    working (rank 1 waits in the next all-reduce while rank 0 evaluates). The team then counts as
    hung only when every worker that owes an answer has been silent for the timeout. Independent
    workers (hogwild) count as hung one by one."""

    def __init__(self, target: Callable, args: tuple, workers: int, coupled: bool = False):
        self.coupled = coupled
        self.spoke = [False] * workers  # has sent a message: started up
        self.start_cpu = [0.0] * workers  # CPU seconds seen while it was starting up
        # spawn, not fork: a forked child inherits the parent's OpenMP thread pool in a broken state.
        context = mp.get_context("spawn")
        self.commands = [context.SimpleQueue() for _ in range(workers)]
        self.results = context.Queue()
        # Not daemon processes: those may not start processes of their own, as a DataLoader with
        # --loader-workers does. No orphans all the same: close() ends every worker (the context
        # manager calls it on any exit), and a worker whose coordinator dies exits (exit_with_parent).
        self.processes = [context.Process(target=_entry, args=(target, rank, args, self.commands[rank], self.results),
                                          name=f"batchlab-worker-{rank}")
                          for rank in range(workers)]
        try:
            for process in self.processes:
                process.start()
        except BaseException:  # e.g. out of processes: end the ones started, or exit would wait for them
            self.close(failed=True)
            raise

    def __enter__(self) -> Team:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.close(failed=exc_type is not None)

    def send(self, command: Any) -> None:
        for channel in self.commands:
            channel.put(command)

    def collect(self, kind: str, other: Callable[[str, int, Any], None] | None = None) -> list[Any]:
        """One `kind` message from every worker, ordered by rank; WorkerFailed if any fails or
        hangs (owes its message and has been silent for the timeout). Messages of other kinds that
        arrive meanwhile go to `other`; any message, progress included, shows its sender alive.
        While it waits, this process beats itself: it is alive and watching its team."""
        timeout = heartbeat.timeout_seconds()
        payloads: dict[int, Any] = {}
        # Every worker owes an answer from now on (the command was just sent, or the team just
        # started); one that has answered owes nothing and may be silent (waiting for a command).
        heard = [time.monotonic()] * len(self.processes)
        checked = time.monotonic()
        while len(payloads) < len(self.processes):
            heartbeat.beat()
            try:
                message_kind, rank, payload = self.results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                pass
            else:
                heard[rank], self.spoke[rank] = time.monotonic(), True
                if message_kind == "error":
                    raise self._failure(rank, payload)
                if message_kind == kind:
                    payloads[rank] = payload
                elif message_kind != "progress" and other:
                    other(message_kind, rank, payload)
            if time.monotonic() - checked >= POLL_SECONDS:  # also when messages keep coming
                checked = time.monotonic()
                self._check_alive()
                self._count_start_up(heard)
                self._check_progress(heard, payloads, timeout)
        return [payloads[rank] for rank in range(len(self.processes))]

    def _count_start_up(self, heard: list[float]) -> None:
        """A worker that has not spoken yet is starting (interpreter, torch import, unpickling its
        arguments: 1-5 s, more on a busy machine) and cannot report, but its CPU clock moves while
        it works, and neither a stopped nor a blocked process's does. Until its first message that
        counts as progress: a slow start-up is not taken for a hang (even with a timeout of a few
        seconds), a stuck one still is. From its first message on, only messages count."""
        now = time.monotonic()
        for rank, process in enumerate(self.processes):
            if not self.spoke[rank]:
                cpu = _cpu_seconds(process.pid)
                if cpu > self.start_cpu[rank]:
                    self.start_cpu[rank], heard[rank] = cpu, now

    def _raise_reported_error(self) -> None:
        """WorkerFailed with a worker's own error if one is waiting in the queue."""
        while True:
            try:
                message_kind, rank, payload = self.results.get(timeout=0.05)
            except queue.Empty:
                return
            if message_kind == "error":
                raise self._failure(rank, payload)

    def _failure(self, rank: int, payload: Any) -> WorkerFailed:
        """A worker's own error, named after the death of another worker that caused it if there was
        one: when a DDP rank is killed, its peer reports first ("connection reset by peer"), and the
        cause would be lost. A coupled team's dead peer is waited for a moment (its exit is seen a
        little after the peer's error)."""
        deadline = time.monotonic() + (DEATH_GRACE_SECONDS if self.coupled else 0)
        while True:
            killed = [(other, process) for other, process in enumerate(self.processes)
                      if other != rank and process.exitcode is not None and process.exitcode < 0]
            if killed or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if not killed:
            return WorkerFailed(f"worker {rank} failed: {payload}")
        other, process = killed[0]
        return WorkerFailed(f"worker {other} (pid {process.pid}) was {ended_by(process.exitcode)}; "
                            f"worker {rank} then failed: {payload}")

    def _check_progress(self, heard: list[float], payloads: dict[int, Any], timeout: float) -> None:
        """WorkerFailed if the workers that owe an answer have been silent for `timeout` seconds
        (any of them, or for a coupled team all of them); names them, most silent first."""
        now = time.monotonic()
        silence = {rank: now - heard[rank] for rank in range(len(self.processes)) if rank not in payloads}
        hung = [rank for rank, seconds in silence.items() if seconds >= timeout]
        if not hung or (self.coupled and len(hung) < len(silence)):
            return
        hung.sort(key=lambda rank: -silence[rank])
        names = [f"worker {rank} (pid {self.processes[rank].pid}{_stopped(self.processes[rank].pid)})"
                 for rank in hung]
        text = f"{names[0]} made no progress for {silence[hung[0]]:.0f} s"
        text += "".join(f", {name} for {silence[rank]:.0f} s" for name, rank in zip(names[1:], hung[1:]))
        text += " (hung or stopped?)"
        if self.coupled and len(hung) > 1:
            text += "; the workers wait for each other, so one that hangs silences all"
        raise WorkerFailed(text)

    def _check_alive(self) -> None:
        for rank, process in enumerate(self.processes):
            code = process.exitcode
            if code is not None:
                self._raise_reported_error()  # a worker that raised said why before it ended
            if code is not None and code != 0:
                raise WorkerFailed(f"worker {rank} (pid {process.pid}) was {ended_by(code)}")
            if code == 0:
                raise WorkerFailed(f"worker {rank} (pid {process.pid}) ended before the run did")

    def close(self, failed: bool = False) -> None:
        """Ask the workers to stop, then terminate (and kill) any that do not: no orphans. After a
        failure nothing is asked: a worker may be hung or stopped, so all are terminated at once."""
        if not failed:
            for channel, process in zip(self.commands, self.processes):
                if process.is_alive():
                    channel.put(None)
            self._join(STOP_GRACE_SECONDS)
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                _continue(process.pid)  # a stopped process acts on SIGTERM only once continued
        self._join(STOP_GRACE_SECONDS)
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join()

    def _join(self, seconds: float) -> None:
        """Wait up to `seconds` for all workers to end, telling our own watcher we are alive: this
        wait is bounded, and it must not be mistaken for a hang of this process."""
        deadline = time.monotonic() + seconds
        for process in self.processes:
            while process.is_alive() and time.monotonic() < deadline:
                heartbeat.beat()
                process.join(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def _continue(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far; 0 if it is gone."""
    try:
        import psutil

        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except Exception:  # gone meanwhile: its exit is reported by _check_alive
        return 0.0


def _stopped(pid: int) -> str:
    """", stopped" when the process is stopped (SIGSTOP, or a debugger): a hint in the error."""
    try:
        import psutil

        return ", stopped" if psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP) else ""
    except Exception:  # gone meanwhile, or no psutil: no hint
        return ""
