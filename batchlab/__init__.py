"""batchlab: measure how batch size and parallelism shape neural-network training and inference.

The names below load on first use: `import batchlab` (and so the `batchlab` command before it
parses its flags) does not import torch.
"""

from __future__ import annotations

import importlib

from .core.version import __version__

_LAZY = {"RunSpec": "spec.run", "ExperimentSpec": "spec.experiment", "SpecError": "core.errors",
         "RunResult": "core.records", "EpochRecord": "core.records", "run": "train.strategies"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'batchlab' has no attribute {name!r}")


def results(db: str = "batchlab.db"):
    """Every stored run of the store `db` (opened read-only), one row per run, as a DataFrame."""
    from .store.store import Store

    with Store(db, readonly=True) as store:
        return store.runs_frame()


__all__ = ["RunSpec", "ExperimentSpec", "RunResult", "EpochRecord", "SpecError", "run", "results", "__version__"]
