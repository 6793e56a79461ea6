"""Grids of runs: ExperimentSpec (from an experiment file or the sweep's flags) and the parsing of
comma lists, ranges ("1..cores") and links ("=workers")."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.cpus import available_cores
from ..core.errors import SpecError
from .fields import user_fields
from .run import InferSpec, RunSpec, check_storable, field_types

RANGE = re.compile(r"(\d+)\.\.(\d+|cores)")  # "1..8" or "1..cores" for whole-number fields
LINK = re.compile(r"=([a-z_]+)(?:\*(\d+))?")  # "=workers" or "=threads*2": another field's value
# More runs than any sweep finishes: a typo such as batch_size = "1..100000000" or repeats = 10**9
# is refused at once rather than filling the memory with millions of specs.
MAX_RUNS = 100_000
EXECUTORS = ("local", "ray", "slurm")
# The [executor] table's keys: the TOML types each takes and the executor it is for (None: any).
# The command line's --executor, --ray-address, --slurm-* and --detach override them key by key.
EXECUTOR_KEYS: dict[str, tuple[tuple[type, ...], str | None]] = {
    "name": ((str,), None), "ray_address": ((str,), "ray"), "partition": ((str,), "slurm"),
    "time_minutes": ((int,), "slurm"), "mem_gb": ((int, float), "slurm"), "folder": ((str,), "slurm"),
    "detach": ((bool,), "slurm"), "options": ((dict,), "slurm"),
}


@dataclass
class ExperimentSpec:
    """A grid of runs. Every RunSpec field may be one value or a list, and the product of the lists
    is run `repeats` times (repeat r uses seed + r, so repeats differ in initialisation and order).

    Beyond a plain product, for studies whose settings move together:
    - sub-grids (TOML `[[grid]]` tables): each is merged over the top-level values and expanded on
      its own; the experiment is all of them (e.g. one sub-grid per strategy);
    - ranges: a whole-number field may be "1..8" or "1..cores" (this machine's available cores);
    - links: a field may be "=other" or "=other*k", e.g. batch_size = "=workers";
    - an [infer] table: inference measurements (InferSpec fields, lists multiply) next to training.

    An [executor] table says where the runs go (EXECUTOR_KEYS; the sweep's flags override it): it
    is kept as the file gave it, checked, and read by the command line.
    """

    name: str = "adhoc"
    description: str = ""
    repeats: int = 1
    grid: dict[str, list[Any]] = field(default_factory=dict)
    subgrids: list[dict[str, list[Any]]] = field(default_factory=list)
    # An [infer] table: a grid of inference measurements (InferSpec fields), run after training.
    infer_grid: dict[str, list[Any]] = field(default_factory=dict)
    # An [executor] table (EXECUTOR_KEYS), as in the file: where the runs go unless flags say otherwise.
    executor: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, path: str | Path) -> ExperimentSpec:
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"experiment file not found: {path}") from None
        except IsADirectoryError:
            raise SpecError(f"{path} is a folder, not an experiment file (give a .toml file)") from None
        except OSError as error:
            raise SpecError(f"{path}: cannot read the experiment file ({error.strerror})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise SpecError(f"{path}: not valid TOML ({error})") from None
        except RecursionError:  # tomllib parses nested arrays and tables recursively, without a limit
            raise SpecError(f"{path}: not valid TOML (arrays or tables nested too deeply)") from None
        name = values.pop("name", path.stem)
        description = values.pop("description", "")
        # Both are stored and printed as text: a number or table here is a mistake, said now.
        for key, value in (("name", name), ("description", description)):
            if not isinstance(value, str):
                raise SpecError(f"{path}: '{key}' must be a string, got {value!r}")
        repeats = values.pop("repeats", 1)
        subgrids = values.pop("grid", [])
        if not isinstance(subgrids, list) or not all(isinstance(g, dict) for g in subgrids):
            raise SpecError(f"{path}: 'grid' must be [[grid]] tables")
        infer = values.pop("infer", {})
        if not isinstance(infer, dict):
            raise SpecError(f"{path}: 'infer' must be an [infer] table")
        executor = _executor_table(path, values.pop("executor", {}))
        if not values and not subgrids and not infer:  # the defaults would be a run nobody asked for
            raise SpecError(f"{path.name} sets nothing to run: an experiment file needs at least one run "
                            "setting, e.g. batch_size = [16, 64, 256]")
        experiment = cls.from_values(values, name=name, description=description, repeats=repeats)
        experiment.subgrids = [_as_lists(sub) for sub in subgrids]
        experiment.infer_grid = _as_lists(infer, InferSpec)
        experiment.executor = executor
        return experiment

    @classmethod
    def from_values(cls, values: dict[str, Any], name: str = "adhoc", description: str = "",
                    repeats: int = 1) -> ExperimentSpec:
        if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:  # true is no count
            raise SpecError(f"repeats must be a whole number of at least 1, got {repeats!r}")
        return cls(name=name, description=description, repeats=repeats, grid=_as_lists(values))

    def with_overrides(self, values: dict[str, Any], repeats: int | None = None) -> ExperimentSpec:
        """The same experiment with these fields (and repeats) fixed everywhere: flags win. The
        [infer] grid takes the overrides it has fields for, except batch sizes (of another scale)."""
        overrides = _as_lists(values)
        subgrids = [{k: v for k, v in sub.items() if k not in overrides} for sub in self.subgrids]
        merged = ExperimentSpec.from_values({}, self.name, self.description, self.repeats if repeats is None else repeats)
        infer_fields = set(field_types(InferSpec)) - {"batch_size"}
        infer_grid = {**self.infer_grid, **{k: v for k, v in overrides.items() if k in infer_fields}} \
            if self.infer_grid else {}
        return dataclasses.replace(merged, grid={**self.grid, **overrides}, subgrids=subgrids, infer_grid=infer_grid,
                                   executor=self.executor)

    def runs(self) -> list[RunSpec]:
        """Every RunSpec of the experiment, validated, without duplicates, in a stable order
        (sub-grids in file order, repeats innermost). A file with only an [infer] table trains
        nothing (not one default run nobody asked for)."""
        if self.infer_grid and not self.grid and not self.subgrids:
            return []
        specs: dict[str, RunSpec] = {}
        grids = []
        for sub in self.subgrids or [{}]:
            merged = {**self.grid, **sub}
            names = list(merged)
            grids.append((names, [_expand(name, merged[name], RunSpec) for name in names]))
        _check_count(sum(math.prod(map(len, axes)) for _, axes in grids) * self.repeats)
        for names, axes in grids:
            for combo in itertools.product(*axes):
                base = _typed(RunSpec.from_dict(_resolve_links(dict(zip(names, combo)))))
                for repeat in range(self.repeats):
                    spec = dataclasses.replace(base, repeat=repeat, seed=base.seed + repeat).validated()
                    specs.setdefault(spec.key, _storable(spec))
        return list(specs.values())

    def inferences(self) -> list[InferSpec]:
        """Every InferSpec of the [infer] table, validated (none if the experiment has none)."""
        if not self.infer_grid:
            return []
        names = list(self.infer_grid)
        axes = [_expand(name, self.infer_grid[name], InferSpec) for name in names]
        _check_count(math.prod(map(len, axes)))
        specs = {}
        for combo in itertools.product(*axes):
            spec = _typed(InferSpec.from_dict(_resolve_links(dict(zip(names, combo))))).validated()
            specs.setdefault(spec.key, _storable(spec))
        return list(specs.values())


def _check_count(count: int) -> None:
    """Refuse an experiment (or one range of it) of more than MAX_RUNS runs."""
    if count > MAX_RUNS:
        raise SpecError(f"the experiment makes {count:,} runs, more than {MAX_RUNS:,}: check its lists, "
                        "ranges and repeats")


def _storable(spec: RunSpec | InferSpec) -> RunSpec | InferSpec:
    """`spec`, unless a number of it does not fit the store, which would fail the sweep's first write."""
    check_storable(spec)
    return spec


def _as_lists(values: dict[str, Any], kind: type = RunSpec) -> dict[str, list[Any]]:
    known = user_fields(kind)
    unknown = set(values) - set(known)
    if unknown:
        where = "experiment" if kind is RunSpec else "[infer]"
        # A quoted TOML key may hold a line break: shown as repr, the error stays one line.
        shown = ", ".join(key if key.isprintable() else repr(key) for key in sorted(unknown))
        raise SpecError(f"unknown {where} setting(s): {shown}; "
                        f"known: {', '.join(known)}" + (", repeats, grid, infer, executor" if kind is RunSpec else ""))
    grid = {k: (list(v) if isinstance(v, list) else [v]) for k, v in values.items()}
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise SpecError(f"empty list for {', '.join(empty)}")
    return grid


def _executor_table(path: Path, table: Any) -> dict[str, Any]:
    """The [executor] table, checked key by key: a mistake is one line naming the file and the key."""
    if not isinstance(table, dict):
        raise SpecError(f"{path}: 'executor' must be an [executor] table")
    for key, value in table.items():
        if key not in EXECUTOR_KEYS:
            shown = key if key.isprintable() else repr(key)
            raise SpecError(f"{path}: unknown [executor] key {shown}; known: {', '.join(EXECUTOR_KEYS)}")
        types, _ = EXECUTOR_KEYS[key]
        # TOML's true is no count of minutes or gigabytes (to Python, bool is an int)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise SpecError(f"{path}: [executor] {key} must be {DESCRIBED[types[-1]]}, got {value!r}")
    _check_executor_values(path, table)
    return dict(table)


DESCRIBED = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
             dict: 'a table, e.g. {account = "proj"}'}
SBATCH_OPTION = re.compile(r"[A-Za-z0-9_-]+")


def _check_executor_values(path: Path, table: dict[str, Any]) -> None:
    """Values of the right type that no executor takes, and keys for another executor than the table's name."""
    name = table.get("name")
    if name is not None and name not in EXECUTORS:
        raise SpecError(f"{path}: [executor] name {name!r} is not an executor; choose one of {', '.join(EXECUTORS)}")
    for key in table:
        meant = EXECUTOR_KEYS[key][1]
        if name is not None and meant is not None and meant != name:
            raise SpecError(f'{path}: [executor] {key} is for name = "{meant}", not "{name}"')
    if table.get("time_minutes", 1) < 1:
        raise SpecError(f"{path}: [executor] time_minutes must be at least 1, got {table['time_minutes']}")
    memory = table.get("mem_gb", 1)
    if not math.isfinite(memory) or memory <= 0:
        raise SpecError(f"{path}: [executor] mem_gb must be a positive number of GB, got {memory}")
    for option, value in table.get("options", {}).items():
        # Each goes into the job script as `#SBATCH --OPTION=VALUE`: anything else in a name, or a
        # line break in a value, would be another option or line of the script.
        if not SBATCH_OPTION.fullmatch(option):
            raise SpecError(f"{path}: [executor] options: {option!r} is not an sbatch option name")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).isprintable():
            raise SpecError(f"{path}: [executor] options.{option} must be a string or a number on one line, "
                            f"got {value!r}")


def _expand(name: str, values: list[Any], kind: type) -> list[Any]:
    """Replace range strings ("1..4", "1..cores") in a whole-number field by their values."""
    expanded = []
    for value in values:
        match = RANGE.fullmatch(value) if isinstance(value, str) and field_types(kind)[name] == "int" else None
        if match:
            low = int(match[1])
            high = available_cores() if match[2] == "cores" else int(match[2])
            if high < low:
                raise SpecError(f"{name}: empty range {value!r}")
            _check_count(high - low + 1)  # before the list is made: "1..10**30" would not fit in memory
            expanded += range(low, high + 1)
        else:
            expanded.append(value)
    return expanded


def _resolve_links(values: dict[str, Any]) -> dict[str, Any]:
    """Replace "=other" / "=other*k" by the (already expanded) value of field `other`."""
    resolved = dict(values)
    for name, value in values.items():
        match = LINK.fullmatch(value) if isinstance(value, str) else None
        if match:
            source = values.get(match[1])
            if not isinstance(source, int) or isinstance(source, bool):
                raise SpecError(f"{name} = {value!r}: {match[1]!r} is not a whole-number setting of this run")
            resolved[name] = source * int(match[2] or 1)
    return resolved


def _typed(spec: RunSpec | InferSpec) -> RunSpec | InferSpec:
    """Coerce TOML/CLI values to the field types (e.g. lr = 1 → 1.0) with a clear error."""
    converted = {}
    types = field_types(type(spec))
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        kind = {"int": int, "float": float, "str": str, "bool": bool}[types[f.name]]
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise SpecError(f"{f.name} must be {kind.__name__}, got {value!r}")
        converted[f.name] = value
    return type(spec)(**converted)


def parse_list(text: str, kind: type, name: str) -> list[Any]:
    """'16,64,256' → [16, 64, 256] with a one-line error naming the flag."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise SpecError(f"--{name.replace('_', '-')} needs at least one value")
    try:
        return [kind(item) for item in items]
    except ValueError:
        raise SpecError(f"--{name.replace('_', '-')}: cannot read {text!r} as {kind.__name__} values") from None
