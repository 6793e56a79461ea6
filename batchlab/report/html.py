"""One self-contained HTML page: the figures inlined as SVG (text drawn as paths, so no fonts to
fetch), the tables, the machines, and the definitions of every timed figure. It references no
file and no network address: it opens the same anywhere, offline."""

from __future__ import annotations

import html
import io
import json
import re
from datetime import datetime, timezone

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from ..core.version import __version__
from .columns import (
    ADVICE,
    ADVICE_CAPTION,
    INFERENCE,
    MISSING,
    TRAINING,
    TUNED,
    TUNED_CAPTION,
    Column,
    constant,
    shown,
    text,
)
from .critical_batch import fit_lines
from .inference import comparison_lines, with_best
from .noise import NOISE_HEADING, noise_items
from .tuning import tuned

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
    "noise_scale": "The gradient noise scale B_simple (--gns) at each evaluation, against the optimizer steps; "
                   "McCandlish et al. predict the critical batch size from it.",
    "steps_to_target": "Optimizer steps to the target accuracy against batch size, each at its best LR; lines: the "
                       "fit S(B) = S_min (1 + B_noise / B), its critical batch size B_noise marked.",
}

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.4em 0 1.2em}td,th{border:1px solid #ccc;padding:2px 4px}
th{background:#f3f3f3;vertical-align:bottom}td{vertical-align:top}.n{text-align:right}td span{white-space:nowrap}
td .range{color:#666}table.machine td{overflow-wrap:anywhere}p.same{font-size:13px;margin:.4em 0}
figure{margin:1.5em 0}figcaption{color:#555;font-size:14px}svg{max-width:100%;height:auto}
code{background:#f3f3f3;padding:0 3px}p.noisy{color:#a40;font-weight:bold}"""
# Width a table may take: tables are planned for a 1200 px wide window, 1136 px inside the body's
# margins. Estimated from characters (12 px DejaVu Sans, a wide font, measured in Chromium: 6.6 px
# per character in cells, 7.0 in bold headers; the estimate runs a few per cent over).
TABLE_BUDGET_PX = 1130
CHAR_PX, HEADER_CHAR_PX, CELL_PADDING_PX = 7.0, 7.6, 9


def svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline SVG needs neither


TWO_LINES = ("spread", "target")  # figures that may break once: 0.89 | [0.88–0.90], 10.4 | (2/2)


def pieces(text: str) -> list[str]:
    """Where a browser may break a text cell (a setting, a status): at spaces and after hyphens."""
    return [piece for piece in re.split(r"\s+|(?<=-)", text) if piece]


def least_px(column: Column, texts: list[str]) -> float:
    """An estimate of the narrowest a column can get: its longest unbreakable piece (cell() keeps
    a figure on one line, but a spread's median and [min–max] may take two)."""
    header = max((len(p) for p in pieces(column.label)), default=0) * HEADER_CHAR_PX
    if column.format == "text":
        body = max((len(p) for t in texts for p in pieces(t)), default=0)
    elif column.format in TWO_LINES:
        body = max((len(p) for t in texts for p in t.split(" ", 1)), default=0)
    else:
        body = max((len(t) for t in texts), default=0)
    return max(header, body * CHAR_PX) + CELL_PADDING_PX


def natural_px(column: Column, texts: list[str]) -> float:
    """An estimate of a column's width when nothing in it wraps."""
    return max(len(column.label) * HEADER_CHAR_PX, max((len(t) for t in texts), default=0) * CHAR_PX) + CELL_PADDING_PX


def plan(columns: list[Column], rows: pd.DataFrame, budget: float = TABLE_BUDGET_PX):
    """How a table of `rows` fits the page: (the settings said once above it, as (column, text);
    the tables, each a list of columns). As in the terminal, settings the same in every row are
    said once when cells would wrap; if the columns are too many even wrapped, the figures are
    split over several tables (each repeating the settings that tell rows apart), the first
    keeping the most important."""
    columns = shown(columns, rows)
    texts = {column.key: [text(column, row) for _, row in rows.iterrows()] for column in columns}

    def width(part: list[Column], estimate=least_px) -> float:
        return sum(estimate(column, texts[column.key]) for column in part) + 1

    folded = []
    if width(columns, natural_px) > budget:  # as in the terminal: when cells would wrap
        folded = [(column, texts[column.key][0]) for column in columns if constant(column, texts[column.key])]
        columns = [column for column in columns if column not in [c for c, _ in folded]]
    settings = [column for column in columns if column.setting]
    pending = [column for column in columns if not column.setting]
    tables = []
    while pending:  # the first table keeps the most important figures (lowest priority number)
        part = list(pending)
        while len(part) > 1 and width(settings + part) > budget:
            part.remove(max(part, key=lambda column: (column.priority, part.index(column))))
        tables.append([column for column in columns if column in settings or column in part])
        pending = [column for column in pending if column not in part]
    return folded, tables or [settings]


def cell(column: Column, row) -> str:
    """One cell: the column's text (columns.text); a spread's median and [min–max] (a time to
    target and how many reached it) may go on two lines, each one unbroken."""
    shown_text = text(column, row)
    align = ' class="n"' if column.align == "right" else ""
    if shown_text == MISSING:
        return f"<td{align}>{MISSING}</td>"
    if column.format in TWO_LINES and " " in shown_text:
        median, spread = shown_text.split(" ", 1)
        return f'<td{align}><span>{html.escape(median)}</span> <span class="range">{html.escape(spread)}</span></td>'
    if column.format != "text":  # a figure, e.g. 49,557 ★ or 1.25x: on one line
        return f"<td{align}><span>{html.escape(shown_text)}</span></td>"
    return f"<td{align}>{html.escape(shown_text)}</td>"


def tables_html(columns: list[Column], rows: pd.DataFrame, budget: float = TABLE_BUDGET_PX) -> str:
    """The rows as one or more HTML tables that fit the page (plan()), the same columns and text
    as the terminal table."""
    folded, tables = plan(columns, rows, budget)
    parts = []
    if folded:
        parts.append('<p class="same">Same in every row: ' + ", ".join(
            f"{html.escape(column.label)} <b>{html.escape(value)}</b>" for column, value in folded) + "</p>")
    for index, part in enumerate(tables):
        if index:
            parts.append('<p class="same">Continued: the same rows, further columns.</p>')
        head = "".join(f'<th{" class=n" if c.align == "right" else ""}>{html.escape(c.label)}</th>' for c in part)
        body = "\n".join("<tr>" + "".join(cell(c, row) for c in part) + "</tr>" for _, row in rows.iterrows())
        parts.append(f"<table><tr>{head}</tr>\n{body}</table>")
    return "\n".join(parts)


def training_table(rows: pd.DataFrame) -> str:
    return tables_html(TRAINING, rows)


def inference_table(measured: pd.DataFrame) -> str:
    return tables_html(INFERENCE, with_best(measured))


def noise_html(rows: pd.DataFrame) -> str:
    """The groups whose runs were noisy (report/noise.py), with the reasons; empty if none was."""
    items = "".join(f"<li>{html.escape(item)}</li>" for item in noise_items(rows))
    return f'<p class="noisy">&#9888; {html.escape(NOISE_HEADING)}</p><ul>{items}</ul>' if items else ""


def machines_html(machines: dict[str, dict]) -> str:
    parts = []
    for machine_id, info in machines.items():
        rows = [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v if isinstance(v, str) else json.dumps(v))}</td></tr>"
                for k, v in info.items()]
        parts.append(f"<h3>{html.escape(info.get('hostname', machine_id))} <code>{machine_id}</code></h3>"
                     f"<table class=\"machine\">{''.join(rows)}</table>")
    return "\n".join(parts)


def advice_html(plan: dict, rows: pd.DataFrame, found: dict) -> str:
    """One advise study: its table and its reasons (report/advice.py)."""
    spec = plan["runs"][0] if plan["runs"] else {}
    head = (f"<h3>{html.escape(str(spec.get('model')))} on {html.escape(str(spec.get('dataset')))}, "
            f"{html.escape(str(spec.get('device')))}: target {plan['target_accuracy']:g}, budget "
            f"{plan['budget_minutes']:g} min</h3>")
    why = "".join(f"<li>{html.escape(line)}</li>" for line in found["why"])
    table = tables_html(ADVICE, rows) if len(rows) else ""
    return head + f"<ul>{why}</ul>" + table + f"<p>{html.escape(ADVICE_CAPTION)}.</p>"


def page(figures: dict[str, Figure], rows: pd.DataFrame, measured: pd.DataFrame, machines: dict[str, dict],
         sources: list[str], advice: list[tuple[dict, pd.DataFrame, dict]] = (), notes: list[str] = ()) -> str:
    """The whole report as one HTML string (`advice`: advise's studies, report/advice.stored_advice;
    `notes`: what a reader must know before reading the numbers, e.g. report/precision.py's)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [f"<h1>batchlab report</h1><p>From {html.escape(', '.join(sources))}; written {stamp} by "
                f"batchlab {__version__}.</p>"]
    if notes:
        sections.append('<ul class="notes">' + "".join(f"<li>&#9888; {html.escape(note)}</li>" for note in notes)
                        + "</ul>")
    if advice:
        sections.append("<h2>Advice: the batch size and LR fastest to the target</h2>"
                        + "".join(advice_html(*study) for study in advice))
    for name, figure in figures.items():
        sections.append(f'<figure id="{name}">{svg(figure)}<figcaption>{html.escape(CAPTIONS[name])}'
                        "</figcaption></figure>")
    if len(rows):
        fits = "".join(f"<li>{html.escape(line)}</li>" for line in fit_lines(rows))
        sections.append("<h2>Training</h2>" + training_table(rows) + (f"<ul>{fits}</ul>" if fits else "")
                        + noise_html(rows))
        best = tuned(rows)
        if len(best):
            sections.append("<h2>Tuned learning rate</h2>" + f"<p>{html.escape(TUNED_CAPTION)}.</p>"
                            + tables_html(TUNED, best))
    if len(measured):
        lines = "".join(f"<li>{html.escape(line)}</li>" for line in comparison_lines(measured))
        sections.append("<h2>Inference</h2>" + inference_table(measured) + (f"<ul>{lines}</ul>" if lines else ""))
    sections.append("<h2>Machines</h2>" + machines_html(machines))
    sections.append("<h2>Definitions</h2><dl>" + "".join(
        f"<dt><b>{html.escape(term)}</b></dt><dd>{html.escape(text)}</dd>" for term, text in DEFINITIONS) + "</dl>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>batchlab report</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")
