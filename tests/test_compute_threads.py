"""A run's own process flushes denormal floats to zero in every compute thread (device/threads.py):
denormals cost Intel CPUs a micro-code assist per operation, and small-batch training makes many.
A program that calls batchlab as a library keeps its own floating-point mode."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import batchlab
from batchlab.device.threads import denormals_flushed
from batchlab.runner.sweep import run_in_worker
from batchlab.spec.run import RunSpec

pytestmark = pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU cannot flush denormals")

# A parallel multiply (4M elements: split over 2 threads) whose every result is a denormal (1e-40)
# unless flushed; prints how many results are not zero.
PROBE = """
import torch
{setup}
torch.set_num_threads(2)
tiny = torch.full((4_000_000,), 1e-30) * 1e-10
print(int((tiny != 0).sum()))
"""


def nonzero_denormals(setup: str) -> int:
    ran = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0, ran.stderr
    return int(ran.stdout.strip())


def test_every_compute_thread_flushes_denormals_and_plain_torch_does_not():
    assert nonzero_denormals("") == 4_000_000  # the control: denormals kept
    assert nonzero_denormals("from batchlab.device.threads import flush_denormals\nflush_denormals()") == 0


def small_run(folder: str) -> RunSpec:
    return RunSpec(dataset=f"folder:{folder}", model="mlp", batch_size=16, epochs=1, limit_train=64, threads=1)


def test_a_run_in_its_own_process_flushes_and_records_it(synthetic_folder):
    outcome = run_in_worker(small_run(synthetic_folder), None, lambda record: None, None, False, None)
    assert outcome.result is not None, outcome
    assert outcome.result.environment["denormals_flushed"] is True


def test_a_run_in_the_callers_process_leaves_its_floating_point_mode_alone(synthetic_folder):
    result = batchlab.run(small_run(synthetic_folder))
    assert result.environment["denormals_flushed"] is False
    assert not denormals_flushed()
