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


CUDA = "cuda"


@pytest.mark.parametrize("changes, slice_size, reason", [
    ({}, 64, None),
    ({"precision": "bf16"}, 64, None),
    ({"precision": "tf32"}, 64, None),
    ({"batch_size": 1}, 1, None),
    ({"strategy": "ddp", "workers": 2}, 64, "strategy ddp: only single-process runs are graphed"),
    ({"strategy": "hogwild", "workers": 2}, 64, "strategy hogwild: only single-process runs are graphed"),
    ({"gns": True}, 32, "--gns reads the gradients of each slice of a batch"),
    ({"precision": "fp16"}, 64, "fp16: its loss scaling may skip steps, kept eager"),
    ({}, 16, "micro-batches of 16 images: only whole batches are graphed"),
])
def test_which_training_runs_are_graphed(changes, slice_size, reason):
    from batchlab.train.graphs import decide

    spec = RunSpec(device="cuda", **changes)
    used, why = decide(spec, CUDA, slice_size)
    assert used == (reason is None) and (reason is None or why == reason), why
    assert decide(RunSpec(**changes), "cpu", slice_size) == (False, "CUDA graphs need a CUDA device")
    assert decide(spec, torch.device("cuda:1").type, slice_size)[0] == (reason is None)


def test_a_batch_of_the_captured_shape_replays_the_graph_any_other_runs_eagerly():
    from batchlab.train.graphs import GraphedModel

    calls = []

    def called(name: str):
        return lambda images: calls.append(name) or images

    graphed = GraphedModel(called("graph"), called("eager"), torch.Size((4, 1, 8, 8)))
    for count in (4, 4, 2, 4, 1):
        graphed(torch.zeros(count, 1, 8, 8))
    assert calls == ["graph", "graph", "eager", "graph", "eager"]


def test_the_step_loop_trains_through_the_graphed_forward_and_the_same_weights():
    """The loop sends its full batches through `graphed` and the epoch's last, smaller batch
    through the model; both paths update the model's one set of weights, as an eager loop does."""
    from batchlab.data.device import DeviceData, Normalize
    from batchlab.train.engine import StepLoop, make_optimizer
    from batchlab.train.graphs import GraphedModel

    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (10,))
    empty = torch.empty(0, 1, 8, 8, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    dd = DeviceData(images, labels, *empty, *empty, Normalize(0.5, 0.25), 3, ("a", "b", "c"), torch.device("cpu"))
    first = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    second = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    second.load_state_dict(first.state_dict())
    shapes = []

    def graph_stand_in(batch: torch.Tensor) -> torch.Tensor:
        shapes.append(len(batch))
        return second(batch)

    eager = StepLoop(first, make_optimizer("momentum", first.parameters(), 0.1), dd, batch_size=4)
    graphed = StepLoop(second, make_optimizer("momentum", second.parameters(), 0.1), dd, batch_size=4)
    graphed.graphed = GraphedModel(graph_stand_in, second, torch.Size((4, 1, 8, 8)))
    order = torch.randperm(10)
    plain, through_graph = eager.train(order), graphed.train(order)
    assert (plain.loss_sum, plain.correct, plain.steps) == (through_graph.loss_sum, through_graph.correct, 3)
    assert shapes == [4, 4]  # the last batch, of 2, ran eagerly
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name


def test_capture_leaves_batch_statistics_as_they_were():
    from batchlab.train.graphs import kept_buffers

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)).train()
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    places = [buffer.data_ptr() for buffer in model.buffers()]
    with kept_buffers(model):
        model(torch.randn(8, 1, 6, 6))
        assert not torch.equal(model[1].running_mean, before["1.running_mean"])  # the pass did update them
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name
    assert [buffer.data_ptr() for buffer in model.buffers()] == places  # in place: a graph holds these tensors


def test_a_failed_capture_is_said_by_its_first_error():
    from batchlab.device.graph_capture import capture_failure

    try:
        try:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")
        except RuntimeError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture") from None
    except RuntimeError as ended:
        assert capture_failure(ended) == ("capture failed: RuntimeError: CUDA error: operation not permitted "
                                          "when stream is capturing")


def test_only_cuda_runs_record_cuda_graphs():
    """CPU runs capture and record nothing; a CUDA run that decide() keeps eager records why,
    without asking the GPU anything."""
    from batchlab.train.graphs import graphed_steps

    model = torch.nn.Linear(2, 2)
    environment: dict = {}
    assert graphed_steps(model, RunSpec(), SimpleNamespace(device=torch.device("cpu")), 64, environment) is None
    assert environment == {}
    ddp = RunSpec(device="cuda", strategy="ddp", workers=2)
    assert graphed_steps(model, ddp, SimpleNamespace(device=torch.device("cuda:0")), 64, environment) is None
    assert environment == {"cuda_graphs": "not used: strategy ddp: only single-process runs are graphed"}


def test_only_an_indexed_cuda_device_is_made_current(monkeypatch):
    from batchlab.device.current import make_current

    with pytest.raises(ValueError, match="specified index"):  # why: torch refuses "cuda" alone
        torch.cuda.set_device(torch.device("cuda"))
    made = []
    monkeypatch.setattr(torch.cuda, "set_device", made.append)
    for device in ("cuda", "cuda:1", "cpu"):
        make_current(torch.device(device))
    assert made == [torch.device("cuda:1")]


@pytest.mark.parametrize("device_type, batch_size, slice_size, reason", [
    ("cuda", 1, 1, None), ("cuda", 4096, 4096, None),
    ("cuda", 4096, 512, "micro-batches of 512 images: only whole batches are graphed"),
    ("cpu", 64, 64, "CUDA graphs need a CUDA device"),
])
def test_which_inference_measurements_are_graphed(device_type, batch_size, slice_size, reason):
    from batchlab.infer.graphs import decide

    used, why = decide(device_type, batch_size, slice_size)
    assert used == (reason is None) and (reason is None or why == reason), why


def test_only_cuda_measurements_record_cuda_graphs():
    from batchlab.infer.graphs import graphed_forward

    def eager(images):
        return images

    environment: dict = {}
    assert graphed_forward(eager, eager, torch.zeros(4, 1, 8, 8), "fp32", 4, environment) is eager
    assert environment == {}
    on_cuda = SimpleNamespace(device=torch.device("cuda"), shape=(4096, 1, 8, 8))  # no GPU asked: decide() says no
    assert graphed_forward(eager, eager, on_cuda, "fp32", 512, environment) is eager
    assert environment == {"cuda_graphs": "not used: micro-batches of 512 images: only whole batches are graphed"}
