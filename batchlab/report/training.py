"""Training runs from the store, grouped over repeats, with median and min–max per figure (how
they are shown: columns.py).

A group is every run that differs only in seed and repeat. Figures are computed over the group's
DONE runs (n); the group's status column says how its runs ended, so OOM or diverged batch sizes
stay visible instead of silently dropping out.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Callable

import pandas as pd

from ..spec.fields import group_keys
from ..spec.run import RunSpec
from ..store.store import Store, with_parallelism
from .critical_batch import with_critical_batch
from .noise import group_noise, with_noise

# Runs that differ only in seed and repeat form one group: the spec fields marked as group keys
# (spec/fields.py; micro_batch as the derived `slicing`), per machine.
GROUP_KEYS = group_keys(RunSpec) + ["machine"]
# Figures summarised over repeats: median, min and max of the per-run values.
SPREAD_FIGURES = ["epoch_train_seconds", "images_per_second", "test_accuracy", "time_to_target_seconds"]
# best_accuracy and wall_to_target_seconds: only where computed (advice.py).
MEDIAN_FIGURES = ["best_accuracy", "wall_to_target_seconds", "test_loss", "val_accuracy", "wall_seconds", "warmup_seconds",
                  "load_seconds", "peak_memory_bytes", "data_wait_seconds", "data_wait_share", "effective_lr",
                  "steps_to_target", "images_to_target", "gradient_noise_scale", "step_seconds_spread"]


def slicing(micro_batch: int, batch_size: int) -> str:
    """How a run split its batches: "auto" (the automatic choice, whose size the run's environment
    records), "whole", or the requested images per slice. Any micro-batch of at least the batch
    size is "whole", so such runs group together across batch sizes."""
    if micro_batch == 0:
        return "auto"
    return "whole" if micro_batch >= batch_size else str(micro_batch)


def with_slicing(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the `slicing` column (once: frames built from runs may carry it already)."""
    if "slicing" not in frame:
        frame["slicing"] = [slicing(int(micro), int(batch)) for micro, batch in zip(frame["micro_batch"], frame["batch_size"])]
    return frame


def read_store(db: str | Path, read: Callable[[Store], pd.DataFrame]) -> pd.DataFrame:
    """`read(store)` on an existing store, plus a readable `machine` column (host name) and
    `slicing`."""
    if not Path(db).exists():
        raise FileNotFoundError(f"no results store at {db}; run `batchlab sweep`, `train` or `infer` first")
    with Store(db, readonly=True) as store:
        frame = with_slicing(read(store))
        hosts = {mid: info.get("hostname", mid) for mid, info in store.machines().items()}
    frame["machine"] = frame["machine_id"].map(hosts).fillna(frame["machine_id"])
    return frame


def load_runs(db: str | Path) -> pd.DataFrame:
    """All training runs of a store, one row per run, with whether the machine was busy (noise.py)."""
    return with_noise(read_store(db, Store.runs_frame))


def per_run_records(db: str | Path, records: Callable[[Store], pd.DataFrame]) -> pd.DataFrame:
    """Records of the DONE training runs (`records(store)`: epochs, evaluations), each with its
    run's group keys."""
    def read(store: Store) -> pd.DataFrame:
        runs = with_slicing(store.runs_frame())
        keys = runs[runs["status"] == "DONE"][["run_id", "machine_id"] + [k for k in GROUP_KEYS if k != "machine"]]
        return records(store).merge(keys, on="run_id")

    return read_store(db, read)


def load_epochs(db: str | Path) -> pd.DataFrame:
    """Per-epoch records of the DONE training runs, each with its run's group keys."""
    return per_run_records(db, Store.epochs_frame)


def load_evaluations(db: str | Path) -> pd.DataFrame:
    """Every evaluation of the DONE training runs (evaluation.py), each with its run's group keys."""
    return per_run_records(db, Store.evaluations_frame)


def load_machines(db: str | Path) -> dict[str, dict]:
    with Store(db, readonly=True) as store:
        return store.machines()


def merged(dbs: list[Path], load: Callable[[Path], pd.DataFrame]) -> pd.DataFrame:
    """One frame from several stores (e.g. a desktop's and an HPC node's): rows keep their
    `machine`, so the same configuration on two machines stays two groups."""
    frames = [load(db).assign(store=str(db)) for db in dbs]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def status_text(statuses: pd.Series) -> str:
    counts = statuses.value_counts()
    if len(counts) == 1:
        return str(counts.index[0])
    return ", ".join(f"{status} {count}" for status, count in counts.items())


def summarize_group(group: pd.DataFrame) -> dict:
    done = group[group["status"] == "DONE"]
    row = {"n": len(done), "runs": len(group), "status": status_text(group["status"])}
    for figure in SPREAD_FIGURES:
        values = done[figure].dropna()
        row[figure] = values.median() if len(values) else math.nan
        row[figure + "_min"] = values.min() if len(values) else math.nan
        row[figure + "_max"] = values.max() if len(values) else math.nan
    for figure in (figure for figure in MEDIAN_FIGURES if figure in group):
        values = done[figure].dropna()
        row[figure] = values.median() if len(values) else math.nan
    row["target_reached"] = int(done["time_to_target_seconds"].notna().sum())
    # Decided by the dataset and image size (group keys): the same in every run that loaded its data.
    shapes = group["input_shape"].dropna() if "input_shape" in group else pd.Series(dtype=object)
    row["input_shape"] = shapes.iloc[0] if len(shapes) else None
    errors = group["error"].dropna()
    row["error"] = errors.iloc[-1] if len(errors) else None
    return row | group_noise(done)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per group of repeats, sorted by the group keys, with speedup against 1 worker and,
    where steps to target allow, the critical batch size and regime (critical_batch.py)."""
    if runs.empty:
        return pd.DataFrame(columns=GROUP_KEYS + ["n", "status"])
    rows = []
    for keys, group in runs.groupby(GROUP_KEYS, dropna=False, sort=True):
        rows.append({**dict(zip(GROUP_KEYS, keys)), **summarize_group(group)})
    return with_critical_batch(with_speedup(pd.DataFrame(rows)))


# A row's baseline is the row at parallelism 1 that differs only in these keys.
SCALING_KEYS = ("workers", "threads", "batch_size")


def with_speedup(rows: pd.DataFrame) -> pd.DataFrame:
    """speedup = images/s ÷ images/s of the same configuration at parallelism 1 (1 worker, or
    1 thread for `single`); efficiency = speedup ÷ parallelism. The baseline has the same batch
    size if such a run exists, else the same batch size per unit of parallelism (the
    thread-scaling study grows the minibatch with the threads)."""
    rows = with_parallelism(rows)
    per_unit = rows["batch_size"] / rows["parallelism"].where(rows["strategy"] == "single", 1)
    config = [k for k in GROUP_KEYS if k not in SCALING_KEYS]
    config_id = rows[config].astype(str).agg("|".join, axis=1)
    speedups, baselines = [], []
    for index, row in rows.iterrows():
        ones = rows[(config_id == config_id[index]) & (rows["parallelism"] == 1)]
        base = ones[ones["batch_size"] == row["batch_size"]]
        if base.empty:
            base = ones[per_unit[ones.index] == per_unit[index]]
        speedups.append(row["images_per_second"] / base["images_per_second"].iloc[0] if len(base) else math.nan)
        baselines.append(base["batch_size"].iloc[0] if len(base) else math.nan)
    rows["speedup"] = speedups
    rows["baseline_batch_size"] = baselines  # one scaling curve per configuration and baseline
    rows["efficiency"] = rows["speedup"] / rows["parallelism"]
    return rows


def json_rows(rows: pd.DataFrame) -> list[dict]:
    """Rows as plain JSON-able dicts (NaN → None, numpy scalars → Python)."""
    records = rows.astype(object).where(rows.notna(), None).to_dict(orient="records")
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()} for record in records]


def run_line(spec, status: str, result=None, error: str | None = None) -> str:
    """One line for one finished run, as `batchlab train` and the sweep print it."""
    head = f"{status:<8} {spec.label()}"
    if result is None or not result.epochs:
        return f"{head}: {error or 'no epochs completed'}"
    last = result.epochs[-1]
    seconds = statistics.median(e.train_seconds for e in result.epochs)
    waits = [e.data_wait_seconds for e in result.epochs if e.data_wait_seconds is not None]
    wait = f" ({sum(waits) / result.train_seconds:.0%} waiting for data)" if waits else ""
    text = (f"{head}: {len(result.epochs)} epoch(s), {seconds:.2f} s/epoch train{wait}, "
            f"{result.images_processed / result.train_seconds:,.0f} img/s, test acc {last.test_accuracy:.4f}, "
            f"loss {last.test_loss:.4f}, wall {result.wall_seconds:.1f} s")
    if result.time_to_target_seconds is not None:
        text += f", target reached after {result.time_to_target_seconds:.1f} s"
    return text + (f" ({error})" if error else "")


def infer_line(spec, status: str, result=None, error: str | None = None) -> str:
    """One line for one inference measurement."""
    from ..core.stats import images_per_second, percentiles

    head = f"{status:<8} {spec.label()}"
    if result is None:
        return f"{head}: {error or 'no result'}"
    latency = percentiles(result.compute_seconds)
    text = (f"{head}: {images_per_second(spec.batch_size, result.compute_seconds):,.0f} img/s compute only, "
            f"p50 {latency['p50'] * 1000:.3g} ms (n={len(result.compute_seconds)}), "
            f"{images_per_second(spec.batch_size, result.overhead_seconds):,.0f} img/s with overheads, "
            f"first call {result.first_call_seconds * 1000:.3g} ms")
    return text + (f", accuracy {result.accuracy:.4f}" if result.accuracy is not None else "")


LINES = {"train": run_line, "infer": infer_line}  # run kind (spec/kinds.py) → its one-line summary


def outcome_line(spec, status: str, result=None, error: str | None = None) -> str:
    return LINES[spec.KIND](spec, status, result, error)
