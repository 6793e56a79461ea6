"""SQLite results store: opening (and migrating) it, one transaction per finished run, queries.

Tables: machines (fingerprint per machine), runs (one row per run key and machine: status,
flattened RunSpec, measured overheads, error), epochs (per-epoch records). The schema version is
SQLite's user_version; schema.py holds the tables and their migrations.

A run's row is written RUNNING before it starts and completed in a single transaction when it
ends, so an interrupted sweep, a crash or a full disk never leaves half a result: the run is
simply not DONE and the next sweep runs it again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ..core.errors import RunAlreadyFinished, RunHeldElsewhere, StoreError, one_line
from ..core.owner import Owner, gone_reason, holds, this_process
from ..core.records import FINISHED, InferResult, RunResult
from ..core.stats import images_per_second, percentiles
from ..spec.kinds import RunKind, kind_of
from ..spec.run import InferSpec, RunSpec
from .schema import (
    EPOCH_COLUMNS,
    EVALUATION_COLUMNS,
    INFER_RESULT_COLUMNS,
    JSON_COLUMNS,
    MIGRATIONS,
    OWNER_COLUMNS,
    RESULT_COLUMNS,
    SCHEMA_VERSION,
    statements,
)


@dataclass(frozen=True)
class Row:
    """Where a run lives in the store: its kind (and so its table) and row id."""

    kind: RunKind
    run_id: int
    owner: Owner | None = None  # the process that started it; only it stores the run's end

    @property
    def table(self) -> str:
        return self.kind.table


# Each store table's result columns (besides epochs and weights, in their own tables).
RESULTS_OF = {"runs": RESULT_COLUMNS, "inference": INFER_RESULT_COLUMNS}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# SQLite result codes (sqlite3.Error.sqlite_errorcode; extended codes keep the primary in the low byte).
SQLITE_BUSY, SQLITE_IOERR, SQLITE_FULL = 5, 10, 13
# How long opening a store retries SQLITE_BUSY that came without the busy timeout's wait (the same
# bound as that timeout: connect(timeout=BUSY_SECONDS)).
BUSY_SECONDS = 30.0
BUSY_RETRY_SECONDS = 0.02
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
# Tables every batchlab store has had since schema 1: a file of another program that happens to
# have a user_version is told apart by them.
BATCHLAB_TABLES = {"machines", "runs", "epochs", "weights", "inference"}
OWNER_SELECT = ", ".join(OWNER_COLUMNS)


def owner_of(row: sqlite3.Row | dict) -> Owner | None:
    """The owner a stored row names (None for rows stored before owners were)."""
    if pd.isna(row["owner_pid"]):  # NULL: None from SQLite, NaN in a frame
        return None
    return Owner(row["owner_host"], int(row["owner_pid"]), float(row["owner_started"]))
LOW_SPACE_BYTES = 64 * 2**20


def reading(method):
    """A reader of stored results whose content it trusts (JSON, column names, types): a store
    changed by something else than batchlab fails as one StoreError naming the file, not a traceback."""
    @functools.wraps(method)
    def read(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StoreError:
            raise
        except (sqlite3.Error, pd.errors.DatabaseError, ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise StoreError(f"{self.path}: cannot read its results; the store looks damaged "
                             f"({one_line(error)})") from None
    return read


class Store:
    """A batchlab store. `readonly=True` (report, export) never writes a byte: the file is opened
    with SQLite's mode=ro, a store of an older schema is migrated in memory, and a store on
    read-only media is read as immutable."""

    def __init__(self, path: str | Path = "batchlab.db", readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self.db = None
        try:
            self._refuse_if_not_sqlite()
            self._open_waiting_out_busy()
        except (sqlite3.DatabaseError, UnicodeDecodeError, ValueError) as error:
            # UnicodeDecodeError: SQLite's message quotes a garbled schema's bytes, not always UTF-8.
            self._close_quietly()
            if isinstance(error.__context__, KeyboardInterrupt):
                # Ctrl-C during the migration: the transaction's rollback then failed ("no transaction
                # is active") and hid the interrupt, which is what happened (exit 130, not "cannot open").
                raise error.__context__ from None
            raise StoreError(f"{self.path}: cannot open as a batchlab store ({one_line(error)})") from None
        except BaseException:
            self._close_quietly()
            raise

    def _open_waiting_out_busy(self) -> None:
        """_open, again while SQLite answers SQLITE_BUSY, for up to BUSY_SECONDS. The busy timeout
        does not cover every such answer: while the last connection to a WAL store closes, it holds
        an exclusive lock to clean up the WAL, and a connection opening in that moment gets
        SQLITE_BUSY at once (SQLite's WAL documentation). Two sweeps, or a sweep and a report,
        starting together meet it."""
        deadline = time.monotonic() + BUSY_SECONDS
        while True:
            try:
                return self._open()
            except sqlite3.OperationalError as error:
                code = getattr(error, "sqlite_errorcode", None)
                if code is None or code & 0xFF != SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
                self._close_quietly()
                self.db = None
                time.sleep(BUSY_RETRY_SECONDS)

    def _open(self) -> None:
        """Connect, and check (read-only) or bring the schema up to date (read-write)."""
        readonly = self.readonly
        self.db = self._connect_readonly() if readonly else sqlite3.connect(self.path, timeout=BUSY_SECONDS)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA foreign_keys = ON")
        if readonly:
            self._check_is_batchlab(*self._schema_state())
            self._migrate_in_memory()
        else:
            self._migrate()
            # WAL: readers (a report) never block the sweep's writes. Needs local disk. Set only
            # once the file is known to be a batchlab store of a version we understand.
            self.db.execute("PRAGMA journal_mode = WAL")

    def _close_quietly(self) -> None:
        if self.db is not None:
            self.db.close()

    def _refuse_if_not_sqlite(self) -> None:
        """A file that is there but does not begin as an SQLite database is none (SQLite itself
        takes a file shorter than its header for an empty database, and would write into it)."""
        try:
            with self.path.open("rb") as file:
                head = file.read(len(SQLITE_HEADER))
        except (FileNotFoundError, IsADirectoryError):
            return  # a new store (or the error of connecting says what is wrong)
        if head and head != SQLITE_HEADER:
            raise StoreError(f"{self.path}: not an SQLite database, so not a batchlab store; give another --db")

    def _connect_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(f"no results store at {self.path}; run `batchlab sweep`, `train` or `infer` first")
        uri = self.path.resolve().as_uri()
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=BUSY_SECONDS)
        try:
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            # A WAL store on read-only media: SQLite cannot create its shared-memory file there.
            # Nothing can be writing such a store, so it may be read as immutable.
            db.close()
            return sqlite3.connect(f"{uri}?immutable=1", uri=True)

    def _schema_state(self) -> tuple[int, dict[str, str]]:
        """(schema version, {name: type} of its tables, views, indexes and triggers), read in one
        statement: one consistent snapshot even while another sweep is creating the schema."""
        version, objects = self.db.execute(
            "SELECT (SELECT user_version FROM pragma_user_version), "
            "(SELECT json_group_object(name, type) FROM sqlite_master WHERE name NOT LIKE 'sqlite%')").fetchone()
        return version, json.loads(objects) if objects else {}

    def _check_is_batchlab(self, version: int, objects: dict[str, str]) -> None:
        """Refuse, before anything is written, a file that is another program's SQLite database
        or a store of a newer schema than this batchlab knows."""
        if version > SCHEMA_VERSION:
            raise self._newer_schema(version)
        tables = {name for name, kind in objects.items() if kind == "table"}
        if (version == 0 and objects) or version < 0 or (version > 0 and not BATCHLAB_TABLES <= tables):
            # Names shown escaped: a name may hold a line break, and the error is one line.
            names = sorted(name.encode("unicode_escape").decode("ascii") for name in objects)
            shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "") if names else "none"
            version_note = f"; user_version {version}" if version else ""
            raise StoreError(f"{self.path}: an SQLite database but not a batchlab store (it has tables {shown}"
                             f"{version_note}); give another --db")
        if version == 0 and self.readonly:
            raise StoreError(f"{self.path}: an empty SQLite database, not a batchlab store")

    def _newer_schema(self, version: int) -> StoreError:
        return StoreError(f"{self.path}: schema version {version} is newer than this batchlab "
                          f"understands ({SCHEMA_VERSION}); upgrade batchlab")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        """Bring the store to SCHEMA_VERSION. The version is read and every migration applied in
        one IMMEDIATE transaction, so two sweeps opening a new store at the same moment cannot
        both create its tables: the second waits, then finds the schema current."""
        self.db.isolation_level = None  # explicit transaction below; Python must not add its own
        # Off while migrating (it cannot change inside a transaction): a migration that rebuilds
        # a table drops the old one, which with foreign keys on would delete its epochs.
        self.db.execute("PRAGMA foreign_keys = OFF")
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                version, tables = self._schema_state()
                self._check_is_batchlab(version, tables)
                for target in range(version, SCHEMA_VERSION):
                    migration = MIGRATIONS[target]
                    if callable(migration):
                        migration(self.db)
                    else:
                        for statement in statements(migration):
                            self.db.execute(statement)
                    self.db.execute(f"PRAGMA user_version = {target + 1}")
                if self.db.execute("PRAGMA foreign_key_check").fetchone() is not None:
                    raise sqlite3.DatabaseError("a migration left rows without their run")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        finally:
            self.db.isolation_level = ""  # back to Python's default: `with self.db:` transactions
            self.db.execute("PRAGMA foreign_keys = ON")

    def _migrate_in_memory(self) -> None:
        """A read-only store of an older schema: copy it into memory and migrate the copy, so it
        reads like a current one while the file stays untouched."""
        if self.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        memory = sqlite3.connect(":memory:")
        self.db.backup(memory)
        self.db.close()
        self.db = memory
        self.db.row_factory = sqlite3.Row
        self._migrate()

    def _error(self, error: sqlite3.Error, what: str) -> StoreError:
        """One line for a failed write; a full disk is named as such (SQLite may call it a disk
        I/O error when the write-ahead log cannot grow)."""
        code = getattr(error, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in (SQLITE_FULL, SQLITE_IOERR):
            try:
                free = shutil.disk_usage(self.path.resolve().parent).free
            except OSError:
                free = None
            if code & 0xFF == SQLITE_FULL or (free is not None and free < LOW_SPACE_BYTES):
                left = f" ({free / 2**20:.1f} MiB free)" if free is not None else ""
                return StoreError(f"{self.path}: {what}: no space left on the disk{left} "
                                  f"(SQLite: {error}); stored results are unchanged")
        return StoreError(f"{self.path}: {what} ({error}); stored results are unchanged")

    def _write(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        """One statement in its own transaction, with a one-line error on failure (e.g. disk full)."""
        try:
            with self.db:
                return self.db.execute(sql, params)
        except sqlite3.Error as error:
            raise self._error(error, "write failed") from None

    # --- writing -------------------------------------------------------------------------------

    def record_machine(self, machine_id: str, fingerprint: dict) -> None:
        self._write("INSERT INTO machines VALUES (?, ?, ?) ON CONFLICT(machine_id) DO UPDATE SET fingerprint = excluded.fingerprint",
                    (machine_id, json.dumps(fingerprint, sort_keys=True), now()))

    def status(self, spec: RunSpec | InferSpec, machine_id: str) -> str | None:
        table = kind_of(spec).table
        row = self.db.execute(f"SELECT status FROM {table} WHERE run_key = ? AND machine_id = ?",
                              (spec.key, machine_id)).fetchone()
        return row["status"] if row else None

    def plan(self, spec: RunSpec | InferSpec, machine_id: str, experiment: str | None = None) -> None:
        """Record a planned run as PENDING (no-op if the key is already stored for this machine)."""
        table = kind_of(spec).table
        values = {"run_key": spec.key, "machine_id": machine_id, "status": "PENDING", "experiment": experiment,
                  "created_at": now(), **dataclasses.asdict(spec)}
        names = ", ".join(values)
        self._write(f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + n for n in values)}) "
                    "ON CONFLICT(run_key, machine_id) DO NOTHING", values)

    def start(self, spec: RunSpec | InferSpec, machine_id: str, experiment: str | None = None,
              owner: Owner | None = None) -> Row:
        """Claim a run for `owner` (default: this process) and mark it RUNNING, clearing any earlier
        unfinished attempt; return where it is. Checked in the same transaction as the claim, so
        that two sweeps never run the same run: a run already DONE or DIVERGED is never reset
        (RunAlreadyFinished), and a run another live sweep holds is left to it (RunHeldElsewhere).
        A RUNNING run whose owner is gone (core/owner.py) is taken over."""
        self.plan(spec, machine_id, experiment)
        owner = owner or this_process()
        kind = kind_of(spec)
        table = kind.table
        results = RESULTS_OF[table]
        blank = ", ".join(f"{name} = NULL" for name in results)
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")  # the check and the claim see the same row
                row = self.db.execute(f"SELECT run_id, status, heartbeat_at, {OWNER_SELECT} FROM {table} "
                                      "WHERE run_key = ? AND machine_id = ?", (spec.key, machine_id)).fetchone()
                if row["status"] in FINISHED:
                    raise RunAlreadyFinished(f"{self.path}: {spec.label()} is already {row['status']} "
                                             f"(run {row['run_id']}); a finished run is never run again")
                holder = owner_of(row)
                if row["status"] == "RUNNING" and holder != owner and holds(holder, row["heartbeat_at"]):
                    raise RunHeldElsewhere(f"{spec.label()} is running in another sweep ({holder.describe()})")
                if kind.has_epochs:  # an earlier, unfinished attempt's
                    self.db.execute("DELETE FROM epochs WHERE run_id = ?", (row["run_id"],))
                    self.db.execute("DELETE FROM evaluations WHERE run_id = ?", (row["run_id"],))
                if kind.saves_weights:
                    self.db.execute("DELETE FROM weights WHERE run_id = ?", (row["run_id"],))
                started = now()
                self.db.execute(f"UPDATE {table} SET status = 'RUNNING', error = NULL, {blank}, environment = NULL, "
                                "started_at = ?, finished_at = NULL, owner_host = ?, owner_pid = ?, owner_started = ?, "
                                "heartbeat_at = ?, cluster_job = NULL WHERE run_id = ?",
                                (started, owner.host, owner.pid, owner.started, started, row["run_id"]))
        except sqlite3.Error as error:
            raise self._error(error, "write failed") from None
        return Row(kind, row["run_id"], owner)

    def attach_job(self, row: Row, job: dict) -> None:
        """Name the cluster job that runs this RUNNING run (executor, job id, job folder): a later
        coordinator re-attaches to it (adopt) instead of running the run again."""
        self._write(f"UPDATE {row.table} SET cluster_job = ? WHERE run_id = ? AND status = 'RUNNING'",
                    (json.dumps(job, sort_keys=True), row.run_id))

    def leave_running(self, row: Row) -> None:
        """`--detach`: the coordinator ends while the run's cluster job goes on. The run stays
        RUNNING with its job and no owner, for a later sweep to adopt."""
        self._write(f"UPDATE {row.table} SET owner_host = NULL, owner_pid = NULL, owner_started = NULL, "
                    "heartbeat_at = NULL WHERE run_id = ? AND status = 'RUNNING' AND cluster_job IS NOT NULL",
                    (row.run_id,))

    def adopt(self, spec: RunSpec | InferSpec, machine_id: str, owner: Owner | None = None) -> tuple[Row, dict] | None:
        """Take over a RUNNING run whose cluster job a coordinator submitted and no live one
        watches (it was detached, or killed): the run becomes `owner`'s (default: this process),
        and its job is returned to be watched. None if the run is not such a run; a live
        coordinator's is refused (RunHeldElsewhere)."""
        owner = owner or this_process()
        table = kind_of(spec).table
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                row = self.db.execute(f"SELECT run_id, status, heartbeat_at, cluster_job, {OWNER_SELECT} FROM {table} "
                                      "WHERE run_key = ? AND machine_id = ?", (spec.key, machine_id)).fetchone()
                if row is None or row["status"] != "RUNNING" or row["cluster_job"] is None:
                    return None
                holder = owner_of(row)
                if holder != owner and holds(holder, row["heartbeat_at"]):
                    raise RunHeldElsewhere(f"{spec.label()} is watched by another sweep ({holder.describe()})")
                self.db.execute(f"UPDATE {table} SET owner_host = ?, owner_pid = ?, owner_started = ?, heartbeat_at = ? "
                                "WHERE run_id = ?", (owner.host, owner.pid, owner.started, now(), row["run_id"]))
        except sqlite3.Error as error:
            raise self._error(error, "write failed") from None
        return Row(kind_of(spec), row["run_id"], owner), json.loads(row["cluster_job"])

    def beat(self, row: Row) -> None:
        """The owner's sign of life for its RUNNING run (runner/claims.py calls it periodically)."""
        if row.owner is None:
            return
        self._write(f"UPDATE {row.table} SET heartbeat_at = ? WHERE run_id = ? AND status = 'RUNNING' "
                    "AND owner_host = ? AND owner_pid = ?", (now(), row.run_id, row.owner.host, row.owner.pid))

    def holder(self, spec: RunSpec | InferSpec, machine_id: str) -> Owner | None:
        """The live sweep that holds this RUNNING run, if any."""
        row = self.db.execute(f"SELECT status, heartbeat_at, {OWNER_SELECT} FROM {kind_of(spec).table} "
                              "WHERE run_key = ? AND machine_id = ?", (spec.key, machine_id)).fetchone()
        if row is None or row["status"] != "RUNNING":
            return None
        holder = owner_of(row)
        return holder if holds(holder, row["heartbeat_at"]) else None

    def mark_stale(self) -> int:
        """Store as STALE every RUNNING run whose owner is gone (its sweep was killed before it
        could store how the run ended); returns how many. Such runs are not finished: the next
        sweep that plans them runs them again. A run with a cluster job is not stale: its job may
        still run, and the next sweep on that cluster adopts it."""
        marked = 0
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                for table in RESULTS_OF:
                    for row in self.db.execute(f"SELECT run_id, heartbeat_at, {OWNER_SELECT} FROM {table} "
                                               "WHERE status = 'RUNNING' AND cluster_job IS NULL").fetchall():
                        holder = owner_of(row)
                        if not holds(holder, row["heartbeat_at"]):
                            self.db.execute(f"UPDATE {table} SET status = 'STALE', error = ? WHERE run_id = ?",
                                            (gone_reason(holder), row["run_id"]))
                            marked += 1
        except sqlite3.Error as error:
            raise self._error(error, "write failed") from None
        return marked

    def finish(self, row: Row, result: RunResult | InferResult, weights: bytes | None = None) -> None:
        """Store a completed result (with its epochs, and weights if given) in one transaction."""
        columns = RESULTS_OF[row.table]
        values = {name: getattr(result, name) for name in columns}
        values.update({name: json.dumps(values[name]) for name in JSON_COLUMNS if name in values})
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self._refuse_unless_ours(row)
                self.db.execute(f"UPDATE {row.table} SET status = :status, error = :error, environment = :environment, "
                                f"finished_at = :finished_at, {assignments} WHERE run_id = :run_id",
                                {**values, "status": result.status, "error": result.error, "run_id": row.run_id,
                                 "environment": json.dumps(result.environment, sort_keys=True), "finished_at": now()})
                if row.kind.has_epochs:
                    names = list(EPOCH_COLUMNS)
                    self.db.executemany(
                        f"INSERT INTO epochs (run_id, {', '.join(names)}) VALUES (?, {', '.join('?' * len(names))})",
                        [(row.run_id, *(getattr(e, n) for n in names)) for e in result.epochs])
                    names = list(EVALUATION_COLUMNS)
                    self.db.executemany(
                        f"INSERT INTO evaluations (run_id, {', '.join(names)}) "
                        f"VALUES (?, {', '.join('?' * len(names))})",
                        [(row.run_id, *(getattr(e, n) for n in names)) for e in result.evaluations])
                if weights is not None:
                    self.db.execute("INSERT INTO weights VALUES (?, ?)", (row.run_id, weights))
        except sqlite3.Error as error:
            raise self._error(error, f"could not store run {row.run_id}") from None

    def _refuse_unless_ours(self, row: Row) -> None:
        """Inside a write transaction: a run that another sweep finished meanwhile keeps its result,
        and a run another sweep took over (it thought this one gone) is left to it."""
        stored = self.db.execute(f"SELECT status, {OWNER_SELECT} FROM {row.table} WHERE run_id = ?",
                                 (row.run_id,)).fetchone()
        if stored["status"] in FINISHED:
            raise RunAlreadyFinished(f"{self.path}: run {row.run_id} was finished meanwhile ({stored['status']}) by "
                                     "another sweep; its stored result is kept and this attempt's is not stored")
        holder = owner_of(stored)
        if row.owner is not None and holder != row.owner:
            taker = holder.describe() if holder else "another sweep"
            raise RunHeldElsewhere(f"{self.path}: run {row.run_id} was taken over by {taker}; "
                                   "this attempt's result is not stored")

    def fail(self, row: Row, status: str, error: str) -> None:
        """End a run without a result: FAILED, OOM or KILLED, with the error text. A run finished
        meanwhile by another sweep keeps its result (RunAlreadyFinished)."""
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self._refuse_unless_ours(row)
                self.db.execute(f"UPDATE {row.table} SET status = ?, error = ?, finished_at = ? WHERE run_id = ?",
                                (status, error, now(), row.run_id))
        except sqlite3.Error as error:
            raise self._error(error, "write failed") from None

    def record_max_batch(self, machine_id: str, spec: dict, found: dict) -> int:
        """Store one max-batch search (runner/maxbatch.py): the probed configuration and what it found."""
        values = {"machine_id": machine_id, "spec": json.dumps(spec, sort_keys=True), "created_at": now(),
                  **{key: found[key] for key in ("max_batch", "usable_batch", "margin", "limited_by", "memory_limit",
                                                 "smallest_failing")},
                  "probes": json.dumps(found["probes"])}
        names = ", ".join(values)
        cursor = self._write(f"INSERT INTO max_batch ({names}) VALUES ({', '.join(':' + n for n in values)})", values)
        return cursor.lastrowid

    @reading
    def max_batch_frame(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM max_batch ORDER BY search_id", self.db)

    def record_advice_plan(self, plan_key: str, machine_id: str, plan: dict) -> None:
        """Store advise's plan (runner/advise.py) under its key; a plan already stored stays."""
        self._write("INSERT OR IGNORE INTO advice_plans (plan_key, machine_id, plan, created_at) VALUES (?, ?, ?, ?)",
                    (plan_key, machine_id, json.dumps(plan, sort_keys=True), now()))

    def update_advice_plan(self, plan_key: str, plan: dict) -> None:
        """A stored plan grown by advise (runs beyond the LR grid's edge)."""
        self._write("UPDATE advice_plans SET plan = ? WHERE plan_key = ?", (json.dumps(plan, sort_keys=True), plan_key))

    @reading
    def advice_plan(self, plan_key: str) -> dict | None:
        row = self.db.execute("SELECT plan FROM advice_plans WHERE plan_key = ?", (plan_key,)).fetchone()
        return json.loads(row[0]) if row else None

    @reading
    def advice_plans(self) -> list[dict]:
        """Every stored advise plan, oldest first."""
        return [json.loads(row[0]) for row in self.db.execute("SELECT plan FROM advice_plans ORDER BY rowid")]

    @reading
    def weights(self, key: str, model: str | None = None, dataset: str | None = None) -> tuple[str, bytes]:
        """(run key, saved weights) of the DONE training run `key` (a unique prefix is enough), or
        with key 'latest' of the newest one for this model and dataset."""
        query = ("SELECT r.run_key, w.state FROM runs r JOIN weights w USING (run_id) WHERE r.status = 'DONE' AND ")
        if key == "latest":
            row = self.db.execute(query + "r.model = ? AND r.dataset = ? ORDER BY r.finished_at DESC, r.run_id DESC",
                                  (model, dataset)).fetchone()
            if row is None:
                raise StoreError(f"{self.path}: no finished training run of {model} on {dataset} with saved weights; "
                                 "train one with --save-weights")
            return row["run_key"], row["state"]
        rows = self.db.execute(query + "r.run_key LIKE ?", (key + "%",)).fetchall()
        if len(rows) != 1:
            found = "no" if not rows else "more than one"
            raise StoreError(f"{self.path}: {found} finished run with saved weights has a key starting {key!r}")
        return rows[0]["run_key"], rows[0]["state"]

    # --- reading -------------------------------------------------------------------------------

    @reading
    def runs_frame(self) -> pd.DataFrame:
        """One row per run with its spec, status, overheads and derived totals from its epochs:
        train_seconds, images_processed, images_per_second, data_wait_seconds (of train_seconds) and
        data_wait_share, final train/val/test loss and accuracy. `input` is the path the run took
        (its spec's `input` may say auto; runs that never started keep the spec's value)."""
        runs = with_executor(stale_shown(pd.read_sql_query("SELECT * FROM runs ORDER BY run_id", self.db)))
        for flag in ("drop_last", "augment", "strict_images", "gns", "stop_at_target"):  # SQLite stores booleans as 0/1
            runs[flag] = runs[flag].astype(bool)
        runs["input"] = runs["input_used"].fillna(runs["input"])
        epochs = self.epochs_frame()
        if epochs.empty:
            runs = with_parallelism(runs)
            for column in ("epochs_done", "train_seconds", "eval_seconds", "images_processed", "images_per_second",
                           "epoch_train_seconds", "data_wait_seconds", "data_wait_share", "test_accuracy", "test_loss",
                           "val_accuracy", "val_loss", "train_accuracy", "train_loss"):
                runs[column] = pd.Series(dtype=float)
            return runs
        grouped = epochs.groupby("run_id")
        totals = grouped.agg(epochs_done=("epoch", "max"), train_seconds=("train_seconds", "sum"),
                             eval_seconds=("eval_seconds", "sum"), images_processed=("images", "sum"),
                             epoch_train_seconds=("train_seconds", "median"),
                             # NaN, not 0, for runs stored before the wait was measured
                             data_wait_seconds=("data_wait_seconds", lambda waits: waits.sum(min_count=1)))
        final = epochs.sort_values("epoch").groupby("run_id").last()[
            ["test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_accuracy", "train_loss"]]
        merged = runs.merge(totals, left_on="run_id", right_index=True, how="left")
        merged = merged.merge(final, left_on="run_id", right_index=True, how="left")
        merged["images_per_second"] = merged["images_processed"] / merged["train_seconds"]
        merged["data_wait_share"] = merged["data_wait_seconds"] / merged["train_seconds"]
        return with_parallelism(merged)

    @reading
    def epochs_frame(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM epochs ORDER BY run_id, epoch", self.db)

    @reading
    def evaluations_frame(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM evaluations ORDER BY run_id, step", self.db)

    @reading
    def inference_frame(self) -> pd.DataFrame:
        """One row per inference measurement, with images/s and latency percentiles (seconds)
        derived from the stored per-call timings, compute only and with overheads."""
        rows = with_executor(stale_shown(pd.read_sql_query("SELECT * FROM inference ORDER BY run_id", self.db)))
        for series, prefix in (("compute_seconds", ""), ("overhead_seconds", "overhead_")):
            timings = rows[series].map(lambda text: json.loads(text) if isinstance(text, str) else [])
            rows[series] = timings
            rows[prefix + "images_per_second"] = [images_per_second(b, t) for b, t in zip(rows["batch_size"], timings)]
            stats = pd.DataFrame([percentiles(t) for t in timings], index=rows.index)
            for name in ("p50", "p90", "p99"):
                rows[f"{prefix}latency_{name}"] = stats[name] if len(stats) else pd.Series(dtype=float)
            rows[prefix + "repeats"] = timings.map(len)
        return rows

    @reading
    def machines(self) -> dict[str, dict]:
        return {row["machine_id"]: json.loads(row["fingerprint"])
                for row in self.db.execute("SELECT machine_id, fingerprint FROM machines")}


def stale_shown(rows: pd.DataFrame) -> pd.DataFrame:
    """RUNNING rows whose sweep is gone read as STALE, with the reason as their error: a report
    tells a run still going from one whose sweep was killed, before the next sweep stores it so."""
    for index in rows.index[rows["status"] == "RUNNING"]:
        row = rows.loc[index]
        if not pd.isna(row["cluster_job"]):  # its job may still run: the next sweep on its cluster adopts it
            continue
        holder = owner_of(row)
        if not holds(holder, None if pd.isna(row["heartbeat_at"]) else row["heartbeat_at"]):
            rows.loc[index, ["status", "error"]] = ["STALE", gone_reason(holder)]
    return rows


def with_executor(rows: pd.DataFrame) -> pd.DataFrame:
    """Add `executor`: where each run executed ("local", or the cluster executor its environment
    names; runs/ray_executor.py records it with the node and job id)."""
    def executor(environment, machine: str) -> str:
        found = json.loads(environment).get("executor") if isinstance(environment, str) else None
        if isinstance(found, dict) and "name" in found:
            return found["name"]
        # A run that ended without a result has no environment: its machine names the cluster.
        return machine.split("@")[0] if "@" in machine else "local"

    rows["executor"] = [executor(environment, machine) for environment, machine in
                        zip(rows["environment"], rows["machine_id"])] if len(rows) else pd.Series(dtype=object)
    return rows


def with_parallelism(runs: pd.DataFrame) -> pd.DataFrame:
    """Add the columns parallel runs are compared by: global_batch_size (images per synchronised
    step, or in flight for hogwild), parallelism (worker processes, or threads for `single`)."""
    runs["global_batch_size"] = runs["batch_size"] * runs["workers"]
    runs["parallelism"] = runs["workers"].where(runs["strategy"] != "single", runs["threads"])
    return runs
