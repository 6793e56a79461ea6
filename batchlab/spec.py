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
STRATEGIES = ("single", "hogwild", "ddp")
PRECISIONS = ("fp32", "bf16", "fp16")


class SpecError(ValueError):
    """A run or experiment asks for something invalid; the message is one line for the user."""


def need(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


def check_common(spec: RunSpec | InferSpec) -> None:
    """The checks training and inference specs share."""
    from . import data, models  # late import: registries pull in torch

    need(data.dataset_problem(spec.dataset) is None, data.dataset_problem(spec.dataset) or "")
    need(data.is_known_dataset(spec.dataset),
         f"unknown dataset {spec.dataset!r}; choose one of {', '.join(data.DATASETS)} or folder:PATH")
    need(models.is_known_model(spec.model),
         f"unknown model {spec.model!r}; choose one of {', '.join(models.MODELS)} or package.module:factory")
    need(spec.batch_size >= 1, f"batch size must be at least 1, got {spec.batch_size}")
    need(re.fullmatch(r"cpu|mps|cuda(:\d+)?", spec.device) is not None,
         f"unknown device {spec.device!r}; use cpu, cuda, cuda:N or mps")
    need(spec.threads >= 0, f"threads must be at least 1 (or 0 for all cores), got {spec.threads}")
    need(spec.precision in PRECISIONS,
         f"unknown precision {spec.precision!r}; choose one of {', '.join(PRECISIONS)}")
    need(spec.micro_batch >= 0, f"micro-batch must be at least 1 (or 0 for automatic), got {spec.micro_batch}")


class Keyed:
    """Identity and serialisation shared by the spec records."""

    KIND = "train"

    @property
    def key(self) -> str:
        """Stable identity: a hash over the kind and every field (so also repeat and seed)."""
        payload = json.dumps({"kind": self.KIND, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SpecError(f"unknown {cls.KIND} setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class RunSpec(Keyed):
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
    # torch intra-op threads per process; 0 means "available cores / workers", resolved by validated().
    threads: int = 0
    precision: str = "fp32"
    # Fraction of the training set held out (seeded) as validation; 0 = no validation set.
    val_split: float = 0.0
    # Train on N images (after the validation split): a fixed-seed sample stratified by class; 0 = all.
    limit_train: int = 0
    # False: the last, smaller batch of an epoch is trained on (every image once per epoch).
    drop_last: bool = False
    # Accuracy (validation if any, else test) whose first crossing gives "time to target"; 0 = none.
    target_accuracy: float = 0.0
    # Images per micro-batch: each batch runs through the network in slices of this size whose
    # gradients add up to the batch's single update (microbatch.py). 0 = automatic (CPU: slices
    # that fit the cache; GPU or batch norm: whole batches); a value ≥ the batch size = whole batches.
    micro_batch: int = 0
    seed: int = 0
    repeat: int = 0

    def label(self) -> str:
        """Short human description for progress bars and messages."""
        precision = "" if self.precision == "fp32" else f" {self.precision}"
        return (f"{self.model} {self.dataset} bs={self.batch_size} {self.device}{precision} "
                f"{self.strategy}x{self.workers} t={self.threads} r={self.repeat}")

    def validated(self) -> RunSpec:
        """Check every field; return a copy with defaults resolved (threads=0 → core count)."""
        check_common(self)
        need(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        need(self.optimizer in OPTIMIZERS,
             f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        need(self.lr > 0, f"learning rate must be positive, got {self.lr}")
        need(self.strategy in STRATEGIES,
             f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        need(self.workers >= 1, f"workers must be at least 1, got {self.workers}")
        need(self.strategy != "single" or self.workers == 1,
             "strategy 'single' runs exactly 1 worker (use --threads, or --strategy hogwild/ddp)")
        need(self.strategy != "hogwild" or self.device == "cpu",
             "strategy 'hogwild' shares parameters in CPU memory: use --device cpu (or ddp on GPUs)")
        need(0.0 <= self.val_split < 1.0, f"val split must be in [0, 1), got {self.val_split}")
        need(self.limit_train >= 0, f"limit-train must be at least 0, got {self.limit_train}")
        need(0.0 <= self.target_accuracy <= 1.0,
             f"target accuracy is a fraction in [0, 1], got {self.target_accuracy}")
        need(self.repeat >= 0, f"repeat must be at least 0, got {self.repeat}")
        # Default: share the cores among the worker processes.
        threads = self.threads or max(1, available_cores() // self.workers)
        return dataclasses.replace(self, threads=threads)



@dataclass(frozen=True)
class InferSpec(Keyed):
    """One inference measurement: a model at one batch size on one device configuration."""

    KIND = "infer"
    dataset: str = "fashion-mnist"  # the test set, tiled up to the batch size
    model: str = "seed-cnn"
    batch_size: int = 256
    device: str = "cpu"
    threads: int = 0  # 0 = all available cores
    precision: str = "fp32"
    # "" = freshly initialised (seeded) weights: timing does not depend on them; else the key of
    # a stored training run whose saved weights are used (and accuracy is reported).
    weights: str = ""
    micro_batch: int = 0  # images per forward slice, as for training (0 = automatic)
    seed: int = 0

    def label(self) -> str:
        return (f"infer {self.model} {self.dataset} bs={self.batch_size} {self.device} t={self.threads} "
                f"{self.precision}{' trained' if self.weights else ''}")

    def validated(self) -> InferSpec:
        check_common(self)
        return dataclasses.replace(self, threads=self.threads or available_cores())


def field_types(cls: type) -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


# Fields that take part in a training grid; repeat is generated from `repeats`.
GRID_FIELDS = tuple(name for name in field_types(RunSpec) if name != "repeat")


RANGE = re.compile(r"(\d+)\.\.(\d+|cores)")  # "1..8" or "1..cores" for whole-number fields
LINK = re.compile(r"=([a-z_]+)(?:\*(\d+))?")  # "=workers" or "=threads*2": another field's value


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
    """

    name: str = "adhoc"
    description: str = ""
    repeats: int = 1
    grid: dict[str, list[Any]] = field(default_factory=dict)
    subgrids: list[dict[str, list[Any]]] = field(default_factory=list)
    # An [infer] table: a grid of inference measurements (InferSpec fields), run after training.
    infer_grid: dict[str, list[Any]] = field(default_factory=dict)

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
        name = values.pop("name", path.stem)
        description = values.pop("description", "")
        repeats = values.pop("repeats", 1)
        subgrids = values.pop("grid", [])
        if not isinstance(subgrids, list) or not all(isinstance(g, dict) for g in subgrids):
            raise SpecError(f"{path}: 'grid' must be [[grid]] tables")
        infer = values.pop("infer", {})
        if not isinstance(infer, dict):
            raise SpecError(f"{path}: 'infer' must be an [infer] table")
        if not values and not subgrids and not infer:  # the defaults would be a run nobody asked for
            raise SpecError(f"{path.name} sets nothing to run: an experiment file needs at least one run "
                            "setting, e.g. batch_size = [16, 64, 256]")
        experiment = cls.from_values(values, name=name, description=description, repeats=repeats)
        experiment.subgrids = [_as_lists(sub) for sub in subgrids]
        experiment.infer_grid = _as_lists(infer, InferSpec)
        return experiment

    @classmethod
    def from_values(cls, values: dict[str, Any], name: str = "adhoc", description: str = "",
                    repeats: int = 1) -> ExperimentSpec:
        if not isinstance(repeats, int) or repeats < 1:
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
        return dataclasses.replace(merged, grid={**self.grid, **overrides}, subgrids=subgrids, infer_grid=infer_grid)

    def runs(self) -> list[RunSpec]:
        """Every RunSpec of the experiment, validated, without duplicates, in a stable order
        (sub-grids in file order, repeats innermost)."""
        specs: dict[str, RunSpec] = {}
        for sub in self.subgrids or [{}]:
            merged = {**self.grid, **sub}
            names = list(merged)
            axes = [_expand(name, merged[name], RunSpec) for name in names]
            for combo in itertools.product(*axes):
                base = _typed(RunSpec.from_dict(_resolve_links(dict(zip(names, combo)))))
                for repeat in range(self.repeats):
                    spec = dataclasses.replace(base, repeat=repeat, seed=base.seed + repeat).validated()
                    specs.setdefault(spec.key, spec)
        return list(specs.values())

    def inferences(self) -> list[InferSpec]:
        """Every InferSpec of the [infer] table, validated (none if the experiment has none)."""
        if not self.infer_grid:
            return []
        names = list(self.infer_grid)
        axes = [_expand(name, self.infer_grid[name], InferSpec) for name in names]
        specs = {}
        for combo in itertools.product(*axes):
            spec = _typed(InferSpec.from_dict(_resolve_links(dict(zip(names, combo))))).validated()
            specs.setdefault(spec.key, spec)
        return list(specs.values())


def _as_lists(values: dict[str, Any], kind: type = RunSpec) -> dict[str, list[Any]]:
    known = [name for name in field_types(kind) if name != "repeat"]
    unknown = set(values) - set(known)
    if unknown:
        where = "experiment" if kind is RunSpec else "[infer]"
        raise SpecError(f"unknown {where} setting(s): {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(known)}" + (", repeats, grid, infer" if kind is RunSpec else ""))
    grid = {k: (list(v) if isinstance(v, list) else [v]) for k, v in values.items()}
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise SpecError(f"empty list for {', '.join(empty)}")
    return grid


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
