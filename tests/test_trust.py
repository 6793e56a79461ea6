"""No silent wrong answer, no changed or lost data: each test names the defect it guards against."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from processes_helpers import wait_for
from typer.testing import CliRunner

from batchlab.cli.app import app
from batchlab.core.errors import RunAlreadyFinished, StoreError
from batchlab.core.records import EpochRecord, RunResult
from batchlab.spec.run import RunSpec
from batchlab.store.schema import SCHEMA_VERSION
from batchlab.store.store import Store

runner = CliRunner()
MACHINE = "m1"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result, starts: str) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert starts in lines[0], lines[0]
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finished(spec: RunSpec, accuracy: float = 0.8) -> RunResult:
    epochs = [EpochRecord(epoch=1, train_loss=1.0, train_accuracy=0.5, val_loss=None, val_accuracy=None,
                          test_loss=0.5, test_accuracy=accuracy, train_seconds=2.0, eval_seconds=0.5,
                          images=1000, steps=10)]
    return RunResult(spec=spec, epochs=epochs, parameters=10, wall_seconds=3.0)


def store_with_one_run(path: Path) -> RunSpec:
    spec = RunSpec(model="mlp", batch_size=8)
    with Store(path) as store:
        store.record_machine(MACHINE, {"hostname": "h"})
        store.finish(store.start(spec, MACHINE), finished(spec))
    return spec


def model_file(folder: Path, name: str, outputs: int) -> str:
    """A user model as a Python file (not a package): a linear layer with `outputs` logits."""
    path = folder / f"{name}.py"
    path.write_text("import torch\n\n"
                    "class Flat(torch.nn.Module):\n"
                    "    def __init__(self):\n"
                    "        super().__init__()\n"
                    f"        self.linear = torch.nn.Linear(784, {outputs})\n\n"
                    "    def forward(self, images):\n"
                    "        return self.linear(images.flatten(1))\n\n"
                    "def build():\n"
                    "    return Flat()\n")
    return f"{path}:build"


# --- 3. a model whose output width is not the class count is refused before training -------------

@pytest.mark.parametrize("outputs", [2, 12])
def test_model_output_must_match_the_classes(outputs, image_folder, tmp_path):
    from batchlab.core.errors import ModelError
    from batchlab.train.engine import prepare

    spec = RunSpec(dataset=f"folder:{image_folder}", model=model_file(tmp_path, f"width{outputs}", outputs))
    with pytest.raises(ModelError, match=rf"output \(2, {outputs}\) for 2 image\(s\) but folder:.* has 3 classes"):
        prepare(spec)


def test_wrong_width_model_fails_its_run_before_any_epoch(image_folder, tmp_path):
    db = tmp_path / "s.db"
    result = invoke("train", "--dataset", f"folder:{image_folder}", "--model", model_file(tmp_path, "wide", 12),
                    "--db", db)
    assert result.exit_code == 1, result.output
    with sqlite3.connect(db) as con:
        status, error = con.execute("SELECT status, error FROM runs").fetchone()
        assert con.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 0
    assert status == "FAILED" and "output (2, 12)" in error and "has 3 classes" in error


# --- 9e. a model given as a file, trained in worker processes too ----------------------------------

def test_model_from_a_python_file_trains_in_spawned_workers(image_folder, tmp_path):
    db = tmp_path / "s.db"
    result = invoke("train", "--dataset", f"folder:{image_folder}", "--model", model_file(tmp_path, "fits", 3),
                    "--strategy", "hogwild", "--workers", "2", "--threads", "1", "--epochs", "2", "--db", db)
    assert result.exit_code == 0, result.output
    with sqlite3.connect(db) as con:
        status, parameters, environment = con.execute("SELECT status, parameters, environment FROM runs").fetchone()
    assert (status, parameters) == ("DONE", 784 * 3 + 3)
    assert json.loads(environment)["class_names"] == ["class0", "class1", "class2"]  # stored with the run


def test_missing_model_file_is_one_line(tmp_path):
    from batchlab.core.errors import ModelError
    from batchlab.nn.models import build

    with pytest.raises(ModelError, match="no file"):
        build(f"{tmp_path}/absent.py:build")


# --- 4. read commands never write -------------------------------------------------------------------

def test_report_refuses_a_foreign_sqlite_file_and_leaves_it_unchanged(tmp_path):
    foreign = tmp_path / "notes.db"
    with sqlite3.connect(foreign) as con:
        con.execute("CREATE TABLE notes (text TEXT)")
        con.execute("INSERT INTO notes VALUES ('mine')")
    before = digest(foreign)
    one_error_line(invoke("report", "--db", foreign), "not a batchlab store (it has tables notes)")
    one_error_line(invoke("export", "--tensorboard", tmp_path / "tb", "--db", foreign), "not a batchlab store")
    one_error_line(invoke("report", foreign, "--format", "json"), "not a batchlab store")
    assert digest(foreign) == before and not Path(f"{foreign}-wal").exists()
    with pytest.raises(StoreError, match="not a batchlab store"):  # nor is it written to as a store
        Store(foreign)
    assert digest(foreign) == before


def test_report_refuses_a_newer_store_without_touching_it(tmp_path):
    path = tmp_path / "s.db"
    store_with_one_run(path)
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA journal_mode = DELETE")  # as an older SQLite tool might leave it
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = digest(path)
    one_error_line(invoke("report", "--db", path), "newer than this batchlab")
    with pytest.raises(StoreError, match="newer"):
        Store(path)  # the writable store checks before it switches to WAL
    assert digest(path) == before
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


@contextlib.contextmanager
def small_disk(folder: Path, megabytes: int):
    """A tmpfs of `megabytes` mounted on `folder` for the test (skipped where mounting is not allowed)."""
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("cannot mount a file system here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)])


def test_a_store_on_read_only_media_can_be_reported(tmp_path):
    with small_disk(tmp_path / "media", 8) as media:
        store_with_one_run(media / "s.db")  # closed cleanly: no -wal or -shm file beside it
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        rows = json.loads(invoke("report", "--db", media / "s.db", "--format", "json", "--runs").stdout)
        assert [(row["status"], row["batch_size"]) for row in rows] == [("DONE", 8)]


# --- 6. a DONE run is never reset or deleted ----------------------------------------------------------

def test_a_finished_run_is_never_started_again(tmp_path):
    path = tmp_path / "s.db"
    spec = store_with_one_run(path)
    with Store(path) as store:
        with pytest.raises(RunAlreadyFinished, match="already DONE"):
            store.start(spec, MACHINE)
        runs = store.runs_frame()
        assert runs.loc[0, "status"] == "DONE" and runs.loc[0, "test_accuracy"] == 0.8
        assert len(store.epochs_frame()) == 1


def test_a_run_finished_meanwhile_keeps_its_result(tmp_path):
    path = tmp_path / "s.db"
    spec = RunSpec(model="mlp", batch_size=8)
    with Store(path) as mine, Store(path) as theirs:
        mine.record_machine(MACHINE, {})
        row = mine.start(spec, MACHINE)
        theirs.finish(theirs.start(spec, MACHINE), finished(spec, accuracy=0.9))  # the other sweep wins
        with pytest.raises(RunAlreadyFinished):
            mine.finish(row, finished(spec, accuracy=0.1))
        with pytest.raises(RunAlreadyFinished):
            mine.fail(row, "KILLED", "interrupted")
        assert mine.runs_frame().loc[0, "test_accuracy"] == 0.9


def test_sweep_skips_a_run_another_sweep_finished_after_planning(tmp_path, monkeypatch):
    import batchlab.runner.sweep as sweep

    path = tmp_path / "s.db"
    spec = store_with_one_run(path)
    monkeypatch.setattr(sweep, "machine_id", lambda info: MACHINE)
    monkeypatch.setattr(Store, "status", lambda self, spec, machine: None)  # planned before it finished
    monkeypatch.setattr(sweep, "run_in_worker", lambda *a, **k: pytest.fail("a finished run was run again"))
    summary = sweep.run_sweep([spec], path)
    assert summary.skipped_finished == 1 and summary.outcomes == []
    with Store(path) as store:
        assert store.runs_frame().loc[0, "test_accuracy"] == 0.8


def test_two_stores_opened_at_once_on_a_new_file_both_work(tmp_path):
    """Schema creation is one immediate transaction: the second opener finds it done."""
    path = tmp_path / "new.db"
    code = ("import sys, time; from batchlab.store.store import Store\n"
            "start = float(sys.argv[2])\n"
            "while time.time() < start: pass\n"
            "Store(sys.argv[1]).close()\n")
    start = str(time.time() + 1.5)
    openers = [subprocess.Popen([sys.executable, "-c", code, str(path), start], stderr=subprocess.PIPE, text=True)
               for _ in range(4)]
    errors = [opener.communicate(timeout=60)[1] for opener in openers]
    assert [opener.returncode for opener in openers] == [0] * 4, errors
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def real_busy_error(path: Path) -> sqlite3.OperationalError:
    """The error SQLite itself gives a connection that may not wait for a lock another holds (on a
    database of its own in rollback-journal mode, where an exclusive lock keeps readers out)."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        sqlite3.connect(path, timeout=0).execute("SELECT * FROM sqlite_master").fetchall()
    except sqlite3.OperationalError as error:
        return error
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    pytest.fail("an exclusive lock let another connection read")


@pytest.mark.parametrize("readonly", [False, True])
def test_opening_waits_out_busy_answers_that_skip_the_busy_timeout(tmp_path, monkeypatch, readonly):
    """SQLite answers SQLITE_BUSY at once, busy timeout or not, while the last connection to a WAL
    store cleans up as it closes: opening tries again."""
    path = tmp_path / "s.db"
    Store(path).close()
    busy = real_busy_error(tmp_path / "locked.db")
    assert busy.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
    failed_tries: list[sqlite3.Connection] = []
    real_open = Store._open

    def open_busy_twice(self):
        if len(failed_tries) < 2:
            self.db = sqlite3.connect(":memory:")  # the connection a failed try leaves behind
            failed_tries.append(self.db)
            raise busy
        real_open(self)

    monkeypatch.setattr(Store, "_open", open_busy_twice)
    with Store(path, readonly=readonly) as store:
        assert len(failed_tries) == 2 and store.runs_frame().empty
    for connection in failed_tries:  # each closed before the next try
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            connection.execute("SELECT 1")


def test_opening_does_not_retry_other_errors(tmp_path, monkeypatch):
    calls = []

    def fail(self):
        calls.append(1)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Store, "_open", fail)
    with pytest.raises(StoreError, match="cannot open as a batchlab store"):
        Store(tmp_path / "s.db")
    assert calls == [1]


# --- 7. exit codes tell the truth ---------------------------------------------------------------------

def test_sweep_with_a_failed_run_exits_1_and_names_it(image_folder, tmp_path):
    result = invoke("sweep", "--dataset", f"folder:{image_folder}", "--model", "mlp,no_such_module_xyz:factory",
                    "--db", tmp_path / "s.db")
    assert result.exit_code == 1, result.output
    assert "1 run(s) done, 1 not done" in result.output
    assert "1 run(s) failed: no_such_module_xyz:factory" in result.output and "(FAILED)" in result.output


def test_a_diverged_run_is_a_result_not_a_failure(image_folder, tmp_path):
    result = invoke("train", "--dataset", f"folder:{image_folder}", "--model", "mlp", "--optimizer", "sgd",
                    "--lr", "1e30", "--batch-size", "4", "--db", tmp_path / "s.db")
    assert result.exit_code == 0, result.output
    assert "DIVERGED" in result.output and "1 diverged: a result" in result.output


# --- 8. no tracebacks on paths ------------------------------------------------------------------------

def test_report_outputs_create_missing_folders_and_refuse_wrong_kinds(tmp_path):
    db = tmp_path / "s.db"
    store_with_one_run(db)
    made = invoke("report", "--db", db, "--csv", tmp_path / "new" / "deeper" / "runs.csv")
    assert made.exit_code == 0 and (tmp_path / "new" / "deeper" / "runs.csv").is_file()
    (tmp_path / "a-folder").mkdir()
    one_error_line(invoke("report", "--db", db, "--html", tmp_path / "a-folder"), "is a folder")
    (tmp_path / "a-file").write_text("keep")
    one_error_line(invoke("report", "--db", db, "--png", tmp_path / "a-file"), "is a file, not a folder")
    one_error_line(invoke("export", "--db", db, "--tensorboard", tmp_path / "a-file"), "is a file, not a folder")
    one_error_line(invoke("report", "--db", db, "--csv", tmp_path / "a-file" / "x.csv"), "a-file")
    assert (tmp_path / "a-file").read_text() == "keep"


def test_experiment_paths_that_are_not_experiments(tmp_path):
    one_error_line(invoke("sweep", tmp_path), "is a folder, not an experiment file")
    (tmp_path / "empty.toml").write_text("# nothing yet\n")
    one_error_line(invoke("sweep", tmp_path / "empty.toml", "--db", tmp_path / "s.db"), "empty.toml sets nothing")
    (tmp_path / "named.toml").write_text('name = "x"\nrepeats = 2\n')
    one_error_line(invoke("sweep", tmp_path / "named.toml", "--db", tmp_path / "s.db"), "named.toml sets nothing")
    assert not (tmp_path / "s.db").exists()


# --- 9. smaller ones ------------------------------------------------------------------------------------

def test_memory_limit_too_low_to_start_is_refused(tmp_path):
    line = one_error_line(invoke("train", "--memory-limit", "0.1", "--db", tmp_path / "s.db"), "--memory-limit 0.1 GiB is too low")
    assert "needs at least" in line and not (tmp_path / "s.db").exists()


def test_threads_beyond_the_cpus_need_oversubscribe(image_folder, tmp_path):
    cores = len(os.sched_getaffinity(0))
    one_error_line(invoke("train", "--threads", 1000, "--db", tmp_path / "s.db"),
                   f"up to 1000 on this machine's {cores} available CPU(s)")
    one_error_line(invoke("sweep", "--strategy", "ddp", "--workers", cores + 1, "--threads", "1",
                          "--db", tmp_path / "s.db"), "--oversubscribe")
    assert not (tmp_path / "s.db").exists()
    result = invoke("train", "--dataset", f"folder:{image_folder}", "--model", "mlp", "--threads", cores + 1,
                    "--oversubscribe", "--db", tmp_path / "s.db")
    assert result.exit_code == 0, result.output
    assert f"up to {cores + 1} on this machine's {cores} available CPU(s) (--oversubscribe)" in result.output


def test_empty_folder_dataset_path_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_error_line(invoke("train", "--dataset", "folder:", "--db", tmp_path / "s.db"), "folder: needs a path")


def test_full_disk_is_called_a_full_disk(tmp_path):
    with small_disk(tmp_path / "disk", 4) as disk:
        done = store_with_one_run(disk / "s.db")
        later = RunSpec(model="mlp", batch_size=16)
        with Store(disk / "s.db") as store:
            row = store.start(later, MACHINE)
            filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
            try:  # fill the disk to the last byte
                while os.write(filler, b"\0" * 4096):
                    pass
            except OSError:
                pass
            finally:
                os.close(filler)
            big = finished(later)
            big.environment = {"padding": "x" * 200_000}
            with pytest.raises(StoreError, match="no space left"):
                store.finish(row, big)
        (disk / "filler").unlink()
        with Store(disk / "s.db", readonly=True) as store:
            runs = store.runs_frame().set_index("run_key")
            assert runs.loc[done.key, "status"] == "DONE" and runs.loc[done.key, "test_accuracy"] == 0.8


def sweep_has_reached(moment: str, process: subprocess.Popen, db: Path) -> bool:
    """Whether the sweep `process` has reached `moment` of its start: importing torch (its library
    mapped), its store created, its first run started (RUNNING, with a run worker)."""
    if moment == "importing torch":
        return "libtorch" in Path(f"/proc/{process.pid}/maps").read_text()
    if moment == "store created":
        return db.exists()
    if not db.exists():  # (connecting would create it)
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            running = con.execute("SELECT COUNT(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:  # its tables not created yet
        return False
    return running == 1 and bool(psutil.Process(process.pid).children())


@pytest.mark.parametrize("moment", ["importing torch", "store created", "run started"])
def test_ctrl_c_early_is_one_line_and_exit_130(moment, image_folder, tmp_path):
    db = tmp_path / "s.db"
    command = [sys.executable, "-m", "batchlab", "sweep", "--dataset", f"folder:{image_folder}", "--model", "mlp",
               "--epochs", "500", "--db", str(db)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: sweep_has_reached(moment, process, db))
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and len(lines) == 1 and "interrupted" in lines[0], stderr


def test_help_keeps_square_brackets():
    result = invoke("report", "--help")
    assert "median [min–max]" in " ".join(result.output.split())


# --- 1. --data-dir is a promise, checked before any run starts -------------------------------------------

def test_a_wrong_data_dir_stops_the_command_before_anything_is_stored(tmp_path):
    (tmp_path / "empty").mkdir()
    db = tmp_path / "s.db"
    one_error_line(invoke("train", "--dataset", "fashion-mnist", "--data-dir", tmp_path / "nowhere", "--db", db),
                   f"--data-dir {tmp_path / 'nowhere'} does not exist")
    line = one_error_line(invoke("sweep", "--dataset", "mnist", "--batch-size", "16,64", "--data-dir",
                                 tmp_path / "empty", "--db", db), "holds no complete mnist: missing")
    assert "train-images-idx3-ubyte(.gz)" in line and "t10k-labels-idx1-ubyte(.gz)" in line
    one_error_line(invoke("data", "verify", "fashion-mnist", "--data-dir", tmp_path / "empty"), "holds no complete")
    assert not db.exists()
