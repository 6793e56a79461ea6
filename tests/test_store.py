import sqlite3

import pandas as pd
import pytest

from batchlab.core.errors import StoreError
from batchlab.core.records import EpochRecord, RunResult
from batchlab.spec.run import RunSpec
from batchlab.store.schema import SCHEMA_VERSION
from batchlab.store.store import Store

MACHINE = "m1"


def finished_result(spec, accuracy=0.8):
    epochs = [EpochRecord(epoch=e, train_loss=1.0 / e, train_accuracy=0.5, val_loss=None, val_accuracy=None,
                          test_loss=0.5, test_accuracy=accuracy, train_seconds=2.0 * e, eval_seconds=0.5,
                          images=1000, steps=10) for e in (1, 2)]
    return RunResult(spec=spec, epochs=epochs, parameters=10, wall_seconds=9.0)


def test_roundtrip_and_derived_columns(tmp_path):
    spec = RunSpec(model="mlp", batch_size=100, epochs=2)
    with Store(tmp_path / "s.db") as store:
        store.record_machine(MACHINE, {"hostname": "h"})
        run_id = store.start(spec, MACHINE)
        assert store.status(spec, MACHINE) == "RUNNING"
        store.finish(run_id, finished_result(spec))
        runs = store.runs_frame()
    row = runs.iloc[0]
    assert row["status"] == "DONE" and row["batch_size"] == 100 and row["run_key"] == spec.key
    assert row["train_seconds"] == 6.0 and row["images_processed"] == 2000
    assert row["images_per_second"] == pytest.approx(2000 / 6.0)
    assert row["test_accuracy"] == 0.8 and row["epochs_done"] == 2


def test_restart_clears_the_old_attempt(tmp_path):
    spec = RunSpec(model="mlp")
    with Store(tmp_path / "s.db") as store:
        store.record_machine(MACHINE, {})
        run_id = store.start(spec, MACHINE)
        store.fail(run_id, "KILLED", "interrupted")
        assert store.status(spec, MACHINE) == "KILLED"
        again = store.start(spec, MACHINE)
        assert again == run_id and again.table == "runs"
        row = store.runs_frame().iloc[0]
        assert row["status"] == "RUNNING" and row["error"] is None


def test_full_disk_loses_no_stored_result(tmp_path):
    path = tmp_path / "s.db"
    done = RunSpec(model="mlp", batch_size=1)
    with Store(path) as store:
        store.record_machine(MACHINE, {})
        store.finish(store.start(done, MACHINE), finished_result(done))
        later = RunSpec(model="mlp", batch_size=2)
        run_id = store.start(later, MACHINE)
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is now full
        big = finished_result(later)
        big.environment = {"padding": "x" * 200_000}
        with pytest.raises(StoreError, match="full"):
            store.finish(run_id, big)
    with Store(path) as store:
        runs = store.runs_frame().set_index("batch_size")
        assert runs.loc[1, "status"] == "DONE" and runs.loc[1, "test_accuracy"] == 0.8
        assert runs.loc[2, "status"] == "RUNNING"  # not DONE: the next sweep runs it again
        assert len(store.epochs_frame()) == 2


def test_schema_version_and_newer_store_rejected(tmp_path):
    path = tmp_path / "s.db"
    Store(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this batchlab"):
        Store(path)


def test_not_a_database(tmp_path):
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        Store(path)


def test_schema_has_a_column_for_every_field():
    """Adding a spec or result field needs a migration: this fails until the column exists."""
    import dataclasses

    from batchlab.core.records import EvalRecord, InferResult
    from batchlab.spec.run import InferSpec
    from batchlab.store.schema import (
        EPOCH_COLUMNS,
        EVALUATION_COLUMNS,
        INFER_RESULT_COLUMNS,
        INFER_SPEC_COLUMNS,
        RESULT_COLUMNS,
        RUN_SPEC_COLUMNS,
    )

    names = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    assert names(RunSpec) == set(RUN_SPEC_COLUMNS)
    assert names(InferSpec) == set(INFER_SPEC_COLUMNS)
    assert names(EpochRecord) == set(EPOCH_COLUMNS)
    assert names(EvalRecord) == set(EVALUATION_COLUMNS)
    assert set(RESULT_COLUMNS) <= names(RunResult)
    assert names(RunResult) - set(RESULT_COLUMNS) == {"spec", "status", "epochs", "evaluations", "error", "environment",
                                                      "weights"}
    assert names(InferResult) - set(INFER_RESULT_COLUMNS) == {"spec", "status", "error", "environment"}


def test_every_column_is_in_a_migrated_store(tmp_path):
    """The column lists above are what the migrations really create."""
    from batchlab.store.schema import INFER_SPEC_COLUMNS, RUN_SPEC_COLUMNS

    Store(tmp_path / "s.db").close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        for table, columns in (("runs", RUN_SPEC_COLUMNS), ("inference", INFER_SPEC_COLUMNS)):
            created = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            assert set(columns) <= created, table


def test_a_schema_1_store_is_migrated_keeping_its_runs(tmp_path):
    """Stores written before micro-batches existed open, and their runs read as whole batches on
    28×28 gray images at their own size, on the device input path, their waits for data unknown."""
    from batchlab.report.training import load_runs
    from batchlab.store.schema import MIGRATIONS

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(f"BEGIN; {MIGRATIONS[0]}; PRAGMA user_version = 1; COMMIT;")
        db.execute("INSERT INTO machines VALUES ('m1', '{}', 'then')")
        db.execute("INSERT INTO runs (run_key, machine_id, status, created_at, batch_size, model) "
                   "VALUES ('k', 'm1', 'DONE', 'then', 256, 'mlp')")
        db.execute("INSERT INTO epochs (run_id, epoch, train_seconds, images) VALUES (1, 1, 2.0, 1000)")
        for key, device in (("c", "cpu"), ("g", "cuda:0")):
            db.execute("INSERT INTO inference (run_key, machine_id, status, created_at, batch_size, model, device) "
                       "VALUES (?, 'm1', 'DONE', 'then', 16, 'mlp', ?)", (key, device))
    before = path.read_bytes()
    runs = load_runs(path)  # a report reads it migrated in memory, the file untouched
    assert runs.loc[0, "micro_batch"] == 256 and runs.loc[0, "slicing"] == "whole"
    assert (runs.loc[0, "input_shape"], runs.loc[0, "image_size"], runs.loc[0, "skipped_images"]) == ("1x28x28", 0, 0)
    assert (runs.loc[0, "input"], runs.loc[0, "loader_workers"], runs.loc[0, "augment"]) == ("device", 0, False)
    assert runs.loc[0, "images_per_second"] == 500 and pd.isna(runs.loc[0, "data_wait_seconds"])
    assert (runs.loc[0, "lr_scaling"], runs.loc[0, "base_batch"], runs.loc[0, "warmup_epochs"],
            runs.loc[0, "schedule"]) == ("none", 64, 0, "constant")
    assert path.read_bytes() == before
    Store(path).close()  # a sweep's store migrates the file
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 12
        # Inference measured before --graph: eager on the CPU, CUDA graphs where possible on CUDA (auto then).
        assert dict(db.execute("SELECT device, graph FROM inference")) == {"cpu": "off", "cuda:0": "auto"}
    migrated = load_runs(path)  # its tables rebuilt by schema 10: the run keeps its epochs
    assert migrated.loc[0, "micro_batch"] == 256 and migrated.loc[0, "images_per_second"] == 500
