"""What a run depends on: RunSpec (one run), ExperimentSpec (a grid of runs), and their validation.

A RunSpec is one flat, frozen record. Its key (a hash of every field) identifies the run in the
store, so a sweep started again can skip what already finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPTIMIZERS = ("sgd", "momentum", "adam")
STRATEGIES = ("single",)
PRECISIONS = ("fp32",)
DEVICE_KINDS = ("cpu", "cuda", "mps")


class SpecError(ValueError):
    """A run or experiment asks for something invalid; the message is one line for the user."""


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class RunSpec:
    dataset: str = "fashion-mnist"
    model: str = "seed-cnn"
    batch_size: int = 64
    epochs: int = 1
    # SGD with momentum 0.9 at lr 0.01: a standard choice that learns seed-cnn within an epoch.
    optimizer: str = "momentum"
    lr: float = 0.01
    device: str = "cpu"
    strategy: str = "single"
    workers: int = 1
    # torch intra-op threads; 0 means "all available cores", resolved by validated().
    threads: int = 0
    precision: str = "fp32"
    # Fraction of the training set held out (seeded) as validation; 0 = no validation set.
    val_split: float = 0.0
    # Use only the first N training images (after the validation split); 0 = all.
    limit_train: int = 0
    # False: the last, smaller batch of an epoch is trained on (every image once per epoch).
    drop_last: bool = False
    # Accuracy (validation if any, else test) whose first crossing gives "time to target"; 0 = none.
    target_accuracy: float = 0.0
    seed: int = 0
    repeat: int = 0

    @property
    def key(self) -> str:
        """Stable identity of the run: a hash over every field (so also repeat and seed)."""
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def label(self) -> str:
        """Short human description for progress bars and messages."""
        return (f"{self.model} {self.dataset} bs={self.batch_size} {self.device} "
                f"{self.strategy}x{self.workers} t={self.threads} r={self.repeat}")

    def validated(self) -> RunSpec:
        """Check every field; return a copy with defaults resolved (threads=0 → core count)."""
        from . import data, models  # late import: registries pull in torch

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise SpecError(message)

        need(data.is_known_dataset(self.dataset),
             f"unknown dataset {self.dataset!r}; choose one of {', '.join(data.DATASETS)} or folder:PATH")
        need(models.is_known_model(self.model),
             f"unknown model {self.model!r}; choose one of {', '.join(models.MODELS)} or package.module:factory")
        need(self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}")
        need(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        need(self.optimizer in OPTIMIZERS,
             f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        need(self.lr > 0, f"learning rate must be positive, got {self.lr}")
        need(re.fullmatch(r"cpu|mps|cuda(:\d+)?", self.device) is not None,
             f"unknown device {self.device!r}; use cpu, cuda, cuda:N or mps")
        need(self.strategy in STRATEGIES,
             f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        need(self.workers >= 1, f"workers must be at least 1, got {self.workers}")
        need(self.strategy != "single" or self.workers == 1, "strategy 'single' runs exactly 1 worker")
        need(self.threads >= 0, f"threads must be at least 1 (or 0 for all cores), got {self.threads}")
        need(self.precision in PRECISIONS,
             f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        need(0.0 <= self.val_split < 1.0, f"val split must be in [0, 1), got {self.val_split}")
        need(self.limit_train >= 0, f"limit-train must be at least 0, got {self.limit_train}")
        need(0.0 <= self.target_accuracy <= 1.0,
             f"target accuracy is a fraction in [0, 1], got {self.target_accuracy}")
        need(self.repeat >= 0, f"repeat must be at least 0, got {self.repeat}")
        threads = self.threads or available_cores()
        return dataclasses.replace(self, threads=threads)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunSpec:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SpecError(f"unknown run setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)


RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunSpec))
# Fields that take part in the grid; repeat is generated from `repeats`.
GRID_FIELDS = tuple(name for name in RUN_FIELDS if name != "repeat")


@dataclass
class ExperimentSpec:
    """A grid: every RunSpec field may be one value or a list; the product of the lists is run
    `repeats` times. Repeat r uses seed + r, so repeats differ in initialisation and order."""

    name: str = "adhoc"
    description: str = ""
    repeats: int = 1
    grid: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, path: str | Path) -> ExperimentSpec:
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"experiment file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise SpecError(f"{path}: not valid TOML ({error})") from None
        name = values.pop("name", path.stem)
        description = values.pop("description", "")
        repeats = values.pop("repeats", 1)
        return cls.from_values(values, name=name, description=description, repeats=repeats)

    @classmethod
    def from_values(cls, values: dict[str, Any], name: str = "adhoc", description: str = "",
                    repeats: int = 1) -> ExperimentSpec:
        unknown = set(values) - set(GRID_FIELDS)
        if unknown:
            raise SpecError(f"unknown experiment setting(s): {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(GRID_FIELDS)}, repeats")
        if not isinstance(repeats, int) or repeats < 1:
            raise SpecError(f"repeats must be a whole number of at least 1, got {repeats!r}")
        grid = {k: (list(v) if isinstance(v, list) else [v]) for k, v in values.items()}
        empty = [k for k, v in grid.items() if not v]
        if empty:
            raise SpecError(f"empty list for {', '.join(empty)}")
        return cls(name=name, description=description, repeats=repeats, grid=grid)

    def runs(self) -> list[RunSpec]:
        """Every RunSpec of the grid, validated, in a stable order (repeats innermost)."""
        names = list(self.grid)
        specs = []
        for combo in itertools.product(*(self.grid[n] for n in names)):
            base = RunSpec.from_dict(dict(zip(names, combo)))
            for repeat in range(self.repeats):
                spec = dataclasses.replace(base, repeat=repeat, seed=base.seed + repeat)
                specs.append(_typed(spec).validated())
        return specs


def _typed(spec: RunSpec) -> RunSpec:
    """Coerce TOML/CLI values to the field types (e.g. lr = 1 → 1.0) with a clear error."""
    converted = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        kind = {"int": int, "float": float, "str": str, "bool": bool}[str(f.type)]
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise SpecError(f"{f.name} must be {kind.__name__}, got {value!r}")
        converted[f.name] = value
    return RunSpec(**converted)


def parse_list(text: str, kind: type, name: str) -> list[Any]:
    """'16,64,256' → [16, 64, 256] with a one-line error naming the flag."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise SpecError(f"--{name.replace('_', '-')} needs at least one value")
    try:
        return [kind(item) for item in items]
    except ValueError:
        raise SpecError(f"--{name.replace('_', '-')}: cannot read {text!r} as {kind.__name__} values") from None
