"""`--executor slurm` against a real Slurm (scripts/slurm-local start brings one up on this machine;
.ci/run does): runs come back as result files and are stored with their job; a job cancelled with
scancel is stored KILLED and the sweep goes on (issue: beyond one machine, item 5)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import pytest
from processes_helpers import wait_for
from typer.testing import CliRunner

from batchlab.cli.app import app

pytest.importorskip("submitit", reason="the cluster extra is not installed: pip install \"batchlab[cluster]\"")
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def slurm_is_up() -> str | None:
    """Why Slurm cannot be used here, or None."""
    if shutil.which("sinfo") is None:
        return "Slurm is not installed here (scripts/slurm-local start installs and starts it, as root)"
    up = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=30)
    if up.returncode != 0 or "up" not in up.stdout:
        return f"Slurm does not answer here ({(up.stderr.strip() or 'no partition up')}); run scripts/slurm-local start"
    return None


@pytest.fixture(autouse=True)
def slurm():
    reason = slurm_is_up()
    if reason:
        pytest.skip(reason)


def sweep_command(folder, db, epochs: str, batches: str = "16,32") -> list[str]:
    # Each run takes both CPUs of a node (threads 2).
    return [sys.executable, "-m", "batchlab", "sweep", "--dataset", f"folder:{folder}", "--model", "mlp",
            "--batch-size", batches, "--epochs", epochs, "--limit-train", "1500", "--threads", "2",
            "--executor", "slurm", "--slurm-time", "10", "--db", str(db)]


def jobs(state: str) -> list[str]:
    listed = subprocess.run(["squeue", "-h", "-t", state, "-o", "%i %j"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if "batchlab-" in line]


def test_a_sweep_on_slurm_stores_each_run_with_its_job(synthetic_folder, tmp_path):
    db = tmp_path / "slurm.db"
    ran = subprocess.run(sweep_command(synthetic_folder, db, "1"), capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    rows = json.loads(CliRunner().invoke(app, ["report", "--db", str(db), "--runs", "--format", "json"]).stdout)
    assert [row["status"] for row in rows] == ["DONE", "DONE"]
    assert all(row["executor"] == "slurm" and row["machine"] == "slurm@default" for row in rows), rows
    with sqlite3.connect(db) as con:
        where = [json.loads(text)["executor"] for (text,) in con.execute("SELECT environment FROM runs")]
    assert all(run["job_id"] and run["queue_wait_seconds"] >= 0 for run in where), where
    # Each run names its node as Slurm does (with two slurmd on one host, not the host's name).
    slurm_nodes_named = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True).stdout.split()
    assert all(run["node"] in slurm_nodes_named for run in where), (where, slurm_nodes_named)
    assert (tmp_path / "slurm-jobs").is_dir()  # the job folder beside the store


def test_a_cancelled_job_is_stored_killed_and_the_sweep_goes_on(synthetic_folder, tmp_path):
    db = tmp_path / "slurm.db"
    sweep = subprocess.Popen(sweep_command(synthetic_folder, db, "40"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: jobs("RUNNING"), timeout=120)
        cancelled = jobs("RUNNING")[0]
        subprocess.run(["scancel", cancelled], check=True)
        _, stderr = sweep.communicate(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 1, stderr  # a run was killed: said, and the exit code says so
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT status, error FROM runs ORDER BY batch_size").fetchall()
    assert sorted(status for status, _ in rows) == ["DONE", "KILLED"], rows
    error = next(error for status, error in rows if status == "KILLED")
    assert f"Slurm job {cancelled} cancelled" in error, error
    assert not jobs("all") or cancelled not in jobs("PENDING,RUNNING")


def test_an_unknown_partition_is_one_line_before_anything_is_stored(synthetic_folder, tmp_path):
    db = tmp_path / "slurm.db"
    refused = CliRunner().invoke(app, ["sweep", "--dataset", f"folder:{synthetic_folder}", "--batch-size", "16",
                                       "--executor", "slurm", "--slurm-partition", "gpu-a100", "--db", str(db)])
    assert refused.exit_code == 2 and "no partition 'gpu-a100' here" in refused.output, refused.output
    assert not db.exists()


def submitted_jobs(db) -> list[str]:
    """Every job submitit submitted into the store's job folder (one file per job)."""
    return sorted(path.name.removesuffix("_submitted.pkl") for path in (db.parent / "slurm-jobs").glob("*_submitted.pkl"))


def stored_runs(db) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT status, environment, cluster_job FROM runs ORDER BY batch_size").fetchall()


def test_a_killed_coordinator_s_jobs_are_adopted_by_the_next_sweep_not_run_twice(synthetic_folder, tmp_path):
    db = tmp_path / "slurm.db"
    command = sweep_command(synthetic_folder, db, "6")
    coordinator = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: jobs("RUNNING"), timeout=120)
        wait_for(lambda: len(submitted_jobs(db)) == 2 and all(job for *_, job in stored_runs(db)), timeout=60)
    finally:
        coordinator.kill()  # SIGKILL: no chance to cancel or store anything
        coordinator.wait()
    assert jobs("PENDING,RUNNING"), "the jobs outlive their coordinator"
    before = submitted_jobs(db)
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "2 run(s) submitted by an earlier sweep" in again.stderr, again.stderr
    assert submitted_jobs(db) == before  # nothing submitted again: each run ran once
    rows = stored_runs(db)
    assert [status for status, *_ in rows] == ["DONE", "DONE"], rows
    assert sorted(json.loads(environment)["executor"]["job_id"] for _, environment, _ in rows) == before


def test_detach_leaves_the_jobs_running_and_a_later_sweep_collects_them(synthetic_folder, tmp_path):
    db = tmp_path / "slurm.db"
    command = sweep_command(synthetic_folder, db, "3")
    left = subprocess.run(command + ["--detach"], capture_output=True, text=True, timeout=300)
    assert left.returncode == 0, left.stderr
    assert "left running on Slurm" in left.stderr, left.stderr
    assert [status for status, *_ in stored_runs(db)] == ["RUNNING", "RUNNING"]
    assert jobs("PENDING,RUNNING")
    before = submitted_jobs(db)
    collected = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert collected.returncode == 0, collected.stderr
    assert submitted_jobs(db) == before
    assert [status for status, *_ in stored_runs(db)] == ["DONE", "DONE"]


def slurm_nodes() -> int:
    listed = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=30).stdout
    return len(set(listed.split()))


def test_a_ddp_run_over_two_nodes_is_one_job_whose_tasks_are_its_ranks(synthetic_folder, tmp_path):
    if slurm_nodes() < 2:
        pytest.skip("this Slurm has one node: SLURM_LOCAL_NODES=2 scripts/slurm-local start gives two (.ci/run does)")
    db = tmp_path / "slurm.db"
    ran = subprocess.run([sys.executable, "-m", "batchlab", "sweep", "--dataset", f"folder:{synthetic_folder}",
                          "--model", "mlp", "--batch-size", "16", "--epochs", "1", "--limit-train", "800",
                          "--strategy", "ddp", "--workers", "2", "--nodes", "2", "--threads", "1",
                          "--executor", "slurm", "--slurm-time", "10", "--db", str(db)],
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    assert len(submitted_jobs(db)) == 1
    with sqlite3.connect(db) as con:
        status, nodes, environment = con.execute("SELECT status, nodes, environment FROM runs").fetchone()
    where = json.loads(environment)["executor"]
    assert (status, nodes) == ("DONE", 2)
    assert where["nodes"] == 2 and where["rank"] == 0 and where["master"].startswith("slurmlocal"), where
    logs = sorted(path.name for path in (db.parent / "slurm-jobs").glob("*_log.out"))
    assert len(logs) == 2, logs  # one task per rank


def test_runs_asking_the_same_resources_go_as_one_job_array(synthetic_folder, tmp_path):
    db = tmp_path / "slurm.db"
    ran = subprocess.run(sweep_command(synthetic_folder, db, "1", "16,32,64"),
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    scripts = list((db.parent / "slurm-jobs").glob("*_submission.sh"))
    assert len(scripts) == 1 and "#SBATCH --array=0-2" in scripts[0].read_text()  # one sbatch for the three
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT status, cluster_job FROM runs").fetchall()
    ids = sorted(json.loads(job)["job_id"] for _, job in rows)
    assert [status for status, _ in rows] == ["DONE"] * 3
    assert len({job_id.split("_")[0] for job_id in ids}) == 1 and [i.split("_")[1] for i in ids] == ["0", "1", "2"]


def test_a_job_sbatch_refuses_is_one_line_and_its_runs_are_not_left_running(synthetic_folder, tmp_path):
    db = tmp_path / "slurm.db"
    refused = subprocess.run(sweep_command(synthetic_folder, db, "1") + ["--slurm-option", "constraint=no-such-feature"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr
    assert "sbatch refused the job" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert [status for status, *_ in stored_runs(db)] == ["FAILED", "FAILED"]  # run again by the next sweep
