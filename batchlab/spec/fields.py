"""What each spec field is, declared once with the field: its help text, whether it is a
command-line flag, whether it may take several values in a grid, whether runs that differ in it
are reported apart, and its store column type. The CLI's options, the experiment-file keys, the
report's group keys and the store's current columns are all derived from here, so adding a
field is its declaration (plus a store migration for its column)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SQL_TYPES = {"int": "INTEGER", "float": "REAL", "str": "TEXT", "bool": "INTEGER"}
PYTHON_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


@dataclass(frozen=True)
class Setting:
    help: str  # one sentence, shown by --help
    flag: bool = True  # set by the user: a command-line option and an experiment-file key
    grid: bool = True  # a comma list on the sweep/infer command line (else one value)
    # Runs that differ in this field are reported apart: the report groups by `group` (the field's
    # own name, or the derived column that stands for it); None = not a group key (seed, repeat:
    # repeats of one configuration are summarised together).
    group: str | None = ""
    cli_default: str | None = None  # the default comma list of a command whose flags are lists


def setting(default: Any, help: str, **options: Any) -> Any:
    """A spec field with its Setting (use as the field's default in the dataclass)."""
    return dataclasses.field(default=default, metadata={"setting": Setting(help, **options)})


def settings(spec_class: type) -> list[tuple[dataclasses.Field, Setting]]:
    """Every field of a spec class with its Setting, in declaration order."""
    return [(f, f.metadata["setting"]) for f in dataclasses.fields(spec_class)]


def python_type(field: dataclasses.Field) -> type:
    return PYTHON_TYPES[str(field.type)]


def store_columns(spec_class: type) -> dict[str, str]:
    """The store columns a spec's fields take: name → SQLite type."""
    return {f.name: SQL_TYPES[str(f.type)] for f, _ in settings(spec_class)}


def user_fields(spec_class: type) -> list[str]:
    """Fields the user sets (flags, experiment-file keys); the others are generated (repeat)."""
    return [f.name for f, s in settings(spec_class) if s.flag]


def group_keys(spec_class: type) -> list[str]:
    """The columns runs are grouped by in reports (derived ones, e.g. slicing, in their field's place)."""
    return [s.group or f.name for f, s in settings(spec_class) if s.group is not None]
