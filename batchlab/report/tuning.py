"""The tuned view: conclusions about batch size hold only once the learning rate is tuned for each
batch size (Shallue et al. 2018). When a sweep tried several LRs for a configuration, this picks
the LR with the best validation result for each configuration (every group key but the LR: batch
size, model, device, ...), as their protocol does, and marks a best LR at the lowest or highest LR
tried: the best may lie beyond it, so the grid should be widened.

Best: the highest median validation accuracy over the group's DONE repeats (ties: the fewer steps
to target, then the lower test loss); for runs that stopped at their target (--stop-at-target),
whose final accuracies all sit near it, the fewest steps to target. Where the runs held no
validation set out, the test accuracy stands in, and the row says so (`tuned_on`): choosing on the
test set flatters the result. Groups without a DONE run (all diverged, say) count as tried, never
as best.
"""

from __future__ import annotations

import pandas as pd

from .training import GROUP_KEYS

CONFIGURATION = [key for key in GROUP_KEYS if key != "lr"]  # what an LR is tuned for


def lr_text(lr: float) -> str:
    return f"{lr:g}"


def tuned(rows: pd.DataFrame) -> pd.DataFrame:
    """From grouped rows (training.aggregate): one row per configuration that tried more than one LR,
    the best LR's, with `lrs_tried`, `tuned_on` ("validation" or "test") and `lr_at_edge` ("lowest" or
    "highest" when the best LR is an end of the grid, else None). Empty if no configuration tried
    several LRs."""
    if rows.empty or "lr" not in rows:
        return rows.iloc[0:0]
    best_rows = []
    for _, group in rows.groupby(CONFIGURATION, dropna=False, sort=True):
        lrs = sorted(group["lr"].dropna().unique())
        if len(lrs) < 2:
            continue
        on_validation = group["val_accuracy"].notna().any()
        score = "val_accuracy" if on_validation else "test_accuracy"
        if group[score].notna().sum() == 0:
            continue  # nothing finished: no best to name
        # Ties (equal accuracy) go to the fewer steps to target, then the lower test loss. Runs that
        # stopped at their target all end near it: their accuracies say nothing, their steps do.
        stopped = bool(group.get("stop_at_target", pd.Series(dtype=bool)).fillna(False).astype(bool).any())
        order = ["steps_to_target", score] if stopped else [score, "steps_to_target"]
        order = [key for key in order + ["test_loss"] if key in group]
        ascending = [key != score for key in order]
        ranked = group[group[score].notna()].sort_values(order, ascending=ascending, na_position="last",
                                                         kind="stable")
        best = ranked.iloc[0].copy()
        best["lrs_tried"] = ", ".join(lr_text(lr) for lr in lrs)
        best["tuned_on"] = ("steps to target" if stopped else "validation" if on_validation else "test")
        best["lr_at_edge"] = ("lowest" if best["lr"] == lrs[0] else "highest" if best["lr"] == lrs[-1] else None)
        best_rows.append(best)
    return pd.DataFrame(best_rows).reset_index(drop=True) if best_rows else rows.iloc[0:0]
