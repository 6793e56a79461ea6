"""bench/interleaved.py's bookkeeping, which the small-batch comparisons in docs/performance.md are
read from: every loop runs the same batches in each set, in an order that rotates, and the ratios
are taken set by set."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))

import interleaved  # noqa: E402


def test_every_loop_runs_each_sets_batches_in_a_rotating_order():
    seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    order: list[str] = []

    def loop(name):
        def step(index):
            seen[name].append(int(index[0]))
            if not order or order[-1] != name:
                order.append(name)
        return step

    counter = iter(range(100))

    def batches():
        start = next(counter) * 10
        return torch.arange(start, start + 4).reshape(2, 2)  # a chunk of 2 batches of 2

    times = interleaved.interleaved_times({name: loop(name) for name in seen}, batches, 3)
    assert seen["a"] == seen["b"] == seen["c"] == [0, 2, 10, 12, 20, 22]
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(seconds) == 3 and min(seconds) >= 0 for seconds in times.values())


def test_speed_is_the_other_loops_time_over_batchlabs_set_by_set():
    # A machine twice as slow in the second half: set by set, batchlab is 1.25x the plain loop.
    times = {"batchlab": [1.0, 1.0, 2.0, 2.0, 1.0, 2.0], "plain": [1.25, 1.25, 2.5, 2.5, 1.25, 2.5]}
    low, middle, high = interleaved.speed_against(times, "batchlab")["plain"]
    assert (low, middle, high) == pytest.approx((1.25, 1.25, 1.25))
    assert "batchlab" not in interleaved.speed_against(times, "batchlab")
