"""Every spec field, declared once (spec/fields.py), reaches every place it must: a flag of
`train` and `sweep`, an experiment-file key, a store column, and (unless it is a seed or repeat)
a group key of the report. A new field without a value below fails here first."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest
from typer.testing import CliRunner

from batchlab.cli.app import app
from batchlab.core.records import EpochRecord, RunResult
from batchlab.runner import sweep as sweep_module
from batchlab.runner.sweep import Outcome
from batchlab.spec.experiment import ExperimentSpec
from batchlab.spec.fields import group_keys, settings, user_fields
from batchlab.spec.run import InferSpec, RunSpec

runner = CliRunner()

# A value other than the default for every field the user sets (device: the only one here).
RUN_VALUES = {
    "dataset": None,  # the test's image folder
    "model": "mlp", "batch_size": 8, "epochs": 2, "optimizer": "sgd", "lr": 0.05, "device": "cpu",
    "strategy": "ddp", "workers": 2, "threads": 1, "precision": "bf16", "val_split": 0.2, "limit_train": 30,
    "drop_last": True, "target_accuracy": 0.5, "micro_batch": 4, "image_size": 20, "strict_images": True,
    "input": "loader", "loader_workers": 1, "augment": True,
    "lr_scaling": "sqrt", "base_batch": 16, "warmup_epochs": 0.5, "schedule": "cosine", "eval_every": 2,
    "stop_at_target": False,  # the default, as --no-stop-at-target: it needs --strategy single
    "gns": True,  # measured by ddp from the ranks' gradients
    "nodes": 1,  # the default: more nodes need --executor slurm (tests/test_slurm_executor.py)
    "seed": 3,
}


def test_every_user_field_has_a_test_value():
    assert set(user_fields(RunSpec)) == set(RUN_VALUES)
    assert all(setting.help for _, setting in settings(RunSpec) + settings(InferSpec))


def flags(values: dict) -> list[str]:
    args = []
    for name, value in values.items():
        if isinstance(value, bool):
            args.append(f"--{name.replace('_', '-')}" if value else f"--no-{name.replace('_', '-')}")
        else:
            args += [f"--{name.replace('_', '-')}", str(value)]
    return args


@pytest.fixture
def fake_runs(monkeypatch):
    """Runs "finish" at once with two epochs: this test is about where settings go, not training."""
    def run_in_worker(spec, *args, **kwargs):
        epochs = [EpochRecord(epoch=e, train_loss=1.0, train_accuracy=0.5, val_loss=0.9, val_accuracy=0.6,
                              test_loss=0.8, test_accuracy=0.7, train_seconds=1.0, eval_seconds=0.1, images=24,
                              steps=3) for e in (1, 2)]
        return Outcome("DONE", RunResult(spec=spec, epochs=epochs, parameters=10, wall_seconds=2.5,
                                         time_to_target_seconds=1.0))

    monkeypatch.setattr(sweep_module, "run_in_worker", run_in_worker)


def test_every_field_goes_through_cli_toml_store_and_report(fake_runs, image_folder, tmp_path):
    values = {**RUN_VALUES, "dataset": f"folder:{image_folder}"}
    db = tmp_path / "s.db"

    swept = runner.invoke(app, ["sweep", *flags(values), "--db", str(db)])
    assert swept.exit_code == 0, swept.output
    trained = runner.invoke(app, ["train", *flags(values), "--db", str(db)])  # the same run: its repeat 1
    assert trained.exit_code == 0, trained.output

    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        rows = con.execute("SELECT * FROM runs ORDER BY repeat").fetchall()
    assert [row["repeat"] for row in rows] == [0, 1]
    for name, value in values.items():  # every field is a store column holding what the flag said
        assert rows[0][name] == value, name
    assert rows[1]["seed"] == values["seed"] + 1

    toml = tmp_path / "all.toml"
    toml.write_text("\n".join(f"{name} = {json.dumps(value)}" for name, value in values.items()) + "\n")
    from_file = ExperimentSpec.from_toml(toml).runs()
    assert [spec.key for spec in from_file] == [rows[0]["run_key"]]  # the file's run is the flags' run

    report = runner.invoke(app, ["report", "--db", str(db), "--format", "json"])
    groups = json.loads(report.stdout)
    assert len(groups) == 1 and groups[0]["n"] == 2  # seed and repeat are not group keys
    for key in group_keys(RunSpec):
        expected = "4" if key == "slicing" else values[key]
        assert groups[0][key] == expected, key


def test_infer_flags_are_the_infer_spec_fields():
    result = runner.invoke(app, ["infer", "--help"], env={"COLUMNS": "200"})
    for name in user_fields(InferSpec):
        assert f"--{name.replace('_', '-')}" in result.output, name


def test_each_run_kind_describes_itself_and_round_trips_its_result():
    """The sweep reads a worker's result back through its kind: every field survives JSON."""
    from batchlab.core.records import InferResult
    from batchlab.spec.kinds import INFER, KINDS, TRAIN, kind_of

    train_result = RunResult(spec=RunSpec(batch_size=8), epochs=[EpochRecord(
        epoch=1, train_loss=1.0, train_accuracy=0.5, val_loss=None, val_accuracy=None, test_loss=0.8,
        test_accuracy=0.7, train_seconds=1.0, eval_seconds=0.1, images=24, steps=3)], startup_seconds=0.5)
    infer_result = InferResult(spec=InferSpec(batch_size=4), compute_seconds=[0.1, 0.2], accuracy=0.9)
    for kind, result in ((TRAIN, train_result), (INFER, infer_result)):
        assert KINDS[result.spec.KIND] is kind_of(result.spec) is kind
        assert isinstance(result, kind.result_class) and isinstance(result.spec, kind.spec_class)
        assert kind.result_from_dict(json.loads(json.dumps(dataclasses.asdict(result)))) == result
    assert (TRAIN.table, INFER.table) == ("runs", "inference")
