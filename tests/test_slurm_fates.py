"""How the Slurm executor reads a job's fate and a cluster's limits, on stand-ins for submitit's job
objects and Slurm's commands (the real Slurm runs in tests/test_slurm_executor.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from batchlab.runner import slurm_executor
from batchlab.runner.remote import ExecutorError
from batchlab.runner.slurm_executor import SlurmExecutor
from batchlab.spec.run import RunSpec


def job_in(folder, job_id: str = "61_2"):
    """A job whose files would be in `folder` (none written: it never started)."""
    paths = SimpleNamespace(result_pickle=folder / f"{job_id}_0_result.pkl", stderr=folder / f"{job_id}_0_log.err")
    return SimpleNamespace(job_id=job_id, paths=paths, num_tasks=1)


def test_a_job_gone_from_the_queue_before_it_started_is_killed_not_failed(tmp_path, monkeypatch):
    """scancel of a pending array task: it leaves squeue at once, with no output and no result."""
    monkeypatch.setattr(slurm_executor, "RESULT_GRACE_SECONDS", 0.0)
    outcome = SlurmExecutor().fate(job_in(tmp_path), None)
    assert outcome.status == "KILLED" and "left the queue before it started" in outcome.error


def test_a_job_that_ran_and_left_no_result_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(slurm_executor, "RESULT_GRACE_SECONDS", 0.0)
    job = job_in(tmp_path, "70")
    job.paths.stderr.write_text("srun: error: node1: task 0: Segmentation fault\n")
    outcome = SlurmExecutor().fate(job, "FAILED")
    assert outcome.status == "FAILED" and outcome.error.startswith("Slurm job 70 ended FAILED")


def test_no_answer_from_squeue_is_no_news(tmp_path, monkeypatch):
    """A busy controller that times out: the jobs stay in flight, none is ended for it."""
    executor = SlurmExecutor()
    executor.in_flight["70"] = (job_in(tmp_path, "70"), RunSpec(), "claim")
    monkeypatch.setattr(slurm_executor, "POLL_SECONDS", 0.0)

    def timed_out(*args, **kwargs):
        raise slurm_executor.subprocess.TimeoutExpired("squeue", 60)

    monkeypatch.setattr(slurm_executor.subprocess, "run", timed_out)
    assert executor.queue_states() is None
    assert executor.finished() == [] and "70" in executor.in_flight


def test_a_run_over_more_nodes_than_the_partition_has_is_refused(monkeypatch):
    executor = SlurmExecutor()
    monkeypatch.setattr(executor, "partition_nodes", lambda: [(2, 0), (2, 0)])
    executor.check([RunSpec(strategy="ddp", workers=4, nodes=2, threads=1)])  # 2 ranks of 1 CPU on each of 2
    with pytest.raises(ExecutorError, match="needs 4 nodes with 1 CPUs each; slurm@default has 2"):
        executor.check([RunSpec(strategy="ddp", workers=4, nodes=4, threads=1)])
    with pytest.raises(ExecutorError, match="no node of slurm@default has 4 CPUs"):
        executor.check([RunSpec(strategy="ddp", workers=4, nodes=1, threads=1)])


def test_an_advise_plan_key_is_unchanged_by_the_nodes_setting():
    """A study planned before `nodes` existed is found again (its key hashed every field then)."""
    from batchlab.runner.advise import plan_key

    base = RunSpec(target_accuracy=0.8)
    assert "nodes" not in base.identity()
    assert plan_key(base, 10.0, None, None, 1, None, "m") != plan_key(RunSpec(target_accuracy=0.8, strategy="ddp",
                                                                               workers=2, nodes=2), 10.0, None,
                                                                       None, 1, None, "m")
