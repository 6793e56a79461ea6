"""Steps to target against batch size, and the critical batch size it implies.

McCandlish et al. (2018) model the optimizer steps to reach a given loss or accuracy as
    S(B) = S_min (1 + B_noise / B)
for batch size B: S_min is the fewest steps any batch size can take; B_noise, where the steps are
twice S_min, is the critical batch size. Below it, doubling the batch about halves the steps
(perfect scaling, as Shallue et al. 2018 measured); far above it the steps stop falling (maximal
data parallelism); between lie diminishing returns. The model is linear in 1/B,
S = S_min + (S_min B_noise) / B, so it is fitted by least squares on the measured points
(numpy.polyfit), one configuration at a time (every group key but batch size and LR), with each
batch size at its best LR (the fewest steps to target among the LRs tried, Shallue et al.'s
protocol). Residuals are weighted by 1/S (relative errors), so the few steps of large batches
count as much as the many of small ones. At least FIT_POINTS batch sizes must reach the target; a fit whose S_min or B_noise
comes out negative is not the model's shape and is not reported.

Regimes, by B / B_noise: below 1/3 (the noise term more than 3 / 4 of the steps) "perfect scaling",
above 3 (steps within a third of S_min) "maximal data parallelism", else "diminishing returns".
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..spec.fields import group_keys
from ..spec.run import RunSpec

# The report's group keys (training.GROUP_KEYS) but batch size and LR: what one curve S(B) is for.
# Nor how often the runs were evaluated: evaluation does not change training, and advise evaluates
# each batch size at its own interval (the same share of an epoch).
CONFIGURATION = [key for key in group_keys(RunSpec) + ["machine"] if key not in ("batch_size", "lr", "eval_every")]
FIT_POINTS = 3
PERFECT_BELOW, MAXIMAL_ABOVE = 1 / 3, 3.0


def present(rows: pd.DataFrame) -> list[str]:
    """The configuration keys the rows carry (all of them, from a store)."""
    return [key for key in CONFIGURATION if key in rows]


def fit(batch_sizes: list[float], steps: list[float]) -> tuple[float, float] | None:
    """(S_min, B_noise) of S(B) = S_min (1 + B_noise / B) through the points, or None."""
    if len(batch_sizes) < FIT_POINTS:
        return None
    steps = np.asarray(steps, dtype=float)
    slope, intercept = np.polyfit(1 / np.asarray(batch_sizes, dtype=float), steps, 1, w=1 / steps)
    if intercept <= 0 or slope < 0:
        return None
    return float(intercept), float(slope / intercept)


def regime(batch_size: float, b_noise: float) -> str:
    ratio = batch_size / b_noise if b_noise > 0 else math.inf
    if ratio < PERFECT_BELOW:
        return "perfect scaling"
    return "maximal data parallelism" if ratio > MAXIMAL_ABOVE else "diminishing returns"


def update_batch(rows: pd.DataFrame) -> pd.Series:
    """The batch one update averages over, as S(B) means it: ddp's global batch (workers x batch),
    else the batch size."""
    if "strategy" not in rows or "workers" not in rows:
        return rows["batch_size"]
    return rows["batch_size"].where(rows["strategy"] != "ddp", rows["batch_size"] * rows["workers"])


def best_per_batch(group: pd.DataFrame) -> pd.DataFrame:
    """Each batch size's row with the fewest steps to target (its best LR), among those that reached it."""
    reached = group[group["steps_to_target"].notna()]
    return reached.loc[reached.groupby("batch_size")["steps_to_target"].idxmin()].sort_values("batch_size")


def with_critical_batch(rows: pd.DataFrame) -> pd.DataFrame:
    """Grouped rows (training.aggregate) plus, per configuration whose steps to target could be
    fitted: `s_min`, `b_noise` (the critical batch size), `fitted_steps` (the model at the row's batch
    size) and `regime`; NaN/None elsewhere."""
    rows = rows.copy()
    for column in ("s_min", "b_noise", "fitted_steps"):
        rows[column] = math.nan
    rows["regime"] = None
    if rows.empty or "steps_to_target" not in rows or rows["steps_to_target"].isna().all():
        return rows
    for _, group in rows.groupby(present(rows), dropna=False, sort=False):
        best = best_per_batch(group)
        found = fit(list(update_batch(best)), list(best["steps_to_target"]))
        if found is None:
            continue
        s_min, b_noise = found
        batches = update_batch(group)
        rows.loc[group.index, "s_min"] = s_min
        rows.loc[group.index, "b_noise"] = b_noise
        rows.loc[group.index, "fitted_steps"] = s_min * (1 + b_noise / batches)
        rows.loc[group.index, "regime"] = [regime(batch, b_noise) for batch in batches]
    return rows


def fit_lines(rows: pd.DataFrame) -> list[str]:
    """One sentence per fitted configuration, for under the table."""
    lines = []
    fitted = rows[rows["b_noise"].notna()] if "b_noise" in rows else rows.iloc[0:0]
    for _, group in fitted.groupby(present(fitted), dropna=False, sort=True):
        first = group.iloc[0]
        name = " ".join(str(first[key]) for key in ("model", "dataset", "device") if key in group)
        lines.append(f"steps to target ({name}): S(B) = {first['s_min']:,.0f} × (1 + {first['b_noise']:,.0f} / B) "
                     f"fitted on {len(best_per_batch(group))} batch sizes at their best LR; critical batch size "
                     f"B_noise ≈ {first['b_noise']:,.0f}")
    return lines
