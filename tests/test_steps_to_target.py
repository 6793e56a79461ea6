"""Evaluation every N steps and steps/images/time to target (--eval-every, --target-accuracy)."""

import sqlite3

import pytest

import batchlab
from batchlab import RunSpec
from batchlab.core.errors import SpecError


def test_evaluations_every_n_steps_find_the_target_sooner_and_stay_outside_train_seconds(synthetic_dataset):
    base = dict(dataset=synthetic_dataset.name, model="mlp", batch_size=50, epochs=2, limit_train=1000, threads=1,
                val_split=0.1, target_accuracy=0.5)
    per_epoch = batchlab.run(RunSpec(**base), data_dir=str(synthetic_dataset.directory))
    every = batchlab.run(RunSpec(**base, eval_every=4), data_dir=str(synthetic_dataset.directory))
    # 20 steps an epoch: evaluations at 4, 8, 12, 16, then the epoch's own at 20, and so on.
    assert [e.step for e in per_epoch.evaluations] == [20, 40]
    assert [e.step for e in every.evaluations] == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    assert [e.images for e in every.evaluations] == [step * 50 for step in range(4, 41, 4)]
    seconds = [e.train_seconds for e in every.evaluations]
    assert seconds == sorted(seconds) and seconds[-1] == pytest.approx(every.train_seconds)
    assert every.evaluations[4].train_seconds == pytest.approx(every.epochs[0].train_seconds)
    assert every.epochs[0].eval_seconds >= sum(e.eval_seconds for e in every.evaluations[:5]) * 0.999
    # The same training (evaluation does not change it), seen more often.
    assert [e.train_loss for e in every.epochs] == [e.train_loss for e in per_epoch.epochs]
    assert every.evaluations[4].accuracy == per_epoch.evaluations[0].accuracy
    first = next(e for e in every.evaluations if e.accuracy >= 0.5)
    assert (every.steps_to_target, every.images_to_target) == (first.step, first.images)
    assert every.time_to_target_seconds == first.train_seconds
    assert every.steps_to_target <= per_epoch.steps_to_target
    assert every.environment["evaluated_on"] == "validation"


def test_ddp_evaluates_at_the_same_steps_and_counts_every_ranks_images(synthetic_folder):
    result = batchlab.run(RunSpec(dataset=f"folder:{synthetic_folder}", model="mlp", batch_size=25, epochs=1,
                                  limit_train=400, strategy="ddp", workers=2, threads=1, eval_every=3))
    # global batches of 50: 8 steps; evaluations after 3 and 6 steps, then the epoch's own
    assert [(e.step, e.images) for e in result.evaluations] == [(3, 150), (6, 300), (8, 400)]


def test_stored_evaluations_and_steps_to_target(synthetic_folder, tmp_path):
    from typer.testing import CliRunner

    from batchlab.cli.app import app

    db = tmp_path / "s.db"
    ran = CliRunner().invoke(app, ["sweep", "--dataset", f"folder:{synthetic_folder}", "--model", "mlp",
                                   "--batch-size", "32", "--epochs", "1", "--limit-train", "320", "--eval-every", "2",
                                   "--target-accuracy", "0.2", "--db", str(db)])
    assert ran.exit_code == 0, ran.output
    with sqlite3.connect(db) as con:
        steps = [row[0] for row in con.execute("SELECT step FROM evaluations ORDER BY step")]
        stored = con.execute("SELECT steps_to_target, images_to_target FROM runs").fetchone()
    assert steps == [2, 4, 6, 8, 10]
    assert stored[0] in steps and stored[1] == stored[0] * 32


def test_eval_every_is_refused_for_hogwild_and_below_zero():
    with pytest.raises(SpecError, match="hogwild workers train without pausing"):
        RunSpec(strategy="hogwild", workers=2, eval_every=10).validated()
    with pytest.raises(SpecError, match="eval-every must be at least 0"):
        RunSpec(eval_every=-1).validated()


def test_a_diverged_run_keeps_no_evaluation_from_after_its_bad_step(synthetic_dataset):
    result = batchlab.run(RunSpec(dataset=synthetic_dataset.name, model="mlp", optimizer="sgd", lr=1e8, batch_size=50,
                                  epochs=1, limit_train=1000, eval_every=1, target_accuracy=0.05),
                          data_dir=str(synthetic_dataset.directory))
    assert result.status == "DIVERGED"
    assert all(e.step < result.diverged_step for e in result.evaluations)
    assert result.steps_to_target is None or result.steps_to_target < result.diverged_step


def test_stop_at_target_ends_the_run_after_the_epoch_that_reached_it(synthetic_dataset):
    base = dict(dataset=synthetic_dataset.name, model="mlp", batch_size=50, epochs=4, limit_train=1000, threads=1,
                val_split=0.1, target_accuracy=0.3, eval_every=4)
    full = batchlab.run(RunSpec(**base), data_dir=str(synthetic_dataset.directory))
    stopped = batchlab.run(RunSpec(**base, stop_at_target=True), data_dir=str(synthetic_dataset.directory))
    reached_in = next(e.epoch for e in full.evaluations if e.accuracy >= 0.3)
    assert reached_in < 4, "the test needs a target reached before the last epoch"
    assert [e.epoch for e in stopped.epochs] == list(range(1, reached_in + 1))
    assert stopped.steps_to_target == full.steps_to_target  # the same training up to there
    assert len(full.epochs) == 4


def test_stop_at_target_needs_a_target_and_one_process():
    with pytest.raises(SpecError, match="needs a --target-accuracy"):
        RunSpec(stop_at_target=True).validated()
    with pytest.raises(SpecError, match="use --strategy single"):
        RunSpec(stop_at_target=True, target_accuracy=0.5, strategy="ddp", workers=2).validated()
