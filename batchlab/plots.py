"""The figures, drawn from stored results only. Each function returns a matplotlib Figure, or None
when the store holds nothing it could show. Lines are medians over repeats; shaded bands and
error bars are the min–max spread over repeats.

1. time_vs_batch        seconds per epoch and images/s vs batch size
2. accuracy_vs_epoch    test accuracy per epoch, one line per batch size
3. accuracy_vs_batch    final accuracy vs batch size; time to target vs batch size
4. scaling              speedup and efficiency vs parallelism per strategy, with the ideal
5. inference            inference images/s vs batch size, compute only and with overheads, crossovers
6. device_speedup       one configuration against another (device, threads, precision, machine)
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from .inference_report import comparisons, config_name  # noqa: E402
from .report import GROUP_KEYS  # noqa: E402

# A training series is everything but the batch size (and repeats): one line in figures 1 and 3.
SERIES_KEYS = [k for k in GROUP_KEYS if k != "batch_size"]
# Keys that make "another device" in figure 6; the rest must match.
DEVICE_KEYS = ["device", "threads", "precision", "machine"]
MAX_PANELS = 6


def series_labels(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """A short label per row from the keys that differ between the rows' series."""
    varying = [k for k in keys if k in frame and frame[k].astype(str).nunique() > 1]
    if not varying:
        return pd.Series([str(frame.iloc[0]["model"])] * len(frame), index=frame.index)
    return frame[varying].astype(str).apply(lambda row: " ".join(f"{k}={v}" for k, v in row.items()), axis=1)


def titled(figure: Figure, title: str) -> Figure:
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def log2_batch_axis(axis) -> None:
    axis.set_xscale("log", base=2)
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))  # 1,024 not 2¹⁰
    axis.set_xlabel("batch size (log₂ scale)")
    axis.grid(True, which="major", alpha=0.3)


def time_vs_batch(rows: pd.DataFrame) -> Figure | None:
    done = rows[rows["n"] > 0]
    if done.empty:
        return None
    figure, (seconds_axis, rate_axis) = plt.subplots(1, 2, figsize=(11, 4))
    labels = series_labels(done, SERIES_KEYS)
    for label, part in done.groupby(labels, sort=True):
        part = part.sort_values("batch_size")
        for axis, name in ((seconds_axis, "epoch_train_seconds"), (rate_axis, "images_per_second")):
            spread = [part[name] - part[name + "_min"], part[name + "_max"] - part[name]]
            axis.errorbar(part["batch_size"], part[name], yerr=spread, marker="o", capsize=3, label=label)
    seconds_axis.set_ylabel("train seconds per epoch")
    rate_axis.set_ylabel("training images / s")
    for axis in (seconds_axis, rate_axis):
        log2_batch_axis(axis)
    rate_axis.legend(fontsize=8)
    return titled(figure, "Training time and throughput vs batch size (median, bars min–max over repeats)")


def accuracy_vs_epoch(epochs: pd.DataFrame) -> Figure | None:
    """epochs: per-epoch records joined with their runs' group keys (DONE runs only)."""
    if epochs.empty or epochs["epoch"].max() < 2:
        return None
    panels = list(epochs.groupby(series_labels(epochs, SERIES_KEYS), sort=True))[:MAX_PANELS]
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (title, part) in zip(axes[0], panels):
        for batch, curve in part.groupby("batch_size"):
            stats = curve.groupby("epoch")["test_accuracy"].agg(["median", "min", "max"])
            axis.plot(stats.index, stats["median"], marker="o", label=f"batch {batch}")
            axis.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("epoch")
        axis.set_ylabel("test accuracy")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    return titled(figure, "Test accuracy per epoch, one line per batch size (band: min–max over repeats)")


def accuracy_vs_batch(rows: pd.DataFrame) -> Figure | None:
    done = rows[rows["n"] > 0]
    if done.empty:
        return None
    targets = done[done["time_to_target_seconds"].notna()]
    figure, axes = plt.subplots(1, 2 if len(targets) else 1, figsize=(11 if len(targets) else 5.5, 4), squeeze=False)
    labels = series_labels(done, SERIES_KEYS)
    for label, part in done.groupby(labels, sort=True):
        part = part.sort_values("batch_size")
        spread = [part["test_accuracy"] - part["test_accuracy_min"], part["test_accuracy_max"] - part["test_accuracy"]]
        axes[0][0].errorbar(part["batch_size"], part["test_accuracy"], yerr=spread, marker="o", capsize=3,
                            label=f"{label} ({part['epochs'].iloc[0]} epochs)")
    axes[0][0].set_ylabel("test accuracy after the last epoch")
    axes[0][0].legend(fontsize=8)
    if len(targets):
        for label, part in targets.groupby(labels[targets.index], sort=True):
            part = part.sort_values("batch_size")
            axes[0][1].plot(part["batch_size"], part["time_to_target_seconds"], marker="o",
                            label=f"{label} (target {part['target_accuracy'].iloc[0]:.2f})")
        axes[0][1].set_ylabel("train seconds to target accuracy")
        axes[0][1].legend(fontsize=8)
    for axis in axes[0]:
        log2_batch_axis(axis)
    return titled(figure, "What batch size costs in accuracy")


def scaling(rows: pd.DataFrame) -> Figure | None:
    scaled = rows[rows["speedup"].notna()]
    if scaled.empty or scaled["parallelism"].max() < 2:
        return None
    figure, (speedup_axis, efficiency_axis) = plt.subplots(1, 2, figsize=(11, 4))
    keys = [k for k in SERIES_KEYS if k not in ("workers", "threads")] + ["baseline_batch_size"]
    for label, part in scaled.groupby(series_labels(scaled, keys), sort=True):
        part = part.sort_values("parallelism")
        speedup_axis.plot(part["parallelism"], part["speedup"], marker="o", label=label)
        efficiency_axis.plot(part["parallelism"], part["efficiency"] * 100, marker="o", label=label)
    top = int(scaled["parallelism"].max())
    speedup_axis.plot([1, top], [1, top], "k--", linewidth=1, label="ideal")
    efficiency_axis.axhline(100, color="k", linestyle="--", linewidth=1, label="ideal")
    speedup_axis.set_ylabel("speedup (images/s vs parallelism 1)")
    efficiency_axis.set_ylabel("parallel efficiency %")
    for axis in (speedup_axis, efficiency_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("parallelism (workers, or threads for single)")
        axis.grid(True, alpha=0.3)
    speedup_axis.legend(fontsize=8)
    return titled(figure, "Scaling with workers / threads")


def inference(measured: pd.DataFrame) -> Figure | None:
    done = measured[measured["status"] == "DONE"]
    if done.empty:
        return None
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for name, part in done.groupby(done.apply(config_name, axis=1), sort=True):
        part = part.sort_values("batch_size")
        line, = axis.plot(part["batch_size"], part["images_per_second"], marker="o", label=f"{name} compute only")
        axis.plot(part["batch_size"], part["overhead_images_per_second"], marker="s", linestyle="--",
                  color=line.get_color(), label=f"{name} with overheads")
    winners: dict[int, list[str]] = {}
    for found in comparisons(measured):
        if found["crossover"] is not None:
            winners.setdefault(found["crossover"], []).append(found["other"])
    for batch, names in winners.items():
        axis.axvline(batch, color="grey", linestyle=":", linewidth=1)
        axis.annotate(f"{', '.join(names)} win(s) from {batch:,}", (batch, 0), xycoords=("data", "axes fraction"),
                      xytext=(3, 5), textcoords="offset points", fontsize=7, rotation=90)
    log2_batch_axis(axis)
    axis.set_ylabel("inference images / s")
    axis.legend(fontsize=7)
    return titled(figure, "Inference throughput vs batch size (dotted: crossover of the faster configuration)")


def training_pairs(rows: pd.DataFrame) -> list[tuple[str, pd.Series]]:
    """(label, speedup by batch size) for training series differing only in DEVICE_KEYS: each
    against the slowest one of its kind."""
    done = rows[rows["n"] > 0]
    same = [k for k in SERIES_KEYS if k not in DEVICE_KEYS]
    pairs = []
    for _, group in done.groupby(same, dropna=False):
        names = group.apply(config_name, axis=1)
        series = {name: part.set_index("batch_size")["images_per_second"] for name, part in group.groupby(names)}
        if len(series) < 2:
            continue
        baseline = min(series, key=lambda name: series[name].max())
        for name, values in series.items():
            ratio = (values / series[baseline]).dropna()
            if name != baseline and len(ratio):
                pairs.append((f"train: {name} vs {baseline}", ratio))
    return pairs


def device_speedup(rows: pd.DataFrame, measured: pd.DataFrame) -> Figure | None:
    lines = training_pairs(rows) if len(rows) else []
    if len(measured):
        lines += [(f"infer: {f['other']} vs {f['baseline']}", pd.Series(f["speedup"])) for f in comparisons(measured)]
    if not lines:
        return None
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for label, ratio in lines:
        ratio = ratio.sort_index()
        axis.plot(ratio.index, ratio.values, marker="o", label=label)
    axis.axhline(1, color="k", linestyle="--", linewidth=1)
    log2_batch_axis(axis)
    axis.set_ylabel("speedup (images/s ratio)")
    axis.legend(fontsize=7)
    return titled(figure, "Device vs device (or machine vs machine), per batch size")


def all_figures(rows: pd.DataFrame, epochs: pd.DataFrame, measured: pd.DataFrame) -> dict[str, Figure]:
    """Every figure the results support, by file-friendly name, in reading order."""
    has_rows = len(rows) > 0
    candidates = {
        "time_vs_batch": time_vs_batch(rows) if has_rows else None,
        "accuracy_vs_epoch": accuracy_vs_epoch(epochs),
        "accuracy_vs_batch": accuracy_vs_batch(rows) if has_rows else None,
        "scaling": scaling(rows) if has_rows else None,
        "inference": inference(measured) if len(measured) else None,
        "device_speedup": device_speedup(rows, measured),
    }
    return {name: figure for name, figure in candidates.items() if figure is not None}
