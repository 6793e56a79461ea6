"""Learning-rate scaling, warm-up and schedules (--lr-scaling, --base-batch, --warmup-epochs,
--schedule): the LR each run trains at, step by step, and where it is recorded."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import batchlab
from batchlab import RunSpec
from batchlab.cli.app import app
from batchlab.core.errors import SpecError
from batchlab.train.engine import make_scheduler
from batchlab.train.schedule import lr_scheduler


@pytest.mark.parametrize("fields, expected", [
    ({"lr": 0.1, "batch_size": 256}, 0.1),  # no scaling: the LR given
    ({"lr": 0.1, "batch_size": 256, "lr_scaling": "linear", "base_batch": 64}, 0.4),
    ({"lr": 0.1, "batch_size": 256, "lr_scaling": "sqrt", "base_batch": 64}, 0.2),
    ({"lr": 0.1, "batch_size": 16, "lr_scaling": "linear", "base_batch": 64}, 0.025),
    # ddp: one update averages over all ranks' batches, the global batch
    ({"lr": 0.1, "batch_size": 64, "lr_scaling": "linear", "base_batch": 64, "strategy": "ddp", "workers": 4}, 0.4),
    # hogwild: every update is one worker's own batch
    ({"lr": 0.1, "batch_size": 64, "lr_scaling": "linear", "base_batch": 64, "strategy": "hogwild", "workers": 4}, 0.1),
])
def test_effective_lr_scales_to_the_batch_one_update_averages_over(fields, expected):
    assert RunSpec(**fields).effective_lr == pytest.approx(expected)


def learning_rates(spec: RunSpec, steps_per_epoch: int) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=spec.effective_lr)
    scheduler = lr_scheduler(optimizer, spec, steps_per_epoch)
    rates = []
    for _ in range(spec.epochs * steps_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler:
            scheduler.step()
    return rates


def test_warm_up_ramps_linearly_then_each_schedule_runs_its_course():
    warm = learning_rates(RunSpec(lr=1.0, epochs=4, warmup_epochs=1), 5)
    assert warm[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and warm[5:] == pytest.approx([1.0] * 15)
    cosine = learning_rates(RunSpec(lr=1.0, epochs=4, warmup_epochs=1, schedule="cosine"), 5)
    assert cosine[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(cosine[5:], cosine[6:])) and cosine[-1] < 0.02  # down towards 0
    step = learning_rates(RunSpec(lr=1.0, epochs=4, schedule="step"), 5)  # 20 steps: x0.1 at 10, x0.01 at 15
    assert step == pytest.approx([1.0] * 10 + [0.1] * 5 + [0.01] * 5)
    assert lr_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), RunSpec(epochs=3), 5) is None


def test_each_process_schedules_over_its_own_steps():
    # 1,000 images, batch 100: single takes 10 steps an epoch; ddp x2 ranks 5 (global batches of 200);
    # hogwild x2 workers 5 each (shares of 500).
    parameter = torch.nn.Parameter(torch.zeros(1))
    for strategy, workers, steps in (("single", 1, 10), ("ddp", 2, 5), ("hogwild", 2, 5)):
        spec = RunSpec(batch_size=100, epochs=2, warmup_epochs=1, strategy=strategy, workers=workers, lr=1.0)
        optimizer = torch.optim.SGD([parameter], lr=1.0)
        scheduler = make_scheduler(spec, optimizer, 1000, rank=workers - 1)
        rates = []
        for _ in range(steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert rates == pytest.approx([(k + 1) / steps for k in range(steps)]), strategy


def test_a_scaled_warmed_up_run_trains_and_records_its_lr(synthetic_dataset):
    base = dict(dataset=synthetic_dataset.name, model="mlp", batch_size=100, epochs=2, limit_train=1000, threads=1)
    plain = batchlab.run(RunSpec(**base), data_dir=str(synthetic_dataset.directory))
    scaled = batchlab.run(RunSpec(**base, lr_scaling="linear", base_batch=25, warmup_epochs=1, schedule="cosine"),
                          data_dir=str(synthetic_dataset.directory))
    assert plain.effective_lr == pytest.approx(0.01) and scaled.effective_lr == pytest.approx(0.04)
    assert scaled.status == "DONE" and scaled.epochs[-1].test_accuracy > 0.3  # chance is 0.1
    assert [e.train_loss for e in scaled.epochs] != [e.train_loss for e in plain.epochs]


@pytest.mark.parametrize("fields, message", [
    ({"base_batch": 0}, "base batch must be at least 1, got 0"),
    ({"warmup_epochs": 2, "epochs": 2}, "a warm-up of 2 epochs does not end within the run's 2 epoch"),
    ({"warmup_epochs": -1}, "warm-up epochs must be at least 0"),
    ({"lr_scaling": "cubic"}, "unknown lr scaling 'cubic'"),
    ({"schedule": "exp"}, "unknown schedule 'exp'"),
])
def test_bad_lr_settings_are_one_line_errors(fields, message):
    with pytest.raises(SpecError, match=message) as error:
        RunSpec(**fields).validated()
    assert "\n" not in str(error.value)


def test_report_rows_carry_lr_scaling_and_effective_lr(synthetic_folder, tmp_path):
    db = tmp_path / "lr.db"

    def cli(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    cli("sweep", "--dataset", f"folder:{synthetic_folder}", "--model", "mlp", "--batch-size", "32,128", "--epochs", "1",
        "--limit-train", "256", "--lr", "0.01", "--lr-scaling", "sqrt", "--base-batch", "32", "--db", db)
    rows = json.loads(cli("report", "--db", db, "--format", "json").stdout)
    assert {row["batch_size"]: (row["lr_scaling"], row["effective_lr"]) for row in rows} == {
        32: ("sqrt", pytest.approx(0.01)), 128: ("sqrt", pytest.approx(0.02))}
    table = cli("report", "--db", db).stdout
    assert "effective lr" in table and "0.02" in table
    assert math.isclose(json.loads(cli("report", "--db", db, "--runs", "--format", "json").stdout)[1]["effective_lr"],
                        0.02)


def test_the_tuned_view_picks_each_batch_sizes_best_lr_and_flags_the_grid_edge(synthetic_folder, tmp_path):
    from batchlab.report.training import aggregate, load_runs
    from batchlab.report.tuning import tuned

    db = tmp_path / "tune.db"
    result = CliRunner().invoke(app, [
        "sweep", "--dataset", f"folder:{synthetic_folder}", "--model", "mlp", "--batch-size", "16,128",
        "--lr", "0.001,0.03,1000", "--optimizer", "sgd", "--epochs", "1", "--limit-train", "512",
        "--val-split", "0.2", "--db", str(db)])
    assert result.exit_code == 0, result.output  # lr 1000 diverges: a result, not a failure
    rows = aggregate(load_runs(db))
    best = tuned(rows)
    assert sorted(best["batch_size"]) == [16, 128]
    for _, row in best.iterrows():
        group = rows[(rows["batch_size"] == row["batch_size"]) & rows["val_accuracy"].notna()]
        assert row["val_accuracy"] == group["val_accuracy"].max()  # the best validation result of its batch size
        assert row["lrs_tried"] == "0.001, 0.03, 1000" and row["tuned_on"] == "validation"
        assert row["lr_at_edge"] == ("lowest" if row["lr"] == 0.001 else "highest" if row["lr"] == 1000 else None)
    assert 1000 not in set(best["lr"])  # diverged: tried, never best
    shown = CliRunner().invoke(app, ["report", "--db", str(db)], env={"COLUMNS": "200"}).stdout
    assert "tuned: the best learning rate of each configuration" in shown and "0.001, 0.03, 1000" in shown
    rows_json = json.loads(CliRunner().invoke(app, ["report", "--db", str(db), "--tuned", "--format", "json"]).stdout)
    assert len(rows_json) == 2 and all({"lr", "lrs_tried", "lr_at_edge", "effective_lr"} <= set(r) for r in rows_json)
    single = tmp_path / "one.db"
    CliRunner().invoke(app, ["sweep", "--dataset", f"folder:{synthetic_folder}", "--model", "mlp", "--batch-size", "64",
                             "--epochs", "1", "--limit-train", "128", "--db", str(single)])
    assert "nothing to tune" in CliRunner().invoke(app, ["report", "--db", str(single), "--tuned"]).stdout


def test_a_rounded_warm_up_ends_before_the_run_and_coinciding_decays_both_apply():
    # 4 steps, warm-up 0.9 epoch → 3.6 rounds to 4, clamped to 3: the schedule keeps a step.
    assert learning_rates(RunSpec(lr=1.0, epochs=1, warmup_epochs=0.9, schedule="cosine"), 4)[:3] == pytest.approx(
        [1 / 3, 2 / 3, 1.0])
    # 20 steps, warm-up 16: both decays (50%, 75%) fall on the first step after it, and both apply.
    step = learning_rates(RunSpec(lr=1.0, epochs=2, warmup_epochs=1.6, schedule="step"), 10)
    assert step[15:] == pytest.approx([1.0, 1.0, 0.01, 0.01, 0.01])
