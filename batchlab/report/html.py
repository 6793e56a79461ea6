"""One self-contained HTML page: the figures inlined as SVG (text drawn as paths, so no fonts to
fetch), the tables, the machines, and the definitions of every timed figure. It references no
file and no network address: it opens the same anywhere, offline."""

from __future__ import annotations

import html
import io
import json
from datetime import datetime, timezone

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from ..core.version import __version__
from .inference import best_batches, comparison_lines
from .training import missing, number, spread

DEFINITIONS = [
    ("train seconds", "the optimizer steps of an epoch only (batch gather, forward, loss, backward, update), device "
                      "synchronised before each clock read; evaluation excluded"),
    ("images / s", "images actually trained on (all workers) ÷ train seconds"),
    ("overheads", "process start-up, dataset load and checksum, host→device copy, model build and warm-up, "
                  "recorded apart; wall seconds = everything"),
    ("time to target", "cumulative train seconds until validation (else test) accuracy first reaches the target"),
    ("spread", "median over the n DONE repeats of a configuration, [min–max] in tables, bars and bands in figures"),
    ("speedup, efficiency", "images/s ÷ images/s at parallelism 1 (workers, or threads for single); "
                            "efficiency = speedup ÷ parallelism"),
    ("inference, compute only", "forward passes on a batch already on the device, synchronised per call"),
    ("inference, with overheads", "host→device copy, forward and predictions back to the host, per call; "
                                  "the first (cold) call is reported apart"),
    ("crossover", "the smallest batch size from which the faster configuration wins at every larger size measured"),
]

CAPTIONS = {
    "time_vs_batch": "Seconds per epoch and training images/s against batch size.",
    "accuracy_vs_epoch": "Test accuracy after each epoch, one line per batch size.",
    "accuracy_vs_batch": "Final test accuracy (and time to target) against batch size.",
    "scaling": "Speedup and parallel efficiency against workers/threads, per strategy; dashed: ideal.",
    "inference": "Inference images/s against batch size; solid: compute only, dashed: with overheads.",
    "device_speedup": "Throughput ratio of one device configuration (or machine) to another, per batch size.",
}

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3}td.n{text-align:right}figure{margin:1.5em 0}figcaption{color:#555;font-size:14px}
svg{max-width:100%;height:auto}code{background:#f3f3f3;padding:0 3px}"""


def svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline SVG needs neither


def cell(value, digits: int | None = None) -> str:
    if missing(value):
        return "<td>—</td>"
    if digits is None:
        return f"<td>{html.escape(str(value))}</td>"
    return f'<td class="n">{number(value, digits)}</td>'


def spread_cell(row: pd.Series, name: str, digits: int) -> str:
    text = spread(row[name], row[name + "_min"], row[name + "_max"], digits)
    return f'<td class="n">{text}</td>' if text != "—" else "<td>—</td>"


def training_table(rows: pd.DataFrame) -> str:
    head = ["dataset", "model", "device", "strategy", "workers", "threads", "precision", "slicing", "batch", "epochs",
            "machine", "n", "status", "s / epoch", "images / s", "speedup", "val acc", "test acc", "test loss",
            "time to target s"]
    body = []
    for _, row in rows.iterrows():
        body.append("<tr>" + "".join(cell(row[k]) for k in ("dataset", "model", "device", "strategy", "workers",
                                                            "threads", "precision", "slicing", "batch_size", "epochs",
                                                            "machine", "n", "status"))
                    + spread_cell(row, "epoch_train_seconds", 2) + spread_cell(row, "images_per_second", 0)
                    + cell(row.get("speedup"), 2) + cell(row["val_accuracy"], 4) + spread_cell(row, "test_accuracy", 4) + cell(row["test_loss"], 4)
                    + cell(row["time_to_target_seconds"], 1) + "</tr>")
    return table_html(head, body)


def inference_table(measured: pd.DataFrame) -> str:
    head = ["dataset", "model", "device", "threads", "precision", "slicing", "weights", "batch", "machine", "status", "n",
            "images / s", "p50 ms", "p99 ms", "images / s with overheads", "first call ms", "accuracy"]
    best = best_batches(measured)
    body = []
    for index, row in measured.iterrows():
        rate = cell(row["images_per_second"], 0)
        if best[index]:
            rate = rate.replace("</td>", " ★</td>")
        body.append("<tr>" + "".join(cell(row[k]) for k in ("dataset", "model", "device", "threads", "precision",
                                                            "slicing", "weights_source", "batch_size", "machine", "status"))
                    + cell(row["repeats"] if row["status"] == "DONE" else None) + rate
                    + cell(row["latency_p50"] * 1000, 3) + cell(row["latency_p99"] * 1000, 3)
                    + cell(row["overhead_images_per_second"], 0) + cell(row["first_call_seconds"] * 1000, 2)
                    + cell(row["accuracy"], 4) + "</tr>")
    return table_html(head, body)


def table_html(head: list[str], body: list[str]) -> str:
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>\n"
            + "\n".join(body) + "</table>")


def machines_html(machines: dict[str, dict]) -> str:
    parts = []
    for machine_id, info in machines.items():
        rows = [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v if isinstance(v, str) else json.dumps(v))}</td></tr>"
                for k, v in info.items()]
        parts.append(f"<h3>{html.escape(info.get('hostname', machine_id))} <code>{machine_id}</code></h3>"
                     f"<table>{''.join(rows)}</table>")
    return "\n".join(parts)


def page(figures: dict[str, Figure], rows: pd.DataFrame, measured: pd.DataFrame, machines: dict[str, dict],
         sources: list[str]) -> str:
    """The whole report as one HTML string."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [f"<h1>batchlab report</h1><p>From {html.escape(', '.join(sources))}; written {stamp} by "
                f"batchlab {__version__}.</p>"]
    for name, figure in figures.items():
        sections.append(f'<figure id="{name}">{svg(figure)}<figcaption>{html.escape(CAPTIONS[name])}'
                        "</figcaption></figure>")
    if len(rows):
        sections.append("<h2>Training</h2>" + training_table(rows))
    if len(measured):
        lines = "".join(f"<li>{html.escape(line)}</li>" for line in comparison_lines(measured))
        sections.append("<h2>Inference</h2>" + inference_table(measured) + (f"<ul>{lines}</ul>" if lines else ""))
    sections.append("<h2>Machines</h2>" + machines_html(machines))
    sections.append("<h2>Definitions</h2><dl>" + "".join(
        f"<dt><b>{html.escape(term)}</b></dt><dd>{html.escape(text)}</dd>" for term, text in DEFINITIONS) + "</dl>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>batchlab report</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")
