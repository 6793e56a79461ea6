"""The figures, drawn from stored results only. Each function returns a matplotlib Figure, or None
when the store holds nothing it could show. Lines are medians over repeats; shaded bands and
error bars are the min–max spread over repeats.

1. time_vs_batch        seconds per epoch and images/s vs batch size
2. accuracy_vs_epoch    test accuracy per epoch, one line per batch size
3. accuracy_vs_batch    final accuracy vs batch size; time to target vs batch size
4. scaling              speedup and efficiency vs parallelism per strategy, with the ideal
5. inference            inference images/s vs batch size, compute only and with overheads, crossovers
6. device_speedup       one configuration against another (device, threads, precision, machine)
7. steps_to_target      steps to target vs batch size (best LR each) with the fit S(B) and B_noise
8. noise_scale          the gradient noise scale B_simple over training, one line per batch size (--gns)
"""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from .critical_batch import CONFIGURATION, best_per_batch, update_batch  # noqa: E402
from .inference import comparisons, config_name  # noqa: E402
from .training import GROUP_KEYS  # noqa: E402

# A training series is everything but the batch size (and repeats): one line in figures 1 and 3.
SERIES_KEYS = [k for k in GROUP_KEYS if k != "batch_size"]
# Keys that make "another device" in figure 6; the rest must match.
DEVICE_KEYS = ["device", "threads", "precision", "slicing", "machine"]
MAX_ACCURACY_PANELS = 4


def value_text(value) -> str:
    """A setting's value in a label: 16, not 16.0."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def series_labels(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """A short label per row from the keys that differ between the rows' series."""
    varying = [k for k in keys if k in frame and frame[k].astype(str).nunique() > 1]
    if not varying:
        return pd.Series([str(frame.iloc[0]["model"])] * len(frame), index=frame.index)
    return frame[varying].apply(lambda row: " ".join(f"{k}={value_text(v)}" for k, v in row.items()), axis=1)


LEGEND_FONT = 8  # points: about 12 px high in a PNG at 110 dpi
LEGEND_ROW_INCHES = 0.2
LEGEND_ROWS = 8  # entries per legend column before a second (and third) column is used


def legend_columns(labels: list[str], figure_width: float) -> int:
    """As many legend columns as needed for at most LEGEND_ROWS rows, and as fit the figure's
    width (at most 3): a long legend is not a tall strip of small print."""
    entry = 0.8 + max((len(label) for label in labels), default=0) * LEGEND_FONT * 0.55 / 72  # inches
    return max(1, min(3, int(figure_width // entry), -(-len(labels) // LEGEND_ROWS)))


def panels(count: int, labels: list[str], width: float = 5.5) -> tuple[Figure, list]:
    """A figure of `count` plots side by side with room below them for a legend of `labels`:
    labels can be long when stores are merged, so the legend never covers the data."""
    figure_width = max(width * count, 11)  # wide enough for long labels
    columns = legend_columns(labels, figure_width)
    legend_height = 0.3 + LEGEND_ROW_INCHES * -(-len(labels) // columns)
    figure = plt.figure(figsize=(figure_width, 4 + legend_height))
    grid = figure.add_gridspec(2, count, height_ratios=[4, legend_height])
    axes = [figure.add_subplot(grid[0, i]) for i in range(count)]
    legend_axis = figure.add_subplot(grid[1, :])
    legend_axis.set_axis_off()
    figure.legend_axis = legend_axis
    figure.legend_columns = columns
    return figure, axes


def titled(figure: Figure, title: str) -> Figure:
    """Title the figure (wrapped to its width: a one-panel figure is narrower than a long title);
    gather its first plot's legend into the space below (panels()) if any."""
    figure.suptitle(textwrap.fill(title, max(40, int(figure.get_figwidth() * 11))))
    legend_axis = getattr(figure, "legend_axis", None)
    if legend_axis is not None:
        handles, labels = figure.axes[0].get_legend_handles_labels()
        legend_axis.legend(handles, labels, loc="upper center", fontsize=LEGEND_FONT, frameon=False,
                           ncol=figure.legend_columns, handlelength=3.5, columnspacing=1.5)
    figure.tight_layout()
    return figure


def style(index: int) -> dict:
    """The look of series `index`, the same in every panel of a figure: ten colours, then the
    same colours again dashed with square markers, dotted with triangles…"""
    cycle = index // 10 % 4
    return {"color": f"C{index % 10}", "linestyle": ["-", "--", ":", "-."][cycle], "marker": "os^D"[cycle]}


def log2_batch_axis(axis) -> None:
    axis.set_xscale("log", base=2)
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))  # 1,024 not 2¹⁰
    axis.set_xlabel("batch size (log₂ scale)")
    axis.grid(True, which="major", alpha=0.3)


def time_vs_batch(rows: pd.DataFrame) -> Figure | None:
    done = rows[rows["n"] > 0]
    if done.empty:
        return None
    labels = series_labels(done, SERIES_KEYS)
    figure, (seconds_axis, rate_axis) = panels(2, sorted(labels.unique()))
    for index, (label, part) in enumerate(done.groupby(labels, sort=True)):
        part = part.sort_values("batch_size")
        for axis, name in ((seconds_axis, "epoch_train_seconds"), (rate_axis, "images_per_second")):
            spread = [part[name] - part[name + "_min"], part[name + "_max"] - part[name]]
            axis.errorbar(part["batch_size"], part[name], yerr=spread, capsize=3, label=label, **style(index))
    seconds_axis.set_ylabel("train seconds per epoch")
    rate_axis.set_ylabel("training images / s")
    for axis in (seconds_axis, rate_axis):
        log2_batch_axis(axis)
    return titled(figure, "Training time and throughput vs batch size (median, bars min–max over repeats)")


def accuracy_vs_epoch(epochs: pd.DataFrame) -> Figure | None:
    """epochs: per-epoch records joined with their runs' group keys (DONE runs only). One panel per
    training series with several epochs, the richest first (most batch sizes, then epochs)."""
    if epochs.empty:
        return None
    series = [(title, part) for title, part in epochs.groupby(series_labels(epochs, SERIES_KEYS), sort=True)
              if part["epoch"].max() >= 2]
    series.sort(key=lambda item: (item[1]["batch_size"].nunique(), item[1]["epoch"].max()), reverse=True)
    panels = series[:MAX_ACCURACY_PANELS]
    if not panels:
        return None
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4 * rows), squeeze=False)
    for axis, (title, part) in zip(axes.flat, panels):
        for batch, curve in part.groupby("batch_size"):
            stats = curve.groupby("epoch")["test_accuracy"].agg(["median", "min", "max"])
            axis.plot(stats.index, stats["median"], marker="o", label=f"batch {batch}")
            axis.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2)
        axis.set_title(textwrap.fill(title, 70, break_on_hyphens=False), fontsize=8)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel("test accuracy")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    return titled(figure, "Test accuracy per epoch, one line per batch size (band: min–max over repeats)")


def accuracy_vs_batch(rows: pd.DataFrame) -> Figure | None:
    done = rows[rows["n"] > 0]
    if done.empty:
        return None
    targets = done[done["time_to_target_seconds"].notna()]
    labels = series_labels(done, SERIES_KEYS)
    names = sorted(labels.unique())
    figure, axes = panels(2 if len(targets) else 1, names)
    for index, (label, part) in enumerate(done.groupby(labels, sort=True)):
        part = part.sort_values("batch_size")
        spread = [part["test_accuracy"] - part["test_accuracy_min"], part["test_accuracy_max"] - part["test_accuracy"]]
        axes[0].errorbar(part["batch_size"], part["test_accuracy"], yerr=spread, capsize=3, label=label, **style(index))
    axes[0].set_ylabel("test accuracy after the last epoch")
    if len(targets):
        for label, part in targets.groupby(labels[targets.index], sort=True):  # each series in its colour
            part = part.sort_values("batch_size")
            axes[1].plot(part["batch_size"], part["time_to_target_seconds"], **style(names.index(label)),
                         label=f"{label} (target {part['target_accuracy'].iloc[0]:.2f})")
        axes[1].set_ylabel("train seconds to target accuracy")
    for axis in axes:
        log2_batch_axis(axis)
    return titled(figure, "What batch size costs in accuracy")


def scaling(rows: pd.DataFrame) -> Figure | None:
    scaled = rows[rows["speedup"].notna()]
    if scaled.empty or scaled["parallelism"].max() < 2:
        return None
    keys = [k for k in SERIES_KEYS if k not in ("workers", "threads")] + ["baseline_batch_size"]
    labels = series_labels(scaled, keys)
    figure, (speedup_axis, efficiency_axis) = panels(2, sorted(labels.unique()) + ["ideal"])
    for index, (label, part) in enumerate(scaled.groupby(labels, sort=True)):
        part = part.sort_values("parallelism")
        speedup_axis.plot(part["parallelism"], part["speedup"], label=label, **style(index))
        efficiency_axis.plot(part["parallelism"], part["efficiency"] * 100, label=label, **style(index))
    top = int(scaled["parallelism"].max())
    speedup_axis.plot([1, top], [1, top], "k--", linewidth=1, label="ideal")
    efficiency_axis.axhline(100, color="k", linestyle="--", linewidth=1, label="ideal")
    speedup_axis.set_ylabel("speedup (images/s vs parallelism 1)")
    efficiency_axis.set_ylabel("parallel efficiency %")
    for axis in (speedup_axis, efficiency_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("parallelism (workers, or threads for single)")
        axis.grid(True, alpha=0.3)
    return titled(figure, "Scaling with workers / threads")


def inference(measured: pd.DataFrame) -> Figure | None:
    done = measured[measured["status"] == "DONE"]
    if done.empty:
        return None
    names = done.apply(config_name, axis=1)
    wins = {found["other"]: found["crossover"] for found in comparisons(measured) if found["crossover"] is not None}
    labels = {name: (f"{name} compute only" + (f", faster than the slowest from batch {wins[name]:,}"
                                               if name in wins else ""), f"{name} with overheads")
              for name in sorted(names.unique())}
    figure, (axis,) = panels(1, [label for pair in labels.values() for label in pair], width=9)
    for index, (name, part) in enumerate(done.groupby(names, sort=True)):
        part = part.sort_values("batch_size")
        look = style(index)  # a colour per configuration; compute only solid, with overheads dashed
        axis.plot(part["batch_size"], part["images_per_second"], marker="o", color=look["color"],
                  label=labels[name][0])
        axis.plot(part["batch_size"], part["overhead_images_per_second"], marker="s", linestyle="--",
                  color=look["color"], label=labels[name][1])
    for batch in sorted(set(wins.values())):  # the crossovers; who wins from there: in the legend
        axis.axvline(batch, color="grey", linestyle=":", linewidth=1)
        axis.annotate(f"crossover {batch:,}", (batch, 1), xycoords=("data", "axes fraction"), xytext=(3, -5),
                      textcoords="offset points", fontsize=LEGEND_FONT, rotation=90, va="top")
    log2_batch_axis(axis)
    axis.set_ylabel("inference images / s")
    return titled(figure, "Inference throughput vs batch size (dotted: crossover of the faster configuration)")


def training_pairs(rows: pd.DataFrame) -> list[tuple[str, pd.Series]]:
    """(label, speedup by batch size) for training series differing only in DEVICE_KEYS: each
    against the slowest one of its kind."""
    done = rows[rows["n"] > 0]
    same = [k for k in SERIES_KEYS if k not in DEVICE_KEYS]
    kinds = series_labels(done, same)  # what the pairs of one group share, when groups differ (e.g. strategy=ddp)
    several = kinds.nunique() > 1
    pairs = []
    for _, group in done.groupby(same, dropna=False):
        names = group.apply(config_name, axis=1)
        series = {name: part.set_index("batch_size")["images_per_second"] for name, part in group.groupby(names)}
        if len(series) < 2:
            continue
        baseline = min(series, key=lambda name: series[name].max())
        kind = f" {kinds[group.index[0]]}" if several else ""
        for name, values in series.items():
            ratio = (values / series[baseline]).dropna()
            if name != baseline and len(ratio):
                pairs.append((f"train{kind}: {name} vs {baseline}", ratio))
    return pairs


def device_speedup(rows: pd.DataFrame, measured: pd.DataFrame) -> Figure | None:
    lines = training_pairs(rows) if len(rows) else []
    if len(measured):
        lines += [(f"infer: {f['other']} vs {f['baseline']}", pd.Series(f["speedup"])) for f in comparisons(measured)]
    if not lines:
        return None
    figure, (axis,) = panels(1, [label for label, _ in lines], width=9)
    for index, (label, ratio) in enumerate(lines):
        ratio = ratio.sort_index()
        axis.plot(ratio.index, ratio.values, label=label, **style(index))
    axis.axhline(1, color="k", linestyle="--", linewidth=1)
    log2_batch_axis(axis)
    axis.set_ylabel("speedup (images/s ratio)")
    return titled(figure, "Device vs device (or machine vs machine), per batch size")


def steps_to_target(rows: pd.DataFrame) -> Figure | None:
    """Measured steps to target (each batch size at its best LR) and the fitted S(B), log-log."""
    if "b_noise" not in rows or rows["b_noise"].isna().all():
        return None
    fitted = rows[rows["b_noise"].notna()]
    labels = series_labels(fitted, CONFIGURATION)
    figure, (axis,) = panels(1, sorted(labels.unique()))
    for index, (label, group) in enumerate(fitted.groupby(labels, sort=True)):
        best, look = best_per_batch(group), style(index)
        s_min, b_noise = group["s_min"].iloc[0], group["b_noise"].iloc[0]
        axis.plot(update_batch(best), best["steps_to_target"], linestyle="none", marker=look["marker"],
                  color=look["color"], label=f"{label}: measured")
        low, high = update_batch(best).min() / 2, update_batch(best).max() * 2
        sizes = [low * (high / low) ** (k / 60) for k in range(61)]
        axis.plot(sizes, [s_min * (1 + b_noise / b) for b in sizes], color=look["color"], linestyle=look["linestyle"],
                  label=f"{label}: S_min {s_min:,.0f}, B_noise {b_noise:,.0f}")
        axis.axvline(b_noise, color=look["color"], alpha=0.4, linestyle=":")
    axis.set_yscale("log")
    axis.set_ylabel("optimizer steps to target accuracy")
    log2_batch_axis(axis)
    return titled(figure, "Steps to target vs batch size: perfect scaling, diminishing returns, maximal data "
                          "parallelism (dotted: the critical batch size)")


def noise_scale(evaluations: pd.DataFrame) -> Figure | None:
    """B_simple at each evaluation against the optimizer steps so far, one line per run."""
    if evaluations is None or "gradient_noise_scale" not in evaluations:
        return None
    measured = evaluations[evaluations["gradient_noise_scale"].notna()]
    if measured.empty:
        return None
    labels = series_labels(measured, GROUP_KEYS) + measured["run_id"].map(lambda run: f" (run {run})")
    figure, (axis,) = panels(1, sorted(labels.unique()))
    for index, (label, part) in enumerate(measured.groupby(labels, sort=True)):
        axis.plot(part["step"], part["gradient_noise_scale"], label=label, **style(index))
    axis.set_xlabel("optimizer steps")
    axis.set_ylabel("gradient noise scale B_simple")
    axis.set_yscale("log")
    axis.grid(True, alpha=0.3)
    return titled(figure, "Gradient noise scale over training (the critical batch size it predicts)")


def all_figures(rows: pd.DataFrame, epochs: pd.DataFrame, measured: pd.DataFrame,
                evaluations: pd.DataFrame | None = None) -> dict[str, Figure]:
    """Every figure the results support, by file-friendly name, in reading order."""
    has_rows = len(rows) > 0
    candidates = {
        "time_vs_batch": time_vs_batch(rows) if has_rows else None,
        "accuracy_vs_epoch": accuracy_vs_epoch(epochs),
        "accuracy_vs_batch": accuracy_vs_batch(rows) if has_rows else None,
        "scaling": scaling(rows) if has_rows else None,
        "inference": inference(measured) if len(measured) else None,
        "device_speedup": device_speedup(rows, measured),
        "steps_to_target": steps_to_target(rows) if has_rows else None,
        "noise_scale": noise_scale(evaluations),
    }
    return {name: figure for name, figure in candidates.items() if figure is not None}
