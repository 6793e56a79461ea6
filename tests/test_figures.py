"""Figures, the HTML page, PNGs, merged stores and TensorBoard export, from a small fixture store
whose values are known, so that what is drawn can be checked against what is stored."""

import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from batchlab.cli.app import app
from batchlab.core.records import EpochRecord, InferResult, RunResult
from batchlab.report import figures as plots
from batchlab.report.inference import load_inference
from batchlab.report.training import aggregate, load_epochs, load_runs
from batchlab.spec.run import InferSpec, RunSpec
from batchlab.store.store import Store

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def epochs_for(accuracies, seconds):
    return [EpochRecord(epoch=e + 1, train_loss=1.0, train_accuracy=0.5, val_loss=None, val_accuracy=None,
                        test_loss=0.5, test_accuracy=a, train_seconds=seconds, eval_seconds=0.1, images=1000, steps=10)
            for e, a in enumerate(accuracies)]


def fill(db, machine="m1", host="desk", speed=1.0):
    """Two batch sizes x 2 repeats (2 epochs each), ddp at 1 and 2 workers, and inference at
    two thread counts."""
    with Store(db) as store:
        store.record_machine(machine, {"hostname": host})
        for batch, base in ((16, 0.60), (256, 0.50)):
            for repeat in (0, 1):
                spec = RunSpec(model="mlp", batch_size=batch, epochs=2, threads=2, repeat=repeat, seed=repeat)
                accuracies = [base + 0.01 * repeat, base + 0.1 + 0.01 * repeat]
                store.finish(store.start(spec, machine), RunResult(spec=spec, epochs=epochs_for(accuracies, 2.0 / speed * (1 + repeat))))
        for workers, seconds in ((1, 4.0), (2, 2.5)):
            spec = RunSpec(model="mlp", strategy="ddp", workers=workers, threads=1, batch_size=1, epochs=2)
            store.finish(store.start(spec, machine), RunResult(spec=spec, epochs=epochs_for([0.7, 0.8], seconds / speed)))
        for threads, per_call in ((1, 0.010), (2, 0.006)):
            for batch in (1, 64):
                spec = InferSpec(model="mlp", batch_size=batch, threads=threads)
                timings = [per_call * batch ** 0.5 * f for f in (1.0, 1.1, 0.9, 1.2)]
                store.finish(store.start(spec, machine), InferResult(
                    spec=spec, compute_seconds=timings, overhead_seconds=[t * 1.5 for t in timings],
                    first_call_seconds=0.05))


@pytest.fixture
def fixture_db(tmp_path):
    db = tmp_path / "a.db"
    fill(db)
    return db


def test_plotted_values_are_the_stored_values(fixture_db):
    rows = aggregate(load_runs(fixture_db))
    figures = plots.all_figures(rows, load_epochs(fixture_db), load_inference(fixture_db))
    assert set(figures) == {"time_vs_batch", "accuracy_vs_epoch", "accuracy_vs_batch", "scaling", "inference",
                            "device_speedup"}

    seconds_axis = figures["time_vs_batch"].axes[0]
    single = rows[(rows["strategy"] == "single")].sort_values("batch_size")
    drawn = [container.lines[0].get_xydata() for container in seconds_axis.containers]  # the errorbar lines
    assert len(drawn) == 3  # single (batch 16 and 256); ddp at 1 and at 2 workers (batch 1 each)
    drawn = [xy for xy in drawn if list(xy[:, 0]) == [16, 256]]
    assert np.allclose(drawn[0], np.c_[single["batch_size"], single["epoch_train_seconds"]])
    assert np.allclose(drawn[0][:, 1], [3.0, 3.0])  # median of 2 and 4 seconds

    curves = {line.get_label(): line.get_ydata() for axis in figures["accuracy_vs_epoch"].axes for line in axis.lines}
    assert np.allclose(curves["batch 16"], [0.605, 0.705]) and np.allclose(curves["batch 256"], [0.505, 0.605])

    speedup_axis = figures["scaling"].axes[0]
    ddp = [line for line in speedup_axis.lines if line.get_label() != "ideal"]
    assert np.allclose(ddp[0].get_xydata(), [[1, 1.0], [2, 4.0 / 2.5]])

    inference_axis = figures["inference"].axes[0]
    compute = {line.get_label(): line.get_xydata() for line in inference_axis.lines if "compute only" in line.get_label()}
    one_thread = next(v for k, v in compute.items() if k.startswith("cpu t=1 "))
    expected = [64 * 4 / sum(0.010 * 8 * f for f in (1.0, 1.1, 0.9, 1.2))]
    assert np.isclose(one_thread[1][1], expected[0])


def test_html_page_is_self_contained_and_renders(fixture_db, tmp_path):
    page = tmp_path / "report.html"
    result = runner.invoke(app, ["report", "--db", str(fixture_db), "--html", str(page), "--png", str(tmp_path / "png")])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert text.count("<svg") == 6 and "Definitions" in text and "desk" in text
    assert "src=" not in text and "@import" not in text
    references = re.findall(r'href="([^"]*)"', text) + re.findall(r"url\(([^)]*)\)", text)
    assert references and all(ref.startswith("#") for ref in references)  # only links inside the page
    from PIL import Image

    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 6 and all(Image.open(p).size[0] > 500 for p in pngs)


def open_in_chromium(page, tmp_path, name):
    """Screenshot `page` in headless Chromium; return (grayscale pixels, URLs the page requested).
    The page's own requests are told from the browser's background ones by their network
    isolation key, which is the page's origin (file://)."""
    from PIL import Image

    shot, netlog = tmp_path / f"{name}.png", tmp_path / f"{name}.netlog.json"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / name}-profile", f"--log-net-log={netlog}",
                    "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    events = read_netlog(netlog)["events"]
    requested = {event["params"]["url"] for event in events
                 if str(event.get("params", {}).get("network_isolation_key", "")).startswith("file://")
                 and "url" in event["params"]}
    return np.asarray(Image.open(shot).convert("L"), dtype=float), requested


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_html_opens_in_headless_chromium_without_network(fixture_db, tmp_path):
    page = tmp_path / "report.html"
    assert runner.invoke(app, ["report", "--db", str(fixture_db), "--html", str(page)]).exit_code == 0
    pixels, requested = open_in_chromium(page, tmp_path, "report")
    assert pixels.shape == (2400, 1280) and pixels.std() > 10  # something was drawn, not a blank page
    assert requested == set()
    # The same check on a page that does fetch something sees it (so it can fail).
    control = tmp_path / "control.html"
    control.write_text('<html><body><h1>control</h1><img src="http://127.0.0.1:9/x.png"></body></html>')
    assert open_in_chromium(control, tmp_path, "control")[1] == {"http://127.0.0.1:9/x.png"}


def read_netlog(path):
    """Chromium's NetLog: JSON, whose closing brackets are missing if the browser did not close it."""
    text = path.read_text().rstrip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(text.rstrip(",") + "]}")


def test_merged_stores_compare_machines(fixture_db, tmp_path):
    other = tmp_path / "b.db"
    fill(other, machine="m2", host="hpc", speed=2.0)
    result = runner.invoke(app, ["report", str(fixture_db), str(other), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {row["machine"] for row in rows} == {"desk", "hpc"}
    desk = next(r for r in rows if r["machine"] == "desk" and r["batch_size"] == 16 and r["strategy"] == "single")
    hpc = next(r for r in rows if r["machine"] == "hpc" and r["batch_size"] == 16 and r["strategy"] == "single")
    assert hpc["images_per_second"] == pytest.approx(2 * desk["images_per_second"])
    both = pd.concat([load_runs(fixture_db), load_runs(other)], ignore_index=True)
    figure = plots.device_speedup(aggregate(both), load_inference(fixture_db).iloc[0:0])
    ratios = [line.get_ydata() for line in figure.axes[0].lines if "hpc" in line.get_label()]
    assert ratios and all(np.allclose(r, 2.0) for r in ratios)


def test_tensorboard_export_reads_back(fixture_db, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    result = runner.invoke(app, ["export", "--tensorboard", str(out), "--db", str(fixture_db)])
    assert result.exit_code == 0, result.output
    runs = sorted(out.iterdir())
    assert len(runs) == 6
    first = next(r for r in runs if "_bs16_" in r.name and "_r0_" in r.name and "single" in r.name)
    events = EventAccumulator(str(first))
    events.Reload()
    accuracy = [(s.step, s.value) for s in events.Scalars("accuracy/test")]
    assert accuracy == [(1, pytest.approx(0.60)), (2, pytest.approx(0.70))]
    assert [s.value for s in events.Scalars("throughput/images_per_second")] == [pytest.approx(500.0)] * 2
