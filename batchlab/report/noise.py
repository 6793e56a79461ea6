"""Runs whose timings are not trustworthy because the machine was busy (runner/machine_noise.py
records why, in the run's environment as `machine_noise`), as report fields and lines.

Per run: `noisy` (True/False; None for a run nobody watched: stored before this existed, outside a
sweep, or ended without a result), `noisy_reason`, and the spread of its step times
(`step_seconds_spread`, p90/p50, recorded by the training loop; not part of the flag, since it also
varies with the model and batch size). Per group of repeats: `noisy` when any of its DONE runs (the
ones its figures come from) was, `noisy_runs` how many, and their reasons.
"""

from __future__ import annotations

import json

import pandas as pd

MAX_LINES = 10  # noisy rows named under a table; more are counted, the JSON rows have them all


def is_true(value) -> bool:
    """A flag that is set: True (Python or numpy), not False, None or NaN (not watched)."""
    return value is not None and value == value and bool(value)


def run_noise(environment) -> tuple[bool | None, str | None, float | None]:
    """(noisy, reason, step-time spread) from a run's stored environment (JSON text or None)."""
    try:
        found = json.loads(environment) if isinstance(environment, str) and environment else {}
    except ValueError:
        found = {}
    found = found if isinstance(found, dict) else {}
    watch = found.get("machine_noise") or {}
    noisy = watch.get("noisy")
    return (None if noisy is None else bool(noisy)), watch.get("reason"), found.get("step_seconds_spread")


def with_noise(runs: pd.DataFrame) -> pd.DataFrame:
    """Add `noisy`, `noisy_reason` and `step_seconds_spread` to one-row-per-run `runs`."""
    found = [run_noise(environment) for environment in runs.get("environment", pd.Series([None] * len(runs)))]
    runs["noisy"] = pd.Series([noisy for noisy, _, _ in found], index=runs.index, dtype=object)
    runs["noisy_reason"] = pd.Series([reason for _, reason, _ in found], index=runs.index, dtype=object)
    runs["step_seconds_spread"] = pd.Series([spread for _, _, spread in found], index=runs.index, dtype=float)
    return runs


def group_noise(done: pd.DataFrame) -> dict:
    """A group's noise from its DONE runs: None when none of them was watched (nothing for runs
    without the fields: frames not from load_runs)."""
    if "noisy" not in done:
        return {}
    if not done["noisy"].notna().any():
        return {"noisy": None, "noisy_runs": None, "noisy_reason": None}
    flagged = done[done["noisy"].map(is_true)]
    reasons = list(dict.fromkeys(flagged["noisy_reason"].dropna()))
    return {"noisy": bool(len(flagged)), "noisy_runs": len(flagged), "noisy_reason": "; ".join(reasons) or None}


def flagged(rows: pd.DataFrame) -> pd.DataFrame:
    if "noisy" not in rows:
        return rows.iloc[0:0]
    return rows[rows["noisy"].map(is_true)]


def label(row) -> str:
    """What a row is, in a few words: model, dataset, device, strategy, batch size (and the run)."""
    parts = [str(row.get(key)) for key in ("model", "dataset", "device") if row.get(key) is not None]
    if row.get("strategy") not in (None, "single"):
        parts.append(f"{row.get('strategy')} x{row.get('workers')}")
    parts.append(f"batch {int(row['batch_size']):,}")
    if "run_id" in row and row.get("run_id") is not None:
        return f"run {row['run_id']} ({', '.join(parts)}, repeat {row.get('repeat')})"
    return ", ".join(parts) + (f" ({int(row['noisy_runs'])} of {int(row['n'])} runs)" if row.get("n") else "")


NOISE_HEADING = ("noisy: the machine was busy during these runs, so their timings are not trustworthy "
                 "(run them again on a quiet machine):")


def noise_items(rows: pd.DataFrame) -> list[str]:
    """One text per noisy row (runs or groups): what it is and why; none when no row is noisy."""
    noisy = flagged(rows)
    items = [f"{label(row)}: {row.get('noisy_reason') or 'no reason recorded'}"
             for _, row in noisy.head(MAX_LINES).iterrows()]
    if len(noisy) > MAX_LINES:
        items.append(f"… and {len(noisy) - MAX_LINES} more (report --runs --format json: noisy, noisy_reason)")
    return items


def noise_lines(rows: pd.DataFrame) -> list[str]:
    """The lines under a terminal table: the heading and one indented line per noisy row."""
    items = noise_items(rows)
    return [NOISE_HEADING, *(f"  {item}" for item in items)] if items else []
