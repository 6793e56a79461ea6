"""SQLite results store: schema and migrations, one transaction per finished run, queries.

Tables: machines (fingerprint per machine), runs (one row per run key and machine: status,
flattened RunSpec, measured overheads, error), epochs (per-epoch records). The schema version is
SQLite's user_version; MIGRATIONS[i] takes a store from version i to i + 1.

A run's row is written RUNNING before it starts and completed in a single transaction when it
ends, so an interrupted sweep, a crash or a full disk never leaves half a result: the run is
simply not DONE and the next sweep runs it again.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .engine import EpochRecord, RunResult
from .spec import RunSpec

STATUSES = ("PENDING", "RUNNING", "DONE", "FAILED", "OOM", "DIVERGED", "KILLED")
FINISHED = ("DONE", "DIVERGED")  # outcomes a resumed sweep does not run again

SQL_TYPES = {"int": "INTEGER", "float": "REAL", "str": "TEXT", "bool": "INTEGER"}
SPEC_COLUMNS = {f.name: SQL_TYPES[str(f.type)] for f in dataclasses.fields(RunSpec)}
RESULT_COLUMNS = {
    "parameters": "INTEGER", "train_images": "INTEGER", "val_images": "INTEGER", "test_images": "INTEGER",
    "dataset_checksum": "TEXT", "dataset_source": "TEXT",
    "load_seconds": "REAL", "to_device_seconds": "REAL", "model_build_seconds": "REAL",
    "warmup_seconds": "REAL", "startup_seconds": "REAL", "wall_seconds": "REAL",
    "peak_memory_bytes": "INTEGER", "cores": "INTEGER", "time_to_target_seconds": "REAL",
    "diverged_step": "INTEGER",
}
EPOCH_COLUMNS = {f.name: SQL_TYPES.get(str(f.type).replace(" | None", ""), "REAL")
                 for f in dataclasses.fields(EpochRecord)}


def _columns(columns: dict[str, str]) -> str:
    return ",\n    ".join(f"{name} {kind}" for name, kind in columns.items())


MIGRATIONS = [
    f"""
    CREATE TABLE machines (
        machine_id TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        first_seen TEXT NOT NULL
    );
    CREATE TABLE runs (
        run_id INTEGER PRIMARY KEY,
        run_key TEXT NOT NULL,
        machine_id TEXT NOT NULL REFERENCES machines(machine_id),
        status TEXT NOT NULL CHECK (status IN {STATUSES}),
        experiment TEXT,
        {_columns(SPEC_COLUMNS)},
        {_columns(RESULT_COLUMNS)},
        environment TEXT,
        error TEXT,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        UNIQUE (run_key, machine_id)
    );
    CREATE TABLE epochs (
        run_id INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        {_columns(EPOCH_COLUMNS)},
        PRIMARY KEY (run_id, epoch)
    );
    CREATE INDEX runs_status ON runs(status);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    """The store cannot be opened or written; the message is one line for the user."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Store:
    def __init__(self, path: str | Path = "batchlab.db"):
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA foreign_keys = ON")
            # WAL: readers (a report) never block the sweep's writes. Needs local disk.
            self.db.execute("PRAGMA journal_mode = WAL")
            self._migrate()
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path}: cannot open as a batchlab store ({error})") from None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {version} is newer than this batchlab "
                             f"understands ({SCHEMA_VERSION}); upgrade batchlab")
        for target in range(version, SCHEMA_VERSION):
            try:  # the migration and its version bump commit together or not at all
                self.db.executescript(f"BEGIN; {MIGRATIONS[target]}; PRAGMA user_version = {target + 1}; COMMIT;")
            except sqlite3.Error:
                self.db.rollback()
                raise

    def _write(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        """One statement in its own transaction, with a one-line error on failure (e.g. disk full)."""
        try:
            with self.db:
                return self.db.execute(sql, params)
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: write failed ({error}); stored results are unchanged") from None

    # --- writing -------------------------------------------------------------------------------

    def record_machine(self, machine_id: str, fingerprint: dict) -> None:
        self._write("INSERT INTO machines VALUES (?, ?, ?) ON CONFLICT(machine_id) DO UPDATE SET fingerprint = excluded.fingerprint",
                    (machine_id, json.dumps(fingerprint, sort_keys=True), now()))

    def status(self, key: str, machine_id: str) -> str | None:
        row = self.db.execute("SELECT status FROM runs WHERE run_key = ? AND machine_id = ?", (key, machine_id)).fetchone()
        return row["status"] if row else None

    def plan(self, spec: RunSpec, machine_id: str, experiment: str | None = None) -> None:
        """Record a planned run as PENDING (no-op if the key is already stored for this machine)."""
        values = {"run_key": spec.key, "machine_id": machine_id, "status": "PENDING", "experiment": experiment,
                  "created_at": now(), **dataclasses.asdict(spec)}
        names = ", ".join(values)
        self._write(f"INSERT INTO runs ({names}) VALUES ({', '.join(':' + n for n in values)}) "
                    "ON CONFLICT(run_key, machine_id) DO NOTHING", values)

    def start(self, spec: RunSpec, machine_id: str, experiment: str | None = None) -> int:
        """Mark a run RUNNING (clearing any earlier unfinished attempt) and return its run_id."""
        self.plan(spec, machine_id, experiment)
        blank = ", ".join(f"{name} = NULL" for name in RESULT_COLUMNS)
        try:
            with self.db:
                row = self.db.execute("SELECT run_id FROM runs WHERE run_key = ? AND machine_id = ?",
                                      (spec.key, machine_id)).fetchone()
                self.db.execute("DELETE FROM epochs WHERE run_id = ?", (row["run_id"],))
                self.db.execute(f"UPDATE runs SET status = 'RUNNING', error = NULL, {blank}, environment = NULL, "
                                "started_at = ?, finished_at = NULL WHERE run_id = ?", (now(), row["run_id"]))
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: write failed ({error}); stored results are unchanged") from None
        return row["run_id"]

    def finish(self, run_id: int, result: RunResult) -> None:
        """Store a completed (DONE or DIVERGED) result and its epochs in one transaction."""
        values = {name: getattr(result, name) for name in RESULT_COLUMNS}
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        epoch_names = list(EPOCH_COLUMNS)
        try:
            with self.db:
                self.db.execute(f"UPDATE runs SET status = :status, error = :error, environment = :environment, "
                                f"finished_at = :finished_at, {assignments} WHERE run_id = :run_id",
                                {**values, "status": result.status, "error": result.error, "run_id": run_id,
                                 "environment": json.dumps(result.environment, sort_keys=True), "finished_at": now()})
                self.db.executemany(
                    f"INSERT INTO epochs (run_id, {', '.join(epoch_names)}) VALUES (?, {', '.join('?' * len(epoch_names))})",
                    [(run_id, *(getattr(e, n) for n in epoch_names)) for e in result.epochs])
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: could not store run {run_id} ({error}); earlier results are unchanged") from None

    def fail(self, run_id: int, status: str, error: str) -> None:
        """End a run without a result: FAILED, OOM or KILLED, with the error text."""
        self._write("UPDATE runs SET status = ?, error = ?, finished_at = ? WHERE run_id = ?",
                    (status, error, now(), run_id))

    # --- reading -------------------------------------------------------------------------------

    def runs_frame(self) -> pd.DataFrame:
        """One row per run with its spec, status, overheads and derived totals from its epochs:
        train_seconds, images_processed, images_per_second, final train/val/test loss and accuracy."""
        runs = pd.read_sql_query("SELECT * FROM runs ORDER BY run_id", self.db)
        runs["drop_last"] = runs["drop_last"].astype(bool)  # SQLite stores booleans as 0/1
        epochs = self.epochs_frame()
        if epochs.empty:
            runs = with_parallelism(runs)
            for column in ("epochs_done", "train_seconds", "eval_seconds", "images_processed", "images_per_second",
                           "epoch_train_seconds", "test_accuracy", "test_loss", "val_accuracy", "val_loss",
                           "train_accuracy", "train_loss"):
                runs[column] = pd.Series(dtype=float)
            return runs
        grouped = epochs.groupby("run_id")
        totals = grouped.agg(epochs_done=("epoch", "max"), train_seconds=("train_seconds", "sum"),
                             eval_seconds=("eval_seconds", "sum"), images_processed=("images", "sum"),
                             epoch_train_seconds=("train_seconds", "median"))
        final = epochs.sort_values("epoch").groupby("run_id").last()[
            ["test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_accuracy", "train_loss"]]
        merged = runs.merge(totals, left_on="run_id", right_index=True, how="left")
        merged = merged.merge(final, left_on="run_id", right_index=True, how="left")
        merged["images_per_second"] = merged["images_processed"] / merged["train_seconds"]
        return with_parallelism(merged)

    def epochs_frame(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM epochs ORDER BY run_id, epoch", self.db)

    def machines(self) -> dict[str, dict]:
        return {row["machine_id"]: json.loads(row["fingerprint"])
                for row in self.db.execute("SELECT machine_id, fingerprint FROM machines")}


def with_parallelism(runs: pd.DataFrame) -> pd.DataFrame:
    """Add the columns parallel runs are compared by: global_batch_size (images per synchronised
    step, or in flight for hogwild), parallelism (worker processes, or threads for `single`)."""
    runs["global_batch_size"] = runs["batch_size"] * runs["workers"]
    runs["parallelism"] = runs["workers"].where(runs["strategy"] != "single", runs["threads"])
    return runs
