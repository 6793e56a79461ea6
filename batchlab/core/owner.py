"""Who holds a run: the sweep process that marked it RUNNING, and whether that process still lives.

A run's row in the store names its owner (host, pid, the process's start time) and carries a
heartbeat the owner refreshes while the run goes on. Another sweep asks `holds()` before it
touches the run:

- same host: the owner lives if a process with that pid exists *and* started when the owner did
  (pids are reused; the start time tells a new process from the owner);
- another host (a store on a shared disk): its processes cannot be seen from here, so the owner
  lives while its heartbeat is fresher than STALE_AFTER_SECONDS.

A RUNNING run whose owner is gone is STALE (like Optuna's fail_stale_trials): its sweep was
killed (kill -9, a lost node) before it could store how the run ended.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil

HEARTBEAT_SECONDS = 30.0  # how often an owner refreshes its runs' heartbeat
# Several missed heartbeats, so that a busy disk or a paused laptop does not make a live run stale.
STALE_AFTER_SECONDS = 10 * HEARTBEAT_SECONDS
START_TIME_TOLERANCE = 0.5  # start times compared (clock ticks on Linux: equal; seconds elsewhere)


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: float  # when the process started: clock ticks since boot on Linux, else epoch seconds

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def process_start_time(pid: int) -> float | None:
    """When process `pid` started, as a number that never changes for that process: on Linux its
    start in clock ticks since boot (/proc/PID/stat, field 22), which a step of the wall clock
    (NTP, a resumed VM) leaves alone, where psutil's create_time() moves with it. None: no such
    process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return float(stat[stat.rindex(")") + 2:].split()[19])  # fields after "(command)": 3 is the first
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):  # no /proc (macOS, Windows)
        try:
            return round(psutil.Process(pid).create_time(), 2)
        except psutil.NoSuchProcess:
            return None
        except psutil.AccessDenied:  # it exists; its start cannot be read
            return float("nan")


def this_process() -> Owner:
    pid = os.getpid()
    return Owner(socket.gethostname(), pid, process_start_time(pid) or 0.0)


def holds(owner: Owner | None, heartbeat_at: str | None, now: datetime | None = None) -> bool:
    """Whether `owner` (None: recorded before owners were) still holds its RUNNING run."""
    if owner is None:
        return False  # a batchlab from before owners were stored: its sweep cannot be told alive
    if owner.host == socket.gethostname():
        started = process_start_time(owner.pid)
        if started is not None and math.isnan(started):
            return True  # a process with that pid exists, and may be the owner
        return started is not None and abs(started - owner.started) < START_TIME_TOLERANCE
    if heartbeat_at is None:
        return False
    age = ((now or datetime.now(timezone.utc)) - datetime.fromisoformat(heartbeat_at)).total_seconds()
    return age < STALE_AFTER_SECONDS


def gone_reason(owner: Owner | None) -> str:
    """Why a run is STALE, in one line."""
    if owner is None:
        return "its sweep (from an older batchlab) is no longer known to run"
    if owner.host == socket.gethostname():
        return f"its sweep ({owner.describe()}) ended without storing how the run ended (killed?)"
    return (f"its sweep ({owner.describe()}) sent no heartbeat for over {STALE_AFTER_SECONDS / 60:.0f} min "
            "(killed, or its node lost?)")
