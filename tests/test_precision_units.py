"""bf16 on a CPU without bf16 instructions is emulated (slower than fp32): each run records its
CPU's instructions for its precision, and the report says where a slowdown is the CPU's (issue:
performance, item 2). Automatic micro-batches count activations at the run's precision."""

from __future__ import annotations

import json

import pandas as pd
import torch

from batchlab.device import machine
from batchlab.nn import microbatch, models
from batchlab.nn.placement import place
from batchlab.report.precision import precision_lines


def test_a_cpu_run_records_its_instructions_for_its_precision(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert machine.precision_units("bf16", cpu) == ["avx512_bf16"]
    assert machine.precision_units("fp16", cpu) == []  # no AVX512-FP16: emulated
    assert machine.precision_units("fp32", cpu) is None
    assert machine.precision_units("bf16", torch.device("meta")) is None  # not a CPU: not judged here
    monkeypatch.setattr(machine, "cpu_flags", lambda: set())  # no /proc/cpuinfo: unknown, not "none"
    assert machine.precision_units("bf16", cpu) is None


def test_the_report_says_which_runs_ran_emulated():
    env = lambda units: json.dumps({"precision_units": units})  # noqa: E731
    training = pd.DataFrame({"precision": ["bf16", "bf16", "fp32"], "environment": [env([]), env(["amx_bf16"]), env(None)]})
    inference = pd.DataFrame({"precision": ["bf16", "fp16"], "environment": [env([]), None]})
    lines = precision_lines(training, inference)
    assert len(lines) == 1 and lines[0].startswith("bf16: 2 run(s) on a CPU without bf16 instructions"), lines
    assert precision_lines(training.iloc[1:], pd.DataFrame()) == []
    fp16 = precision_lines(pd.DataFrame({"precision": ["fp16"], "environment": [env([])]}))
    assert len(fp16) == 1 and "AVX512-FP16" in fp16[0] and "BF16" not in fp16[0], fp16  # its own instructions


def test_automatic_slices_hold_twice_the_images_in_bf16():
    model = place(models.build("seed-cnn", input_shape=(1, 28, 28), classes=10), torch.device("cpu"), "fp32")
    sample = torch.randn(1, 1, 28, 28)
    fp32 = microbatch.slice_size(0, 4096, model, sample)
    assert microbatch.slice_size(0, 4096, model, sample, "bf16") in (2 * fp32, 2 * fp32 + 1)  # floor division
    assert microbatch.slice_size(0, 64, model, sample, "bf16") == 64  # never more than the batch


class Tiny(torch.nn.Module):
    """Logits a ten-millionth of the layer's output: the gradients reaching the layer are too."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs * 1e-7


def test_fp16_training_scales_its_loss_so_small_gradients_survive():
    """fp16 weight gradients of a tiny loss underflow to zero without loss scaling; the run's
    scaler (engine.loss_scaler) keeps them, and fp32/bf16 runs get none."""
    from batchlab.train.engine import loss_scaler, train_step

    cpu = torch.device("cpu")
    assert loss_scaler("fp32", cpu) is None and loss_scaler("bf16", cpu) is None
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4), Tiny())
    images, labels = torch.randn(8, 1, 4, 4) * 1e-2, torch.randint(0, 4, (8,))
    before = model[1].weight.detach().clone()

    def moved(scaler) -> bool:
        trained = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4), Tiny())
        trained.load_state_dict(model.state_dict())
        optimizer = torch.optim.SGD(trained.parameters(), lr=1.0)
        train_step(trained, optimizer, images, labels, "fp16", scaler=scaler)
        return not torch.equal(trained[1].weight, before)

    assert not moved(None)  # unscaled: every weight gradient underflowed in fp16
    assert moved(loss_scaler("fp16", cpu))


def test_the_products_of_a_precision_are_timed_against_fp32_without_touching_the_seeded_stream(monkeypatch):
    from batchlab.device import product_speed

    cpu = torch.device("cpu")
    assert product_speed.product_speed("fp32", cpu) is None
    assert product_speed.product_speed("bf16", torch.device("meta")) is None  # not a CPU
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2"})
    assert product_speed.product_speed("bf16", cpu) is None  # emulated: not timed (the report says so already)
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    product_speed._measured_speed.cache_clear()
    speed = product_speed.product_speed("bf16", cpu)
    assert isinstance(speed, float) and speed > 0
    assert torch.equal(torch.rand(3), expected)


def test_the_report_says_where_a_precision_multiplied_slower_than_fp32():
    env = lambda units, speed: json.dumps({"precision_units": units, "precision_product_speed": speed})  # noqa: E731
    training = pd.DataFrame({"precision": ["bf16", "bf16", "bf16", "fp32"],
                             "environment": [env(["avx512_bf16"], 0.59), env(["avx512_bf16"], 0.54),
                                             env(["amx_bf16"], 2.6), env(None, None)]})
    lines = precision_lines(training)
    assert len(lines) == 1 and lines[0].startswith("bf16: 2 run(s) on a CPU whose bf16 matrix products ran at "
                                                   "0.54-0.59x the fp32 rate"), lines
    assert precision_lines(training.iloc[2:]) == []  # AMX: 2.6x faster, nothing to explain
    emulated = pd.DataFrame({"precision": ["bf16"], "environment": [env([], 0.2)]})
    assert precision_lines(emulated)[0].startswith("bf16: 1 run(s) on a CPU without bf16 instructions")  # one line


def test_a_bf16_run_records_how_fast_bf16_multiplies_here(synthetic_dataset):
    import dataclasses

    import batchlab
    from batchlab import RunSpec

    spec = RunSpec(dataset=synthetic_dataset.name, model="mlp", batch_size=32, limit_train=256, threads=1,
                   precision="bf16")
    bf16 = batchlab.run(spec, data_dir=str(synthetic_dataset.directory))
    fp32 = batchlab.run(dataclasses.replace(spec, precision="fp32"), data_dir=str(synthetic_dataset.directory))
    assert bf16.status == fp32.status == "DONE"
    if bf16.environment["precision_units"]:  # this CPU has bf16 instructions: timed
        assert bf16.environment["precision_product_speed"] > 0
    else:  # emulated (or not known): not timed
        assert bf16.environment["precision_product_speed"] is None
    assert fp32.environment["precision_product_speed"] is None
