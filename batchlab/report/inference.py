"""Inference measurements from the store: throughput and latency per batch size, the best batch
size per device configuration, and device-vs-device speedup with the crossover batch size (how
they are shown: columns.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..store.store import Store
from .precision import recorded
from .training import read_store

CONFIG_KEYS = ["device", "threads", "precision", "slicing", "graph", "machine"]  # one "device" in comparisons
SERIES_KEYS = ["dataset", "model", "weights_source"]  # only measurements of the same work compare


def load_inference(db: str | Path) -> pd.DataFrame:
    rows = read_store(db, Store.inference_frame)
    rows["timed"] = [timed_pass(status, environment) for status, environment in zip(rows["status"], rows["environment"])]
    return rows.sort_values(SERIES_KEYS + CONFIG_KEYS + ["batch_size"]).reset_index(drop=True)


def timed_pass(status: str, environment) -> str | None:
    """What a finished measurement timed: a graph of the forward pass, or the eager pass (--graph
    off, or a graph that was not used). The graph setting says what was asked; this says what ran."""
    if status != "DONE":
        return None
    fields = recorded(environment)
    return next((name for key, name in TIMED_GRAPHS.items() if fields.get(key) is True), "eager")


def config_name(row) -> str:
    return f"{row['device']} t={row['threads']} {row['precision']}" + (
        "" if row.get("slicing", "auto") == "auto" else f" slices={row['slicing']}") + (
        "" if row.get("graph", "auto") == "auto" else f" graph={row['graph']}") + (
        f" @{row['machine']}" if "machine" in row and row["machine"] else "")


def crossover(batch_sizes: list[int], slower: list[float], faster: list[float]) -> int | None:
    """The smallest measured batch size from which on the faster configuration wins at every larger
    measured size (None if it does not win at the largest)."""
    points = sorted(zip(batch_sizes, slower, faster))
    found = None
    for batch, slow, fast in reversed(points):
        if not fast > slow:
            break
        found = batch
    return found


def comparisons(rows: pd.DataFrame, series: str = "images_per_second") -> list[dict]:
    """For each dataset/model/weights series with two or more device configurations: every other
    configuration against the slowest one (by best throughput), per batch size both measured."""
    done = rows[rows["status"] == "DONE"]
    found = []
    for key, group in done.groupby(SERIES_KEYS):
        # The median of a configuration's measurements at each batch size (repeats with other seeds,
        # or the same configuration measured again after a change of keys).
        configs = {name: part.groupby("batch_size")[series].median()
                   for name, part in group.groupby(group.apply(config_name, axis=1))}
        if len(configs) < 2:
            continue
        baseline = min(configs, key=lambda name: configs[name].max())
        for name, values in configs.items():
            if name == baseline:
                continue
            shared = sorted(set(values.index) & set(configs[baseline].index))
            if not shared:
                continue
            slow, fast = [configs[baseline][b] for b in shared], [values[b] for b in shared]
            found.append({"dataset": key[0], "model": key[1], "weights": key[2], "baseline": baseline,
                          "other": name, "series": series,
                          "speedup": {int(b): f / s for b, s, f in zip(shared, slow, fast)},
                          "crossover": crossover(shared, slow, fast)})
    return found


def best_batches(rows: pd.DataFrame) -> pd.Series:
    """True on the row with the best compute-only throughput of each configuration and series."""
    done = rows[rows["status"] == "DONE"]
    best = done.groupby(SERIES_KEYS + CONFIG_KEYS)["images_per_second"].idxmax()
    return rows.index.isin(best.values)


def with_best(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with `best`: true on each configuration's best batch size (best_batches)."""
    return rows.assign(best=best_batches(rows)) if len(rows) else rows.assign(best=pd.Series(dtype=bool))


def comparison_lines(rows: pd.DataFrame) -> list[str]:
    lines = []
    for series, label in (("images_per_second", "compute only"), ("overhead_images_per_second", "with overheads")):
        for found in comparisons(rows, series):
            speedups = ", ".join(f"{b:,}: {s:.2f}x" for b, s in found["speedup"].items())
            where = (f"wins from batch {found['crossover']:,} on" if found["crossover"] is not None
                     else "does not win at the largest batch measured")
            lines.append(f"{found['other']} vs {found['baseline']} ({found['model']}, {label}): {speedups}; {where}")
    return lines


def folding_lines(rows: pd.DataFrame) -> list[str]:
    """One line per model whose inference ran with batch norm folded into its convolutions
    (nn/folding.py), or that had batch norm left as it is because torch.fx could not trace it."""
    if not len(rows) or "environment" not in rows:
        return []
    folded: dict[str, set[int]] = {}
    unfolded: dict[str, str] = {}
    for model, environment in zip(rows["model"], rows["environment"]):
        fields = recorded(environment)
        if fields.get("batch_norms_folded"):
            folded.setdefault(model, set()).add(int(fields["batch_norms_folded"]))
        elif fields.get("batch_norm_unfolded"):
            unfolded[model] = str(fields["batch_norm_unfolded"])
    lines = [f"{model}: inference ran with {'/'.join(map(str, sorted(counts)))} batch-norm layer(s) folded into the "
             f"convolution before each, as inference deployments do (same results up to rounding; training runs "
             f"them as they are)." for model, counts in sorted(folded.items())]
    lines += [f"{model}: inference ran its batch norm as it is, {reason}." for model, reason in sorted(unfolded.items())]
    return lines


# Environment keys of the graphs a measurement may time (infer/cpu_graph.py, infer/graphs.py).
GRAPH_KINDS = (("onednn_graph", "oneDNN graphs"), ("cuda_graphs", "CUDA graphs"))
TIMED_GRAPHS = {key: name.removesuffix("s") for key, name in GRAPH_KINDS}  # a measurement's `timed` value


def graph_lines(rows: pd.DataFrame) -> list[str]:
    """Per model and kind of graph: how many measurements timed a graph of the forward pass, with
    the partitions fused and the seconds spent building and checking it (timed nowhere else), and
    why the others ran eagerly; --graph off measurements record neither and are not counted."""
    if not len(rows) or "environment" not in rows:
        return []
    lines = []
    for model, part in rows.groupby("model", sort=True):
        fields = [recorded(environment) for environment in part["environment"]]
        for key, name in GRAPH_KINDS:
            outcomes = [f for f in fields if key in f]
            used = [f for f in outcomes if f[key] is True]
            reasons = sorted({str(f[key]).removeprefix("not used: ") for f in outcomes if f[key] is not True})
            if not outcomes:
                continue
            text = f"{model}: {len(used)} of {len(outcomes)} measurement(s) timed {name} of the forward pass"
            if used:
                fused = sorted({int(count) for f in used for count in f.get("onednn_graph_fused", [])})
                seconds = [float(f["onednn_graph_seconds"]) for f in used if "onednn_graph_seconds" in f]
                details = ([f"{'/'.join(map(str, fused))} fused partitions a graph"] if fused else []) + (
                    [f"built and checked against eager in {min(seconds):.2f}–{max(seconds):.2f} s, not timed"]
                    if seconds else []) + bf16_distances([f["onednn_graph_bf16"] for f in used if "onednn_graph_bf16" in f])
                text += f" ({'; '.join(details)})" if details else ""
            if reasons:
                text += f"; the others ran eagerly: {'; '.join(reasons)}"
            lines.append(text + ".")
    return lines


def bf16_distances(checks: list[dict]) -> list[str]:
    """The bf16 graphs' largest distance from the fp32 logits beside autocast's, as shares of the
    largest fp32 logit (infer/cpu_graph.compare_bf16): what bf16 costs, through either pass."""
    def share(name: str) -> str:
        shares = [float(c[name]) / float(c["largest_fp32_logit"]) for c in checks if c.get(name) is not None]
        return f"{max(shares):.1%}" if shares else "not finite"

    checks = [c for c in checks if c.get("largest_fp32_logit")]  # all-zero logits have no shares
    if not checks:
        return []
    return [f"bf16 logits up to {share('graph_from_fp32')} of the largest from fp32's "
            f"(autocast's eager pass: {share('autocast_from_fp32')})"]


def preparation_lines(rows: pd.DataFrame) -> list[str]:
    """What the report says about how each model was prepared for inference: folding and graphs."""
    return folding_lines(rows) + graph_lines(rows)
