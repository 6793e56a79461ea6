"""Parallel strategies: how work is split, DDP against a single process, Hogwild learning,
and what happens when a worker dies."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from processes_helpers import descendants, spawned_workers, still_alive, wait_for

from batchlab import RunSpec
from batchlab.data.device import ddp_order, hogwild_order, single_order
from batchlab.train.strategies import run


def test_hogwild_shares_cover_the_epoch_once():
    order = torch.randperm(1001)
    shares = [hogwild_order(order, 3, rank, batch_size=16, drop_last=False) for rank in range(3)]
    assert torch.equal(torch.cat(shares), order)
    dropped = [hogwild_order(order, 3, rank, batch_size=16, drop_last=True) for rank in range(3)]
    assert all(len(share) % 16 == 0 for share in dropped)


def test_ddp_steps_are_the_single_process_global_batches():
    order = torch.randperm(100)
    ranks = [ddp_order(order, 2, rank, batch_size=8, drop_last=False) for rank in range(2)]
    single = single_order(order, 16, drop_last=False)
    for step in range(6):  # 6 full global batches of 16
        together = torch.cat([ranks[r][step * 8:(step + 1) * 8] for r in range(2)])
        assert torch.equal(together, single[step * 16:(step + 1) * 16])
    # The last 4 images are split 2 + 2: both ranks take a 7th, smaller step.
    assert [len(r) for r in ranks] == [50, 50]
    assert sorted(torch.cat(ranks).tolist()) == list(range(100))
    # 1 image left for 2 ranks: dropped, since every rank must step the same number of times.
    uneven = [ddp_order(torch.arange(33), 2, rank, batch_size=8, drop_last=False) for rank in range(2)]
    assert [len(r) for r in uneven] == [16, 16]


def test_ddp_matches_single_process_with_the_same_global_batch(synthetic_folder):
    # folder: data, since the DDP ranks are processes of their own that load it themselves.
    common = dict(dataset=f"folder:{synthetic_folder}", model="mlp", optimizer="momentum", lr=0.05, epochs=1,
                  limit_train=1200, threads=1, seed=3)
    single = run(RunSpec(batch_size=60, **common), keep_weights=True)
    # Each rank also slices its 30 images into micro-batches of 10 (gradients all-reduced once).
    ddp = run(RunSpec(strategy="ddp", workers=2, batch_size=30, micro_batch=10, **common), keep_weights=True)
    other_seed = run(RunSpec(batch_size=60, **dict(common, seed=4)), keep_weights=True)
    for name, tensor in single.weights["state_dict"].items():
        assert torch.allclose(tensor, ddp.weights["state_dict"][name], atol=1e-6), name
        assert not torch.allclose(tensor, other_seed.weights["state_dict"][name], atol=1e-3)  # the check can fail
    assert ddp.epochs[0].steps == single.epochs[0].steps == 20
    assert ddp.images_processed == single.images_processed == 1200
    assert ddp.epochs[0].train_loss == pytest.approx(single.epochs[0].train_loss, rel=1e-5)


def test_hogwild_two_workers_learn_and_see_each_image_once(synthetic_dataset):
    result = run(RunSpec(dataset=synthetic_dataset.name, model="mlp", strategy="hogwild", workers=2, batch_size=16,
                         epochs=2, limit_train=1800), data_dir=str(synthetic_dataset.directory))
    assert result.status == "DONE"
    assert [e.images for e in result.epochs] == [1800, 1800]
    assert [e.steps for e in result.epochs] == [114, 114]  # 2 shares of 900 images in batches of 16
    assert result.epochs[-1].test_accuracy > 0.6  # chance is 0.1
    assert result.spec.threads == max(1, len(os.sched_getaffinity(0)) // 2)


def test_hogwild_is_cpu_only():
    from batchlab.core.errors import SpecError

    with pytest.raises(SpecError, match="hogwild"):
        RunSpec(strategy="hogwild", workers=2, device="cuda").validated()


def training(workers) -> bool:
    """Every worker has used 3 s of CPU: more than starting (interpreter, torch) takes, so it trains."""
    return all(sum(worker.cpu_times()[:2]) > 3 for worker in workers)


@pytest.mark.parametrize("strategy", ["hogwild", "ddp"])
def test_killed_worker_fails_the_run_and_leaves_no_process(strategy, synthetic_folder, tmp_path):
    db = tmp_path / "s.db"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "batchlab", "sweep", "--strategy", strategy, "--workers", "2", "--batch-size", "1",
         "--model", "seed-cnn", "--epochs", "50", "--dataset", f"folder:{synthetic_folder}", "--db", str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = wait_for(lambda: len(spawned_workers(sweep.pid)) == 2 and spawned_workers(sweep.pid))
    wait_for(lambda: training(workers))
    everything = descendants(sweep.pid)
    os.kill(workers[0].pid, signal.SIGKILL)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 1, stderr  # a sweep with a failed run exits with 1
    with sqlite3.connect(db) as con:
        status, error = con.execute("SELECT status, error FROM runs").fetchone()
    # The killed worker is named with its signal, even where a DDP peer reported its broken connection first.
    assert status == "FAILED" and f"(pid {workers[0].pid}) was killed by signal 9 (SIGKILL)" in error, error
    assert still_alive(everything) == []


@pytest.mark.slow
def test_hung_worker_fails_the_run_within_the_timeout(synthetic_folder, tmp_path):
    db = tmp_path / "s.db"
    timeout = 4  # seconds of silence; an epoch takes well under a second
    env = dict(os.environ, BATCHLAB_WORKER_TIMEOUT=str(timeout))
    sweep = subprocess.Popen(
        [sys.executable, "-m", "batchlab", "sweep", "--strategy", "hogwild", "--workers", "2", "--batch-size", "8",
         "--model", "mlp", "--epochs", "1000", "--dataset", f"folder:{synthetic_folder}", "--db", str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    workers = wait_for(lambda: len(spawned_workers(sweep.pid)) == 2 and spawned_workers(sweep.pid))
    wait_for(lambda: training(workers))
    everything = descendants(sweep.pid)
    stopped_at = time.monotonic()
    os.kill(workers[1].pid, signal.SIGSTOP)  # hangs: alive, but never answers
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 1, stderr  # a sweep with a failed run exits with 1
    assert time.monotonic() - stopped_at < timeout + 20
    with sqlite3.connect(db) as con:
        status, error = con.execute("SELECT status, error FROM runs").fetchone()
    # The stopped worker is named (the other one, done with its share, owes nothing and is not).
    assert status == "FAILED" and re.fullmatch(
        rf"worker \d \(pid {workers[1].pid}, stopped\) made no progress for [{timeout}{timeout + 1}] s "
        r"\(hung or stopped\?\)", error), error
    assert still_alive(everything) == []
