"""Runs in bf16/fp16 on a CPU without the instructions for it: oneDNN then emulates the
arithmetic through fp32, and such a run is slower than fp32 there. That is a fact about the CPU,
not about bf16, so the report says so under its tables instead of letting the slowdown read as
a result (the run records its CPU's instructions as `precision_units`, device/machine.py)."""

from __future__ import annotations

import json

import pandas as pd

# The instructions each precision runs on, as users know them (the flags are device/machine.py's
# PRECISION_UNITS; reports do not import torch, so not from there).
INSTRUCTION_EXAMPLES = {"bf16": "AVX512-BF16, AMX or Arm's BF16", "fp16": "AVX512-FP16, AMX-FP16 or Arm's FP16"}


def emulated(environment) -> bool:
    """Whether a run's environment says its precision had no instructions on its CPU."""
    if not isinstance(environment, str):
        return False
    try:
        return json.loads(environment).get("precision_units") == []
    except (ValueError, AttributeError):
        return False


def precision_lines(*frames: pd.DataFrame) -> list[str]:
    """One line per precision that some run (training or inference) ran emulated."""
    counts: dict[str, int] = {}
    for rows in frames:
        if not len(rows) or "environment" not in rows or "precision" not in rows:
            continue
        for precision, environment in zip(rows["precision"], rows["environment"]):
            if emulated(environment):
                counts[precision] = counts.get(precision, 0) + 1
    return [f"{precision}: {count} run(s) on a CPU without {precision} instructions (such as "
            f"{INSTRUCTION_EXAMPLES.get(precision, 'its hardware units')}): emulated through fp32 and so slower than "
            f"fp32 there; that is this CPU, not what {precision} does on CPUs that have them."
            for precision, count in sorted(counts.items())]
