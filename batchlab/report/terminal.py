"""The report tables in a terminal: a Rich table of a column spec (columns.py) that fits the
terminal's width.

When the columns do not fit on one line per row, in this order: settings that are the same in
every row are said once in the title; columns go, highest priority first, while some non-essential
one (priority > 0) is left; the borders go if that shows more; if the essential columns still do
not fit, one table per value of the widest setting that can split them (e.g. per machine), the
value in its title; then cells wrap (at spaces, never inside a number); only a terminal too narrow
even for that loses essential columns. What went is named in one line under the tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from rich import box
from rich.cells import cell_len
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .columns import (
    ADVICE,
    ADVICE_CAPTION,
    INFERENCE,
    INFERENCE_CAPTION,
    INFERENCE_TITLE,
    RUNS,
    RUNS_CAPTION,
    RUNS_TITLE,
    TRAINING,
    TRAINING_CAPTION,
    TRAINING_TITLE,
    TUNED,
    TUNED_CAPTION,
    TUNED_TITLE,
    Column,
    cells,
    constant,
    shown,
    text,
)
from .inference import with_best
from .screen import PIPE_WIDTH

# The compact style: no borders; each column's header underlined, two spaces between columns.
RULED = box.Box("    \n    \n ─  \n    \n    \n    \n    \n    \n")


def table_width(widths: list[int], compact: bool = False) -> int:
    """Characters a table takes with these content widths: bordered, a border before, after and
    between the columns and a space of padding on each side of every cell; compact (no borders
    but a line under the header), two spaces between columns."""
    return sum(widths) + (2 * len(widths) - 2 if compact else 3 * len(widths) + 1)


@dataclass
class Layout:
    """Which columns a table shows at a width, and how wide each one is."""
    columns: list[Column]  # in the table, in order
    texts: list[list[str]]  # each row's cells of those columns
    least: list[int]  # each column's longest word: the narrowest it can wrap to
    widths: list[int] | None = None  # content widths when cells must wrap; None: one line per row
    folded: list[tuple[Column, str]] = field(default_factory=list)  # said once in the title
    dropped: list[Column] = field(default_factory=list)  # not shown: too narrow
    compact: bool = False  # no borders (RULED): two spaces between columns

    @property
    def cramped(self) -> tuple[int, bool]:
        """How far the essential columns (priority 0) are from fitting on one line per row: how
        many of them were left out, and whether cells wrap. (0, False): not at all."""
        return sum(column.priority == 0 for column in self.dropped), self.widths is not None


def widest_word(text: str) -> int:
    return max((cell_len(word) for word in text.split()), default=0)


def fit(columns: list[Column], rows: pd.DataFrame, width: int, compact: bool | None = None) -> Layout:
    """The layout of `rows` under `columns` (those the rows have) in `width` characters: bordered,
    unless a table without borders shows more (fewer columns left out, or no cells wrapped);
    `compact` True or False: that style."""
    if compact is not None:
        return fit_style(columns, rows, width, compact)
    bordered, compact = (fit_style(columns, rows, width, style) for style in (False, True))
    better = (compact.cramped, len(compact.dropped)) < (bordered.cramped, len(bordered.dropped))
    return compact if better else bordered


def fit_style(columns: list[Column], rows: pd.DataFrame, width: int, compact: bool) -> Layout:
    columns = shown(columns, rows)
    texts = cells(columns, rows)
    by_column = [[row[i] for row in texts] for i in range(len(columns))]
    natural = [max([cell_len(c.label)] + [cell_len(t) for t in by_column[i]]) for i, c in enumerate(columns)]
    least = [max([widest_word(c.label)] + [widest_word(t) for t in by_column[i]]) for i, c in enumerate(columns)]
    keep = list(range(len(columns)))
    folded: list[int] = []
    dropped: list[int] = []

    def needs(sizes: list[int]) -> int:
        return table_width([sizes[i] for i in keep], compact)

    if needs(natural) > width:
        folded = [i for i in keep if constant(columns[i], by_column[i])]
        keep = [i for i in keep if i not in folded]
    while needs(natural) > width and any(columns[i].priority > 0 for i in keep):
        dropped.append(max((i for i in keep if columns[i].priority > 0), key=lambda i: (columns[i].priority, i)))
        keep.remove(dropped[-1])
    while needs(least) > width and len(keep) > 1:  # not even wrapped: essential columns go too, last first
        dropped.append(max(keep, key=lambda i: (columns[i].priority, i)))
        keep.remove(dropped[-1])
    widths = None
    if needs(natural) > width:  # wrap: narrow the widest columns, never below their longest word
        widths = [natural[i] for i in keep]
        floor = [least[i] for i in keep]
        excess = table_width(widths, compact) - width
        while excess > 0:
            j = max((j for j in range(len(widths)) if widths[j] > floor[j]), key=lambda j: widths[j], default=None)
            if j is None:
                break
            widths[j] -= 1
            excess -= 1
    return Layout([columns[i] for i in keep], [[row[i] for i in keep] for row in texts], [least[i] for i in keep],
                  widths, [(columns[i], by_column[i][0]) for i in folded], [columns[i] for i in sorted(dropped)],
                  compact)


MAX_SPLITS = 2  # settings a too-narrow table may be split by, one table per value
MAX_VALUES = 6  # ... each with at most this many values


Part = tuple[list[tuple[Column, str]], pd.DataFrame, Layout]  # settings said in the title, its rows, layout


def layouts(columns: list[Column], rows: pd.DataFrame, width: int, depth: int = 0,
            compact: bool | None = None) -> list[Part]:
    """The tables `rows` take in `width`: one, or, when the essential columns do not fit on one
    line per row and splitting helps, one per value of the widest setting that can split them (a
    machine, a precision...), that setting said in each table's title."""
    layout = fit(columns, rows, width, compact)
    splits = [(least, index, column) for index, (column, least) in enumerate(zip(layout.columns, layout.least))
              if column.split and rows[column.key].astype(str).nunique() <= MAX_VALUES]
    if layout.cramped == (0, False) or depth >= MAX_SPLITS or not splits:
        return [([], rows, layout)]
    _, _, split = max(splits, key=lambda item: item[:2])
    rest = [column for column in columns if column is not split]
    found = []
    for _, part in rows.groupby(rows[split.key].astype(str), sort=False):
        said = (split, text(split, part.iloc[0]))
        found += [([said, *more], sub_rows, sub) for more, sub_rows, sub in
                  layouts(rest, part, width, depth + 1, compact)]
    if max(sub.cramped for _, _, sub in found) >= layout.cramped:
        return [([], rows, layout)]  # no better split: one table, wrapped
    return found


def plan(columns: list[Column], rows: pd.DataFrame, width: int) -> tuple[list[Part], list[Column]]:
    """The tables of `rows` in `width` (layouts()), all in one style and with the same columns
    left out (a column one of them could not show is left out of all); and those columns."""
    found = layouts(columns, rows, width)
    if len({layout.compact for _, _, layout in found}) > 1:  # one style for all: without borders
        found = layouts(columns, rows, width, compact=True)
    dropped = [column for column in columns if any(column in layout.dropped for _, _, layout in found)]
    if len(found) > 1 and dropped:
        found = [(said, part, fit([c for c in columns if c not in dropped and c not in dict(said)], part, width,
                                  layout.compact)) for said, part, layout in found]
    return found, dropped


def render(columns: list[Column], rows: pd.DataFrame, width: int, title: str, caption: str) -> Group:
    """The table(s) of `rows` fitted to `width`, with the line naming what was left out."""
    found, dropped = plan(columns, rows, width)
    parts = []
    for index, (said, _, layout) in enumerate(found):
        settings = said + layout.folded
        said_once = ", ".join(f"{column.label} {value}" for column, value in settings)
        heading = title + (f": {said_once}" if said_once else "")
        style = dict(box=RULED, show_edge=False, pad_edge=False, collapse_padding=True) if layout.compact else {}
        table = Table(title=Text(heading + ("\n" if layout.compact else "")),  # no border: a blank line under it
                      caption=Text(caption) if index == len(found) - 1 else None, **style)
        for position, column in enumerate(layout.columns):
            table.add_column(Text(column.label), justify=column.align, overflow="fold",
                             width=layout.widths[position] if layout.widths else None)
        for texts in layout.texts:
            table.add_row(*(Text(t) for t in texts))
        parts.append(table)
    if dropped:
        names = ", ".join(column.label for column in dropped)
        parts.append(Text(f"not shown (terminal too narrow, {width} columns): {names}; use --format json or a wider "
                          "terminal"))
    return Group(*parts)


def training_table(rows: pd.DataFrame, width: int = PIPE_WIDTH) -> Group:
    """Training runs grouped over repeats (training.aggregate), fitted to `width`."""
    return render(TRAINING, rows, width, TRAINING_TITLE, TRAINING_CAPTION)


def advice_title(plan: dict) -> str:
    return (f"advice: target {plan['target_accuracy']:g}, budget {plan['budget_minutes']:g} min, at most "
            f"{plan['epochs']} epoch(s) a run")


def advice_table(rows: pd.DataFrame, plan: dict, width: int = PIPE_WIDTH) -> Group:
    """advise's (batch size, LR) pairs (advice.advice_rows), fitted to `width`."""
    return render(ADVICE, rows, width, advice_title(plan), ADVICE_CAPTION)


def tuned_table(rows: pd.DataFrame, width: int = PIPE_WIDTH) -> Group:
    """Each configuration's best LR (tuning.tuned), fitted to `width`."""
    return render(TUNED, rows, width, TUNED_TITLE, TUNED_CAPTION)


def inference_table(measured: pd.DataFrame, width: int = PIPE_WIDTH) -> Group:
    """Inference measurements, ★ on each configuration's best batch size, fitted to `width`."""
    return render(INFERENCE, with_best(measured), width, INFERENCE_TITLE, INFERENCE_CAPTION)


def runs_table(runs: pd.DataFrame, width: int = PIPE_WIDTH) -> Group:
    """Training runs, one row each (report --runs), fitted to `width`."""
    return render(RUNS, runs, width, RUNS_TITLE, RUNS_CAPTION)
