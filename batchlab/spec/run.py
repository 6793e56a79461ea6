"""What one run depends on: RunSpec (a training run), InferSpec (an inference measurement), and
their validation. ExperimentSpec (a grid of them) is in experiment.py.

A RunSpec is one flat, frozen record. Its key (a hash of every field) identifies the run in the
store, so a sweep started again can skip what already finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from ..core.cpus import available_cores
from ..core.errors import SpecError
from ..data import registry as data
from ..nn import names

OPTIMIZERS = ("sgd", "momentum", "adam")
STRATEGIES = ("single", "hogwild", "ddp")
PRECISIONS = ("fp32", "bf16", "fp16")


def need(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


def check_common(spec: RunSpec | InferSpec) -> None:
    """The checks training and inference specs share (torch-free: the registries' names only)."""
    need(data.dataset_problem(spec.dataset) is None, data.dataset_problem(spec.dataset) or "")
    need(data.is_known_dataset(spec.dataset),
         f"unknown dataset {spec.dataset!r}; choose one of {', '.join(data.DATASETS)} or folder:PATH")
    need(names.is_known_model(spec.model),
         f"unknown model {spec.model!r}; choose one of {', '.join(names.BUILTIN_MODELS)}, package.module:factory "
         "or path/to/file.py:factory")
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


