"""What `batchlab advise` recommends, from the stored runs of its plan (runner/advise.py).

Each (batch size, LR) pair is a group of repeats (training.aggregate), with two figures of its
own: `best_accuracy`, the highest watched accuracy any evaluation reached, and
`wall_to_target_seconds`, the train seconds to the target plus the evaluations until then (what the
study waited). The recommendation is the pair with the lowest median time to target (train
seconds: what the user's own training, evaluated less often, would take); when no pair reached
the target, the pair with the best accuracy reached, said as such. The critical batch size and
the regimes are the S(B) fit of critical_batch.py over the batch sizes at their best LR; the
gradient noise scale is the recommended pair's, at its last evaluation.
"""

from __future__ import annotations

import math

import pandas as pd

from .columns import ADVICE
from .critical_batch import MAXIMAL_ABOVE, PERFECT_BELOW, regime
from .training import aggregate, json_rows, status_text

PICK_RECOMMENDED, PICK_BEST_LR = "★ recommended", "best LR"


def stored_advice(db) -> list[tuple[dict, pd.DataFrame, dict]]:
    """(plan, rows, advice) of every advise study stored in `db`, oldest first."""
    from ..store.store import Store
    from .training import load_evaluations, load_runs

    with Store(db, readonly=True) as store:
        plans = store.advice_plans()
    if not plans:
        return []
    runs, evaluations = load_runs(db), load_evaluations(db)
    found = []
    for plan in plans:
        rows = advice_rows(plan, runs, evaluations)
        found.append((plan, rows, advice(plan, rows, not_started(plan, runs))))
    return found


def with_run_figures(runs: pd.DataFrame, evaluations: pd.DataFrame) -> pd.DataFrame:
    """Per run: `best_accuracy` and `wall_to_target_seconds` (from its evaluations)."""
    runs = runs.copy()
    best, waited = {}, {}
    for run_id, group in evaluations.groupby("run_id"):
        best[run_id] = group["accuracy"].max()
        steps = runs.loc[runs["run_id"] == run_id, "steps_to_target"]
        if len(steps) and pd.notna(steps.iloc[0]):
            until = group[group["step"] <= steps.iloc[0]]
            waited[run_id] = until["train_seconds"].max() + until["eval_seconds"].sum()
    runs["best_accuracy"] = runs["run_id"].map(best)
    runs["wall_to_target_seconds"] = runs["run_id"].map(waited)
    return runs


def plan_runs(plan: dict, runs: pd.DataFrame, evaluations: pd.DataFrame) -> pd.DataFrame:
    """The plan's runs on its machine, each with its run figures."""
    mine = runs[runs["run_key"].isin(plan["run_keys"]) & (runs["machine_id"] == plan["machine_id"])]
    return with_run_figures(mine, evaluations[evaluations["run_id"].isin(mine["run_id"])])


def not_started(plan: dict, runs: pd.DataFrame) -> int:
    """The plan's runs that never started (the budget ran out, or the study was interrupted)."""
    mine = runs[runs["run_key"].isin(plan["run_keys"]) & (runs["machine_id"] == plan["machine_id"])]
    started = set(mine.loc[mine["status"] != "PENDING", "run_key"])
    return len(set(plan["run_keys"]) - started)


def advice_rows(plan: dict, runs: pd.DataFrame, evaluations: pd.DataFrame) -> pd.DataFrame:
    """One row per (batch size, LR) of the plan that started, batch sizes ascending, with `pick`:
    ★ recommended, or "best LR" for each other batch size's best."""
    rows = aggregate(plan_runs(plan, runs[runs["status"] != "PENDING"], evaluations))
    if rows.empty:
        return rows
    rows = rows.sort_values(["batch_size", "lr"]).reset_index(drop=True)
    reached = rows["target_reached"].fillna(0) > 0
    rows["pick"] = None
    for _, group in rows.groupby("batch_size"):
        best = best_of(group, reached[group.index])
        if best is not None:
            rows.loc[best, "pick"] = PICK_BEST_LR
    overall = best_of(rows, reached)
    if overall is not None:
        rows.loc[overall, "pick"] = PICK_RECOMMENDED
    return rows


def best_of(rows: pd.DataFrame, reached: pd.Series):
    """The index of the fastest row to the target among those whose repeats reached it most often
    (a median over the repeats that reached it must not beat one over all of them), else of the
    row with the best accuracy reached."""
    if reached.any():
        share = rows.loc[reached, "target_reached"] / rows.loc[reached, "n"]
        surest = share[share == share.max()].index
        return rows.loc[surest, "time_to_target_seconds"].idxmin()
    accuracy = rows["best_accuracy"] if "best_accuracy" in rows else pd.Series(dtype=float)
    return accuracy.idxmax() if accuracy.notna().any() else None


def advice(plan: dict, rows: pd.DataFrame, unstarted: int) -> dict:
    """The recommendation as plain data (advise --format json prints it), with `why`: its reasons,
    one sentence each. `rows`: advice_rows; `unstarted`: not_started."""
    target = plan["target_accuracy"]
    searched = plan["max_batch"]
    done = rows[rows["n"] > 0] if len(rows) else rows
    picked = rows[rows["pick"] == PICK_RECOMMENDED] if len(rows) else rows
    b_noise = rows["b_noise"].dropna() if "b_noise" in rows else pd.Series(dtype=float)
    critical = float(b_noise.iloc[0]) if len(b_noise) else None
    result = {
        "target_accuracy": target,
        "recommended": None,
        "reached_target": bool(len(picked) and picked.iloc[0]["target_reached"] > 0),
        "critical_batch_size": critical,
        "gradient_noise_scale": None,
        "max_batch_size": searched["max_batch"],
        "usable_max_batch_size": searched["usable_batch"],
        # below memory's limit, the search stopped at its bound: the batch that fits is at least this
        "max_batch_is_lower_bound": searched["limited_by"] != "memory",
        "max_batch_limited_by": "memory" if searched["limited_by"] == "memory" else plan.get("search_bound"),
        "notes": plan.get("notes", []),
        "regime_by_batch": {str(int(b)): (regime(b, critical) if critical else None)
                            for b in sorted(plan["batches"])},
        "plan": {key: plan[key] for key in ("batches", "lrs", "epochs", "repeats", "budget_minutes")},
        "runs_done": int(done["n"].sum()) if len(done) else 0,
        "runs_not_started": unstarted,
        "rows": json_rows(rows[[f for column in ADVICE for f in column.fields if f in rows]]) if len(rows) else [],
    }
    if len(picked):
        best = picked.iloc[0]
        result["recommended"] = {
            "batch_size": int(best["batch_size"]), "lr": float(best["lr"]),
            "effective_lr": none_if_nan(best.get("effective_lr")),
            "time_to_target_seconds": none_if_nan(best["time_to_target_seconds"]),
            "time_to_target_seconds_min": none_if_nan(best.get("time_to_target_seconds_min")),
            "time_to_target_seconds_max": none_if_nan(best.get("time_to_target_seconds_max")),
            "wall_to_target_seconds": none_if_nan(best.get("wall_to_target_seconds")),
            "steps_to_target": none_if_nan(best.get("steps_to_target")),
            "best_accuracy": none_if_nan(best.get("best_accuracy")),
        }
        result["gradient_noise_scale"] = none_if_nan(best.get("gradient_noise_scale"))
    result["why"] = reasons(plan, rows, result)
    return result


def none_if_nan(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def reasons(plan: dict, rows: pd.DataFrame, result: dict) -> list[str]:
    """The recommendation and what it rests on, one sentence each."""
    target, lines = plan["target_accuracy"], []
    best = result["recommended"]
    pairs = int((rows["target_reached"].fillna(0) > 0).sum()) if len(rows) else 0
    if best is None and len(rows):
        lines.append(f"no run gave a result ({status_text(rows['status'])}): nothing to recommend; see the runs' "
                     "errors (batchlab report --runs); a lower --lr helps runs that diverged")
    elif best is None:
        lines.append("no run finished: nothing to recommend yet; run the same command again to resume the study")
    elif result["reached_target"]:
        spread = ""
        if best["time_to_target_seconds_min"] != best["time_to_target_seconds_max"]:
            low, high = best["time_to_target_seconds_min"], best["time_to_target_seconds_max"]
            spread = f" [{low:.1f}–{high:.1f} s over repeats]"
        lines.append(f"recommended: batch {best['batch_size']:,} at lr {best['lr']:g} (effective "
                     f"{best['effective_lr']:.3g}): reached {target:g} after {best['time_to_target_seconds']:.1f} s of "
                     f"training{spread} ({best['wall_to_target_seconds']:.1f} s with its evaluations), the fastest of "
                     f"{pairs} (batch, LR) pair(s) that reached it")
        others = rows[(rows["target_reached"].fillna(0) > 0) & (rows["pick"] != PICK_RECOMMENDED)]
        if len(others):
            second = others.loc[others["time_to_target_seconds"].idxmin()]
            lines.append(f"next fastest: batch {int(second['batch_size']):,} at lr {second['lr']:g}, "
                         f"{second['time_to_target_seconds']:.1f} s "
                         f"({second['time_to_target_seconds'] / best['time_to_target_seconds'] - 1:+.0%})")
        edge = edge_of_grid(rows, best)
        if edge:
            lines.append(edge)
    else:
        lines.append(f"no run reached {target:g} within the budget: recommended on the best accuracy reached, "
                     f"{best['best_accuracy']:.4f}, by batch {best['batch_size']:,} at lr {best['lr']:g}; give a "
                     "larger --budget-minutes (more epochs) or a lower --target-accuracy")
    critical = result["critical_batch_size"]
    if critical:
        lines.append(f"critical batch size ≈ {critical:,.0f} (steps to target S(B) = S_min (1 + B_noise / B) "
                     f"fitted over the batch sizes at their best LR): below about {critical * PERFECT_BELOW:,.0f} "
                     "doubling the batch halves the steps (perfect scaling); above about "
                     f"{critical * MAXIMAL_ABOVE:,.0f} it saves almost none (maximal data parallelism)")
    else:
        lines.append("critical batch size: not measured (fewer than 3 batch sizes reached the target, or their steps "
                     "do not follow S(B) = S_min (1 + B_noise / B))")
    if result["gradient_noise_scale"]:
        lines.append(f"gradient noise scale B_simple ≈ {result['gradient_noise_scale']:,.0f} at the recommended "
                     "run's last evaluation (McCandlish et al. 2018: an estimate of the critical batch size)")
    searched = plan["max_batch"]
    if searched["limited_by"] == "memory":
        lines.append(f"largest batch that fits: {searched['max_batch']:,} (use at most {searched['usable_batch']:,}, "
                     f"a {searched['margin']:.0%} margin)")
    else:
        lines.append(f"every batch probed fits, up to {searched['max_batch']:,} (the search stops at "
                     f"{plan.get('search_bound')}; `batchlab maxbatch` searches further)")
    lines += [f"note: {note}" for note in plan.get("notes", [])]
    if result["runs_not_started"]:
        lines.append(f"{result['runs_not_started']} planned run(s) not started: the budget ran out (or the study was "
                     "interrupted); run the same command again to run them")
    return lines


def grid_edge(rows: pd.DataFrame, batch: int, lr: float) -> str | None:
    """"lowest" or "highest" when `lr` is that end of the LRs tried at `batch` (at least 2), else None."""
    lrs = sorted(rows.loc[rows["batch_size"] == batch, "lr"].unique())
    if len(lrs) < 2 or lr not in (lrs[0], lrs[-1]):
        return None
    return "lowest" if lr == lrs[0] else "highest"


def edges(rows: pd.DataFrame) -> dict[int, tuple[float, str]]:
    """Batch size → (its best LR, "lowest" or "highest") where the best LR sits at an end of the
    grid, the recommended pair's batch size first, then by time to target."""
    picked = rows[rows["pick"].notna()] if len(rows) else rows
    picked = picked.assign(first=picked["pick"] != PICK_RECOMMENDED).sort_values(["first", "time_to_target_seconds"])
    found = {}
    for _, row in picked.iterrows():
        side = grid_edge(rows, row["batch_size"], row["lr"])
        if side:
            found[int(row["batch_size"])] = (float(row["lr"]), side)
    return found


def edge_of_grid(rows: pd.DataFrame, best: dict) -> str | None:
    side = grid_edge(rows, best["batch_size"], best["lr"])
    if side is None:
        return None
    beyond = "lower" if side == "lowest" else "higher"
    return (f"its LR is the {side} tried at batch {best['batch_size']:,}: a {beyond} one may be faster still (widen "
            "the grid with --lr)")
