"""A run's compute threads flush denormal floats to zero, every one of them (device/threads.py):
denormals cost Intel CPUs a micro-code assist per operation, and small-batch training makes many."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

# A parallel multiply (4M elements: split over the threads) whose every result is a denormal
# (1e-40) unless flushed; prints how many results are not zero.
PROBE = """
import torch
{setup}
tiny = torch.full((4_000_000,), 1e-30) * 1e-10
print(int((tiny != 0).sum()))
"""


def nonzero_denormals(setup: str) -> int:
    ran = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0, ran.stderr
    return int(ran.stdout.strip())


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability() or not torch.set_flush_denormal(False),
                    reason="this CPU cannot flush denormals (no FTZ/DAZ)")
def test_every_compute_thread_flushes_denormals_and_plain_torch_does_not():
    assert nonzero_denormals("torch.set_num_threads(2)") == 4_000_000  # the control: denormals kept
    flushed = "from batchlab.device.threads import use_compute_threads\nuse_compute_threads(2)"
    assert nonzero_denormals(flushed) == 0
