"""Two sweeps on one store never run or store the same run twice; a run whose sweep was killed is
STALE, in the report at once and in the store from the next sweep on (issue: reliability, 1-2)."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import psutil
import pytest
from processes_helpers import wait_for
from typer.testing import CliRunner

from batchlab.cli.app import app
from batchlab.core.errors import RunHeldElsewhere
from batchlab.core.owner import STALE_AFTER_SECONDS, Owner, process_start_time, this_process
from batchlab.core.records import EpochRecord, RunResult
from batchlab.spec.run import RunSpec
from batchlab.store.store import Store

MACHINE = "m1"


def result_of(spec: RunSpec, accuracy: float) -> RunResult:
    epoch = EpochRecord(epoch=1, train_loss=1.0, train_accuracy=0.5, val_loss=None, val_accuracy=None, test_loss=0.5,
                        test_accuracy=accuracy, train_seconds=2.0, eval_seconds=0.5, images=1000, steps=10)
    return RunResult(spec=spec, epochs=[epoch], parameters=10, wall_seconds=3.0)


def gone_owner() -> Owner:
    """An owner on this host whose process no longer exists: a child that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    started = process_start_time(child.pid)
    child.wait()
    return Owner(this_process().host, child.pid, started)


def test_a_run_a_live_sweep_holds_is_left_to_it(tmp_path):
    spec = RunSpec(model="mlp", batch_size=8)
    live = Owner(this_process().host, os.getppid(), process_start_time(os.getppid()))
    with Store(tmp_path / "s.db") as store:
        store.record_machine(MACHINE, {})
        store.start(spec, MACHINE, owner=live)
        assert store.holder(spec, MACHINE) == live
        with pytest.raises(RunHeldElsewhere, match=f"running in another sweep \\(pid {live.pid} on "):
            store.start(spec, MACHINE)
        assert store.runs_frame().loc[0, "status"] == "RUNNING"


def test_a_reused_pid_is_not_the_owner(tmp_path):
    """The same pid but another start time: the owner's pid was given to a new process."""
    spec = RunSpec(model="mlp", batch_size=8)
    me = this_process()
    with Store(tmp_path / "s.db") as store:
        store.record_machine(MACHINE, {})
        store.start(spec, MACHINE, owner=Owner(me.host, me.pid, me.started - 3600))
        assert store.holder(spec, MACHINE) is None
        store.start(spec, MACHINE)  # taken over


def test_a_run_whose_sweep_is_gone_is_stale_then_taken_over(tmp_path):
    spec = RunSpec(model="mlp", batch_size=8)
    path = tmp_path / "s.db"
    with Store(path) as store:
        store.record_machine(MACHINE, {})
        store.start(spec, MACHINE, owner=gone_owner())
    before = path.read_bytes()
    with Store(path, readonly=True) as store:  # a report: STALE shown, nothing written
        row = store.runs_frame().loc[0]
        assert row["status"] == "STALE" and "ended without storing how the run ended" in row["error"]
    assert path.read_bytes() == before
    with Store(path) as store:
        assert store.mark_stale() == 1
        assert store.runs_frame().loc[0, "status"] == "STALE"
        row = store.start(spec, MACHINE)
        store.finish(row, result_of(spec, 0.7))
        assert store.runs_frame().loc[0, "status"] == "DONE"


@pytest.mark.parametrize("age, held", [(timedelta(seconds=5), True), (timedelta(seconds=STALE_AFTER_SECONDS + 5), False)])
def test_an_owner_on_another_host_lives_by_its_heartbeat(tmp_path, age, held):
    spec = RunSpec(model="mlp", batch_size=8)
    path = tmp_path / "s.db"
    with Store(path) as store:
        store.record_machine(MACHINE, {})
        store.start(spec, MACHINE, owner=Owner("another-node", 4242, 1.0))
    beat = (datetime.now(timezone.utc) - age).isoformat(timespec="seconds")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET heartbeat_at = ?", (beat,))
    with Store(path) as store:
        assert (store.holder(spec, MACHINE) is not None) == held
        assert store.mark_stale() == (0 if held else 1)


def test_a_sweep_whose_run_was_taken_over_does_not_store_it(tmp_path):
    """A sweep thought gone (no heartbeat from its host) comes back after another took its run over:
    the result of the one that holds the run is the one stored."""
    spec = RunSpec(model="mlp", batch_size=8)
    with Store(tmp_path / "s.db") as store:
        store.record_machine(MACHINE, {})
        paused = store.start(spec, MACHINE, owner=Owner("another-node", 4242, 1.0))
        with sqlite3.connect(tmp_path / "s.db") as db:
            db.execute("UPDATE runs SET heartbeat_at = '2000-01-01T00:00:00+00:00'")
        mine = store.start(spec, MACHINE)  # taken over
        with pytest.raises(RunHeldElsewhere, match="taken over by pid"):
            store.finish(paused, result_of(spec, 0.1))
        with pytest.raises(RunHeldElsewhere):
            store.fail(paused, "KILLED", "interrupted")
        assert store.runs_frame().loc[0, "status"] == "RUNNING"
        store.finish(mine, result_of(spec, 0.9))
        assert store.runs_frame().loc[0, "test_accuracy"] == 0.9


def test_the_heartbeat_is_refreshed_while_a_run_goes_on(tmp_path):
    from batchlab.runner.claims import Heartbeat

    spec = RunSpec(model="mlp", batch_size=8)
    path = tmp_path / "s.db"
    with Store(path) as store:
        store.record_machine(MACHINE, {})
        row = store.start(spec, MACHINE)
        with sqlite3.connect(path) as db:
            db.execute("UPDATE runs SET heartbeat_at = '2000-01-01T00:00:00+00:00'")
        with Heartbeat(path, {row}, every=0.1):
            time.sleep(0.5)
        beat = store.runs_frame().loc[0, "heartbeat_at"]
    assert datetime.now(timezone.utc) - datetime.fromisoformat(beat) < timedelta(seconds=30)


def sweep_command(folder, db, batch_sizes: str) -> list[str]:
    return [sys.executable, "-m", "batchlab", "sweep", "--dataset", f"folder:{folder}", "--model", "mlp",
            "--batch-size", batch_sizes, "--epochs", "2", "--limit-train", "1500", "--db", str(db)]


def runs_done(stderr: str) -> int:
    found = re.search(r"(\d+) run\(s\) done", stderr)
    assert found, stderr
    return int(found.group(1))


@pytest.mark.slow
def test_two_sweeps_at_once_on_a_new_store_run_each_run_once(synthetic_folder, tmp_path):
    db = tmp_path / "two.db"
    command = sweep_command(synthetic_folder, db, "16,32,64,128")
    sweeps = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [sweep.communicate(timeout=600) for sweep in sweeps]
    errors = [stderr for _, stderr in outputs]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], errors
    assert sum(runs_done(stderr) for stderr in errors) == 4, errors  # each run executed by one sweep only
    assert any("another sweep is running them" in stderr for stderr in errors), errors
    # Two sweeps at once distort each other's timings: said, and recorded with the runs.
    assert any("warning: another batchlab run is active on this machine" in stderr for stderr in errors), errors
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall() == [("DONE", 4)]
        assert con.execute("SELECT COUNT(DISTINCT run_id) FROM epochs").fetchone()[0] == 4
        noise = [json.loads(text)["machine_noise"] for (text,) in con.execute("SELECT environment FROM runs")]
    assert any(run["noisy"] and run["other_batchlab_runs"] for run in noise), noise


@pytest.mark.slow
def test_a_killed_sweep_leaves_a_stale_run_that_the_next_sweep_runs(synthetic_folder, tmp_path):
    db = tmp_path / "k.db"
    command = sweep_command(synthetic_folder, db, "16")
    command[command.index("--epochs") + 1] = "30"  # long enough to be killed running, short enough to rerun
    sweep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def running() -> bool:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                return con.execute("SELECT COUNT(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0] == 1
        except sqlite3.Error:
            return False

    wait_for(running)
    worker = psutil.Process(sweep.pid).children()
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    psutil.wait_procs(worker, timeout=30)  # the worker follows its sweep (exit_with_parent)
    report = CliRunner().invoke(app, ["report", "--db", str(db), "--runs", "--format", "json"])
    row = json.loads(report.stdout)[0]
    assert row["status"] == "STALE" and f"pid {sweep.pid}" in row["error"], row
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 run(s) left RUNNING by a sweep that was killed: stored as STALE" in rerun.stderr
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT status, error FROM runs").fetchall() == [("DONE", None)]


def test_a_run_with_a_cluster_job_is_adopted_not_stale(tmp_path):
    """A coordinator killed (or left with --detach) while its Slurm job runs: the run is not STALE
    but adopted by the next sweep, which watches the same job; a live coordinator keeps it."""
    spec = RunSpec(model="mlp", batch_size=8)
    job = {"executor": "slurm", "job_id": "41", "folder": "/jobs"}
    with Store(tmp_path / "s.db") as store:
        store.record_machine(MACHINE, {})
        row = store.start(spec, MACHINE, owner=gone_owner())
        assert store.adopt(spec, MACHINE) is None  # no job named: nothing to adopt (it is merely stale)
        store.attach_job(row, job)
        assert store.mark_stale() == 0
        adopted, stored = store.adopt(spec, MACHINE)
        assert stored == job and adopted.owner == this_process() and adopted.run_id == row.run_id
        store.finish(adopted, result_of(spec, 0.8))  # the adopter stores the job's result
        assert store.runs_frame().loc[0, "status"] == "DONE"


def test_a_detached_run_has_no_owner_and_a_live_watcher_keeps_its_job(tmp_path):
    spec = RunSpec(model="mlp", batch_size=8)
    live = Owner(this_process().host, os.getppid(), process_start_time(os.getppid()))
    with Store(tmp_path / "s.db") as store:
        store.record_machine(MACHINE, {})
        row = store.start(spec, MACHINE, owner=live)
        store.attach_job(row, {"executor": "slurm", "job_id": "7", "folder": "/jobs"})
        with pytest.raises(RunHeldElsewhere, match="watched by another sweep"):
            store.adopt(spec, MACHINE)
        store.leave_running(row)
        stored = store.db.execute("SELECT status, owner_pid, cluster_job FROM runs").fetchone()
        assert stored["status"] == "RUNNING" and stored["owner_pid"] is None and stored["cluster_job"]
        assert store.runs_frame().loc[0, "status"] == "RUNNING"  # not STALE in a report: its job goes on
        assert store.mark_stale() == 0 and store.adopt(spec, MACHINE)[1]["job_id"] == "7"
        again = store.start(spec, MACHINE)  # a new attempt (a failed run run again) forgets the old job
        assert store.db.execute("SELECT cluster_job FROM runs WHERE run_id = ?", (again.run_id,)).fetchone()[0] is None
