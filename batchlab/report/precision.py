"""Runs in bf16/fp16 on a CPU where that precision is slower than fp32, for a reason of the CPU's:
without the instructions for it oneDNN emulates the arithmetic through fp32; with them, the CPU's
matrix products in that precision may still run slower than in fp32 (AVX512-BF16 without AMX:
0.54-0.59x on a 5th-generation Xeon). Such a slowdown is a fact about the CPU, not about bf16, so
the report says so under its tables instead of letting it read as a result. Each run records its
CPU's instructions for its precision (`precision_units`, device/machine.py) and the measured
matrix-product rate against fp32 (`precision_product_speed`, device/product_speed.py)."""

from __future__ import annotations

import json

import pandas as pd

# The instructions each precision runs on, as users know them (the flags are device/machine.py's
# PRECISION_UNITS; reports do not import torch, so not from there).
INSTRUCTION_EXAMPLES = {"bf16": "AVX512-BF16, AMX or Arm's BF16", "fp16": "AVX512-FP16, AMX-FP16 or Arm's FP16"}


def recorded(environment) -> dict:
    """A run's stored environment (JSON text) as a dict; {} for none or unreadable."""
    if not isinstance(environment, str):
        return {}
    try:
        fields = json.loads(environment)
    except ValueError:
        return {}
    return fields if isinstance(fields, dict) else {}


def emulated(environment) -> bool:
    """Whether a run's environment says its precision had no instructions on its CPU."""
    return recorded(environment).get("precision_units") == []


def slower_products(environment) -> float | None:
    """A run's measured matrix-product rate ÷ fp32's where its CPU has the instructions for its
    precision and the products still ran slower than fp32's; else None."""
    fields = recorded(environment)
    speed = fields.get("precision_product_speed")
    if not fields.get("precision_units") or not isinstance(speed, (int, float)) or speed >= 1:
        return None
    return float(speed)


def precision_lines(*frames: pd.DataFrame) -> list[str]:
    """One line per precision that some run (training or inference) ran emulated, and one per
    precision whose matrix products some run measured slower than fp32's."""
    counts: dict[str, int] = {}
    speeds: dict[str, list[float]] = {}
    for rows in frames:
        if not len(rows) or "environment" not in rows or "precision" not in rows:
            continue
        for precision, environment in zip(rows["precision"], rows["environment"]):
            if emulated(environment):
                counts[precision] = counts.get(precision, 0) + 1
            elif (speed := slower_products(environment)) is not None:
                speeds.setdefault(precision, []).append(speed)
    lines = [f"{precision}: {count} run(s) on a CPU without {precision} instructions (such as "
             f"{INSTRUCTION_EXAMPLES.get(precision, 'its hardware units')}): emulated through fp32 and so slower than "
             f"fp32 there; that is this CPU, not what {precision} does on CPUs that have them."
             for precision, count in sorted(counts.items())]
    for precision, measured in sorted(speeds.items()):
        low, high = min(measured), max(measured)
        rate = f"{low:.2f}x" if low == high else f"{low:.2f}-{high:.2f}x"
        lines.append(f"{precision}: {len(measured)} run(s) on a CPU whose {precision} matrix products ran at {rate} "
                     f"the fp32 rate (measured beside each run), though it has {precision} instructions: {precision} "
                     f"is slower than fp32 on this CPU; CPUs whose {precision} units multiply faster than their fp32 "
                     f"ones (such as AMX) are where it gains.")
    return lines
