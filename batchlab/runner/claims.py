"""A sweep's sign of life for the run it holds: the run's heartbeat in the store, refreshed from a
thread while the run's worker works, so that a sweep on another host can tell a long run from one
whose sweep is gone (core/owner.py). On its own host a sweep is known alive by its pid."""

from __future__ import annotations

import threading
from collections.abc import Collection
from pathlib import Path

from ..core.errors import StoreError
from ..core.owner import HEARTBEAT_SECONDS
from ..store.store import Row, Store


class Heartbeat:
    """`with Heartbeat(db, rows):` refreshes the heartbeat of every run in `rows` (a collection the
    caller may change meanwhile: runs in flight on a cluster) every HEARTBEAT_SECONDS until the
    block ends. The thread has its own connection (SQLite connections stay in their thread) and opens it
    only at the first beat, so short runs cost nothing."""

    def __init__(self, db: str | Path, rows: Collection[Row], every: float = HEARTBEAT_SECONDS):
        self.db, self.rows, self.every = db, rows, every
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="batchlab-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()

    def _beat(self) -> None:
        store = None
        try:
            while not self.stopped.wait(self.every):
                try:
                    store = store or Store(self.db)
                    for row in list(self.rows):
                        store.beat(row)
                except StoreError:
                    pass  # e.g. a full disk: a missed beat is harmless; the run's end reports the store
        finally:
            if store is not None:
                store.close()
