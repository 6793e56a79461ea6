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

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

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


def slurm_placement() -> dict:
    """Where on Slurm this job runs (called on the node)."""
    import os

    return {"name": "slurm", "job_id": os.environ.get("SLURM_JOB_ID"), "partition": os.environ.get("SLURM_JOB_PARTITION")}


@dataclass
class SlurmExecutor:
    partition: str | None = None  # None: the cluster's default partition
    folder: Path = Path("slurm-jobs")
    time_limit_minutes: int = 60
    memory_gb: float | None = None
    sbatch_options: dict = field(default_factory=dict)  # extra sbatch options, e.g. {"account": "x"}
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
            if not any(cpus >= wanted["CPU"] and gpus >= wanted["GPU"] for cpus, gpus in nodes):
                biggest = max(nodes, default=(0, 0))
                gpus = f" and {wanted['GPU']:g} GPUs" if wanted["GPU"] else ""
                raise ExecutorError(f"--executor slurm: no node of {self.target} has {wanted['CPU']:g} CPUs{gpus} "
                                    f"for {spec.label()} (the largest has {biggest[0]} CPUs, {biggest[1]} GPUs)")

    def submit(self, spec: RunSpec | InferSpec, data_dir: str | None, weights_in: bytes | None, save_weights: bool,
               memory_limit: int | None, claim) -> None:
        import submitit

        wanted = needs(spec)
        executor = submitit.AutoExecutor(folder=self.folder, cluster="slurm")
        parameters = {"timeout_min": self.time_limit_minutes, "cpus_per_task": int(wanted["CPU"]),
                      "name": f"batchlab-{spec.key[:8]}", "slurm_additional_parameters": dict(self.sbatch_options)}
        if self.partition:
            parameters["slurm_partition"] = self.partition
        if wanted["GPU"]:
            parameters["gpus_per_node"] = int(wanted["GPU"])
        if self.memory_gb:
            parameters["mem_gb"] = self.memory_gb
        executor.update_parameters(**parameters)
        job = executor.submit(run_on_node, spec, data_dir, weights_in, save_weights, memory_limit, time.time(),
                              slurm_placement)
        self.in_flight[job.job_id] = (job, spec, claim)

    def finished(self) -> list[tuple[RunSpec | InferSpec, object, Outcome]]:
        """Runs whose job ended since the last call (waits POLL_SECONDS first)."""
        time.sleep(POLL_SECONDS)
        states = self.queue_states()
        ended = []
        for job_id, (job, spec, claim) in list(self.in_flight.items()):
            outcome = self.fate(job, states.get(job_id))
            if outcome is not None:
                del self.in_flight[job_id]
                ended.append((spec, claim, outcome))
        return ended

    def queue_states(self) -> dict[str, str]:
        """Slurm's state of each job in flight that it still knows (finished ones for MinJobAge)."""
        if not self.in_flight:
            return {}
        text = slurm_output(["squeue", "-h", "-t", "all", "-o", "%i %T", "-j", ",".join(self.in_flight)], check=False)
        return dict(line.split(maxsplit=1) for line in text.splitlines() if len(line.split()) == 2)

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
        if state is None:  # squeue no longer knows it: its result may still be on its way
            first = self.gone_since.setdefault(job.job_id, time.monotonic())
            if time.monotonic() - first < RESULT_GRACE_SECONDS:
                return None
        reason = stderr_reason(job)
        if state in KILLED_STATES or (state is None and "CANCELLED" in reason):
            return Outcome("KILLED", None, f"Slurm job {job.job_id} {reason or state.lower()}")
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


def result_of(job) -> Outcome:
    """The Outcome the job left in its result file; the function's own error if it raised."""
    outcome, value = job._get_outcome_and_result()  # reads the result file, asks no accounting
    if outcome == "success":
        return value
    last = [line for line in str(value).strip().splitlines() if line.strip()][-1:]
    return Outcome("FAILED", None, f"Slurm job {job.job_id}: {last[0] if last else 'failed'}")


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
