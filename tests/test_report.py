import dataclasses
import math

import pytest

from batchlab.core.records import EpochRecord, RunResult
from batchlab.report.training import aggregate, load_runs
from batchlab.spec.run import RunSpec
from batchlab.store.store import Store


def store_run(store, spec, train_seconds, images=1000, accuracy=0.8):
    epochs = [EpochRecord(epoch=1, train_loss=1.0, train_accuracy=0.5, val_loss=None, val_accuracy=None,
                          test_loss=0.5, test_accuracy=accuracy, train_seconds=train_seconds, eval_seconds=0.1,
                          images=images, steps=10)]
    store.finish(store.start(spec, "m1"), RunResult(spec=spec, epochs=epochs))


def test_groups_repeats_with_median_and_spread(tmp_path):
    db = tmp_path / "s.db"
    base = RunSpec(model="mlp", batch_size=64, threads=2)
    with Store(db) as store:
        store.record_machine("m1", {"hostname": "box"})
        for repeat, seconds in enumerate([1.0, 2.0, 4.0]):
            store_run(store, dataclasses.replace(base, repeat=repeat, seed=repeat), seconds, accuracy=0.7 + repeat / 10)
        failed = dataclasses.replace(base, repeat=3, seed=3)
        store.fail(store.start(failed, "m1"), "OOM", "out of memory")
    rows = aggregate(load_runs(db))
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row["n"] == 3 and row["runs"] == 4 and row["status"] in ("DONE 3, OOM 1", "OOM 1, DONE 3")
    assert row["epoch_train_seconds"] == 2.0
    assert (row["epoch_train_seconds_min"], row["epoch_train_seconds_max"]) == (1.0, 4.0)
    assert row["images_per_second"] == 500.0 and row["images_per_second_max"] == 1000.0
    assert row["test_accuracy"] == pytest.approx(0.8) and row["machine"] == "box"


def test_speedup_and_efficiency_against_one_worker(tmp_path):
    db = tmp_path / "s.db"
    with Store(db) as store:
        store.record_machine("m1", {"hostname": "box"})
        # thread-scaling shape: the minibatch grows with the parallelism
        store_run(store, RunSpec(model="mlp", strategy="ddp", workers=1, threads=1, batch_size=1), 10.0)
        store_run(store, RunSpec(model="mlp", strategy="ddp", workers=2, threads=1, batch_size=1), 8.0)
        store_run(store, RunSpec(model="mlp", strategy="single", threads=1, batch_size=1), 10.0)
        store_run(store, RunSpec(model="mlp", strategy="single", threads=2, batch_size=2), 4.0)
        store_run(store, RunSpec(model="mlp", strategy="hogwild", workers=2, threads=1, batch_size=1), 5.0)
    rows = aggregate(load_runs(db)).set_index(["strategy", "parallelism"])
    assert rows.loc[("ddp", 1), "speedup"] == 1.0
    assert rows.loc[("ddp", 2), "speedup"] == pytest.approx(10 / 8)
    assert rows.loc[("ddp", 2), "efficiency"] == pytest.approx(10 / 8 / 2)
    assert rows.loc[("single", 2), "speedup"] == pytest.approx(2.5)  # baseline: batch 1 at 1 thread
    assert math.isnan(rows.loc[("hogwild", 2), "speedup"])  # no 1-worker hogwild run: no made-up baseline
    assert rows.loc[("ddp", 2), "global_batch_size"] == 2


def test_table_shows_validation_accuracy_only_when_measured(tmp_path):
    from batchlab.report.columns import TRAINING
    from batchlab.report.terminal import fit

    db = tmp_path / "s.db"
    with Store(db) as store:
        store.record_machine("m1", {"hostname": "box"})
        store_run(store, RunSpec(model="mlp", batch_size=8), 1.0)
    labels = [column.label for column in fit(TRAINING, aggregate(load_runs(db)), 200).columns]
    assert "val acc" not in labels and "test acc" in labels
    with Store(db) as store:
        spec = RunSpec(model="mlp", batch_size=8, val_split=0.25)
        epochs = [EpochRecord(epoch=1, train_loss=1.0, train_accuracy=0.5, val_loss=0.6, val_accuracy=0.77,
                              test_loss=0.5, test_accuracy=0.8, train_seconds=1.0, eval_seconds=0.1, images=100, steps=13)]
        store.finish(store.start(spec, "m1"), RunResult(spec=spec, epochs=epochs))
    layout = fit(TRAINING, aggregate(load_runs(db)), 200)
    column = [c.label for c in layout.columns].index("val acc")
    assert "0.7700" in [row[column] for row in layout.texts]


def test_the_report_says_when_fresh_and_forked_run_processes_are_side_by_side(tmp_path):
    """A fresh Python's wall time includes importing torch, a forked one's does not: a store with
    both says so under the table (and a store of one kind does not)."""
    from typer.testing import CliRunner

    from batchlab.cli.app import app

    def stored(db, kinds):
        with Store(db) as store:
            store.record_machine("m1", {"hostname": "box"})
            for repeat, kind in enumerate(kinds):
                spec = RunSpec(model="mlp", batch_size=64, threads=1, repeat=repeat, seed=repeat)
                epochs = [EpochRecord(epoch=1, train_loss=1.0, train_accuracy=0.5, val_loss=None, val_accuracy=None,
                                      test_loss=0.5, test_accuracy=0.8, train_seconds=1.0, eval_seconds=0.1,
                                      images=1000, steps=10)]
                store.finish(store.start(spec, "m1"), RunResult(spec=spec, epochs=epochs,
                                                                environment={"run_process": kind}))
        return db

    def report(db):
        result = CliRunner().invoke(app, ["report", "--db", str(db)], env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    mixed = report(stored(tmp_path / "mixed.db", ["fresh", "forked", "forked"]))
    assert ("wall seconds: 1 run(s) started in a fresh Python, whose wall time includes importing torch, and 2 "
            "were forked") in mixed
    assert "started in a fresh Python" not in report(stored(tmp_path / "forked.db", ["forked", "forked"]))
