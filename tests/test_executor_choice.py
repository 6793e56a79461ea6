"""Where runs go, as an experiment file's [executor] table and the command line say: the table
checked, flags over it key by key, --detach only for Slurm, the lines a sweep leaving jobs running
prints; and `advise` on an executor (its probes on a node, its budget when runs go together, and
one real study on a local Ray)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sqlite3
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from batchlab.cli.app import ExecutorChoice, app
from batchlab.core.errors import SpecError
from batchlab.runner import advise
from batchlab.runner.maxbatch import MaxBatch, Probe
from batchlab.spec.experiment import ExperimentSpec

app_module = importlib.import_module("batchlab.cli.app")  # the module (batchlab.cli.app is the Typer app)

SLURM_FILE = """name = "on-slurm"
batch_size = [16, 32]
[executor]
name = "slurm"
partition = "cpu"
time_minutes = 120
mem_gb = 8
folder = "jobs"
detach = true
options = {account = "proj", qos = "high"}
"""


def write(tmp_path, text: str, name: str = "e.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def invoke(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


# --- the [executor] table -------------------------------------------------------------------------

def test_the_executor_table_is_read_as_given_and_kept_by_flag_overrides(tmp_path):
    experiment = ExperimentSpec.from_toml(write(tmp_path, SLURM_FILE))
    assert experiment.executor == {"name": "slurm", "partition": "cpu", "time_minutes": 120, "mem_gb": 8,
                                   "folder": "jobs", "detach": True, "options": {"account": "proj", "qos": "high"}}
    assert experiment.with_overrides({"lr": [0.1]}).executor == experiment.executor
    assert ExperimentSpec.from_toml(write(tmp_path, "batch_size = 16\n", "plain.toml")).executor == {}


@pytest.mark.parametrize("table, message", [
    ('queue = "x"', "unknown [executor] key queue; known: name, ray_address, partition"),
    ('time_minutes = "60"', "[executor] time_minutes must be a whole number, got '60'"),
    ("time_minutes = true", "[executor] time_minutes must be a whole number, got True"),
    ("time_minutes = 0", "[executor] time_minutes must be at least 1, got 0"),
    ('mem_gb = "8G"', "[executor] mem_gb must be a number, got '8G'"),
    ("mem_gb = -1.5", "[executor] mem_gb must be a positive number of GB, got -1.5"),
    ('detach = "yes"', "[executor] detach must be true or false, got 'yes'"),
    ('options = "account=proj"', "[executor] options must be a table"),
    ("options = {account = [1, 2]}", "[executor] options.account must be a string or a number on one line"),
    ('options = {"bad key" = "x"}', "[executor] options: 'bad key' is not an sbatch option name"),
    ('name = "kubernetes"', "[executor] name 'kubernetes' is not an executor; choose one of local, ray, slurm"),
    ('name = "ray"\npartition = "cpu"', '[executor] partition is for name = "slurm", not "ray"'),
    ('name = "local"\ndetach = true', '[executor] detach is for name = "slurm", not "local"'),
])
def test_a_bad_executor_table_is_one_line_naming_the_file_and_the_key(tmp_path, table, message):
    path = write(tmp_path, f"batch_size = 16\n[executor]\n{table}\n")
    with pytest.raises(SpecError) as raised:
        ExperimentSpec.from_toml(path)
    assert str(raised.value).startswith(f"{path}: ") and message in str(raised.value), raised.value
    assert "\n" not in str(raised.value)
    line = one_error_line(invoke("sweep", path, "--db", tmp_path / "x.db"))
    assert line.startswith(f"error: {path}: ") and not (tmp_path / "x.db").exists()


def test_executor_must_be_a_table(tmp_path):
    path = write(tmp_path, 'batch_size = 16\nexecutor = "slurm"\n')
    with pytest.raises(SpecError, match="'executor' must be an \\[executor\\] table"):
        ExperimentSpec.from_toml(path)


# --- flags over the table -------------------------------------------------------------------------

def sweep_choice(tmp_path, monkeypatch, *flags) -> ExecutorChoice:
    """The ExecutorChoice `batchlab sweep e.toml FLAGS` hands to execute (which is not run)."""
    seen = {}
    monkeypatch.setattr(app_module, "execute", lambda *args, **kwargs: seen.setdefault("choice", kwargs["executor"]))
    result = invoke("sweep", write(tmp_path, SLURM_FILE), *flags, "--db", tmp_path / "x.db")
    assert result.exit_code == 0, result.output
    return seen["choice"]


def test_the_table_is_used_where_no_flag_is_given(tmp_path, monkeypatch):
    choice = sweep_choice(tmp_path, monkeypatch)
    assert (choice.name, choice.slurm_partition, choice.slurm_time, choice.slurm_mem, str(choice.slurm_folder),
            choice.detach) == ("slurm", "cpu", 120, 8, "jobs", True)
    assert choice.slurm_options == ["account=proj", "qos=high"]


def test_a_flag_given_wins_key_by_key_and_sbatch_options_merge(tmp_path, monkeypatch):
    choice = sweep_choice(tmp_path, monkeypatch, "--slurm-partition", "gpu", "--slurm-time", "60", "--no-detach",
                          "--slurm-option", "qos=low")
    assert (choice.name, choice.slurm_partition, choice.slurm_time, choice.slurm_mem, choice.detach) == \
        ("slurm", "gpu", 60, 8, False)  # 60 given is not "left at the default": it wins over 120
    assert choice.slurm_options == ["account=proj", "qos=high", "qos=low"]  # of one key, the last wins


def test_another_executor_on_the_command_line_sets_the_files_keys_for_slurm_aside(tmp_path, monkeypatch):
    choice = sweep_choice(tmp_path, monkeypatch, "--executor", "local")
    assert choice == ExecutorChoice(given=frozenset({"name"}))
    assert app_module.open_executor(choice, tmp_path / "x.db") is None  # nothing of Slurm's to refuse


def test_the_merged_choice_reaches_the_slurm_executor(tmp_path, monkeypatch):
    from batchlab.runner.slurm_executor import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "open", lambda self: None)  # no Slurm here: only what it is given
    flags = ExecutorChoice.from_flags({"executor": None, "ray_address": None, "slurm_partition": None,
                                       "slurm_time": None, "slurm_mem": 16.0, "slurm_option": ["--qos=low"],
                                       "slurm_folder": None, "detach": None})
    table = ExperimentSpec.from_toml(write(tmp_path, SLURM_FILE)).executor
    executor = app_module.open_executor(flags.with_table(table), tmp_path / "x.db")
    assert (executor.partition, executor.time_limit_minutes, executor.memory_gb, executor.detach) == \
        ("cpu", 120, 16.0, True)
    assert executor.sbatch_options == {"account": "proj", "qos": "low"} and str(executor.folder) == "jobs"


# --- --detach ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("executor, message", [
    ("local", "--detach is for --executor slurm: local runs end with the sweep that started them"),
    ("ray", "--detach is for --executor slurm: Ray tasks end with the sweep that started them"),
])
def test_detach_is_refused_off_slurm_before_anything_is_stored(synthetic_folder, tmp_path, executor, message):
    for command in ("sweep", "infer"):
        result = invoke(command, "--dataset", f"folder:{synthetic_folder}", "--batch-size", "16", "--executor",
                        executor, "--detach", "--db", tmp_path / "x.db")
        assert one_error_line(result) == f"error: {message}"
    assert not (tmp_path / "x.db").exists()


def test_detach_is_refused_by_advise(tmp_path):
    result = invoke("advise", "--target-accuracy", "0.5", "--budget-minutes", "1", "--executor", "slurm",
                    "--detach", "--db", tmp_path / "x.db")
    assert one_error_line(result).startswith("error: --detach is not for advise: it plans on its probes' results")
    assert not (tmp_path / "x.db").exists()


def test_runs_left_running_are_one_line_and_exit_zero(synthetic_folder, tmp_path, monkeypatch):
    from batchlab.runner import sweep
    from batchlab.spec.run import RunSpec

    def left_running(specs, *args, **kwargs):
        done = sweep.Outcome("DONE")
        return sweep.SweepSummary(planned=9, outcomes=[(RunSpec(), done)], detached=[str(n) for n in range(12, 20)])

    monkeypatch.setattr(sweep, "run_sweep", left_running)
    result = invoke("sweep", "--dataset", f"folder:{synthetic_folder}", "--batch-size", "16", "--db",
                    tmp_path / "x.db")
    assert result.exit_code == 0, result.output
    assert ("8 run(s) left running on Slurm (jobs 12,13,14,15,16,…): run the same command again to collect them."
            in result.output), result.output


# --- advise on an executor ----------------------------------------------------------------------

class NodeStandIn:
    """An executor whose call returns what a node would have (the search is not run)."""

    name, target = "ray", "ray@test"

    def __init__(self, returned):
        self.returned, self.calls = returned, []

    def check(self, specs):
        pass

    def call(self, function, *args, cpus, gpus=0):
        self.calls.append((function, args, cpus, gpus))
        return self.returned


def probes(*batches: int) -> list[Probe]:
    return [Probe(batch, True, "DONE", 1.0, 0.01, 0.1, 2.0) for batch in batches]


def test_the_probes_run_on_a_node_and_are_said_after_it_returns():
    from batchlab import RunSpec

    made = probes(16, 32)
    found = MaxBatch(32, 28, 0.1, "training set", None, made)
    node, said = NodeStandIn((found, made)), []
    base = RunSpec(threads=2, target_accuracy=0.5)
    assert advise.probe(base, 32, None, None, 16, 60.0, lambda: 1.0, said.append, node) is found
    assert said == made
    function, args, cpus, gpus = node.calls[0]
    assert function is advise.search_max_batch and (cpus, gpus) == (2.0, 0.0)
    assert args[-1] == 59.0  # the seconds left, for the node's own clock


def test_a_budget_spent_on_a_node_or_in_its_queue_says_so():
    from batchlab import RunSpec

    made = probes(16)
    spent_on_node = NodeStandIn((None, made))
    with pytest.raises(SpecError, match=r"the budget \(60 s\) ran out while probing batch sizes \(the last probe, "
                                        r"batch 16, took 2 s\)"):
        advise.probe(RunSpec(), 32, None, None, 16, 60.0, lambda: 1.0, lambda probe: None, spent_on_node)
    queued_long = NodeStandIn((MaxBatch(16, 14, 0.1, "memory", None, made), made))
    clock = iter([1.0, 61.0])  # before the call, after it
    with pytest.raises(SpecError, match="ran out while probing"):
        advise.probe(RunSpec(), 32, None, None, 16, 60.0, lambda: next(clock), lambda probe: None, queued_long)


def test_search_max_batch_returns_early_with_its_probes_once_the_seconds_left_are_spent(monkeypatch):
    from batchlab import RunSpec

    def search(spec, top, data_dir, memory_limit, on_probe, start):
        for batch in (16, 32, 64):
            on_probe(probes(batch)[0])
        raise AssertionError("the search should have stopped")

    monkeypatch.setattr(advise, "find_max_batch", search)
    found, made = advise.search_max_batch(RunSpec(), 64, None, 2**30, 16, -1.0)
    assert found is None and [probe.batch_size for probe in made] == [16]


def test_on_a_cluster_the_budget_counts_the_worst_cases_of_the_runs_submitted_before():
    from batchlab import RunSpec

    specs = [RunSpec(batch_size=batch, epochs=2, target_accuracy=0.5, stop_at_target=True) for batch in (16, 32, 64)]
    costs = advise.Costs({16: 0.1, 32: 0.15, 64: 0.2}, 1e-5, 3.0)
    plan = advise.Plan("k", "m", [], [], [16, 32, 64], [0.01], 2, 1, 0.5, 1.0, {}, dataclasses.asdict(costs),
                       (1000, 100, 500))
    worst = [plan.worst_case_seconds(spec) for spec in specs]
    budget = worst[0] + worst[1] + 1  # room for two runs one after another, not three
    now = [0.0]
    here = advise.Budget(budget, 0.0, plan, specs, clock=lambda: now[0])
    together = advise.Budget(budget, 0.0, plan, specs, clock=lambda: now[0], together=True)
    assert all(here.may_start(spec) for spec in specs)  # each asked as it starts, the one before ended
    assert [together.may_start(spec) for spec in specs] == [True, True, False]  # all asked at submission
    assert together.at_most_left() == pytest.approx(worst[0] + worst[1])
    together.round_ended()  # the round's runs ended: the next round has the budget left
    assert together.may_start(specs[2]) and together.at_most_left() == pytest.approx(worst[2])


@pytest.mark.ray
@pytest.mark.slow
def test_advise_on_a_local_ray_probes_on_a_node_stores_under_the_cluster_and_resumes(synthetic_folder, tmp_path):
    pytest.importorskip("ray", reason="the cluster extra is not installed: pip install \"batchlab[cluster]\"")
    db = tmp_path / "advice.db"
    # Four small runs of one thread each: Ray runs them two at a time on two cores.
    command = [sys.executable, "-m", "batchlab", "advise", "--dataset", f"folder:{synthetic_folder}", "--model", "mlp",
               "--limit-train", "500", "--threads", "1", "--batch-size", "32,64", "--lr", "0.01,0.1", "--max-epochs", "1",
               "--no-widen", "--target-accuracy", "0.3", "--budget-minutes", "3", "--format", "json",
               "--executor", "ray", "--db", str(db)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "what a step costs on a node of ray@local" in first.stderr and "batch      32: fits" in first.stderr
    found = json.loads(first.stdout)
    assert found["plan"]["batches"] == [32, 64] and found["runs_done"] == 4, found
    with sqlite3.connect(db) as con:
        plans = con.execute("SELECT machine_id FROM advice_plans").fetchall()
        runs = con.execute("SELECT machine_id, status, environment FROM runs").fetchall()
    assert plans == [("ray@local",)]
    assert [(machine, status) for machine, status, _ in runs] == [("ray@local", "DONE")] * 4
    assert all(json.loads(environment)["executor"]["name"] == "ray" for _, _, environment in runs)
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming the study" in again.stderr and "4 run(s) already finished" in again.stderr, again.stderr
    assert json.loads(again.stdout)["recommended"] == found["recommended"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--strategy", "ddp", "--workers", "2", "--nodes", "2"], "a run over several nodes is one Slurm job"),
    (["--strategy", "ddp", "--workers", "3", "--nodes", "2"], "do not split evenly over --nodes 2"),
    (["--nodes", "2"], "--nodes spreads the ranks of a ddp run"),
    (["--strategy", "ddp", "--workers", "2", "--nodes", "0"], "nodes must be at least 1"),
])
def test_nodes_is_for_ddp_over_slurm_and_refused_in_one_line_elsewhere(synthetic_folder, tmp_path, flags, message):
    db = tmp_path / "n.db"
    refused = CliRunner().invoke(app, ["sweep", "--dataset", f"folder:{synthetic_folder}", "--model", "mlp",
                                       "--threads", "1", "--db", str(db), *flags])
    assert refused.exit_code == 2 and message in refused.output, refused.output
    assert len(refused.output.strip().splitlines()) == 1


def test_nodes_leaves_the_keys_of_runs_on_one_node_as_they_were():
    """Runs stored before `nodes` existed keep their keys (found finished), and 2 nodes is another run."""
    from batchlab.spec.run import RunSpec

    one = RunSpec(strategy="ddp", workers=2)
    assert one.key == "8554c4785a0307a0"  # the key this run had before `nodes` was a setting
    assert dataclasses.replace(one, nodes=2).key != one.key
