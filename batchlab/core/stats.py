"""Statistics over the stored per-call timings of an inference measurement (numpy only)."""

from __future__ import annotations

import numpy as np


def images_per_second(batch_size: int, seconds: list[float]) -> float:
    return batch_size * len(seconds) / sum(seconds) if seconds else float("nan")


def percentiles(seconds: list[float]) -> dict[str, float]:
    """Latency per batch: p50, p90, p99 (linear interpolation between samples)."""
    if not seconds:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    p50, p90, p99 = np.percentile(np.asarray(seconds), [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}
