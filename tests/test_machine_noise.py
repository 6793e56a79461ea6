"""Noisy machines (issue #15, item 3): what else the machine did during a run is recorded with the
run (runner/machine_noise.py), a run whose timings are not trustworthy is flagged, and reports
mark it (report/noise.py).

The runs here are real: a short training run in a worker process, as a sweep runs it, with
NoiseWatch around run_in_worker exactly as the sweep wraps it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import psutil
import pytest
from typer.testing import CliRunner

from batchlab.cli.app import app
from batchlab.core.records import EpochRecord, RunResult
from batchlab.runner import forked_workers, machine_noise
from batchlab.runner.machine_noise import NoiseWatch, other_batchlab_runs
from batchlab.runner.sweep import run_in_worker
from batchlab.spec.run import RunSpec
from batchlab.store.store import Store

QUIET_TRIES = 6  # seconds the idle test waits for a machine that other work keeps busy, before it skips


def short_run(folder) -> RunSpec:
    """~3 s of a worker's start-up and imports, then 1 epoch of 2,000 images at batch 16 (125 steps)."""
    return RunSpec(dataset=f"folder:{folder}", model="mlp", batch_size=16, epochs=1)


def watched_run(spec: RunSpec) -> tuple[dict, RunResult]:
    """As the sweep runs one run: the run-worker server ready, the watch around the worker, its
    summary into the result."""
    forked_workers.ready()
    with NoiseWatch(sample_seconds=0.5) as watch:
        outcome = run_in_worker(spec, None, lambda record: None)
    assert outcome.status == "DONE", outcome.error
    outcome.result.environment["machine_noise"] = watch.summary
    json.dumps(outcome.result.environment)  # stored as JSON with the run
    return watch.summary, outcome.result


def busy_loops(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def end(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def wait_for_quiet_machine() -> None:
    """Skip, naming what was seen, when work outside this test keeps the machine busy: the subject
    here is a quiet machine."""
    for _ in range(QUIET_TRIES):
        with NoiseWatch() as watch:
            time.sleep(1.0)
        if not watch.summary["noisy"]:
            return
    pytest.skip(f"the machine is not idle: {watch.summary['reason']}")


def test_run_on_a_machine_pinned_by_two_busy_loops_is_noisy(synthetic_folder):
    loops = busy_loops(max(2, psutil.cpu_count()))  # both cores of a 2-core machine; every core of a larger one
    try:
        summary, result = watched_run(short_run(synthetic_folder))
    finally:
        end(loops)  # after the watch: their CPU time must not land in the run's (RUSAGE_CHILDREN)
    assert summary["noisy"] is True
    assert "other processes used" in summary["reason"], summary
    assert summary["other_cpu_seconds"] > 0.25 * summary["wall_seconds"], summary
    print("busy:", {key: summary[key] for key in ("other_cpu_share", "other_cpus", "run_cpu_seconds", "wall_seconds")},
          "step spread", result.environment.get("step_seconds_spread"))


def test_run_on_an_idle_machine_is_not_noisy(synthetic_folder):
    wait_for_quiet_machine()
    summary, result = watched_run(short_run(synthetic_folder))
    if summary["other_batchlab_runs"]:  # rightly flagged, but not what this test is about
        pytest.skip(f"another batchlab run started meanwhile: {summary['reason']}")
    assert summary["noisy"] is False and summary["reason"] is None, summary
    assert summary["other_cpu_share"] < machine_noise.OTHER_CPU_SHARE_LIMIT
    # The worker's CPU time counts as the run's own (waited for by the run-worker server, or by this
    # process for a fresh worker): it loaded and trained on up to 2 threads for most of the watch.
    assert summary["run_cpu_seconds"] > 0.5 * summary["wall_seconds"], summary
    assert summary["other_batchlab_runs"] == [] and summary["cpus"] == psutil.cpu_count()
    assert summary["load_before"] is None or len(summary["load_before"]) == 3
    # The step-time spread of the run's 125 steps is recorded with it.
    assert result.environment["timed_steps"] == 125
    assert result.environment["step_seconds_spread"] >= 1.0
    print("idle:", {key: summary[key] for key in ("other_cpu_share", "other_cpus", "run_cpu_seconds", "wall_seconds")},
          "step spread", result.environment["step_seconds_spread"])


def test_the_flag_rule():
    verdict = machine_noise.verdict
    assert verdict(share=0.02, other_cpus=0.04, idle=0.5, steal=0.0, others=[], cpus=2) == []
    assert verdict(0.48, 0.96, 0.0, 0.0, [], 2) == ["other processes used 48% of the 2 CPUs during the run"]
    # 64 CPUs all kept busy by the run: one busy process elsewhere is a small share, yet it competes.
    assert verdict(0.016, 1.0, 0.01, 0.0, [], 64) == ["other processes used 1.0 CPUs while no CPU was idle (1% idle)"]
    assert verdict(0.016, 1.0, 0.6, 0.0, [], 64) == []  # ... but not while most CPUs were idle
    assert verdict(0.0, 0.0, 0.5, 0.08, [], 2) == ["the hypervisor took 8% of the CPU time (steal)"]
    assert verdict(0.0, 0.0, 0.5, 0.0, [4242], 2) == ["another batchlab run was active (pid 4242)"]


def test_other_batchlab_runs_are_found_but_not_our_own():
    """A run worker this process did not start (orphaned by its shell, as another sweep's would
    be to us) is found; one this process started is its own run, not another."""
    fake = [sys.executable, "-c", "import time; time.sleep(60)", "-m", "batchlab.runner.worker"]  # argv only
    own = subprocess.Popen(fake)
    started = subprocess.run(["sh", "-c", " ".join(f"'{arg}'" for arg in fake) + " >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True)
    foreign = int(started.stdout.strip())
    try:
        deadline = time.monotonic() + 10
        while foreign not in other_batchlab_runs() and time.monotonic() < deadline:
            time.sleep(0.1)
        found = other_batchlab_runs()
        assert foreign in found and own.pid not in found
        assert machine_noise.is_run_worker([sys.executable, "-m", "batchlab.runner.worker"])
        assert not machine_noise.is_run_worker([sys.executable, "-m", "batchlab", "sweep"])
    finally:
        own.kill()
        own.wait()
        try:
            psutil.Process(foreign).kill()
        except psutil.NoSuchProcess:
            pass


# --- reports mark noisy runs -----------------------------------------------------------------------

MACHINE = "m1"


def result(spec: RunSpec, environment: dict) -> RunResult:
    epochs = [EpochRecord(epoch=1, train_loss=1.0, train_accuracy=0.5, val_loss=None, val_accuracy=None,
                          test_loss=0.5, test_accuracy=0.8, train_seconds=2.0, eval_seconds=0.5, images=1000,
                          steps=10)]
    return RunResult(spec=spec, epochs=epochs, parameters=10, wall_seconds=3.0, environment=environment)


REASON = "other processes used 48% of the 2 CPUs during the run"


@pytest.fixture
def noisy_store(tmp_path):
    """Batch 64: repeat 0 noisy, repeat 1 quiet; batch 128: stored before the watch existed."""
    db = tmp_path / "noise.db"
    quiet = {"noisy": False, "reason": None, "other_cpu_share": 0.01}
    with Store(db) as store:
        store.record_machine(MACHINE, {"hostname": "h"})
        for repeat, noise in ((0, {"noisy": True, "reason": REASON, "other_cpu_share": 0.48}), (1, quiet)):
            spec = RunSpec(model="mlp", batch_size=64, repeat=repeat, seed=repeat)
            store.finish(store.start(spec, MACHINE), result(spec, {"machine_noise": noise, "step_seconds_spread": 1.2}))
        old = RunSpec(model="mlp", batch_size=128)
        store.finish(store.start(old, MACHINE), result(old, {}))
    return db


def invoke(*args, columns: int = 200) -> str:
    outcome = CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": str(columns)})
    assert outcome.exit_code == 0, outcome.output
    return outcome.output


def test_report_rows_carry_noisy_and_the_reason(noisy_store):
    rows = json.loads(invoke("report", "--db", noisy_store, "--runs", "--format", "json"))
    found = {(row["batch_size"], row["repeat"]): row for row in rows}
    assert found[64, 0]["noisy"] is True and found[64, 0]["noisy_reason"] == REASON
    assert found[64, 1]["noisy"] is False and found[64, 1]["noisy_reason"] is None
    assert found[128, 0]["noisy"] is None  # not watched: recorded before the watch existed
    assert found[64, 0]["step_seconds_spread"] == 1.2
    groups = {row["batch_size"]: row for row in json.loads(invoke("report", "--db", noisy_store, "--format", "json"))}
    assert (groups[64]["noisy"], groups[64]["noisy_runs"], groups[64]["noisy_reason"]) == (True, 1, REASON)
    assert groups[128]["noisy"] is None


def test_terminal_and_html_reports_mark_a_noisy_run(noisy_store, tmp_path):
    printed = invoke("report", "--db", noisy_store, "--runs")
    assert re.search(r"\bnoisy\b", printed.split("noisy:")[0])  # the column's header in the table
    marked = [line for line in printed.splitlines() if re.search(r"\byes\b", line)]
    assert len(marked) == 1 and " 64 " in marked[0]  # only the noisy run's row
    assert f"run 1 (mlp, fashion-mnist, cpu, batch 64, repeat 0): {REASON}" in printed
    grouped = invoke("report", "--db", noisy_store)
    assert "yes (1/2)" in grouped and f"mlp, fashion-mnist, cpu, batch 64 (1 of 2 runs): {REASON}" in grouped
    narrow = invoke("report", "--db", noisy_store, "--runs", columns=80)
    assert REASON.split(" during")[0] in " ".join(narrow.split())  # the reason stays, wrapped, when columns go
    page = tmp_path / "report.html"
    invoke("report", "--db", noisy_store, "--html", page)
    text = page.read_text()
    assert "<th>noisy</th>" in text and "yes (1/2)" in text and REASON in text and 'class="noisy"' in text


def test_quiet_runs_add_nothing_to_the_report(tmp_path):
    db = tmp_path / "quiet.db"
    with Store(db) as store:
        store.record_machine(MACHINE, {"hostname": "h"})
        spec = RunSpec(model="mlp", batch_size=64)
        store.finish(store.start(spec, MACHINE), result(spec, {"machine_noise": {"noisy": False, "reason": None}}))
    printed = invoke("report", "--db", db, "--runs")
    assert "noisy" not in printed


def test_step_spread_leaves_out_evaluations_and_epoch_ends():
    """Steps of 1 ms, one of 3 ms; the intervals across a mid-epoch evaluation (step 5) and from
    one epoch's end to the next epoch's first step are no steps."""
    from array import array

    from batchlab.train.engine import StepLoop

    loop = StepLoop.__new__(StepLoop)  # only its clock: no model needed
    epoch_one = [0.001 * i for i in range(12)]  # 11 steps of 1 ms, then the epoch's end
    epoch_one[5:] = [t + 0.5 for t in epoch_one[5:]]  # step 5 (position 4) includes a 0.5 s evaluation
    epoch_two = [10.0, 10.003, 10.004, 10.005]  # after 9 s of evaluation: steps of 3, 1 and 1 ms
    loop.step_clock, loop.not_steps = array("d", epoch_one + epoch_two), {4, 11, 15}
    spread = loop.step_spread()
    assert spread["timed_steps"] == 10 + 3
    assert spread["step_seconds_p50"] == pytest.approx(0.001) and spread["step_seconds_p90"] == pytest.approx(0.001)
    assert spread["step_seconds_spread"] == pytest.approx(1.0)
    loop.not_steps = {11, 15}  # had the evaluation counted as a step
    assert loop.step_spread()["timed_steps"] == 14
    loop.step_clock = array("d", [0.0] * 10)
    assert loop.step_spread() == {}  # too few steps for a p90
