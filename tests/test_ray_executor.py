"""`--executor ray` against a real Ray started by the sweep on this machine: runs come back and are
stored with where they ran; a Ray worker killed mid-run ends that run FAILED with Ray's reason and
the sweep goes on (issue: beyond one machine, item 5)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys

import psutil
import pytest
from processes_helpers import wait_for
from typer.testing import CliRunner

from batchlab.cli.app import app
from batchlab.runner.machine_noise import is_run_worker

pytest.importorskip("ray", reason="the cluster extra is not installed: pip install \"batchlab[cluster]\"")
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def sweep_command(folder, db, epochs: str) -> list[str]:
    # Each run takes both CPUs (threads 2): Ray runs them one after the other on 2 cores.
    return [sys.executable, "-m", "batchlab", "sweep", "--dataset", f"folder:{folder}", "--model", "mlp",
            "--batch-size", "16,32", "--epochs", epochs, "--limit-train", "1500", "--threads", "2",
            "--executor", "ray", "--db", str(db)]


def run_workers_under(sweep: subprocess.Popen) -> list[psutil.Process]:
    """batchlab run workers started for a Ray worker of this sweep's Ray (not for the sweep itself)."""
    found = []
    for process in psutil.process_iter(["cmdline", "name"]):
        if is_run_worker(process.info["cmdline"] or [], process.info["name"] or "") and \
                ray_worker_of(process).pid != sweep.pid:
            found.append(process)
    return found


def ray_worker_of(run_worker: psutil.Process) -> psutil.Process:
    """The process whose task started `run_worker`: its parent, or its server's (forked_workers.py)."""
    parent = run_worker.parent()
    return parent.parent() if "batchlab.runner.worker_server" in parent.cmdline() else parent


def test_a_sweep_on_ray_stores_each_run_with_its_node(synthetic_folder, tmp_path):
    db = tmp_path / "ray.db"
    ran = subprocess.run(sweep_command(synthetic_folder, db, "1"), capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    rows = json.loads(CliRunner().invoke(app, ["report", "--db", str(db), "--runs", "--format", "json"]).stdout)
    assert [row["status"] for row in rows] == ["DONE", "DONE"]
    assert all(row["executor"] == "ray" and row["machine"] == "ray@local" for row in rows), rows
    with sqlite3.connect(db) as con:
        where = [json.loads(text)["executor"] for (text,) in con.execute("SELECT environment FROM runs")]
    assert all(run["node"] and run["job_id"] and run["queue_wait_seconds"] >= 0 for run in where), where


def test_a_killed_ray_worker_fails_its_run_and_the_sweep_goes_on(synthetic_folder, tmp_path):
    db = tmp_path / "ray.db"
    sweep = subprocess.Popen(sweep_command(synthetic_folder, db, "40"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: run_workers_under(sweep), timeout=120)
        worker = run_workers_under(sweep)[0]
        ray_worker = ray_worker_of(worker)
        ray_worker.send_signal(signal.SIGKILL)  # the Ray worker process running the first run's task
        _, stderr = sweep.communicate(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 1, stderr  # a run failed: said, and the exit code says so
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT batch_size, status, error FROM runs ORDER BY batch_size").fetchall()
    statuses = {batch: status for batch, status, _ in rows}
    assert sorted(statuses.values()) == ["DONE", "FAILED"], rows
    failed = next(error for _, status, error in rows if status == "FAILED")
    assert "its Ray worker died" in failed, failed
    assert not psutil.pid_exists(worker.pid) or worker.status() == psutil.STATUS_ZOMBIE  # no orphan run worker


def test_an_unknown_executor_and_a_run_too_big_for_every_node_are_one_line(synthetic_folder, tmp_path):
    db = tmp_path / "ray.db"
    unknown = CliRunner().invoke(app, ["sweep", "--dataset", f"folder:{synthetic_folder}", "--batch-size", "16",
                                       "--executor", "kubernetes", "--db", str(db)])
    assert unknown.exit_code == 2 and "unknown executor 'kubernetes'" in unknown.output, unknown.output
    command = sweep_command(synthetic_folder, db, "1")
    command[command.index("--threads") + 1] = "64"
    too_big = subprocess.run(command, capture_output=True, text=True, timeout=300)
    lines = [line for line in too_big.stderr.splitlines() if line.strip()]
    assert too_big.returncode == 2 and len(lines) == 1, too_big.stderr
    assert "no node of ray@local has 64 CPUs" in lines[0], lines
    with sqlite3.connect(db) as con:  # nothing was submitted, nothing claimed
        assert con.execute("SELECT COUNT(*) FROM runs WHERE status <> 'PENDING'").fetchone()[0] == 0


def test_an_unreachable_ray_address_or_a_missing_extra_is_one_line_before_anything_is_stored(
        synthetic_folder, tmp_path, monkeypatch):
    db = tmp_path / "ray.db"
    flags = ["sweep", "--dataset", f"folder:{synthetic_folder}", "--batch-size", "16", "--executor", "ray",
             "--db", str(db)]
    unreachable = CliRunner().invoke(app, flags + ["--ray-address", "127.0.0.1:1"])
    assert unreachable.exit_code == 2, unreachable.output
    assert "nothing answers at 127.0.0.1:1" in unreachable.output and not db.exists(), unreachable.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the cluster extra were not installed
    missing = CliRunner().invoke(app, flags)
    assert missing.exit_code == 2 and 'pip install "batchlab[cluster]"' in missing.output, missing.output
    assert not db.exists()
