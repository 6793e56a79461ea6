"""Steps to target against batch size: the fit S(B) = S_min (1 + B_noise / B), the regimes, and
where they show (report rows, the lines under the table, the HTML figure)."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from batchlab.cli.app import app
from batchlab.core.records import EpochRecord, RunResult
from batchlab.report.critical_batch import fit, regime, with_critical_batch
from batchlab.spec.run import RunSpec
from batchlab.store.store import Store

S_MIN, B_NOISE = 200.0, 256.0
BATCHES = [16, 32, 64, 128, 256, 512, 1024, 2048]


def model_steps(batch: int) -> float:
    return S_MIN * (1 + B_NOISE / batch)


def test_the_fit_recovers_the_model_and_refuses_what_is_not_its_shape():
    assert fit(BATCHES, [model_steps(b) for b in BATCHES]) == (pytest.approx(S_MIN), pytest.approx(B_NOISE))
    noisy = [model_steps(b) * (1 + 0.05 * (-1) ** i) for i, b in enumerate(BATCHES)]  # ±5%
    s_min, b_noise = fit(BATCHES, noisy)
    assert s_min == pytest.approx(S_MIN, rel=0.1) and b_noise == pytest.approx(B_NOISE, rel=0.15)
    assert fit(BATCHES[:2], [model_steps(b) for b in BATCHES[:2]]) is None  # two points fit anything
    assert fit([16, 64, 256], [100, 200, 400]) is None  # more steps with larger batches: not S(B)


def test_regimes_follow_the_batch_against_the_critical_batch():
    assert [regime(b, B_NOISE) for b in (16, 64, 128, 512, 768, 1024)] == [
        "perfect scaling", "perfect scaling", "diminishing returns", "diminishing returns", "diminishing returns",
        "maximal data parallelism"]


def test_each_batch_size_counts_at_its_best_lr():
    rows = pd.DataFrame([{"model": "mlp", "dataset": "d", "device": "cpu", "batch_size": b, "lr": lr,
                          "steps_to_target": model_steps(b) * (1 if lr == 0.1 else 3)}
                         for b in (32, 128, 512) for lr in (0.01, 0.1)])
    annotated = with_critical_batch(rows)
    assert annotated["b_noise"].tolist() == pytest.approx([B_NOISE] * 6)  # the slow LR does not enter the fit
    assert annotated["regime"].tolist() == ["perfect scaling"] * 2 + ["diminishing returns"] * 4


def test_report_shows_the_critical_batch_and_draws_the_fit(tmp_path):
    db = tmp_path / "science.db"
    with Store(db) as store:
        store.record_machine("m1", {"hostname": "desk"})
        for batch in BATCHES:
            for lr in (0.01, 0.1):
                spec = RunSpec(model="mlp", batch_size=batch, lr=lr, epochs=1, target_accuracy=0.9, val_split=0.1)
                steps = round(model_steps(batch) * (1 if lr == 0.1 else 2))
                epoch = EpochRecord(epoch=1, train_loss=0.3, train_accuracy=0.9, val_loss=0.3, val_accuracy=0.92,
                                    test_loss=0.3, test_accuracy=0.91, train_seconds=1.0, eval_seconds=0.1,
                                    images=steps * batch, steps=steps)
                store.finish(store.start(spec, "m1"), RunResult(
                    spec=spec, epochs=[epoch], steps_to_target=steps, images_to_target=steps * batch,
                    time_to_target_seconds=0.5, input_shape="1x28x28"))
    rows = json.loads(CliRunner().invoke(app, ["report", "--db", str(db), "--format", "json"]).stdout)
    assert [row["b_noise"] for row in rows] == pytest.approx([B_NOISE] * len(rows), rel=0.01)
    assert {row["batch_size"]: row["regime"] for row in rows}[2048] == "maximal data parallelism"
    table = CliRunner().invoke(app, ["report", "--db", str(db)], env={"COLUMNS": "220"}).stdout
    assert "critical batch size B_noise ≈ 256" in table and "perfect scaling" in table
    page = tmp_path / "r.html"
    assert CliRunner().invoke(app, ["report", "--db", str(db), "--html", str(page)]).exit_code == 0
    text = page.read_text()
    assert '<figure id="steps_to_target">' in text and "B_noise ≈ 256" in text


def test_ddp_is_fitted_on_the_global_batch():
    rows = pd.DataFrame([{"model": "mlp", "dataset": "d", "device": "cpu", "strategy": "ddp", "workers": 2,
                          "batch_size": b // 2, "lr": 0.1, "steps_to_target": model_steps(b)} for b in (32, 128, 512)])
    assert with_critical_batch(rows)["b_noise"].tolist() == pytest.approx([B_NOISE] * 3)
