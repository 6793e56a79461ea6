"""Liveness: processes that train say so, so that the process watching them can tell a long run
from a hung one.

`$BATCHLAB_WORKER_TIMEOUT` (seconds, default 1800) is how long a watched process may go without
any sign of progress before it counts as hung (or stopped) and is ended: it measures silence, not
run length, so a healthy run may last any time.

Who watches whom:
- the sweep watches its run worker (`python -m batchlab.runner.worker`), which reports progress as
  `{"event": "progress"}` lines on stdout (sweep._supervise);
- a run's coordinator watches its hogwild workers / DDP ranks, which report progress on the team's
  results queue (train/team.Team.collect); while it watches, the coordinator itself beats, so the
  sweep hears that the run is alive and the coordinator names the silent worker.

The hot loop calls `beat()` once per training step (train/engine: StepLoop, evaluate, warm_up). It must
cost nothing next to a ~1 ms step: a global read and, with a sender installed, one clock read and a
comparison; at most one message per `interval_seconds()` actually goes out. With no sender
installed (a plain `batchlab.run()` in the user's process, a torchrun rank) it does nothing.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

ENV = "BATCHLAB_WORKER_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 1800.0
MAX_INTERVAL_SECONDS = 1.0  # at most one progress message per second (per timeout/4 if smaller)

_sender: Callable[[], None] | None = None
_interval = MAX_INTERVAL_SECONDS
_due = 0.0  # monotonic time from which the next beat() sends


def timeout_seconds() -> float:
    """Seconds of silence after which a watched process counts as hung, read from the
    environment at each call (the one place it is read)."""
    from .errors import SpecError

    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise SpecError(f"${ENV} must be a number of seconds, got {raw!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise SpecError(f"${ENV} must be a positive number of seconds, got {raw!r}")
    return value


def interval_seconds(timeout: float | None = None) -> float:
    """Least time between two progress messages: often enough to be heard well within the timeout."""
    return min(MAX_INTERVAL_SECONDS, (timeout if timeout is not None else timeout_seconds()) / 4)


def install(sender: Callable[[], None]) -> None:
    """Make `sender` this process's way of reporting progress; the next beat() sends at once."""
    global _sender, _interval, _due
    _interval = interval_seconds()
    _due = 0.0
    _sender = sender


def uninstall() -> None:
    global _sender
    _sender = None


def beat() -> None:
    """Progress: send a message if none went out in the last interval (cheap enough per step)."""
    global _due
    if _sender is None:
        return
    now = time.monotonic()
    if now >= _due:
        _due = now + _interval
        _sender()
