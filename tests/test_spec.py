import dataclasses

import pytest

from batchlab.core.errors import SpecError
from batchlab.spec.experiment import ExperimentSpec, parse_list
from batchlab.spec.run import RunSpec


def test_key_is_stable_and_covers_every_field():
    spec = RunSpec(batch_size=64)
    assert spec.key == RunSpec(batch_size=64).key
    for name, value in [("batch_size", 65), ("repeat", 1), ("seed", 7), ("lr", 0.02), ("device", "cuda")]:
        assert dataclasses.replace(spec, **{name: value}).key != spec.key, name


@pytest.mark.parametrize("changes, message", [
    ({"batch_size": 0}, "batch size must be at least 1, got 0"),
    ({"seed": 2**63}, "seed = 9223372036854775808 is out of range"),  # would fail the store's first write
    ({"lr": float("inf")}, "lr must be a finite number, got inf"),
    ({"warmup_epochs": float("nan")}, "warmup_epochs must be a finite number"),
    ({"model": "resnet9000"}, "unknown model 'resnet9000'"),
    ({"dataset": "cifar"}, "unknown dataset 'cifar'"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"device": "cuda:x"}, "unknown device 'cuda:x'"),
    ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
    ({"val_split": 1.0}, "val split must be in [0, 1)"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"precision": "tf32"}, "tf32 needs an NVIDIA GPU of compute capability 8.0 or newer (Ampere); this run's "
                            "device is cpu"),
    ({"precision": "tf32", "device": "mps"}, "tf32 needs an NVIDIA GPU"),
])
def test_validation_names_the_problem(changes, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        RunSpec(**changes).validated()


def test_threads_zero_resolves_to_available_cores():
    assert RunSpec(threads=0).validated().threads >= 1
    assert RunSpec(threads=3).validated().threads == 3


def test_grid_expands_product_with_repeats_and_seeds(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text('name = "demo"\nrepeats = 2\nbatch_size = [16, 64]\nlr = 1\nmodel = "mlp"\n')
    experiment = ExperimentSpec.from_toml(path)
    runs = experiment.runs()
    assert experiment.name == "demo"
    assert [(r.batch_size, r.repeat, r.seed) for r in runs] == [(16, 0, 0), (16, 1, 1), (64, 0, 0), (64, 1, 1)]
    assert all(r.lr == 1.0 and r.model == "mlp" for r in runs)
    assert len({r.key for r in runs}) == 4


def test_experiment_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("batch_size = [16,\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        ExperimentSpec.from_toml(bad)
    bad.write_text("batch_sizes = [16]\n")
    with pytest.raises(SpecError, match="unknown experiment setting.*batch_sizes"):
        ExperimentSpec.from_toml(bad)
    bad.write_text('batch_size = ["big"]\n')
    with pytest.raises(SpecError, match="batch_size must be int"):
        ExperimentSpec.from_toml(bad).runs()
    with pytest.raises(SpecError, match="not found"):
        ExperimentSpec.from_toml(tmp_path / "missing.toml")


def test_parse_list():
    assert parse_list("16, 64,256", int, "batch_size") == [16, 64, 256]
    with pytest.raises(SpecError, match="--batch-size: cannot read 'x' as int"):
        parse_list("x", int, "batch_size")


def test_shipped_experiments_expand(pytestconfig):
    root = pytestconfig.rootpath / "experiments"
    files = sorted(root.glob("*.toml"))
    assert {f.name for f in files} >= {"small-batches.toml", "batch-size-cpu-gpu.toml"}
    for path in files:
        assert ExperimentSpec.from_toml(path).runs(), path


def test_an_experiment_of_inference_only_trains_nothing(tmp_path):
    from batchlab.spec.experiment import ExperimentSpec

    path = tmp_path / "infer.toml"
    path.write_text('name = "latency"\n[infer]\nmodel = "mlp"\nbatch_size = [1, 8]\n')
    experiment = ExperimentSpec.from_toml(path)
    assert experiment.runs() == [] and len(experiment.inferences()) == 2
