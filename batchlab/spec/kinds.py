"""The kinds of run batchlab measures, each described once: a training run and an inference
measurement. Code that treats the two differently asks the run's kind (`kind_of(spec)`) what it
is, instead of testing the spec's class: its spec and result records, its store table, whether it
has epochs, saves or loads trained weights, and records its process start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.records import EpochRecord, EvalRecord, InferResult, RunResult
from .run import InferSpec, RunSpec


@dataclass(frozen=True)
class RunKind:
    name: str  # the spec's KIND: part of its key, the worker's job kind
    spec_class: type
    result_class: type
    table: str  # the store table of its rows
    has_epochs: bool  # reports progress per epoch; its result lists EpochRecords
    saves_weights: bool  # may keep its trained weights (--save-weights)
    loads_weights: bool  # may run with a training run's stored weights (spec.weights)
    records_startup: bool  # its result carries the process start-up seconds

    def result_from_dict(self, values: dict[str, Any]):
        """The result a worker sent as JSON, back as records."""
        values = {**values, "spec": self.spec_class(**values["spec"])}
        if self.has_epochs:
            values["epochs"] = [EpochRecord(**epoch) for epoch in values["epochs"]]
            values["evaluations"] = [EvalRecord(**evaluation) for evaluation in values.get("evaluations", [])]
        return self.result_class(**values)

    def spec_from_dict(self, values: dict[str, Any]):
        return self.spec_class(**values)


TRAIN = RunKind("train", RunSpec, RunResult, table="runs", has_epochs=True, saves_weights=True,
                loads_weights=False, records_startup=True)
INFER = RunKind("infer", InferSpec, InferResult, table="inference", has_epochs=False, saves_weights=False,
                loads_weights=True, records_startup=False)
KINDS = {kind.name: kind for kind in (TRAIN, INFER)}


def kind_of(spec: RunSpec | InferSpec) -> RunKind:
    return KINDS[spec.KIND]

