"""Liveness: $BATCHLAB_WORKER_TIMEOUT measures silence, not run length. Processes that train
report progress (batchlab.heartbeat); one silent for the timeout is stopped, with all it started,
and its run ends FAILED naming it: the sweep's run worker (every strategy), a hogwild worker, a
DDP rank. Healthy runs longer than the timeout end DONE."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from processes_helpers import descendants, run_workers, spawned_workers, still_alive, wait_for

from batchlab.core import heartbeat
from batchlab.core.errors import SpecError, WorkerFailed
from batchlab.train.team import Team


def sweep_command(db, folder, *flags):
    """A sweep on the `folder:` dataset `folder` (a folder reaches the run worker and its team)."""
    return [sys.executable, "-m", "batchlab", "sweep", "--db", str(db), "--dataset", f"folder:{folder}",
            *map(str, flags)]


def slow_model_file(folder, seconds_per_call: float) -> str:
    """A user model (a Python file, importable by spawned workers too) whose every forward pass
    takes `seconds_per_call`: a run of a known length whatever the machine's speed, that uses
    almost no CPU, and beats at every step as a built-in model does."""
    path = folder / "slow_model.py"
    path.write_text("import time\n\nimport torch\n\n\n"
                    "class Slow(torch.nn.Module):\n"
                    "    def __init__(self, classes):\n"
                    "        super().__init__()\n"
                    "        self.linear = torch.nn.Linear(784, classes)\n\n"
                    "    def forward(self, images):\n"
                    f"        time.sleep({seconds_per_call})\n"
                    "        return self.linear(images.flatten(1))\n\n\n"
                    "def build(classes=10):\n"
                    "    return Slow(classes)\n")
    return f"{path}:build"


def the_run(db):
    with sqlite3.connect(db) as con:
        return con.execute("SELECT status, error, wall_seconds FROM runs").fetchone()


# --- the heartbeat itself -------------------------------------------------------------------------

@pytest.fixture
def sent(monkeypatch):
    """Beats sent by this process, with a fake clock; the sender is removed afterwards."""
    clock = [1000.0]
    monkeypatch.setattr(heartbeat.time, "monotonic", lambda: clock[0])
    messages = []
    heartbeat.install(lambda: messages.append(clock[0]))
    yield messages, clock
    heartbeat.uninstall()


def test_beats_are_rate_limited(sent, monkeypatch):
    messages, clock = sent
    for _ in range(2500):  # 2.5 s of 1 ms steps: the first beat sends, then one a second
        heartbeat.beat()
        clock[0] += 0.001
    assert messages == [1000.0, pytest.approx(1001.0, abs=0.01), pytest.approx(1002.0, abs=0.01)]
    monkeypatch.setenv(heartbeat.ENV, "2")  # a short timeout: a beat every timeout/4
    heartbeat.install(lambda: messages.append(clock[0]))
    messages.clear()
    for _ in range(2000):
        heartbeat.beat()
        clock[0] += 0.001
    assert len(messages) == 4


def test_no_sender_no_beat():
    heartbeat.uninstall()
    heartbeat.beat()  # nothing to call: a plain batchlab.run() in the user's process


@pytest.mark.parametrize("value, expected", [(None, 1800.0), ("", 1800.0), ("12", 12.0), (" 0.5 ", 0.5)])
def test_timeout_is_read_from_the_environment(value, expected, monkeypatch):
    if value is None:
        monkeypatch.delenv(heartbeat.ENV, raising=False)
    else:
        monkeypatch.setenv(heartbeat.ENV, value)
    assert heartbeat.timeout_seconds() == expected


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf"])
def test_a_bad_timeout_is_a_clear_error(value, monkeypatch):
    monkeypatch.setenv(heartbeat.ENV, value)
    with pytest.raises(SpecError, match=rf"\$BATCHLAB_WORKER_TIMEOUT must be a (positive )?number of seconds, got '{value}'"):
        heartbeat.timeout_seconds()


# --- a team's watch, without the dataset ----------------------------------------------------------
# Targets of spawned workers: module-level, so that the workers can import them.

def beat_for(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        heartbeat.beat()
        time.sleep(0.02)


def answers_or_beats_then_stops(rank, beat_seconds, commands, results):
    """Worker 0 answers at once and then waits for a command (silent, owing nothing); worker 1
    beats for `beat_seconds`, longer than the timeout, then stops itself without answering."""
    if rank == 0:
        results.put(("done", rank, None))
        commands.get()
        return
    beat_for(beat_seconds)
    os.kill(os.getpid(), signal.SIGSTOP)


def waits_for_peer_that_works_then_stops(rank, beat_seconds, commands, results):
    """As DDP ranks: rank 0 speaks, then waits silently "in a collective" while its peer works
    (beats) for `beat_seconds`; then the peer stops, and both are silent."""
    if rank == 0:
        beat_for(0.3)
        time.sleep(3600)
    beat_for(beat_seconds)
    os.kill(os.getpid(), signal.SIGSTOP)


def answers_at_once(rank, commands, results):
    results.put(("done", rank, None))
    commands.get()


@pytest.fixture
def forwarded(monkeypatch):
    """Beats the coordinator (this process) sends upward while it watches its team."""
    monkeypatch.setenv(heartbeat.ENV, "2")
    messages = []
    heartbeat.install(lambda: messages.append(time.monotonic()))
    yield messages
    heartbeat.uninstall()


def test_a_worker_that_stops_beating_is_named_and_one_that_owes_nothing_is_not(forwarded):
    started = time.monotonic()
    with pytest.raises(WorkerFailed) as failure:
        with Team(answers_or_beats_then_stops, (6.0,), 2) as team:
            team.collect("done")
    elapsed = time.monotonic() - started
    stopped_pid = team.processes[1].pid
    assert re.fullmatch(rf"worker 1 \(pid {stopped_pid}, stopped\) made no progress for [23] s \(hung or stopped\?\)",
                        str(failure.value)), failure.value
    # It beat for 3x the timeout without failing; then it failed within the timeout (+ start-up).
    assert 6 + 2 - 0.5 < elapsed < 6 + 2 + 10
    assert [process.exitcode is not None for process in team.processes] == [True, True]  # none left
    # Meanwhile the coordinator told its own watcher it was alive: about 2 beats a second.
    assert len(forwarded) >= 2 * (elapsed - 1)


def test_coupled_workers_are_hung_only_when_all_are_silent(forwarded):
    started = time.monotonic()
    with pytest.raises(WorkerFailed) as failure:
        with Team(waits_for_peer_that_works_then_stops, (6.0,), 2, coupled=True) as team:
            team.collect("done")
    elapsed = time.monotonic() - started
    # Rank 0 was silent for 3x the timeout while its peer worked: not a hang. Then both were.
    assert 6 + 2 - 0.5 < elapsed < 6 + 2 + 10
    pids = [process.pid for process in team.processes]
    assert re.fullmatch(rf"worker 0 \(pid {pids[0]}\) made no progress for \d+ s, worker 1 \(pid {pids[1]}, stopped\) "
                        rf"for [23] s \(hung or stopped\?\); the workers wait for each other, so one that hangs "
                        "silences all", str(failure.value)), failure.value


def test_start_up_counts_by_cpu_time(monkeypatch):
    # Starting a worker (interpreter, torch import) takes longer than this 1 s timeout and sends
    # nothing, yet is not a hang: the worker's CPU clock moves.
    monkeypatch.setenv(heartbeat.ENV, "1")
    started = time.monotonic()
    with Team(answers_at_once, (), 2) as team:
        assert team.collect("done") == [None, None]
    assert time.monotonic() - started > 1
    # A worker stopped before it could say anything accrues no CPU time: hung after the timeout.
    with pytest.raises(WorkerFailed, match=r"^worker 1 \(pid \d+, stopped\) made no progress for [12] s"):
        with Team(answers_at_once, (), 2) as team:
            os.kill(team.processes[1].pid, signal.SIGSTOP)
            team.collect("done")
    assert all(process.exitcode is not None for process in team.processes)


# --- real runs, through the sweep -----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("strategy", [
    "ddp",  # the whole DDP run is one answer of its team
    "hogwild",  # a hogwild epoch is one answer
])
def test_a_healthy_run_longer_than_the_timeout_is_done(strategy, synthetic_folder, tmp_path):
    timeout = 3
    db = tmp_path / "s.db"
    # 63 steps of 0.08 s per epoch (2,000 images in global batches of 2 x 16): 5 s of training.
    model = slow_model_file(tmp_path, 0.08)
    finished = subprocess.run(sweep_command(db, synthetic_folder, "--strategy", strategy, "--workers", 2,
                                            "--model", model, "--batch-size", 16, "--epochs", 1),
                              capture_output=True, text=True, timeout=180,
                              env=dict(os.environ, BATCHLAB_WORKER_TIMEOUT=str(timeout)))
    status, error, wall = the_run(db)
    assert (status, error, finished.returncode) == ("DONE", None, 0), finished.stderr
    # What makes this a test: the team's one answer took longer than the timeout.
    with sqlite3.connect(db) as con:
        longest_epoch = con.execute("SELECT MAX(train_seconds) FROM epochs").fetchone()[0]
    assert (wall if strategy == "ddp" else longest_epoch) > timeout


def training(process) -> bool:
    """The process has used 3 s of CPU: more than starting (interpreter, torch, the data) takes."""
    return sum(process.cpu_times()[:2]) > 3


def test_stopped_run_worker_fails_the_run_and_leaves_no_process(synthetic_folder, tmp_path):
    # Strategy single: the run worker is the one process of the run, and the sweep watches it.
    timeout = 4
    db = tmp_path / "s.db"
    sweep = subprocess.Popen(sweep_command(db, synthetic_folder, "--model", "seed-cnn", "--batch-size", 32,
                                           "--epochs", 500),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, BATCHLAB_WORKER_TIMEOUT=str(timeout)))

    def running_worker():
        if not db.exists():  # (connecting would create it)
            return None
        try:
            with sqlite3.connect(db) as con:
                status = con.execute("SELECT status FROM runs").fetchone()
        except sqlite3.OperationalError:  # its tables not created yet
            return None
        workers = run_workers(sweep.pid)
        return workers if status == ("RUNNING",) and workers else None

    [worker] = wait_for(running_worker)
    wait_for(lambda: training(worker))  # torch imported, data loaded: training
    stopped_at = time.monotonic()
    os.kill(worker.pid, signal.SIGSTOP)
    _, stderr = sweep.communicate(timeout=120)
    elapsed = time.monotonic() - stopped_at
    assert sweep.returncode == 1, stderr  # a sweep with a failed run exits with 1
    # Its last progress message went out at most a second before it was stopped.
    assert timeout - 1.5 < elapsed < timeout + 15
    status, error, _ = the_run(db)
    assert status == "FAILED" and re.fullmatch(
        rf"run worker \(pid {worker.pid}\) made no progress for [{timeout}{timeout + 1}] s \(hung or stopped\?\)",
        error), error
    assert still_alive([worker]) == []


@pytest.mark.slow
def test_stopped_ddp_rank_fails_the_run_and_leaves_no_process(synthetic_folder, tmp_path):
    # The other rank then waits in an all-reduce, silent too: both are named, the stopped one marked.
    timeout = 4
    db = tmp_path / "s.db"
    sweep = subprocess.Popen(sweep_command(db, synthetic_folder, "--strategy", "ddp", "--workers", 2, "--model", "mlp",
                                           "--batch-size", 8, "--epochs", 500),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, BATCHLAB_WORKER_TIMEOUT=str(timeout)))
    ranks = wait_for(lambda: len(spawned_workers(sweep.pid)) == 2 and spawned_workers(sweep.pid))
    wait_for(lambda: all(training(rank) for rank in ranks))
    everything = descendants(sweep.pid)
    stopped_at = time.monotonic()
    os.kill(ranks[1].pid, signal.SIGSTOP)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 1, stderr
    assert time.monotonic() - stopped_at < timeout + 15
    status, error, _ = the_run(db)
    assert status == "FAILED", error
    assert re.fullmatch(r"worker \d \(pid \d+(, stopped)?\) made no progress for \d+ s, worker \d \(pid \d+(, stopped)?\) "
                        r"for \d+ s \(hung or stopped\?\); the workers wait for each other, so one that hangs silences all",
                        error), error
    assert f"(pid {ranks[1].pid}, stopped)" in error and f"(pid {ranks[0].pid})" in error
    assert still_alive(everything) == []
