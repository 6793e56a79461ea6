"""The CUDA-only speed-ups (TF32 made explicit, channels-last for tensor-core precisions, CUDA
graphs): every decision they take is checked here on the CPU; the CUDA calls themselves are not
reached without a GPU."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import batchlab
from batchlab.core.errors import SpecError
from batchlab.device import fp32_math, machine
from batchlab.infer.measure import measure
from batchlab.report.precision import precision_lines
from batchlab.spec.run import InferSpec, RunSpec

NO_TF32_HERE = "tf32 needs an NVIDIA GPU of compute capability 8.0 or newer (Ampere); this run's device is cpu"


@pytest.fixture
def restored_fp32_settings():
    """torch's fp32 settings for CUDA are process-wide: put them back as they were."""
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    yield
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before


def a_gpu(monkeypatch, name: str, major: int, minor: int) -> None:
    """torch.cuda answers as if this process had GPU `name` of compute capability major.minor."""
    properties = SimpleNamespace(name=name, major=major, minor=minor)
    monkeypatch.setattr(fp32_math.torch.cuda, "get_device_properties", lambda device=None: properties)


def test_fp32_is_ieee_and_tf32_is_tf32():
    assert fp32_math.fp32_math("tf32") == "tf32"
    assert [fp32_math.fp32_math(precision) for precision in ("fp32", "bf16", "fp16")] == ["ieee"] * 3


@pytest.mark.parametrize("capability, refused", [((7, 0), True), ((7, 5), True), ((8, 0), False), ((9, 0), False)])
def test_tf32_needs_ampere(capability, refused):
    problem = fp32_math.tf32_problem(capability, "cuda:0 (GPU)")
    assert (problem is not None) == refused
    if refused:
        assert problem == (f"tf32 needs an NVIDIA GPU of compute capability 8.0 or newer (Ampere); cuda:0 (GPU) has "
                           f"{capability[0]}.{capability[1]}")


def test_tf32_is_refused_off_cuda_before_anything_runs():
    with pytest.raises(SpecError, match=NO_TF32_HERE.replace("(", r"\(").replace(")", r"\)")):
        batchlab.run(RunSpec(precision="tf32"), data_dir="/nonexistent")  # refused before the data is read
    with pytest.raises(SpecError, match="tf32 needs an NVIDIA GPU"):
        measure(InferSpec(precision="tf32"), "/nonexistent")
    assert RunSpec(precision="tf32", device="cuda:1").validated().precision == "tf32"  # the GPU is judged by torch
    assert InferSpec(precision="tf32", device="cuda").validated().precision == "tf32"


def test_the_run_sets_both_of_torchs_fp32_settings(monkeypatch, restored_fp32_settings):
    """The settings exist under these names in the installed torch and take these values; a GPU
    older than Ampere refuses tf32 and leaves them alone (no GPU needed: torch only stores them)."""
    cuda = torch.device("cuda")
    a_gpu(monkeypatch, "NVIDIA A100", 8, 0)
    assert fp32_math.set_cuda_fp32_math("tf32", cuda) == "tf32"
    assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "tf32"
    assert fp32_math.set_cuda_fp32_math("fp32", cuda) == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "ieee"
    a_gpu(monkeypatch, "Tesla V100", 7, 0)
    with pytest.raises(SpecError, match=r"cuda \(Tesla V100\) has 7.0"):
        fp32_math.set_cuda_fp32_math("tf32", cuda)
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert fp32_math.set_cuda_fp32_math("bf16", cuda) == "ieee"  # what autocast leaves in fp32 is fp32


def test_the_command_refuses_tf32_on_an_older_gpu_before_any_run(monkeypatch):
    from batchlab.cli.app import check_gpu_precisions

    monkeypatch.setattr(machine, "unavailable_reason", lambda device: None)  # as if this machine had the GPU
    a_gpu(monkeypatch, "Tesla V100", 7, 0)
    tf32 = RunSpec(precision="tf32", device="cuda:0")
    check_gpu_precisions([RunSpec(device="cuda:0")])  # fp32 runs anywhere: the GPU is not even asked
    with pytest.raises(SpecError, match=r"^tf32 needs an NVIDIA GPU .*; cuda:0 \(Tesla V100\) has 7.0$"):
        check_gpu_precisions([RunSpec(), tf32])
    a_gpu(monkeypatch, "NVIDIA H100", 9, 0)
    check_gpu_precisions([tf32])


def test_tf32_has_no_cpu_instructions_to_record_or_report():
    assert machine.precision_units("tf32", torch.device("cpu")) is None
    assert machine.precision_units("tf32", torch.device("cuda")) is None
    environment = json.dumps({"precision_units": None, "cuda_fp32_math": "tf32"})
    assert precision_lines(pd.DataFrame({"precision": ["tf32"], "environment": [environment]})) == []


@pytest.mark.parametrize("device_type, precision, layout", [
    ("cpu", "fp32", torch.channels_last), ("cpu", "bf16", torch.channels_last),
    ("cuda", "fp32", torch.contiguous_format), ("cuda", "tf32", torch.channels_last),
    ("cuda", "bf16", torch.channels_last), ("cuda", "fp16", torch.channels_last),
    ("mps", "bf16", torch.contiguous_format),
])
def test_the_layout_follows_the_device_and_the_tensor_core_precisions(device_type, precision, layout):
    from batchlab.nn.placement import memory_format_for

    assert memory_format_for(device_type, precision) == layout


def test_placed_on_the_cpu_the_convolutions_are_channels_last():
    from batchlab.nn import models
    from batchlab.nn.placement import place

    model = place(models.build("seed-cnn", input_shape=(1, 28, 28), classes=10), torch.device("cpu"), "fp32")
    weights = [parameter for parameter in model.parameters() if parameter.dim() == 4]
    assert weights and all(weight.is_contiguous(memory_format=torch.channels_last) for weight in weights)
