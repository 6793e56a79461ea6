"""Run workers forked from the run-worker server (runner/forked_workers.py, worker_server.py): the
same results as fresh workers, as separate as they are, and no process left behind."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import pandas
import psutil
import pytest
from processes_helpers import still_alive, wait_for

from batchlab.report.run_process import process_lines
from batchlab.runner import forked_workers
from batchlab.runner.machine_noise import is_run_worker
from batchlab.runner.sweep import run_in_worker
from batchlab.runner.worker_server import RUN_PROCESS_NAME, reseed_numpy
from batchlab.spec.run import RunSpec

pytestmark = pytest.mark.skipif(not forked_workers.supported(), reason="workers are forked on Linux only")


def small_run(folder, **changes) -> RunSpec:
    return RunSpec(**{"dataset": f"folder:{folder}", "model": "mlp", "batch_size": 16, "epochs": 2,
                      "limit_train": 256, "threads": 1, **changes})


def run(spec: RunSpec, **kwargs):
    outcome = run_in_worker(spec, None, lambda record: None, **kwargs)
    assert outcome.result is not None, outcome
    return outcome.result


def test_a_forked_worker_trains_exactly_as_a_fresh_one(synthetic_folder, monkeypatch):
    forked = run(small_run(synthetic_folder))
    monkeypatch.setenv("BATCHLAB_FRESH_WORKERS", "1")
    assert not forked_workers.supported()
    fresh = run(small_run(synthetic_folder))
    assert (forked.environment["run_process"], fresh.environment["run_process"]) == ("forked", "fresh")
    for measured in ("train_loss", "test_loss", "test_accuracy"):
        assert [getattr(epoch, measured) for epoch in forked.epochs] == [getattr(epoch, measured) for epoch in fresh.epochs]
    # The fresh worker's start-up includes its interpreter and imports, the fork's does not; a report
    # of both kinds says so.
    assert forked.startup_seconds < fresh.startup_seconds
    stored = pandas.DataFrame({"environment": [json.dumps(run.environment) for run in (forked, fresh)]})
    assert len(process_lines(stored)) == 1 and process_lines(stored.iloc[:1]) == []


def test_the_forked_worker_is_its_own_group_named_as_a_run(synthetic_folder, tmp_path):
    server = forked_workers.ready()
    job = json.dumps({"kind": "train", "spec": dataclasses.asdict(small_run(synthetic_folder, epochs=3))})
    with open(tmp_path / "stderr", "w+") as stderr:
        worker = server.start(job, stderr.fileno(), None)
        process = psutil.Process(worker.pid)
        assert os.getpgid(worker.pid) == worker.pid  # stop() signals the group: the worker and its children
        assert process.parent().pid == server.process.pid
        wait_for(lambda: process.name() == RUN_PROCESS_NAME)  # named as it starts: other sweeps see a run
        assert is_run_worker(process.cmdline(), process.name())
        messages = worker.stdout.read()
        assert worker.wait(60) == 0, stderr.read()
    assert '"event": "result"' in messages
    idle = psutil.Process(server.process.pid)
    assert not is_run_worker(idle.cmdline(), idle.name())  # the idle server is no run of anybody's


def test_a_failing_job_is_reported_and_its_traceback_kept(tmp_path):
    with open(tmp_path / "stderr", "w+") as stderr:
        worker = forked_workers.start('{"kind": "nothing"}', stderr.fileno(), None)
        messages = worker.stdout.read()
        assert worker.wait(30) == 1
        stderr.seek(0)
        assert "KeyError: 'nothing'" in stderr.read() and '"event": "error"' in messages


def test_a_changed_environment_gets_a_new_server(monkeypatch):
    first = forked_workers.ready()
    assert forked_workers.ready() is first
    monkeypatch.setenv("BATCHLAB_SOME_SETTING", "changed")  # a fork would see the server's environment
    second = forked_workers.ready()
    assert second is not first and second.alive()
    assert first.process.poll() is not None  # the old one has ended


def test_without_a_server_the_run_gets_a_fresh_worker(synthetic_folder, monkeypatch):
    monkeypatch.setattr(forked_workers, "READY_TIMEOUT_SECONDS", 0)  # the server cannot be ready in time
    monkeypatch.setattr(forked_workers, "_server_failed", False)  # (restored after the test)
    monkeypatch.setenv("BATCHLAB_SOME_SETTING", "a new server")  # so the next run asks for one
    run(small_run(synthetic_folder, epochs=1))
    assert forked_workers._server_failed and forked_workers.ready() is None


KILLED_SWEEP = """
import dataclasses, json, sys, time
from batchlab.runner import forked_workers
from batchlab.spec.run import RunSpec
server = forked_workers.ready()
spec = RunSpec(dataset="folder:" + sys.argv[1], model="mlp", batch_size=16, epochs=1000, threads=1)
worker = server.start(json.dumps({"kind": "train", "spec": dataclasses.asdict(spec)}), 2, None)
print(server.process.pid, worker.pid, flush=True)
time.sleep(600)
"""


def test_a_killed_sweep_leaves_no_server_and_no_worker(synthetic_folder):
    sweep = subprocess.Popen([sys.executable, "-c", KILLED_SWEEP, str(synthetic_folder)], stdout=subprocess.PIPE,
                             text=True)
    server_pid, worker_pid = map(int, sweep.stdout.readline().split())
    processes = [psutil.Process(server_pid), psutil.Process(worker_pid)]
    wait_for(lambda: sum(processes[1].cpu_times()[:2]) > 1)  # the worker trains (1,000 epochs: it would go on)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    wait_for(lambda: still_alive(processes) == [], timeout=10)


def test_an_interrupted_start_closes_the_server_and_the_next_run_gets_its_own_worker(synthetic_folder, monkeypatch):
    server = forked_workers.ready()

    def interrupted(kind, timeout):
        raise KeyboardInterrupt  # after the request went out: its "started" would answer the next one

    monkeypatch.setattr(server, "_expect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        server.start('{"kind": "nothing"}', 2, None)
    assert not server.alive()
    result = run(small_run(synthetic_folder, epochs=1))
    assert result.environment["run_process"] == "forked" and forked_workers.ready() is not server


def test_forks_draw_their_own_numpy_numbers():
    """Unseeded numpy in a user's model: each forked run draws its own numbers, as fresh processes
    do; without the reseed both forks would repeat the server's stream."""
    import numpy

    numpy.random.seed(0)
    drawn = []
    for _ in range(2):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # as run_forked does
            reseed_numpy()
            os.write(write_end, repr(numpy.random.rand()).encode())
            os._exit(0)
        os.close(write_end)
        drawn.append(float(os.read(read_end, 64)))
        os.close(read_end)
        os.waitpid(pid, 0)
    assert len(set(drawn)) == 2 and numpy.random.rand() not in drawn


@pytest.fixture
def no_server():
    """This test process without a run-worker server, as a command is when it begins."""
    forked_workers._close_at_exit()
    yield
    forked_workers._close_at_exit()


def test_a_prestarted_server_is_the_one_the_runs_get(no_server):
    forked_workers.prestart()
    pending = forked_workers._server
    assert pending is not None and not pending.is_ready  # started, not waited for
    assert forked_workers.ready() is pending and pending.is_ready
    forked_workers.prestart()  # one is running: no second one
    assert forked_workers._server is pending


def test_a_command_failing_before_its_runs_kills_the_prestarted_server_at_once(no_server):
    class Refused(Exception):
        pass

    with pytest.raises(Refused):
        with forked_workers.prestarted():
            pending = forked_workers._server
            raise Refused  # a check of the command, while the server still imports torch
    # Killed and waited for, not left to notice the closed socket once its imports are done.
    assert pending.process.poll() == -signal.SIGKILL and forked_workers._server is None


def test_a_ready_server_outlives_a_failed_block(no_server):
    server = forked_workers.ready()
    with pytest.raises(RuntimeError):
        with forked_workers.prestarted():
            raise RuntimeError  # a run that failed: the next command in this process forks from it again
    assert forked_workers._server is server and server.alive()


def test_a_refused_command_leaves_no_server_behind(tmp_path):
    """The CLI prestarts the server before its checks; a check that fails ends both at once."""
    marker = f"refused-{os.getpid()}-{tmp_path.name}"  # in the environment of the command and its server only
    done = subprocess.run([sys.executable, "-m", "batchlab", "train", "--dataset", "fashion-mnist", "--data-dir",
                           str(tmp_path / "nowhere"), "--db", str(tmp_path / "s.db")], capture_output=True, text=True,
                          env={**os.environ, "BATCHLAB_TEST_MARKER": marker})
    assert done.returncode == 2 and "does not exist" in done.stderr

    def marked(process) -> bool:
        try:
            return process.environ().get("BATCHLAB_TEST_MARKER") == marker
        except psutil.Error:
            return False

    assert [process for process in psutil.process_iter() if marked(process)] == []


@pytest.mark.real_data
def test_runs_after_the_first_get_the_servers_dataset_until_a_file_changes(fashion_dir, tmp_path, monkeypatch):
    """The server loads a run's registered dataset before it forks it (registry.preload); the next
    run on the same files trains on it, and a file replaced in between is verified again: a
    corrupted one fails its run as it would without the server."""
    import gzip
    import shutil

    folder = tmp_path / "fashion"
    folder.mkdir()
    for path in fashion_dir.glob("*-ubyte.gz"):
        shutil.copy(path, folder)
    spec = RunSpec(dataset="fashion-mnist", model="mlp", batch_size=64, epochs=1, limit_train=512, threads=1)

    def outcome():
        return run_in_worker(spec, str(folder), lambda record: None)

    first, second = outcome(), outcome()
    assert first.status == second.status == "DONE", (first.error, second.error)
    assert first.result.environment["dataset_preloaded"] and second.result.environment["dataset_preloaded"]
    monkeypatch.setenv("BATCHLAB_FRESH_WORKERS", "1")
    fresh = outcome()  # reads its files itself
    assert not fresh.result.environment["dataset_preloaded"]
    assert fresh.result.epochs[-1].test_accuracy == second.result.epochs[-1].test_accuracy  # the same data
    monkeypatch.delenv("BATCHLAB_FRESH_WORKERS")
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[100] = (content[100] + 1) % 10  # one test label changed: a valid file, not Fashion-MNIST's
    (tmp_path / "new.gz").write_bytes(gzip.compress(bytes(content)))
    (tmp_path / "new.gz").replace(labels)
    corrupted = outcome()
    assert corrupted.status == "FAILED" and "checksum mismatch" in corrupted.error, corrupted.error
