"""The package map holds: imports flow one way (import-linter contracts in pyproject.toml), no
module imports itself round a cycle, and the commands that only read results run without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx

from batchlab.core.records import EpochRecord, RunResult
from batchlab.spec.run import RunSpec
from batchlab.store.store import Store

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_no_import_cycles():
    graph = grimp.build_graph("batchlab", exclude_type_checking_imports=True)
    imports = nx.DiGraph((module, imported) for module in graph.modules
                         for imported in graph.find_modules_directly_imported_by(module))
    assert list(nx.simple_cycles(imports)) == []


def store_with_runs(path: Path) -> None:
    with Store(path) as store:
        store.record_machine("m1", {"hostname": "laptop"})
        for batch_size in (16, 64):
            spec = RunSpec(model="mlp", batch_size=batch_size, epochs=2)
            epochs = [EpochRecord(epoch=e, train_loss=1.0 / e, train_accuracy=0.5, val_loss=None, val_accuracy=None,
                                  test_loss=0.5, test_accuracy=0.7 + e / 100, train_seconds=2.0, eval_seconds=0.5,
                                  images=1000, steps=1000 // batch_size) for e in (1, 2)]
            store.finish(store.start(spec, "m1"), RunResult(spec=spec, epochs=epochs, parameters=10, wall_seconds=5.0))


def test_reading_commands_work_where_torch_is_missing(tmp_path):
    """A laptop reading a store copied from a cluster has no reason to install torch."""
    blocked = tmp_path / "no-torch" / "torch"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('torch is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": str(blocked.parent), "MPLBACKEND": "Agg"}
    db = tmp_path / "s.db"
    store_with_runs(db)

    def batchlab(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "batchlab", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path)
        assert done.returncode == 0, (args, done.stderr[-2000:])
        return done

    assert "torch is not installed here" in subprocess.run(
        [sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env).stderr  # the block works
    assert "sweep" in batchlab("--help").stdout
    assert "fashion-mnist" in batchlab("data", "list").stdout
    assert "mlp" in batchlab("report", "--db", str(db)).stdout
    rows = json.loads(batchlab("report", "--db", str(db), "--format", "json").stdout)
    assert sorted(row["batch_size"] for row in rows) == [16, 64]
    batchlab("report", "--db", str(db), "--csv", "runs.csv", "--html", "report.html")
    assert (tmp_path / "runs.csv").read_text().count("\n") == 3
    assert "<svg" in (tmp_path / "report.html").read_text()
