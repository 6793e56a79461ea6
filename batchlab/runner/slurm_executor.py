"""`--executor slurm`: each run as one Slurm job, submitted through submitit.

On its node the job runs the run exactly as a local sweep does (remote.run_on_node) and submitit leaves the Outcome as a result file in the job's
folder, which the coordinating sweep reads and stores: the sweep stays the store's only writer
(no SQLite with many writers on a shared file system). The job folder must therefore be on a file
system the nodes and the coordinator share (default: `slurm-jobs/` beside the store).

How a job's fate is learned: submitit asks `sacct`, which fails on clusters without accounting
storage (its state then stays UNKNOWN and a cancelled job's result() waits forever). batchlab asks
no accounting: the result file first; else `squeue` (which keeps a finished job for MinJobAge);
else the job's own stderr, where slurmstepd writes "CANCELLED AT … [DUE TO …]".
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..spec.run import InferSpec, RunSpec
from .remote import ExecutorError, needs, run_on_node
from .sweep import Outcome

POLL_SECONDS = 2.0
# Slurm job states (squeue %T) that are not an end yet.
WAITING = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "STAGE_OUT",
           "SIGNALING", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT", "RESV_DEL_HOLD", "STOPPED"}
# Ends that mean someone or something stopped the job from outside: the run was killed.
KILLED_STATES = {"CANCELLED", "PREEMPTED", "DEADLINE"}
# After the result file, how long a job gone from squeue may take to leave its result (shared
# file systems lag) before it counts as ended without one.
RESULT_GRACE_SECONDS = 30.0
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize


def slurm_placement() -> dict:
    """Where on Slurm this job runs (called on the node)."""
    import os

    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    # A task of an array is known by ARRAY_TASK (as squeue, scancel and the store name it).
    job_id = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    # The node by Slurm's name for it (the one squeue and sacct show), which is not always its hostname.
    node = {"node": os.environ["SLURMD_NODENAME"]} if os.environ.get("SLURMD_NODENAME") else {}
    return {"name": "slurm", "job_id": job_id, "partition": os.environ.get("SLURM_JOB_PARTITION"), **node}


def rank_on_node(spec: RunSpec, data_dir: str | None, weights_in: bytes | None, save_weights: bool,
                 memory_limit: int | None, submitted_at: float) -> Outcome | None:
    """One task of a ddp run over several nodes: one rank. submitit's TorchDistributedEnvironment
    sets the launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT from the job's first node,
    LOCAL_RANK), which the run's worker inherits, so the run takes the torchrun code path
    (train/ddp.run_rank). Rank 0's Outcome is the run's, whatever it is (OOM, KILLED by scancel:
    stored as such). Another rank that fails raises, which ends its task with an error, and srun
    (--kill-on-bad-exit) ends the others instead of leaving them waiting for it in an all-reduce;
    rank 0 then leaves no result, and the run is stored FAILED with that rank's error (failed_task)."""
    from submitit.helpers import TorchDistributedEnvironment

    ranks = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)

    def placement() -> dict:
        return {**slurm_placement(), "nodes": spec.nodes, "master": ranks.master_addr, "rank": ranks.rank}

    outcome = run_on_node(spec, data_dir, weights_in, save_weights, memory_limit, submitted_at, placement)
    if ranks.rank == 0:
        return outcome
    if outcome.result is None:
        raise RuntimeError(f"rank {ranks.rank}: {outcome.status}: {outcome.error}")
    return None


@dataclass
class SlurmExecutor:
    partition: str | None = None  # None: the cluster's default partition
    folder: Path = Path("slurm-jobs")
    time_limit_minutes: int = 60
    memory_gb: float | None = None
    sbatch_options: dict = field(default_factory=dict)  # extra sbatch options, e.g. {"account": "x"}
    detach: bool = False  # --detach: the sweep submits, collects what has ended, and leaves the rest running
    in_flight: dict = field(default_factory=dict)  # job id → (job, spec, claim)
    gone_since: dict = field(default_factory=dict)  # job id → when squeue stopped knowing it

    name = "slurm"

    @property
    def target(self) -> str:
        return f"slurm@{self.partition or 'default'}"

    def open(self) -> None:
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ExecutorError("--executor slurm needs submitit: pip install \"batchlab[cluster]\"") from None
        if shutil.which("sbatch") is None:
            raise ExecutorError("--executor slurm: sbatch not found (is this a Slurm login node? is Slurm on PATH?)")
        if self.partition and not self.partition_nodes():
            raise ExecutorError(f"--executor slurm: no partition {self.partition!r} here "
                                f"(sinfo lists: {', '.join(self.partitions()) or 'none'})")

    def partitions(self) -> list[str]:
        return sorted({line.strip().rstrip("*") for line in slurm_output(["sinfo", "-h", "-o", "%P"]).splitlines()
                       if line.strip()})

    def partition_nodes(self) -> list[tuple[int, int]]:
        """(CPUs, GPUs) of each node of the partition."""
        command = ["sinfo", "-h", "-N", "-o", "%c %G"] + (["-p", self.partition] if self.partition else [])
        nodes = []
        for line in slurm_output(command).splitlines():
            if not line.strip():
                continue
            cpus, _, gres = line.partition(" ")
            gpus = sum(int(count) for count in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))
            nodes.append((int(cpus.rstrip("+")), gpus))
        return nodes

    def check(self, specs: list[RunSpec | InferSpec]) -> None:
        """Refuse, before anything is submitted, a run no node of the partition can hold."""
        nodes = self.partition_nodes()
        for spec in specs:
            wanted = needs(spec)
            holding = sum(1 for cpus, gpus in nodes if cpus >= wanted["CPU"] and gpus >= wanted["GPU"])
            spread = getattr(spec, "nodes", 1)
            if holding and holding < spread:
                raise ExecutorError(f"--executor slurm: {spec.label()} needs {spread} nodes with {wanted['CPU']:g} "
                                    f"CPUs each; {self.target} has {holding}")
            if not holding:
                biggest = max(nodes, default=(0, 0))
                gpus = f" and {wanted['GPU']:g} GPUs" if wanted["GPU"] else ""
                raise ExecutorError(f"--executor slurm: no node of {self.target} has {wanted['CPU']:g} CPUs{gpus} "
                                    f"for {spec.label()} (the largest has {biggest[0]} CPUs, {biggest[1]} GPUs)")

    def submitter(self, name: str, cpus: float, gpus: float, nodes: int = 1, tasks_per_node: int = 1):
        """A submitit executor for jobs of `cpus` CPUs per task and `gpus` GPUs per node, on
        `nodes` nodes with `tasks_per_node` tasks on each."""
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder, cluster="slurm")
        parameters = {"timeout_min": self.time_limit_minutes, "cpus_per_task": int(cpus), "name": name,
                      "slurm_additional_parameters": dict(self.sbatch_options)}
        if nodes > 1 or tasks_per_node > 1:
            parameters.update(nodes=nodes, tasks_per_node=tasks_per_node, slurm_srun_args=["--kill-on-bad-exit=1"])
        if self.partition:
            parameters["slurm_partition"] = self.partition
        if gpus:
            parameters["gpus_per_node"] = int(gpus)
        if self.memory_gb:
            parameters["mem_gb"] = self.memory_gb
        executor.update_parameters(**parameters)
        return executor

    def submit_all(self, runs: list[tuple[RunSpec | InferSpec, bytes | None, object]], data_dir: str | None,
                   save_weights: bool, memory_limit: int | None, submitted: Callable[[object, dict], None]) -> None:
        """Submit (run, its input weights, its claim) each as a job: runs that ask for the same
        resources on one node go as job arrays (one sbatch for up to MaxArraySize runs), the
        others one by one. `submitted(claim, job)` is called as each sbatch returns, with what
        names the job in the store (store.attach_job): a sweep killed during a long submission
        leaves as few unnamed jobs as can be."""
        groups: dict[tuple, list] = {}
        for run in runs:  # a run over several nodes is a job of its own (its tasks are its ranks)
            spec = run[0]
            shape = (needs(spec)["CPU"], needs(spec)["GPU"]) if getattr(spec, "nodes", 1) == 1 else (spec.key,)
            groups.setdefault(shape, []).append(run)
        largest = self.max_array_size() if any(len(members) > 1 for members in groups.values()) else 1
        for shape, members in groups.items():
            if len(members) == 1 or len(shape) == 1:
                for spec, weights, claim in members:
                    submitted(claim, self.submit(spec, data_dir, weights, save_weights, memory_limit, claim))
                continue
            wanted = needs(members[0][0])
            executor = self.submitter("batchlab-sweep", wanted["CPU"], wanted["GPU"])
            for first in range(0, len(members), largest):
                chunk = members[first:first + largest]
                with sbatch_errors(), executor.batch():  # the jobs get their ids as the block ends
                    jobs = [executor.submit(run_on_node, spec, data_dir, weights, save_weights, memory_limit,
                                            time.time(), slurm_placement) for spec, weights, _ in chunk]
                for job, (spec, _, claim) in zip(jobs, chunk):
                    submitted(claim, self.watch(job, spec, claim))

    def max_array_size(self) -> int:
        """The most tasks one job array may have here (Slurm's MaxArraySize: ids 0 … size - 1)."""
        found = re.search(r"^MaxArraySize\s*=\s*(\d+)", slurm_output(["scontrol", "show", "config"], check=False), re.M)
        return max(1, int(found[1]) if found else DEFAULT_MAX_ARRAY_SIZE)

    def watch(self, job, spec: RunSpec | InferSpec, claim) -> dict:
        """Put a submitted job in flight; returns what names it in the store."""
        self.in_flight[job.job_id] = (job, spec, claim)
        return {"executor": self.name, "job_id": job.job_id, "folder": str(Path(self.folder).resolve()),
                "tasks": job.num_tasks}

    def submit(self, spec: RunSpec | InferSpec, data_dir: str | None, weights_in: bytes | None, save_weights: bool,
               memory_limit: int | None, claim) -> dict:
        """Submit the run as a job of its own; returns what names the job in the store."""
        wanted = needs(spec)
        name = f"batchlab-{spec.key[:8]}"
        nodes = getattr(spec, "nodes", 1)
        with sbatch_errors():
            if nodes > 1:  # one task per rank, the ranks spread evenly; cpus per task: the rank's threads
                per_node = spec.workers // nodes
                executor = self.submitter(name, spec.threads, wanted["GPU"], nodes, per_node)
                job = executor.submit(rank_on_node, spec, data_dir, weights_in, save_weights, memory_limit, time.time())
            else:
                executor = self.submitter(name, wanted["CPU"], wanted["GPU"])
                job = executor.submit(run_on_node, spec, data_dir, weights_in, save_weights, memory_limit, time.time(),
                                      slurm_placement)
        return self.watch(job, spec, claim)

    def adopt(self, spec: RunSpec | InferSpec, claim, stored: dict) -> None:
        """Watch a job an earlier coordinator submitted (`stored`: store.attach_job's record), as
        if this one had: its result is read from its folder when it ends."""
        import submitit

        job = submitit.SlurmJob(folder=stored["folder"], job_id=stored["job_id"], tasks=range(stored.get("tasks", 1)))
        self.in_flight[job.job_id] = (job, spec, claim)

    def running(self) -> list[tuple[RunSpec | InferSpec, object, str]]:
        """(run, claim, job id) of every job in flight."""
        return [(spec, claim, job_id) for job_id, (job, spec, claim) in self.in_flight.items()]

    def forget(self, job_id: str) -> None:
        """--detach: stop watching the job, leaving it running."""
        self.in_flight.pop(job_id, None)

    def call(self, function, *args, cpus: float, gpus: float = 0):
        """Run `function(*args)` as one job and return its value (advise's probes on a node):
        ExecutorError with Slurm's reason if the job fails or is cancelled; Ctrl-C cancels it."""
        with sbatch_errors():
            job = self.submitter(f"batchlab-{getattr(function, '__name__', 'call')}", cpus, gpus).submit(function, *args)
        try:
            while True:
                time.sleep(POLL_SECONDS)
                if Path(job.paths.result_pickle).exists():
                    outcome, value = job._get_outcome_and_result()  # the result file; no accounting asked
                    if outcome == "success":
                        return value
                    raise ExecutorError(f"Slurm job {job.job_id} failed: {last_line(value)}")
                states = self.queue_states([job.job_id])
                state = None if states is None else states.get(job.job_id)
                if states is None or state in WAITING or (state is None and not self.gone_long(job.job_id)):
                    continue
                reason = stderr_reason(job)
                raise ExecutorError(f"Slurm job {job.job_id} ended {state or 'without a result'}"
                                    f"{f' ({reason})' if reason else ''}")
        except KeyboardInterrupt:
            slurm_output(["scancel", job.job_id], check=False)
            raise

    def finished(self) -> list[tuple[RunSpec | InferSpec, object, Outcome]]:
        """Runs whose job ended since the last call (waits POLL_SECONDS first)."""
        time.sleep(POLL_SECONDS)
        states = self.queue_states()
        ended = []
        for job_id, (job, spec, claim) in list(self.in_flight.items()):
            if states is None and not Path(job.paths.result_pickle).exists():
                continue  # squeue did not answer this time: no news is not an end
            outcome = self.fate(job, (states or {}).get(job_id))
            if outcome is not None:
                del self.in_flight[job_id]
                ended.append((spec, claim, outcome))
        return ended

    def queue_states(self, job_ids=None) -> dict[str, str] | None:
        """Slurm's state of each job (default: in flight) that it still knows (finished ones for
        MinJobAge); None when squeue did not answer (a busy controller: ask again next poll)."""
        job_ids = list(self.in_flight if job_ids is None else job_ids)
        if not job_ids:
            return {}
        # -r: an array's tasks one per line ("61_0 PENDING"), as their ids are, not folded ("61_[0-2]")
        command = ["squeue", "-h", "-r", "-t", "all", "-o", "%i %T", "-j", ",".join(job_ids)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        # squeue exits 1 with "Invalid job id specified" once all the jobs asked about are gone
        if done.returncode != 0 and "Invalid job id" not in done.stderr:
            return None
        return dict(line.split(maxsplit=1) for line in done.stdout.splitlines() if len(line.split()) == 2)

    def gone_long(self, job_id: str) -> bool:
        """The job has been unknown to squeue for RESULT_GRACE_SECONDS: its result is not coming."""
        first = self.gone_since.setdefault(job_id, time.monotonic())
        return time.monotonic() - first >= RESULT_GRACE_SECONDS

    def fate(self, job, state: str | None) -> Outcome | None:
        """The job's Outcome once it has ended, else None."""
        if Path(job.paths.result_pickle).exists():
            outcome = result_of(job)
            reason = stderr_reason(job) if outcome.status == "KILLED" else ""
            if reason:  # scancel's SIGTERM reached the run's worker, which ended and reported it
                outcome = Outcome("KILLED", None, f"Slurm job {job.job_id} {reason} ({outcome.error})")
            return outcome
        if state in WAITING:
            return None
        if state is None and not self.gone_long(job.job_id):  # squeue no longer knows it: its result may be on its way
            return None
        reason = stderr_reason(job)
        if state in KILLED_STATES or (state is None and "CANCELLED" in reason):
            return Outcome("KILLED", None, f"Slurm job {job.job_id} {reason or state.lower()}")
        if state is None and not Path(job.paths.stderr).exists():  # never started (a cancelled array task leaves no trace)
            return Outcome("KILLED", None, f"Slurm job {job.job_id} left the queue before it started (cancelled?)")
        reason = reason or failed_task(job)
        return Outcome("FAILED", None, f"Slurm job {job.job_id} ended {state or 'without a result'}"
                                       f"{f' ({reason})' if reason else ''}")

    def cancel_all(self) -> list[tuple[RunSpec | InferSpec, object]]:
        """scancel every job in flight (Ctrl-C on the sweep: no orphan jobs); returns their runs."""
        cancelled = []
        if self.in_flight:
            slurm_output(["scancel", *self.in_flight], check=False)
        for job, spec, claim in self.in_flight.values():
            cancelled.append((spec, claim))
        self.in_flight.clear()
        return cancelled

    def close(self) -> None:
        pass


@contextlib.contextmanager
def sbatch_errors():
    """sbatch's refusal (a wrong --slurm-option, an array over the cluster's limits) as one line."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    try:
        yield
    except (FailedJobError, FailedSubmissionError) as error:
        raise ExecutorError(f"--executor slurm: sbatch refused the job: {last_line(error)}") from None


def result_of(job) -> Outcome:
    """The Outcome the job left in its result file; the function's own error if it raised."""
    # Reads the result file, asks no accounting; a job of several tasks (ranks): rank 0's.
    outcome, value = job.task(0)._get_outcome_and_result()
    if outcome == "success":
        return value
    return Outcome("FAILED", None, f"Slurm job {job.job_id}: {last_line(value)}")


def failed_task(job) -> str:
    """In a job of several tasks (the ranks of a ddp run), why the first task that failed did: the
    others were ended by srun on its account, rank 0 without a result."""
    for task in range(1, job.num_tasks):
        sub = job.task(task)
        if Path(sub.paths.result_pickle).exists():
            outcome, value = sub._get_outcome_and_result()
            if outcome != "success":
                return f"task {task}: {last_line(value)}"
    return ""


def last_line(error: object) -> str:
    """The last line of a job's error (submitit keeps the node's traceback text): what went wrong."""
    last = [line for line in str(error).strip().splitlines() if line.strip()][-1:]
    return last[0] if last else "failed"


def stderr_reason(job) -> str:
    """What slurmstepd wrote in the job's stderr about its end: "cancelled at … due to time limit"."""
    try:
        text = Path(job.paths.stderr).read_text(errors="replace")
    except OSError:
        return ""
    found = re.search(r"\*\*\* JOB \d+ ON \S+ (CANCELLED AT \S+(?: DUE TO [A-Z ]+?)?(?: BY \S+)?) \*\*\*", text)
    if not found:
        return ""
    words = found.group(1).replace("CANCELLED AT", "cancelled at", 1).replace(" DUE TO ", " due to ", 1)
    return words.replace(" BY ", " by ", 1)


def slurm_output(command: list[str], check: bool = True) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ExecutorError(f"--executor slurm: {command[0]} failed ({error})") from None
    if check and done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ExecutorError(f"--executor slurm: {' '.join(command[:2])} failed: {message}")
    return done.stdout
