"""Inference as frozen oneDNN graphs on the CPU (infer/cpu_graph.py): used only where they give the
eager pass's logits, and every other case runs eagerly with the reason recorded."""

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from batchlab.cli.app import app
from batchlab.data.device import Normalize, channel_stats
from batchlab.infer import cpu_graph
from batchlab.infer.measure import measure, tiled
from batchlab.nn import layers, microbatch, models
from batchlab.nn.folding import fold_batch_norms
from batchlab.nn.placement import place
from batchlab.report.inference import graph_lines, timed_pass
from batchlab.spec.run import InferSpec

# The fuser is part of PyTorch's oneDNN build, as on every x86 CPU build.
pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")


def prepared(name: str, dataset, batch: int):
    """A model, its normalisation, a uint8 batch and its slice size, as `batchlab infer` sets them up."""
    torch.manual_seed(0)
    model = place(models.build(name, input_shape=dataset.input_shape, classes=dataset.classes).eval(),
                  torch.device("cpu"), "fp32").eval()
    normalize = Normalize(*channel_stats(dataset.train_images), "cpu")
    images, _ = tiled(dataset.test_images, dataset.test_labels, batch)
    slice_size = microbatch.slice_size(0, batch, model, normalize(images[:1]), "fp32")
    return model, normalize, images, slice_size


def eager_pass(model, normalize, slice_size, precision="fp32"):
    """batchlab's eager pass as measure() makes it: slice by slice, in inference mode, under autocast for bf16."""
    def eager(images):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            return torch.cat([model(normalize(images[a:b])) for a, b in microbatch.bounds(len(images), slice_size)])
    return eager


@pytest.fixture
def synthetic(synthetic_dataset):
    from batchlab.data import registry

    return registry.load(synthetic_dataset.name, str(synthetic_dataset.directory), 0, False)


@pytest.mark.parametrize("name", ["seed-cnn", "keras-cnn", "mlp"])
def test_graphs_give_eager_logits_in_slices_of_two_sizes(synthetic, name):
    batch = 7
    model, normalize, images, _ = prepared(name, synthetic, batch)
    slice_size = 3  # slices of 2, 2 and 3 images: two graphs
    eager = eager_pass(model, normalize, slice_size)
    own_layers = [type(module) for module in model.modules()]
    notes = {}
    forward = cpu_graph.fused_forward(eager, model, normalize, images, slice_size, "fp32", notes)
    assert notes["onednn_graph"] is True and len(notes["onednn_graph_fused"]) == 2 and min(notes["onednn_graph_fused"]) > 0
    assert isinstance(forward, cpu_graph.GraphForward) and sorted(forward.graphs) == [2, 3]
    expected = eager(images)
    assert forward(images).shape == expected.shape == (batch, 10)
    assert torch.allclose(forward(images), expected, rtol=1e-4, atol=1e-5)
    # The drop-in layers were traced as their torch.nn parents, and are batchlab's again.
    assert [type(module) for module in model.modules()] == own_layers
    assert any(type(module).__module__ == layers.__name__ for module in model.modules())


def test_a_graph_that_differs_from_eager_is_not_used(synthetic):
    model, normalize, images, slice_size = prepared("seed-cnn", synthetic, 4)
    eager = eager_pass(model, normalize, slice_size)

    def wrong(images):
        return eager(images) + 0.5

    notes = {}
    assert cpu_graph.fused_forward(wrong, model, normalize, images, slice_size, "fp32", notes) is wrong
    assert notes["onednn_graph"].startswith("not used: its logits differ from eager's by 0.5")


def test_the_fusers_own_mistake_is_caught(synthetic):
    """Why the check exists: on this PyTorch the fuser drops add's alpha, so seed-cnn behind
    Normalize's one-op form, torch.add(shift, uint8 images, alpha=scale), comes out of a graph
    wrong, without an error. (cpu_graph writes the normalisation in ops the fuser gets right.)"""
    model, normalize, images, _ = prepared("seed-cnn", synthetic, 4)

    class OneOpNormalization(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model(normalize(images))

    with cpu_graph.torch_nn_layers(model), cpu_graph.onednn_fusion():
        module = OneOpNormalization(model)
        with torch.no_grad():
            reference = module(images)
        graph, fused = cpu_graph.build_one(module, images)
        with torch.no_grad():
            logits = graph(images)
    assert fused > 0
    with pytest.raises(cpu_graph.FrozenGraph, match="its logits differ from eager's"):
        cpu_graph.compare(logits, reference, cpu_graph.MAX_DIFFERENCE["fp32"])


def test_bf16_graphs_hold_bf16_weights_and_give_autocasts_logits(synthetic):
    model, normalize, images, slice_size = prepared("seed-cnn", synthetic, 6)
    eager = eager_pass(model, normalize, slice_size, "bf16")
    notes = {}
    forward = cpu_graph.fused_forward(eager, model, normalize, images, slice_size, "bf16", notes)
    assert notes["onednn_graph"] is True and isinstance(forward, cpu_graph.GraphForward)
    logits, expected = forward(images), eager(images)
    assert logits.dtype == expected.dtype == torch.bfloat16
    assert float((logits.float() - expected.float()).abs().max()) <= 1e-2 * float(expected.float().abs().max())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the run's own model keeps fp32 weights
    # bf16 was checked against fp32's logits, beside autocast's distance from them (recorded).
    distances = notes["onednn_graph_bf16"]
    fp32 = eager_pass(model, normalize, slice_size, "fp32")(images)
    assert distances["largest_fp32_logit"] == pytest.approx(float(fp32.abs().max()))
    assert distances["autocast_from_fp32"] == pytest.approx(float((expected.float() - fp32).abs().max()))
    assert 0 < distances["graph_from_fp32"] <= max(1e-2 * distances["largest_fp32_logit"],
                                                   2 * distances["autocast_from_fp32"])


def test_a_bf16_graph_may_round_as_far_from_fp32_as_twice_autocast():
    fp32 = torch.tensor([[1.0, -0.5], [0.25, 0.0]])
    autocast = fp32 + torch.tensor([[0.012, 0.0], [0.0, 0.0]])  # 1.2% of the largest logit off: a deep network
    within = fp32 - torch.tensor([[0.0, 0.02], [0.0, 0.0]])  # further than 1% and than autocast, within twice
    assert cpu_graph.compare_bf16(within, autocast, fp32) == pytest.approx(
        {"graph_from_fp32": 0.02, "autocast_from_fp32": 0.012, "largest_fp32_logit": 1.0}, rel=1e-5)
    # Beyond both twice autocast's distance and 1% of the largest logit: refused, with both distances.
    with pytest.raises(cpu_graph.FrozenGraph, match="its bf16 logits are 0.03 from fp32's, autocast's 0.012"):
        cpu_graph.compare_bf16(fp32 + 0.03, autocast, fp32)
    # Where autocast is exact, 1% of the largest logit is still allowed.
    assert cpu_graph.compare_bf16(fp32 + 0.009, fp32, fp32)["graph_from_fp32"] == pytest.approx(0.009, rel=1e-4)
    for wrong in (fp32 * float("nan"), fp32[:1]):  # NaN, or another shape
        with pytest.raises(cpu_graph.FrozenGraph):
            cpu_graph.compare_bf16(wrong, autocast, fp32)
    # However far autocast is, never beyond 3% of the largest logit: the fuser's wrong normalisation was 7%.
    with pytest.raises(cpu_graph.FrozenGraph, match="its bf16 logits are 0.07 from fp32's, autocast's 0.5"):
        cpu_graph.compare_bf16(fp32 + 0.07, fp32 + 0.5, fp32)
    # An autocast pass that is not finite allows no more than 1%, and is recorded as null.
    with pytest.raises(cpu_graph.FrozenGraph):
        cpu_graph.compare_bf16(fp32 + 0.02, fp32 * float("inf"), fp32)
    assert cpu_graph.compare_bf16(fp32, fp32 * float("nan"), fp32)["autocast_from_fp32"] is None


def test_a_bf16_graph_far_from_fp32_is_not_used(synthetic, monkeypatch):
    """The graph 0.5 from the fp32 logits (here: fp32's shifted), autocast as far: refused, since
    however far autocast is, a graph may be at most 3% of the largest logit away."""
    model, normalize, images, slice_size = prepared("seed-cnn", synthetic, 4)
    autocast = eager_pass(model, normalize, slice_size, "bf16")
    fp32 = cpu_graph.fp32_pass
    monkeypatch.setattr(cpu_graph, "fp32_pass", lambda *args: fp32(*args) + 0.5)
    notes = {}
    assert cpu_graph.fused_forward(autocast, model, normalize, images, slice_size, "bf16", notes) is autocast
    assert notes["onednn_graph"].startswith("not used: its bf16 logits are 0.5")


def test_fp16_runs_eagerly(synthetic):
    model, normalize, images, slice_size = prepared("mlp", synthetic, 4)
    eager = eager_pass(model, normalize, slice_size)
    notes = {}
    assert cpu_graph.fused_forward(eager, model, normalize, images, slice_size, "fp16", notes) is eager
    assert notes == {"onednn_graph": "not used: fp16: only fp32 and bf16 run as oneDNN graphs; fp16 runs eagerly "
                                     "under autocast"}


def test_three_channels_and_a_folded_batch_norm(synthetic):
    """Normalisation per channel ((C, 1, 1) tensors) and a convolution with its batch norm folded in."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(layers.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), layers.MaxPool2d(2),
                                torch.nn.Flatten(), layers.Linear(8 * 15 * 15, 10))
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2.0)
    model, folded, _ = fold_batch_norms(model.eval())
    model = place(model, torch.device("cpu"), "fp32").eval()
    normalize = Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "cpu")
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    eager = eager_pass(model, normalize, 5)
    notes = {}
    forward = cpu_graph.fused_forward(eager, model, normalize, images, 5, "fp32", notes)
    assert folded == 1 and notes["onednn_graph"] is True
    assert torch.allclose(forward(images), eager(images), rtol=1e-4, atol=1e-5)


def test_the_layers_are_batchlabs_again_after_a_failure(synthetic):
    model, _, _, _ = prepared("seed-cnn", synthetic, 1)
    own_layers = [type(module) for module in model.modules()]
    with pytest.raises(ValueError), cpu_graph.torch_nn_layers(model):
        assert type(model[0]) is torch.nn.Conv2d
        raise ValueError
    assert [type(module) for module in model.modules()] == own_layers


BRANCHING_MODEL = '''
import torch
from torch import nn

class Branching(nn.Module):
    """A model whose path depends on its input's values: a trace would freeze one path."""
    def __init__(self, classes):
        super().__init__()
        self.dense = nn.Linear(28 * 28, classes)

    def forward(self, images):
        flat = images.flatten(1)
        if flat.mean() > 0:
            return self.dense(flat)
        return -self.dense(flat)

def build(classes):
    return Branching(classes)
'''


def test_a_model_with_value_dependent_control_flow_runs_eagerly(synthetic_dataset, tmp_path):
    (tmp_path / "branching.py").write_text(BRANCHING_MODEL)
    result = measure(InferSpec(dataset=synthetic_dataset.name, model=f"{tmp_path / 'branching.py'}:build",
                               batch_size=4, threads=1), str(synthetic_dataset.directory))
    assert result.status == "DONE"
    assert result.environment["onednn_graph"].startswith("not used: tracing warned: Converting a tensor to a Python")


def test_measure_records_the_graph_and_graph_off_runs_eagerly(synthetic_dataset):
    data_dir = str(synthetic_dataset.directory)
    graphed = measure(InferSpec(dataset=synthetic_dataset.name, model="seed-cnn", batch_size=8, threads=1), data_dir)
    eager = measure(InferSpec(dataset=synthetic_dataset.name, model="seed-cnn", batch_size=8, threads=1, graph="off"),
                    data_dir)
    assert graphed.environment["onednn_graph"] is True and graphed.environment["onednn_graph_fused"][0] > 0
    assert "onednn_graph" not in eager.environment
    assert InferSpec(graph="off").key != InferSpec().key and "graph=off" in InferSpec(graph="off").label()


def test_an_unknown_graph_setting_is_refused_in_one_line():
    result = CliRunner().invoke(app, ["infer", "--graph", "always"])
    assert result.exit_code != 0
    assert "unknown graph setting 'always'; choose one of auto, off" in result.output


def test_report_says_which_measurements_timed_a_graph_and_why_not():
    environments = [{"onednn_graph": True, "onednn_graph_fused": [7], "onednn_graph_seconds": 0.05},
                    {"onednn_graph": True, "onednn_graph_fused": [7, 7], "onednn_graph_seconds": 0.2},
                    {"onednn_graph": "not used: fp16: only fp32 and bf16 run as oneDNN graphs"},
                    {}]  # --graph off: not counted
    rows = pd.DataFrame({"model": ["seed-cnn"] * 4, "environment": [json.dumps(e) for e in environments]})
    assert graph_lines(rows) == [
        "seed-cnn: 2 of 3 measurement(s) timed oneDNN graphs of the forward pass (7 fused partitions a graph; built and "
        "checked against eager in 0.05–0.20 s, not timed); the others ran eagerly: fp16: only fp32 and bf16 run as "
        "oneDNN graphs."]
    assert graph_lines(rows.iloc[3:]) == []
    bf16 = {"onednn_graph": True, "onednn_graph_fused": [7], "onednn_graph_seconds": 0.3,
            "onednn_graph_bf16": {"graph_from_fp32": 0.011, "autocast_from_fp32": 0.0105, "largest_fp32_logit": 0.55}}
    assert graph_lines(pd.DataFrame({"model": ["resnet"], "environment": [json.dumps(bf16)]})) == [
        "resnet: 1 of 1 measurement(s) timed oneDNN graphs of the forward pass (7 fused partitions a graph; built and "
        "checked against eager in 0.30–0.30 s, not timed; bf16 logits up to 2.0% of the largest from fp32's "
        "(autocast's eager pass: 1.9%))."]


def test_each_measurement_says_what_it_timed():
    assert timed_pass("DONE", json.dumps({"onednn_graph": True})) == "oneDNN graph"
    assert timed_pass("DONE", json.dumps({"cuda_graphs": True})) == "CUDA graph"
    # A graph that was not used, --graph off, and rows stored before graphs existed: the eager pass.
    assert timed_pass("DONE", json.dumps({"onednn_graph": "not used: tracing warned"})) == "eager"
    assert timed_pass("DONE", json.dumps({})) == "eager" == timed_pass("DONE", None)
    assert timed_pass("FAILED", json.dumps({"onednn_graph": True})) is None  # nothing was timed
