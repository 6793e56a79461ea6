"""What a sweep costs beyond the training it measures: the README's demo sweep (seed-cnn on
Fashion-MNIST, batch 32/128/512, 2 epochs of 10,000 images, 2 repeats: 6 runs), its wall time
against the train seconds its runs stored, with run workers forked from the run-worker server
(runner/forked_workers.py) and with a fresh Python per run (BATCHLAB_FRESH_WORKERS=1), alternating
the two ROUNDS times so that both see the same machine.

    python bench/sweep_overhead.py [--rounds 2]

Prints one line per sweep and the medians; not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO = ["sweep", "--dataset", "fashion-mnist", "--model", "seed-cnn", "--batch-size", "32,128,512",
        "--epochs", "2", "--limit-train", "10000", "--repeats", "2"]
WAYS = {"forked": {}, "fresh": {"BATCHLAB_FRESH_WORKERS": "1"}}


def one_sweep(extra_env: dict[str, str], folder: Path) -> dict[str, float]:
    db = folder / f"sweep-{time.monotonic_ns()}.db"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "batchlab", *DEMO, "--db", str(db)], check=True, capture_output=True,
                   env={**os.environ, **extra_env})
    wall = time.monotonic() - started
    with sqlite3.connect(db) as con:
        train = con.execute("SELECT SUM(train_seconds) FROM epochs").fetchone()[0]
        accuracy = con.execute("SELECT test_accuracy FROM epochs ORDER BY run_id, epoch").fetchall()
        startup = con.execute("SELECT AVG(startup_seconds), AVG(wall_seconds) FROM runs").fetchone()
    return {"wall": wall, "train": train, "startup": startup[0], "run_wall": startup[1],
            "accuracy": tuple(value for (value,) in accuracy)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    rounds = parser.parse_args().rounds
    found: dict[str, list[dict]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(rounds):
            order = list(WAYS) if round_ % 2 == 0 else list(reversed(WAYS))
            for way in order:
                figures = one_sweep(WAYS[way], Path(folder))
                found[way].append(figures)
                print(f"{way:7s} sweep {figures['wall']:6.1f} s, training {figures['train']:5.1f} s "
                      f"({1 - figures['train'] / figures['wall']:.0%} outside it), per run: start-up "
                      f"{figures['startup']:.2f} s, wall {figures['run_wall']:.1f} s", flush=True)
    for way, runs in found.items():
        print(f"{way}: median sweep {statistics.median(run['wall'] for run in runs):.1f} s, "
              f"training {statistics.median(run['train'] for run in runs):.1f} s")
    same = len({run["accuracy"] for runs in found.values() for run in runs}) == 1
    print("test accuracies of every epoch: " + ("the same in every sweep" if same else "DIFFERENT"))


if __name__ == "__main__":
    main()
