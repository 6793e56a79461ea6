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


def sweep_command(folder, db, epochs: str) -> list[str]:
    # Each run takes both CPUs (threads 2): Slurm runs the jobs one after the other on 2 cores.
    return [sys.executable, "-m", "batchlab", "sweep", "--dataset", f"folder:{folder}", "--model", "mlp",
            "--batch-size", "16,32", "--epochs", epochs, "--limit-train", "1500", "--threads", "2",
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
    assert all(run["job_id"] and run["node"] and run["queue_wait_seconds"] >= 0 for run in where), where
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
