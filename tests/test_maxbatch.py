"""`batchlab maxbatch`: the largest batch whose real training step fits, by probe runs in their own
processes under a memory cap, less a safety margin; stored."""

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from batchlab.cli.app import app

# ~8 MB of activations per image (64 x 32,768 floats, materialised): a few hundred images fill a few GiB.
GREEDY_MODEL = """
from torch import nn

class Greedy(nn.Module):
    def __init__(self, input_shape, classes):
        super().__init__()
        c, h, w = input_shape
        self.down = nn.Linear(c * h * w, 64)
        self.out = nn.Linear(64, classes)

    def forward(self, x):
        wide = self.down(x.flatten(1)).unsqueeze(-1).expand(-1, -1, 32768).contiguous()
        return self.out(wide.mean(-1))
"""


def maxbatch(*args) -> dict:
    result = CliRunner().invoke(app, ["maxbatch", *map(str, args), "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_with_automatic_micro_batches_the_training_set_is_the_limit(synthetic_folder, tmp_path):
    found = maxbatch("--dataset", f"folder:{synthetic_folder}", "--model", "mlp", "--limit-train", "64",
                     "--db", tmp_path / "m.db")
    assert [p["batch_size"] for p in found["probes"]] == [2, 4, 8, 16, 32, 64]  # from 2: batch norm refuses 1
    assert (found["max_batch"], found["usable_batch"], found["limited_by"]) == (64, 57, "training set")
    with sqlite3.connect(tmp_path / "m.db") as db:
        assert db.execute("SELECT max_batch, usable_batch FROM max_batch").fetchall() == [(64, 57)]


@pytest.mark.slow
def test_under_a_memory_cap_the_search_brackets_the_largest_batch(synthetic_folder, tmp_path):
    (tmp_path / "greedy_model.py").write_text(GREEDY_MODEL)
    found = maxbatch("--dataset", f"folder:{synthetic_folder}", "--model", f"{tmp_path / 'greedy_model.py'}:Greedy",
                     "--micro-batch", "1000000", "--memory-limit", "4", "--db", tmp_path / "m.db")
    largest, failing = found["max_batch"], found["smallest_failing"]
    assert found["limited_by"] == "memory" and 1 < largest < failing < 2000
    assert failing - largest <= max(1, largest * 0.02)
    by_batch = {p["batch_size"]: p["status"] for p in found["probes"]}
    assert by_batch[largest] == "DONE" and by_batch[failing] == "OOM"
    assert found["usable_batch"] == int(largest * 0.9)


def test_bad_margin_and_a_batch_of_one_that_cannot_fit_are_one_line_errors(synthetic_folder, tmp_path):
    bad = CliRunner().invoke(app, ["maxbatch", "--dataset", f"folder:{synthetic_folder}", "--model", "mlp",
                                   "--margin", "1.5", "--db", str(tmp_path / "m.db")])
    assert bad.exit_code != 0 and "--margin is a fraction in [0, 1), got 1.5" in bad.output


def test_probes_give_every_worker_a_whole_batch_and_the_bound_is_a_workers_share():
    from batchlab.core.errors import SpecError
    from batchlab.runner.maxbatch import find_max_batch, probe_spec
    from batchlab.spec.run import RunSpec
    from batchlab.train.engine import process_shares

    spec = RunSpec(strategy="ddp", workers=4)
    probe = probe_spec(spec, 256).validated()
    assert probe.limit_train == 1024 and not probe.eval_every
    assert [len(share) for share in process_shares(probe, probe.limit_train)] == [256] * 4
    with pytest.raises(SpecError, match="3 training images leave no batch for 4 worker"):
        find_max_batch(spec, 3)
