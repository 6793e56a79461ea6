"""The store's schema, written out literally, and its migrations.

The schema is SQLite's user_version; MIGRATIONS[i] takes a store from version i to i + 1: an SQL
script, or a function of the connection where SQL alone cannot say it (rebuilding a table).
"""

from __future__ import annotations

import sqlite3
from typing import Callable

from ..core.records import STATUSES
from ..spec.fields import store_columns
from ..spec.run import InferSpec, RunSpec

# The migrations are written out, not derived from the dataclasses: a stored schema version must
# mean the same tables forever. The current spec columns follow the spec fields (spec/fields.py):
# a new field needs only a migration (ALTER TABLE) that adds its column; tests/test_store.py
# fails until the migrations create every column. Result columns are listed here.
STATUSES_1 = ("PENDING", "RUNNING", "DONE", "FAILED", "OOM", "DIVERGED", "KILLED")  # as schema 1 allowed
RUN_SPEC_COLUMNS_1 = {  # as schema 1 created them
    "dataset": "TEXT", "model": "TEXT", "batch_size": "INTEGER", "epochs": "INTEGER", "optimizer": "TEXT",
    "lr": "REAL", "device": "TEXT", "strategy": "TEXT", "workers": "INTEGER", "threads": "INTEGER",
    "precision": "TEXT", "val_split": "REAL", "limit_train": "INTEGER", "drop_last": "INTEGER",
    "target_accuracy": "REAL", "seed": "INTEGER", "repeat": "INTEGER",
}
RUN_SPEC_COLUMNS = store_columns(RunSpec)
RESULT_COLUMNS_1 = {  # as schema 1 created them
    "parameters": "INTEGER", "train_images": "INTEGER", "val_images": "INTEGER", "test_images": "INTEGER",
    "dataset_checksum": "TEXT", "dataset_source": "TEXT",
    "load_seconds": "REAL", "to_device_seconds": "REAL", "model_build_seconds": "REAL",
    "warmup_seconds": "REAL", "startup_seconds": "REAL", "wall_seconds": "REAL",
    "peak_memory_bytes": "INTEGER", "cores": "INTEGER", "time_to_target_seconds": "REAL",
    "diverged_step": "INTEGER",
}
# 3: images of any shape. input_shape is "CxHxW"; skipped_images counts undecodable folder images.
# 4: input paths. input_used is the path a run took ("device" or "loader"; its spec may say auto).
# 5: learning-rate scaling. effective_lr is the LR after scaling (before warm-up and schedule).
# 6: evaluations during training; steps and images until the target accuracy.
RESULT_COLUMNS = RESULT_COLUMNS_1 | {"input_shape": "TEXT", "skipped_images": "INTEGER", "input_used": "TEXT",
                                     "effective_lr": "REAL", "steps_to_target": "INTEGER", "images_to_target": "INTEGER",
                                     "gradient_noise_scale": "REAL"}
EPOCH_COLUMNS_1 = {  # as schema 1 created them
    "epoch": "INTEGER", "train_loss": "REAL", "train_accuracy": "REAL", "val_loss": "REAL",
    "val_accuracy": "REAL", "test_loss": "REAL", "test_accuracy": "REAL", "train_seconds": "REAL",
    "eval_seconds": "REAL", "images": "INTEGER", "steps": "INTEGER",
}
EPOCH_COLUMNS = EPOCH_COLUMNS_1 | {"data_wait_seconds": "REAL"}
EVALUATION_COLUMNS_6 = {  # as schema 6 created them
    "step": "INTEGER", "epoch": "INTEGER", "images": "INTEGER", "train_seconds": "REAL", "accuracy": "REAL",
    "loss": "REAL", "eval_seconds": "REAL",
}
# 7: the gradient noise scale at each evaluation.
EVALUATION_COLUMNS = EVALUATION_COLUMNS_6 | {"gradient_noise_scale": "REAL"}
INFER_SPEC_COLUMNS_1 = {
    "dataset": "TEXT", "model": "TEXT", "batch_size": "INTEGER", "device": "TEXT", "threads": "INTEGER",
    "precision": "TEXT", "weights": "TEXT", "seed": "INTEGER",
}
INFER_SPEC_COLUMNS = store_columns(InferSpec)
# Raw per-call timings are stored (JSON lists); images/s and percentiles are derived on reading.
INFER_RESULT_COLUMNS_1 = {
    "compute_seconds": "TEXT", "overhead_seconds": "TEXT", "first_call_seconds": "REAL", "accuracy": "REAL",
    "weights_source": "TEXT", "load_seconds": "REAL", "peak_memory_bytes": "INTEGER", "cores": "INTEGER",
}
INFER_RESULT_COLUMNS = INFER_RESULT_COLUMNS_1 | {"input_shape": "TEXT"}
JSON_COLUMNS = ("compute_seconds", "overhead_seconds")


def _columns(columns: dict[str, str]) -> str:
    return ",\n        ".join(f"{name} {kind}" for name, kind in columns.items())


def _run_table(table: str, spec_columns: dict[str, str], result_columns: dict[str, str]) -> str:
    return f"""
    CREATE TABLE {table} (
        run_id INTEGER PRIMARY KEY,
        run_key TEXT NOT NULL,
        machine_id TEXT NOT NULL REFERENCES machines(machine_id),
        status TEXT NOT NULL CHECK (status IN {STATUSES_1}),
        experiment TEXT,
        {_columns(spec_columns)},
        {_columns(result_columns)},
        environment TEXT,
        error TEXT,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        UNIQUE (run_key, machine_id)
    );
    CREATE INDEX {table}_status ON {table}(status);"""


def allow_statuses(db: sqlite3.Connection, before: tuple[str, ...], after: tuple[str, ...]) -> None:
    """Widen the runs' and inference rows' status CHECK from `before` to `after`. SQLite cannot
    alter a CHECK: each table is rebuilt (as SQLite's ALTER TABLE documentation prescribes) from
    its own stored definition, so every column added by earlier migrations comes along. The
    caller has foreign keys off, or dropping the old table would delete its epochs."""
    for table in ("runs", "inference"):
        definition = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
        check = f"CHECK (status IN {before})"
        if check not in definition:
            raise sqlite3.DatabaseError(f"table {table} lacks the status check of its schema version")
        rebuilt = definition.replace(check, f"CHECK (status IN {after})").replace(table, f"{table}_new", 1)
        db.execute(rebuilt)
        db.execute(f"INSERT INTO {table}_new SELECT * FROM {table}")
        db.execute(f"DROP TABLE {table}")
        db.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
        db.execute(f"CREATE INDEX {table}_status ON {table}(status)")


def _claims(db: sqlite3.Connection) -> None:
    """10: run claims. A RUNNING row names its owner (host, pid, the process's start time) and a
    heartbeat the owner refreshes (core/owner.py), and a run whose owner is gone is STALE."""
    for table in ("runs", "inference"):
        for column, kind in OWNER_COLUMNS.items():
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    allow_statuses(db, STATUSES_1, STATUSES_10)


STATUSES_10 = STATUSES_1 + ("STALE",)


def _cluster_jobs(db: sqlite3.Connection) -> None:
    """11: a run on a cluster names its job (JSON: executor, job id, job folder), so that a
    coordinator started after the one that submitted it re-attaches to the job instead of
    running the run twice; and a ddp run may span nodes (every run before ran on one)."""
    for table in ("runs", "inference"):
        db.execute(f"ALTER TABLE {table} ADD COLUMN cluster_job TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN nodes INTEGER")
    db.execute("UPDATE runs SET nodes = 1")
OWNER_COLUMNS = {"owner_host": "TEXT", "owner_pid": "INTEGER", "owner_started": "REAL", "heartbeat_at": "TEXT"}

MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
    f"""
    CREATE TABLE machines (
        machine_id TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        first_seen TEXT NOT NULL
    );
    {_run_table("runs", RUN_SPEC_COLUMNS_1, RESULT_COLUMNS_1)}
    CREATE TABLE epochs (
        run_id INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        {_columns(EPOCH_COLUMNS_1)},
        PRIMARY KEY (run_id, epoch)
    );
    CREATE TABLE weights (
        run_id INTEGER PRIMARY KEY REFERENCES runs(run_id) ON DELETE CASCADE,
        state BLOB NOT NULL
    );
    {_run_table("inference", INFER_SPEC_COLUMNS_1, INFER_RESULT_COLUMNS_1)}
    """,
    # 2: micro-batches. Runs stored before ran whole batches, which micro_batch = batch_size says.
    """
    ALTER TABLE runs ADD COLUMN micro_batch INTEGER;
    UPDATE runs SET micro_batch = batch_size;
    ALTER TABLE inference ADD COLUMN micro_batch INTEGER;
    UPDATE inference SET micro_batch = batch_size;
    """,
    # 3: images of any shape and size. Every run stored before was on 28×28 gray images (IDX, and
    # folders were converted to that), at their own size, with no image skipped (one failed the run).
    """
    ALTER TABLE runs ADD COLUMN image_size INTEGER;
    ALTER TABLE runs ADD COLUMN strict_images INTEGER;
    ALTER TABLE runs ADD COLUMN input_shape TEXT;
    ALTER TABLE runs ADD COLUMN skipped_images INTEGER;
    UPDATE runs SET image_size = 0, strict_images = 0, input_shape = '1x28x28', skipped_images = 0;
    ALTER TABLE inference ADD COLUMN image_size INTEGER;
    ALTER TABLE inference ADD COLUMN strict_images INTEGER;
    ALTER TABLE inference ADD COLUMN input_shape TEXT;
    UPDATE inference SET image_size = 0, strict_images = 0, input_shape = '1x28x28';
    """,
    # 4: the input path axis. Every run stored before took the device path, without augmentation;
    # its waits for batches were not measured (NULL).
    """
    ALTER TABLE runs ADD COLUMN input TEXT;
    ALTER TABLE runs ADD COLUMN loader_workers INTEGER;
    ALTER TABLE runs ADD COLUMN augment INTEGER;
    ALTER TABLE runs ADD COLUMN input_used TEXT;
    UPDATE runs SET input = 'device', loader_workers = 0, augment = 0;
    UPDATE runs SET input_used = 'device' WHERE status <> 'PENDING';
    ALTER TABLE epochs ADD COLUMN data_wait_seconds REAL;
    """,
    # 5: learning-rate scaling, warm-up and schedules. Every run stored before trained at its lr
    # throughout: no scaling (the default base batch, which then means nothing), no warm-up, a
    # constant schedule.
    """
    ALTER TABLE runs ADD COLUMN lr_scaling TEXT;
    ALTER TABLE runs ADD COLUMN base_batch INTEGER;
    ALTER TABLE runs ADD COLUMN warmup_epochs REAL;
    ALTER TABLE runs ADD COLUMN schedule TEXT;
    ALTER TABLE runs ADD COLUMN effective_lr REAL;
    UPDATE runs SET lr_scaling = 'none', base_batch = 64, warmup_epochs = 0, schedule = 'constant';
    UPDATE runs SET effective_lr = lr WHERE status <> 'PENDING';
    """,
    # 6: evaluation every N steps. Runs stored before evaluated after each epoch only; their
    # evaluations were not stored apart (their epochs hold them), nor steps to target.
    f"""
    ALTER TABLE runs ADD COLUMN eval_every INTEGER;
    ALTER TABLE runs ADD COLUMN steps_to_target INTEGER;
    ALTER TABLE runs ADD COLUMN images_to_target INTEGER;
    UPDATE runs SET eval_every = 0;
    CREATE TABLE evaluations (
        run_id INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        {_columns(EVALUATION_COLUMNS_6)},
        PRIMARY KEY (run_id, step)
    );
    """,
    # 7: the gradient noise scale (--gns). No run stored before measured it.
    """
    ALTER TABLE runs ADD COLUMN gns INTEGER;
    ALTER TABLE runs ADD COLUMN gradient_noise_scale REAL;
    UPDATE runs SET gns = 0;
    ALTER TABLE evaluations ADD COLUMN gradient_noise_scale REAL;
    """,
    # 8: the largest batch that fits (`batchlab maxbatch`), one row per search.
    """
    CREATE TABLE max_batch (
        search_id INTEGER PRIMARY KEY,
        machine_id TEXT NOT NULL REFERENCES machines(machine_id),
        spec TEXT NOT NULL,
        max_batch INTEGER NOT NULL,
        usable_batch INTEGER NOT NULL,
        margin REAL NOT NULL,
        limited_by TEXT NOT NULL,
        memory_limit INTEGER,
        smallest_failing INTEGER,
        probes TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    """,
    # 9: runs that stop at their target (advise's), and advise's stored plans: a plan is made once
    # (its probes measured) and found again by its key, so that advise resumes where it stopped.
    """
    ALTER TABLE runs ADD COLUMN stop_at_target INTEGER;
    UPDATE runs SET stop_at_target = 0;
    CREATE TABLE advice_plans (
        plan_key TEXT PRIMARY KEY,
        machine_id TEXT NOT NULL REFERENCES machines(machine_id),
        plan TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    """,
    _claims,
    _cluster_jobs,
    # 12: inference graphs (--graph). Measurements stored before ran eagerly on the CPU, which is
    # what off does; elsewhere what auto does now (CUDA graphs where they could, MPS eagerly). Their
    # keys stay: a new measurement of either setting is measured again (its key names the setting).
    """
    ALTER TABLE inference ADD COLUMN graph TEXT;
    UPDATE inference SET graph = CASE WHEN device = 'cpu' THEN 'off' ELSE 'auto' END;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
# The statuses the current schema allows are the ones a run can have.
assert STATUSES == STATUSES_10, "a new status needs a migration that allows it (allow_statuses)"


def statements(script: str) -> list[str]:
    """The SQL statements of a migration script, one by one (executescript would commit the
    surrounding transaction first)."""
    found, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            found.append(pending.strip())
            pending = ""
    if pending.strip():
        found.append(pending.strip())
    return [statement for statement in found if statement.rstrip(";").strip()]
