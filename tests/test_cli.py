"""The command line, driven through Typer's runner and, for signals, as a real process."""

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest
from processes_helpers import descendants, spawned_workers, still_alive, wait_for
from typer.testing import CliRunner

from batchlab.cli.app import app
from batchlab.nn.microbatch import cache_budget_bytes

runner = CliRunner()
REQUIRED_JSON_KEYS = {"dataset", "model", "device", "strategy", "workers", "threads", "batch_size", "epochs", "n",
                      "status", "epoch_train_seconds", "images_per_second", "test_accuracy", "test_loss",
                      "time_to_target_seconds"}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("args, message", [
    (["train", "--batch-size", "0"], "error: batch size must be at least 1, got 0"),
    (["train", "--model", "nope"], "error: unknown model 'nope'"),
    (["train", "--dataset", "nope"], "error: unknown dataset 'nope'"),
    (["train", "--device", "tpu"], "error: unknown device 'tpu'"),
    (["train", "--micro-batch", "-1"], "error: micro-batch must be at least 1 (or 0 for automatic), got -1"),
    (["infer", "--micro-batch", "-3"], "error: micro-batch must be at least 1 (or 0 for automatic), got -3"),
    (["train", "--precision", "tf32"], "error: tf32 needs an NVIDIA GPU of compute capability 8.0 or newer "
                                       "(Ampere); this run's device is cpu"),
    (["infer", "--precision", "fp32,tf32"], "error: tf32 needs an NVIDIA GPU of compute capability 8.0 or newer "
                                            "(Ampere); this run's device is cpu"),
    (["sweep", "--batch-size", "16,x"], "error: --batch-size: cannot read '16,x' as int values"),
    (["sweep", "missing.toml"], "error: experiment file not found: missing.toml"),
    (["sweep"], "error: nothing to sweep: give an experiment file or grid flags"),
    (["report", "--db", "nothing-here.db"], "error: no results store at nothing-here.db"),
    (["data", "verify", "cifar"], "error: unknown dataset 'cifar'"),
])
def test_bad_input_gets_one_line_and_nonzero_exit(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert not (tmp_path / "batchlab.db").exists() or args[0] == "report"


def test_report_on_an_empty_store_says_so(tmp_path):
    from batchlab.store.store import Store

    Store(tmp_path / "s.db").close()
    result = invoke("report", "--db", tmp_path / "s.db")
    assert result.exit_code == 0 and "no runs stored in" in result.output
    assert json.loads(invoke("report", "--db", tmp_path / "s.db", "--format", "json").stdout) == []


def test_missing_gpu_is_reported(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = invoke("train", "--device", "cuda", "--db", tmp_path / "s.db")
    assert result.exit_code == 2 and "device cuda is not available" in result.output


def test_sweep_resume_report_and_failure_isolation(synthetic_folder, tmp_path):
    db = tmp_path / "s.db"
    args = ["sweep", "--model", "mlp,no_such_module_xyz:factory", "--batch-size", "64,256", "--epochs", "1",
            "--db", db, "--dataset", f"folder:{synthetic_folder}"]
    first = invoke(*args)
    assert first.exit_code == 1, first.output  # runs failed: the exit code says so
    assert "2 run(s) done, 2 not done" in first.output and "2 run(s) failed" in first.output
    assert first.output.count("FAILED ") == 2 and "cannot load user model" in first.output

    with sqlite3.connect(db) as con:
        statuses = dict(con.execute("SELECT model || batch_size, status FROM runs").fetchall())
        started = dict(con.execute("SELECT run_key, started_at FROM runs WHERE status = 'DONE'").fetchall())
    assert statuses == {"mlp64": "DONE", "mlp256": "DONE", "no_such_module_xyz:factory64": "FAILED",
                        "no_such_module_xyz:factory256": "FAILED"}

    again = invoke(*args[:2], "mlp", *args[3:])
    assert again.exit_code == 0
    assert "2 run(s) already finished" in again.output and "0 run(s) done, 0 not done" in again.output
    with sqlite3.connect(db) as con:
        assert dict(con.execute("SELECT run_key, started_at FROM runs WHERE status = 'DONE'").fetchall()) == started

    report = invoke("report", "--db", db, "--format", "json")
    rows = json.loads(report.stdout)
    assert {row["batch_size"] for row in rows if row["model"] == "mlp"} == {64, 256}
    for row in rows:
        assert REQUIRED_JSON_KEYS <= set(row)
    done = [row for row in rows if row["status"] == "DONE"]
    assert all(row["n"] == 1 and row["images_per_second"] > 0 and row["test_accuracy"] > 0.3 for row in done)

    table = invoke("report", "--db", db, "--csv", tmp_path / "runs.csv")
    assert table.exit_code == 0 and "mlp" in table.output and "FAILED" in table.output
    with open(tmp_path / "runs.csv", newline="") as handle:
        groups = list(csv.DictReader(handle))
    assert sorted((g["model"], g["batch_size"], g["status"]) for g in groups) == [
        ("mlp", "256", "DONE"), ("mlp", "64", "DONE"),
        ("no_such_module_xyz:factory", "256", "FAILED"), ("no_such_module_xyz:factory", "64", "FAILED")]


def test_sweep_skips_a_device_this_machine_lacks(image_folder, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = invoke("sweep", "--model", "mlp", "--device", "cpu,cuda", "--db", tmp_path / "s.db",
                    "--dataset", f"folder:{image_folder}")
    assert result.exit_code == 0
    assert "skipped runs on cuda: device cuda is not available" in result.output
    assert "1 run(s) done, 0 not done" in result.output


def test_oversubscription_is_warned_about(image_folder, tmp_path):
    cores = len(os.sched_getaffinity(0))
    result = invoke("sweep", "--model", "mlp", "--strategy", "ddp", "--workers", cores + 1, "--threads", "1",
                    "--db", tmp_path / "s.db", "--dataset", f"folder:{image_folder}", "--oversubscribe")
    assert result.exit_code == 0
    assert f"up to {cores + 1} on this machine's {cores} available CPU(s) (--oversubscribe)" in result.output
    assert "1 run(s) done" in result.output


def test_micro_batches_are_recorded_and_reported_apart(synthetic_folder, tmp_path):
    db = tmp_path / "s.db"
    result = invoke("sweep", "--batch-size", "256", "--micro-batch", "0,1000000", "--limit-train", "1024",
                    "--db", db, "--dataset", f"folder:{synthetic_folder}")
    assert result.exit_code == 0, result.output
    with sqlite3.connect(db) as con:
        used = {requested: json.loads(environment)["micro_batch"]
                for requested, environment in con.execute("SELECT micro_batch, environment FROM runs")}
    # automatic: 8 × this CPU's L2 (8 MB where unknown) of seed-cnn's 62 KB activation, at most the batch; whole
    assert used == {0: min(256, cache_budget_bytes() // (32 * 22 * 22 * 4)), 1000000: 256}
    rows = json.loads(invoke("report", "--db", db, "--format", "json").stdout)
    assert sorted(row["slicing"] for row in rows) == ["auto", "whole"]


def test_train_twice_stores_two_repeats(image_folder, tmp_path):
    args = ["train", "--model", "mlp", "--db", tmp_path / "s.db", "--dataset", f"folder:{image_folder}"]
    assert invoke(*args).exit_code == 0
    second = invoke(*args)
    assert second.exit_code == 0 and "r=1" in second.output
    rows = json.loads(invoke("report", "--db", tmp_path / "s.db", "--format", "json").stdout)
    assert len(rows) == 1 and rows[0]["n"] == 2


@pytest.mark.parametrize("signum, strategy", [(signal.SIGINT, "single"), (signal.SIGTERM, "single"),
                                              (signal.SIGINT, "hogwild")])
def test_interrupted_run_is_killed_then_rerun(signum, strategy, synthetic_folder, tmp_path):
    db = tmp_path / "s.db"
    args = [sys.executable, "-m", "batchlab", "sweep", "--model", "seed-cnn", "--batch-size", "32",
            "--epochs", "3", "--limit-train", "600", "--db", str(db), "--dataset", f"folder:{synthetic_folder}",
            "--strategy", strategy, "--workers", "2" if strategy == "hogwild" else "1"]
    sweep = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running_worker():
        if not db.exists():
            return None
        try:
            with sqlite3.connect(db) as con:
                status = con.execute("SELECT status FROM runs").fetchone()
        except sqlite3.OperationalError:
            return None
        children = descendants(sweep.pid)
        return children if status == ("RUNNING",) and children else None

    workers = wait_for(running_worker)
    if strategy == "hogwild":  # wait for its two worker processes too, so that they must be stopped
        wait_for(lambda: len(spawned_workers(sweep.pid)) == 2)
        workers = descendants(sweep.pid)
    os.kill(sweep.pid, signum)
    _, stderr = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, stderr
    assert "stored as KILLED" in stderr and "resume" in stderr
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT status, error FROM runs").fetchall() == [
            ("KILLED", "interrupted (Ctrl-C or SIGTERM) while running")]
    assert still_alive(workers) == []

    if signum == signal.SIGINT and strategy == "single":  # the next sweep runs it again, to the end
        finished = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT status FROM runs").fetchall() == [("DONE",)]
            assert con.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 3


def test_machine_and_models_and_data_list(tmp_path):
    machine = invoke("machine", "--json")
    info = json.loads(machine.stdout)
    assert info["logical_cores"] >= 1 and info["torch"] and info["cpu_model"]
    models = invoke("models")
    assert "550,886" in models.output and "keras-cnn" in models.output
    assert "fashion-mnist" in invoke("data", "list").output


def test_python_dash_m_help():
    result = subprocess.run([sys.executable, "-m", "batchlab", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "sweep" in result.stdout and "report" in result.stdout
