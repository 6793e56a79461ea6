"""What this machine is: hardware and software fingerprint, and which devices it really has."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
from typing import Any

import psutil
import torch

from ..core.cpus import available_cores, cpuinfo_value, l2_cache_bytes
from ..core.errors import DeviceUnavailable

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cpu_model() -> str:
    return cpuinfo_value("model name") or platform.processor() or platform.machine()


# CPU instructions that run bf16/fp16 arithmetic in hardware (x86 /proc/cpuinfo "flags", Arm
# "Features"). Without them oneDNN emulates bf16 through fp32, slower than fp32 itself.
PRECISION_UNITS = {"bf16": ("avx512_bf16", "amx_bf16", "bf16"), "fp16": ("avx512_fp16", "amx_fp16", "fphp")}


def cpu_flags() -> set[str]:
    return set((cpuinfo_value("flags", "Features") or "").split())


def precision_units(precision: str, device: torch.device) -> list[str] | None:
    """For a bf16/fp16 run on the CPU, the CPU's instructions for that precision (empty: none,
    the arithmetic is emulated); None where it does not apply (fp32; GPUs; tf32, which only runs
    on GPUs whose tensor cores have it, device/fp32_math.py) or cannot be told (no /proc/cpuinfo:
    not Linux)."""
    if precision not in PRECISION_UNITS or device.type != "cpu":
        return None
    flags = cpu_flags()
    return sorted(flags & set(PRECISION_UNITS[precision])) if flags else None


def gpus() -> list[dict[str, Any]]:
    found = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append({"device": f"cuda:{index}", "name": props.name,
                          "memory_bytes": props.total_memory, "multiprocessors": props.multi_processor_count})
    if torch.backends.mps.is_available():
        found.append({"device": "mps", "name": "Apple MPS"})
    return found


def fingerprint() -> dict[str, Any]:
    """Everything the numbers depend on that is a property of the machine and its software."""
    import numpy

    from ..core.version import __version__

    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "available_cores": available_cores(),
        "l2_cache_bytes": l2_cache_bytes(),  # sets the automatic micro-batch size (nn/microbatch.py)
        "memory_bytes": psutil.virtual_memory().total,
        "gpus": gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "batchlab": __version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "thread_env": {name: os.environ.get(name) for name in THREAD_ENV},
        "mkldnn": torch.backends.mkldnn.is_available(),
    }


# Not the OS string: a kernel update should not make the same box a new machine (and so rerun
# everything on resume); software versions are recorded with every run instead.
HARDWARE_KEYS = ("hostname", "cpu_model", "logical_cores", "memory_bytes", "gpus")


def machine_id(info: dict[str, Any]) -> str:
    """Identity of the machine: its hardware and host name (software is recorded per run)."""
    stable = {k: info[k] for k in HARDWARE_KEYS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:12]


def unavailable_reason(device: str) -> str | None:
    """None if `device` can be used here, else a one-line reason."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
        return f"unknown device {device!r}; use cpu, cuda, cuda:N or mps"
    if kind == "cpu":
        return None
    if kind == "cuda":
        if not torch.cuda.is_available():
            return f"device {device} is not available: no CUDA GPU (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})"
        if index and int(index) >= torch.cuda.device_count():
            return f"device {device} is not available: this machine has {torch.cuda.device_count()} CUDA device(s)"
        return None
    return None if torch.backends.mps.is_available() else f"device {device} is not available: no Apple MPS backend"


def resolve_device(device: str) -> torch.device:
    reason = unavailable_reason(device)
    if reason:
        raise DeviceUnavailable(reason)
    return torch.device(device)
