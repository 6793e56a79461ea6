"""What each report table shows, as data: one list of Columns per table (TRAINING: runs grouped
over repeats; INFERENCE: inference measurements). The terminal (terminal.py), the HTML page
(html.py) and the CSV/JSON rows (machine_rows) all render these lists, so every format has the
same columns in the same order, and the human formats the same text per cell.

A column names the row field holding its value (`key`, the name CSV and JSON carry it under, with
the further raw fields its cell is made of, `fields`), its header (`label`), how people see the
value (`format`, `digits`, `align`), when the table has it at all (`show_if`), whether a value that
is the same in every row may be said once above the table instead (`fold`), and what goes first
when a terminal is too narrow or a page table too wide (`priority`). Computing the values
(grouping, medians, speedup) is training.py's and inference.py's job; this module only says how
they are shown.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pandas as pd

from .noise import is_true
from .training import GROUP_KEYS

MISSING = "—"


@dataclass(frozen=True)
class Column:
    key: str  # the row field; CSV and JSON carry the value under this name
    label: str  # the header in the terminal and the HTML page
    # How people see the value: text, count (1,024), number (digits decimals), spread (median
    # [min–max] from key, key_min, key_max), speedup (1.25x), percent (of a fraction), ms (seconds
    # as milliseconds, 3 significant digits), target (time to target and how many runs reached it),
    # best (a number, ★ where the row's `best` is true), significant (`digits` significant digits),
    # flag (yes/no; for a group "yes (noisy runs/n)").
    format: str = "text"
    digits: int = 0
    align: str = "left"  # left | right
    # When a terminal is too narrow, columns go highest priority first (on a page too narrow, to a
    # second table); 0: essential, kept (wrapped) while any other column can go.
    priority: int = 0
    # When the table has the column: always; varies (the value differs between rows); measured (some
    # row has a value); scaling (some row ran with parallelism > 1 and has a speedup); target (some
    # row had a target accuracy); scaled (some row scaled its learning rate); flagged (some row's
    # value is true).
    show_if: str = "always"
    fold: bool = False  # the same in every row: may be said once above the table instead
    setting: bool = False  # a configuration setting that tells rows apart (repeated when a table is split)
    split: bool = False  # a setting a too-narrow terminal may show one table per value of, instead of a column
    extra: tuple[str, ...] = ()  # further raw fields the cell shows (besides key and a spread's min/max)

    @property
    def fields(self) -> tuple[str, ...]:
        """The raw row fields this column shows: what CSV and JSON carry for it."""
        spread = (self.key + "_min", self.key + "_max") if self.format == "spread" else ()
        return (self.key, *spread, *self.extra)


def setting(key: str, label: str | None = None, align: str = "left", show_if: str = "varies",
            fmt: str = "text", split: bool = True) -> Column:
    """A column for a configuration setting (a group key): kept while figures can go, foldable."""
    return Column(key, label or key.replace("_", " "), fmt, align=align, show_if=show_if, fold=True, setting=True,
                  split=split)


# How a setting is shown when it is a column; a group key not listed here is shown as text when it varies.
SETTINGS = {
    "dataset": setting("dataset", show_if="always"),
    "model": setting("model", show_if="always"),
    "device": setting("device", show_if="always"),
    "workers": setting("workers", align="right"),
    "threads": setting("threads", align="right"),
    "lr": setting("lr", align="right"),
    "val_split": setting("val_split", align="right"),
    "limit_train": setting("limit_train", align="right", fmt="count"),
    "target_accuracy": setting("target_accuracy", "target acc", align="right"),
    "image_size": setting("image_size", "image size", align="right"),
    "batch_size": setting("batch_size", "batch size", align="right", show_if="always", fmt="count", split=False),
    "epochs": setting("epochs", align="right", show_if="always"),
}
LEAD, TAIL = ("dataset", "model", "device"), ("batch_size", "epochs")  # the settings every table starts/ends with


def spread(key: str, label: str, digits: int, priority: int) -> Column:
    return Column(key, label, "spread", digits, "right", priority)


# The images' "CxHxW": decided by dataset and image size, shown beside them (and in JSON/CSV rows).
# Optional in a narrow terminal (priority 5): the dataset column names the data already.
INPUT_SHAPE = dataclasses.replace(setting("input_shape", "shape", show_if="always"), priority=5)

# The LR a run trained at after --lr-scaling (before warm-up and schedule): shown when some row scaled.
EFFECTIVE_LR = Column("effective_lr", "effective lr", "significant", 3, "right", priority=5, show_if="scaled")
# Of the train seconds, the share spent waiting for batches (data/batches.py): the cost of the input path.
DATA_WAIT = Column("data_wait_share", "data wait", "percent", 0, "right", priority=6, show_if="measured",
                   extra=("data_wait_seconds",))

# The machine was busy during the run (runner/machine_noise.py; report/noise.py): shown only when a
# row is, and then kept nearly to the last (the lines under the table give the reasons).
NOISY = Column("noisy", "noisy", "flag", priority=1, show_if="flagged", extra=("noisy_runs", "noisy_reason"))

TRAINING = [
    *(SETTINGS.get(key) or setting(key) for key in ("dataset",)),
    INPUT_SHAPE,
    *(SETTINGS.get(key) or setting(key) for key in
      (*LEAD[1:], *(k for k in GROUP_KEYS if k not in LEAD + TAIL), *TAIL)),
    EFFECTIVE_LR,
    Column("n", "n", "count", align="right", priority=5, fold=True),
    Column("status", "status", fold=True),
    NOISY,
    spread("epoch_train_seconds", "s / epoch", 2, priority=7),
    spread("images_per_second", "images / s", 0, priority=0),
    DATA_WAIT,
    Column("speedup", "speedup", "speedup", 2, "right", priority=3, show_if="scaling", extra=("baseline_batch_size",)),
    Column("efficiency", "efficiency", "percent", 0, "right", priority=8, show_if="scaling"),
    Column("val_accuracy", "val acc", "number", 4, "right", priority=6, show_if="measured"),
    spread("test_accuracy", "test acc", 4, priority=0),
    Column("test_loss", "test loss", "number", 4, "right", priority=9),
    Column("time_to_target_seconds", "time to target s", "target", 1, "right", priority=4, show_if="target",
           extra=("target_reached",)),
    # median over the repeats that reached the target, with how many did (as time to target)
    Column("steps_to_target", "steps to target", "target", 0, "right", priority=5, show_if="measured",
           extra=("images_to_target", "target_reached")),
    # train/gns.py: the gradient noise scale B_simple at the run's last evaluation (--gns)
    Column("gradient_noise_scale", "B_simple", "significant", 3, "right", priority=5, show_if="measured"),
    # critical_batch.py: this batch size against the configuration's fitted critical batch size
    Column("regime", "regime", priority=4, show_if="measured", extra=("b_noise", "s_min", "fitted_steps")),
]
TRAINING_TITLE = "batchlab results"
TRAINING_CAPTION = ("median [min–max] over n DONE repeats; seconds are train seconds (steps only, device "
                    "synchronised), data wait their share spent waiting for batches; accuracy after the last epoch; "
                    "speedup in images/s against parallelism 1 (workers, or threads for single); time to target: "
                    "train seconds (runs that reached it / n); regime: the batch size against the critical batch size "
                    "fitted to the steps to target (lines below)")

# The tuned view (tuning.py): the TRAINING columns of each configuration's best LR, the LR always
# shown (it is what was chosen), then the grid it was chosen from and whether it sits at its edge.
TUNED = [
    *(dataclasses.replace(column, show_if="always") if column.key == "lr" else column for column in TRAINING),
    Column("lrs_tried", "LRs tried", priority=4, fold=True),
    Column("tuned_on", "tuned on", priority=6, fold=True),
    Column("lr_at_edge", "best at grid edge", priority=2, show_if="measured"),
]
TUNED_TITLE = "tuned: the best learning rate of each configuration"
TUNED_CAPTION = ("per configuration (batch size, model, ...), the LR with the best median validation accuracy among "
                 "the LRs tried (Shallue et al. 2018), or the fewest steps to target for runs that stopped at it; "
                 "tuned on test: no validation split, an optimistic choice; best at grid edge: the lowest or highest "
                 "LR tried was best, so a better one may lie beyond: widen the grid")

# `batchlab advise` (advice.py): one row per (batch size, LR) of its study.
ADVICE = [
    SETTINGS["batch_size"],
    dataclasses.replace(SETTINGS["lr"], show_if="always"),
    EFFECTIVE_LR,
    Column("n", "n", "count", align="right", priority=5, fold=True),
    Column("status", "status", fold=True),
    Column("time_to_target_seconds", "time to target s", "target", 1, "right", show_if="target",
           extra=("target_reached", "time_to_target_seconds_min", "time_to_target_seconds_max")),
    Column("wall_to_target_seconds", "with evaluation s", "number", 1, "right", priority=3, show_if="measured"),
    Column("steps_to_target", "steps to target", "count", 0, "right", priority=4, show_if="measured",
           extra=("images_to_target",)),
    Column("best_accuracy", "best acc", "number", 4, "right", priority=2, show_if="measured"),
    Column("images_per_second", "images / s", "number", 0, "right", priority=5),
    Column("gradient_noise_scale", "B_simple", "significant", 3, "right", priority=5, show_if="measured"),
    Column("regime", "regime", priority=3, show_if="measured", extra=("b_noise",)),
    Column("pick", "pick", show_if="measured"),
]
ADVICE_CAPTION = ("one row per (batch size, LR) the study ran, median over n repeats; time to target: train seconds "
                  "until the watched (validation) accuracy first reached the target (pairs that reached it / n); with "
                  "evaluation: plus the evaluations until then; best acc: the highest accuracy any evaluation saw; "
                  "regime: against the critical batch size fitted to the steps to target")

# `report --runs`: one row per run, the settings as in TRAINING, then the run's own figures.
RUNS = [
    *(column for column in TRAINING[:TRAINING.index(SETTINGS["epochs"]) + 1]),
    EFFECTIVE_LR,
    Column("repeat", "repeat", "count", align="right", priority=5),
    Column("status", "status", fold=True),
    dataclasses.replace(NOISY, extra=("noisy_reason",)),
    Column("epochs_done", "epochs done", "count", align="right", priority=6, fold=True),
    Column("epoch_train_seconds", "s / epoch", "number", 2, "right", priority=7),
    Column("images_per_second", "images / s", "number", 0, "right", priority=0),
    DATA_WAIT,
    Column("val_accuracy", "val acc", "number", 4, "right", priority=6, show_if="measured"),
    Column("test_accuracy", "test acc", "number", 4, "right", priority=0),
    Column("test_loss", "test loss", "number", 4, "right", priority=9),
    Column("time_to_target_seconds", "time to target s", "number", 1, "right", priority=4, show_if="target"),
    Column("steps_to_target", "steps to target", "count", 0, "right", priority=5, show_if="measured",
           extra=("images_to_target",)),
    Column("gradient_noise_scale", "B_simple", "significant", 3, "right", priority=5, show_if="measured"),
    Column("run_id", "run", priority=10),
    Column("error", "error", priority=1, show_if="measured"),  # why a run failed: the last optional column to go
]
RUNS_TITLE = "batchlab runs"
RUNS_CAPTION = ("one row per run; seconds are train seconds (steps only, device synchronised), data wait their "
                "share spent waiting for batches; accuracy after the last epoch done; time to target: train seconds, — when not reached")

INFERENCE = [
    setting("dataset", show_if="always"),
    INPUT_SHAPE,
    setting("model", show_if="always"),
    setting("device", show_if="always"),
    setting("threads", align="right", show_if="always"),
    setting("precision", show_if="always"),
    setting("slicing"),
    setting("graph"),
    # What each measurement timed (report/inference.timed_pass), beside the setting that asked for it; shown
    # where the rows differ (the line below the table gives the counts), in CSV and JSON always.
    Column("timed", "timed", priority=2, show_if="varies", fold=True),
    setting("weights_source", "weights", show_if="always"),
    setting("machine"),
    setting("batch_size", "batch", align="right", show_if="always", fmt="count", split=False),
    Column("status", "status", fold=True),
    Column("repeats", "n", "count", align="right", priority=5, fold=True),
    Column("images_per_second", "images / s", "best", 0, "right", priority=0, extra=("best",)),
    Column("latency_p50", "p50 ms", "ms", 3, "right", priority=0),
    Column("latency_p90", "p90 ms", "ms", 3, "right", priority=6),
    Column("latency_p99", "p99 ms", "ms", 3, "right", priority=8),
    Column("overhead_images_per_second", "images / s w/ overheads", "number", 0, "right", priority=3),
    Column("overhead_latency_p50", "p50 ms w/ overheads", "ms", 3, "right", priority=9),
    Column("first_call_seconds", "first call ms", "ms", 3, "right", priority=7),
    Column("accuracy", "accuracy", "number", 4, "right", priority=4, show_if="measured"),
]
INFERENCE_TITLE = "inference"
INFERENCE_CAPTION = ("latency per batch in ms (p50/p90/p99 over n calls); ★ best compute-only throughput of its "
                     "configuration; with overheads = host→device copy, forward, predictions back to the host; "
                     "first call timed once, apart")


def missing(value) -> bool:
    """None or NaN: a figure that was not measured (shown as —)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value, digits: int) -> str:
    return MISSING if missing(value) else f"{value:,.{digits}f}"


def significant(value, digits: int) -> str:
    """`digits` significant digits, never in exponent notation: 0.0123, 12.3, 1,235."""
    if missing(value):
        return MISSING
    def decimals(number: float) -> int:
        return max(0, digits - 1 - math.floor(math.log10(abs(number))))

    if value == 0:
        return "0"
    value = round(value, decimals(value))  # 0.99996 → 1.00, not 1.000
    return f"{value:,.{decimals(value)}f}"


def spread_text(median, low, high, digits: int) -> str:
    if missing(median):
        return MISSING
    text = f"{median:,.{digits}f}"
    if low != high:
        text += f" [{low:,.{digits}f}–{high:,.{digits}f}]"
    return text


def text(column: Column, row) -> str:
    """How people see `column` of `row` (a Series or dict), in the terminal and on the page."""
    value = row.get(column.key)
    form, digits = column.format, column.digits
    if form == "spread":
        return spread_text(value, row.get(column.key + "_min"), row.get(column.key + "_max"), digits)
    if form == "target":
        if missing(row.get("target_accuracy")) or not row.get("target_accuracy"):
            return MISSING
        runs = row.get("n")
        return number(value, digits) + (f" ({row.get('target_reached')}/{runs})" if runs else "")
    if missing(value):
        return MISSING
    if form == "count":
        return f"{int(value):,}"
    if form == "flag":
        runs, noisy_runs = row.get("n"), row.get("noisy_runs")
        counted = f" ({int(noisy_runs)}/{int(runs)})" if value and not missing(noisy_runs) and not missing(runs) else ""
        return ("yes" if value else "no") + counted
    if form == "number":
        return number(value, digits)
    if form == "best":
        best = row.get("best")
        return number(value, digits) + (" ★" if not missing(best) and bool(best) else "")
    if form == "speedup":
        return number(value, digits) + "x"
    if form == "percent":
        return number(value * 100, digits) + "%"
    if form == "ms":
        return significant(value * 1000, digits)
    if form == "significant":
        return significant(value, digits)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def has(rows: pd.DataFrame, column: Column) -> bool:
    """Whether the table of `rows` has `column` (its show_if)."""
    rule = column.show_if
    if rule == "always":
        return True
    if column.key not in rows and rule != "scaling":
        return False
    if rule == "varies":
        return rows[column.key].astype(str).nunique() > 1
    if rule == "measured":
        return bool(rows[column.key].notna().any())
    if rule == "scaling":
        return bool("speedup" in rows and rows["speedup"].notna().any() and (rows["parallelism"] > 1).any())
    if rule == "scaled":
        return bool("lr_scaling" in rows and (rows["lr_scaling"].fillna("none") != "none").any())
    if rule == "flagged":
        return bool(rows[column.key].map(is_true).any())
    if rule == "target":
        return bool("target_accuracy" in rows and (rows["target_accuracy"].fillna(0) > 0).any())
    raise ValueError(f"unknown show_if {rule!r} of column {column.key}")


def shown(columns: list[Column], rows: pd.DataFrame) -> list[Column]:
    """The columns the table of `rows` has, in order."""
    return [column for column in columns if has(rows, column)]


def cells(columns: list[Column], rows: pd.DataFrame) -> list[list[str]]:
    """Every row's text, column by column."""
    return [[text(column, row) for column in columns] for _, row in rows.iterrows()]


def constant(column: Column, texts: list[str]) -> bool:
    """A foldable column whose text is the same in every row (and there are rows)."""
    return column.fold and len(texts) > 0 and len(set(texts)) == 1


def machine_rows(columns: list[Column], rows: pd.DataFrame) -> pd.DataFrame:
    """The rows for CSV and JSON: every column's raw fields first, in the table's order, then
    every other field the rows carry (nothing is left out of the machine formats)."""
    first = list(dict.fromkeys(f for column in columns for f in column.fields if f in rows))
    return rows[first + [name for name in rows.columns if name not in first]]
