"""Inference: tiling, the statistics derived from raw timings, crossover, OOM, trained weights."""

import json
import re
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

from batchlab.cli.app import app
from batchlab.core.stats import images_per_second, percentiles
from batchlab.data.dataset import Dataset
from batchlab.infer.measure import measure, tiled
from batchlab.report.inference import comparisons, crossover, load_inference
from batchlab.spec.run import InferSpec

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_tiling_gives_exactly_the_requested_batch():
    images = np.arange(10 * 4, dtype=np.uint8).reshape(10, 1, 2, 2)  # (N, C, H, W)
    labels = np.arange(10)
    batch, batch_labels = tiled(images, labels, 25)
    assert batch.shape == (25, 1, 2, 2) and batch_labels.shape == (25,)
    assert batch_labels.tolist() == list(range(10)) * 2 + list(range(5))
    assert bool((batch[10, 0] == batch[0, 0]).all()) and bool((batch[24, 0] == batch[4, 0]).all())


def test_statistics_from_raw_timings():
    seconds = [0.1, 0.2, 0.3, 0.4]
    assert images_per_second(8, seconds) == pytest.approx(8 * 4 / 1.0)
    stats = percentiles(seconds)
    assert stats["p50"] == pytest.approx(0.25) and stats["p99"] == pytest.approx(0.397)


@pytest.mark.parametrize("sizes, slow, fast, expected", [
    ([1, 16, 256, 4096], [100, 900, 1000, 1000], [50, 800, 1500, 3000], 256),
    ([1, 16, 256], [10, 10, 10], [20, 30, 40], 1),       # wins everywhere
    ([1, 16, 256], [10, 10, 10], [20, 30, 5], None),     # loses at the largest batch
    ([4096, 1, 256], [1000, 100, 1000], [3000, 50, 900], 4096),  # order of input does not matter
])
def test_crossover(sizes, slow, fast, expected):
    assert crossover(sizes, slow, fast) == expected


def test_measure_one_configuration(synthetic_dataset):
    result = measure(InferSpec(dataset=synthetic_dataset.name, model="mlp", batch_size=300, threads=1),
                     str(synthetic_dataset.directory))
    assert result.status == "DONE" and result.weights_source == "random" and result.accuracy is None
    assert len(result.compute_seconds) >= 3 and sum(result.compute_seconds) >= 1.0
    assert len(result.overhead_seconds) >= 3 and result.first_call_seconds > 0
    assert not {"cuda_graphs", "cuda_fp32_math"} & set(result.environment)  # CUDA measurements' records only


def test_measure_uses_images_it_is_handed():
    # bench/images.py hands measure() synthetic 3×32×32 images under a spec naming CIFAR-10, whose
    # archive is not there: nothing may be loaded, and the model must see the images' shape.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=40).astype(np.int64)
    handed = Dataset("handed", images[:30], labels[:30], images[30:], labels[30:], 10, "", "", tuple("abcdefghij"))
    result = measure(InferSpec(dataset="cifar10", model="seed-cnn", batch_size=4, threads=1), dataset=handed)
    assert result.status == "DONE" and result.input_shape == "3x32x32" and len(result.compute_seconds) >= 3
    assert result.environment["batch_norms_folded"] == 0


def test_measure_folds_a_user_models_batch_norm():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 3, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 10, size=40).astype(np.int64)
    handed = Dataset("handed", images[:30], labels[:30], images[30:], labels[30:], 10, "", "", tuple("abcdefghij"))
    result = measure(InferSpec(dataset="cifar10", model="test_engine:tiny_resnet", batch_size=4, threads=1),
                     dataset=handed)
    assert result.status == "DONE" and result.environment["batch_norms_folded"] == 7  # each block's


@pytest.mark.slow
def test_cli_stores_raw_timings_and_derives_throughput(image_folder, tmp_path):
    db = tmp_path / "s.db"
    result = invoke("infer", "--model", "mlp", "--batch-size", "16,20000", "--threads", "1,2", "--db", db,
                    "--dataset", f"folder:{image_folder}")
    assert result.exit_code == 0, result.output
    assert "4 run(s) done" in result.output
    # The two configurations compared, the slower one (whichever it was on this machine) the baseline.
    assert re.search(r"cpu t=([12]) fp32 @\S+ vs cpu t=(?!\1)[12] fp32", result.output), result.output
    with sqlite3.connect(db) as con:
        stored = con.execute("SELECT batch_size, threads, compute_seconds FROM inference").fetchall()
    rows = json.loads(invoke("report", "--db", db, "--inference", "--format", "json").stdout)
    assert len(stored) == len(rows) == 4
    for batch, threads, raw in stored:
        timings = json.loads(raw)
        row = next(r for r in rows if r["batch_size"] == batch and r["threads"] == threads)
        assert row["images_per_second"] == pytest.approx(batch * len(timings) / sum(timings))
        assert row["repeats"] == len(timings)
        assert row["latency_p50"] == pytest.approx(float(np.median(timings)))
    found = comparisons(load_inference(db))
    assert {f["other"].split(" @")[0] for f in found} | {f["baseline"].split(" @")[0] for f in found} == {
        "cpu t=1 fp32", "cpu t=2 fp32"}


def test_batch_too_large_for_memory_is_stored_as_oom(image_folder, tmp_path):
    db = tmp_path / "s.db"
    result = invoke("infer", "--model", "seed-cnn", "--batch-size", "8,300000", "--threads", "1", "--micro-batch", "1000000",
                    "--memory-limit", "4", "--db", db, "--dataset", f"folder:{image_folder}")
    assert result.exit_code == 0, result.output
    with sqlite3.connect(db) as con:
        statuses = dict(con.execute("SELECT batch_size, status FROM inference").fetchall())
    assert statuses == {8: "DONE", 300000: "OOM"}
    table = invoke("report", "--db", db, "--inference")
    assert "OOM" in table.output


def test_trained_weights_give_accuracy(synthetic_folder, tmp_path):
    db = tmp_path / "s.db"
    dataset = f"folder:{synthetic_folder}"
    trained = invoke("train", "--model", "mlp", "--save-weights", "--db", db, "--dataset", dataset)
    assert trained.exit_code == 0, trained.output
    result = invoke("infer", "--model", "mlp", "--batch-size", "1000", "--weights", "latest", "--db", db,
                    "--dataset", dataset, "--graph", "auto,off")
    assert result.exit_code == 0, result.output
    rows = json.loads(invoke("report", "--db", db, "--inference", "--format", "json").stdout)
    assert rows[0]["accuracy"] > 0.6 and rows[0]["weights_source"] == rows[0]["weights"] != ""
    # The accuracy is that of the pass timed: the oneDNN graph's (cpu_graph.py) or eager PyTorch's,
    # whose logits agree within 1e-3 of the largest (an argmax near a tie may differ: 1 image of 1,000).
    assert sorted(row["graph"] for row in rows) == ["auto", "off"]
    assert abs(rows[0]["accuracy"] - rows[1]["accuracy"]) <= 0.001
    assert "mlp: 1 of 1 measurement(s) timed oneDNN graphs" in result.output
    with sqlite3.connect(db) as con:
        recorded = dict(con.execute("SELECT graph, json_extract(environment, '$.onednn_graph') FROM inference"))
    assert recorded == {"auto": 1, "off": None}
    # Each row says what it timed, beside the setting that asked for it.
    assert {row["graph"]: row["timed"] for row in rows} == {"auto": "oneDNN graph", "off": "eager"}
    table = invoke("report", "--db", db, "--inference")
    assert re.search(r"┃\s*timed\s*┃", table.output) and re.search(r"│\s*oneDNN graph\s*│", table.output)
    assert re.search(r"│\s*eager\s*│", table.output)
    untrained = invoke("infer", "--model", "keras-cnn", "--weights", "latest", "--db", db)
    assert untrained.exit_code == 2 and "no finished training run of keras-cnn" in untrained.output


@pytest.mark.slow
def test_each_model_gets_its_own_trained_weights(synthetic_folder, tmp_path):
    db = tmp_path / "s.db"
    dataset = f"folder:{synthetic_folder}"
    for model in ("mlp", "seed-cnn"):
        trained = invoke("train", "--model", model, "--save-weights", "--db", db, "--dataset", dataset)
        assert trained.exit_code == 0, trained.output
    result = invoke("infer", "--model", "mlp,seed-cnn", "--batch-size", "500", "--weights", "latest", "--db", db,
                    "--dataset", dataset)
    assert result.exit_code == 0 and "2 run(s) done, 0 not done" in result.output, result.output
    rows = json.loads(invoke("report", "--db", db, "--inference", "--format", "json").stdout)
    with sqlite3.connect(db) as con:
        trained_keys = dict(con.execute("SELECT model, run_key FROM runs").fetchall())
    assert {row["model"]: row["weights"] for row in rows} == trained_keys
    assert all(row["accuracy"] > 0.3 for row in rows), rows  # chance is 0.1; 2,000 images, 1 epoch


def test_comparisons_take_the_median_of_a_configurations_measurements_at_a_batch_size():
    """Two measurements of one configuration at one batch size (repeats with other seeds, or one
    measured again after its key changed): compared by their median, not refused."""
    import pandas as pd

    base = {"status": "DONE", "dataset": "d", "model": "mlp", "weights_source": "random", "threads": 1,
            "precision": "fp32", "slicing": "auto", "machine": "m"}
    rows = pd.DataFrame([{**base, "device": "cpu", "graph": graph, "batch_size": batch, "images_per_second": rate}
                         for graph, batch, rate in [("off", 16, 100.0), ("off", 16, 300.0), ("off", 64, 400.0),
                                                    ("auto", 16, 400.0), ("auto", 64, 800.0)]])
    (found,) = comparisons(rows)
    assert found["baseline"] == "cpu t=1 fp32 graph=off @m" and found["other"] == "cpu t=1 fp32 @m"
    assert found["speedup"] == {16: 2.0, 64: 2.0} and found["crossover"] == 16
