"""Runs whose wall seconds count different start-ups. A run in a fresh Python (off Linux, with
$BATCHLAB_FRESH_WORKERS=1, or when the run-worker server could not start) spends its first seconds
importing torch, inside its wall time; a run forked from the run-worker server (runner/worker_server.py)
starts with torch imported. Each run records which (`run_process` in its environment). Where one
report holds both kinds, it says so under its table, so that the difference is not read as the
batch size's or the machine's."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from .precision import recorded


def process_lines(training: pd.DataFrame) -> list[str]:
    """One line when the training runs include both fresh and forked run processes; else none.
    Runs without the field (trained in the caller's own process: batchlab.run, a torchrun rank)
    started no process of their own and are not counted."""
    if not len(training) or "environment" not in training:
        return []
    kinds = Counter(recorded(environment).get("run_process") for environment in training["environment"])
    if not (kinds["fresh"] and kinds["forked"]):
        return []
    return [f"wall seconds: {kinds['fresh']} run(s) started in a fresh Python, whose wall time includes importing "
            f"torch, and {kinds['forked']} were forked from a process that had imported it; compare wall seconds "
            "within one kind (run_process in each run's environment). Train seconds include neither."]
