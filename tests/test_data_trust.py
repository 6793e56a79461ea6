"""Silent wrong results users found in the data layer, each pinned down: --data-dir falling back
to another copy, --limit-train keeping only the first classes, `folder:` reading the current
folder, an empty file reported as a checksum mismatch."""

import dataclasses
import gzip
import shutil

import numpy as np
import pytest
import torch
from synthetic import CLASS_NAMES

from batchlab.core.errors import DataError
from batchlab.data import registry as data
from batchlab.data.dataset import Dataset
from batchlab.data.device import split_train, to_device
from batchlab.data.download import fetch_file

FASHION = data.DATASETS["fashion-mnist"]
FILES = [f.name for f in FASHION.files]


@pytest.fixture
def system_copy(synthetic_dataset, tmp_path, monkeypatch):
    """A complete, valid copy of the (registered) synthetic dataset in a 'system' folder the
    registry knows about."""
    system = tmp_path / "system"
    system.mkdir()
    for index in range(4):
        (system / synthetic_dataset.path(index).name).symlink_to(synthetic_dataset.path(index))
    monkeypatch.setitem(data.DATASETS, synthetic_dataset.name,
                        dataclasses.replace(synthetic_dataset.info, system_dirs=(str(system),)))
    return system


# 1. --data-dir is a promise: only that folder is read.

def test_data_dir_never_falls_back_to_the_system_copy(system_copy, synthetic_dataset, tmp_path):
    name = synthetic_dataset.name
    assert data.locate(name) == system_copy  # without --data-dir the system copy is found
    assert data.load(name).source == str(system_copy)  # and loads
    empty = tmp_path / "empty"
    empty.mkdir()
    for data_dir in (tmp_path / "nowhere", empty):
        assert data.locate(name, data_dir) is None
        with pytest.raises(DataError, match=f"--data-dir {data_dir} "):
            data.load(name, data_dir)
        with pytest.raises(DataError, match=f"--data-dir {data_dir} "):
            data.verify(name, data_dir)
        assert str(system_copy) not in data.missing_message(name, data_dir)


def test_check_data_dir_names_the_folder_and_what_is_wrong(tmp_path):
    data.check_data_dir("fashion-mnist", None)  # no --data-dir: nothing to check

    def problem(name, data_dir):
        with pytest.raises(DataError) as caught:
            data.check_data_dir(name, data_dir)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    assert problem("fashion-mnist", tmp_path / "nowhere") == f"--data-dir {tmp_path / 'nowhere'} does not exist"
    (tmp_path / "file").write_text("x")
    assert problem("fashion-mnist", tmp_path / "file") == f"--data-dir {tmp_path / 'file'} is not a folder"

    x = tmp_path / "x"
    x.mkdir()
    assert problem("fashion-mnist", x).startswith(
        f"--data-dir {x} holds no complete fashion-mnist: missing " + ", ".join(f"{n}(.gz)" for n in FILES) + " (")

    # One file in x itself, three in x/fashion-mnist: the sub-folder is the one meant.
    (x / f"{FILES[0]}.gz").write_bytes(b"x")
    sub = x / "fashion-mnist"
    sub.mkdir()
    for name in FILES[:2]:
        (sub / f"{name}.gz").write_bytes(b"x")
    (sub / FILES[2]).write_bytes(b"x")  # plain, not gzipped: counts too
    assert problem("fashion-mnist", x).startswith(
        f"--data-dir {x} holds no complete fashion-mnist: missing {FILES[3]}(.gz) in {sub} (")
    (sub / FILES[3]).write_bytes(b"x")
    data.check_data_dir("fashion-mnist", x)  # complete (existence only; content is verified on load)
    assert data.locate("fashion-mnist", x) == sub

    assert problem("folder:/some/images", x) == \
        "--data-dir does not apply to folder: datasets; the path is in --dataset folder:PATH"
    with pytest.raises(DataError, match="unknown dataset"):
        data.check_data_dir("cifar", x)


def test_missing_dataset_in_data_dir_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as caught:
        data.load("mnist", tmp_path)
    message = str(caught.value)
    assert message.startswith(f"--data-dir {tmp_path} holds no complete mnist: missing train-images-idx3-ubyte(.gz)")
    assert f"batchlab data download mnist --dest {tmp_path}" in message


# 2. --limit-train: a seeded sample stratified by class, in random order; class names carried.

def synthetic(counts: list[int]) -> Dataset:
    """A dataset stored class by class, as a folder of images is read."""
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    images = np.zeros((len(labels), 1, 28, 28), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels)) % 256
    names = tuple(f"c{i}" for i in range(len(counts)))
    return Dataset("synthetic", images, labels, images[:6], labels[:6], len(counts), "0" * 16, "memory", names)


def test_limit_train_is_a_stratified_seeded_sample_in_random_order():
    dataset = synthetic([60, 60, 60])
    train_idx, val_idx = split_train(dataset, 0.0, 90)
    labels = dataset.train_labels[train_idx]
    assert np.bincount(labels).tolist() == [30, 30, 30]  # not 60 + 30 + 0
    assert len(set(train_idx.tolist())) == 90 and len(val_idx) == 0
    assert (np.diff(labels) < 0).any()  # not in class order
    assert np.array_equal(split_train(dataset, 0.0, 90)[0], train_idx)  # the same images every run
    assert not np.array_equal(train_idx[:60], np.arange(60))


def test_limit_train_keeps_each_class_share_exactly():
    def per_class(dataset, val_split, limit):
        return np.bincount(dataset.train_labels[split_train(dataset, val_split, limit)[0]]).tolist()

    assert per_class(synthetic([100, 50, 30]), 0.0, 90) == [50, 25, 15]
    # Shares 3.5, 3.5, 3: the one image left over goes to the largest remainder (lower label on a tie).
    assert per_class(synthetic([7, 7, 6]), 0.0, 10) == [4, 3, 3]
    # After the validation hold-out: shares of the images left, none of them validation images.
    dataset = synthetic([60, 60, 60])
    train_idx, val_idx = split_train(dataset, 0.25, 60)
    assert len(train_idx) == 60 and not set(train_idx.tolist()) & set(val_idx.tolist())
    available = np.bincount(dataset.train_labels[split_train(dataset, 0.25, 0)[0]])
    share = available * 60 / available.sum()
    assert (np.abs(np.bincount(dataset.train_labels[train_idx]) - share) < 1).all()
    # N at least the available images: all of them.
    assert len(split_train(dataset, 0.0, 500)[0]) == 180


def test_class_names_are_carried_to_the_device():
    assert data.DATASETS["mnist"].class_names == tuple("0123456789")
    assert FASHION.class_names == ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert FASHION.classes == 10
    dd = to_device(synthetic([6, 6, 6]), 0.0, 9, torch.device("cpu"))
    assert dd.class_names == ("c0", "c1", "c2") and dd.train_count == 9


def test_registered_dataset_has_its_class_names(synthetic_dataset):
    # The registry's names (the IDX files hold none); Fashion-MNIST's: test_data.py, real_data.
    assert synthetic_dataset.info.class_names == CLASS_NAMES
    assert data.load(synthetic_dataset.name, synthetic_dataset.directory).class_names == CLASS_NAMES


def write_images(folder, count, level=100):
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(np.full((30, 30), (level + i) % 256, dtype=np.uint8)).save(folder / f"{i}.png")


def test_folder_class_names_and_checks(tmp_path):
    for cls in ("cat", "ant", "bee"):
        write_images(tmp_path / "train" / cls, 6)
        write_images(tmp_path / "test" / cls, 2)
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()  # tools' litter, not a class
    dataset = data.load(f"folder:{tmp_path}")
    assert dataset.class_names == ("ant", "bee", "cat") and dataset.classes == 3
    limited = to_device(dataset, 0.0, 9, torch.device("cpu"))
    assert torch.bincount(limited.train_labels).tolist() == [3, 3, 3]
    assert limited.class_names == ("ant", "bee", "cat")

    write_images(tmp_path / "test" / "dog", 2)  # test images of a class never trained on
    with pytest.raises(DataError, match=f"{tmp_path / 'test'}: class folder\\(s\\) dog have no counterpart"):
        data.load(f"folder:{tmp_path}")
    shutil.rmtree(tmp_path / "test" / "dog")

    (tmp_path / "train" / "dog").mkdir()
    (tmp_path / "train" / "dog" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"{tmp_path / 'train' / 'dog'}: class folder has no images"):
        data.load(f"folder:{tmp_path}")


# 3. `folder:` without a path.

def test_folder_without_a_path_is_refused(tmp_path, monkeypatch):
    # A perfectly loadable image folder as the current folder: it must not be picked up.
    write_images(tmp_path / "a", 6)
    write_images(tmp_path / "b", 6, level=200)
    monkeypatch.chdir(tmp_path)
    message = "folder: needs a path, e.g. --dataset folder:~/images"
    for name in ("folder:", "folder:  "):
        assert data.dataset_problem(name) == message
        with pytest.raises(DataError) as caught:
            data.load(name)
        assert str(caught.value) == message
    assert data.dataset_problem(f"folder:{tmp_path}") is None and data.dataset_problem("mnist") is None
    assert data.load(f"folder:{tmp_path}").classes == 2


# 4. An empty file is called empty.

@pytest.mark.parametrize("file_name", ["t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte"])
def test_empty_file_is_called_empty(tmp_path, file_name):
    path = tmp_path / file_name
    path.write_bytes(b"")
    expected = f"{path}: the file is empty (0 bytes); delete it and run `batchlab data download fashion-mnist`"
    with pytest.raises(DataError) as caught:
        data.read_verified(path, FASHION.files[3], "fashion-mnist")
    assert str(caught.value) == expected
    with pytest.raises(DataError, match="the file is empty \\(0 bytes\\)"):
        data.decompressed(path)


def test_empty_file_in_a_dataset_folder(synthetic_dataset, tmp_path):
    name = synthetic_dataset.name
    for index in range(3):
        (tmp_path / f"{FILES[index]}.gz").symlink_to(synthetic_dataset.path(index))
    (tmp_path / f"{FILES[3]}.gz").write_bytes(b"")
    for check in (data.load, data.verify):
        with pytest.raises(DataError) as caught:
            check(name, tmp_path)
        assert str(caught.value) == (f"{tmp_path / FILES[3]}.gz: the file is empty (0 bytes); "
                                     f"delete it and run `batchlab data download {name}`")


def test_mirror_serving_an_empty_file(tmp_path, synthetic_dataset):
    labels = synthetic_dataset.path(3)
    empty_mirror, good_mirror = tmp_path / "empty", tmp_path / "good"
    empty_mirror.mkdir()
    good_mirror.mkdir()
    (empty_mirror / f"{FILES[3]}.gz").write_bytes(b"")
    (good_mirror / f"{FILES[3]}.gz").write_bytes(labels.read_bytes())
    empty_url = empty_mirror.as_uri() + "/"
    with pytest.raises(DataError) as caught:
        fetch_file(synthetic_dataset.files[3], [empty_url], tmp_path / "dest")
    assert str(caught.value) == f"could not download {FILES[3]}: {empty_url}{FILES[3]}.gz: the file is empty (0 bytes)"
    assert list((tmp_path / "dest").iterdir()) == []
    path = fetch_file(synthetic_dataset.files[3], [empty_url, good_mirror.as_uri()], tmp_path / "dest")
    assert gzip.decompress(path.read_bytes()) == gzip.decompress(labels.read_bytes())


def test_a_dataset_failing_its_checks_stops_the_sweep_once_before_any_run(synthetic_dataset, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from batchlab.cli.app import app

    swapped = tmp_path / "swapped"
    shutil.copytree(synthetic_dataset.directory, swapped)
    files = sorted(swapped.iterdir())
    train_labels = next(f for f in files if f.name.startswith("train-labels"))
    test_labels = next(f for f in files if f.name.startswith("t10k-labels"))
    train_labels.write_bytes(test_labels.read_bytes())  # a swapped file: the wrong content under a right name
    db = tmp_path / "s.db"
    ran = CliRunner().invoke(app, ["sweep", "--dataset", synthetic_dataset.name, "--model", "mlp", "--batch-size",
                                   "16,32,64", "--data-dir", str(swapped), "--db", str(db)])
    assert ran.exit_code == 2 and train_labels.name in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1 and not db.exists()  # once, before any run was stored


def test_a_batch_larger_than_the_training_set_says_so(synthetic_folder, tmp_path):
    from typer.testing import CliRunner

    from batchlab.cli.app import app

    ran = CliRunner().invoke(app, ["train", "--dataset", f"folder:{synthetic_folder}", "--model", "mlp", "--limit-train",
                                   "100", "--batch-size", "256", "--db", str(tmp_path / "b.db")])
    assert ran.exit_code == 0, ran.output
    assert "batch size 256 is more than the 100 training images: each step trains on all there are" in ran.stderr
