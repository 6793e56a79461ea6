"""The width every command prints at, and a console on stdout at that width. Apart from
terminal.py so that the CLI's plain messages use it without importing pandas."""

from __future__ import annotations

import os
import shutil
import sys

from rich.console import Console

PIPE_WIDTH = 200  # off a terminal (pipe, file, CI log) and without $COLUMNS: wide enough for most tables


def terminal_width() -> int:
    """The width to print at: $COLUMNS when set (whether or not the output is a terminal), else
    the terminal's width, else PIPE_WIDTH."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return PIPE_WIDTH


def console() -> Console:
    """A console on stdout that prints at terminal_width()."""
    return Console(width=terminal_width())
