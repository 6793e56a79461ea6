"""`batchlab advise`: its plan (the budget arithmetic), its recommendation, its resume, its refusals."""

import dataclasses
import json
import sqlite3

import pytest
from typer.testing import CliRunner

from batchlab.cli.app import app
from batchlab.core.errors import SpecError
from batchlab.runner import advise

SIZES = (1000, 100, 500)  # training, validation, test images


def costs(step: float = 0.01, overhead: float = 3.0) -> advise.Costs:
    return advise.Costs({16: step, 32: step * 1.5, 64: step * 2, 128: step * 3}, 1e-5, overhead)


def test_ladder_learning_rates_and_evaluations():
    assert advise.ladder(16, 300) == [16, 32, 64, 128, 256]
    assert advise.ladder(16, 10) == [16]
    assert advise.learning_rates(0.01) == [0.01, 0.00333, 0.03]
    # at most 5 evaluations an epoch, its end included, at every batch size (63 and 8 steps an epoch)
    assert advise.eval_every(16, 1000) == 13 and advise.eval_every(128, 1000) == 2
    assert advise.middle_first([0.1, 0.01, 0.03, 0.003]) == [0.01, 0.003, 0.03, 0.1]
    assert advise.warmup_for(1) == 0.2 and advise.warmup_for(10) == 0.5


def test_the_epochs_planned_fit_the_budget_in_the_worst_case():
    model = costs()
    batches, lrs = [16, 32, 64, 128], [0.01, 0.003, 0.03]
    chosen, grid, epochs = advise.fit_study(batches, lrs, 600.0, model, SIZES, None)
    assert (chosen, grid) == (batches, lrs) and epochs >= 1
    worst = sum(model.run_seconds(b, epochs, SIZES) for b in chosen) * len(grid)
    one_more = sum(model.run_seconds(b, epochs + 1, SIZES) for b in chosen) * len(grid)
    assert worst <= 600 < one_more
    assert advise.fit_study(batches, lrs, 600.0, model, SIZES, max_epochs=2)[2] == 2


def test_a_short_budget_drops_the_smallest_batches_then_an_lr_then_refuses():
    model = costs(step=0.1)  # epochs of 6.3, 4.8, 3.2 and 2.4 s; 3 s a run besides
    batches, lrs = [16, 32, 64, 128], [0.01, 0.003, 0.03]
    assert advise.fit_study(batches, lrs, 100.0, model, SIZES, None) == ([32, 64, 128], lrs, 1)
    assert advise.fit_study(batches, lrs, 60.0, model, SIZES, None) == ([64, 128], lrs, 1)
    assert advise.fit_study(batches, lrs, 35.0, model, SIZES, None) == ([64, 128], [0.01, 0.003], 1)
    with pytest.raises(SpecError, match=r"too small: one run of one epoch takes about 7 s here \(a 25% margin included\), and the smallest "
                                        r"study \(2 batch sizes x 2 learning rates x 1 repeat\(s\)\) about 0.5 min"):
        advise.fit_study(batches, lrs, 20.0, model, SIZES, None)


def test_one_lr_is_the_middle_of_the_grid_and_a_list_in_any_order_is_the_same_study():
    from batchlab.cli.advise_command import base_spec

    spec, batches, lrs = base_spec({"lr": "0.05", "batch_size": "32", "target_accuracy": 0.8})
    assert (spec.lr, spec.batch_size, batches, lrs) == (0.05, 32, None, None)
    assert (spec.val_split, spec.lr_scaling, spec.gns) == (0.1, "sqrt", True)  # advise's own defaults
    one = base_spec({"lr": "0.1,0.01", "target_accuracy": 0.8})
    other = base_spec({"lr": "0.01,0.1", "target_accuracy": 0.8})
    assert one == other and one[2] == [0.01, 0.1]
    assert advise.plan_key(one[0], 5, None, one[2], 1, None, "m") == advise.plan_key(other[0], 5, None, other[2], 1,
                                                                                      None, "m")


def test_the_recommendation_prefers_the_pair_whose_repeats_all_reached_the_target():
    import pandas as pd

    from batchlab.report.advice import best_of

    rows = pd.DataFrame({"batch_size": [32, 64], "lr": [0.01, 0.01], "n": [3, 3], "target_reached": [1, 3],
                         "time_to_target_seconds": [5.0, 6.0], "best_accuracy": [0.9, 0.9]})
    assert best_of(rows, rows["target_reached"] > 0) == 1


def test_widening_adds_one_grid_step_beyond_an_edge_within_the_budget():
    from batchlab import RunSpec

    runs = [RunSpec(batch_size=b, lr=lr, epochs=2, target_accuracy=0.5, stop_at_target=True)
            for b in (16, 32) for lr in (0.01, 0.03)]
    plan = advise.Plan("k", "m", [dataclasses.asdict(r) for r in runs], [r.key for r in runs], [16, 32],
                       [0.01, 0.03], 2, 1, 0.5, 1.0, {}, dataclasses.asdict(costs(step=0.1)), SIZES)
    one_run = plan.worst_case_seconds(runs[0])
    added = advise.widen(plan, {32: (0.03, "highest"), 16: (0.01, "lowest")}, one_run * 1.5)
    assert [(spec.batch_size, spec.lr) for spec in added] == [(32, 0.09)]  # the second does not fit
    assert plan.run_keys[-1] == added[0].key and len(plan.runs) == 5
    assert advise.widen(plan, {32: (0.03, "highest")}, 1e6) == []  # already tried


def run(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["advise", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def test_advise_recommends_the_fastest_pair_stores_its_plan_and_resumes(synthetic_folder, tmp_path):
    db = tmp_path / "advice.db"
    args = ["--dataset", f"folder:{synthetic_folder}", "--model", "mlp", "--limit-train", "1000",
            "--target-accuracy", "0.3", "--budget-minutes", "4", "--lr", "0.01,0.1", "--format", "json", "--db", db]
    code, out, said = run(*args)
    assert code == 0, said
    found = json.loads(out)
    assert found["plan"]["batches"] == [16, 32] and found["plan"]["lrs"] == [0.01, 0.1]
    # A best LR at the grid's edge (with 2 LRs, always) gets runs one step (x3) beyond it, twice at most.
    assert "the best LR sits at the grid's edge: trying beyond it" in said
    tried = {(row["batch_size"], row["lr"]) for row in found["rows"]}
    assert {(16, 0.01), (16, 0.1), (32, 0.01), (32, 0.1)} < tried
    assert {lr for _, lr in tried} <= {0.01, 0.1, 0.3, 0.9, 0.00333, 0.00111}
    assert found["runs_done"] == len(tried) <= 8 and found["runs_not_started"] == 0
    reached = [row for row in found["rows"] if row["target_reached"]]
    assert reached, "the target 0.3 is reached by mlp on the synthetic data"
    fastest = min(reached, key=lambda row: row["time_to_target_seconds"])
    best = found["recommended"]
    assert (best["batch_size"], best["lr"]) == (fastest["batch_size"], fastest["lr"])
    assert best["wall_to_target_seconds"] > best["time_to_target_seconds"] > 0
    assert found["reached_target"] and found["max_batch_size"] >= 32
    assert set(found["regime_by_batch"]) == {"16", "32"}
    assert "probing batch sizes from 16" in said and "plan: batch sizes 16, 32 x LRs 0.01, 0.1" in said
    with sqlite3.connect(db) as con:
        statuses = [row[0] for row in con.execute("SELECT status FROM runs")]
        stopped = con.execute("SELECT stop_at_target, gns FROM runs").fetchall()
        plans = con.execute("SELECT COUNT(*) FROM advice_plans").fetchone()[0]
    assert statuses == ["DONE"] * len(tried) and set(stopped) == {(1, 1)} and plans == 1
    # The same command again: the stored plan (grown), its runs finished, the same advice.
    code, again, said = run(*args, "--no-widen")
    assert code == 0 and "resuming the study" in said and f"{len(tried)} run(s) already finished" in said
    assert json.loads(again)["recommended"] == best
    # The HTML report has the advice.
    page = tmp_path / "report.html"
    ran = CliRunner().invoke(app, ["report", "--db", str(db), "--html", str(page)])
    assert ran.exit_code == 0, ran.output
    text = page.read_text()
    assert "<h2>Advice" in text and "★ recommended" in text


def test_a_target_never_reached_recommends_on_accuracy_and_fails_only_when_strict(synthetic_folder, tmp_path):
    args = ["--dataset", f"folder:{synthetic_folder}", "--model", "mlp", "--limit-train", "500", "--batch-size",
            "32,64", "--lr", "0.01,0.05", "--max-epochs", "1", "--no-widen", "--target-accuracy", "1.0", "--budget-minutes", "3",
            "--db", tmp_path / "a.db"]
    code, out, _ = run(*args)
    assert code == 0
    assert "no run reached 1 within the budget: recommended on the best accuracy reached" in out
    code, out, said = run(*args, "--strict")
    assert code == 1 and "--strict: no run reached the target 1" in said


@pytest.mark.parametrize("args, message", [
    (["--budget-minutes", "5"], "advise needs --target-accuracy"),
    (["--target-accuracy", "1.5", "--budget-minutes", "5"], "advise needs --target-accuracy, a fraction in (0, 1]"),
    (["--target-accuracy", "0.8"], "advise needs --budget-minutes"),
    (["--target-accuracy", "0.8", "--budget-minutes", "5", "--epochs", "3"], "advise plans --epochs itself"),
    (["--target-accuracy", "0.8", "--budget-minutes", "5", "--device", "cpu,cuda"],
     "advise takes one value of --device"),
    (["--target-accuracy", "0.8", "--budget-minutes", "5", "--strategy", "ddp", "--workers", "2"],
     "advise plans runs of one process"),
    (["--target-accuracy", "0.8", "--budget-minutes", "5", "--base-batch", "0"], "base batch must be at least 1"),
])
def test_bad_input_is_one_line_before_anything_runs(args, message, tmp_path):
    code, out, said = run(*args, "--db", tmp_path / "x.db")
    assert code == 2 and message in said and len(said.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists()


def test_a_budget_spent_on_the_probes_says_so(synthetic_folder, tmp_path):
    code, _, said = run("--dataset", f"folder:{synthetic_folder}", "--model", "mlp", "--limit-train", "1000",
                        "--target-accuracy", "0.5", "--budget-minutes", "0.01", "--db", tmp_path / "b.db")
    assert code == 2 and "the budget (1 s) ran out while probing batch sizes" in said


def test_the_budget_clock_starts_runs_whose_worst_case_fits_and_says_at_most_how_long_is_left():
    from batchlab import RunSpec

    specs = [RunSpec(batch_size=batch, epochs=2, target_accuracy=0.5, stop_at_target=True) for batch in (16, 32)]
    model = costs(step=0.1)
    plan = advise.Plan("k", "m", [], [], [16, 32], [0.01], 2, 1, 0.5, 1.0, {}, dataclasses.asdict(model), SIZES)
    worst = [plan.worst_case_seconds(spec) for spec in specs]  # 1.25 x (3 + 2 epochs): 19.5 and 15.8 s
    now = [0.0]
    clock = advise.Budget(40.0, 0.0, plan, specs, clock=lambda: now[0])
    assert clock.at_most_left() == pytest.approx(sum(worst))
    assert clock.may_start(specs[0])
    now[0] = 10.0  # the first run 10 s in: at most its rest and the second run's worst case
    assert clock.at_most_left() == pytest.approx(worst[0] - 10 + worst[1])
    now[0] = 26.0  # 14 s left: the second run's worst case does not fit
    assert not clock.may_start(specs[1]) and clock.at_most_left() == 0


def test_a_batch_norm_model_gets_no_gns_in_the_study_and_the_sizes_follow_the_split(synthetic_folder, tmp_path):
    from batchlab import RunSpec

    model_file = tmp_path / "advise_batch_norm.py"
    model_file.write_text("from torch import nn\n"
                          "def factory(input_shape, classes):\n"
                          "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.BatchNorm1d(8), nn.ReLU(),\n"
                          "                         nn.Linear(8, classes))\n")
    base = RunSpec(dataset=f"folder:{synthetic_folder}", model=f"{model_file}:factory", val_split=0.1,
                   limit_train=1000, target_accuracy=0.5)
    sizes, gns_possible = advise.study_inputs(base, None)
    assert sizes == (1000, 200, 500) and not gns_possible
    assert advise.study_inputs(dataclasses.replace(base, model="mlp"), None)[1]
