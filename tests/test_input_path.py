"""The input path axis (--input device|loader|auto, --loader-workers, --augment): both paths train
on the same batches, the loader's workers change nothing but where batches are made, the wait for
batches is measured and stored, auto picks the loader when the data would crowd the device."""

import json

import pytest
import torch
from typer.testing import CliRunner

import batchlab
from batchlab import RunSpec
from batchlab.cli.app import app
from batchlab.core.errors import SpecError
from batchlab.data import input_path
from batchlab.data.augment import random_crop_flip
from batchlab.data.input_path import choose_input


def run(dataset, **fields):
    spec = RunSpec(**{"dataset": dataset.name, "model": "seed-cnn", "batch_size": 50, "epochs": 2, "limit_train": 600,
                      "threads": 1, **fields})
    return batchlab.run(spec, data_dir=str(dataset.directory))


def losses(result):
    return [(e.train_loss, e.test_loss, e.test_accuracy) for e in result.epochs]


def test_device_and_loader_paths_train_on_the_same_batches(synthetic_dataset):
    device = run(synthetic_dataset, input="device")
    loader = run(synthetic_dataset, input="loader")
    assert (device.input_used, loader.input_used) == ("device", "loader")
    assert losses(device) == losses(loader)  # same order, same dropout masks: bit for bit on the CPU
    for result in (device, loader):
        assert all(0 < e.data_wait_seconds < e.train_seconds for e in result.epochs)


def test_augmentation_is_the_same_on_either_path_and_with_loader_workers(synthetic_dataset):
    plain = run(synthetic_dataset, input="device")
    device = run(synthetic_dataset, input="device", augment=True)
    loader = run(synthetic_dataset, input="loader", augment=True)
    workers = run(synthetic_dataset, input="loader", augment=True, loader_workers=2)
    assert losses(device) != losses(plain)
    assert losses(device) == losses(loader) == losses(workers)  # per-batch seeds, wherever the batch is made
    assert workers.epochs[-1].test_accuracy > 0.3  # still learns (chance 0.1)


def test_augmentation_shifts_and_mirrors_each_image_within_its_padding():
    height = width = 16
    pad = height // 8
    image = torch.arange(1, height * width + 1, dtype=torch.int32).view(1, 1, height, width)  # distinct, 0 = padding
    out = random_crop_flip(image.expand(200, 3, height, width).contiguous(), seed=7)
    assert out.shape == (200, 3, height, width) and out.dtype == torch.int32
    assert torch.equal(out, random_crop_flip(image.expand(200, 3, height, width).contiguous(), seed=7))
    padded = torch.nn.functional.pad(image[0, 0], (pad, pad, pad, pad))
    candidates = {(top, left, flip): (crop.flip(1) if flip else crop)
                  for top in range(2 * pad + 1) for left in range(2 * pad + 1) for flip in (False, True)
                  for crop in [padded[top:top + height, left:left + width]]}
    seen = set()
    for picture in out:
        assert torch.equal(picture[0], picture[1]) and torch.equal(picture[0], picture[2])  # channels move together
        found = [kind for kind, crop in candidates.items() if torch.equal(picture[0], crop)]
        assert found, "an augmented image is not a shifted (and maybe mirrored) copy of its original"
        seen.add(found[0])
    assert len(seen) > 20 and {flip for _, _, flip in seen} == {False, True}


def test_auto_keeps_the_device_path_on_the_cpu_and_takes_the_loader_when_the_data_would_crowd_a_device():
    cpu, gpu = torch.device("cpu"), torch.device("cuda:0")
    assert choose_input("auto", 10 * 2**30, cpu) == ("device", None)  # host memory either way
    assert choose_input("auto", 2**30, gpu, capacity=16 * 2**30) == ("device", None)
    chosen, note = choose_input("auto", 9 * 2**30, gpu, capacity=16 * 2**30)
    assert chosen == "loader" and "9.00 GiB" in note and "50%" in note and "16.00 GiB" in note
    assert choose_input("device", 9 * 2**30, gpu, capacity=16 * 2**30) == ("device", None)  # the user's word


def test_a_run_on_auto_records_the_path_it_took_and_why(synthetic_dataset, monkeypatch):
    # The CPU keeps the device path; a device of 1 MB is what makes auto choose, as a small GPU would.
    monkeypatch.setattr(input_path, "device_memory_bytes", lambda device: 2**20)
    result = run(synthetic_dataset, epochs=1)
    assert result.spec.input == "auto" and result.input_used == "loader"
    assert any(note.startswith("input: loader") for note in result.environment["data_notes"])


@pytest.mark.parametrize("fields, message", [
    ({"input": "disk"}, "unknown input 'disk'"),
    ({"input": "device", "loader_workers": 2}, "--loader-workers needs the loader input path"),
    ({"input": "loader", "loader_workers": -1}, "loader workers must be at least 0"),
])
def test_bad_input_settings_are_one_line_errors(fields, message):
    with pytest.raises(SpecError, match=message) as error:
        RunSpec(**fields).validated()
    assert "\n" not in str(error.value)


def test_hogwild_and_ddp_take_the_loader_path(synthetic_folder):
    # Each worker or rank runs its own DataLoader, here with a loader worker process of its own.
    for strategy in ("hogwild", "ddp"):
        result = batchlab.run(RunSpec(dataset=f"folder:{synthetic_folder}", model="mlp", batch_size=50, epochs=1,
                                      limit_train=400, strategy=strategy, workers=2, threads=1, input="loader",
                                      loader_workers=1, augment=True))
        assert result.status == "DONE" and result.input_used == "loader", strategy
        assert 0 < result.epochs[0].data_wait_seconds < result.epochs[0].train_seconds, strategy


def test_report_rows_carry_the_input_path_and_the_data_wait(synthetic_folder, tmp_path):
    db = tmp_path / "r.db"

    def cli(*args):
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result

    cli("sweep", "--dataset", f"folder:{synthetic_folder}", "--model", "mlp", "--batch-size", "100", "--epochs", "1",
        "--limit-train", "300", "--input", "device,loader", "--db", str(db))
    rows = json.loads(cli("report", "--db", str(db), "--format", "json").stdout)
    assert sorted(row["input"] for row in rows) == ["device", "loader"]
    for row in rows:
        assert 0 < row["data_wait_seconds"] and 0 < row["data_wait_share"] < 1
    runs = json.loads(cli("report", "--db", str(db), "--runs", "--format", "json").stdout)
    assert sorted(row["input"] for row in runs) == ["device", "loader"]
    assert all(row["data_wait_seconds"] > 0 for row in runs)


def test_warm_up_runs_whole_batches_so_batch_norm_with_drop_last_trains(synthetic_dataset, tmp_path):
    # 201 images in batches of 200 with --drop-last: every step holds 200 images; a warm-up over the
    # first 2 x 200 images cut at the data's end would hold 1, which batch norm cannot train on.
    model_file = tmp_path / "bn.py"
    model_file.write_text(
        "from torch import nn\n"
        "def factory(input_shape, classes):\n"
        "    c, h, w = input_shape\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.BatchNorm1d(16), nn.ReLU(),\n"
        "                         nn.Linear(16, classes))\n")
    for path in ("device", "loader"):
        result = run(synthetic_dataset, model=f"{model_file}:factory", batch_size=200, limit_train=201,
                     drop_last=True, epochs=1, input=path)
        assert result.status == "DONE" and result.epochs[0].steps == 1, path


def test_loader_workers_make_auto_take_the_loader(synthetic_dataset):
    chosen, note = choose_input("auto", 2**20, torch.device("cpu"), loader_workers=2)
    assert chosen == "loader" and "2 loader worker(s)" in note
    result = run(synthetic_dataset, epochs=1, loader_workers=1)
    assert result.input_used == "loader"
